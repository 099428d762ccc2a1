"""Zero-copy Pipe messages: Connection.loan() writes in place, recv_bytes(copy=False)
reads in place.

The Queue's loans and views (tests/queue/test_queue_loans.py) over the same
code (_core/bind/lease.c), with the Pipe's own rules: a loan holds the end's
send lock (it never lands between a streamed message's pieces); a streamed
message comes back copied; the peer's death and end of file apply. Crash
semantics are the ring's: a writer killed inside a loan publishes nothing; a
reader killed holding a view frees it.
"""
from __future__ import annotations

import os
import threading

import pytest

from loanchecks import close_ends_this_threads_leases, killed_inside, loan_and_view
from procwire import MessageTooLarge, Pipe
from procwire.pipe import Loan, View

JOIN = 60
CAP = 4096


@pytest.fixture
def pipe():
    a, b = Pipe(capacity=CAP)
    yield a, b
    a.close()
    b.close()


def test_a_loan_is_written_in_place_and_received_as_bytes(pipe):
    a, b = pipe
    with a.loan(5) as buf:
        assert isinstance(buf, memoryview) and not buf.readonly and len(buf) == 5
        buf[:] = b"hello"
    assert b.recv_bytes(timeout=5) == b"hello"
    with pytest.raises(KeyError):
        with a.loan(100) as buf:
            buf[:3] = b"abc"
            raise KeyError("boom")  # discarded
    loan = a.loan(10)
    assert isinstance(loan, Loan)
    loan.buffer[:4] = b"abcd"
    loan.publish(4)
    a.send_bytes(b"after")  # the send lock was given back
    assert b.recv_bytes(timeout=5) == b"abcd"
    assert b.recv_bytes(timeout=5) == b"after"
    assert not b.poll()


def test_bad_loans(pipe):
    a, _ = pipe
    with pytest.raises(TypeError, match="nbytes must be an int"):
        a.loan(1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=">= 0"):
        a.loan(-1)
    with pytest.raises(MessageTooLarge, match="capacity=8192"):
        a.loan(CAP)  # in one piece: a loan is not streamed
    with a.loan(1):
        with pytest.raises(RuntimeError, match="open loan"):
            a.loan(1)


def test_one_way_pipes_loan_on_the_sending_end_only():
    r, w = Pipe(duplex=False)
    try:
        with pytest.raises(OSError, match="read-only"):
            r.loan(1)
        with pytest.raises(OSError, match="write-only"):
            w.recv_bytes(copy=False)
        loan_and_view(w, r.recv_bytes, b"ok")
    finally:
        r.close()
        w.close()


def test_a_loan_waits_for_room_and_times_out(pipe):
    a, b = pipe
    a.send_bytes(b"x" * 3000)
    with pytest.raises(TimeoutError, match="no room"):
        a.loan(2000, timeout=0.05)
    with pytest.raises(TimeoutError):
        a.loan(2000, block=False)
    assert b.recv_bytes(timeout=5) == b"x" * 3000
    with a.loan(2000) as buf:
        buf[:] = b"y" * 2000
    assert b.recv_bytes(timeout=5) == b"y" * 2000


def test_a_loan_wakes_a_blocked_receiver_and_keeps_streams_whole(pipe):
    a, b = pipe
    got: list[bytes] = []
    receiver = threading.Thread(target=lambda: got.append(b.recv_bytes(timeout=JOIN)))
    receiver.start()
    loan = a.loan(3)
    loan.buffer[:] = b"one"
    # Another thread's streamed message waits for the loan's send lock: its
    # pieces cannot surround the loan's record.
    big = bytes(range(256)) * 40  # 10 KiB through a 4 KiB ring: streamed
    sender = threading.Thread(target=a.send_bytes, args=(big,))
    sender.start()
    sender.join(0.2)
    assert sender.is_alive()
    loan.publish()
    receiver.join(JOIN)
    assert got == [b"one"]
    assert b.recv_bytes(timeout=JOIN) == big
    sender.join(JOIN)
    assert not sender.is_alive()


def test_a_view_reads_in_place(pipe):
    a, b = pipe
    a.send_bytes(b"abc")
    a.send_bytes(b"def")
    view = b.recv_bytes(copy=False)
    assert isinstance(view, View) and view.value.readonly
    assert bytes(view.value) == b"abc"
    assert view.value.obj is b._segment.buffer  # the ring itself
    view.release()
    view.release()  # idempotent
    with b.recv_bytes(copy=False, timeout=5) as v:
        assert bytes(v) == b"def"
        with pytest.raises(RuntimeError, match="holds a view"):
            b.recv_bytes(copy=False)
    with pytest.raises(TimeoutError):
        b.recv_bytes(copy=False, timeout=0.02)
    a.send(("pickled", 1))  # what send() sends: the pickle's bytes, in place
    with b.recv_bytes(copy=False, timeout=5) as v:
        assert b._loads(v) == ("pickled", 1)


def test_views_of_streamed_and_wrapping_messages_are_copies(pipe):
    a, b = pipe
    big = os.urandom(3 * CAP)
    a_thread = threading.Thread(target=a.send_bytes, args=(big,))
    a_thread.start()
    with b.recv_bytes(copy=False, timeout=JOIN) as v:
        assert bytes(v) == big and v.obj is not b._segment.buffer
    a_thread.join(JOIN)
    for i in range(20):  # 1000-byte messages in a 4096-byte ring: some wrap
        a.send_bytes(bytes([i]) * 1000)
        with b.recv_bytes(copy=False, timeout=5) as v:
            assert bytes(v) == bytes([i]) * 1000
    assert not b.poll()


def test_a_view_over_maxlength_is_dropped(pipe):
    a, b = pipe
    a.send_bytes(b"long message")
    a.send_bytes(b"ok")
    with pytest.raises(OSError, match="bad message length"):
        b.recv_bytes(4, copy=False)
    with b.recv_bytes(4, copy=False) as v:
        assert bytes(v) == b"ok"


def test_a_blocked_view_sees_eof_and_close(pipe):
    a, b = pipe
    errors: list[BaseException] = []

    def receive() -> None:
        try:
            b.recv_bytes(copy=False, timeout=JOIN)
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=receive)
    t.start()
    a.close()
    t.join(JOIN)
    assert len(errors) == 1 and isinstance(errors[0], EOFError)


def test_close_ends_this_threads_loans_and_views(pipe):
    a, b = pipe
    close_ends_this_threads_leases(b, a.send_bytes, b.recv_bytes)


# -- crashes -------------------------------------------------------------------------


def test_a_writer_killed_inside_a_loan_publishes_nothing(ctx, pipe):
    a, b = pipe
    a.send_bytes(b"before")
    killed_inside(ctx, "loan", a)
    a.send_bytes(b"after")  # the send lock and the ring's lock were handed over
    assert b.recv_bytes(timeout=10) == b"before"
    assert b.recv_bytes(timeout=10) == b"after"
    assert not b.poll()
    assert a.statistics()["send_owner_died"] == 1


def test_a_reader_killed_holding_a_view_frees_it(ctx, pipe):
    a, b = pipe
    a.send_bytes(b"held")
    a.send_bytes(b"next")
    killed_inside(ctx, "view", b, "recv_bytes")
    # The dead reader's message is dropped, its room freed; the rest flows.
    assert b.recv_bytes(timeout=10) == b"next"
    assert not b.poll()
    stats = b.statistics()
    assert stats["recv_owner_died"] == 1 and stats["messages_received"] == 2
    loan_and_view(a, b.recv_bytes, b"more")
