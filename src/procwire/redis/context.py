"""RedisContext and the base class of every Redis-backed object."""
from __future__ import annotations

import hashlib
import multiprocessing.context
from typing import Any

from procwire.redis import _engine
from procwire.redis._engine import DEFAULT_LEASE, PREFIX, check_url, engine_for, new_name


class RedisContext:
    """Constructors of procwire's objects, living in one Redis database."""

    def __init__(self, url: str, *, authkey: bytes | str | None = None,
                 lease: float | None = None, max_deliveries: int = 5,
                 retry_for: float | None = None) -> None:
        self.url = check_url(url)
        # This context's own key (or PROCWIRE_AUTHKEY's): never another context's,
        # even on the same URL. Only an unpickled context looks for one (below).
        self.authkey = _engine._authkey(authkey)
        self.lease = float(lease) if lease is not None else DEFAULT_LEASE
        if not self.lease > 0:
            raise ValueError(f"lease must be > 0 seconds, not {lease!r}")
        if not isinstance(max_deliveries, int) or max_deliveries < 1:
            raise ValueError(f"max_deliveries must be an int >= 1, not {max_deliveries!r}")
        self.max_deliveries = max_deliveries
        if retry_for is not None:
            _engine.set_retry_for(retry_for)
        self._engine = engine_for(self.url, self.authkey)

    # -- pickling: the key travels only to children being started --------------------

    def __reduce__(self) -> tuple[Any, ...]:
        if multiprocessing.context.get_spawning_popen() is not None:
            key, key_id = self.authkey, None
        else:  # elsewhere only which key it was, for the receiver to find its own copy
            key, key_id = None, _key_id(self.authkey)
        return (_rebuild_context, (self.url, key, self.lease, self.max_deliveries, key_id))

    def __repr__(self) -> str:
        return f"<procwire.redis.RedisContext {self._engine.display}>"

    def close(self) -> None:
        """Close this process's connections to the database (the objects stay)."""
        self._engine.close()

    def ping(self) -> bool:
        return bool(self._engine.call(lambda r: r.ping(), what="ping"))

    # -- constructors ------------------------------------------------------------------

    def Queue(self, maxsize: int = 0, *, name: str | None = None) -> Any:
        from procwire.redis.queues import Queue
        return Queue(maxsize, name=name, ctx=self)

    def SimpleQueue(self, *, name: str | None = None) -> Any:
        from procwire.redis.queues import SimpleQueue
        return SimpleQueue(name=name, ctx=self)

    def JoinableQueue(self, maxsize: int = 0, *, name: str | None = None,
                      max_deliveries: int | None = None, lease: float | None = None) -> Any:
        from procwire.redis.queues import JoinableQueue
        return JoinableQueue(maxsize, name=name, ctx=self, max_deliveries=max_deliveries,
                             lease=lease)

    def Lock(self, *, name: str | None = None, lease: float | None = None) -> Any:
        from procwire.redis.sync import Lock
        return Lock(name=name, ctx=self, lease=lease)

    def RLock(self, *, name: str | None = None, lease: float | None = None) -> Any:
        from procwire.redis.sync import RLock
        return RLock(name=name, ctx=self, lease=lease)

    def Semaphore(self, value: int = 1, *, name: str | None = None,
                  lease: float | None = None) -> Any:
        from procwire.redis.sync import Semaphore
        return Semaphore(value, name=name, ctx=self, lease=lease)

    def BoundedSemaphore(self, value: int = 1, *, name: str | None = None,
                         lease: float | None = None) -> Any:
        from procwire.redis.sync import BoundedSemaphore
        return BoundedSemaphore(value, name=name, ctx=self, lease=lease)

    def Event(self, *, name: str | None = None) -> Any:
        from procwire.redis.sync import Event
        return Event(name=name, ctx=self)

    def Condition(self, lock: Any = None, *, name: str | None = None) -> Any:
        from procwire.redis.sync import Condition
        return Condition(lock, name=name, ctx=self)

    def Barrier(self, parties: int, action: Any = None, timeout: float | None = None, *,
                name: str | None = None) -> Any:
        from procwire.redis.sync import Barrier
        return Barrier(parties, action, timeout, name=name, ctx=self)

    def Value(self, typecode_or_type: Any, *args: Any, lock: Any = True,
              name: str | None = None) -> Any:
        from procwire.redis.shared import Value
        return Value(typecode_or_type, *args, lock=lock, name=name, ctx=self)

    def Array(self, typecode_or_type: Any, size_or_initializer: Any, *, lock: Any = True,
              name: str | None = None) -> Any:
        from procwire.redis.shared import Array
        return Array(typecode_or_type, size_or_initializer, lock=lock, name=name, ctx=self)

    def Pool(self, processes: int | None = None, initializer: Any = None, initargs: Any = (),
             maxtasksperchild: int | None = None, *, name: str | None = None,
             retries: int = 0, lease: float | None = None, mp_context: Any = None) -> Any:
        from procwire.redis.pool import Pool
        return Pool(processes, initializer, initargs, maxtasksperchild, name=name, ctx=self,
                    retries=retries, lease=lease, mp_context=mp_context)

    def ProcessPoolExecutor(self, max_workers: int | None = None, mp_context: Any = None,
                            initializer: Any = None, initargs: Any = (), *,
                            name: str | None = None, retries: int = 0,
                            lease: float | None = None) -> Any:
        from procwire.redis.pool import ProcessPoolExecutor
        return ProcessPoolExecutor(max_workers, mp_context, initializer, initargs, name=name,
                                   ctx=self, retries=retries, lease=lease)


def _key_id(authkey: bytes | None) -> bytes | None:
    """Which key, without the key (None: no key).

    A hash of the key personalised apart from the signing key's derivation
    (_engine.Engine), so it tells nothing about the key that signs payloads
    beyond what a signed payload already does.
    """
    if authkey is None:
        return None
    return hashlib.blake2b(authkey, digest_size=16, person=b"procwire.keyid").digest()


def _known_authkey(url: str, key_id: bytes) -> bytes | None:
    # A context unpickled without its key (outside process start) uses the
    # same key of a context this process already opened on the same URL, or
    # PROCWIRE_AUTHKEY's if that is the one.
    keys = [key for (u, key), e in list(_engine._engines.items()) if u == url and not e.closed]
    for key in (*keys, _engine._authkey(None)):
        if key is not None and _key_id(key) == key_id:
            return key
    return None


def _rebuild_context(url: str, authkey: bytes | None, lease: float,
                     max_deliveries: int, key_id: bytes | None = None) -> RedisContext:
    if authkey is None and key_id is not None:
        authkey = _known_authkey(url, key_id)
    return RedisContext(url, authkey=authkey, lease=lease, max_deliveries=max_deliveries)


class RedisObject:
    """A named object in Redis: ``procwire:NAME:*`` keys, registered as ``_kind``."""

    _kind = "object"

    def __init__(self, name: str | None, ctx: RedisContext) -> None:
        if not isinstance(ctx, RedisContext):
            raise TypeError("create Redis objects from a context: "
                            "procwire.get_context('redis://host:port/db').Queue(...)")
        self._ctx = ctx
        self._engine = ctx._engine
        self.name = _engine.validate_name(name) if name is not None else new_name(self._kind)
        self._k = f"{PREFIX}{self.name}:"
        self._engine.register(self.name, self._kind)

    def _params(self) -> dict[str, Any]:
        return {}

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_object, (type(self), self._ctx, self.name, self._params()))

    def _keys(self) -> list[str]:
        """Every key of this object, for unlink()."""
        return [k.decode() for k in self._engine.call(
            lambda r: list(r.scan_iter(match=self._k.replace("*", "\\*") + "*", count=1000)),
            what="listing keys")]

    def unlink(self) -> None:
        """Delete the object from Redis (every process's handle then sees a new, empty one)."""
        self._engine.unregister(self.name, self._keys())

    def __repr__(self) -> str:
        return f"<procwire.redis.{type(self).__name__} {self.name!r} at {self._engine.display}>"


def _rebuild_object(cls: type, ctx: RedisContext, name: str, params: dict[str, Any]) -> Any:
    return cls(name=name, ctx=ctx, **params)
