"""A writer killed inside a loan, a reader killed holding a view: the child
processes of the Queue's and the Pipe's loan crash tests
(tests/queue/test_queue_loans.py, tests/pipe/test_pipe_loans.py)."""
from __future__ import annotations

import os
import signal
from typing import Any

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
