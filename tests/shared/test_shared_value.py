"""Value, Array, RawValue and RawArray against multiprocessing.sharedctypes,
plus names, numpy views, processes, owner death and the lost-update experiment."""
from __future__ import annotations

import ctypes
import multiprocessing as mp
import os
import pickle
import signal
import sys
import time
import warnings

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "sync"))

from synchelpers import (
    collect_before_leak_check,  # noqa: F401  (autouse)
    join_all,
    run_py,
    unique,
)

import procwire
from procwire import Array, OwnerDiedWarning, RawArray, SegmentError, Value
from procwire.experiments import lost_update

pytestmark = pytest.mark.timeout(180)

# multiprocessing keeps its shared-memory arena (an open descriptor) for the
# life of the process: create it now, big enough for every test below, so that
# the leak check does not blame the first test that uses multiprocessing.Value.
_warm = mp.RawArray("b", 1 << 20)
del _warm

IMPLS = [pytest.param(procwire, id="procwire"), pytest.param(mp, id="multiprocessing")]


# ------------------------------------------------------------ API parity


@pytest.mark.parametrize("impl", IMPLS)
def test_value_api(impl):
    v = impl.Value("i", 7)
    assert v.value == 7
    v.value += 1
    assert v.value == 8
    assert isinstance(v.get_obj(), ctypes.c_int)
    with v.get_lock():
        v.value = 9
    with v:
        assert v.value == 9
    assert v.acquire() and (v.release() is None)
    d = impl.Value(ctypes.c_double, 2.5)
    assert d.value == 2.5
    raw = impl.Value("d", 1.0, lock=False)
    assert type(raw) is ctypes.c_double
    b = impl.Value("b")
    assert b.value == 0


@pytest.mark.parametrize("impl", IMPLS)
def test_array_api(impl):
    a = impl.Array("i", [1, 2, 3, 4])
    assert len(a) == 4
    assert a[0] == 1 and a[-1] == 4
    assert a[1:3] == [2, 3]
    assert list(a) == [1, 2, 3, 4]
    a[0] = 10
    a[1:3] = [20, 30]
    assert a[:] == [10, 20, 30, 4]
    z = impl.Array("d", 3)
    assert z[:] == [0.0, 0.0, 0.0]
    assert isinstance(a.get_obj(), ctypes.Array)
    s = impl.Array("c", b"hello")
    assert s.value == b"hello" and s.raw == b"hello"
    s.value = b"hi"
    assert s.value == b"hi" and s.raw == b"hi\0lo"
    s.raw = b"world"
    assert s.value == b"world"
    e = impl.Array("i", 0)
    assert len(e) == 0 and e[:] == []


@pytest.mark.parametrize("impl", IMPLS)
def test_raw_api(impl):
    v = impl.RawValue("h", 3)
    assert type(v) is ctypes.c_short and v.value == 3
    a = impl.RawArray("q", [5, 6])
    assert a[:] == [5, 6]
    assert memoryview(a).format in ("<q", "<l")


def _errors(impl):
    out = []
    for fn in (lambda: impl.Value("x"),                 # bad typecode
               lambda: impl.Value("i", "text"),         # wrong initializer
               lambda: impl.Array("i", ["a"]),
               lambda: impl.Array("zz", 3),
               lambda: impl.Array("i", [1, 2])[2],      # index out of range
               lambda: impl.Array("i", 2).__setitem__(5, 1),
               lambda: impl.Array("c", b"ab").__setattr__("value", b"abcdef"),
               lambda: impl.Value("i", 1, lock=object()),
               lambda: impl.RawArray("i", ["x"])):
        try:
            fn()
        except Exception as e:
            out.append(type(e))
        else:
            out.append(None)
    return out


def test_errors_match_multiprocessing():
    assert _errors(procwire) == _errors(mp)


def test_custom_lock_and_get_lock():
    lk = procwire.Lock()
    v = Value("i", 0, lock=lk)
    assert v.get_lock() is lk
    with v:
        assert lk._is_mine()
    rv = Value("i", 0)
    assert isinstance(rv.get_lock(), procwire.RLock)   # as multiprocessing: an RLock
    with rv.get_lock():
        rv.value += 1                                  # re-entrant
    assert rv.value == 1


# -------------------------------------------------------------- numpy


def test_array_is_a_zero_copy_buffer():
    a = Array("d", 4)
    n = np.asarray(a)
    assert n.dtype == np.float64 and n.shape == (4,)
    n[:] = [1, 2, 3, 4]
    assert a[:] == [1.0, 2.0, 3.0, 4.0]
    a[0] = 42
    assert n[0] == 42
    f = np.frombuffer(a, dtype=np.float64)
    assert f[0] == 42
    m = memoryview(a)
    assert m.nbytes == 32 and not m.readonly
    m.release()
    i = np.asarray(Array("i", [1, 2, 3]))
    assert i.dtype == np.int32 and list(i) == [1, 2, 3]


def _numpy_child(a):
    np.asarray(a)[:] += 1


def test_numpy_view_in_child_writes_shared_memory(ctx):
    a = Array("d", [1.0, 2.0, 3.0])
    p = ctx.Process(target=_numpy_child, args=(a,))
    p.start()
    join_all([p])
    assert p.exitcode == 0
    assert a[:] == [2.0, 3.0, 4.0]


# ------------------------------------------------------- other processes


def _bump(v, a, s, raw):
    with v.get_lock():
        v.value += 1
    a[1] = 99
    s.value = b"child"
    raw[0] = 7


def test_every_start_method(ctx):
    v, a, s, raw = Value("i", 1), Array("i", 3), Array("c", 8), RawArray("i", 1)
    p = ctx.Process(target=_bump, args=(v, a, s, raw))
    p.start()
    join_all([p])
    assert p.exitcode == 0
    assert (v.value, a[:], s.value, raw[0]) == (2, [0, 99, 0], b"child", 7)


def test_by_name_from_unrelated_process():
    vn, an, rn = unique("v"), unique("a"), unique("r")
    v = Value("d", 1.5, name=vn)
    a = Array("c", b"abc", name=an)
    r = RawArray("i", [1, 2, 3], name=rn)
    out = run_py(f"""
import procwire, numpy
v = procwire.Value.attach({vn!r})
with v.get_lock():
    v.value += 1
a = procwire.Array.attach({an!r})
a.value = b"xyz"
r = procwire.RawArray.attach({rn!r})
numpy.asarray(r)[:] *= 10
print(type(v.get_lock()).__name__, v.name)
""")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["RLock", vn]
    assert v.value == 2.5 and a.value == b"xyz" and r[:] == [10, 20, 30]
    with pytest.raises(SegmentError, match="value, not a array"):
        Array.attach(vn)
    with pytest.raises(FileNotFoundError):
        Value.attach(unique("none"))
    pickled = pickle.loads(pickle.dumps(v))
    assert pickled.value == 2.5
    for o in (v, a):
        o.unlink()
    del r  # its name goes when collected


def test_custom_ctypes_type_by_name():
    class Point(ctypes.Structure):
        _fields_ = [("x", ctypes.c_int), ("y", ctypes.c_double)]

    name = unique("pt")
    v = Value(Point, 1, 2.5, name=name)
    with pytest.raises(TypeError, match="custom ctypes type"):
        Value.attach(name)
    w = Value.attach(name, Point)
    assert (w.get_obj().x, w.get_obj().y) == (1, 2.5)
    with pytest.raises(TypeError, match="bytes"):
        Value.attach(name, "i")
    v.unlink()


def test_named_value_needs_a_findable_lock():
    with pytest.raises(ValueError, match="named"):
        Value("i", 0, lock=procwire.Lock(), name=unique("x"))
    ln = unique("lk")
    lk = procwire.Lock(name=ln)
    vn = unique("vl")
    v = Value("i", 0, lock=lk, name=vn)
    w = Value.attach(vn)
    assert type(w.get_lock()) is procwire.Lock and w.get_lock().name == ln
    for o in (w.get_lock(), lk):
        o.close()
    v.unlink()


# -------------------------------------------------------------- owner death


def _die_in_value_lock(v, held):
    v.get_lock().acquire()
    v.value = -1              # half-done work
    held.set()
    time.sleep(60)


def test_value_lock_holder_killed(ctx):
    v, held = Value("i", 0), procwire.Event()
    p = ctx.Process(target=_die_in_value_lock, args=(v, held))
    p.start()
    assert held.wait(30)
    os.kill(p.pid, signal.SIGKILL)
    join_all([p])
    lock = v.get_lock()
    with pytest.warns(OwnerDiedWarning):
        assert lock.acquire(timeout=10)
    assert lock.owner_died
    v.value = 0                # repair
    lock.make_consistent()
    lock.release()
    assert v.value == 0 and not lock.owner_died


def _pairs(a, started):
    started.set()
    while True:
        with a.get_lock():
            a[0] += 1
            a[1] += 1


def test_sigkill_inside_array_lock_100_times():
    ctx = mp.get_context("fork")
    a = Array("q", 2)
    lock = a.get_lock()
    for _ in range(100):
        started = procwire.Event()
        p = ctx.Process(target=_pairs, args=(a, started))
        p.start()
        assert started.wait(30)
        os.kill(p.pid, signal.SIGKILL)
        join_all([p])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", OwnerDiedWarning)
            assert lock.acquire(timeout=10)
        if lock.owner_died:
            a[1] = a[0]
            lock.make_consistent()
        assert a[0] == a[1]
        lock.release()


# --------------------------------------------------------- lost updates


def test_lost_update_with_lock_is_exact():
    r = lost_update(processes=2, increments=20_000, use_lock=True)
    assert (r.expected, r.actual, r.lost) == (40_000, 40_000, 0)
    assert r.seconds > 0 and r.use_lock


def test_lost_update_without_lock_loses_updates():
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs 2 CPUs for the race to show reliably")
    # Three tries: the race is real but scheduling is not deterministic.
    results = [lost_update(processes=2, increments=200_000, use_lock=False) for _ in range(3)]
    assert any(r.lost > 0 for r in results), results
    assert all(r.actual <= r.expected for r in results)


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_lost_update_start_methods(method):
    r = lost_update(processes=2, increments=5_000, use_lock=True, start_method=method)
    assert r.lost == 0 and r.start_method == method


def test_lost_update_bad_input():
    with pytest.raises(ValueError):
        lost_update(processes=0)


def _double_point(p):
    p.x *= 2
    p.y *= 2


class _Pt(ctypes.Structure):
    _fields_ = [("x", ctypes.c_int), ("y", ctypes.c_double)]


def test_synchronized_structure_has_locked_fields_like_multiprocessing(ctx):
    # multiprocessing.sharedctypes.synchronized gives a Structure one locked
    # property per field; its _TestSharedCTypes.test_synchronize relies on it.
    v = Value(_Pt, 3, 2.0)
    assert (v.x, v.y) == (3, 2.0)
    p = ctx.Process(target=_double_point, args=(v,))
    p.start()
    p.join(60)
    assert p.exitcode == 0
    assert (v.x, v.y) == (6, 4.0)
    assert type(v).__name__ == "Synchronized_Pt" and v.get_lock().statistics()["locked"] is False


@pytest.mark.parametrize("code", ["z", "Z", "P", "O", "x"])
def test_attach_refuses_a_corrupt_or_pointer_type_code(code):
    # A segment's type code is untrusted: 'z' (c_char_p) would make every read
    # dereference an address taken from shared memory. (Found by the segment
    # fuzzer: a random byte turned an Array's 'd' into 'Z' and list() crashed.)
    from procwire import _segment
    name = unique("tc")
    a = Array("d", range(8), name=name)
    try:
        path = _segment.path_of(name)
        with open(path, "r+b") as f:
            data = f.read()
            at = 64 + 320  # after the common header: pw_shared.typecode (layout.h)
            assert data[at:at + 2] == b"d\0", "the layout moved: update the typecode offset"
            f.seek(at)
            f.write(code.encode())
        for attach in (Array.attach, RawArray.attach):
            with pytest.raises(SegmentError, match=f"unknown element type code '{code}'"):
                attach(name)
        # The caller who knows the type may still say it.
        assert RawArray.attach(name, "d")[:] == [float(i) for i in range(8)]
    finally:
        a.unlink()
