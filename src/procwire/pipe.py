"""``Pipe`` and ``Connection``: :func:`multiprocessing.Pipe` over shared memory.

``Pipe(duplex=True)`` returns two :class:`Connection` objects with the API
of :class:`multiprocessing.connection.Connection` (``send``, ``recv``,
``send_bytes``, ``recv_bytes``, ``recv_bytes_into``, ``poll``, ``fileno``,
``close``...). Messages travel through two rings in one anonymous shared
segment (a memfd): no system call on the data path while both sides are
awake, and messages of any size (longer ones are streamed through the ring).

End of life works like a kernel pipe: once the other end is closed in every
process -- by ``close()``, exit, or ``kill -9`` -- ``recv()`` raises
``EOFError`` after the buffered messages, and ``send()`` raises
``BrokenPipeError``. The kernel tracks this, through a small "life pipe" per
end whose descriptors travel with the end (see ``_core/bind/pipe.c``).

Passing ends to other processes:

* as ``Process`` arguments, under fork, spawn and forkserver;
* pickled through anything ``multiprocessing`` can pass descriptors through
  (its queues and pipes, between processes of one family);
* to an unrelated process by name, with ``procwire.connection.Listener`` and
  ``Client`` (also importable from here): ``Listener("chan")`` in one
  process, ``Client("chan")`` in the other. The descriptors go over an
  abstract Unix socket (nothing in /dev/shm or on disk), and only processes
  of the same user are accepted.
"""
from __future__ import annotations

import array
import errno
import os
import select
import socket
import time
import weakref
from multiprocessing import BufferTooShort, reduction as _mp_reduction
from typing import TYPE_CHECKING, Any, Generic, Literal, cast, overload

if TYPE_CHECKING:
    pass

if TYPE_CHECKING:
    from procwire.stats import ConnectionStatistics  # noqa: F401 (in a quoted base class)

from procwire import _aio, _core, _pickle
from procwire._loans import Lender, Loan, View
from procwire._segment import ClosedOnExit, Segment, SegmentObject, rebuild, ring_capacity

if TYPE_CHECKING:  # what __getattr__ below returns
    from typing_extensions import TypeVar

    from procwire.connection import Client as Client, Listener as Listener

    # What send() takes and recv() returns, as typeshed's
    # multiprocessing.connection.Connection[_SendT, _RecvT]; Any by default
    # (PEP 696), so a bare `Connection` annotation means Connection[Any, Any].
    _SendT = TypeVar("_SendT", contravariant=True, default=Any)
    _RecvT = TypeVar("_RecvT", covariant=True, default=Any)
else:
    from typing import TypeVar

    _SendT = TypeVar("_SendT", contravariant=True)
    _RecvT = TypeVar("_RecvT", covariant=True)

__all__ = ["DEFAULT_CAPACITY", "Client", "Connection", "Listener", "Loan", "Pipe", "View"]

DEFAULT_CAPACITY = 1024 * 1024  # bytes per direction


# Every open Connection of this process, so that a fork child counts as a
# holder of the ends it inherits (the kernel duplicates their descriptors).
# The count is taken in the parent, before fork() returns there: a parent that
# closes its copy right after start() must not see the count reach zero
# before the child runs. (A failed fork leaves the count one too high; the
# kernel's view of the descriptors still decides end of life.)
_live: weakref.WeakSet[Connection] = weakref.WeakSet()


# send_async's watcher and sender thread of each end that needed one
# (Connection has __slots__).
_send_watchers: weakref.WeakKeyDictionary[Connection, _aio.TokenWatcher] = \
    weakref.WeakKeyDictionary()
_senders: weakref.WeakKeyDictionary[Connection, _aio.OrderedSender] = weakref.WeakKeyDictionary()


def _fits_empty_ring(length: int, capacity: int) -> bool:
    """Whether send_bytes(length bytes) into an empty ring of ``capacity`` never waits.

    A streamed message goes in pieces of a quarter of the ring less 16 bytes,
    each a record of at most a quarter: four of them fit.
    """
    return length <= 4 * (capacity // 4 - 16)


def _before_fork() -> None:
    for conn in list(_live):
        if not conn.closed:
            conn._add_handle()


os.register_at_fork(before=_before_fork)


class Connection(SegmentObject["ConnectionStatistics"], ClosedOnExit, Lender, _core.PipeEnd,
                 Generic[_SendT, _RecvT]):
    """One end of a :func:`Pipe`; the API of ``multiprocessing.connection.Connection``.

    ``send``, ``recv``, ``send_bytes``, ``recv_bytes`` and ``poll`` are native.
    ``recv``, ``recv_bytes`` and ``recv_bytes_into`` also take an optional
    keyword-only ``timeout`` (seconds; ``TimeoutError`` when it passes), which
    multiprocessing does not have.
    """

    if TYPE_CHECKING:  # the native methods (_core.PipeEnd), typed with the message types
        def send(self, obj: _SendT, /) -> None: ...
        def recv(self, *, timeout: float | None = None) -> _RecvT: ...
        @overload
        def recv_bytes(self, maxlength: int | None = None, *, timeout: float | None = None,
                       copy: Literal[True] = True) -> bytes: ...
        @overload
        def recv_bytes(self, maxlength: int | None = None, *, timeout: float | None = None,
                       copy: Literal[False]) -> View: ...
        @overload
        def recv_bytes(self, maxlength: int | None = None, *, timeout: float | None = None,
                       copy: bool = True) -> bytes | View: ...
        def recv_bytes(self, maxlength: int | None = None, *, timeout: float | None = None,
                       copy: bool = True) -> bytes | View: ...

    _label = "Pipe end"
    _statistics_type = "ConnectionStatistics"
    _counters = _core.PipeEnd._statistics

    def _bind(self, *, fds: tuple[int, int, int, int], end: int, create: bool = False,
              capacity: int = 0, duplex: bool = True, count: bool = True,
              **state: Any) -> None:
        self._leases: set[Loan | View] = set()  # this handle's open loans and views
        _core.PipeEnd.__init__(self, self._segment.buffer, create=create, end=end,
                               capacity=capacity, duplex=duplex, fds=fds, count=count,
                               name=f"Pipe end {end}", dumps=_pickle.dumps, loads=_pickle.loads)
        _live.add(self)

    @classmethod
    def attach(cls, name: str) -> Connection:
        """Pipe ends have no name: pass them to children, or use procwire.connection's
        ``Listener``/``Client`` to reach an unrelated process."""
        raise TypeError("a Pipe end has no name to attach to: pass it to child processes, or "
                        "connect unrelated processes with procwire.connection.Listener/Client")

    def recv_bytes_into(self, buf: Any, offset: int = 0, *, timeout: float | None = None) -> int:
        """Read a message into ``buf`` at ``offset``; return its length in bytes.

        Raises :class:`multiprocessing.BufferTooShort` (carrying the whole
        message as ``args[0]``) if it does not fit; the message is consumed.
        """
        with memoryview(buf) as whole:
            if offset < 0:
                raise ValueError("negative offset")
            if offset > whole.nbytes:
                raise ValueError("offset too large")
            with whole.cast("B") as octets:
                result = self._recv_bytes_into(octets[offset:], timeout)
        if isinstance(result, bytes):
            raise BufferTooShort(result)
        return result

    # -- zero-copy messages (procwire._loans) ---------------------------------------

    def loan(self, nbytes: int, block: bool = True, timeout: float | None = None) -> Loan:
        """Room for one message of ``nbytes`` bytes, to be written in place.

        ::

            with conn.loan(frame.nbytes) as buf:       # waits for room, as send() does
                np.copyto(np.frombuffer(buf, frame.dtype).reshape(frame.shape), frame)
            # published here; discarded instead if the block raised

        As :meth:`procwire.Queue.loan`: ``buf`` is a writable memoryview of the
        ring's shared memory, and the other end receives the message with
        ``recv_bytes()`` (or in place with ``recv_bytes(copy=False)``). While
        the loan is open, this end's other senders wait; a writer killed inside
        it publishes nothing. The message must fit the ring in one piece
        (:class:`procwire.MessageTooLarge` otherwise: larger ones are streamed by
        ``send_bytes``). ``TimeoutError`` if no room comes before ``timeout``
        (``block=False``: at once); ``BrokenPipeError`` if the other end is closed.
        """
        return self._lend(nbytes, block, timeout)

    def _recv_view(self, maxlength: int | None, timeout: float | None) -> View:
        """recv_bytes(copy=False): the next message, in place (procwire._loans.View)."""
        self._check_own(View, "holds a view of it; release it before receiving another")
        if maxlength is not None and maxlength < 0:
            raise ValueError("negative maxlength")
        view = self._viewed(self._view_begin(timeout))
        if maxlength is not None and len(view.value) > maxlength:
            view.release()  # dropped, as recv_bytes drops it
            raise OSError("bad message length")
        return view

    def fileno(self) -> int:
        """A descriptor that is readable while a message waits or the peer is gone.

        For ``select``, ``selectors``, ``multiprocessing.connection.wait`` and
        asyncio's ``add_reader``. It is an epoll descriptor private to this
        object (not the data path): reading it directly is meaningless. Once
        asked for, every message to this end costs the sender one eventfd
        write and the receiver one read when the ring runs empty.
        """
        ev_self, _, life_peer, _ = self._fds()  # OSError("handle is closed") once closed
        epoll: select.epoll | None = self.__dict__.get("_epoll")
        if epoll is None:
            made = select.epoll()
            try:
                made.register(ev_self, select.EPOLLIN)
                # The peer's death only (EPOLLHUP is always reported): descriptors
                # waiting for recv_handle() do not make recv() ready.
                made.register(life_peer, 0)
                self._signal_fd()  # senders signal the eventfd from now on
            except BaseException:
                made.close()
                raise
            epoll = self.__dict__.setdefault("_epoll", made)
            if epoll is not made:  # another thread of ours made one meanwhile
                made.close()
            if self.closed:  # close() ran in another thread meanwhile: it found no epoll
                self.__dict__.pop("_epoll", None)
                epoll.close()
                raise OSError("handle is closed")
        return epoll.fileno()

    # -- event loops (see procwire._aio) ------------------------------------------

    async def recv_async(self, *, timeout: float | None = None) -> _RecvT:
        """Await the next object, like :meth:`recv`, without blocking the event loop.

        Waits with ``loop.add_reader`` on :meth:`fileno`; ``EOFError`` when the
        other end is closed and nothing is left, ``TimeoutError`` if ``timeout``
        passes first. Cancelling it receives nothing. A message streamed in
        pieces (longer than a quarter of the ring) is received once its first
        piece is there, waiting for the rest as :meth:`recv` does.
        """
        result: _RecvT = await _aio.recv_async(self, timeout)
        return result

    async def send_async(self, obj: _SendT) -> None:
        """Send ``obj``, like :meth:`send`, awaiting room in the ring without blocking the loop.

        A message that fits returns at once. Otherwise a watcher thread of
        this end (one per end and process, not per call) sleeps until the
        receiver takes a record. A message longer than a quarter of the ring
        is streamed: it waits for the whole ring to be free. One that cannot
        fit even then is sent by this end's sender thread (started when
        needed), piece by piece as the receiver takes them, while the loop
        runs; later ``send_async`` calls queue behind it, keeping their order.
        Cancelled before its turn it sends nothing; once its pieces began, it
        is sent whole. ``BrokenPipeError`` if the other end is closed.
        """
        data = _pickle.dumps(obj)  # what send() sends: send_bytes(pickle)
        fits = _fits_empty_ring(len(data), self._send_room()[2])
        while True:
            sender = _senders.get(self)
            if not fits or (sender is not None and sender.busy):
                if sender is None:
                    sender = _senders[self] = _aio.OrderedSender(repr(self), self.send_bytes)
                await sender.send(data)
                return
            await self._await_send_room(len(data))
            # While this one awaited room, a long message may have gone to the
            # sender thread, which holds the send lock for all its pieces: a
            # send_bytes here would wait for it with the loop held (and for
            # ever if the receiver is a coroutine of this loop). Queue behind it.
            sender = _senders.get(self)
            if sender is None or not sender.busy:
                self.send_bytes(data)
                return

    async def _await_send_room(self, length: int) -> None:
        watcher: _aio.TokenWatcher | None = None
        while True:
            token, free, capacity = self._send_room()
            need = 8 + ((length + 7) & ~7) if length <= capacity // 4 else capacity
            if free >= need:
                return
            if watcher is None:
                watcher = _send_watchers.get(self)
                if watcher is None:
                    watcher = _send_watchers[self] = _aio.TokenWatcher(
                        repr(self), lambda: self._send_room()[0],
                        lambda token: self._wait_change(1, token), self._kick)
            # Slices, to notice a receiver that died with the ring full: then
            # send_bytes raises BrokenPipeError instead of waiting for ever.
            if not await watcher.wait_moved(token, 0.1) and self._statistics()["peer_closed"]:
                return

    # -- passing descriptors ----------------------------------------------------

    def send_handle(self, handle: int) -> None:
        """Send a file descriptor to the other end, which gets it from :meth:`recv_handle`.

        The receiving process gets its own descriptor for the same open file
        (as with ``SCM_RIGHTS``); ``handle`` stays open here. Descriptors
        travel apart from messages: each direction keeps its order, but a
        descriptor may overtake messages sent before it. Also what
        ``multiprocessing.reduction.send_handle(conn, handle, pid)`` does
        for a procwire Connection. ``BrokenPipeError`` if the other end is
        closed.
        """
        if self.closed:
            raise OSError("handle is closed")
        if not self.writable:
            raise OSError("connection is read-only")
        if not isinstance(handle, int) or isinstance(handle, bool):
            raise TypeError(f"handle must be an int file descriptor, not "
                            f"{type(handle).__name__}")
        fds = array.array("i", [handle])
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM,
                           fileno=os.dup(self._fds()[3])) as sock:
            while True:
                try:
                    sock.sendmsg([b"\x01"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)],
                                 socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL)
                    return
                except BlockingIOError:
                    # Thousands of descriptors in flight: wait for the peer.
                    _wait_fd(sock.fileno(), select.POLLOUT, None)
                except (BrokenPipeError, ConnectionResetError):
                    raise BrokenPipeError(errno.EPIPE,
                                          "the other end of the pipe is closed") from None

    def recv_handle(self, *, timeout: float | None = None) -> int:
        """Return a descriptor sent with :meth:`send_handle` by the other end (ours to close).

        Blocks until one arrives, up to ``timeout`` seconds (``TimeoutError``);
        ``EOFError`` when the other end is closed and none is left. Also what
        ``multiprocessing.reduction.recv_handle(conn)`` does for a procwire
        Connection.
        """
        if self.closed:
            raise OSError("handle is closed")
        if not self.readable:
            raise OSError("connection is write-only")
        deadline = None if timeout is None else time.monotonic() + timeout
        size = socket.CMSG_SPACE(array.array("i").itemsize)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM,
                           fileno=os.dup(self._fds()[2])) as sock:
            while True:
                try:
                    msg, anc, flags, _ = sock.recvmsg(
                        1, size, socket.MSG_DONTWAIT | socket.MSG_CMSG_CLOEXEC)
                    break
                except BlockingIOError:
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        raise TimeoutError("no descriptor arrived before the timeout") from None
                    _wait_fd(sock.fileno(), select.POLLIN, left)
                except ConnectionResetError:
                    raise EOFError("the other end of the pipe is closed") from None
        if not msg and not anc:
            raise EOFError("the other end of the pipe is closed")
        received = array.array("i")
        for level, kind, data in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                received.frombytes(data[:len(data) - len(data) % received.itemsize])
        if len(received) != 1 or flags & socket.MSG_CTRUNC:
            for fd in received:
                os.close(fd)
            raise RuntimeError(f"received {len(received)} descriptors where 1 was sent "
                               f"(a record not made by send_handle)")
        return received[0]

    def close(self) -> None:
        """Close this handle. The end stays open while other processes hold it.

        This thread's open loans are discarded and its views released first;
        RuntimeError if another thread of this process holds one."""
        self._end_leases()
        watcher = _send_watchers.pop(self, None)
        if watcher is not None:
            watcher.close()
        if not self.closed:
            self._close()
            _live.discard(self)
        epoll = self.__dict__.pop("_epoll", None)
        if epoll is not None:
            epoll.close()
        sender = _senders.pop(self, None)
        if sender is not None:
            sender.close()  # after _close(): a send in progress ends with an error
        # Idempotent: it retries the mmap if a call in another thread still held it.
        self._segment.close()

    def __repr__(self) -> str:
        if self.closed:
            return "<procwire.Connection closed>"
        mode = "duplex" if self.readable and self.writable else (
            "read-only" if self.readable else "write-only")
        return f"<procwire.Connection end {self._end} {mode}>"

    # -- passing to other processes --------------------------------------------

    def _handle_fds(self) -> list[int]:
        if self.closed:
            raise OSError("handle is closed")
        return [self._segment.fd, *self._fds()]

    def __reduce__(self) -> tuple[Any, ...]:
        # The segment travels with the end's four descriptors (see _from_fds).
        dups = tuple(_mp_reduction.DupFd(fd) for fd in self._handle_fds())
        # The receiving process adopts this count; if it never arrives, the
        # kernel still reports the end closed once the descriptors are gone.
        self._add_handle()
        return (rebuild, (type(self), dups, {"end": self._end}))

    @classmethod
    def _from_handle(cls, handle: Any, state: dict[str, Any]) -> Connection:
        return _from_fds(state["end"], [d.detach() for d in handle])


def _wait_fd(fd: int, events: int, timeout: float | None) -> None:
    """Wait (GIL released, Ctrl-C honoured) until fd has `events`, HUP, or timeout."""
    poller = select.poll()
    poller.register(fd, events)
    poller.poll(None if timeout is None else max(0, int(timeout * 1000) + 1))


# multiprocessing.reduction.send_handle/recv_handle wrap conn.fileno() in a
# socket. A procwire Connection's fileno() cannot be that socket: it must be
# readable exactly when a message waits in shared memory, and a socket is
# readable only with bytes in it -- a system call per message, the cost the
# ring exists to avoid. So the two functions learn to hand procwire
# Connections to their own send_handle/recv_handle; every other connection
# goes to the original functions, unchanged.
def _install_reduction_hooks() -> None:
    if getattr(_mp_reduction.send_handle, "_procwire", False):
        return
    original_send, original_recv = _mp_reduction.send_handle, _mp_reduction.recv_handle

    def send_handle(conn: Any, handle: int, destination_pid: object) -> None:
        if isinstance(conn, Connection):
            return conn.send_handle(handle)
        return original_send(conn, handle, destination_pid)

    def recv_handle(conn: Any) -> int:
        if isinstance(conn, Connection):
            return conn.recv_handle()
        return original_recv(conn)

    hooks: tuple[tuple[Any, Any], ...] = ((send_handle, original_send),
                                          (recv_handle, original_recv))
    for hook, original in hooks:
        hook.__doc__ = original.__doc__
        hook.__wrapped__ = original
        hook._procwire = True
    _mp_reduction.send_handle = send_handle
    _mp_reduction.recv_handle = recv_handle


_install_reduction_hooks()


def _from_fds(end: int, fds: list[int]) -> Connection:
    """Build a Connection from received descriptors (ours to close)."""
    # the four descriptors PipeEnd keeps (see Pipe below)
    memfd, rest = fds[0], cast("tuple[int, int, int, int]", tuple(fds[1:]))
    try:
        segment = Segment.from_fd(memfd)
    except BaseException:
        for fd in rest:
            os.close(fd)
        raise
    try:
        return Connection._from_segment(segment, fds=rest, end=end, count=False)
    except BaseException:
        for fd in rest:
            os.close(fd)
        raise


def _new_fds() -> tuple[list[int], list[tuple[int, int]]]:
    flags = os.EFD_CLOEXEC | os.EFD_NONBLOCK
    made: list[int] = []
    try:
        ev = []
        for _ in range(2):
            ev.append(os.eventfd(0, flags))
            made.append(ev[-1])
        life = []
        for _ in range(2):
            # A socket pair rather than a pipe: the same end-of-life signal
            # (POLLHUP once every write side is closed), and it carries
            # descriptors (send_handle).
            a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            r, w = a.detach(), b.detach()
            made += [r, w]
            for fd in (r, w):
                os.set_blocking(fd, False)
            life.append((r, w))
    except BaseException:
        for fd in made:
            os.close(fd)
        raise
    return ev, life


def Pipe(duplex: bool = True, *, capacity: int | None = None) -> tuple[Connection, Connection]:
    """Return ``(conn1, conn2)``, the two ends of a new pipe, like ``multiprocessing.Pipe``.

    With ``duplex=False``, ``conn1`` can only receive and ``conn2`` only send.
    ``capacity`` is the ring size per direction (default 1 MiB, rounded up to
    a power of two); longer messages are streamed through it.
    """
    duplex = bool(duplex)
    cap = ring_capacity(capacity, DEFAULT_CAPACITY)
    size = _core.PipeEnd._segment_size(cap, duplex)
    segment = Segment.create_anonymous(size, "Pipe")
    ev, life = _new_fds()
    # end e holds: its eventfd, the peer's eventfd, the read side of the
    # peer's life pipe, the write side of its own life pipe.
    fds0 = (ev[0], ev[1], life[1][0], life[0][1])
    fds1 = (os.dup(ev[1]), os.dup(ev[0]), life[0][0], life[1][1])
    try:
        c0: Connection = Connection._from_segment(segment, fds=fds0, end=0, create=True,
                                                  capacity=cap, duplex=duplex)
    except BaseException:
        for fd in (*fds0, *fds1):
            os.close(fd)
        raise
    try:
        c1: Connection = Connection._from_segment(Segment.from_fd(os.dup(segment.fd)),
                                                  fds=fds1, end=1)
    except BaseException:
        for fd in fds1:
            os.close(fd)
        c0.close()
        raise
    return c0, c1


# ---------------------------------------------------------------- by name
# Listener and Client live in procwire.connection (the twin of
# multiprocessing.connection); these names stay importable from here.

def __getattr__(name: str) -> Any:
    if name in ("Listener", "Client"):
        from procwire import connection
        return getattr(connection, name)
    raise AttributeError(f"module 'procwire.pipe' has no attribute {name!r}")
