"""`procwire bench --suite pool`: the suite runs, every peer is measured or said not to be."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import procwire

SRC = str(Path(procwire.__file__).resolve().parents[1])
pytestmark = pytest.mark.timeout(300)


def test_pool_suite_runs_and_reports(tmp_path):
    out_json = tmp_path / "pool.json"
    env = dict(os.environ, PYTHONPATH=SRC, PYTHONIOENCODING="utf-8")
    out = subprocess.run(
        [sys.executable, "-c", "from procwire.cli import main; main()", "bench", "--suite",
         "pool", "--quick", "--scale", "0.002", "--only", "apply_async*", "--only", "SIGKILL*",
         "--json", str(out_json)],
        capture_output=True, text=True, env=env, timeout=240, stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "Process pools" in out.stdout and "apply_async(f, (1,)).get()" in out.stdout
    data = json.loads(out_json.read_text())
    by = {(r["group"], r["impl"]): r for r in data["results"]}
    ours = by[("apply_async(f, (1,)).get()", "procwire")]
    assert ours["error"] is None and ours["median"] > 0
    assert by[("apply_async(f, (1,)).get()", "multiprocessing")]["median"] > 0
    death = by[("SIGKILL → the task's error", "procwire")]
    assert death["error"] is None and 0 < death["median"] < 10_000
    for r in data["results"]:
        # a peer that is not installed (loky without the bench extra) says so
        assert r["error"] is None or "loky" in r["error"], r
