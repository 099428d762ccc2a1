"""Non-blocking and timed calls never wait past their deadline (issue 9, defect 7).

A child takes one of the ring's internal locks through the test-only hook and
is then stopped with SIGSTOP, as Ctrl-Z or a debugger would stop it. Every
call with block=False, timeout=0 or timeout=x must still return (raise
Empty/Full) in bounded time; afterwards the child is continued and killed,
and the queue keeps working.
"""
from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from procwire import Empty, Full, JoinableQueue, Queue, SimpleQueue, _core

JOIN = 60
BOUND = 10.0  # seconds: far above the 5 ms lock grace and the 0.2 s timeouts below


def _hold(q, side, ready):
    _core._testing.hold_queue_lock(q, side)
    ready.set()
    threading.Event().wait()  # parked, lock held, until SIGKILL


class StoppedHolder:
    """A child holding `side`'s lock of q, stopped with SIGSTOP."""

    def __init__(self, ctx, q, side):
        ready = ctx.Event()
        self.p = ctx.Process(target=_hold, args=(q, side, ready))
        self.p.start()
        assert ready.wait(JOIN), "the holder never took the lock"
        os.kill(self.p.pid, signal.SIGSTOP)

    def finish(self):
        if self.p.is_alive():
            os.kill(self.p.pid, signal.SIGCONT)
            os.kill(self.p.pid, signal.SIGKILL)
        self.p.join(JOIN)


def _bounded(fn):
    """Runs fn in a thread; returns (exception or result, seconds), or fails
    if it is still blocked after BOUND seconds."""
    out = {}

    def run():
        t0 = time.monotonic()
        try:
            out["result"] = fn()
        except BaseException as e:
            out["result"] = e
        out["elapsed"] = time.monotonic() - t0

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(BOUND)
    assert not t.is_alive(), f"{fn} blocked for more than {BOUND} s"
    return out["result"], out["elapsed"]


GETS = {
    "get_nowait": lambda q: q.get_nowait(),
    "get(block=False)": lambda q: q.get(block=False),
    "get(timeout=0)": lambda q: q.get(timeout=0),
    "get(timeout=0.2)": lambda q: q.get(timeout=0.2),
    "get_many(block=False)": lambda q: q.get_many(block=False),
    "get_many(timeout=0.2)": lambda q: q.get_many(timeout=0.2),
}
PUTS = {
    "put_nowait": lambda q: q.put_nowait("x"),
    "put(block=False)": lambda q: q.put("x", block=False),
    "put(timeout=0)": lambda q: q.put("x", timeout=0),
    "put(timeout=0.2)": lambda q: q.put("x", timeout=0.2),
    "put_many(block=False)": lambda q: q.put_many(["x", "y"], block=False),
    "put_many(timeout=0.2)": lambda q: q.put_many(["x", "y"], timeout=0.2),
}


@pytest.mark.parametrize("cls", [Queue, SimpleQueue, JoinableQueue])
def test_gets_honour_their_deadline_while_the_consumers_lock_holder_is_stopped(ctx, cls):
    q = cls()
    holder = None
    try:
        q.put_many(["a", "b"])  # not empty: only the lock stands in the way
        holder = StoppedHolder(ctx, q, "head")
        for label, call in GETS.items():
            result, elapsed = _bounded(lambda: call(q))  # noqa: B023 (called at once)
            assert isinstance(result, Empty), f"{label} returned {result!r}"
            assert elapsed < BOUND
        # The other side is unaffected.
        q.put("c", block=False)
        assert q.qsize() == 3
    finally:
        if holder:
            holder.finish()
    try:
        assert q.get_many(timeout=JOIN) == ["a", "b", "c"]  # the lock came back
    finally:
        q.close()


def test_puts_honour_their_deadline_while_the_producers_lock_holder_is_stopped(ctx):
    q = Queue()
    holder = None
    try:
        holder = StoppedHolder(ctx, q, "tail")
        for label, call in PUTS.items():
            result, _elapsed = _bounded(lambda: call(q))  # noqa: B023 (called at once)
            assert isinstance(result, Full), f"{label} returned {result!r}"
        assert q.qsize() == 0
    finally:
        if holder:
            holder.finish()
    try:
        q.put("after", timeout=JOIN)
        assert q.get(timeout=JOIN) == "after"
    finally:
        q.close()


def test_task_done_and_join_never_wait_for_a_stopped_lock_holder(ctx):
    q = JoinableQueue()
    holder = None
    try:
        q.put_many([1, 2])
        holder = StoppedHolder(ctx, q, "tail")
        holder2 = StoppedHolder(ctx, q, "head")
        try:
            result, _ = _bounded(q.task_done)
            assert result is None
            result, _ = _bounded(lambda: q.join(timeout=0))
            assert result is False
            result, _ = _bounded(lambda: q.join(timeout=0.2))
            assert result is False
            result, _ = _bounded(q.task_done)
            assert result is None
            result, _ = _bounded(lambda: q.join(timeout=0.2))
            assert result is True
        finally:
            holder2.finish()
    finally:
        if holder:
            holder.finish()
        q.close()
