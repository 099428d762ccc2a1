"""Every Connection method on duplex and one-way pipes, in one process, plus bad input."""
from __future__ import annotations

import array
import multiprocessing
import pickle
import threading

import pytest

import procwire
from procwire.pipe import Connection

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(params=[True, False], ids=["duplex", "oneway"])
def pair(request):
    """(receiver, sender) of a duplex or a one-way pipe; closed afterwards."""
    r, w = procwire.Pipe(duplex=request.param)
    yield r, w
    r.close()
    w.close()


def test_pipe_returns_connections_in_mp_order():
    r, w = procwire.Pipe(False)
    with r, w:
        assert isinstance(r, Connection) and isinstance(w, Connection)
        assert (r.readable, r.writable, w.readable, w.writable) == (True, False, False, True)
    a, b = procwire.Pipe()
    with a, b:
        assert a.readable and a.writable and b.readable and b.writable
        a.send("to b")
        b.send("to a")
        assert b.recv() == "to b" and a.recv() == "to a"


def test_send_recv_objects(pair):
    r, w = pair
    for obj in [None, 0, (1, "abc", 2.5), {"k": [1, 2]}, "é" * 1000, b"raw", bytearray(b"ba")]:
        w.send(obj)
        assert r.recv() == obj


def test_send_bytes_and_recv_bytes_interoperate_with_pickles(pair):
    r, w = pair
    w.send_bytes(pickle.dumps({"a": 1}))
    assert r.recv() == {"a": 1}
    w.send((1, 2))
    assert pickle.loads(r.recv_bytes()) == (1, 2)


def test_send_bytes_offset_and_size(pair):
    r, w = pair
    w.send_bytes(b"0123456789", 2)
    w.send_bytes(b"0123456789", 2, 3)
    w.send_bytes(b"0123456789", 10)
    w.send_bytes(memoryview(b"abcdef")[1:4])
    w.send_bytes(array.array("i", [1, 2, 3]), 4, 4)  # offsets count bytes, as in mp
    assert r.recv_bytes() == b"23456789"
    assert r.recv_bytes() == b"234"
    assert r.recv_bytes() == b""
    assert r.recv_bytes() == b"bcd"
    assert r.recv_bytes() == array.array("i", [2]).tobytes()


@pytest.mark.parametrize("args,message", [
    ((-1,), "offset is negative"),
    ((11,), "buffer length < offset"),
    ((0, -1), "size is negative"),
    ((5, 6), "buffer length < offset \\+ size"),
])
def test_send_bytes_bad_ranges(pair, args, message):
    r, w = pair
    with pytest.raises(ValueError, match=message):
        w.send_bytes(b"0123456789", *args)
    assert not r.poll()


def test_bad_argument_types(pair):
    r, w = pair
    with pytest.raises(TypeError):
        w.send_bytes("text is not bytes")
    with pytest.raises(TypeError):
        w.send_bytes(b"x", "1")
    with pytest.raises((AttributeError, TypeError, pickle.PicklingError)):
        w.send(lambda: None)  # unpicklable: raises in send() as mp does, nothing sent
    with pytest.raises(ValueError, match="negative maxlength"):
        r.recv_bytes(-1)
    with pytest.raises(TypeError):
        r.poll("soon")
    with pytest.raises((TypeError, BufferError)):
        r.recv_bytes_into(b"immutable")
    with pytest.raises(TypeError):
        procwire.Pipe(capacity="big")
    with pytest.raises(ValueError):
        procwire.Pipe(capacity=10)
    assert not r.poll()


def test_recv_bytes_maxlength(pair):
    r, w = pair
    w.send_bytes(b"x" * 100)
    w.send_bytes(b"y" * 10)
    with pytest.raises(OSError, match="bad message length"):
        r.recv_bytes(99)
    # Unlike multiprocessing, the pipe stays usable: the long message was dropped.
    assert r.recv_bytes(10) == b"y" * 10
    # A streamed message (bigger than the 1 MiB ring) needs a concurrent reader.
    t = threading.Thread(target=lambda: (w.send_bytes(b"z" * 3_000_000), w.send_bytes(b"after")))
    t.start()
    with pytest.raises(OSError, match="bad message length"):
        r.recv_bytes(1000)
    assert r.recv_bytes(1000) == b"after"  # the rest of the long one was skipped
    t.join(10)
    assert r.statistics()["messages_waiting"] == 0


def test_recv_bytes_into(pair):
    r, w = pair
    buf = bytearray(16)
    w.send_bytes(b"hello")
    assert r.recv_bytes_into(buf) == 5
    assert buf[:5] == b"hello"
    w.send_bytes(b"world")
    assert r.recv_bytes_into(buf, 5) == 5
    assert buf[:10] == b"helloworld"
    w.send_bytes(b"0123456789abcdefXYZ")
    with pytest.raises(multiprocessing.BufferTooShort) as info:
        r.recv_bytes_into(buf)
    assert info.value.args[0] == b"0123456789abcdefXYZ"
    t = threading.Thread(target=w.send_bytes, args=(b"s" * 3_000_000,))
    t.start()
    with pytest.raises(multiprocessing.BufferTooShort) as info:
        r.recv_bytes_into(buf)  # a streamed message that does not fit
    assert info.value.args[0] == b"s" * 3_000_000
    t.join(10)
    big = bytes(range(256)) * 10_000
    target = bytearray(len(big) + 3)
    t = threading.Thread(target=w.send_bytes, args=(big,))
    t.start()
    assert r.recv_bytes_into(memoryview(target), 3) == len(big)
    assert target[3:] == big
    t.join(10)
    with pytest.raises(ValueError, match="negative offset"):
        r.recv_bytes_into(buf, -1)
    with pytest.raises(ValueError, match="offset too large"):
        r.recv_bytes_into(buf, 17)


def test_poll(pair):
    r, w = pair
    assert r.poll() is False
    assert r.poll(0.01) is False
    w.send(1)
    assert r.poll() is True and r.poll(None) is True
    assert r.recv() == 1
    assert r.poll(0) is False


def test_recv_timeout_is_an_extra_keyword(pair):
    r, _w = pair
    with pytest.raises(TimeoutError):
        r.recv(timeout=0.01)
    with pytest.raises(TimeoutError):
        r.recv_bytes(timeout=0)
    with pytest.raises(TimeoutError):
        r.recv_bytes_into(bytearray(4), timeout=0.01)


def test_wrong_end_raises_like_multiprocessing():
    r, w = procwire.Pipe(False)
    with r, w:
        for call in (lambda: r.send(1), lambda: r.send_bytes(b"x")):
            with pytest.raises(OSError, match="connection is read-only"):
                call()
        for call in (w.recv, w.recv_bytes, lambda: w.recv_bytes_into(bytearray(1)), w.poll):
            with pytest.raises(OSError, match="connection is write-only"):
                call()


def test_closed_handle(pair):
    r, w = pair
    r.close()
    assert r.closed
    r.close()  # idempotent
    for call in (r.recv, r.poll, r.fileno, lambda: r.send(1)):
        with pytest.raises(OSError, match="handle is closed"):
            call()
    with pytest.raises(BrokenPipeError):
        w.send_bytes(b"to nobody")


def test_eof_after_buffered_messages(pair):
    r, w = pair
    w.send(1)
    w.send_bytes(b"x" * 200_000)
    w.close()
    assert r.poll()
    assert r.recv() == 1
    assert r.recv_bytes() == b"x" * 200_000
    assert r.poll() is True  # EOF is readable, as in multiprocessing
    with pytest.raises(EOFError):
        r.recv()
    with pytest.raises(EOFError):
        r.recv_bytes()


def test_context_manager_and_repr():
    a, b = procwire.Pipe()
    with a:
        assert "end 0 duplex" in repr(a)
    assert a.closed and "closed" in repr(a)
    b.close()


def test_statistics(pair):
    r, w = pair
    w.send_bytes(b"abc")
    t = threading.Thread(target=w.send_bytes, args=(b"q" * 1_500_000,))
    t.start()
    r.recv_bytes()
    r.recv_bytes()
    t.join(10)
    st = r.statistics()
    assert st["messages_waiting"] == 0 and st["streamed_received"] == 1
    assert st["bytes_received"] >= 1_500_003


def test_statistics_are_the_segments_counters(pair):
    # One reader: each end's statistics() is what _core.inspect reads from the
    # segment for that end (the view `procwire stat` would have of it).
    from procwire import _core
    from procwire.stats import ConnectionStatistics
    r, w = pair
    w.send_bytes(b"abc")
    w.send_bytes(b"de")
    r.recv_bytes()
    for conn in (r, w):
        seen = _core.inspect(conn._segment.buffer)
        assert seen["kind"] == "pipe"
        st = conn.statistics()
        assert st == ConnectionStatistics.from_counters(seen[f"end{conn._end}"])
        assert st.end == conn._end
    assert r.statistics().messages_waiting == 1 and w.statistics().messages_sent == 2
    assert r.statistics().bytes_received == 3 and not w.statistics().peer_closed
    r.close()
    assert w.statistics().peer_closed


def test_small_capacity_streams_everything_bigger():
    a, b = procwire.Pipe(capacity=4096)
    with a, b:
        data = bytes(range(256)) * 1000
        t = threading.Thread(target=a.send_bytes, args=(data,))
        t.start()
        assert b.recv_bytes() == data
        t.join(10)


@pytest.mark.parametrize("size", [0, 1000, 1 << 16, (1 << 20) + 3])
def test_send_of_bytes_is_a_standard_pickle_at_every_size(size):
    # send(obj) must stay send_bytes(pickle): the fast path for large bytes
    # builds the pickle by hand, and any reader must be able to load it.
    a, b = procwire.Pipe(capacity=8 << 20)  # room for a whole message: no reader thread
    try:
        data = bytes(range(256)) * (size // 256) + b"z" * (size % 256)
        b.send(data)
        raw = a.recv_bytes()
        assert pickle.loads(raw) == data
        b.send(data)
        assert a.recv() == data
    finally:
        a.close()
        b.close()
