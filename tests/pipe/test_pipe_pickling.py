"""How messages are pickled once other reducers are registered (procwire._pickle).

procwire.shared, procwire.connection and multiprocessing.managers register
reducers with ForkingPickler. Messages must still be pickled as
multiprocessing pickles them, without taking ForkingPickler (four times
slower) for plain data.
"""
from __future__ import annotations

import pickle
import threading
from multiprocessing import reduction

import pytest

import procwire
import procwire.connection
from procwire import _pickle


class _Token:
    def __init__(self, value):
        self.value = value


@pytest.fixture
def registered():
    """A reducer of our own: _Token(v) arrives as _Token(v * 10)."""
    reduction.ForkingPickler.register(_Token, lambda t: (_Token, (t.value * 10,)))
    yield
    del reduction.ForkingPickler._extra_reducers[_Token]


PLAIN = [b"x" * 64, (1, "abc", 2.5), {"a": [1, 2.0, None, True]},
         list(range(1000)), "z" * 100_000, frozenset({1, 2})]


@pytest.mark.parametrize("obj", PLAIN, ids=lambda o: type(o).__name__)
def test_plain_data_pickles_as_plain_pickle_does(registered, obj):
    assert _pickle.dumps(obj) == pickle.dumps(obj, 5)


def test_plain_data_does_not_go_through_forking_pickler(registered, monkeypatch):
    def refuse(*args):
        raise AssertionError("ForkingPickler used for plain data")

    monkeypatch.setattr(_pickle, "_ForkingPickler", refuse)
    assert pickle.loads(_pickle.dumps((1, "abc", 2.5))) == (1, "abc", 2.5)


def test_registered_reducer_applies_inside_containers(registered):
    a, b = procwire.Pipe()
    with a, b:
        a.send({"t": [_Token(4)], "n": 1})
        got = b.recv(timeout=10)
    assert got["t"][0].value == 40 and got["n"] == 1


def test_a_reducer_that_sends_a_message_itself(registered):
    # A reducer runs inside the pickler: one that pickles another message
    # must get a pickler of its own, and both messages must come out whole.
    q = procwire.Queue()

    class Nested:
        pass

    def reduce_nested(obj):
        q.put(("inner", [1, 2, 3]))
        return (_Token, (7,))

    reduction.ForkingPickler.register(Nested, reduce_nested)
    try:
        q.put(("outer", Nested()))
        first, second = q.get(timeout=10), q.get(timeout=10)
    finally:
        del reduction.ForkingPickler._extra_reducers[Nested]
        q.close()
    assert first == ("inner", [1, 2, 3])
    assert second[0] == "outer" and second[1].value == 7


def test_threads_pickle_at_once(registered):
    errors = []

    def work(n):
        try:
            for i in range(2000):
                obj = (n, i, [_Token(i)], "x" * (i % 50))
                back = pickle.loads(_pickle.dumps(obj))
                assert back[:2] == (n, i) and back[2][0].value == i * 10
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors


def test_an_unpicklable_message_leaves_the_next_one_intact(registered):
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        _pickle.dumps((1, lambda: None))
    assert pickle.loads(_pickle.dumps((2, "ok"))) == (2, "ok")


@pytest.mark.parametrize("size", [0, 1, 3, 4, 64, 255, 256, 1000, (1 << 16) - 1])
def test_bytes_pickle_exactly_as_pickle_dumps_does(size):
    data = bytes(range(256)) * (size // 256) + b"z" * (size % 256)
    assert _pickle.dumps(data) == pickle.dumps(data, 5)


@pytest.mark.parametrize("size", [0, 1, 64, 254, 255, 256, 1000])
def test_send_of_bytes_puts_pickle_dumps_form_on_the_wire(size):
    """send() pickles short bytes in C and recv() unpickles them without an
    unpickler: the wire form stays pickle.dumps(obj, 5), both ways."""
    data = bytes(range(256))[:size] if size <= 256 else b"q" * size
    a, b = procwire.Pipe()
    try:
        a.send(data)
        assert b.recv_bytes() == pickle.dumps(data, 5)
        a.send_bytes(pickle.dumps(data, 5))
        got = b.recv()
        assert got == data and type(got) is bytes
        a.send(data)
        assert b.recv() == data
    finally:
        a.close()
        b.close()


class _Bytes(bytes):
    pass


@pytest.mark.parametrize("obj", [bytearray(b"ab"), (b"ab",), [b"x" * 3], "ab",
                                 _Bytes(b"sub")],
                         ids=["bytearray", "tuple", "list", "str", "bytes-subclass"])
def test_lookalikes_of_short_bytes_go_through_pickle(obj):
    a, b = procwire.Pipe()
    try:
        a.send_bytes(pickle.dumps(obj, 5)[:-1] + b".")  # the same pickle
        assert b.recv() == obj
        a.send_bytes(b"\x80\x05\x95" + bytes(8) + b"C\x02ab\x94.")  # a wrong frame length
        assert b.recv() == b"ab"  # pickle's frames are hints: it still loads
    finally:
        a.close()
        b.close()
