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
from synchelpers import (
    SRC,
    collect_before_leak_check,  # noqa: F401  (autouse)
    join_all,
    run_py,
    unique,
)

import procwire
from procwire import Barrier, BrokenBarrierError, Condition, Event, Lock, RLock, Semaphore

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


# ------------------------- 6. one handle must not release another's hold


@pytest.mark.parametrize("cls", [Lock, RLock])
def test_closing_or_collecting_a_handle_keeps_the_lock_held_through_another(cls):
    import gc
    name = unique("handles")
    a = cls(name=name)
    try:
        assert a.acquire(timeout=5)
        b = cls.attach(name)
        b.close()  # b never acquired: it must not release a's hold
        assert a.statistics()["locked"] and a._is_mine()
        c = cls.attach(name)
        del c
        gc.collect()
        assert a.statistics()["locked"] and a._is_mine()
        out = run_py(f"""
import procwire
lk = procwire.{cls.__name__}.attach({name!r})
print(lk.acquire(timeout=0.3))
""")
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "False"  # mutual exclusion kept
        a.release()  # the real holder's release works
        assert not a.statistics()["locked"]
        # The handle that acquired does release on close.
        d = cls.attach(name)
        assert d.acquire(timeout=5)
        d.close()
        assert not a.statistics()["locked"]
    finally:
        a.close()


def test_rlock_release_through_a_handle_that_did_not_acquire_raises_like_multiprocessing():
    name = unique("handles")
    a = RLock(name=name)
    b = RLock.attach(name)
    try:
        with a:
            with pytest.raises(AssertionError):
                b.release()
            assert a._is_mine() and not b._is_mine()
        assert not a.statistics()["locked"]
    finally:
        b.close()
        a.close()


# --------------------------------- 10. PID namespaces sharing /dev/shm

def _unshare_works() -> bool:
    try:
        r = subprocess.run(["unshare", "--pid", "--fork", "true"], capture_output=True,
                           timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0


_NS_HOLDER = r"""
import threading, procwire
assert threading.get_native_id() == 1, threading.get_native_id()
lk = procwire.{cls}.attach({lock!r})
held, done = procwire.Event.attach({held!r}), procwire.Event.attach({done!r})
assert lk.acquire(timeout=30)
held.set()
assert done.wait(60)
lk.release()
print("holder ok")
"""

_NS_OTHER = r"""
import threading, procwire
assert threading.get_native_id() == 1, threading.get_native_id()
lk = procwire.{cls}.attach({lock!r})
done = procwire.Event.attach({done!r})
print(lk.acquire(timeout=0.5))
try:
    lk.release()
except (AssertionError, RuntimeError, ValueError) as e:
    print(type(e).__name__)
else:
    print("released")
done.set()
print(lk.acquire(timeout=60))
lk.release()
"""


@pytest.mark.skipif(os.geteuid() != 0 or not _unshare_works(),
                    reason="needs root and util-linux unshare (PID namespaces)")
@pytest.mark.parametrize("cls", ["RLock", "Lock"])
def test_lock_holders_in_other_pid_namespaces_are_not_this_thread(cls):
    lock, held, done = unique("nslock"), unique("nsheld"), unique("nsdone")
    lk = getattr(procwire, cls)(name=lock)
    e_held, e_done = Event(name=held), Event(name=done)
    env = dict(os.environ, PYTHONPATH=SRC)
    cmd = ["unshare", "--pid", "--fork", sys.executable, "-c"]
    holder = subprocess.Popen([*cmd, _NS_HOLDER.format(cls=cls, lock=lock, held=held, done=done)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert e_held.wait(60), holder.communicate(timeout=30)
        other = subprocess.run([*cmd, _NS_OTHER.format(cls=cls, lock=lock, done=done)],
                               capture_output=True, text=True, timeout=120, env=env)
        assert other.returncode == 0, (other.returncode, other.stderr[-2000:])
        expected_error = "AssertionError" if cls == "RLock" else "RuntimeError"
        assert other.stdout.split() == ["False", expected_error, "True"]
        out, err = holder.communicate(timeout=60)
        assert holder.returncode == 0, (holder.returncode, err[-2000:])
        assert out.strip() == "holder ok"
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.communicate()
        lk.close()
        e_held.close()
        e_done.close()


# ---------------- 7. Barrier calls honour their deadline for the internal mutex


def _hold_barrier_mutex_and_stop(b, ready):
    assert b._lock.acquire(timeout=60)  # the internal lock (the Condition's)
    ready.set()
    os.kill(os.getpid(), signal.SIGSTOP)
    # Continued: exit holding it (the robust mutex reports the death).


def _process_state(pid):
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def _bounded(fn, limit=20.0):
    """Run fn in a thread; return (result or exception, seconds); fail if it hangs."""
    out = []

    def run():
        t0 = time.monotonic()
        try:
            out.append(fn())
        except BaseException as e:
            out.append(e)
        out.append(time.monotonic() - t0)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(limit)
    assert not t.is_alive(), f"{fn} still blocked after {limit} s"
    return out[0], out[1]


def test_barrier_calls_honour_deadlines_while_a_stopped_process_holds_its_mutex(ctx):
    b = Barrier(2)
    ready = ctx.Event()
    p = ctx.Process(target=_hold_barrier_mutex_and_stop, args=(b, ready))
    p.start()
    try:
        assert ready.wait(60)
        _wait_until(lambda: _process_state(p.pid) == "T", what="the holder stopped")
        r, dt = _bounded(lambda: b.wait(timeout=0.5))
        assert isinstance(r, BrokenBarrierError) and dt < 10, (r, dt)
        r, dt = _bounded(lambda: b.wait(timeout=0))
        assert isinstance(r, BrokenBarrierError) and dt < 10, (r, dt)
        r, dt = _bounded(b.abort)
        assert r is None and dt < 10
        assert b.broken
        r, dt = _bounded(lambda: b.reset(timeout=0.5))
        assert isinstance(r, TimeoutError) and dt < 10, (r, dt)
    finally:
        os.kill(p.pid, signal.SIGCONT)
        join_all([p])
    b.reset(timeout=30)  # the holder died: reset takes the mutex over
    assert not b.broken


# ----------------- 14. a Barrier whose action runner is killed breaks


def _block_in_action(in_action):
    in_action.set()
    threading.Event().wait()  # blocks until this process is killed


def _barrier_party(b, broken):
    try:
        b.wait(timeout=120)
    except BrokenBarrierError:
        broken.release()


def _barrier_action_runner(b, in_action):
    import functools
    b._action = functools.partial(_block_in_action, in_action)
    b.wait(timeout=120)


def test_barrier_breaks_when_the_action_runner_is_killed(ctx):
    b = Barrier(3)
    broken = Semaphore(0)
    in_action = ctx.Event()
    party = ctx.Process(target=_barrier_party, args=(b, broken))
    party.start()
    t = threading.Thread(target=_barrier_party, args=(b, broken))
    t.start()
    runner = None
    try:
        _wait_until(lambda: b.n_waiting == 2, what="two parties waiting")
        runner = ctx.Process(target=_barrier_action_runner, args=(b, in_action))
        runner.start()
        assert in_action.wait(60)
        runner.kill()
        runner.join(30)
        assert broken.acquire(timeout=30) and broken.acquire(timeout=30)
        assert b.broken
    finally:
        b.abort()
        t.join(30)
        join_all([party] + ([runner] if runner else []))
    b.reset(timeout=30)
    assert not b.broken and b.n_waiting == 0
