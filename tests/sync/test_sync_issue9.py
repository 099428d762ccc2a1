"""Regression tests for the synchronisation defects of issue 9 (each failed on
the code before its fix): Condition.notify(n) waking everyone, close() under a
waiter, one handle releasing another's lock, non-blocking calls waiting for an
internal mutex, PID namespaces, and a Barrier whose action runner dies."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

import procwire
from procwire import (Barrier, BrokenBarrierError, Condition, Event, Lock, RLock,
                      Semaphore)
from synchelpers import collect_before_leak_check  # noqa: F401  (autouse)
from synchelpers import SRC, join_all, run_py, unique

pytestmark = pytest.mark.timeout(180)


def _wait_until(pred, timeout=30.0, what="condition"):
    # Polls shared statistics (the state under test), not a sleep standing in
    # for synchronisation.
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.002)


# ------------------------------------------------- 1. Condition.notify(n)


def _cond_waiter(cond, woken):
    with cond:
        if cond.wait(timeout=60):
            woken.release()


def _waiters(cond):
    return cond.statistics()["waiters"]


def test_condition_notify_wakes_exactly_one_of_a_process_and_a_thread(ctx):
    cond = Condition()
    woken = Semaphore(0)
    p = ctx.Process(target=_cond_waiter, args=(cond, woken))
    p.start()
    t = threading.Thread(target=_cond_waiter, args=(cond, woken))
    t.start()
    try:
        _wait_until(lambda: _waiters(cond) == 2, what="two waiters asleep")
        with cond:
            cond.notify()
        assert woken.acquire(timeout=30)
        # The other must stay asleep (multiprocessing's _TestCondition checks
        # the same with a bounded wait).
        assert not woken.acquire(timeout=1.0)
        assert _waiters(cond) == 1
        with cond:
            cond.notify()
        assert woken.acquire(timeout=30)
    finally:
        with cond:
            cond.notify_all()
        t.join(30)
        join_all([p])
    assert not t.is_alive()


def test_condition_notify_n_and_notify_all_threads():
    cond = Condition()
    woken = Semaphore(0)
    ts = [threading.Thread(target=_cond_waiter, args=(cond, woken)) for _ in range(5)]
    for t in ts:
        t.start()
    _wait_until(lambda: _waiters(cond) == 5, what="five waiters asleep")
    with cond:
        cond.notify(2)
    assert woken.acquire(timeout=30) and woken.acquire(timeout=30)
    assert not woken.acquire(timeout=1.0)
    assert _waiters(cond) == 3
    with cond:
        cond.notify_all()
    for _ in range(3):
        assert woken.acquire(timeout=30)
    for t in ts:
        t.join(30)
    assert _waiters(cond) == 0


def test_condition_waiter_arriving_after_notify_is_not_woken_by_it():
    cond = Condition()
    woken = Semaphore(0)
    first = threading.Thread(target=_cond_waiter, args=(cond, woken))
    first.start()
    _wait_until(lambda: _waiters(cond) == 1)
    with cond:
        cond.notify()
        # A waiter that arrives after the notify (it needs the lock, which
        # the notifier still holds, so it can only arrive later).
        second = threading.Thread(target=_cond_waiter, args=(cond, woken))
        second.start()
    assert woken.acquire(timeout=30)
    _wait_until(lambda: _waiters(cond) == 1)
    assert not woken.acquire(timeout=1.0)
    with cond:
        cond.notify()
    assert woken.acquire(timeout=30)
    first.join(30)
    second.join(30)


def test_condition_timed_out_waiter_does_not_absorb_a_notify():
    cond = Condition()
    with cond:
        assert cond.wait(0.05) is False
    woken = Semaphore(0)
    t = threading.Thread(target=_cond_waiter, args=(cond, woken))
    t.start()
    _wait_until(lambda: _waiters(cond) == 1)
    with cond:
        cond.notify()
    assert woken.acquire(timeout=30)
    t.join(30)


# ------------------------------------------- 2. close() under a waiting thread

_CLOSE_UNDER_WAITER = r"""
import threading, time, procwire
kind = {kind!r}
if kind in ("Lock", "RLock"):
    obj = getattr(procwire, kind)()
    obj.acquire()
    wait = lambda: obj.acquire(timeout=60)
    asleep = lambda: obj.statistics()["waiters"] == 1
elif kind == "Event":
    obj = procwire.Event()
    wait = lambda: obj.wait(60)
    asleep = lambda: obj.statistics()["waiters"] == 1
elif kind == "Semaphore":
    obj = procwire.Semaphore(0)
    wait = lambda: obj.acquire(timeout=60)
    asleep = lambda: obj.statistics()["waiters"] == 1
elif kind == "Condition":
    obj = procwire.Condition()
    def wait():
        with obj:
            return obj.wait(60)
    asleep = lambda: obj.statistics()["waiters"] == 1
else:
    obj = procwire.Barrier(2)
    wait = lambda: obj.wait(60)
    asleep = lambda: obj.statistics()["waiters"] == 1
result = []
def waiter():
    try:
        result.append(wait())
    except BaseException as e:
        result.append(e)
t = threading.Thread(target=waiter)
t.start()
deadline = time.monotonic() + 30
while not asleep():
    assert time.monotonic() < deadline, "waiter never slept"
    time.sleep(0.002)
t0 = time.monotonic()
obj.close()
t.join(30)
assert not t.is_alive(), "waiter still blocked after close()"
assert time.monotonic() - t0 < 10
r = result[0]
assert isinstance(r, ValueError) and "closed" in str(r), repr(r)
try:
    wait()
except ValueError:
    pass
else:
    raise AssertionError("a closed object still works")
print("ok")
"""


@pytest.mark.parametrize("kind", ["Lock", "RLock", "Event", "Semaphore", "Condition",
                                  "Barrier"])
def test_close_under_a_waiting_thread_wakes_it_with_an_error(kind):
    out = run_py(_CLOSE_UNDER_WAITER.format(kind=kind), timeout=120)
    assert out.returncode == 0, (out.returncode, out.stderr[-2000:])
    assert out.stdout.strip() == "ok"
