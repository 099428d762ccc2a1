"""共享内存 -- shared memory: Value and Array.

A pipe or a queue *copies* each message from one process to another.
Shared memory is one piece of memory that several processes map: what one
writes, the others read directly, with no copying and no message -- the
fastest way, but there is no queue either: each write replaces what was
there before.

* ``Value(ctype, value)`` shares one C number: ``'i'`` is a C int, ``'d'``
  a double; read and write it as ``v.value``.
* ``Array(ctype, values)`` shares a fixed-size C array, made from a list of
  same-typed values, or from a count (``Array('i', 5)``: five zeros); index
  it, slice it and loop over it like a list.

Because processes touch the same memory at the same time, updates need
synchronisation (see the ``lock`` lesson).
"""
from __future__ import annotations

import os
from multiprocessing import Process
from typing import TYPE_CHECKING

from procwire import Array, Value  # shared memory, as in multiprocessing
from procwire.lessons._common import say

if TYPE_CHECKING:
    from multiprocessing.sharedctypes import Synchronized, SynchronizedArray


def child_writes(
    number: Synchronized[float], numbers: SynchronizedArray[int], zeros: SynchronizedArray[int]
) -> None:
    say(f"  child {os.getpid()}: number.value = {number.value} -> 3.5; "
        "numbers doubled; zeros filled")
    number.value = 3.5  # replaces the old value: shared memory keeps only the last write
    for i in range(len(numbers)):
        numbers[i] *= 2
    zeros[:] = [7, 7, 7]


def main() -> None:
    number = Value("d", 1.0)  # one C double
    numbers = Array("i", [1, 2, 3, 4])  # a C int array made from a list
    zeros = Array("i", 3)  # a C int array of 3 zeros
    say(f"parent {os.getpid()}: Value('d', 1.0) -> {number.value}, "
        f"Array('i', [1, 2, 3, 4]) -> {numbers[:]}, Array('i', 3) -> {zeros[:]}")

    child = Process(target=child_writes, args=(number, numbers, zeros))
    child.start()
    child.join(timeout=10)

    say(f"parent {os.getpid()}: after the child: number.value = {number.value}, "
        f"numbers = {numbers[:]}, zeros = {zeros[:]}")
    say("  no message was sent: the parent reads the very memory the child wrote")


if __name__ == "__main__":
    main()
