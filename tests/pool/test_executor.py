"""procwire.ProcessPoolExecutor: the behaviour concurrent.futures checks for ProcessPoolExecutor.

Written after the checks of CPython's test_concurrent_futures that apply to a
process pool executor (submit, map with chunksize and timeout, exceptions and
remote tracebacks, shutdown with and without waiting or cancelling, context
manager, initializer, max_tasks_per_child, references released, wait and
as_completed, asyncio's run_in_executor). Where the standard library breaks
the whole executor when a worker dies, procwire fails only that worker's
futures and goes on; those tests check procwire's model.
"""
from __future__ import annotations

import asyncio
import gc
import os
import signal
import sys
import threading
import time
import weakref
from concurrent import futures
from concurrent.futures.process import BrokenProcessPool

import poolhelpers as h
import pytest

import procwire
from procwire import ProcessPoolExecutor, WorkerLost
from procwire.pool import BrokenPool

# a thread of the pool (the manager, a feeder) that dies of an exception fails the test
pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")


WAIT = h.WAIT


class Thing:
    def method(self):
        return None


def make_thing(_):
    return Thing()


def capture(*args, **kwargs):
    return args, kwargs


def raise_runtime():
    raise RuntimeError(123)  # the remote traceback shows this line


@pytest.fixture
def executor(ctx):
    ex = ProcessPoolExecutor(max_workers=3, mp_context=ctx)
    yield ex
    ex.shutdown(wait=True, cancel_futures=True)


def test_submit_and_keywords(executor):
    assert executor.submit(pow, 2, 8).result(WAIT) == 256
    assert executor.submit(h.add, 2, y=8).result(WAIT) == 10
    assert executor.submit(capture, 1, self=2, fn=3).result(WAIT) == ((1,), {"self": 2, "fn": 3})
    with pytest.raises(TypeError):
        executor.submit(fn=capture, arg=1)


def test_map_with_chunksize(executor):
    expected = list(map(pow, range(40), range(40)))
    for chunksize in (1, 3, 6, 40, 50):
        assert list(executor.map(pow, range(40), range(40), chunksize=chunksize)) == expected
    with pytest.raises(ValueError):
        list(executor.map(pow, range(4), range(4), chunksize=-1))


def test_map_exception_at_its_place(executor):
    it = executor.map(divmod, [1, 1, 1, 1], [2, 3, 0, 5])
    assert next(it) == (0, 1)
    assert next(it) == (0, 1)
    with pytest.raises(ZeroDivisionError):
        next(it)


def test_map_timeout(executor, tmp_path):
    list(executor.map(pow, range(6), range(6)))  # the workers are up
    results = []
    release = tmp_path / "release"
    try:
        with pytest.raises(futures.TimeoutError):
            for r in executor.map(h.wait_for_file, [str(tmp_path), str(tmp_path),
                                                    str(release)], timeout=1.0):
                results.append(r)
    finally:
        release.touch()
    assert results == [None, None]


def test_traceback_is_the_remote_one():
    with ProcessPoolExecutor(1) as ex:
        with pytest.raises(RuntimeError) as info:
            ex.submit(raise_runtime).result(WAIT)
    cause = info.value.__cause__
    assert type(cause) is futures.process._RemoteTraceback
    assert "raise RuntimeError(123)  # the remote traceback" in cause.tb


def test_max_workers_must_be_positive():
    for n in (0, -1):
        with pytest.raises(ValueError, match="max_workers must be greater than 0"):
            ProcessPoolExecutor(max_workers=n)
    with pytest.raises(ValueError):
        ProcessPoolExecutor(1, max_tasks_per_child=0)


def test_shutdown_race_with_more_tasks_than_workers(executor):
    executor.map(str, [2] * 4)
    executor.shutdown()


def test_submit_after_shutdown_raises(executor):
    executor.shutdown()
    with pytest.raises(RuntimeError, match="after shutdown"):
        executor.submit(pow, 2, 2)


def test_context_manager_waits_for_the_work(ctx):
    with ProcessPoolExecutor(2, mp_context=ctx) as ex:
        fs = [ex.submit(h.sleep_then, i, 0.05) for i in range(6)]
    assert all(f.done() for f in fs)
    assert [f.result() for f in fs] == list(range(6))
    assert ex._processes == {}


def test_shutdown_without_waiting_still_finishes_the_work():
    ex = ProcessPoolExecutor(2)
    fs = [ex.submit(h.sleep_then, i, 0.05) for i in range(6)]
    t0 = time.monotonic()
    ex.shutdown(wait=False)
    assert time.monotonic() - t0 < 5
    assert [f.result(WAIT) for f in fs] == list(range(6))
    ex._core.join(WAIT)


def test_shutdown_cancel_futures(tmp_path):
    release = str(tmp_path / "go")
    ex = ProcessPoolExecutor(1)
    running = ex.submit(h.touch_and_block, str(tmp_path / "started"), release, "ran")
    h.wait_for_file(str(tmp_path / "started"))
    queued = [ex.submit(pow, 2, i) for i in range(20)]

    def release_soon():
        # after shutdown() has started waiting
        while not ex._shutdown_thread:
            time.sleep(0.001)
        open(release, "w").close()

    t = threading.Thread(target=release_soon)
    t.start()
    ex.shutdown(wait=True, cancel_futures=True)
    t.join(WAIT)
    assert running.result(0) == "ran"
    cancelled = [f for f in queued if f.cancelled()]
    assert cancelled, "queued futures were not cancelled"
    for f in queued:
        assert f.done()
        if not f.cancelled():
            f.result(0)


def test_initializer_runs_in_every_worker(ctx):
    with ProcessPoolExecutor(2, mp_context=ctx, initializer=h.set_global,
                             initargs=("init",)) as ex:
        assert list(ex.map(h.get_global, range(8))) == ["init"] * 8


def test_failing_initializer_breaks_the_executor():
    ex = ProcessPoolExecutor(2, initializer=h.failing_initializer)
    try:
        # the executor may break before or after the task is submitted
        with pytest.raises(BrokenProcessPool):
            ex.submit(pow, 2, 2).result(WAIT)
        with pytest.raises(BrokenPool):
            ex.submit(pow, 2, 2)
    finally:
        ex.shutdown(wait=True)


def test_max_tasks_per_child(ctx):
    with ProcessPoolExecutor(1, mp_context=ctx, max_tasks_per_child=3) as ex:
        pids = [ex.submit(os.getpid).result(WAIT) for _ in range(4)]
        assert pids[0] == pids[1] == pids[2] != pids[3]
        assert len(ex._processes) == 1


def test_no_stale_reference_to_the_callable(executor):
    thing = Thing()
    collected = threading.Event()
    ref = weakref.ref(thing, lambda _: collected.set())
    executor.submit(thing.method).result(WAIT)
    del thing
    gc.collect()
    assert collected.wait(WAIT)
    assert ref() is None


def test_map_results_are_not_kept(executor):
    for obj in executor.map(make_thing, range(10)):
        ref = weakref.ref(obj)
        del obj
        gc.collect()
        assert ref() is None


def test_wait_and_as_completed(executor, tmp_path):
    fast = executor.submit(pow, 3, 3)
    slow = executor.submit(h.wait_for_file, str(tmp_path / "go"), "slow")
    failing = executor.submit(divmod, 1, 0)
    done, pending = futures.wait([fast, slow, failing], timeout=WAIT,
                                 return_when=futures.FIRST_EXCEPTION)
    assert failing in done and slow in pending
    open(tmp_path / "go", "w").close()
    finished = list(futures.as_completed([fast, slow, failing], timeout=WAIT))
    assert set(finished) == {fast, slow, failing}
    assert slow.result() == "slow" and fast.result() == 27


def test_asyncio_run_in_executor(executor):
    async def main():
        loop = asyncio.get_running_loop()
        results = await asyncio.gather(*(loop.run_in_executor(executor, pow, 2, i)
                                         for i in range(10)))
        return results

    assert asyncio.run(main()) == [2 ** i for i in range(10)]


def test_killed_worker_fails_only_its_future_and_the_executor_goes_on(ctx, tmp_path):
    ex = ProcessPoolExecutor(2, mp_context=ctx)
    try:
        started = str(tmp_path / "started")
        victim = ex.submit(h.touch_and_block, started, str(tmp_path / "never"))
        h.wait_for_file(started)
        others = [ex.submit(pow, 2, i) for i in range(10)]
        with ex._core._lock:
            pid = next(w.pid for w in ex._core._workers.values() if any(
                s.job.future is victim for lease in w.leases for s in lease.remaining()))
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(WorkerLost) as info:
            victim.result(WAIT)
        assert info.value.pid == pid and info.value.signal == "SIGKILL"
        assert [f.result(WAIT) for f in others] == [2 ** i for i in range(10)]
        assert ex.submit(pow, 2, 5).result(WAIT) == 32
    finally:
        ex.shutdown(wait=True, cancel_futures=True)


def test_os_exit_in_a_task_names_the_exit_code():
    with ProcessPoolExecutor(1) as ex:
        with pytest.raises(WorkerLost, match="exited with code 99"):
            ex.submit(os._exit, 99).result(WAIT)
        assert ex.submit(pow, 2, 3).result(WAIT) == 8


def test_retries_with_the_executor(tmp_path):
    with ProcessPoolExecutor(2, retries=1) as ex:
        f = ex.submit(h.die_once, str(tmp_path / "marker"), "again")
        assert f.result(WAIT) == "again"
        assert ex.statistics().tasks_retried == 1


def test_garbage_collected_executor_finishes_its_work():
    ex = ProcessPoolExecutor(1)
    f = ex.submit(h.sleep_then, "done", 0.05)
    core = ex._core
    del ex
    gc.collect()
    assert f.result(WAIT) == "done"
    assert core.join(WAIT)


def test_procwire_exports():
    assert procwire.ProcessPoolExecutor is ProcessPoolExecutor
    assert issubclass(BrokenPool, BrokenProcessPool)
    assert "ProcessPoolExecutor" in dir(procwire) and "Pool" in dir(procwire)
    assert sys.modules["procwire.pool"].WorkerLost is WorkerLost


def test_work_submitted_before_exit_is_finished(tmp_path):
    out = tmp_path / "out"
    code = f"""
import sys
sys.path.insert(0, {os.path.dirname(h.__file__)!r})
import poolhelpers as h
import procwire
if __name__ == "__main__":
    ex = procwire.ProcessPoolExecutor(1)
    f = ex.submit(h.sleep_then, "finished", 0.3)
    f.add_done_callback(lambda f: open({str(out)!r}, "w").write(f.result()))
"""
    import subprocess
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=WAIT)
    assert r.returncode == 0, r.stderr
    assert out.read_text() == "finished"


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_procwire_get_context_makes_real_pools(method):
    ctx = procwire.get_context(method)
    with ctx.Pool(2) as pool:
        assert pool.map(h.sq, range(10)) == [x * x for x in range(10)]
    with ctx.ProcessPoolExecutor(2) as ex:
        assert list(ex.map(h.sq, range(10), chunksize=3)) == [x * x for x in range(10)]
