"""A tiny private tmpfs for tests that need shared memory to run out or change.

Mounting needs root (CAP_SYS_ADMIN). Where it is impossible the tests that
use it fail with a message saying so: they must not pass by skipping.
"""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import textwrap

import pytest


@contextlib.contextmanager
def tiny_tmpfs(size: str = "1m"):
    path = tempfile.mkdtemp(prefix="pw-test-tmpfs-")
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700",
                               "tmpfs", path], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            pytest.fail(f"this test needs to mount a small tmpfs (it must run as root, "
                        f"with CAP_SYS_ADMIN): `mount -t tmpfs` failed: "
                        f"{done.stderr.strip() or done.returncode}", pytrace=False)
        try:
            yield path
        finally:
            subprocess.run(["umount", "-l", path], check=True)
    finally:
        os.rmdir(path)


def run_python(code: str, shm_dir: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter whose named segments live in shm_dir."""
    env = dict(os.environ, PROCWIRE_SHM_DIR=shm_dir)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)
