"""Message queues: ``Queue``, ``SimpleQueue`` and ``JoinableQueue``.

Drop-in replacements for their :mod:`multiprocessing` twins, built on one
shared-memory ring (``procwire._core.Ring``):

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
from typing import TYPE_CHECKING, Any, Generic, Self

if TYPE_CHECKING:
    # Queue() with no type argument is Queue[Any] (PEP 696 default), as
    # multiprocessing's Queue() is in typeshed, so `q = Queue()` needs no
    # annotation under mypy --strict; typing.TypeVar takes default= from 3.13.
    from typing_extensions import TypeVar

    _T = TypeVar("_T", default=Any)
else:
    from typing import TypeVar

    _T = TypeVar("_T")

from procwire import _aio, _core, _pickle
from procwire._segment import Named, Segment, validate_name
from procwire.errors import Empty, Full

__all__ = ["DEFAULT_CAPACITY", "JoinableQueue", "Queue", "SimpleQueue"]

DEFAULT_CAPACITY = 4 * 1024 * 1024

# Messages are pickled like multiprocessing's (its reducers included).
_SERIALIZER: dict[str, Any] = {"dumps": _pickle.dumps, "protocol": _pickle.HIGHEST,
                               "dumps_buffers": _pickle.dumps_buffers, "loads": _pickle.loads}


def _capacity_for(capacity: int | None) -> int:
    if capacity is None:
        return DEFAULT_CAPACITY
    if not isinstance(capacity, int) or isinstance(capacity, bool):
        raise TypeError(f"capacity must be an int number of bytes, not {type(capacity).__name__}")
    if capacity < 4096 or capacity > 1 << 30:
        raise ValueError(f"capacity must be between 4096 bytes and 1 GiB, not {capacity}")
    return 1 << (capacity - 1).bit_length()  # next power of two


def _maxsize_for(maxsize: int) -> int:
    if not isinstance(maxsize, int) or isinstance(maxsize, bool):
        raise TypeError(f"maxsize must be an int, not {type(maxsize).__name__}")
    if maxsize > 2**31 - 1:
        raise ValueError(f"maxsize must be at most {2**31 - 1}, not {maxsize}")
    return max(maxsize, 0)  # <= 0 means no count limit, as in multiprocessing


class Queue(Named, _core.Ring, Generic[_T]):
    """A process-safe FIFO queue in shared memory, like ``multiprocessing.Queue``.

    ``Queue(maxsize=0, *, capacity=None, name=None)``

    ``maxsize`` > 0 bounds the number of queued messages; ``capacity`` is the
    size of the ring, the fast path: what does not fit goes to the spill area
    (with ``maxsize=0``, ``put`` never waits for room). With ``name``, the queue appears as
    ``/dev/shm/procwire.<name>`` and an unrelated process can open it with
    ``Queue.attach(name)``; this object removes the name when it is closed or
    its process exits. ``ctx`` is accepted for compatibility and ignored.

    Methods implemented natively: ``put``, ``put_nowait``, ``put_many``,
    ``get``, ``get_nowait``, ``get_many``, ``qsize``, ``empty``, ``full``.

    Generic in the item type for type checkers, as typeshed's
    ``multiprocessing.Queue``: ``q: Queue[int] = Queue()``.
    """

    if TYPE_CHECKING:  # the native methods (_core.Ring), typed with the item type
        def put(self, obj: _T, block: bool = True, timeout: float | None = None) -> None: ...
        def put_nowait(self, obj: _T, /) -> None: ...
        def get(self, block: bool = True, timeout: float | None = None) -> _T: ...
        def get_nowait(self) -> _T: ...
        def get_many(self, block: bool = True, timeout: float | None = None,
                     max_messages: int | None = None) -> list[_T]: ...

    _kind_label = "Queue"

    def __init__(self, maxsize: int = 0, *, capacity: int | None = None,
                 name: str | None = None, ctx: object = None) -> None:
        maxsize = _maxsize_for(maxsize)
        cap = _capacity_for(capacity)
        size = _core.Ring._segment_size(cap)
        if name is None:
            # Growable: the spill area lies beyond the mapped segment.
            segment = Segment.create_anonymous(size, self._kind_label, growable=True)
            self._setup(segment, create=True, capacity=cap, maxsize=maxsize)
        else:
            validate_name(name)

            def initialise(buffer: Any) -> None:
                # Lays out the ring; Segment links the name only after this.
                _core.Ring.__init__(self, buffer, create=True, capacity=cap, maxsize=maxsize,
                                    kind=_core.KIND_QUEUE, name=self._display(name),
                                    spill=True, **_SERIALIZER)

            try:
                self._segment = Segment.create_named(name, size, initialise)
                self._set_spill_fd(self._segment.io_fd)
            except BaseException:
                self._release()
                raise

    def _display(self, name: str | None) -> str:
        return f"{self._kind_label}({name!r})" if name else f"anonymous {self._kind_label}"

    def _setup(self, segment: Segment, *, create: bool, capacity: int = 0,
               maxsize: int = 0) -> None:
        self._segment = segment
        _core.Ring.__init__(self, segment.buffer, create=create, capacity=capacity,
                            maxsize=maxsize, kind=_core.KIND_QUEUE,
                            name=self._display(segment.name), spill=True, **_SERIALIZER)
        self._set_spill_fd(segment.io_fd)

    # -- by name ----------------------------------------------------------------

    @classmethod
    def attach(cls, name: str) -> Self:
        """Open the queue another process created with ``name=``.

        Raises ``FileNotFoundError`` if there is none, and
        :class:`procwire.SegmentError` if the name holds something that is not
        a valid procwire queue.
        """
        segment = Segment.attach_named(name)
        self = cls.__new__(cls)
        try:
            self._setup(segment, create=False)
        except BaseException:
            segment.close()
            raise
        return self

    # -- multiprocessing.Queue's life-cycle methods -------------------------------

    def close(self) -> None:
        """Release this process's handle. Further use of it raises ValueError.

        Other processes are not affected. A named queue's creator also removes
        the name. Safe to call more than once. Stops this handle's ``fileno()``
        and ``put_async`` watcher threads and closes the descriptor.
        """
        for attr in ("_readiness", "_room_watcher"):
            watcher = self.__dict__.pop(attr, None)
            if watcher is not None:
                watcher.close()
        self._release()
        self._segment.close()

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
                raise ValueError(f"{self._display(self._segment.name)} is closed")
            readiness = _aio.Readiness(
                self._display(self._segment.name), lambda: self._word(0),
                lambda: self.qsize() > 0, lambda token: self._wait_change(0, token),
                self._kick)
            self._readiness = readiness
            self._hook_gets()
        return readiness.fd

    def _hook_gets(self) -> None:
        # This handle's gets keep the descriptor level-triggered. Instance
        # attributes, so that queues without fileno() keep the native calls.
        ring = _core.Ring

        def recheck() -> None:
            readiness = self.__dict__.get("_readiness")
            if readiness is not None:
                readiness.recheck()

        def get(block: bool = True, timeout: float | None = None) -> Any:
            try:
                return ring.get(self, block, timeout)
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
                    self._display(self._segment.name), lambda: self._word(1),
                    lambda token: self._wait_change(1, token), self._kick)
            if not await watcher.wait_moved(token, _aio.left(deadline)):
                return self.put(obj, False)  # one last try; queue.Full if still no room

    def join_thread(self) -> None:
        """Compatibility: there is no feeder thread, so nothing to wait for."""
        if not self._released:
            raise AssertionError(f"{self!r} not closed")  # as multiprocessing asserts

    def cancel_join_thread(self) -> None:
        """Compatibility: there is no feeder thread, so exit never waits on the queue."""

    def statistics(self) -> dict[str, int]:
        """Live counters from the shared header: messages, bytes, waiters, owner deaths.

        ``total_in``/``total_out`` count every message ever published into /
        taken out of the ring, exactly, kills included (``total_in - total_out
        == messages``); ``bytes_in``/``bytes_out`` are advisory: a process
        killed right after publishing leaves its last batch's bytes uncounted.
        """
        return self._statistics()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._released else f"qsize={self.qsize()}"
        return f"<procwire.{type(self).__name__} {self._display(self._segment.name)} {state}>"

    # -- pickling: to children, or by name anywhere --------------------------------

    def __reduce__(self) -> tuple[Any, ...]:
        handle = self._segment.reduce_handle(type(self).__name__)
        return (_rebuild, (type(self), handle))

    def put_many(self, items: Iterable[_T], block: bool = True,
                 timeout: float | None = None) -> None:
        """Put every item, in order, taking the lock once per group of items.

        If an item cannot be pickled, every item before it is put and it and
        the rest are not: its exception is raised with a ``count`` attribute,
        the number of items put (its index). On timeout raises ``queue.Full``,
        whose ``count`` attribute says the same.
        """
        return _core.Ring.put_many(self, items, block, timeout)


def _rebuild(cls: type[Queue[Any]], handle: tuple[str, object]) -> Queue[Any]:
    segment = Segment.from_handle(handle)
    self = cls.__new__(cls)
    try:
        self._setup(segment, create=False)
    except BaseException:
        segment.close()
        raise
    return self


class SimpleQueue(Queue[_T]):
    """Like ``multiprocessing.SimpleQueue``: ``put``, ``get``, ``empty``, ``close``.

    Same ring as :class:`Queue` (so ``get`` also takes ``block`` and
    ``timeout``), without a message-count limit.
    """

    _kind_label = "SimpleQueue"

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

    _kind_label = "JoinableQueue"

    def task_done(self) -> None:
        """Mark one formerly enqueued task done; ValueError if called too often."""
        self._task_done()

    def join(self, timeout: float | None = None) -> bool:
        """Block until every item put has been marked done.

        Returns True, or False if ``timeout`` seconds passed first.
        """
        return self._join(timeout)
