"""信号 -- signals: send, alarm, pause, handlers, ignore, default.

A signal is an *asynchronous* message: a small number, sent by the kernel
(Ctrl-C, a timer, a child's exit) or by another process with
``kill(pid, sig)``, that interrupts whatever the receiver was doing. Each
signal has a name, a meaning and a default action (``procwire signals``
lists them all). A process chooses, per signal, to

* keep the default (``SIG_DFL``) -- terminate, stop, ignore...;
* ignore it (``SIG_IGN``) -- as if it never came;
* catch it with its own handler function.

SIGKILL and SIGSTOP are the exceptions: they can be neither caught nor
ignored. ``alarm(sec)`` asks the kernel for a SIGALRM after `sec` seconds (a
later alarm replaces the earlier one), and ``pause()`` sleeps until a signal
is handled.
"""
from __future__ import annotations

import os
import time

from procwire import signals
from procwire.lessons._common import exit_status, fork, say


def table_excerpt() -> None:
    say("1. A few of the signals (`procwire signals` lists all of them)")
    for sig in ("INT", "QUIT", "KILL", "USR1", "ALRM", "TERM", "CHLD", "STOP", "TSTP"):
        row = signals.info(sig)
        say(f"  {row.number:2} {row.name:8} {row.action:9} {row.description}")


def send_to_child() -> None:
    say("\n2. Sending: os.kill(pid, sig) -- here signals.send(child, 'USR1')")
    with signals.blocked("USR1"):  # the child is born with USR1 held back: none can be lost

        def child() -> int:
            got = signals.wait("USR1", timeout=5)
            say(f"  child {os.getpid()}: received {got}")
            return 0 if got else 1

        pid = fork(child)
        say(f"  parent {os.getpid()}: sending SIGUSR1 to {pid}")
        signals.send(pid, "USR1")
        exit_status(pid)


def handler() -> None:
    say("\n3. Catching: signal(SIGUSR1, handler)")

    def on_usr1(signum: int, frame: object) -> None:
        say(f"  handler: caught {signals.name(signum)}, then the program went on")

    with signals.handle("USR1", on_usr1):  # the previous action comes back after the block
        signals.send(os.getpid(), "USR1")
        say("  main program: still running")


def alarm_and_pause() -> None:
    say("\n4. alarm(sec) and pause()")
    rang: list[float] = []
    with signals.handle("ALRM", lambda signum, frame: rang.append(time.monotonic())):
        signals.alarm(5)
        start = time.monotonic()
        # A second alarm replaces the first. (It repeats every 0.3 s: should the
        # first ring come just as pause() is starting, the next one still wakes it.)
        left = signals.alarm(0.3, interval=0.3)
        say(f"  alarm(5), then alarm(0.3): the 5 s alarm is replaced ({left:.1f}s were left)")
        signals.pause()  # sleeps until a handled signal arrives
        signals.alarm(0)  # stop the clock
        say(f"  the handler ran: SIGALRM rang after {rang[0] - start:.1f}s, and pause() returned")


def ignore() -> None:
    say("\n5. Ignoring: signal(SIGUSR1, SIG_IGN)")
    with signals.ignore("USR1"):
        signals.send(os.getpid(), "USR1")  # its default action would end this process
        say("  sent myself SIGUSR1 and nothing happened: ignored signals are discarded")


def default_action() -> None:
    say("\n6. The default: SIG_DFL for SIGUSR1 is to terminate")
    ready_r, ready_w = os.pipe()  # child -> parent: "my action is the default now"
    hold_r, hold_w = os.pipe()  # the child waits on this until the signal ends it

    def child() -> int:
        signals.default("USR1")
        os.write(ready_w, b"!")
        os.read(hold_r, 1)  # blocks; returns (EOF) only if the signal did not end us
        return 0

    pid = fork(child)
    os.read(ready_r, 1)
    signals.send(pid, "USR1")
    for fd in (ready_r, ready_w, hold_r, hold_w):
        os.close(fd)
    code = exit_status(pid)
    say(f"  child {pid} exit code {code}: killed by {signals.name(-code)}" if code < 0
        else f"  child {pid} exited with {code}?!")


def uncatchable() -> None:
    say("\n7. SIGKILL and SIGSTOP cannot be caught")
    try:
        signals.handle("KILL", lambda signum, frame: None)
    except signals.UncatchableSignalError as exc:
        say(f"  {exc}")


def main() -> None:
    table_excerpt()
    send_to_child()
    handler()
    alarm_and_pause()
    ignore()
    default_action()
    uncatchable()


if __name__ == "__main__":
    main()
