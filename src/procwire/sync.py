"""Synchronisation primitives: ``Lock``, ``RLock``, ``Semaphore``,
``BoundedSemaphore``, ``Condition``, ``Event`` and ``Barrier``.

Drop-in replacements for their :mod:`multiprocessing` twins, each one small
segment of shared memory:

* ``Lock`` and ``RLock`` are robust, process-shared pthread mutexes; the
  others are futex words. No POSIX named semaphores, nothing in /dev/shm
  unless you pass ``name=``.
* The uncontended paths never enter the kernel; a contended waiter spins
  briefly (only when it may run on another CPU) before it sleeps.
* Every blocking call takes ``timeout=None`` (forever), releases the GIL,
  and lets Ctrl-C raise ``KeyboardInterrupt`` promptly. Deadlines use
  CLOCK_MONOTONIC.
* With ``name=...`` an unrelated process opens the same object with
  ``Lock.attach(name)`` (and so on); otherwise pass it to children as a
  ``Process`` argument (fork, spawn and forkserver all work).
* ``statistics()`` describes the live shared state.

Owner death (Lock, RLock, and the lock of a Value or Array)
-----------------------------------------------------------
When a process dies holding a lock -- even by SIGKILL -- the kernel hands the
lock to the next ``acquire()``, which returns True as usual, **and**:

* emits :class:`procwire.OwnerDiedWarning` (a ``RuntimeWarning``; turn it
  into an exception with the ``warnings`` filters, and the acquire then
  releases the lock and raises);
* sets ``lock.owner_died``, which stays True -- for every later holder too --
  until a holder calls ``lock.make_consistent()``.

This is iceoryx2's "lock acquired but owner died" model, minus one hazard:
the lock is never made permanently unusable (pthread's ENOTRECOVERABLE), so a
program that ignores the warning keeps working, while a careful one checks
``owner_died`` after acquiring, repairs what the lock protects, and then calls
``make_consistent()``. ``statistics()["owner_deaths"]`` counts the deaths.

Where procwire differs from multiprocessing
-------------------------------------------
* A ``Lock`` can only be released by the thread that acquired it.
  ``multiprocessing.Lock`` lets any process release it; a robust mutex cannot
  (the kernel must know whom to blame when the holder dies). Releasing a Lock
  held by someone else raises ``RuntimeError``; releasing an unlocked Lock
  raises ``ValueError`` as in multiprocessing. Use a ``Semaphore(1)`` or an
  ``Event`` to hand a permission from one process to another.
* A thread that blocks forever on a Lock it already holds would deadlock:
  procwire raises ``RuntimeError`` instead (with a timeout, or
  ``block=False``, acquire returns False as in multiprocessing).
* Semaphores and Barriers have no owner, so the kernel cannot tell procwire
  that a party died. A semaphore count taken by a process that died is lost
  (as in multiprocessing): use ``timeout=`` and ``statistics()``. A Barrier
  whose party died before arriving leaves the others waiting until their
  ``timeout`` (which breaks the barrier, as in threading), or until any
  process calls ``abort()`` -- a parent watching ``Process.sentinel`` can do
  this. A process killed *inside* a Barrier's bookkeeping, or while running
  its action (which runs with the barrier's internal lock held), breaks the
  barrier. ``abort()`` takes no lock; ``wait(timeout)`` honours its timeout
  for the internal lock too, and ``reset(timeout=None)`` raises TimeoutError
  if it cannot take it in time.
* A handle that did not acquire a lock never releases it: acquisitions are
  counted per handle (per ``attach()`` or unpickled copy), as in
  multiprocessing. A holder is its thread id plus a random id of its process,
  so another PID namespace's thread with the same id is not "this thread".
* ``close()`` while another thread waits on the object makes that wait raise
  ``ValueError`` within one wait slice (at most 100 ms).
* ``Condition.notify(n)`` wakes at most ``n`` of the threads waiting when it
  is called (none that starts waiting later), ``notify_all()`` all of them,
  as in multiprocessing. A waiter killed while waiting absorbs no
  notification (beyond 16 simultaneous waiters, a killed one stays counted).
"""
from __future__ import annotations

import ctypes
import threading
import time
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from procwire import _aio, _core
from procwire._segment import Segment, SegmentObject, StatsT, rebuild, validate_name
from procwire.errors import SegmentError

if TYPE_CHECKING:
    from procwire.stats import (  # noqa: F401 (named in quoted base classes)
        BarrierStatistics,
        ConditionStatistics,
        EventStatistics,
        LockStatistics,
        SemaphoreStatistics,
    )

__all__ = [
    "Barrier",
    "BoundedSemaphore",
    "BrokenBarrierError",
    "Condition",
    "Event",
    "Lock",
    "OwnerDiedWarning",
    "RLock",
    "Semaphore",
]

OwnerDiedWarning = _core.OwnerDiedWarning
BrokenBarrierError = threading.BrokenBarrierError

_SEM_VALUE_MAX = 2**31 - 1


class _SyncObject(SegmentObject[StatsT]):
    """What every primitive shares beyond SegmentObject: its kind's segment."""

    _kind: int

    def _create_sync(self, name: str | None, params: dict[str, Any] | None = None,
                     **state: Any) -> None:
        """Create a segment of this primitive's kind (``segment_init(**params)``), open it."""
        kind, params = self._kind, params or {}
        self._create(name, _core.segment_size(kind),
                     lambda buf: _core.segment_init(buf, kind, **params), **state)


# ---------------------------------------------------------------- locks


class Lock(_SyncObject["LockStatistics"], _core.Lock):
    """A non-recursive lock, like ``multiprocessing.Lock``.

    ``acquire(block=True, timeout=None) -> bool``, ``release()``, and the
    context-manager protocol. Robust: see the module docstring for what the
    next ``acquire()`` reports when a holder dies, and for why only the
    holder may ``release()``.

    ``owner_died`` and ``make_consistent()`` implement that report;
    ``statistics()`` gives the holder's pid and tid, waiters and owner deaths.
    """

    _label = "Lock"
    _statistics_type = "LockStatistics"
    _recursive = False
    _kind = _core.KIND_LOCK

    def __init__(self, *, ctx: object = None, name: str | None = None) -> None:
        self._create_sync(name)

    def _bind(self, **state: Any) -> None:
        _core.Lock.__init__(self, self._segment.buffer, self._describe(),
                            recursive=self._recursive)

    def _repr_state(self) -> str:
        s = self.statistics()
        if not s.locked:
            owner = "None"
        elif self._is_mine():
            owner = "this thread"
        else:
            owner = f"pid {s.holder_pid} tid {s.holder_tid}"
        return f"owner={owner}" + (" owner_died" if s.owner_died else "")


class RLock(Lock):
    """A recursive lock, like ``multiprocessing.RLock``.

    The holding thread may acquire it again; it is released when ``release()``
    has been called as often. Releasing it from a thread that does not hold it
    raises ``AssertionError``, as in multiprocessing. Owner death is reported
    as for :class:`Lock`.
    """

    _label = "RLock"
    _recursive = True
    _kind = _core.KIND_RLOCK


# ---------------------------------------------------------- semaphores


class Semaphore(_SyncObject["SemaphoreStatistics"], _core.Semaphore):
    """A counting semaphore, like ``multiprocessing.Semaphore``.

    ``acquire(block=True, timeout=None) -> bool``, ``release()``,
    ``get_value()``. Any process may release it. A count taken by a process
    that then died is not returned (there is no owner to detect): use
    timeouts, and ``statistics()`` to see the count and the waiters.
    """

    _label = "Semaphore"
    _statistics_type = "SemaphoreStatistics"
    _kind = _core.KIND_SEMAPHORE
    _bounded = False

    def __init__(self, value: int = 1, *, ctx: object = None, name: str | None = None) -> None:
        self._create_sync(name, {"value": self._check_value(value), "bounded": self._bounded})

    def _bind(self, **state: Any) -> None:
        _core.Semaphore.__init__(self, self._segment.buffer, self._describe())
        bounded = self._counters()["bounded"]
        if bounded != self._bounded:
            actual = "a BoundedSemaphore" if bounded else "a Semaphore"
            self._close()
            raise SegmentError(f"{self._describe()} is {actual}, not a {type(self).__name__}")

    @staticmethod
    def _check_value(value: int) -> int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"semaphore value must be an int, not {type(value).__name__}")
        if value < 0:
            raise ValueError("semaphore initial value must be >= 0")
        if value > _SEM_VALUE_MAX:
            raise OverflowError(f"semaphore value must be at most {_SEM_VALUE_MAX}")
        return value

    def _repr_state(self) -> str:
        c = self._counters()
        return f"value={c['value']}" + (f", maxvalue={c['maxvalue']}" if c["bounded"] else "")


class BoundedSemaphore(Semaphore):
    """A semaphore that cannot be released above its initial value, like
    ``multiprocessing.BoundedSemaphore`` (``ValueError`` if it would be)."""

    _label = "BoundedSemaphore"
    _bounded = True


# --------------------------------------------------------------- event


class Event(_SyncObject["EventStatistics"], _core.Event):
    """An event flag, like ``multiprocessing.Event``: ``set()``, ``clear()``,
    ``is_set()``, ``wait(timeout=None) -> bool``.

    Once set, ``wait`` returns True at once. A waiter that was asleep when
    ``set()`` ran returns True even if ``clear()`` follows immediately. Waking
    a waiter is one futex wake; a waiter spins briefly first when it may run
    on another CPU.
    """

    _label = "Event"
    _statistics_type = "EventStatistics"
    _kind = _core.KIND_EVENT

    def __init__(self, *, ctx: object = None, name: str | None = None) -> None:
        self._create_sync(name)

    def _bind(self, **state: Any) -> None:
        _core.Event.__init__(self, self._segment.buffer, self._describe())

    async def wait_async(self, timeout: float | None = None) -> bool:
        """Await the flag without blocking the event loop: ``wait()`` for asyncio.

        Returns True once the flag is set (or was set while waiting), False
        if ``timeout`` seconds pass first; cancellable. While coroutines wait,
        one watcher thread of this handle sleeps in :meth:`wait` (futex, GIL
        released) for all of them, so ``set()`` from any process wakes them at
        once; the thread exits about 0.1 s after the last waiter leaves.
        """
        if self.is_set():
            return True
        watcher = self.__dict__.get("_async_watcher")
        if watcher is None:
            watcher = self._async_watcher = _aio.FlagWatcher(
                self._display or "Event", lambda slice_: self.wait(slice_))
        return await watcher.wait(timeout) or self.is_set()

    def close(self) -> None:
        watcher = self.__dict__.pop("_async_watcher", None)
        if watcher is not None:
            watcher.close()
        super().close()

    def __repr__(self) -> str:
        # multiprocessing's format (its test suite checks it), plus the name.
        try:
            state = "set" if self.is_set() else "unset"
        except ValueError:
            state = "closed"
        name = f" {self.name!r}" if self.name else ""
        return f"<{type(self).__qualname__} at {id(self):#x}{name} {state}>"


# ----------------------------------------------------------- condition


class Condition(_SyncObject["ConditionStatistics"], _core.Condition):
    """A condition variable, like ``multiprocessing.Condition``.

    ``Condition(lock=None)``: with no lock it uses its own RLock, kept in the
    same segment. A given lock must be a procwire ``Lock`` or ``RLock``; a
    named Condition needs a named lock (or none), so that ``attach`` finds it.
    ``wait(timeout=None) -> bool``, ``wait_for(predicate, timeout=None)``,
    ``notify(n=1)``, ``notify_all()``, plus the lock's ``acquire``,
    ``release`` and context-manager protocol.
    """

    _label = "Condition"
    _statistics_type = "ConditionStatistics"
    _kind = _core.KIND_CONDITION
    _embedded_lock_type: type[RLock] = RLock  # for a Condition made without a lock

    def __init__(self, lock: Lock | None = None, *, ctx: object = None,
                 name: str | None = None) -> None:
        if lock is None:
            mode, lock_name = _core.LOCKMODE_EMBEDDED, b""
        elif isinstance(lock, Lock):
            if lock.name is not None:
                mode, lock_name = _core.LOCKMODE_NAMED, lock.name.encode()
            elif name is not None:
                raise ValueError("a named Condition needs a named lock (or lock=None), so "
                                 "that Condition.attach() can find the lock")
            else:
                mode, lock_name = _core.LOCKMODE_EXTERNAL, b""
        else:
            kind = f"{type(lock).__module__}.{type(lock).__qualname__}"
            raise TypeError(f"Condition(lock) needs a procwire Lock or RLock (procwire.Lock(), "
                            f"procwire.RLock(), or the get_lock() of a procwire Value/Array), "
                            f"not a {kind}: a procwire Condition's waiters sleep in shared "
                            f"memory beside the lock, so create the lock with procwire too")
        self._create_sync(name, {"lock_mode": mode, "lock_name": lock_name}, lock=lock)

    def _bind(self, lock: Lock | None = None, **state: Any) -> None:
        _core.Condition.__init__(self, self._segment.buffer, self._describe())
        mode, lname = self._lock_place()
        if mode == "embedded":
            lock = self._embedded_lock_type._from_segment(self._segment, owns=False)
        elif lock is None and mode == "named":
            lock = attach_lock(lname)
        elif lock is None:
            self._close()
            raise SegmentError(f"{self._describe()} uses an anonymous lock, so it can only be "
                               f"passed to child processes, not attached by name")
        self._lock = lock
        self.acquire = lock.acquire
        self.release = lock.release

    def _lock_place(self) -> tuple[str, str]:
        """Where the lock lives: its mode ('embedded', 'named', 'external') and name."""
        counters = _core.inspect(self._segment.buffer)
        return counters["lock_mode"], counters["lock_name"]

    def _pickle_state(self) -> dict[str, Any]:
        return {"lock": None if self._lock_place()[0] == "embedded" else self._lock}

    def __enter__(self) -> bool:
        return self._lock.__enter__()

    def __exit__(self, *args: Any) -> None:
        self._lock.__exit__(*args)

    def get_lock(self) -> Lock:
        return self._lock

    def wait(self, timeout: float | None = None) -> bool:
        """Release the lock, wait for a notify (or the timeout), re-acquire.

        Returns False if the timeout passed, True otherwise.
        """
        if not self._lock._is_mine():
            raise AssertionError("must acquire() condition before using wait()")
        seq = self._prepare_wait()
        try:
            depth = self._lock._release_save()
        except BaseException:
            self._sleep(seq, 0)  # un-count ourselves
            raise
        try:
            return self._sleep(seq, timeout)
        finally:
            self._lock._acquire_restore(depth)

    def wait_for(self, predicate: Callable[[], Any], timeout: float | None = None) -> Any:
        """Wait until ``predicate()`` is true (re-checked after each wake-up)."""
        return wait_for(self.wait, predicate, timeout)

    def notify(self, n: int = 1) -> None:
        """Wake up to ``n`` waiters. The caller must hold the lock."""
        if not self._lock._is_mine():
            raise AssertionError("lock is not owned")
        self._notify(n)

    def notify_all(self) -> None:
        """Wake every waiter. The caller must hold the lock."""
        self.notify(2**31 - 1)

    def _counters(self) -> dict[str, Any]:
        return {**_core.Condition._counters(self), "lock": self._lock.statistics()}

    # multiprocessing's Condition is built of three semaphores, and its test
    # suite (_TestCondition.check_invariant) reads them to check that no
    # sleeper and no wake-up is left over. These read-only views give the
    # same invariant from procwire's counters: threads in wait(), none
    # counted as woken, and notifications granted but not yet taken.
    @property
    def _sleeping_count(self) -> _CountView:
        return _CountView(lambda: _core.Condition._counters(self)["waiters"])

    @property
    def _woken_count(self) -> _CountView:
        return _CountView(lambda: 0)

    @property
    def _wait_semaphore(self) -> _CountView:
        return _CountView(lambda: _core.Condition._counters(self)["notified_pending"])


class _CountView:
    """``get_value()`` of a live counter (see Condition._sleeping_count)."""

    def __init__(self, read: Callable[[], int]) -> None:
        self.get_value = read


def wait_for(wait: Callable[[float | None], object], predicate: Callable[[], Any],
             timeout: float | None) -> Any:
    """``Condition.wait_for`` over a condition's ``wait`` (threading's loop): wait until
    ``predicate()`` is true, re-checked after each wake-up, at most ``timeout`` seconds."""
    result = predicate()
    endtime = None if timeout is None else time.monotonic() + timeout
    while not result:
        waittime = None if endtime is None else endtime - time.monotonic()
        if waittime is not None and waittime <= 0:
            break
        wait(waittime)
        result = predicate()
    return result


def attach_lock(name: str) -> Lock:
    """The named lock a Condition, Value or Array uses: a Lock segment holds a Lock;
    every other kind (RLock, or the lock embedded in a Value, Array or Condition) an RLock."""
    seg = Segment.attach_named(name)
    try:
        kind = _core.header_info(seg.buffer)["kind"]
    finally:
        seg.close()
    return (Lock if kind == "lock" else RLock).attach(name)


# ------------------------------------------------------------- barrier
# In Python over the native primitives, as multiprocessing/synchronize.py
# builds its Barrier: a Condition (whose robust RLock guards the counters and
# whose wait table holds the sleepers) and a small shared array of counters.


class _BarrierLock(RLock):
    """The RLock inside a Barrier's Condition: its own label, so that the owner-death
    warning (which a Barrier reports as breaking instead) can be told apart."""

    _label = "Barrier internal lock"


class _BarrierCondition(Condition):
    _label = "Barrier"
    _embedded_lock_type = _BarrierLock


# A process that dies holding the internal lock breaks the barrier (wait()
# raises BrokenBarrierError): that is the report, not the warning.
warnings.filterwarnings("ignore", message=r".*Barrier internal lock",
                        category=_core.OwnerDiedWarning)

# The counters (int64 each), guarded by the Condition's lock except _BROKEN,
# which abort() and a wait that cannot take the lock in time set without it.
# A cycle ends when the barrier trips (every party arrived) or is reset; a
# waiter of cycle c learns which by _LAST_TRIP/_LAST_RESET (the last cycle
# each ended).
_COUNT, _CYCLE, _TRIPS, _LAST_TRIP, _LAST_RESET, _BROKEN, _PARTIES, _TIMEOUT_NS = range(8)
_STATE_WORDS = 8
_STATE_SUFFIX = ".state"  # a named Barrier's counters: a RawArray named <name>.state
# How often a waiter looks at _BROKEN and at its lock's holder: abort() takes
# no lock, so it cannot wake sleepers itself when the lock is held.
_SLICE = 0.05


class Barrier:
    """A barrier for ``parties`` processes, like ``multiprocessing.Barrier``.

    ``wait(timeout=None) -> int`` (an index in ``range(parties)``),
    ``reset(timeout=None)``, ``abort()``, ``parties``, ``n_waiting``, ``broken``.
    ``BrokenBarrierError`` is threading's. The ``action``, if any, is run by
    the last party to arrive, before the others are released; it is a
    per-process attribute (pickled to children, absent after ``attach``).
    A wait that times out breaks the barrier, as in threading. If a party
    dies before it arrives, the others wait until their timeout or until some
    process calls ``abort()``. A process killed while holding the barrier's
    internal lock (in its bookkeeping, or running the action) breaks it.

    Built as multiprocessing builds its own: a procwire :class:`Condition`
    and a few shared counters (a second segment; named ``<name>.state`` for a
    named Barrier).
    """

    _label = "Barrier"

    def __init__(self, parties: int, action: Callable[[], Any] | None = None,
                 timeout: float | None = None, *, ctx: object = None,
                 name: str | None = None) -> None:
        if not isinstance(parties, int) or isinstance(parties, bool):
            raise TypeError(f"parties must be an int, not {type(parties).__name__}")
        if parties < 1:
            raise ValueError("parties must be > 0")
        if parties > 2**31 - 1:
            raise ValueError("parties must be at most 2**31-1")
        if action is not None and not callable(action):
            raise TypeError("action must be callable or None")
        from procwire.shared import RawArray
        if name is not None:
            validate_name(name)
        state = RawArray("q", _STATE_WORDS,
                         name=None if name is None else validate_name(name + _STATE_SUFFIX))
        state[_PARTIES] = parties
        state[_LAST_TRIP] = state[_LAST_RESET] = -1  # no cycle has ended yet
        state[_TIMEOUT_NS] = -1 if timeout is None else max(0, int(float(timeout) * 1e9))
        try:
            cond = _BarrierCondition(name=name)
        except BaseException:
            state._wrapper.close()
            raise
        self._setup(cond, state, action)

    def _setup(self, cond: Condition, state: Any, action: Callable[[], Any] | None) -> None:
        self._cond, self._state, self._action = cond, state, action
        self._lock = cond.get_lock()

    @classmethod
    def attach(cls, name: str) -> Barrier:
        """Open the Barrier another process created with ``name=``."""
        from procwire.shared import RawArray
        cond = _BarrierCondition.attach(name)
        try:
            state = RawArray.attach(name + _STATE_SUFFIX)
            if len(state) != _STATE_WORDS or state._type_ is not ctypes.c_int64:
                state._wrapper.close()
                raise SegmentError(f"procwire object {name + _STATE_SUFFIX!r} is not the "
                                   f"state of a Barrier")
        except BaseException:
            cond.close()
            raise
        self = cls.__new__(cls)
        self._setup(cond, state, None)
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        # The counters travel as their segment's handle (plain pickle cannot
        # pickle the ctypes array itself; multiprocessing's pickler can).
        return (rebuild, (Barrier, None, {"cond": self._cond, "state": self._state._wrapper,
                                          "action": self._action}))

    @classmethod
    def _from_handle(cls, handle: Any, state: dict[str, Any]) -> Barrier:
        from procwire.shared import _obj_over
        self = cls.__new__(cls)
        self._setup(state["cond"], _obj_over(state["state"]), state["action"])
        return self

    @property
    def name(self) -> str | None:
        """The name given at creation, or None."""
        return self._cond.name

    def unlink(self) -> None:
        """Remove the names now; processes that have the Barrier open keep using it."""
        self._cond.unlink()
        self._state._wrapper.unlink()

    def close(self) -> None:
        """Release this process's handle (the creator also removes the names)."""
        self._cond.close()
        self._state._wrapper.close()

    # -- the protocol -------------------------------------------------------------

    def _take_lock(self, deadline: float | None) -> bool:
        """Take the internal lock by `deadline`; a dead holder's death breaks the barrier."""
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        if not self._lock.acquire(True, left):
            return False
        self._check_holder()
        return True

    def _check_holder(self) -> None:
        if self._lock.owner_died:  # a process died in the bookkeeping: the state is suspect
            self._break()
            self._lock.make_consistent()

    def _break(self) -> None:
        """Break the barrier (with the lock held): every waiter raises BrokenBarrierError."""
        self._state[_BROKEN] = 1
        self._cond.notify_all()

    def wait(self, timeout: float | None = None) -> int:
        """Wait until all parties have called wait(); BrokenBarrierError if
        the barrier is or becomes broken (or the timeout passes)."""
        s = self._state
        if timeout is None:
            ns = s[_TIMEOUT_NS]
            timeout = None if ns < 0 else ns / 1e9
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self._take_lock(deadline):
            s[_BROKEN] = 1  # as a timeout inside the barrier does: it breaks
            raise BrokenBarrierError
        try:
            if s[_BROKEN]:
                raise BrokenBarrierError
            index = int(s[_COUNT])
            if index + 1 == s[_PARTIES]:
                self._trip()
                return index
            s[_COUNT] = index + 1
            self._wait_for_the_end(s[_CYCLE], deadline)
            return index
        finally:
            self._lock.release()

    def _trip(self) -> None:
        s = self._state
        if self._action is not None:
            try:
                self._action()
            except BaseException:
                self._break()
                raise
        cycle = s[_CYCLE]
        s[_COUNT] = 0
        s[_TRIPS] += 1
        s[_LAST_TRIP] = cycle
        s[_CYCLE] = cycle + 1
        self._cond.notify_all()

    def _wait_for_the_end(self, cycle: int, deadline: float | None) -> None:
        s = self._state
        while s[_CYCLE] == cycle:
            if s[_BROKEN]:
                raise BrokenBarrierError
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                self._break()
                raise BrokenBarrierError
            self._cond.wait(_SLICE if left is None else min(left, _SLICE))
            self._check_holder()
        if s[_LAST_RESET] == cycle or s[_LAST_TRIP] < cycle:
            raise BrokenBarrierError  # reset (or broken and reset) while we waited

    def reset(self, timeout: float | None = None) -> None:
        """Return the barrier to its initial state; current waiters get BrokenBarrierError.

        ``TimeoutError`` if the internal lock cannot be taken within ``timeout``.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self._take_lock(deadline):
            raise TimeoutError(f"{self!r}: reset() could not take the barrier's internal "
                               f"lock within {timeout} s")
        try:
            s = self._state
            cycle = s[_CYCLE]
            s[_COUNT] = 0
            s[_LAST_RESET] = cycle
            s[_CYCLE] = cycle + 1
            s[_BROKEN] = 0
            self._cond.notify_all()
        finally:
            self._lock.release()

    def abort(self) -> None:
        """Break the barrier: current and later waits raise BrokenBarrierError until reset().

        Takes no lock (a stopped process may hold it): sleepers notice within
        a wait slice, or at once when the lock is free.
        """
        self._state[_BROKEN] = 1
        if self._lock.acquire(True, 0.01):
            try:
                self._cond.notify_all()
            finally:
                self._lock.release()

    @property
    def parties(self) -> int:
        return int(self._state[_PARTIES])

    @property
    def n_waiting(self) -> int:
        s = self._state
        return 0 if s[_BROKEN] else int(s[_COUNT])

    @property
    def broken(self) -> bool:
        return bool(self._state[_BROKEN])

    def statistics(self) -> BarrierStatistics:
        """A snapshot of the shared state (see :class:`procwire.stats.BarrierStatistics`)."""
        cond = self._cond.statistics()
        lock = cond.lock
        from procwire.stats import BarrierStatistics
        return BarrierStatistics(parties=self.parties, n_waiting=self.n_waiting,
                                 broken=self.broken, generation=int(self._state[_TRIPS]),
                                 waiters=cond.waiters,
                                 owner_deaths=lock.owner_deaths if lock else 0)

    def __repr__(self) -> str:
        try:
            s = self.statistics()
            state = " ".join(f"{k}={s[k]}" for k in s._names())
        except ValueError:
            state = "closed"
        return f"<procwire.Barrier {self._cond._describe()} {state}>"
