"""同步互斥 -- the lost update, without and with a Lock.

A critical resource (临界资源) is one that several processes can change,
like a counter in shared memory; the code that changes it is the critical
section (临界区). ``counter.value += 1`` looks like one step but is three:
read the value, add one, write it back. If two processes read the same
value before either writes, one increment is lost.

Mutual exclusion (互斥) fixes it: a Lock lets one process at a time into the
critical section; the other blocks at ``acquire()`` until the first
releases it. Synchronisation (同步) is the other half of the lesson --
processes agreeing on an order -- shown in the ``event`` lesson.

The experiment itself is ``procwire.experiments.lost_update``: each worker
runs ``counter.value += 1`` in a loop, bare or inside ``with lock:``.
"""
from __future__ import annotations

from procwire.experiments import lost_update  # procwire.Value, procwire.Lock, a Barrier
from procwire.lessons._common import say

WORKERS = 2
INCREMENTS = 100_000


def main() -> None:
    expected = WORKERS * INCREMENTS
    say(f"{WORKERS} processes each add 1 to a shared counter {INCREMENTS:,} times: "
        f"the total should be {expected:,}")

    total = lost_update(WORKERS, INCREMENTS, use_lock=False).actual
    say(f"\nwithout a lock: {total:,} -- {expected - total:,} updates lost")
    if total == expected:
        say("  (none lost this time: the processes did not overlap; run it again)")

    total = lost_update(WORKERS, INCREMENTS, use_lock=True).actual
    say(f"with a lock:    {total:,} -- {expected - total:,} updates lost")
    say("(the experiment's code: procwire/experiments.py, `lost_update`)")


if __name__ == "__main__":
    main()
