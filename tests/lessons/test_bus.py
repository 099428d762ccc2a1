"""The bus homework, driven as a person would: keys in a real terminal, or kill.

The keyboard test gives a new pseudo-terminal to a tiny job-control shell,
which runs ``procwire demo bus`` as the terminal's foreground process group,
as bash does. Typing Ctrl-C, Ctrl-\\ and Ctrl-Z into the master side then
makes the kernel's line discipline send SIGINT, SIGQUIT and SIGTSTP to the
whole group -- driver and conductor alike. (The shell matters: a group whose
parent is outside the session is "orphaned", and the kernel would never
stop it for Ctrl-Z, hiding a conductor that forgot to ignore SIGTSTP.)
Every wait has a deadline; nothing sleeps to synchronise.
"""
from __future__ import annotations

import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import procwire
from procwire import signals
from procwire.lessons.bus import LINES, READY

pytestmark = pytest.mark.timeout(60)

# Children import the same procwire this test does: the installed package
# (CI), or the source tree with its in-place build (development).
SRC = str(Path(procwire.__file__).resolve().parents[1])
CLI = [sys.executable, "-c", "from procwire.cli import main; main()"]
DEADLINE = 15.0  # seconds for any one expected line

CTRL_C, CTRL_BACKSLASH, CTRL_Z = b"\x03", b"\x1c", b"\x1a"

# A minimal job-control shell: run argv as the terminal's foreground process
# group, wait for it (reporting a stop, as bash's "[1]+ Stopped" does), exit
# with its exit code.
SHELL = r"""
import os, signal, sys
signal.signal(signal.SIGTTOU, signal.SIG_IGN)  # a background tcsetpgrp() would stop us
pid = os.fork()
if pid == 0:
    os.setpgid(0, 0)
    os.tcsetpgrp(0, os.getpgrp())
    signal.signal(signal.SIGTTOU, signal.SIG_DFL)  # SIG_IGN would survive exec
    os.execv(sys.executable, [sys.executable, *sys.argv[1:]])
try:
    os.setpgid(pid, pid)
except PermissionError:  # the child has already exec'd, its group set
    pass
_, status = os.waitpid(pid, os.WUNTRACED)
if os.WIFSTOPPED(status):
    print(f"shell: job {pid} stopped by signal {os.WSTOPSIG(status)}", flush=True)
    os.killpg(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    sys.exit(99)
sys.exit(os.waitstatus_to_exitcode(status) & 0xFF)
"""
DRIVE, BELT, STOP = LINES["drive"][0], LINES["belt"][0], LINES["stop"][0]
CONDUCTOR_OFF, DRIVER_OFF = LINES["conductor_off"][0], LINES["driver_off"][0]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (SRC, env.get("PYTHONPATH")) if p)
    env["PYTHONIOENCODING"] = "utf-8"
    env.pop("PYTHONINSPECT", None)
    return env


class Transcript:
    """Lines read from a file descriptor, each awaited with a deadline."""

    # The terminal echoes control keys as ^C, ^\ and ^Z in front of the next output.
    _ECHO = re.compile(r"\^[C\\Z]")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.lines: list[str] = []
        self._partial = b""
        self._seen = 0  # lines before this index were matched already
        self.eof = False

    def _read_some(self, deadline: float) -> None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"timed out; output so far:\n{self.text()}")
        ready, _, _ = select.select([self.fd], [], [], left)
        if not ready:
            return
        try:
            data = os.read(self.fd, 4096)
        except OSError:  # EIO: every process on the terminal's side has closed it
            data = b""
        if not data:
            self.eof = True
            return
        *complete, self._partial = (self._partial + data).split(b"\n")
        for raw in complete:
            text = raw.decode("utf-8", "replace").replace("\r", "")
            self.lines.append(self._ECHO.sub("", text))

    def expect(self, pattern: str, timeout: float = DEADLINE) -> re.Match[str]:
        """Wait for the next line that matches `pattern` (a regex, searched)."""
        deadline = time.monotonic() + timeout
        while True:
            for i in range(self._seen, len(self.lines)):
                match = re.search(pattern, self.lines[i])
                if match:
                    self._seen = i + 1
                    return match
            if self.eof:
                raise AssertionError(f"output ended before {pattern!r}:\n{self.text()}")
            self._read_some(deadline)

    def read_to_end(self, timeout: float = DEADLINE) -> None:
        deadline = time.monotonic() + timeout
        while not self.eof:
            self._read_some(deadline)

    def text(self) -> str:
        return "\n".join(self.lines)


def _state(pid: int) -> str | None:
    """The /proc state letter of `pid`, or None if it no longer exists."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0]
    except FileNotFoundError:
        return None


def _assert_running(*pids: int) -> None:
    for pid in pids:
        state = _state(pid)
        assert state is not None and state not in "TtZX", f"pid {pid} is in state {state}"


def _wait_exit(pid: int, timeout: float) -> int:
    """Wait for our child `pid` to exit, with a deadline; return its exit code."""
    pidfd = os.pidfd_open(pid)
    try:
        ready, _, _ = select.select([pidfd], [], [], timeout)
    finally:
        os.close(pidfd)
    if not ready:
        raise AssertionError(f"pid {pid} did not exit within {timeout}s")
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def _kill_group(pgid: int) -> None:
    """Last resort after a failure: kill a process group, and reap its leader if ours."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        os.waitpid(pgid, 0)
    except ChildProcessError:  # not our child (or already reaped)
        pass


def _story_lines(transcript: Transcript) -> list[str]:
    """The lines printed after the ready line."""
    start = next(i for i, line in enumerate(transcript.lines) if line.startswith("ready"))
    return [line for line in transcript.lines[start + 1:] if line.strip()]


def _pids(transcript: Transcript) -> tuple[int, int]:
    driver = int(transcript.expect(r"^driver .*pid (\d+)").group(1))
    conductor = int(transcript.expect(r"^conductor .*pid (\d+)").group(1))
    return driver, conductor


def test_bus_driven_from_the_keyboard() -> None:
    shell, master = pty.fork()
    if shell == 0:  # the child: session leader, the pty as its controlling terminal
        try:
            argv = [sys.executable, "-c", SHELL, *CLI[1:], "demo", "bus"]
            os.execve(sys.executable, argv, _env())
        finally:
            os._exit(127)
    out = Transcript(master)
    driver = 0
    try:
        driver, conductor = _pids(out)
        out.expect(re.escape(READY))
        _assert_running(driver, conductor)
        assert os.tcgetpgrp(master) == os.getpgid(driver) == os.getpgid(conductor) == driver

        for key, answer in ((CTRL_C, DRIVE), (CTRL_BACKSLASH, BELT), (CTRL_C, DRIVE)):
            os.write(master, key)
            out.expect(f"^{answer}$")
            _assert_running(driver, conductor)  # neither killed, neither stopped

        os.write(master, CTRL_Z)
        out.expect(f"^{STOP}$")
        out.expect(f"^{DRIVER_OFF}$")
        out.read_to_end()
        assert _wait_exit(shell, DEADLINE) == 0, out.text()
        shell = 0
    finally:
        if shell:
            if driver:
                _kill_group(driver)
            _kill_group(shell)
        os.close(master)

    assert _story_lines(out) == [
        DRIVE,
        BELT,
        DRIVE,
        STOP,  # the conductor's own line...
        f"{CONDUCTOR_OFF}  (pid {conductor}, exit code 0)",  # ...then the driver reaped it
        DRIVER_OFF,
    ], out.text()
    assert _state(conductor) is None, "the conductor was left behind"
    assert _state(driver) is None, "the driver was left behind"


def test_bus_driven_with_kill_from_outside() -> None:
    proc = subprocess.Popen(
        [*CLI, "demo", "bus", "--lang", "en"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=_env(),
        start_new_session=True,  # no terminal: only our kill() calls reach it
    )
    out = Transcript(proc.stdout.fileno())
    try:
        driver, conductor = _pids(out)
        assert driver == proc.pid
        out.expect(re.escape(READY))
        for target, sig, key in (
            (conductor, signal.SIGINT, "drive"),
            (conductor, signal.SIGQUIT, "belt"),
            (conductor, signal.SIGINT, "drive"),
        ):
            os.kill(target, sig)
            out.expect(re.escape(f"{LINES[key][0]}  ({LINES[key][1]})"))
            _assert_running(driver, conductor)
        os.kill(driver, signal.SIGTSTP)
        out.read_to_end()
        assert proc.wait(timeout=DEADLINE) == 0, out.text()
    finally:
        if proc.poll() is None:
            _kill_group(proc.pid)
            proc.wait()
        proc.stdout.close()

    story = _story_lines(out)
    assert story == [
        f"{LINES[key][0]}  ({LINES[key][1]})" for key in ("drive", "belt", "drive", "stop")
    ] + [
        f"{LINES['conductor_off'][0]}  ({LINES['conductor_off'][1]})  "
        f"(pid {conductor}, exit code 0)",
        f"{LINES['driver_off'][0]}  ({LINES['driver_off'][1]})",
    ], out.text()
    assert _state(conductor) is None, "the conductor was left behind"


def test_conductor_does_not_outlive_a_killed_driver() -> None:
    """If the driver is killed outright, the conductor must not linger as an orphan."""
    with signals.subreaper():  # the orphaned conductor comes to us, so we can wait for it
        proc = subprocess.Popen(
            [*CLI, "demo", "bus"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=_env(),
            start_new_session=True,
        )
        out = Transcript(proc.stdout.fileno())
        conductor = 0
        try:
            _, conductor = _pids(out)
            out.expect(re.escape(READY))
            proc.kill()
            assert proc.wait(timeout=DEADLINE) == -signal.SIGKILL
            # Re-parented to us: it must end by itself, killed by its SIGTERM.
            assert _wait_exit(conductor, DEADLINE) == -signal.SIGTERM
            conductor = 0
        finally:
            if proc.poll() is None:
                _kill_group(proc.pid)
                proc.wait()
            if conductor:  # still alive, and our child now: end it and reap it
                os.kill(conductor, signal.SIGKILL)
                os.waitpid(conductor, 0)
            proc.stdout.close()
