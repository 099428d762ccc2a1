"""创建进程: fork -- one process becomes two.

``os.fork()`` copies the calling process. Both copies return from the same
call and go on from the same line; they tell themselves apart by the return
value: 0 in the child, the child's pid in the parent. The child gets a
*copy* of the memory -- what it changes, the parent never sees -- and ends
with ``os._exit``, so that it does not go on to run the parent's program.
The parent waits for it (``os.waitpid``), which both tells it the child's
exit code and lets the kernel forget the child (no zombie).
"""
from __future__ import annotations

import os
import sys

from procwire.lessons._common import say


def main() -> None:
    fruit = ["apple"]
    say(f"before fork: one process, pid {os.getpid()}, fruit = {fruit}")
    sys.stdout.flush()  # anything left in the buffer would be printed by both copies

    pid = os.fork()
    if pid == 0:
        # The child: a copy of the parent, from this line on.
        fruit.append("banana")
        say(f"child : fork() returned 0; my pid is {os.getpid()}, my parent is {os.getppid()}")
        say(f"child : I changed my copy: fruit = {fruit}")
        os._exit(7)  # leave now, with an exit code for the parent to read

    # The parent: fork() returned the child's pid. Wait first, so that the
    # child's lines come before ours.
    _, status = os.waitpid(pid, 0)
    say(f"parent: fork() returned {pid}, my child's pid")
    say(f"parent: my fruit is still {fruit}: the child changed only its own copy")
    say(f"parent: the child exited with code {os.waitstatus_to_exitcode(status)}")


if __name__ == "__main__":
    main()
