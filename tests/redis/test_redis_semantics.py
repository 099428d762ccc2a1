"""The Redis context's own semantics, each as README states it: delivery once,
at-least-once with redelivery and dead letters, leases and owner death,
fencing, signatures, Ctrl-C, objects by name from anywhere."""
from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import queue
import signal
import subprocess
import sys
import time
import warnings

import pytest
from pwredis import redis_server  # noqa: F401 (fixture)

import procwire
import procwire.redis
import redis
from procwire.redis import BadSignatureWarning, LeaseLost, OwnerDiedWarning

MP = mp.get_context("forkserver")
JOIN = 60
LEASE = 2.0
KEY = b"semantics key"


@pytest.fixture
def rctx(redis_server):
    return procwire.redis.get_context(redis_server.url, authkey=KEY, lease=LEASE)


def _take_one_and_hang(q, took, joinable):
    item = q.get(timeout=JOIN)
    took.put(item)
    time.sleep(JOIN)  # holds the message until the parent kills this process


def _kill(p):
    p.kill()
    p.join(JOIN)


# ---------------------------------------------------------------- Queue: delivered once

def test_queue_consumer_killed_after_taking_loses_only_that_message(rctx):
    q, took = rctx.Queue(name="jobs"), MP.SimpleQueue()
    q.put_many(range(10))
    p = MP.Process(target=_take_one_and_hang, args=(q, took, False))
    p.start()
    taken = took.get()
    _kill(p)
    rest = q.get_many(timeout=5)
    assert taken == 0 and rest == list(range(1, 10))  # FIFO, the taken one only is gone
    assert q.statistics()["got"] == 10


# --------------------------------------------------------- JoinableQueue: at-least-once

def test_joinable_redelivers_a_dead_consumers_message(rctx):
    q, took = rctx.JoinableQueue(name="work"), MP.SimpleQueue()
    q.put("job-1")
    p = MP.Process(target=_take_one_and_hang, args=(q, took, True))
    p.start()
    assert took.get() == "job-1"
    assert q.statistics()["pending"] == 1
    _kill(p)  # its heartbeat stops; the message is pending, never acknowledged
    assert q.join(timeout=0.1) is False
    t0 = time.monotonic()
    assert q.get(timeout=JOIN) == "job-1"  # delivered again, to this consumer
    assert time.monotonic() - t0 < LEASE * 10
    s = q.statistics()
    assert s["redelivered"] == 1 and s["pending"] == 1
    q.task_done()
    assert q.join(timeout=5) is True
    assert q.statistics()["unfinished"] == 0


def test_joinable_dead_letter_after_max_deliveries(rctx):
    q = rctx.JoinableQueue(name="poison", max_deliveries=2)
    q.put({"poison": True})
    for _ in range(2):  # two consumers take it and die
        # a queue per child: a child killed right after its put may die holding
        # a multiprocessing queue's write lock
        took = MP.SimpleQueue()
        p = MP.Process(target=_take_one_and_hang, args=(q, took, True))
        p.start()
        assert took.get() == {"poison": True}
        _kill(p)
        took.close()
    # the third delivery would exceed max_deliveries: dead-lettered instead
    with pytest.raises(queue.Empty):
        q.get(timeout=LEASE * 3)
    dead = q.dead_letters()
    assert [(d["obj"], d["deliveries"], d["reason"]) for d in dead] == \
        [({"poison": True}, 2, "consumer died")]
    assert q.statistics()["dead"] == 1
    assert q.join(timeout=5) is True  # a dead-lettered message is finished


def test_joinable_message_stays_pending_while_its_consumer_lives(rctx):
    q = rctx.JoinableQueue(name="slow")
    other = rctx.JoinableQueue(name="slow")  # another consumer (its own heartbeat)
    q.put("mine")
    assert q.get(timeout=5) == "mine"
    # the holder lives (its heartbeat is renewed): never delivered to another
    with pytest.raises(queue.Empty):
        other.get(timeout=LEASE * 2)
    q.task_done()
    assert q.join(timeout=5)


# ------------------------------------------------------------- Lock: leases, owner death

def _hold_lock(lock, held):
    lock.acquire()
    held.put(lock.fence)
    time.sleep(JOIN)


def test_dead_holder_frees_lock_after_lease_next_acquirer_warned(rctx):
    lock, held = rctx.Lock(name="L"), MP.SimpleQueue()
    p = MP.Process(target=_hold_lock, args=(lock, held))
    p.start()
    fence = held.get()
    assert lock.acquire(timeout=0.2) is False  # held, and renewed
    _kill(p)
    t0 = time.monotonic()
    with pytest.warns(OwnerDiedWarning):
        assert lock.acquire(timeout=JOIN)
    assert time.monotonic() - t0 < LEASE * 10
    assert lock.fence > fence  # fencing tokens increase with every acquire
    assert lock.owner_died
    lock.make_consistent()
    assert not lock.owner_died
    lock.release()
    assert lock.statistics()["owner_deaths"] == 1


def _try_lock(lock, seconds, out):
    out.put(lock.acquire(timeout=seconds))


def test_lease_is_renewed_while_the_holder_lives(rctx):
    lock, out = rctx.Lock(name="R"), MP.SimpleQueue()
    assert lock.acquire()
    p = MP.Process(target=_try_lock, args=(lock, LEASE * 3, out))
    p.start()
    assert out.get() is False  # three leases long, never expired
    p.join(JOIN)
    lock.release()


def test_release_after_the_lease_expired_raises_lease_lost(redis_server):
    ctx = procwire.redis.get_context(redis_server.url, authkey=KEY, lease=LEASE)
    lock = ctx.Lock(name="stalled")
    lock.acquire()
    fence = lock.fence
    # a holder that stalls past its lease: its renewal stops (as a paused process's)
    with lock._tlock:
        ctx._engine.keeper.remove(lock._tokens[-1][1])
    other = ctx.Lock(name="stalled")
    with pytest.warns(OwnerDiedWarning):
        assert other.acquire(timeout=JOIN)
    assert other.fence > fence
    with pytest.raises(LeaseLost, match="expired"):
        lock.release()
    other.release()


def _take_permit(sem, held):
    sem.acquire()
    held.put(True)
    time.sleep(JOIN)


def test_semaphore_permit_of_a_dead_holder_comes_back(rctx):
    sem, held = rctx.BoundedSemaphore(1, name="S"), MP.SimpleQueue()
    p = MP.Process(target=_take_permit, args=(sem, held))
    p.start()
    held.get()
    assert sem.get_value() == 0
    _kill(p)
    with pytest.warns(OwnerDiedWarning):
        assert sem.acquire(timeout=JOIN)
    sem.release()
    assert sem.get_value() == 1
    with pytest.raises(ValueError):
        sem.release()


def test_semaphore_released_by_a_process_that_holds_no_permit(rctx):
    """As multiprocessing's: any process may release. The permit it returns takes
    over a holder's lease, so that holder's death frees nothing a second time."""
    sem, held = rctx.BoundedSemaphore(1, name="H"), MP.SimpleQueue()
    p = MP.Process(target=_take_permit, args=(sem, held))
    p.start()
    held.get()
    sem.release()  # this process holds no permit: it returns the child's
    assert sem.get_value() == 1
    with pytest.raises(ValueError):
        sem.release()  # bounded: one more would exceed the initial value
    _kill(p)
    with warnings.catch_warnings():
        warnings.simplefilter("error", OwnerDiedWarning)
        assert sem.acquire(timeout=JOIN)
        # the dead child's lease was taken over: no second permit comes back
        assert sem.acquire(timeout=LEASE * 2) is False
    assert sem.statistics()["owner_deaths"] == 0
    sem.release()
    assert sem.get_value() == 1


def test_semaphore_holder_released_for_then_releasing_counts_as_multiprocessing(rctx):
    sem, other = rctx.Semaphore(1, name="C"), rctx.Semaphore(1, name="C")
    assert sem.acquire(timeout=5)
    other.release()  # a handle without a permit: takes over sem's
    sem.release()  # sem's lease was handed over: one more release, not LeaseLost
    assert sem.get_value() == 2  # multiprocessing.Semaphore: 1 - 1 + 1 + 1


# ------------------------------------------------------------------------- signatures

class Evil:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))  # unpickling it would create the file


def test_bad_signature_refused_counted_never_unpickled(redis_server, tmp_path):
    good = procwire.redis.get_context(redis_server.url, authkey=KEY)
    bad = procwire.redis.get_context(redis_server.url, authkey=b"attacker's key")
    target = tmp_path / "pwned"
    bad.Queue(name="q").put(Evil(str(target)))
    # raw pickles written straight into the list, as anyone with access could:
    # one forged as signed, one as an unsigned (keyless) producer writes them
    r = redis.Redis.from_url(redis_server.url)
    try:
        evil = b"p" + pickle.dumps(Evil(str(target)))
        r.rpush("procwire:q:q", b"S" + b"\0" * 32 + evil, b"U" + evil)
    finally:
        r.close()
    q = good.Queue(name="q")
    q.put("fine")
    with pytest.warns(BadSignatureWarning):
        assert q.get(timeout=5) == "fine"
    assert not target.exists()
    assert q.statistics()["rejected"] == 3
    jq = good.JoinableQueue(name="jq")
    bad.JoinableQueue(name="jq").put(Evil(str(target)))
    with pytest.warns(BadSignatureWarning):
        with pytest.raises(queue.Empty):
            jq.get(timeout=0.5)
    assert not target.exists()
    assert [d["reason"] for d in jq.dead_letters()] == ["bad signature"]
    assert jq.statistics()["rejected"] == 1
    assert jq.join(timeout=5)


@pytest.mark.parametrize("keyless_first", [True, False], ids=["keyless-first", "keyed-first"])
def test_without_an_authkey_payloads_are_unsigned_and_keyed_contexts_refuse_them(
        redis_server, tmp_path, monkeypatch, keyless_first):
    """No authkey: no signature (anyone who can reach Redis can inject work, as
    README says), and a context with a key never unpickles such a message; a
    keyless context refuses a signed one (a key mismatch, not a forgery). A
    keyless context stays keyless beside a keyed one on the same URL, whichever
    was opened first."""
    monkeypatch.delenv("PROCWIRE_AUTHKEY", raising=False)
    if keyless_first:
        keyless = procwire.redis.get_context(redis_server.url)
        keyed = procwire.redis.get_context(redis_server.url, authkey=KEY)
    else:
        keyed = procwire.redis.get_context(redis_server.url, authkey=KEY)
        keyless = procwire.redis.get_context(redis_server.url)
    assert keyless.authkey is None and keyless._engine.authkey is None
    assert keyed._engine.authkey == KEY
    target = tmp_path / "pwned"
    keyless.Queue(name="open").put("hello")
    assert keyless.Queue(name="open").get(timeout=5) == "hello"
    keyless.Queue(name="open").put(Evil(str(target)))
    with pytest.warns(BadSignatureWarning, match="not signed"):
        with pytest.raises(queue.Empty):
            keyed.Queue(name="open").get(timeout=0.2)
    assert not target.exists()
    keyed.Queue(name="open").put("signed")
    with pytest.warns(BadSignatureWarning, match="has none"):
        with pytest.raises(queue.Empty):
            keyless.Queue(name="open").get(timeout=0.2)


def test_an_object_unpickled_outside_process_start_finds_its_own_contexts_key(
        redis_server, monkeypatch):
    """Outside process start a pickle carries which key, not the key: the receiving
    process uses its own copy of that key (an open context's on the same URL, or
    PROCWIRE_AUTHKEY's), never another context's, and a keyless object stays keyless."""
    monkeypatch.delenv("PROCWIRE_AUTHKEY", raising=False)
    other = b"another key"
    contexts = [procwire.redis.get_context(redis_server.url, authkey=KEY),
                procwire.redis.get_context(redis_server.url),
                procwire.redis.get_context(redis_server.url, authkey=other)]
    for i, ctx in enumerate(contexts):
        q = ctx.Queue(name=f"own-key-{i}")
        data = pickle.dumps(q)
        assert KEY not in data and other not in data
        again = pickle.loads(data)
        assert again._ctx.authkey == ctx.authkey
        again.put("round trip")           # signed (or not) as the original's payloads are
        assert q.get(timeout=5) == "round trip"
    # A key this process has no context for comes from PROCWIRE_AUTHKEY, if it is that one.
    data = pickle.dumps(procwire.redis.get_context(redis_server.url, authkey=b"env key"))
    procwire.redis.get_context(redis_server.url, authkey=b"env key").close()
    monkeypatch.setenv("PROCWIRE_AUTHKEY", "env key")
    assert pickle.loads(data).authkey == b"env key"


# ------------------------------------------------------------------------------- Ctrl-C

def _block_forever(q, started, out):
    try:
        started.set()
        q.get()  # timeout=None: forever
    except KeyboardInterrupt:
        out.put("interrupted")


def test_ctrl_c_interrupts_a_blocked_get_promptly(rctx):
    q, started, out = rctx.Queue(), MP.Event(), MP.SimpleQueue()
    p = MP.Process(target=_block_forever, args=(q, started, out))
    p.start()
    assert started.wait(JOIN)
    t0 = time.monotonic()
    os.kill(p.pid, signal.SIGINT)
    assert out.get() == "interrupted"
    assert time.monotonic() - t0 < 5
    p.join(JOIN)


# ------------------------------------------------------------------------- by name

def _put_through(q, ev, value):
    q.put(value)
    ev.set()


def test_objects_travel_to_children_under_every_start_method(rctx, ctx):
    q, ev = rctx.Queue(name="travel"), rctx.Event(name="travel-ev")
    p = ctx.Process(target=_put_through, args=(q, ev, ctx.get_start_method()))
    p.start()
    assert q.get(timeout=JOIN) == ctx.get_start_method()
    assert ev.wait(JOIN)
    p.join(JOIN)
    assert p.exitcode == 0


def test_same_name_from_a_separate_program_is_the_same_object(rctx, redis_server):
    q = rctx.Queue(name="shared-by-name")
    code = ("import procwire.redis as r, sys; "
            "c = r.get_context(sys.argv[1]); q = c.Queue(name='shared-by-name'); "
            "q.put(q.get(timeout=60) * 2)")
    env = dict(os.environ, PROCWIRE_AUTHKEY=KEY.decode())
    proc = subprocess.Popen([sys.executable, "-c", code, redis_server.url], env=env)
    q.put(21)
    proc.wait(JOIN)
    assert proc.returncode == 0
    # its reply is the only message left
    assert q.get(timeout=5) == 42


def test_a_name_belongs_to_one_kind(rctx):
    rctx.Queue(name="thing")
    with pytest.raises(ValueError, match="is a Queue, not a Lock"):
        rctx.Lock(name="thing")
    with pytest.raises(ValueError, match="invalid Redis object name"):
        rctx.Queue(name="bad name!")


def test_import_procwire_does_not_import_redis():
    code = ("import procwire, sys; procwire.Queue; import procwire.cli; "
            "print('redis' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=JOIN)
    assert out.stdout.strip() == "False", out.stderr


def test_owner_died_warning_as_error_leaves_the_lock_free(rctx):
    lock, held = rctx.Lock(name="W"), MP.SimpleQueue()
    p = MP.Process(target=_hold_lock, args=(lock, held))
    p.start()
    held.get()
    _kill(p)
    with warnings.catch_warnings():
        warnings.simplefilter("error", OwnerDiedWarning)
        with pytest.raises(OwnerDiedWarning):
            lock.acquire(timeout=JOIN)
    assert lock.statistics()["holders"] == 0
    assert lock.acquire(timeout=1)  # free: the raising acquire gave it back
    assert lock.owner_died
    lock.release()
