"""Failure of the engine itself: Redis unreachable, restarted mid-run, and
appendonly persistence of acknowledged work."""
from __future__ import annotations

import queue
import socket
import threading
import time

import pytest

import procwire.redis
from procwire.redis import EngineError
from pwredis import redis_server  # noqa: F401 (fixture)

JOIN = 60
KEY = b"engine key"


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_redis_raises_a_clear_error_naming_the_url():
    url = f"redis://:secret@127.0.0.1:{_free_port()}/0"
    ctx = procwire.redis.get_context(url, authkey=KEY, retry_for=1.0)
    try:
        t0 = time.monotonic()
        with pytest.raises(EngineError) as info:
            ctx.Queue(name="q")
        assert time.monotonic() - t0 < 15
        message = str(info.value)
        assert "127.0.0.1" in message and "unreachable" in message
        assert "secret" not in message  # the password is never shown
    finally:
        procwire.redis._engine.set_retry_for(procwire.redis._engine.DEFAULT_RETRY_FOR)
        ctx.close()


def test_a_call_with_a_timeout_never_outlives_it_while_redis_is_down(redis_server):
    ctx = procwire.redis.get_context(redis_server.url, authkey=KEY)
    q = ctx.Queue(name="q")
    redis_server.stop()
    t0 = time.monotonic()
    with pytest.raises((EngineError, queue.Empty)):
        q.get(timeout=1.0)
    assert time.monotonic() - t0 < 10
    redis_server.start()
    q.put("back")  # the same object works again
    assert q.get(timeout=5) == "back"


def test_blocked_consumer_survives_a_restart_mid_run(redis_server):
    ctx = procwire.redis.get_context(redis_server.url, authkey=KEY)
    q, lock, ev = ctx.Queue(name="q"), ctx.Lock(name="l"), ctx.Event(name="e")
    got = []
    waiting = threading.Event()

    def consume():
        waiting.set()
        got.append(q.get(timeout=JOIN))
    t = threading.Thread(target=consume)
    t.start()
    assert waiting.wait(JOIN)
    redis_server.restart()  # no persistence: the data is gone, the objects are not
    q.put("after restart")
    t.join(JOIN)
    assert got == ["after restart"]
    assert lock.acquire(timeout=5)
    lock.release()
    ev.set()
    assert ev.wait(5)


@pytest.mark.redis_appendonly
def test_with_appendonly_acknowledged_work_survives_a_restart(redis_server):
    ctx = procwire.redis.get_context(redis_server.url, authkey=KEY, lease=2)
    q = ctx.Queue(name="q")
    jq = ctx.JoinableQueue(name="jq")
    v = ctx.Value("i", 0, name="v")
    q.put_many(range(100))
    jq.put_many(["a", "b"])
    assert jq.get(timeout=5) == "a"  # taken, not yet done: pending across the restart
    v.value = 7
    redis_server.restart(sig=9)  # killed, not shut down: only the append-only file remains
    assert q.get_many(timeout=JOIN) == list(range(100))
    assert v.value == 7
    s = jq.statistics()
    assert s["pending"] == 1 and s["messages"] == 1 and s["unfinished"] == 2
    assert jq.get(timeout=JOIN) == "b"
    jq.task_done()
    jq.task_done()
    assert jq.join(timeout=5)


@pytest.mark.redis_appendonly
def test_pool_map_finishes_across_a_restart(redis_server):
    from pw_tasks import nap
    ctx = procwire.redis.get_context(redis_server.url, authkey=KEY, lease=3)
    with ctx.Pool(2, name="p") as pool:
        assert pool.map(nap, [0.0] * 4) == [0.0] * 4  # the workers are up
        result = pool.map_async(nap, [0.05] * 60, chunksize=1)
        deadline = time.monotonic() + JOIN
        while pool.statistics()["done"] < 14 and time.monotonic() < deadline:
            result.wait(0.05)  # until the map is under way
        redis_server.restart(sig=9)
        assert result.get(JOIN) == [0.05] * 60
        pool.close()
        pool.join(JOIN)
