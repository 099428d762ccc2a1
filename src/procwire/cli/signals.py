"""``procwire signals``: ``kill -l`` that explains itself.

One row per signal of this system: number, name, the kernel's default
action, whether a process can catch it, and what it means. On a terminal it
is a coloured table; piped, it is plain aligned text, one signal per line,
for grep.
"""
from __future__ import annotations

import click
from rich.console import Console
from rich.table import Table

from procwire import signals
from procwire.cli import main

ACTION_STYLE = {
    signals.Action.TERMINATE: "red",
    signals.Action.CORE: "magenta",
    signals.Action.STOP: "yellow",
    signals.Action.CONTINUE: "green",
    signals.Action.IGNORE: "dim",
}

ACTION_HELP = (
    "default action: terminate; core = terminate and dump core; stop; continue; ignore. "
    "catch: whether a handler can be installed (never for SIGKILL and SIGSTOP)."
)


class ArgumentError(click.ClickException):
    """A bad argument, reported on one line with exit code 2 (usage)."""

    exit_code = 2


def _meaning(row: signals.SignalInfo) -> str:
    if row.aliases:
        return f"{row.description} [also {', '.join(row.aliases)}]"
    return row.description


def _rich_table(rows: list[signals.SignalInfo]) -> Table:
    table = Table(title="Signals of this system", caption=ACTION_HELP, caption_justify="left")
    table.add_column("No.", justify="right")
    table.add_column("Name", style="bold")
    table.add_column("Default")
    table.add_column("Catch")
    table.add_column("Meaning")
    for row in rows:
        table.add_row(
            str(row.number),
            row.name,
            f"[{ACTION_STYLE[row.action]}]{row.action}[/]",
            "yes" if row.catchable else "[bold red]no[/]",
            _meaning(row),
        )
    return table


def _plain_lines(rows: list[signals.SignalInfo]) -> list[str]:
    width = max(len(row.name) for row in rows)
    lines = [f"{'NO':>3} {'NAME':<{width}} {'DEFAULT':<9} {'CATCH':<5} MEANING"]
    for row in rows:
        catch = "yes" if row.catchable else "no"
        lines.append(
            f"{row.number:>3} {row.name:<{width}} {row.action:<9} {catch:<5} {_meaning(row)}"
        )
    return lines


@main.command("signals")
@click.argument("names", nargs=-1, metavar="[SIGNAL]...")
def signals_command(names: tuple[str, ...]) -> None:
    """List the signals of this system and what each one does.

    Name some (INT, SIGTERM, 9, RTMIN+2) to show only those.
    """
    try:
        rows = [signals.info(name) for name in names] if names else list(signals.table())
    except signals.UnknownSignalError as exc:
        raise ArgumentError(str(exc)) from None
    console = Console(highlight=False)
    if console.is_terminal:
        console.print(_rich_table(rows))
    else:
        click.echo("\n".join(_plain_lines(rows)))
