"""管道 -- Pipe, both ways and one way.

A pipe is a channel in memory that two processes share (在内存中开辟一个管道
空间). multiprocessing keeps it in the kernel, behind a socket; procwire keeps
it in shared memory, with the same API. ``Pipe()`` returns its two ends:

* ``Pipe()`` (duplex=True, the default): both ends can ``send()`` and
  ``recv()`` -- a two-way conversation;
* ``Pipe(duplex=False)``: returns ``(receive_end, send_end)`` -- the first
  can only receive, the second only send.

``send()`` takes strings, numbers, lists -- anything picklable; ``recv()``
blocks until something arrives, and one ``recv()`` returns exactly one
``send()``. When every send end is closed, ``recv()`` raises EOFError: so
each process closes the ends it does not use.

Here the child speaks only after it has received, and the parent prints
only what it has received, so the lines come out in the order of events.
"""
from __future__ import annotations

import os
from multiprocessing import Process

from procwire import Pipe  # shared memory, the API of multiprocessing.Pipe
from procwire.lessons._common import in_order, say
from procwire.pipe import Connection


def echo_upper(conn: Connection) -> None:
    """Two-way: receive a message, answer it, until told to stop."""
    while (message := conn.recv()) != "bye":
        say(f"  child  {os.getpid()} received {message!r}, answers {message.upper()!r}")
        conn.send(message.upper())
    conn.close()


def producer(send_end: Connection, receive_end: Connection) -> None:
    """One-way: send a few things of different types, then close the end."""
    receive_end.close()  # this process only sends
    for item in ("text", 42, [1, 2, 3], {"to": "parent"}):
        send_end.send(item)
    send_end.close()  # the parent's recv() now ends with EOFError


def two_way() -> None:
    say("1. Pipe(): both ends send and receive")
    parent_end, child_end = Pipe()
    child = Process(target=echo_upper, args=(child_end,))
    child.start()
    child_end.close()  # the child has its own copy; the parent keeps one end
    for word in ("hello", "pipe"):
        parent_end.send(word)
        say(f"  parent {os.getpid()} got back {parent_end.recv()!r}")
    parent_end.send("bye")
    child.join(timeout=10)
    parent_end.close()


def one_way() -> None:
    say("\n2. Pipe(duplex=False): the first end only receives, the second only sends")
    receive_end, send_end = Pipe(duplex=False)
    child = Process(target=producer, args=(send_end, receive_end))
    child.start()
    send_end.close()  # otherwise recv() would wait for ever for us to send
    while True:
        try:
            item = receive_end.recv()  # blocks until one send() arrives
        except EOFError:
            say("  recv() raised EOFError: every send end is closed")
            break
        say(f"  received {type(item).__name__:5} {item!r}")
    child.join(timeout=10)
    receive_end.close()


main = in_order(two_way, one_way)


if __name__ == "__main__":
    main()
