"""Small experiments for the lessons, each a function returning a dataclass.

``lost_update`` is the classic demonstration of why shared memory needs
mutual exclusion (同步互斥): several processes each add 1 to one shared
``Value`` many times. ``v.value += 1`` is a read, an add and a write; without
the lock two processes can read the same old value, and one increment
overwrites the other. With the lock held around the read-modify-write, the
total is exact.
"""
from __future__ import annotations

import multiprocessing as mp
import time
from dataclasses import dataclass
from typing import Any

__all__ = ["LostUpdateResult", "lost_update"]


@dataclass(frozen=True)
class LostUpdateResult:
    """What ``lost_update`` measured."""

    expected: int      # processes * increments
    actual: int        # the Value's final content
    lost: int          # expected - actual
    seconds: float     # wall time from the workers' start to the last join()
    processes: int
    increments: int
    use_lock: bool
    start_method: str


def _increment(value: Any, n: int, use_lock: bool, go: Any) -> None:
    go.wait()  # a Barrier: every worker starts incrementing at the same moment
    if use_lock:
        lock = value.get_lock()
        obj = value.get_obj()
        for _ in range(n):
            with lock:
                obj.value += 1
    else:
        obj = value.get_obj()  # the same memory, no lock: a race on purpose
        for _ in range(n):
            obj.value += 1


def lost_update(processes: int = 2, increments: int = 1_000_000, use_lock: bool = True,
                start_method: str | None = None, timeout: float | None = 600.0
                ) -> LostUpdateResult:
    """Run ``processes`` processes that each increment one shared
    ``procwire.Value('q', 0)`` ``increments`` times, with or without its lock.

    The processes start together (they meet at a procwire Barrier), so
    that their increments overlap. Raises ``TimeoutError`` if a worker has not
    finished within ``timeout`` seconds (it is then killed).
    """
    from procwire import Barrier, Value

    if processes < 1 or increments < 0:
        raise ValueError("processes must be >= 1 and increments >= 0")
    # typeshed types get_context(str) as BaseContext, which lacks Process
    ctx: Any = mp.get_context(start_method)
    value = Value("q", 0)
    go = Barrier(processes, timeout=timeout)
    workers = [ctx.Process(target=_increment, args=(value, increments, use_lock, go))
               for _ in range(processes)]
    for w in workers:
        w.start()
    try:
        t0 = time.perf_counter()
        deadline = None if timeout is None else time.monotonic() + timeout
        for w in workers:
            w.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
            if w.exitcode is None:
                raise TimeoutError(f"lost_update: a worker did not finish in {timeout} s")
            if w.exitcode != 0:
                raise RuntimeError(f"lost_update: a worker exited with code {w.exitcode}")
        seconds = time.perf_counter() - t0
    finally:
        for w in workers:
            if w.is_alive():
                w.kill()
                w.join()
    expected = processes * increments
    actual = value.value
    return LostUpdateResult(expected, actual, expected - actual, seconds, processes,
                            increments, use_lock, ctx.get_start_method())
