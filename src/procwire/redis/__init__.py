"""procwire's API on Redis: ``procwire.get_context("redis://host:port/db")``.

The context has the constructors of the local one -- ``Queue``,
``SimpleQueue``, ``JoinableQueue``, ``Lock``, ``RLock``, ``Semaphore``,
``BoundedSemaphore``, ``Event``, ``Condition``, ``Barrier``, ``Value``,
``Array``, ``Pool`` and ``ProcessPoolExecutor`` -- whose objects live in a
Redis database instead of shared memory: the same ``name=`` from any machine
is the same object, and objects pickle by name and URL, so they pass to
children and across machines.

Importing this module imports redis-py (``pip install 'procwire[redis]'``);
``import procwire`` never does.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from procwire.redis.errors import (
    BadSignatureWarning,
    EngineError,
    LeaseLost,
    OwnerDiedWarning,
    WorkerLost,
)

if TYPE_CHECKING:  # imported lazily below: it imports redis-py
    from procwire.redis.context import RedisContext

__all__ = ["BadSignatureWarning", "EngineError", "LeaseLost", "OwnerDiedWarning",
           "RedisContext", "WorkerLost", "get_context"]


def get_context(url: str, *, authkey: bytes | str | None = None, lease: float | None = None,
                max_deliveries: int = 5, retry_for: float | None = None) -> RedisContext:
    """A context whose objects live in the Redis database at ``url``.

    ``url``: ``redis://[[user]:password@]host[:port][/db]``, or ``rediss://``
    for TLS (redis-py's URL syntax, e.g. ``?ssl_ca_certs=/path/ca.pem``).

    ``authkey``: every payload is signed (keyed BLAKE2b-256, a MAC) under this key, and
    a message that is unsigned or whose signature does not verify is refused,
    counted and never unpickled. Default: the ``PROCWIRE_AUTHKEY`` environment
    variable. Without either, nothing is signed: whoever can reach the Redis
    server can make every consumer unpickle, and so run, code of their choosing.

    ``lease``: seconds a dead holder keeps a lock, semaphore permit, pending
    message or task before it is freed (default 10; renewed every third of it
    while the holder lives). ``max_deliveries``: deliveries of a JoinableQueue
    message before it goes to the dead-letter stream. ``retry_for``: how long
    calls retry while Redis is unreachable before raising ``EngineError``
    (default 10 s, and never past a call's own timeout).
    """
    try:
        import redis  # noqa: F401
    except ImportError as e:
        raise ImportError(f"a redis:// context needs redis-py: pip install 'procwire[redis]' "
                          f"({e})") from e
    from procwire.redis.context import RedisContext
    return RedisContext(url, authkey=authkey, lease=lease, max_deliveries=max_deliveries,
                        retry_for=retry_for)


def __getattr__(name: str) -> Any:
    if name == "RedisContext":
        from procwire.redis.context import RedisContext
        return RedisContext
    raise AttributeError(f"module 'procwire.redis' has no attribute {name!r}")
