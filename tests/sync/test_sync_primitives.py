"""Semaphore, BoundedSemaphore, Event, Condition and Barrier against their
multiprocessing twins: API, timeouts, processes, names, Ctrl-C."""
from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import threading
import time

import pytest
from synchelpers import (
    collect_before_leak_check,  # noqa: F401  (autouse)
    interrupt_main_after,
    join_all,
    popen_py,
    run_py,
    unique,
)

import procwire
from procwire import (
    Barrier,
    BoundedSemaphore,
    BrokenBarrierError,
    Condition,
    Event,
    Lock,
    RLock,
    SegmentError,
    Semaphore,
)

pytestmark = pytest.mark.timeout(120)


def _elapsed(fn, *args, **kw):
    t0 = time.monotonic()
    r = fn(*args, **kw)
    return r, time.monotonic() - t0


# ---------------------------------------------------------------- semaphore


def test_semaphore_counts_like_multiprocessing():
    for sem in (Semaphore(3), mp.Semaphore(3)):
        assert [sem.acquire() for _ in range(3)] == [True] * 3
        assert sem.acquire(False) is False
        r, dt = _elapsed(sem.acquire, timeout=0.2)
        assert r is False and 0.15 < dt < 5
        sem.release()
        assert sem.get_value() == 1
        with sem:
            assert sem.get_value() == 0
        assert sem.get_value() == 1


def test_semaphore_bad_values():
    with pytest.raises(ValueError):
        Semaphore(-1)
    # multiprocessing raises OSError(EINVAL) here, by accident of sem_open;
    # procwire raises threading.Semaphore's ValueError.
    with pytest.raises(OSError):
        mp.Semaphore(-1)
    with pytest.raises(TypeError):
        Semaphore("1")
    with pytest.raises(TypeError):
        Semaphore(1).acquire(timeout="x")


def test_bounded_semaphore():
    b = BoundedSemaphore(2)
    b.acquire()
    b.release()
    with pytest.raises(ValueError, match="released too many times"):
        b.release()
    with pytest.raises(ValueError):
        mp.BoundedSemaphore(2).release()
    z = BoundedSemaphore(0)
    assert z.acquire(False) is False
    with pytest.raises(ValueError):
        z.release()
    s = Semaphore(0)
    s.release()
    s.release()                       # unbounded: fine
    assert s.get_value() == 2
    assert s.statistics()["value"] == 2


def test_semaphore_attach_checks_boundedness():
    name = unique("sem")
    s = Semaphore(1, name=name)
    with pytest.raises(SegmentError, match="not a BoundedSemaphore"):
        BoundedSemaphore.attach(name)
    s.close()


def _sem_worker(sem, inside, peak, lock, n):
    for _ in range(n):
        with sem:
            with lock:
                inside.value += 1
                peak.value = max(peak.value, inside.value)
            with lock:
                inside.value -= 1


def test_semaphore_limits_concurrency_across_processes(ctx):
    sem, lock = Semaphore(2), Lock()
    inside, peak = procwire.RawValue("i", 0), procwire.RawValue("i", 0)
    procs = [ctx.Process(target=_sem_worker, args=(sem, inside, peak, lock, 500))
             for _ in range(3)]
    for p in procs:
        p.start()
    join_all(procs, 60)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    assert 1 <= peak.value <= 2
    assert sem.get_value() == 2


def _release_after_wait(sem, ev):
    ev.wait(30)
    sem.release()


def test_semaphore_released_by_another_process(ctx):
    sem, ev = Semaphore(0), Event()
    p = ctx.Process(target=_release_after_wait, args=(sem, ev))
    p.start()
    ev.set()
    assert sem.acquire(timeout=30)
    join_all([p])


# -------------------------------------------------------------------- event


def test_event_like_multiprocessing():
    for ev in (Event(), mp.Event()):
        assert ev.is_set() is False
        r, dt = _elapsed(ev.wait, 0.2)
        assert r is False and 0.15 < dt < 5
        assert ev.wait(0) is False
        ev.set()
        assert ev.is_set() and ev.wait() is True and ev.wait(0) is True
        ev.set()
        ev.clear()
        assert ev.is_set() is False


def _set_event(ev, go):
    go.wait(30)
    ev.set()


def test_event_across_processes(ctx):
    ev, go = Event(), Event()
    p = ctx.Process(target=_set_event, args=(ev, go))
    p.start()
    go.set()
    assert ev.wait(30) is True
    join_all([p])
    assert ev.statistics()["sets"] >= 1


def test_event_wait_sees_a_set_that_was_cleared_at_once():
    ev = Event()
    waiting = threading.Event()
    result = []

    def waiter():
        waiting.set()
        result.append(ev.wait(30))

    t = threading.Thread(target=waiter)
    t.start()
    assert waiting.wait(10)
    deadline = time.monotonic() + 10
    while ev.statistics()["waiters"] == 0 and time.monotonic() < deadline:
        time.sleep(0.001)            # polling a counter with a deadline, not a stand-in sleep
    ev.set()
    ev.clear()
    t.join(30)
    assert result == [True]


def test_event_by_name_from_unrelated_process():
    name = unique("ev")
    ev = Event(name=name)
    out = run_py(f"import procwire; e = procwire.Event.attach({name!r}); e.set()")
    assert out.returncode == 0, out.stderr
    assert ev.is_set()
    ev.close()


# ---------------------------------------------------------------- condition


def test_condition_wait_notify_in_threads():
    cond = Condition()
    items = []

    def consumer(out):
        with cond:
            assert cond.wait_for(lambda: items, timeout=30)
            out.append(items.pop())

    got = []
    ts = [threading.Thread(target=consumer, args=(got,)) for _ in range(3)]
    for t in ts:
        t.start()
    for i in range(3):
        with cond:
            items.append(i)
            cond.notify()
    for t in ts:
        t.join(30)
    assert sorted(got) == [0, 1, 2]


def test_condition_timeouts_and_assertions():
    for cond in (Condition(), mp.Condition()):
        with pytest.raises(AssertionError):
            cond.wait(0.01)
        with pytest.raises(AssertionError):
            cond.notify()
        with cond:
            r, dt = _elapsed(cond.wait, 0.2)
            assert r is False and 0.15 < dt < 5
            assert cond.wait_for(lambda: False, timeout=0.1) is False
            cond.notify_all()
    with pytest.raises(TypeError):
        Condition(threading.Lock())


def test_condition_with_rlock_held_twice():
    lock = RLock()
    cond = Condition(lock)
    with cond:
        with cond:
            assert cond.wait(0.05) is False
            assert lock._count() == 2
    assert lock._count() == 0


def _notify_when_ready(cond, flag):
    with cond:
        flag.value = 1
        cond.notify_all()


def test_condition_across_processes(ctx):
    cond = Condition()
    flag = procwire.RawValue("i", 0)
    with cond:
        p = ctx.Process(target=_notify_when_ready, args=(cond, flag))
        p.start()
        assert cond.wait_for(lambda: flag.value == 1, timeout=30)
    join_all([p])


def test_named_condition_and_its_lock_by_name():
    name = unique("cond")
    cond = Condition(name=name)
    out = run_py(f"""
import procwire
c = procwire.Condition.attach({name!r})
with c:
    c.notify_all()
    print(c.get_lock().statistics()["locked"])
""")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True"
    lk = Lock(name=unique("condlock"))
    c2 = Condition(lk, name=unique("cond2"))
    c3 = Condition.attach(c2.name)
    with c2:
        assert c3.get_lock().statistics()["locked"]
    with pytest.raises(ValueError, match="named lock"):
        Condition(Lock(), name=unique("cond3"))
    for o in (c3, c2, lk, cond):
        o.close()


# ------------------------------------------------------------------ barrier


def test_barrier_like_threading():
    b = Barrier(3, timeout=30)
    assert (b.parties, b.n_waiting, b.broken) == (3, 0, False)
    results = []
    ts = [threading.Thread(target=lambda: results.append(b.wait())) for _ in range(3)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(30)
    assert sorted(results) == [0, 1, 2]
    assert b.n_waiting == 0


def test_barrier_timeout_breaks_it():
    b = Barrier(2)
    t0 = time.monotonic()
    with pytest.raises(BrokenBarrierError):
        b.wait(0.2)
    assert 0.15 < time.monotonic() - t0 < 5
    assert b.broken
    with pytest.raises(BrokenBarrierError):
        b.wait(0.2)
    b.reset()
    assert not b.broken
    assert procwire.BrokenBarrierError is threading.BrokenBarrierError


def test_barrier_abort_releases_waiters():
    b = Barrier(3)
    errors = []

    def waiter():
        try:
            b.wait(30)
        except BrokenBarrierError as e:
            errors.append(e)

    ts = [threading.Thread(target=waiter) for _ in range(2)]
    for t in ts:
        t.start()
    deadline = time.monotonic() + 10
    while b.n_waiting < 2 and time.monotonic() < deadline:
        time.sleep(0.001)            # polling with a deadline
    b.abort()
    for t in ts:
        t.join(30)
    assert len(errors) == 2


def test_barrier_action_runs_once_and_errors_break():
    calls = []
    b = Barrier(2, action=lambda: calls.append(1))
    t = threading.Thread(target=b.wait, args=(30,))
    t.start()
    b.wait(30)
    t.join(30)
    assert calls == [1]

    def boom():
        raise KeyError("boom")

    b2 = Barrier(1, action=boom)
    with pytest.raises(KeyError):
        b2.wait()
    assert b2.broken


def test_barrier_bad_input():
    with pytest.raises(ValueError):
        Barrier(0)
    with pytest.raises(TypeError):
        Barrier("2")
    with pytest.raises(TypeError):
        Barrier(2, action=3)


def _barrier_party(b, out, i):
    out[i] = b.wait(30) + 1


def test_barrier_across_processes(ctx):
    b = Barrier(3)
    out = procwire.RawArray("i", 3)
    procs = [ctx.Process(target=_barrier_party, args=(b, out, i)) for i in range(2)]
    for p in procs:
        p.start()
    out[2] = b.wait(30) + 1
    join_all(procs)
    assert sorted(out[:]) == [1, 2, 3]


def _die_before_barrier(b):
    os._exit(3)


def test_barrier_dead_party_recovery_by_abort():
    """A party that dies before arriving: the parent sees it (sentinel) and
    aborts, which releases the survivor with BrokenBarrierError."""
    ctx = mp.get_context("fork")
    b = Barrier(2)
    dead = ctx.Process(target=_die_before_barrier, args=(b,))
    dead.start()
    dead.join(30)
    assert dead.exitcode == 3
    threading.Timer(0.2, b.abort).start()
    t0 = time.monotonic()
    with pytest.raises(BrokenBarrierError):
        b.wait()                     # would wait forever without the abort
    assert time.monotonic() - t0 < 10


def test_barrier_by_name():
    name = unique("bar")
    b = Barrier(2, name=name)
    proc = popen_py(f"import procwire; b = procwire.Barrier.attach({name!r}); print(b.wait(30))")
    try:
        mine = b.wait(30)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
        proc.wait(10)
    assert proc.returncode == 0, err
    assert {mine, int(out)} == {0, 1}
    b.close()


def test_a_segment_of_the_retired_native_barrier_kind_is_refused_by_name():
    """Kind 10 was the native Barrier's segment; it is never reused, and a segment
    of it (left by an earlier procwire) is refused with a message that says so."""
    import mmap

    from procwire import _core
    from procwire._segment import path_of
    name = unique("oldbar")
    lock = Lock(name=name)
    try:
        with open(path_of(name), "r+b") as f, mmap.mmap(f.fileno(), 0) as m:
            m[12:16] = (10).to_bytes(4, "little")  # pw_header.kind
            with pytest.raises(SegmentError, match="native Barrier of an earlier procwire"):
                _core.inspect(m)
        for opener in (Lock.attach, Barrier.attach, Condition.attach):
            with pytest.raises(SegmentError, match="native Barrier"):
                opener(name)
    finally:
        lock.close()


# ------------------------------------------------------------ pickling, misc


@pytest.mark.parametrize("make", [Semaphore, BoundedSemaphore, Event, Condition,
                                  lambda **kw: Barrier(2, **kw)])
def test_named_objects_pickle_and_unlink(make):
    name = unique("pk")
    obj = make(name=name)
    assert os.path.exists(f"/dev/shm/procwire.{name}")
    clone = pickle.loads(pickle.dumps(obj))
    assert clone.statistics()
    assert repr(obj)
    clone.close()
    obj.close()
    assert not os.path.exists(f"/dev/shm/procwire.{name}")


def test_anonymous_objects_refuse_plain_pickle():
    for obj in (Semaphore(), Event(), Condition(), Barrier(2)):
        with pytest.raises(RuntimeError, match="name="):
            pickle.dumps(obj)


# ------------------------------------------------------------------ Ctrl-C


@pytest.mark.parametrize("what", ["semaphore", "event", "condition", "barrier"])
def test_ctrl_c_interrupts_blocking_waits(what):
    sem, ev, cond, bar = Semaphore(0), Event(), Condition(), Barrier(2)
    calls = {
        "semaphore": sem.acquire,
        "event": ev.wait,
        "condition": lambda: cond.__enter__() and cond.wait(),
        "barrier": bar.wait,
    }
    interrupt_main_after(0.2)
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        calls[what]()
    assert time.monotonic() - t0 < 3
    if what == "condition":
        assert cond.get_lock()._is_mine()   # re-acquired before raising, as threading does
        cond.release()
