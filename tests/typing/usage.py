# What a user's type checker sees: checked with `mypy --strict` by
# test_typing.py, never run. A line ending in `# R: <type>` must reveal that
# type; a line ending in `# E: <code>` must be reported with that error code;
# every other line must be clean.
from __future__ import annotations

import ctypes
from typing import Any, reveal_type

import procwire
from procwire import (
    Array,
    Barrier,
    BoundedSemaphore,
    Condition,
    Connection,
    Event,
    JoinableQueue,
    Lock,
    Pipe,
    Queue,
    RawArray,
    RawValue,
    RLock,
    Semaphore,
    SimpleQueue,
    Value,
)

# -- queues: generic in the item type, as typeshed's multiprocessing.Queue ------------

q: Queue[int] = Queue(maxsize=10, capacity=1 << 16)
q.put(1)
q.put(1, True, 0.5)
q.put_nowait(2)
q.put_many([3, 4])
reveal_type(q.get())  # R: int
reveal_type(q.get(timeout=1.0))  # R: int
reveal_type(q.get_nowait())  # R: int
reveal_type(q.get_many(max_messages=8))  # R: list[int]
reveal_type(q.qsize())  # R: int
reveal_type(q.empty())  # R: bool
reveal_type(q.statistics())  # R: procwire.stats.QueueStatistics
reveal_type(q.statistics().messages)  # R: int
q.put("one")  # E: arg-type
q.put_many(["one"])  # E: list-item
q.get(timeout="soon")  # E: call-overload
reveal_type(q.get(copy=False))  # R: procwire._loans.View
with q.loan(8) as buf:
    reveal_type(buf)  # R: memoryview[int]

untyped = Queue()  # no annotation needed: Queue() is Queue[Any]
reveal_type(untyped)  # R: procwire.queue.Queue[Any]
reveal_type(Queue[str]())  # R: procwire.queue.Queue[str]
reveal_type(Queue[bytes].attach("jobs"))  # R: procwire.queue.Queue[bytes]
with Queue[float]() as fq:
    reveal_type(fq)  # R: procwire.queue.Queue[float]

sq: SimpleQueue[str] = SimpleQueue()
reveal_type(sq.get())  # R: str
jq: JoinableQueue[tuple[int, str]] = JoinableQueue()
jq.put((1, "a"))
jq.task_done()
reveal_type(jq.join(timeout=1))  # R: bool
reveal_type(jq.get()[1])  # R: str
jq.put((1, 2))  # E: arg-type
accepts_queue: Queue[tuple[int, str]] = jq  # a JoinableQueue is a Queue

# -- pipes and connections ---------------------------------------------------------------

a, b = Pipe()
reveal_type(a)  # R: procwire.pipe.Connection[Any, Any]
a.send({"any": "picklable"})
reveal_type(b.recv(timeout=1.0))  # R: Any
a.send_bytes(b"xyz", 1, 2)
reveal_type(b.recv_bytes())  # R: bytes
reveal_type(b.recv_bytes(copy=False))  # R: procwire._loans.View
reveal_type(b.recv_bytes_into(bytearray(8)))  # R: int
reveal_type(b.poll(0.1))  # R: bool
reveal_type(a.fileno())  # R: int
reveal_type(procwire.connection.wait([a, b, 0], timeout=0))  # R: list[Any]
procwire.connection.wait([object()])  # E: list-item
a.send_bytes("text")  # E: arg-type
conn: Connection = a  # bare: Connection[Any, Any]
conn.close()


def pipe_worker(jobs: Connection[int, str]) -> None:  # sends ints, receives strs
    reveal_type(jobs.recv())  # R: str
    jobs.send(3)
    jobs.send("3")  # E: arg-type


def bare_generics(q: Queue, c: Connection) -> None:  # no type arguments: Any
    reveal_type(q)  # R: procwire.queue.Queue[Any]
    reveal_type(c)  # R: procwire.pipe.Connection[Any, Any]

# -- locks and the other primitives ------------------------------------------------------

lock = Lock()
reveal_type(lock.acquire(timeout=1))  # R: bool
lock.release()
with lock:
    pass
reveal_type(lock.owner_died)  # R: bool
lock.make_consistent()
reveal_type(Lock.attach("a-lock"))  # R: procwire.sync.Lock
reveal_type(RLock.attach("an-rlock"))  # R: procwire.sync.RLock
lock.acquire(block=True, timeout="1")  # E: arg-type

sem = Semaphore(2)
reveal_type(sem.get_value())  # R: int
reveal_type(BoundedSemaphore(1).acquire(False))  # R: bool
ev = Event()
ev.set()
reveal_type(ev.wait(0.5))  # R: bool
reveal_type(ev.is_set())  # R: bool
cond = Condition(RLock())
with cond:
    reveal_type(cond.wait(0.1))  # R: bool
    reveal_type(cond.wait_for(lambda: 42, timeout=0.1))  # R: Any
    cond.notify_all()
Condition(lock=3)  # E: arg-type
bar = Barrier(2, timeout=5)
reveal_type(bar.wait())  # R: int
reveal_type(bar.parties)  # R: int
reveal_type(bar.broken)  # R: bool

# -- shared values and arrays --------------------------------------------------------------

counter = Value("i", 0)
with counter.get_lock():
    counter.value += 1
arr = Array(ctypes.c_double, 10, lock=False)
raw = RawArray("q", [1, 2, 3])
rv = RawValue(ctypes.c_int, 7)
view = memoryview(Array("d", 4))
same: Any = Value.attach("counter")
Value.attach(3)  # E: arg-type

# -- contexts --------------------------------------------------------------------------------

ctx = procwire.get_context("spawn")
reveal_type(ctx)  # R: procwire.context.Context
reveal_type(ctx.Queue())  # R: procwire.queue.Queue[Any]
reveal_type(ctx.Lock())  # R: procwire.sync.Lock
reveal_type(ctx.Pipe()[0])  # R: procwire.pipe.Connection[Any, Any]
reveal_type(ctx.Pool(2))  # R: procwire.pool.pool.Pool
reveal_type(procwire.Pool(2).map(abs, [-1]))  # R: list[Any]
p = ctx.Process(target=print, args=(1,))
reveal_type(p.exitcode)  # R: int | None
procwire.get_context(3)  # E: call-overload

# -- the lazily imported names are visible to the type checker --------------------------------

reveal_type(procwire.Queue[int].attach)  # R: def (name: str) -> procwire.queue.Queue[int]
reveal_type(procwire.cpu_count())  # R: int
reveal_type(procwire.Listener(("127.0.0.1", 0)))  # R: procwire.connection.Listener
reveal_type(procwire.RawValue.attach)  # R: def (name: str, typecode_or_type: Any =) -> Any
_ = procwire.NoSuchThing  # E: attr-defined
