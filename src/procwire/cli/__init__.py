"""The ``procwire`` command.

Each sub-command lives in its own module and registers itself on :data:`main`
when imported below. Exit codes: 0 success, 1 failure, 2 usage error.
"""
from __future__ import annotations

import click

from procwire import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="procwire")
def main() -> None:
    """Fast, crash-safe inter-process communication for Linux, and the lesson that explains it."""


# Sub-commands register themselves on `main` as a side effect of import.
from procwire.cli import bench  # noqa: E402,F401
from procwire.cli import demo  # noqa: E402,F401
from procwire.cli import signals  # noqa: E402,F401
