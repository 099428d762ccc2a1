"""``procwire bench``: measure procwire against multiprocessing and its peers, here.

The default view is the lesson's table (``procwire.bench.lesson``): every IPC
mechanism of the lesson, as the standard library does it and as procwire
does it, with the ratio. ``--suite``/``--detail`` add the per-workload tables
of each mechanism's suite, against the peers too.
"""
from __future__ import annotations

import datetime
import fnmatch
import json
import os
import sys
from collections import defaultdict
from typing import Any

import click
from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from procwire.bench import harness, lesson, queues
from procwire.bench import pipe as pipe_bench
from procwire.bench import pool as pool_bench
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
    "pool": ("Process pools (2 workers, f(x) = x + 1)", pool_bench.cases),
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
    if unit == "ms":
        return f"{value:.1f} ms"
    if unit == "tasks/s":
        return _fmt(value, "msg/s").replace("/s", " tasks/s")
    return f"{value:.2f} {unit}"


def _ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}×"


def _ratio_cell(ours: harness.Result | None, other: harness.Result | None) -> str:
    """procwire's ratio to `other`, and its min–max over the repeats."""
    if ours is None or other is None:
        return _ratio(None)
    wide = any(r.relative_spread is not None and r.relative_spread > harness.WIDE_SPREAD
               for r in (ours, other))
    return (f"{_ratio(harness.ratio(ours, other))} "
            f"{_range(harness.ratio_range(ours, other), None, wide)}").rstrip()


def render(results: list[harness.Result], console: Console, title: str) -> None:
    """The comparison table: one row per workload, one column per implementation."""
    impls: list[str] = []
    rows: dict[str, dict[str, harness.Result]] = defaultdict(dict)
    for r in results:
        rows[r.case.group][r.case.impl] = r
        if r.case.impl not in impls:
            impls.append(r.case.impl)
    table = Table(title=f"{title}: medians of fresh-interpreter runs; ratios with their "
                        "(min–max) over the repeats", title_justify="left")
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
                      _ratio_cell(ours, by_impl.get(BASELINE)),
                      _ratio_cell(ours, best))
    console.print(table)
    for r in results:
        if r.error:
            console.print(f"[yellow]not measured[/]: {r.case.group} / {r.case.impl}: {r.error}")


def render_machine(console: Console) -> None:
    m = harness.machine()
    console.print(f"machine: {m['cpu']}, {m['cores']} cores, Linux {m['kernel']}, "
                  f"Python {m['python']}; " +
                  ", ".join(f"{k} {v}" for k, v in m["versions"].items()))


def _num(value: float, unit: str) -> str:
    """A figure without its unit, for tables whose header carries the unit."""
    text = _fmt(value, unit)
    for suffix in (" M/s", " k/s", " /s"):
        if text.endswith(suffix):
            return text[:-len(suffix)] + ("" if suffix == " /s" else suffix[:2])
    return text.rsplit(" ", 1)[0]


def _range(lo_hi: tuple[float, float] | None, unit: str | None, wide: bool) -> str:
    """"(lo–hi)" over the repeats, yellow when the spread is wide."""
    if lo_hi is None:
        return ""
    lo, hi = lo_hi
    text = (f"({lo:.1f}–{hi:.1f})" if unit is None
            else f"({_num(lo, unit)}–{_num(hi, unit)})")
    return f"[yellow]{text}[/]" if wide else f"[dim]{text}[/]"


def _lesson_cell(cell: lesson.Cell, unit: str) -> str:
    """stdlib → procwire, then procwire's ratio and its min–max over the repeats."""
    wide = cell.relative_spread is not None and cell.relative_spread > harness.WIDE_SPREAD
    if cell.stdlib is None and cell.procwire is None:
        return f"[dim]{cell.note}[/]" if cell.note else "—"
    if cell.procwire is None or cell.stdlib is None:
        value, side = ((cell.stdlib, cell.stdlib_range) if cell.procwire is None
                       else (cell.procwire, cell.procwire_range))
        text = f"{_num(value, unit)} {_range(side, unit, wide)}".rstrip()
        return f"{text}\n[dim]{cell.note}[/]" if cell.note else text
    text = f"{_num(cell.stdlib, unit)} → [bold]{_num(cell.procwire, unit)}[/]"
    return f"{text}\n{_ratio(cell.ratio)} {_range(cell.ratio_range, None, wide)}".rstrip()


def lesson_table(rows: list[dict[str, Any]], repeats: int) -> Table:
    """The lesson's figures, narrow enough for a 100-column terminal.

    The lesson's words (开辟空间, 读写方式, 效率, 是否需要同步互斥) are in
    lesson_legend(), printed under it.
    """
    spread = ("; (min–max) over the repeats, yellow when wide" if repeats > 1
              else "; one run each, no spread")
    table = Table(title=f"进程间通信, measured: stdlib → procwire, medians of {repeats} "
                        f"run{'s' if repeats > 1 else ''}; × = procwire's ratio, >1 = "
                        f"procwire better{spread}",
                  title_justify="left", show_lines=True)
    # A fixed width that holds the longest word (multiprocessing.RawArray):
    # rich cuts a word longer than its column with an ellipsis, and with
    # min_width instead its layout overflowed the console (rich 15).
    table.add_column("mechanism", style="bold", width=24, overflow="fold")
    for _, label, _, _ in lesson.METRICS:
        table.add_column(label, justify="right", overflow="fold")
    for row in rows:
        m: lesson.Mechanism = row["mechanism"]
        impls = m.stdlib + (f"\n→ {m.procwire}" if m.procwire else "")
        table.add_row(f"{m.title}\n[dim]{impls}[/]",
                      *(_lesson_cell(row["cells"][metric], unit)
                        for metric, _, unit, _ in lesson.METRICS))
    return table


def lesson_legend(rows: list[dict[str, Any]]) -> Table:
    """The lesson's fixed words for each mechanism, printed under the figures.

    One text column, so that it wraps in a narrow terminal instead of
    squeezing four columns of CJK and English into unreadable slivers.
    """
    legend = Table(title="The lesson's words: 开辟空间 where the space is, 读写方式 how it is "
                         "read and written, 效率 its efficiency as the lesson rates it, "
                         "是否需要同步互斥 whether it needs synchronisation",
                   title_justify="left", box=box.SIMPLE, show_header=False, pad_edge=False)
    legend.add_column("mechanism", style="bold", no_wrap=True)
    # fold, not the default ellipsis: rich 15 cut some wrapped lines that mix
    # CJK and Latin text by one cell; folding never hides a character.
    legend.add_column("words", overflow="fold")
    for row in rows:
        m: lesson.Mechanism = row["mechanism"]
        legend.add_row(m.title, f"开辟空间 {m.where}\n读写方式 {m.how} · 效率 {m.lesson_says} · "
                                f"同步互斥 {m.needs_sync}")
    return legend


def render_lesson(results: list[harness.Result], console: Console,
                  repeats: int) -> list[dict[str, Any]]:
    """The lesson's comparison table with measured figures, and its legend; returns its rows."""
    rows = lesson.table(results)
    console.print(lesson_table(rows, repeats))
    console.print(lesson_legend(rows))
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
                rr = (f", {c.ratio_range[0]:.1f}–{c.ratio_range[1]:.1f}"
                      if c.ratio_range else "")
                cells.append(f"{_fmt(c.stdlib, unit)} → **{_fmt(c.procwire, unit)}** "
                             f"({_ratio(c.ratio)}{rr})")
        name = f"{m.title} (`{m.stdlib}`" + (f" → `{m.procwire}`)" if m.procwire else ")")
        lines.append("| " + " | ".join([name, m.where, m.how, *cells, m.lesson_says,
                                        m.needs_sync]) + " |")
    return "\n".join(lines) + "\n"


def run_label(meta: dict[str, Any]) -> str:
    """Which run a chart or a file shows: date, host and CPU, repeats, quick, version."""
    m = meta.get("machine") or harness.machine()
    return (f"procwire {m['versions'].get('procwire', '?')} bench, {meta['date']}, "
            f"host {m.get('host', '?')}: {m['cpu']}, {m['cores']} CPUs, Linux {m['kernel']}, "
            f"Python {m['python']}; median of {meta['repeats']} "
            f"run{'s' if meta['repeats'] > 1 else ''} per bar"
            + (" (--quick: small counts)" if meta.get("quick") else "")
            + f", scale {meta['scale']:g}"
            # "machine busy", "wide spread": a chart travels without the terminal's warnings
            + "".join(f"\nWARNING: {w.split(':')[0]}, see the run's output"
                      for w in meta.get("warnings", [])))


def plot_figure(rows: list[dict[str, Any]], meta: dict[str, Any]) -> Any:
    """A bar chart of the lesson table: one panel per figure, stdlib beside procwire.

    Each bar is labelled with its value, each pair with procwire's ratio; the
    whiskers are the min–max over the repeats; the title says which run it is.
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(lesson.METRICS), figsize=(16, 5.6))
    for ax, (metric, label, unit, higher) in zip(axes, lesson.METRICS):
        names: list[str] = []
        cells: list[lesson.Cell] = []
        for row in rows:
            c: lesson.Cell = row["cells"][metric]
            if c.stdlib is None and c.procwire is None:
                continue
            names.append(row["mechanism"].key)
            cells.append(c)
        xs = list(range(len(names)))
        top = 0.0
        for offset, side, color, name in ((-0.2, "stdlib", "#9e9e9e", "stdlib / multiprocessing"),
                                          (0.2, "procwire", "#1f77b4", "procwire")):
            mine = [(x + offset, getattr(c, side), getattr(c, side + "_range"))
                    for x, c in zip(xs, cells) if getattr(c, side) is not None]
            if not mine:
                continue
            pos, vals, spans = zip(*mine)
            spans = [span or (v, v) for v, span in zip(vals, spans)]
            err = [[v - lo for v, (lo, _) in zip(vals, spans)],
                   [hi - v for v, (_, hi) in zip(vals, spans)]]
            ax.bar(pos, vals, 0.4, label=name, color=color,
                   yerr=err if any(any(e) for e in err) else None,
                   error_kw={"elinewidth": 0.8, "capsize": 2})
            for p, v, (_, hi) in zip(pos, vals, spans):
                # above the whisker, so that neither hides the other
                ax.annotate(_num(v, unit), (p, max(v, hi)), xytext=(0, 4),
                            textcoords="offset points", ha="center", va="bottom",
                            rotation=90, fontsize=7)
                top = max(top, v, hi)
        for x, c in zip(xs, cells):
            if c.ratio is not None:
                ax.text(x, 0.97, _ratio(c.ratio), transform=ax.get_xaxis_transform(),
                        ha="center", va="top", fontsize=8, fontweight="bold",
                        color="#1f77b4" if c.ratio >= 1 else "#b23b3b")
        ax.set_yscale("log")
        ax.set_ylim(top=(top or 1) * 100)  # room for the value and ratio labels
        ax.set_xticks(xs, names, rotation=30, ha="right")
        ax.set_title(f"{label} ({'higher' if higher else 'lower'} is better)", fontsize=10)
        ax.grid(axis="y", which="both", alpha=0.3)
    axes[0].legend(loc="upper left", bbox_to_anchor=(0, 0.9), fontsize="small")
    fig.suptitle("procwire bench: the lesson's mechanisms, stdlib against procwire "
                 "(× = procwire's ratio, >1 = procwire better; whiskers: min–max of "
                 "the repeats)\n" + run_label(meta), fontsize="small")
    fig.tight_layout()
    return fig


def plot(rows: list[dict[str, Any]], path: str, meta: dict[str, Any]) -> None:
    """Draw plot_figure() into a PNG at `path`."""
    import matplotlib.pyplot as plt

    fig = plot_figure(rows, meta)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def render_warnings(warnings: list[str], console: Console) -> None:
    for w in warnings:
        console.print(f"[bold yellow]warning[/]: {w}")


def _check_plot_dependency() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        fail("--plot needs matplotlib: pip install 'procwire[plot]'")


@main.command()
@click.option("--quick", is_flag=True,
              help="Small counts and two repeats (about 20 s of CPU time).")
@click.option("--repeats", type=click.IntRange(1, 50), default=None,
              help="Runs of each case; the median is reported with the min–max. "
                   "[default: 3, or 2 with --quick]")
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
              help="Also write the results, every repeat included, as JSON to this file.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, writable=True),
              help="Also draw the lesson table as a chart (PNG); needs procwire[plot].")
@click.option("--markdown", "markdown_path", type=click.Path(dir_okay=False, writable=True),
              help="Also write the lesson table as Markdown to this file.")
def bench(quick: bool, repeats: int | None, scale: float | None, suites: tuple[str, ...],
          detail: bool, patterns: tuple[str, ...], json_path: str | None,
          plot_path: str | None, markdown_path: str | None) -> None:
    """Measure the lesson's IPC mechanisms, stdlib against procwire, on this machine.

    By default: pipe, message queue, shared memory (Value/Array under their
    lock, and raw), sockets and signals, each as the standard library does it
    and as procwire does it, for 64-byte messages (throughput), 1 MiB
    messages (bandwidth) and a round trip (latency); printed as the lesson's
    table (medians, procwire's ratio and its min–max over the repeats), the
    lesson's words for each mechanism, then the machine. It warns when the
    repeats disagree widely or the machine was busy.

    --suite queue / --suite sync / --detail add the detailed tables, with
    faster-fifo and pyzmq as peers. Every measurement runs in a fresh
    interpreter, and the repeats are interleaved across the suite. Peers that
    are not installed are reported as not measured: pip install
    'procwire[bench]' to include them.
    """
    if plot_path:
        _check_plot_dependency()
    repeats = repeats or (2 if quick else 3)
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
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(width=200)  # files and pipes get the wide tables on one line a row
    err_console = Console(stderr=True)
    started = datetime.datetime.now(datetime.timezone.utc)
    before = harness.load_sample()
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=err_console, transient=True) as progress:
        task = progress.add_task("measuring", total=len(cases) * repeats)

        def step(case: harness.Case) -> None:
            progress.update(task, advance=1, description=f"{case.group} · {case.impl}")

        results = harness.run_suite([c for _, c in cases], repeats=repeats, progress=step)
    load = harness.machine_load(before, harness.load_sample())
    rows = None
    for name in suites:
        mine = [r for (suite, _), r in zip(cases, results) if suite == name]
        if not mine:
            continue
        if name == "lesson":
            rows = render_lesson(mine, console, repeats)
        if detail:
            render(mine, console, SUITES[name][0])
    render_machine(console)
    warnings = harness.spread_warnings(results, fmt=_fmt) + harness.busy_warnings(load)
    render_warnings(warnings, console)
    meta: dict[str, Any] = {"date": started.strftime("%Y-%m-%d %H:%M UTC"),
                            "machine": harness.machine(), "repeats": repeats, "scale": scale,
                            "quick": quick, "command": " ".join(sys.argv), "load": load,
                            "wide_spread": harness.WIDE_SPREAD, "warnings": warnings}
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
        plot(rows, plot_path, meta)
        console.print(f"chart written to {plot_path}")
    if all(r.error for r in results):
        sys.exit(1)
