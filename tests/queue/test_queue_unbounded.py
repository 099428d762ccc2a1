"""Queue() has no byte limit (issue 11 item 1), as multiprocessing's: with
maxsize=0 put() never blocks for want of ring space, and a message of any size
goes through. What does not fit the ring goes to the queue's spill area (the
same shared file, beyond the mapped part), which outlives its producer and is
freed as it is consumed."""
from __future__ import annotations

import os
import queue as stdqueue
import subprocess
import sys
import textwrap
import uuid

import numpy as np
import pytest

from procwire import Full, JoinableQueue, Queue, SimpleQueue
from procwire._segment import path_of

MiB = 1 << 20
BOUND = 120  # seconds: a bound for a hang, not a speed check


def spill_bytes(q) -> int:
    """Bytes of memory the queue's file holds beyond its mapped segment."""
    st = os.fstat(q._segment.io_fd)
    return max(0, st.st_blocks * 512 - q._segment.size)


def test_a_100_mib_message_goes_through_the_default_queue():
    q = Queue()
    try:
        big = os.urandom(1 << 16) * (100 * MiB // (1 << 16))
        q.put(big)
        assert q.qsize() == 1
        got = q.get(timeout=BOUND)
        assert got == big
        assert spill_bytes(q) < 2 * MiB  # freed once consumed
    finally:
        q.close()


def test_a_large_numpy_array_and_bytearray_keep_their_types():
    q = Queue(capacity=4096)
    try:
        a = np.arange(3 * MiB, dtype=np.float64)  # 24 MiB, out of band
        q.put(a)
        q.put(bytearray(b"z" * (5 * MiB)))
        q.put("small after them")
        b = q.get(timeout=BOUND)
        assert b.dtype == a.dtype and np.array_equal(a, b)
        b[0] = -1  # writable, as from the ring
        assert q.get(timeout=BOUND) == bytearray(b"z" * (5 * MiB))
        assert q.get(timeout=BOUND) == "small after them"
    finally:
        q.close()


@pytest.mark.parametrize("cls", [Queue, SimpleQueue, JoinableQueue])
def test_backlog_beyond_the_ring_never_blocks_and_stays_fifo(cls):
    q = cls(capacity=4096)
    try:
        items = [(i, b"x" * (i % 700)) for i in range(20_000)]
        for item in items[:5000]:
            q.put(item, timeout=0)  # timeout=0: it must not even need to wait
        q.put_many(items[5000:], timeout=0)
        assert q.qsize() == len(items)
        assert not q.full()
        got = [q.get(timeout=BOUND) for _ in range(10)]
        got += q.get_many(max_messages=7000)
        while len(got) < len(items):
            got += q.get_many(timeout=BOUND)
        assert got == items
        assert q.qsize() == 0 and q.empty()
        stats = q.statistics()
        assert stats["total_in"] == stats["total_out"] == len(items)
        assert spill_bytes(q) < 2 * MiB
        if cls is JoinableQueue:
            for _ in items:
                q.task_done()
            assert q.join(timeout=0)
    finally:
        q.close()


def test_the_ring_is_used_again_once_the_backlog_is_drained():
    q = Queue(capacity=4096)
    try:
        for _ in range(100):
            q.put(b"b" * 1000)
        for _ in range(100):
            q.get(timeout=BOUND)
        q.put("ring")
        assert q.statistics()["bytes_used"] > 0  # back in the ring
        assert q.get(timeout=BOUND) == "ring"
    finally:
        q.close()


def _produce(q, tag, count, size):
    for seq in range(count):
        q.put((tag, seq, b"p" * size))


def test_several_producers_before_any_consumer_keep_their_order(ctx):
    q = Queue(capacity=8192)
    producers = [ctx.Process(target=_produce, args=(q, tag, 3000, 200 + 50 * tag))
                 for tag in range(3)]
    try:
        for p in producers:
            p.start()
        for p in producers:
            p.join(BOUND)
            assert p.exitcode == 0
        assert q.qsize() == 9000  # queued although the ring holds a few dozen
        seen = {0: -1, 1: -1, 2: -1}
        for _ in range(9000):
            tag, seq, body = q.get(timeout=BOUND)
            assert seq == seen[tag] + 1 and body == b"p" * (200 + 50 * tag)
            seen[tag] = seq
    finally:
        q.close()


def test_maxsize_still_blocks_but_a_huge_message_fits():
    q = Queue(maxsize=2, capacity=4096)
    try:
        q.put(b"a" * (8 * MiB))  # larger than the ring: spilled, counted
        q.put(b"b")
        with pytest.raises(Full):
            q.put(b"c", timeout=0.05)
        assert q.get(timeout=BOUND) == b"a" * (8 * MiB)
        q.put(b"c", timeout=BOUND)
        assert [q.get(timeout=BOUND), q.get(timeout=BOUND)] == [b"b", b"c"]
    finally:
        q.close()


def test_a_gigabyte_of_messages_queued_before_any_consumer(request):
    # 1 GiB in 1 KiB messages by default (1,048,576 messages: about 1.5 s on
    # a 2-vCPU VM); --full-chaos in 256-byte messages (4,194,304, about 4 s).
    size = 256 if request.config.getoption("--full-chaos") else 1024
    count = (1 << 30) // size
    q = Queue()
    try:
        chunk = os.urandom(size)
        batch = 1024
        for _ in range(0, count, batch):
            q.put_many([chunk] * batch, timeout=0)
        assert q.qsize() == count
        taken = 0
        while taken < count:
            got = q.get_many(timeout=BOUND, max_messages=batch)
            assert all(g == chunk for g in got)
            taken += len(got)
        assert q.empty() and spill_bytes(q) < 2 * MiB
    finally:
        q.close()


def test_named_queue_spill_reaches_an_unrelated_process_and_goes_with_the_name():
    name = f"test-spill-{uuid.uuid4().hex[:8]}"
    q = Queue(name=name, capacity=4096)
    try:
        big = b"n" * (3 * MiB)
        for i in range(5):
            q.put((i, big))
        script = textwrap.dedent(f"""
            from procwire import Queue
            q = Queue.attach({name!r})
            for i in range(5):
                n, body = q.get(timeout=60)
                assert n == i and body == b"n" * (3 << 20), n
            q.put("done")
            q.close()
        """)
        subprocess.run([sys.executable, "-c", script], check=True, timeout=BOUND)
        assert q.get(timeout=BOUND) == "done"
        assert spill_bytes(q) < 2 * MiB
    finally:
        q.close()
    assert not os.path.exists(path_of(name))


def test_empty_raises_as_before():
    q = Queue(capacity=4096)
    try:
        with pytest.raises(stdqueue.Empty):
            q.get(timeout=0)
        q.put(b"x" * 10000)
        assert q.get_nowait() == b"x" * 10000
        with pytest.raises(stdqueue.Empty):
            q.get_nowait()
    finally:
        q.close()


def test_a_spilled_message_read_with_copy_false_and_a_loan_after_the_spill():
    q = Queue(capacity=4096)
    try:
        q.put(b"v" * 10_000)  # larger than the ring: spilled
        q.put(b"w" * 100)     # behind it, so spilled too
        with q.get(copy=False) as value:  # no view of the spill: a copy, consumed
            assert bytes(value) == b"v" * 10_000
        with q.get(copy=False) as value:
            assert bytes(value) == b"w" * 100
        with q.loan(3) as buf:  # the spill is empty again: the loan takes the ring
            buf[:] = b"abc"
        assert q.get(timeout=BOUND) == b"abc"
    finally:
        q.close()
