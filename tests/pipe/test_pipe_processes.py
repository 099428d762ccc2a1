"""Pipes between processes: every start method, end of life, unrelated processes by name."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap

import pytest

import procwire

pytestmark = pytest.mark.timeout(120)

JOIN = 30


def _echo(conn) -> None:
    """Echo every message back (as bytes) until EOF."""
    while True:
        try:
            data = conn.recv_bytes()
        except EOFError:
            return
        conn.send_bytes(data)


def _send_then(conn, how: str) -> None:
    conn.send(("ready", os.getpid()))
    if how == "close":
        conn.close()
        signal.pause() if False else conn.poll(None)  # parent's EOF ends this wait
    elif how == "exit":
        return
    elif how == "block":
        conn.recv()  # blocks until the parent kills us


def _receive_all(conn, seed: int, count: int) -> None:
    rng, base = _stream(seed)
    for i in range(count):
        size, off = _message(rng, i)
        data = conn.recv_bytes()
        if data != base[off:off + size]:
            conn.send(("mismatch", i, size, len(data)))
            return
    conn.send(("ok", count))


def _stream(seed: int):
    rng = random.Random(seed)
    base = random.Random(seed + 1).randbytes(8 << 20)
    return rng, base


def _message(rng: random.Random, i: int) -> tuple[int, int]:
    r = rng.random()
    if r < 0.01:
        size = rng.randrange(1 << 20, 6 << 20)  # several MiB: streamed
    elif r < 0.05:
        size = rng.randrange(4096, 1 << 20)
    else:
        size = rng.randrange(0, 4096)
    return size, rng.randrange(0, (8 << 20) - size + 1)


def test_round_trip_under_every_start_method(ctx):
    a, b = procwire.Pipe()
    p = ctx.Process(target=_echo, args=(b,))
    p.start()
    b.close()
    for msg in (b"", b"x", b"y" * 100_000, b"z" * 3_000_000):
        a.send_bytes(msg)
        assert a.recv_bytes() == msg
    a.close()  # the child sees EOF (under fork it holds a copy of `a`: see _echo_fork)
    p.join(JOIN if ctx.get_start_method() != "fork" else 0.5)
    if p.is_alive():  # fork: the child inherited `a`, so `a` is not closed everywhere
        p.kill()
        p.join(JOIN)
    assert p.exitcode is not None


def test_child_sees_eof_when_parent_closes_every_copy(ctx):
    a, b = procwire.Pipe()
    p = ctx.Process(target=_child_closes_inherited_then_echoes, args=(a, b))
    p.start()
    a.close()
    b.send_bytes(b"ping")
    assert b.recv_bytes() == b"ping"
    b.close()
    p.join(JOIN)
    assert p.exitcode == 0


def _child_closes_inherited_then_echoes(a, b) -> None:
    b.close()
    _echo(a)


def test_ten_thousand_random_messages_keep_boundaries(ctx):
    seed = random.randrange(1 << 30)
    print(f"seed={seed}")
    count = 10_000
    r, w = procwire.Pipe()
    p = ctx.Process(target=_receive_all, args=(w, seed, count))
    p.start()
    w.close()
    rng, base = _stream(seed)
    for i in range(count):
        size, off = _message(rng, i)
        r.send_bytes(base, off, size)
    assert r.recv() == ("ok", count), f"seed={seed}"
    r.close()
    p.join(JOIN)
    assert p.exitcode == 0


@pytest.mark.parametrize("how", ["close", "exit", "kill"])
def test_eof_and_broken_pipe_when_peer_goes(ctx, how):
    a, b = procwire.Pipe()
    p = ctx.Process(target=_send_then, args=(b, "block" if how == "kill" else how))
    p.start()
    b.close()
    assert a.recv()[0] == "ready"
    if how == "kill":
        os.kill(p.pid, signal.SIGKILL)
    elif how == "close":
        pass  # the child closed its end after sending
    # A blocked recv wakes with EOFError: never hangs.
    with pytest.raises(EOFError):
        a.recv(timeout=JOIN)
    if how == "close":
        a.close()  # lets the child's poll(None) return
        p.join(JOIN)
    else:
        p.join(JOIN)
        with pytest.raises(BrokenPipeError):
            a.send("anyone?")
        a.close()
    assert p.exitcode is not None


def test_sigkill_while_parent_is_blocked_in_send(ctx):
    a, b = procwire.Pipe(capacity=4096)
    p = ctx.Process(target=_send_then, args=(b, "block"))
    p.start()
    b.close()
    assert a.recv()[0] == "ready"
    import threading
    t = threading.Thread(target=lambda: (a.poll(None), None))
    os.kill(p.pid, signal.SIGKILL)
    with pytest.raises(BrokenPipeError):
        for _ in range(100):  # fills the 4 KiB ring, then blocks until the death is seen
            a.send_bytes(b"x" * 1000)
    p.join(JOIN)
    a.close()
    del t


def _client_script(name: str) -> str:
    return textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {os.path.join(os.path.dirname(procwire.__file__), '..')!r})
        import procwire
        conn = procwire.Client({name!r})
        while True:
            try:
                obj = conn.recv()
            except EOFError:
                break
            conn.send(obj * 2)
        conn.close()
    """)


def test_unrelated_process_by_name():
    name = f"test-pipe-{os.getpid()}"
    with procwire.Listener(name) as listener:
        with pytest.raises(FileExistsError):
            procwire.Listener(name)
        proc = subprocess.Popen([sys.executable, "-c", _client_script(name)])
        try:
            conn = listener.accept(timeout=JOIN)
            with conn:
                conn.send(21)
                assert conn.recv() == 42
                conn.send("ab")
                assert conn.recv() == "abab"
        finally:
            assert proc.wait(JOIN) == 0


def test_client_without_listener():
    with pytest.raises(FileNotFoundError, match="no procwire Listener"):
        procwire.Client(f"nobody-{os.getpid()}")
    with pytest.raises(ValueError):
        procwire.Client("bad name")  # a string with "/" is a socket path, as in multiprocessing


def test_unrelated_process_killed_gives_eof():
    name = f"test-pipe-kill-{os.getpid()}"
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {os.path.join(os.path.dirname(procwire.__file__), '..')!r})
        import procwire
        conn = procwire.Client({name!r})
        conn.send("hello")
        conn.recv()
    """)
    with procwire.Listener(name) as listener:
        proc = subprocess.Popen([sys.executable, "-c", script])
        try:
            with listener.accept(timeout=JOIN) as conn:
                assert conn.recv() == "hello"
                proc.kill()
                with pytest.raises(EOFError):
                    conn.recv(timeout=JOIN)
        finally:
            proc.wait(JOIN)
