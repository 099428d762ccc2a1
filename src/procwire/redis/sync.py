"""Lock, RLock, Semaphore, BoundedSemaphore, Event, Condition and Barrier in Redis.

Locks and semaphores are one model: a permit count (``value`` in the hash
``procwire:NAME:m``) and a sorted set of holders (``procwire:NAME:holders``)
scored by lease expiry in Redis's clock. Acquire is one Lua script: it first
frees the permits of holders whose lease expired (their process died, or
stalled past the lease) and then takes a permit, returning a fencing token
(``fence``, incremented on every acquire). The keeper renews a live holder's
lease every third of it. An acquirer that freed a dead holder's permit gets
``OwnerDiedWarning`` (and ``owner_died`` stays True until
``make_consistent()``), as locally.

Waiters sleep in BLPOP on a wake list that every release pushes to, at most
until the earliest lease could expire; nobody polls.

Event, Condition and Barrier wake their waiters by pub/sub (Event, Barrier)
or a per-waiter list (Condition), always after the waiter's subscription, so
no wake-up is lost.
"""
from __future__ import annotations

import os
import threading
import time
import uuid
import warnings
from collections.abc import Callable
from typing import Any

from procwire.errors import BrokenBarrierError
from procwire.redis._engine import SLICE
from procwire.redis.context import RedisContext, RedisObject
from procwire.redis.errors import LeaseLost, OwnerDiedWarning
from procwire.sync import wait_for

_ACQUIRE = """
-- KEYS: holders zset, meta hash; ARGV: token, lease_ms, initial value
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
local died = #expired
local v = tonumber(redis.call('HGET', KEYS[2], 'value'))
if v == nil then
  v = tonumber(ARGV[3])
  redis.call('HSET', KEYS[2], 'value', v, 'initial', v)
end
if died > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
  v = v + died
  redis.call('HINCRBY', KEYS[2], 'owner_deaths', died)
  redis.call('HSET', KEYS[2], 'owner_died', 1)
end
if v > 0 then
  v = v - 1
  redis.call('HSET', KEYS[2], 'value', v)
  local ms = tonumber(ARGV[2])
  if ms > 0 then redis.call('ZADD', KEYS[1], now + ms, ARGV[1]) end
  local fence = redis.call('HINCRBY', KEYS[2], 'fence', 1)
  redis.call('HINCRBY', KEYS[2], 'acquires', 1)
  local od = redis.call('HGET', KEYS[2], 'owner_died') and 1 or 0
  return {1, fence, died, od}
end
redis.call('HSET', KEYS[2], 'value', v)
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local wait = -1
if #first > 0 then wait = tonumber(first[2]) - now end
return {0, wait, died, 0}
"""

_RELEASE = """
-- KEYS: holders, meta, wake list, handed zset
-- ARGV: token ('' = this handle holds no permit), bound ('' = unbounded)
-- A release by a process that holds no permit (a Semaphore used to signal,
-- as multiprocessing allows) returns a permit that some holder took: it takes
-- over the oldest holder's lease, so that holder's later death does not free
-- the permit a second time. The holder's token goes to the handed set; its
-- own release() later counts as one more release, as multiprocessing's does.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local held = ARGV[1] ~= ''
if held and redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then
  if redis.call('ZREM', KEYS[4], ARGV[1]) == 0 then return -1 end
  held = false
end
if not held then
  local first = redis.call('ZRANGE', KEYS[1], 0, 0)
  if #first > 0 then
    redis.call('ZREM', KEYS[1], first[1])
    redis.call('ZADD', KEYS[4], now, first[1])
    redis.call('ZREMRANGEBYRANK', KEYS[4], 0, -10001)
  elseif ARGV[2] ~= '' then
    local v = tonumber(redis.call('HGET', KEYS[2], 'value') or ARGV[2])
    if v >= tonumber(ARGV[2]) then return -2 end
  end
end
local v = redis.call('HINCRBY', KEYS[2], 'value', 1)
redis.call('HINCRBY', KEYS[2], 'releases', 1)
redis.call('RPUSH', KEYS[3], 1)
redis.call('LTRIM', KEYS[3], -64, -1)
return v
"""


def _deadline(block: bool, timeout: float | None) -> float | None:
    if not block:
        return time.monotonic()
    if timeout is None:
        return None
    return time.monotonic() + max(0.0, timeout)


class Semaphore(RedisObject):
    """A counting semaphore; each permit taken is leased to its process."""

    _kind = "Semaphore"
    _bounded = False

    def __init__(self, value: int = 1, *, name: str | None = None, ctx: RedisContext,
                 lease: float | None = None) -> None:
        if not isinstance(value, int) or value < 0:
            raise ValueError("semaphore initial value must be >= 0")
        super().__init__(name, ctx)
        self._initial = value
        self._lease = float(lease) if lease is not None else ctx.lease
        self._holders = self._k + "holders"
        self._meta = self._k + "m"
        self._wake = self._k + "wake"
        self._handed = self._k + "handed"
        self._reset()

    def _params(self) -> dict[str, Any]:
        return {"value": self._initial, "lease": self._lease}

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._tokens: list[tuple[str, int, int]] = []  # (token, keeper id, fence)
        self._lost: set[str] = set()
        self._tlock = threading.Lock()
        self.fence: int | None = None

    def _check_pid(self) -> None:
        if self._pid != os.getpid():
            self._reset()  # the parent's permits are the parent's

    def _try(self, token: str) -> tuple[bool, float | None]:
        e = self._engine
        script = e.script(_ACQUIRE)
        ok, x, died, _owner_died = e.call(
            lambda r: script(keys=[self._holders, self._meta],
                             args=[token, int(self._lease * 1000), self._initial]),
            idempotent=True, what=f"acquire on {self.name!r}")
        if ok:
            self.fence = int(x)
            if died:
                try:
                    warnings.warn(OwnerDiedWarning(
                        f"{self._kind} {self.name!r} at {e.display}: {died} holder(s) died "
                        "(lease expired); their permits were freed"), stacklevel=4)
                except BaseException:
                    # the warning raised (warnings filter "error"): give the permit
                    # back before raising, as the local lock does
                    release = e.script(_RELEASE)
                    e.call(lambda r: release(keys=[self._holders, self._meta, self._wake,
                                                   self._handed],
                                             args=[token, ""]), what="release")
                    raise
            return True, None
        return False, (int(x) / 1000 if int(x) >= 0 else None)

    def acquire(self, block: bool = True, timeout: float | None = None) -> bool:
        self._check_pid()
        deadline = _deadline(block, timeout)
        # A retried script after a lost reply could take a second permit under
        # the same token; the zset keeps one entry per token, so it is one permit.
        token = uuid.uuid4().hex
        while True:
            ok, expiry = self._try(token)
            if ok:
                self._held(token)
                return True
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return False
            wait = SLICE if deadline is None else min(SLICE, deadline - now)
            if expiry is not None:
                wait = min(wait, expiry + 0.005)
            wait = max(wait, 0.01)
            self._engine.call(lambda r: r.blpop([self._wake], timeout=wait),  # noqa: B023
                              deadline=deadline, what=f"acquire on {self.name!r}")

    def _held(self, token: str) -> None:
        lid = self._engine.keeper.add("z", self._holders, token, self._lease,
                                      on_lost=lambda: self._lost.add(token))
        with self._tlock:
            self._tokens.append((token, lid, self.fence or 0))

    def release(self) -> None:
        self._check_pid()
        with self._tlock:
            held = self._tokens.pop() if self._tokens else None
        if held is not None:
            self._engine.keeper.remove(held[1])
        token = held[0] if held else ""
        bound = str(self._initial) if self._bounded else ""
        script = self._engine.script(_RELEASE)
        v = self._engine.call(lambda r: script(keys=[self._holders, self._meta, self._wake,
                                                     self._handed],
                                               args=[token, bound]),
                              what=f"release on {self.name!r}")
        if v == -1:
            self._lost.discard(token)
            raise LeaseLost(f"{self._kind} {self.name!r} at {self._engine.display}: the lease "
                            f"of this holder (fence {held[2] if held else '?'}) expired before "
                            "release(); another process may have held it meanwhile")
        if v == -2:
            raise ValueError("semaphore or lock released too many times")

    def get_value(self) -> int:
        v = self._engine.call(lambda r: r.hget(self._meta, "value"), what="get_value")
        return self._initial if v is None else int(v)

    @property
    def owner_died(self) -> bool:
        return bool(self._engine.call(lambda r: r.hexists(self._meta, "owner_died"),
                                      what="owner_died"))

    def make_consistent(self) -> None:
        """Clear ``owner_died`` once what the lock protects has been repaired."""
        self._engine.call(lambda r: r.hdel(self._meta, "owner_died"), what="make_consistent")

    def statistics(self) -> dict[str, int]:
        def read(r: Any) -> list[Any]:
            p = r.pipeline()
            p.hgetall(self._meta)
            p.zcard(self._holders)
            return p.execute()
        m, holders = self._engine.call(read, what="statistics")
        return {"value": int(m.get(b"value", self._initial)), "holders": int(holders),
                "initial": self._initial, "acquires": int(m.get(b"acquires", 0)),
                "releases": int(m.get(b"releases", 0)), "fence": int(m.get(b"fence", 0)),
                "owner_deaths": int(m.get(b"owner_deaths", 0))}

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


class BoundedSemaphore(Semaphore):
    """A semaphore whose value may not exceed its initial value (ValueError)."""

    _kind = "BoundedSemaphore"
    _bounded = True


class Lock(Semaphore):
    """A mutual-exclusion lock, leased to the thread that holds it."""

    _kind = "Lock"

    def __init__(self, *, name: str | None = None, ctx: RedisContext,
                 lease: float | None = None) -> None:
        super().__init__(1, name=name, ctx=ctx, lease=lease)
        self._owner: int | None = None

    def _params(self) -> dict[str, Any]:
        return {"lease": self._lease}

    def _reset(self) -> None:
        super()._reset()
        self._owner = None

    def acquire(self, block: bool = True, timeout: float | None = None) -> bool:
        self._check_pid()
        if (self._owner == threading.get_ident() and self._tokens
                and block and timeout is None):
            raise RuntimeError(f"Lock {self.name!r}: this thread already holds it; "
                               "acquiring again would deadlock (use an RLock)")
        ok = super().acquire(block, timeout)
        if ok:
            self._owner = threading.get_ident()
        return ok

    def release(self) -> None:
        self._check_pid()
        if not self._tokens:
            locked = self.statistics()["holders"] > 0
            if locked:
                raise RuntimeError(f"Lock {self.name!r} is held by another process or handle; "
                                   "only its holder can release it")
            raise ValueError("semaphore or lock released too many times")
        if self._owner != threading.get_ident():
            raise RuntimeError(f"Lock {self.name!r} is held by another thread")
        self._owner = None
        super().release()

    def locked(self) -> bool:
        return self.statistics()["holders"] > 0

    def _is_owned(self) -> bool:
        return bool(self._tokens) and self._owner == threading.get_ident()

    def _release_save(self) -> Any:
        self.release()

    def _acquire_restore(self, state: Any) -> None:
        self.acquire()


class RLock(Lock):
    """A recursive lock: the owning thread may acquire it again (counted locally)."""

    _kind = "RLock"

    def _reset(self) -> None:
        super()._reset()
        self._depth = 0

    def acquire(self, block: bool = True, timeout: float | None = None) -> bool:
        self._check_pid()
        if self._owner == threading.get_ident() and self._depth:
            self._depth += 1
            return True
        ok = Lock.acquire(self, block, timeout)
        if ok:
            self._depth = 1
        return ok

    def release(self) -> None:
        self._check_pid()
        if self._owner != threading.get_ident() or not self._depth:
            raise AssertionError("attempt to release recursive lock not owned by thread") \
                if self._depth else RuntimeError("cannot release un-acquired lock")
        self._depth -= 1
        if self._depth == 0:
            Lock.release(self)

    def _release_save(self) -> Any:
        depth = self._depth
        self._depth = 0
        Lock.release(self)
        return depth

    def _acquire_restore(self, depth: Any) -> None:
        Lock.acquire(self)
        self._depth = depth


# ------------------------------------------------------------------------------ Event

_SET = """
redis.call('SET', KEYS[1], 1)
redis.call('PUBLISH', KEYS[2], 1)
"""


class Event(RedisObject):
    """``multiprocessing.Event``: set, clear, is_set, wait (woken by pub/sub)."""

    _kind = "Event"

    def __init__(self, *, name: str | None = None, ctx: RedisContext) -> None:
        super().__init__(name, ctx)
        self._flag = self._k + "flag"
        self._chan = self._k + "chan"

    def is_set(self) -> bool:
        return bool(self._engine.call(lambda r: r.exists(self._flag), what="is_set"))

    def set(self) -> None:
        script = self._engine.script(_SET)
        self._engine.call(lambda r: script(keys=[self._flag, self._chan]), what="set")

    def clear(self) -> None:
        self._engine.call(lambda r: r.delete(self._flag), what="clear")

    def wait(self, timeout: float | None = None) -> bool:
        deadline = _deadline(True, timeout)
        return bool(self._engine.wait_channel(self._chan, lambda: True if self.is_set()
                                              else None, deadline))


# -------------------------------------------------------------------------- Condition

_NOTIFY = """
-- KEYS: waiters list; ARGV: n (-1 = all), waiter key prefix
local n = tonumber(ARGV[1])
if n < 0 then n = redis.call('LLEN', KEYS[1]) end
local woken = 0
for i = 1, n do
  local w = redis.call('LPOP', KEYS[1])
  if not w then break end
  redis.call('RPUSH', ARGV[2] .. w, 1)
  redis.call('PEXPIRE', ARGV[2] .. w, 600000)
  woken = woken + 1
end
return woken
"""


class Condition(RedisObject):
    """``multiprocessing.Condition`` over a Redis (R)Lock of the same context."""

    _kind = "Condition"

    def __init__(self, lock: Any = None, *, name: str | None = None,
                 ctx: RedisContext) -> None:
        super().__init__(name, ctx)
        if lock is None:
            lock = RLock(name=self.name + ".lock", ctx=ctx)
        elif not isinstance(lock, Lock):
            raise TypeError("a Redis Condition needs a Lock or RLock of a Redis context "
                            "(or lock=None)")
        self._lock = lock
        self._waiters = self._k + "waiters"
        self._wprefix = self._k + "w:"

    def _params(self) -> dict[str, Any]:
        return {"lock": self._lock}

    def acquire(self, block: bool = True, timeout: float | None = None) -> bool:
        return self._lock.acquire(block, timeout)

    def release(self) -> None:
        self._lock.release()

    def __enter__(self) -> bool:
        return self._lock.acquire()

    def __exit__(self, *exc: object) -> None:
        self._lock.release()

    def wait(self, timeout: float | None = None) -> bool:
        if not self._lock._is_owned():
            raise RuntimeError("cannot wait on un-acquired lock")
        token = uuid.uuid4().hex
        key = self._wprefix + token
        e = self._engine
        e.call(lambda r: r.rpush(self._waiters, token), what="wait")
        saved = self._lock._release_save()
        deadline = _deadline(True, timeout)
        woken = False
        try:
            while True:
                wait = SLICE if deadline is None else min(SLICE, deadline - time.monotonic())
                if wait <= 0:
                    break
                if e.call(lambda r: r.blpop([key], timeout=max(wait, 0.01)),  # noqa: B023
                          deadline=deadline, what="wait"):
                    woken = True
                    break
        finally:
            if not woken:
                def withdraw(r: Any) -> Any:
                    p = r.pipeline()
                    p.lrem(self._waiters, 0, token)
                    p.delete(key)
                    return p.execute()
                removed, deleted = e.call(withdraw, what="wait")
                woken = not removed and bool(deleted)  # notified just as we gave up
            self._lock._acquire_restore(saved)
        return woken

    def wait_for(self, predicate: Callable[[], Any], timeout: float | None = None) -> Any:
        return wait_for(self.wait, predicate, timeout)

    def notify(self, n: int = 1) -> None:
        if not self._lock._is_owned():
            raise RuntimeError("cannot notify on un-acquired lock")
        script = self._engine.script(_NOTIFY)
        self._engine.call(lambda r: script(keys=[self._waiters], args=[n, self._wprefix]),
                          what="notify")

    def notify_all(self) -> None:
        self.notify(-1)


# ---------------------------------------------------------------------------- Barrier

_ARRIVE = """
-- KEYS: hash, channel; ARGV: parties, '1' if the arriving handle has an action
-- The last to arrive trips the barrier at once, or, with an action, leaves it
-- full and runs the action first (then _TRIP), as threading.Barrier does.
local broken = redis.call('HGET', KEYS[1], 'broken')
local gen = tonumber(redis.call('HGET', KEYS[1], 'generation') or 0)
if broken == '1' then return {-1, gen} end
local index = redis.call('HINCRBY', KEYS[1], 'count', 1) - 1
if index + 1 >= tonumber(ARGV[1]) and ARGV[2] ~= '1' then
  redis.call('HSET', KEYS[1], 'count', 0, 'generation', gen + 1, 'tripped', gen)
  redis.call('PUBLISH', KEYS[2], 1)
end
return {index, gen}
"""

_TRIP = """
-- KEYS: hash, channel; ARGV: generation. After the action: release the waiters,
-- unless the barrier was broken (or reset) while the action ran.
local gen = redis.call('HGET', KEYS[1], 'generation') or '0'
if gen ~= ARGV[1] or redis.call('HGET', KEYS[1], 'broken') == '1' then return 0 end
redis.call('HSET', KEYS[1], 'count', 0, 'generation', tonumber(gen) + 1, 'tripped', gen)
redis.call('PUBLISH', KEYS[2], 1)
return 1
"""

_BREAK = """
-- KEYS: hash, channel; ARGV: generation ('' = current)
local gen = redis.call('HGET', KEYS[1], 'generation') or '0'
if ARGV[1] ~= '' and gen ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'broken', 1)
redis.call('PUBLISH', KEYS[2], 1)
return 1
"""

_RESET = """
local gen = tonumber(redis.call('HGET', KEYS[1], 'generation') or 0)
redis.call('HSET', KEYS[1], 'broken', 0, 'count', 0, 'generation', gen + 1)
redis.call('PUBLISH', KEYS[2], 1)
"""


class Barrier(RedisObject):
    """``multiprocessing.Barrier``: the last of ``parties`` to arrive releases them all."""

    _kind = "Barrier"

    def __init__(self, parties: int, action: Callable[[], Any] | None = None,
                 timeout: float | None = None, *, name: str | None = None,
                 ctx: RedisContext) -> None:
        if not isinstance(parties, int) or parties < 1:
            raise ValueError("parties must be > 0")
        super().__init__(name, ctx)
        self._parties = parties
        self._action = action
        self._timeout = timeout
        self._h = self._k + "b"
        self._chan = self._k + "chan"

    def _params(self) -> dict[str, Any]:
        return {"parties": self._parties, "action": self._action, "timeout": self._timeout}

    def wait(self, timeout: float | None = None) -> int:
        if timeout is None:
            timeout = self._timeout
        e = self._engine
        deadline = _deadline(True, timeout)
        arrive = e.script(_ARRIVE)
        state: dict[str, Any] = {}

        def check() -> Any:
            if "index" not in state:
                index, gen = e.call(lambda r: arrive(keys=[self._h, self._chan],
                                                     args=[self._parties,
                                                           int(self._action is not None)]),
                                    idempotent=False, what="barrier wait")
                if index < 0:
                    return "broken"
                state["index"], state["gen"] = int(index), int(gen)
                if index + 1 >= self._parties:
                    return "tripped" if self._action is None else "act"
            h = e.call(lambda r: r.hmget(self._h, "generation", "broken", "tripped"),
                       what="barrier wait")
            gen, broken, tripped = (int(x) if x is not None else None for x in h)
            gen = gen or 0
            if gen != state["gen"]:
                return "tripped" if tripped == state["gen"] else "broken"
            if broken:
                return "broken"
            return None

        # subscribed before arriving: the trip's publish cannot be missed
        outcome = e.wait_channel(self._chan, check, deadline)
        if outcome is None:  # timed out: break the barrier, as threading does
            e.call(lambda r: e.script(_BREAK)(keys=[self._h, self._chan],
                                              args=[state.get("gen", "")]), what="barrier")
            raise BrokenBarrierError
        if outcome == "broken":
            raise BrokenBarrierError
        if outcome == "act":
            # the last to arrive: the action runs before anyone is released
            assert self._action is not None
            try:
                self._action()
            except BaseException:
                self.abort()
                raise
            trip = e.script(_TRIP)
            if not e.call(lambda r: trip(keys=[self._h, self._chan], args=[state["gen"]]),
                          what="barrier wait"):
                raise BrokenBarrierError  # broken or reset while the action ran
        return self._parties - 1 - state["index"]

    def reset(self) -> None:
        self._engine.call(lambda r: self._engine.script(_RESET)(keys=[self._h, self._chan]),
                          what="barrier reset")

    def abort(self) -> None:
        self._engine.call(lambda r: self._engine.script(_BREAK)(keys=[self._h, self._chan],
                                                                args=[""]),
                          what="barrier abort")

    @property
    def parties(self) -> int:
        return self._parties

    @property
    def n_waiting(self) -> int:
        v = self._engine.call(lambda r: r.hget(self._h, "count"), what="n_waiting")
        return int(v or 0)

    @property
    def broken(self) -> bool:
        return self._engine.call(lambda r: r.hget(self._h, "broken"), what="broken") == b"1"
