"""The async methods under asyncio and uvloop: Queue.get_async/put_async,
Connection.recv_async/send_async, Event.wait_async. Each waits without
blocking the loop, with no thread per call, and is cancellable."""
from __future__ import annotations

import asyncio
import threading
import time

import pytest

from procwire import (
    Empty,
    Event,
    Full,
    JoinableQueue,
    Pipe,
    Queue,
    SimpleQueue,
    _aio,
    pipe as pipe_module,
)

BOUND = 30  # seconds: a bound for a hang, not a speed check

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is in the test extra
    uvloop = None


@pytest.fixture(scope="module", autouse=True)
def _warm_uvloop():
    # uvloop keeps one pipe per process for its whole life (libuv's signal
    # lock), made by its first loop: make it before any leak check's snapshot.
    if uvloop is not None:
        loop = uvloop.new_event_loop()
        loop.run_until_complete(asyncio.sleep(0))
        loop.close()


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request):
    if request.param == "uvloop":
        if uvloop is None:
            pytest.skip("uvloop is not installed")
        factory = uvloop.new_event_loop
    else:
        factory = asyncio.new_event_loop

    def run(coro):
        loop = factory()
        try:
            return loop.run_until_complete(asyncio.wait_for(coro, BOUND))
        finally:
            loop.close()
    return run


def _threads():
    return {t for t in threading.enumerate() if t.name.startswith("procwire")}


async def _times_out_then_cancelled(wait, timed_out, *args):
    """``wait(*args, timeout=0.05)`` raises ``timed_out`` (an exception type) or returns
    it (a value); ``wait(*args)``, cancelled while it waits, raises CancelledError. The
    caller then checks that the cancelled call took or put nothing."""
    if isinstance(timed_out, type):
        with pytest.raises(timed_out):
            await wait(*args, timeout=0.05)
    else:
        assert await wait(*args, timeout=0.05) == timed_out
    task = asyncio.create_task(wait(*args))
    await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


# ------------------------------------------------------------------ queues


def _put_after(q, delay_event, items):
    delay_event.wait(BOUND)
    for item in items:
        q.put(item)


@pytest.mark.parametrize("cls", [Queue, SimpleQueue, JoinableQueue])
def test_get_async_waits_for_a_put_from_another_process(run, ctx, cls):
    q, go = cls(), Event()
    p = ctx.Process(target=_put_after, args=(q, go, ["a", "b"]))
    p.start()
    try:
        async def main():
            ticks = 0

            async def ticker():  # the loop keeps running while get_async waits
                nonlocal ticks
                while True:
                    ticks += 1
                    await asyncio.sleep(0.001)

            t = asyncio.create_task(ticker())
            await asyncio.sleep(0.02)
            go.set()
            got = [await q.get_async(), await q.get_async(timeout=BOUND)]
            t.cancel()
            return got, ticks

        got, ticks = run(main())
        assert got == ["a", "b"] and ticks > 1
        p.join(BOUND)
    finally:
        q.close()
        go.close()


def test_get_async_timeout_and_cancel_take_nothing(run):
    q = Queue()
    try:
        async def main():
            await _times_out_then_cancelled(q.get_async, Empty)
            q.put("still there")
            return await q.get_async(timeout=BOUND)

        assert run(main()) == "still there"
        assert q.qsize() == 0
    finally:
        q.close()


def test_many_coroutines_share_one_descriptor(run):
    q = Queue()
    try:
        async def main():
            tasks = [asyncio.create_task(q.get_async()) for _ in range(20)]
            await asyncio.sleep(0.01)
            q.put_many(range(20))
            return sorted(await asyncio.gather(*tasks))

        assert run(main()) == list(range(20))
        assert len(_threads()) == 1  # one watcher for the handle, not one per call
    finally:
        q.close()
    assert not _threads()


def _get_after(q, go, n):
    go.wait(BOUND)
    for _ in range(n):
        q.get(timeout=BOUND)


def test_put_async_waits_for_room_in_a_bounded_queue(run, ctx):
    q, go = Queue(maxsize=2), Event()
    p = ctx.Process(target=_get_after, args=(q, go, 4))
    p.start()
    try:
        async def main():
            await q.put_async(1)
            await q.put_async(2)
            await _times_out_then_cancelled(q.put_async, Full, "not put")
            assert q.qsize() == 2
            go.set()
            await q.put_async(3)
            await q.put_async(4, timeout=BOUND)

        run(main())
        p.join(BOUND)
        assert p.exitcode == 0 and q.qsize() == 0
    finally:
        q.close()
        go.close()


def test_put_async_waits_for_bytes_of_room(run):
    # A bounded queue waits for room in its ring; with maxsize=0 it would spill.
    q = Queue(maxsize=10, capacity=4096)
    try:
        async def main():
            await q.put_async(b"x" * 3000)
            task = asyncio.create_task(q.put_async(b"y" * 3000))
            await asyncio.sleep(0.02)
            assert not task.done()
            assert q.get() == b"x" * 3000
            await asyncio.wait_for(task, BOUND)
            return q.get_nowait()

        assert run(main()) == b"y" * 3000
    finally:
        q.close()


def test_closed_queue_raises_in_the_waiting_coroutine(run):
    q = Queue()

    async def main():
        task = asyncio.create_task(q.get_async())
        await asyncio.sleep(0.02)
        q.close()
        with pytest.raises(ValueError):
            await task

    run(main())


# ------------------------------------------------------------------ pipes


def _echo_later(conn, other, go):
    other.close()  # a fork child inherits the parent's end too
    go.wait(BOUND)
    while True:
        try:
            obj = conn.recv()
        except EOFError:
            return
        conn.send(obj)


def test_recv_async_and_send_async_with_a_child(run, ctx):
    a, b = Pipe(capacity=4096)
    go = Event()
    p = ctx.Process(target=_echo_later, args=(b, a, go))
    p.start()
    b.close()
    try:
        async def main():
            # The child does not read yet: the ring fills and send_async waits.
            sent = 0

            async def sender():
                nonlocal sent
                for i in range(40):
                    await a.send_async((i, b"z" * 500))
                    sent += 1

            t = asyncio.create_task(sender())
            await asyncio.sleep(0.05)
            assert 0 < sent < 40
            go.set()
            got = [await a.recv_async(timeout=BOUND) for _ in range(40)]
            await t
            return got

        got = run(main())
        assert got == [(i, b"z" * 500) for i in range(40)]
        a.close()
        p.join(BOUND)
    finally:
        a.close()
        go.close()


def test_recv_async_timeout_cancel_and_eof(run):
    a, b = Pipe()
    try:
        async def main():
            await _times_out_then_cancelled(a.recv_async, TimeoutError)
            b.send("kept")
            assert await a.recv_async() == "kept"
            b.close()
            with pytest.raises(EOFError):
                await a.recv_async(timeout=BOUND)

        run(main())
    finally:
        a.close()
        b.close()


def test_send_async_to_a_closed_peer_raises(run):
    a, b = Pipe(capacity=4096)
    try:
        async def main():
            a.send(b"x" * 3000)
            task = asyncio.create_task(a.send_async(b"y" * 3000))
            await asyncio.sleep(0.02)
            b.close()
            with pytest.raises(BrokenPipeError):
                await task

        run(main())
    finally:
        a.close()
        b.close()


# A message longer than the ring: it goes in pieces, each written once the
# receiver took room, so send_bytes would hold the loop until the last one.
BIG = bytes(range(256)) * 400   # 100 KiB through a 4 KiB ring


async def _readable(conn):
    """Until ``conn.fileno()`` is readable (a message, or its first piece, waits)."""
    loop = asyncio.get_running_loop()
    fut = loop.create_future()
    loop.add_reader(conn.fileno(), lambda: fut.done() or fut.set_result(None))
    try:
        await fut
    finally:
        loop.remove_reader(conn.fileno())


@pytest.fixture
def long_pipe():
    """A Pipe with a 4 KiB ring for BIG messages. Its receiving end closes after BOUND,
    so that a loop held by a send ends with an error, not a hang. No sender thread
    is left afterwards."""
    a, b = Pipe(capacity=4096)
    timer = threading.Timer(BOUND, b.close)
    timer.daemon = True
    timer.start()
    yield a, b
    timer.cancel()
    a.close()
    b.close()
    assert not any(t.name.startswith("procwire async sender") for t in _threads())


def test_send_async_longer_than_the_ring_leaves_the_loop_to_its_receiver(run, long_pipe):
    a, b = long_pipe

    async def main():
        # The receiver is a coroutine of the same loop: the send must let it run.
        send = asyncio.create_task(a.send_async(BIG))
        got = await b.recv_async(timeout=BOUND)
        await send
        return got

    assert run(main()) == BIG


def test_send_async_that_waited_for_room_queues_behind_a_long_message(run, long_pipe):
    """A short send that waits for room while a long one starts streaming from the
    sender thread: both arrive whole, and the loop (whose coroutine receives) is
    never held by a send_bytes waiting for the thread's send lock."""
    a, b = long_pipe
    small = b"s" * 1000
    while a._send_room()[1] >= 8 + 1100:   # fill the ring with small messages
        a.send(small)
    filled = b.statistics().messages_waiting
    streaming = threading.Event()
    sender = pipe_module._senders[a] = _aio.OrderedSender(repr(a), lambda data: (
        streaming.set(), a.send_bytes(data)))

    async def main():
        waiting = asyncio.create_task(a.send_async(b"late"))   # waits for room
        await asyncio.sleep(0)                                  # ... in the room wait
        long = asyncio.create_task(a.send_async(BIG))          # to the sender thread
        assert await asyncio.to_thread(streaming.wait, BOUND)
        got = [await b.recv_async(timeout=BOUND) for _ in range(filled + 2)]
        await asyncio.gather(waiting, long)
        return got

    got = run(main())
    assert sender is pipe_module._senders[a]
    assert got[:filled] == [small] * filled
    assert sorted(got[filled:], key=len) == [b"late", BIG]


def test_send_async_keeps_the_order_of_long_and_short_messages(run, long_pipe):
    a, b = long_pipe
    messages = [BIG, b"short", BIG[::-1], "tail", BIG[:5000]]

    async def main():
        sends = [asyncio.create_task(a.send_async(m)) for m in messages]
        got = [await b.recv_async(timeout=BOUND) for _ in messages]
        await asyncio.gather(*sends)
        return got

    assert run(main()) == messages


def test_send_async_of_a_long_message_cancelled_sends_it_whole_or_not_at_all(run, long_pipe):
    a, b = long_pipe

    async def main():
        first = asyncio.create_task(a.send_async(BIG))        # begins: the ring fills
        second = asyncio.create_task(a.send_async(BIG[::-1]))  # waits for its turn
        await _readable(b)       # the first one's pieces began to arrive
        second.cancel()          # before its turn: nothing of it is sent
        first.cancel()           # its pieces began: it is sent whole
        for task in (first, second):
            with pytest.raises(asyncio.CancelledError):
                await task
        after = asyncio.create_task(a.send_async("after"))  # queued behind the first
        got = [await b.recv_async(timeout=BOUND) for _ in range(2)]
        await after
        return got

    assert run(main()) == [BIG, "after"]


@pytest.mark.parametrize("closed", ["sender", "receiver"])
def test_send_async_of_a_long_message_ends_when_an_end_closes(run, long_pipe, closed):
    a, b = long_pipe

    async def main():
        send = asyncio.create_task(a.send_async(BIG))
        await asyncio.sleep(0)  # it is sending: the ring is full and nobody reads
        (a if closed == "sender" else b).close()
        with pytest.raises(BrokenPipeError if closed == "receiver" else (OSError, ValueError)):
            await send

    run(main())


def test_socket_connection_recv_async(run):
    from procwire.connection import Client, Listener

    with Listener(("127.0.0.1", 0), authkey=b"k") as listener:
        result = {}

        def serve():
            with listener.accept() as conn:
                conn.send(conn.recv())

        t = threading.Thread(target=serve)
        t.start()
        with Client(listener.address, authkey=b"k", shared_memory=False) as c:
            async def main():
                await c.send_async("over tcp")
                return await c.recv_async(timeout=BOUND)

            result["got"] = run(main())
        t.join(BOUND)
    assert result["got"] == "over tcp"


# ------------------------------------------------------------------ events


def _set_later(ev, go):
    go.wait(BOUND)
    ev.set()


def test_event_wait_async_set_by_another_process(run, ctx):
    ev, go = Event(), Event()
    p = ctx.Process(target=_set_later, args=(ev, go))
    p.start()
    try:
        async def main():
            waiters = [asyncio.create_task(ev.wait_async()) for _ in range(3)]
            await asyncio.sleep(0.02)
            assert not any(w.done() for w in waiters)
            go.set()
            return await asyncio.gather(*waiters)

        assert run(main()) == [True, True, True]
        p.join(BOUND)
    finally:
        ev.close()
        go.close()
    assert not _threads()


def test_event_wait_async_timeout_and_cancel(run):
    ev = Event()
    try:
        async def main():
            await _times_out_then_cancelled(ev.wait_async, False)
            ev.set()
            return await ev.wait_async(0)

        assert run(main()) is True
    finally:
        ev.close()


def test_watcher_thread_leaves_after_the_last_waiter(run):
    ev = Event()
    try:
        async def main():
            assert await ev.wait_async(0.01) is False

        run(main())
        deadline = time.monotonic() + BOUND
        while _threads() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not _threads()
    finally:
        ev.close()
