"""``procwire demo``: the lesson as programs to run and read.

``procwire demo`` lists the lessons; ``procwire demo NAME`` runs one in this
process; ``procwire demo NAME --source`` prints its code instead (with
syntax colours on a terminal).
"""
from __future__ import annotations

import inspect
import sys
from types import ModuleType

import click
from rich.console import Console
from rich.syntax import Syntax
from rich.table import Table

from procwire import signals
from procwire.cli import main
from procwire.lessons import LESSONS, find


class ArgumentError(click.ClickException):
    """A bad argument, reported on one line with exit code 2 (usage)."""

    exit_code = 2


def _list_lessons(console: Console) -> None:
    if console.is_terminal:
        table = Table(title="The lesson, as demos", caption="run: procwire demo NAME   "
                      "read: procwire demo NAME --source", caption_justify="left")
        table.add_column("Name", style="bold cyan")
        table.add_column("Lesson")
        table.add_column("Uses multiprocessing until", style="yellow")
        for lesson in LESSONS:
            table.add_row(lesson.name, lesson.title, lesson.waiting_for or "")
        console.print(table)
        return
    width = max(len(lesson.name) for lesson in LESSONS)
    for lesson in LESSONS:
        waiting = f"  [waiting for {lesson.waiting_for}]" if lesson.waiting_for else ""
        click.echo(f"{lesson.name:<{width}}  {lesson.title}{waiting}")
    click.echo("\nrun: procwire demo NAME   read: procwire demo NAME --source")


def _print_source(module: ModuleType, console: Console) -> None:
    code = inspect.getsource(module)
    if console.is_terminal:
        console.print(Syntax(code, "python", line_numbers=True, word_wrap=True))
    else:
        click.echo(code, nl=False)


def _run(module: ModuleType, lang: str | None) -> int:
    kwargs = {}
    if lang is not None:
        if "lang" not in inspect.signature(module.main).parameters:
            raise ArgumentError("--lang changes only the bus demo's lines")
        kwargs["lang"] = lang
    try:
        return module.main(**kwargs) or 0
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        return 130
    except signals.SignalError as exc:
        raise click.ClickException(str(exc)) from None


@main.command()
@click.argument("name", required=False)
@click.option("--source", is_flag=True, help="Print the lesson's code instead of running it.")
@click.option("--lang", type=click.Choice(["zh", "en"]), default=None,
              help="bus: 'en' adds an English translation to each line.")
def demo(name: str | None, source: bool, lang: str | None) -> None:
    """Run one of the lesson's demos; without NAME, list them."""
    console = Console(highlight=False)
    if name is None:
        if source or lang:
            raise ArgumentError("--source and --lang need a lesson NAME: see `procwire demo`")
        _list_lessons(console)
        return
    try:
        lesson = find(name)
    except LookupError as exc:
        raise ArgumentError(str(exc)) from None
    module = lesson.load()
    if source:
        _print_source(module, console)
        return
    sys.exit(_run(module, lang))
