"""``procwire.get_context``: multiprocessing's contexts with procwire's objects.

``procwire.get_context(method=None)`` returns a :class:`Context` with the
methods of ``multiprocessing.get_context(method)``. Queues, pipes, locks and
the other synchronisation primitives, ``Value`` and ``Array`` are procwire's;
everything about processes (``Process``, ``current_process``,
``active_children``, ``cpu_count``, ``Manager``, the start method...) is the
multiprocessing context of that start method, so code written as
``ctx = multiprocessing.get_context("spawn"); q = ctx.Queue()`` ports by
changing the import. procwire objects work under every start method, so the
method only decides how ``ctx.Process`` starts children.

Two methods hand over to other procwire packages, imported on first use:
``ctx.Pool`` and ``ctx.ProcessPoolExecutor`` to ``procwire.pool`` (with this
context), and ``get_context("redis://host:port/db")`` (or ``rediss://``) to
``procwire.redis.get_context``.
"""
from __future__ import annotations

import importlib
import multiprocessing as _mp
from typing import Any

__all__ = ["Context", "get_context"]

_START_METHODS = ("fork", "spawn", "forkserver")


def _lazy(module: str, name: str) -> Any:
    return getattr(importlib.import_module(module), name)


def _pool_module() -> Any:
    try:
        return importlib.import_module("procwire.pool")
    except ModuleNotFoundError as exc:
        if exc.name != "procwire.pool":
            raise
        raise NotImplementedError(
            "procwire.pool is not available in this installation of procwire; use "
            "multiprocessing.get_context(...).Pool or concurrent.futures meanwhile") from None


class Context:
    """A multiprocessing context whose IPC objects are procwire's.

    It quacks like ``multiprocessing.context.BaseContext``: everything that
    multiprocessing's own code (``Pool``, ``concurrent.futures``) asks of a
    context is here.
    """

    ProcessError = _mp.ProcessError
    BufferTooShort = _mp.BufferTooShort
    TimeoutError = _mp.TimeoutError
    AuthenticationError = _mp.AuthenticationError

    def __init__(self, mp_context: Any) -> None:
        self._mp = mp_context

    # -- processes: multiprocessing's, for this start method ----------------------

    @property
    def Process(self) -> Any:
        return self._mp.Process

    @property
    def _name(self) -> str | None:
        name: str | None = getattr(self._mp, "_name", None)
        return name

    def get_start_method(self, allow_none: bool = False) -> str | None:
        method: str | None = self._mp.get_start_method(allow_none)
        return method

    def set_start_method(self, method: str | None, force: bool = False) -> None:
        """multiprocessing's set_start_method (the default context's)."""
        _mp.set_start_method(method, force)

    def get_all_start_methods(self) -> list[str]:
        return _mp.get_all_start_methods()

    def get_context(self, method: str | None = None) -> Context:
        return self if method is None else get_context(method)

    def current_process(self) -> Any:
        return _mp.current_process()

    def parent_process(self) -> Any:
        return _mp.parent_process()

    def active_children(self) -> list[Any]:
        return _mp.active_children()

    def cpu_count(self) -> int:
        return int(self._mp.cpu_count())

    def Manager(self) -> Any:
        """multiprocessing's Manager (a server process), started with this context."""
        return self._mp.Manager()

    def freeze_support(self) -> None:
        self._mp.freeze_support()

    def get_logger(self) -> Any:
        return self._mp.get_logger()

    def log_to_stderr(self, level: Any = None) -> Any:
        return self._mp.log_to_stderr(level)

    def allow_connection_pickling(self) -> None:
        self._mp.allow_connection_pickling()

    def set_executable(self, executable: str) -> None:
        self._mp.set_executable(executable)

    def set_forkserver_preload(self, module_names: list[str]) -> None:
        self._mp.set_forkserver_preload(module_names)

    @property
    def reducer(self) -> Any:
        return self._mp.reducer

    @reducer.setter
    def reducer(self, reduction: Any) -> None:
        self._mp.reducer = reduction

    def _check_available(self) -> None:
        check = getattr(self._mp, "_check_available", None)
        if check is not None:
            check()

    # -- procwire's objects -----------------------------------------------------

    def Pipe(self, duplex: bool = True, **kwargs: Any) -> Any:
        return _lazy("procwire.pipe", "Pipe")(duplex, **kwargs)

    def Queue(self, maxsize: int = 0, **kwargs: Any) -> Any:
        return _lazy("procwire.queue", "Queue")(maxsize, ctx=self, **kwargs)

    def JoinableQueue(self, maxsize: int = 0, **kwargs: Any) -> Any:
        return _lazy("procwire.queue", "JoinableQueue")(maxsize, ctx=self, **kwargs)

    def SimpleQueue(self, **kwargs: Any) -> Any:
        return _lazy("procwire.queue", "SimpleQueue")(ctx=self, **kwargs)

    def Lock(self, **kwargs: Any) -> Any:
        return _lazy("procwire.sync", "Lock")(ctx=self, **kwargs)

    def RLock(self, **kwargs: Any) -> Any:
        return _lazy("procwire.sync", "RLock")(ctx=self, **kwargs)

    def Condition(self, lock: Any = None, **kwargs: Any) -> Any:
        return _lazy("procwire.sync", "Condition")(lock, ctx=self, **kwargs)

    def Semaphore(self, value: int = 1, **kwargs: Any) -> Any:
        return _lazy("procwire.sync", "Semaphore")(value, ctx=self, **kwargs)

    def BoundedSemaphore(self, value: int = 1, **kwargs: Any) -> Any:
        return _lazy("procwire.sync", "BoundedSemaphore")(value, ctx=self, **kwargs)

    def Event(self, **kwargs: Any) -> Any:
        return _lazy("procwire.sync", "Event")(ctx=self, **kwargs)

    def Barrier(self, parties: int, action: Any = None, timeout: float | None = None,
                **kwargs: Any) -> Any:
        return _lazy("procwire.sync", "Barrier")(parties, action, timeout, ctx=self, **kwargs)

    def RawValue(self, typecode_or_type: Any, *args: Any, **kwargs: Any) -> Any:
        return _lazy("procwire.shared", "RawValue")(typecode_or_type, *args, **kwargs)

    def RawArray(self, typecode_or_type: Any, size_or_initializer: Any,
                 **kwargs: Any) -> Any:
        return _lazy("procwire.shared", "RawArray")(typecode_or_type, size_or_initializer,
                                                    **kwargs)

    def Value(self, typecode_or_type: Any, *args: Any, lock: Any = True,
              **kwargs: Any) -> Any:
        return _lazy("procwire.shared", "Value")(typecode_or_type, *args, lock=lock, ctx=self,
                                                 **kwargs)

    def Array(self, typecode_or_type: Any, size_or_initializer: Any, *, lock: Any = True,
              **kwargs: Any) -> Any:
        return _lazy("procwire.shared", "Array")(typecode_or_type, size_or_initializer,
                                                 lock=lock, ctx=self, **kwargs)

    def Listener(self, *args: Any, **kwargs: Any) -> Any:
        return _lazy("procwire.connection", "Listener")(*args, **kwargs)

    def Client(self, *args: Any, **kwargs: Any) -> Any:
        return _lazy("procwire.connection", "Client")(*args, **kwargs)

    # -- pools: procwire.pool, given this context ---------------------------------

    def Pool(self, processes: int | None = None, initializer: Any = None, initargs: tuple[Any, ...] = (),
             maxtasksperchild: int | None = None) -> Any:
        return _pool_module().Pool(processes, initializer, initargs, maxtasksperchild,
                                   context=self)

    def ProcessPoolExecutor(self, max_workers: int | None = None, initializer: Any = None,
                            initargs: tuple[Any, ...] = (), *,
                            max_tasks_per_child: int | None = None) -> Any:
        return _pool_module().ProcessPoolExecutor(max_workers, mp_context=self,
                                                  initializer=initializer, initargs=initargs,
                                                  max_tasks_per_child=max_tasks_per_child)

    def __repr__(self) -> str:
        return f"<procwire.context.Context {self.get_start_method(allow_none=True)!r}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Context) and other._mp is self._mp

    def __hash__(self) -> int:
        return hash(self._mp)

    def __reduce__(self) -> tuple[Any, ...]:
        return (get_context, (self._name,))


_contexts: dict[str | None, Context] = {}


def get_context(method: str | None = None, **kwargs: Any) -> Any:
    """A context for ``method`` ('fork', 'spawn', 'forkserver'; None: the default).

    ``redis://`` and ``rediss://`` URLs return ``procwire.redis.get_context(url,
    **kwargs)``. Other values raise ``ValueError``, as multiprocessing does.
    """
    if isinstance(method, str) and method.startswith(("redis://", "rediss://")):
        try:
            redis_get_context = _lazy("procwire.redis", "get_context")
        except ModuleNotFoundError as exc:
            if exc.name not in ("procwire.redis",):
                raise
            raise NotImplementedError("procwire.redis is not available in this installation "
                                      "of procwire") from None
        return redis_get_context(method, **kwargs)
    if kwargs:
        raise TypeError(f"get_context({method!r}) takes no keyword arguments "
                        f"(only redis:// URLs do)")
    if method is not None and method not in _START_METHODS:
        valid = ", ".join(repr(m) for m in _mp.get_all_start_methods())
        raise ValueError(f"cannot find context for {method!r}: use one of {valid}, None for "
                         f"the default, or a 'redis://host:port/db' URL")
    # None: multiprocessing's default context, fixed by this call as it is by
    # multiprocessing.get_context() (set_start_method(force=True) can change it).
    mp_ctx = _mp.get_context(method)
    name: str = getattr(mp_ctx, "_name")  # every concrete context has one
    ctx = _contexts.get(name)
    if ctx is None or ctx._mp is not mp_ctx:
        ctx = _contexts[name] = Context(mp_ctx)
    return ctx
