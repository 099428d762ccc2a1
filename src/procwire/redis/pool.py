"""``ctx.Pool`` and ``ctx.ProcessPoolExecutor`` on Redis: tasks queued in Redis,
run by this Pool's local worker processes and by ``procwire worker`` on any
machine (see :mod:`procwire.redis._worker` for the keys and the protocol).

Crash semantics: a worker (or its machine) that dies stops renewing its
heartbeat; within about ``lease`` seconds its pending task is re-queued, up
to ``retries`` times, and then fails with ``WorkerLost``. Results are
published atomically with the acknowledgement, so a task re-run after its
worker was presumed dead yields one result, never two.

The result objects are the local pool's (:mod:`procwire.pool.results`:
``ApplyResult``, ``MapResult``, ``IMapIterator``, with ``multiprocessing.pool``'s
API); this module only feeds them the outcomes that arrive from Redis.
"""
from __future__ import annotations

import concurrent.futures
import itertools
import multiprocessing
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import redis
from procwire.pool.results import (
    ApplyResult,
    IMapIterator,
    IMapUnorderedIterator,
    MapResult,
    PoolTerminated,
)
from procwire.redis import _worker
from procwire.redis._engine import SLICE, Engine, new_name
from procwire.redis.context import RedisContext, RedisObject
from procwire.redis.errors import WorkerLost

RUN, CLOSE, TERMINATE = "running", "closed", "terminated"
_KEEP = 64  # results left in the in-flight list before it is emptied
_SUBMIT_CHUNK = 1000  # entries per script call (Lua's unpack and argument limits)


@dataclass
class _Job:
    """One submitted job and the result object its outcomes go to.

    ``kind``: "apply" (an ApplyResult), "map" (a MapResult: a chunk fails
    whole at its first exception, as in multiprocessing) or "imap" (an
    IMapIterator fed one outcome per task, so each task's exception is raised
    at its place and the iteration goes on). ``seen`` holds the chunks
    delivered: the protocol delivers each once, and a second delivery is
    counted in ``Pool.duplicate_results`` instead of reaching the result.
    """

    result: Any
    kind: str
    chunksize: int = 1
    length: int = 1
    left: int = 1
    seen: set[int] = field(default_factory=set)

    def chunk_len(self, index: int) -> int:
        return min(self.chunksize, self.length - index * self.chunksize)

    def fail_unfinished(self, error: BaseException) -> None:
        """Every chunk not yet delivered fails with ``error`` (the pool was terminated)."""
        for index in range(-(-self.length // self.chunksize)):
            if index not in self.seen:
                self.seen.add(index)
                self.deliver(index, [(False, error)] * self.chunk_len(index))
                if self.kind != "imap":
                    return  # the first failure completes an apply or a map

    def deliver(self, index: int, outcomes: list[tuple[bool, Any]]) -> None:
        if self.kind == "apply":
            self.result._set(0, outcomes[0])
        elif self.kind == "map":
            failed = next((o for o in outcomes if not o[0]), None)
            self.result._set(index, failed or (True, [v for _, v in outcomes]))
        else:
            start = index * self.chunksize
            self.result._set_many([(start + k, o) for k, o in enumerate(outcomes)])


class Pool(RedisObject):
    """``multiprocessing.Pool`` whose tasks go through Redis to local and remote workers."""

    _kind = "Pool"

    def __init__(self, processes: int | None = None, initializer: Any = None,
                 initargs: Iterable[Any] = (), maxtasksperchild: int | None = None, *,
                 name: str | None = None, ctx: RedisContext, retries: int = 0,
                 lease: float | None = None, mp_context: Any = None) -> None:
        if processes is None:
            processes = os.cpu_count() or 1
        if not isinstance(processes, int) or processes < 0:
            raise ValueError("processes must be an int >= 0 (0: remote workers only)")
        if not isinstance(retries, int) or retries < 0:
            raise ValueError("retries must be an int >= 0")
        if maxtasksperchild is not None and (not isinstance(maxtasksperchild, int)
                                             or maxtasksperchild < 1):
            raise ValueError("maxtasksperchild must be a positive int or None")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        super().__init__(name, ctx)
        # not _keys: that is RedisObject._keys(), which unlink() calls
        self._task_keys = _worker.Keys(self.name)
        self._retries = retries
        self._lease = float(lease) if lease is not None else ctx.lease
        self._processes = processes
        self._initializer = initializer
        self._initargs = tuple(initargs)
        self._maxtasks = maxtasksperchild
        self._mp = mp_context or multiprocessing.get_context("forkserver")
        self._client = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._results_key = self._task_keys.results(self._client)
        self._inflight = self._results_key + ":inflight"
        self._counter = itertools.count()
        # results received twice for the same chunk (the protocol's guarantee
        # is that this stays 0; the chaos test checks it)
        self.duplicate_results = 0
        self._jobs: dict[int, Any] = {}
        self._jobs_lock = threading.Lock()
        self._jobs_empty = threading.Condition(self._jobs_lock)
        self._state = RUN
        _worker.ensure_group(self._engine, self._task_keys)
        self._workers: list[Any] = []
        self._worker_ids = itertools.count()
        self._consumers: list[str] = []
        for _ in range(processes):
            self._start_worker()
        self._stop = threading.Event()
        self._handler = threading.Thread(target=self._handle_results, daemon=True,
                                         name=f"procwire-redis-pool {self.name}")
        self._handler.start()

    def __reduce__(self) -> tuple[Any, ...]:
        raise TypeError("a Pool cannot be pickled; pass its name and start "
                        "'procwire worker URL --pool NAME' where the work should run")

    # -- local workers -----------------------------------------------------------------

    def _start_worker(self) -> None:
        consumer = f"{self._client}:w{next(self._worker_ids)}"
        p = self._mp.Process(target=_worker.worker_process,
                             args=(self._ctx.url, self._ctx.authkey, self.name, self._lease,
                                   self._initializer, self._initargs, self._maxtasks, False,
                                   consumer),
                             daemon=True, name=f"procwire-redis-worker {self.name}")
        p.start()
        self._consumers.append(consumer)
        self._workers.append(p)

    def _maintain(self) -> None:
        # replace local workers that exited (maxtasksperchild) or died
        for p in list(self._workers):
            if p.exitcode is not None:
                p.join(0)
                self._workers.remove(p)
                p.close()  # its sentinel pipe
                if self._state == RUN:
                    self._start_worker()

    # -- results -----------------------------------------------------------------------

    def _handle_results(self) -> None:
        """Move each result to the in-flight list (BLMOVE) and dispatch it.

        The in-flight list keeps a result whose BLMOVE reply was lost (the
        connection dropped after Redis had moved it): ``_recover`` dispatches
        those. Between two BLMOVEs that were answered, everything in it has been
        dispatched, so it is emptied by one DEL every ``_KEEP`` results or when
        idle, not by one LREM per result (a round trip off the critical path).
        """
        e, k = self._engine, self._task_keys
        last_reclaim = 0.0
        kept = 0  # results dispatched, still in the in-flight list
        unsure = False  # the in-flight list may hold results not yet dispatched
        while not self._stop.is_set():
            try:
                if unsure:
                    self._recover()
                    unsure, kept = False, 0
                now = time.monotonic()
                if now - last_reclaim > self._lease / 3:
                    _worker.reclaim(e, k)
                    last_reclaim = now
                    if self._state == RUN:
                        self._maintain()
                calls = 0

                def move(r: redis.Redis) -> Any:
                    nonlocal calls
                    calls += 1
                    return r.blmove(self._results_key, self._inflight,
                                    min(SLICE, self._lease / 3), "LEFT", "RIGHT")
                got = e.call(move, what="waiting for results")
                if got is not None:
                    kept += 1
                    self._dispatch(got)
                if calls > 1:  # a reply was lost: something may be in flight unseen
                    unsure = True
                elif kept and (got is None or kept >= _KEEP):
                    e.call(lambda r: r.delete(self._inflight), what="results")
                    kept = 0
            except Exception:
                unsure = True
                if self._stop.wait(0.5):
                    return

    def _recover(self) -> None:
        """Results moved to the in-flight list by a BLMOVE whose reply was lost."""
        e = self._engine
        for blob in e.call(lambda r: r.lrange(self._inflight, 0, -1), what="results"):
            self._dispatch(blob, recovering=True)
            e.call(lambda r: r.lrem(self._inflight, 1, blob),  # noqa: B023 (runs now)
                   what="results")

    def _dispatch(self, blob: bytes, recovering: bool = False) -> None:
        if blob[:2] in (b"L:", b"R:"):
            kind, job, chunk, *rest = blob.decode().split(":", 3)
            job_id, index = int(job), int(chunk)
            if kind == "L":
                who = rest[0] if rest else "?"
                try:
                    pid: int | None = int(who.split(":")[-2])
                except (IndexError, ValueError):
                    pid = None
                err: BaseException = WorkerLost(
                    f"task(s) of chunk {index} were lost: worker {who} of "
                    f"pool {self.name!r} died (heartbeat expired) and "
                    f"{self._retries} retr{'y' if self._retries == 1 else 'ies'} were spent",
                    pid, self._retries + 1)
            else:
                err = RuntimeError("a task's signature did not verify at the worker: it was "
                                   "refused (check that every worker uses the same authkey)")
            with self._jobs_lock:
                job_obj = self._jobs.get(job_id)
            if job_obj is not None:
                self._deliver(job_id, job_obj, index,
                              [(False, err)] * job_obj.chunk_len(index), recovering)
            return
        payload = self._engine.loads(blob, self._results_key)
        if payload is Engine._BAD:
            return
        job_id, index, outcomes = payload
        with self._jobs_lock:
            job_obj = self._jobs.get(job_id)
        if job_obj is not None:
            self._deliver(job_id, job_obj, index, outcomes, recovering)
        elif not recovering:
            self.duplicate_results += 1  # a result for a job already complete

    def _deliver(self, job_id: int, job: _Job, index: int, outcomes: list[tuple[bool, Any]],
                 recovering: bool) -> None:
        if index in job.seen:
            if not recovering:  # recovering: dispatched already, still in the in-flight list
                self.duplicate_results += 1
            return
        job.seen.add(index)
        job.left -= 1
        try:
            job.deliver(index, outcomes)
        finally:
            if job.left == 0:
                self._job_done(job_id)

    def _job_done(self, job_id: int) -> None:
        with self._jobs_lock:
            self._jobs.pop(job_id, None)
            if not self._jobs:
                self._jobs_empty.notify_all()

    # -- submitting ----------------------------------------------------------------------

    def _check_running(self) -> None:
        if self._state != RUN:
            raise ValueError("Pool not running")

    def _submit(self, job: _Job, entries: list[tuple[int, int, Any]]) -> None:
        """XADD every (chunk index, tasks in it, payload): one script, one round trip."""
        job_id = next(self._counter)
        job.left = len(entries)
        with self._jobs_lock:
            self._jobs[job_id] = job
        k = self._task_keys
        blobs = self._engine.dumps_many([p for _, _, p in entries], k.tasks)
        args: list[Any] = [self._client, self._retries, job_id]
        for (i, n, _), blob in zip(entries, blobs):
            args += (i, n, blob)
        submit = self._engine.script(_worker.SUBMIT)
        try:
            for start in range(0, len(args) - 3, 3 * _SUBMIT_CHUNK):
                part = args[:3] + args[3 + start:3 + start + 3 * _SUBMIT_CHUNK]
                self._engine.call(lambda r: submit([k.tasks, k.stats], part),  # noqa: B023
                                  idempotent=False, what=f"submitting to pool {self.name!r}")
        except BaseException:
            self._job_done(job_id)
            raise

    def apply_async(self, func: Callable[..., Any], args: Iterable[Any] = (),
                    kwds: dict[str, Any] | None = None, callback: Any = None,
                    error_callback: Any = None) -> ApplyResult:
        self._check_running()
        result = ApplyResult(self, callback, error_callback)
        self._submit(_Job(result, "apply"),
                     [(0, 1, (func, "apply", (tuple(args), dict(kwds or {}))))])
        return result

    def apply(self, func: Callable[..., Any], args: Iterable[Any] = (),
              kwds: dict[str, Any] | None = None) -> Any:
        return self.apply_async(func, args, kwds).get()

    def _chunks(self, func: Callable[..., Any], kind: str, items: list[Any],
                chunksize: int) -> list[tuple[int, int, Any]]:
        return [(i, len(items[s:s + chunksize]), (func, kind, items[s:s + chunksize]))
                for i, s in enumerate(range(0, len(items), chunksize))]

    def _chunksize(self, n: int, chunksize: int | None) -> int:
        if chunksize is None:
            chunksize, extra = divmod(n, max(self._processes, 1) * 4)
            if extra:
                chunksize += 1
        if chunksize < 1:
            chunksize = 1
        return chunksize

    def _map_async(self, func: Callable[..., Any], iterable: Iterable[Any], kind: str,
                   chunksize: int | None, callback: Any, error_callback: Any) -> MapResult:
        self._check_running()
        items = list(iterable)
        chunksize = self._chunksize(len(items), chunksize)
        result = MapResult(self, chunksize, len(items), callback, error_callback)
        if items:
            self._submit(_Job(result, "map", chunksize, len(items)),
                         self._chunks(func, kind, items, chunksize))
        return result

    def map_async(self, func: Callable[..., Any], iterable: Iterable[Any],
                  chunksize: int | None = None, callback: Any = None,
                  error_callback: Any = None) -> MapResult:
        return self._map_async(func, iterable, "map", chunksize, callback, error_callback)

    def map(self, func: Callable[..., Any], iterable: Iterable[Any],
            chunksize: int | None = None) -> list[Any]:
        return self.map_async(func, iterable, chunksize).get()

    def starmap_async(self, func: Callable[..., Any], iterable: Iterable[Iterable[Any]],
                      chunksize: int | None = None, callback: Any = None,
                      error_callback: Any = None) -> MapResult:
        return self._map_async(func, iterable, "starmap", chunksize, callback, error_callback)

    def starmap(self, func: Callable[..., Any], iterable: Iterable[Iterable[Any]],
                chunksize: int | None = None) -> list[Any]:
        return self.starmap_async(func, iterable, chunksize).get()

    def _imap(self, func: Callable[..., Any], iterable: Iterable[Any], chunksize: int,
              ordered: bool) -> IMapIterator:
        self._check_running()
        if chunksize < 1:
            raise ValueError(f"chunksize must be 1+, not {chunksize}")
        items = list(iterable)
        # fed one outcome per task (not per chunk): indices count tasks
        it = IMapIterator(self) if ordered else IMapUnorderedIterator(self)
        it._set_length(len(items))
        if items:
            self._submit(_Job(it, "imap", chunksize, len(items)),
                         self._chunks(func, "map", items, chunksize))
        return it

    def imap(self, func: Callable[..., Any], iterable: Iterable[Any],
             chunksize: int = 1) -> IMapIterator:
        return self._imap(func, iterable, chunksize, True)

    def imap_unordered(self, func: Callable[..., Any], iterable: Iterable[Any],
                       chunksize: int = 1) -> IMapIterator:
        return self._imap(func, iterable, chunksize, False)

    # -- lifetime ---------------------------------------------------------------------------

    def statistics(self) -> dict[str, int]:
        return pool_statistics(self._engine, self._task_keys)

    def close(self) -> None:
        if self._state == RUN:
            self._state = CLOSE

    def terminate(self) -> None:
        """Stop now: local workers are killed and their tasks given back to the queue;
        results not yet received fail with ``PoolTerminated`` (as the local pool's)."""
        if self._state == TERMINATE:
            return
        self._state = TERMINATE
        for p in self._workers:
            if p.exitcode is None:
                p.kill()
        for p in self._workers:
            p.join(30)
        self._stop.set()
        self._close_workers()
        self._handler.join(30)
        try:
            for c in self._consumers:  # give their tasks back, without counting an attempt
                _worker.reclaim(self._engine, self._task_keys, release=c)
            self._engine.call(lambda r: r.delete(self._results_key, self._inflight),
                              what="terminate")
        except Exception:
            pass
        with self._jobs_lock:
            jobs = list(self._jobs.values())
            self._jobs.clear()
            self._jobs_empty.notify_all()
        for job in jobs:
            job.fail_unfinished(PoolTerminated(f"pool {self.name!r} was terminated before this "
                                               "task's result arrived"))

    def join(self, timeout: float | None = None) -> None:
        """Wait for every task submitted by this Pool, then stop its local workers."""
        if self._state == RUN:
            raise ValueError("Pool is still running: close() or terminate() it first")
        deadline = None if timeout is None else time.monotonic() + timeout
        if self._state == CLOSE:
            with self._jobs_lock:
                while self._jobs:
                    left = SLICE if deadline is None else min(SLICE, deadline - time.monotonic())
                    if left <= 0:
                        return
                    self._jobs_empty.wait(left)
            for p in self._workers:
                if p.exitcode is None:
                    p.terminate()  # SIGTERM: an idle worker leaves at once
            for p in self._workers:
                p.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
            self._stop.set()
            self._handler.join(SLICE + 5)
            self._close_workers()

    def _close_workers(self) -> None:
        for p in list(self._workers):
            try:
                p.close()
                self._workers.remove(p)
            except ValueError:
                pass  # still running (a join that timed out)

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.terminate()


def pool_statistics(engine: Engine, keys: _worker.Keys) -> dict[str, int]:
    def read(r: redis.Redis) -> list[Any]:
        p = r.pipeline()
        p.xlen(keys.tasks)
        p.xpending(keys.tasks, _worker.GROUP)
        p.hgetall(keys.stats)
        p.hkeys(keys.workers)
        return p.execute(raise_on_error=False)
    n, pend, stats, workers = engine.call(read, what="pool statistics")
    pending = pend["pending"] if isinstance(pend, dict) else 0
    n = n if isinstance(n, int) else 0
    stats = stats if isinstance(stats, dict) else {}
    alive = 0
    if isinstance(workers, list) and workers:
        hb = engine.call(lambda r: r.exists(*[keys.hb(w.decode()) for w in workers]),
                         what="pool statistics")
        alive = int(hb)
    out = {"queued": n - pending, "running": pending, "workers": alive}
    for f in ("submitted", "done", "retried", "lost", "released"):
        out[f] = int(stats.get(f.encode(), 0))
    return out


class ProcessPoolExecutor(concurrent.futures.Executor):
    """``concurrent.futures.ProcessPoolExecutor`` over a Redis Pool."""

    def __init__(self, max_workers: int | None = None, mp_context: Any = None,
                 initializer: Any = None, initargs: Iterable[Any] = (), *,
                 name: str | None = None, ctx: RedisContext, retries: int = 0,
                 lease: float | None = None) -> None:
        self._pool = Pool(max_workers, initializer, initargs, name=name or new_name("Pool"),
                          ctx=ctx, retries=retries, lease=lease, mp_context=mp_context)
        self._shutdown = False
        self._futures: set[concurrent.futures.Future[Any]] = set()
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return self._pool.name

    def submit(self, fn: Callable[..., Any], /, *args: Any,
               **kwargs: Any) -> concurrent.futures.Future[Any]:
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            fut: concurrent.futures.Future[Any] = concurrent.futures.Future()
            self._futures.add(fut)

        def done(f: concurrent.futures.Future[Any]) -> None:
            with self._lock:
                self._futures.discard(f)
        fut.add_done_callback(done)
        fut.set_running_or_notify_cancel()

        def ok(v: Any) -> None:
            if not fut.done():
                fut.set_result(v)

        def err(e: BaseException) -> None:
            if not fut.done():
                fut.set_exception(e)
        try:
            self._pool.apply_async(fn, args, kwargs, callback=ok, error_callback=err)
        except BaseException:
            with self._lock:
                self._futures.discard(fut)
            raise
        return fut

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._shutdown = True
        if cancel_futures:
            self._pool.terminate()
            for f in list(self._futures):
                f.cancel()
            return
        self._pool.close()
        if wait:
            self._pool.join()
        else:
            threading.Thread(target=self._pool.join, daemon=True).start()

