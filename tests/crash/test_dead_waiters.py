"""Sleepers killed with SIGKILL are not counted past their death (issue 9, defect 15).

For every type with a waiter count, a child blocks, is seen blocked through
statistics(), and is killed. Then:

* statistics() (and `procwire ls`, through procwire.objects) count 0 waiters;
* the operations that wake sleepers stop paying a wake-up system call after
  at most one: the first finds the dead sleeper's slot, wakes nobody, and
  reaps it. The native per-object ``wake_syscalls`` counter shows it.

The wake checks read the counter only before the kill and after the
operations: statistics() itself reaps dead sleepers, so calling it in between
would hide whether the wakers reap on their own.
"""
from __future__ import annotations

import os
import signal
import threading
import time

import pytest

import procwire
from procwire import objects

JOIN = 60
OPS = 200


def _wait_until(cond, what, timeout=JOIN):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


def _start_blocked(ctx, target, args, stats, key="waiters", n=1):
    p = ctx.Process(target=target, args=args)
    p.start()
    _wait_until(lambda: stats()[key] == n, f"{key} == {n}")
    return p


def _kill(p):
    os.kill(p.pid, signal.SIGKILL)
    p.join(JOIN)
    assert p.exitcode == -signal.SIGKILL


@pytest.fixture(autouse=True)
def _no_child_survives():
    """A failed assertion must not leave a blocked child behind."""
    yield
    import multiprocessing as mp
    for child in mp.active_children():
        child.kill()
        child.join(JOIN)


# -- Queue, SimpleQueue, JoinableQueue --------------------------------------------------

def _get(q):
    q.get()


def _put(q):
    q.put("blocked")


def _join(q):
    q.join()


def test_procwire_ls_counts_no_dead_waiter(ctx):
    name = f"deadwaiter{os.getpid()}"
    q = procwire.Queue(name=name)
    try:
        p = _start_blocked(ctx, _get, (q,), q.statistics, "consumers_waiting")
        assert objects.describe(name).waiters == 1
        _kill(p)
        # Inspection never writes to the segment: it counts live sleepers only.
        assert objects.describe(name).waiters == 0
    finally:
        q.close()


def test_many_sleepers_beyond_the_slots_are_all_woken():
    # More threads than a wait queue has slots: the extra ones are not counted
    # but still wake promptly (they share the futex and poll meanwhile).
    q = procwire.Queue()
    n = 40
    got = []
    lock = threading.Lock()

    def consumer():
        item = q.get(timeout=JOIN)
        with lock:
            got.append(item)

    threads = [threading.Thread(target=consumer) for _ in range(n)]
    try:
        for t in threads:
            t.start()
        _wait_until(lambda: q.statistics()["consumers_waiting"] >= 16, "16 sleepers counted")
        assert q.statistics()["consumers_waiting"] <= 16
        q.put_many(range(n))
        for t in threads:
            t.join(JOIN)
        assert sorted(got) == list(range(n))
        assert q.statistics()["consumers_waiting"] == 0
    finally:
        for t in threads:
            t.join(JOIN)
        q.close()


# -- Event, Semaphore, Condition, Barrier ------------------------------------------------

def _event_wait(ev):
    ev.wait()


def _sem_acquire(sem):
    sem.acquire()


def _cond_wait(cond):
    with cond:
        cond.wait()


def _barrier_wait(b):
    b.wait()


def _lock_acquire(lock):
    lock.acquire()


def _recv(conn):
    conn.recv()


# -- one body for every type whose wakers skip dead sleepers ------------------------------
# Each case: (the object whose statistics() count the sleeper, what the child
# blocks on, the child's target, the counter, the wake-up operations, extra
# checks on the final statistics, cleanup).

def _getter(cls):
    q = cls()

    def check(stats):
        assert stats.dead_waiters_reaped == 1
        assert q.get_many() == list(range(OPS))
    return q, q, _get, "consumers_waiting", lambda: [q.put(i) for i in range(OPS)], check, \
        q.close


def _putter():
    q = procwire.Queue(maxsize=1)
    q.put("full")

    def wake():
        assert q.get() == "full"
        for i in range(OPS):
            q.put(i)
            assert q.get() == i
    return q, q, _put, "producers_waiting", wake, lambda stats: None, q.close


def _joiner():
    q = procwire.JoinableQueue()
    q.put_many(range(OPS + 1))
    return (q, q, _join, "joiners_waiting", lambda: [q.task_done() for _ in range(OPS)],
            lambda stats: None, q.close)


def _event_waiter():
    ev = procwire.Event()

    def wake():
        for _ in range(OPS):
            ev.set()
            ev.clear()
    return ev, ev, _event_wait, "waiters", wake, lambda stats: None, ev.close


def _semaphore_waiter():
    sem = procwire.Semaphore(0)

    def check(stats):
        assert stats.value == OPS
    return (sem, sem, _sem_acquire, "waiters", lambda: [sem.release() for _ in range(OPS)],
            check, sem.close)


def _condition_waiter():
    cond = procwire.Condition()

    def wake():
        for _ in range(OPS):
            with cond:
                cond.notify()

    def check(stats):
        # A live waiter is still woken by notify().
        woke = threading.Event()

        def waiter():
            with cond:
                if cond.wait(JOIN):
                    woke.set()

        t = threading.Thread(target=waiter)
        t.start()
        _wait_until(lambda: cond.statistics().waiters == 1, "a live waiter")
        with cond:
            cond.notify()
        assert woke.wait(JOIN)
        t.join(JOIN)
    return cond, cond, _cond_wait, "waiters", wake, check, cond.close


def _receiver():
    a, b = procwire.Pipe()

    def check(stats):
        assert [b.recv() for _ in range(OPS)] == list(range(OPS))

    def close():
        a.close()
        b.close()
    return (b, b, _recv, "receivers_waiting", lambda: [a.send(i) for i in range(OPS)],
            check, close)


WAKE_CASES = {
    "queue-get": lambda: _getter(procwire.Queue),
    "simplequeue-get": lambda: _getter(procwire.SimpleQueue),
    "queue-put": _putter,
    "queue-join": _joiner,
    "event": _event_waiter,
    "semaphore": _semaphore_waiter,
    "condition": _condition_waiter,
    "pipe-recv": _receiver,
}


@pytest.mark.parametrize("case", list(WAKE_CASES))
def test_a_killed_sleeper_is_not_counted_and_wakers_stop_waking(ctx, case):
    obj, arg, target, key, wake, check, close = WAKE_CASES[case]()
    try:
        p = _start_blocked(ctx, target, (arg,), obj.statistics, key)
        wakes = obj.statistics().wake_syscalls
        _kill(p)
        wake()
        stats = obj.statistics()
        assert stats[key] == 0
        assert stats.wake_syscalls - wakes <= 1, stats
        check(stats)
    finally:
        close()


def _barrier():
    b = procwire.Barrier(3)
    return b, _barrier_wait, b.close


def _held_lock(cls):
    lock = cls()
    assert lock.acquire(timeout=JOIN)

    def close():
        lock.release()
        assert lock.acquire(timeout=JOIN)  # and the lock still works
        lock.release()
        lock.close()
    return lock, _lock_acquire, close


@pytest.mark.parametrize("make", [_barrier, lambda: _held_lock(procwire.Lock),
                                  lambda: _held_lock(procwire.RLock)],
                         ids=["barrier", "lock", "rlock"])
def test_a_killed_waiter_is_not_counted(ctx, make):
    obj, target, close = make()
    try:
        p = _start_blocked(ctx, target, (obj,), obj.statistics)
        _kill(p)
        assert obj.statistics().waiters == 0
    finally:
        close()


def _cond_wait_record(cond, phase, woke, i):
    """Waits once; records the phase the notifier had set when it woke us
    (read under the lock, so it names the notify that woke this waiter)."""
    with cond:
        ok = cond.wait(JOIN)
        woke[i] = phase.value if ok else -1


def _no_pending(cond, waiting):
    stats = cond.statistics()
    assert stats["waiters"] == waiting, stats
    assert stats["not_notified"] == waiting, stats  # no phantom: the dead one is not counted
    assert stats["notified_pending"] == 0, stats  # no wake-up kept for the dead one


@pytest.mark.parametrize("when", ["before", "among"])
def test_notify_n_after_a_killed_condition_waiter_wakes_exactly_n_live_waiters(ctx, when):
    """Issue 9, defect 15 in Condition.notify(n): a waiter killed while waiting
    (alone, reaped before the others come; or among live waiters, not yet
    reaped) takes no wake-up from a live waiter, and leaves none behind that
    would let a later notify(n) wake more than n."""
    cond = procwire.Condition()
    phase = procwire.RawValue("i", 0)
    woke = procwire.RawArray("i", 3)  # per live waiter: phase it woke in, 0 = asleep
    procs = []

    def start(i):
        p = ctx.Process(target=_cond_wait_record, args=(cond, phase, woke, i))
        p.start()
        procs.append(p)

    def notify(n, ph):
        with cond:
            phase.value = ph
            cond.notify(n)

    try:
        dead = _start_blocked(ctx, _cond_wait, (cond,), cond.statistics)
        if when == "before":
            _kill(dead)
            start(0)
            _wait_until(lambda: cond.statistics()["waiters"] == 1, "waiter 0 asleep")
            _no_pending(cond, 1)
            notify(2, 1)  # room for two: only the live one is there to wake
            _wait_until(lambda: woke[0] != 0, "waiter 0 woken")
            assert woke[0] == 1
            _no_pending(cond, 0)
        start(1)
        start(2)
        _wait_until(lambda: cond.statistics()["waiters"] == (2 if when == "before" else 3),
                    "two live waiters asleep")
        if when == "among":
            _kill(dead)  # not reaped yet: notify(1) itself must skip it
        notify(1, 2)
        _wait_until(lambda: woke[1] != 0 or woke[2] != 0, "one live waiter woken")
        # Exactly one: the other is still registered, not notified, and no
        # wake-up is pending for it.
        _no_pending(cond, 1)
        assert sorted(woke[1:]) == [0, 2]
        with cond:
            phase.value = 3
            cond.notify_all()
        _wait_until(lambda: woke[1] != 0 and woke[2] != 0, "the other live waiter woken")
        assert sorted(woke[1:]) == [2, 3]
        for p in procs:
            p.join(JOIN)
            assert p.exitcode == 0
        _no_pending(cond, 0)
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join(JOIN)
        cond.close()


# -- the identity rules, on slots written by hand ----------------------------------------

SLOT0 = 64 + 64  # pw_header, then struct pw_event's first line; layout.h


def _start_time(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[19])


def _identity(pid: int, start: int, ns: int | None = None) -> int:
    if ns is None:
        ns = os.stat("/proc/self/ns/pid").st_ino
    return (ns & 0x3FF) << 54 | (pid & 0x3FFFFF) << 32 | (start & 0xFFFFFFFF)


def test_a_slot_is_freed_only_when_its_process_is_certainly_gone():
    name = f"slotrules{os.getpid()}"
    ev = procwire.Event(name=name)
    path = f"/dev/shm/procwire.{name}"
    other = os.getppid()  # alive for the whole test
    fd = os.open(path, os.O_RDWR)
    try:
        def write(i, ident):
            os.pwrite(fd, ident.to_bytes(8, "little"), SLOT0 + 8 * i)

        def read(i):
            return int.from_bytes(os.pread(fd, 8, SLOT0 + 8 * i), "little")

        live = _identity(other, _start_time(other))
        reused = _identity(other, _start_time(other) + 1)        # pid reused since
        foreign = _identity(other, 12345, ns=os.stat("/proc/self/ns/pid").st_ino + 1)
        with open("/proc/sys/kernel/pid_max") as f:
            gone_pid = int(f.read()) - 1  # < 2**22; almost never in use
        while os.path.exists(f"/proc/{gone_pid}"):
            gone_pid -= 1
        gone = _identity(gone_pid, 1)
        for i, ident in enumerate((live, reused, foreign, gone)):
            write(i, ident)
        assert ev.statistics()["waiters"] == 2  # live and foreign stay counted
        assert (read(0), read(1), read(2), read(3)) == (live, 0, foreign, 0)
        assert procwire.objects.describe(name).waiters == 2
        write(0, 0)
        write(2, 0)
        assert ev.statistics()["waiters"] == 0
    finally:
        os.close(fd)
        ev.close()
