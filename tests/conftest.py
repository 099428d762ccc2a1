"""Fixtures every test shares.

* ``ctx``: a multiprocessing context, parametrised over fork, spawn and
  forkserver, for tests whose body should hold under every start method.
* An autouse leak check: a test fails if it leaves behind a child process,
  an open file descriptor, or an entry in /dev/shm/procwire.*.
"""
from __future__ import annotations

import contextlib
import multiprocessing as mp
import multiprocessing.forkserver as mp_forkserver
import multiprocessing.resource_sharer as mp_resource_sharer
import multiprocessing.resource_tracker as mp_resource_tracker
import os
import signal
import time

import pytest
from _pytest.reports import TestReport

from leakcheck import children as _children, leaks, shm_entries as _shm_entries

# The cleanup tracker (procwire._tracker) removes the names of killed creators.
# The suite runs without it unless PROCWIRE_TRACKER=1 is set, so that the leak
# check below still sees every name a process fails to remove in order (with
# the tracker on, such a leak would be cleaned up behind the test's back, a
# few milliseconds late). tests/cleanup/ turns it on in its own creators.
os.environ.setdefault("PROCWIRE_TRACKER", "0")

START_METHODS = ("fork", "spawn", "forkserver")


def pytest_addoption(parser):
    parser.addoption(
        "--full-chaos", action="store_true", default=False,
        help="run the chaos and fuzz tests at full size (at least 1,000 SIGKILLs per "
             "mechanism, thousands of corrupt segments); .ci/run does this once")


def _noop() -> None:
    pass


@pytest.fixture(scope="session", autouse=True)
def _warm_multiprocessing_servers():
    """Start the forkserver and resource tracker once, before any leak check.

    Both are long-lived helpers multiprocessing starts on first use; without
    this, the first test to use them would look like it leaked a process and
    its descriptors.
    """
    for method in ("forkserver", "spawn"):
        p = mp.get_context(method).Process(target=_noop)
        p.start()
        p.join(30)
    if os.environ["PROCWIRE_TRACKER"] != "0":
        from procwire import _tracker
        _tracker.ensure_running()
    yield


@pytest.fixture(params=START_METHODS)
def ctx(request):
    return mp.get_context(request.param)


def _open_fds() -> set[int]:
    return {int(fd) for fd in os.listdir("/proc/self/fd")}


def _reap(pids: set[int]) -> None:
    for pid in pids:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass


def _infrastructure() -> tuple[set[int], set[int]]:
    """multiprocessing's long-lived helpers now: (pids, our descriptors to them).

    The forkserver and the resource tracker are started once and kept; a test
    may legitimately restart them (multiprocessing's own tests kill the
    forkserver on purpose), and the new ones are not the test's leaks.
    """
    pids: set[int] = set()
    fds: set[int] = set()
    server = mp_forkserver._forkserver
    if server._forkserver_pid:
        pids.add(server._forkserver_pid)
    if server._forkserver_alive_fd is not None:
        fds.add(server._forkserver_alive_fd)
    tracker = mp_resource_tracker._resource_tracker
    if tracker._pid:
        pids.add(tracker._pid)
    if tracker._fd is not None:
        fds.add(tracker._fd)
    # Pickling a connection or socket outside process start hands it over
    # through multiprocessing's resource sharer, a listener kept for the
    # life of the process.
    sharer = mp_resource_sharer._resource_sharer
    if sharer._listener is not None:
        fds.add(sharer._listener._listener._socket.fileno())
    return pids, fds


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    if outcome.excinfo is not None and issubclass(outcome.excinfo[0], SystemError):
        # Python 3.11.7's ast module can raise "SystemError: AST constructor
        # recursion depth mismatch" when pytest parses a source file to format
        # a long traceback (seen after multiprocessing's own tests, whose
        # children provoke RecursionErrors). pytest would then stop the whole
        # session with INTERNALERROR and hide every later result; the short
        # style needs no parse, so the failure stays visible and the run goes on.
        option = item.config.option
        saved, option.tbstyle = option.tbstyle, "short"
        try:
            outcome.force_result(TestReport.from_item_and_call(item, call))
        finally:
            option.tbstyle = saved
    report = outcome.get_result()
    if report.when == "call":
        item._procwire_call_failed = report.failed


@pytest.fixture(autouse=True)
def leak_check(request):
    fds, shm, children = _open_fds(), _shm_entries(), _children()
    yield
    helper_pids, helper_fds = _infrastructure()
    children |= helper_pids
    fds |= helper_fds
    # Children that are exiting right now get a moment to finish.
    deadline = time.monotonic() + 5
    while True:
        mp.active_children()  # reaps multiprocessing's finished children
        extra_children = _children() - children
        if not extra_children or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    # Other test sessions share /dev/shm: only this test's own entries count
    # (and are removed); see leakcheck.py.
    now_children = _children()
    leaked_shm = leaks(_shm_entries() - shm, now_children)
    leaked_fds = _open_fds() - fds
    for pid in extra_children:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    _reap(extra_children)
    for name in leaked_shm:
        # Another test session may have removed it meanwhile.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join("/dev/shm", name))
    problems = []
    if extra_children:
        problems.append(f"child processes left running: {sorted(extra_children)}")
    if leaked_shm:
        problems.append(f"/dev/shm entries left: {sorted(leaked_shm)}")
    if leaked_fds:
        described = {fd: _describe_fd(fd) for fd in sorted(leaked_fds)}
        problems.append(f"file descriptors leaked: {described}")
    # A test that failed still holds its objects through the traceback, so
    # its "leaks" are the failure's echo: clean up (above), report only the
    # failure. The leak check of a passing test is unchanged.
    if problems and not getattr(request.node, "_procwire_call_failed", False):
        pytest.fail("leak check: " + "; ".join(problems))


def _describe_fd(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return "?"
