"""Lock and RLock: the multiprocessing API, processes, names, owner death, Ctrl-C."""
from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import random
import signal
import threading
import time
import warnings

import pytest
from synchelpers import (
    collect_before_leak_check,  # noqa: F401  (autouse)
    interrupt_main_after,
    join_all,
    run_py,
    unique,
)

import procwire
from procwire import Lock, OwnerDiedWarning, RLock, SegmentError

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(params=[Lock, RLock])
def lock_cls(request):
    return request.param


# ---------------------------------------------------------------- one process


def test_acquire_release_and_context_manager(lock_cls):
    lock = lock_cls()
    assert lock.acquire() is True
    assert lock.statistics()["locked"]
    assert lock.statistics()["holder_pid"] == os.getpid()
    lock.release()
    assert not lock.statistics()["locked"]
    with lock as entered:
        assert entered is True
        assert lock._is_mine()
    assert not lock._is_mine()
    assert lock.acquire(block=False) is True
    lock.release()
    assert lock.acquire(True, None) is True
    lock.release()


def test_lock_is_not_reentrant_and_times_out():
    lock = Lock()
    lock.acquire()
    assert lock.acquire(False) is False          # as multiprocessing.Lock
    t0 = time.monotonic()
    assert lock.acquire(timeout=0.2) is False
    assert 0.15 < time.monotonic() - t0 < 5
    assert lock.acquire(True, -1) is False       # negative timeout counts as 0
    with pytest.raises(RuntimeError, match="already holds"):
        lock.acquire()                           # would deadlock forever
    lock.release()


def test_lock_contended_by_thread_times_out():
    lock = Lock()
    got = threading.Event()
    done = threading.Event()

    def hold():
        with lock:
            got.set()
            done.wait(30)

    t = threading.Thread(target=hold)
    t.start()
    assert got.wait(10)
    t0 = time.monotonic()
    assert lock.acquire(timeout=0.2) is False
    assert 0.15 < time.monotonic() - t0 < 5
    assert lock.acquire(False) is False
    # procwire's documented divergence: only the holder may release.
    with pytest.raises(RuntimeError, match="only be released by the thread"):
        lock.release()
    done.set()
    t.join(10)
    assert lock.acquire(timeout=5)
    lock.release()


def test_release_unlocked_is_valueerror_as_in_multiprocessing():
    with pytest.raises(ValueError):
        mp.Lock().release()
    with pytest.raises(ValueError, match="released too many times"):
        Lock().release()


def test_rlock_recursion_and_foreign_release():
    r = RLock()
    for depth in range(1, 6):
        assert r.acquire()
        assert r._count() == depth
    for _ in range(5):
        r.release()
    assert r._count() == 0
    with pytest.raises(AssertionError, match="not owned"):
        r.release()
    with pytest.raises(AssertionError):
        mp.RLock().release()                     # the same type as multiprocessing
    r.acquire()
    err = []

    def other():
        try:
            r.release()
        except AssertionError as e:
            err.append(e)

    t = threading.Thread(target=other)
    t.start()
    t.join(10)
    assert err
    r.release()


def test_bad_arguments():
    lock = Lock()
    with pytest.raises(TypeError):
        lock.acquire(timeout="soon")
    with pytest.raises(ValueError):
        lock.acquire(timeout=float("nan"))
    with pytest.raises(TypeError):
        lock.acquire(bogus=1)
    with pytest.raises(TypeError):
        Lock(name=3)
    with pytest.raises(ValueError):
        Lock(name="a/b")
    with pytest.raises(ValueError):
        Lock(name="")


def test_statistics_and_repr(lock_cls):
    lock = lock_cls()
    s = lock.statistics()
    for key in ("holder_pid", "holder_tid", "locked", "waiters", "owner_died", "owner_deaths",
                "contended", "depth"):
        assert hasattr(s, key)
    assert "owner=None" in repr(lock)
    with lock:
        assert "owner=this thread" in repr(lock)
    lock.close()
    assert "closed" in repr(lock)
    with pytest.raises(ValueError):
        lock.acquire()


# ----------------------------------------------------------- other processes


def _count_under_lock(lock, counter, n):
    for _ in range(n):
        with lock:
            v = counter.value
            counter.value = v + 1


def test_mutual_exclusion_across_processes(ctx, lock_cls):
    lock = lock_cls()
    counter = procwire.RawValue("q", 0)
    procs = [ctx.Process(target=_count_under_lock, args=(lock, counter, 5000)) for _ in range(2)]
    for p in procs:
        p.start()
    join_all(procs, 60)
    assert [p.exitcode for p in procs] == [0, 0]
    assert counter.value == 10000


def _hold_until(lock, held, release):
    with lock:
        held.set()
        release.wait(30)


def test_holder_in_child_is_reported(ctx):
    lock, held, release = Lock(), procwire.Event(), procwire.Event()
    p = ctx.Process(target=_hold_until, args=(lock, held, release))
    p.start()
    try:
        assert held.wait(30)
        s = lock.statistics()
        assert s["locked"] and s["holder_pid"] == p.pid
        assert lock.acquire(timeout=0.1) is False
    finally:
        release.set()
        join_all([p])
    assert lock.acquire(timeout=10)
    lock.release()


def test_anonymous_lock_cannot_be_pickled_outside_spawning():
    with pytest.raises(RuntimeError, match="name="):
        pickle.dumps(Lock())


def test_named_lock_pickles_by_name(lock_cls):
    lock = lock_cls(name=unique("pickle"))
    other = pickle.loads(pickle.dumps(lock))
    with lock:
        assert other.statistics()["locked"]
    other.close()
    lock.close()


def test_unrelated_process_attaches_by_name(lock_cls):
    name = unique("lock")
    lock = lock_cls(name=name)
    lock.acquire()
    code = f"""
import procwire, time
l = procwire.{lock_cls.__name__}.attach({name!r})
t = time.monotonic()
print(l.acquire(timeout=0.2), round(time.monotonic() - t, 1) >= 0.1)
print(l.statistics()["holder_pid"])
"""
    out = run_py(code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "True", str(os.getpid())]
    lock.release()
    out = run_py(f"import procwire\nl = procwire.{lock_cls.__name__}.attach({name!r})\n"
                 f"print(l.acquire(timeout=5)); l.release()")
    assert out.stdout.strip() == "True", out.stderr
    lock.close()
    assert not os.path.exists(f"/dev/shm/procwire.{name}")


def test_attach_errors():
    with pytest.raises(FileNotFoundError):
        Lock.attach(unique("missing"))
    name = unique("kind")
    ev = procwire.Event(name=name)
    with pytest.raises(SegmentError, match="event, not a lock"):
        Lock.attach(name)
    ev.close()
    name = unique("rl")
    lk = Lock(name=name)
    with pytest.raises(SegmentError, match="not an RLock"):
        RLock.attach(name)
    with pytest.raises(FileExistsError):
        Lock(name=name)
    lk.close()


# --------------------------------------------------------------- owner death


def _die_holding(lock, held):
    lock.acquire()
    held.set()
    time.sleep(60)  # killed long before this ends


def test_owner_death_is_reported_once_and_repaired(ctx, lock_cls):
    lock, held = lock_cls(), procwire.Event()
    p = ctx.Process(target=_die_holding, args=(lock, held))
    p.start()
    assert held.wait(30)
    os.kill(p.pid, signal.SIGKILL)
    join_all([p])
    t0 = time.monotonic()
    with pytest.warns(OwnerDiedWarning, match="died while holding"):
        assert lock.acquire(timeout=10) is True
    assert time.monotonic() - t0 < 5
    assert lock.owner_died
    assert lock.statistics()["owner_deaths"] == 1
    lock.make_consistent()
    assert not lock.owner_died
    lock.release()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with lock:                               # usable again, no new warning
            pass


def test_owner_died_stays_visible_until_made_consistent():
    lock, held = Lock(), procwire.Event()
    p = mp.get_context("fork").Process(target=_die_holding, args=(lock, held))
    p.start()
    assert held.wait(30)
    os.kill(p.pid, signal.SIGKILL)
    join_all([p])
    with pytest.warns(OwnerDiedWarning):
        lock.acquire()
    lock.release()                               # not repaired
    with lock:
        assert lock.owner_died                   # the next holder still sees it
        errors = []

        def not_the_holder():
            try:
                lock.make_consistent()
            except RuntimeError as e:
                errors.append(e)

        t = threading.Thread(target=not_the_holder)
        t.start()
        t.join(10)
        assert errors and lock.owner_died
        lock.make_consistent()
    assert not lock.owner_died


def test_owner_died_warning_as_error_does_not_keep_the_lock():
    lock, held = Lock(), procwire.Event()
    p = mp.get_context("fork").Process(target=_die_holding, args=(lock, held))
    p.start()
    assert held.wait(30)
    os.kill(p.pid, signal.SIGKILL)
    join_all([p])
    with warnings.catch_warnings():
        warnings.simplefilter("error", OwnerDiedWarning)
        with pytest.raises(OwnerDiedWarning):
            lock.acquire()
    assert not lock.statistics()["locked"]
    assert lock.owner_died
    with lock:
        lock.make_consistent()


def _pairs_forever(lock, pair, started):
    started.set()
    while True:
        with lock:
            pair[0] += 1
            pair[1] += 1


def test_sigkill_inside_the_lock_100_times():
    """A worker increments two counters together under the lock and is killed
    at a random moment, 100 times. The lock never hangs; when the kill landed
    inside the lock, owner_died says so, and the repair makes the pair equal."""
    seed = random.randrange(2**32)
    print(f"seed={seed}")
    rng = random.Random(seed)
    ctx = mp.get_context("fork")
    lock = Lock()
    pair = procwire.RawArray("q", 2)
    deaths_seen = 0
    for _ in range(100):
        started = procwire.Event()
        p = ctx.Process(target=_pairs_forever, args=(lock, pair, started))
        p.start()
        assert started.wait(30)
        time.sleep(rng.uniform(0, 0.003))       # the kill point is random on purpose
        os.kill(p.pid, signal.SIGKILL)
        join_all([p])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", OwnerDiedWarning)
            assert lock.acquire(timeout=10), "lock hung after SIGKILL"
        try:
            if lock.owner_died:
                deaths_seen += 1
                pair[1] = pair[0]                # repair: finish the half-done update
                lock.make_consistent()
            assert pair[0] == pair[1]
        finally:
            lock.release()
    assert lock.statistics()["owner_deaths"] == deaths_seen
    assert deaths_seen > 0, "no kill landed inside the lock: the test proved nothing"


# ------------------------------------------------------------------ Ctrl-C


def test_ctrl_c_interrupts_a_blocked_acquire(lock_cls):
    lock, held, done = lock_cls(), threading.Event(), threading.Event()

    def hold():
        with lock:
            held.set()
            done.wait(30)

    t = threading.Thread(target=hold)
    t.start()
    assert held.wait(10)
    try:
        interrupt_main_after(0.2)
        t0 = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            lock.acquire()
        assert time.monotonic() - t0 < 3
    finally:
        done.set()
        t.join(10)


def _hold_forever(lock, held):
    lock.acquire()
    held.set()
    time.sleep(60)


def test_ctrl_c_sent_to_the_process_interrupts_acquire():
    lock, held = Lock(), procwire.Event()
    p = mp.get_context("fork").Process(target=_hold_forever, args=(lock, held))
    p.start()
    try:
        assert held.wait(30)
        timer = threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT))
        timer.start()
        t0 = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            lock.acquire()
        assert time.monotonic() - t0 < 3
        timer.join(5)
    finally:
        p.kill()
        join_all([p])



def test_closing_a_lock_its_thread_holds_releases_it():
    # A held robust mutex sits on its thread's robust list, which glibc and the
    # kernel walk later: close() must not unmap it while it is held.
    name = unique("drop")
    lock = procwire.Lock(name=name)
    other = procwire.Lock.attach(name)
    try:
        lock.acquire()
        lock.close()
        assert other.acquire(timeout=5)
        other.release()
    finally:
        other.close()


def test_closing_a_lock_another_thread_holds_raises():
    name = unique("drop2")
    lock = procwire.Lock(name=name)
    other = procwire.Lock.attach(name)
    held, done = threading.Event(), threading.Event()

    def holder():
        lock.acquire()
        held.set()
        done.wait(30)

    t = threading.Thread(target=holder)
    t.start()
    try:
        assert held.wait(30)
        with pytest.raises(RuntimeError, match="held by another thread"):
            lock.close()
        assert not other.acquire(timeout=0.05)  # still held, still mapped
        done.set()
        t.join(30)
        # The holder thread exited holding it: the kernel reports owner death.
        with pytest.warns(procwire.OwnerDiedWarning):
            assert other.acquire(timeout=5)
        other.make_consistent()
        other.release()
        lock.close()
    finally:
        done.set()
        other.close()
