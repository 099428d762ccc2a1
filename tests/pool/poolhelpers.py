"""Task functions for the pool tests (importable by workers under every start method)."""
from __future__ import annotations

import ctypes
import os
import signal
import threading
import time

WAIT = 60.0  # seconds: a bound for a hang, never a speed check


def sq(x):
    return x * x


def add(x, y):
    return x + y


def pid_of(_=None):
    return os.getpid()


def boom(x):
    raise KeyError(f"boom {x}")  # the remote traceback names this line


def identity(x):
    return x


def sleep_then(x, seconds):
    time.sleep(seconds)
    return x


def wait_for_file(path, value=None):
    """Block until `path` exists (a test creates it): a task that runs until told."""
    deadline = time.monotonic() + WAIT
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(path)
        time.sleep(0.005)
    return value


def touch_and_block(started, path, value=None):
    """Say 'started' (create a file), then block until `path` exists."""
    with open(started, "w"):
        pass
    return wait_for_file(path, value)


def touch_and_sleep(started, seconds):
    with open(started, "w"):
        pass
    time.sleep(seconds)


def die_by(how):
    if how == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif how == "exit":
        os._exit(7)
    elif how == "segfault":
        import faulthandler
        faulthandler.disable()  # pytest's handler would print this worker's stack
        ctypes.string_at(0)
    elif how == "sys.exit":
        raise SystemExit(3)
    time.sleep(WAIT)


def die_once(marker, value):
    """Die by SIGKILL the first time (no marker file yet), return `value` the second."""
    if not os.path.exists(marker):
        with open(marker, "w"):
            pass
        os.kill(os.getpid(), signal.SIGKILL)
    return value


def kill_if(x):
    if x == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    return x


def always_die(_=None):
    os.kill(os.getpid(), signal.SIGKILL)


def unpicklable_result(_=None):
    return lambda: 42


class Unloadable:
    """Pickles fine, fails to unpickle anywhere: its reconstruction raises."""

    def __reduce__(self):
        return (_refuse, ("cannot be unpickled on purpose",))


def _refuse(message):
    raise RuntimeError(message)


def unloadable_result(_=None):
    return Unloadable()


class LoadsOnlyInParent:
    """Unpickles in the parent, not in a worker (its constructor checks the pid)."""

    def __init__(self, parent):
        self.parent = parent

    def __reduce__(self):
        return (_only_in, (self.parent,))


def _only_in(pid):
    if os.getpid() != pid:
        raise ValueError(f"this argument only unpickles in pid {pid}")
    return LoadsOnlyInParent(pid)


def big_result(nbytes):
    return b"r" * nbytes


def numpy_twice(a):
    return a * 2


def set_global(value):
    global INITIALIZED
    INITIALIZED = value


INITIALIZED = None


def get_global(_=None):
    return INITIALIZED


def failing_initializer():
    raise ValueError("initializer fails on purpose")


def _my_connection():
    from procwire.pool import _worker
    assert _worker.connection is not None, "not in a pool worker"
    return _worker.connection


def _die_after_2_mib(counter):
    """SIGKILL this worker once its pipe's ``counter`` statistic has grown by 2 MiB."""
    conn = _my_connection()
    start = conn.statistics()[counter]

    def killer():
        deadline = time.monotonic() + WAIT
        while conn.statistics()[counter] < start + (2 << 20):
            if time.monotonic() > deadline:
                return
            time.sleep(0.0005)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=killer, daemon=True).start()


def kill_self_mid_send(nbytes):
    """Return `nbytes` of data, but die by SIGKILL once part of it is in the pipe."""
    _die_after_2_mib("bytes_sent")
    return b"s" * nbytes


def kill_self_mid_send_array(nbytes):
    """Like kill_self_mid_send, with a numpy array (whose buffer travels out of band)."""
    import numpy as np
    kill_self_mid_send(0)
    return np.ones(nbytes // 8)


def arm_kill_mid_receive(_=None):
    """Die by SIGKILL once the next (large) task is partly received."""
    _die_after_2_mib("bytes_received")
    return os.getpid()


def length(data):
    return len(data)


def endless():
    i = 0
    while True:
        yield i
        i += 1


def tiny_work(i):
    # About 0.2-1 ms of work, so that kills land in every phase.
    x = 0
    for k in range(2000 + (i % 7) * 1000):
        x += k
    return i


def boom_if_odd(x):
    if x % 2:
        raise ValueError(f"odd: {x}")
    return x


def counting(iterable):
    """A generator over `iterable`, and the list of the items it has yielded so far."""
    pulled = []

    def gen():
        for item in iterable:
            pulled.append(item)
            yield item

    return pulled, gen()


def wait_idle(pool):
    """Wait until the pool has no task queued or running (an imap feeder has stopped)."""
    deadline = time.monotonic() + WAIT
    while pool.statistics().tasks_running + pool.statistics().tasks_queued:
        assert time.monotonic() < deadline, pool.statistics()
        time.sleep(0.01)
