"""The suite's leak check leaves other test sessions' /dev/shm entries alone.

Several sessions may run at once on one machine. The cleanup tests keep a
SIGKILLed creator's name alive while an unrelated process uses it; a second
session's leak check used to take that entry for its own leak, remove it, and
fail its own test with it (seen at load 40-90, when many suites ran at once).
Synchronisation: pipes and pidfds, never sleeps.
"""
from __future__ import annotations

import os
import select
import subprocess
import sys
import textwrap
import threading
import uuid

import pytest

import leakcheck
import procwire

JOIN = 60
TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The procwire under test, wherever it is installed (CI installs it into site-packages:
# the checkout's src/ then has no built core).
SRC = os.path.dirname(os.path.dirname(os.path.abspath(procwire.__file__)))

# Creates a named queue, forks a process that keeps it mapped, and dies without
# removing the name: the shape a SIGKILLed creator with a live user leaves. The
# user outlives its parent, so it belongs to no process tree of the test's.
ORPHANED_USER = textwrap.dedent(r"""
    import os, sys, procwire
    q = procwire.Queue(name=sys.argv[1])
    if os.fork() == 0:                      # the user: keeps the mapping it inherited
        print(os.getpid(), flush=True)
        sys.stdin.read()                    # until the test closes our stdin
        os._exit(0)
    os._exit(0)                             # the creator: dies, name in place
""")


class OrphanedUser:
    def __init__(self, name: str) -> None:
        env = {**os.environ, "PYTHONPATH": SRC, "PROCWIRE_TRACKER": "0"}
        self.creator = subprocess.Popen([sys.executable, "-c", ORPHANED_USER, name], env=env,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        ready, _, _ = select.select([self.creator.stdout], [], [], JOIN)
        assert ready, "the orphaned user did not start"
        self.pid = int(self.creator.stdout.readline())
        self.creator.wait(JOIN)
        self.pidfd = os.pidfd_open(self.pid)

    def end(self) -> None:
        self.creator.stdin.close()
        self.creator.stdout.close()
        try:
            ready, _, _ = select.select([self.pidfd], [], [], JOIN)
            assert ready, "the orphaned user did not exit"
        finally:
            os.close(self.pidfd)


@pytest.fixture
def name():
    made = f"leakcheck-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    yield made
    try:
        os.unlink(os.path.join(leakcheck.SHM, "procwire." + made))
    except FileNotFoundError:
        pass


# An inner test session: its one test tells us it runs, then waits for our word.
INNER = textwrap.dedent(r"""
    import os, select

    def test_meanwhile_another_session_works():
        os.write(int(os.environ["LEAKCHECK_W"]), b"s")
        ready, _, _ = select.select([int(os.environ["LEAKCHECK_R"])], [], [], 60)
        assert ready
""")


def test_another_sessions_entry_in_use_is_neither_reported_nor_removed(name, tmp_path):
    (tmp_path / "test_inner.py").write_text(INNER)
    to_inner_r, to_inner_w = os.pipe()
    from_inner_r, from_inner_w = os.pipe()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join((TESTS, SRC)),
           "LEAKCHECK_R": str(to_inner_r), "LEAKCHECK_W": str(from_inner_w)}
    # -p conftest: the suite's own conftest (and so its leak check), as a plugin.
    inner = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "conftest",
         "--rootdir", str(tmp_path), "-c", os.devnull, str(tmp_path / "test_inner.py")],
        env=env, cwd=tmp_path, pass_fds=(to_inner_r, from_inner_w),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    os.close(to_inner_r)
    os.close(from_inner_w)
    user = None
    try:
        ready, _, _ = select.select([from_inner_r], [], [], JOIN)
        assert ready and os.read(from_inner_r, 1) == b"s", "the inner session did not start"
        user = OrphanedUser(name)            # appears while the inner test runs
        assert not leakcheck.in_our_tree(user.pid)
        os.write(to_inner_w, b"e")           # the inner test ends: its leak check runs
        out, _ = inner.communicate(timeout=JOIN)
        assert name not in out, f"the inner session took our entry for its leak:\n{out}"
        assert os.path.exists(os.path.join(leakcheck.SHM, "procwire." + name))
    finally:
        os.close(to_inner_w)
        os.close(from_inner_r)
        if inner.poll() is None:
            inner.kill()
            inner.communicate(timeout=JOIN)
        if user is not None:
            user.end()


def test_an_entry_in_use_only_outside_our_tree_is_not_ours(name):
    user = OrphanedUser(name)
    try:
        assert not leakcheck.is_leak("procwire." + name, leakcheck.children())
    finally:
        user.end()
    # Its creator is dead and now nobody uses it: counted as a leak, as a
    # killed child's name of this session would be.
    assert leakcheck.is_leak("procwire." + name, leakcheck.children())


def test_an_entry_gone_before_the_check_is_no_leak(name):
    assert not leakcheck.is_leak("procwire." + name, set())


def test_an_entry_we_created_is_a_leak(name):
    q = procwire.Queue(name=name)
    try:
        assert leakcheck.is_leak("procwire." + name, set())
    finally:
        q.close()


def test_an_entry_we_use_is_a_leak_whoever_else_uses_it(name):
    user = OrphanedUser(name)
    try:
        q = procwire.Queue.attach(name)
        try:
            assert leakcheck.is_leak("procwire." + name, leakcheck.children())
        finally:
            q.close()
    finally:
        user.end()


def test_an_unused_suspect_counts_only_if_it_stays(name):
    """A dead creator's unused entry may be another session's, on its way out: it
    counts as a leak only if it is still there after the grace period."""
    user = OrphanedUser(name)
    user.end()                           # now: dead creator, nobody uses it
    entry = "procwire." + name
    assert leakcheck.leaks({entry}, leakcheck.children(), grace=0.2) == {entry}
    # Removed meanwhile, as another session's test or tracker would: no leak.
    remover = threading.Timer(0.1, os.unlink, (os.path.join(leakcheck.SHM, entry),))
    remover.start()
    try:
        assert leakcheck.leaks({entry}, leakcheck.children(), grace=JOIN) == set()
    finally:
        remover.join(JOIN)
