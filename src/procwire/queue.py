"""Message queues: ``Queue``, ``SimpleQueue`` and ``JoinableQueue``.

Drop-in replacements for their :mod:`multiprocessing` twins, built on one
shared-memory ring (``procwire._core.QueueBase``):

* ``put`` serialises in the calling thread and copies straight into shared
  memory. There is no feeder thread: an unpicklable object raises from
  ``put()`` itself, nothing hangs at exit, and a child that put items can be
  joined at any time.
* ``bytes`` and ``bytearray`` skip pickling; other objects use pickle
  protocol 5, with large buffers (numpy arrays, for example) copied out of
  band rather than through the pickle stream.
* A process killed with SIGKILL at any instruction leaves the queue usable:
  at most its own unfinished message is lost (see ``_core/lib/ring.c``).
* ``qsize()`` is exact and works everywhere.

Capacity: ``maxsize`` bounds the number of messages, as in multiprocessing;
there is no byte limit. ``capacity`` is the size of the shared ring, the fast
path (default 4 MiB, rounded up to a power of two). A message larger than the
ring, and with ``maxsize=0`` any message that finds it full, goes to the
queue's spill area: a log in the queue's own file beyond the mapped part,
which outlives its producer, keeps FIFO order and is freed as it is consumed
(``_core/layout.h``, "The spill area").

Waiting: ``fileno()`` and the ``*_async`` methods (``procwire._aio``).
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Generic, Literal, overload

if TYPE_CHECKING:
    # Queue() with no type argument is Queue[Any] (PEP 696 default), as
    # multiprocessing's Queue() is in typeshed, so `q = Queue()` needs no
    # annotation under mypy --strict; typing.TypeVar takes default= from 3.13.
    from typing_extensions import TypeVar

    from procwire.stats import QueueStatistics  # noqa: F401 (in a quoted base class)

    _T = TypeVar("_T", default=Any)
else:
    from typing import TypeVar

    _T = TypeVar("_T")

from procwire import _aio, _core, _pickle
from procwire._loans import Lender, Loan, View
from procwire._segment import ClosedOnExit, SegmentObject, ring_capacity
from procwire.errors import Empty, Full

__all__ = ["DEFAULT_CAPACITY", "JoinableQueue", "Loan", "Queue", "SimpleQueue", "View"]

DEFAULT_CAPACITY = 4 * 1024 * 1024

# Messages are pickled like multiprocessing's (its reducers included).
_SERIALIZER: dict[str, Any] = {"dumps": _pickle.dumps, "protocol": _pickle.HIGHEST,
                               "dumps_buffers": _pickle.dumps_buffers, "loads": _pickle.loads}


def _maxsize_for(maxsize: int) -> int:
    if not isinstance(maxsize, int) or isinstance(maxsize, bool):
        raise TypeError(f"maxsize must be an int, not {type(maxsize).__name__}")
    if maxsize > 2**31 - 1:
        raise ValueError(f"maxsize must be at most {2**31 - 1}, not {maxsize}")
    return max(maxsize, 0)  # <= 0 means no count limit, as in multiprocessing


class Queue(SegmentObject["QueueStatistics"], ClosedOnExit, Lender, _core.QueueBase,
            Generic[_T]):
    """A process-safe FIFO queue in shared memory, like ``multiprocessing.Queue``.

    ``Queue(maxsize=0, *, capacity=None, name=None)``

    ``maxsize`` > 0 bounds the number of queued messages; ``capacity`` is the
    size of the ring, the fast path: what does not fit goes to the spill area
    (with ``maxsize=0``, ``put`` waits at most 10 ms for room in the ring, once,
    then spills). With ``name``, the queue appears as
    ``/dev/shm/procwire.<name>`` and an unrelated process can open it with
    ``Queue.attach(name)``; this object removes the name when it is closed or
    its process exits. ``ctx`` is accepted for compatibility and ignored.

    Methods implemented natively: ``put``, ``put_nowait``, ``put_many``,
    ``get``, ``get_nowait``, ``get_many``, ``qsize``, ``empty``, ``full``.

    Generic in the item type for type checkers, as typeshed's
    ``multiprocessing.Queue``: ``q: Queue[int] = Queue()``.
    """

    if TYPE_CHECKING:  # the native methods (_core.QueueBase), typed with the item type
        def put(self, obj: _T, block: bool = True, timeout: float | None = None) -> None: ...
        def put_nowait(self, obj: _T, /) -> None: ...
        @overload
        def get(self, block: bool = True, timeout: float | None = None, *,
                copy: Literal[True] = True) -> _T: ...
        @overload
        def get(self, block: bool = True, timeout: float | None = None, *,
                copy: Literal[False]) -> View: ...
        @overload
        def get(self, block: bool = True, timeout: float | None = None, *,
                copy: bool = True) -> _T | View: ...
        def get(self, block: bool = True, timeout: float | None = None, *,
                copy: bool = True) -> _T | View: ...
        def get_nowait(self) -> _T: ...
        def get_many(self, block: bool = True, timeout: float | None = None,
                     max_messages: int | None = None) -> list[_T]: ...

    _label = "Queue"
    _growable = True  # the spill area lies beyond the mapping, in the same file
    _statistics_type = "QueueStatistics"
    _close = _core.QueueBase._release
    _counters = _core.QueueBase._statistics

    def __init__(self, maxsize: int = 0, *, capacity: int | None = None,
                 name: str | None = None, ctx: object = None) -> None:
        maxsize = _maxsize_for(maxsize)
        cap = ring_capacity(capacity, DEFAULT_CAPACITY)
        # Laid out here; this object then opens it like any attacher (one _bind
        # serves every path).
        self._create(name, _core.segment_size(_core.KIND_QUEUE, cap),
                     lambda buf: _core.segment_init(buf, _core.KIND_QUEUE, capacity=cap,
                                                    maxsize=maxsize))

    def _bind(self, **state: Any) -> None:
        self._leases: set[Loan | View] = set()  # this handle's open loans and views
        # The spill area lies beyond the mapping, reached through the file.
        _core.QueueBase.__init__(self, self._segment.buffer, name=self._describe(),
                                 spill_fd=self._segment.io_fd, **_SERIALIZER)

    def close(self) -> None:
        """Release this process's handle. Further use of it raises ValueError.

        Other processes are not affected; a named queue's creator also removes
        the name. Safe to call more than once. Open loans of this thread are
        discarded and its views released first; RuntimeError if another
        thread of this process holds one. Stops this handle's ``fileno()``
        and ``put_async`` watcher threads and closes the descriptor.
        """
        self._end_leases()
        for attr in ("_readiness", "_room_watcher"):
            watcher = self.__dict__.pop(attr, None)
            if watcher is not None:
                watcher.close()
        super().close()

    # -- multiprocessing.Queue's life-cycle methods -------------------------------

    # -- waiting from select() and event loops (see procwire._aio) ---------------

    def fileno(self) -> int:
        """A descriptor readable while a message waits, for select, selectors,
        ``multiprocessing.connection.wait`` and ``loop.add_reader``.

        An eventfd private to this handle, made readable by a watcher thread
        of this process that sleeps in the queue's futex wait (so a put from
        any process, related or attached by name, wakes it); reading it
        directly is meaningless. This handle's ``get``, ``get_nowait`` and
        ``get_many`` drain it when they leave the queue empty or find it
        empty. If another process takes the last message, it stays readable
        until this handle's next get finds the queue empty (``get_nowait``
        raises ``queue.Empty`` and clears it): a spurious wake-up to expect,
        as with several consumers anyway. The thread and descriptor live until
        :meth:`close`.
        """
        readiness = self.__dict__.get("_readiness")
        if readiness is None or readiness.fd < 0:
            if self._released:
                raise ValueError(f"{self._describe()} is closed")
            readiness = _aio.Readiness(
                self._describe(), lambda: self._word(0),
                lambda: self.qsize() > 0, lambda token: self._wait_change(0, token),
                self._kick)
            self._readiness = readiness
            self._hook_gets()
        return readiness.fd

    def _hook_gets(self) -> None:
        # This handle's gets keep the descriptor level-triggered. Instance
        # attributes, so that queues without fileno() keep the native calls.
        ring = _core.QueueBase

        def recheck() -> None:
            readiness = self.__dict__.get("_readiness")
            if readiness is not None:
                readiness.recheck()

        def get(block: bool = True, timeout: float | None = None, *, copy: bool = True) -> Any:
            try:
                return ring.get(self, block, timeout, copy=copy)
            finally:
                recheck()

        def get_nowait() -> Any:
            try:
                return ring.get_nowait(self)
            finally:
                recheck()

        def get_many(block: bool = True, timeout: float | None = None,
                     max_messages: int | None = None) -> list[Any]:
            try:
                return ring.get_many(self, block, timeout, max_messages)
            finally:
                recheck()

        for fn in (get, get_nowait, get_many):
            fn.__doc__ = getattr(ring, fn.__name__).__doc__
            self.__dict__[fn.__name__] = fn

    async def get_async(self, timeout: float | None = None) -> _T:
        """Remove and return an item, awaiting one without blocking the event loop.

        Raises ``queue.Empty`` if ``timeout`` seconds pass first. Cancelling
        it takes nothing from the queue. Waits through :meth:`fileno` (one
        watcher thread per handle and process, not one per call).
        """
        deadline = _aio.deadline_of(timeout)
        fd = self.fileno()
        while True:
            try:
                return self.get_nowait()
            except Empty:
                pass
            if not await _aio.wait_readable(fd, deadline):
                try:
                    return self.get_nowait()
                except Empty:
                    raise Empty from None

    async def put_async(self, obj: _T, timeout: float | None = None) -> None:
        """Put ``obj``, awaiting room (a bounded or full queue) without blocking the loop.

        Raises ``queue.Full`` if ``timeout`` seconds pass first; cancelling it
        puts nothing. A put that has room returns at once, with no thread
        involved; waiting for room uses one watcher thread per handle.
        """
        deadline = _aio.deadline_of(timeout)
        while True:
            token = self._word(1)
            try:
                return self.put(obj, False)
            except Full:
                pass
            watcher = self.__dict__.get("_room_watcher")
            if watcher is None:
                watcher = self._room_watcher = _aio.TokenWatcher(
                    self._describe(), lambda: self._word(1),
                    lambda token: self._wait_change(1, token), self._kick)
            if not await watcher.wait_moved(token, _aio.left(deadline)):
                return self.put(obj, False)  # one last try; queue.Full if still no room

    def join_thread(self) -> None:
        """Compatibility: there is no feeder thread, so nothing to wait for."""
        if not self._released:
            raise AssertionError(f"{self!r} not closed")  # as multiprocessing asserts

    def cancel_join_thread(self) -> None:
        """Compatibility: there is no feeder thread, so exit never waits on the queue."""

    def _repr_state(self) -> str:
        return f"qsize={self.qsize()}"

    # -- zero-copy messages (procwire._loans) ---------------------------------------

    def loan(self, nbytes: int, block: bool = True, timeout: float | None = None) -> Loan:
        """Room for one message of ``nbytes`` bytes, to be written in place.

        ::

            with q.loan(frame.nbytes) as buf:          # waits for room, as put() does
                np.copyto(np.frombuffer(buf, frame.dtype).reshape(frame.shape), frame)
            # published here; discarded instead if the block raised

        ``buf`` is a writable memoryview of the ring's shared memory: the
        message is written once, where the reader finds it, instead of being
        built elsewhere and copied in by ``put()``. The reader gets it as
        ``bytes`` from ``get()``, or in place with ``get(copy=False)``. While
        the loan is open, other producers wait; a writer killed inside it
        publishes nothing. A loan is in the ring: it waits while the spill area
        holds messages (it must not overtake them). ``block``/``timeout`` as for ``put()`` (raises
        ``queue.Full``); :class:`procwire.MessageTooLarge` if it can never fit.
        """
        return self._lend(nbytes, block, timeout)

    def _get_view(self, block: bool, timeout: float | None) -> View:
        """get(copy=False): the oldest message, in place (see procwire._loans.View)."""
        self._check_own(View, "holds a view of it; release it before taking another message")
        return self._viewed(self._view_begin(block, timeout))

    def put_many(self, items: Iterable[_T], block: bool = True,
                 timeout: float | None = None) -> None:
        """Put every item, in order, taking the lock once per group of items.

        If an item cannot be pickled, every item before it is put and it and
        the rest are not: its exception is raised with a ``count`` attribute,
        the number of items put (its index). On timeout raises ``queue.Full``,
        whose ``count`` attribute says the same.
        """
        try:
            _core.QueueBase.put_many(self, items, block, timeout)
        except Full:
            raise
        except BaseException as exc:
            count = getattr(exc, "count", None)  # set by the native put_many for an item
            if count is not None:
                exc.add_note(f"put_many() put the {count} items before this one; this one "
                             f"and the rest were not put")
            raise


class SimpleQueue(Queue[_T]):
    """Like ``multiprocessing.SimpleQueue``: ``put``, ``get``, ``empty``, ``close``.

    Same ring as :class:`Queue` (so ``get`` also takes ``block`` and
    ``timeout``), without a message-count limit.
    """

    _label = "SimpleQueue"

    def __init__(self, *, capacity: int | None = None, name: str | None = None,
                 ctx: object = None) -> None:
        super().__init__(0, capacity=capacity, name=name)


class JoinableQueue(Queue[_T]):
    """Like ``multiprocessing.JoinableQueue``: a Queue with ``task_done`` and ``join``.

    The count of unfinished tasks is the number of messages ever put minus the
    ``task_done()`` calls, both kept in shared memory; a producer killed in the
    middle of ``put`` never leaves ``join()`` waiting for a task that does not
    exist.
    """

    _label = "JoinableQueue"

    def task_done(self) -> None:
        """Mark one formerly enqueued task done; ValueError if called too often."""
        self._task_done()

    def join(self, timeout: float | None = None) -> bool:
        """Block until every item put has been marked done.

        Returns True, or False if ``timeout`` seconds passed first.
        """
        return self._join(timeout)
