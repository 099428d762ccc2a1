"""Queue, SimpleQueue (a Redis list) and JoinableQueue (a Redis stream).

Queue: RPUSH by a Lua script (which also enforces ``maxsize`` and counts),
BLPOP to get. A message is delivered once: BLPOP removes it atomically; a
consumer killed after the pop loses that message only, as locally. Producers
blocked by ``maxsize`` sleep in BLPOP on a list of "space" tokens that every
get of a bounded queue pushes, so no one polls.

JoinableQueue: at-least-once. XADD to put, XREADGROUP (BLOCK) to get, and
the message stays in the consumer's pending list until ``task_done()``
acknowledges it (XACK + XDEL). Each consumer keeps a heartbeat key alive
(the keeper renews it); a consumer about to block first scans for consumers
whose heartbeat expired and claims their pending messages (XCLAIM, which
counts deliveries), so they are delivered again -- or, after
``max_deliveries``, moved to the dead-letter stream ``procwire:NAME:dead``.
``join()`` waits on a pub/sub channel published when the unfinished count
reaches zero.
"""
from __future__ import annotations

import os
import queue
import threading
import time
import warnings
from collections import deque
from collections.abc import Iterable
from typing import Any

import redis
from procwire.redis._engine import SLICE, Engine, identity
from procwire.redis.context import RedisContext, RedisObject

_PUT = """
-- KEYS: list, stats; ARGV: maxsize, items...
local n = #ARGV - 1
local maxsize = tonumber(ARGV[1])
if maxsize > 0 then
  local free = maxsize - redis.call('LLEN', KEYS[1])
  if free <= 0 then return 0 end
  if n > free then n = free end
end
redis.call('RPUSH', KEYS[1], unpack(ARGV, 2, n + 1))
redis.call('HINCRBY', KEYS[2], 'put', n)
return n
"""

_PUT_UNBOUNDED = """
-- KEYS: list, stats; ARGV: items (no maxsize: one argument less to send per put)
redis.call('RPUSH', KEYS[1], unpack(ARGV))
redis.call('HINCRBY', KEYS[2], 'put', #ARGV)
return #ARGV
"""

_CHUNK = 1000  # items per script call (Lua's unpack has a stack limit)


def _deadline(block: bool, timeout: float | None) -> float | None:
    if not block:
        return time.monotonic()
    if timeout is None:
        return None
    if timeout < 0:
        raise ValueError("'timeout' must be a non-negative number")
    return time.monotonic() + timeout


def _remaining(deadline: float | None) -> float:
    """Seconds a blocking command may wait now; 0 means do not block (Redis reads a
    blocking timeout below a millisecond as 0, which is "forever")."""
    if deadline is None:
        return SLICE
    left = min(SLICE, deadline - time.monotonic())
    return left if left >= 0.001 else 0.0


def _maxsize(maxsize: int) -> int:
    if not isinstance(maxsize, int) or isinstance(maxsize, bool):
        raise TypeError(f"maxsize must be an int, not {type(maxsize).__name__}")
    return max(0, maxsize)


class Queue(RedisObject):
    """``multiprocessing.Queue``'s API on a Redis list."""

    _kind = "Queue"

    def __init__(self, maxsize: int = 0, *, name: str | None = None,
                 ctx: RedisContext) -> None:
        super().__init__(name, ctx)
        self._maxsize = _maxsize(maxsize)
        self._list = self._k + "q"
        self._stats = self._k + "stats"
        self._space = self._k + "space"
        self._closed = False
        self._set_hot_keys()

    def _set_hot_keys(self) -> None:
        # what every put and get sends or says, made once (keys as bytes: redis-py
        # converts a str on every call)
        self._put_keys = [self._list.encode(), self._stats.encode()]
        self._what_put = f"put on {self.name!r}"
        self._what_get = f"get on {self.name!r}"

    def _params(self) -> dict[str, Any]:
        return {"maxsize": self._maxsize}

    # -- put -----------------------------------------------------------------------

    def _push(self, blobs: list[bytes], deadline: float | None) -> int:
        """Push as many of ``blobs`` as fit now; returns how many.

        One EVALSHA: RPUSH and the ``put`` counter (and, bounded, the room
        check) in one command and one round trip."""
        e = self._engine
        keys = self._put_keys
        args: list[Any]
        if self._maxsize:
            script = e.script(_PUT)
            args = [self._maxsize, *blobs]
        else:
            script, args = e.script(_PUT_UNBOUNDED), blobs
        return int(e.call(lambda r: script(keys, args), deadline=deadline, idempotent=False,
                          what=self._what_put))

    def _wait_space(self, deadline: float | None) -> bool:
        wait = _remaining(deadline)
        if wait <= 0:
            return False
        self._engine.call(lambda r: r.blpop([self._space], timeout=wait), deadline=deadline,
                          what=f"put on {self.name!r}")
        return True

    def put(self, obj: Any, block: bool = True, timeout: float | None = None) -> None:
        self._check_open()
        blob = self._engine.dumps(obj, self._list)
        deadline = _deadline(block, timeout)
        while not self._push([blob], deadline):
            if not self._wait_space(deadline):
                raise queue.Full

    def put_nowait(self, obj: Any) -> None:
        self.put(obj, False)

    def put_many(self, items: Iterable[Any], block: bool = True,
                 timeout: float | None = None) -> None:
        """Put every item, in order: one round trip per 1000 items.

        On timeout raises ``queue.Full``; its ``count`` attribute says how many
        items were put.
        """
        self._check_open()
        blobs = self._engine.dumps_many(items, self._list)
        deadline = _deadline(block, timeout)
        done = 0
        while done < len(blobs):
            n = self._push(blobs[done:done + _CHUNK] if done or len(blobs) > _CHUNK else blobs,
                           deadline)
            done += n
            if n == 0 and not self._wait_space(deadline):
                err = queue.Full()
                err.count = done  # type: ignore[attr-defined]
                raise err

    # -- get -----------------------------------------------------------------------

    def _space_freed(self, taken: int) -> None:
        """A bounded queue: wake as many producers waiting for space as messages taken."""
        if not taken or not self._maxsize:
            return

        def tokens(r: redis.Redis) -> None:
            p = r.pipeline(transaction=False)
            p.rpush(self._space, *([b"1"] * taken))
            p.ltrim(self._space, -self._maxsize, -1)
            p.execute()
        self._engine.call(tokens, what=f"get on {self.name!r}")

    def _got(self, blobs: list[bytes]) -> list[Any]:
        """The objects of the blobs taken, refused ones left out (and counted)."""
        self._space_freed(len(blobs))
        out = self._engine.loads_many(blobs, self._list)
        bad = Engine._BAD
        if bad in out:
            refused = out.count(bad)
            self._engine.call(lambda r: r.hincrby(self._stats, "rejected", refused),
                              what="counting a refused message")
            out = [o for o in out if o is not bad]
        return out

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        self._check_open()
        deadline = _deadline(block, timeout)
        e = self._engine
        while True:
            wait = _remaining(deadline)
            if wait <= 0:
                got = e.call(lambda r: r.lpop(self._list), deadline=None,
                             what=f"get on {self.name!r}")
                if got is None:
                    raise queue.Empty
                items = self._got([got])
            else:
                got = e.call(lambda r: r.blpop([self._list], timeout=wait),  # noqa: B023 (runs now)
                             deadline=deadline, what=self._what_get)
                if got is None:
                    continue
                items = self._got([got[1]])
            if items:
                return items[0]

    def get_nowait(self) -> Any:
        return self.get(False)

    def get_many(self, max_messages: int | None = None, block: bool = True,
                 timeout: float | None = None) -> list[Any]:
        """Up to ``max_messages`` messages (all there are if None) in one round trip,
        waiting (as ``get``) until there is at least one.

        One BLMPOP (Redis 7) takes them, waiting if the list is empty; on an
        older server, LPOP with a count, then BLPOP when empty."""
        self._check_open()
        if max_messages is not None and max_messages < 1:
            raise ValueError("max_messages must be >= 1 or None")
        count = max_messages or 2**31 - 1
        deadline = _deadline(block, timeout)
        e = self._engine
        while True:
            wait = _remaining(deadline)
            if wait > 0 and e.blmpop:
                try:
                    got = e.call(lambda r: r.blmpop(wait, 1, self._list,  # noqa: B023 (runs now)
                                                    direction="LEFT", count=count),
                                 deadline=deadline, what=f"get on {self.name!r}")
                except redis.ResponseError as err:
                    if "unknown command" not in str(err).lower():
                        raise
                    e.blmpop = False  # Redis < 7
                    continue
                if got is None:
                    continue
                blobs = got[1]
            else:
                blobs = e.call(lambda r: r.lpop(self._list, count),
                               what=f"get on {self.name!r}")
                if not blobs:
                    if wait <= 0:
                        raise queue.Empty
                    got = e.call(lambda r: r.blpop([self._list], timeout=wait),  # noqa: B023
                                 deadline=deadline, what=f"get on {self.name!r}")
                    if got is None:
                        continue
                    blobs = [got[1]]
            items = self._got(blobs)
            if items:
                return items

    # -- state -----------------------------------------------------------------------

    def qsize(self) -> int:
        return int(self._engine.call(lambda r: r.llen(self._list), what="qsize"))

    def empty(self) -> bool:
        return self.qsize() == 0

    def full(self) -> bool:
        return bool(self._maxsize) and self.qsize() >= self._maxsize

    @property
    def maxsize(self) -> int:
        return self._maxsize

    def statistics(self) -> dict[str, int]:
        """messages queued now, put (ever), got (put - queued), refused (bad signature)."""
        def read(r: redis.Redis) -> list[Any]:
            p = r.pipeline()
            p.llen(self._list)
            p.hgetall(self._stats)
            return p.execute()
        n, stats = self._engine.call(read, what="statistics")
        put = int(stats.get(b"put", 0))
        return {"messages": int(n), "put": put, "got": put - int(n),
                "rejected": int(stats.get(b"rejected", 0)), "maxsize": self._maxsize}

    def close(self) -> None:
        self._closed = True

    def join_thread(self) -> None:
        if not self._closed:
            raise ValueError("Queue is still open: close() it first")

    def cancel_join_thread(self) -> None:
        pass  # no feeder thread: put() has sent the message when it returns

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError(f"Queue {self.name!r} is closed")

    def __enter__(self) -> Queue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SimpleQueue(Queue):
    """``multiprocessing.SimpleQueue``: get, put, empty, close."""

    _kind = "SimpleQueue"

    def __init__(self, *, name: str | None = None, ctx: RedisContext) -> None:
        super().__init__(0, name=name, ctx=ctx)

    def _params(self) -> dict[str, Any]:
        return {}


# ---------------------------------------------------------------------------- joinable

_JPUT = """
-- KEYS: stream, stats; ARGV: maxsize, items...
local n = #ARGV - 1
local maxsize = tonumber(ARGV[1])
if maxsize > 0 then
  local pending = 0
  local ok, g = pcall(redis.call, 'XPENDING', KEYS[1], 'g')
  if ok then pending = g[1] end
  local free = maxsize - (redis.call('XLEN', KEYS[1]) - pending)
  if free <= 0 then return 0 end
  if n > free then n = free end
end
for i = 2, n + 1 do
  redis.call('XADD', KEYS[1], '*', 'd', ARGV[i])
end
redis.call('HINCRBY', KEYS[2], 'put', n)
redis.call('HINCRBY', KEYS[2], 'unfinished', n)
return n
"""

_JDONE = """
-- KEYS: stream, stats, join channel; ARGV: id
local acked = redis.call('XACK', KEYS[1], 'g', ARGV[1])
redis.call('XDEL', KEYS[1], ARGV[1])
if acked == 1 then
  redis.call('HINCRBY', KEYS[2], 'done', 1)
  local left = redis.call('HINCRBY', KEYS[2], 'unfinished', -1)
  if left <= 0 then redis.call('PUBLISH', KEYS[3], 'joined') end
end
return acked
"""

# Claim the pending messages of consumers whose heartbeat expired: delivered
# again to this consumer, or dead-lettered after max_deliveries.
_JRECLAIM = """
-- KEYS: stream, stats, dead stream, join channel
-- ARGV: me, heartbeat key prefix, max_deliveries
local ok, consumers = pcall(redis.call, 'XINFO', 'CONSUMERS', KEYS[1], 'g')
if not ok then return {} end
local claimed = {}
for _, c in ipairs(consumers) do
  local name, pending
  for i = 1, #c, 2 do
    if c[i] == 'name' then name = c[i + 1] elseif c[i] == 'pending' then pending = c[i + 1] end
  end
  if name ~= ARGV[1] and redis.call('EXISTS', ARGV[2] .. name) == 0 then
    if pending > 0 then
      local entries = redis.call('XPENDING', KEYS[1], 'g', '-', '+', 1000, name)
      for _, p in ipairs(entries) do
        local id, count = p[1], p[4]
        if count >= tonumber(ARGV[3]) then
          local e = redis.call('XRANGE', KEYS[1], id, id)
          if #e > 0 then
            redis.call('XADD', KEYS[3], '*', 'id', id, 'deliveries', count, 'reason',
                       'consumer died', unpack(e[1][2]))
          end
          redis.call('XACK', KEYS[1], 'g', id)
          redis.call('XDEL', KEYS[1], id)
          redis.call('HINCRBY', KEYS[2], 'dead', 1)
          if redis.call('HINCRBY', KEYS[2], 'unfinished', -1) <= 0 then
            redis.call('PUBLISH', KEYS[4], 'joined')
          end
        else
          local got = redis.call('XCLAIM', KEYS[1], 'g', ARGV[1], 0, id)
          for _, g in ipairs(got) do claimed[#claimed + 1] = g end
          redis.call('HINCRBY', KEYS[2], 'redelivered', #got)
        end
      end
      pending = redis.call('XPENDING', KEYS[1], 'g', '-', '+', 1, name)
      if #pending == 0 then redis.call('XGROUP', 'DELCONSUMER', KEYS[1], 'g', name) end
    else
      redis.call('XGROUP', 'DELCONSUMER', KEYS[1], 'g', name)
    end
  end
end
return claimed
"""


class JoinableQueue(Queue):
    """At-least-once queue: ``task_done()`` acknowledges; ``join()`` waits for all."""

    _kind = "JoinableQueue"

    def __init__(self, maxsize: int = 0, *, name: str | None = None, ctx: RedisContext,
                 max_deliveries: int | None = None, lease: float | None = None) -> None:
        RedisObject.__init__(self, name, ctx)
        self._maxsize = _maxsize(maxsize)
        self._stream = self._list = self._k + "s"
        self._stats = self._k + "stats"
        self._space = self._k + "space"
        self._dead = self._k + "dead"
        self._chan = self._k + "joined"
        self._hb = self._k + "hb:"
        self._max_deliveries = max_deliveries or ctx.max_deliveries
        self._lease = float(lease) if lease is not None else ctx.lease
        self._closed = False
        self._set_hot_keys()
        self._lock = threading.Lock()
        self._reset_consumer()
        self._ensure_group()

    def _params(self) -> dict[str, Any]:
        return {"maxsize": self._maxsize, "max_deliveries": self._max_deliveries,
                "lease": self._lease}

    def _reset_consumer(self) -> None:
        self._pid = os.getpid()
        self._me: str | None = None
        self._lease_id: int | None = None
        self._pending: deque[bytes] = deque()  # ids delivered to this handle, not yet done
        self._buffer: deque[tuple[bytes, bytes]] = deque()  # claimed, not yet returned
        self._last_reclaim = 0.0

    def _consumer(self) -> str:
        if self._pid != os.getpid():
            self._reset_consumer()
        if self._me is None:
            me = self._me = identity()
            # the heartbeat exists before the first read can make us an owner
            self._engine.call(lambda r: r.set(self._hb + me, b"1",
                                              px=int(self._lease * 1000)),
                              what="heartbeat")
            self._lease_id = self._engine.keeper.add("k", self._hb + self._me, "1", self._lease)
        return self._me

    def _ensure_group(self) -> None:
        def create(r: redis.Redis) -> None:
            try:
                r.xgroup_create(self._stream, "g", id="0", mkstream=True)
            except redis.ResponseError as e:
                if "BUSYGROUP" not in str(e):
                    raise
        self._engine.call(create, what=f"creating {self.name!r}")

    # put() and put_many() are Queue's, over this _push (self._list is the stream)

    def _push(self, blobs: list[bytes], deadline: float | None) -> int:
        e = self._engine
        script = e.script(_JPUT)
        return int(e.call(lambda r: script(keys=[self._stream, self._stats],
                                           args=[self._maxsize, *blobs]),
                          deadline=deadline, idempotent=False, what=f"put on {self.name!r}"))

    def _reclaim(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_reclaim < self._lease / 2:
            return
        self._last_reclaim = now
        me = self._consumer()
        script = self._engine.script(_JRECLAIM)
        got = self._engine.call(
            lambda r: script(keys=[self._stream, self._stats, self._dead, self._chan],
                             args=[me, self._hb, self._max_deliveries]),
            what=f"reclaiming on {self.name!r}")
        for mid, fields in got:
            # XCLAIM's reply in a script: [id, [field, value, ...]]
            d = dict(zip(fields[::2], fields[1::2]))
            self._buffer.append((mid, d.get(b"d", b"")))
        # Entries pending for this consumer that this handle does not know of
        # (a reply lost to a dropped connection or a timeout, after Redis had
        # applied the read or the claim) are delivered now rather than held
        # forever by a live consumer.
        # (XPENDING and XRANGE: reading them has no side effect on delivery counts.)
        mine = self._engine.call(
            lambda r: r.xpending_range(self._stream, "g", min="-", max="+", count=1000,
                                       consumername=me),
            what=f"get on {self.name!r}")
        known = set(self._pending) | {m for m, _ in self._buffer}
        for p in mine or []:
            mid = p["message_id"]
            if mid not in known:
                entry = self._engine.call(lambda r: r.xrange(self._stream, mid, mid),  # noqa: B023
                                          what=f"get on {self.name!r}")
                if entry:
                    self._buffer.append((mid, entry[0][1].get(b"d", b"")))

    def _read(self, count: int, wait: float | None) -> list[tuple[bytes, bytes]]:
        me = self._consumer()

        calls = 0

        def read(r: redis.Redis) -> Any:
            nonlocal calls
            calls += 1
            try:
                if calls > 1:
                    # the reply of a read was lost (connection dropped, Redis
                    # restarted): what it delivered is pending for this consumer;
                    # deliver it now, except what the caller already holds
                    mine = r.xreadgroup("g", me, {self._stream: "0"}, count=1000)
                    known = set(self._pending) | {m for m, _ in self._buffer}
                    lost = [(m, f) for _, entries in mine or [] for m, f in entries
                            if m not in known and f]
                    if lost:
                        return [(self._stream, lost[:count])]
                return r.xreadgroup("g", me, {self._stream: ">"}, count=count,
                                    block=None if wait is None else max(1, int(wait * 1000)))
            except redis.ResponseError as e:
                if "NOGROUP" not in str(e):
                    raise
                self._ensure_group()  # Redis restarted without persistence
                return []
        got = self._engine.call(read, what=f"get on {self.name!r}")
        out = []
        for _, entries in got or []:
            for mid, fields in entries:
                out.append((mid, fields.get(b"d", b"")))
        return out

    def _deliver(self, entries: list[tuple[bytes, bytes]]) -> list[Any]:
        out = []
        objs = self._engine.loads_many([blob for _, blob in entries], self._stream)
        for (mid, blob), obj in zip(entries, objs):
            if obj is Engine._BAD:
                self._refuse(mid, blob)
                continue
            self._pending.append(mid)
            out.append(obj)
        self._space_freed(len(out))
        return out

    def _refuse(self, mid: bytes, blob: bytes) -> None:
        def move(r: redis.Redis) -> None:
            p = r.pipeline()
            p.xadd(self._dead, {"id": mid, "deliveries": 1, "reason": "bad signature",
                                "d": blob})
            p.hincrby(self._stats, "rejected", 1)
            p.execute()
            self._engine.script(_JDONE)(keys=[self._stream, self._stats, self._chan],
                                        args=[mid])
        self._engine.call(move, what="refusing a message")

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        return self.get_many(1, block, timeout)[0]

    def get_many(self, max_messages: int | None = None, block: bool = True,
                 timeout: float | None = None) -> list[Any]:
        self._check_open()
        if max_messages is not None and max_messages < 1:
            raise ValueError("max_messages must be >= 1 or None")
        count = max_messages or 1000
        deadline = _deadline(block, timeout)
        with self._lock:
            while True:
                self._reclaim()
                if self._buffer:
                    take = [self._buffer.popleft()
                            for _ in range(min(count, len(self._buffer)))]
                    items = self._deliver(take)
                    if items:
                        return items
                    continue
                if deadline is not None and deadline <= time.monotonic():
                    entries = self._read(count, None)  # no BLOCK: whatever is there now
                else:
                    entries = self._read(count, min(_remaining(deadline), self._lease / 2))
                items = self._deliver(entries)
                if items:
                    return items
                if deadline is not None and time.monotonic() >= deadline:
                    raise queue.Empty

    def task_done(self) -> None:
        """Acknowledge the oldest message this handle got and has not yet acknowledged."""
        with self._lock:
            if self._pid != os.getpid():
                self._reset_consumer()
            if not self._pending:
                raise ValueError("task_done() called too many times")
            mid = self._pending.popleft()
        script = self._engine.script(_JDONE)
        self._engine.call(lambda r: script(keys=[self._stream, self._stats, self._chan],
                                           args=[mid]), what=f"task_done on {self.name!r}")

    def join(self, timeout: float | None = None) -> bool:
        """Wait until every message put has been acknowledged (or dead-lettered).

        Returns True, or False if ``timeout`` seconds passed first."""
        deadline = _deadline(True, timeout)

        def done() -> bool | None:
            n = self._engine.call(lambda r: r.hget(self._stats, "unfinished"), what="join")
            return True if n is None or int(n) <= 0 else None
        return bool(self._engine.wait_channel(self._chan, done, deadline))

    def qsize(self) -> int:
        """Messages waiting for a consumer (not counting pending ones)."""
        s = self.statistics()
        return s["messages"]

    def statistics(self) -> dict[str, int]:
        """messages (queued), pending (delivered, unacknowledged), unfinished, put,
        done, redelivered, dead (dead-lettered), rejected (bad signature)."""
        def read(r: redis.Redis) -> list[Any]:
            p = r.pipeline()
            p.xlen(self._stream)
            p.xpending(self._stream, "g")
            p.hgetall(self._stats)
            return p.execute(raise_on_error=False)
        n, pend, stats = self._engine.call(read, what="statistics")
        pending = pend["pending"] if isinstance(pend, dict) else 0
        if not isinstance(n, int):
            n = 0
        out = {"messages": n - pending, "pending": pending, "maxsize": self._maxsize}
        for k in ("put", "done", "unfinished", "redelivered", "dead", "rejected"):
            out[k] = int(stats.get(k.encode(), 0)) if isinstance(stats, dict) else 0
        return out

    def dead_letters(self) -> list[dict[str, Any]]:
        """The dead-letter stream: each message's id, deliveries, reason and the object
        (None for a message whose signature did not verify)."""
        entries = self._engine.call(lambda r: r.xrange(self._dead), what="dead letters")
        out = []
        for _, f in entries:
            blob = f.get(b"d", b"")
            reason = f.get(b"reason", b"").decode()
            if reason == "bad signature":
                obj = None
            else:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    obj = self._engine.loads(blob, self._stream)
                obj = None if obj is Engine._BAD else obj
            out.append({"id": f.get(b"id", b"").decode(), "deliveries":
                        int(f.get(b"deliveries", 0)), "reason": reason, "obj": obj})
        return out

    def close(self) -> None:
        self._closed = True
        if self._lease_id is not None and self._pid == os.getpid():
            self._engine.keeper.remove(self._lease_id)
            self._lease_id = None

    def __del__(self) -> None:
        try:
            if self._lease_id is not None and self._pid == os.getpid():
                self._engine.keeper.remove(self._lease_id)
        except Exception:
            pass
