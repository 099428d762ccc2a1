"""Ctrl-C and other signals while a queue call is blocked."""
from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from procwire import JoinableQueue, Queue


def _when_asleep(q, key, action):
    """Run `action` from a thread once `key` waiters sleep on the queue."""
    def run():
        deadline = time.monotonic() + 10
        while q.statistics()[key] == 0 and time.monotonic() < deadline:
            time.sleep(0.001)
        action()
    t = threading.Thread(target=run)
    t.start()
    return t


def _ctrl_c():
    os.kill(os.getpid(), signal.SIGINT)


@pytest.mark.parametrize("call", ["get", "get_many", "put", "put_many", "join"])
def test_ctrl_c_interrupts_a_call_blocked_forever(call):
    q = JoinableQueue(maxsize=1)
    try:
        if call.startswith("put"):
            q.put("fill")
            key = "producers_waiting"
        elif call == "join":
            q.put("unfinished")
            key = "joiners_waiting"
        else:
            key = "consumers_waiting"
        blocked = {
            "get": lambda: q.get(),
            "get_many": lambda: q.get_many(),
            "put": lambda: q.put("x"),
            "put_many": lambda: q.put_many(["x", "y"]),
            "join": lambda: q.join(),
        }[call]
        t = _when_asleep(q, key, _ctrl_c)
        t0 = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            blocked()
        assert time.monotonic() - t0 < 5
        t.join(10)
    finally:
        q.close()


def test_a_handler_that_returns_lets_the_wait_go_on():
    q = Queue()
    seen = []
    old = signal.signal(signal.SIGUSR1, lambda *a: seen.append("usr1"))
    try:
        def poke_then_put():
            os.kill(os.getpid(), signal.SIGUSR1)
            # The getter goes back to sleep after the handler; wait for it.
            deadline = time.monotonic() + 10
            while not seen and time.monotonic() < deadline:
                time.sleep(0.001)
            while q.statistics()["consumers_waiting"] == 0 and time.monotonic() < deadline:
                time.sleep(0.001)
            q.put("after the signal")

        t = _when_asleep(q, "consumers_waiting", poke_then_put)
        assert q.get(timeout=20) == "after the signal"
        assert seen == ["usr1"]
        t.join(10)
    finally:
        signal.signal(signal.SIGUSR1, old)
        q.close()


def test_a_raising_handler_propagates_its_exception_from_get():
    q = Queue()

    class Stop(Exception):
        pass

    def handler(*args):
        raise Stop

    old = signal.signal(signal.SIGUSR2, handler)
    try:
        t = _when_asleep(q, "consumers_waiting", lambda: os.kill(os.getpid(), signal.SIGUSR2))
        with pytest.raises(Stop):
            q.get(timeout=30)
        t.join(10)
    finally:
        signal.signal(signal.SIGUSR2, old)
        q.close()
