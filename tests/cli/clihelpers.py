"""Running the procwire command as users do, and child processes holding objects."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from typing import Any

import procwire

SRC = os.path.dirname(os.path.dirname(procwire.__file__))
# This session's own directory for named objects (see conftest.py): other test
# sessions running beside this one clean /dev/shm of segments whose creator
# died, which is exactly what these tests leave on purpose.
SHM_DIR = f"/dev/shm/pwtest-cli-{os.getpid()}"
# PROCWIRE_TRACKER=0: these tests make stale names on purpose (a creator killed
# with SIGKILL), which the cleanup tracker would otherwise remove.
ENV = {**os.environ, "PYTHONPATH": SRC, "NO_COLOR": "1", "PROCWIRE_SHM_DIR": SHM_DIR,
       "PROCWIRE_TRACKER": "0"}
SHM = SHM_DIR + "/procwire."
TIMEOUT = 60


def unique(label: str) -> str:
    return f"clitest-{label}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def procwire_cmd(*args: str, input: str | None = None, timeout: float = TIMEOUT,
                 argv0: list[str] | None = None) -> subprocess.CompletedProcess:
    """`procwire ARGS...` through its real entry point, `python -m procwire`."""
    cmd = (argv0 or [sys.executable, "-m", "procwire"]) + list(args)
    return subprocess.run(cmd, capture_output=True, text=True, env=ENV, input=input,
                          timeout=timeout)


def ls_json() -> dict[str, dict[str, Any]]:
    out = procwire_cmd("ls", "--json")
    assert out.returncode == 0, out.stderr
    return {e["name"]: e for e in json.loads(out.stdout)}


HOLDER = r"""
import sys, procwire
what, name = sys.argv[1], sys.argv[2]
if what == "create":
    q = procwire.Queue(name=name, maxsize=100)
    for i in range(3):
        q.put(b"m%d" % i)
    lock = procwire.Lock(name=name + "-lock")
    lock.acquire()
else:
    q = procwire.Queue.attach(name)
print("ready", flush=True)
for line in sys.stdin:             # one command per line; EOF: exit
    if line.strip() == "check":    # the queue still works for this process
        q.put(b"ping")
        while q.get(timeout=10) != b"ping":
            pass
        print("ok", flush=True)
"""


class Holder:
    """A child process that creates (or attaches to) a named queue and keeps it.

    It says "ready" once the object exists, answers "check" with "ok" after a
    put/get round trip through the queue, and exits when its stdin closes.
    """

    def __init__(self, name: str, what: str = "create") -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", HOLDER, what, name], env=ENV,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = self._readline()
        assert line == "ready", f"holder said {line!r}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _readline(self) -> str:
        import select
        ready, _, _ = select.select([self.proc.stdout], [], [], TIMEOUT)
        if not ready:
            self.kill()
            raise AssertionError("the holder process did not answer in time")
        return self.proc.stdout.readline().strip()

    def check(self) -> None:
        self.proc.stdin.write("check\n")
        self.proc.stdin.flush()
        assert self._readline() == "ok"

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(TIMEOUT)
        self._close_pipes()

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(TIMEOUT)
        self._close_pipes()

    def _close_pipes(self) -> None:
        for f in (self.proc.stdin, self.proc.stdout):
            if f and not f.closed:
                f.close()


# Fixtures, imported by each test module (a second conftest.py would shadow the
# top-level one's module name, which spawn children look _noop up in).
import shutil as _shutil  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def private_shm_dir():
    """This session's PROCWIRE_SHM_DIR, removed at the end."""
    os.makedirs(SHM_DIR, mode=0o700, exist_ok=True)
    yield SHM_DIR
    _shutil.rmtree(SHM_DIR, ignore_errors=True)


@pytest.fixture(autouse=True)
def private_dir_left_empty(private_shm_dir):
    """Each test leaves the private directory empty (the /dev/shm leak check's twin)."""
    yield
    left = sorted(os.listdir(SHM_DIR))
    for entry in left:
        os.unlink(os.path.join(SHM_DIR, entry))
    if left:
        pytest.fail(f"leak check: {SHM_DIR} entries left: {left}")
