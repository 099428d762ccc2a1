"""僵尸进程 -- a zombie, made and then cured.

When a process exits, the kernel frees its memory but keeps a small record
-- pid and exit status -- until the parent collects it with ``wait``. Until
then the dead child is a *zombie*: state ``Z`` in ``/proc`` and ``ps``, with
a pid still taken. A parent that never waits fills the process table with
them.

Two cures, both shown here:

1. the parent waits for (reaps) its children: ``os.waitpid``, or
   ``procwire.signals.reap()`` to collect every child that has ended;
2. the lesson's way, ``signal(SIGCHLD, SIG_IGN)``: the parent declares it
   does not care, and the kernel reaps its children as they exit -- at the
   price of never learning their exit codes.
"""
from __future__ import annotations

import os

from procwire import signals
from procwire.lessons._common import fork, proc_stat, say, wait_for_state


def show(pid: int) -> None:
    try:
        stat = proc_stat(pid)
    except FileNotFoundError:
        say(f"  /proc/{pid}: gone -- no such process any more")
        return
    say(f"  /proc/{pid}/stat: state {stat.state} = {stat.state_meaning}")


def make_zombie() -> None:
    say("1. A child exits, and its parent does not wait for it yet")
    pid = fork(lambda: 0)
    wait_for_state(pid, "Z")  # the child has exited: it is a zombie now
    show(pid)

    say("   cure: the parent reaps it")
    for child in signals.reap(pid):
        say(f"  reaped: {child}")
    show(pid)


def ignore_sigchld() -> None:
    say("\n2. signal(SIGCHLD, SIG_IGN): the kernel reaps children itself")
    with signals.ignore_children():
        pid = fork(lambda: 0)
        try:
            os.waitpid(pid, 0)  # returns only once the child is gone...
        except ChildProcessError:  # ...and then finds nothing to collect
            say(f"  waitpid({pid}): no child to collect -- the kernel already reaped it")
        show(pid)


def main() -> None:
    make_zombie()
    ignore_sigchld()


if __name__ == "__main__":
    main()
