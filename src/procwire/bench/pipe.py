"""Pipe workloads: procwire.Pipe against multiprocessing.Pipe, a raw os.pipe and pyzmq PAIR.

Each workload runs in a fresh interpreter (see harness.py) and forks its peer
with the fork start method. The parent is always the receiver whose clock is
read, so every implementation is timed the same way:

* ``rtt``: 64-byte ping-pong, per-round-trip times; value = median µs.
* ``throughput``: the child sends ``messages`` messages back to back; the
  parent times first to last receipt; value = msg/s (or GB/s for 1 MiB).

pyzmq is optional (``pip install 'procwire[bench]'``); the raw os.pipe moves
fixed 64-byte frames only (one write and one read system call each).

The "Listener/Client TCP+authkey" rows run the same code with
``procwire.connection`` and ``multiprocessing.connection``:
``Listener(('127.0.0.1', port), authkey=...)`` in the parent, ``Client`` in the
forked child. procwire's pair upgrades to a shared-memory pipe (same host,
same user); multiprocessing's stays a TCP socket.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import resource
import shutil
import tempfile
import time
from typing import Any

from procwire.bench.harness import Case, latency, round_trips

FORK = mp.get_context("fork")
MiB = 1 << 20
JOIN = 300
W = "procwire.bench.pipe:"

# "pickled64" is the 64 bytes of "bytes64" sent with send()/recv() (pickled) rather
# than send_bytes()/recv_bytes().
PICKLED = ("tuple", "pickled64")
PAYLOADS = {"bytes64": b"x" * 64, "pickled64": b"x" * 64, "tuple": (1, "abc", 2.5),
            "bytes1m": b"x" * MiB,
            "bytes8m": b"x" * (8 * MiB)}
#: Payloads reported as GB/s, by their size.
LARGE = {"bytes1m": MiB, "bytes8m": 8 * MiB}


class _Ends:
    """Both ends of one implementation; ``open(role)`` runs after the fork."""

    a: Any  # procwire's or multiprocessing's Connection
    b: Any

    def __init__(self, impl: str) -> None:
        self.impl = impl
        self.tmp = None
        if impl in CONNECTION_IMPLS:
            # Listener/Client over TCP with an authkey, the listener made here
            # (before the fork) and accepting in the parent: procwire's
            # upgrades to shared memory (same host, same user), multiprocessing's
            # stays a socket.
            if impl == "procwire.connection":
                from procwire.connection import Listener
            else:  # the same interface, another class
                from multiprocessing.connection import Listener  # type: ignore[assignment]
            self.key = os.urandom(16)
            self.listener = Listener(("127.0.0.1", 0), authkey=self.key)
        elif impl.startswith("procwire"):
            import procwire
            self.a, self.b = procwire.Pipe(duplex=impl != "procwire oneway")
        elif impl.startswith("multiprocessing"):
            self.a, self.b = FORK.Pipe(duplex=impl != "multiprocessing oneway")
        elif impl == "os.pipe":
            self.r1, self.w1 = os.pipe()  # child -> parent
            self.r2, self.w2 = os.pipe()  # parent -> child
        elif impl == "pyzmq":
            import zmq  # noqa: F401  (fail early, in the driver, if missing)
            self.tmp = tempfile.mkdtemp()
            self.addr = f"ipc://{self.tmp}/pair"
        else:
            raise ValueError(impl)

    def open(self, role: str) -> tuple[Any, Any]:
        """(send, recv) callables for `role` ("parent" receives first in rtt)."""
        impl = self.impl
        if impl in CONNECTION_IMPLS:
            if role == "parent":
                conn = self.listener.accept()
            else:
                if impl == "procwire.connection":
                    from procwire.connection import Client
                else:  # the same interface, another function
                    from multiprocessing.connection import Client  # type: ignore[assignment]
                conn = Client(self.listener.address, authkey=self.key)
            return conn, conn
        if impl.startswith(("procwire", "multiprocessing")):
            # one-way: a (first end) only receives, b only sends
            me = self.a if role == "parent" else self.b
            return me, me
        if impl == "os.pipe":
            if role == "parent":
                return self.w2, self.r1
            return self.w1, self.r2
        import zmq
        ctx = zmq.Context()
        s = ctx.socket(zmq.PAIR)
        if role == "parent":
            s.bind(self.addr)
        else:
            s.connect(self.addr)
        return s, s

    def close(self) -> None:
        if self.impl in CONNECTION_IMPLS:
            self.listener.close()
        if self.tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)


def _send_fn(impl: str, end: Any, payload: str) -> Any:  # a send(message) callable
    if impl == "os.pipe":
        return lambda m: os.write(end, m)
    if impl == "pyzmq":
        return end.send_pyobj if payload in PICKLED else end.send
    return end.send if payload in PICKLED else end.send_bytes


def _recv_fn(impl: str, end: Any, payload: str) -> Any:  # a recv() callable
    if impl == "os.pipe":
        return lambda: os.read(end, 64)
    if impl == "pyzmq":
        return end.recv_pyobj if payload in PICKLED else end.recv
    return end.recv if payload in PICKLED else end.recv_bytes


def _flush(ends: _Ends, sock: Any) -> None:
    """pyzmq sends from a background thread: let the last messages leave before exit."""
    if ends.impl == "pyzmq":
        sock.close(linger=10000)
        sock.context.term()


def _pin(pinned: bool | str) -> list[int] | None:
    """Pins this process; returns the CPUs its forked peer should re-pin to.

    ``True``: both processes on the first CPU; ``"split"``: this one on the
    first CPU and the peer on the second (one process per core).
    """
    if not pinned:
        return None
    from procwire.bench.queues import two_cpus
    if pinned == "split":
        mine, theirs = two_cpus()
        os.sched_setaffinity(0, {mine})
        return [theirs]
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    return None


def _echo_child(ends: _Ends, count: int, pin: list[int] | None = None,
                payload: str = "bytes64") -> None:
    if pin:
        os.sched_setaffinity(0, pin)
    s, r = ends.open("child")
    send, recv = _send_fn(ends.impl, s, payload), _recv_fn(ends.impl, r, payload)
    for _ in range(count):
        send(recv())
    _flush(ends, s)
    os._exit(0)


def rtt(impl: str, pinned: bool | str = False, count: int = 20000,
        warmup: int = 2000, payload: str = "bytes64") -> dict[str, Any]:
    """64-byte round trips; value = median µs, with p10/p99. ``pinned``: see _pin;
    ``payload``: "bytes64" (send_bytes), "pickled64" (send/recv of the same bytes) or
    "tuple" (send/recv of (1, 'abc', 2.5))."""
    child_pin = _pin(pinned)
    ends = _Ends(impl)
    p = FORK.Process(target=_echo_child, args=(ends, count + warmup, child_pin, payload))
    p.start()
    s, r = ends.open("parent")
    send, recv = _send_fn(impl, s, payload), _recv_fn(impl, r, payload)
    msg = PAYLOADS[payload]
    for _ in range(warmup):
        send(msg)
        recv()
    times = round_trips(send, recv, msg, count)
    p.join(JOIN)
    ends.close()
    return latency(times)


def _producer_child(ends: _Ends, payload: str, count: int, received: Any) -> None:
    s, _ = ends.open("child")
    send = _send_fn(ends.impl, s, payload)
    msg = PAYLOADS[payload]
    for _ in range(count):
        send(msg)
    if ends.impl == "pyzmq":
        # pyzmq drops what is still in flight when a sender leaves while the
        # receiver is at its high-water mark: stay until everything arrived.
        received.wait(JOIN)
    _flush(ends, s)
    os._exit(0)


def throughput(impl: str, payload: str, messages: int) -> dict[str, Any]:
    """1→1: value = msg/s, or GB/s for 1 MiB payloads; extra: minor faults per message."""
    ends = _Ends(impl)
    received = FORK.Event()
    p = FORK.Process(target=_producer_child, args=(ends, payload, messages, received))
    p.start()
    _, r = ends.open("parent")
    recv = _recv_fn(impl, r, payload)
    recv()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t0 = time.perf_counter()
    for _ in range(messages - 1):
        recv()
    dt = time.perf_counter() - t0
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    received.set()
    p.join(JOIN)
    ends.close()
    rate = (messages - 1) / dt
    out = {"minflt_per_msg": faults / (messages - 1)}
    if payload in LARGE:
        out["value"] = rate * LARGE[payload] / 1e9
        out["msg_per_s"] = rate
    else:
        out["value"] = rate
    return out


#: Listener/Client pairs: (column, workload impl).
CONNECTION_IMPLS = ("procwire.connection", "multiprocessing.connection")
CONNECTION_COLUMNS = (("procwire", "procwire.connection"),
                      ("multiprocessing", "multiprocessing.connection"))

PEERS = ("procwire", "procwire oneway", "multiprocessing", "multiprocessing oneway", "pyzmq")


def cases(scale: float = 1.0) -> list[Case]:
    """The pipe suite; `scale` shrinks message counts for quick runs."""
    def n(count: int) -> int:
        return max(1000, int(count * scale))

    out: list[Case] = []
    pinnings: tuple[tuple[bool | str, str], ...] = (
        (False, "RTT 64 B, unpinned"), (True, "RTT 64 B, pinned to 1 CPU"),
        ("split", "RTT 64 B, pinned to CPUs 0 and 1"))
    for pinned, label in pinnings:
        for impl in ("procwire", "multiprocessing", "os.pipe", "pyzmq"):
            out.append(Case(label, impl, W + "rtt",
                            {"impl": impl, "pinned": pinned, "count": n(20000)}, "µs",
                            higher_is_better=False))
    small = {"procwire": n(2_000_000), "procwire oneway": n(2_000_000),
             "multiprocessing": n(400_000), "multiprocessing oneway": n(400_000),
             "pyzmq": n(1_000_000), "os.pipe": n(2_000_000)}
    # issue 14: send()/recv() of the same 64 bytes, pickled, as most programs send;
    # and of a small tuple, which the C path for short bytes does not serve.
    for label, payload in (("RTT 64 B send/recv (pickled), unpinned", "pickled64"),
                           ("RTT (1,'abc',2.5) send/recv, unpinned", "tuple")):
        for impl in ("procwire", "multiprocessing", "pyzmq"):
            out.append(Case(label, impl, W + "rtt",
                            {"impl": impl, "count": n(20000), "payload": payload}, "µs",
                            higher_is_better=False))
    for impl in (*PEERS, "os.pipe"):
        out.append(Case("send_bytes 64 B 1→1", impl, W + "throughput",
                        {"impl": impl, "payload": "bytes64", "messages": small[impl]}, "msg/s"))
    for impl in PEERS:
        out.append(Case("send/recv 64 B (pickled) 1→1", impl, W + "throughput",
                        {"impl": impl, "payload": "pickled64", "messages": small[impl]},
                        "msg/s"))
    for impl in PEERS:
        out.append(Case("send/recv (1,'abc',2.5) 1→1", impl, W + "throughput",
                        {"impl": impl, "payload": "tuple", "messages": small[impl]}, "msg/s"))
    for impl in PEERS:
        out.append(Case("send_bytes 1 MiB 1→1", impl, W + "throughput",
                        {"impl": impl, "payload": "bytes1m", "messages": n(2000)}, "GB/s"))
    for impl in ("procwire", "multiprocessing", "pyzmq"):
        out.append(Case("send_bytes 8 MiB 1→1", impl, W + "throughput",
                        {"impl": impl, "payload": "bytes8m", "messages": max(50, n(250))},
                        "GB/s"))
    # procwire.connection's same-host upgrade against multiprocessing.connection's
    # socket: the same Listener(('127.0.0.1', port), authkey=...) / Client code.
    tcp = "Listener/Client TCP+authkey"
    for column, impl in CONNECTION_COLUMNS:
        out.append(Case(f"{tcp} RTT 64 B", column, W + "rtt",
                        {"impl": impl, "pinned": False, "count": n(20000)}, "µs",
                        higher_is_better=False))
    for column, impl in CONNECTION_COLUMNS:
        out.append(Case(f"{tcp} send_bytes 64 B 1→1", column, W + "throughput",
                        {"impl": impl, "payload": "bytes64",
                         "messages": n(2_000_000 if column == "procwire" else 400_000)}, "msg/s"))
    for column, impl in CONNECTION_COLUMNS:
        out.append(Case(f"{tcp} send_bytes 1 MiB 1→1", column, W + "throughput",
                        {"impl": impl, "payload": "bytes1m", "messages": n(2000)}, "GB/s"))
    return out
