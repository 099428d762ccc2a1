"""``ctx.Pool`` and ``ctx.ProcessPoolExecutor`` on Redis: tasks queued in Redis,
run by this Pool's local worker processes and by ``procwire worker`` on any
machine (see :mod:`procwire.redis._worker` for the keys and the protocol).

Crash semantics: a worker (or its machine) that dies stops renewing its
heartbeat; within about ``lease`` seconds its pending task is re-queued, up
to ``retries`` times, and then fails with ``WorkerLost``. Results are
published atomically with the acknowledgement, so a task re-run after its
worker was presumed dead yields one result, never two.

The result classes follow ``multiprocessing.pool``'s (``ready``,
``successful``, ``wait``, ``get``; ``imap`` iterators with ``next(timeout)``).
"""
from __future__ import annotations

import collections
import concurrent.futures
import itertools
import multiprocessing
import os
import socket
import threading
import time
import uuid
from multiprocessing import TimeoutError
from typing import Any, Callable, Iterable, Iterator

import redis

from procwire.redis import _worker
from procwire.redis._engine import SLICE, Engine, new_name
from procwire.redis.context import RedisContext, RedisObject
from procwire.redis.errors import WorkerLost

RUN, CLOSE, TERMINATE = "running", "closed", "terminated"


class RemoteTraceback(Exception):
    def __init__(self, tb: str) -> None:
        self.tb = tb

    def __str__(self) -> str:
        return self.tb


def _rebuild_exc(e: BaseException) -> BaseException:
    tb = e.__dict__.pop("_procwire_remote_tb", None)
    if tb:
        e.__cause__ = RemoteTraceback(f'\n"""\n{tb}"""')
    return e


class ApplyResult:
    """The result of ``apply_async``; ``get(timeout)`` raises the task's exception."""

    def __init__(self, pool: "Pool", callback: Callable[[Any], Any] | None,
                 error_callback: Callable[[BaseException], Any] | None) -> None:
        self._pool = pool
        self._event = threading.Event()
        self._callback = callback
        self._error_callback = error_callback
        self._job = next(pool._counter)
        self._success = False
        self._value: Any = None

    def ready(self) -> bool:
        return self._event.is_set()

    def successful(self) -> bool:
        if not self.ready():
            raise ValueError(f"{self!r} not ready")
        return self._success

    def wait(self, timeout: float | None = None) -> None:
        _wait_event(self._event, timeout)

    def get(self, timeout: float | None = None) -> Any:
        self.wait(timeout)
        if not self.ready():
            raise TimeoutError
        if self._success:
            return self._value
        raise self._value

    def _set_chunk(self, index: int, results: list[tuple[bool, Any]]) -> None:
        self._success, self._value = results[0]
        if not self._success:
            self._value = _rebuild_exc(self._value)
        self._finish()

    def _finish(self) -> None:
        try:
            if self._success and self._callback is not None:
                self._callback(self._value)
            if not self._success and self._error_callback is not None:
                self._error_callback(self._value)
        finally:
            self._event.set()
            self._pool._job_done(self._job)


AsyncResult = ApplyResult


class MapResult(ApplyResult):
    def __init__(self, pool: "Pool", chunksize: int, length: int,
                 callback: Callable[[Any], Any] | None,
                 error_callback: Callable[[BaseException], Any] | None) -> None:
        super().__init__(pool, callback, error_callback)
        self._chunksize = chunksize
        self._length = length
        self._value = [None] * length
        self._left = -(-length // chunksize) if length else 0
        self._error: BaseException | None = None
        self._seen: set[int] = set()

    def _set_chunk(self, index: int, results: list[tuple[bool, Any]]) -> None:
        if index in self._seen:
            self._pool.duplicate_results += 1
            return
        self._seen.add(index)
        for k, (ok, value) in enumerate(results):
            if ok:
                self._value[index * self._chunksize + k] = value
            elif self._error is None:
                self._error = _rebuild_exc(value)
        self._left -= 1
        if self._left == 0:
            if self._error is not None:
                self._success, self._value = False, self._error
            else:
                self._success = True
            self._finish()


class IMapIterator:
    """``imap``'s iterator: results in order, each task's exception raised in turn."""

    def __init__(self, pool: "Pool", chunksize: int, length: int, ordered: bool = True) -> None:
        self._pool = pool
        self._job = next(pool._counter)
        self._chunksize = chunksize
        self._length = length
        self._ordered = ordered
        self._cond = threading.Condition(threading.Lock())
        self._items: dict[int, tuple[bool, Any]] = {}
        self._queue: collections.deque[tuple[bool, Any]] = collections.deque()
        self._index = 0
        self._received = 0
        self._seen: set[int] = set()
        if length == 0:
            pool._job_done(self._job)

    def __iter__(self) -> Iterator[Any]:
        return self

    def next(self, timeout: float | None = None) -> Any:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                if self._ordered and self._index in self._items:
                    ok, value = self._items.pop(self._index)
                    break
                if not self._ordered and self._queue:
                    ok, value = self._queue.popleft()
                    break
                if self._index >= self._length:
                    raise StopIteration
                left = SLICE if deadline is None else min(SLICE, deadline - time.monotonic())
                if left <= 0:
                    raise TimeoutError
                self._cond.wait(left)
            self._index += 1
        if ok:
            return value
        raise value

    __next__ = next

    def _set_chunk(self, index: int, results: list[tuple[bool, Any]]) -> None:
        with self._cond:
            if index in self._seen:
                self._pool.duplicate_results += 1
                return
            self._seen.add(index)
            for k, (ok, value) in enumerate(results):
                item = (ok, value if ok else _rebuild_exc(value))
                if self._ordered:
                    self._items[index * self._chunksize + k] = item
                else:
                    self._queue.append(item)
            self._received += len(results)
            done = self._received >= self._length
            self._cond.notify_all()
        if done:
            self._pool._job_done(self._job)


def _wait_event(event: threading.Event, timeout: float | None) -> None:
    # in slices, so that Ctrl-C in the main thread is seen promptly
    deadline = None if timeout is None else time.monotonic() + timeout
    while not event.is_set():
        left = SLICE if deadline is None else min(SLICE, deadline - time.monotonic())
        if left <= 0:
            return
        event.wait(left)


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
        self._keys = _worker.Keys(self.name)
        self._retries = retries
        self._lease = float(lease) if lease is not None else ctx.lease
        self._processes = processes
        self._initializer = initializer
        self._initargs = tuple(initargs)
        self._maxtasks = maxtasksperchild
        self._mp = mp_context or multiprocessing.get_context("forkserver")
        self._client = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._results_key = self._keys.results(self._client)
        self._inflight = self._results_key + ":inflight"
        self._counter = itertools.count()
        # results received twice for the same chunk (the protocol's guarantee
        # is that this stays 0; the chaos test checks it)
        self.duplicate_results = 0
        self._jobs: dict[int, Any] = {}
        self._jobs_lock = threading.Lock()
        self._jobs_empty = threading.Condition(self._jobs_lock)
        self._state = RUN
        _worker.ensure_group(self._engine, self._keys)
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
        e, k = self._engine, self._keys
        last_reclaim = 0.0
        while not self._stop.is_set():
            try:
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
                    self._dispatch(got)
                    e.call(lambda r: r.lrem(self._inflight, 1, got), what="results")
                if calls > 1:
                    self._recover()
            except Exception:  # noqa: BLE001 - Redis away: keep trying until stopped
                if self._stop.wait(0.5):
                    return
                try:
                    self._recover()
                except Exception:  # noqa: BLE001
                    pass

    def _recover(self) -> None:
        """Results moved to the in-flight list by a BLMOVE whose reply was lost."""
        e = self._engine
        for blob in e.call(lambda r: r.lrange(self._inflight, 0, -1), what="results"):
            self._dispatch(blob, recovering=True)
            e.call(lambda r: r.lrem(self._inflight, 1, blob), what="results")

    def _dispatch(self, blob: bytes, recovering: bool = False) -> None:
        if blob[:2] in (b"L:", b"R:"):
            kind, job, index, *rest = blob.decode().split(":", 3)
            job_, index_ = int(job), int(index)
            if kind == "L":
                who = rest[0] if rest else "?"
                try:
                    pid: int | None = int(who.split(":")[-2])
                except (IndexError, ValueError):
                    pid = None
                err: BaseException = WorkerLost(
                    f"task(s) of chunk {index_} were lost: worker {who} of "
                    f"pool {self.name!r} died (heartbeat expired) and "
                    f"{self._retries} retr{'y' if self._retries == 1 else 'ies'} were spent",
                    pid, self._retries + 1)
            else:
                err = RuntimeError("a task's signature did not verify at the worker: it was "
                                   "refused (check that every worker uses the same authkey)")
            with self._jobs_lock:
                job_obj = self._jobs.get(job_)
            if job_obj is not None:
                job_obj._set_chunk(index_, [(False, err)] * _chunk_len(job_obj, index_))
            return
        payload = self._engine.loads(blob, self._results_key)
        if payload is Engine._BAD:
            return
        job_, index_, results = payload
        with self._jobs_lock:
            job_obj = self._jobs.get(job_)
        if job_obj is not None:
            if recovering and index_ in getattr(job_obj, "_seen", ()):
                return  # dispatched before the reply of its LREM was lost
            job_obj._set_chunk(index_, results)
        elif not recovering:
            self.duplicate_results += 1  # a result for a job already complete

    def _job_done(self, job: int) -> None:
        with self._jobs_lock:
            self._jobs.pop(job, None)
            if not self._jobs:
                self._jobs_empty.notify_all()

    # -- submitting ----------------------------------------------------------------------

    def _check_running(self) -> None:
        if self._state != RUN:
            raise ValueError("Pool not running")

    def _submit(self, job: Any, entries: list[tuple[int, int, Any]]) -> None:
        """XADD every (chunk index, tasks in it, payload) in one round trip."""
        with self._jobs_lock:
            self._jobs[job._job] = job
        k = self._keys
        blobs = [(i, n, self._engine.dumps(p, k.tasks)) for i, n, p in entries]

        def add(r: redis.Redis) -> None:
            pipe = r.pipeline(transaction=False)
            for i, n, b in blobs:
                pipe.xadd(k.tasks, {"d": b, "c": self._client, "j": job._job, "i": i, "n": n,
                                    "a": 0, "r": self._retries})
            pipe.hincrby(k.stats, "submitted", sum(n for _, n, _ in blobs))
            pipe.execute()
        try:
            self._engine.call(add, idempotent=False, what=f"submitting to pool {self.name!r}")
        except BaseException:
            self._job_done(job._job)
            raise

    def apply_async(self, func: Callable[..., Any], args: Iterable[Any] = (),
                    kwds: dict[str, Any] | None = None, callback: Any = None,
                    error_callback: Any = None) -> ApplyResult:
        self._check_running()
        job = ApplyResult(self, callback, error_callback)
        self._submit(job, [(0, 1, (func, "apply", (tuple(args), dict(kwds or {}))))])
        return job

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
        job = MapResult(self, chunksize, len(items), callback, error_callback)
        if not items:
            job._success = True
            job._finish()
            return job
        self._submit(job, self._chunks(func, kind, items, chunksize))
        return job

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
        it = IMapIterator(self, chunksize, len(items), ordered)
        if items:
            self._submit(it, self._chunks(func, "map", items, chunksize))
        return it

    def imap(self, func: Callable[..., Any], iterable: Iterable[Any],
             chunksize: int = 1) -> IMapIterator:
        return self._imap(func, iterable, chunksize, True)

    def imap_unordered(self, func: Callable[..., Any], iterable: Iterable[Any],
                       chunksize: int = 1) -> IMapIterator:
        return self._imap(func, iterable, chunksize, False)

    # -- lifetime ---------------------------------------------------------------------------

    def statistics(self) -> dict[str, int]:
        return pool_statistics(self._engine, self._keys)

    def close(self) -> None:
        if self._state == RUN:
            self._state = CLOSE

    def terminate(self) -> None:
        """Stop now: local workers are killed and their tasks given back to the queue;
        results not yet received are abandoned (as multiprocessing does)."""
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
                _worker.reclaim(self._engine, self._keys, release=c)
            self._engine.call(lambda r: r.delete(self._results_key, self._inflight),
                              what="terminate")
        except Exception:  # noqa: BLE001 - Redis away: the leases free the tasks later
            pass
        with self._jobs_lock:
            self._jobs.clear()

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

    def __enter__(self) -> "Pool":
        return self

    def __exit__(self, *exc: object) -> None:
        self.terminate()


def _chunk_len(job: Any, index: int) -> int:
    if isinstance(job, (MapResult, IMapIterator)):
        return min(job._chunksize, job._length - index * job._chunksize)
    return 1


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

