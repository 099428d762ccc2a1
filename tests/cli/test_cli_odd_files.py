"""Defect 16: `procwire ls`/`stat`/`clean` facing odd files that any user can make.

A huge sparse file, a directory, a FIFO, a socket, names that look like rich
markup or hold terminal escape sequences or undecodable bytes: every command
lists them without a traceback, `clean` skips what is not a regular file and
finishes, and no name reaches the terminal as markup or raw control codes.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
from clihelpers import (  # noqa: F401 (fixtures)
    ENV,
    SHM,
    SHM_DIR,
    TIMEOUT,
    private_dir_left_empty,
    private_shm_dir,
    procwire_cmd,
    unique,
)

ESC = "\x1b"


def _no_traceback(out) -> None:
    assert "Traceback" not in out.stderr, out.stderr
    assert "Traceback" not in out.stdout, out.stdout


@pytest.fixture
def junk():
    """Paths made in the private directory, removed afterwards whatever they are."""
    made: list[str] = []
    yield made
    for path in made:
        try:
            os.rmdir(path) if os.path.isdir(path) and not os.path.islink(path) else os.unlink(path)
        except FileNotFoundError:
            pass


def _sparse(path: str, size: int) -> None:
    with open(path, "wb") as f:
        f.truncate(size)


@pytest.mark.parametrize("size", [1 << 48, (1 << 40) + 7])
def test_huge_sparse_file_is_listed_as_corrupt_not_a_crash(junk, size):
    name = unique("huge")
    junk.append(SHM + name)
    _sparse(SHM + name, size)
    table = procwire_cmd("ls")
    assert table.returncode == 0, table.stderr
    _no_traceback(table)
    assert name in table.stdout and "corrupt" in table.stdout
    as_json = procwire_cmd("ls", "--json")
    assert as_json.returncode == 0, as_json.stderr
    entry = {e["name"]: e for e in json.loads(as_json.stdout)}[name]
    assert entry["state"] == "corrupt" and entry["size"] == size and entry["error"]
    stat = procwire_cmd("stat", name)
    assert stat.returncode == 0, stat.stderr
    _no_traceback(stat)
    dry = procwire_cmd("clean", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    _no_traceback(dry)
    out = procwire_cmd("clean", "--yes")
    assert out.returncode == 0, out.stderr
    _no_traceback(out)
    assert not os.path.exists(SHM + name)  # unused junk of ours: cleaned


def test_valid_header_claiming_a_huge_size_is_not_mapped(junk):
    # A real segment's header, then the file extended to 2^48 bytes and the
    # header's total_size set to match: mapping it would fail (or reserve
    # 256 TiB of address space); it must be reported, not crash the command.
    name = unique("claims")
    junk.append(SHM + name)
    made = subprocess.run([sys.executable, "-c", "import os, sys, procwire; "
                           "lock = procwire.Lock(name=sys.argv[1]); os._exit(0)", name],
                          env=ENV, timeout=TIMEOUT)
    assert made.returncode == 0 and os.path.exists(SHM + name)
    with open(SHM + name, "r+b") as f:
        f.seek(16)
        f.write((1 << 48).to_bytes(8, "little"))
        f.truncate(1 << 48)
    for args in (("ls",), ("ls", "--json"), ("stat", name), ("clean", "--yes")):
        out = procwire_cmd(*args)
        assert out.returncode == 0, (args, out.stderr)
        _no_traceback(out)
    assert not os.path.exists(SHM + name)


def test_clean_skips_directories_fifos_and_sockets_and_finishes(junk):
    a_dir, a_fifo, a_sock = (SHM + unique(k) for k in ("dir", "fifo", "sock"))
    stale = SHM + unique("zz-after")  # sorts after the others: clean must reach it
    junk.extend([a_dir, a_fifo, a_sock, stale])
    os.mkdir(a_dir)
    os.mkfifo(a_fifo)
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(a_sock)
    with open(stale, "wb") as f:
        f.write(b"not a segment")
    listed = procwire_cmd("ls", "--json")
    assert listed.returncode == 0, listed.stderr
    states = {e["path"]: e for e in json.loads(listed.stdout)}
    for path in (a_dir, a_fifo, a_sock):
        assert states[path]["state"] == "corrupt"
        assert "not a regular file" in states[path]["error"]
    out = procwire_cmd("clean", "--yes")
    assert out.returncode == 0, out.stderr
    _no_traceback(out)
    assert not os.path.exists(stale), "clean stopped before the last file"
    assert os.path.isdir(a_dir) and os.path.exists(a_fifo) and os.path.exists(a_sock)


def test_a_directory_as_a_temporary_name_is_skipped(junk):
    odd = SHM + unique("tmpdir") + ".creating-999999999-abcd"  # a dead pid: stale
    junk.append(odd)
    os.mkdir(odd)
    out = procwire_cmd("clean", "--yes")
    assert out.returncode == 0, out.stderr
    _no_traceback(out)
    assert os.path.isdir(odd)


def _listed_by_ls_and_clean(junk, name):
    """Make a junk file called ``name``; `ls` and `clean --dry-run` succeed on it: their outputs."""
    junk.append(SHM + name)
    with open(SHM + name, "wb") as f:
        f.write(b"x")
    outs = []
    for args in (("ls",), ("clean", "--dry-run")):
        out = procwire_cmd(*args)
        assert out.returncode == 0, out.stderr
        outs.append(out)
    return outs


def test_names_are_not_rendered_as_markup(junk):
    name = "[bold]evil" + unique("m")
    for out in _listed_by_ls_and_clean(junk, name):
        assert name in out.stdout, out.stdout


@pytest.mark.parametrize("raw", ["\x1b[31mred", "bell\x07", "cr\rline", "nl\nline", "c1\x9b2J",
                                 "rtl\u202eevil"])
def test_control_characters_in_names_never_reach_the_terminal(junk, raw):
    name = raw + unique("c")
    for out in _listed_by_ls_and_clean(junk, name):
        _no_traceback(out)
        control = [c for c in out.stdout if (ord(c) < 32 and c != "\n") or 0x7f <= ord(c) < 0xa0
                   or c == "\u202e"]
        assert not control, repr(out.stdout)
        assert unique("c")[:8] in out.stdout
    # JSON keeps the exact name (escaped by JSON itself).
    listed = procwire_cmd("ls", "--json")
    assert name in {e["name"] for e in json.loads(listed.stdout)}


def test_undecodable_bytes_in_a_name(junk):
    raw = os.fsencode(SHM_DIR) + b"/procwire.bad\xff\xfe" + os.fsencode(unique("b"))
    junk.append(os.fsdecode(raw))
    with open(raw, "wb") as f:
        f.write(b"x")
    for args in (("ls",), ("ls", "--json"), ("clean", "--yes")):
        out = procwire_cmd(*args)
        assert out.returncode == 0, (args, out.stderr)
        _no_traceback(out)
    assert not os.path.exists(raw)
