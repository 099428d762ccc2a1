"""The Redis context's exceptions and warnings (no import of redis-py here)."""
from __future__ import annotations

import procwire
from procwire.errors import ProcwireError


class EngineError(ProcwireError):
    """Redis could not be reached, or did not answer, within the call's time.

    The message names the URL (without its password) and what to check.
    """


class LeaseLost(ProcwireError):
    """A lock or semaphore was released after its lease had expired.

    Another process may have held it meanwhile (the holder stalled for longer
    than the lease): whatever the lock protected was not exclusive. Compare
    fencing tokens (``lock.fence``) where that matters, or raise ``lease=``.
    """


class BadSignatureWarning(RuntimeWarning):
    """A message whose signature did not verify was refused (and never unpickled)."""


try:
    _WorkerLostBase: type[Exception] = procwire.WorkerLost
except AttributeError:  # a procwire without the local pool
    _WorkerLostBase = ProcwireError


class WorkerLost(_WorkerLostBase):  # type: ignore[misc,valid-type]
    """A Redis pool task's worker died (its heartbeat expired) and no retry was left.

    A subclass of the local pool's ``procwire.WorkerLost``, so one ``except``
    catches both. ``pid`` is the worker's pid (on its machine), ``exitcode``
    and ``signal`` are None (Redis only sees the heartbeat stop), ``attempts``
    how many times the task was run.
    """

    def __init__(self, message: str, pid: int | None = None, attempts: int = 1) -> None:
        Exception.__init__(self, message)
        self.pid = pid
        self.exitcode = None
        self.signal = None
        self.attempts = attempts

    def __str__(self) -> str:
        return str(self.args[0])

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.args[0], self.pid, self.attempts))


OwnerDiedWarning = procwire.OwnerDiedWarning

__all__ = ["BadSignatureWarning", "EngineError", "LeaseLost", "OwnerDiedWarning", "WorkerLost"]
