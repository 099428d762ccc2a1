"""multiprocessing's own behavioural tests, run against procwire's objects.

CPython ships them as ``test._test_multiprocessing``; its ``test_multiprocessing_fork``
(``_spawn``, ``_forkserver``) modules turn the ``_TestX`` classes into test cases
by mixing in ``ProcessesMixin``, whose ``Queue``, ``Lock``, ``Pipe``, ``Value``...
are multiprocessing's. Here the same classes get a mixin whose objects are
procwire's, once per start method, so that "change one import" is checked by
the tests multiprocessing itself must pass.

The classes are built at import (children under spawn and forkserver import
this module again to find the test's target functions, which are classmethods
of these classes) and are plain ``unittest.TestCase`` classes that pytest runs,
with the autouse leak check of ``tests/conftest.py`` applied to every test.
"""
from __future__ import annotations

import gc
import multiprocessing
import os
import threading
import unittest

import pytest

import procwire
import procwire.connection
from procwire import shared as _procwire_shared

try:
    from test import _test_multiprocessing as mpt
except ImportError:  # pragma: no cover - a Python built without its test package
    pytest.skip("this Python has no test._test_multiprocessing", allow_module_level=True)

START_METHODS = ("fork", "spawn", "forkserver")

# The _TestX classes of test._test_multiprocessing that exercise what procwire
# replaces (and Process/Finalize, which must keep working with procwire's
# objects passed to children).
CLASSES = ("Process", "Queue", "Lock", "Semaphore", "Condition", "Event", "Barrier",
           "Value", "Array", "Connection", "Poll", "PicklingConnections", "SharedCTypes",
           "Finalize")

# Deliberate differences, documented in README.md ("Differences from
# multiprocessing"). Each entry excludes exactly one test, with the reason.
EXCLUDED = {
    # multiprocessing's feeder thread logs the pickling error and goes on; the
    # test puts an unpicklable object and expects put() to return. procwire
    # pickles in put(), which raises, so nothing is lost silently.
    ("Queue", "test_queue_feeder_donot_stop_onexc"):
        "deliberate difference: put() pickles in the caller and raises for an "
        "unpicklable object (README, differences)",
    # The child writes raw bytes into conn.fileno() to fake a descriptor-less
    # message. A procwire Connection's fileno() is its readiness (epoll)
    # descriptor, not the carrier of its data, so the write fails with EINVAL
    # and the parent then waits for a message that never comes. Descriptors
    # travel over the end's life socket instead (send_handle/recv_handle, which
    # multiprocessing.reduction's functions reach), tested in
    # tests/pipe/test_pipe_handles.py.
    ("Connection", "test_missing_fd_transfer"):
        "deliberate difference: fileno() is a readiness descriptor, not the data "
        "socket (README, pipe section)",
}

# Tests whose failure damages the test process itself, so that every later
# test of the session would fail for it: each runs in a forked copy of this
# process and its result (failure and traceback included) is reported here.
# test_pickling sends a multiprocessing Connection through a procwire Pipe; if
# the pipe pickles it without multiprocessing's reducers, the receiving end
# gets a Connection around the sender's descriptor *number*, and closing it
# closes whatever this process has under that number (pytest's own capture
# descriptors, say).
ISOLATED = {
    ("PicklingConnections", "test_pickling"),
}
ISOLATED_TIMEOUT = 60  # seconds; below pytest-timeout's 120, so the hang is reported as such

# _TestSharedCTypes calls multiprocessing.sharedctypes.Value through the
# module's global name, not through the mixin: point that name at procwire's.
mpt.Value = _procwire_shared.Value


@pytest.fixture(scope="module", autouse=True)
def _warm_multiprocessing_heap():
    """Create multiprocessing's private heap arena before the leak checks.

    _TestBarrier's helper list lives in ``multiprocessing.heap``, whose arena
    (two descriptors of a /dev/shm file) is made on first use and kept for
    the life of the process: infrastructure, not a leak of the first test.
    """
    import multiprocessing.heap
    multiprocessing.heap.BufferWrapper(1)
    yield


class ProcwireMixin(mpt.ProcessesMixin):
    """ProcessesMixin with procwire's objects in place of multiprocessing's."""

    start_method = "fork"
    connection = procwire.connection  # Listener/Client, as PicklingConnections uses them
    Pipe = staticmethod(procwire.Pipe)
    Queue = staticmethod(procwire.Queue)
    JoinableQueue = staticmethod(procwire.JoinableQueue)
    Lock = staticmethod(procwire.Lock)
    RLock = staticmethod(procwire.RLock)
    Semaphore = staticmethod(procwire.Semaphore)
    BoundedSemaphore = staticmethod(procwire.BoundedSemaphore)
    Condition = staticmethod(procwire.Condition)
    Event = staticmethod(procwire.Event)
    Barrier = staticmethod(procwire.Barrier)
    Value = staticmethod(procwire.Value)
    Array = staticmethod(procwire.Array)
    RawValue = staticmethod(procwire.RawValue)
    RawArray = staticmethod(procwire.RawArray)

    @classmethod
    def setUpClass(cls):
        # What test_multiprocessing_<method>'s setUpModule does, per class, so
        # that the three start methods can share one pytest session.
        cls._old_start_method = multiprocessing.get_start_method(allow_none=True)
        multiprocessing.set_start_method(cls.start_method, force=True)
        super().setUpClass()

    @classmethod
    def tearDownClass(cls):
        super().tearDownClass()
        multiprocessing.set_start_method(cls._old_start_method, force=True)

    def tearDown(self):
        # Some tests leave a multiprocessing.Queue (not procwire's) to the
        # garbage collector without close(), e.g. test_queue_feeder_on_queue_
        # feeder_error; its feeder thread keeps the queue's pipe open until
        # the queue is collected. Collect now and let those threads finish,
        # so the leak check sees what the test really left behind.
        gc.collect()
        for thread in threading.enumerate():
            if thread.name == "QueueFeederThread":
                thread.join(10)
        super().tearDown()


def _isolated(test):
    """Run `test` in a forked child; report its outcome and traceback here."""
    import functools
    import pickle
    import select
    import signal
    import time
    import traceback

    @functools.wraps(test)
    def run(self):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: run the test, send the outcome, never return
            code = 0
            try:
                os.setpgid(0, 0)  # its own group, so that a hang is killed whole
                os.close(r)
                # The forkserver is the parent's child, not this copy's, which
                # could not check on it (waitpid): let the copy start its own.
                from multiprocessing import forkserver
                server = forkserver._forkserver
                server._forkserver_pid = server._forkserver_address = None
                server._forkserver_alive_fd = None
                try:
                    test(self)
                    outcome = ("passed", "")
                except unittest.SkipTest as exc:
                    outcome = ("skipped", str(exc))
                except BaseException:
                    outcome = ("failed", traceback.format_exc())
                # os._exit skips multiprocessing's exit handler: end the
                # test's (daemon) processes here, whatever the start method.
                for child in multiprocessing.active_children():
                    child.kill()
                    child.join(10)
                os.write(w, pickle.dumps(outcome))
            except BaseException:
                code = 1
            finally:
                os._exit(code)
        os.close(w)
        data = b""
        deadline = time.monotonic() + ISOLATED_TIMEOUT
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([r], [], [], left)[0]:
                    os.killpg(pid, signal.SIGKILL)
                    raise AssertionError(f"no result within {ISOLATED_TIMEOUT} s (hang)")
                chunk = os.read(r, 65536)
                if not chunk:
                    break
                data += chunk
        finally:
            os.close(r)
            os.waitpid(pid, 0)
            try:  # what the copy started and left (a forkserver of its own, say)
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if not data:
            raise AssertionError("the forked test process died without a result")
        status, detail = pickle.loads(data)
        if status == "skipped":
            self.skipTest(detail)
        if status == "failed":
            raise AssertionError("in a forked copy of the test process:\n" + detail)

    return run


def _excluded(reason):
    def test(self):
        pytest.skip(reason)
    return test


def _build() -> dict[str, type]:
    built = {}
    for method in START_METHODS:
        for short in CLASSES:
            base = getattr(mpt, "_Test" + short)
            assert "processes" in base.ALLOWED_TYPES, base
            name = f"Test{method.capitalize()}{short}"
            mixin = type(f"ProcwireMixin{method.capitalize()}", (ProcwireMixin,),
                         {"start_method": method, "__module__": __name__})
            body = {"__module__": __name__, "__qualname__": name}
            for cls_short, test_name in ISOLATED:
                if cls_short == short:
                    body[test_name] = _isolated(getattr(base, test_name))
            for (cls_short, test_name), reason in EXCLUDED.items():
                if cls_short == short and hasattr(base, test_name):
                    body[test_name] = _excluded(reason)
            built[name] = type(name, (base, mixin, unittest.TestCase), body)
    return built


globals().update(_build())
