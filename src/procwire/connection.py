"""``procwire.connection``: the twin of :mod:`multiprocessing.connection`.

``Listener``, ``Client``, ``Connection``, ``wait``, ``deliver_challenge`` and
``answer_challenge`` with multiprocessing's signatures and addresses:

* ``('host', port)``: TCP (``family='AF_INET'``, or ``'AF_INET6'``);
* a filesystem path (any string containing ``/``): a Unix socket file;
* ``'\\0name'`` (or ``b'\\0name'``): a Linux abstract Unix socket;
* a bare procwire name (``'chan'``: no ``/``, see ``validate_name``): procwire's
  own rendezvous, the abstract socket ``@procwire.pipe.chan``, over which the
  client hands the listener one end of a shared-memory :func:`procwire.Pipe`.

With ``authkey=`` both sides run multiprocessing's HMAC challenge, byte for
byte as the running Python's ``multiprocessing.connection`` does, so procwire's
Listener and Client talk to multiprocessing's (and a wrong key raises
``AuthenticationError`` on both sides). Over a socket the connection *is*
``multiprocessing.connection.Connection`` (:class:`SocketConnection`), the same
wire format.

**Shared-memory upgrade.** When both ends are procwire, on one host and of one
user, the connection becomes a shared-memory :class:`procwire.Connection`
(``shared_memory=True``, the default; ``False`` keeps the socket). It is
negotiated without a byte that a multiprocessing peer would see: each side
starts its random HMAC challenge with a procwire mark, which multiprocessing
simply hashes. Only if *both* challenges carry the mark, after authentication,
the listener binds a one-off abstract Unix socket, sends its name and a
random token over the authenticated connection, and the client connects to it
and hands over a pipe with the token (the name shows in /proc/net/unix; the
token does not). The abstract namespace is per network namespace, so reaching it proves
the same host; each side then checks the other's kernel credentials
(``SO_PEERCRED``: same user) before any byte is read or a descriptor sent.
Across hosts, or on any failure, the socket stays. Without an authkey there is
no handshake in which to negotiate invisibly, so a TCP or Unix-path connection
without an authkey stays a socket; a bare procwire name is always shared memory.

**Security.** ``Client`` checks the listener's credentials before sending
anything on a Unix socket it reached by procwire name (abstract sockets have no
owner: anyone can bind a name first), and refuses another user's listener with
``PermissionError``. ``Listener.accept`` checks a peer's credentials before
reading from it, runs every pending handshake concurrently without blocking
(one silent peer cannot hold up the others), and skips peers that break the
protocol instead of raising.
"""
from __future__ import annotations

import errno
import hmac
import os
import re
import secrets
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Generator
from multiprocessing import (
    AuthenticationError,
    BufferTooShort,
    connection as _mpc,
    reduction as _mp_reduction,
    util as _mp_util,
)
from multiprocessing.connection import answer_challenge, deliver_challenge
from typing import TYPE_CHECKING, Any

from procwire import _aio
from procwire._segment import validate_name
from procwire.pipe import Connection, Pipe, _from_fds

if TYPE_CHECKING:
    from collections.abc import Iterable

    from _typeshed import HasFileno

    # multiprocessing's wait(), typed for what it accepts: anything with a
    # fileno() (typeshed's stub names only multiprocessing's own connections).
    def wait(object_list: Iterable[HasFileno | int],
             timeout: float | None = None) -> list[Any]: ...
else:
    from multiprocessing.connection import wait

__all__ = ["AuthenticationError", "BufferTooShort", "Client", "Connection", "Listener", "Pipe",
           "SocketConnection", "answer_challenge", "deliver_challenge", "wait"]

families = ["AF_INET", "AF_INET6", "AF_UNIX"]

#: How long a peer may take over its handshake before the listener drops it.
HANDSHAKE_TIMEOUT = 60.0
#: At most this many unfinished handshakes are kept; the oldest goes first.
MAX_PENDING = 128

_NATIVE_PREFIX = "\0procwire.pipe."
_UPGRADE_PREFIX = "procwire.up."
_UPGRADE_OFFER = re.compile(rb"PWUP1 (procwire\.up\.[0-9a-f]{32}) ([0-9a-f]{32})")
_HELLO = struct.Struct("<8sI")  # magic, end index
_MAGIC = b"PWPIPE01"
# Starts a procwire side's random challenge: "I can upgrade to shared memory".
_OFFER = b"\x00PWSHM1\x00"
# multiprocessing.connection's protocol words (not in its typed interface).
_CHALLENGE, _WELCOME, _FAILURE = b"#CHALLENGE#", b"#WELCOME#", b"#FAILURE#"
_MESSAGE_LENGTH: int = getattr(_mpc, "MESSAGE_LENGTH", 20)
# (typeshed omits multiprocessing.connection's private helpers: the ignores below)
_arbitrary_address: Callable[[str], Any] = _mpc.arbitrary_address  # type: ignore[attr-defined]
_NEW_AUTH = hasattr(_mpc, "_create_response")  # Python 3.12+: digest negotiation
_CREDS = struct.Struct("3i")


class SocketConnection(_mpc.Connection):
    """A connection over a socket: multiprocessing's own ``Connection``.

    The full API (``send``, ``recv``, ``send_bytes``, ``recv_bytes``,
    ``recv_bytes_into``, ``poll``, ``fileno``, ``close``, context manager) and
    multiprocessing's wire format: 4-byte big-endian length, then the bytes.
    As on procwire's own Connection, ``recv``, ``recv_bytes`` and
    ``recv_bytes_into`` take a keyword-only ``timeout``: ``TimeoutError`` if
    no message has begun to arrive by then (a message that has begun is read
    to its end). It passes to child processes as multiprocessing's does.
    """

    shared_memory = False

    def _wait_for_message(self, timeout: float | None) -> None:
        if timeout is not None and not self.poll(timeout):
            raise TimeoutError(f"no message within {timeout} s")

    def recv(self, *, timeout: float | None = None) -> Any:
        self._wait_for_message(timeout)
        return super().recv()

    def recv_bytes(self, maxlength: int | None = None, *,
                   timeout: float | None = None) -> bytes:
        self._wait_for_message(timeout)
        return super().recv_bytes(maxlength)

    def recv_bytes_into(self, buf: Any, offset: int = 0, *,
                        timeout: float | None = None) -> int:
        self._wait_for_message(timeout)
        return super().recv_bytes_into(buf, offset)

    async def recv_async(self, *, timeout: float | None = None) -> Any:
        """Await the next object without blocking the event loop (``loop.add_reader``).

        ``EOFError`` when the peer closed, ``TimeoutError`` if ``timeout``
        passes before a message begins; cancelling it receives nothing. A
        message that has begun is read to its end, as :meth:`recv` reads it.
        """
        return await _aio.recv_async(self, timeout)

    async def send_async(self, obj: Any) -> None:
        """Send ``obj``: the kernel's socket buffer takes it at once unless full
        (then this blocks as :meth:`send` does, until the peer reads)."""
        self.send(obj)

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"fd {self.fileno()}"
        return f"<procwire.connection.SocketConnection {state}>"


def _reduce_socket_connection(conn: SocketConnection) -> tuple[Any, ...]:
    # multiprocessing's reduce_connection, rebuilding this class (its pickler
    # looks reducers up by exact type, so a subclass needs its own).
    dup = _mp_reduction.DupFd(conn.fileno())
    return _rebuild_socket_connection, (dup, conn.readable, conn.writable)


def _rebuild_socket_connection(dup: Any, readable: bool, writable: bool) -> SocketConnection:
    return SocketConnection(dup.detach(), readable, writable)


_mp_reduction.register(SocketConnection, _reduce_socket_connection)


class _Malformed(Exception):
    """A peer broke the protocol: it is dropped, accept() goes on."""


# ---------------------------------------------------------------- addresses

def address_type(address: Any) -> str:
    """'AF_INET' for a tuple, 'AF_UNIX' for a path or abstract name, 'procwire' for a bare name."""
    return _classify(address, None)[0]


def _classify(address: Any, family: str | None) -> tuple[str, Any]:
    """(kind, socket address); kind is 'AF_INET', 'AF_INET6', 'AF_UNIX' or 'procwire'."""
    if family is not None and family not in families:
        raise ValueError(f"family must be one of {families}, not {family!r}")
    if isinstance(address, tuple):
        if family == "AF_UNIX":
            raise ValueError(f"a ('host', port) address needs family 'AF_INET', not {family!r}")
        if family is None:  # an IPv6 host ('::1') or a 4-tuple, as getsockname gives
            ipv6 = len(address) == 4 or ":" in str(address[0] if address else "")
            family = "AF_INET6" if ipv6 else "AF_INET"
        return family, address
    if family in ("AF_INET", "AF_INET6"):
        raise ValueError(f"family {family!r} needs a ('host', port) address, not {address!r}")
    if isinstance(address, bytes) and address.startswith(b"\0"):
        return "AF_UNIX", address
    if isinstance(address, str):
        if address.startswith("\0") or "/" in address:
            return "AF_UNIX", address
        try:
            validate_name(address)
        except ValueError as exc:
            raise ValueError(f"{exc} (a Unix socket file's path must contain '/', "
                             f"e.g. './{address}')") from None
        return "procwire", _NATIVE_PREFIX + address
    raise TypeError(f"address type of {address!r} unrecognized: use ('host', port), a socket "
                    f"path, '\\0abstract-name' or a procwire name")


def _socket_for(kind: str) -> socket.socket:
    fam = {"AF_INET": socket.AF_INET, "AF_INET6": socket.AF_INET6}.get(kind, socket.AF_UNIX)
    return socket.socket(fam, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)


def _peer_uid(sock: socket.socket) -> int:
    """The user id the kernel recorded for the peer when the connection was made."""
    _pid, uid, _gid = _CREDS.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                    _CREDS.size))
    return int(uid)


# ---------------------------------------------------------------- the challenge
# multiprocessing's HMAC challenge, written out so that a procwire side can
# start its random bytes with _OFFER. The frames are multiprocessing's.

def _new_challenge(offer: bool) -> bytes:
    # The length stays multiprocessing's (Python 3.12+ answers a bare 20-byte
    # challenge with MD5 and rejects other lengths without a {digest} prefix);
    # with the mark, 12 of 3.11's 20 bytes stay random: 96 bits of nonce.
    message = os.urandom(_MESSAGE_LENGTH)
    if offer:
        message = _OFFER + message[len(_OFFER):]
    if _NEW_AUTH:  # pragma: no cover (3.12+)
        message = b"{sha256}" + message
    return message


def _digest(authkey: bytes, message: bytes) -> bytes:
    if _NEW_AUTH:  # pragma: no cover (3.12+)
        return bytes(_mpc._create_response(authkey, message))  # type: ignore[attr-defined]
    return hmac.new(authkey, message, "md5").digest()


def _verify(authkey: bytes, message: bytes, response: bytes) -> bool:
    if _NEW_AUTH:  # pragma: no cover (3.12+)
        try:
            _mpc._verify_challenge(authkey, message, response)  # type: ignore[attr-defined]
        except AuthenticationError:
            return False
        return True
    return hmac.compare_digest(response, hmac.new(authkey, message, "md5").digest())


def _offers(message: bytes) -> bool:
    """Whether a challenge (without its #CHALLENGE# prefix) is a procwire side's offer."""
    if message.startswith(b"{"):
        message = message[message.find(b"}") + 1:]
    return message.startswith(_OFFER)


def _check_authkey(authkey: Any) -> None:
    if authkey is not None and not isinstance(authkey, bytes):
        raise TypeError(f"authkey should be a byte string, not {type(authkey).__name__}")


# ---------------------------------------------------------------- framing
# multiprocessing's frame: "!i" length, then the bytes. Handshake frames are
# small, so one sendall never meets a full socket buffer.

def _frame(data: bytes) -> bytes:
    return struct.pack("!i", len(data)) + data


def _recv_exact_nb(sock: socket.socket, n: int) -> Generator[Any, None, bytes]:
    """Read exactly n bytes from a non-blocking socket, yielding it while it has none.

    Never reads past the frame: what follows belongs to the application.
    """
    buf = bytearray()
    while len(buf) < n:
        try:
            chunk = sock.recv(n - len(buf))
        except (BlockingIOError, InterruptedError):
            yield sock
            continue
        if not chunk:
            raise _Malformed("the peer closed the connection during the handshake")
        buf += chunk
    return bytes(buf)


def _recv_frame_nb(sock: socket.socket, maxsize: int) -> Generator[Any, None, bytes]:
    (size,) = struct.unpack("!i", (yield from _recv_exact_nb(sock, 4)))
    if size < 0 or size > maxsize:
        raise _Malformed(f"handshake frame of {size} bytes")
    return (yield from _recv_exact_nb(sock, size))


def _remaining(deadline: float | None) -> float | None:
    if deadline is None:
        return None
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("procwire.connection: the handshake timed out")
    return left


def _recv_exact(sock: socket.socket, n: int, deadline: float | None) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        sock.settimeout(_remaining(deadline))
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("the listener closed the connection during the handshake")
        buf += chunk
    return bytes(buf)


def _recv_frame(sock: socket.socket, maxsize: int, deadline: float | None) -> bytes:
    (size,) = struct.unpack("!i", _recv_exact(sock, 4, deadline))
    if size < 0 or size > maxsize:
        raise OSError("bad message length")
    return _recv_exact(sock, size, deadline)


def _send_frame(sock: socket.socket, data: bytes, deadline: float | None) -> None:
    sock.settimeout(_remaining(deadline))
    sock.sendall(_frame(data))


# ---------------------------------------------------------------- Listener

class Listener:
    """``multiprocessing.connection.Listener`` with procwire's addresses and upgrade.

    ``Listener(address=None, family=None, backlog=16, authkey=None, *,
    shared_memory=True)``. ``accept(timeout=None)`` returns a
    :class:`procwire.Connection` (shared memory) or a :class:`SocketConnection`;
    ``TimeoutError`` once ``timeout`` seconds pass. With no address, an
    arbitrary one of ``family`` (default: a Unix socket file) is chosen, as
    multiprocessing does.
    """

    def __init__(self, address: Any = None, family: str | None = None, backlog: int = 16,
                 authkey: bytes | None = None, *, shared_memory: bool = True) -> None:
        _check_authkey(authkey)
        if address is None:
            fam = family or "AF_UNIX"
            address = ("::1", 0) if fam == "AF_INET6" else _arbitrary_address(
                "AF_INET" if fam == "AF_INET" else "AF_UNIX")
        kind, sockaddr = _classify(address, family)
        self._kind = kind
        self._authkey = authkey
        self._upgrade = bool(shared_memory)
        self._pending: dict[int, tuple[socket.socket, Generator[Any, None, Any], float, Any]] = {}
        self._last_accepted: Any = None
        self._accepting = threading.Lock()
        self._unlink = None
        sock = _socket_for(kind)
        try:
            if kind in ("AF_INET", "AF_INET6"):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(sockaddr)
            except OSError as exc:
                if kind == "procwire" and exc.errno == errno.EADDRINUSE:
                    raise FileExistsError(
                        errno.EEXIST, f"a procwire Listener named {address!r} already exists"
                    ) from None
                raise
            sock.listen(backlog)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        self._sock: socket.socket | None = sock
        if kind == "procwire":
            self._address: Any = address
        else:
            self._address = sock.getsockname()
        if kind == "AF_UNIX" and isinstance(sockaddr, str) and not sockaddr.startswith("\0"):
            # A socket file outlives its socket, as in multiprocessing.
            self._unlink = _mp_util.Finalize(self, os.unlink, args=(sockaddr,), exitpriority=0)

    @property
    def address(self) -> Any:
        return self._address

    @property
    def last_accepted(self) -> Any:
        return self._last_accepted

    def accept(self, timeout: float | None = None) -> Connection | SocketConnection:
        """Return the next connection whose handshake completes.

        Handshakes run side by side: a silent or slow peer waits in the
        background (at most ``HANDSHAKE_TIMEOUT`` seconds) while others get
        through. A wrong authkey raises ``AuthenticationError``, as in
        multiprocessing; a peer that breaks the protocol is dropped silently.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        # One thread at a time drives the pending handshakes; others queue here.
        if not self._accepting.acquire(timeout=-1 if timeout is None else max(timeout, 0)):
            raise TimeoutError(f"no connection accepted within {timeout} s")
        try:
            return self._accept(deadline, timeout)
        finally:
            self._accepting.release()

    def _accept(self, deadline: float | None,
                timeout: float | None) -> Connection | SocketConnection:
        while True:
            if self._sock is None:
                raise OSError("listener is closed")
            now = time.monotonic()
            for fd, (_peer, _gen, peer_deadline, _w) in list(self._pending.items()):
                if peer_deadline <= now:
                    self._drop(fd)
            poller = select.poll()
            poller.register(self._sock, select.POLLIN)
            wake = deadline
            for _p, _g, peer_deadline, waiting in list(self._pending.values()):
                poller.register(waiting, select.POLLIN)
                wake = peer_deadline if wake is None else min(wake, peer_deadline)
            expired = deadline is not None and now >= deadline
            # Past the deadline, one last look that does not wait (timeout=0 polls).
            ms = None if wake is None else 0 if expired else max(0, int((wake - now) * 1000) + 1)
            ready = {fd for fd, _ev in poller.poll(ms)}
            for fd, (_p, _g, _d, waiting) in list(self._pending.items()):
                if waiting.fileno() in ready:
                    conn = self._step(fd)
                    if conn is not None:
                        return conn
            if self._sock.fileno() in ready:
                conn = self._accept_new()
                if conn is not None:
                    return conn
            if expired:
                raise TimeoutError(f"no connection accepted within {timeout} s")

    def _accept_new(self) -> Connection | SocketConnection | None:
        """Accept every connection waiting in the backlog; start their handshakes."""
        assert self._sock is not None
        while True:
            try:
                peer, addr = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return None
            except OSError as exc:
                if exc.errno in (errno.ECONNABORTED, errno.EPROTO):
                    continue
                raise
            peer.setblocking(False)
            if len(self._pending) >= MAX_PENDING:
                self._drop(min(self._pending, key=lambda k: self._pending[k][2]))
            fd = peer.fileno()
            self._pending[fd] = (peer, self._serve(peer, addr),
                                 time.monotonic() + HANDSHAKE_TIMEOUT, peer)
            conn = self._step(fd)
            if conn is not None:
                return conn

    def _step(self, fd: int) -> Connection | SocketConnection | None:
        """Run a peer's handshake until it waits again; return its connection when done."""
        entry = self._pending.get(fd)
        if entry is None:  # dropped meanwhile (close() from another thread)
            return None
        peer, gen, peer_deadline, _waiting = entry
        try:
            waiting = gen.send(None)
        except StopIteration as done:
            self._pending.pop(fd, None)
            peer.close()  # a no-op if the socket became the SocketConnection
            conn: Connection | SocketConnection | None = done.value
            return conn
        except AuthenticationError:
            self._drop(fd)
            raise
        except Exception:  # _Malformed, OSError, a bad segment...: not a client of ours
            self._drop(fd)
            return None
        self._pending[fd] = (peer, gen, peer_deadline, waiting)
        return None

    def _drop(self, fd: int) -> None:
        entry = self._pending.pop(fd, None)
        if entry is None:
            return
        peer, gen, _d, _w = entry
        try:
            gen.close()  # runs its finally: clauses (temporary sockets)
        except ValueError:  # running in accept() in another thread: it ends on the closed socket
            pass
        peer.close()

    # -- one peer's handshake, as a generator yielding the socket it waits on --

    def _serve(self, peer: socket.socket, addr: Any) -> Generator[Any, None, Any]:
        if self._kind == "procwire" and _peer_uid(peer) != os.geteuid():
            return None  # never read from another user's peer: drop it before any byte
        peer_offers = False
        if self._authkey is not None:
            peer_offers = yield from self._authenticate(peer)
        if self._kind == "procwire":
            conn = yield from _receive_pipe(peer)
            self._last_accepted = addr
            return conn
        if self._upgrade and peer_offers:
            upgraded = yield from self._offer_upgrade(peer)
            if upgraded is not None:
                peer.close()
                self._last_accepted = addr
                return upgraded
        peer.setblocking(True)
        self._last_accepted = addr
        return SocketConnection(peer.detach())

    def _authenticate(self, peer: socket.socket) -> Generator[Any, None, bool]:
        """deliver_challenge then answer_challenge, as multiprocessing's accept() runs them."""
        authkey = self._authkey
        assert authkey is not None
        message = _new_challenge(self._upgrade)
        peer.sendall(_frame(_CHALLENGE + message))
        response = yield from _recv_frame_nb(peer, 256)
        if not _verify(authkey, message, response):
            peer.sendall(_frame(_FAILURE))
            raise AuthenticationError("digest received was wrong")
        peer.sendall(_frame(_WELCOME))
        message = yield from _recv_frame_nb(peer, 256)
        if not message.startswith(_CHALLENGE):
            raise _Malformed("not a challenge")
        message = message[len(_CHALLENGE):]
        peer.sendall(_frame(_digest(authkey, message)))
        answer = yield from _recv_frame_nb(peer, 256)
        if answer != _WELCOME:
            raise AuthenticationError("digest sent was rejected")
        return _offers(message)

    def _offer_upgrade(self, peer: socket.socket) -> Generator[Any, None, Connection | None]:
        """Both sides offered: try to move to shared memory through a one-off abstract socket."""
        name = _UPGRADE_PREFIX + secrets.token_hex(16)
        tmp = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            tmp.bind("\0" + name)
            tmp.listen(4)
            tmp.setblocking(False)
            # The name is visible to local users (/proc/net/unix); the token,
            # sent only over the authenticated connection, is not: the pipe
            # that comes back with it is this client's.
            token = secrets.token_bytes(16)
            peer.sendall(_frame(b"PWUP1 " + name.encode() + b" " + token.hex().encode()))
            reply = yield from _recv_frame_nb(peer, 16)
            if reply != b"PWTRY":
                return None  # another host (or network namespace): stay a socket
            conn: Connection | None = None
            try:
                while True:
                    try:
                        unix, _ = tmp.accept()
                    except (BlockingIOError, InterruptedError):
                        yield tmp
                        continue
                    if _peer_uid(unix) == os.geteuid():
                        break
                    unix.close()  # someone else found the name: never read from them
                with unix:
                    unix.setblocking(False)
                    conn = yield from _receive_pipe(unix, token)
            except (_Malformed, OSError):
                conn = None
            try:
                peer.sendall(_frame(b"PWOK" if conn is not None else b"PWNO"))
            except BaseException:
                if conn is not None:
                    conn.close()
                raise
            return conn
        finally:
            tmp.close()

    def close(self) -> None:
        """Close the listening socket (and remove its socket file), as multiprocessing does."""
        for fd in list(self._pending):
            self._drop(fd)
        sock, self._sock = self._sock, None
        try:
            if sock is not None:
                sock.close()
        finally:
            unlink, self._unlink = self._unlink, None
            if unlink is not None:
                unlink()

    def __enter__(self) -> Listener:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._sock is None else f"at {self._address!r}"
        return f"<procwire.connection.Listener {state}>"


def _receive_pipe(unix: socket.socket,
                  token: bytes = b"") -> Generator[Any, None, Connection]:
    """Receive a client's pipe end (hello [+ token] + 5 descriptors) from a verified peer."""
    size = _HELLO.size + len(token)
    while True:
        try:
            msg, fds, flags, _ = socket.recv_fds(unix, size, 5, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            yield unix
            continue
        break
    try:
        if len(msg) != size or len(fds) != 5 or flags & socket.MSG_CTRUNC:
            raise _Malformed("not a procwire pipe hello")
        if not hmac.compare_digest(msg[_HELLO.size:], token):
            raise _Malformed("a pipe without this connection's token")
        magic, end = _HELLO.unpack(msg[:_HELLO.size])
        if magic != _MAGIC or end not in (0, 1):
            raise _Malformed("not a procwire pipe hello")
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    conn = _from_fds(end, fds)  # validates the segment; closes the descriptors if it fails
    try:
        unix.send(b"k")
    except BaseException:
        conn.close()
        raise
    return conn


# ---------------------------------------------------------------- Client

def Client(address: Any, family: str | None = None, authkey: bytes | None = None, *,
           shared_memory: bool = True, capacity: int | None = None,
           timeout: float | None = None) -> Connection | SocketConnection:
    """Connect to a :class:`Listener` (procwire's or multiprocessing's).

    Returns a shared-memory :class:`procwire.Connection` when the upgrade is
    negotiated (see the module's docs; ``capacity`` is then its ring size per
    direction), else a :class:`SocketConnection`. ``timeout`` bounds the
    connect and the handshake (``TimeoutError``). ``FileNotFoundError`` if
    nobody listens on a procwire name; ``PermissionError`` if another user does.
    """
    _check_authkey(authkey)
    kind, sockaddr = _classify(address, family)
    if kind == "procwire" and not shared_memory:
        raise ValueError("a procwire name always connects over shared memory; for a plain "
                         "socket use a path or an abstract '\\0name'")
    deadline = None if timeout is None else time.monotonic() + timeout
    sock = _socket_for(kind)
    try:
        sock.settimeout(_remaining(deadline))
        try:
            sock.connect(sockaddr)
        except (FileNotFoundError, ConnectionRefusedError):
            if kind != "procwire":
                raise
            raise FileNotFoundError(errno.ENOENT,
                                    f"no procwire Listener is named {address!r}") from None
        if kind == "procwire":
            # Abstract names have no owner: make sure that the listener is
            # ours before it gets a byte or the pipe we would unpickle from.
            uid = _peer_uid(sock)
            if uid != os.geteuid():
                raise PermissionError(
                    errno.EPERM, f"the procwire Listener named {address!r} belongs to user "
                                 f"{uid}, not to this process's user {os.geteuid()}: refused")
        server_offers = False
        if authkey is not None:
            server_offers = _client_authenticate(sock, authkey, shared_memory, deadline)
        if kind == "procwire":
            conn = _send_pipe(sock, capacity, deadline)
            sock.close()
            return conn
        if shared_memory and server_offers:
            upgraded = _accept_upgrade(sock, capacity, deadline)
            if upgraded is not None:
                sock.close()
                return upgraded
        sock.settimeout(None)
        return SocketConnection(sock.detach())
    except BaseException:
        sock.close()
        raise


def _client_authenticate(sock: socket.socket, authkey: bytes, offer: bool,
                         deadline: float | None) -> bool:
    """answer_challenge then deliver_challenge, as multiprocessing's Client runs them."""
    message = _recv_frame(sock, 256, deadline)
    if not message.startswith(_CHALLENGE):
        raise AuthenticationError(f"expected a challenge from the listener, got {message[:20]!r}")
    message = message[len(_CHALLENGE):]
    server_offers = _offers(message)
    _send_frame(sock, _digest(authkey, message), deadline)
    if _recv_frame(sock, 256, deadline) != _WELCOME:
        raise AuthenticationError("digest sent was rejected")
    challenge = _new_challenge(offer)
    _send_frame(sock, _CHALLENGE + challenge, deadline)
    response = _recv_frame(sock, 256, deadline)
    if not _verify(authkey, challenge, response):
        _send_frame(sock, _FAILURE, deadline)
        raise AuthenticationError("digest received was wrong")
    _send_frame(sock, _WELCOME, deadline)
    return server_offers


def _send_pipe(sock: socket.socket, capacity: int | None, deadline: float | None,
               token: bytes = b"") -> Connection:
    """Hand the listener one end of a new pipe over a verified Unix socket; keep the other."""
    mine, theirs = Pipe(True, capacity=capacity)
    try:
        theirs._add_handle()  # adopted by the listener's Connection
        sock.settimeout(_remaining(deadline))
        socket.send_fds(sock, [_HELLO.pack(_MAGIC, theirs._end) + token], theirs._handle_fds())
        if sock.recv(1) != b"k":
            raise ConnectionError("the procwire Listener did not accept the pipe")
    except BaseException:
        mine.close()
        raise
    finally:
        theirs.close()
    return mine


def _accept_upgrade(sock: socket.socket, capacity: int | None,
                    deadline: float | None) -> Connection | None:
    """The listener offered shared memory: try its one-off abstract socket."""
    offer = _recv_frame(sock, 256, deadline)
    match = _UPGRADE_OFFER.fullmatch(offer)
    if match is None:
        raise ConnectionError(f"malformed shared-memory offer from the listener: {offer[:40]!r}")
    name, token = match.group(1), bytes.fromhex(match.group(2).decode())
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        try:
            unix.settimeout(_remaining(deadline))
            unix.connect(b"\0" + name)
            ok = _peer_uid(unix) == os.geteuid()
        except (FileNotFoundError, ConnectionRefusedError):
            ok = False  # not this host (or network namespace)
        if not ok:
            _send_frame(sock, b"PWNO", deadline)
            return None
        _send_frame(sock, b"PWTRY", deadline)
        try:
            mine: Connection | None = _send_pipe(unix, capacity, deadline, token)
        except (OSError, ConnectionError):
            mine = None
    finally:
        unix.close()
    verdict = _recv_frame(sock, 16, deadline)
    if verdict == b"PWOK" and mine is not None:
        return mine
    if mine is not None:
        mine.close()
    return None
