"""Issue 11's "Done when": a multiprocessing program runs on procwire by changing its imports.

``mp_program.py`` is written for multiprocessing (Queue with maxsize=0 and
large numpy arrays, a backlog put before any consumer, JoinableQueue, Pipe,
Lock, Event, Value, Array, Listener/Client with an authkey, get_context,
connection.wait; also Pool, Condition, BoundedSemaphore, Barrier and
SimpleQueue). This test runs it as written and with its two import lines
changed to procwire's -- the only change a user makes -- under fork, spawn and
forkserver, each in a fresh interpreter, and requires the same output, part
by part.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

START_METHODS = ("fork", "spawn", "forkserver")

HERE = Path(__file__).parent
PROGRAM = (HERE / "mp_program.py").read_text()

# The user's change, exactly: these two lines, and nothing else.
IMPORTS = {
    "import multiprocessing as mp\n": "import procwire as mp\n",
    "from multiprocessing.connection import Client, Listener, wait\n":
        "from procwire.connection import Client, Listener, wait\n",
}

# The parts of the program this test runs, each under every start method.
PARTS = ["queue_large_arrays", "queue_backlog_before_consumer", "joinable_queue", "pipe",
         "lock_value_array_event", "listener_client_authkey", "connection_wait", "pool",
         "condition_semaphore_barrier"]

TIMEOUT = 100  # one part in a fresh interpreter, on a loaded machine


def procwire_version() -> str:
    text = PROGRAM
    for old, new in IMPORTS.items():
        assert text.count(old) == 1, f"mp_program.py no longer has {old!r} once"
        text = text.replace(old, new)
    return text


def run(tmp_path: Path, source: str, method: str, part: str) -> object:
    """Run one part of `source` under `method` in a fresh interpreter: its result."""
    path = tmp_path / "program.py"
    path.write_text(source)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.run([sys.executable, str(path), method, part], capture_output=True,
                          text=True, timeout=TIMEOUT, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["start_method"] == method
    return out[part]


def test_the_procwire_version_differs_only_in_its_imports():
    changed = [(a, b) for a, b in zip(PROGRAM.splitlines(), procwire_version().splitlines())
               if a != b]
    assert len(changed) == len(IMPORTS)
    assert all("procwire" in new and "procwire" not in old for old, new in changed)


def test_every_part_of_the_program_is_accounted_for():
    defined = re.findall(r"^def (\w+)\(ctx\):", PROGRAM, re.MULTILINE)
    assert sorted(defined) == sorted(PARTS)


@pytest.mark.timeout(2 * TIMEOUT + 20)
@pytest.mark.parametrize("method", START_METHODS)
@pytest.mark.parametrize("part", PARTS)
def test_procwire_gives_what_multiprocessing_gives(part, method, tmp_path):
    expected = run(tmp_path, PROGRAM, method, part)
    assert not (isinstance(expected, dict) and "error" in expected), expected
    got = run(tmp_path, procwire_version(), method, part)
    assert got == expected
