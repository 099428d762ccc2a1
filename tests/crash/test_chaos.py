"""Random SIGKILL of the participants of every mechanism (issue 9's chaos runs).

Each test keeps a few worker processes busy on one object, kills a random one
at a random moment `chaos.kills` times (restarting it), then stops the rest
and checks: the survivors finish within a timeout; nothing was duplicated or
corrupted; at most the victims' own in-flight work was lost; the counts agree.
See chaoshelpers for sizes and seeds (``--full-chaos`` for the full run).
"""
from __future__ import annotations

import dataclasses
import os
import threading
import warnings

import pytest
from chaoshelpers import (  # noqa: F401 (chaos: a fixture)
    FORK,
    JOIN,
    chaos,
    delivered_by_tag,
    join_survivors,
    kill,
    missing,
    pause,
    payload,
    reap_all,
)

import procwire
from procwire import BrokenBarrierError, Empty, OwnerDiedWarning

pytestmark = pytest.mark.chaos


def _quiet() -> None:
    # A worker that takes a lock from a killed holder is warned; that is the point here.
    warnings.simplefilter("ignore", OwnerDiedWarning)


def _run(chaos, label, make, workers, on_kill=None, max_pause=0.01):
    """Kill a random worker chaos.kills times, restarting it; returns the kill count per slot."""
    rnd = chaos.rng(label)
    procs = [make(i) for i in range(workers)]
    for p in procs:
        p.start()
    kills = [0] * workers
    try:
        for _ in range(chaos.kills):
            pause(rnd, max_pause)
            i = rnd.randrange(workers)
            kill(procs[i])
            kills[i] += 1
            if on_kill:
                on_kill(i)
            procs[i] = make(i)
            procs[i].start()
    except BaseException:
        reap_all(procs)
        raise
    return procs, kills


# -- Pipe: several senders, streamed messages ---------------------------------------

def _pipe_sender(w, tag, stop):
    seq = 0
    while not stop.value:
        w.send((tag, seq, payload(tag, seq, big=True)))
        seq += 1


def test_pipe_senders_killed_at_random(chaos):
    r, w = procwire.Pipe(duplex=False, capacity=1 << 16)
    stop = procwire.RawValue("b", 0)
    received: list[tuple[int, int, bool]] = []
    errors: list[BaseException] = []
    tags = iter(range(1, 10**9))

    def receive():
        try:
            while True:
                try:
                    tag, seq, data = r.recv(timeout=JOIN)
                except EOFError:
                    return
                received.append((tag, seq, data == payload(tag, seq, big=True)))
        except BaseException as exc:  # reported by the test below
            errors.append(exc)

    receiver = threading.Thread(target=receive)
    receiver.start()
    procs = []
    try:
        procs, _ = _run(chaos, "pipe", lambda i: FORK.Process(
            target=_pipe_sender, args=(w, next(tags), stop)), workers=3)
        stop.value = 1
        join_survivors(procs, "pipe senders")
        w.close()  # the last handle of the sending end: the receiver gets EOF
        receiver.join(JOIN)
        assert not receiver.is_alive(), "the receiver got no EOF after every sender ended"
    finally:
        stop.value = 1
        reap_all(procs)
        w.close()
        receiver.join(JOIN)
        r_stats = r.statistics()
        r.close()
    assert not errors, f"the receiver failed: {errors!r}"
    delivered_by_tag(received)  # something, nothing corrupt, nothing twice
    by_tag: dict[int, list[int]] = {}
    for tag, seq, _ in received:
        by_tag.setdefault(tag, []).append(seq)
    for tag, seqs in by_tag.items():
        # One sender sends in order and the pipe keeps order: a gap would be a
        # lost message that was not the victim's last.
        assert seqs == list(range(len(seqs))), f"sender {tag}: messages lost or reordered"
    streamed = r_stats["streamed_received"]
    print(f"pipe: kills={chaos.kills} messages={len(received)} streamed={streamed} "
          f"partial_dropped={r_stats['partial_dropped']}")
    assert streamed > 0, "no streamed message was exercised"


# -- JoinableQueue: task_done / join ----------------------------------------------

def _jq_producer(q, tag, stop):
    seq = 0
    while not stop.value:
        q.put((tag, seq, payload(tag, seq)))
        seq += 1


def _jq_consumer(q, results):
    while True:
        item = q.get()
        if item is None:
            q.task_done()
            return
        tag, seq, data = item
        results.put((tag, seq, data == payload(tag, seq)))
        q.task_done()


def test_joinable_queue_producers_and_consumers_killed_at_random(chaos):
    q = procwire.JoinableQueue(maxsize=40, capacity=1 << 16)
    results = procwire.Queue(capacity=64 << 20)
    stop = procwire.RawValue("b", 0)
    tags = iter(range(1, 10**9))
    delivered: list[tuple[int, int, bool]] = []
    consumer_kills = 0

    def make(i):
        if i < 2:
            return FORK.Process(target=_jq_producer, args=(q, next(tags), stop))
        return FORK.Process(target=_jq_consumer, args=(q, results))

    def on_kill(i):
        nonlocal consumer_kills
        consumer_kills += i >= 2
        try:
            delivered.extend(results.get_many(block=False))
        except Empty:
            pass

    procs = []
    try:
        procs, _ = _run(chaos, "joinable", make, workers=4, on_kill=on_kill)
        stop.value = 1
        join_survivors(procs[:2], "producers")
        q.put_many([None, None], timeout=JOIN)
        join_survivors(procs[2:], "consumers")
        while True:
            try:
                delivered.extend(results.get_many(block=False))
            except Empty:
                break
        stats = q.statistics()
        unfinished = stats["unfinished_tasks"]
        assert q.qsize() == 0
        # Each killed consumer leaves at most its one message un-done.
        assert 0 <= unfinished <= consumer_kills, (unfinished, consumer_kills)
        assert q.join(timeout=0.05) is (unfinished == 0)
        for _ in range(unfinished):
            q.task_done()
        assert q.join(timeout=JOIN) is True
        with pytest.raises(ValueError):
            q.task_done()
    finally:
        stop.value = 1
        reap_all(procs)
        q.close()
        results.close()
    lost = missing(delivered_by_tag(delivered))
    assert lost <= consumer_kills, f"{lost} lost, {consumer_kills} consumers killed"
    print(f"joinable queue: kills={chaos.kills} delivered={len(delivered)} lost={lost} "
          f"unfinished_after_kills={unfinished}")


# -- Lock, RLock, Value under get_lock() ---------------------------------------------

def _lock_worker(lock, recursive, inside, total, mine, slot, violations, repairs, stop):
    _quiet()
    me = os.getpid()
    while not stop.value:
        if not lock.acquire(timeout=JOIN):
            violations.value += 1000  # a survivor could not get the lock: a hang
            return
        if recursive:
            lock.acquire()
        try:
            if lock.owner_died:
                inside.value = 0  # the killed holder's mark: repair, then confirm
                repairs.value += 1
                lock.make_consistent()
            if inside.value != 0:
                violations.value += 1  # someone else is inside: no mutual exclusion
            inside.value = me
            total.value += 1
            mine[slot] += 1
            if inside.value != me:
                violations.value += 1
            inside.value = 0
        finally:
            if recursive:
                lock.release()
            lock.release()


@pytest.mark.parametrize("kind", ["Lock", "RLock"])
def test_lock_holders_killed_at_random(chaos, kind):
    lock = getattr(procwire, kind)()
    inside, total, violations, repairs, stop = (procwire.RawValue("q", 0) for _ in range(5))
    mine = procwire.RawArray("q", 3)
    procs = []
    try:
        procs, _kills = _run(chaos, kind, lambda i: FORK.Process(
            target=_lock_worker,
            args=(lock, kind == "RLock", inside, total, mine, i, violations, repairs, stop)),
            workers=3)
        stop.value = 1
        join_survivors(procs, kind)
        with warnings.catch_warnings():
            _quiet()
            assert lock.acquire(timeout=JOIN)
        if lock.owner_died:
            lock.make_consistent()
        lock.release()
        stats = lock.statistics()
    finally:
        stop.value = 1
        reap_all(procs)
        lock.close()
    assert violations.value == 0, f"{violations.value} mutual-exclusion violations or hangs"
    done = sum(mine)
    assert done > 0
    # A victim killed between its two increments leaves total one ahead.
    assert 0 <= total.value - done <= chaos.kills, (total.value, done)
    assert repairs.value <= stats["owner_deaths"], (repairs.value, stats)
    print(f"{kind}: kills={chaos.kills} critical_sections={total.value} "
          f"owner_deaths={stats['owner_deaths']}")


def _value_worker(v, mine, slot, stop):
    _quiet()
    lock = v.get_lock()
    while not stop.value:
        with lock:
            if lock.owner_died:
                lock.make_consistent()
            v.value += 1
            mine[slot] += 1


def test_value_under_get_lock_killed_at_random(chaos):
    v = procwire.Value("q", 0)
    mine = procwire.RawArray("q", 3)
    stop = procwire.RawValue("b", 0)
    procs = []
    try:
        procs, _ = _run(chaos, "value", lambda i: FORK.Process(
            target=_value_worker, args=(v, mine, i, stop)), workers=3)
        stop.value = 1
        join_survivors(procs, "Value writers")
        done, value = sum(mine), v.value
    finally:
        stop.value = 1
        reap_all(procs)
    # value < done would be a lost update; value - done > kills an invented one.
    assert 0 <= value - done <= chaos.kills, (value, done)
    print(f"Value: kills={chaos.kills} increments={value}")


# -- Semaphore, BoundedSemaphore ------------------------------------------------------

SEGMENT = 50  # kills between two top-ups of a semaphore (see the test)


def _guarded(guard, counted, count):
    """Take `guard` (a Lock around the holder count); repair the count if its holder died."""
    assert guard.acquire(timeout=JOIN), "the guard lock is stuck"
    if guard.owner_died:
        count.value = sum(counted)  # flags and count change together under the guard
        guard.make_consistent()


def _sem_worker(sem, guard, held, counted, count, slot, violations, stop, limit):
    # held[slot]: this worker has a permit (set right after acquire, cleared
    # right before release: the windows where a victim's permit is lost for
    # good are a few bytecodes). counted[slot]/count: the holders, under guard.
    _quiet()
    while not stop.value:
        if not sem.acquire(timeout=0.5):
            continue  # permits may be lost with killed holders; keep trying
        held[slot] = 1
        _guarded(guard, counted, count)
        count.value += 1
        counted[slot] = 1
        if count.value > limit:
            violations.value += 1
        guard.release()
        _guarded(guard, counted, count)
        count.value -= 1
        counted[slot] = 0
        guard.release()
        held[slot] = 0
        sem.release()


@pytest.mark.parametrize("kind", ["Semaphore", "BoundedSemaphore"])
def test_semaphore_holders_killed_at_random(chaos, kind):
    limit, workers = 2, 4
    sem = getattr(procwire, kind)(limit)
    guard = procwire.Lock()
    held, counted = procwire.RawArray("b", workers), procwire.RawArray("b", workers)
    count, violations, stop = (procwire.RawValue("q", 0) for _ in range(3))
    returned = 0

    def on_kill(i):
        # The parent supervises its workers: a victim that held a permit gets
        # it returned, as a supervisor watching sentinels would.
        nonlocal returned
        with warnings.catch_warnings():
            _quiet()
            _guarded(guard, counted, count)
        if counted[i]:
            counted[i] = 0
            count.value -= 1
        guard.release()
        if held[i]:
            held[i] = 0
            sem.release()
            returned += 1

    procs = []
    topped_up = 0
    try:
        # In segments of SEGMENT kills: a permit taken by a victim in the
        # instant between its acquire and its flag is lost for good (as in
        # multiprocessing), so after each segment the workers stop, the
        # invariants are checked and the semaphore is topped up again.
        for seg, done in enumerate(range(0, chaos.kills, SEGMENT)):
            part = dataclasses.replace(chaos, kills=min(SEGMENT, chaos.kills - done))
            stop.value = 0
            procs, _ = _run(part, f"{kind}-{seg}", lambda i: FORK.Process(
                target=_sem_worker,
                args=(sem, guard, held, counted, count, i, violations, stop, limit)),
                workers=workers, on_kill=on_kill)
            stop.value = 1
            join_survivors(procs, kind)
            stats = sem.statistics()
            assert 0 <= stats["value"] <= limit and not any(held) and count.value == 0, (
                stats, list(held), count.value)
            for _ in range(limit - stats["value"]):
                sem.release()
                topped_up += 1
        stats = sem.statistics()
    finally:
        stop.value = 1
        reap_all(procs)
        sem.close()
        guard.close()
    print(f"{kind}: kills={chaos.kills} permits_returned_for_victims={returned} "
          f"permits_lost_and_topped_up={topped_up} waiters_left={stats['waiters']}")
    assert violations.value == 0, f"more than {limit} holders at once, {violations.value} times"
    # Topped up after the last segment: whole again, and never above its bound.
    assert stats["value"] == limit, stats
    assert stats["waiters"] == 0, f"waiter count leaked by killed waiters: {stats}"


# -- Event, Condition, Barrier: rounds of one-shot waiters ----------------------------

def _event_waiter(ev, ready, acks):
    ready.release()
    if ev.wait(JOIN):
        acks.release()


def _cond_waiter(cond, ready, acks):
    _quiet()
    with cond:
        ready.release()  # while holding the lock: once the parent has it, we are in wait()
        woke = cond.wait(JOIN)
    if woke:
        acks.release()


def _barrier_party(barrier, results):
    try:
        results.put(("ok", barrier.wait(timeout=JOIN)))
    except BrokenBarrierError:
        results.put(("broken", -1))


def _rounds(chaos, label, waiters, start_round, finish_round) -> int:
    """Rounds of `waiters` fresh processes; one is killed at random in each.

    Runs until chaos.kills processes were really killed (a victim may have
    finished before its kill, e.g. when a barrier tripped); returns the rounds.
    """
    rnd = chaos.rng(label)
    killed = n = 0
    while killed < chaos.kills:
        assert n < 3 * chaos.kills + 10, f"only {killed} of {n} victims were still running"
        procs = [start_round(i) for i in range(waiters)]
        try:
            pause(rnd, 0.002)
            victim = rnd.randrange(waiters)
            killed += kill(procs[victim], finished_ok=True)
            survivors = procs[:victim] + procs[victim + 1:]
            finish_round(survivors, n)
        finally:
            reap_all(procs)
        n += 1
    return n


def test_event_waiters_killed_at_random(chaos):
    ev = procwire.Event()
    ready, acks = procwire.Semaphore(0), procwire.Semaphore(0)
    waiters = 3

    def start(i):
        p = FORK.Process(target=_event_waiter, args=(ev, ready, acks))
        p.start()
        return p

    def finish(survivors, n):
        ev.set()
        join_survivors(survivors, f"Event waiters, round {n}")
        for _ in survivors:
            assert acks.acquire(timeout=JOIN), f"round {n}: a woken waiter saw no set()"
        while ready.acquire(timeout=0):
            pass
        ev.clear()

    try:
        _rounds(chaos, "event", waiters, start, finish)
        stats = ev.statistics()
    finally:
        ev.close()
        ready.close()
        acks.close()
    print(f"Event: kills={chaos.kills} wake-ups={chaos.kills * (waiters - 1)} "
          f"waiters_left={stats['waiters']}")
    # Checked last, so that a leak does not hide the other properties' results.
    assert stats["waiters"] == 0, f"waiter count leaked by killed waiters: {stats}"


def test_condition_waiters_killed_at_random(chaos):
    cond = procwire.Condition()
    waiters = 3
    ready = [procwire.Semaphore(0) for _ in range(waiters)]
    acks = procwire.Semaphore(0)
    slot_of = {}

    def start(i):
        p = FORK.Process(target=_cond_waiter, args=(cond, ready[i], acks))
        p.start()
        slot_of[p.pid] = i
        return p

    def finish(survivors, n):
        for p in survivors:
            assert ready[slot_of[p.pid]].acquire(timeout=JOIN), f"round {n}: a waiter never started"
        # Holding the lock now means every survivor is inside wait(); all of
        # them must be woken by notify(len(survivors)): a killed waiter must not
        # swallow a notification.
        with warnings.catch_warnings():
            _quiet()
            assert cond.acquire(timeout=JOIN), f"round {n}: the condition's lock is stuck"
        try:
            cond.notify(len(survivors))
        finally:
            cond.release()
        join_survivors(survivors, f"Condition waiters, round {n}")
        for _ in survivors:
            assert acks.acquire(timeout=JOIN)
        for sem in ready:
            while sem.acquire(timeout=0):
                pass

    try:
        _rounds(chaos, "condition", waiters, start, finish)
        stats = cond.statistics()
    finally:
        cond.close()
        for sem in [*ready, acks]:
            sem.close()
    print(f"Condition: kills={chaos.kills} waiters_left={stats['waiters']}")
    assert stats["waiters"] == 0, f"waiter count leaked by killed waiters: {stats}"


def test_barrier_parties_killed_at_random(chaos):
    parties = 3
    barrier = procwire.Barrier(parties)
    results = procwire.Queue()
    outcomes = {"tripped": 0, "broken": 0}

    def start(i):
        p = FORK.Process(target=_barrier_party, args=(barrier, results))
        p.start()
        return p

    def finish(survivors, n):
        # A supervisor that sees a party die aborts the barrier (README).
        barrier.abort()
        join_survivors(survivors, f"Barrier parties, round {n}")
        got = [results.get(timeout=JOIN) for _ in survivors]
        while True:  # a victim that finished before its kill reported too
            try:
                got.append(results.get(timeout=0))
            except Empty:
                break
        kinds = {k for k, _ in got}
        assert len(kinds) == 1, f"round {n}: survivors disagree: {got}"
        if kinds == {"ok"}:
            indexes = [i for _, i in got]
            assert len(set(indexes)) == len(indexes) and all(0 <= i < parties for i in indexes)
            outcomes["tripped"] += 1
        else:
            outcomes["broken"] += 1
        barrier.reset()
        stats = barrier.statistics()
        assert stats["n_waiting"] == 0 and not stats["broken"], f"round {n}: {stats}"
        with pytest.raises(Empty):
            results.get(timeout=0)

    try:
        rounds = _rounds(chaos, "barrier", parties, start, finish)
    finally:
        barrier.close()
        results.close()
    print(f"Barrier: kills={chaos.kills} rounds={rounds} {outcomes}")
