"""CPython's own Pool tests, run with procwire.Pool as the Pool, under fork and spawn.

The test classes are CPython's (``test._test_multiprocessing``: ``_TestPool``,
``_TestPoolWorkerErrors``, ``_TestPoolWorkerLifetime``), unchanged; only the
Pool they create is procwire's. The last two call ``multiprocessing.Pool``
directly, so that name is pointed at procwire.Pool while they run.

Not run, on purpose:
* ``test_worker_finalization_via_atexit_handler_of_multiprocessing`` runs a
  script that imports ``multiprocessing.Pool`` by name in a new interpreter
  (it tests the stdlib's finaliser); ``test_pool_api.py`` has the same check
  for procwire.Pool (``test_unclosed_pool_in_object_at_exit``).
"""
from __future__ import annotations

import multiprocessing
import unittest

import pytest

import procwire

# a thread of the pool (the manager, a feeder) that dies of an exception fails the test
pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")


T = pytest.importorskip("test._test_multiprocessing",
                        reason="CPython's test package is not installed with this Python")

NOT_RUN = {"test_worker_finalization_via_atexit_handler_of_multiprocessing"}


def _pool_factory(method: str):
    ctx = multiprocessing.get_context(method)

    def Pool(processes=None, initializer=None, initargs=(), maxtasksperchild=None,
             context=None):
        return procwire.Pool(processes, initializer, initargs, maxtasksperchild,
                             context or ctx)
    return Pool


def _install(method: str) -> None:
    factory = _pool_factory(method)
    for base in (T._TestPool, T._TestPoolWorkerErrors, T._TestPoolWorkerLifetime):
        uses_module_pool = base is not T._TestPool

        class Mixin(T.ProcessesMixin):
            Pool = staticmethod(factory)
            patch_module_pool = uses_module_pool

            def setUp(self):
                if self.patch_module_pool:
                    self._saved_pool = multiprocessing.Pool
                    multiprocessing.Pool = self.Pool
                super().setUp()

            def tearDown(self):
                super().tearDown()
                if self.patch_module_pool:
                    multiprocessing.Pool = self._saved_pool

        name = f"Test{base.__name__[5:]}_{method}"
        attrs = {"__module__": __name__}
        attrs.update({test: None for test in NOT_RUN if hasattr(base, test)})  # not collected
        cls = type(name, (base, Mixin, unittest.TestCase), attrs)
        globals()[name] = cls


for _method in ("fork", "spawn"):
    _install(_method)
