"""什么是进程 -- what a process is.

A program is a file; a process is that program *running*: the kernel gives
it a number (pid), remembers who started it (its parent, ppid), keeps its
memory and open files, and tracks its state -- running, sleeping, stopped,
zombie. ``ps`` reads all of this from ``/proc/PID/stat``, and so does this
lesson: first about itself, then about a child that sleeps until told to go.
"""
from __future__ import annotations

import os

from procwire.lessons._common import exit_status, fork, proc_stat, say, wait_for_state


def describe(pid: int | str, who: str) -> None:
    stat = proc_stat(pid)
    say(f"  {who}: pid {stat.pid}, parent (ppid) {stat.ppid}, command {stat.command!r}")
    say(f"  {'':{len(who)}}  state {stat.state} = {stat.state_meaning}")


def main() -> None:
    say("Me, reading /proc/self/stat (I am running while I read it):")
    describe("self", "me")

    say("\nA child that blocks reading a pipe until I write to it:")
    go_r, go_w = os.pipe()

    def child() -> int:
        os.close(go_w)
        os.read(go_r, 1)  # sleeps here: state S
        return 0

    pid = fork(child)
    os.close(go_r)
    wait_for_state(pid, "S")  # watch /proc until it has reached the read()
    describe(pid, "child")
    say(f"  its ppid is my pid ({os.getpid()}): I am its parent")

    os.write(go_w, b"!")  # wake it; it returns 0
    os.close(go_w)
    say(f"\nWoken up, the child exited with code {exit_status(pid)}; /proc/{pid} is gone: "
        f"{not os.path.exists(f'/proc/{pid}')}")


if __name__ == "__main__":
    main()
