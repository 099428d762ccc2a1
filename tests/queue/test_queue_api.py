"""The Queue API, one process at a time, against multiprocessing.Queue's behaviour."""
from __future__ import annotations

import pickle
import queue as stdqueue
import threading
import time

import numpy as np
import pytest

import procwire
from procwire import JoinableQueue, Queue, SimpleQueue


@pytest.fixture
def q():
    q = Queue()
    yield q
    q.close()


def test_exceptions_are_the_queue_modules():
    assert procwire.Empty is stdqueue.Empty
    assert procwire.Full is stdqueue.Full


@pytest.mark.parametrize("obj", [
    b"", b"x" * 64, bytearray(b"abc"), "text", 0, -1, 2**80, 2.5, None, True,
    (1, "abc", 2.5), [1, [2, [3]]], {"a": 1, "b": (2, 3)}, {1, 2}, frozenset({3}),
    b"\0" * 100_000,
])
def test_round_trip_keeps_value_and_type(q, obj):
    q.put(obj)
    got = q.get()
    assert got == obj
    assert type(got) is type(obj)


def test_fifo_order(q):
    for i in range(1000):
        q.put(i)
    assert [q.get() for _ in range(1000)] == list(range(1000))


def test_numpy_array_travels_out_of_band_and_stays_writable(q):
    a = np.arange(500_000, dtype=np.float64).reshape(1000, 500)
    q.put(a)
    b = q.get()
    assert b.dtype == a.dtype and b.shape == a.shape
    np.testing.assert_array_equal(a, b)
    b[0, 0] = -1  # out-of-band buffers come back writable, as pickle gives them
    assert a[0, 0] == 0


def test_non_contiguous_array_falls_back_to_in_band(q):
    a = np.arange(100).reshape(10, 10)[:, ::2]
    q.put(a)
    np.testing.assert_array_equal(q.get(), a)


def test_qsize_empty_full_with_maxsize():
    q = Queue(maxsize=3)
    try:
        assert q.empty() and not q.full() and q.qsize() == 0
        for i in range(3):
            q.put(i)
            assert q.qsize() == i + 1
        assert q.full() and not q.empty()
        with pytest.raises(procwire.Full):
            q.put(3, block=False)
        with pytest.raises(procwire.Full):
            q.put_nowait(3)
        assert q.get() == 0
        assert not q.full()
    finally:
        q.close()


def test_maxsize_zero_or_negative_means_unbounded_by_count():
    for maxsize in (0, -5):
        q = Queue(maxsize)
        try:
            assert q.maxsize == 0
            q.put_many(range(10_000))
            assert q.qsize() == 10_000 and not q.full()
        finally:
            q.close()


def test_full_by_bytes_blocks_until_room_in_a_bounded_queue():
    # With maxsize > 0 a message that fits the ring waits for room in it, as
    # documented; with maxsize=0 it would spill (test_queue_unbounded.py).
    q = Queue(maxsize=100, capacity=4096)
    try:
        q.put(b"x" * 4000)
        with pytest.raises(procwire.Full):
            q.put(b"y" * 200, timeout=0.05)
        assert q.get() == b"x" * 4000
        q.put(b"y" * 200, timeout=0.05)
        assert q.get() == b"y" * 200
    finally:
        q.close()


def test_get_nowait_and_non_blocking_get_raise_empty(q):
    with pytest.raises(procwire.Empty):
        q.get_nowait()
    with pytest.raises(procwire.Empty):
        q.get(False)
    with pytest.raises(procwire.Empty):
        q.get(block=False, timeout=10)  # timeout is ignored when not blocking


@pytest.mark.parametrize("timeout", [0.05, 0.3])
def test_get_timeout_elapsed_is_about_right(q, timeout):
    t0 = time.monotonic()
    with pytest.raises(procwire.Empty):
        q.get(timeout=timeout)
    elapsed = time.monotonic() - t0
    assert timeout * 0.9 <= elapsed < timeout + 1.0


def test_put_timeout_elapsed_is_about_right():
    q = Queue(1)
    try:
        q.put(1)
        t0 = time.monotonic()
        with pytest.raises(procwire.Full):
            q.put(2, timeout=0.2)
        assert 0.18 <= time.monotonic() - t0 < 1.2
    finally:
        q.close()


def test_negative_timeout_counts_as_zero_like_multiprocessing(q):
    with pytest.raises(procwire.Empty):
        q.get(timeout=-1)


def test_blocked_get_wakes_when_another_thread_puts(q):
    def later():
        # Wait until the getter is really asleep, then put.
        deadline = time.monotonic() + 10
        while q.statistics()["consumers_waiting"] == 0 and time.monotonic() < deadline:
            time.sleep(0.001)
        q.put("wake")

    t = threading.Thread(target=later)
    t.start()
    assert q.get(timeout=10) == "wake"
    t.join(10)


def test_put_many_get_many(q):
    q.put_many([b"a", "b", 3])
    q.put_many(x for x in range(5))  # any iterable
    assert q.get_many() == [b"a", "b", 3, 0, 1, 2, 3, 4]
    q.put_many(range(10))
    assert q.get_many(max_messages=4) == [0, 1, 2, 3]
    assert q.get_many(block=False, max_messages=100) == [4, 5, 6, 7, 8, 9]
    with pytest.raises(procwire.Empty):
        q.get_many(block=False)
    with pytest.raises(procwire.Empty):
        q.get_many(timeout=0.01)


def test_put_many_larger_than_the_ring_streams_through():
    q = Queue(capacity=4096)
    got = []

    def consume():
        while len(got) < 2000:
            got.extend(q.get_many(timeout=10))

    t = threading.Thread(target=consume)
    t.start()
    q.put_many(range(2000), timeout=10)
    t.join(10)
    q.close()
    assert got == list(range(2000))


def test_put_many_timeout_reports_how_many_went_in():
    q = Queue(maxsize=5)
    try:
        with pytest.raises(procwire.Full) as info:
            q.put_many(range(8), timeout=0.05)
        assert info.value.count == 5
        assert q.get_many() == [0, 1, 2, 3, 4]
    finally:
        q.close()


def test_unpicklable_object_raises_from_put_and_loses_nothing(q):
    q.put("before")
    with pytest.raises((pickle.PicklingError, TypeError, AttributeError)):
        q.put(lambda: None)
    with pytest.raises((pickle.PicklingError, TypeError, AttributeError)) as info:
        q.put_many(["ok", threading.Lock(), "never"])
    assert info.value.count == 1  # the items before the bad one went in, no others
    q.put("after")
    assert q.get_many() == ["before", "ok", "after"]


def test_message_larger_than_the_ring_goes_through_the_spill():
    # Was MessageTooLarge before issue 11: a queue has no byte limit now.
    for q in (Queue(capacity=8192), Queue(maxsize=3, capacity=8192)):
        try:
            q.put(b"x" * 10_000)
            q.put(b"x" * (8192 - 8))  # the largest message the ring itself takes
            assert q.qsize() == 2
            assert q.get() == b"x" * 10_000 and len(q.get()) == 8192 - 8
            assert q.empty()
        finally:
            q.close()


def test_capacity_is_rounded_up_to_a_power_of_two():
    q = Queue(capacity=5000)
    try:
        assert q.capacity == 8192
    finally:
        q.close()


@pytest.mark.parametrize("kwargs, exc", [
    ({"maxsize": "3"}, TypeError),
    ({"maxsize": 2**40}, ValueError),
    ({"capacity": 100}, ValueError),
    ({"capacity": 2**31}, ValueError),
    ({"capacity": 4096.0}, TypeError),
])
def test_bad_constructor_arguments(kwargs, exc):
    with pytest.raises(exc):
        Queue(**kwargs)


def test_bad_call_arguments(q):
    with pytest.raises(TypeError, match="timeout"):
        q.get(timeout="soon")
    with pytest.raises(ValueError, match="NaN"):
        q.get(timeout=float("nan"))
    with pytest.raises(TypeError):
        q.put()
    with pytest.raises(TypeError, match="unexpected keyword"):
        q.put(1, blocking=True)
    with pytest.raises(TypeError, match="multiple values"):
        q.put(1, True, block=True)
    with pytest.raises(ValueError, match="max_messages"):
        q.get_many(max_messages=0)
    with pytest.raises(TypeError):
        q.put_many(5)


def test_close_then_use_raises_value_error():
    q = Queue()
    q.put(1)
    q.close()
    q.close()  # idempotent
    for call in (lambda: q.put(1), q.get, q.qsize, q.empty, q.full,
                 lambda: q.put_many([1]), q.get_many):
        with pytest.raises(ValueError, match="closed"):
            call()
    q.join_thread()
    q.cancel_join_thread()


def test_join_thread_before_close_asserts_like_multiprocessing(q):
    with pytest.raises(AssertionError):
        q.join_thread()


@pytest.mark.parametrize("blocked", ["get", "put"])
def test_close_ends_a_call_another_thread_is_blocked_in(blocked):
    # As a Pipe receiver's: close() wakes the waiting thread, which raises the
    # closed error at once (not at its timeout), and the mapping is released
    # only after it has left.
    q = Queue(maxsize=1)
    if blocked == "put":
        q.put(0)
    result = []

    def waiter():
        start = time.monotonic()
        try:
            q.get(timeout=60) if blocked == "get" else q.put(1, timeout=60)
            result.append("returned")
        except ValueError as e:
            result.append((str(e), time.monotonic() - start))

    t = threading.Thread(target=waiter)
    t.start()
    side = "consumers_waiting" if blocked == "get" else "producers_waiting"
    deadline = time.monotonic() + 10
    while q.statistics()[side] == 0 and time.monotonic() < deadline:
        time.sleep(0.001)
    q.close()  # must not unmap under the sleeping thread
    t.join(30)
    assert not t.is_alive()
    [(message, waited)] = result
    assert "closed by another thread" in message
    assert waited < 30


def test_close_ends_a_join_another_thread_is_blocked_in():
    # The joiners are woken too (without moving the task count): join() raises
    # the closed error at once, not at its timeout.
    q = JoinableQueue()
    q.put("task")
    result = []

    def joiner():
        start = time.monotonic()
        try:
            q.join(timeout=60)
            result.append("returned")
        except ValueError as e:
            result.append((str(e), time.monotonic() - start))

    t = threading.Thread(target=joiner)
    t.start()
    deadline = time.monotonic() + 10
    while q.statistics().joiners_waiting == 0 and time.monotonic() < deadline:
        time.sleep(0.001)
    q.close()
    t.join(30)
    assert not t.is_alive()
    [(message, waited)] = result
    assert "closed by another thread" in message
    assert waited < 10


def test_context_manager_closes():
    with Queue() as q:
        q.put(1)
    with pytest.raises(ValueError):
        q.get()


def test_statistics_count_traffic(q):
    q.put_many([b"ab", b"cde"])
    q.get()
    s = q.statistics()
    assert s["total_in"] == 2 and s["total_out"] == 1
    assert s["bytes_in"] == 5 and s["bytes_out"] == 2
    assert s["messages"] == 1 and s["owner_died"] == 0


def test_simple_queue():
    q = SimpleQueue()
    try:
        assert q.empty()
        q.put([1, 2])
        assert not q.empty()
        assert q.get() == [1, 2]
        with pytest.raises(TypeError):
            SimpleQueue(5)  # multiprocessing.SimpleQueue takes no maxsize
    finally:
        q.close()


def test_joinable_queue_task_done_and_join():
    q = JoinableQueue()
    try:
        assert q.join(timeout=0) is True
        q.put_many(["a", "b"])
        assert q.join(timeout=0.05) is False
        q.get(), q.get()
        q.task_done()
        assert q.join(timeout=0.05) is False
        q.task_done()
        assert q.join(timeout=0) is True
        with pytest.raises(ValueError, match="too many times"):
            q.task_done()
    finally:
        q.close()


def test_joinable_join_wakes_when_a_thread_finishes_the_last_task():
    q = JoinableQueue()
    q.put("job")

    def worker():
        q.get()
        q.task_done()

    t = threading.Thread(target=worker)
    t.start()
    assert q.join(timeout=10) is True
    t.join(10)
    q.close()


def test_repr(q):
    assert "qsize=0" in repr(q)
