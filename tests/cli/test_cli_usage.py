"""The command line itself: help everywhere, version, exit codes, JSON, completion."""
from __future__ import annotations

import json
import sys

import pytest

import procwire

from clihelpers import procwire_cmd
from clihelpers import private_dir_left_empty, private_shm_dir  # noqa: F401 (fixtures)

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
    import os
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
