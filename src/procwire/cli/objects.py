"""``procwire ls``, ``stat``, ``rm`` and ``clean``: the named objects in /dev/shm.

The logic lives in :mod:`procwire.objects`; these commands format it. None
of them ever takes an object's lock or writes to it.
"""
from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

import click
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from procwire import objects, stats
from procwire.cli import fail, main
from procwire.objects import Entry

if TYPE_CHECKING:
    from rich.console import JustifyMethod

_R = TypeVar("_R")


def _console() -> Console:
    # rich colours only a terminal; NO_COLOR and pipes get plain text.
    console = Console(highlight=False)
    if not console.is_terminal:
        console = Console(highlight=False, width=200)
    return console


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" or n == int(n) else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def _fill(e: Entry) -> str:
    """What the object holds now, in a few words."""
    s = e.statistics
    if e.state != "ok":
        return ""
    if isinstance(s, stats.QueueStatistics):
        limit = f" (max {s.maxsize})" if s.maxsize else ""
        return f"{s.messages} msg{limit}, {_size(s.bytes_used)} / {_size(s.capacity)}"
    if isinstance(s, stats.LockStatistics):
        return _lock_state(s)
    if isinstance(s, stats.SemaphoreStatistics):
        return f"value {s.value}" + (f" of {s.maxvalue}" if s.bounded else "")
    if isinstance(s, stats.EventStatistics):
        return "set" if s.is_set else "clear"
    if isinstance(s, stats.ConditionStatistics):
        return f"{s.notifies} notifies"
    if isinstance(s, stats.SharedStatistics):
        shape = "" if e.kind == "value" else f"[{s.length}]"
        lock = _lock_state(s.lock) if s.lock is not None else s.lock_mode
        return f"{s.typecode or 'ctypes'}{shape}, lock: {lock}"
    return ""


def _lock_state(s: stats.LockStatistics) -> str:
    if s.owner_died:
        return "owner died"
    if s.locked:
        return f"held by tid {s.holder_tid}" + (f" ×{s.depth}" if s.depth > 1 else "")
    return "free"


def _shown(text: str, style: str | None = None) -> Text:
    """Text from outside (a file name, a process name): never markup, never raw controls."""
    return Text(objects.printable(text), style=style or "")


def _process(pid: int) -> str:
    return f"{pid} ({objects.printable(objects.process_name(pid))})"


def _creator(e: Entry) -> Text:
    if not e.creator_pid:
        return Text("?")
    if e.creator_alive:
        return Text(_process(e.creator_pid))
    return Text(f"{e.creator_pid} (dead)", style="yellow")


def _state(e: Entry) -> Text:
    if e.state == "ok":
        return Text("in use" if e.in_use else "unused", style="" if e.in_use else "yellow")
    if e.state == "corrupt":
        return _shown(f"corrupt: {e.error}", style="red")
    if e.state == "stale":
        return Text("stale temporary file", style="yellow")
    return Text("being created")


def _entries_table(entries: list[Entry]) -> Table:
    table = Table(box=None, pad_edge=False, header_style="bold")
    columns: tuple[tuple[str, JustifyMethod], ...] = (
        ("NAME", "left"), ("TYPE", "left"), ("SIZE", "right"), ("FILL", "left"),
        ("CREATOR", "left"), ("USED BY", "left"), ("WAITERS", "right"), ("STATE", "left"))
    for col, justify in columns:
        table.add_column(col, justify=justify, overflow="fold")
    for e in entries:
        users = Text(", ".join(_process(p) for p in e.users) or "-")
        table.add_row(_shown(e.name), e.kind or ("temporary" if e.temporary else "?"),
                      _size(e.size), _shown(_fill(e)), _creator(e), users,
                      str(e.waiters) if e.state == "ok" else "", _state(e))
    return table


@main.command("ls")
@click.argument("url", required=False, metavar="[redis://...]")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list instead of a table.")
def ls_command(url: str | None, as_json: bool) -> None:
    """List the named procwire objects in /dev/shm (or in a Redis database).

    With a redis:// or rediss:// URL: the objects and pools in that database
    with their counters (see procwire.redis).

    For each: name, type, size, what it holds, its creator and whether that
    process still runs, the processes that map it or hold it open now, the
    threads waiting on it, and its state. Temporary files that a dead process
    left while creating an object are listed as stale; files that are not
    valid procwire segments as corrupt, with the reason.

    Nothing is locked or modified: the objects are read through a read-only
    mapping.
    """
    if url is not None:
        from procwire.cli.worker import ls_redis
        ls_redis(url, as_json)
        return
    entries = objects.scan()
    if as_json:
        click.echo(json.dumps([e.to_json() for e in entries], indent=2))
        return
    console = _console()
    if not entries:
        console.print("no named procwire objects (nothing in /dev/shm/procwire.*)")
        return
    console.print(_entries_table(entries))


# ------------------------------------------------------------------------ stat

_RATE_KEYS = {"total_in": "in/s", "total_out": "out/s", "bytes_in": "bytes in/s",
              "bytes_out": "bytes out/s", "acquires": "acquires/s", "releases": "releases/s",
              "sets": "sets/s", "notifies": "notifies/s", "generation": "trips/s"}


def _rates(prev: tuple[float, Entry] | None, now: tuple[float, Entry]) -> dict[str, float]:
    if prev is None:
        return {}
    dt = now[0] - prev[0]
    if dt <= 0:
        return {}
    a, b = prev[1].counters, now[1].counters
    return {label: (b[k] - a[k]) / dt for k, label in _RATE_KEYS.items()
            if k in a and k in b and isinstance(b[k], int)}


def _stat_view(e: Entry, rates: dict[str, float]) -> Group:
    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold")
    head.add_column()
    head.add_row("name", _shown(e.name))
    head.add_row("path", _shown(e.path))
    head.add_row("type", e.kind or "?")
    head.add_row("size", f"{_size(e.size)} ({e.size} bytes)")
    head.add_row("state", _state(e))
    head.add_row("creator", _creator(e))
    if e.info.get("created_ns"):
        created = datetime.fromtimestamp(e.info["created_ns"] / 1e9)
        head.add_row("created", created.isoformat(sep=" ", timespec="seconds"))
    head.add_row("used by", Text(", ".join(_process(p) for p in e.users) or "no process"))
    if e.state == "ok":
        head.add_row("holds", _shown(_fill(e)))
        head.add_row("waiters", str(e.waiters))
    counters = Table(box=None, pad_edge=False, header_style="bold")
    counters.add_column("counter")
    counters.add_column("value", justify="right")
    # The fields of the type's statistics() (procwire.stats), by the same names;
    # "-" for the few that only a live object reports.
    for key, value in e.counters.items():
        nested = value.items() if isinstance(value, dict) else ()
        for k2, v2 in nested:
            counters.add_row(f"{key}.{k2}", _shown("-" if v2 is None else str(v2)))
        if not nested:
            counters.add_row(key, _shown("-" if value is None else str(value)))
    for label, rate in rates.items():
        counters.add_row(label, f"{rate:,.0f}")
    return Group(head, Text(""), counters)


@main.command("stat")
@click.argument("name")
@click.option("--watch", "-w", is_flag=True, help="Keep refreshing the figures in place.")
@click.option("--interval", "-n", type=click.FloatRange(0.05, 3600), default=1.0,
              show_default=True, help="Seconds between refreshes with --watch.")
@click.option("--json", "as_json", is_flag=True,
              help="Print JSON (one object per line with --watch).")
def stat_command(name: str, watch: bool, interval: float, as_json: bool) -> None:
    """Show the live counters of the named object NAME.

    Messages in and out, bytes, waiters, owner-died events (queues); holder,
    waiters and owner deaths (locks); and so on for every kind. With --watch
    the figures refresh in place every --interval seconds, with rates; stop
    with Ctrl-C.
    """
    prev: tuple[float, Entry] | None = None
    now = _sample(name)
    if not watch:
        if as_json:
            click.echo(json.dumps(now[1].to_json(), indent=2))
        else:
            _console().print(_stat_view(now[1], {}))
        return
    try:
        if as_json:
            while True:
                out = now[1].to_json()
                out["rates"] = _rates(prev, now)
                click.echo(json.dumps(out))
                sys.stdout.flush()
                time.sleep(interval)
                prev, now = now, _sample(name)
        console = _console()
        with Live(_stat_view(now[1], {}), console=console, auto_refresh=False) as live:
            while True:
                time.sleep(interval)
                prev, now = now, _sample(name)
                live.update(_stat_view(now[1], _rates(prev, now)), refresh=True)
    except KeyboardInterrupt:
        pass


def _sample(name: str) -> tuple[float, Entry]:
    return _expected(objects.sample, name)


def _expected(func: Callable[..., _R], *args: Any) -> _R:
    """Run `func`; an expected error (bad name, missing, permission) ends the command."""
    try:
        return func(*args)
    except (ValueError, TypeError, OSError) as exc:
        fail(exc)


# -------------------------------------------------------------------------- rm

@main.command("rm")
@click.argument("names", nargs=-1, required=True, metavar="NAME...")
def rm_command(names: tuple[str, ...]) -> None:
    """Remove the named objects NAME...

    Like ``Queue.unlink()``: the name goes at once, and processes that have
    the object open keep using it until they close it. Fails (exit 1) on an
    invalid name or a name that does not exist, after removing the others.
    """
    failed = False
    for name in names:
        try:
            objects.remove(name)
        except (ValueError, TypeError, OSError) as exc:
            fail(exc, exit=False)
            failed = True
    if failed:
        sys.exit(1)


# ----------------------------------------------------------------------- clean

@main.command("clean")
@click.option("--yes", "-y", is_flag=True, help="Remove without asking.")
@click.option("--dry-run", "-n", is_flag=True, help="Only list what would be removed.")
def clean_command(yes: bool, dry_run: bool) -> None:
    """Remove named objects that no running process uses.

    Candidates are objects that no process maps or holds open and whose
    creator is dead, temporary files left by a process that died while
    creating an object, and files whose header is corrupt (when unused).
    Lists them and asks first (--yes skips the question). An object in use is
    never removed: each one is checked again just before it goes.
    """
    console = _console()
    entries = objects.scan()
    doomed = objects.clean_candidates(entries)
    kept = [e for e in entries if e not in doomed]
    if not doomed:
        console.print("nothing to clean" + (f" ({len(kept)} object(s) in use)" if kept else ""))
        return
    console.print(_entries_table(doomed))
    if dry_run:
        console.print(f"would remove {len(doomed)} file(s) (dry run)")
        return
    if not yes and not click.confirm(f"remove these {len(doomed)} file(s)?", default=False,
                                     err=True):
        console.print("nothing removed")
        return
    removed = 0
    for e in doomed:
        if objects.remove_unused(e):
            removed += 1
        else:
            console.print(Text(f"kept {objects.printable(e.name)}: in use, replaced or not "
                               "removable since it was listed"))
    console.print(f"removed {removed} file(s)")
