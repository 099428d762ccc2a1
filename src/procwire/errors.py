"""procwire's exceptions.

``Empty`` and ``Full`` are the :mod:`queue` module's own classes, exactly as
:mod:`multiprocessing` raises them, so existing ``except queue.Empty`` code
keeps working.

``BrokenBarrierError`` is :mod:`threading`'s, as ``multiprocessing.Barrier``
raises it. ``OwnerDiedWarning`` is issued by the ``acquire()`` that finds a
lock's previous holder dead (see :mod:`procwire.sync`).
"""
from __future__ import annotations

import signal as _signal
from queue import Empty, Full
from threading import BrokenBarrierError
from typing import Any

__all__ = ["BrokenBarrierError", "Empty", "Full", "MessageTooLarge", "OwnerDiedWarning",
           "ProcwireError", "SegmentError", "WorkerLost"]

# procwire's own exceptions are defined here, in Python, as multiprocessing
# defines its own; the native core (procwire._core) imports them to raise them
# (and re-exports them), so nothing here may import procwire._core. They are
# shown as procwire's, where the public API exports them.


class ProcwireError(Exception):
    """Base class of procwire's own exceptions."""

    __module__ = "procwire"


class SegmentError(ProcwireError):
    """A shared segment is not a whole, initialised procwire object of the expected kind.

    Foreign, truncated, corrupt, or made by another procwire version.
    """

    __module__ = "procwire"


class MessageTooLarge(ProcwireError, ValueError):
    """A message can never fit the object's ring; the message names the setting to raise."""

    __module__ = "procwire"

    @classmethod
    def _advising(cls, length: int, limit: int, what: str, capacity: int, header: int,
                  max_capacity: int) -> MessageTooLarge:
        """The error the native core raises for a message of ``length`` bytes where at
        most ``limit`` fit (the ring's largest record, or more: a Queue's spill), in
        ``what``, whose ring holds ``capacity`` bytes with a ``header`` per record
        (rings hold at most ``max_capacity``): the advice says what would take it."""
        suggest = capacity
        while suggest < max_capacity and suggest - header < length:
            suggest <<= 1
        if limit > max_capacity - header:
            return cls(f"a message of {length} bytes is larger than the {limit} bytes one "
                       f"message of {what} may have: send it in parts")
        if suggest - header < length:
            return cls(f"a message of {length} bytes is larger than the biggest ring procwire "
                       f"makes ({suggest - header} bytes): send it in parts, or through a "
                       f"Value/Array")
        return cls(f"a message of {length} bytes does not fit {what}, whose ring holds "
                   f"{capacity} bytes (at most {capacity - header} per message): create it "
                   f"with capacity={suggest} or more")


class OwnerDiedWarning(RuntimeWarning):
    """An ``acquire()`` found that the lock's previous holder died holding it.

    The lock is now held by the caller; the state it protects may be half-updated.
    """

    __module__ = "procwire"


class WorkerLost(ProcwireError):
    """A pool worker died (SIGKILL, a crash, ``os._exit``, out of memory) holding this task.

    Raised by the task's ``get()`` or ``Future.result()``. Only the tasks the
    dead worker held fail this way (after their ``retries``, if any); the pool
    replaces the worker and goes on. Attributes: ``pid``, ``exitcode`` (as
    ``Process.exitcode``: negative for a signal), ``signal`` (its name, e.g.
    ``"SIGKILL"``, or None) and ``attempts`` (how many times the task ran).
    """

    def __init__(self, pid: int, exitcode: int | None, attempts: int = 1) -> None:
        self.pid = pid
        self.exitcode = exitcode
        self.attempts = attempts
        self.signal: str | None = None
        if exitcode is not None and exitcode < 0:
            try:
                self.signal = _signal.Signals(-exitcode).name
            except ValueError:
                self.signal = f"signal {-exitcode}"
            how = f"was killed by {self.signal}"
        elif exitcode is None:
            how = "vanished"
        else:
            how = f"exited with code {exitcode}"
        tries = f" (attempt {attempts}; no retries left)" if attempts > 1 else ""
        super().__init__(f"pool worker {pid} {how} while it held this task{tries}; "
                         "pass retries=N to the pool to re-run such tasks")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.pid, self.exitcode, self.attempts))
