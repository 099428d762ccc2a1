"""Create, use and close every object type many times: descriptors and memory stay flat.

Each type, anonymous and named, goes through RESOURCE_CYCLES create/use/close
cycles (10^4). After a warm-up of WARMUP cycles (allocator arenas, import-time
caches, the first mmap of each size), the process's open descriptors must be
exactly as many as before, and its resident memory may grow by at most
RSS_SLACK. Why that tolerance: 10^4 cycles that each leaked one small Python
object or one native allocation (a tuple, a 64-byte buffer: the smallest leak
found so far, issue 9's defect 4, lost ~140 bytes per error) would grow RSS by
at least 0.6 MiB over the measured 9,000 cycles plus what the leaked object
pins; a leaked mapping of any segment (>= 4 KiB) by 35 MiB. Below 2 MiB the
figure is noise: pymalloc keeps freed arenas (256 KiB each) and glibc keeps
freed heap top, so a flat process moves by a few hundred KiB between samples.
Because a leak can also reuse memory that earlier tests freed (RSS then stays
flat), Python's count of allocated memory blocks may grow by at most 500:
one leaked object per cycle adds 9,000.
"""
from __future__ import annotations

import gc
import os
import sys
import uuid
import warnings

import pytest

import procwire

pytestmark = pytest.mark.resources

RESOURCE_CYCLES = int(os.environ.get("PROCWIRE_RESOURCE_CYCLES", 10_000))
WARMUP = max(1, RESOURCE_CYCLES // 10)
RSS_SLACK = 2 << 20  # bytes; see the module docstring
BLOCK_SLACK = 500    # Python blocks: caches warm up; a per-cycle leak gives >= 9,000


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


ERRORS = 5  # error paths taken per cycle: leaks on error paths count too (defect 4)


def _errors(exc, call):
    for _ in range(ERRORS):
        with pytest.raises(exc):
            call()


def _queue(cls, name):
    q = cls(name=name) if name else cls()
    if cls is not procwire.SimpleQueue:
        _errors(procwire.Empty, q.get_nowait)
    q.put(b"x")
    q.put(("t", 1))
    assert q.get(timeout=10) == b"x"
    assert q.get(timeout=10) == ("t", 1)
    if cls is procwire.JoinableQueue:
        q.task_done()
        q.task_done()
        assert q.join(timeout=10)
    q.close()


def _pipe(name):
    a, b = procwire.Pipe()
    a.send(("msg", 1))
    assert b.recv() == ("msg", 1)
    b.send_bytes(b"back")
    assert a.recv_bytes() == b"back"
    _errors(TimeoutError, lambda: a.recv(timeout=0))
    b.close()
    _errors(BrokenPipeError, lambda: a.send(b"to nobody"))
    _errors(EOFError, a.recv)
    a.close()


def _lock(cls, name):
    lk = cls(name=name) if name else cls()
    assert lk.acquire(timeout=10)
    lk.release()
    _errors((ValueError, RuntimeError, AssertionError), lk.release)  # not held (mp: AssertionError for RLock)
    lk.statistics()
    lk.close()


def _semaphore(cls, name):
    s = cls(2, name=name) if name else cls(2)
    assert s.acquire(timeout=10)
    s.release()
    if cls is procwire.BoundedSemaphore:
        _errors(ValueError, s.release)  # above its bound
    s.close()


def _condition(name):
    c = procwire.Condition(name=name) if name else procwire.Condition()
    with c:
        c.notify_all()
        c.wait(0)
    _errors((RuntimeError, AssertionError), c.notify)  # without the lock (mp: AssertionError)
    c.close()


def _event(name):
    ev = procwire.Event(name=name) if name else procwire.Event()
    ev.set()
    assert ev.wait(10)
    ev.clear()
    ev.close()


def _barrier(name):
    br = procwire.Barrier(1, name=name) if name else procwire.Barrier(1)
    assert br.wait(timeout=10) == 0
    br.abort()
    _errors(procwire.BrokenBarrierError, lambda: br.wait(timeout=10))
    br.close()


def _value(name):
    v = procwire.Value("q", 1, name=name) if name else procwire.Value("q", 1)
    with v.get_lock():
        v.value += 1
    assert v.value == 2
    _close_shared(v)


def _array(name):
    a = procwire.Array("d", 16, name=name) if name else procwire.Array("d", 16)
    a[3] = 1.5
    assert a[:][3] == 1.5
    _errors(IndexError, lambda: a[16])
    _close_shared(a)


def _raw_value(name):
    v = procwire.RawValue("i", 3, name=name) if name else procwire.RawValue("i", 3)
    v.value += 1
    assert v.value == 4
    del v


def _raw_array(name):
    a = procwire.RawArray("b", 32, name=name) if name else procwire.RawArray("b", 32)
    a[0] = 7
    assert a[0] == 7
    del a


def _close_shared(obj):
    # Value/Array have no close(): like multiprocessing's, they go with their last reference.
    del obj


TYPES = {
    "Queue": lambda n: _queue(procwire.Queue, n),
    "SimpleQueue": lambda n: _queue(procwire.SimpleQueue, n),
    "JoinableQueue": lambda n: _queue(procwire.JoinableQueue, n),
    "Pipe": _pipe,
    "Lock": lambda n: _lock(procwire.Lock, n),
    "RLock": lambda n: _lock(procwire.RLock, n),
    "Semaphore": lambda n: _semaphore(procwire.Semaphore, n),
    "BoundedSemaphore": lambda n: _semaphore(procwire.BoundedSemaphore, n),
    "Condition": _condition,
    "Event": _event,
    "Barrier": _barrier,
    "Value": _value,
    "Array": _array,
    "RawValue": _raw_value,
    "RawArray": _raw_array,
}
NAMELESS = {"Pipe"}  # reaches other processes by Listener/Client, not by a segment name
CASES = [(t, False) for t in TYPES] + [(t, True) for t in TYPES if t not in NAMELESS]


@pytest.mark.parametrize("type_name,named", CASES,
                         ids=[f"{t}-{'named' if n else 'anonymous'}" for t, n in CASES])
def test_create_use_close_cycles_keep_fds_and_memory_flat(type_name, named):
    cycle = TYPES[type_name]
    base = f"res-{type_name}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a ResourceWarning or similar is a finding too
        for i in range(WARMUP):
            cycle(f"{base}-{i}" if named else None)
        gc.collect()
        fds, rss, blocks = _fds(), _rss(), sys.getallocatedblocks()
        for i in range(WARMUP, RESOURCE_CYCLES):
            cycle(f"{base}-{i}" if named else None)
        gc.collect()
    grown_fds, grown_rss = _fds() - fds, _rss() - rss
    grown_blocks = sys.getallocatedblocks() - blocks
    print(f"{type_name} {'named' if named else 'anonymous'}: {RESOURCE_CYCLES} cycles, "
          f"fds {grown_fds:+d}, RSS {grown_rss / 1024:+.0f} KiB, Python blocks {grown_blocks:+d}")
    assert grown_fds == 0, f"{grown_fds} descriptors leaked over {RESOURCE_CYCLES - WARMUP} cycles"
    # RSS alone can miss a leak that reuses memory freed earlier in the
    # session; Python's own count of allocated blocks cannot.
    assert grown_blocks <= BLOCK_SLACK, (
        f"{grown_blocks} Python memory blocks still allocated after "
        f"{RESOURCE_CYCLES - WARMUP} cycles (tolerance {BLOCK_SLACK})")
    assert grown_rss <= RSS_SLACK, (
        f"RSS grew by {grown_rss / 2**20:.1f} MiB over {RESOURCE_CYCLES - WARMUP} cycles "
        f"(tolerance {RSS_SLACK / 2**20:.0f} MiB)")
