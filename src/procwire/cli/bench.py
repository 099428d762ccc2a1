"""``procwire bench``: measure procwire against multiprocessing and its peers, here.

The default view is the lesson's table (``procwire.bench.lesson``): every IPC
mechanism of the lesson, as the standard library does it and as procwire
does it, with the ratio. ``--suite``/``--detail`` add the per-workload tables
of each mechanism's suite, against the peers too.
"""
from __future__ import annotations

import fnmatch
import json
import sys
from collections import defaultdict
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from procwire.bench import harness, lesson, queues
from procwire.bench import pipe as pipe_bench
from procwire.bench import sync as sync_bench
from procwire.bench import engine as engine_bench
from procwire.cli import fail, main

BASELINE = "multiprocessing"

# name -> (title, function(scale) -> cases). Each mechanism's workloads live in
# procwire.bench.<mechanism> and are shared with the scripts in benchmarks/.
SUITES = {
    "lesson": ("The lesson's mechanisms, stdlib and procwire", lesson.cases),
    "queue": ("Message queues", queues.cases),
    "sync": ("Locks, events and shared values", sync_bench.cases),
    "pipe": ("Pipes", pipe_bench.cases),
    "engine": ("procwire on Redis against raw redis-py (loopback)", engine_bench.cases),
}


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "—"
    if unit == "msg/s":
        if value >= 1e6:
            return f"{value / 1e6:.2f} M/s"
        if value >= 1e4:
            return f"{value / 1e3:.0f} k/s"
        return f"{value / 1e3:.1f} k/s" if value >= 1e3 else f"{value:.0f} /s"
    if unit == "GB/s":
        return f"{value:.2f} GB/s"
    if unit == "µs":
        return f"{value:.1f} µs"
    return f"{value:.2f} {unit}"


def _ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}×"


def render(results: list[harness.Result], console: Console, title: str) -> None:
    """The comparison table: one row per workload, one column per implementation."""
    impls: list[str] = []
    rows: dict[str, dict[str, harness.Result]] = defaultdict(dict)
    for r in results:
        rows[r.case.group][r.case.impl] = r
        if r.case.impl not in impls:
            impls.append(r.case.impl)
    table = Table(title=f"{title}: medians of fresh-interpreter runs", title_justify="left")
    table.add_column("workload")
    for impl in impls:
        table.add_column(impl, justify="right", style="bold" if impl == "procwire" else None)
    table.add_column("procwire ÷ mp", justify="right")
    table.add_column("÷ best peer", justify="right")
    for group, by_impl in rows.items():
        ours = by_impl.get("procwire")
        unit = next(iter(by_impl.values())).case.unit
        cells = [_fmt(by_impl[i].median, unit) if i in by_impl else "" for i in impls]
        peers = [r for i, r in by_impl.items() if i != "procwire" and r.median]
        best = None
        if peers:
            key = (lambda r: r.median) if peers[0].case.higher_is_better else (lambda r: -r.median)
            best = max(peers, key=key)
        table.add_row(f"{group} ({unit})", *cells,
                      _ratio(harness.ratio(ours, by_impl.get(BASELINE)) if ours else None),
                      _ratio(harness.ratio(ours, best) if ours else None))
    console.print(table)
    for r in results:
        if r.error:
            console.print(f"[yellow]not measured[/]: {r.case.group} / {r.case.impl}: {r.error}")


def render_machine(console: Console) -> None:
    m = harness.machine()
    console.print(f"machine: {m['cpu']}, {m['cores']} cores, Linux {m['kernel']}, "
                  f"Python {m['python']}; " +
                  ", ".join(f"{k} {v}" for k, v in m["versions"].items()))


def _lesson_cell(cell: lesson.Cell, unit: str) -> str:
    if cell.stdlib is None and cell.procwire is None:
        return cell.note or "—"
    std = _fmt(cell.stdlib, unit) if cell.stdlib is not None else "—"
    if cell.procwire is None:
        return f"{std}\n[dim]{cell.note}[/]" if cell.note else std
    ours = _fmt(cell.procwire, unit)
    return f"{std} → [bold]{ours}[/]\n{_ratio(cell.ratio)}"


def render_lesson(results: list[harness.Result], console: Console) -> list[dict[str, Any]]:
    """The lesson's comparison table with measured figures; returns its rows."""
    rows = lesson.table(results)
    table = Table(title="进程间通信, measured: stdlib → procwire, and procwire's ratio "
                        "(×, >1 = procwire better); medians", title_justify="left",
                  show_lines=True)
    table.add_column("mechanism", style="bold")
    table.add_column("开辟空间 where")
    table.add_column("读写方式 how")
    for _, label, _, _ in lesson.METRICS:
        table.add_column(label, justify="right")
    table.add_column("效率 lesson says", justify="center")
    table.add_column("是否需要同步互斥 needs sync")
    for row in rows:
        m: lesson.Mechanism = row["mechanism"]
        impls = m.stdlib + (f"\n→ {m.procwire}" if m.procwire else "")
        table.add_row(f"{m.title}\n[dim]{impls}[/]", m.where, m.how,
                      *(_lesson_cell(row["cells"][metric], unit)
                        for metric, _, unit, _ in lesson.METRICS),
                      m.lesson_says, m.needs_sync)
    console.print(table)
    return rows


def lesson_markdown(rows: list[dict[str, Any]]) -> str:
    """The lesson table as Markdown, for the README."""
    head = ["mechanism", "开辟空间 where", "读写方式 how",
            *(label for _, label, _, _ in lesson.METRICS), "效率 lesson", "是否需要同步互斥"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        m: lesson.Mechanism = row["mechanism"]
        cells = []
        for metric, _, unit, _ in lesson.METRICS:
            c: lesson.Cell = row["cells"][metric]
            if c.stdlib is None and c.procwire is None:
                cells.append(c.note or "—")
            elif c.procwire is None:
                cells.append(_fmt(c.stdlib, unit) + (f" ({c.note})" if c.note else ""))
            else:
                cells.append(f"{_fmt(c.stdlib, unit)} → **{_fmt(c.procwire, unit)}** "
                             f"({_ratio(c.ratio)})")
        name = f"{m.title} (`{m.stdlib}`" + (f" → `{m.procwire}`)" if m.procwire else ")")
        lines.append("| " + " | ".join([name, m.where, m.how, *cells, m.lesson_says,
                                        m.needs_sync]) + " |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], path: str) -> None:
    """A bar chart of the lesson table: one panel per figure, stdlib beside procwire."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(lesson.METRICS), figsize=(15, 4.8))
    for ax, (metric, label, _, higher) in zip(axes, lesson.METRICS):
        names, std, ours = [], [], []
        for row in rows:
            c: lesson.Cell = row["cells"][metric]
            if c.stdlib is None and c.procwire is None:
                continue
            names.append(row["mechanism"].key)
            std.append(c.stdlib or 0)
            ours.append(c.procwire or 0)
        xs = range(len(names))
        ax.bar([x - 0.2 for x in xs], std, 0.4, label="stdlib / multiprocessing",
               color="#9e9e9e")
        ax.bar([x + 0.2 for x in xs], ours, 0.4, label="procwire", color="#1f77b4")
        ax.set_xticks(list(xs), names, rotation=30, ha="right")
        ax.set_yscale("log")
        ax.set_title(f"{label} ({'higher' if higher else 'lower'} is better)")
        ax.grid(axis="y", which="both", alpha=0.3)
    axes[0].legend(loc="best", fontsize="small")
    m = harness.machine()
    fig.suptitle(f"procwire bench: {m['cpu']}, {m['cores']} cores, Linux {m['kernel']}, "
                 f"Python {m['python']}", fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _check_plot_dependency() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        fail("--plot needs matplotlib: pip install 'procwire[plot]'")


@main.command()
@click.option("--quick", is_flag=True, help="Small counts and one repeat (about 20 seconds).")
@click.option("--repeats", type=click.IntRange(1, 50), default=None,
              help="Runs of each case; the median is reported. [default: 3, or 1 with --quick]")
@click.option("--scale", type=click.FloatRange(0.0001, 100), default=None,
              help="Multiply every message count by this. [default: 1, or 0.05 with --quick]")
@click.option("--suite", "suites", multiple=True, type=click.Choice(sorted(SUITES)),
              help="Measure this suite and show its detailed table (repeatable). "
                   "[default: lesson]")
@click.option("--detail", is_flag=True,
              help="Show each suite's detailed table; without --suite, run every suite.")
@click.option("--only", "patterns", multiple=True, metavar="GLOB",
              help="Run only workloads or implementations matching GLOB (repeatable).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, writable=True),
              help="Also write the results as JSON to this file.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, writable=True),
              help="Also draw the lesson table as a chart (PNG); needs procwire[plot].")
@click.option("--markdown", "markdown_path", type=click.Path(dir_okay=False, writable=True),
              help="Also write the lesson table as Markdown to this file.")
def bench(quick: bool, repeats: int | None, scale: float | None, suites: tuple[str, ...],
          detail: bool, patterns: tuple[str, ...], json_path: str | None,
          plot_path: str | None, markdown_path: str | None) -> None:
    """Measure the lesson's IPC mechanisms, stdlib against procwire, on this machine.

    By default: pipe, message queue, shared memory (Value/Array under their
    lock, and raw), a Unix socket and signals, each as the standard library
    does it and as procwire does it, for 64-byte messages (throughput), 1 MiB
    messages (bandwidth) and a round trip (latency); printed as the lesson's
    table with procwire's ratio, then the machine.

    --suite queue / --suite sync / --detail add the detailed tables, with
    faster-fifo and pyzmq as peers. Every measurement runs in a fresh
    interpreter, and the repeats are interleaved across the suite. Peers that
    are not installed are reported as not measured: pip install
    'procwire[bench]' to include them.
    """
    if plot_path:
        _check_plot_dependency()
    repeats = repeats or (1 if quick else 3)
    scale = scale or (0.05 if quick else 1.0)
    if not suites:
        suites = tuple(SUITES) if detail else ("lesson",)
    detail = detail or any(s != "lesson" for s in suites)
    cases = [(name, c) for name in suites for c in SUITES[name][1](scale)]
    if patterns:
        cases = [(name, c) for name, c in cases
                 if any(fnmatch.fnmatch(c.group, p) or fnmatch.fnmatch(c.impl, p)
                        for p in patterns)]
        if not cases:
            raise click.UsageError(f"no workload matches {', '.join(patterns)}")
    console = Console()
    if not console.is_terminal:
        console = Console(width=200)  # files and pipes get the whole table on one line a row
    err_console = Console(stderr=True)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=err_console, transient=True) as progress:
        task = progress.add_task("measuring", total=len(cases) * repeats)

        def step(case: harness.Case) -> None:
            progress.update(task, advance=1, description=f"{case.group} · {case.impl}")

        results = harness.run_suite([c for _, c in cases], repeats=repeats, progress=step)
    rows = None
    for name in suites:
        mine = [r for (suite, _), r in zip(cases, results) if suite == name]
        if not mine:
            continue
        if name == "lesson":
            rows = render_lesson(mine, console)
        if detail:
            render(mine, console, SUITES[name][0])
    render_machine(console)
    meta: dict[str, Any] = {"repeats": repeats, "scale": scale, "command": " ".join(sys.argv)}
    if rows is not None:
        meta["lesson_table"] = lesson.rows_to_json(rows)
    if json_path:
        harness.write_json(json_path, results, meta)
        console.print(f"results written to {json_path}")
    if markdown_path and rows is not None:
        with open(markdown_path, "w") as f:
            f.write(lesson_markdown(rows))
        console.print(f"lesson table written to {markdown_path}")
    if plot_path and rows is not None:
        plot(rows, plot_path)
        console.print(f"chart written to {plot_path}")
    if all(r.error for r in results):
        sys.exit(1)
