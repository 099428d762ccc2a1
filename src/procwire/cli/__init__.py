"""The ``procwire`` command.

Each sub-command lives in its own module and registers itself on :data:`main`
when imported below. Exit codes: 0 success, 1 failure, 2 usage error. An
expected failure (an unknown name, a permission denied) is one line on
stderr, without a traceback: see :func:`fail`.
"""
from __future__ import annotations

import sys
from typing import NoReturn

import click

from procwire import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]},
             epilog="Shell completion (bash): eval \"$(_PROCWIRE_COMPLETE=bash_source "
                    "procwire)\"; zsh: zsh_source, fish: fish_source.")
@click.version_option(__version__, "-V", "--version", prog_name="procwire")
def main() -> None:
    """Fast, crash-safe inter-process communication for Linux, and the lesson that explains it."""


def fail(error: BaseException | str, *, exit: bool = True) -> NoReturn | None:  # type: ignore[misc]
    """Report an expected error on stderr in one line; exit 1 unless told not to."""
    if isinstance(error, OSError) and error.strerror:
        message = error.strerror  # procwire's OSErrors carry a whole sentence
    else:
        message = str(error)
    click.echo(f"procwire: error: {message}", err=True)
    if exit:
        sys.exit(1)
    return None


# Sub-commands register themselves on `main` as a side effect of import.
from procwire.cli import bench  # noqa: E402,F401
from procwire.cli import objects  # noqa: E402,F401
from procwire.cli import demo  # noqa: E402,F401
from procwire.cli import signals  # noqa: E402,F401
from procwire.cli import worker  # noqa: E402,F401
