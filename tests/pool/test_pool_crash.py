"""Workers that die: only the tasks they held are affected, within a time bound.

Each test kills a worker at one precise moment -- idle, running a task, taking
a large task off its pipe, sending a large result -- or lets a task kill it
(SIGKILL, segfault, os._exit, SystemExit), and checks that the task it held
ends with WorkerLost naming the pid and signal (or its result, with retries),
that no other task fails, and that the pool goes on at full strength.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import poolhelpers as h
import pytest

import procwire
from procwire import WorkerLost

# a thread of the pool (the manager, a feeder) that dies of an exception fails the test
pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")


WAIT = h.WAIT
# Noticing a death goes through the kernel (the worker's sentinel wakes the
# manager at once); the goal is 100 ms. Tests allow seconds: the
# machine is shared, and a test is not a benchmark.
NOTICE = 5.0


def _wait_workers(pool, n):
    deadline = time.monotonic() + WAIT
    while pool.statistics().workers != n or len(pool._pool) != n:
        assert time.monotonic() < deadline, pool.statistics()
        time.sleep(0.01)


@pytest.mark.parametrize("how, exitcode, signame", [
    ("sigkill", -signal.SIGKILL, "SIGKILL"),
    ("segfault", -signal.SIGSEGV, "SIGSEGV"),
    ("exit", 7, None),
    ("sys.exit", 3, None),
])
def test_task_that_kills_its_worker_fails_alone(ctx, how, exitcode, signame):
    with procwire.Pool(2, context=ctx) as pool:
        others = [pool.apply_async(h.sleep_then, (i, 0.05)) for i in range(6)]
        r = pool.apply_async(h.die_by, (how,))
        with pytest.raises(WorkerLost) as info:
            r.get(WAIT)
        e = info.value
        assert e.exitcode == exitcode and e.signal == signame
        assert str(e.pid) in str(e) and (signame or f"code {exitcode}") in str(e)
        assert [o.get(WAIT) for o in others] == list(range(6))
        assert pool.map(h.sq, range(20)) == [x * x for x in range(20)]
        _wait_workers(pool, 2)
        s = pool.statistics()
        assert s.worker_deaths == 1 and s.tasks_failed == 1


def _holder_of(pool, result):
    """The pid of the worker whose lease holds `result`'s task (from the ledger)."""
    return pool._core.holder_of(result)


def test_sigkill_during_a_task_is_noticed_within_the_bound(tmp_path):
    started, release = str(tmp_path / "started"), str(tmp_path / "release")
    with procwire.Pool(2) as pool:
        r = pool.apply_async(h.touch_and_block, (started, release, 1))
        h.wait_for_file(started)
        other = pool.apply_async(h.touch_and_block, (str(tmp_path / "s2"), release, 2))
        h.wait_for_file(str(tmp_path / "s2"))
        victim = _holder_of(pool, r)
        assert victim is not None and victim != _holder_of(pool, other)
        t0 = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        with pytest.raises(WorkerLost) as info:
            r.get(WAIT)
        assert time.monotonic() - t0 < NOTICE
        assert info.value.pid == victim and info.value.signal == "SIGKILL"
        open(release, "w").close()
        assert other.get(WAIT) == 2


def test_worker_killed_while_idle_loses_nothing(ctx):
    with procwire.Pool(2, context=ctx) as pool:
        assert pool.map(h.sq, range(10)) == [x * x for x in range(10)]
        _wait_workers(pool, 2)
        os.kill(pool._pool[0].pid, signal.SIGKILL)
        deadline = time.monotonic() + WAIT
        while pool.statistics().worker_deaths < 1:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert pool.map(h.sq, range(100), chunksize=1) == [x * x for x in range(100)]
        _wait_workers(pool, 2)
        s = pool.statistics()
        assert s.tasks_failed == 0 and s.worker_deaths == 1 and s.workers_started == 3


def test_retries_rerun_the_tasks_of_a_dead_worker(tmp_path):
    with procwire.Pool(2, retries=1) as pool:
        marker = str(tmp_path / "died")
        assert pool.apply(h.die_once, (marker, "second time lucky")) == "second time lucky"
        s = pool.statistics()
        assert s.tasks_retried == 1 and s.worker_deaths == 1 and s.tasks_failed == 0
        # a task that kills every worker it runs on fails after its retries
        with pytest.raises(WorkerLost) as info:
            pool.apply(h.always_die)
        assert info.value.attempts == 2 and "attempt 2" in str(info.value)
        assert pool.map(h.sq, range(10)) == [x * x for x in range(10)]


def test_map_with_a_killer_chunk_fails_and_the_pool_goes_on():
    with procwire.Pool(2) as pool:
        with pytest.raises(WorkerLost):
            pool.map(h.die_by, ["sigkill"], chunksize=1)
        # imap at chunksize 1: the lost position raises, the others arrive
        it = pool.imap(h.kill_if, ["a", "kill", "b"])
        assert next(it) == "a"
        with pytest.raises(WorkerLost):
            next(it)
        assert next(it) == "b"
        with pytest.raises(StopIteration):
            next(it)
        results = pool.map(h.sq, range(1000), chunksize=10)
        assert results == [x * x for x in range(1000)]


@pytest.mark.parametrize("result", ["bytes", "array"])
def test_worker_killed_while_sending_a_large_result(result):
    # The worker dies after part of a 64 MiB result is in its pipe: the pipe
    # drops the half-sent message, the task fails alone. An array's buffer
    # follows its message: the worker dies between the two or in the middle of
    # the buffer.
    if result == "array":
        pytest.importorskip("numpy")
    task = h.kill_self_mid_send_array if result == "array" else h.kill_self_mid_send
    with procwire.Pool(1) as pool:
        r = pool.apply_async(task, (64 << 20,))
        with pytest.raises(WorkerLost) as info:
            r.get(WAIT)
        assert info.value.signal == "SIGKILL"
        assert pool.apply(h.sq, (9,)) == 81
        assert pool.statistics().worker_deaths == 1


def test_worker_killed_while_taking_a_large_task():
    data = b"d" * (32 << 20)
    with procwire.Pool(1) as pool:
        first = pool.apply(h.arm_kill_mid_receive)
        # The next task is streamed to that worker, which dies before it has
        # all of it: the task never started, so it runs on the replacement
        # (no retry needed, none counted).
        assert pool.apply(h.length, (data,)) == len(data)
        s = pool.statistics()
        assert s.worker_deaths == 1 and s.tasks_retried == 0 and s.tasks_failed == 0
        assert first not in [p.pid for p in pool._pool]


def test_ctrl_c_in_the_parent_stops_everything_promptly(tmp_path):
    started = str(tmp_path / "started")
    code = textwrap.dedent(f"""
        import sys, procwire
        sys.path.insert(0, {os.path.dirname(h.__file__)!r})
        import poolhelpers as h
        if __name__ == "__main__":
            with procwire.Pool(2) as pool:
                try:
                    pool.starmap(h.touch_and_sleep, [({started!r}, 0.2)] * 1000, chunksize=1)
                except KeyboardInterrupt:
                    print("interrupted", flush=True)
                    raise
    """)
    from procwire import signals

    def children():
        pids = set()
        for task in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{task}/children") as f:
                pids.update(int(p) for p in f.read().split())
        return pids

    before = children()
    with signals.subreaper():
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            h.wait_for_file(started)
            t0 = time.monotonic()
            os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C does
            out, err = proc.communicate(timeout=WAIT)
            elapsed = time.monotonic() - t0
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        # every worker was stopped and reaped: none is left for the subreaper to adopt
        left = children() - before
        for pid in left:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    assert "interrupted" in out and "KeyboardInterrupt" in err
    assert proc.returncode != 0
    assert elapsed < 10
    assert not left
