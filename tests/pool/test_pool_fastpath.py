"""The pool's fast paths keep its guarantees: outcomes settled in runs, a
results message that a reader lost, imap's adaptive read-ahead."""
from __future__ import annotations

import threading

import poolhelpers as h
import pytest

import procwire

pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")

WAIT = h.WAIT


def test_callbacks_run_in_the_manager_thread(ctx):
    threads = []
    with procwire.Pool(2, context=ctx) as pool:
        for i in range(20):
            r = pool.apply_async(h.sq, (i,), callback=lambda v: threads.append(
                threading.current_thread().name))
            assert r.get(WAIT) == i * i
        failed = pool.apply_async(h.boom, (1,), error_callback=lambda e: threads.append(
            threading.current_thread().name))
        with pytest.raises(KeyError):
            failed.get(WAIT)
    assert threads == ["procwire-pool-manager"] * 21


def test_an_apply_between_map_batches_gets_its_own_result():
    with procwire.Pool(1) as pool:
        mapped = pool.map_async(h.sq, range(1000), chunksize=1)
        one = pool.apply_async(h.sq, (7,))
        assert one.get(WAIT) == 49
        assert mapped.get(WAIT) == [i * i for i in range(1000)]
        s = pool.statistics()
        assert s.tasks_done == 1001 and s.tasks_running == 0 and s.tasks_queued == 0


def test_a_result_message_lost_by_an_interrupted_reader_fails_only_its_tasks():
    # An exception in the reading thread between taking a message off a
    # worker's pipe and settling it would lose it. Simulated here by taking one
    # and dropping it: its task fails with a clear error; the next results
    # still go to the right tasks (each message names its place in the
    # worker's stream).
    with procwire.Pool(1) as pool:
        assert pool.apply(h.sq, (2,)) == 4  # the worker is ready
        core = pool._core
        w = next(iter(core._workers.values()))
        with w.reading:  # neither the manager nor a caller reads meanwhile
            lost = pool.apply_async(h.sq, (3,))
            w.conn.recv_bytes(timeout=WAIT)
        del w, core
        after = [pool.apply_async(h.sq, (i,)) for i in range(5)]
        assert [r.get(WAIT) for r in after] == [i * i for i in range(5)]
        with pytest.raises(RuntimeError, match="result was lost"):
            lost.get(WAIT)
        assert pool.map(h.sq, range(100)) == [i * i for i in range(100)]
        s = pool.statistics()
        assert s.tasks_failed == 1 and s.tasks_running == 0


def test_imap_runs_with_failures_keep_their_places():
    with procwire.Pool(2) as pool:
        out = []
        it = pool.imap(h.boom_if_odd, range(200))
        for _ in range(200):
            try:
                out.append(next(it))
            except ValueError:
                out.append("odd")
        assert out == [i if i % 2 == 0 else "odd" for i in range(200)]
        got = pool.map_async(h.boom_if_odd, range(10), chunksize=1)
        with pytest.raises(ValueError):
            got.get(WAIT)


def test_imap_default_read_ahead_grows_for_tiny_tasks_and_stays_bounded():
    from procwire.pool._local import READ_AHEAD_MAX, READ_AHEAD_MIN
    pulled, gen = h.counting(h.endless())
    with procwire.Pool(2) as pool:
        assert pool._core.read_ahead() == 2 * READ_AHEAD_MIN  # nothing measured yet
        it = pool.imap_unordered(h.sq, gen)
        assert len([next(it) for _ in range(50_000)]) == 50_000
        h.wait_idle(pool)
        assert 2 * READ_AHEAD_MIN < pool._core.read_ahead() <= 2 * READ_AHEAD_MAX
        assert len(pulled) <= 50_000 + 2 * READ_AHEAD_MAX + 1
