"""procwire: fast, crash-safe inter-process communication for Linux.

Every mechanism keeps the signature of its :mod:`multiprocessing` twin, so that
changing one import is enough::

    from procwire import Queue          # instead of: from multiprocessing import Queue

Architecture
------------
``procwire._core`` is the private C module, in two layers: ``_core/lib`` is
plain C with the mechanics -- the byte layout of shared segments (documented in
``_core/lib/layout.h``), the one wait (spin, then futex sleep with monotonic
deadlines), robust (owner-death aware) mutexes and the message ring -- and
``_core/bind`` the CPython types over it (the queues' and pipe's hot paths, the
locks, the statistics). Everything a user touches is Python on top of it: ``_segment`` names,
creates, attaches and cleans up segments; ``queue`` builds the message queues;
``pipe`` builds ``Pipe`` and its ``Connection`` ends; ``connection`` (the
twin of ``multiprocessing.connection``) its ``Listener``/``Client``, over
sockets with a shared-memory upgrade; ``context`` the ``get_context`` contexts;
``sync`` the locks, semaphores, events, conditions and barriers; ``shared``
the shared ``Value``/``Array``; ``pool`` the process ``Pool`` and
``ProcessPoolExecutor``;
``signals`` wraps the signal API; ``lessons`` holds the lesson's demo programs;
``cli`` is the ``procwire`` command.

The public names below are imported lazily, so that ``import procwire.signals``
or the ``procwire`` command do not pay for what they do not use.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    # contexts (procwire.context)
    "get_context": "procwire.context",
    # processes and the rest of multiprocessing's API, re-exported as they are
    "Process": "multiprocessing",
    "current_process": "multiprocessing",
    "parent_process": "multiprocessing",
    "active_children": "multiprocessing",
    "cpu_count": "multiprocessing",
    "freeze_support": "multiprocessing",
    "get_all_start_methods": "multiprocessing",
    "get_start_method": "multiprocessing",
    "set_start_method": "multiprocessing",
    "set_executable": "multiprocessing",
    "set_forkserver_preload": "multiprocessing",
    "get_logger": "multiprocessing",
    "log_to_stderr": "multiprocessing",
    "allow_connection_pickling": "multiprocessing",
    "Manager": "multiprocessing",
    "AuthenticationError": "multiprocessing",
    "BufferTooShort": "multiprocessing",
    "ProcessError": "multiprocessing",
    "TimeoutError": "multiprocessing",
    # procwire's own objects
    "ProcwireError": "procwire.errors",
    "SegmentError": "procwire.errors",
    "MessageTooLarge": "procwire.errors",
    "Empty": "procwire.errors",
    "Full": "procwire.errors",
    "Queue": "procwire.queue",
    "SimpleQueue": "procwire.queue",
    "JoinableQueue": "procwire.queue",
    "Pipe": "procwire.pipe",
    "Connection": "procwire.pipe",
    "Listener": "procwire.connection",
    "Client": "procwire.connection",
    "OwnerDiedWarning": "procwire.errors",
    "BrokenBarrierError": "procwire.errors",
    "Lock": "procwire.sync",
    "RLock": "procwire.sync",
    "Semaphore": "procwire.sync",
    "BoundedSemaphore": "procwire.sync",
    "Condition": "procwire.sync",
    "Event": "procwire.sync",
    "Barrier": "procwire.sync",
    "Value": "procwire.shared",
    "Array": "procwire.shared",
    "RawValue": "procwire.shared",
    "RawArray": "procwire.shared",
    "WorkerLost": "procwire.errors",
    "Pool": "procwire.pool",
    "ProcessPoolExecutor": "procwire.pool",
}

# submodules reachable as attributes without an explicit import
_SUBMODULES = {"connection", "context"}

__all__ = [*sorted(_EXPORTS), "__version__"]


if not TYPE_CHECKING:  # type checkers see the imports at the end instead, and
    # no __getattr__: with one, every misspelt procwire.X would type-check as Any

    def __getattr__(name: str) -> Any:
        if name in _SUBMODULES:
            return importlib.import_module(f"procwire.{name}")
        module = _EXPORTS.get(name)
        if module is None:
            raise AttributeError(f"module 'procwire' has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        globals()[name] = value
        return value


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:  # pragma: no cover
    # What __getattr__ returns, spelled out for type checkers: "X as X" marks each
    # name as an explicit re-export (mypy --strict, no_implicit_reexport). Keep this
    # block in step with _EXPORTS (tests/typing/test_typing.py checks it).
    from multiprocessing import (
        AuthenticationError as AuthenticationError,
        BufferTooShort as BufferTooShort,
        Manager as Manager,
        Process as Process,
        ProcessError as ProcessError,
        TimeoutError as TimeoutError,
        active_children as active_children,
        allow_connection_pickling as allow_connection_pickling,
        cpu_count as cpu_count,
        current_process as current_process,
        freeze_support as freeze_support,
        get_all_start_methods as get_all_start_methods,
        get_logger as get_logger,
        get_start_method as get_start_method,
        log_to_stderr as log_to_stderr,
        parent_process as parent_process,
        set_executable as set_executable,
        set_forkserver_preload as set_forkserver_preload,
        set_start_method as set_start_method,
    )

    from procwire import connection as connection, context as context
    from procwire.connection import (
        Client as Client,
        Listener as Listener,
    )
    from procwire.context import (
        get_context as get_context,
    )
    from procwire.errors import (
        BrokenBarrierError as BrokenBarrierError,
        Empty as Empty,
        Full as Full,
        MessageTooLarge as MessageTooLarge,
        OwnerDiedWarning as OwnerDiedWarning,
        ProcwireError as ProcwireError,
        SegmentError as SegmentError,
        WorkerLost as WorkerLost,
    )
    from procwire.pipe import (
        Connection as Connection,
        Pipe as Pipe,
    )
    from procwire.pool import (
        Pool as Pool,
        ProcessPoolExecutor as ProcessPoolExecutor,
    )
    from procwire.queue import (
        JoinableQueue as JoinableQueue,
        Queue as Queue,
        SimpleQueue as SimpleQueue,
    )
    from procwire.shared import (
        Array as Array,
        RawArray as RawArray,
        RawValue as RawValue,
        Value as Value,
    )
    from procwire.sync import (
        Barrier as Barrier,
        BoundedSemaphore as BoundedSemaphore,
        Condition as Condition,
        Event as Event,
        Lock as Lock,
        RLock as RLock,
        Semaphore as Semaphore,
    )
