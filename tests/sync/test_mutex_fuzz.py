"""Issue 9, defect 9: a corrupt robust mutex inside a named segment must never
abort the interpreter (glibc assert()s on mutex kinds it did not expect),
crash it or hang it. Each case corrupts the pthread_mutex_t bytes of a named
Lock, RLock, Value, Barrier or Queue, then a forked child attaches the object
by name and uses it with timeouts; a SegmentError or any other exception is
fine, a signal or a hang fails the test."""
from __future__ import annotations

import os
import random
import signal
import struct
import time

import pytest
from synchelpers import (
    collect_before_leak_check,  # noqa: F401  (autouse)
    unique,
)

import procwire
from procwire._segment import path_of

pytestmark = pytest.mark.timeout(300)

CASES_PER_KIND = int(os.environ.get("PROCWIRE_MUTEX_FUZZ_CASES", "80"))
SEED = os.environ.get("PROCWIRE_MUTEX_FUZZ_SEED", "1")
MUTEX_SIZE = 40  # x86-64 glibc pthread_mutex_t
# Offsets of the fields of glibc's struct __pthread_mutex_s.
LOCK, COUNT, OWNER, NUSERS, KIND, SPINS, ELISION, PREV, NEXT = 0, 4, 8, 12, 16, 20, 22, 24, 32

# Where the mutexes sit in each kind of segment (layout.h): after the 64-byte
# common header; a queue ring's tail_lock and head_lock are at 64 and 192, and
# a Barrier's internal lock is the RLock of its Condition (pw_cond.lock, 320).
MUTEX_OFFSETS = {"Lock": [64], "RLock": [64], "Value": [64], "Barrier": [384],
                 "Queue": [128, 256]}


def _make(kind: str, name: str):
    if kind == "Value":
        return procwire.Value("i", 7, name=name)
    if kind == "Barrier":
        return procwire.Barrier(2, name=name)
    if kind == "Queue":
        return procwire.Queue(name=name)
    return getattr(procwire, kind)(name=name)


def _use(kind: str, name: str) -> None:
    """Attach and exercise every mutex of the object, always with a timeout."""
    if kind == "Value":
        v = procwire.Value.attach(name)
        lk = v.get_lock()
        if lk.acquire(timeout=0.2):
            v.get_obj().value += 1
            lk.release()
    elif kind == "Barrier":
        b = procwire.Barrier.attach(name)
        try:
            b.wait(timeout=0.05)
        except procwire.BrokenBarrierError:
            pass
        b.reset(timeout=0.2)
        b.abort()
    elif kind == "Queue":
        q = procwire.Queue.attach(name)
        q.put(b"x", timeout=0.2)
        q.get(timeout=0.2)
    else:
        lk = getattr(procwire, kind).attach(name)
        if lk.acquire(timeout=0.2):
            lk.release()
        lk.statistics()


def _mutate(rng: random.Random, m: bytearray, kind_value: int) -> str:
    choice = rng.randrange(7)
    if choice == 0:
        m[:] = rng.randbytes(MUTEX_SIZE)
        return "random bytes"
    if choice == 1:
        for _ in range(rng.randint(1, 3)):
            bit = rng.randrange(MUTEX_SIZE * 8)
            m[bit // 8] ^= 1 << (bit % 8)
        return "bit flips"
    if choice == 2:
        k = rng.choice([0, 1, 2, 3, kind_value ^ 0x10, kind_value | 0x20, kind_value | 0x40,
                        kind_value | 0x100, kind_value & ~0x80, 0x7fffffff, -1,
                        rng.randrange(-2**31, 2**31)])
        struct.pack_into("i", m, KIND, k)
        return f"kind {k:#x}"
    if choice == 3:
        w = rng.choice([os.getpid(), 1, 0x40000000, 0x80000000, 0xc0000000, 0x3fffffff,
                        0xffffffff, 0x80000000 | os.getpid(), rng.randrange(2**32)])
        struct.pack_into("I", m, LOCK, w)
        return f"lock word {w:#x}"
    if choice == 4:
        field = rng.choice([COUNT, OWNER, NUSERS])
        v = rng.choice([0, 1, -1, 0x7fffffff, 0x7ffffffe, os.getpid(), rng.randrange(2**31)])
        struct.pack_into("i", m, field, v)
        return f"field {field} = {v}"
    if choice == 5:
        field = rng.choice([PREV, NEXT])
        v = rng.choice([0, 1, 8, 0xdeadbeef, 2**47 - 8, rng.randrange(2**64)])
        struct.pack_into("Q", m, field, v)
        # ... with the lock word claiming a holder, so a release would follow them
        struct.pack_into("I", m, LOCK, rng.choice([0, os.getpid(), 0x40000000]))
        return f"list {field} = {v:#x}"
    struct.pack_into("h", m, rng.choice([SPINS, ELISION]), rng.randrange(-2**15, 2**15))
    return "spins/elision"


def _run_child(kind: str, name: str) -> tuple[int | None, float]:
    """Fork; the child uses the object and exits 0 whatever Python raises."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 0
        try:
            signal.alarm(0)
            _use(kind, name)
        except BaseException:
            code = 0
        os._exit(code)
    t0 = time.monotonic()
    deadline = t0 + 20
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status, time.monotonic() - t0
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return None, time.monotonic() - t0
        time.sleep(0.002)  # polling a child's exit, not synchronising with it


@pytest.mark.parametrize("kind", ["Lock", "RLock", "Value", "Barrier", "Queue"])
def test_corrupt_mutexes_never_abort_crash_or_hang(kind):
    name = unique(f"mfuzz-{kind.lower()}")
    obj = _make(kind, name)
    path = path_of(name)
    rng = random.Random(f"{kind}-{SEED}")
    try:
        with open(path, "r+b") as f:
            pristine = f.read()
        offsets = MUTEX_OFFSETS[kind]
        kind_value = struct.unpack_from("i", pristine, offsets[0] + KIND)[0]
        for off in offsets:  # the layout this test assumes
            assert struct.unpack_from("i", pristine, off + KIND)[0] == kind_value
        failures = []
        for case in range(CASES_PER_KIND):
            off = rng.choice(offsets)
            m = bytearray(pristine[off:off + MUTEX_SIZE])
            what = _mutate(rng, m, kind_value)
            with open(path, "r+b") as f:
                f.seek(off)
                f.write(m)
            status, _dt = _run_child(kind, name)
            if status is None:
                failures.append(f"case {case} ({what} at {off}): hung")
            elif os.WIFSIGNALED(status):
                failures.append(f"case {case} ({what} at {off}): killed by signal "
                                f"{os.WTERMSIG(status)}")
            elif os.WEXITSTATUS(status) != 0:
                failures.append(f"case {case} ({what} at {off}): exit {os.WEXITSTATUS(status)}")
            with open(path, "r+b") as f:
                f.write(pristine)
        assert not failures, "\n".join(failures[:20])
    finally:
        with open(path, "r+b") as f:
            f.write(pristine)
        if hasattr(obj, "close"):
            obj.close()
        else:  # a named Value: its segment goes with it
            del obj
