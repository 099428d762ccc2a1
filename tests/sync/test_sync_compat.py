"""multiprocessing compatibility of the sync and shared constructors (issue 11
item 7) and of Event's repr (issue 9's conformance list)."""
from __future__ import annotations

import inspect
import multiprocessing as mp
import multiprocessing.sharedctypes as mp_sharedctypes
import multiprocessing.synchronize as mp_synchronize
import re
import threading

import pytest
from synchelpers import (
    collect_before_leak_check,  # noqa: F401  (autouse)
    run_py,
    unique,
)

import procwire
from procwire import Condition, Event, Lock, RLock

pytestmark = pytest.mark.timeout(120)

SYNC = ["Lock", "RLock", "Semaphore", "BoundedSemaphore", "Condition", "Event", "Barrier"]
SHARED = ["Value", "Array", "RawValue", "RawArray"]


def _params(fn):
    return [p for p in inspect.signature(fn).parameters.values() if p.name != "self"]


@pytest.mark.parametrize("name", SYNC + SHARED)
def test_every_multiprocessing_parameter_is_accepted_the_same_way(name):
    theirs = getattr(mp_synchronize if name in SYNC else mp_sharedctypes, name)
    ours = {p.name: p for p in _params(getattr(procwire, name))}
    for p in _params(theirs):
        assert p.name in ours, f"{name} lacks parameter {p.name}"
        q = ours[p.name]
        assert q.kind == p.kind, (name, p.name, q.kind, p.kind)
        if p.default is not inspect.Parameter.empty:
            assert q.default == p.default, (name, p.name, q.default, p.default)
    # ... and the context methods' parameters (ctx.Lock(), ctx.Value(...)).
    for p in _params(getattr(mp.context.BaseContext, name)):
        assert p.name in ours and ours[p.name].kind == p.kind, (name, p.name)


# The methods procwire's primitives inherit from their native types: each has a
# text signature (inspect.signature works on it), the same as multiprocessing's.
NATIVE_METHODS = {"Lock": ["acquire", "release", "__enter__", "__exit__"],
                  "RLock": ["acquire", "release", "__enter__", "__exit__"],
                  "Semaphore": ["acquire", "release", "get_value", "__enter__", "__exit__"],
                  "BoundedSemaphore": ["acquire", "release", "get_value"],
                  "Event": ["is_set", "set", "clear", "wait"]}


@pytest.mark.parametrize("name", sorted(NATIVE_METHODS))
def test_native_methods_have_multiprocessings_signatures(name):
    ours, theirs = getattr(procwire, name)(), getattr(mp, name)()
    try:
        for method in NATIVE_METHODS[name]:
            sig = inspect.signature(getattr(ours, method))
            assert sig == inspect.signature(getattr(theirs, method)), (name, method, sig)
    finally:
        ours.close()


def test_constructors_take_ctx_as_multiprocessing_passes_it():
    ctx = mp.get_context("spawn")
    objs = [procwire.Lock(ctx=ctx), procwire.RLock(ctx=ctx), procwire.Semaphore(2, ctx=ctx),
            procwire.BoundedSemaphore(2, ctx=ctx), procwire.Condition(None, ctx=ctx),
            procwire.Event(ctx=ctx), procwire.Barrier(2, None, None, ctx=ctx)]
    try:
        assert objs[2].get_value() == 2 and objs[6].parties == 2
    finally:
        for o in objs:
            o.close()
    v = procwire.Value("i", 5, lock=True, ctx=ctx)
    a = procwire.Array("d", [1.0, 2.0], lock=False, ctx=ctx)
    assert v.value == 5 and a[:] == [1.0, 2.0]
    assert procwire.RawValue("h", 3).value == 3 and procwire.RawArray("i", 2)[:] == [0, 0]


def test_value_and_array_lock_argument_as_in_sharedctypes():
    for lock in (procwire.Lock(), procwire.RLock()):
        v = procwire.Value("i", 1, lock=lock)
        assert v.get_lock() is lock
        with v.get_lock():
            v.get_obj().value += 1
        assert v.value == 2
        a = procwire.Array("i", 3, lock=lock)
        assert a.get_lock() is lock
    assert isinstance(procwire.Value("i", 1, lock=True).get_lock(), RLock)
    raw = procwire.Value("i", 1, lock=False)
    assert not hasattr(raw, "get_lock") and raw.value == 1
    with pytest.raises(AttributeError, match="acquire"):
        procwire.Value("i", 1, lock=object())  # multiprocessing's error


def _locks():
    v = procwire.Value("i", 0)
    arr = procwire.Array("i", 2)
    other = Condition()
    return [Lock(), RLock(), v.get_lock(), arr.get_lock(), other.get_lock()], (v, arr, other)


def test_condition_accepts_every_procwire_lock():
    locks, _keep = _locks()
    for lock in locks:
        cond = Condition(lock)
        assert cond.get_lock() is lock
        with cond:
            assert cond.wait(0.01) is False
            cond.notify_all()
        cond.close()


def test_named_condition_over_a_named_values_lock_attaches():
    vn, cn = unique("cv"), unique("cc")
    v = procwire.Value("i", 0, name=vn)
    cond = Condition(v.get_lock(), name=cn)
    try:
        out = run_py(f"""
import procwire
c = procwire.Condition.attach({cn!r})
with c:
    print(type(c.get_lock()).__name__, c.wait(0.01))
""")
        assert out.returncode == 0, out.stderr
        assert out.stdout.split() == ["RLock", "False"]
    finally:
        cond.close()


@pytest.mark.parametrize("foreign", [mp.Lock, mp.RLock, threading.Lock, threading.RLock])
def test_condition_rejects_a_foreign_lock_naming_the_fix(foreign):
    lock = foreign()
    with pytest.raises(TypeError, match=r"procwire\.Lock\(\)") as e:
        Condition(lock)
    assert type(lock).__qualname__ in str(e.value) or type(lock).__name__ in str(e.value)


def test_event_repr_as_multiprocessing():
    # What multiprocessing's own _TestEvent.test_repr checks.
    for event in (Event(), mp.Event()):
        assert re.fullmatch(r"<Event at 0x[0-9a-f]+ unset>", repr(event)), repr(event)
        event.set()
        assert re.fullmatch(r"<Event at 0x[0-9a-f]+ set>", repr(event)), repr(event)
    named = Event(name=unique("ev"))
    assert re.fullmatch(r"<Event at 0x[0-9a-f]+ '.+' unset>", repr(named)), repr(named)
    named.close()
    assert repr(named).endswith(" closed>")
