"""Random SIGKILLs of processes going to sleep, asleep and waking (issue 9, defect 15).

Workers loop on short timed waits, so they spend their time registering as
sleepers, sleeping and unregistering; the test kills them at random moments
and restarts them. Afterwards, with every worker dead: no waiter is counted,
the wakers' next operations make no wake-up system call, and a live waiter
is still woken. PROCWIRE_SLEEPER_KILLS sets the kills per type (default 60).
"""
from __future__ import annotations

import multiprocessing as mp
import os
import random
import signal
import threading
import time

import pytest

import procwire

JOIN = 60
KILLS = int(os.environ.get("PROCWIRE_SLEEPER_KILLS", 60))
WORKERS = 3


def _loop_event(ev, seed):
    rnd = random.Random(seed)
    while True:
        ev.wait(rnd.uniform(0, 0.004))


def _loop_semaphore(sem, seed):
    rnd = random.Random(seed)
    while True:
        if sem.acquire(timeout=rnd.uniform(0, 0.004)):
            sem.release()


def _loop_condition(cond, seed):
    rnd = random.Random(seed)
    while True:
        with cond:
            cond.wait(rnd.uniform(0, 0.004))


def _loop_poll(conn, seed):
    rnd = random.Random(seed)
    while True:
        conn.poll(rnd.uniform(0, 0.004))


def _loop_queue(q, seed):
    rnd = random.Random(seed)
    while True:
        try:
            q.get(timeout=rnd.uniform(0, 0.004))
        except procwire.Empty:
            pass


def _event():
    ev = procwire.Event()
    return ev, ev, _loop_event, ev.statistics, "waiters", lambda: (ev.set(), ev.clear()), ev.close


def _semaphore():
    sem = procwire.Semaphore(0)
    return (sem, sem, _loop_semaphore, sem.statistics, "waiters", sem.release, sem.close)


def _condition():
    cond = procwire.Condition()

    def notify():
        with cond:
            cond.notify()

    return cond, cond, _loop_condition, cond.statistics, "waiters", notify, cond.close


def _pipe():
    a, b = procwire.Pipe()

    def close():
        a.close()
        b.close()

    return ((a, b), b, _loop_poll, b.statistics, "receivers_waiting",
            lambda: a.send_bytes(b"x"), close)


def _queue():
    q = procwire.Queue()
    return q, q, _loop_queue, q.statistics, "consumers_waiting", lambda: q.put(b"x"), q.close


def _live_waiter_is_woken(kind, obj):
    """A thread of this process waits; one wake operation must reach it."""
    # Take back what the 50 wake operations left, so the waiter really sleeps.
    if kind == "semaphore":
        while obj.acquire(False):
            pass
    elif kind == "pipe":
        while obj[1].poll(0):
            obj[1].recv_bytes()
    elif kind == "queue":
        while not obj.empty():
            obj.get_many(block=False)
    woke = threading.Event()
    if kind == "event":
        target = lambda: obj.wait(JOIN) and woke.set()  # noqa: E731
        wake = obj.set
    elif kind == "semaphore":
        target = lambda: obj.acquire(timeout=JOIN) and woke.set()  # noqa: E731
        wake = obj.release
    elif kind == "condition":
        def target():
            with obj:
                if obj.wait(JOIN):
                    woke.set()

        def wake():
            with obj:
                obj.notify()
    elif kind == "pipe":
        a, b = obj
        target = lambda: b.poll(JOIN) and woke.set()  # noqa: E731
        wake = lambda: a.send_bytes(b"y")  # noqa: E731
    else:
        target = lambda: obj.get(timeout=JOIN) and woke.set()  # noqa: E731
        wake = lambda: obj.put(b"z")  # noqa: E731
    t = threading.Thread(target=target)
    t.start()
    stats, key = {"pipe": (obj[1].statistics if kind == "pipe" else None, "receivers_waiting"),
                  "queue": (None, "consumers_waiting")}.get(kind, (None, "waiters"))
    stats = stats or obj.statistics
    deadline = time.monotonic() + JOIN
    while stats()[key] != 1:
        assert time.monotonic() < deadline, "the live waiter never slept"
        time.sleep(0.005)
    wake()
    assert woke.wait(JOIN), "a live waiter was not woken"
    t.join(JOIN)


KINDS = {"event": _event, "semaphore": _semaphore, "condition": _condition, "pipe": _pipe,
         "queue": _queue}


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # OwnerDiedWarning: killed in a Condition
@pytest.mark.parametrize("kind", list(KINDS))
def test_random_kills_of_sleepers_leave_no_phantom_waiter(kind, capsys):
    seed = int(os.environ.get("PROCWIRE_CHAOS_SEED", random.randrange(2**32)))
    print(f"sleeper chaos kind={kind} seed={seed} kills={KILLS}")
    rnd = random.Random(seed)
    ctx = mp.get_context("fork")  # many restarts; start methods are covered elsewhere
    obj, arg, loop, stats, key, wake, close = KINDS[kind]()
    seeds = iter(range(seed, seed + 10**6))
    workers = [ctx.Process(target=loop, args=(arg, next(seeds))) for _ in range(WORKERS)]
    # Read before the chaos: statistics() reaps dead sleepers itself, and the
    # point below is that the wakers do it on their own. The workers only wait,
    # so nothing makes a wake-up system call meanwhile.
    before = stats().wake_syscalls
    try:
        for p in workers:
            p.start()
        for _ in range(KILLS):
            time.sleep(rnd.uniform(0, 0.006))  # chaos timing, not synchronisation
            i = rnd.randrange(WORKERS)
            os.kill(workers[i].pid, signal.SIGKILL)
            workers[i].join(JOIN)
            workers[i] = ctx.Process(target=loop, args=(arg, next(seeds)))
            workers[i].start()
        for p in workers:
            os.kill(p.pid, signal.SIGKILL)
            p.join(JOIN)
            assert p.exitcode == -signal.SIGKILL
        # The wakers reap on their own: at most one wake-up system call for
        # all the dead sleepers, whatever their number.
        for _ in range(50):
            wake()
        after = stats()
        assert after[key] == 0, after
        assert after["wake_syscalls"] - before <= 1, after
        _live_waiter_is_woken(kind, obj)
    finally:
        for p in workers:
            if p.is_alive():
                p.kill()
                p.join(JOIN)
        close()
