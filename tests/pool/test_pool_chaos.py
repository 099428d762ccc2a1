"""Chaos: random workers SIGKILLed at random times during long maps.

Every task must end exactly once -- with its own result, or WorkerLost (or its
result after retries) -- none lost, none duplicated, and the map finishes.
The seed is printed; rerun one with POOL_CHAOS_SEED=<seed>.
"""
from __future__ import annotations

import os
import random
import signal
import threading
import time

import pytest

import poolhelpers as h
import procwire
from procwire import WorkerLost

pytestmark = [pytest.mark.timeout(300),
              pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")]
KILLS = int(os.environ.get("POOL_CHAOS_KILLS", "200"))


def _seed() -> int:
    seed = int(os.environ.get("POOL_CHAOS_SEED", random.randrange(1 << 32)))
    print(f"POOL_CHAOS_SEED={seed}")
    return seed


class Killer(threading.Thread):
    """Kills a random live worker after a random pause, `kills` times."""

    def __init__(self, pool, kills: int, seed: int) -> None:
        super().__init__(daemon=True)
        self.pool, self.kills, self.rng = pool, kills, random.Random(seed)
        self.done = threading.Event()
        self.killed = 0
        self.victims: set[int] = set()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            deadline = time.monotonic() + 240
            while self.killed < self.kills and time.monotonic() < deadline:
                time.sleep(self.rng.uniform(0, 0.015))
                pids = [p.pid for p in self.pool._pool if p.pid not in self.victims]
                if not pids:
                    continue
                pid = self.rng.choice(pids)
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    continue  # exited before we got to it: not a kill
                self.victims.add(pid)
                self.killed += 1
        except BaseException as e:
            self.error = e
        finally:
            self.done.set()


def _wait_deaths(pool, kills):
    # every kill is one death, once the manager has reaped the last victims
    deadline = time.monotonic() + h.WAIT
    while pool.statistics().worker_deaths < kills:
        assert time.monotonic() < deadline, pool.statistics()
        time.sleep(0.01)
    assert pool.statistics().worker_deaths == kills


def test_chaos_imap_every_task_ends_once():
    seed = _seed()
    pool = procwire.Pool(4, context=procwire.pool._local.multiprocessing.get_context("fork"))
    killer = Killer(pool, KILLS, seed)

    def tasks():
        i = 0
        while not killer.done.is_set() or i < 2000:
            yield i
            i += 1

    try:
        killer.start()
        outcomes = []
        it = pool.imap(h.tiny_work, tasks())
        while True:
            try:
                outcomes.append(next(it))
            except StopIteration:
                break
            except WorkerLost as e:
                assert e.signal == "SIGKILL"
                outcomes.append(e)
        killer.join(60)
        assert killer.error is None
        assert killer.killed == KILLS
        for i, o in enumerate(outcomes):
            assert o == i or isinstance(o, WorkerLost), (i, o)
        lost = sum(isinstance(o, WorkerLost) for o in outcomes)
        _wait_deaths(pool, KILLS)
        s = pool.statistics()
        assert s.tasks_done == len(outcomes) and s.tasks_failed == lost
        assert s.tasks_queued == 0 and s.tasks_running == 0
        print(f"{len(outcomes)} tasks, {KILLS} kills, {lost} WorkerLost")
    finally:
        pool.terminate()


def test_chaos_apply_async_with_retries_every_callback_fires_once():
    seed = _seed()
    kills = max(20, KILLS // 4)
    outcomes: dict[int, list] = {}
    lock = threading.Lock()

    def record(i):
        def ok(value):
            with lock:
                outcomes.setdefault(i, []).append(value)

        return ok

    pool = procwire.Pool(3, retries=2,
                         context=procwire.pool._local.multiprocessing.get_context("fork"))
    killer = Killer(pool, kills, seed + 1)
    try:
        results = []
        killer.start()
        i = 0
        while not killer.done.is_set() or i < 500:
            cb = record(i)
            results.append(pool.apply_async(h.tiny_work, (i,), callback=cb, error_callback=cb))
            i += 1
            if i % 200 == 0:
                results[-1].wait(h.WAIT)  # keep the backlog short
        for r in results:
            r.wait(h.WAIT)
            assert r.ready()
        assert killer.error is None and killer.killed == kills
        assert sorted(outcomes) == list(range(i))
        for n, got in outcomes.items():
            assert len(got) == 1, (n, got)  # never twice
            value = got[0]
            if isinstance(value, WorkerLost):
                assert value.attempts == 3
            else:
                assert value == n
        _wait_deaths(pool, kills)
        s = pool.statistics()
        assert s.tasks_done == i
        print(f"{i} tasks, {kills} kills, {s.tasks_retried} retries, {s.tasks_failed} lost")
    finally:
        pool.terminate()
