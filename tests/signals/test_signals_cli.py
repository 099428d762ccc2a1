"""``procwire signals``: the explained ``kill -l``, piped and on a terminal."""
from __future__ import annotations

import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import procwire

pytestmark = pytest.mark.timeout(60)

# Children import the same procwire this test does: the installed package
# (CI), or the source tree with its in-place build (development).
SRC = str(Path(procwire.__file__).resolve().parents[1])
CLI = [sys.executable, "-c", "from procwire.cli import main; main()"]


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (SRC, env.get("PYTHONPATH")) if p)
    env.pop("NO_COLOR", None)
    env.pop("FORCE_COLOR", None)
    env.update(extra)
    return env


def _procwire(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, env=_env(),
                          timeout=30, stdin=subprocess.DEVNULL)


def _rows(stdout: str) -> dict[str, list[str]]:
    """Data rows of the plain table, by signal name: [number, name, action, catch, meaning]."""
    lines = stdout.splitlines()
    assert lines[0].split() == ["NO", "NAME", "DEFAULT", "CATCH", "MEANING"]
    return {fields[1]: fields for fields in (line.split(None, 4) for line in lines[1:])}


def test_lists_every_signal_explained() -> None:
    result = _procwire("signals")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert "\x1b[" not in result.stdout  # no colour when piped
    rows = _rows(result.stdout)
    assert sorted(int(r[0]) for r in rows.values()) == sorted(signal.valid_signals())
    assert rows["SIGINT"][:4] == ["2", "SIGINT", "terminate", "yes"]
    assert "Ctrl-C" in rows["SIGINT"][4]
    assert rows["SIGKILL"][3] == "no" and rows["SIGSTOP"][3] == "no"
    assert rows["SIGQUIT"][2] == "core" and rows["SIGCHLD"][2] == "ignore"
    assert rows["SIGCONT"][2] == "continue" and rows["SIGTSTP"][2] == "stop"
    assert {"SIGRTMIN", "SIGRTMIN+1", "SIGRTMAX-1", "SIGRTMAX"} <= set(rows)
    assert "also SIGIOT" in rows["SIGABRT"][4]


def test_shows_only_the_signals_named() -> None:
    result = _procwire("signals", "int", "9", "SIGTERM", "rtmin+2")
    assert result.returncode == 0, result.stderr
    assert [r[1] for r in _rows(result.stdout).values()] == [
        "SIGINT", "SIGKILL", "SIGTERM", "SIGRTMIN+2"
    ]


@pytest.mark.parametrize(("bad", "says"), [("FOO", "unknown signal 'FOO'"),
                                           ("INTT", "did you mean 'INT'"),
                                           ("0", "there is no signal 0")])
def test_unknown_signal_is_a_one_line_usage_error(bad: str, says: str) -> None:
    result = _procwire("signals", "INT", bad)
    assert result.returncode == 2
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert says in result.stderr
    assert "Traceback" not in result.stderr


def test_on_a_terminal_it_is_a_coloured_table() -> None:
    pid, master = pty.fork()
    if pid == 0:
        try:
            os.execve(sys.executable, [*CLI, "signals", "KILL", "TSTP"],
                      _env(COLUMNS="160", TERM="xterm-256color"))
        finally:
            os._exit(127)
    chunks = []
    deadline = time.monotonic() + 30
    try:
        while True:
            ready, _, _ = select.select([master], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:  # out of time: end it rather than wait for ever below
                os.kill(pid, signal.SIGKILL)
                break
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the program has exited and closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(master)
    out = b"".join(chunks).decode()
    assert os.waitstatus_to_exitcode(status) == 0, out
    assert "\x1b[" in out  # colour codes
    assert "SIGKILL" in out and "SIGTSTP" in out and "Signals of this system" in out
