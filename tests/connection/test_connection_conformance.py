"""multiprocessing's own Listener/Client tests, run with procwire.connection.

CPython's ``test._test_multiprocessing`` classes ``_TestListener``,
``_TestListenerClient`` and ``_TestPicklingConnections`` take the connection
module from their mixin; here it is ``procwire.connection``, and their
processes are started by each start method in turn.
"""
from __future__ import annotations

import multiprocessing
import unittest

import pytest

import procwire.connection

T = pytest.importorskip("test._test_multiprocessing")

START_METHODS = ("fork", "spawn", "forkserver")
BASES = (T._TestListener, T._TestListenerClient, T._TestPicklingConnections)


def _mixin(method: str) -> type:
    ctx = multiprocessing.get_context(method)

    class ProcwireMixin(T.ProcessesMixin):
        connection = procwire.connection
        Process = ctx.Process
        Pipe = staticmethod(ctx.Pipe)

        def tearDown(self) -> None:
            # Pickled connections travel through multiprocessing's resource
            # sharer (a listening socket and a thread); CPython stops it per
            # class, the leak check here looks per test.
            from multiprocessing import resource_sharer
            resource_sharer.stop(timeout=30)
            super().tearDown()

    return ProcwireMixin


for _method in START_METHODS:
    for _base in BASES:
        _name = f"TestProcwire{_base.__name__[5:]}_{_method}"
        globals()[_name] = type(_name, (_base, _mixin(_method), unittest.TestCase), {})
del _method, _base, _name
