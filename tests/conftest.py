"""Fixtures every test shares.

* ``ctx``: a multiprocessing context, parametrised over fork, spawn and
  forkserver, for tests whose body should hold under every start method.
* An autouse leak check: a test fails if it leaves behind a child process,
  an open file descriptor, or an entry in /dev/shm/procwire.*.
"""
from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import time

import pytest

# The cleanup tracker (procwire._tracker) removes the names of killed creators.
# The suite runs without it unless PROCWIRE_TRACKER=1 is set, so that the leak
# check below still sees every name a process fails to remove in order (with
# the tracker on, such a leak would be cleaned up behind the test's back, a
# few milliseconds late). tests/cleanup/ turns it on in its own creators.
os.environ.setdefault("PROCWIRE_TRACKER", "0")

START_METHODS = ("fork", "spawn", "forkserver")


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


def _shm_entries() -> set[str]:
    return {e for e in os.listdir("/dev/shm") if e.startswith("procwire")}


def _creator(entry: str) -> int | None:
    """The pid that created a segment, from its header or its temporary name."""
    if ".creating-" in entry:
        return int(entry.rsplit(".creating-", 1)[1].split("-")[0])
    try:
        with open(os.path.join("/dev/shm", entry), "rb") as f:
            header = f.read(64)
        return int.from_bytes(header[24:28], "little") if len(header) == 64 else None
    except OSError:
        return None


def _belongs_to_another_live_process(entry: str) -> bool:
    # Another test session may run beside this one (a developer's second
    # terminal): its live objects are not this test's leaks.
    pid = _creator(entry)
    if not pid or pid == os.getpid() or pid in _children():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _children() -> set[int]:
    pids: set[int] = set()
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/children") as f:
                pids.update(int(p) for p in f.read().split())
        except FileNotFoundError:
            pass
    return pids


def _reap(pids: set[int]) -> None:
    for pid in pids:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass


@pytest.fixture(autouse=True)
def leak_check():
    fds, shm, children = _open_fds(), _shm_entries(), _children()
    yield
    # Children that are exiting right now get a moment to finish.
    deadline = time.monotonic() + 5
    while True:
        mp.active_children()  # reaps multiprocessing's finished children
        extra_children = _children() - children
        if not extra_children or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    leaked_shm = {e for e in _shm_entries() - shm if not _belongs_to_another_live_process(e)}
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
    if problems:
        pytest.fail("leak check: " + "; ".join(problems))


def _describe_fd(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return "?"
