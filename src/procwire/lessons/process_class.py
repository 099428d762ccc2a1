"""multiprocessing.Process, and 创建自己的进程类 -- a Process class of your own.

``Process(target=f, args=(...))`` wraps fork (or spawn) in an object: call
``start()`` to create the process, which runs ``f(*args)``; ``join()`` waits
for it; then ``exitcode`` says how it ended (0, the code it passed to
``sys.exit``, or -N if signal N killed it).

To make a process class of your own, subclass ``Process`` and override
``run()``: ``start()`` creates the new process and calls ``run()`` in it.
Remember to call ``super().__init__()`` first.

The parent prints nothing between ``start()`` and ``join()`` here, so the
children's lines cannot get mixed up with its own.
"""
from __future__ import annotations

import os
import sys
from multiprocessing import Process

from procwire.lessons._common import say


def greet(who: str, times: int) -> None:
    for i in range(1, times + 1):
        say(f"  [{os.getpid()}] hello {who} ({i}/{times})")
    sys.exit(3)  # an exit code the parent can read


class Countdown(Process):
    """A process class of our own: the work is in run()."""

    def __init__(self, start_at: int) -> None:
        super().__init__(name=f"countdown-{start_at}")
        self.start_at = start_at  # copied into the child along with the object

    def run(self) -> None:
        for n in range(self.start_at, 0, -1):
            say(f"  [{os.getpid()}] {self.name}: {n}")
        say(f"  [{os.getpid()}] {self.name}: lift-off")


def main() -> None:
    say(f"parent pid {os.getpid()}")

    say("\n1. Process(target=greet, args=('world', 2))")
    p = Process(target=greet, args=("world", 2), name="greeter")
    p.start()
    alive_while_running = p.is_alive()  # looked at now, printed after join()
    p.join(timeout=10)
    say(f"   name {p.name!r}, pid {p.pid}, alive after start(): {alive_while_running}, "
        f"after join(): {p.is_alive()}, exitcode {p.exitcode}")

    say("\n2. class Countdown(Process) with its own run()")
    c = Countdown(3)
    c.start()
    c.join(timeout=10)
    say(f"   name {c.name!r}, pid {c.pid}, exitcode {c.exitcode}")


if __name__ == "__main__":
    main()
