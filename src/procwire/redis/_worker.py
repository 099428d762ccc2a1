"""The worker side of the Redis Pool: one loop, run by the Pool's local worker
processes and by ``procwire worker`` on any machine.

Keys of pool NAME (``procwire:NAME:``):

* ``tasks``: a stream, consumer group ``w``. An entry is one task or one
  chunk of a map: ``d`` (signed pickle of (func, kind, args)), ``c`` (the
  client's id), ``j`` (job), ``i`` (chunk index), ``n`` (tasks in it),
  ``a`` (attempt), ``r`` (retries allowed).
* ``hb:CONSUMER``: each worker's heartbeat, renewed every third of the lease.
* ``r:CLIENT``: the results list of one Pool client (signed pickles).
* ``stats``: counters; ``done_by``: tasks done per worker; ``workers``: who.

A worker takes one entry at a time (XREADGROUP COUNT 1), runs it, and
publishes the result with one script that XACKs the entry and pushes the
result only if the entry was still pending for it: a worker presumed dead
whose entry was re-queued cannot deliver a duplicate. Before blocking, every
worker (and the client) re-queues the pending entries of workers whose
heartbeat expired, or fails them with WorkerLost when their retries are
spent.
"""
from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

import redis
from procwire.redis._engine import PREFIX, SLICE, Engine, identity

GROUP = "w"

SUBMIT = """
-- KEYS: tasks, stats; ARGV: client, retries, job, then (chunk index, tasks in it,
-- payload) per entry. One XADD per entry, and the submitted counter.
local total = 0
for i = 4, #ARGV, 3 do
  redis.call('XADD', KEYS[1], '*', 'd', ARGV[i + 2], 'c', ARGV[1], 'j', ARGV[3],
             'i', ARGV[i], 'n', ARGV[i + 1], 'a', 0, 'r', ARGV[2])
  total = total + tonumber(ARGV[i + 1])
end
redis.call('HINCRBY', KEYS[2], 'submitted', total)
return total
"""

_FINISH = """
-- KEYS: tasks, results, stats, done_by; ARGV: id, result, tasks in it, consumer
if redis.call('XACK', KEYS[1], 'w', ARGV[1]) == 1 then
  redis.call('XDEL', KEYS[1], ARGV[1])
  redis.call('RPUSH', KEYS[2], ARGV[2])
  redis.call('PEXPIRE', KEYS[2], 86400000)
  redis.call('HINCRBY', KEYS[3], 'done', tonumber(ARGV[3]))
  redis.call('HINCRBY', KEYS[4], ARGV[4], tonumber(ARGV[3]))
  return 1
end
return 0
"""

# Re-queue (attempt + 1) or fail (WorkerLost) the pending entries of workers
# whose heartbeat expired; with ARGV[3] set, release the named consumer's
# entries without counting an attempt (a worker that stops early).
_RECLAIM = """
-- KEYS: tasks, stats; ARGV: key prefix, me, release-this-consumer ('' = none)
local ok, consumers = pcall(redis.call, 'XINFO', 'CONSUMERS', KEYS[1], 'w')
if not ok then return 0 end
local n = 0
for _, c in ipairs(consumers) do
  local name, pending
  for i = 1, #c, 2 do
    if c[i] == 'name' then name = c[i + 1] elseif c[i] == 'pending' then pending = c[i + 1] end
  end
  local release = (name == ARGV[3])
  if release or (name ~= ARGV[2] and redis.call('EXISTS', ARGV[1] .. 'hb:' .. name) == 0) then
    if pending > 0 then
      local entries = redis.call('XPENDING', KEYS[1], 'w', '-', '+', 1000, name)
      for _, p in ipairs(entries) do
        local id = p[1]
        local e = redis.call('XRANGE', KEYS[1], id, id)
        if #e > 0 then
          local f = {}
          local kv = e[1][2]
          for i = 1, #kv, 2 do f[kv[i]] = kv[i + 1] end
          local attempt = tonumber(f['a'])
          if release then
            redis.call('XADD', KEYS[1], '*', 'd', f['d'], 'c', f['c'], 'j', f['j'], 'i', f['i'],
                       'n', f['n'], 'a', attempt, 'r', f['r'])
            redis.call('HINCRBY', KEYS[2], 'released', tonumber(f['n']))
          elseif attempt < tonumber(f['r']) then
            redis.call('XADD', KEYS[1], '*', 'd', f['d'], 'c', f['c'], 'j', f['j'], 'i', f['i'],
                       'n', f['n'], 'a', attempt + 1, 'r', f['r'])
            redis.call('HINCRBY', KEYS[2], 'retried', tonumber(f['n']))
          else
            local rk = ARGV[1] .. 'r:' .. f['c']
            redis.call('RPUSH', rk, 'L:' .. f['j'] .. ':' .. f['i'] .. ':' .. name)
            redis.call('PEXPIRE', rk, 86400000)
            redis.call('HINCRBY', KEYS[2], 'lost', tonumber(f['n']))
          end
          n = n + 1
        end
        redis.call('XACK', KEYS[1], 'w', id)
        redis.call('XDEL', KEYS[1], id)
      end
    end
    if #redis.call('XPENDING', KEYS[1], 'w', '-', '+', 1, name) == 0 then
      redis.call('XGROUP', 'DELCONSUMER', KEYS[1], 'w', name)
      redis.call('HDEL', ARGV[1] .. 'workers', name)
    end
  end
end
return n
"""


class Keys:
    def __init__(self, pool: str) -> None:
        self.prefix = f"{PREFIX}{pool}:"
        self.tasks = self.prefix + "tasks"
        self.stats = self.prefix + "stats"
        self.done_by = self.prefix + "done_by"
        self.workers = self.prefix + "workers"

    def results(self, client: str) -> str:
        return self.prefix + "r:" + client

    def hb(self, consumer: str) -> str:
        return self.prefix + "hb:" + consumer


def ensure_group(engine: Engine, keys: Keys) -> None:
    def create(r: redis.Redis) -> None:
        try:
            r.xgroup_create(keys.tasks, GROUP, id="0", mkstream=True)
        except redis.ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise
    engine.call(create, what="creating the pool's task stream")


def reclaim(engine: Engine, keys: Keys, me: str = "", release: str = "") -> int:
    script = engine.script(_RECLAIM)
    return int(engine.call(lambda r: script(keys=[keys.tasks, keys.stats],
                                            args=[keys.prefix, me, release]),
                           what="re-queueing lost tasks"))


def run_entry(engine: Engine, scope: str, blob: bytes) -> Any:
    """Run one entry: a list of (ok, value) per task, or None if refused."""
    payload = engine.loads(blob, scope)
    if payload is Engine._BAD:
        return None
    func, kind, args = payload
    out = []
    if kind == "apply":
        calls = [args]
    else:
        calls = [((a if kind == "starmap" else (a,)), {}) for a in args]
    for a, kw in calls:
        try:
            out.append((True, func(*a, **kw)))
        except BaseException as e:
            if isinstance(e, (KeyboardInterrupt, SystemExit)) and not isinstance(e, Exception):
                raise
            out.append((False, _portable(e)))
    return out


def _portable(e: BaseException) -> Any:
    """The exception with its traceback as text, as multiprocessing's pool sends it
    (unpickled, it has ``__cause__`` = RemoteTraceback); made picklable if it is not."""
    import pickle
    from multiprocessing.pool import ExceptionWithTraceback  # type: ignore[attr-defined]
    tb = e.__traceback__
    try:
        pickle.loads(pickle.dumps(e))
    except Exception:
        e = RuntimeError(f"{type(e).__name__}: {e} (the original exception is not picklable)")
    return ExceptionWithTraceback(e, tb)


class Worker:
    """Takes the pool's tasks one at a time until told to stop."""

    def __init__(self, engine: Engine, pool: str, lease: float,
                 max_tasks: int | None = None, consumer: str | None = None) -> None:
        self.engine = engine
        self.keys = Keys(pool)
        self.lease = lease
        self.max_tasks = max_tasks
        self.me = consumer or identity()
        self.done = 0
        self.stopping = False
        self.idle = True
        self.recheck = True

    def run(self, on_task: Callable[[int], None] | None = None) -> None:
        e, k = self.engine, self.keys
        ensure_group(e, k)
        e.call(lambda r: r.set(k.hb(self.me), b"1", px=int(self.lease * 1000)), what="heartbeat")
        lid = e.keeper.add("k", k.hb(self.me), "1", self.lease)
        e.call(lambda r: r.hset(k.workers, self.me, str(os.getpid())), what="worker")
        finish = e.script(_FINISH)
        last_reclaim = 0.0
        try:
            while not self.stopping:
                if self.max_tasks is not None and self.done >= self.max_tasks:
                    break
                now = time.monotonic()
                if now - last_reclaim > self.lease / 3:
                    reclaim(e, k, self.me)
                    last_reclaim = now
                self.idle = True
                if self.stopping:
                    break
                got = self._read(min(SLICE, self.lease / 3))
                self.idle = False
                for mid, f in got:
                    n = int(f.get(b"n", 1))
                    result = run_entry(e, k.tasks, f.get(b"d", b""))
                    client = f[b"c"].decode()
                    job, index = f[b"j"].decode(), f[b"i"].decode()
                    if result is None:
                        blob = f"R:{job}:{index}".encode()  # refused: bad signature
                    else:
                        blob = e.dumps((int(job), int(index), result), k.results(client))
                    e.call(lambda r: finish(keys=[k.tasks, k.results(client),  # noqa: B023
                                                  k.stats, k.done_by],  # (e.call runs it now)
                                            args=[mid, blob, n, self.me]),  # noqa: B023
                           what="publishing a result")
                    self.done += 1
                    if on_task is not None:
                        on_task(n)
        finally:
            self.idle = False
            e.keeper.remove(lid)
            try:
                # stopping early: give back what this worker took but did not finish
                reclaim(e, k, self.me, release=self.me)
                e.call(lambda r: r.delete(k.hb(self.me)), what="heartbeat")
            except Exception:
                pass

    def _read(self, wait: float) -> list[tuple[bytes, dict[bytes, bytes]]]:
        calls = 0

        def read(r: redis.Redis) -> Any:
            nonlocal calls
            calls += 1
            try:
                if calls > 1 or self.recheck:
                    # A read whose reply was lost (the connection dropped, Redis
                    # restarted) may have made an entry pending for this worker:
                    # this worker's own pending entries come first.
                    mine = r.xreadgroup(GROUP, self.me, {self.keys.tasks: "0"}, count=1)
                    if mine and mine[0][1]:
                        return mine
                    self.recheck = False
                return r.xreadgroup(GROUP, self.me, {self.keys.tasks: ">"}, count=1,
                                    block=max(1, int(wait * 1000)))
            except redis.ResponseError as err:
                if "NOGROUP" not in str(err):
                    raise
                ensure_group(self.engine, self.keys)
                return []
        got = self.engine.call(read, what="waiting for tasks")
        return [x for _, entries in got or [] for x in entries]


class _Stop(BaseException):
    pass


def worker_process(url: str, authkey: bytes | None, pool: str, lease: float,
                   initializer: Any, initargs: Any, max_tasks: int | None,
                   parent_death_signal: bool = True, consumer: str | None = None) -> None:
    """Entry point of one worker process (the Pool's and ``procwire worker``'s).

    SIGTERM: finish the task at hand, then exit (at once if idle). SIGINT is
    left to the parent, which decides. With parent_death_signal, the kernel
    kills this process if its parent dies (a SIGKILLed ``procwire worker``
    does not leave orphans running tasks).
    """
    if parent_death_signal:
        _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from procwire.redis._engine import close_all, engine_for
    engine = engine_for(url, authkey)
    worker = Worker(engine, pool, lease, max_tasks, consumer)

    def on_term(signum: int, frame: Any) -> None:
        worker.stopping = True
        if worker.idle:
            raise _Stop

    signal.signal(signal.SIGTERM, on_term)
    if initializer is not None:
        initializer(*initargs)
    try:
        worker.run()
    except _Stop:
        pass
    finally:
        close_all()
    sys.exit(0)


def _die_with_parent() -> None:
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass
