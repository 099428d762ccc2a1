"""Defect 4: raising BrokenPipeError from a Pipe must not leak memory.

Counted in interpreter-allocated blocks, not RSS: a leak of one tuple and one
str per error shows as tens of thousands of blocks, whatever else the machine
is doing.
"""
from __future__ import annotations

import gc
import sys

import pytest

import procwire

pytestmark = pytest.mark.timeout(120)

ERRORS = 20_000


def _blocks_after(fn) -> int:
    gc.collect()
    before = sys.getallocatedblocks()
    fn()
    gc.collect()
    return sys.getallocatedblocks() - before


@pytest.mark.parametrize("how", ["send", "send_bytes", "send_large"])
def test_broken_pipe_errors_do_not_leak(how):
    a, b = procwire.Pipe(capacity=4096)
    b.close()
    payload = b"x" * (10 * 4096)  # streamed: fails inside the streaming path too

    def provoke() -> None:
        caught = 0
        for _ in range(ERRORS):
            try:
                if how == "send":
                    a.send(1)
                elif how == "send_bytes":
                    a.send_bytes(b"abc")
                else:
                    a.send_bytes(payload)
            except BrokenPipeError as exc:
                assert exc.errno == 32
                caught += 1
        assert caught == ERRORS

    provoke()  # warm caches and free lists
    grown = _blocks_after(provoke)
    a.close()
    # The leak was two objects per error (40,000 blocks); allow noise.
    assert grown < ERRORS // 10, f"{grown} blocks still allocated after {ERRORS} BrokenPipeErrors"


def test_broken_pipe_error_is_well_formed():
    a, b = procwire.Pipe()
    b.close()
    with pytest.raises(BrokenPipeError) as info:
        a.send("x")
    assert info.value.errno == 32
    assert "other end" in str(info.value)
    assert sys.getrefcount(info.value.args) >= 2  # not freed under the exception
    a.close()
