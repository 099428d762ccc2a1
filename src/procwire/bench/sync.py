"""Synchronisation workloads: procwire's Lock, Event and Value against their
multiprocessing twins, with a bare ``threading`` primitive as the floor.

Each workload runs in a fresh interpreter (see harness.py), forks its
processes with the fork start method, and returns ``{"value": figure, ...}``.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import threading
import time
from typing import Any

from procwire.bench.harness import Case, latency

FORK = mp.get_context("fork")
JOIN = 300


def _sync(kind: str, impl: str) -> Any:
    """A new Lock or Event (`kind`) of procwire, multiprocessing or threading."""
    if impl == "procwire":
        import procwire
        return getattr(procwire, kind)()
    return getattr(FORK if impl == "multiprocessing" else threading, kind)()


def _value(impl: str) -> Any:
    if impl == "procwire":
        import procwire
        return procwire.Value("q", 0)
    return FORK.Value("q", 0)


# -- uncontended -----------------------------------------------------------------------

def uncontended(impl: str, pairs: int) -> dict[str, Any]:
    """Nanoseconds per acquire()+release() pair, one thread, nobody else."""
    lock = _sync("Lock", impl)
    acquire, release = lock.acquire, lock.release
    for _ in range(pairs // 10):  # warm-up
        acquire()
        release()
    t0 = time.perf_counter()
    for _ in range(pairs):
        acquire()
        release()
    elapsed = time.perf_counter() - t0
    return {"value": elapsed / pairs * 1e9, "pairs": pairs}


# -- contended -------------------------------------------------------------------------

def _hammer(lock: Any, pairs: int, ready: Any, go: Any, cpu: int | None = None) -> None:
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    acquire, release = lock.acquire, lock.release
    ready.release()
    go.wait()
    for _ in range(pairs):
        acquire()
        release()


def _race(runners: list[Any], ready: Any, go: Any) -> float:
    """Starts the runners, waits until each released `ready`, sets `go` and
    returns the seconds until all have finished."""
    for r in runners:
        r.start()
    for _ in runners:
        ready.acquire()
    t0 = time.perf_counter()
    go.set()
    for r in runners:
        r.join(JOIN)
    return time.perf_counter() - t0


def contended(impl: str, pairs: int, workers: int = 2, split: bool = False) -> dict[str, Any]:
    """Total acquire()+release() pairs per second, `workers` processes (threads
    for the threading floor) hammering one lock. ``split``: worker i pinned to
    the i-th CPU (mod 2), so that they always run at the same time."""
    cpus: list[int | None] = [None] * workers
    if split:
        from procwire.bench.queues import two_cpus
        pair = two_cpus()
        cpus = [pair[i % 2] for i in range(workers)]
    lock = _sync("Lock", impl)
    ready: Any  # threading's or multiprocessing's: the same interface
    go: Any
    runners: list[Any]
    if impl == "threading":
        ready, go = threading.Semaphore(0), threading.Event()
        runners = [threading.Thread(target=_hammer, args=(lock, pairs, ready, go))
                   for _ in range(workers)]
    else:
        ready, go = FORK.Semaphore(0), FORK.Event()
        runners = [FORK.Process(target=_hammer, args=(lock, pairs, ready, go, cpus[i]))
                   for i in range(workers)]
    elapsed = _race(runners, ready, go)
    return {"value": pairs * workers / elapsed, "seconds": elapsed}


# -- event wake-up latency ---------------------------------------------------------------

def _pong(ping: Any, pong: Any, trips: int) -> None:
    for _ in range(trips):
        ping.wait()
        ping.clear()
        pong.set()


def event_wake(impl: str, trips: int, pin: list[int] | None = None) -> dict[str, Any]:
    """Median microseconds from set() in one process to the return of wait()
    in another: half of a set/wait round trip through two events."""
    if pin:
        os.sched_setaffinity(0, pin)  # children inherit it
    ping, pong = _sync("Event", impl), _sync("Event", impl)
    runner = threading.Thread if impl == "threading" else FORK.Process
    child = runner(target=_pong, args=(ping, pong, trips))
    child.start()
    clock = time.perf_counter_ns
    times = []
    for _ in range(trips):
        t = clock()
        ping.set()
        pong.wait()
        pong.clear()
        times.append(clock() - t)
    child.join(JOIN)
    return latency(times[trips // 10:], scale=0.5)  # drop the warm-up tenth; one way


# -- Value increments under the lock --------------------------------------------------------

def _increment(value: Any, n: int, ready: Any, go: Any) -> None:
    lock = value.get_lock()
    ready.release()
    go.wait()
    for _ in range(n):
        with lock:
            value.value += 1


def value_increments(impl: str, increments: int, workers: int = 2) -> dict[str, Any]:
    """Increments per second of one Value, `with v.get_lock(): v.value += 1`,
    from `workers` processes. Also checks the total is exact."""
    v = _value(impl)
    ready, go = FORK.Semaphore(0), FORK.Event()
    procs = [FORK.Process(target=_increment, args=(v, increments, ready, go))
             for _ in range(workers)]
    elapsed = _race(procs, ready, go)
    if v.value != increments * workers:
        raise SystemExit(f"{impl}: lost updates under the lock: {v.value}")
    return {"value": increments * workers / elapsed, "seconds": elapsed}


# -- the suite ------------------------------------------------------------------------------

W = "procwire.bench.sync:"


def cases(scale: float = 1.0) -> list[Case]:
    """The sync suite; `scale` shrinks iteration counts for quick runs."""
    def n(count: int) -> int:
        return max(1000, int(count * scale))

    out: list[Case] = []
    for impl in ("procwire", "multiprocessing", "threading"):
        out.append(Case("Lock uncontended acquire+release", impl, W + "uncontended",
                        {"impl": impl, "pairs": n(2_000_000)}, "ns/pair",
                        higher_is_better=False))
    for impl in ("procwire", "multiprocessing", "threading"):
        out.append(Case("Lock contended, 2 processes (threading: 2 threads)", impl,
                        W + "contended", {"impl": impl, "pairs": n(500_000)}, "pairs/s"))
    for impl in ("procwire", "multiprocessing"):
        out.append(Case("Lock contended, 2 processes pinned to CPUs 0 and 1", impl,
                        W + "contended", {"impl": impl, "pairs": n(500_000), "split": True},
                        "pairs/s"))
    for impl in ("procwire", "multiprocessing", "threading"):
        out.append(Case("Event wake-up, other process (threading: thread), unpinned", impl,
                        W + "event_wake", {"impl": impl, "trips": n(20_000)}, "µs",
                        higher_is_better=False))
    for impl in ("procwire", "multiprocessing"):
        out.append(Case("Event wake-up, other process, one CPU", impl, W + "event_wake",
                        {"impl": impl, "trips": n(20_000), "pin": [0]}, "µs",
                        higher_is_better=False))
    for impl in ("procwire", "multiprocessing"):
        out.append(Case("Value += 1 under get_lock(), 2 processes", impl,
                        W + "value_increments", {"impl": impl, "increments": n(200_000)},
                        "incr/s"))
    return out
