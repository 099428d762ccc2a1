"""``procwire worker URL --pool NAME --processes M``: run a Redis Pool's tasks here.

The task code must be importable on this machine (as with multiprocessing's
spawn); ``--path DIR`` adds directories to ``sys.path``. The authkey comes
from the ``PROCWIRE_AUTHKEY`` environment variable (never the command line,
where other users could read it).

Ctrl-C or SIGTERM: each process finishes the task it is running, then the
command exits 0. A second Ctrl-C/SIGTERM stops at once: the running tasks
are given back to the queue (without counting an attempt) for other workers.
A worker process that dies is replaced. If this command is SIGKILLed, its
processes die with it (PR_SET_PDEATHSIG) and their tasks are re-queued by
the others when their heartbeats expire.

Also here: ``procwire ls redis://...`` support (:func:`ls_redis`).
"""
from __future__ import annotations

import json
import multiprocessing
import os
import signal
import sys
import time
from typing import Any

import click

from procwire.cli import fail, main


@main.command("worker")
@click.argument("url")
@click.option("--pool", "pool", required=True, metavar="NAME", help="The Pool's name.")
@click.option("--processes", "-p", type=click.IntRange(1, 4096), default=None,
              help="Worker processes. [default: the number of CPUs]")
@click.option("--lease", type=click.FloatRange(0.1, 86400), default=10.0, show_default=True,
              help="Seconds after which a dead worker's task is re-queued or lost.")
@click.option("--max-tasks", type=click.IntRange(1), default=None,
              help="Replace a process after this many tasks (maxtasksperchild).")
@click.option("--path", "paths", multiple=True, type=click.Path(file_okay=False),
              help="Add this directory to sys.path (where the task code is); repeatable.")
@click.option("--quiet", "-q", is_flag=True, help="No progress output.")
def worker_command(url: str, pool: str, processes: int | None, lease: float,
                   max_tasks: int | None, paths: tuple[str, ...], quiet: bool) -> None:
    """Run the tasks of the Redis Pool NAME at URL in local processes.

    URL: redis://[user:password@]host[:port][/db] or rediss:// (TLS). The
    authkey is read from the PROCWIRE_AUTHKEY environment variable.
    """
    try:
        from procwire.redis import _engine, _worker
        from procwire.redis.errors import EngineError
    except ImportError as e:
        fail(f"the Redis context needs redis-py: pip install 'procwire[redis]' ({e})")
    try:
        _engine.check_url(url)
        _engine.validate_name(pool)
    except ValueError as e:
        raise click.UsageError(str(e)) from e
    for p in paths:
        sys.path.insert(0, os.path.abspath(p))
    authkey = _engine._authkey(None)
    processes = processes or os.cpu_count() or 1
    engine = _engine.engine_for(url, authkey)
    keys = _worker.Keys(pool)
    try:
        engine.call(lambda r: r.ping(), what="connecting")
        engine.register(pool, "Pool")
        _worker.ensure_group(engine, keys)
    except (EngineError, ValueError) as e:
        fail(e)
    host = _engine.identity().rsplit(":", 2)[0]
    mp = multiprocessing.get_context("fork")  # the children start from this clean process
    children: dict[int, tuple[Any, str]] = {}
    serial = 0

    def start() -> None:
        nonlocal serial
        serial += 1
        consumer = f"{host}:{os.getpid()}:{serial}"
        p = mp.Process(target=_worker.worker_process,
                       args=(url, authkey, pool, lease, None, (), max_tasks, True, consumer),
                       name=f"procwire worker {pool} #{serial}")
        p.start()
        assert p.pid is not None  # started
        children[p.pid] = (p, consumer)

    stops = 0

    def on_signal(signum: int, frame: Any) -> None:
        nonlocal stops
        stops += 1
        if stops == 1:
            for p, _ in children.values():
                if p.exitcode is None:
                    os.kill(p.pid, signal.SIGTERM)  # finish the task at hand, then exit
        else:
            for p, _ in children.values():
                if p.exitcode is None:
                    os.kill(p.pid, signal.SIGKILL)

    for _ in range(processes):
        start()
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    def say(msg: str) -> None:
        if not quiet:
            click.echo(msg, err=True)

    say(f"procwire worker: pool {pool!r} at {engine.display}: {processes} processes "
        f"(pid {os.getpid()}); Ctrl-C to stop after the running tasks")
    if authkey is None:
        say("procwire worker: PROCWIRE_AUTHKEY is not set: tasks are not signed, and anyone "
            "who can reach this Redis server can make these processes run their code")
    last = None
    try:
        while children:
            for pid, (p, consumer) in list(children.items()):
                if p.exitcode is not None:
                    p.join()
                    del children[pid]
                    if p.exitcode not in (0, None) or stops >= 2:
                        # killed mid-task: give its task back now (no attempt counted)
                        try:
                            _worker.reclaim(engine, keys, release=consumer)
                        except EngineError:
                            pass
                    if not stops:
                        start()
            if not children:
                break
            try:
                line = _progress(engine, keys, [c for _, c in children.values()], stops)
            except EngineError as e:
                line = f"Redis unreachable: {e}"
            if line != last:
                say(line)
                last = line
            time.sleep(1.0)  # the progress refresh period; signals interrupt it
    finally:
        engine.close()
    say("procwire worker: stopped")


def _progress(engine: Any, keys: Any, consumers: list[str], stops: int) -> str:
    from procwire.redis.pool import pool_statistics
    s = pool_statistics(engine, keys)
    mine = engine.call(lambda r: r.hmget(keys.done_by, consumers) if consumers else [],
                       what="progress")
    here = sum(int(x) for x in mine if x)
    state = " (stopping after the running tasks)" if stops == 1 else ""
    return (f"procwire worker: {len(consumers)} processes, {here} tasks done here{state}; "
            f"pool: {s['queued']} queued, {s['running']} running, {s['done']} done, "
            f"{s['retried']} retried, {s['lost']} lost, {s['workers']} workers alive")


def ls_redis(url: str, as_json: bool) -> None:
    """``procwire ls redis://...``: the objects and pools in that database, with counters."""
    try:
        from procwire.redis import _engine
        from procwire.redis.admin import scan
        from procwire.redis.errors import EngineError
    except ImportError as e:
        fail(f"the Redis context needs redis-py: pip install 'procwire[redis]' ({e})")
    try:
        _engine.check_url(url)
    except ValueError as e:
        raise click.UsageError(str(e)) from e
    engine = _engine.engine_for(url, _engine._authkey(None))
    try:
        rows = scan(engine)
    except EngineError as e:
        fail(e)
    finally:
        engine.close()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    from rich.console import Console
    from rich.table import Table
    console = Console(highlight=False)
    if not console.is_terminal:
        console = Console(highlight=False, width=200)
    if not rows:
        console.print(f"no procwire objects at {engine.display}")
        return
    table = Table(title=f"procwire objects at {engine.display}", title_justify="left")
    for col in ("name", "type", "counters"):
        table.add_column(col)
    for row in rows:
        counters = ", ".join(f"{k} {v}" for k, v in row["counters"].items())
        table.add_row(row["name"], row["kind"], counters)
    console.print(table)
