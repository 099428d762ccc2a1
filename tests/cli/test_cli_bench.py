"""procwire bench: the lesson table's shape, width, spread, warnings, JSON and chart.

The end-to-end tests run the real command with tiny counts (--quick --scale
0.002) and check shapes, never speed. The width, spread, warning and chart
tests drive the rendering and the harness's pure functions with constructed
repeats, so that they do not depend on how fast or busy this machine is.
"""
from __future__ import annotations

import io
import json
import subprocess
import sys

import pytest
from rich.cells import cell_len
from rich.console import Console

from clihelpers import ENV, procwire_cmd
from clihelpers import private_dir_left_empty, private_shm_dir  # noqa: F401 (fixtures)
from procwire.bench import harness, lesson
from procwire.cli import bench as cli_bench

MECHANISMS = {"pipe", "queue", "shm-locked", "shm-raw", "socket", "signal"}
LESSON_WORDS = ("开辟空间", "读写方式", "效率", "是否需要同步互斥")


def assert_fits(text: str, width: int = 100) -> None:
    """Every line within `width` terminal cells, and nothing cut with an ellipsis."""
    lines = text.splitlines()
    assert lines
    too_long = [(cell_len(line), line) for line in lines if cell_len(line) > width]
    assert not too_long, too_long
    assert "…" not in text, [line for line in lines if "…" in line]


# -- constructed results: figures as wide as the table must hold -----------------------

def constructed(spread: float = 3.0, repeats: int = 3) -> list[harness.Result]:
    """Every lesson case, with long figures and repeats `spread` apart (max / min)."""
    values = {"msg/s": (123_456.0, 12_345_678.0), "GB/s": (0.96, 123.45),
              "µs": (1234.5, 2.04)}
    results = []
    for case in lesson.cases(0.05):
        std, ours = values[case.unit]
        median = ours if case.impl == "procwire" else std
        samples = [median / spread ** 0.5, median, median * spread ** 0.5][:repeats]
        if repeats == 1:
            samples = [median]
        results.append(harness.Result(case, samples))
    return results


def render_at(width: int, results: list[harness.Result], repeats: int = 3) -> str:
    console = Console(width=width, file=io.StringIO(), record=True, color_system=None)
    cli_bench.render_lesson(results, console, repeats)
    return console.export_text()


def test_lesson_table_fits_100_columns():
    text = render_at(100, constructed())
    assert_fits(text)
    # the figures, the ratios and the repeats' min-max are all there, uncut
    for expected in ("123 k → 12.35 M", "0.96 → 123.45", "1234.5 → 2.0", "100.0×",
                     "128.6×", "605.1×", "(33.3–300.0)"):
        assert expected in text, expected
    for m in lesson.MECHANISMS:
        assert m.title.split()[0] in text
        assert m.stdlib.split()[0] in text
    # the lesson's fixed words are in the legend under the table, not in it
    table, _, legend = text.partition("The lesson's words")
    for word in LESSON_WORDS:
        assert word in legend and word not in table, word
    for m in lesson.MECHANISMS:
        assert m.lesson_says in legend


def test_lesson_table_one_repeat_fits_and_says_so():
    text = render_at(100, constructed(repeats=1), repeats=1)
    assert_fits(text)
    assert "one run each, no spread" in text
    assert "–" not in text.partition("The lesson's words")[0]  # no (min–max) with one run


# -- the repeats' spread and the warnings: pure functions on constructed data ----------

def result(samples: list[float], higher: bool = True, group: str = "g") -> harness.Result:
    case = harness.Case(group, "procwire", "m:f", {}, "µs", higher)
    return harness.Result(case, samples)


def test_spread_and_ratio_range():
    r = result([2.0, 4.0, 3.0])
    assert r.spread == (2.0, 4.0)
    assert r.relative_spread == pytest.approx(2.0 / 3.0)
    assert result([5.0]).spread is None and result([5.0]).relative_spread is None
    assert harness.ratio_range(result([2.0, 4.0]), result([1.0, 2.0])) == (1.0, 4.0)
    # lower is better: baseline / ours
    assert harness.ratio_range(result([2.0, 4.0], higher=False),
                               result([1.0, 2.0], higher=False)) == (0.25, 1.0)
    assert harness.ratio_range(result([2.0]), result([1.0, 2.0])) is None


def test_wide_spread_warns():
    calm = result([100.0, 110.0, 105.0], group="calm")
    wild = result([100.0, 400.0, 150.0], group="wild")
    assert harness.spread_warnings([calm]) == []
    warnings = harness.spread_warnings([calm, wild])
    assert len(warnings) == 1
    assert "wide spread: 1 of 2 figures" in warnings[0] and "wild" in warnings[0]
    assert "calm" not in warnings[0]
    # the threshold is (max - min) / median
    assert harness.spread_warnings([wild], threshold=2.0) == []
    # one run each: no spread can be measured, which is a warning too
    single = harness.spread_warnings([result([100.0]), result([3.0])])
    assert len(single) == 1 and "no spread measured" in single[0]


def test_wide_spread_is_marked_in_the_table():
    console = Console(width=100, file=io.StringIO(), record=True, force_terminal=True,
                      color_system="standard")
    cli_bench.render_lesson(constructed(spread=3.0), console, 3)
    wide = console.export_text(styles=True)
    console = Console(width=100, file=io.StringIO(), record=True, force_terminal=True,
                      color_system="standard")
    cli_bench.render_lesson(constructed(spread=1.1), console, 3)
    calm = console.export_text(styles=True)
    yellow = "\x1b[33m"
    assert yellow in wide and yellow not in calm.split("The lesson's words")[0]


def load(before: tuple, after: tuple) -> dict:
    return harness.machine_load(harness.LoadSample(*before), harness.LoadSample(*after),
                                cpus=2, ticks_per_s=100)


def test_busy_machine_warns():
    # 1 s on 2 CPUs (200 ticks); the bench itself used 0.5 s of CPU (50 ticks)
    quiet = load((0.2, (1000, 0, 10_000), 1.0), (0.9, (1060, 0, 10_200), 1.5))
    assert quiet["others"] == pytest.approx(0.05)
    assert harness.busy_warnings(quiet) == []
    others = load((0.2, (1000, 0, 10_000), 1.0), (2.5, (1150, 0, 10_200), 1.5))
    assert others["others"] == pytest.approx(0.5)
    [warning] = harness.busy_warnings(others)
    assert "machine busy" in warning and "50% of the CPUs" in warning
    loaded = load((2.5, (1000, 0, 10_000), 1.0), (2.5, (1060, 0, 10_200), 1.5))
    assert "load average 2.5 on 2 CPUs" in harness.busy_warnings(loaded)[0]
    # a bench run that just ended leaves up to 2 on the load average: not busy
    after_a_run = load((2.0, (1000, 0, 10_000), 1.0), (2.0, (1060, 0, 10_200), 1.5))
    assert harness.busy_warnings(after_a_run) == []
    stolen = load((0.2, (1000, 0, 10_000), 1.0), (0.9, (1060, 30, 10_200), 1.5))
    assert "steal" in harness.busy_warnings(stolen)[0]


def test_load_sample_reads_this_machine():
    before = harness.load_sample()
    sum(range(200_000))
    after = harness.load_sample()
    report = harness.machine_load(before, after)
    assert report["cpus"] >= 1 and report["load1_before"] >= 0
    assert after.own_cpu_s >= before.own_cpu_s
    assert report["others"] is None or 0 <= report["others"] <= 1


# -- the chart -----------------------------------------------------------------------------

META = {"date": "2026-12-01 05:00 UTC", "repeats": 3, "scale": 0.05, "quick": True,
        "machine": {"cpu": "Test CPU", "cores": 2, "host": "testhost", "kernel": "6.1",
                    "python": "3.11.7", "versions": {"procwire": "9.8.7"}}}


@pytest.fixture(scope="module")
def matplotlib_warm(tmp_path_factory):
    """matplotlib, with the fonts the chart uses already open.

    matplotlib keeps each font file it has used open for the life of the
    process; drawing the chart once before the leak check's snapshot keeps
    those from counting as descriptors the test leaked.
    """
    matplotlib = pytest.importorskip("matplotlib")
    cli_bench.plot(lesson.table(constructed()),
                   str(tmp_path_factory.mktemp("warm") / "warm.png"), META)
    return matplotlib


def test_chart_shows_values_ratios_and_the_run(tmp_path, matplotlib_warm):
    matplotlib = matplotlib_warm
    import matplotlib.pyplot as plt
    rows = lesson.table(constructed())
    fig = cli_bench.plot_figure(rows, META)
    try:
        texts = [t.get_text() for t in fig.findobj(matplotlib.text.Text)]
    finally:
        plt.close(fig)
    for value in ("123 k", "12.35 M", "0.96", "123.45", "1234.5", "2.0"):
        assert value in texts, value
    for ratio in ("100.0×", "128.6×", "605.1×"):
        assert ratio in texts, ratio
    title = "\n".join(texts)
    for label in ("2026-12-01 05:00 UTC", "testhost", "Test CPU", "median of 3 runs",
                  "--quick", "procwire 9.8.7"):
        assert label in title, label
    assert "WARNING" not in title
    # a busy or noisy run says so on the chart itself
    fig = cli_bench.plot_figure(rows, {**META, "warnings": harness.spread_warnings(
        [result([1.0, 5.0])])})
    try:
        title = "\n".join(t.get_text() for t in fig.findobj(matplotlib.text.Text))
    finally:
        plt.close(fig)
    assert "WARNING: wide spread" in title
    path = tmp_path / "chart.png"
    cli_bench.plot(rows, str(path), META)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -- the real command ----------------------------------------------------------------------

def test_bench_quick_lesson_table(tmp_path):
    """The README's main job, shrunk: the table in 100 columns, JSON with the repeats."""
    path = tmp_path / "bench.json"
    md = tmp_path / "bench.md"
    out = subprocess.run([sys.executable, "-m", "procwire", "bench", "--quick", "--scale",
                          "0.002", "--json", str(path), "--markdown", str(md)],
                         capture_output=True, text=True, env={**ENV, "COLUMNS": "100"},
                         timeout=480)
    assert out.returncode == 0, out.stderr[-2000:]
    assert_fits(out.stdout)
    for word in ("管道 pipe", "消息队列 queue", "共享内存", "套接字 socket", "信号 signal",
                 *LESSON_WORDS, "machine:", "medians of 2 runs"):
        assert word in out.stdout, word
    data = json.loads(path.read_text())
    assert {"cpu", "cores", "kernel", "python", "host"} <= set(data["machine"])
    assert data["repeats"] == 2 and data["quick"] is True
    assert {"cpus", "load1_before", "load1_after", "others", "steal"} <= set(data["load"])
    # every warning printed is in the JSON, and the other way round
    for warning in data["warnings"]:
        assert warning.split(":")[0] in out.stdout
    rows = {row["mechanism"]: row for row in data["lesson_table"]}
    assert set(rows) == MECHANISMS
    for r in data["results"]:
        assert r["error"] is None, r
        assert r["repeats"] == len(r["samples"]) == 2, r
        assert r["min"] == min(r["samples"]) and r["max"] == max(r["samples"])
        assert r["relative_spread"] == pytest.approx((r["max"] - r["min"]) / r["median"])
        assert r["median"] > 0 and all(s > 0 for s in r["samples"]), r
    for key, row in rows.items():
        for metric in ("throughput", "bandwidth", "round_trip"):
            cell = row[metric]
            for side in ("stdlib", "procwire"):
                assert cell[side] is None or cell[side] > 0
                if cell[side] is not None:
                    lo, hi = cell[side + "_range"]
                    assert lo <= cell[side] <= hi
            if cell["stdlib"] and cell["procwire"]:
                assert cell["ratio"] > 0
                lo, hi = cell["ratio_range"]
                assert lo <= cell["ratio"] <= hi
            if cell["procwire"] is None:
                assert cell["note"], (key, metric)
    assert rows["queue"]["throughput"]["procwire"] and rows["queue"]["throughput"]["stdlib"]
    assert rows["signal"]["round_trip"]["stdlib"]
    assert md.read_text().count("\n") == 2 + len(MECHANISMS)


def test_bench_plot_png(tmp_path):
    pytest.importorskip("matplotlib")
    png = tmp_path / "bench.png"
    out = procwire_cmd("bench", "--quick", "--scale", "0.002", "--repeats", "1",
                       "--only", "queue*", "--plot", str(png), timeout=240)
    assert out.returncode == 0, out.stderr[-2000:]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "no spread measured" in out.stdout


def test_bench_detail_suite_table(tmp_path):
    out = procwire_cmd("bench", "--quick", "--scale", "0.002", "--suite", "sync",
                       "--only", "Lock uncontended*", timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "Lock uncontended acquire+release" in out.stdout and "procwire ÷ mp" in out.stdout
    assert "The lesson's words" not in out.stdout  # the lesson suite did not run
