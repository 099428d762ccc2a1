"""procwire.Pool: the multiprocessing.Pool API, pickling failures, life cycle, statistics."""
from __future__ import annotations

import dataclasses
import multiprocessing
import os
import pickle
import subprocess
import sys
import textwrap
import time
from multiprocessing.pool import MaybeEncodingError, RemoteTraceback

import poolhelpers as h
import pytest

import procwire
from procwire.pool import BrokenPool, PoolStatistics, PoolTerminated

# a thread of the pool (the manager, a feeder) that dies of an exception fails the test
pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")


WAIT = h.WAIT


def test_api_under_every_start_method(ctx):
    with procwire.Pool(2, context=ctx) as pool:
        assert pool.apply(h.add, (2, 3)) == 5
        assert pool.apply(h.add, (), {"x": 1, "y": 2}) == 3
        assert pool.map(h.sq, range(50)) == [x * x for x in range(50)]
        assert pool.map(h.sq, range(50), chunksize=7) == [x * x for x in range(50)]
        assert pool.starmap(h.add, [(i, i) for i in range(20)], 3) == [2 * i for i in range(20)]
        assert list(pool.imap(h.sq, range(30))) == [x * x for x in range(30)]
        assert list(pool.imap(h.sq, range(30), chunksize=4)) == [x * x for x in range(30)]
        assert sorted(pool.imap_unordered(h.sq, range(30), 5)) == [x * x for x in range(30)]
        r = pool.map_async(h.sq, range(10))
        assert r.get(WAIT) == [x * x for x in range(10)] and r.ready() and r.successful()
        assert pool.starmap_async(h.add, [(1, 2)]).get(WAIT) == [3]
        assert pool.map(h.sq, []) == [] and list(pool.imap(h.sq, [])) == []
        pids = set(pool.map(h.pid_of, range(200), chunksize=1))
        assert pids <= {p.pid for p in pool._pool} and os.getpid() not in pids
    pool.join()


def test_callbacks_and_error_callbacks():
    got, errors = [], []
    with procwire.Pool(2) as pool:
        pool.apply_async(h.sq, (4,), callback=got.append).wait(WAIT)
        pool.map_async(h.sq, [1, 2], callback=got.append).wait(WAIT)
        r = pool.apply_async(h.boom, (1,), error_callback=errors.append)
        with pytest.raises(KeyError):
            r.get(WAIT)
        assert not r.successful()
    assert got == [16, [1, 4]]
    assert isinstance(errors[0], KeyError)


def test_remote_traceback_names_the_failing_line():
    with procwire.Pool(1) as pool:
        with pytest.raises(KeyError) as info:
            pool.apply(h.boom, (7,))
    cause = info.value.__cause__
    assert isinstance(cause, RemoteTraceback)
    assert 'raise KeyError(f"boom {x}")' in cause.tb


def test_timeout_and_not_ready():
    with procwire.Pool(1) as pool:
        r = pool.apply_async(h.sleep_then, (1, 30))
        with pytest.raises(multiprocessing.TimeoutError):
            r.get(0.05)
        assert not r.ready()
        with pytest.raises(ValueError):
            r.successful()


def test_unpicklable_argument_fails_only_its_task():
    with procwire.Pool(2) as pool:
        bad = pool.apply_async(h.identity, (lambda: 1,))
        good = pool.apply_async(h.sq, (3,))
        with pytest.raises((pickle.PicklingError, AttributeError)) as info:
            bad.get(WAIT)
        assert "lambda" in str(info.value)
        assert good.get(WAIT) == 9
        with pytest.raises((pickle.PicklingError, AttributeError)):
            pool.map(h.identity, [1, 2, lambda: 3], chunksize=1)
        assert pool.map(h.sq, range(5)) == [0, 1, 4, 9, 16]


def test_argument_that_cannot_be_unpickled_in_the_worker_fails_alone():
    # Sent in one batch with good tasks: the worker reports the batch, the
    # pool re-sends its tasks one by one, and only the culprit fails.
    with procwire.Pool(1) as pool:
        pool.apply(h.sq, (1,))  # the worker is up; later tasks are batched
        blocker = pool.apply_async(h.sleep_then, (0, 0.2))
        results = [pool.apply_async(h.sq, (i,)) for i in range(5)]
        bad = pool.apply_async(h.identity, (h.LoadsOnlyInParent(os.getpid()),))
        more = [pool.apply_async(h.sq, (i,)) for i in range(5, 10)]
        blocker.get(WAIT)
        with pytest.raises(ValueError, match="only unpickles in pid"):
            bad.get(WAIT)
        assert [r.get(WAIT) for r in results + more] == [i * i for i in range(10)]


def test_unpicklable_result_fails_only_its_task():
    with procwire.Pool(2) as pool:
        for _ in range(5):
            r = pool.apply_async(h.unpicklable_result)
            with pytest.raises(MaybeEncodingError):
                r.get(WAIT)
            assert pool.apply(h.sq, (5,)) == 25
        assert pool.statistics().worker_deaths == 0


def test_result_that_cannot_be_unpickled_in_the_parent_fails_only_its_task():
    with procwire.Pool(2) as pool:
        rs = [pool.apply_async(h.unloadable_result if i == 3 else h.sq, (i,)) for i in range(8)]
        for i, r in enumerate(rs):
            if i == 3:
                with pytest.raises(RuntimeError, match="cannot be unpickled on purpose"):
                    r.get(WAIT)
            else:
                assert r.get(WAIT) == i * i
        assert pool.statistics().worker_deaths == 0


def test_large_arguments_and_results_stream_through():
    data = b"a" * (5 << 20)  # larger than a worker pipe's ring
    with procwire.Pool(2) as pool:
        assert pool.apply(h.length, (data,)) == len(data)
        assert pool.map(h.length, [data] * 4, chunksize=1) == [len(data)] * 4
        assert len(pool.apply(h.big_result, (9 << 20,))) == 9 << 20


def test_numpy_round_trip():
    np = pytest.importorskip("numpy")
    a = np.arange(1 << 17, dtype=np.float64)  # 1 MiB
    with procwire.Pool(2) as pool:
        out = pool.map(h.numpy_twice, [a] * 6, chunksize=1)
        # Large buffers travel out of band: the results are writable arrays of
        # their own; small and non-contiguous arrays travel in the pickle.
        mixed = [a, a[::2], a[:10], np.asfortranarray(np.ones((512, 300)))]
        again = pool.map(h.numpy_twice, mixed, chunksize=1)
        chunked = pool.map(h.numpy_twice, [a] * 6, chunksize=3)
    for b in out + chunked:
        assert (b == a * 2).all()
    out[0][1] = -1.0  # writable, and not shared with anything else
    assert out[1][1] == 2.0 and chunked[0][1] == 2.0
    for got, x in zip(again, mixed, strict=True):
        assert got.shape == x.shape and (got == x * 2).all()


def test_initializer_and_maxtasksperchild(ctx):
    with procwire.Pool(2, initializer=h.set_global, initargs=("ready",),
                       maxtasksperchild=3, context=ctx) as pool:
        assert pool.map(h.get_global, range(10), chunksize=1) == ["ready"] * 10
        pids = pool.map(h.pid_of, range(30), chunksize=1)
        # each worker runs at most 3 tasks, then a new one takes its place
        assert max(pids.count(p) for p in set(pids)) <= 3
        assert len(set(pids)) >= 10
        s = pool.statistics()
        assert s.worker_deaths == 0 and s.tasks_failed == 0 and s.workers_started >= 14


def test_invalid_arguments():
    with pytest.raises(ValueError):
        procwire.Pool(0)
    with pytest.raises(ValueError):
        procwire.Pool(1, maxtasksperchild=0)
    with pytest.raises(TypeError):
        procwire.Pool(1, initializer=3)
    with pytest.raises(ValueError, match="retries"):
        procwire.Pool(1, retries=-1)
    with procwire.Pool(1) as pool:
        with pytest.raises(ValueError):
            pool.map(h.sq, [1], chunksize=0)
        with pytest.raises(ValueError):
            pool.imap(h.sq, [1], chunksize=-1)


def test_close_runs_everything_then_join_returns():
    pool = procwire.Pool(2)
    rs = [pool.apply_async(h.sleep_then, (i, 0.01)) for i in range(20)]
    with pytest.raises(ValueError, match="still running"):
        pool.join()
    pool.close()
    with pytest.raises(ValueError, match="not running"):
        pool.apply_async(h.sq, (1,))
    pool.join(WAIT)
    assert [r.get(0) for r in rs] == list(range(20))
    assert pool._pool == []


def test_terminate_during_map_returns_promptly(tmp_path):
    started = str(tmp_path / "started")
    pool = procwire.Pool(3)
    r = pool.starmap_async(h.touch_and_sleep, [(started, 600)] * 3 + [(started, 0)] * 5000,
                           chunksize=1)
    h.wait_for_file(started)
    t0 = time.monotonic()
    pool.terminate()
    pool.join()
    assert time.monotonic() - t0 < 20
    with pytest.raises(PoolTerminated):
        r.get(WAIT)
    assert pool._pool == []


def test_context_manager_terminates_and_refuses_reuse():
    with procwire.Pool(1) as pool:
        assert pool.apply(h.sq, (2,)) == 4
    with pytest.raises(ValueError):
        with pool:
            pass
    with pytest.raises(ValueError):
        pool.map(h.sq, [1])
    pool.join()


def test_statistics_counts():
    with procwire.Pool(2) as pool:
        s = pool.statistics()
        assert isinstance(s, PoolStatistics) and s.workers == 2
        pool.map(h.sq, range(40), chunksize=4)
        with pytest.raises(KeyError):
            pool.apply(h.boom, (1,))
        s = pool.statistics()
        assert (s.tasks_done, s.tasks_failed, s.tasks_queued, s.tasks_running) == (11, 1, 0, 0)
        with pytest.raises(dataclasses.FrozenInstanceError):
            s.workers = 3  # type: ignore[misc]


def test_imap_reads_an_endless_generator_only_a_bounded_way_ahead():
    pulled, gen = h.counting(h.endless())
    with procwire.Pool(2) as pool:
        it = pool.imap(h.sq, gen, prefetch=50)
        assert [next(it) for _ in range(500)] == [i * i for i in range(500)]
        # the feeder stops at most `prefetch` chunks ahead of what was consumed
        h.wait_idle(pool)
        assert len(pulled) <= 500 + 50 + 1
        _, gen2 = h.counting(h.endless())
        it2 = pool.imap_unordered(h.sq, gen2, chunksize=10, prefetch=8)
        assert len([next(it2) for _ in range(100)]) == 100


def test_imap_next_timeout():
    with procwire.Pool(1) as pool:
        it = pool.imap(h.wait_for_file, ["/nonexistent/never"], chunksize=1)
        with pytest.raises(multiprocessing.TimeoutError):
            it.next(timeout=0.1)


def test_initializer_that_always_raises_breaks_the_pool_quickly():
    t0 = time.monotonic()
    pool = procwire.Pool(2, initializer=h.failing_initializer)
    try:
        # the pool may break before or after the task is submitted
        with pytest.raises(BrokenPool) as info:
            pool.apply_async(h.sq, (2,)).get(WAIT)
        assert isinstance(info.value.__cause__, ValueError)
        assert "initializer" in str(info.value)
        with pytest.raises(BrokenPool):
            pool.apply_async(h.sq, (3,))
        s = pool.statistics()
        assert s.workers_started <= 4  # no endless respawning
    finally:
        pool.terminate()
    assert time.monotonic() - t0 < WAIT


def test_unclosed_pool_in_object_at_exit():
    # multiprocessing's bpo-38744 scenario, with procwire.Pool: exit must not hang
    code = textwrap.dedent("""
        import procwire
        problem = None
        class A:
            def __init__(self):
                self.pool = procwire.Pool(processes=1)
        def test():
            global problem
            problem = A()
            problem.pool.map(float, tuple(range(10)))
        if __name__ == "__main__":
            test()
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=WAIT)
    assert out.returncode == 0, out.stderr


def test_garbage_collected_running_pool_warns_and_stops_its_workers():
    pool = procwire.Pool(1)
    procs, core = pool._pool, pool._core
    with pytest.warns(ResourceWarning, match="unclosed running multiprocessing pool"):
        del pool
        import gc
        gc.collect()
    assert core.join(WAIT)  # the manager stopped the workers and closed everything
    for p in procs:
        p.join(WAIT)
        assert p.exitcode is not None


def test_progress_bar_yields_everything_and_shows_the_pool():
    import io

    from rich.console import Console

    from procwire.pool import progress
    buf = io.StringIO()
    console = Console(file=buf, width=120, force_terminal=False)
    with procwire.Pool(2) as pool:
        got = list(progress(pool.imap_unordered(h.sq, range(300)), total=300, pool=pool,
                            console=console, description="squares"))
    assert sorted(got) == [x * x for x in range(300)]
    text = buf.getvalue()
    assert "squares" in text and "300/300" in text and "deaths 0" in text


def test_imap_then_close_and_join_before_reading():
    # multiprocessing's idiom: the results are read after join(); the bounded
    # read-ahead must not make join() wait for a consumer that comes later
    pool = procwire.Pool(2)
    it = pool.imap(h.sq, range(2000), prefetch=10)
    pool.close()
    pool.join(WAIT)
    assert list(it) == [x * x for x in range(2000)]


def test_each_failed_task_gets_its_own_exception():
    pool = procwire.Pool(1, initializer=h.failing_initializer)
    try:
        errors = []
        for i in range(3):
            # the pool may break before or after each task is submitted
            with pytest.raises(BrokenPool) as info:
                pool.apply_async(h.sq, (i,)).get(WAIT)
            errors.append(info.value)
        assert len({id(e) for e in errors}) == 3
        assert all(isinstance(e.__cause__, ValueError) for e in errors)
    finally:
        pool.terminate()
