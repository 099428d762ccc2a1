"""`procwire demo pool`: procwire.Pool, and a worker killed while the map completes."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import procwire

# a thread of the pool (the manager, a feeder) that dies of an exception fails the test
pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")


SRC = str(Path(procwire.__file__).resolve().parents[1])


def test_demo_pool_kills_a_worker_and_the_map_completes():
    env = dict(os.environ, PYTHONPATH=SRC, PYTHONIOENCODING="utf-8")
    out = subprocess.run([sys.executable, "-c", "from procwire.cli import main; main()",
                          "demo", "pool"], capture_output=True, text=True, env=env,
                         timeout=60, stdin=subprocess.DEVNULL)
    assert out.returncode == 0 and out.stderr == "", out.stderr
    text = out.stdout
    killed = re.search(r"killed worker (\d+) after 6 results", text)
    assert killed, text
    assert "the map completed: 40 results, all correct: True" in text
    assert re.search(r"worker deaths 1, jobs failed 0, workers now 2 \(started 3 in all\)",
                     text), text
    assert re.search(r"crash\(1\) -> WorkerLost: worker \d+ was killed by SIGKILL", text)
    assert "the other jobs: [0, 1, 4, 9]" in text
    assert text.index("killed worker") < text.index("pool closed and joined")
