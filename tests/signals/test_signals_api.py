"""procwire.signals: the table, names, sending, dispositions, waiting, reaping.

Tests that set an alarm run in a subprocess, because pytest-timeout keeps
its own SIGALRM timer in this process. Every wait has a deadline.
"""
from __future__ import annotations

import errno
import os
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import procwire
from procwire import signals

pytestmark = pytest.mark.timeout(60)

# Children import the same procwire this test does: the installed package
# (CI), or the source tree with its in-place build (development).
from procwire.lessons._common import fork as _fork  # noqa: E402  (the lessons' own helper)

SRC = str(Path(procwire.__file__).resolve().parents[1])
DEADLINE = 10.0


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


def _wait_exit(pid: int, timeout: float = DEADLINE) -> int:
    """Wait for child `pid` with a deadline; return its exit code (-N: killed by N)."""
    pidfd = os.pidfd_open(pid)
    try:
        ready, _, _ = select.select([pidfd], [], [], timeout)
    finally:
        os.close(pidfd)
    if not ready:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise AssertionError(f"pid {pid} did not exit within {timeout}s")
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def _state(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0]
    except FileNotFoundError:
        return None


def _ppid(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rpartition(")")[2].split()[1])


def _until(condition: Callable[[], bool], timeout: float = DEADLINE) -> None:
    """Poll an observable condition (a /proc state) until true, or fail at the deadline."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached before the deadline")
        time.sleep(0.001)


def _read_with_deadline(fd: int, timeout: float = DEADLINE) -> bytes:
    ready, _, _ = select.select([fd], [], [], timeout)
    if not ready:
        raise AssertionError(f"nothing to read within {timeout}s")
    return os.read(fd, 64)


def _dead_pid() -> int:
    """The pid of a child that has exited and been reaped."""
    pid = _fork(lambda: 0)
    assert _wait_exit(pid) == 0
    return pid


def _python(code: str, timeout: float = DEADLINE) -> subprocess.CompletedProcess[str]:
    path = os.pathsep.join(filter(None, (SRC, os.environ.get("PYTHONPATH"))))
    env = dict(os.environ, PYTHONPATH=path)
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env,
        timeout=timeout, stdin=subprocess.DEVNULL,
    )


@pytest.fixture
def restore_dispositions():
    """Put back SIGUSR1/SIGUSR2/SIGCHLD as they were, whatever the test did."""
    saved = {n: signal.getsignal(n) for n in (signal.SIGUSR1, signal.SIGUSR2, signal.SIGCHLD)}
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    yield
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    for n, handler in saved.items():
        signal.signal(n, handler)


# --------------------------------------------------------------------------
# the table and names
# --------------------------------------------------------------------------


def test_table_has_every_signal_of_this_system_in_order() -> None:
    rows = signals.table()
    assert [r.number for r in rows] == sorted(int(n) for n in signal.valid_signals())
    assert len({r.name for r in rows}) == len(rows)
    assert all(r.description and "\n" not in r.description for r in rows)


def test_table_real_time_signals_are_named_like_kill_l() -> None:
    names = {r.number: r.name for r in signals.table()}
    lo, hi = signal.SIGRTMIN, signal.SIGRTMAX
    assert names[lo] == "SIGRTMIN" and names[hi] == "SIGRTMAX"
    assert names[lo + 1] == "SIGRTMIN+1" and names[hi - 1] == "SIGRTMAX-1"
    half = (hi - lo) // 2  # kill -l counts up from RTMIN to the middle, down from RTMAX after
    assert names[lo + half] == f"SIGRTMIN+{half}"
    assert names[lo + half + 1] == f"SIGRTMAX-{hi - lo - half - 1}"
    assert all(signals.info(n).action is signals.Action.TERMINATE for n in range(lo, hi + 1))


@pytest.mark.parametrize(
    ("sig", "action"),
    [
        ("INT", "terminate"), ("QUIT", "core"), ("SEGV", "core"), ("KILL", "terminate"),
        ("CHLD", "ignore"), ("WINCH", "ignore"), ("CONT", "continue"), ("STOP", "stop"),
        ("TSTP", "stop"), ("TTIN", "stop"), ("ALRM", "terminate"), ("USR1", "terminate"),
    ],
)
def test_table_default_actions(sig: str, action: str) -> None:
    assert signals.info(sig).action == action


def test_only_kill_and_stop_are_uncatchable() -> None:
    uncatchable = {r.name for r in signals.table() if not r.catchable}
    assert uncatchable == {"SIGKILL", "SIGSTOP"}


@pytest.mark.parametrize(
    "spelling", ["INT", "int", "SIGINT", "sigint", " SigInt ", "2", 2, signal.SIGINT]
)
def test_number_accepts_names_and_numbers(spelling) -> None:
    assert signals.number(spelling) == 2
    assert signals.name(spelling) == "SIGINT"


def test_number_accepts_aliases_and_every_table_name() -> None:
    assert signals.number("IOT") == signal.SIGABRT
    assert signals.number("cld") == signal.SIGCHLD
    assert signals.number("RTMIN+0") == signal.SIGRTMIN
    for row in signals.table():
        assert signals.number(row.name) == row.number
        assert signals.number(row.name[3:].lower()) == row.number


@pytest.mark.parametrize("bad", ["NOPE", "SIGFOO", "", "RTMIN+99", "INT2"])
def test_unknown_signal_name(bad: str) -> None:
    with pytest.raises(signals.UnknownSignalError) as info:
        signals.number(bad)
    assert isinstance(info.value, ValueError)
    assert repr(bad) in str(info.value)
    assert "procwire signals" in str(info.value)


def test_unknown_signal_name_suggests_the_close_one() -> None:
    with pytest.raises(signals.UnknownSignalError, match=r"did you mean 'INT'\?"):
        signals.number("INTT")


@pytest.mark.parametrize("bad", [0, 32, 33, 65, 1000, -9, "-9", "99"])
def test_unknown_signal_number(bad) -> None:
    with pytest.raises(signals.UnknownSignalError, match="valid numbers are 1-31 and 34-64"):
        signals.number(bad)


@pytest.mark.parametrize("bad", [2.0, None, True, b"INT"])
def test_signal_of_the_wrong_type(bad) -> None:
    with pytest.raises(TypeError, match="a signal is a name"):
        signals.number(bad)


# --------------------------------------------------------------------------
# sending
# --------------------------------------------------------------------------


@pytest.mark.parametrize("spelling", ["USR1", "SIGUSR1", 10, signal.SIGUSR1])
def test_send_by_name_or_number(spelling, restore_dispositions) -> None:
    with signals.blocked("USR1"):
        signals.send(os.getpid(), spelling)
        got = signals.wait("USR1", timeout=DEADLINE)
    assert got is not None
    assert (got.signal, got.name, got.pid, got.uid) == (
        signal.SIGUSR1, "SIGUSR1", os.getpid(), os.getuid()
    )
    assert str(got) == f"SIGUSR1 from pid {os.getpid()}"


def test_send_bad_signal_raises_before_sending() -> None:
    with pytest.raises(signals.UnknownSignalError):
        signals.send(os.getpid(), "NOPE")


@pytest.mark.parametrize("pid", [0, -1, -os.getpgrp()])
def test_send_refuses_process_groups(pid: int) -> None:
    with pytest.raises(ValueError, match=r"positive process id.*killpg"):
        signals.send(pid, "CONT")


def test_send_to_a_dead_pid() -> None:
    pid = _dead_pid()
    with pytest.raises(signals.NoSuchProcessError) as info:
        signals.send(pid, "CONT")
    exc = info.value
    assert isinstance(exc, ProcessLookupError)
    assert exc.errno == errno.ESRCH and exc.pid == pid
    assert f"pid {pid}: no such process" in str(exc)
    assert "ps -p" in str(exc)


def test_send_without_permission() -> None:
    """An unprivileged process may not signal another user's process: EPERM."""
    if os.geteuid() != 0:
        if os.stat("/proc/1").st_uid == os.geteuid():
            pytest.skip("pid 1 is ours: no process of another user to try")
        # SIGCONT is harmless even if it were delivered.
        with pytest.raises(signals.SignalPermissionError) as info:
            signals.send(1, "CONT")
        assert isinstance(info.value, PermissionError) and info.value.errno == errno.EPERM
        return

    # As root: a root-owned target that ignores SIGUSR1 (harmless if it did arrive),
    # and a child that drops to user nobody and tries to send it. (Not SIGCONT:
    # the kernel lets any process of the same session send that one.)
    target = subprocess.Popen(
        [sys.executable, "-c", "import signal, sys; signal.signal(signal.SIGUSR1, signal.SIG_IGN);"
         " print('ready', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    report_r, report_w = os.pipe()

    def unprivileged() -> int:
        os.setgroups([])
        os.setgid(65534)
        os.setuid(65534)
        try:
            signals.send(target.pid, "USR1")
            message = "sent!"
        except signals.SignalPermissionError as exc:
            message = f"{isinstance(exc, PermissionError)}|{exc.errno}|{exc}"
        os.write(report_w, message.encode())
        return 0

    try:
        assert target.stdout.readline() == "ready\n"
        pid = _fork(unprivileged)
        os.close(report_w)
        assert _wait_exit(pid) == 0
        with os.fdopen(report_r, "rb") as f:
            report = f.read().decode()
    finally:
        target.stdin.close()
        target.wait(timeout=DEADLINE)
        target.stdout.close()
    assert report.count("|") >= 2, f"user nobody could signal a root process: {report}"
    is_permission_error, err, message = report.split("|", 2)
    assert (is_permission_error, int(err)) == ("True", errno.EPERM), report
    assert f"not allowed to send SIGUSR1 to pid {target.pid}" in message
    assert "owned by uid 0, you are uid 65534" in message


def test_alive() -> None:
    assert signals.alive(os.getpid())
    assert not signals.alive(_dead_pid())


# --------------------------------------------------------------------------
# dispositions
# --------------------------------------------------------------------------


def test_handle_as_context_manager_restores_the_previous_handler(restore_dispositions) -> None:
    def previous(signum, frame):
        pass

    got: list[int] = []
    signal.signal(signal.SIGUSR1, previous)
    with signals.handle(["USR1", "USR2"], lambda signum, frame: got.append(signum)) as d:
        assert set(d.signals) == {signal.SIGUSR1, signal.SIGUSR2}
        signals.send(os.getpid(), "USR1")
        signals.send(os.getpid(), "USR2")
        _until(lambda: len(got) == 2)
    assert sorted(got) == [signal.SIGUSR1, signal.SIGUSR2]
    assert signal.getsignal(signal.SIGUSR1) is previous
    assert signal.getsignal(signal.SIGUSR2) == signal.SIG_DFL


def test_handle_as_decorator_installs_for_good(restore_dispositions) -> None:
    got: list[int] = []

    @signals.handle("SIGUSR2")
    def on_usr2(signum, frame):
        got.append(signum)

    assert signal.getsignal(signal.SIGUSR2) is on_usr2  # returned unchanged
    signals.send(os.getpid(), "USR2")
    _until(lambda: got == [signal.SIGUSR2])


def test_handle_needs_a_callable() -> None:
    with pytest.raises(TypeError, match="must be callable"):
        signals.handle("USR1", "not a function")


def test_ignore_discards_the_signal(restore_dispositions) -> None:
    before = signal.getsignal(signal.SIGUSR1)
    with signals.ignore("USR1"):
        assert signal.getsignal(signal.SIGUSR1) == signal.SIG_IGN
        signals.send(os.getpid(), "USR1")  # would terminate us if it were not ignored
        assert signal.SIGUSR1 not in signal.sigpending()
    assert signal.getsignal(signal.SIGUSR1) == before


def test_default_and_restore_is_idempotent(restore_dispositions) -> None:
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    d = signals.default("USR2")
    assert signal.getsignal(signal.SIGUSR2) == signal.SIG_DFL
    assert "SIGUSR2" in repr(d)
    d.restore()
    d.restore()
    assert signal.getsignal(signal.SIGUSR2) == signal.SIG_IGN


@pytest.mark.parametrize(
    ("attempt", "verb"),
    [
        (lambda s: signals.handle(s, lambda *a: None), "catch"),
        (lambda s: signals.handle(s)(lambda *a: None), "catch"),
        (lambda s: signals.ignore(s), "ignore"),
        (lambda s: signals.default(s), "change the action of"),
        (lambda s: signals.blocked(s).__enter__(), "block"),
        (lambda s: signals.wait(s, timeout=0), "wait for"),
    ],
)
@pytest.mark.parametrize(
    ("sig", "why"), [("KILL", "always be killed.*SIGTERM"), (19, "always be stopped.*SIGTSTP")]
)
def test_kill_and_stop_cannot_be_caught(attempt, verb: str, sig, why: str) -> None:
    before = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    with pytest.raises(signals.UncatchableSignalError, match=f"cannot {verb} SIG") as info:
        attempt(sig)
    assert isinstance(info.value, ValueError)
    assert "can never be caught, blocked or ignored" in str(info.value)
    assert re.search(why, str(info.value))
    assert signal.pthread_sigmask(signal.SIG_BLOCK, []) == before


# --------------------------------------------------------------------------
# blocking and waiting
# --------------------------------------------------------------------------


def test_blocked_holds_the_signal_until_the_block_ends(restore_dispositions) -> None:
    got: list[int] = []
    with signals.handle("USR1", lambda signum, frame: got.append(signum)):
        with signals.blocked("USR1"):
            assert signal.SIGUSR1 in signal.pthread_sigmask(signal.SIG_BLOCK, [])
            signals.send(os.getpid(), "USR1")
            assert signal.SIGUSR1 in signal.sigpending()
            assert got == []
        _until(lambda: got == [signal.SIGUSR1])  # delivered once unblocked
        assert signal.SIGUSR1 not in signal.pthread_sigmask(signal.SIG_BLOCK, [])


def test_unblocked_lets_signals_through_then_blocks_again(restore_dispositions) -> None:
    with signals.blocked("USR2"):
        with signals.unblocked("USR2"):
            assert signal.SIGUSR2 not in signal.pthread_sigmask(signal.SIG_BLOCK, [])
        assert signal.SIGUSR2 in signal.pthread_sigmask(signal.SIG_BLOCK, [])


def test_wait_times_out_and_restores_the_mask() -> None:
    before = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    start = time.monotonic()
    assert signals.wait("USR1", "USR2", timeout=0.2) is None
    elapsed = time.monotonic() - start
    assert 0.19 <= elapsed < 2.0
    assert signal.pthread_sigmask(signal.SIG_BLOCK, []) == before


def test_wait_takes_a_signal_sent_by_another_process(restore_dispositions) -> None:
    parent = os.getpid()
    with signals.blocked("USR2"):  # sent before we wait: it stays pending, not lost
        child = _fork(lambda: signals.send(parent, "USR2"))
        got = signals.wait("USR1", "USR2", timeout=DEADLINE)
        assert _wait_exit(child) == 0
    assert got is not None and got.signal == signal.SIGUSR2 and got.pid == child


def test_wait_without_timeout_waits_as_long_as_it_takes(restore_dispositions) -> None:
    parent = os.getpid()
    got_late: list[int] = []

    def sender() -> int:
        _until(lambda: _state(parent) == "S")  # the parent is asleep in wait()...
        time.sleep(0.3)  # ...and stays asleep: not a synchronisation, the point of the test
        signals.send(parent, "USR2")
        return 0

    # A handler, in case a broken wait() returned early: USR2 must not end pytest.
    with signals.handle("USR2", lambda signum, frame: got_late.append(signum)):
        with signals.blocked("USR2"):
            child = _fork(sender)
            got = signals.wait("USR2")
        assert _wait_exit(child) == 0
    assert got is not None and got.pid == child, got_late
    assert got_late == []


def test_wait_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="timeout must be >= 0"):
        signals.wait("USR1", timeout=-1)
    with pytest.raises(ValueError, match="at least one signal"):
        signals.wait()


@pytest.mark.parametrize("timeout", ["None", "30"])
def test_ctrl_c_still_interrupts_a_wait(timeout: str) -> None:
    """SIGINT is not blocked by wait() for other signals: KeyboardInterrupt ends it."""
    code = (
        "import time\n"
        "from procwire import signals\n"
        "try:\n"
        "    start = time.monotonic()\n"
        "    print('waiting', flush=True)\n"
        f"    signals.wait('USR1', timeout={timeout})\n"
        "except KeyboardInterrupt:\n"
        "    print(f'interrupted after {time.monotonic() - start:.1f}', flush=True)\n"
    )
    env = dict(os.environ, PYTHONPATH=SRC)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            env=env, stdin=subprocess.DEVNULL)
    try:
        assert proc.stdout.readline() == "waiting\n"
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=DEADLINE)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    assert proc.returncode == 0
    assert out.startswith("interrupted after "), out
    assert float(out.split()[-1]) < DEADLINE  # by the signal, not by the timeout


# --------------------------------------------------------------------------
# alarm and pause (in a subprocess: pytest-timeout owns this process's SIGALRM)
# --------------------------------------------------------------------------


def test_alarm_rings_and_a_later_alarm_replaces_the_earlier() -> None:
    result = _python(
        "import time\n"
        "from procwire import signals\n"
        "with signals.blocked('ALRM'):\n"
        "    print(signals.alarm(10))\n"  # no alarm was set: 0.0 left
        "    start = time.monotonic()\n"
        "    print(signals.alarm(0.2))\n"  # replaces the 10 s alarm: ~10 s were left
        "    got = signals.wait('ALRM', timeout=5)\n"
        "    print(got.name, time.monotonic() - start)\n"
        "    signals.alarm(5)\n"
        "    print(signals.alarm(0))\n"  # cancelled: ~5 s were left...
        "    print(signals.wait('ALRM', timeout=0.3))\n"  # ...and it does not ring
        "    signals.alarm(0.1, interval=0.1)\n"
        "    print([signals.wait('ALRM', timeout=5).name for _ in range(3)])\n"
        "    signals.alarm(0)\n"
        "    print(signals.wait('ALRM', timeout=0.3))\n"
    )
    assert result.returncode == 0, result.stderr
    (none_left, ten_left, rang, five_left, no_ring, repeats, stopped) = result.stdout.splitlines()
    assert float(none_left) == 0.0
    assert 9.0 < float(ten_left) <= 10.0
    name, after = rang.split()
    assert name == "SIGALRM" and 0.2 <= float(after) < 1.5
    assert 4.0 < float(five_left) <= 5.0
    assert no_ring == "None" and stopped == "None"
    assert repeats == "['SIGALRM', 'SIGALRM', 'SIGALRM']"


def test_alarm_rejects_negative_seconds() -> None:
    with pytest.raises(ValueError, match="seconds and interval must be >= 0"):
        signals.alarm(-1)
    with pytest.raises(ValueError, match="seconds and interval must be >= 0"):
        signals.alarm(1, interval=-1)


def test_pause_returns_after_a_handled_signal() -> None:
    result = _python(
        "import time\n"
        "from procwire import signals\n"
        "got = []\n"
        "with signals.handle('ALRM', lambda signum, frame: got.append(time.monotonic())):\n"
        "    start = time.monotonic()\n"
        "    signals.alarm(0.2, interval=0.2)  # repeats, in case pause() misses the first\n"
        "    signals.pause()\n"
        "    signals.alarm(0)\n"
        "    print(len(got), got[0] - start)\n"
    )
    assert result.returncode == 0, result.stderr
    rings, after = result.stdout.split()
    assert int(rings) >= 1 and 0.2 <= float(after) < 1.5


# --------------------------------------------------------------------------
# children
# --------------------------------------------------------------------------


def test_reap_collects_ended_children_and_their_exit_codes() -> None:
    def killed() -> int:
        os.kill(os.getpid(), signal.SIGTERM)
        return 0

    pids = {_fork(lambda: 0): 0, _fork(lambda: 3): 3, _fork(killed): -signal.SIGTERM}
    for pid in pids:
        _until(lambda pid=pid: _state(pid) == "Z")  # exited: zombies until reaped
    reaped = signals.reap()
    assert {r.pid: r.exitcode for r in reaped} == pids
    assert all(_state(pid) is None for pid in pids)  # no zombie left
    by_pid = {r.pid: str(r) for r in reaped}
    killed_pid = next(p for p, c in pids.items() if c < 0)
    assert by_pid[killed_pid] == f"pid {killed_pid} was killed by SIGTERM"
    assert signals.reap() == []


def test_reap_returns_nothing_while_children_still_run() -> None:
    hold_r, hold_w = os.pipe()

    def child() -> int:
        os.close(hold_w)
        return len(os.read(hold_r, 1))  # blocks until the parent closes its end

    pid = _fork(child)
    try:
        assert signals.reap(pid) == []
        assert _state(pid) not in (None, "Z")
    finally:
        os.close(hold_w)
        os.close(hold_r)
    _until(lambda: _state(pid) == "Z")
    assert [(r.pid, r.exitcode) for r in signals.reap(pid)] == [(pid, 0)]


def test_ignore_children_lets_the_kernel_reap(restore_dispositions) -> None:
    before = signal.getsignal(signal.SIGCHLD)
    with signals.ignore_children():
        pid = _fork(lambda: 0)
        # waitpid returns once the child is gone, and finds nothing to collect.
        with pytest.raises(ChildProcessError):
            os.waitpid(pid, 0)
        assert _state(pid) is None  # never a zombie
    assert signal.getsignal(signal.SIGCHLD) == before


def test_subreaper_adopts_orphaned_grandchildren() -> None:
    hold_r, hold_w = os.pipe()
    ready_r, ready_w = os.pipe()

    def middle() -> int:
        os.close(hold_w)
        grandchild = _fork(lambda: len(os.read(hold_r, 1)))
        os.write(ready_w, str(grandchild).encode())
        return 0  # exit at once: the grandchild is orphaned

    with signals.subreaper():
        pid = _fork(middle)
        os.close(hold_r)
        os.close(ready_w)
        try:
            grandchild = int(_read_with_deadline(ready_r))
            assert _wait_exit(pid) == 0
            assert _ppid(grandchild) == os.getpid()  # adopted by us, not by init
        finally:
            os.close(ready_r)
            os.close(hold_w)  # lets the grandchild finish
        assert _wait_exit(grandchild) == 0


def test_die_with_parent() -> None:
    """The orphan's parent dies; the kernel sends the orphan the signal it asked for."""
    pid_r, pid_w = os.pipe()  # orphan -> test: its pid
    ready_r, ready_w = os.pipe()  # orphan -> middle: "pdeathsig is set"

    def middle() -> int:
        parent = os.getpid()

        def orphan() -> int:
            signals.die_with_parent("TERM", parent=parent)
            os.write(pid_w, str(os.getpid()).encode())
            os.write(ready_w, b"!")
            signal.pause()  # until SIGTERM ends us
            return 0

        _fork(orphan)
        os.read(ready_r, 1)
        return 0  # our exit sends SIGTERM to the orphan

    with signals.subreaper():  # the orphan comes to us, so we can wait for it
        pid = _fork(middle)
        for fd in (pid_w, ready_r, ready_w):
            os.close(fd)
        try:
            orphan = int(_read_with_deadline(pid_r))
        finally:
            os.close(pid_r)
        assert _wait_exit(pid) == 0
        assert _wait_exit(orphan) == -signal.SIGTERM  # _wait_exit kills it if it lingers


def test_die_with_parent_when_the_parent_is_already_gone() -> None:
    # The parent it names is not its parent any more: it signals itself at once.
    pid = _fork(lambda: signals.die_with_parent("USR2", parent=os.getppid() + 10**6) or 0)
    assert _wait_exit(pid) == -signal.SIGUSR2
