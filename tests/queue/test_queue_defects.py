"""Regression tests for issue 9's queue defects 3, 17, 18 and 19."""
from __future__ import annotations

import os
import pickle
import signal

import numpy as np
import pytest

from procwire import Empty, Full, Queue, _core

JOIN = 60


def _refuse_to_load():
    raise ValueError("this message cannot be unpickled")


class LoadsBadly:
    """Pickles fine; unpickling raises."""

    def __reduce__(self):
        return (_refuse_to_load, ())


class Unpicklable:
    def __reduce__(self):
        raise pickle.PicklingError("refuses to be pickled")


# -- defect 3: get_many() never drops the batch around a bad record --------------------

def test_get_many_returns_the_rest_of_a_batch_around_a_message_that_fails_to_unpickle():
    q = Queue()
    try:
        q.put_many([1, 2, LoadsBadly(), 3, b"raw", 4])
        assert q.get_many() == [1, 2, 3, b"raw", 4]  # nothing else is lost
        with pytest.raises(ValueError, match="cannot be unpickled"):
            q.get_many()  # the bad message's own error, deferred to the next call
        with pytest.raises(Empty):
            q.get_nowait()
        assert q.qsize() == 0
        stats = q.statistics()
        assert stats["total_in"] == stats["total_out"] == 6
    finally:
        q.close()


def test_get_many_raises_at_once_when_nothing_in_the_batch_converted():
    q = Queue()
    try:
        q.put_many([LoadsBadly(), LoadsBadly()])
        with pytest.raises(ValueError, match="cannot be unpickled") as info:
            q.get_many()
        assert any("more messages" in n for n in getattr(info.value, "__notes__", []))
        q.put("next")
        assert q.get_many() == ["next"]  # nothing deferred: both errors were in one raise
    finally:
        q.close()


def test_get_after_get_many_raises_the_deferred_error_first():
    q = Queue()
    try:
        q.put_many(["a", LoadsBadly(), "b"])
        assert q.get_many(max_messages=3) == ["a", "b"]
        q.put("c")
        with pytest.raises(ValueError):
            q.get(timeout=1)
        assert q.get(timeout=1) == "c"
    finally:
        q.close()


# -- defect 17: more than 63 out-of-band buffers ------------------------------------------

def test_an_object_with_100_out_of_band_buffers_round_trips():
    q = Queue(capacity=1 << 20)
    try:
        arrays = np.empty(100, dtype=object)
        for i in range(100):
            arrays[i] = np.full(50, i, dtype=np.int64)
        q.put(arrays)
        got = q.get(timeout=10)
        assert got.dtype == object and len(got) == 100
        assert all((got[i] == i).all() for i in range(100))
        # The out-of-band path still serves the common case.
        big = np.arange(10_000, dtype=np.float64)
        q.put(big)
        assert (q.get(timeout=10) == big).all()
    finally:
        q.close()


def test_exactly_63_and_64_buffers_both_round_trip():
    q = Queue(capacity=1 << 20)
    try:
        for n in (62, 63, 64, 65):
            arrays = np.empty(n, dtype=object)
            for i in range(n):
                arrays[i] = np.full(3, i, dtype=np.int32)
            q.put(arrays)
            got = q.get(timeout=10)
            assert [int(a[0]) for a in got] == list(range(n))
    finally:
        q.close()


# -- defect 18: put_many() with an unpicklable item -----------------------------------------

@pytest.mark.parametrize("bad_at", [0, 1, 255, 256, 257, 511, 512, 700])
def test_put_many_puts_exactly_the_items_before_an_unpicklable_one(bad_at):
    q = Queue(capacity=1 << 20)
    try:
        items: list[object] = list(range(800))
        items[bad_at] = Unpicklable()
        with pytest.raises(pickle.PicklingError) as info:
            q.put_many(items)
        assert info.value.count == bad_at
        assert q.qsize() == bad_at
        if bad_at:
            assert q.get_many() == list(range(bad_at))
    finally:
        q.close()


def test_put_many_timeout_with_an_unpicklable_item_later_reports_full_with_the_count():
    q = Queue(maxsize=3)
    try:
        with pytest.raises(Full) as info:
            q.put_many([1, 2, 3, 4, Unpicklable()], timeout=0.1)
        assert info.value.count == 3
        assert q.get_many() == [1, 2, 3]
    finally:
        q.close()


# -- defect 19: total_in/total_out stay exact across kills ----------------------------------

def _die_after_publishing(q, side):
    _core._testing.hold_queue_lock(q, side, b"payload" if side == "tail" else None, publish=True)
    os.kill(os.getpid(), signal.SIGKILL)


@pytest.mark.parametrize("side", ["tail", "head"])
def test_totals_count_a_message_whose_publisher_died_before_updating_them(ctx, side):
    q = Queue()
    try:
        q.put_many(["a", "b"])
        p = ctx.Process(target=_die_after_publishing, args=(q, side))
        p.start()
        p.join(JOIN)
        assert p.exitcode == -signal.SIGKILL
        stats = q.statistics()
        assert stats["total_in"] - stats["total_out"] == stats["messages"] == q.qsize()
        assert stats["total_in"] == (3 if side == "tail" else 2)
        assert stats["total_out"] == (0 if side == "tail" else 1)
        remaining = q.get_many(timeout=10)
        q.put("c")
        q.get(timeout=10)
        stats = q.statistics()
        assert stats["messages"] == 0
        assert stats["total_in"] == stats["total_out"] == (4 if side == "tail" else 3)
        assert len(remaining) == (3 if side == "tail" else 1)
    finally:
        q.close()
