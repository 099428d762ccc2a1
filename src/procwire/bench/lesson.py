"""The lesson's comparison, measured: pipe, message queue, shared memory, socket, signals.

The lesson (进程间通信) ends with a table that compares 管道, 消息队列 and
共享内存 by where the space is (开辟空间), how they are read and written
(读写方式), their efficiency (效率: 一般, 一般, 较快) and whether they need
synchronisation (是否需要同步互斥). ``procwire bench`` prints that table with
measured figures instead of words, for each mechanism as multiprocessing (or
the standard library) does it and as procwire does it, and the ratio.

Three figures per mechanism, each from one process to another:

* **throughput**: 64-byte ``bytes`` messages per second;
* **bandwidth**: GB/s moving 1 MiB ``bytes`` messages;
* **round trip**: median µs for a 64-byte message to go there and back.

"Message" means the mechanism's own API: ``send``/``recv`` for a pipe,
``put``/``get`` for a queue, ``sendall``/``recv_into`` for a socket. Shared
memory has no messages, so its workload is a one-slot mailbox: a flag word and
a data area in one shared ``Array``; the sender waits for the flag to be 0,
copies the message in and sets it to 1, the receiver waits for 1, copies it
out and sets 0. A waiter that has looked 256 times (some 10 µs) yields its CPU
(``sched_yield``) before each further look, so that two processes on one
CPU take turns instead of spinning out their time slices. With
``Value``/``Array`` every look at the flag takes the
object's lock (``get_lock()``), as the lesson says shared memory needs; the
raw form (``RawArray``) takes no lock and relies on x86's store order (the
data is written before the flag, and read after it). Both spin while they
wait: shared memory has no way to sleep until the other side writes.

Signals carry no payload and standard signals do not queue, so only their
round trip is measured: SIGUSR1 there and back with ``os.kill`` and
``signal.sigwait``.

The queue cells are ``queues.throughput`` and ``queues.round_trip``, the
same workloads as ``procwire bench --suite queue``.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from procwire.bench.harness import Case, Result, latency, ratio_range, round_trips

FORK = mp.get_context("fork")
MiB = 1 << 20
JOIN = 300
SPIN_LIMIT_S = 120  # a spinning peer gives up if the other side vanished


# -- channels: one small class per mechanism ----------------------------------------------
# Made in the driver before the fork; send/recv are called after it.

class _Pipe:
    rx: Any  # procwire's or multiprocessing's Connection
    tx: Any

    def __init__(self, impl: str, size: int) -> None:
        if impl == "procwire":
            import procwire
            self.rx, self.tx = procwire.Pipe()
        else:
            self.rx, self.tx = FORK.Pipe()  # duplex, as in the lesson: a socketpair

    def send(self, data: bytes) -> None:
        self.tx.send(data)

    def recv(self) -> Any:
        return self.rx.recv()


class _Socket:
    """AF_UNIX stream socketpair; fixed-size frames received into a reused buffer.

    impl "procwire": ``procwire.connection``'s Listener and Client over TCP
    with an authkey, as a socket program writes them; on one host and for one
    user they agree on a shared-memory pipe. ``send_bytes`` and
    ``recv_bytes_into`` a reused buffer.
    """

    rx: Any  # a socket, or procwire's Connection
    tx: Any

    def __init__(self, impl: str, size: int) -> None:
        if impl == "procwire":
            self._connect_procwire(size)
            return
        self.rx, self.tx = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        for s in (self.rx, self.tx):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, max(size, 1 << 16))
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, max(size, 1 << 16))
        self.buf = bytearray(size)
        self.view = memoryview(self.buf)
        self.size = size

    def _connect_procwire(self, size: int) -> None:
        import threading

        from procwire.connection import Client, Listener
        key = os.urandom(16)
        made: list[Any] = []
        with Listener(("127.0.0.1", 0), authkey=key) as listener:
            t = threading.Thread(target=lambda: made.append(Client(listener.address,
                                                                   authkey=key)))
            t.start()
            self.rx = listener.accept(timeout=JOIN)
            t.join(JOIN)
        self.tx = made[0]
        buf = self.buf = bytearray(size)
        rx = self.rx

        def recv() -> Any:
            rx.recv_bytes_into(buf)
            return buf
        self.send = self.tx.send_bytes  # type: ignore[method-assign]
        self.recv = recv  # type: ignore[method-assign]

    def send(self, data: bytes) -> None:
        self.tx.sendall(data)

    def recv(self) -> Any:
        got, view, recv_into = 0, self.view, self.rx.recv_into
        while got < self.size:
            n = recv_into(view[got:])
            if not n:
                raise EOFError("socket closed")
            got += n
        return self.buf


class _Mailbox:
    """A one-slot mailbox in shared memory: 8-byte flag, then the data.

    impl "multiprocessing"/"procwire": ``Array('B', ...)`` and its lock around
    every look at the flag; with ``raw=True``, ``RawArray`` and no lock.
    """

    raw = False

    def __init__(self, impl: str, size: int) -> None:
        n = 8 + size
        if impl == "procwire":
            import procwire
            arr = procwire.RawArray("B", n) if self.raw else procwire.Array("B", n)
        else:
            arr = FORK.RawArray("B", n) if self.raw else FORK.Array("B", n)
        self.arr = arr  # keeps the segment alive
        obj = arr if self.raw else arr.get_obj()
        self.mv = memoryview(obj).cast("B")
        self.lock = None if self.raw else arr.get_lock()
        self.size = size
        self.out = bytearray(size)

    def _spin(self, want: int, act: Callable[[], None]) -> None:
        mv, lock, yield_cpu = self.mv, self.lock, os.sched_yield
        spins = 0
        deadline = 0.0
        while True:
            if lock is None:
                if mv[0] == want:
                    act()
                    return
            else:
                with lock:
                    if mv[0] == want:
                        act()
                        return
            spins += 1
            if spins > 256:
                # The other side may share our CPU: without a yield it would
                # wait for the end of our time slice (milliseconds).
                yield_cpu()
            if spins & 0xFFF == 0:
                now = time.monotonic()
                if not deadline:
                    deadline = now + SPIN_LIMIT_S
                elif now > deadline:
                    raise SystemExit("mailbox peer stopped answering")

    def send(self, data: bytes) -> None:
        mv, end = self.mv, 8 + len(data)

        def put() -> None:
            mv[8:end] = data
            mv[0] = 1
        self._spin(0, put)

    def recv(self) -> Any:
        mv, out, end = self.mv, self.out, 8 + self.size

        def take() -> None:
            out[:] = mv[8:end]
            mv[0] = 0
        self._spin(1, take)
        return out


class _RawMailbox(_Mailbox):
    raw = True


CHANNELS: dict[str, type] = {"pipe": _Pipe, "socket": _Socket, "shm-locked": _Mailbox,
                             "shm-raw": _RawMailbox}


# -- workloads ------------------------------------------------------------------------------

def _receive(chan: Any, messages: int, ready: Any) -> None:
    ready.set()
    recv = chan.recv
    for _ in range(messages):
        recv()


def transfer(mech: str, impl: str, size: int, messages: int) -> dict[str, Any]:
    """Messages of `size` bytes from this process to a forked child, per second.

    Returns msg/s for small messages and GB/s for 1 MiB ones.
    """
    chan = CHANNELS[mech](impl, size)
    payload = b"x" * size
    ready = FORK.Event()
    child = FORK.Process(target=_receive, args=(chan, messages, ready))
    child.start()
    ready.wait(JOIN)
    send = chan.send
    t0 = time.perf_counter()
    for _ in range(messages):
        send(payload)
    child.join(JOIN)
    elapsed = time.perf_counter() - t0
    if child.exitcode != 0:
        raise SystemExit(f"{mech}/{impl}: the receiving process failed")
    rate = messages / elapsed
    out: dict[str, Any] = {"value": rate, "messages": messages, "seconds": elapsed}
    if size >= MiB:
        out["value"] = rate * size / 1e9
        out["msg_per_s"] = rate
    return out


def _echo(there: Any, back: Any, trips: int) -> None:
    recv, send = there.recv, back.send
    for _ in range(trips):
        send(bytes(recv()))


def round_trip(mech: str, impl: str, trips: int) -> dict[str, Any]:
    """Median µs for 64 bytes to reach a forked child and come back."""
    there, back = CHANNELS[mech](impl, 64), CHANNELS[mech](impl, 64)
    child = FORK.Process(target=_echo, args=(there, back, trips))
    child.start()
    times = round_trips(there.send, back.recv, b"x" * 64, trips)
    child.join(JOIN)
    if child.exitcode != 0:
        raise SystemExit(f"{mech}/{impl}: the echoing process failed")
    return latency(times[trips // 10:])  # drop the warm-up tenth


def _signal_echo(parent: int, trips: int) -> None:
    wait = signal.sigwait
    kill = os.kill
    usr1 = {signal.SIGUSR1}
    for _ in range(trips):
        wait(usr1)
        kill(parent, signal.SIGUSR1)


def signal_round_trip(trips: int) -> dict[str, Any]:
    """Median µs for SIGUSR1 to reach a forked child and for its reply to arrive.

    Both processes block SIGUSR1 and take it with ``sigwait``, so no signal is
    lost between two waits (a handler plus ``pause()`` would race).
    """
    usr1 = {signal.SIGUSR1}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, usr1)
    try:
        child = FORK.Process(target=_signal_echo, args=(os.getpid(), trips))
        child.start()
        assert child.pid is not None  # started
        clock, kill, wait, pid = time.perf_counter_ns, os.kill, signal.sigwait, child.pid
        times = []
        for _ in range(trips):
            t = clock()
            kill(pid, signal.SIGUSR1)
            wait(usr1)
            times.append(clock() - t)
        child.join(JOIN)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
    return latency(times[trips // 10:])


# -- the lesson's table ----------------------------------------------------------------------

@dataclass(frozen=True)
class Mechanism:
    key: str
    title: str        # the lesson's word and ours
    where: str        # 开辟空间
    how: str          # 读写方式
    lesson_says: str  # 效率, as the lesson rates it
    needs_sync: str   # 是否需要同步互斥
    stdlib: str       # how the standard library does it
    procwire: str | None  # how procwire does it; None: no procwire equivalent


MECHANISMS = [
    Mechanism("pipe", "管道 pipe", "内存中: kernel socket buffer / procwire: shared ring",
              "双向/单向 send/recv", "一般", "不需要 no", "multiprocessing.Pipe",
              "procwire.Pipe"),
    Mechanism("queue", "消息队列 queue", "内存中: pipe + feeder thread / procwire: shared ring",
              "先进先出 FIFO put/get", "一般", "不需要 no", "multiprocessing.Queue",
              "procwire.Queue"),
    Mechanism("shm-locked", "共享内存 Value/Array + lock",
              "内存中: shared memory (mmap)", "操作内存 in place, under get_lock()", "较快",
              "需要 yes: get_lock()", "multiprocessing.Array", "procwire.Array"),
    Mechanism("shm-raw", "共享内存 raw", "内存中: shared memory (mmap)",
              "操作内存 in place, own flag", "较快", "需要 yes: yours to do",
              "multiprocessing.RawArray", "procwire.RawArray"),
    Mechanism("socket", "套接字 socket",
              "kernel socket buffer / procwire: shared ring once same host and user",
              "byte stream send/recv", "—", "不需要 no", "socket.socketpair (AF_UNIX)",
              "procwire.connection Listener/Client (TCP + authkey)"),
    Mechanism("signal", "信号 signal", "kernel (pending mask)", "异步 asynchronous, no data",
              "—", "不需要 no (async handler)", "os.kill + signal.sigwait", None),
]

METRICS = (("throughput", "64 B msg/s", "msg/s", True),
           ("bandwidth", "1 MiB GB/s", "GB/s", True),
           ("round_trip", "round trip µs", "µs", False))

W = "procwire.bench.lesson:"
Q = "procwire.bench.queues:"


def cases(scale: float = 1.0) -> list[Case]:
    """The lesson suite: every mechanism × (stdlib, procwire) × the three figures."""
    def n(count: int, floor: int = 500) -> int:
        return max(floor, int(count * scale))

    out: list[Case] = []
    impls = ("multiprocessing", "procwire")

    def add(mech: str, metric: str, impl: str, workload: str, params: dict[str, Any],
            unit: str, higher: bool = True) -> None:
        out.append(Case(f"{mech} · {metric}", impl, workload, params, unit, higher))

    for impl in impls:
        fast = impl == "procwire"
        add("pipe", "throughput", impl, W + "transfer",
            {"mech": "pipe", "impl": impl, "size": 64, "messages": n(400_000 if fast else 100_000)},
            "msg/s")
        add("pipe", "bandwidth", impl, W + "transfer",
            {"mech": "pipe", "impl": impl, "size": MiB, "messages": n(4000, 50)}, "GB/s")
        add("pipe", "round_trip", impl, W + "round_trip",
            {"mech": "pipe", "impl": impl, "trips": n(20_000)}, "µs", False)
    for impl in impls:
        fast = impl == "procwire"
        add("queue", "throughput", impl, Q + "throughput",
            {"impl": impl, "payload": "bytes64", "messages": n(400_000 if fast else 100_000)},
            "msg/s")
        add("queue", "bandwidth", impl, Q + "throughput",
            {"impl": impl, "payload": "bytes1m", "messages": n(4000 if fast else 1000, 50)},
            "GB/s")
        add("queue", "round_trip", impl, Q + "round_trip",
            {"impl": impl, "trips": n(20_000)}, "µs", False)
    for mech in ("shm-locked", "shm-raw"):
        for impl in impls:
            add(mech, "throughput", impl, W + "transfer",
                {"mech": mech, "impl": impl, "size": 64, "messages": n(100_000)}, "msg/s")
            add(mech, "bandwidth", impl, W + "transfer",
                {"mech": mech, "impl": impl, "size": MiB, "messages": n(4000, 50)}, "GB/s")
            add(mech, "round_trip", impl, W + "round_trip",
                {"mech": mech, "impl": impl, "trips": n(20_000)}, "µs", False)
    for impl in ("stdlib", "procwire"):
        add("socket", "throughput", impl, W + "transfer",
            {"mech": "socket", "impl": impl, "size": 64, "messages": n(400_000)}, "msg/s")
        add("socket", "bandwidth", impl, W + "transfer",
            {"mech": "socket", "impl": impl, "size": MiB, "messages": n(4000, 50)}, "GB/s")
        add("socket", "round_trip", impl, W + "round_trip",
            {"mech": "socket", "impl": impl, "trips": n(20_000)}, "µs", False)
    add("signal", "round_trip", "stdlib", W + "signal_round_trip", {"trips": n(20_000)},
        "µs", False)
    return out


@dataclass
class Cell:
    """One figure of the lesson table: the stdlib's, procwire's, and their ratio."""

    stdlib: float | None = None
    procwire: float | None = None
    ratio: float | None = None  # >1: procwire is better
    note: str | None = None     # why a figure is missing
    # min-max over the repeats (None with one repeat): each side's, and the
    # lowest and highest ratio any pairing of the repeats gives
    stdlib_range: tuple[float, float] | None = None
    procwire_range: tuple[float, float] | None = None
    ratio_range: tuple[float, float] | None = None
    # (max - min) / median of the wider side's repeats
    relative_spread: float | None = None


def table(results: list[Result]) -> list[dict[str, Any]]:
    """The lesson table's rows from the lesson suite's results."""
    by_key: dict[tuple[str, str, str], Result] = {}
    for r in results:
        mech, _, metric = r.case.group.partition(" · ")
        side = "procwire" if r.case.impl == "procwire" else "stdlib"
        by_key[(mech, metric, side)] = r
    rows = []
    for m in MECHANISMS:
        cells: dict[str, Cell] = {}
        for metric, _, _, higher in METRICS:
            std = by_key.get((m.key, metric, "stdlib"))
            ours = by_key.get((m.key, metric, "procwire"))
            cell = Cell(std.median if std else None, ours.median if ours else None)
            if std is None and ours is None:
                cell.note = ("not applicable: a signal carries no data"
                             if m.key == "signal" else "not measured")
            elif m.procwire is None:
                cell.note = "stdlib reference: procwire has no " + m.key
            if std is not None and std.error:
                cell.note = f"error: {std.error}"
            if ours is not None and ours.error:
                cell.note = f"error: {ours.error}"
            if cell.stdlib and cell.procwire:
                cell.ratio = (cell.procwire / cell.stdlib if higher
                              else cell.stdlib / cell.procwire)
            cell.stdlib_range = std.spread if std else None
            cell.procwire_range = ours.spread if ours else None
            if std and ours:
                cell.ratio_range = ratio_range(ours, std)
            spreads = [r.relative_spread for r in (std, ours)
                       if r is not None and r.relative_spread is not None]
            cell.relative_spread = max(spreads) if spreads else None
            cells[metric] = cell
        rows.append({"mechanism": m, "cells": cells})
    return rows


def rows_to_json(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for row in rows:
        m: Mechanism = row["mechanism"]
        out.append({"mechanism": m.key, "title": m.title, "where": m.where, "how": m.how,
                    "lesson_says": m.lesson_says, "needs_sync": m.needs_sync,
                    "stdlib": m.stdlib, "procwire": m.procwire,
                    **{metric: vars(cell) for metric, cell in row["cells"].items()}})
    return out
