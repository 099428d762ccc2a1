"""procwire bench --quick, shrunk with --scale: the lesson table's shape and figures."""
from __future__ import annotations

import json

from clihelpers import private_dir_left_empty, private_shm_dir, procwire_cmd  # noqa: F401 (fixtures)

MECHANISMS = {"pipe", "queue", "shm-locked", "shm-raw", "socket", "signal"}


def test_bench_quick_lesson_table(tmp_path):
    path = tmp_path / "bench.json"
    md = tmp_path / "bench.md"
    out = procwire_cmd("bench", "--quick", "--scale", "0.002", "--json", str(path),
                       "--markdown", str(md), timeout=240)
    assert out.returncode == 0, out.stderr[-2000:]
    for word in ("管道 pipe", "消息队列 queue", "共享内存", "套接字 socket", "信号 signal",
                 "开辟空间", "是否需要同步互斥", "machine:"):
        assert word in out.stdout, word
    data = json.loads(path.read_text())
    assert {"cpu", "cores", "kernel", "python"} <= set(data["machine"])
    rows = {row["mechanism"]: row for row in data["lesson_table"]}
    assert set(rows) == MECHANISMS
    for r in data["results"]:
        assert r["error"] is None, r
        assert r["median"] > 0 and all(s > 0 for s in r["samples"]), r
    for key, row in rows.items():
        for metric in ("throughput", "bandwidth", "round_trip"):
            cell = row[metric]
            for side in ("stdlib", "procwire"):
                assert cell[side] is None or cell[side] > 0
            if cell["stdlib"] and cell["procwire"]:
                assert cell["ratio"] > 0
            if cell["procwire"] is None:
                assert cell["note"], (key, metric)
    assert rows["queue"]["throughput"]["procwire"] and rows["queue"]["throughput"]["stdlib"]
    assert rows["signal"]["round_trip"]["stdlib"]
    assert md.read_text().count("\n") == 2 + len(MECHANISMS)


def test_bench_detail_suite_table(tmp_path):
    out = procwire_cmd("bench", "--quick", "--scale", "0.002", "--suite", "sync",
                       "--only", "Lock uncontended*", timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "Lock uncontended acquire+release" in out.stdout and "procwire ÷ mp" in out.stdout
