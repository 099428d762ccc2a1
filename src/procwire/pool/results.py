"""Result objects of a pool, independent of how tasks travel.

``ApplyResult`` (alias ``AsyncResult``), ``MapResult``, ``IMapIterator`` and
``IMapUnorderedIterator`` have the API of their :mod:`multiprocessing.pool`
twins. A transport (the local pool of worker processes here, or any other)
delivers outcomes from any thread by calling ``_set(index, (success, value))``
for one task, or ``_set_span(index, values)`` for the successful values of
tasks ``index, index + 1, ...`` at once (one lock round for a whole batch).
``index`` is the task number: the chunk number for maps, ignored for
``apply``. For a map, ``_set`` takes a chunk's list of results; in
``_set_span`` a task's value is its chunk's list, or at chunksize 1 the one
item's result itself. The imap iterators count tasks as items: ``_set`` and
``_set_many([(index, outcome), ...])`` take one item's outcome each. Nothing
here knows about processes, pipes or pickling.

The errors a pool adds to a task's own exceptions live here too, so that every
transport raises the same ones: :class:`procwire.WorkerLost` (the worker
holding the task died), :class:`BrokenPool` (workers cannot start) and
:class:`PoolTerminated` (``terminate()`` came first).
"""
from __future__ import annotations

import collections
import threading
from collections.abc import Callable
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from multiprocessing import TimeoutError
from typing import Any

from procwire.errors import ProcwireError, WorkerLost

__all__ = ["ApplyResult", "AsyncResult", "BrokenPool", "IMapIterator", "IMapUnorderedIterator",
           "MapResult", "PoolStatistics", "PoolTerminated", "TimeoutError", "WorkerLost"]


class BrokenPool(ProcwireError, BrokenProcessPool):
    """Workers cannot be started: the initializer failed repeatedly.

    A ``concurrent.futures.process.BrokenProcessPool``, so executor code that
    catches that keeps working. The initializer's own error is ``__cause__``.
    """


class PoolTerminated(ProcwireError, RuntimeError):
    """The pool was terminated before this task finished."""


@dataclass(frozen=True)
class PoolStatistics:
    """A snapshot of a pool's counters; tasks are counted in chunks.

    ``workers``: live worker processes. ``tasks_queued``: submitted, not yet
    sent to a worker. ``tasks_running``: leased to a worker, result not yet
    back. ``tasks_done``: finished with a result or the task's own exception.
    ``tasks_failed``: of those done, how many raised (WorkerLost included).
    ``tasks_retried``: re-runs after a worker died holding the task.
    ``worker_deaths``: workers that died while holding tasks or before they
    were ready (a worker retiring after ``maxtasksperchild`` is not a death).
    ``workers_started``: every worker process started, replacements included.
    """

    workers: int
    tasks_queued: int
    tasks_running: int
    tasks_done: int
    tasks_failed: int
    tasks_retried: int
    worker_deaths: int
    workers_started: int


Callback = Callable[[Any], object] | None


class ApplyResult:
    """The result of ``apply_async``: ``get(timeout)``, ``wait``, ``ready``, ``successful``.

    ``owner`` is kept alive as long as this result (multiprocessing's results
    keep their pool alive the same way). Callbacks run in the thread that
    delivers the result, once, before ``get()`` returns.
    """

    def __init__(self, owner: object = None, callback: Callback = None,
                 error_callback: Callback = None) -> None:
        self._pool = owner
        self._event = threading.Event()
        self._callback = callback
        self._error_callback = error_callback
        self._success = False
        self._value: Any = None

    def ready(self) -> bool:
        return self._event.is_set()

    def successful(self) -> bool:
        if not self.ready():
            raise ValueError(f"{self!r} not ready")
        return self._success

    def wait(self, timeout: float | None = None) -> None:
        self._event.wait(timeout)

    def get(self, timeout: float | None = None) -> Any:
        if not self._event.wait(timeout):
            raise TimeoutError
        if self._success:
            return self._value
        raise self._value

    def _set_span(self, index: int, values: list[Any]) -> None:
        self._set(index, (True, values[0]))

    def _set(self, index: int, outcome: tuple[bool, Any]) -> None:
        if self._event.is_set():
            return
        self._success, self._value = outcome
        try:
            if self._success and self._callback is not None:
                self._callback(self._value)
            elif not self._success and self._error_callback is not None:
                self._error_callback(self._value)
        finally:
            self._event.set()
            self._pool = None

    def __repr__(self) -> str:
        state = ("pending" if not self.ready() else
                 "done" if self._success else f"failed: {type(self._value).__name__}")
        return f"<{type(self).__module__}.{type(self).__qualname__} {state}>"


AsyncResult = ApplyResult


class MapResult(ApplyResult):
    """The result of ``map_async``/``starmap_async``: a list, in order.

    Chunk ``i`` covers items ``i*chunksize`` onwards. The first failing chunk
    fails the whole result at once (as in multiprocessing); later chunks still
    run, their outcomes are dropped.
    """

    def __init__(self, owner: object, chunksize: int, length: int, callback: Callback = None,
                 error_callback: Callback = None) -> None:
        super().__init__(owner, callback, error_callback)
        self._chunksize = chunksize
        self._values: list[Any] = [None] * length
        self._remaining = -(-length // chunksize) if chunksize else 0
        self._lock = threading.Lock()
        if self._remaining == 0:
            super()._set(0, (True, []))

    def _set(self, index: int, outcome: tuple[bool, Any]) -> None:
        ok, value = outcome
        if not ok:
            self._values = []
            super()._set(index, outcome)
            return
        self._store(index, [value], True)

    def _set_span(self, index: int, values: list[Any]) -> None:
        """Tasks ``index...`` succeeded with `values`: one lock round for all of them."""
        self._store(index, values, self._chunksize != 1)

    def _store(self, index: int, values: list[Any], chunks: bool) -> None:
        # `values`: chunks' lists of results, or (chunks false) one result per task
        with self._lock:
            if self._event.is_set():
                return
            if chunks:
                size = self._chunksize
                start = index * size
                for chunk in values:
                    self._values[start:start + len(chunk)] = chunk
                    start += size
            else:
                self._values[index:index + len(values)] = values
            self._remaining -= len(values)
            if self._remaining != 0:
                return
            result, self._values = self._values, []
        super()._set(index, (True, result))


_NOTHING = object()  # IMapIterator: no item yet


class _Failed:
    """An imap item that is a task's exception, raised when it is handed out."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


class IMapIterator:
    """The iterator ``imap`` returns: results in order; ``next(timeout)``.

    A failed task raises its exception at its place in the order, and the
    iteration can go on after it (as in multiprocessing with chunksize=1).
    ``_set_length(n)`` ends the iteration after ``n`` tasks. ``_handed``
    counts the items handed out; a transport that reads a lazy iterable only
    as fast as it is consumed sets ``_on_consume``, called when ``_handed``
    reaches ``_wake_at``.
    """

    _on_consume: Callable[[], None] | None = None

    def __init__(self, owner: object = None) -> None:
        self._pool = owner
        self._cond = threading.Condition(threading.Lock())
        self._items: collections.deque[Any] = collections.deque()  # values, or _Failed
        self._index = 0  # tasks delivered in order so far
        self._length: int | None = None
        self._unsorted: dict[int, list[Any]] = {}  # runs that arrived early, by first task
        self._handed = 0
        self._wake_at = -1

    def __iter__(self) -> IMapIterator:
        return self

    def _next_or_stop(self) -> Any:
        """The next item, or _NOTHING while none has come; StopIteration after the last.
        Lock held."""
        try:
            return self._items.popleft()
        except IndexError:
            if self._index == self._length:
                self._pool = None
                raise StopIteration from None
            return _NOTHING

    def next(self, timeout: float | None = None) -> Any:
        try:
            item = self._items.popleft()  # atomic: no lock while items are waiting
        except IndexError:
            with self._cond:
                item = self._next_or_stop()
                if item is _NOTHING:
                    self._cond.wait(timeout)
                    item = self._next_or_stop()
                    if item is _NOTHING:
                        raise TimeoutError from None
        self._handed += 1
        if self._handed == self._wake_at and self._on_consume is not None:
            self._on_consume()
        if type(item) is _Failed:
            raise item.error
        return item

    __next__ = next

    def _set(self, index: int, outcome: tuple[bool, Any]) -> None:
        ok, value = outcome
        self._set_span(index, [value if ok else _Failed(value)])

    def _set_many(self, outcomes: list[tuple[int, tuple[bool, Any]]]) -> None:
        """Several tasks' outcomes at once: one lock round and one notify."""
        with self._cond:
            for index, (ok, value) in outcomes:
                self._insert(index, [value if ok else _Failed(value)])
            self._notify()

    def _set_span(self, index: int, values: list[Any]) -> None:
        with self._cond:
            self._insert(index, values)
            self._notify()

    def _insert(self, index: int, values: list[Any]) -> None:
        # Lock held. In order: a run that arrives early waits in _unsorted.
        if self._index == index:
            self._items.extend(values)
            self._index += len(values)
            while (run := self._unsorted.pop(self._index, None)) is not None:
                self._items.extend(run)
                self._index += len(run)
        else:
            self._unsorted[index] = values

    def _notify(self) -> None:
        # Lock held. Only when something can be handed out: a waiter woken for
        # nothing would take it as its timeout.
        if self._index == self._length:
            self._cond.notify_all()
        elif self._items:
            self._cond.notify()

    def _set_length(self, length: int) -> None:
        with self._cond:
            self._length = length
            if self._index == self._length:
                self._cond.notify_all()

    def _pending(self) -> int:
        """Outcomes delivered but not yet handed out."""
        return len(self._items) + sum(map(len, self._unsorted.values()))


class IMapUnorderedIterator(IMapIterator):
    """The iterator ``imap_unordered`` returns: results as they come."""

    def _insert(self, index: int, values: list[Any]) -> None:
        self._items.extend(values)
        self._index += len(values)
