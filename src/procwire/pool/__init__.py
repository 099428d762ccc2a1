"""``procwire.pool``: a crash-safe, fast process pool (进程池) and executor.

* :class:`Pool` has ``multiprocessing.Pool``'s whole API;
* :class:`ProcessPoolExecutor` is a ``concurrent.futures.Executor``;
* both run on one core (``_local``): a pipe per worker, a ledger of which task
  each worker holds, and a manager thread woken by the kernel when a worker
  dies. Only the tasks a dead worker held fail, with :class:`WorkerLost`, or
  are re-run up to ``retries`` times.

The result classes (``results``) know nothing of processes, so another
transport can deliver into them.
"""
from __future__ import annotations

from procwire.errors import WorkerLost
from procwire.pool.executor import ProcessPoolExecutor
from procwire.pool.pool import Pool
from procwire.pool.progress import progress
from procwire.pool.results import (ApplyResult, AsyncResult, BrokenPool, IMapIterator,
                                   IMapUnorderedIterator, MapResult, PoolStatistics,
                                   PoolTerminated, TimeoutError)

__all__ = ["ApplyResult", "AsyncResult", "BrokenPool", "IMapIterator", "IMapUnorderedIterator",
           "MapResult", "Pool", "PoolStatistics", "PoolTerminated", "ProcessPoolExecutor",
           "TimeoutError", "WorkerLost", "progress"]
