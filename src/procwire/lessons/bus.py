"""作业：售票员和司机的故事 -- the homework: the driver and the conductor.

The parent process is the driver (司机), the child the conductor (售票员):

* the conductor catches SIGINT and sends SIGUSR1 to the driver, who says
  老司机开车了 ("off we go");
* the conductor catches SIGQUIT and sends SIGUSR2 to the driver, who says
  系好安全带，小心甩出去 ("fasten your seat belts");
* the driver catches SIGTSTP and sends SIGUSR1 to the conductor, who says
  到站了，下车吧 ("here's the stop") -- and at the stop the conductor gets
  off first (the child exits), then the driver (the parent reaps the child,
  so no zombie is left, and exits).

In a terminal, Ctrl-C, Ctrl-\\ and Ctrl-Z send SIGINT, SIGQUIT and SIGTSTP to
*every* process of the foreground process group -- both the driver and the
conductor. So each one must also refuse the keys meant for the other: the
driver ignores SIGINT and SIGQUIT (or Ctrl-C would kill it), the conductor
ignores SIGTSTP (or Ctrl-Z would stop it).

And there must be no moment when a key press finds a process still on the
default action. So the driver *blocks* the signals before ``fork`` (the
child inherits the mask), and each process sets its actions before it lets
any signal through: a key pressed in between waits, pending, and is handled
properly.

How each one catches its signals: not with ``signal.signal`` handlers, as
the signals lesson does, but *synchronously* -- the signals stay blocked,
and the process takes them one at a time with ``sigwaitinfo``
(``procwire.signals.wait``). In Python a handler runs only between two
bytecodes: a signal that arrives just before a blocking call (``pause()``,
``waitpid()``) is handled only when that call returns, and the bus would
stall. A blocked signal, on the other hand, waits in the kernel until it is
taken: nothing can slip through.
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys

from procwire import signals
from procwire.lessons._common import exit_status, fork, say

#: What each person says, with an English translation for ``--lang en``.
LINES = {
    "drive": ("老司机开车了", "Off we go, with an old hand at the wheel!"),
    "belt": ("系好安全带，小心甩出去", "Fasten your seat belts, or you'll be thrown out!"),
    "stop": ("到站了，下车吧", "Here's the stop, off you get."),
    "conductor_off": ("售票员先下车", "The conductor gets off first"),
    "driver_off": ("然后司机下车", "then the driver gets off."),
}

#: Printed once both processes have their signal actions in place.
READY = "ready: press Ctrl-C, Ctrl-\\ or Ctrl-Z (or use kill)"

#: Every signal of the story, blocked across the fork (SIGCHLD: the conductor got off).
BUS_SIGNALS = ("INT", "QUIT", "TSTP", "USR1", "USR2", "CHLD")


def line(key: str, lang: str) -> str:
    chinese, english = LINES[key]
    return f"{chinese}  ({english})" if lang == "en" else chinese


# --------------------------------------------------------------------------
# The conductor (the child)
# --------------------------------------------------------------------------


def conductor(driver: int, ready_w: int, lang: str) -> int:
    """The conductor's whole life, in the child process (born with the story's signals blocked)."""
    signals.die_with_parent("TERM", parent=driver)  # never left behind without a driver
    signals.ignore("TSTP")  # Ctrl-Z is for the driver: the conductor must not stop
    with signals.unblocked("TSTP"):  # ignored: discarded as they come
        os.write(ready_w, b"!")  # tell the driver we are on board
        os.close(ready_w)
        while True:
            got = signals.wait("INT", "QUIT", "USR1")  # catch them, one at a time
            if got.signal == signal.SIGINT:
                signals.send(driver, "USR1")
            elif got.signal == signal.SIGQUIT:
                signals.send(driver, "USR2")
            else:  # SIGUSR1 from the driver: the stop
                say(line("stop", lang))
                return 0  # the conductor gets off: the child exits


# --------------------------------------------------------------------------
# The driver (the parent)
# --------------------------------------------------------------------------


def drive(conductor_pid: int, lang: str) -> int:
    """Catch the driver's signals until the conductor has got off; return its exit code."""
    at_the_stop = False
    while True:
        got = signals.wait("USR1", "USR2", "TSTP", "CHLD")
        if got.signal == signal.SIGUSR1:
            say(line("drive", lang))
        elif got.signal == signal.SIGUSR2:
            say(line("belt", lang))
        elif got.signal == signal.SIGTSTP:
            if not at_the_stop:  # a second Ctrl-Z finds the conductor leaving
                at_the_stop = True
                signals.send(conductor_pid, "USR1")
        else:  # SIGCHLD: has the conductor got off? Reap it: no zombie
            for child in signals.reap(conductor_pid):
                return child.exitcode


def banner(driver: int, conductor_pid: int) -> None:
    say(f"driver (司机, the parent):     pid {driver}")
    say(f"conductor (售票员, the child): pid {conductor_pid}")
    say(f"  Ctrl-C  SIGINT  -> conductor -> SIGUSR1 -> driver:    {LINES['drive'][0]}"
        f"    (or: kill -INT {conductor_pid})")
    say(f"  Ctrl-\\  SIGQUIT -> conductor -> SIGUSR2 -> driver:    {LINES['belt'][0]}"
        f"    (or: kill -QUIT {conductor_pid})")
    say(f"  Ctrl-Z  SIGTSTP -> driver    -> SIGUSR1 -> conductor: {LINES['stop'][0]}"
        f"    (or: kill -TSTP {driver})")


def main(lang: str = "zh") -> int:
    """Run the bus until the stop; return 0 if the conductor got off properly."""
    driver = os.getpid()
    ready_r, ready_w = os.pipe()
    with contextlib.ExitStack() as actions:  # the driver's signal actions, undone last
        with signals.blocked(*BUS_SIGNALS):  # from before the fork: no key press is lost
            conductor_pid = fork(lambda: conductor(driver, ready_w, lang))
            os.close(ready_w)
            actions.enter_context(signals.ignore("INT", "QUIT"))  # the conductor's keys
            with signals.unblocked("INT", "QUIT"):  # ignored: discarded as they come
                on_board = os.read(ready_r, 1)
                os.close(ready_r)
                if on_board:
                    banner(driver, conductor_pid)
                    say(READY)
                    code = drive(conductor_pid, lang)
                else:  # the conductor died before it was ready
                    code = exit_status(conductor_pid)
            # Signals that come after the stop are dropped, rather than delivered to
            # their default actions when the mask is restored (a late Ctrl-Z would stop us).
            actions.enter_context(signals.ignore("TSTP", "USR1", "USR2"))
    if not on_board or code != 0:
        say(f"the conductor ({conductor_pid}) left with code {code}")
        return 1
    say(f"{line('conductor_off', lang)}  (pid {conductor_pid}, exit code {code})")
    say(line("driver_off", lang))
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:2]))
