"""procwire.connection: multiprocessing.connection's API, addresses, authkey and wire format,
and the shared-memory upgrade between procwire ends of one host and user."""
from __future__ import annotations

import ctypes
import multiprocessing.connection as mpc
import os
import pickle
import threading
import time

import pytest
from connhelpers import JOIN, as_other_user, needs_root, read_line, reap

import procwire
from procwire.connection import Client, Listener, SocketConnection, wait

KEY = b"secret key"
BIG = 3 * (1 << 20) + 7  # larger than a pipe's ring: streamed


def _pair(listener: Listener, connect) -> tuple:
    """(server end, client end), the client made in a thread by connect()."""
    out: list = []

    def run() -> None:
        try:
            out.append(connect())
        except BaseException as exc:
            out.append(exc)
    t = threading.Thread(target=run)
    t.start()
    try:
        server = listener.accept(timeout=JOIN)
    finally:
        t.join(JOIN)
    assert not t.is_alive()
    if isinstance(out[0], BaseException):
        server.close()
        raise out[0]
    return server, out[0]


def _exchange(a, b) -> None:
    with a, b:
        a.send({"n": 1, "s": "你好"})
        assert b.recv() == {"n": 1, "s": "你好"}
        # A socket's buffer is smaller than BIG: send from a thread.
        t = threading.Thread(target=b.send_bytes, args=(b"x" * BIG,))
        t.start()
        assert a.recv_bytes() == b"x" * BIG
        t.join(JOIN)
        b.send(None)
        assert a.poll(JOIN) and a.recv() is None


def _addresses(tmp_path, tag: str) -> dict:
    return {"tcp": ("127.0.0.1", 0), "path": str(tmp_path / "s.sock"),
            "abstract": f"\0pw-test-{tag}-{os.getpid()}",
            "abstract-bytes": f"\0pw-test-b-{tag}-{os.getpid()}".encode(),
            "name": f"pw-test-{tag}-{os.getpid()}"}


@pytest.mark.parametrize("kind", ["tcp", "path", "abstract", "abstract-bytes", "name"])
@pytest.mark.parametrize("authkey", [None, KEY])
@pytest.mark.parametrize("sides", ["both", "listener-off", "client-off"])
def test_addresses_and_upgrade(tmp_path, kind, authkey, sides):
    address = _addresses(tmp_path, "matrix")[kind]
    l_shm, c_shm = sides != "listener-off", sides != "client-off"
    if kind == "name" and not c_shm:
        with pytest.raises(ValueError, match="always connects over shared memory"):
            Client(address, shared_memory=False)
        return
    with Listener(address, authkey=authkey, shared_memory=l_shm) as listener:
        server, client = _pair(listener, lambda: Client(
            listener.address, authkey=authkey, shared_memory=c_shm, timeout=JOIN))
        # A procwire name is always shared memory; a socket address upgrades when
        # both sides are procwire, agree, and authenticate (the negotiation rides
        # in the challenge); otherwise it stays multiprocessing's socket Connection.
        upgraded = kind == "name" or (authkey is not None and l_shm and c_shm)
        expected = procwire.Connection if upgraded else SocketConnection
        assert type(server) is expected and type(client) is expected
        _exchange(server, client)
        if kind == "path":
            assert os.path.exists(address)
    if kind == "path":
        assert not os.path.exists(address)  # removed on close, as multiprocessing does


def test_socket_connection_has_the_full_api():
    with Listener(("127.0.0.1", 0)) as listener:
        server, client = _pair(listener, lambda: Client(listener.address))
    assert isinstance(server, mpc.Connection) and isinstance(client, SocketConnection)
    with server, client:
        assert listener.last_accepted[0] == "127.0.0.1"
        assert not server.poll(0)
        client.send_bytes(b"0123456789", 2, 5)
        assert server.poll(JOIN)
        buf = bytearray(10)
        assert server.recv_bytes_into(buf, 3) == 5 and buf[3:8] == b"23456"
        client.send_bytes(b"y" * 100)
        with pytest.raises(mpc.BufferTooShort) as info:
            server.recv_bytes_into(bytearray(10))
        assert info.value.args[0] == b"y" * 100
        assert isinstance(server.fileno(), int)
        assert wait([server, client], 0) == []
        client.send(1)
        assert wait([server, client], JOIN) == [server]
        assert server.recv() == 1
        client.close()
        with pytest.raises(EOFError):
            server.recv()
    assert server.closed and client.closed
    with Listener(("127.0.0.1", 0)) as listener:
        server, client = _pair(listener, lambda: Client(listener.address))
    with server, client:
        client.send_bytes(b"z" * 300)
        with pytest.raises(OSError, match="bad message length"):
            server.recv_bytes(256)


def test_socket_connection_recv_timeout():
    with Listener(("127.0.0.1", 0)) as listener:
        server, client = _pair(listener, lambda: Client(listener.address))
    with server, client:
        for call in (server.recv, server.recv_bytes, lambda **k: server.recv_bytes_into(
                bytearray(8), **k)):
            t0 = time.monotonic()
            with pytest.raises(TimeoutError):
                call(timeout=0.2)
            assert time.monotonic() - t0 < 10
        client.send("late")
        assert server.recv(timeout=JOIN) == "late"


def _child_uses_socket_connection(conn) -> None:
    assert type(conn) is SocketConnection
    conn.send(conn.recv() * 2)
    conn.close()


def test_socket_connection_passes_to_a_child(ctx):
    with Listener(("127.0.0.1", 0)) as listener:
        server, client = _pair(listener, lambda: Client(listener.address))
    with server, client:
        p = ctx.Process(target=_child_uses_socket_connection, args=(client,))
        p.start()
        try:
            server.send(21)
            assert server.recv(timeout=JOIN) == 42
        finally:
            p.join(JOIN)
        assert p.exitcode == 0


def test_wait_mixes_shared_memory_and_socket_connections():
    a, b = procwire.Pipe()
    with Listener(("127.0.0.1", 0)) as listener:
        s, c = _pair(listener, lambda: Client(listener.address))
    with a, b, s, c:
        assert wait([a, s], 0) == []
        c.send("socket")
        b.send("pipe")
        ready = set(wait([a, s], JOIN))
        while len(ready) < 2:
            ready |= set(wait([a, s], JOIN))
        assert ready == {a, s}
        assert a.recv() == "pipe" and s.recv() == "socket"


def test_challenge_functions_work_over_a_procwire_pipe():
    a, b = procwire.Pipe()
    with a, b:
        t = threading.Thread(target=procwire.connection.answer_challenge, args=(b, KEY))
        t.start()
        procwire.connection.deliver_challenge(a, KEY)
        t.join(JOIN)
        errors: list = []
        t = threading.Thread(target=lambda: _catch(errors, procwire.connection.answer_challenge,
                                                   b, b"wrong"))
        t.start()
        with pytest.raises(procwire.AuthenticationError):
            procwire.connection.deliver_challenge(a, KEY)
        t.join(JOIN)
        assert isinstance(errors[0], procwire.AuthenticationError)


def _catch(errors: list, fn, *args, **kwargs) -> None:
    try:
        fn(*args, **kwargs)
    except BaseException as exc:
        errors.append(exc)


# ---------------------------------------------------------------- multiprocessing interop
# The peer process runs only multiprocessing's own code.

def _mp_client_echo(address, authkey, report) -> None:
    try:
        with mpc.Client(address, authkey=authkey) as conn:
            report.put(("connected", type(conn).__module__))
            while True:
                try:
                    data = conn.recv_bytes()
                except EOFError:
                    break
                conn.send_bytes(data)  # echoes pickles and raw bytes alike
    except mpc.AuthenticationError as exc:
        report.put(("auth", str(exc)))


def _mp_listener_echo(authkey, report) -> None:
    with mpc.Listener(("127.0.0.1", 0), authkey=authkey) as listener:
        report.put(("address", listener.address))
        try:
            conn = listener.accept()
        except mpc.AuthenticationError as exc:
            report.put(("auth", str(exc)))
            return
        with conn:
            report.put(("accepted", type(conn).__module__))
            while True:
                try:
                    data = conn.recv_bytes()
                except EOFError:
                    break
                conn.send_bytes(data)  # echoes pickles and raw bytes alike


def _echo_checks(conn) -> None:
    for obj in (1, "ab", b"x" * BIG, list(range(1000))):
        conn.send(obj)
        assert conn.recv() == obj
    conn.send_bytes(b"raw")
    assert conn.recv_bytes() == b"raw"


@pytest.mark.parametrize("authkey", [KEY, None])
def test_procwire_listener_serves_a_multiprocessing_client(ctx, authkey):
    report = ctx.SimpleQueue()
    with Listener(("127.0.0.1", 0), authkey=authkey) as listener:
        p = ctx.Process(target=_mp_client_echo, args=(listener.address, authkey, report))
        p.start()
        try:
            with listener.accept(timeout=JOIN) as conn:
                assert type(conn) is SocketConnection  # the peer knows nothing of shared memory
                assert report.get() == ("connected", "multiprocessing.connection")
                _echo_checks(conn)
        finally:
            p.join(JOIN)
    assert p.exitcode == 0
    report.close()


@pytest.mark.parametrize("authkey", [KEY, None])
def test_procwire_client_talks_to_a_multiprocessing_listener(ctx, authkey):
    report = ctx.SimpleQueue()
    p = ctx.Process(target=_mp_listener_echo, args=(authkey, report))
    p.start()
    try:
        tag, address = report.get()
        assert tag == "address"
        with Client(address, authkey=authkey, timeout=JOIN) as conn:
            assert type(conn) is SocketConnection
            assert report.get() == ("accepted", "multiprocessing.connection")
            _echo_checks(conn)
    finally:
        p.join(JOIN)
    assert p.exitcode == 0
    report.close()


def test_wrong_authkey_either_way(ctx):
    # procwire's Client, multiprocessing's Listener.
    report = ctx.SimpleQueue()
    p = ctx.Process(target=_mp_listener_echo, args=(KEY, report))
    p.start()
    try:
        _tag, address = report.get()
        with pytest.raises(procwire.AuthenticationError):
            Client(address, authkey=b"not the key", timeout=JOIN)
        assert report.get()[0] == "auth"
    finally:
        p.join(JOIN)
    assert p.exitcode == 0
    # multiprocessing's Client, procwire's Listener.
    with Listener(("127.0.0.1", 0), authkey=KEY) as listener:
        p = ctx.Process(target=_mp_client_echo, args=(listener.address, b"not the key", report))
        p.start()
        try:
            with pytest.raises(procwire.AuthenticationError):
                listener.accept(timeout=JOIN)
            assert report.get()[0] == "auth"
        finally:
            p.join(JOIN)
    assert p.exitcode == 0
    # Both procwire.
    with Listener(("127.0.0.1", 0), authkey=KEY) as listener:
        errors: list = []
        t = threading.Thread(target=lambda: _catch(errors, Client, listener.address,
                                                   authkey=b"bad", timeout=JOIN))
        t.start()
        with pytest.raises(procwire.AuthenticationError):
            listener.accept(timeout=JOIN)
        t.join(JOIN)
        assert isinstance(errors[0], procwire.AuthenticationError)
    report.close()


# ---------------------------------------------------------------- the upgrade across processes

def _procwire_client_echo(address, authkey) -> None:
    with Client(address, authkey=authkey, timeout=JOIN) as conn:
        conn.send(type(conn).__name__)
        while True:
            try:
                data = conn.recv_bytes()
            except EOFError:
                break
            conn.send_bytes(data)


@pytest.mark.parametrize("kind", ["tcp", "path"])
def test_same_host_same_user_upgrades_across_processes(ctx, tmp_path, kind):
    address = _addresses(tmp_path, "proc")[kind]
    with Listener(address, authkey=KEY) as listener:
        p = ctx.Process(target=_procwire_client_echo, args=(listener.address, KEY))
        p.start()
        try:
            with listener.accept(timeout=JOIN) as conn:
                assert type(conn) is procwire.Connection
                assert conn.recv(timeout=JOIN) == "Connection"
                _echo_checks(conn)
        finally:
            p.join(JOIN)
    assert p.exitcode == 0


def test_upgrade_adopts_only_the_pipe_that_carries_the_token():
    """The one-off socket's name is public (/proc/net/unix); its token is not.

    An intruder that reaches the name first with a pipe but without the token
    is refused, and both sides agree to stay on the socket.
    """
    import socket
    import struct

    from procwire import connection as pc
    with Listener(("127.0.0.1", 0), authkey=KEY) as listener:
        result: list = []
        t = threading.Thread(target=lambda: result.append(listener.accept(timeout=JOIN)))
        t.start()
        with socket.create_connection(listener.address, timeout=JOIN) as sock:
            deadline = time.monotonic() + JOIN
            assert pc._client_authenticate(sock, KEY, True, deadline)  # the listener offered
            offer = pc._recv_frame(sock, 256, deadline)
            name = pc._UPGRADE_OFFER.fullmatch(offer).group(1)
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as intruder:
                intruder.connect(b"\0" + name)
                mine, theirs = procwire.Pipe()
                with mine, theirs:
                    theirs._add_handle()
                    socket.send_fds(intruder, [struct.pack("<8sI", b"PWPIPE01", theirs._end)
                                               + b"\0" * 16], theirs._handle_fds())
                    pc._send_frame(sock, b"PWTRY", deadline)
                    assert pc._recv_frame(sock, 16, deadline) == b"PWNO"
            t.join(JOIN)
            with result[0] as server:
                assert type(server) is SocketConnection
                pc._send_frame(sock, pickle.dumps("still the socket"), deadline)
                assert server.recv() == "still the socket"


@needs_root
def test_another_user_on_the_same_host_stays_a_socket():
    with Listener(("127.0.0.1", 0), authkey=KEY) as listener:
        address = listener.address

        def other(report: int) -> None:
            with Client(address, authkey=KEY, timeout=JOIN) as conn:
                os.write(report, type(conn).__name__.encode() + b"\n")
                conn.send(conn.recv())

        pid, report = as_other_user(other)
        try:
            with listener.accept(timeout=JOIN) as conn:
                assert type(conn) is SocketConnection
                conn.send("hello")
                assert conn.recv() == "hello"
            assert read_line(report) == b"SocketConnection"
        finally:
            os.close(report)
            assert reap(pid) == 0


CLONE_NEWNET = 0x40000000


@needs_root
def test_another_network_namespace_stays_a_socket(tmp_path):
    """Another host, as far as sockets go: the abstract upgrade name is out of reach."""
    path = str(tmp_path / "ns.sock")
    with Listener(path, authkey=KEY) as listener:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover (child)
            code = 1
            try:
                os.close(r)
                if ctypes.CDLL(None, use_errno=True).unshare(CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNET)")
                with Client(path, authkey=KEY, timeout=JOIN) as conn:
                    os.write(w, type(conn).__name__.encode() + b"\n")
                    conn.send(conn.recv())
                code = 0
            finally:
                os._exit(code)
        os.close(w)
        try:
            with listener.accept(timeout=JOIN) as conn:
                assert type(conn) is SocketConnection
                conn.send(b"x" * 100_000)
                assert conn.recv() == b"x" * 100_000
            assert read_line(r) == b"SocketConnection"
        finally:
            os.close(r)
            assert reap(pid) == 0


# ---------------------------------------------------------------- construction and errors

def test_listener_without_address_and_names():
    with Listener() as listener:  # an arbitrary Unix socket file, as multiprocessing
        path = listener.address
        assert isinstance(path, str) and os.path.exists(path)
    assert not os.path.exists(path)
    with Listener(family="AF_INET") as listener:
        host, port = listener.address
        assert host == "127.0.0.1" and port > 0
    assert procwire.pipe.Listener is Listener and procwire.Client is Client
    assert procwire.connection.Connection is procwire.Connection


def test_ipv6():
    import socket
    if not socket.has_ipv6:
        pytest.skip("no IPv6 in this kernel")
    try:
        listener = Listener(("::1", 0), authkey=KEY)
    except OSError as exc:  # no ::1 configured (some containers)
        pytest.skip(f"no IPv6 loopback: {exc}")
    with listener:
        assert len(listener.address) == 4
        server, client = _pair(listener, lambda: Client(listener.address, authkey=KEY,
                                                        timeout=JOIN))
        assert type(server) is procwire.Connection
        _exchange(server, client)


def test_bad_arguments_are_explained():
    with pytest.raises(ValueError, match="family"):
        Listener(("127.0.0.1", 0), family="AF_UNIX")
    with pytest.raises(ValueError, match="family"):
        Client("/tmp/x", family="AF_INET")
    with pytest.raises(ValueError, match="family must be one of"):
        Listener(family="AF_PIPE")
    with pytest.raises(TypeError, match="authkey"):
        Listener(("127.0.0.1", 0), authkey="text")
    with pytest.raises(TypeError, match="authkey"):
        Client(("127.0.0.1", 1), authkey="text")
    with pytest.raises(ValueError, match=r"path must contain '/'"):
        Listener("a name with spaces")
    with pytest.raises(TypeError, match="unrecognized"):
        Client(42)
    with pytest.raises(FileNotFoundError):
        Client(f"nobody-{os.getpid()}")
    listener = Listener(("127.0.0.1", 0))
    listener.close()
    listener.close()
    with pytest.raises(OSError, match="closed"):
        listener.accept()


def test_silent_and_slow_tcp_peers_do_not_hold_up_others():
    """Handshakes run side by side: peers stuck mid-challenge wait, others get through."""
    import socket
    with Listener(("127.0.0.1", 0), authkey=KEY) as listener:
        silent = [socket.create_connection(listener.address, timeout=JOIN) for _ in range(3)]
        # One that reads the challenge and then stalls before answering.
        slow = socket.create_connection(listener.address, timeout=JOIN)
        try:
            t0 = time.monotonic()
            for client_lib in (mpc, procwire.connection):
                server, client = _pair(listener, lambda lib=client_lib: lib.Client(
                    listener.address, authkey=KEY))
                with server, client:
                    client.send_bytes(b"through")
                    assert server.recv_bytes() == b"through"
            assert time.monotonic() - t0 < 20  # HANDSHAKE_TIMEOUT is 60 s: far from it
            slow.settimeout(JOIN)
            assert slow.recv(4)  # the challenge's frame header: it was sent, not blocked on
        finally:
            for s in (*silent, slow):
                s.close()


def test_two_threads_accepting_share_the_listener():
    with Listener(("127.0.0.1", 0), authkey=KEY) as listener:
        got: list = []
        threads = [threading.Thread(target=lambda: got.append(listener.accept(timeout=JOIN)))
                   for _ in range(2)]
        for t in threads:
            t.start()
        clients = [Client(listener.address, authkey=KEY, timeout=JOIN) for _ in range(2)]
        for t in threads:
            t.join(JOIN)
        assert len(got) == 2
        for i, c in enumerate(clients):
            c.send(i)
        assert sorted(s.recv(timeout=JOIN) for s in got) == [0, 1]
        for conn in (*got, *clients):
            conn.close()


def test_accept_times_out():
    with Listener(("127.0.0.1", 0), authkey=KEY) as listener:
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            listener.accept(timeout=0.3)
        assert time.monotonic() - t0 < 10


def test_accept_with_zero_timeout_takes_a_waiting_client():
    import socket
    with Listener(("127.0.0.1", 0)) as listener:
        with pytest.raises(TimeoutError):
            listener.accept(timeout=0)
        with socket.create_connection(listener.address, timeout=JOIN):
            deadline = time.monotonic() + JOIN
            while True:  # the kernel completes the connection on its own: poll for it
                try:
                    conn = listener.accept(timeout=0)
                    break
                except TimeoutError:
                    assert time.monotonic() < deadline
            conn.close()


def test_client_times_out_on_a_listener_that_never_answers():
    with Listener(("127.0.0.1", 0), authkey=KEY) as listener, pytest.raises(TimeoutError):
        Client(listener.address, authkey=KEY, timeout=0.5)  # nobody runs accept()


_INTERRUPTIBLE = """
import sys
from procwire.connection import Client, Listener
listener = Listener(("127.0.0.1", 0), authkey=b"k")
if sys.argv[1] == "accept":
    print("ready", flush=True)
    listener.accept()
else:  # a client whose listener never runs accept(): stuck in the handshake
    print("ready", flush=True)
    Client(listener.address, authkey=b"k")
"""


@pytest.mark.parametrize("where", ["accept", "client"])
def test_ctrl_c_interrupts_a_blocked_call(where):
    import signal
    import subprocess
    import sys
    proc = subprocess.Popen([sys.executable, "-c", _INTERRUPTIBLE, where],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=JOIN)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode != 0 and "KeyboardInterrupt" in err, err[-2000:]
