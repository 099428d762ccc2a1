"""``procwire.Pool``: multiprocessing.Pool's API over the crash-safe local transport."""
from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from procwire.pool._local import CLOSE, RUN, TERMINATE, LocalCore, Span
from procwire.pool._worker import APPLY, MAP, STARMAP
from procwire.pool.results import (
    ApplyResult,
    IMapIterator,
    IMapUnorderedIterator,
    MapResult,
    PoolStatistics,
)

__all__ = ["Pool"]


def _processes(processes: int | None) -> int:
    if processes is None:
        return os.cpu_count() or 1
    if not isinstance(processes, int) or isinstance(processes, bool):
        raise TypeError(f"processes must be an int or None, not {type(processes).__name__}")
    if processes < 1:
        raise ValueError("Number of processes must be at least 1")
    return processes


def _positive_or_none(value: Any, what: str) -> int | None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                              or value < 1):
        raise ValueError(f"{what} must be a positive int or None, not {value!r}")
    return value


def _retries(retries: Any) -> int:
    if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
        raise ValueError(f"retries must be an int >= 0, not {retries!r}")
    return retries


def _chunksize(chunksize: Any) -> int:
    if not isinstance(chunksize, int) or isinstance(chunksize, bool) or chunksize < 1:
        raise ValueError(f"Chunksize must be 1+, not {chunksize!r}")
    return chunksize


class Pool:
    """A pool of worker processes, with ``multiprocessing.Pool``'s API.

    ``Pool(processes=None, initializer=None, initargs=(), maxtasksperchild=None,
    context=None, *, retries=0)``

    Beyond multiprocessing: when a worker dies (SIGKILL, a crash,
    ``os._exit``, out of memory), only the tasks it held are affected. Each
    fails with :class:`procwire.WorkerLost`, or is re-run up to ``retries``
    times first; the pool starts a new worker and goes on. An initializer that
    keeps raising makes the pool :class:`~procwire.pool.BrokenPool` instead of
    respawning forever. ``terminate()`` fails unfinished results with
    :class:`~procwire.pool.PoolTerminated` rather than leaving ``get()``
    waiting. ``statistics()`` reports the counters. ``imap`` and
    ``imap_unordered`` read their iterable at most ``prefetch`` chunks ahead
    of the consumer (default: about 20 ms of work per worker at the measured
    time per task, between 128 and 8192 chunks per worker, and no more than
    16 MiB of pickled arguments per worker).
    """

    def __init__(self, processes: int | None = None, initializer: Callable[..., Any] | None = None,
                 initargs: Iterable[Any] = (), maxtasksperchild: int | None = None,
                 context: Any = None, *, retries: int = 0) -> None:
        processes = _processes(processes)
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        maxtasksperchild = _positive_or_none(maxtasksperchild, "maxtasksperchild")
        self._processes = processes
        self._core = LocalCore(processes, initializer, tuple(initargs), maxtasksperchild,
                               context, _retries(retries))
        self._state = RUN  # multiprocessing's attribute, read by its tests

    # -------------------------------------------------------------- submitting

    def _check_running(self) -> None:
        if self._state != RUN:
            raise ValueError("Pool not running")
        self._core.check_running()

    def apply(self, func: Callable[..., Any], args: Iterable[Any] = (),
              kwds: dict[Any, Any] | None = None) -> Any:
        """``func(*args, **kwds)`` in a worker; blocks until the result is ready."""
        return self.apply_async(func, args, kwds).get()

    def apply_async(self, func: Callable[..., Any], args: Iterable[Any] = (),
                    kwds: dict[Any, Any] | None = None,
                    callback: Callable[..., Any] | None = None,
                    error_callback: Callable[..., Any] | None = None) -> ApplyResult:
        """``func(*args, **kwds)`` in a worker; returns an :class:`ApplyResult`."""
        self._check_running()
        result = ApplyResult(self, callback, error_callback)
        self._core.submit(Span(result, APPLY, func, [(tuple(args), dict(kwds or {}))]))
        return result

    def map(self, func: Callable[..., Any], iterable: Iterable[Any],
            chunksize: int | None = None) -> list[Any]:
        """``list(map(func, iterable))`` computed by the workers, in order."""
        results: list[Any] = self._map_async(func, iterable, MAP, chunksize).get()
        return results

    def starmap(self, func: Callable[..., Any], iterable: Iterable[Iterable[Any]],
                chunksize: int | None = None) -> list[Any]:
        """Like ``map`` with ``func(*args)`` for each args in ``iterable``."""
        results: list[Any] = self._map_async(func, iterable, STARMAP, chunksize).get()
        return results

    def map_async(self, func: Callable[..., Any], iterable: Iterable[Any],
                  chunksize: int | None = None,
                  callback: Callable[..., Any] | None = None,
                  error_callback: Callable[..., Any] | None = None) -> MapResult:
        return self._map_async(func, iterable, MAP, chunksize, callback, error_callback)

    def starmap_async(self, func: Callable[..., Any], iterable: Iterable[Iterable[Any]],
                      chunksize: int | None = None, callback: Callable[..., Any] | None = None,
                      error_callback: Callable[..., Any] | None = None) -> MapResult:
        return self._map_async(func, iterable, STARMAP, chunksize, callback, error_callback)

    def _map_async(self, func: Callable[..., Any], iterable: Iterable[Any], kind: int,
                   chunksize: int | None, callback: Callable[..., Any] | None = None,
                   error_callback: Callable[..., Any] | None = None) -> MapResult:
        self._check_running()
        items = list(iterable)
        if chunksize is None:
            # multiprocessing's default: about four chunks per worker
            chunksize, extra = divmod(len(items), self._processes * 4)
            if extra:
                chunksize += 1
        else:
            chunksize = _chunksize(chunksize)
        if not items:
            chunksize = 0
        result = MapResult(self, chunksize, len(items), callback, error_callback)
        if items:
            # One span for the whole map: the core leases it in pieces.
            if chunksize == 1:
                self._core.submit(Span(result, kind, func, items, flat=True))
            else:
                self._core.submit(Span(result, kind, func,
                                       [items[i:i + chunksize]
                                        for i in range(0, len(items), chunksize)]))
        return result

    def imap(self, func: Callable[..., Any], iterable: Iterable[Any], chunksize: int = 1, *,
             prefetch: int | None = None) -> Iterator[Any]:
        """Like ``map``, lazily: results in order, as an iterator (``next(timeout)``)."""
        return self._imap(IMapIterator, func, iterable, chunksize, prefetch)

    def imap_unordered(self, func: Callable[..., Any], iterable: Iterable[Any],
                       chunksize: int = 1, *,
                       prefetch: int | None = None) -> Iterator[Any]:
        """Like ``imap``, with results in the order they finish."""
        return self._imap(IMapUnorderedIterator, func, iterable, chunksize, prefetch)

    def _imap(self, cls: type, func: Callable[..., Any], iterable: Iterable[Any], chunksize: int,
              prefetch: int | None) -> Iterator[Any]:
        self._check_running()
        chunksize = _chunksize(chunksize)
        if prefetch is not None and (not isinstance(prefetch, int) or prefetch < 1):
            raise ValueError(f"prefetch must be a positive int of chunks, not {prefetch!r}")
        result: IMapIterator = cls(self)
        self._core.add_feeder(result, func, iterable, chunksize, MAP, prefetch)
        if chunksize == 1:
            return result  # each task is one item
        return (item for chunk in result for item in chunk)

    # -------------------------------------------------------------- life cycle

    def close(self) -> None:
        """No more tasks; the workers exit once every submitted task is done."""
        if self._state == RUN:
            self._state = CLOSE
            self._core.close()

    def terminate(self) -> None:
        """Stop the workers now; unfinished results fail with PoolTerminated."""
        self._state = TERMINATE
        self._core.terminate()

    def join(self, timeout: float | None = None) -> None:
        """Wait for the workers to exit; call ``close()`` or ``terminate()`` first."""
        if self._state == RUN:
            raise ValueError("Pool is still running")
        if self._state not in (CLOSE, TERMINATE):
            raise ValueError("In unknown state")
        self._core.join(timeout)

    def __enter__(self) -> Pool:
        self._check_running()
        return self

    def __exit__(self, *exc: object) -> None:
        self.terminate()

    def __reduce__(self) -> Any:
        raise NotImplementedError("pool objects cannot be passed between processes or pickled")

    def __del__(self, _warn: Callable[..., Any] = warnings.warn) -> None:
        if getattr(self, "_state", None) == RUN:
            _warn(f"unclosed running multiprocessing pool {self!r}", ResourceWarning,
                  source=self)
            core = getattr(self, "_core", None)
            if core is not None:
                core.terminate(wait=False)

    def __repr__(self) -> str:
        core = getattr(self, "_core", None)
        workers = len(core.processes) if core is not None else 0
        return (f"<procwire.Pool state={self._state} pool_size={workers}"
                f" processes={self._processes}>")

    # -------------------------------------------------------------- observing

    def statistics(self) -> PoolStatistics:
        """Workers, tasks queued/running/done/failed/retried, worker deaths (a snapshot)."""
        return self._core.statistics()

    @property
    def _pool(self) -> list[Any]:
        # multiprocessing.Pool's list of worker Process objects (its tests read it)
        return self._core.processes

    def _repopulate_pool(self) -> None:
        # multiprocessing's tests call this; here the pool replaces workers itself,
        # so it only waits until the replacements of exited workers are started.
        self._core.refresh()
