"""fileno() on the queues: select, selectors, multiprocessing.connection.wait, add_reader.

The descriptor is readable while a message waits (see procwire._aio), from any
producer: a child of any start method, or an unrelated process attached by name.
"""
from __future__ import annotations

import asyncio
import os
import select
import selectors
import subprocess
import sys
import textwrap
import threading
import uuid
from multiprocessing.connection import wait

import pytest

from procwire import Empty, JoinableQueue, Queue, SimpleQueue
from procwire._segment import Segment

BOUND = 30  # seconds: a bound for a hang, not a speed check


def readable(fd_or_obj, timeout=0.0):
    return bool(select.select([fd_or_obj], [], [], timeout)[0])


def watcher_threads():
    return [t for t in threading.enumerate() if t.name.startswith("procwire")]


@pytest.mark.parametrize("cls", [Queue, SimpleQueue, JoinableQueue])
def test_readable_exactly_while_a_message_waits(cls):
    q = cls()
    try:
        fd = q.fileno()
        assert q.fileno() == fd  # one descriptor per handle
        assert not readable(fd)
        q.put("a")
        q.put("b")
        assert readable(fd, BOUND)
        assert q.get() == "a"
        assert readable(fd)  # "b" still waits
        assert q.get_nowait() == "b"
        assert not readable(fd)  # drained by the get that emptied the queue
        q.put("c")
        assert readable(fd, BOUND)
        assert q.get_many() == ["c"]
        assert not readable(fd)
    finally:
        q.close()
    assert not watcher_threads()


def test_message_already_there_makes_a_new_descriptor_readable():
    q = Queue()
    try:
        q.put(1)
        assert readable(q.fileno(), BOUND)
    finally:
        q.close()


def test_selectors_and_connection_wait_and_add_reader():
    q = Queue()
    try:
        with selectors.DefaultSelector() as sel:
            sel.register(q, selectors.EVENT_READ)  # takes the object: fileno() is called
            assert sel.select(0) == []
            q.put(1)
            assert len(sel.select(BOUND)) == 1
            q.get()
            assert sel.select(0) == []
            sel.unregister(q)
        assert wait([q], 0) == []
        q.put(2)
        assert wait([q], BOUND) == [q]
        q.get()

        async def main():
            loop = asyncio.get_running_loop()
            fut = loop.create_future()
            loop.add_reader(q.fileno(), lambda: fut.done() or fut.set_result(q.get_nowait()))
            try:
                loop.call_later(0.01, q.put, "via add_reader")
                return await asyncio.wait_for(fut, BOUND)
            finally:
                loop.remove_reader(q.fileno())

        assert asyncio.run(main()) == "via add_reader"
    finally:
        q.close()


def _put_later(q, items):
    for item in items:
        q.put(item)


def test_producer_in_a_child_wakes_the_descriptor(ctx):
    q = Queue()
    try:
        fd = q.fileno()  # before the child exists: the child needs no descriptor of ours
        p = ctx.Process(target=_put_later, args=(q, range(5)))
        p.start()
        got = []
        while len(got) < 5:
            assert wait([q], BOUND) == [q]
            try:
                got.append(q.get_nowait())
            except Empty:
                pass  # not expected with one consumer, but tolerated by the contract
        p.join(BOUND)
        assert got == list(range(5)) and p.exitcode == 0
        assert not readable(fd)
    finally:
        q.close()


def _wait_in_child(q, out):
    # The child asks for its own descriptor; the parent's, if any, is not inherited.
    out.put(bool(wait([q], BOUND)))
    out.put(q.get_nowait())
    q.close()


def test_waiter_in_a_child(ctx):
    q, out = Queue(), Queue()
    try:
        q.fileno()  # the parent has a watcher too; a fork child must start its own
        p = ctx.Process(target=_wait_in_child, args=(q, out))
        p.start()
        q.put("for the child")
        assert out.get(timeout=BOUND) is True
        assert out.get(timeout=BOUND) == "for the child"
        p.join(BOUND)
        assert p.exitcode == 0
    finally:
        q.close()
        out.close()


def test_unrelated_processes_by_name():
    name = f"test-fileno-{uuid.uuid4().hex[:8]}"
    q = Queue(name=name)
    try:
        fd = q.fileno()
        producer = textwrap.dedent(f"""
            from procwire import Queue
            q = Queue.attach({name!r})
            q.put("from an unrelated process")
            q.close()
        """)
        subprocess.run([sys.executable, "-c", producer], check=True, timeout=BOUND)
        assert readable(fd, BOUND)
        assert q.get_nowait() == "from an unrelated process"
        consumer = textwrap.dedent(f"""
            from multiprocessing.connection import wait
            from procwire import Queue
            q = Queue.attach({name!r})
            assert wait([q], {BOUND}) == [q]
            print(q.get_nowait())
            q.close()
        """)
        child = subprocess.Popen([sys.executable, "-c", consumer], stdout=subprocess.PIPE,
                                 text=True)
        q.put("to an unrelated process")
        out, _ = child.communicate(timeout=BOUND)
        assert child.returncode == 0 and out.strip() == "to an unrelated process"
    finally:
        q.close()


def test_another_consumer_taking_the_last_message_is_one_spurious_wake():
    q = Queue()
    # a second handle of the same queue, as another process has
    other = Queue._from_segment(Segment.from_fd(os.dup(q._segment.fd)))
    try:
        fd = q.fileno()
        q.put(1)
        assert readable(fd, BOUND)
        assert other.get() == 1
        assert readable(fd)  # documented: stays readable until this handle finds it empty
        with pytest.raises(Empty):
            q.get_nowait()
        assert not readable(fd)
    finally:
        other.close()
        q.close()


def test_close_stops_the_watcher_and_closes_the_descriptor():
    q = Queue()
    fd = q.fileno()
    assert watcher_threads()
    q.close()
    assert not watcher_threads()
    with pytest.raises(OSError):
        os.fstat(fd)
    with pytest.raises(ValueError):
        q.fileno()


def test_watcher_is_not_a_lost_consumer():
    # The watcher sleeps as a consumer: a put wakes it, and the message stays for get().
    q = Queue()
    try:
        q.fileno()
        q.put("kept")
        assert readable(q.fileno(), BOUND)
        assert q.qsize() == 1 and q.get_nowait() == "kept"
    finally:
        q.close()
