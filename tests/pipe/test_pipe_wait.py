"""fileno(): select, selectors, multiprocessing.connection.wait, asyncio, Ctrl-C."""
from __future__ import annotations

import asyncio
import multiprocessing.connection
import os
import select
import signal
import socket
import threading
import time

import pytest

import procwire

pytestmark = pytest.mark.timeout(60)


def _wait_until(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.001)


def test_select_readable_only_while_a_message_waits():
    a, b = procwire.Pipe()
    with a, b:
        fd = b.fileno()
        assert fd == b.fileno()
        assert select.select([fd], [], [], 0)[0] == []
        a.send(1)
        assert select.select([fd], [], [], 5)[0] == [fd]
        a.send(2)
        assert b.recv() == 1
        assert select.select([fd], [], [], 5)[0] == [fd]  # one more waits
        assert b.recv() == 2
        assert select.select([fd], [], [], 0)[0] == []  # drained: recv would block
        a.close()
        assert select.select([fd], [], [], 5)[0] == [fd]  # EOF is readable
        with pytest.raises(EOFError):
            b.recv()


def test_mp_connection_wait_mixed_with_socket_and_os_pipe():
    a, b = procwire.Pipe()
    s1, s2 = socket.socketpair()
    r, w = os.pipe()
    try:
        objs = [b, s2, r]
        assert multiprocessing.connection.wait(objs, timeout=0) == []
        s1.send(b"x")
        assert multiprocessing.connection.wait(objs, timeout=5) == [s2]
        s2.recv(1)
        threading.Timer(0.05, a.send, args=("late",)).start()
        assert multiprocessing.connection.wait(objs, timeout=5) == [b]
        assert b.recv() == "late"
        os.write(w, b"y")
        assert multiprocessing.connection.wait(objs, timeout=5) == [r]
    finally:
        a.close()
        b.close()
        s1.close()
        s2.close()
        os.close(r)
        os.close(w)


def test_fileno_wakes_when_peer_process_dies(ctx):
    a, b = procwire.Pipe()
    p = ctx.Process(target=_hold, args=(b,))
    p.start()
    b.close()
    assert a.recv() == "holding"
    fd = a.fileno()
    assert select.select([fd], [], [], 0)[0] == []
    os.kill(p.pid, signal.SIGKILL)
    assert select.select([fd], [], [], 30)[0] == [fd]
    with pytest.raises(EOFError):
        a.recv()
    p.join(30)
    a.close()


def _hold(conn) -> None:
    conn.send("holding")
    conn.recv()


def test_asyncio_add_reader():
    a, b = procwire.Pipe()

    async def main():
        loop = asyncio.get_running_loop()
        got: list = []
        done = asyncio.Event()

        def on_readable():
            while b.poll():
                try:
                    got.append(b.recv())
                except EOFError:
                    loop.remove_reader(b.fileno())
                    done.set()
                    return

        loop.add_reader(b.fileno(), on_readable)
        for i in range(100):
            a.send(i)
            if i % 10 == 0:
                await asyncio.sleep(0)
        a.close()
        await asyncio.wait_for(done.wait(), 10)
        return got

    try:
        assert asyncio.run(main()) == list(range(100))
    finally:
        b.close()


def test_ctrl_c_interrupts_blocking_recv():
    a, b = procwire.Pipe()
    main = threading.main_thread().ident

    def interrupt():
        _wait_until(lambda: b.statistics()["receivers_waiting"] == 1)
        signal.pthread_kill(main, signal.SIGINT)

    t = threading.Thread(target=interrupt)
    t.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            b.recv()
        # The pipe still works afterwards.
        a.send("after")
        assert b.recv() == "after"
    finally:
        t.join(10)
        a.close()
        b.close()


def test_close_from_another_thread_wakes_a_blocked_recv():
    a, b = procwire.Pipe()
    errors: list = []

    def reader():
        try:
            b.recv()
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=reader)
    t.start()
    _wait_until(lambda: b.statistics()["receivers_waiting"] == 1)
    b.close()
    t.join(10)
    assert not t.is_alive()
    assert isinstance(errors[0], OSError)
    b.close()  # now that no call is in progress, this also unmaps
    a.close()


def test_two_threads_sending_streams_never_interleave():
    a, b = procwire.Pipe(capacity=8192)
    msgs = {bytes([i]) * (50_000 + i) for i in range(20)}

    def send(chunk):
        for m in chunk:
            a.send_bytes(m)

    lst = sorted(msgs)
    ts = [threading.Thread(target=send, args=(lst[i::2],)) for i in range(2)]
    for t in ts:
        t.start()
    got = {b.recv_bytes() for _ in range(len(lst))}
    for t in ts:
        t.join(10)
    assert got == msgs
    a.close()
    b.close()
