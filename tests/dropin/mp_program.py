"""A program written for multiprocessing, run as it is and with procwire's imports.

tests/dropin/test_dropin.py runs this file twice per start method: as written,
and with the two import lines below changed to procwire's (nothing else), and
compares what the two print. Each part is a function that returns plain data
(no timings, no pids); the program prints one JSON object, {part: result}, or
{part: {"error": ...}} for a part that raised.

Usage: python mp_program.py START_METHOD [PART ...]
"""
import hashlib
import json
import multiprocessing as mp
import os
import sys
import traceback
from multiprocessing.connection import Client, Listener, wait

import numpy as np

TIMEOUT = 60  # every blocking call that takes a timeout gets this one


# -- Queue with maxsize=0: large numpy arrays and a backlog before any consumer --

def _sum_arrays(q, out):
    got = []
    while True:
        a = q.get(timeout=TIMEOUT)
        if a is None:
            break
        got.append((a.shape, str(a.dtype), hashlib.sha256(a.tobytes()).hexdigest()))
    out.put(got)


def queue_large_arrays(ctx):
    q, out = ctx.Queue(), ctx.Queue()
    arrays = [np.arange(n, dtype=dtype) for n, dtype in
              ((1 << 20, np.float64), (3 << 20, np.int32), (100, np.uint8))]  # 8 MiB, 12 MiB, 100 B
    for a in arrays:  # put before the consumer starts: nothing reads yet
        q.put(a)
    q.put(None)
    p = ctx.Process(target=_sum_arrays, args=(q, out))
    p.start()
    got = out.get(timeout=TIMEOUT)
    p.join(TIMEOUT)
    return {"arrays": [[list(shape), dtype, digest] for shape, dtype, digest in got],
            "exitcode": p.exitcode}


def _count_jobs(q, out):
    n = total = 0
    for job in iter(lambda: q.get(timeout=TIMEOUT), None):
        n += 1
        total += job[0]
    out.put((n, total))


def queue_backlog_before_consumer(ctx):
    q, out = ctx.Queue(), ctx.Queue()
    jobs = 300_000  # about 10 MiB of small messages, all put before any consumer
    for i in range(jobs):
        q.put((i, "job"))
    q.put(None)
    p = ctx.Process(target=_count_jobs, args=(q, out))
    p.start()
    result = out.get(timeout=TIMEOUT)
    p.join(TIMEOUT)
    return {"count": result[0], "sum": result[1], "exitcode": p.exitcode}


# -- JoinableQueue ------------------------------------------------------------

def _square_tasks(tasks, results):
    while True:
        n = tasks.get(timeout=TIMEOUT)
        if n is None:
            tasks.task_done()
            break
        results.put(n * n)
        tasks.task_done()


def joinable_queue(ctx):
    tasks, results = ctx.JoinableQueue(), ctx.Queue()
    workers = [ctx.Process(target=_square_tasks, args=(tasks, results)) for _ in range(2)]
    for w in workers:
        w.start()
    for n in range(100):
        tasks.put(n)
    for _ in workers:
        tasks.put(None)
    tasks.join()
    squares = sorted(results.get(timeout=TIMEOUT) for _ in range(100))
    for w in workers:
        w.join(TIMEOUT)
    return {"squares": squares, "exitcodes": [w.exitcode for w in workers]}


# -- Pipe -----------------------------------------------------------------------

def _echo(conn, one_way):
    for msg in iter(conn.recv, "stop"):
        conn.send(("echo", msg))
    conn.send_bytes(b"raw bytes")
    one_way.send({"from": "child", "n": 3})
    one_way.close()
    conn.close()


def pipe(ctx):
    parent, child = ctx.Pipe()
    r, w = ctx.Pipe(duplex=False)
    p = ctx.Process(target=_echo, args=(child, w))
    p.start()
    child.close()
    w.close()
    replies = []
    for msg in (1, "two", [3.0, None], {"four": (4,)}, b"x" * 200_000):
        parent.send(msg)
        kind, back = parent.recv()
        replies.append([kind, back if not isinstance(back, bytes) else len(back)])
    parent.send("stop")
    raw = parent.recv_bytes()
    one_way = r.recv()
    p.join(TIMEOUT)
    eof = False
    try:
        r.recv()
    except EOFError:
        eof = True
    parent.close()
    r.close()
    return {"replies": replies, "raw": raw.decode(), "one_way": one_way,
            "eof_after_close": eof, "readable_writable": [r.readable, r.writable],
            "exitcode": p.exitcode}


# -- Lock, Value, Array, Event ----------------------------------------------------

def _add(lock, counter, arr, index, started, go):
    started.set()
    go.wait(TIMEOUT)
    for _ in range(2000):
        with lock:
            counter.value += 1
    with arr.get_lock():
        arr[index] = index * 10 + 1


def lock_value_array_event(ctx):
    lock = ctx.Lock()
    counter = ctx.Value("i", 0)
    arr = ctx.Array("d", 4)
    go = ctx.Event()
    started = [ctx.Event() for _ in range(4)]
    procs = [ctx.Process(target=_add, args=(lock, counter, arr, i, started[i], go))
             for i in range(4)]
    for p in procs:
        p.start()
    all_started = all(e.wait(TIMEOUT) for e in started)
    was_set = go.is_set()
    go.set()
    for p in procs:
        p.join(TIMEOUT)
    raw = ctx.RawArray("q", [1, 2, 3])
    return {"counter": counter.value, "array": list(arr), "started": all_started,
            "go_was_set": was_set, "raw": list(raw), "lock_free": lock.acquire(False),
            "exitcodes": [p.exitcode for p in procs]}


# -- Listener / Client with an authkey, and connection.wait ------------------------

def _client(address, key, n):
    with Client(address, authkey=key) as conn:
        conn.send(("hello", n))
        reply = conn.recv()
        conn.send(("thanks", reply))


def listener_client_authkey(ctx):
    key = b"a shared secret"
    results = []
    with Listener(("127.0.0.1", 0), authkey=key) as listener:
        procs = [ctx.Process(target=_client, args=(listener.address, key, n)) for n in range(2)]
        for p in procs:
            p.start()
        for _ in procs:
            with listener.accept() as conn:
                hello = conn.recv()
                conn.send(hello[1] * 100)
                results.append([hello, conn.recv()])
        for p in procs:
            p.join(TIMEOUT)
    results.sort()
    return {"exchanges": [[list(a), [b[0], b[1]]] for a, b in results],
            "exitcodes": [p.exitcode for p in procs]}


def _reply_later(conn, value, gate):
    gate.wait(TIMEOUT)
    conn.send(value)
    conn.close()


def connection_wait(ctx):
    ends, procs, gates = [], [], []
    for value in ("a", "b", "c"):
        mine, theirs = ctx.Pipe()
        gate = ctx.Event()
        p = ctx.Process(target=_reply_later, args=(theirs, value, gate))
        p.start()
        theirs.close()
        ends.append(mine)
        procs.append(p)
        gates.append(gate)
    nothing_yet = wait(ends, timeout=0.05)
    got = []
    for gate in gates:  # one at a time: wait() must report exactly that one
        gate.set()
        ready = wait(ends, timeout=TIMEOUT)
        for conn in ready:
            got.append(conn.recv())
            ends.remove(conn)
            conn.close()
    sentinels = wait([p.sentinel for p in procs], timeout=TIMEOUT)
    for p in procs:
        p.join(TIMEOUT)
    return {"nothing_yet": len(nothing_yet), "got": got,
            "sentinels_ready": len(sentinels) >= 1,
            "exitcodes": [p.exitcode for p in procs]}


# -- Pool -----------------------------------------------------------------------

def _square(n):
    return n * n


def _fail_on_three(n):
    if n == 3:
        raise ValueError("three")
    return n


def pool(ctx):
    with ctx.Pool(2) as p:
        mapped = p.map(_square, range(50), chunksize=7)
        star = p.starmap(pow, [(2, 5), (3, 3)])
        unordered = sorted(p.imap_unordered(_square, range(20)))
        ordered = list(p.imap(_square, range(10)))
        one = p.apply_async(_square, (12,)).get(TIMEOUT)
        try:
            p.apply(_fail_on_three, (3,))
            error = None
        except ValueError as e:
            error = str(e)
        p.close()
        p.join()
    return {"map": mapped, "starmap": star, "imap_unordered": unordered, "imap": ordered,
            "apply_async": one, "raised": error}


# -- Condition, Semaphore, Barrier, SimpleQueue -----------------------------------

def _party(barrier, sem, cond, shared, out):
    index = barrier.wait(TIMEOUT)
    with sem:
        with cond:
            shared.value += 1
            cond.notify_all()
    out.put(index)


def condition_semaphore_barrier(ctx):
    barrier = ctx.Barrier(3)
    sem = ctx.BoundedSemaphore(2)
    cond = ctx.Condition()
    shared = ctx.Value("i", 0)
    out = ctx.SimpleQueue()
    procs = [ctx.Process(target=_party, args=(barrier, sem, cond, shared, out))
             for _ in range(2)]
    for p in procs:
        p.start()
    mine = barrier.wait(TIMEOUT)
    with cond:
        done = cond.wait_for(lambda: shared.value == 2, TIMEOUT)
    indexes = sorted([out.get(), out.get(), mine])
    for p in procs:
        p.join(TIMEOUT)
    over_released = False
    try:
        sem.release()
    except ValueError:
        over_released = True
    return {"barrier_indexes": indexes, "all_arrived": done, "value": shared.value,
            "bounded_semaphore_refuses_over_release": over_released,
            "empty": out.empty(), "exitcodes": [p.exitcode for p in procs]}


PARTS = {f.__name__: f for f in (queue_large_arrays, queue_backlog_before_consumer,
                                 joinable_queue, pipe, lock_value_array_event,
                                 listener_client_authkey, connection_wait, pool,
                                 condition_semaphore_barrier)}


def main(argv):
    ctx = mp.get_context(argv[0])
    out = {}
    for name in argv[1:] or list(PARTS):
        try:
            out[name] = PARTS[name](ctx)
        except Exception as e:  # reported per part; the test compares
            out[name] = {"error": f"{type(e).__name__}: {e}",
                         "traceback": traceback.format_exc()}
    out["start_method"] = ctx.get_start_method()
    sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()
    os._exit(0)  # what is left (a queue's feeder thread, say) must not decide the exit


if __name__ == "__main__":
    main(sys.argv[1:])
