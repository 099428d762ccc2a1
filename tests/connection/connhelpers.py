"""Helpers for the connection tests: a second user, bounded reads and reaping."""
from __future__ import annotations

import os
import select
import signal
import time
import traceback

import pytest

NOBODY = 65534
JOIN = 30

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="acting as another user needs root")


def as_other_user(body) -> tuple[int, int]:
    """Fork a child that becomes uid 65534 and runs body(report_fd); return (pid, read end)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover (child)
        code = 1
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            body(w)
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    os.close(w)
    return pid, r


def read_line(fd: int, timeout: float = JOIN) -> bytes:
    """One report line from a child, or b'' if it closed its end; bounded by timeout."""
    out = b""
    deadline = time.monotonic() + timeout
    while not out.endswith(b"\n"):
        left = deadline - time.monotonic()
        assert left > 0, "the other-user child did not report in time"
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        chunk = os.read(fd, 1)
        if not chunk:
            return out
        out += chunk
    return out.strip()


def reap(pid: int, timeout: float = JOIN) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.01)  # polling a child's exit, not synchronising on a sleep
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    raise AssertionError(f"child {pid} did not exit within {timeout} s")
