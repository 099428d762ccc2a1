"""Issue 9, defects 11 and 12: Listener/Client by name against other users and bad peers.

A real second user: the test runs as root and forks children that drop to
uid/gid 65534 (nobody) before they touch the socket.
"""
from __future__ import annotations

import os
import socket
import struct
import threading
import time

import pytest
from connhelpers import JOIN, as_other_user, needs_root, read_line, reap

import procwire

PREFIX = "\0procwire.pipe."


class _Evil:
    """What an impostor sends: unpickling it runs os.mkdir(path) in the receiver."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (self.path,))


# ---------------------------------------------------------------- defect 11

@needs_root
def test_client_refuses_a_listener_of_another_user(tmp_path):
    name = f"test-impostor-{os.getpid()}"
    marker = str(tmp_path / "pwned")

    def impostor(report: int) -> None:
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        srv.bind(PREFIX + name)  # abstract names have no owner: first come, first served
        srv.listen(1)
        os.write(report, b"listening\n")
        srv.settimeout(JOIN)
        conn, _ = srv.accept()
        conn.settimeout(JOIN)
        msg, fds, _flags, _addr = socket.recv_fds(conn, 64, 8)
        os.write(report, f"{len(msg)} {len(fds)}\n".encode())
        if len(fds) == 5:  # the old Client handed its pipe over: abuse it
            _magic, end = struct.unpack("<8sI", msg[:12])
            stolen = procwire.pipe._from_fds(end, fds)
            conn.send(b"k")
            stolen.send(_Evil(marker))
            conn.recv(1)  # until the client is done

    pid, report = as_other_user(impostor)
    try:
        assert read_line(report) == b"listening"
        conn = None
        try:
            conn = procwire.Client(name, timeout=JOIN)
        except PermissionError as exc:
            assert "belongs to user 65534" in str(exc)
        if conn is not None:
            try:
                conn.recv(timeout=5)  # the old client unpickles the impostor's object here
            finally:
                conn.close()
        assert conn is None, "Client accepted another user's listener"
        assert read_line(report) == b"0 0", "the client sent something to the impostor"
        assert not os.path.exists(marker)
    finally:
        os.close(report)
        assert reap(pid) == 0


# ---------------------------------------------------------------- defect 12

def _client_in_thread(name: str, out: list) -> threading.Thread:
    def run() -> None:
        try:
            out.append(procwire.Client(name, timeout=JOIN))
        except BaseException as exc:  # reported by the test
            out.append(exc)
    t = threading.Thread(target=run)
    t.start()
    return t


def _check_pair(server, out: list, thread: threading.Thread) -> None:
    thread.join(JOIN)
    assert not thread.is_alive()
    client = out[0]
    assert not isinstance(client, BaseException), client
    with client, server:
        client.send("ping")
        assert server.recv(timeout=JOIN) == "ping"
        server.send("pong")
        assert client.recv(timeout=JOIN) == "pong"


@needs_root
def test_silent_peers_do_not_delay_a_client():
    name = f"test-stall-{os.getpid()}"
    with procwire.Listener(name) as listener:
        def silent(report: int) -> None:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(PREFIX + name)
            os.write(report, b"connected\n")
            s.recv(1)  # silent until the listener closes us or the test ends
        pid, report = as_other_user(silent)
        same_uid_silent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            assert read_line(report) == b"connected"
            same_uid_silent.connect(PREFIX + name)
            out: list = []
            t0 = time.monotonic()
            thread = _client_in_thread(name, out)
            server = listener.accept(timeout=JOIN)
            elapsed = time.monotonic() - t0
            _check_pair(server, out, thread)
            # The old accept() read each silent peer for 30 s (its timeout) first.
            assert elapsed < 20, f"accept() took {elapsed:.1f} s behind silent peers"
            # The other user's peer was closed without a read: it sees EOF.
            assert reap(pid) == 0
        finally:
            same_uid_silent.close()
            os.close(report)


def test_accept_timeout_is_honoured_with_a_silent_peer_pending():
    name = f"test-stall-timeout-{os.getpid()}"
    with procwire.Listener(name) as listener, \
            socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as silent:
        silent.connect(PREFIX + name)
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            listener.accept(timeout=0.5)
        assert time.monotonic() - t0 < 10
        # The silent peer is still pending; a real client still gets through.
        out: list = []
        thread = _client_in_thread(name, out)
        _check_pair(listener.accept(timeout=JOIN), out, thread)


def test_malformed_same_user_hello_is_skipped():
    name = f"test-malformed-{os.getpid()}"
    with procwire.Listener(name) as listener:
        bad = []
        # A hello with procwire's magic but descriptors that are no pipe.
        s1 = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s1.connect(PREFIX + name)
        nulls = [os.open(os.devnull, os.O_RDWR) for _ in range(5)]
        socket.send_fds(s1, [struct.pack("<8sI", b"PWPIPE01", 0)], nulls)
        for fd in nulls:
            os.close(fd)
        bad.append(s1)
        # Garbage without descriptors, and a peer that hangs up at once.
        s2 = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s2.connect(PREFIX + name)
        s2.sendall(b"\xff" * 12)
        bad.append(s2)
        s3 = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s3.connect(PREFIX + name)
        s3.close()
        try:
            out: list = []
            thread = _client_in_thread(name, out)
            server = listener.accept(timeout=JOIN)
            _check_pair(server, out, thread)
            # The malformed peers were dropped: they see EOF.
            for s in bad:
                s.settimeout(JOIN)
                assert s.recv(1) == b""
        finally:
            for s in bad:
                s.close()


@needs_root
def test_listener_ignores_a_pipe_from_another_user():
    """Another user's well-formed hello is never adopted (nor read)."""
    name = f"test-foreign-pipe-{os.getpid()}"
    with procwire.Listener(name) as listener:
        def foreign(report: int) -> None:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(PREFIX + name)
            _mine, theirs = procwire.Pipe()
            theirs._add_handle()
            socket.send_fds(s, [struct.pack("<8sI", b"PWPIPE01", theirs._end)],
                            theirs._handle_fds())
            os.write(report, b"sent\n")
            s.settimeout(JOIN)
            try:
                answer = s.recv(1) or b"EOF"
            except ConnectionResetError:  # closed with our hello unread
                answer = b"EOF"
            os.write(report, answer + b"\n")
        pid, report = as_other_user(foreign)
        try:
            assert read_line(report) == b"sent"
            out: list = []
            thread = _client_in_thread(name, out)
            _check_pair(listener.accept(timeout=JOIN), out, thread)
            assert read_line(report) == b"EOF"
            assert reap(pid) == 0
        finally:
            os.close(report)
