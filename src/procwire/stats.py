"""Typed statistics: one frozen dataclass per kind of object, read in one place.

Every procwire object's ``statistics()`` returns one of these snapshots, and
``procwire stat`` (through :mod:`procwire.objects`) builds the same classes
from the read-only view of a named segment: the field names are the same
everywhere, the README's included. trio's ``LockStatistics`` is the model.

A snapshot is a set of atomic loads, not one consistent instant: each figure
is exact when read, and advisory next to the others.

The native core reads every object's counters in one place (``inspect.c``)
and reports them as a dict; :meth:`Statistics.from_counters` is the one
reader that turns such a dict into its dataclass, whether it comes from a live
object (whose read also frees the wait-table slots of dead sleepers, see
README) or from ``_core.inspect`` (which never writes): every field is set
either way.

Field access is by attribute (``q.statistics().messages``);
``stats["messages"]`` also works, for code written when ``statistics()``
returned a dict.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar, Self

__all__ = ["BarrierStatistics", "ConditionStatistics", "ConnectionStatistics",
           "EventStatistics", "LockStatistics", "QueueStatistics", "SemaphoreStatistics",
           "SharedStatistics", "Statistics", "for_kind"]

@dataclasses.dataclass(frozen=True, slots=True)
class Statistics:
    """Base of every snapshot: built from a counters dict, readable by field name."""

    # field -> the Statistics class its nested counters dict becomes
    _nested: ClassVar[dict[str, type[Statistics]]] = {}

    @classmethod
    def from_counters(cls, counters: Mapping[str, Any]) -> Self:
        """The snapshot of a native counters dict (a live object's or ``_core.inspect``'s).

        Keys that are not fields (the common header's) are ignored; a field
        without a default must be present.
        """
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.name in counters:
                value = counters[f.name]
                nested = cls._nested.get(f.name)
                if nested is not None and isinstance(value, Mapping):
                    value = nested.from_counters(value)
                values[f.name] = value
        return cls(**cls._derived(counters, values))

    @classmethod
    def _derived(cls, counters: Mapping[str, Any], values: dict[str, Any]) -> dict[str, Any]:
        """Fields computed from the others (LockStatistics.holder_pid)."""
        return values

    def __getitem__(self, key: str) -> Any:
        """``stats["name"]``: the field, as when statistics() returned a dict."""
        if key not in self._names():
            raise KeyError(key)
        return getattr(self, key)

    @classmethod
    def _names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))


def _tgid_of(tid: int) -> int | None:
    """The process id owning thread `tid`, or None if it no longer exists."""
    try:
        with open(f"/proc/{tid}/status") as f:
            for line in f:
                if line.startswith("Tgid:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


@dataclasses.dataclass(frozen=True, slots=True)
class LockStatistics(Statistics):
    """A ``Lock``'s or ``RLock``'s state (also the lock inside a Condition, Value or Array).

    ``locked``: some thread holds it; ``holder_tid`` is that thread's id (0
    when free) and ``holder_pid`` its process's (None when free or gone);
    ``depth``: the holder's recursion depth (RLock). ``owner_died``: a holder
    died and nobody has called ``make_consistent()`` since; ``owner_deaths``
    counts those deaths. ``waiters``: live threads asleep in ``acquire``;
    ``contended``: acquires that had to wait. ``holder_dead``: the current
    lock word names a dead holder.
    """

    locked: bool
    holder_tid: int
    holder_pid: int | None
    depth: int
    owner_died: bool
    owner_deaths: int
    waiters: int
    contended: int
    holder_dead: bool

    @classmethod
    def _derived(cls, counters: Mapping[str, Any], values: dict[str, Any]) -> dict[str, Any]:
        if "holder_pid" not in values:
            tid = values["holder_tid"]
            values["holder_pid"] = _tgid_of(tid) if tid else None
        return values


@dataclasses.dataclass(frozen=True, slots=True)
class QueueStatistics(Statistics):
    """A ``Queue``'s, ``SimpleQueue``'s or ``JoinableQueue``'s shared counters.

    ``capacity``/``maxsize``: the ring's bytes and message limit (0: none).
    ``messages``/``bytes_used``: what is queued now. ``total_in``/``total_out``:
    every message ever put/taken, exactly, kills included (``total_in -
    total_out == messages``); ``bytes_in``/``bytes_out`` are advisory (a
    process killed right after publishing leaves its last batch's bytes
    uncounted). ``owner_died``: how often a process died holding one of the
    queue's locks. ``consumers_waiting``/``producers_waiting``/
    ``joiners_waiting``: live processes asleep in get/put/join.
    ``unfinished_tasks``: puts not yet matched by ``task_done()``.
    ``wake_syscalls``: futex wake-ups issued; ``dead_waiters_reaped``: slots of
    dead sleepers freed. ``spill_bytes``: bytes of messages waiting in the
    spill area, beyond the ring (advisory).
    """

    capacity: int
    maxsize: int
    messages: int
    bytes_used: int
    total_in: int
    total_out: int
    bytes_in: int
    bytes_out: int
    owner_died: int
    consumers_waiting: int
    producers_waiting: int
    joiners_waiting: int
    unfinished_tasks: int
    wake_syscalls: int
    dead_waiters_reaped: int
    spill_bytes: int


@dataclasses.dataclass(frozen=True, slots=True)
class ConnectionStatistics(Statistics):
    """One ``Pipe`` end's view of its two rings.

    ``end`` (0 or 1), ``duplex``; ``capacity_in``/``capacity_out``: the ring
    sizes. ``messages_waiting``: received but not yet read.
    ``messages_received``/``bytes_received`` and ``messages_sent``/
    ``bytes_sent``: totals. ``handles``: processes holding this end.
    ``streamed_received``: messages larger than the ring, streamed through it.
    ``partial_dropped``: streamed messages whose sender died mid-way (never
    delivered truncated). ``send_owner_died``/``recv_owner_died``: processes
    that died holding this end's send/receive lock. ``peer_closed``: the other
    end is closed in every process. ``receivers_waiting``: live threads asleep
    in ``recv``/``poll``; ``wake_syscalls``: wake-ups issued to them.
    """

    end: int
    duplex: bool
    capacity_in: int
    capacity_out: int
    messages_waiting: int
    messages_received: int
    bytes_received: int
    messages_sent: int
    bytes_sent: int
    handles: int
    streamed_received: int
    partial_dropped: int
    send_owner_died: int
    recv_owner_died: int
    peer_closed: bool
    receivers_waiting: int
    wake_syscalls: int


@dataclasses.dataclass(frozen=True, slots=True)
class SemaphoreStatistics(Statistics):
    """A ``Semaphore``'s or ``BoundedSemaphore``'s state.

    ``value``: the count now; ``maxvalue`` and ``bounded``: a bounded
    semaphore's ceiling. ``waiters``: live threads asleep in ``acquire``.
    ``acquires``/``releases``: totals. ``wake_syscalls``: wake-ups issued.
    """

    value: int
    maxvalue: int
    bounded: bool
    waiters: int
    acquires: int
    releases: int
    wake_syscalls: int


@dataclasses.dataclass(frozen=True, slots=True)
class EventStatistics(Statistics):
    """An ``Event``'s state: ``is_set``, ``waiters`` (live threads asleep in
    ``wait``), ``sets`` (``set()`` calls that set it), ``wake_syscalls``
    (wake-ups issued)."""

    is_set: bool
    waiters: int
    sets: int
    wake_syscalls: int


@dataclasses.dataclass(frozen=True, slots=True)
class ConditionStatistics(Statistics):
    """A ``Condition``'s state.

    ``waiters``: live threads in ``wait``; ``notifies``: notifications
    delivered; ``wake_syscalls``: wake-ups issued; ``not_notified``/
    ``notified_pending``: waiters not yet notified, and notifications granted
    but not yet taken. ``lock``: the statistics of its lock.
    """

    _nested: ClassVar[dict[str, type[Statistics]]] = {"lock": LockStatistics}

    waiters: int
    notifies: int
    wake_syscalls: int
    not_notified: int
    notified_pending: int
    lock: LockStatistics | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class BarrierStatistics(Statistics):
    """A ``Barrier``'s state.

    ``parties``; ``n_waiting``: parties arrived in the current cycle;
    ``broken``; ``generation``: how many times it has tripped; ``waiters``:
    live processes asleep in ``wait``; ``owner_deaths``: processes that died
    inside its bookkeeping (each broke it).
    """

    parties: int
    n_waiting: int
    broken: bool
    generation: int
    waiters: int
    owner_deaths: int


@dataclasses.dataclass(frozen=True, slots=True)
class SharedStatistics(Statistics):
    """A ``Value``'s or ``Array``'s layout and lock.

    ``typecode``: the ctypes type code ('' for another ctypes type);
    ``elem_size``/``length``: bytes per element and elements (1 for a Value).
    ``lock_mode``: 'embedded' (its own RLock, in the segment), 'named' (a
    named procwire lock), 'external' (a lock given at creation) or 'none'.
    ``lock_name``: the named lock's name ('' otherwise). ``lock``: the
    lock's statistics, when it is a procwire lock.
    """

    _nested: ClassVar[dict[str, type[Statistics]]] = {"lock": LockStatistics}

    typecode: str
    elem_size: int
    length: int
    lock_mode: str
    lock_name: str = ""
    lock: LockStatistics | None = None


# procwire.objects' kind names (_core.inspect's "kind") -> their snapshot class
_BY_KIND: dict[str, type[Statistics]] = {
    "queue": QueueStatistics, "lock": LockStatistics, "rlock": LockStatistics,
    "semaphore": SemaphoreStatistics, "event": EventStatistics,
    "condition": ConditionStatistics, "value": SharedStatistics, "array": SharedStatistics,
}


def for_kind(kind: str) -> type[Statistics] | None:
    """The snapshot class of a segment kind, None for a kind without counters."""
    return _BY_KIND.get(kind)
