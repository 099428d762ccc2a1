"""The list of lessons that ``procwire demo`` shows and runs.

Each lesson is one module of :mod:`procwire.lessons` with a ``main()`` function
(the bus homework's takes ``lang``), in the order of the lesson text: what a
process is, how to make one, how processes talk (pipe, queue, shared memory,
signals, sockets), how they keep out of each other's way, and the homework.

``waiting_for`` names the procwire objects a lesson will use once they exist;
until then it imports their :mod:`multiprocessing` twins on one marked line.
"""
from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass
from types import ModuleType


@dataclass(frozen=True)
class Lesson:
    name: str  # what `procwire demo NAME` takes
    title: str
    module: str  # dotted module path
    waiting_for: str | None = None  # procwire objects not built yet

    def load(self) -> ModuleType:
        return importlib.import_module(self.module)


def _lesson(name: str, title: str, module: str, waiting_for: str | None = None) -> Lesson:
    return Lesson(name, title, f"procwire.lessons.{module}", waiting_for)


LESSONS: tuple[Lesson, ...] = (
    _lesson("process", "What a process is: pid, ppid and state (什么是进程)", "process"),
    _lesson("fork", "os.fork: one process becomes two (fork)", "fork"),
    _lesson("process-class",
            "multiprocessing.Process and your own Process class (创建自己的进程类)",
            "process_class"),
    _lesson("pool", "A pool of worker processes (进程池)", "pool"),
    _lesson("zombie", "A zombie made, seen in /proc, and cured (僵尸进程)", "zombie"),
    _lesson("orphan", "An orphan adopted by a new parent (孤儿进程)", "orphan"),
    _lesson("filetypes", "The Linux file types b c d - l s p (linux 文件类型)", "filetypes"),
    _lesson("pipe", "Pipe, both ways and one way (管道)", "pipe"),
    _lesson("queue", "Message queue: maxsize, full, qsize, empty, block, timeout (消息队列)",
            "message_queue"),
    _lesson("value-array", "Shared memory: Value and Array (共享内存)", "value_array"),
    _lesson("lock", "The lost update, without and with a Lock (同步互斥)", "lock"),
    _lesson("event", "Event: one process waits until another says go (Event 事件)", "event"),
    _lesson("signals", "Signals: send, alarm, pause, handlers, ignore, default (信号)",
            "signal_basics"),
    _lesson("socket", "A Unix-domain socket exchange with procwire.connection (套接字)",
            "unix_socket"),
    _lesson("bus", "Homework: the driver and the conductor (售票员和司机的故事)", "bus"),
)


def find(name: str) -> Lesson:
    """The lesson called `name`; LookupError with the closest names if there is none."""
    for lesson in LESSONS:
        if lesson.name == name:
            return lesson
    names = [lesson.name for lesson in LESSONS]
    close = difflib.get_close_matches(name, names, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise LookupError(
        f"no lesson called {name!r}{hint}; `procwire demo` lists them: {', '.join(names)}"
    )
