"""Engine workloads: procwire's Redis context against raw redis-py on the same patterns.

Each workload starts its own ``redis-server`` (Debian's package) on a free
loopback port with persistence off, or uses ``PROCWIRE_BENCH_REDIS`` (a URL)
if set, and returns ``{"value": figure, ...}``. Patterns (issue 13's goals):

* Queue put/get, one message per call: procwire ``Queue`` against RPUSH/BLPOP;
* batched 100: ``put_many``/``get_many`` against pipelined RPUSH / LPOP count;
* the same two without an authkey (nothing signed: the MAC's share of the cost);
* acknowledged: ``JoinableQueue`` put/get/task_done against XADD/XREADGROUP/XACK;
* the Pool: 10k tiny tasks through one ``procwire worker``-style process of 2
  (tasks/s), and one task's round trip against a raw BLPOP round trip.
"""
from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any

from procwire.bench.harness import Case

FORK = mp.get_context("fork")
JOIN = 300
W = "procwire.bench.engine:"
PAYLOAD = b"x" * 64
KEY = b"bench"


@contextlib.contextmanager
def _server() -> Iterator[str]:
    url = os.environ.get("PROCWIRE_BENCH_REDIS")
    if url:
        yield url
        return
    exe = shutil.which("redis-server")
    if exe is None:
        raise SystemExit("redis-server is not installed (apt-get install redis-server)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    d = tempfile.mkdtemp(prefix="procwire-bench-redis-")
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--dir", d,
                             "--save", "", "--appendonly", "no"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        import redis
        r = redis.Redis(port=port)
        deadline = time.monotonic() + 30
        while True:
            try:
                r.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise SystemExit("redis-server did not start") from None
                time.sleep(0.02)
        r.close()
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(30)
        shutil.rmtree(d, ignore_errors=True)


# ---------------------------------------------------------------- queue throughput

def _raw_producer(url: str, n: int, batch: int) -> None:
    import redis
    r = redis.Redis.from_url(url)
    if batch:
        for i in range(0, n, batch):
            r.rpush("raw", *([PAYLOAD] * min(batch, n - i)))
    else:
        for _ in range(n):
            r.rpush("raw", PAYLOAD)


def _raw_consume(url: str, n: int, batch: int) -> None:
    import redis
    r = redis.Redis.from_url(url)
    got = 0
    while got < n:
        if batch:
            items = r.lpop("raw", batch)
            if items:
                got += len(items)
                continue
        item = r.blpop(["raw"], timeout=JOIN)
        assert item is not None
        got += 1


def _pw_producer(url: str, n: int, batch: int, key: bytes | None = KEY) -> None:
    import procwire.redis
    q = procwire.redis.get_context(url, authkey=key).Queue(name="pw")
    if batch:
        for i in range(0, n, batch):
            q.put_many([PAYLOAD] * min(batch, n - i))
    else:
        for _ in range(n):
            q.put(PAYLOAD)


def _pw_consume(url: str, n: int, batch: int, key: bytes | None = KEY) -> None:
    import procwire.redis
    q = procwire.redis.get_context(url, authkey=key).Queue(name="pw")
    got = 0
    while got < n:
        if batch:
            got += len(q.get_many(batch, timeout=JOIN))
        else:
            q.get(timeout=JOIN)
            got += 1


def queue_throughput(impl: str, messages: int, batch: int = 0,
                     authkey: bool = True) -> dict[str, Any]:
    """Messages per second, one producer process to one consumer (this process).

    ``authkey=False``: procwire without a key, so nothing is signed (the
    price of the per-message MAC is the difference)."""
    os.environ.pop("PROCWIRE_AUTHKEY", None)
    with _server() as url:
        args: tuple[Any, ...]
        if impl == "redis-py":
            producer, consume, args = _raw_producer, _raw_consume, (url, messages, batch)
        else:
            producer, consume = _pw_producer, _pw_consume
            args = (url, messages, batch, KEY if authkey else None)
        p = FORK.Process(target=producer, args=args)
        t0 = time.perf_counter()
        p.start()
        consume(*args)
        elapsed = time.perf_counter() - t0
        p.join(JOIN)
        if p.exitcode != 0:
            raise SystemExit("the producer failed")
    return {"value": messages / elapsed, "messages": messages, "seconds": elapsed}


# ---------------------------------------------------------- acknowledged (streams)

def _raw_stream_producer(url: str, n: int) -> None:
    import redis
    r = redis.Redis.from_url(url)
    for _ in range(n):
        r.xadd("rs", {"d": PAYLOAD})


def _pw_joinable_producer(url: str, n: int) -> None:
    import procwire.redis
    q = procwire.redis.get_context(url, authkey=KEY).JoinableQueue(name="pj")
    for _ in range(n):
        q.put(PAYLOAD)


def acked_throughput(impl: str, messages: int) -> dict[str, Any]:
    """Messages per second put, got and acknowledged one at a time."""
    with _server() as url:
        if impl == "redis-py":
            import redis
            r = redis.Redis.from_url(url)
            r.xgroup_create("rs", "g", id="0", mkstream=True)
            p = FORK.Process(target=_raw_stream_producer, args=(url, messages))
            t0 = time.perf_counter()
            p.start()
            got = 0
            while got < messages:
                resp = r.xreadgroup("g", "c", {"rs": ">"}, count=1, block=JOIN * 1000)
                for _, entries in resp:
                    for mid, _f in entries:
                        r.xack("rs", "g", mid)
                        got += 1
        else:
            import procwire.redis
            q = procwire.redis.get_context(url, authkey=KEY).JoinableQueue(name="pj")
            p = FORK.Process(target=_pw_joinable_producer, args=(url, messages))
            t0 = time.perf_counter()
            p.start()
            for _ in range(messages):
                q.get(timeout=JOIN)
                q.task_done()
        elapsed = time.perf_counter() - t0
        p.join(JOIN)
    return {"value": messages / elapsed, "messages": messages, "seconds": elapsed}


# --------------------------------------------------------------------------- Pool

def _tiny(x: int) -> int:
    return x + 1


def pool_tasks(tasks: int) -> dict[str, Any]:
    """Tasks per second through one remote `procwire worker` of 2 processes."""
    import procwire.redis
    with _server() as url:
        env = dict(os.environ, PROCWIRE_AUTHKEY=KEY.decode())
        worker = subprocess.Popen([sys.executable, "-m", "procwire", "worker", url, "--pool",
                                   "bench", "--processes", "2", "--quiet"], env=env)
        try:
            ctx = procwire.redis.get_context(url, authkey=KEY)
            with ctx.Pool(0, name="bench") as pool:
                pool.map(_tiny, range(100))  # the worker is up
                t0 = time.perf_counter()
                out = pool.map(_tiny, range(tasks), chunksize=max(1, tasks // 40))
                elapsed = time.perf_counter() - t0
                assert out[-1] == tasks
        finally:
            worker.terminate()
            worker.wait(JOIN)
    return {"value": tasks / elapsed, "tasks": tasks, "seconds": elapsed}


def _raw_echo(url: str, trips: int) -> None:
    import redis
    r = redis.Redis.from_url(url)
    for _ in range(trips):
        _, v = r.blpop(["ping"], timeout=JOIN)
        r.rpush("pong", v)


def round_trip(impl: str, trips: int) -> dict[str, Any]:
    """Microseconds per round trip: raw BLPOP ping-pong, or one Pool task (apply)."""
    with _server() as url:
        if impl == "redis-py":
            import redis
            r = redis.Redis.from_url(url)
            p = FORK.Process(target=_raw_echo, args=(url, trips))
            p.start()
            t0 = time.perf_counter()
            for _ in range(trips):
                r.rpush("ping", PAYLOAD)
                r.blpop(["pong"], timeout=JOIN)
            elapsed = time.perf_counter() - t0
            p.join(JOIN)
        else:
            import procwire.redis
            env = dict(os.environ, PROCWIRE_AUTHKEY=KEY.decode())
            worker = subprocess.Popen([sys.executable, "-m", "procwire", "worker", url,
                                       "--pool", "rt", "--processes", "1", "--quiet"], env=env)
            try:
                ctx = procwire.redis.get_context(url, authkey=KEY)
                with ctx.Pool(0, name="rt") as pool:
                    pool.apply(_tiny, (0,))
                    t0 = time.perf_counter()
                    for i in range(trips):
                        pool.apply(_tiny, (i,))
                    elapsed = time.perf_counter() - t0
            finally:
                worker.terminate()
                worker.wait(JOIN)
    return {"value": elapsed / trips * 1e6, "trips": trips}


def cases(scale: float = 1.0) -> list[Case]:
    def n(count: int) -> int:
        return max(200, int(count * scale))

    out: list[Case] = []
    for impl in ("procwire", "redis-py"):
        out.append(Case("Queue put/get, 1 msg/call", impl, W + "queue_throughput",
                        {"impl": impl, "messages": n(20_000)}, "msg/s"))
        out.append(Case("Queue put_many/get_many of 100", impl, W + "queue_throughput",
                        {"impl": impl, "messages": n(500_000), "batch": 100}, "msg/s"))
        out.append(Case("acknowledged (JoinableQueue / XACK)", impl, W + "acked_throughput",
                        {"impl": impl, "messages": n(10_000)}, "msg/s"))
        out.append(Case("round trip (Pool task / BLPOP)", impl, W + "round_trip",
                        {"impl": impl, "trips": n(2_000)}, "µs", higher_is_better=False))
    out.append(Case("Queue put/get, 1 msg/call, no authkey", "procwire", W + "queue_throughput",
                    {"impl": "procwire", "messages": n(20_000), "authkey": False}, "msg/s"))
    out.append(Case("Queue put_many/get_many of 100, no authkey", "procwire",
                    W + "queue_throughput",
                    {"impl": "procwire", "messages": n(500_000), "batch": 100,
                     "authkey": False}, "msg/s"))
    out.append(Case("Pool, 10k tiny tasks, 1 worker of 2", "procwire", W + "pool_tasks",
                    {"tasks": 10_000 if scale >= 1 else n(10_000)}, "msg/s"))
    return out
