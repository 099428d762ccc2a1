"""``procwire.ProcessPoolExecutor``: a ``concurrent.futures.Executor`` over the same core.

Unlike the standard library's, a worker that dies does not break the
executor: only the futures it held fail, with :class:`procwire.WorkerLost`
(a subclass of nothing the stdlib knows, so ``except BrokenProcessPool`` does
not hide it), or are re-run up to ``retries`` times. An initializer that keeps
failing breaks it with :class:`~procwire.pool.BrokenPool`, which *is* a
``BrokenProcessPool``.
"""
from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future, process as _cf_process
from typing import Any

from procwire.pool._local import RUN, LocalCore, Span
from procwire.pool._worker import APPLY
from procwire.pool.results import PoolStatistics

__all__ = ["ProcessPoolExecutor"]

_shutdown_started = False


def _python_exit() -> None:
    global _shutdown_started
    _shutdown_started = True


threading._register_atexit(_python_exit)  # type: ignore[attr-defined]  # as concurrent.futures.process does


class _FutureJob:
    """Adapts a Future to the core's job protocol (``_start`` and ``_set``)."""

    __slots__ = ("__weakref__", "future")

    def __init__(self, future: Future[Any]) -> None:
        self.future = future

    def _start(self, index: int) -> bool:
        return self.future.set_running_or_notify_cancel()

    def _set(self, index: int, outcome: tuple[bool, Any]) -> None:
        ok, value = outcome
        future = self.future
        if future.done():
            return
        if ok:
            future.set_result(value)
        else:
            cause = value.__cause__
            if cause is not None and type(cause).__name__ == "RemoteTraceback":
                # concurrent.futures' own name for the remote traceback
                value.__cause__ = _cf_process._RemoteTraceback(cause.tb)
            future.set_exception(value)


class ProcessPoolExecutor(Executor):
    """``concurrent.futures.ProcessPoolExecutor`` with procwire's crash model.

    ``ProcessPoolExecutor(max_workers=None, mp_context=None, initializer=None,
    initargs=(), *, max_tasks_per_child=None, retries=0)``
    """

    def __init__(self, max_workers: int | None = None, mp_context: Any = None,
                 initializer: Callable[..., Any] | None = None, initargs: tuple[Any, ...] = (), *,
                 max_tasks_per_child: int | None = None, retries: int = 0) -> None:
        if max_workers is None:
            max_workers = os.cpu_count() or 1
        elif max_workers <= 0:
            raise ValueError("max_workers must be greater than 0")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        if max_tasks_per_child is not None:
            if not isinstance(max_tasks_per_child, int):
                raise TypeError("max_tasks_per_child must be an integer")
            if max_tasks_per_child <= 0:
                raise ValueError("max_tasks_per_child must be >= 1")
        if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
            raise ValueError(f"retries must be an int >= 0, not {retries!r}")
        self._max_workers = max_workers
        self._shutdown_lock = threading.Lock()
        self._shutdown_thread = False
        self._core = LocalCore(max_workers, initializer, tuple(initargs), max_tasks_per_child,
                               mp_context, retries, name="ProcwireExecutorWorker")
        self._core.finish_at_exit = True

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        with self._shutdown_lock:
            self._core.check_broken()
            if self._shutdown_thread:
                raise RuntimeError("cannot schedule new futures after shutdown")
            if _shutdown_started:
                raise RuntimeError("cannot schedule new futures after interpreter shutdown")
            future: Future[Any] = Future()
            self._core.submit(Span(_FutureJob(future), APPLY, fn, [(args, kwargs)]))
            return future

    submit.__doc__ = Executor.submit.__doc__

    def map(self, fn: Callable[..., Any], *iterables: Iterable[Any], timeout: float | None = None,
            chunksize: int = 1) -> Iterator[Any]:
        """Like ``map(fn, *iterables)``; ``chunksize`` items travel per task."""
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        chunks = _cf_process._get_chunks(*iterables, chunksize=chunksize)
        results = super().map(functools.partial(_cf_process._process_chunk, fn), chunks,
                              timeout=timeout)
        chained: Iterator[Any] = _cf_process._chain_from_iterable_of_lists(results)
        return chained

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._shutdown_lock:
            self._shutdown_thread = True
            core = self._core
            if cancel_futures:
                with core._lock:
                    pending = [s for s in core._backlog if not s.started]
                    for s in pending:
                        s.job.future.cancel()
            core.close()
        if wait:
            core.join()

    shutdown.__doc__ = Executor.shutdown.__doc__

    def statistics(self) -> PoolStatistics:
        """Workers, tasks queued/running/done/failed/retried, worker deaths (a snapshot)."""
        return self._core.statistics()

    @property
    def _processes(self) -> dict[int, Any]:
        # concurrent.futures' attribute: pid -> Process of the live workers
        return {p.pid: p for p in self._core.processes}

    def __del__(self) -> None:
        core = getattr(self, "_core", None)
        if core is not None and core.state == RUN:
            # Like the stdlib's: the work already submitted still completes.
            core.close()
