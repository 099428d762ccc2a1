"""Helpers shared by the sync and shared tests (imported as a plain module)."""
from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import threading
import time
import uuid

import pytest

SRC = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "src"))


def unique(prefix: str) -> str:
    return f"test-{prefix}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def run_py(code: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run `code` in an unrelated interpreter (not a multiprocessing child)."""
    env = dict(os.environ, PYTHONPATH=SRC)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=timeout, env=env)


def popen_py(code: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=SRC)
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def interrupt_main_after(delay: float) -> threading.Thread:
    """SIGINT the main thread after `delay` seconds, from a timer thread."""
    main = threading.main_thread().ident

    def fire() -> None:
        time.sleep(delay)  # the delay being tested, not a synchronisation stand-in
        signal.pthread_kill(main, signal.SIGINT)

    t = threading.Thread(target=fire, daemon=True)
    t.start()
    return t


def join_all(procs, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    alive = [p for p in procs if p.is_alive()]
    for p in alive:
        p.kill()
        p.join(5)
    assert not alive, f"processes still running after {timeout} s: {alive}"


@pytest.fixture(autouse=True)
def collect_before_leak_check():
    """Collect garbage before tests/conftest.py's leak check: a test's objects
    may sit in a reference cycle (an exception's traceback holds the test's
    frame), and an unclosed procwire object frees its descriptor when it is
    collected. Import this fixture into each test module."""
    yield
    gc.collect()
