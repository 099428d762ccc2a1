"""``procwire bench``: measure procwire against multiprocessing and its peers, here."""
from __future__ import annotations

import fnmatch
import sys
from collections import defaultdict

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from procwire.bench import harness, queues
from procwire.bench import pipe as pipe_bench
from procwire.bench import sync as sync_bench
from procwire.cli import main

BASELINE = "multiprocessing"

# name -> (title, function(scale) -> cases). Each mechanism's workloads live in
# procwire.bench.<mechanism> and are shared with the scripts in benchmarks/.
SUITES = {
    "queue": ("Message queues", queues.cases),
    "sync": ("Locks, events and shared values", sync_bench.cases),
    "pipe": ("Pipes", pipe_bench.cases),
}


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "—"
    if unit == "msg/s":
        return f"{value / 1e6:.2f} M/s" if value >= 1e6 else f"{value / 1e3:.0f} k/s"
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


@main.command()
@click.option("--quick", is_flag=True, help="Small counts and one repeat (about 30 seconds).")
@click.option("--repeats", type=click.IntRange(1, 50), default=None,
              help="Runs of each case; the median is reported. [default: 3, or 1 with --quick]")
@click.option("--scale", type=click.FloatRange(0.001, 100), default=None,
              help="Multiply every message count by this. [default: 1, or 0.05 with --quick]")
@click.option("--suite", "suites", multiple=True, type=click.Choice(sorted(SUITES)),
              help="Measure only this mechanism (repeatable). [default: all]")
@click.option("--only", "patterns", multiple=True, metavar="GLOB",
              help="Run only workloads or implementations matching GLOB (repeatable).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, writable=True),
              help="Also write the results as JSON to this file.")
def bench(quick: bool, repeats: int | None, scale: float | None, suites: tuple[str, ...],
          patterns: tuple[str, ...], json_path: str | None) -> None:
    """Measure procwire against multiprocessing, faster-fifo and pyzmq on this machine.

    Every measurement runs in a fresh interpreter, and the repeats are
    interleaved across the suite. Peers that are not installed are reported
    as not measured: pip install 'procwire[bench]' to include them.
    """
    repeats = repeats or (1 if quick else 3)
    scale = scale or (0.05 if quick else 1.0)
    suites = suites or tuple(SUITES)
    cases = [(name, c) for name in suites for c in SUITES[name][1](scale)]
    if patterns:
        cases = [(name, c) for name, c in cases
                 if any(fnmatch.fnmatch(c.group, p) or fnmatch.fnmatch(c.impl, p)
                        for p in patterns)]
        if not cases:
            raise click.UsageError(f"no workload matches {', '.join(patterns)}")
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)  # files and pipes get the whole table on one line a row
    err_console = Console(stderr=True)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=err_console, transient=True) as progress:
        task = progress.add_task("measuring", total=len(cases) * repeats)

        def step(case: harness.Case) -> None:
            progress.update(task, advance=1, description=f"{case.group} · {case.impl}")

        results = harness.run_suite([c for _, c in cases], repeats=repeats, progress=step)
    for name in suites:
        mine = [r for (suite, _), r in zip(cases, results) if suite == name]
        if mine:
            render(mine, console, SUITES[name][0])
    render_machine(console)
    if json_path:
        harness.write_json(json_path, results, {"repeats": repeats, "scale": scale,
                                                "command": " ".join(sys.argv)})
        console.print(f"results written to {json_path}")
    if all(r.error for r in results):
        sys.exit(1)
