"""Zero-copy messages: Queue.loan() writes in place, get(copy=False) reads in place.

Crash semantics are the ring's: a writer killed inside a loan publishes
nothing; a reader killed holding a view frees it (the message it held is
dropped, as a reader killed inside get() loses at most the message it was
taking) and the queue stays usable for everyone else.
"""
from __future__ import annotations

import queue
import threading

import pytest

from loanchecks import close_ends_this_threads_leases, killed_inside, loan_and_view
from procwire import MessageTooLarge, Queue
from procwire.queue import Loan, View

JOIN = 60


@pytest.fixture
def q():
    q = Queue()
    yield q
    q.close()


def test_a_loan_is_written_in_place_and_published_on_exit(q):
    with q.loan(5) as buf:
        assert isinstance(buf, memoryview) and not buf.readonly and len(buf) == 5
        buf[:] = b"hello"
    assert q.qsize() == 1
    assert q.get(timeout=5) == b"hello"


def test_a_loan_is_discarded_when_its_block_raises(q):
    with pytest.raises(KeyError):
        with q.loan(100) as buf:
            buf[:3] = b"abc"
            raise KeyError("boom")
    assert q.qsize() == 0 and q.empty()
    q.put("after")  # the producers' lock was given back
    assert q.get(timeout=5) == "after"


def test_publish_part_of_a_loan_and_the_explicit_calls(q):
    loan = q.loan(10)
    assert isinstance(loan, Loan) and loan.in_place
    loan.buffer[:4] = b"abcd"
    loan.publish(4)
    with pytest.raises(ValueError, match="already published"):
        loan.publish()
    loan.discard()  # idempotent after the end
    other = q.loan(3)
    with pytest.raises(ValueError, match="byte count from 0 to the 3"):
        other.publish(4)
    other.discard()
    assert q.get_many(timeout=5) == [b"abcd"]


def test_bad_loan_sizes(q):
    with pytest.raises(TypeError, match="nbytes must be an int"):
        q.loan(1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=">= 0"):
        q.loan(-1)
    with pytest.raises(MessageTooLarge, match="capacity="):
        q.loan(q.capacity)
    q.put(1)  # nothing is held after the refusals
    assert q.get(timeout=5) == 1


def test_a_loan_waits_for_room_and_times_out():
    q = Queue(capacity=4096)
    try:
        q.put(b"x" * 3000)
        with pytest.raises(queue.Full):
            q.loan(2000, timeout=0.05)
        with pytest.raises(queue.Full):
            q.loan(2000, block=False)
        q.get(timeout=5)
        with q.loan(2000) as buf:
            buf[:] = b"y" * 2000
        assert q.get(timeout=5) == b"y" * 2000
    finally:
        q.close()


def test_maxsize_bounds_loans_too():
    q = Queue(maxsize=1)
    try:
        q.put(b"a")
        with pytest.raises(queue.Full):
            q.loan(1, timeout=0.02)
    finally:
        q.close()


def test_loans_and_views_around_the_rings_end_stay_whole():
    # 4096-byte ring, 1000-byte messages: every fourth or so wraps, and is
    # written (loan) or read (view) through a copy; the bytes must not care.
    q = Queue(capacity=4096)
    try:
        wrapped = 0
        for i in range(40):
            payload = bytes([i]) * 1000
            with q.loan(1000) as buf:
                buf[:] = payload
            with q.get(copy=False) as v:
                assert bytes(v) == payload
            loan = q.loan(1000)
            wrapped += not loan.in_place
            loan.buffer[:] = payload
            loan.publish()
            assert q.get(timeout=5) == payload
        assert wrapped > 0
        assert q.qsize() == 0
    finally:
        q.close()


def test_a_second_loan_in_the_same_thread_is_refused(q):
    with q.loan(1):
        with pytest.raises(RuntimeError, match="open loan"):
            q.loan(1)


def test_a_loan_must_be_ended_by_its_thread(q):
    loan = q.loan(1)
    errors: list[BaseException] = []

    def other() -> None:
        try:
            loan.publish()
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=other)
    t.start()
    t.join(JOIN)
    assert errors and isinstance(errors[0], RuntimeError)
    assert "thread that took it" in str(errors[0])
    loan.discard()
    assert q.qsize() == 0


def test_a_view_reads_bytes_in_place(q):
    q.put(b"abc")
    q.put(b"def")
    view = q.get(copy=False)
    assert isinstance(view, View)
    assert isinstance(view.value, memoryview) and view.value.readonly
    assert bytes(view.value) == b"abc"
    assert q.qsize() == 2  # consumed on release
    view.release()
    view.release()  # idempotent
    assert q.qsize() == 1
    with q.get(copy=False) as v:
        assert bytes(v) == b"def"
    assert q.empty()


def test_a_view_of_pickled_objects_gives_the_object(q):
    q.put({"a": 1})
    with q.get(copy=False) as v:
        assert v == {"a": 1}


def test_a_numpy_array_comes_back_read_only_without_a_copy(q):
    np = pytest.importorskip("numpy")
    a = np.arange(100_000, dtype=np.float64)
    q.put(a)
    with q.get(copy=False) as got:
        assert isinstance(got, np.ndarray) and not got.flags.writeable
        assert np.array_equal(got, a)
        # the array's memory is the segment's
        base = got
        while getattr(base, "base", None) is not None and not isinstance(base, memoryview):
            base = base.base
        assert isinstance(base, memoryview) and base.obj is q._segment.buffer
        del base
    del got
    assert q.empty()


def test_a_loan_carries_a_numpy_frame(q):
    np = pytest.importorskip("numpy")
    frame = np.random.default_rng(7).random((64, 64))
    with q.loan(frame.nbytes) as buf:
        np.copyto(np.frombuffer(buf, frame.dtype).reshape(frame.shape), frame)
    with q.get(copy=False) as v:
        got = np.frombuffer(v, frame.dtype).reshape(frame.shape)
        assert np.array_equal(got, frame)
        del got


def test_get_copy_false_times_out_and_refuses_a_second_view(q):
    with pytest.raises(queue.Empty):
        q.get(copy=False, timeout=0.02)
    with pytest.raises(queue.Empty):
        q.get(block=False, copy=False)
    q.put_many([b"1", b"2"])
    with q.get(copy=False):
        with pytest.raises(RuntimeError, match="holds a view"):
            q.get(copy=False)
    assert q.get(timeout=5) == b"2"


def test_close_ends_this_threads_loans_and_views():
    q = Queue()
    close_ends_this_threads_leases(q, q.put, q.get)


# -- crashes -------------------------------------------------------------------------


def test_a_writer_killed_inside_a_loan_publishes_nothing(ctx):
    q = Queue()
    try:
        q.put(b"before")
        killed_inside(ctx, "loan", q)
        q.put(b"after", timeout=10)  # the producers' lock was handed over
        assert q.get_many(timeout=10) == [b"before", b"after"]
        stats = q.statistics()
        assert stats["owner_died"] == 1 and stats["total_in"] == 2
    finally:
        q.close()


def test_a_reader_killed_holding_a_view_frees_it(ctx):
    q = Queue()
    try:
        q.put(b"held")
        q.put(b"next")
        killed_inside(ctx, "view", q)
        # The dead reader's message is dropped, its room freed; the rest flows.
        assert q.get(timeout=10) == b"next"
        with pytest.raises(queue.Empty):
            q.get(timeout=0.02)
        stats = q.statistics()
        assert stats["owner_died"] == 1
        assert stats["total_out"] == stats["total_in"] == 2 and stats["bytes_used"] == 0
        loan_and_view(q, q.get, b"more")
    finally:
        q.close()
