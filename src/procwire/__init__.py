"""procwire: fast, crash-safe inter-process communication for Linux.

Every mechanism keeps the signature of its :mod:`multiprocessing` twin, so that
changing one import is enough::

    from procwire import Queue          # instead of: from multiprocessing import Queue

Architecture
------------
``procwire._core`` is a small private C module that knows only mechanics: the
byte layout of shared segments (documented in ``_core/layout.h``), futex waits
with monotonic deadlines, robust (owner-death aware) mutexes and the message
ring. Everything a user touches is Python on top of it: ``_segment`` names,
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

__all__ = sorted(_EXPORTS) + ["__version__"]


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
    from procwire.errors import Empty, Full, MessageTooLarge, ProcwireError, SegmentError
    from procwire.connection import Client, Listener
    from procwire.context import get_context
    from procwire.pipe import Connection, Pipe
    from multiprocessing import (AuthenticationError, BufferTooShort, Manager, Process,
                                 ProcessError, TimeoutError, active_children,
                                 allow_connection_pickling, cpu_count, current_process,
                                 freeze_support, get_all_start_methods, get_logger,
                                 get_start_method, log_to_stderr, parent_process,
                                 set_executable, set_forkserver_preload, set_start_method)
    from procwire.errors import BrokenBarrierError, OwnerDiedWarning
    from procwire.queue import JoinableQueue, Queue, SimpleQueue
    from procwire.shared import Array, RawArray, RawValue, Value
    from procwire.errors import WorkerLost
    from procwire.pool import Pool, ProcessPoolExecutor
    from procwire.sync import (Barrier, BoundedSemaphore, Condition, Event, Lock, RLock,
                               Semaphore)
