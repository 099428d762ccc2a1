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
    """A message whose HMAC did not verify was refused (and never unpickled)."""


class _WorkerLost(ProcwireError):
    """A task's worker died (its heartbeat expired) and no retry was left."""


# The local pool (procwire.pool) defines procwire.WorkerLost; when it is
# there, the Redis pool raises that very class, so `except procwire.WorkerLost`
# catches both.
try:
    WorkerLost: type[Exception] = procwire.WorkerLost  # type: ignore[attr-defined]
except AttributeError:
    WorkerLost = _WorkerLost


OwnerDiedWarning = procwire.OwnerDiedWarning

__all__ = ["BadSignatureWarning", "EngineError", "LeaseLost", "OwnerDiedWarning", "WorkerLost"]
