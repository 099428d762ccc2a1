"""What the Queue's and the Pipe's loan tests (tests/queue/test_queue_loans.py,
tests/pipe/test_pipe_loans.py) check alike: close() ending this thread's loans
and views, a writer killed inside a loan, a reader killed holding a view."""
from __future__ import annotations

import os
import signal
from collections.abc import Callable
from typing import Any

import pytest

JOIN = 60


def _loan_then_die(source: Any, ready: Any, receive: str) -> None:
    loan = source.loan(1000)
    loan.buffer[:] = b"z" * 1000
    ready.set()
    os.kill(os.getpid(), signal.SIGKILL)


def _view_then_die(source: Any, ready: Any, receive: str) -> None:
    v = getattr(source, receive)(copy=False, timeout=JOIN)
    assert bytes(v.value) == b"held"
    ready.set()
    os.kill(os.getpid(), signal.SIGKILL)


def loan_and_view(lender: Any, receive: Callable[..., Any], payload: bytes) -> None:
    """One message written through a loan of `lender`, read through a view."""
    with lender.loan(len(payload)) as buf:
        buf[:] = payload
    with receive(copy=False, timeout=JOIN) as v:
        assert bytes(v) == payload


def close_ends_this_threads_leases(source: Any, send: Callable[[bytes], None],
                                   receive: Callable[..., Any]) -> None:
    """source.close() discards this thread's open loan and releases its view first."""
    send(b"kept")
    view = receive(copy=False)
    loan = source.loan(10)
    source.close()
    with pytest.raises(ValueError, match="already published or discarded"):
        loan.publish()
    view.release()  # already released by close(): a no-op


def killed_inside(ctx: Any, what: str, source: Any, receive: str = "get") -> None:
    """Run a child that takes a loan (what="loan") or, with `receive`, a view
    of a message b"held" (what="view") of `source`, and SIGKILLs itself there."""
    ready = ctx.Event()
    target = _loan_then_die if what == "loan" else _view_then_die
    p = ctx.Process(target=target, args=(source, ready, receive))
    p.start()
    p.join(JOIN)
    assert p.exitcode == -signal.SIGKILL
    assert ready.is_set()
