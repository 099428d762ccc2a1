"""Small helpers the lessons share, so that each lesson shows only its idea.

* :func:`in_order` makes a lesson's ``main()`` from its parts.
* :func:`say` prints and flushes at once. Output that sits in a buffer is
  copied into every child at ``fork`` and printed twice, and lines from
  several processes come out in the order they were *flushed*, not written.
* :func:`fork` runs a function in a child made with ``os.fork`` and makes sure
  the child ends with ``os._exit``, never by returning into the parent's code.
* :func:`proc_stat` and :func:`wait_for_state` read a process's state from
  ``/proc/PID/stat``, as ``ps`` does.
"""
from __future__ import annotations

import os
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass

#: The one-letter states of ``/proc/PID/stat`` (and the STAT column of ``ps``).
STATES = {
    "R": "running (or ready to run)",
    "S": "sleeping: waiting for something, e.g. input or a signal",
    "D": "disk sleep: waiting for I/O, cannot be interrupted",
    "T": "stopped by a signal (Ctrl-Z, SIGSTOP)",
    "t": "stopped by a debugger",
    "Z": "zombie: exited, waiting for its parent to collect the exit status",
    "X": "dead",
    "I": "idle kernel thread",
}


def say(*parts: object) -> None:
    """``print`` and flush at once."""
    print(*parts, flush=True)


def in_order(*parts: Callable[[], None]) -> Callable[[], None]:
    """A lesson's ``main`` made of numbered parts: each part, one after the other."""
    def main() -> None:
        for part in parts:
            part()
    return main


def fork(child: Callable[[], int | None]) -> int:
    """Fork; run ``child()`` in the child, whose return value is its exit code.

    Returns the child's pid in the parent. The child leaves with ``os._exit``
    so that it never runs the rest of the parent's program, its ``finally``
    blocks or its ``atexit`` handlers.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        code = child() or 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def exit_status(pid: int) -> int:
    """Wait for child `pid`; return its exit code, or -N if signal N killed it."""
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


@dataclass(frozen=True)
class ProcStat:
    """A few fields of ``/proc/PID/stat``."""

    pid: int
    command: str
    state: str
    ppid: int

    @property
    def state_meaning(self) -> str:
        return STATES.get(self.state, "?")


def proc_stat(pid: int | str = "self") -> ProcStat:
    """Read ``/proc/PID/stat``; raise FileNotFoundError if there is no such process."""
    with open(f"/proc/{pid}/stat") as f:
        text = f.read()
    # "pid (command) state ppid ...": the command may itself hold spaces and parentheses.
    head, _, tail = text.rpartition(")")
    pid_text, _, command = head.partition(" (")
    state, ppid, *_ = tail.split()
    return ProcStat(int(pid_text), command, state, int(ppid))


def wait_for_state(pid: int, states: str, timeout: float = 5.0) -> ProcStat:
    """Watch /proc until process `pid` is in one of `states` (e.g. ``"Z"``).

    The kernel tells no one when a process changes state, so the only way
    to see it is to look again; give up after `timeout` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        stat = proc_stat(pid)
        if stat.state in states:
            return stat
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"pid {pid} still in state {stat.state} after {timeout}s, expected {states}"
            )
        time.sleep(0.001)
