"""Queue workloads: procwire.Queue against multiprocessing.Queue, faster-fifo and pyzmq.

Each workload runs in a fresh interpreter (see harness.py), forks its
producers and consumers with the fork start method, and returns
``{"value": figure, ...extra}``. The peers are optional (``pip install
'procwire[bench]'``); a missing one makes its cases fail with a clear note.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import resource
import shutil
import tempfile
import time
from collections.abc import Callable
from typing import Any

from procwire.bench.harness import Case, latency, round_trips

FORK = mp.get_context("fork")
MiB = 1 << 20
JOIN = 300

PAYLOADS: dict[str, Callable[[], Any]] = {
    "bytes64": lambda: b"x" * 64,
    "tuple": lambda: (1, "abc", 2.5),
    "bytes1m": lambda: b"x" * MiB,
    "numpy1m": lambda: __import__("numpy").ones(MiB // 8),
    "bytes8m": lambda: b"x" * (8 * MiB),
    "numpy8m": lambda: __import__("numpy").ones(MiB),
}
PAYLOAD_BYTES = {"bytes64": 64, "tuple": 0, "bytes1m": MiB, "numpy1m": MiB,
                 "bytes8m": 8 * MiB, "numpy8m": 8 * MiB}


# -- adapters: one small class per implementation ---------------------------------
# Each makes its queue in the driver; endpoints are made inside each child,
# after the fork (pyzmq sockets must not cross a fork).

class _Procwire:
    def __init__(self, big: bool) -> None:
        import procwire
        self.q = procwire.Queue(capacity=(64 if big else 4) * MiB)

    def endpoint(self, role: str) -> Any:
        return self.q

    put_many = staticmethod(lambda q, items: q.put_many(items))
    get_many = staticmethod(lambda q: q.get_many())


class _ProcwireSmallRing(_Procwire):
    """procwire's Queue with its default 4 MiB ring even for 1 MiB messages: a ring
    that stays in the CPUs' caches, against the 64 MiB one above."""

    def __init__(self, big: bool) -> None:
        import procwire
        self.q = procwire.Queue()


class _Multiprocessing:
    def __init__(self, big: bool) -> None:
        self.q = FORK.Queue()

    def endpoint(self, role: str) -> Any:
        return self.q

    put_many = None  # multiprocessing has no batch API
    get_many = None


class _FasterFifo:
    def __init__(self, big: bool) -> None:
        import faster_fifo
        self.q = faster_fifo.Queue(max_size_bytes=(64 if big else 4) * MiB)

    def endpoint(self, role: str) -> Any:
        return _FasterFifoEnd(self.q)

    put_many = staticmethod(lambda q, items: q.q.put_many(items, timeout=JOIN))
    get_many = staticmethod(lambda q: q.q.get_many(timeout=JOIN, max_messages_to_get=1 << 20))


class _FasterFifoEnd:
    # faster-fifo's put and get default to a 10 s timeout; benchmarks block.
    def __init__(self, q: Any) -> None:
        self.q = q

    def put(self, obj: Any) -> None:
        self.q.put(obj, timeout=JOIN)

    def get(self, timeout: float = JOIN) -> Any:
        return self.q.get(timeout=timeout)


class _Zmq:
    """PUSH/PULL over ipc://; the receiver binds before the sender connects."""

    def __init__(self, big: bool) -> None:
        self.dir = tempfile.mkdtemp(prefix="procwire-bench-")
        self.addr = f"ipc://{self.dir}/q"
        self.creator = os.getpid()

    def __del__(self) -> None:
        if os.getpid() == self.creator:
            shutil.rmtree(self.dir, ignore_errors=True)

    def endpoint(self, role: str) -> Any:
        return _ZmqEnd(self.addr, role)

    put_many = None
    get_many = None


class _ZmqEnd:
    def __init__(self, addr: str, role: str) -> None:
        import zmq
        self.ctx = zmq.Context()
        if role == "consumer":
            self.sock = self.ctx.socket(zmq.PULL)
            self.sock.bind(addr)
        else:
            self.sock = self.ctx.socket(zmq.PUSH)
            self.sock.connect(addr)

    def flush(self) -> None:
        """pyzmq sends from a background thread: let the last messages leave.

        multiprocessing ends a forked child with os._exit, which would drop
        whatever the I/O thread has not sent yet (the sentinel, say)."""
        self.sock.close(linger=JOIN * 1000)
        self.ctx.term()

    def put(self, obj: Any) -> None:
        if type(obj) is bytes:
            # zero-copy pays only for large frames (pyzmq's own advice)
            if len(obj) < 65536:
                self.sock.send(obj)
            else:
                self.sock.send(obj, copy=False)
        else:
            self.sock.send_pyobj(obj)

    def get(self) -> Any:
        # The benchmark's raw payloads never start with pickle's PROTO opcode.
        data = self.sock.recv()
        return data if not data.startswith(b"\x80") else __import__("pickle").loads(data)


class _ProcwirePipe:
    """procwire's one-way Pipe as a 1→1 queue, for the large-message rows: the
    Queue's figure beside the Pipe's, in one run. bytes go by send_bytes,
    anything else by send (pickled, numpy's buffers out of band); the end of the
    stream is an empty send_bytes."""

    def __init__(self, big: bool) -> None:
        import procwire
        self.r, self.w = procwire.Pipe(duplex=False)

    def endpoint(self, role: str) -> Any:
        return _PipeEnd(self.r if role == "consumer" else self.w)

    put_many = None
    get_many = None


class _PipeEnd:
    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def put(self, obj: Any) -> None:
        if obj is None:
            self.conn.send_bytes(b"")
        elif type(obj) is bytes:
            self.conn.send_bytes(obj)
        else:
            self.conn.send(obj)

    def get(self) -> Any:
        # Both kinds of message arrive as bytes: a pickle starts with PROTO.
        data = self.conn.recv_bytes()
        if not data:
            return None
        return data if not data.startswith(b"\x80") else __import__("pickle").loads(data)


# adapters share an interface by duck typing (put_many may be None): Any
IMPLS: dict[str, Any] = {"procwire": _Procwire, "multiprocessing": _Multiprocessing,
                         "faster-fifo": _FasterFifo, "pyzmq": _Zmq,
                         "procwire Pipe": _ProcwirePipe,
                         "procwire, 4 MiB ring": _ProcwireSmallRing}


# -- workloads ----------------------------------------------------------------------

def _producer(impl: Any, payload: Any, n: int, batch: int, sentinels: int, ready: Any,
              go: Any, finished: Any, cpu: int | None = None) -> None:
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    ready.wait()  # every consumer has bound (pyzmq) before any producer connects
    q = impl.endpoint("producer")
    go.wait()
    if batch:
        items = [payload] * batch
        for _ in range(n // batch):
            impl.put_many(q, items)
    else:
        put = q.put
        for _ in range(n):
            put(payload)
    for _ in range(sentinels):
        q.put(None)
    if hasattr(q, "flush"):
        # pyzmq drops what is still in flight when a sender leaves while the
        # receiver is at its high-water mark: stay until everything arrived.
        finished.wait(JOIN)
        q.flush()


def _consumer(impl: Any, batch: int, ready: Any, go: Any, cpu: int | None = None) -> None:
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    q = impl.endpoint("consumer")
    ready.wait()
    go.wait()
    if batch:
        while True:
            items = impl.get_many(q)
            if items[-1] is None:  # sentinels come last, one per consumer
                for _ in range(items.count(None) - 1):
                    q.put(None)  # took another consumer's: hand it back
                return
    get = q.get
    while get() is not None:
        pass


def throughput(impl: str, payload: str, messages: int, producers: int = 1,
               consumers: int = 1, batch: int = 0, split: bool = False) -> dict[str, Any]:
    """Messages per second from `producers` to `consumers` processes.

    ``split``: consumers pinned to the first CPU and producers to the second,
    so that the two sides always run at the same time (unpinned, the
    scheduler sometimes puts both on one CPU, which halves large-message
    rates: the two copies then take turns).
    """
    cons_cpu: int | None = None
    prod_cpu: int | None = None
    if split:
        cons_cpu, prod_cpu = two_cpus()
    adapter = IMPLS[impl](big=PAYLOAD_BYTES[payload] >= MiB)
    if batch and adapter.put_many is None:
        raise SystemExit(f"{impl} has no batch API")
    obj = PAYLOADS[payload]()
    per = messages // producers
    # With one producer it ends the stream itself (FIFO keeps the sentinel
    # last); with several, the driver does once every producer is done.
    own_sentinels = consumers if producers == 1 else 0
    ready = FORK.Barrier(producers + consumers + 1)
    go, finished = FORK.Event(), FORK.Event()
    cons = [FORK.Process(target=_consumer, args=(adapter, batch, ready, go, cons_cpu))
            for _ in range(consumers)]
    prods = [FORK.Process(target=_producer,
                          args=(adapter, obj, per, batch, own_sentinels, ready, go, finished,
                                prod_cpu))
             for _ in range(producers)]
    faults0 = resource.getrusage(resource.RUSAGE_CHILDREN).ru_minflt
    for p in cons + prods:  # consumers first: pyzmq's receivers must bind first
        p.start()
    ready.wait(JOIN)
    t0 = time.perf_counter()
    go.set()
    if not own_sentinels:
        for p in prods:
            p.join(JOIN)
        end = adapter.endpoint("producer")
        for _ in range(consumers):
            end.put(None)
    for p in cons:
        p.join(JOIN)
    elapsed = time.perf_counter() - t0
    finished.set()
    for p in prods:
        p.join(JOIN)
    if any(p.exitcode != 0 for p in cons + prods):
        raise SystemExit("a benchmark process failed")
    total = per * producers
    faults = resource.getrusage(resource.RUSAGE_CHILDREN).ru_minflt - faults0
    rate = total / elapsed
    out: dict[str, Any] = {"value": rate, "messages": total, "seconds": elapsed,
                           "minor_faults_per_msg": faults / total}
    if PAYLOAD_BYTES[payload] >= MiB:
        out["value"] = rate * PAYLOAD_BYTES[payload] / 1e9  # GB/s
        out["msg_per_s"] = rate
    return out


def _echo(impl: str, a: Any, b: Any, trips: int, pin: list[int] | None) -> None:
    if pin:
        os.sched_setaffinity(0, pin)
    ping, pong = a.endpoint("consumer"), b.endpoint("producer")
    for _ in range(trips):
        pong.put(ping.get())
    if hasattr(pong, "flush"):
        pong.flush()


def two_cpus() -> tuple[int, int]:
    """The first two CPUs this process may run on (0 and 1 on the 2-vCPU VM)."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        raise SystemExit("pinning to two CPUs needs two: this process may use only "
                         f"CPU {cpus[0]}")
    return cpus[0], cpus[1]


def round_trip(impl: str, trips: int, pin: list[int] | None = None,
               split: bool = False) -> dict[str, Any]:
    """Median microseconds for a 64-byte message to go there and back.

    ``pin``: both processes on these CPUs; ``split``: this process pinned to
    one CPU and its peer to another (one process per core, as ``taskset``
    deployments run), so that a wait can only end by a wake-up or a spin
    across CPUs.
    """
    child_pin = None
    if split:
        mine, theirs = two_cpus()
        pin, child_pin = [mine], [theirs]
    if pin:
        os.sched_setaffinity(0, pin)  # children inherit it
    a, b = IMPLS[impl](big=False), IMPLS[impl](big=False)
    child = FORK.Process(target=_echo, args=(impl, a, b, trips, child_pin))
    child.start()
    ping, pong = a.endpoint("producer"), b.endpoint("consumer")
    times = round_trips(ping.put, pong.get, b"x" * 64, trips)
    child.join(JOIN)
    return latency(times[trips // 10:])  # drop the warm-up tenth


class _LoanEnds:
    """Both sides of a loan workload: a procwire Queue, or a procwire Pipe (one
    way). ``loan``, ``put`` and the sentinel write; ``view`` and ``get`` read,
    None at the end."""

    def __init__(self, transport: str, capacity: int) -> None:
        import procwire
        self.transport = transport
        if transport == "Pipe":
            import procwire.pipe
            self.rx, self.tx = procwire.pipe.Pipe(duplex=False, capacity=capacity)
        else:
            self.q = procwire.Queue(capacity=capacity)

    def loan(self, size: int) -> Any:
        return (self.tx if self.transport == "Pipe" else self.q).loan(size)

    def put(self, frame: Any) -> None:
        if self.transport == "Pipe":
            self.tx.send_bytes(frame)
        else:
            self.q.put(frame)

    def end(self) -> None:
        if self.transport == "Pipe":
            self.tx.send_bytes(b"")
        else:
            self.q.put(None)

    def view(self) -> Any:
        """A View whose value is the message's bytes, or None (empty) at the end."""
        if self.transport == "Pipe":
            return self.rx.recv_bytes(copy=False)
        return self.q.get(copy=False)

    def get(self) -> Any:
        """The next message as a numpy array, or None at the end."""
        if self.transport == "Pipe":
            import numpy as np
            data = self.rx.recv_bytes()
            return np.frombuffer(data, np.float64) if data else None
        return self.q.get()

    def close(self) -> None:
        if self.transport == "Pipe":
            self.rx.close()
            self.tx.close()
        else:
            self.q.close()


def _loan_producer(ends: _LoanEnds, size: int, n: int, mode: str, go: Any,
                   cpu: int | None) -> None:
    import numpy as np
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    frame: Any = np.arange(size // 8, dtype=np.float64)
    go.wait()
    if mode == "loan":
        for _ in range(n):
            with ends.loan(size) as buf:
                np.copyto(np.frombuffer(buf, np.float64), frame)
    else:
        for _ in range(n):
            ends.put(frame)
    ends.end()


def loaned(mode: str, size: int, messages: int, transport: str = "Queue",
           split: bool = False) -> dict[str, Any]:
    """Numpy frames of `size` bytes, 1→1, GB/s of frames delivered.

    ``mode="loan"``: the producer copies each frame into a loan (one copy,
    straight into shared memory) and the consumer takes it with
    ``get(copy=False)`` (a Pipe: ``recv_bytes(copy=False)``) as a read-only
    view of the ring, reads its first and last element and releases it (no
    copy). ``mode="put"``: ``put(frame)`` and ``get()`` (a Pipe:
    ``send_bytes`` and ``recv_bytes``; one copy in, one copy out). The same
    frames either way. ``transport``: "Queue" or "Pipe"; ``split``: consumer
    and producer pinned to two CPUs.
    """
    import numpy as np

    cons_cpu: int | None = None
    prod_cpu: int | None = None
    if split:
        cons_cpu, prod_cpu = two_cpus()
        os.sched_setaffinity(0, {cons_cpu})
    ends = _LoanEnds(transport, max(64 * MiB, 8 * size))
    go = FORK.Event()
    p = FORK.Process(target=_loan_producer, args=(ends, size, messages, mode, go, prod_cpu))
    p.start()
    last = float(size // 8 - 1)
    faults0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t0 = time.perf_counter()
    go.set()
    got = 0
    if mode == "loan":
        while True:
            with ends.view() as v:
                if v is None or len(v) == 0:
                    break
                arr = np.frombuffer(v, np.float64)
                if arr[0] != 0.0 or arr[-1] != last:
                    raise SystemExit("a loaned frame arrived wrong")
                del arr
            got += 1
    else:
        while (arr := ends.get()) is not None:
            if arr[0] != 0.0 or arr[-1] != last:
                raise SystemExit("a frame arrived wrong")
            got += 1
    elapsed = time.perf_counter() - t0
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults0
    p.join(JOIN)
    ends.close()
    if p.exitcode != 0 or got != messages:
        raise SystemExit("the producer failed")
    return {"value": got * size / elapsed / 1e9, "msg_per_s": got / elapsed,
            "consumer_faults_per_msg": faults / got}


def copy_ceiling(size: int, messages: int) -> dict[str, Any]:
    """GB/s of ``numpy.copyto`` of one `size`-byte frame into successive slots of
    a 64 MiB buffer, in one process: the ceiling of anything that copies each
    frame once (a loan's writer does exactly this, into the ring)."""
    import numpy as np
    frame: Any = np.arange(size // 8, dtype=np.float64)
    slots = max(1, 64 * MiB // size)
    ring = np.empty(slots * (size // 8))
    ring[:] = 0  # fault it in first, as a long-lived queue's ring is
    t0 = time.perf_counter()
    for i in range(messages):
        j = i % slots
        np.copyto(ring[j * (size // 8):(j + 1) * (size // 8)], frame)
    elapsed = time.perf_counter() - t0
    return {"value": messages * size / elapsed / 1e9}


def idle_waiter_cpu(impl: str, seconds: float = 1.0) -> dict[str, Any]:
    """CPU milliseconds a consumer burns per second blocked on an empty queue."""
    q = IMPLS[impl](big=False).endpoint("consumer")
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.monotonic()
    try:
        if impl == "pyzmq":
            q.sock.poll(int(seconds * 1000))
        else:
            q.get(timeout=seconds)
    except Exception:  # Empty of whichever flavour: that is the point
        pass
    elapsed = time.monotonic() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    return {"value": cpu * 1000 / elapsed}


# -- the suite ------------------------------------------------------------------------

PEERS = ("procwire", "multiprocessing", "faster-fifo", "pyzmq")
W = "procwire.bench.queues:"


def cases(scale: float = 1.0) -> list[Case]:
    """The queue suite; `scale` shrinks message counts for quick runs."""
    def n(count: int) -> int:
        return max(1000, int(count * scale))

    # Slow implementations get fewer messages so a full run stays in minutes;
    # rates do not depend on the count once past warm-up.
    small = {"procwire": n(1_000_000), "multiprocessing": n(200_000),
             "faster-fifo": n(200_000), "pyzmq": n(1_000_000)}
    out: list[Case] = []
    for impl in PEERS:
        out.append(Case("64 B bytes 1→1", impl, W + "throughput",
                        {"impl": impl, "payload": "bytes64", "messages": small[impl]}, "msg/s"))
        out.append(Case("tuple 1→1", impl, W + "throughput",
                        {"impl": impl, "payload": "tuple", "messages": small[impl]}, "msg/s"))
    for impl in ("procwire", "faster-fifo"):
        out.append(Case("64 B bytes 1→1, batched", impl, W + "throughput",
                        {"impl": impl, "payload": "bytes64", "messages": n(4_000_000),
                         "batch": 256}, "msg/s"))
    for impl in ("procwire", "multiprocessing", "faster-fifo"):
        out.append(Case("64 B bytes 4→4", impl, W + "throughput",
                        {"impl": impl, "payload": "bytes64", "messages": small[impl],
                         "producers": 4, "consumers": 4}, "msg/s"))
    out.append(Case("64 B bytes 4→4", "faster-fifo batched", W + "throughput",
                    {"impl": "faster-fifo", "payload": "bytes64", "messages": n(1_000_000),
                     "producers": 4, "consumers": 4, "batch": 256}, "msg/s"))
    # Large messages, with procwire's own Pipe beside the Queue (issue 14: the
    # Queue should move 1 and 8 MiB as fast as the Pipe streams them).
    big = {"procwire": n(4000), "multiprocessing": n(1000), "faster-fifo": n(2000),
           "pyzmq": n(2000), "procwire Pipe": n(4000)}
    for impl in (*PEERS, "procwire Pipe"):
        for payload, label in (("bytes1m", "1 MiB bytes 1→1"), ("numpy1m", "1 MiB numpy 1→1")):
            out.append(Case(label, impl, W + "throughput",
                            {"impl": impl, "payload": payload, "messages": big[impl]}, "GB/s"))
    for impl in ("procwire", "multiprocessing", "faster-fifo", "procwire Pipe"):
        for payload, label in (("bytes8m", "8 MiB bytes 1→1"), ("numpy8m", "8 MiB numpy 1→1")):
            out.append(Case(label, impl, W + "throughput",
                            {"impl": impl, "payload": payload,
                             "messages": max(50, big[impl] // 8)}, "GB/s"))
    # The same with the two processes pinned apart: the figure without the
    # scheduler's coin toss (both on one CPU halves it, for every transport).
    for impl in ("procwire", "faster-fifo", "procwire Pipe"):
        for payload, label, count in (("bytes1m", "1 MiB", big[impl]),
                                      ("bytes8m", "8 MiB", max(50, big[impl] // 8))):
            out.append(Case(f"{label} bytes 1→1, pinned to CPUs 0 and 1", impl,
                            W + "throughput", {"impl": impl, "payload": payload,
                                               "messages": count, "split": True}, "GB/s"))
    out.append(Case("1 MiB bytes 1→1, pinned to CPUs 0 and 1", "procwire, 4 MiB ring",
                    W + "throughput", {"impl": "procwire, 4 MiB ring", "payload": "bytes1m",
                                       "messages": big["procwire"], "split": True}, "GB/s"))
    # Zero-copy loans against put/get on the same numpy frames (issue 14, item
    # 5): where a loan starts to pay (the README's threshold), and what it
    # reaches at 8 MiB, through the Queue and the Pipe, unpinned and pinned.
    for size, label in ((256, "256 B"), (1024, "1 KiB"), (4096, "4 KiB"), (65536, "64 KiB"),
                        (MiB, "1 MiB"), (8 * MiB, "8 MiB")):
        count = max(100, n(4_000_000_000 // size) if size >= MiB else n(200_000))
        for transport in ("Queue", "Pipe"):
            suffix = "" if transport == "Queue" else " Pipe"
            for impl, mode in ((f"procwire{suffix}", "loan"),
                               (f"procwire{suffix} put/get", "put")):
                out.append(Case(f"{label} numpy 1→1, loan + view (vs put/get)", impl,
                                W + "loaned", {"mode": mode, "size": size, "messages": count,
                                               "transport": transport}, "GB/s"))
    for transport in ("Queue", "Pipe"):
        suffix = "" if transport == "Queue" else " Pipe"
        for impl, mode in ((f"procwire{suffix}", "loan"), (f"procwire{suffix} put/get", "put")):
            out.append(Case("8 MiB numpy 1→1, loan + view (vs put/get), pinned to CPUs 0 and 1",
                            impl, W + "loaned",
                            {"mode": mode, "size": 8 * MiB, "messages": max(100, n(500)),
                             "transport": transport, "split": True}, "GB/s"))
    out.append(Case("8 MiB numpy.copyto, one process (one copy's ceiling)", "numpy",
                    W + "copy_ceiling", {"size": 8 * MiB, "messages": n(2000)}, "GB/s"))
    trips = {"procwire": n(100_000), "multiprocessing": n(20_000), "faster-fifo": n(20_000),
             "pyzmq": n(20_000)}
    for impl in PEERS:
        out.append(Case("round trip 64 B, unpinned", impl, W + "round_trip",
                        {"impl": impl, "trips": trips[impl]}, "µs", higher_is_better=False))
    for impl in ("procwire", "multiprocessing"):
        out.append(Case("round trip 64 B, one CPU", impl, W + "round_trip",
                        {"impl": impl, "trips": trips["multiprocessing"], "pin": [0]}, "µs",
                        higher_is_better=False))
    for impl in ("procwire", "multiprocessing"):
        out.append(Case("round trip 64 B, pinned to CPUs 0 and 1", impl, W + "round_trip",
                        {"impl": impl, "trips": trips["multiprocessing"], "split": True}, "µs",
                        higher_is_better=False))
    for impl in ("procwire", "multiprocessing", "faster-fifo"):
        out.append(Case("idle waiter CPU", impl, W + "idle_waiter_cpu",
                        {"impl": impl, "seconds": max(0.2, scale)}, "ms/s",
                        higher_is_better=False))
    return out
