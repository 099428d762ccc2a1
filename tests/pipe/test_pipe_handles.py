"""Passing file descriptors over a procwire Pipe.

``multiprocessing.reduction.send_handle(conn, fd, pid)`` / ``recv_handle(conn)``
work with procwire Connections (the conformance tests test_fd_transfer and
test_large_fd_transfer of CPython's _test_multiprocessing, with procwire.Pipe),
and so do the Connection's own ``send_handle``/``recv_handle``.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import resource
import socket
import tempfile
import time
from multiprocessing import reduction
from multiprocessing.connection import wait

import pytest

import procwire

pytestmark = pytest.mark.timeout(120)

JOIN = 30


def _is_fd_assigned(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def _writefd(conn, data: bytes, create_dummy_fds: bool = False) -> None:
    # CPython's _TestConnection._writefd, verbatim in substance.
    if create_dummy_fds:
        for i in range(256):
            if not _is_fd_assigned(i):
                os.dup2(conn.fileno(), i)
    fd = reduction.recv_handle(conn)
    os.write(fd, data)
    os.close(fd)


def test_fd_transfer(ctx, tmp_path):
    conn, child_conn = procwire.Pipe(duplex=True)
    p = ctx.Process(target=_writefd, args=(child_conn, b"foo"), daemon=True)
    p.start()
    path = tmp_path / "out"
    with open(path, "wb") as f:
        reduction.send_handle(conn, f.fileno(), p.pid)
    p.join(JOIN)
    assert p.exitcode == 0
    assert path.read_bytes() == b"foo"
    conn.close()
    child_conn.close()


def test_large_fd_transfer(ctx, tmp_path):
    # With fd > 256 (CPython issue #11657).
    maxfd = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    assert maxfd > 300, "needs more than 300 descriptors"
    conn, child_conn = procwire.Pipe(duplex=True)
    p = ctx.Process(target=_writefd, args=(child_conn, b"bar", True), daemon=True)
    p.start()
    path = tmp_path / "out"
    with open(path, "wb") as f:
        for newfd in range(256, maxfd):
            if not _is_fd_assigned(newfd):
                break
        os.dup2(f.fileno(), newfd)
        try:
            reduction.send_handle(conn, newfd, p.pid)
        finally:
            os.close(newfd)
    p.join(JOIN)
    assert p.exitcode == 0
    assert path.read_bytes() == b"bar"
    conn.close()
    child_conn.close()


def _serve_sockets(conn, count: int) -> None:
    """A pre-fork worker: receive listening-socket-like fds, answer on each."""
    for _ in range(count):
        fd = conn.recv_handle(timeout=JOIN)
        with socket.socket(fileno=fd) as s:
            s.sendall(b"served by %d" % os.getpid())
    conn.send("done")


def test_handing_sockets_to_a_worker(ctx):
    a, b = procwire.Pipe()
    p = ctx.Process(target=_serve_sockets, args=(b, 20))
    p.start()
    b.close()
    ours = []
    for _ in range(20):
        mine, theirs = socket.socketpair()
        a.send_handle(theirs.fileno())
        theirs.close()  # the worker holds its own descriptor now
        ours.append(mine)
    for s in ours:
        s.settimeout(JOIN)
        assert s.recv(100) == b"served by %d" % p.pid
        s.close()
    assert a.recv(timeout=JOIN) == "done"
    p.join(JOIN)
    assert p.exitcode == 0
    a.close()


def test_handles_and_messages_travel_independently():
    a, b = procwire.Pipe()
    r, w = os.pipe()
    a.send("before")
    a.send_handle(w)
    a.send("after")
    # fileno() readiness is about messages only, so wait() and poll() agree.
    assert wait([b], 5) == [b]
    got = b.recv_handle(timeout=5)
    assert got not in (r, w)
    os.write(got, b"z")
    assert os.read(r, 1) == b"z"
    assert b.recv() == "before" and b.recv() == "after"
    assert not b.poll(0)
    assert wait([b], 0) == []
    for fd in (r, w, got):
        os.close(fd)
    a.close()
    b.close()


def test_received_descriptors_are_close_on_exec():
    a, b = procwire.Pipe()
    r, w = os.pipe()
    a.send_handle(r)
    got = b.recv_handle(timeout=5)
    assert not os.get_inheritable(got)
    for fd in (r, w, got):
        os.close(fd)
    a.close()
    b.close()


def test_recv_handle_times_out_and_sees_eof():
    a, b = procwire.Pipe()
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        b.recv_handle(timeout=0.2)
    assert time.monotonic() - start >= 0.2
    r, w = os.pipe()
    a.send_handle(r)
    a.close()
    got = b.recv_handle(timeout=5)  # what was sent before the close still arrives
    with pytest.raises(EOFError):
        b.recv_handle(timeout=5)
    with pytest.raises(BrokenPipeError):
        b.send_handle(w)
    for fd in (r, w, got):
        os.close(fd)
    b.close()


def test_send_handle_errors_are_precise():
    a, b = procwire.Pipe(duplex=False)
    with pytest.raises(OSError, match="read-only"):
        a.send_handle(0)
    with pytest.raises(OSError, match="write-only"):
        b.recv_handle(timeout=0)
    with pytest.raises(TypeError, match="file descriptor"):
        b.send_handle("0")
    with pytest.raises(OSError):
        b.send_handle(10 ** 6)  # not an open descriptor: EBADF from the kernel
    a.close()
    b.close()
    with pytest.raises(OSError, match="closed"):
        b.send_handle(0)


def test_reduction_still_serves_other_connections(tmp_path):
    """The hook hands only procwire Connections to procwire."""
    a, b = mp.Pipe()
    with tempfile.TemporaryFile() as f:
        reduction.send_handle(a, f.fileno(), os.getpid())
        fd = reduction.recv_handle(b)
        assert os.path.sameopenfile(fd, f.fileno())
        os.close(fd)
    a.close()
    b.close()


def test_pipe_end_of_life_with_handles_in_flight():
    """Descriptors queued for an end that never takes them do not keep it alive."""
    a, b = procwire.Pipe()
    r, w = os.pipe()
    for _ in range(10):
        a.send_handle(r)
    b.close()
    with pytest.raises(BrokenPipeError):
        a.send("x")
    for fd in (r, w):
        os.close(fd)
    a.close()
