"""Defect 5: a receive that times out (or is interrupted) in the middle of a
streamed message must leave the pipe as if it had not been called.

The sender is stopped with SIGSTOP once it has begun a message many times the
ring's size, so the receiver is certain to time out half-way; after SIGCONT
the next receive must return the whole message, then the one after it.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import random
import signal
import time

import pytest

import procwire

pytestmark = pytest.mark.timeout(120)

CAPACITY = 64 * 1024            # pieces of 16 KiB
SIZE = 4 * 1024 * 1024 + 123    # 250+ pieces: the sender stalls mid-stream
JOIN = 30


def _sender(conn, payload: bytes, pickled: bool) -> None:
    conn.send_bytes(b"ready")
    if pickled:
        conn.send(("big", payload))
    else:
        conn.send_bytes(payload)
    conn.send_bytes(b"after")
    conn.recv_bytes()  # wait for the parent's word before closing


def _wait_until(predicate, what: str, limit: float = 30.0) -> None:
    deadline = time.monotonic() + limit
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.001)


def _stopped(pid: int) -> bool:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] in ("T", "t")


def _start_stalled_sender(ctx, pickled: bool):
    payload = random.Random(5).randbytes(SIZE)
    mine, theirs = procwire.Pipe(capacity=CAPACITY)
    p = ctx.Process(target=_sender, args=(theirs, payload, pickled))
    p.start()
    theirs.close()
    assert mine.recv_bytes(timeout=JOIN) == b"ready"
    # The first piece is in the ring and the ring is full: the sender is
    # inside the streamed send, blocked for room.
    _wait_until(lambda: mine.statistics()["messages_waiting"] >= 2, "the ring to fill")
    os.kill(p.pid, signal.SIGSTOP)
    _wait_until(lambda: _stopped(p.pid), "the sender to stop")
    return mine, p, payload


def _finish(mine, p) -> None:
    mine.send_bytes(b"bye")
    p.join(JOIN)
    assert p.exitcode == 0
    p.close()  # its sentinel, even if a traceback keeps `p` alive
    mine.close()


@pytest.mark.parametrize("call", ["recv", "recv_bytes", "recv_bytes_into", "into_too_small"])
def test_timeout_mid_stream_keeps_the_message(call):
    ctx = mp.get_context("fork")
    mine, p, payload = _start_stalled_sender(ctx, pickled=(call == "recv"))
    try:
        buf = bytearray(SIZE + 10 if call != "into_too_small" else 1000)

        def receive(timeout):
            if call == "recv":
                return mine.recv(timeout=timeout)
            if call == "recv_bytes":
                return mine.recv_bytes(timeout=timeout)
            return mine.recv_bytes_into(buf, 3 if call == "recv_bytes_into" else 0,
                                        timeout=timeout)

        received_before = mine.statistics()["bytes_received"]
        with pytest.raises(TimeoutError):
            receive(0.5)
        # It really was half-way: pieces were taken, the rest is not sent.
        assert mine.statistics()["bytes_received"] > received_before
        with pytest.raises(TimeoutError):
            receive(0.2)  # still stalled: a second timeout loses nothing either
        assert mine.poll(0), "poll() must still see the interrupted message"
        os.kill(p.pid, signal.SIGCONT)
        if call == "into_too_small":
            with pytest.raises(mp.BufferTooShort) as info:
                receive(JOIN)
            assert info.value.args[0] == payload
        else:
            got = receive(JOIN)
            if call == "recv":
                assert got == ("big", payload)
            elif call == "recv_bytes":
                assert got == payload
            else:
                assert got == SIZE and bytes(buf[3:3 + SIZE]) == payload
        assert mine.recv_bytes(timeout=JOIN) == b"after"
        assert mine.statistics()["partial_dropped"] == 0
    finally:
        os.kill(p.pid, signal.SIGCONT)
    _finish(mine, p)


def test_timeout_mid_stream_under_every_start_method(ctx):
    mine, p, payload = _start_stalled_sender(ctx, pickled=False)
    try:
        with pytest.raises(TimeoutError):
            mine.recv_bytes(timeout=0.3)
    finally:
        os.kill(p.pid, signal.SIGCONT)
    assert mine.recv_bytes(timeout=JOIN) == payload
    assert mine.recv_bytes(timeout=JOIN) == b"after"
    _finish(mine, p)


def test_interrupt_mid_stream_keeps_the_message():
    """A signal handler's exception (Ctrl-C) mid-stream loses nothing."""
    ctx = mp.get_context("fork")
    mine, p, payload = _start_stalled_sender(ctx, pickled=False)

    class Interrupted(Exception):
        pass

    def handler(signum, frame):
        raise Interrupted

    old = signal.signal(signal.SIGALRM, handler)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.5)
        with pytest.raises(Interrupted):
            mine.recv_bytes(timeout=JOIN)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        os.kill(p.pid, signal.SIGCONT)
    assert mine.recv_bytes(timeout=JOIN) == payload
    assert mine.recv_bytes(timeout=JOIN) == b"after"
    _finish(mine, p)


def test_maxlength_applies_to_a_resumed_message():
    ctx = mp.get_context("fork")
    mine, p, _payload = _start_stalled_sender(ctx, pickled=False)
    try:
        with pytest.raises(TimeoutError):
            mine.recv_bytes(timeout=0.3)
    finally:
        os.kill(p.pid, signal.SIGCONT)
    with pytest.raises(OSError, match="bad message length"):
        mine.recv_bytes(1000, timeout=JOIN)
    # The refused message's remaining pieces are skipped, nothing else.
    assert mine.recv_bytes(timeout=JOIN) == b"after"
    _finish(mine, p)
