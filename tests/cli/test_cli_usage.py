"""The command line itself: help everywhere, version, exit codes, JSON, completion."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
from clihelpers import private_dir_left_empty, private_shm_dir, procwire_cmd  # noqa: F401 (fixtures)

import procwire

COMMANDS = ("bench", "ls", "stat", "rm", "clean")


@pytest.mark.parametrize("command", COMMANDS)
def test_help_on_every_command(command):
    out = procwire_cmd(command, "--help")
    assert out.returncode == 0 and "Usage:" in out.stdout


def test_top_level_help_and_version():
    out = procwire_cmd("--help")
    assert out.returncode == 0 and all(c in out.stdout for c in COMMANDS)
    assert "_PROCWIRE_COMPLETE=bash_source" in out.stdout
    version = procwire_cmd("--version")
    assert version.returncode == 0 and f"procwire, version {procwire.__version__}" in version.stdout


@pytest.mark.parametrize("args", [("nonsense",), ("stat",), ("rm",), ("ls", "--bogus"),
                                  ("bench", "--suite", "bogus"), ("stat", "x", "--interval", "0"),
                                  ("bench", "--only", "no-such-workload*")])
def test_usage_errors_exit_2(args):
    out = procwire_cmd(*args)
    assert out.returncode == 2, (args, out.stdout, out.stderr)
    assert "Traceback" not in out.stderr


def test_ls_json_parses():
    out = procwire_cmd("ls", "--json")
    assert out.returncode == 0
    assert isinstance(json.loads(out.stdout), list)


def test_no_colour_when_not_a_terminal():
    out = procwire_cmd("ls")
    assert "\x1b[" not in out.stdout


def test_shell_completion_script():
    import subprocess

    from clihelpers import ENV
    out = subprocess.run([sys.executable, "-c", "from procwire.cli import main; "
                          "main(prog_name='procwire')"], capture_output=True, text=True,
                         env={**ENV, "_PROCWIRE_COMPLETE": "bash_source"}, timeout=60)
    assert out.returncode == 0 and "_procwire_completion" in out.stdout


def test_plot_without_matplotlib_is_one_clear_line(tmp_path):
    # Hide matplotlib as if the 'plot' extra were not installed.
    out = procwire_cmd("bench", "--quick", "--plot", str(tmp_path / "x.png"),
                       argv0=[sys.executable, "-c",
                              "import sys; sys.modules['matplotlib'] = None; "
                              "from procwire.cli import main; main(prog_name='procwire')"])
    assert out.returncode == 1
    assert out.stderr.strip() == ("procwire: error: --plot needs matplotlib: "
                                  "pip install 'procwire[plot]'")


# What importing the library must not load: the command's dependencies (click,
# rich) and the optional back ends' (numpy, redis). Only the command imports them.
_HEAVY = ("click", "rich", "numpy", "redis")


@pytest.mark.parametrize("modules", [
    "procwire",
    "procwire, procwire.queue, procwire.pipe, procwire.sync, procwire.shared, "
    "procwire.stats, procwire.objects, procwire.connection, procwire.context",
])
def test_importing_the_library_loads_no_command_or_back_end_dependency(modules):
    # A fresh interpreter: this one has pytest's imports (and the command's) loaded.
    code = (f"import sys; import {modules}; "
            f"print([m for m in sys.modules if m.split('.')[0] in {_HEAVY!r}])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True)
    assert out.stdout.strip() == "[]", out.stdout
    cli = subprocess.run([sys.executable, "-c", "import sys, procwire.cli; "
                          "print(all(m in sys.modules for m in ('click', 'rich')))"],
                         capture_output=True, text=True, timeout=60, check=True)
    assert cli.stdout.strip() == "True"  # the command itself does load them
