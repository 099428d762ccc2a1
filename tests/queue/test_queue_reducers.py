"""Messages are pickled with multiprocessing's reducers, as multiprocessing does.

Plain pickle sends a multiprocessing Connection as the bare number of its
descriptor: the receiver would use (and close) whatever it has under that
number. multiprocessing's ForkingPickler duplicates the descriptor instead.
"""
from __future__ import annotations

import multiprocessing as mp
import multiprocessing.reduction
import multiprocessing.resource_sharer
import socket

import pytest

import procwire


def _channels():
    q = procwire.Queue()
    a, b = procwire.Pipe()

    def through_queue(obj):
        q.put(obj)
        return q.get(timeout=10)

    def through_pipe(obj):
        a.send(obj)
        return b.recv()

    return (q, a, b), {"queue": through_queue, "pipe": through_pipe}


@pytest.fixture(params=["queue", "pipe"])
def channel(request):
    owned, send = _channels()
    yield send[request.param]
    for obj in owned:
        obj.close()
    # Outside process start-up, multiprocessing hands a descriptor over through
    # its resource sharer, whose thread closes its copy after the receiver
    # fetched it, in its own time: stop it, so that the leak check sees the
    # final state rather than a descriptor in flight.
    multiprocessing.resource_sharer.stop(timeout=30)


def test_a_multiprocessing_connection_arrives_as_a_duplicate(channel):
    x, y = mp.Pipe()
    received = channel({"conn": x, "n": 1})["conn"]
    try:
        assert received.fileno() != x.fileno()
        received.send("through the duplicate")
        assert y.recv() == "through the duplicate"
        received.close()
        # Closing the duplicate left the original alone.
        x.send("original")
        assert y.recv() == "original"
    finally:
        x.close()
        y.close()


def test_a_socket_arrives_as_a_duplicate(channel):
    s1, s2 = socket.socketpair()
    received = channel(s1)
    try:
        assert received.fileno() != s1.fileno()
        received.sendall(b"ping")
        assert s2.recv(4) == b"ping"
    finally:
        for s in (s1, s2, received):
            s.close()


class _Token:
    def __init__(self, value):
        self.value = value


def _reduce_token(token):
    return _Token, (token.value * 10,)


def test_a_reducer_registered_with_forking_pickler_is_used(channel):
    multiprocessing.reduction.ForkingPickler.register(_Token, _reduce_token)
    try:
        assert channel(_Token(4)).value == 40
    finally:
        del multiprocessing.reduction.ForkingPickler._extra_reducers[_Token]


def _receive_and_answer(q):
    conn = q.get(timeout=30)
    conn.send(("child got it", conn.fileno()))
    conn.close()


def test_a_connection_passed_to_another_process(ctx):
    q = procwire.Queue()
    x, y = mp.Pipe()
    p = ctx.Process(target=_receive_and_answer, args=(q,))
    p.start()
    try:
        q.put(x)
        assert y.poll(30)
        message, _ = y.recv()
        assert message == "child got it"
    finally:
        p.join(30)
        assert p.exitcode == 0
        x.close()
        y.close()
        q.close()
        multiprocessing.resource_sharer.stop(timeout=30)  # see the channel fixture
