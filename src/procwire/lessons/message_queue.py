"""消息队列 -- a message queue: first in, first out.

``Queue(maxsize=0)`` makes a queue in memory that every process holding it
can put messages into and take them out of, in order. ``maxsize`` > 0 caps
the number of messages; 0 means "as many as memory allows".

* ``q.put(x)`` adds a message; when the queue is full it blocks;
* ``q.get()`` takes the oldest message; when the queue is empty it blocks;
* ``q.full()``, ``q.empty()``, ``q.qsize()`` look at the queue;
* ``block=False`` makes put/get raise at once instead of waiting
  (``queue.Full`` / ``queue.Empty``), and ``timeout=seconds`` makes them
  wait that long and then raise.

This is ``procwire.Queue``: the same interface as ``multiprocessing.Queue``,
on shared memory, and its ``qsize()``/``empty()`` are exact.
"""
from __future__ import annotations

import os
import queue
import time
from collections.abc import Callable
from multiprocessing import Process
from typing import Any

from procwire import Queue  # the same API as: from multiprocessing import Queue
from procwire.lessons._common import in_order, say


def producer(q: Queue, count: int) -> None:
    for n in range(1, count + 1):
        q.put(f"message {n} from {os.getpid()}")  # blocks while the queue is full
    q.put(None)  # "that was all"


def timed(action: Callable[..., Any], *args: Any, **kwargs: Any) -> str:
    """Run a put/get that should fail; say how it failed and how long it took."""
    start = time.monotonic()
    try:
        action(*args, **kwargs)
    except (queue.Full, queue.Empty) as exc:
        return f"queue.{type(exc).__name__} after {time.monotonic() - start:.1f}s"
    return "no exception?!"


def limits() -> None:
    say("1. Queue(maxsize=3)")
    q = Queue(maxsize=3)
    say(f"  new queue: empty() {q.empty()}, qsize() {q.qsize()}")
    for word in ("one", "two", "three"):
        q.put(word)
    say(f"  after 3 puts: full() {q.full()}, qsize() {q.qsize()}, empty() {q.empty()}")
    say(f"  put('four', block=False)   -> {timed(q.put, 'four', block=False)}")
    say(f"  put('four', timeout=0.5)   -> {timed(q.put, 'four', timeout=0.5)}")
    say(f"  get() x3 -> {[q.get() for _ in range(3)]}  (first in, first out)")
    say(f"  now: empty() {q.empty()}, qsize() {q.qsize()}")
    say(f"  get(block=False)           -> {timed(q.get, block=False)}")
    say(f"  get(timeout=0.5)           -> {timed(q.get, timeout=0.5)}")
    q.close()


def producer_consumer() -> None:
    say("\n2. A child puts 5 messages into a Queue(maxsize=2); the parent takes them")
    q = Queue(maxsize=2)
    child = Process(target=producer, args=(q, 5))
    child.start()
    while (message := q.get(timeout=10)) is not None:
        say(f"  got {message!r}")
    child.join(timeout=10)
    say(f"  the producer exited with {child.exitcode}; while 2 messages were queued, "
        "its put() waited for the parent to get() one")
    q.close()


main = in_order(limits, producer_consumer)


if __name__ == "__main__":
    main()
