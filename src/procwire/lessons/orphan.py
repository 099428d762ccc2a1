"""孤儿进程 -- an orphan, and who adopts it.

A child whose parent exits first is an *orphan*. It keeps running, and the
kernel gives it a new parent so that someone will reap it when it ends:
normally init (pid 1), or the nearest ancestor that has declared itself a
"child subreaper" (systemd --user, a container's init, a test harness).

To stay tidy, this demo declares *itself* a subreaper: the orphan's new
parent is then this demo, which reaps it at the end. Three generations:

    demo (subreaper)  ->  parent  ->  child
                          exits       becomes an orphan, adopted by demo

Pipes give the order: the parent exits only after the child has noted its
first ppid, and the child looks again only after the demo has reaped the
parent.
"""
from __future__ import annotations

import os

from procwire import signals
from procwire.lessons._common import exit_status, fork, say


def orphan(hello_w: int, go_r: int) -> int:
    """The child: note my parent, wait until it is gone, look again."""
    first_parent = os.getppid()
    os.write(hello_w, b"!")  # tell my parent I have looked: it may exit now
    os.read(go_r, 1)  # the demo says: your parent is dead and reaped
    say(f"child  {os.getpid()}: my parent was {first_parent}; now it is {os.getppid()}")
    return 0


def parent(go_r: int, go_w: int) -> int:
    """The middle generation: make a child, then exit without waiting for it."""
    os.close(go_w)  # only the demo writes "go"
    hello_r, hello_w = os.pipe()
    child = fork(lambda: orphan(hello_w, go_r))
    os.close(hello_w)
    os.read(hello_r, 1)
    say(f"parent {os.getpid()}: I made child {child}, and exit without waiting for it")
    return 0


def main() -> None:
    demo = os.getpid()
    go_r, go_w = os.pipe()
    with signals.subreaper():
        say(f"demo   {demo}: I am a child subreaper: I adopt my descendants' orphans")
        middle = fork(lambda: parent(go_r, go_w))
        os.close(go_r)
        exit_status(middle)
        say(f"demo   {demo}: parent {middle} has exited and I reaped it; its child is an orphan")
        os.write(go_w, b"!")
        os.close(go_w)
        adopted = os.wait()[0]  # the orphan is my child now, so I can wait for it
        say(f"demo   {demo}: my adopted child {adopted} has exited and I reaped it")
    say("Without a subreaper, the new parent would be init, pid 1.")


if __name__ == "__main__":
    main()
