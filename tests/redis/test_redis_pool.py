"""The Pool across machines: `procwire worker` programs over TCP, crash
semantics (retries=, WorkerLost within a bounded time, no duplicates),
graceful stop, `procwire ls redis://`, and the chaos test."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
from pwredis import redis_server  # noqa: F401 (fixture)

import procwire.redis
from procwire.redis import WorkerLost

HERE = os.path.dirname(os.path.abspath(__file__))
JOIN = 90
KEY = "pool key"
LEASE = 2.0


def start_worker(url, pool, processes=2, lease=LEASE):
    """`procwire worker` as a separate program, as on another machine."""
    env = dict(os.environ, PROCWIRE_AUTHKEY=KEY)
    return subprocess.Popen(
        [sys.executable, "-m", "procwire", "worker", url, "--pool", pool,
         "--processes", str(processes), "--lease", str(lease), "--path", HERE],
        env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)


def stop_worker(proc, sig=signal.SIGINT):
    if proc.poll() is None:
        proc.send_signal(sig)
    _out, err = proc.communicate(timeout=JOIN)
    return proc.returncode, err


def wait_for(predicate, timeout=JOIN):
    """Poll a condition in Redis (an external program's state) until true."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


@pytest.fixture
def rctx(redis_server):
    return procwire.redis.get_context(redis_server.url, authkey=KEY, lease=LEASE)


def test_remote_workers_run_a_pool_over_tcp(rctx, redis_server):
    from pw_tasks import square, whoami
    workers = [start_worker(redis_server.url, "remote") for _ in range(2)]
    try:
        with rctx.Pool(0, name="remote") as pool:  # no local worker: only the programs
            assert pool.map(square, range(200), chunksize=1) == [x * x for x in range(200)]
            wait_for(lambda: pool.statistics()["workers"] == 4)
            pids = set(pool.map(whoami, range(100), chunksize=1))
            assert len(pids) >= 2 and os.getpid() not in pids
            assert pool.apply(square, (12,)) == 144
            pool.close()
            pool.join(JOIN)
    finally:
        results = [stop_worker(w) for w in workers]
    for code, err in results:
        assert code == 0, err
        assert "procwire worker: stopped" in err and "tasks done here" in err


def test_sigterm_finishes_the_running_task_then_exits(rctx, redis_server, tmp_path):
    from pw_tasks import write_file_and_block
    started = tmp_path / "started"
    w = start_worker(redis_server.url, "graceful", processes=1)
    try:
        with rctx.Pool(0, name="graceful") as pool:
            r = pool.apply_async(write_file_and_block, (str(started), 2.0))
            wait_for(started.exists)
            w.send_signal(signal.SIGTERM)
            assert r.get(JOIN) > 0  # the task at hand finished and its result arrived
            code, err = stop_worker(w)
            assert code == 0, err
            assert pool.statistics()["lost"] == 0
    finally:
        stop_worker(w, signal.SIGKILL)


def test_killed_worker_task_fails_with_worker_lost_within_bounded_time(rctx, redis_server,
                                                                       tmp_path):
    from pw_tasks import write_file_and_block
    started = tmp_path / "started"
    w = start_worker(redis_server.url, "lost", processes=1)
    try:
        with rctx.Pool(0, name="lost", retries=0) as pool:
            r = pool.apply_async(write_file_and_block, (str(started), 60))
            wait_for(started.exists)
            t0 = time.monotonic()
            w.kill()  # the whole worker machine, as far as Redis can tell
            w.wait(JOIN)
            with pytest.raises(WorkerLost, match="died"):
                r.get(JOIN)
            assert time.monotonic() - t0 < LEASE * 10
            assert pool.statistics()["lost"] == 1
    finally:
        stop_worker(w, signal.SIGKILL)


def test_killed_worker_task_is_retried_once(rctx, redis_server, tmp_path):
    from pw_tasks import write_file_and_block
    started = tmp_path / "started"
    w1 = start_worker(redis_server.url, "retry", processes=1)
    w2 = None
    try:
        with rctx.Pool(0, name="retry", retries=1) as pool:
            r = pool.apply_async(write_file_and_block, (str(started), 1.0))
            wait_for(started.exists)
            first = int(started.read_text().split()[0])
            w1.kill()
            w1.wait(JOIN)
            w2 = start_worker(redis_server.url, "retry", processes=1)
            second = r.get(JOIN)  # re-run by the other worker
            assert second != first
            assert started.read_text().split() == [str(first), str(second)]
            s = pool.statistics()
            assert s["retried"] == 1 and s["lost"] == 0 and pool.duplicate_results == 0
    finally:
        stop_worker(w1, signal.SIGKILL)
        if w2 is not None:
            assert stop_worker(w2)[0] == 0


def test_local_worker_killed_with_retries_zero(rctx, tmp_path):
    from pw_tasks import write_file_and_block
    started = tmp_path / "started"
    with rctx.Pool(1, name="local-lost") as pool:
        r = pool.apply_async(write_file_and_block, (str(started), 60))
        wait_for(started.exists)
        os.kill(int(started.read_text().split()[0]), signal.SIGKILL)
        with pytest.raises(WorkerLost):
            r.get(JOIN)
        # the pool replaced its worker and goes on
        from pw_tasks import square
        assert pool.map(square, range(10)) == [x * x for x in range(10)]


def test_procwire_ls_lists_objects_and_pools(rctx, redis_server):
    from pw_tasks import square
    q = rctx.Queue(name="inbox")
    q.put_many(range(3))
    rctx.Lock(name="guard")
    with rctx.Pool(1, name="crunch") as pool:
        pool.map(square, range(20))
        out = subprocess.run([sys.executable, "-m", "procwire", "ls", redis_server.url,
                              "--json"], capture_output=True, text=True, timeout=JOIN,
                             env=dict(os.environ, PROCWIRE_AUTHKEY=KEY))
    assert out.returncode == 0, out.stderr
    rows = {r["name"]: r for r in json.loads(out.stdout)}
    assert rows["inbox"]["kind"] == "Queue" and rows["inbox"]["counters"]["messages"] == 3
    assert rows["guard"]["kind"] == "Lock"
    assert rows["crunch"]["kind"] == "Pool" and rows["crunch"]["counters"]["done"] == 20
    table = subprocess.run([sys.executable, "-m", "procwire", "ls", redis_server.url],
                           capture_output=True, text=True, timeout=JOIN)
    assert "inbox" in table.stdout and "crunch" in table.stdout


def test_worker_refuses_a_bad_url():
    out = subprocess.run([sys.executable, "-m", "procwire", "worker", "http://x", "--pool",
                          "p"], capture_output=True, text=True, timeout=JOIN)
    assert out.returncode == 2 and "not a Redis URL" in out.stderr


def test_executor(rctx):
    from pw_tasks import boom, square
    with rctx.ProcessPoolExecutor(2) as ex:
        assert ex.submit(square, 9).result(JOIN) == 81
        assert list(ex.map(square, range(6))) == [0, 1, 4, 9, 16, 25]
        with pytest.raises(ValueError, match="boom"):
            ex.submit(boom, 1).result(JOIN)


def test_chaos_sigkill_workers_during_a_long_map(rctx, redis_server):
    """SIGKILL `procwire worker` programs at random during a long map: every task
    ends with its result or WorkerLost, none twice, and the map finishes."""
    from pw_tasks import tagged_slow
    rng = random.Random(13)
    workers = [start_worker(redis_server.url, "chaos") for _ in range(3)]
    n, kills = 300, 0
    outcomes = {}
    try:
        with rctx.Pool(0, name="chaos", retries=1) as pool:
            it = pool.imap(tagged_slow, range(n), chunksize=1)
            for i in range(n):
                try:
                    x, _ = it.next(timeout=JOIN)
                    assert x == i
                    outcomes[i] = "result"
                except WorkerLost:
                    outcomes[i] = "lost"
                if i % 30 == 15:  # kill one program at random, start another
                    victim = workers.pop(rng.randrange(len(workers)))
                    victim.kill()
                    victim.wait(JOIN)
                    kills += 1
                    workers.append(start_worker(redis_server.url, "chaos"))
            with pytest.raises(StopIteration):
                it.next(timeout=5)
            s = pool.statistics()
            assert pool.duplicate_results == 0
            assert s["done"] + s["lost"] == n  # each task finished exactly once
            assert s["lost"] == sum(1 for v in outcomes.values() if v == "lost")
    finally:
        for w in workers:
            stop_worker(w, signal.SIGKILL if w.poll() is None else signal.SIGINT)
    assert len(outcomes) == n and kills == 10


def test_pool_unlink_deletes_every_key_of_the_pool(rctx, redis_server):
    from pw_tasks import square

    import redis
    r = redis.Redis.from_url(redis_server.url)
    try:
        with rctx.Pool(1, name="gone") as pool:
            assert pool.map(square, range(10)) == [x * x for x in range(10)]
            pool.close()
            pool.join(JOIN)
            assert r.keys("procwire:gone:*")  # tasks, stats, workers...
            pool.unlink()
            assert r.keys("procwire:gone:*") == []
            assert not r.hexists("procwire:objects", "gone")
        assert r.keys("procwire:gone:*") == []  # terminate() recreated nothing
        with rctx.Pool(1, name="gone") as pool:  # the name again: a new, empty pool
            assert pool.statistics()["done"] == 0
            assert pool.map(square, range(3)) == [0, 1, 4]
    finally:
        r.close()


def test_terminate_fails_unfinished_results_with_pool_terminated(rctx, tmp_path):
    from pw_tasks import nap, write_file_and_block

    from procwire.pool import PoolTerminated
    started = tmp_path / "started"
    pool = rctx.Pool(1, name="term")  # one worker, held by the first task
    r = pool.apply_async(write_file_and_block, (str(started), 60))
    m = pool.starmap_async(write_file_and_block, [(str(tmp_path / "m"), 60)] * 3)
    it = pool.imap(nap, [60, 60])
    wait_for(started.exists)
    pool.terminate()
    for result in (r, m):
        with pytest.raises(PoolTerminated):
            result.get(JOIN)
    for _ in range(2):
        with pytest.raises(PoolTerminated):
            it.next(JOIN)
    with pytest.raises(StopIteration):
        it.next(JOIN)


def test_imap_raises_each_task_exception_in_its_place(rctx):
    from pw_tasks import boom_if_odd
    with rctx.Pool(2, name="imap-errors") as pool:
        for chunksize in (1, 3):
            it = pool.imap(boom_if_odd, range(7), chunksize=chunksize)
            got = []
            for _ in range(7):
                try:
                    got.append(it.next(JOIN))
                except ValueError as e:
                    assert e.__cause__ is not None and "boom" in str(e.__cause__)  # remote tb
                    got.append("err")
            assert got == [0, "err", 2, "err", 4, "err", 6]
