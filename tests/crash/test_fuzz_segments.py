"""Corrupt named segments of every kind, then attach and use them from a child.

For each case a valid segment's bytes are taken as a template and mutated
(bit flips, random bytes, boundary integers written over header fields,
truncation, extension, a random region overwritten), written as a named
segment, and a child process attaches to it and uses it (puts, gets, acquires,
waits, sets, reads, writes: every call with a short timeout). A clean Python
exception (SegmentError, ValueError, OSError, TimeoutError...) is fine; a
signal (SIGSEGV, SIGBUS, SIGABRT), a child that dies otherwise, or a call that
does not return within CASE_TIMEOUT fails the test, with the kind, the case
number and the mutation, reproducible from the printed seed.
"""
from __future__ import annotations

import faulthandler
import multiprocessing as mp
import os
import random
import signal
import uuid
import warnings

import pytest
from chaoshelpers import FORK, JOIN, chaos  # noqa: F401

import procwire
from procwire import _segment

pytestmark = pytest.mark.chaos

CASE_TIMEOUT = 20     # seconds for one attach-and-use; every call in it has a short timeout
MAX_FAILURES = 5      # stop early with this many examples
T = 0.01              # the timeout of each call the child makes


def _make(kind: str, name: str):
    """Create a named object of `kind`, with some state; returns (object, closer)."""
    p = procwire
    if kind == "queue":
        q = p.Queue(maxsize=8, capacity=4096, name=name)
        q.put_many([b"abc", ("tuple", 1), b"x" * 300])
        return q
    if kind == "joinable":
        q = p.JoinableQueue(name=name)
        q.put("task")
        return q
    if kind == "simple":
        q = p.SimpleQueue(name=name)
        q.put(b"simple")
        return q
    if kind in ("lock", "lock_held"):
        return p.Lock(name=name)
    if kind == "rlock":
        return p.RLock(name=name)
    if kind == "semaphore":
        return p.Semaphore(2, name=name)
    if kind == "bounded":
        return p.BoundedSemaphore(2, name=name)
    if kind == "event":
        ev = p.Event(name=name)
        ev.set()
        return ev
    if kind == "condition":
        return p.Condition(name=name)
    if kind == "barrier":
        return p.Barrier(2, timeout=T, name=name)
    if kind == "value":
        return p.Value("q", 42, name=name)
    if kind == "array":
        return p.Array("d", range(64), name=name)
    if kind == "rawvalue":
        return p.RawValue("i", 7, name=name)
    if kind == "rawarray":
        return p.RawArray("b", b"abcdefgh" * 8, name=name)
    raise AssertionError(kind)


KINDS = ("queue", "joinable", "simple", "lock", "lock_held", "rlock", "semaphore", "bounded",
         "event", "condition", "barrier", "value", "array", "rawvalue", "rawarray")


def _template(kind: str) -> bytes:
    name = f"fuzz-template-{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    obj = _make(kind, name)
    try:
        if kind == "lock_held":
            obj.acquire()  # the mutex word then names this (live) thread as holder
        with open(_segment.path_of(name), "rb") as f:
            data = f.read()
        if kind == "lock_held":
            obj.release()
    finally:
        if hasattr(obj, "close"):
            obj.close()
        else:
            try:
                os.unlink(_segment.path_of(name))
            except FileNotFoundError:
                pass
    return data


# --------------------------------------------------------------- mutations

_INTS = [0, 1, 2, 63, 64, 65, 4095, 4096, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**63 - 1,
         2**63, 2**64 - 1]


def _mutate(rnd: random.Random, t: bytes) -> tuple[bytes, str]:
    b = bytearray(t)
    hot = min(len(b), 64 + 512)  # the common header and the kind-specific header
    def pos() -> int:
        return rnd.randrange(hot) if rnd.random() < 0.8 else rnd.randrange(len(b))
    op = rnd.choice(("flip", "bytes", "int", "int", "truncate", "region", "grow"))
    if op == "flip":
        spots = [pos() for _ in range(rnd.randint(1, 8))]
        for i in spots:
            b[i] ^= 1 << rnd.randrange(8)
        what = f"bit flips at {spots}"
    elif op == "bytes":
        spots = [pos() for _ in range(rnd.randint(1, 16))]
        for i in spots:
            b[i] = rnd.randrange(256)
        what = f"random bytes at {spots}"
    elif op == "int":
        width = rnd.choice((4, 8))
        i = pos() & ~(width - 1)
        extra = [len(t), len(t) - 1, len(t) + 1, len(t) // 2]
        v = rnd.choice(_INTS + extra) % (1 << (8 * width))
        if rnd.random() < 0.3:
            v = (v + rnd.choice((-1, 1))) % (1 << (8 * width))
        b[i:i + width] = v.to_bytes(width, "little")
        what = f"{width}-byte integer {v} at {i}"
    elif op == "truncate":
        n = rnd.randrange(0, len(b))
        del b[n:]
        what = f"truncated to {n} bytes"
    elif op == "region":
        start = pos()
        n = rnd.randint(1, 256)
        b[start:start + n] = bytes(rnd.randrange(256) for _ in range(len(b[start:start + n])))
        what = f"{n} random bytes from {start}"
    else:
        n = rnd.choice((1, 8, 4096, rnd.randrange(1, 100000)))
        b += bytes(rnd.randrange(256) for _ in range(min(n, 64))) + bytes(max(0, n - 64))
        what = f"grown by {n} bytes"
    # Mostly keep the magic (and often version and kind), so that the
    # mutation reaches the code behind the first checks.
    if len(b) >= 16 and op != "truncate":
        r = rnd.random()
        if r < 0.85:
            b[0:8] = t[0:8]
        if r < 0.6:
            b[8:16] = t[8:16]
    return bytes(b), f"{op}: {what}"


# ------------------------------------------------------------------ the child

def _use(kind: str, name: str) -> None:
    p = procwire
    if kind in ("queue", "joinable", "simple"):
        cls = {"queue": p.Queue, "joinable": p.JoinableQueue, "simple": p.SimpleQueue}[kind]
        q = cls.attach(name)
        try:
            calls = [lambda: q.qsize(), lambda: q.statistics(), lambda: q.get(timeout=T),
                     lambda: q.get_nowait(), lambda: q.get_many(timeout=T),
                     lambda: q.put(b"fuzz", timeout=T), lambda: q.put_nowait(("a", 1)),
                     lambda: q.put_many([b"1", b"2"], timeout=T), lambda: q.get(timeout=T),
                     lambda: q.empty(), lambda: q.full()]
            if kind == "joinable":
                calls += [lambda: q.task_done(), lambda: q.join(timeout=T)]
            _each(calls)
        finally:
            q.close()
        return
    if kind in ("lock", "lock_held", "rlock"):
        lk = (p.RLock if kind == "rlock" else p.Lock).attach(name)
        try:
            def cycle():
                if lk.acquire(timeout=T):
                    if lk.owner_died:
                        lk.make_consistent()
                    lk.release()
            _each([lambda: lk.statistics(), lambda: lk.acquire(block=False), lambda: lk.release(),
                   cycle, lambda: repr(lk)])
        finally:
            lk.close()
        return
    if kind in ("semaphore", "bounded"):
        s = (p.BoundedSemaphore if kind == "bounded" else p.Semaphore).attach(name)
        try:
            _each([lambda: s.statistics(), lambda: s.acquire(timeout=T),
                   lambda: s.acquire(block=False), lambda: s.release(), lambda: s.get_value(),
                   lambda: repr(s)])
        finally:
            s.close()
        return
    if kind == "event":
        ev = p.Event.attach(name)
        try:
            _each([lambda: ev.is_set(), lambda: ev.wait(T), lambda: ev.clear(), lambda: ev.wait(T),
                   lambda: ev.set(), lambda: ev.statistics(), lambda: repr(ev)])
        finally:
            ev.close()
        return
    if kind == "condition":
        c = p.Condition.attach(name)
        try:
            def waited():
                if c.acquire(timeout=T):
                    try:
                        c.notify()
                        c.notify_all()
                        c.wait(T)
                    finally:
                        c.release()
            _each([lambda: c.statistics(), waited, lambda: repr(c)])
        finally:
            c.close()
        return
    if kind == "barrier":
        br = p.Barrier.attach(name)
        try:
            _each([lambda: br.statistics(), lambda: br.parties, lambda: br.n_waiting,
                   lambda: br.broken, lambda: br.wait(timeout=T), lambda: br.reset(timeout=T),
                   lambda: br.abort(), lambda: br.reset(timeout=T)])
        finally:
            br.close()
        return
    # Only calls that take a timeout are made: a call without one (reset(),
    # a synchronized Value's .value, an Array's items) waits for as long as the
    # lock word names a holder, as in multiprocessing, and a corrupt word that
    # names a live thread (init's tid 1, say) cannot be told from a stopped
    # holder. The synchronized objects are therefore used through
    # get_lock().acquire(timeout=...) and get_obj().
    if kind in ("value", "rawvalue"):
        v = (p.Value.attach(name) if kind == "value" else p.RawValue.attach(name))
        if kind == "value":
            def locked():
                lk = v.get_lock()
                if lk.acquire(timeout=T):
                    try:
                        obj = v.get_obj()
                        obj.value = obj.value + 1
                    finally:
                        lk.release()
            calls = [locked, lambda: v.statistics()]
        else:
            def bump():
                v.value = v.value + 1
            calls = [lambda: v.value, bump]
        _each(calls)
        return
    if kind in ("array", "rawarray"):
        a = (p.Array.attach(name) if kind == "array" else p.RawArray.attach(name))
        if kind == "array":
            def locked_array():
                lk = a.get_lock()
                if lk.acquire(timeout=T):
                    try:
                        items = a.get_obj()
                        items[len(items) - 1] = items[0]
                        list(items)
                    finally:
                        lk.release()
            _each([lambda: len(a), locked_array])
        else:
            def write():
                a[len(a) - 1] = a[0]
            _each([lambda: len(a), lambda: a[0], lambda: a[:], write, lambda: list(a)])
        return
    raise AssertionError(kind)


def _each(calls) -> None:
    """Make every call; clean Python exceptions are acceptable outcomes."""
    for call in calls:
        try:
            call()
        except Exception:
            pass


def _worker(conn) -> None:
    # A crash must end this process by its signal, at once: pytest's
    # faulthandler (inherited through fork) would first write a traceback.
    faulthandler.disable()
    warnings.simplefilter("ignore")
    while True:
        try:
            msg = conn.recv()
        except EOFError:
            return
        if msg is None:
            return
        kind, name = msg
        try:
            _use(kind, name)
            outcome = "used"
        except Exception as exc:  # a clean refusal, typically SegmentError at attach
            outcome = type(exc).__name__
        conn.send(outcome)


class _Worker:
    def __init__(self) -> None:
        self.conn, child = mp.Pipe()
        self.proc = FORK.Process(target=_worker, args=(child,))
        self.proc.start()
        child.close()

    def run(self, kind: str, name: str) -> str | None:
        """The outcome's name, or None if the worker crashed or hung (then it is gone)."""
        self.conn.send((kind, name))
        self.hung = not self.conn.poll(CASE_TIMEOUT)
        if not self.hung:
            try:
                return self.conn.recv()
            except EOFError:
                pass  # it died: verdict() reaps it and names the signal
        return None

    def verdict(self) -> str:
        if self.hung:
            self.proc.kill()
            self.proc.join(JOIN)
            return f"hang: no result within {CASE_TIMEOUT} s"
        # EOF on the pipe comes before the exit status: join, then read it.
        self.proc.join(JOIN)
        code = self.proc.exitcode
        if code is not None and code < 0:
            return f"killed by {signal.Signals(-code).name}"
        return f"died with exit code {code}"

    def close(self) -> None:
        try:
            self.conn.send(None)
        except OSError:
            pass
        self.proc.join(JOIN)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(JOIN)
        self.conn.close()


def test_corrupt_segments_never_crash_or_hang(chaos):
    rnd = chaos.rng("fuzz")
    templates = {kind: _template(kind) for kind in KINDS}
    failures: list[str] = []
    outcomes: dict[str, int] = {}
    worker = _Worker()
    base = f"fuzz-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    try:
        for case in range(chaos.fuzz_cases):
            kind = KINDS[case % len(KINDS)]
            data, what = _mutate(rnd, templates[kind])
            name = f"{base}-{case}"
            path = _segment.path_of(name)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
            try:
                outcome = worker.run(kind, name)
                if outcome is None:
                    failures.append(f"case {case} ({kind}, {what}): {worker.verdict()}")
                    worker = _Worker()
                    if len(failures) >= MAX_FAILURES:
                        break
                else:
                    outcomes[outcome] = outcomes.get(outcome, 0) + 1
            finally:
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
    finally:
        worker.close()
        # A crashed child cannot clean up names it created (a corrupt Value's
        # lock name, say); nothing of ours may stay behind.
        for entry in os.listdir(_segment.SHM_DIR):
            if entry.startswith(f"procwire.{base}"):
                os.unlink(os.path.join(_segment.SHM_DIR, entry))
    print(f"fuzz: cases={case + 1} kinds={len(KINDS)} outcomes={outcomes}")
    assert not failures, (f"seed {chaos.seed}: {len(failures)} corrupt segment(s) crashed or "
                          "hung a process:\n" + "\n".join(failures))
