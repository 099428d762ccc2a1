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
``capacity`` bounds the bytes (default 4 MiB, rounded up to a power of two).
A message larger than the ring raises :class:`procwire.MessageTooLarge`,
naming the capacity that would take it.
"""
from __future__ import annotations

import threading
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

from procwire import _core, _pickle
from procwire._loans import Loan, View
from procwire._segment import ClosedOnExit, SegmentObject, ring_capacity

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


class Queue(SegmentObject["QueueStatistics"], ClosedOnExit, _core.QueueBase, Generic[_T]):
    """A process-safe FIFO queue in shared memory, like ``multiprocessing.Queue``.

    ``Queue(maxsize=0, *, capacity=None, name=None)``

    ``maxsize`` > 0 bounds the number of queued messages; ``capacity`` the
    bytes of the ring. With ``name``, the queue appears as
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
    _statistics_type = "QueueStatistics"
    _close = _core.QueueBase._release
    _counters = _core.QueueBase._statistics

    def __init__(self, maxsize: int = 0, *, capacity: int | None = None,
                 name: str | None = None, ctx: object = None) -> None:
        maxsize = _maxsize_for(maxsize)
        cap = ring_capacity(capacity, DEFAULT_CAPACITY)

        def layout(buffer: Any) -> None:
            # A throw-away QueueBase writes the initial state; this object opens it
            # like any attacher (so that one _bind serves every path).
            ring = _core.QueueBase.__new__(_core.QueueBase)
            _core.QueueBase.__init__(ring, buffer, create=True, capacity=cap, maxsize=maxsize,
                                     kind=_core.KIND_QUEUE, name=self._label, **_SERIALIZER)
            ring._release()

        self._create(name, _core.QueueBase._segment_size(cap), layout)

    def _bind(self, **state: Any) -> None:
        self._leases: set[Loan | View] = set()  # this handle's open loans and views
        _core.QueueBase.__init__(self, self._segment.buffer, create=False, capacity=0, maxsize=0,
                                 kind=_core.KIND_QUEUE, name=self._describe(), **_SERIALIZER)

    def close(self) -> None:
        """Release this process's handle. Further use of it raises ValueError.

        Other processes are not affected; a named queue's creator also removes
        the name. Safe to call more than once. Open loans of this thread are
        discarded and its views released first; RuntimeError if another
        thread of this process holds one.
        """
        self._end_leases()
        super().close()

    # -- multiprocessing.Queue's life-cycle methods -------------------------------

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
        publishes nothing. ``block``/``timeout`` as for ``put()`` (raises
        ``queue.Full``); :class:`procwire.MessageTooLarge` if it can never fit.
        """
        if not isinstance(nbytes, int) or isinstance(nbytes, bool):
            raise TypeError(f"nbytes must be an int, not {type(nbytes).__name__}")
        if nbytes < 0:
            raise ValueError(f"nbytes must be >= 0, not {nbytes}")
        me = threading.get_ident()
        if self._leases and any(isinstance(x, Loan) and x._owner == me for x in self._leases):
            raise RuntimeError(f"{self._describe()}: this thread has an open loan on this "
                               "queue; publish or discard it before another")
        offset = self._loan_begin(nbytes, block, timeout)
        try:
            loan = Loan(self, nbytes, offset)
        except BaseException:
            self._loan_abort()
            raise
        self._leases.add(loan)
        return loan

    def _get_view(self, block: bool, timeout: float | None) -> View:
        """get(copy=False): the oldest message, in place (see procwire._loans.View)."""
        me = threading.get_ident()
        if self._leases and any(isinstance(x, View) and x._owner == me for x in self._leases):
            raise RuntimeError(f"{self._describe()}: this thread holds a view of this queue; "
                               "release it before taking another message")
        rtype, offset, length, copied = self._view_begin(block, timeout)
        view = View(self, rtype, offset, length, copied)
        if copied is None:
            self._leases.add(view)
        return view

    _loads = staticmethod(_pickle.loads)

    def _end_leases(self) -> None:
        leases = getattr(self, "_leases", None)
        if not leases:
            return
        me = threading.get_ident()
        if any(x._owner != me for x in leases):
            raise RuntimeError(f"{self._describe()}: another thread of this process holds a "
                               "loan or view of it; end that first")
        for x in list(leases):
            if isinstance(x, Loan):
                x.discard()
            else:
                x.release()

    def put_many(self, items: Iterable[_T], block: bool = True,
                 timeout: float | None = None) -> None:
        """Put every item, in order, taking the lock once per group of items.

        If an item cannot be pickled, every item before it is put and it and
        the rest are not: its exception is raised with a ``count`` attribute,
        the number of items put (its index). On timeout raises ``queue.Full``,
        whose ``count`` attribute says the same.
        """
        return _core.QueueBase.put_many(self, items, block, timeout)


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
