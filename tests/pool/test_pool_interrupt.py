"""Ctrl-C while a task is being submitted leaves the pool consistent.

A KeyboardInterrupt can arrive at any bytecode of the submitting thread: after
the core took a batch off its backlog, after it recorded the batch in a
worker's ledger and before it wrote it down the worker's pipe. The batch must
then be either submitted (it runs; close() and join() finish) or not taken at
all, never recorded as leased but never sent (its result would never come,
and join() would wait for it for ever). The interrupts here are real SIGINTs,
sent at the named points by a wrapper around the core's own step.
"""
from __future__ import annotations

import os
import random
import signal
import threading
import time

import pytest
from poolhelpers import WAIT, sq

import procwire
from procwire.pool._local import LocalCore


def _ctrl_c() -> None:
    """Ctrl-C, as a terminal sends it: the handler runs at the main thread's next bytecode."""
    os.kill(os.getpid(), signal.SIGINT)


@pytest.fixture
def default_sigint():
    # A run started in the background inherits SIGINT ignored: take Python's own.
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, old)


def _interrupt_once_in(monkeypatch, name: str) -> list[int]:
    """Make the core's step ``name`` receive one Ctrl-C as it begins (main thread only)."""
    real = getattr(LocalCore, name)
    fired: list[int] = []

    def interrupted(*args, **kwargs):
        if not fired and threading.current_thread() is threading.main_thread():
            fired.append(1)
            _ctrl_c()
        return real(*args, **kwargs)

    if isinstance(LocalCore.__dict__[name], staticmethod):
        monkeypatch.setattr(LocalCore, name, staticmethod(interrupted))
    else:
        monkeypatch.setattr(LocalCore, name, interrupted)
    return fired


def _settles(pool, tasks: int) -> None:
    """close() and join() finish within the bound, with every task done and none held."""
    pool.close()
    start = time.monotonic()
    pool.join(WAIT)
    assert time.monotonic() - start < WAIT, "join() waited for a batch that was never sent"
    stats = pool.statistics()
    assert (stats.tasks_queued, stats.tasks_running, stats.tasks_done) == (0, 0, tasks), stats


# The core's steps between taking a batch off the backlog and writing it:
# pickling it, and (after the ledger entry) writing it down the pipe.
STEPS = ["_dump_batch", "_write"]


@pytest.mark.parametrize("step", STEPS)
def test_ctrl_c_during_apply_async_submits_the_task_or_nothing(ctx, step, monkeypatch,
                                                             default_sigint):
    pool = procwire.Pool(1, context=ctx)
    try:
        assert pool.apply(sq, (2,)) == 4            # the worker is up and idle
        fired = _interrupt_once_in(monkeypatch, step)
        with pytest.raises(KeyboardInterrupt):
            pool.apply_async(sq, (3,))
        assert fired
        monkeypatch.undo()
        # The interrupted task was submitted whole: it runs, and the pool still works.
        assert pool.apply(sq, (4,)) == 16
        _settles(pool, 3)
    finally:
        pool.terminate()


@pytest.mark.parametrize("step", STEPS)
def test_ctrl_c_during_map_async_submits_the_map_or_nothing(step, monkeypatch, default_sigint):
    pool = procwire.Pool(2)
    try:
        assert pool.map(sq, range(4)) == [0, 1, 4, 9]
        fired = _interrupt_once_in(monkeypatch, step)
        with pytest.raises(KeyboardInterrupt):
            pool.map_async(sq, range(100), chunksize=10)
        assert fired
        monkeypatch.undo()
        assert pool.map(sq, range(3), chunksize=1) == [0, 1, 4]
        _settles(pool, 4 + 10 + 3)   # counted in chunks
    finally:
        pool.terminate()


def test_ctrl_c_during_imap_registers_the_reader_or_nothing(monkeypatch, default_sigint):
    pool = procwire.Pool(2)
    try:
        real_start = threading.Thread.start
        fired: list[int] = []

        def interrupted_start(self):
            if not fired and threading.current_thread() is threading.main_thread():
                fired.append(1)
                _ctrl_c()
            return real_start(self)

        monkeypatch.setattr(threading.Thread, "start", interrupted_start)
        with pytest.raises(KeyboardInterrupt):
            pool.imap(sq, range(50))
        assert fired
        monkeypatch.undo()
        pool.close()
        start = time.monotonic()
        pool.join(WAIT)  # a reader registered but never started would hold close() up
        assert time.monotonic() - start < WAIT
    finally:
        pool.terminate()


def test_random_ctrl_c_while_submitting_never_loses_a_task(default_sigint):
    """Ctrl-C at random moments of a submitting loop: every submitted task ends."""
    rounds = 150
    armed = threading.Event()
    caught = threading.Semaphore(0)
    stop = False

    def fire() -> None:
        rng = random.Random(os.getpid())
        for _ in range(rounds):
            if not armed.wait(WAIT):
                return
            deadline = time.perf_counter() + rng.uniform(0, 0.002)
            while time.perf_counter() < deadline:
                pass  # a random moment of the loop below (not a synchronisation)
            _ctrl_c()
            if not caught.acquire(timeout=WAIT) or stop:
                return

    pool = procwire.Pool(2)
    shooter = threading.Thread(target=fire)
    results = []
    interrupts = 0
    try:
        shooter.start()
        for _ in range(rounds):
            armed.set()
            try:
                while True:
                    results.append(pool.apply_async(sq, (len(results),)))
                    if len(results) % 8 == 0:
                        results[-1].get(WAIT)  # keep the backlog short
            except KeyboardInterrupt:
                armed.clear()
                interrupts += 1
                caught.release()
    finally:
        stop = True
        armed.clear()
        caught.release()
        shooter.join(WAIT)
    try:
        assert interrupts == rounds
        for i, r in enumerate(results):
            assert r.get(WAIT) == i * i
        pool.close()
        start = time.monotonic()
        pool.join(WAIT)
        assert time.monotonic() - start < WAIT
        stats = pool.statistics()
        assert (stats.tasks_queued, stats.tasks_running) == (0, 0), stats
        # Tasks interrupted after their submission ran too (their result objects
        # never reached us): at least every returned one, at most one more per Ctrl-C.
        assert len(results) <= stats.tasks_done <= len(results) + rounds
    finally:
        pool.terminate()


def _fork_and_try_ctrl_c(result: dict) -> None:
    """From a thread: fork; the child reports whether Ctrl-C raises KeyboardInterrupt in it."""
    pid = os.fork()
    if pid == 0:
        code = 2
        try:
            try:
                _ctrl_c()
                for _ in range(1000):  # bytecodes: the handler runs at one of them
                    pass
            except KeyboardInterrupt:
                code = 0
        finally:
            os._exit(code)
    result["exitcode"] = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def test_a_process_forked_during_a_submission_gets_ctrl_c_back(monkeypatch, default_sigint):
    """Another thread forks while the main thread holds Ctrl-C back in a submission:
    in the child that thread is the main one, and Ctrl-C must raise there."""
    pool = procwire.Pool(1)
    try:
        assert pool.apply(sq, (2,)) == 4
        real = LocalCore._write
        result: dict = {}

        def fork_meanwhile(self, w, data):
            if not result and threading.current_thread() is threading.main_thread():
                forker = threading.Thread(target=_fork_and_try_ctrl_c, args=(result,))
                forker.start()
                forker.join(WAIT)
            return real(self, w, data)

        monkeypatch.setattr(LocalCore, "_write", fork_meanwhile)
        assert pool.apply(sq, (3,)) == 9
        assert result == {"exitcode": 0}, "Ctrl-C stayed held in the forked child"
    finally:
        pool.terminate()


@pytest.mark.parametrize("step", STEPS)
def test_ctrl_c_hold_gives_the_users_own_handler_back(step, monkeypatch):
    """A handler of the user's own (not raising) runs once, after the submission, and is
    SIGINT's handler again afterwards; Python's default handler is put back the same way."""
    calls: list[int] = []

    def handler(signum, frame):
        calls.append(signum)

    old = signal.signal(signal.SIGINT, handler)
    pool = procwire.Pool(1)
    try:
        assert pool.apply(sq, (2,)) == 4
        fired = _interrupt_once_in(monkeypatch, step)
        result = pool.apply_async(sq, (3,))      # no KeyboardInterrupt: the handler does not raise
        assert fired and calls == [signal.SIGINT]
        assert signal.getsignal(signal.SIGINT) is handler
        assert result.get(WAIT) == 9
        monkeypatch.undo()
        signal.signal(signal.SIGINT, signal.default_int_handler)
        fired = _interrupt_once_in(monkeypatch, step)
        with pytest.raises(KeyboardInterrupt):
            pool.apply_async(sq, (4,))
        assert fired
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        monkeypatch.undo()
        _settles(pool, 3)
    finally:
        pool.terminate()
        signal.signal(signal.SIGINT, old)
