"""Event 事件 -- one process waits until another says "go".

An Event is a flag shared by processes, initially unset:

* ``e.wait()`` blocks until the flag is set (``e.wait(timeout)`` gives up
  after `timeout` seconds and returns False);
* ``e.set()`` sets it and wakes every waiter; ``e.is_set()`` reads it;
* ``e.clear()`` unsets it again, so the next ``wait()`` blocks.

This is synchronisation (同步): not protecting data, but agreeing on an
*order* -- here, the worker must not start before the parent has finished
preparing.
"""
from __future__ import annotations

import os
import time
from multiprocessing import Process

from procwire import Event  # a futex word in shared memory, not five semaphores
from procwire.lessons._common import say


def worker(ready: Event) -> None:
    ready.wait()  # blocks until the parent calls ready.set()
    say(f"  worker {os.getpid()}: the event is set, I start now")


def main() -> None:
    ready = Event()
    say(f"new Event: is_set() {ready.is_set()}")

    start = time.monotonic()
    result = ready.wait(timeout=0.3)
    say(f"wait(timeout=0.3) returned {result} after {time.monotonic() - start:.1f}s: nobody set it")

    child = Process(target=worker, args=(ready,))
    child.start()
    say(f"worker {child.pid} started; it waits for the event while the parent prepares")
    ready.set()
    child.join(timeout=10)
    say(f"set() woke the worker; is_set() {ready.is_set()}")

    ready.clear()
    say(f"clear(): is_set() {ready.is_set()}, wait(0) returns {ready.wait(0)}")


if __name__ == "__main__":
    main()
