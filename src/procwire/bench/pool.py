"""Process pool workloads: procwire.Pool against multiprocessing.Pool, ProcessPoolExecutor, loky.

Every case runs in a fresh interpreter (harness.py) with 2 workers started
by fork, and is timed after the pool is up and warm (a small map first), so
start-up is not measured. The task is ``f(x) = x + 1`` unless said.

* ``map_throughput``: ``map(f, range(tasks), chunksize)``; value = tasks/s.
  For the executors, ``list(executor.map(f, ..., chunksize=...))``.
  ``chunksize=None`` is each library's default (multiprocessing and procwire
  split into about 4 chunks per worker; the executors' default is 1).
* ``unordered_throughput``: ``imap_unordered`` at chunksize 1, consumed as
  results come; the executors submit every task and use ``as_completed``.
* ``round_trip``: one ``apply_async(f, (1,)).get()`` (``submit().result()``),
  repeated; value = median µs, with p10/p99.
* ``numpy_map``: ``map`` of an array-doubling function over 1 MiB float64
  arrays, chunksize 1; value = GB/s of arguments plus results.
* ``death_notice``: a one-worker pool runs a task that blocks; the worker is
  SIGKILLed; value = median ms from the kill until the task's ``get()`` /
  ``result()`` raises (WorkerLost, BrokenProcessPool, TerminatedWorkerError).
  multiprocessing.Pool is not measured: its ``get()`` never returns.

loky is optional (``pip install 'procwire[bench]'``).
"""
from __future__ import annotations

import multiprocessing as mp
import statistics
import time
from typing import Any

from procwire.bench.harness import Case, latency

W = "procwire.bench.pool:"
WORKERS = 2
MiB = 1 << 20
FORK = mp.get_context("fork")
IMPLS = ("procwire", "multiprocessing", "ProcessPoolExecutor", "loky")


def inc(x: int) -> int:
    return x + 1


def double(a: Any) -> Any:
    return a * 2


def _open(impl: str) -> Any:
    if impl == "procwire":
        import procwire
        return procwire.Pool(WORKERS, context=FORK)
    if impl == "multiprocessing":
        return FORK.Pool(WORKERS)
    if impl == "ProcessPoolExecutor":
        from concurrent.futures import ProcessPoolExecutor
        return ProcessPoolExecutor(WORKERS, mp_context=FORK)
    if impl == "procwire executor":
        import procwire
        return procwire.ProcessPoolExecutor(WORKERS, mp_context=FORK)
    if impl == "loky":
        import loky
        return loky.ProcessPoolExecutor(WORKERS)
    raise ValueError(impl)


def _is_pool(impl: str) -> bool:
    return impl in ("procwire", "multiprocessing")


def _close(impl: str, pool: Any) -> None:
    if _is_pool(impl):
        pool.close()
        pool.join()
    else:
        pool.shutdown(wait=True)


def _map(impl: str, pool: Any, func: Any, items: Any, chunksize: int | None) -> list[Any]:
    if _is_pool(impl):
        results: list[Any] = pool.map(func, items, chunksize)
        return results
    return list(pool.map(func, items, chunksize=chunksize or 1))


def _warm(impl: str, pool: Any) -> None:
    _map(impl, pool, inc, range(200), 1)


def map_throughput(impl: str, tasks: int, chunksize: int | None) -> dict[Any, Any]:
    pool = _open(impl)
    try:
        _warm(impl, pool)
        t0 = time.perf_counter()
        out = _map(impl, pool, inc, range(tasks), chunksize)
        dt = time.perf_counter() - t0
        assert out[-1] == tasks and len(out) == tasks
    finally:
        _close(impl, pool)
    return {"value": tasks / dt}


def unordered_throughput(impl: str, tasks: int) -> dict[Any, Any]:
    pool = _open(impl)
    try:
        _warm(impl, pool)
        t0 = time.perf_counter()
        if _is_pool(impl):
            total = sum(pool.imap_unordered(inc, range(tasks), 1))
        else:
            from concurrent.futures import as_completed
            fs = [pool.submit(inc, i) for i in range(tasks)]
            total = sum(f.result() for f in as_completed(fs))
        dt = time.perf_counter() - t0
        assert total == tasks * (tasks + 1) // 2
    finally:
        _close(impl, pool)
    return {"value": tasks / dt}


def round_trip(impl: str, count: int, warmup: int = 200) -> dict[Any, Any]:
    pool = _open(impl)
    try:
        _warm(impl, pool)
        if _is_pool(impl):
            def call() -> Any:
                return pool.apply_async(inc, (1,)).get()
        else:
            def call() -> Any:
                return pool.submit(inc, 1).result()
        for _ in range(warmup):
            call()
        clock = time.perf_counter_ns
        times = []
        for _ in range(count):
            t = clock()
            call()
            times.append(clock() - t)
    finally:
        _close(impl, pool)
    return latency(times)


def numpy_map(impl: str, tasks: int) -> dict[Any, Any]:
    import numpy as np
    a = np.ones(MiB // 8)
    pool = _open(impl)
    try:
        _map(impl, pool, double, [a] * 4, 1)
        t0 = time.perf_counter()
        out = _map(impl, pool, double, [a] * tasks, 1)
        dt = time.perf_counter() - t0
        assert len(out) == tasks and float(out[-1][0]) == 2.0
    finally:
        _close(impl, pool)
    return {"value": 2 * tasks * MiB / dt / 1e9, "tasks_per_s": tasks / dt}


def _started_then_block(path: str) -> None:
    with open(path, "w"):
        pass
    time.sleep(600)


def death_notice(impl: str, kills: int) -> dict[Any, Any]:
    import os
    import signal
    import tempfile
    times = []
    pool = None
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(kills):
            if pool is None:
                pool = _open_one(impl)
            path = os.path.join(tmp, f"started-{k}")
            if _is_pool(impl):
                r = pool.apply_async(_started_then_block, (path,))
                wait = r.get
            else:
                wait = pool.submit(_started_then_block, path).result
            while not os.path.exists(path):
                time.sleep(0.0005)
            pid = (pool._pool[0].pid if _is_pool(impl)
                   else next(iter(pool._processes.values())).pid)
            t0 = time.perf_counter()
            os.kill(pid, signal.SIGKILL)
            try:
                wait(60)
            except Exception:
                times.append(time.perf_counter() - t0)
            else:
                raise AssertionError("the task of a killed worker returned")
            if not _is_pool(impl):  # a broken executor must be made anew
                pool.shutdown(wait=True)
                pool = None
        if pool is not None:
            _close(impl, pool)
    return {"value": statistics.median(times) * 1e3, "max": max(times) * 1e3}


def _open_one(impl: str) -> Any:
    global WORKERS
    saved, WORKERS = WORKERS, 1
    try:
        return _open(impl)
    finally:
        WORKERS = saved


def cases(scale: float = 1.0) -> list[Case]:
    """The pool suite; `scale` shrinks task counts for quick runs."""
    def n(count: int, least: int = 200) -> int:
        return max(least, int(count * scale))

    out: list[Case] = []
    # multiprocessing.Pool does ~20k tasks/s at chunksize 1, the executors a few k:
    # each gets a count that takes a few seconds.
    many = {"procwire": n(100_000), "multiprocessing": n(40_000),
            "ProcessPoolExecutor": n(10_000), "loky": n(10_000)}
    for impl in IMPLS:
        out.append(Case("map, chunksize=1", impl, W + "map_throughput",
                        {"impl": impl, "tasks": many[impl], "chunksize": 1}, "tasks/s"))
    for impl in IMPLS:
        tasks = n(100_000) if _is_pool(impl) else many[impl]
        out.append(Case("map, default chunksize", impl, W + "map_throughput",
                        {"impl": impl, "tasks": tasks, "chunksize": None}, "tasks/s"))
    for impl in IMPLS:
        out.append(Case("imap_unordered, chunksize=1", impl, W + "unordered_throughput",
                        {"impl": impl, "tasks": many[impl]}, "tasks/s"))
    for impl in IMPLS:
        out.append(Case("apply_async(f, (1,)).get()", impl, W + "round_trip",
                        {"impl": impl, "count": n(5000, 100)}, "µs",
                        higher_is_better=False))
    for impl in IMPLS:
        out.append(Case("map over 1 MiB numpy arrays", impl, W + "numpy_map",
                        {"impl": impl, "tasks": n(400, 20)}, "GB/s"))
    for impl in ("procwire", "ProcessPoolExecutor", "loky"):
        out.append(Case("SIGKILL → the task's error", impl, W + "death_notice",
                        {"impl": impl, "kills": n(20, 3)}, "ms", higher_is_better=False))
    return out
