"""procwire.get_context and the multiprocessing names procwire re-exports.

The same program, written for multiprocessing's context API, runs with
``multiprocessing`` and with ``procwire`` as its library and must compute the
same results, under fork, spawn and forkserver.
"""
from __future__ import annotations

import ast
import importlib
import multiprocessing
import os
import pickle
import subprocess
import sys
import types

import pytest

import procwire
from procwire.context import Context

JOIN = 60
START_METHODS = ("fork", "spawn", "forkserver")


def _worker(i, q, jq, sq, conn, lock, rlock, sem, bsem, ev, cond, barrier, val, arr, rv, ra):
    from multiprocessing import current_process, parent_process
    assert ev.wait(JOIN)
    with val.get_lock():
        val.value += 1
    with lock:
        val.value += 10  # a Value's own lock and a separate Lock: both mutually exclusive here
    with rlock, rlock:
        arr[i] = i + 0.5
    with sem, bsem:
        ra[i] = rv.value + i
    q.put(("q", i, current_process().name != "MainProcess", parent_process() is not None))
    sq.put(("sq", i))
    item = jq.get(timeout=JOIN)
    jq.task_done()
    q.put(("jq", item))
    barrier.wait(JOIN)
    with cond:
        cond.notify_all()
    with lock:
        conn.send(i * i)


def _connect_and_echo(libname: str, address) -> None:
    connection = importlib.import_module(f"{libname}.connection")
    with connection.Client(address, authkey=b"program key") as conn:
        conn.send(conn.recv().upper())


def program(lib, method: str) -> dict:
    """Written for multiprocessing: ``lib`` is the multiprocessing module or procwire."""
    ctx = lib.get_context(method)
    q, jq, sq = ctx.Queue(), ctx.JoinableQueue(), ctx.SimpleQueue()
    a, b = ctx.Pipe()
    lock, rlock = ctx.Lock(), ctx.RLock()
    sem, bsem = ctx.Semaphore(2), ctx.BoundedSemaphore(1)
    ev, cond, barrier = ctx.Event(), ctx.Condition(), ctx.Barrier(3)
    val, arr = ctx.Value("i", 0), ctx.Array("d", 4)
    rv, ra = ctx.RawValue("i", 5), ctx.RawArray("b", 3)
    procs = [ctx.Process(target=_worker, args=(i, q, jq, sq, b, lock, rlock, sem, bsem, ev, cond,
                                               barrier, val, arr, rv, ra)) for i in range(2)]
    for p in procs:
        p.start()
    children = len(ctx.active_children())
    ev.set()
    jq.put("job-a")
    jq.put("job-b")
    from_q = sorted(q.get(timeout=JOIN) for _ in range(4))
    from_sq = sorted(sq.get() for _ in range(2))
    jq.join()
    barrier.wait(JOIN)
    squares = sorted(a.recv() for _ in range(2))
    for p in procs:
        p.join(JOIN)
    # multiprocessing.connection: Listener/Client with an authkey, and wait().
    connection = importlib.import_module(f"{lib.__name__}.connection")
    with connection.Listener(("127.0.0.1", 0), authkey=b"program key") as listener:
        p = ctx.Process(target=_connect_and_echo, args=(lib.__name__, listener.address))
        p.start()
        with listener.accept() as conn:
            conn.send("over the listener")
            ready = connection.wait([conn], JOIN)
            echoed = (len(ready), conn.recv())
        p.join(JOIN)
        procs.append(p)
    result = {
        "echoed": echoed,
        "types": None,
        "from_q": from_q, "from_sq": from_sq, "squares": squares,
        "val": val.value, "arr": list(arr), "ra": list(ra),
        "children_running": children, "children_after": len(ctx.active_children()),
        "exitcodes": [p.exitcode for p in procs],
        "start_method": ctx.get_start_method(),
        "cpu_count": ctx.cpu_count() == multiprocessing.cpu_count(),
        "main": ctx.current_process().name, "parent": ctx.parent_process(),
    }
    result["types"] = {type(o).__module__.split(".")[0] for o in (q, jq, sq, a, lock, ev, barrier)}
    for o in (q, jq, sq, a, b):
        o.close()
    return result


def _with_multiprocessing(method: str) -> dict:
    """The program's results with multiprocessing itself, in a fresh interpreter.

    (multiprocessing keeps its shared-memory heap open for the rest of the
    process, which the leak check would report.)
    """
    here = os.path.dirname(os.path.abspath(__file__))
    code = (f"import sys; sys.path.insert(0, {here!r}); import multiprocessing, test_context; "
            f"print(repr(test_context.program(multiprocessing, {method!r})))")
    out = subprocess.run([sys.executable, "-c", code], check=True, timeout=JOIN * 2,
                         capture_output=True, text=True).stdout
    return ast.literal_eval(out.strip().splitlines()[-1])


@pytest.mark.parametrize("method", START_METHODS)
def test_a_multiprocessing_program_runs_unchanged(method):
    theirs = _with_multiprocessing(method)
    ours = program(procwire, method)
    assert theirs.pop("types") == {"multiprocessing"}
    assert ours.pop("types") == {"procwire"}
    assert ours == theirs
    assert ours["val"] == 22 and ours["arr"] == [0.5, 1.5, 0.0, 0.0] and ours["ra"] == [5, 6, 0]
    assert ours["exitcodes"] == [0, 0, 0] and ours["start_method"] == method
    assert ours["echoed"] == (1, "OVER THE LISTENER")


def test_context_api_mirrors_multiprocessing():
    for method in START_METHODS:
        ctx = procwire.get_context(method)
        assert isinstance(ctx, Context)
        assert procwire.get_context(method) is ctx
        assert ctx.get_context() is ctx
        assert ctx.get_context("spawn") is procwire.get_context("spawn")
        assert ctx.get_start_method() == method
        assert ctx.Process is multiprocessing.get_context(method).Process
        assert pickle.loads(pickle.dumps(ctx)) is ctx
        assert ctx.get_all_start_methods() == multiprocessing.get_all_start_methods()
    ctx = procwire.get_context("spawn")
    missing = [name for name in dir(multiprocessing.get_context("spawn"))
               if not name.startswith("_") and not hasattr(ctx, name)]
    assert missing == []
    assert ctx.AuthenticationError is multiprocessing.AuthenticationError
    assert ctx.TimeoutError is multiprocessing.TimeoutError
    # The default context follows multiprocessing's.
    assert procwire.get_context().get_start_method() == multiprocessing.get_start_method()


def test_unknown_method_is_a_value_error_listing_the_valid_ones():
    with pytest.raises(ValueError, match="cannot find context for 'threads'.*'fork'.*'spawn'"):
        procwire.get_context("threads")
    with pytest.raises(TypeError, match="keyword"):
        procwire.get_context("spawn", decode=True)


def test_objects_accept_ctx_like_multiprocessing():
    ctx = procwire.get_context("spawn")
    mp_ctx = multiprocessing.get_context("spawn")
    made = [procwire.Queue(ctx=ctx), procwire.SimpleQueue(ctx=mp_ctx), procwire.Lock(ctx=ctx),
            procwire.Event(ctx=mp_ctx), procwire.Semaphore(1, ctx=ctx),
            procwire.Value("i", 1, ctx=ctx), procwire.Array("i", 2, ctx=mp_ctx)]
    assert len(made) == 7
    made[0].close()
    made[1].close()


def test_multiprocessing_names_are_reexported():
    names = ["Process", "current_process", "parent_process", "active_children", "cpu_count",
             "freeze_support", "get_all_start_methods", "get_start_method", "set_start_method",
             "set_executable", "set_forkserver_preload", "get_logger", "log_to_stderr",
             "allow_connection_pickling", "Manager", "AuthenticationError", "BufferTooShort",
             "ProcessError", "TimeoutError"]
    for name in names:
        assert getattr(procwire, name) is getattr(multiprocessing, name), name
        assert name in procwire.__all__
    assert procwire.connection.Listener is procwire.Listener
    assert isinstance(procwire.context, types.ModuleType)


def test_import_procwire_stays_cheap():
    code = ("import sys, procwire; bad = [m for m in ('multiprocessing', 'socket', "
            "'procwire.connection', 'procwire.context') if m in sys.modules]; "
            "assert not bad, bad; procwire.get_context; assert 'multiprocessing' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=JOIN)


def test_manager_is_multiprocessings():
    with procwire.get_context("spawn").Manager() as manager:
        d = manager.dict()
        d["x"] = 1
        assert dict(d) == {"x": 1}


# -- the plug-in points: procwire.pool and procwire.redis ---------------------------
# A stand-in module records what the context hands over; the real packages are
# tested in their own suites.

def test_pool_and_executor_receive_this_context(monkeypatch):
    calls = []
    pool_mod = types.ModuleType("procwire.pool")
    pool_mod.Pool = lambda *a, **k: calls.append(("Pool", a, k)) or "pool"
    pool_mod.ProcessPoolExecutor = lambda *a, **k: calls.append(("PPE", a, k)) or "executor"
    monkeypatch.setitem(sys.modules, "procwire.pool", pool_mod)
    ctx = procwire.get_context("forkserver")
    assert ctx.Pool(3, None, (), 7) == "pool"
    assert ctx.ProcessPoolExecutor(2, max_tasks_per_child=5) == "executor"
    assert calls[0] == ("Pool", (3, None, (), 7), {"context": ctx})
    assert calls[1] == ("PPE", (2,), {"mp_context": ctx, "initializer": None, "initargs": (),
                                      "max_tasks_per_child": 5})


def test_pool_without_procwire_pool_says_so(monkeypatch):
    monkeypatch.setitem(sys.modules, "procwire.pool", None)  # import raises ModuleNotFoundError
    with pytest.raises(NotImplementedError, match="procwire.pool is not available"):
        procwire.get_context("spawn").Pool()


def test_redis_urls_go_to_procwire_redis(monkeypatch):
    calls = []
    redis_mod = types.ModuleType("procwire.redis")
    redis_mod.get_context = lambda url, **k: calls.append((url, k)) or "redis context"
    monkeypatch.setitem(sys.modules, "procwire.redis", redis_mod)
    assert procwire.get_context("redis://localhost:6379/0") == "redis context"
    assert procwire.get_context("rediss://h:1/2", ssl_ca_certs="x") == "redis context"
    assert calls == [("redis://localhost:6379/0", {}), ("rediss://h:1/2", {"ssl_ca_certs": "x"})]
    monkeypatch.setitem(sys.modules, "procwire.redis", None)
    with pytest.raises(NotImplementedError, match="procwire.redis is not available"):
        procwire.get_context("redis://localhost:6379/0")
