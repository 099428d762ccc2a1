"""The same behaviour tests against the local context and a Redis context.

``api`` is either procwire's local objects or ``procwire.get_context(
"redis://...")`` on a real redis-server started for the test. Each test runs
its processes with forkserver (the objects travel as Process arguments: by
memfd locally, by name and URL on Redis).
"""
from __future__ import annotations

import gc
import multiprocessing as mp
import queue
import threading
import types

import pytest
from pwredis import redis_server  # noqa: F401 (fixture)

import procwire

MP = mp.get_context("forkserver")
JOIN = 60


# The local context's constructors, as a Redis context has them (Pool included).
LOCAL = types.SimpleNamespace(name="local", **{
    ctor: getattr(procwire, ctor)
    for ctor in ("Queue", "SimpleQueue", "JoinableQueue", "Lock", "RLock", "Semaphore", "Event",
                 "Condition", "Barrier", "Value", "Array", "Pool")})


@pytest.fixture(params=["local", "redis"])
def api(request):
    if request.param == "local":
        yield LOCAL
        return
    server = request.getfixturevalue("redis_server")
    # procwire.get_context hands redis:// URLs to procwire.redis.get_context
    ctx = procwire.get_context(server.url, authkey=b"test key", lease=3)
    assert type(ctx).__module__ == "procwire.redis.context"
    yield ctx


# ------------------------------------------------------------------------ children

def _producer(q, items):
    for x in items:
        q.put(x)


def _consumer(q, n, out):
    out.put(sorted(q.get(timeout=JOIN) for _ in range(n)))


def _joinable_worker(q, n, out):
    got = []
    for _ in range(n):
        got.append(q.get(timeout=JOIN))
        q.task_done()
    out.put(got)


def _lock_counter(lock, value, n):
    for _ in range(n):
        with lock:
            v = value.value
            value.value = v + 1  # a lost update shows if the lock does not exclude


def _value_adder(value, n):
    for _ in range(n):
        with value.get_lock():
            value.value += 1


def _event_waiter(ev, started, out):
    started.set()
    out.put(ev.wait(JOIN))


def _run(targets):
    procs = [MP.Process(target=t, args=a) for t, a in targets]
    for p in procs:
        p.start()
    return procs


def _join(procs):
    for p in procs:
        p.join(JOIN)
        assert p.exitcode == 0, f"{p} exit code {p.exitcode}"


# --------------------------------------------------------------------------- Queue

def test_queue_fifo_and_api(api):
    q = api.Queue(maxsize=3)
    assert q.empty()
    q.put(1)
    q.put_nowait({"two": 2})
    q.put(b"three")
    assert q.full() and q.qsize() == 3
    with pytest.raises(queue.Full):
        q.put(4, timeout=0.1)
    with pytest.raises(queue.Full):
        q.put_nowait(4)
    assert [q.get(), q.get_nowait(), q.get(timeout=1)] == [1, {"two": 2}, b"three"]
    with pytest.raises(queue.Empty):
        q.get(timeout=0.1)
    with pytest.raises(queue.Empty):
        q.get_nowait()
    q.close()


def test_queue_put_many_get_many(api):
    q = api.Queue()
    q.put_many(range(250))
    got = []
    while len(got) < 250:
        got += q.get_many(100, timeout=5)
    assert got == list(range(250))


def test_queue_blocked_producer_wakes_when_space_frees(api):
    q = api.Queue(maxsize=1)
    q.put("a")
    done = threading.Event()

    def put():
        q.put("b", timeout=JOIN)
        done.set()
    t = threading.Thread(target=put)
    t.start()
    assert not done.wait(0.2)  # still blocked: the queue is full
    assert q.get(timeout=5) == "a"
    assert done.wait(JOIN)
    t.join(JOIN)
    assert q.get(timeout=5) == "b"


def test_queue_between_processes_every_message_once(api):
    q, out = api.Queue(), api.Queue()
    items = list(range(400))
    procs = _run([(_producer, (q, items[:200])), (_producer, (q, items[200:])),
                  (_consumer, (q, 200, out)), (_consumer, (q, 200, out))])
    got = out.get(timeout=JOIN) + out.get(timeout=JOIN)
    _join(procs)
    assert sorted(got) == items  # none lost, none twice


def test_simple_queue(api):
    q = api.SimpleQueue()
    assert q.empty()
    q.put([1, 2])
    assert not q.empty()
    assert q.get() == [1, 2]


# ------------------------------------------------------------------- JoinableQueue

def test_joinable_queue_join_waits_for_task_done(api):
    q, out = api.JoinableQueue(), api.Queue()
    q.put_many(range(20))
    assert q.join(timeout=0.2) is False
    procs = _run([(_joinable_worker, (q, 10, out)), (_joinable_worker, (q, 10, out))])
    assert q.join(timeout=JOIN) is True
    got = out.get(timeout=JOIN) + out.get(timeout=JOIN)
    _join(procs)
    assert sorted(got) == list(range(20))


def test_joinable_queue_task_done_too_often(api):
    q = api.JoinableQueue()
    q.put(1)
    q.get(timeout=5)
    q.task_done()
    with pytest.raises(ValueError):
        q.task_done()


# ---------------------------------------------------------------------------- Lock

def test_lock_excludes_between_processes(api):
    lock = api.Lock()
    value = api.Value("i", 0, lock=False)
    procs = _run([(_lock_counter, (lock, value, 100)) for _ in range(3)])
    _join(procs)
    assert value.value == 300


def test_lock_api(api):
    lock = api.Lock()
    assert lock.acquire(timeout=1)
    assert lock.acquire(False) is False
    assert lock.acquire(timeout=0.1) is False
    with pytest.raises(RuntimeError):
        lock.acquire()  # would deadlock
    lock.release()
    with pytest.raises(ValueError):
        lock.release()
    with lock:
        pass


def test_rlock_and_semaphore(api):
    r = api.RLock()
    with r:
        with r:
            pass
    s = api.Semaphore(2)
    assert s.acquire(timeout=1) and s.acquire(timeout=1)
    assert s.acquire(timeout=0.1) is False
    s.release()
    assert s.acquire(timeout=1)
    s.release()
    s.release()
    assert s.get_value() == 2


# --------------------------------------------------------------------------- Event

def test_event_wakes_a_waiting_process(api):
    ev, started, out = api.Event(), api.Event(), api.Queue()
    assert not ev.is_set()
    assert ev.wait(0.05) is False
    procs = _run([(_event_waiter, (ev, started, out))])
    assert started.wait(JOIN)
    ev.set()
    assert out.get(timeout=JOIN) is True
    _join(procs)
    assert ev.is_set() and ev.wait(0)
    ev.clear()
    assert not ev.is_set()


def test_condition_and_barrier(api):
    cond = api.Condition()
    ready = []

    def notifier():
        with cond:
            ready.append(1)
            cond.notify_all()
    with cond:
        threading.Timer(0.1, notifier).start()
        assert cond.wait_for(lambda: ready, timeout=JOIN)
    barrier = api.Barrier(3)
    results = []
    threads = [threading.Thread(target=lambda: results.append(barrier.wait(JOIN)))
               for _ in range(2)]
    for t in threads:
        t.start()
    results.append(barrier.wait(JOIN))
    for t in threads:
        t.join(JOIN)
    assert sorted(results) == [0, 1, 2]


def test_barrier_action_runs_before_any_party_is_released(api):
    released, acted = [], []
    barrier = api.Barrier(3, action=lambda: acted.append(len(released)))

    def party():
        index = barrier.wait(JOIN)
        released.append((index, len(acted)))
    threads = [threading.Thread(target=party) for _ in range(2)]
    for t in threads:
        t.start()
    party()
    for t in threads:
        t.join(JOIN)
    assert acted == [0]  # no party had returned when the action ran
    assert sorted(released) == [(0, 1), (1, 1), (2, 1)]


def test_barrier_action_that_raises_breaks_the_barrier(api):
    def action():
        raise KeyError("action failed")
    barrier = api.Barrier(2, action=action)
    outcomes = []

    def party():
        try:
            barrier.wait(JOIN)
            outcomes.append("passed")
        except Exception as e:
            outcomes.append(type(e).__name__)
    t = threading.Thread(target=party)
    t.start()
    party()
    t.join(JOIN)
    # the last to arrive ran the action and got its exception; the other is broken
    assert sorted(outcomes) == ["BrokenBarrierError", "KeyError"]
    assert barrier.broken


# --------------------------------------------------------------------- Value/Array

def test_value_with_its_lock_between_processes(api):
    v = api.Value("i", 0)
    procs = _run([(_value_adder, (v, 100)) for _ in range(3)])
    _join(procs)
    assert v.value == 300


def test_value_and_array_types(api):
    v = api.Value("d", 1.5)
    assert v.value == 1.5
    v.value = -2.25
    assert v.value == -2.25
    a = api.Array("i", [1, 2, 3, 4])
    assert len(a) == 4 and a[:] == [1, 2, 3, 4] and a[-1] == 4
    a[1] = 20
    a[2:4] = [30, 40]
    assert list(a) == [1, 20, 30, 40]
    with pytest.raises(IndexError):
        a[4]


# ---------------------------------------------------------------------------- Pool

def _pool_body(api):
    from pw_tasks import boom, square
    pool = api.Pool(2)
    try:
        assert pool.map(square, range(50)) == [x * x for x in range(50)]
        assert pool.apply(square, (7,)) == 49
        assert list(pool.imap(square, range(5))) == [0, 1, 4, 9, 16]
        assert sorted(pool.imap_unordered(square, range(5))) == [0, 1, 4, 9, 16]
        assert pool.starmap(pow, [(2, 3), (3, 2)]) == [8, 9]
        r = pool.apply_async(boom, (3,))
        with pytest.raises(ValueError, match="boom 3"):
            r.get(JOIN)
        assert r.ready() and not r.successful()
        pool.close()
        pool.join()
    finally:
        pool.terminate()


def test_pool_map_apply_and_errors(api):
    _pool_body(api)
    gc.collect()  # multiprocessing.Pool closes its pipes when collected
