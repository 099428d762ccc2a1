"""Shared by the chaos (random SIGKILL) and fuzz tests: sizes, seeds, payloads.

Sizes: the normal suite runs a small count of each; ``--full-chaos`` (what
.ci/run runs once) runs the full count: at least 1,000 kills per mechanism
and thousands of corrupt segments. ``PROCWIRE_CHAOS_KILLS`` and
``PROCWIRE_FUZZ_CASES`` override the counts, ``PROCWIRE_CHAOS_SEED`` fixes the
seed. Every test prints its seed (shown with the failure report, or with
``-s``) and is reproducible from it: the seed drives every random choice
(victim, timing, payload, corruption), though not the kernel's scheduling.
"""
from __future__ import annotations

import hashlib
import multiprocessing as mp
import os
import random
import signal
import time
from dataclasses import dataclass

import pytest

JOIN = 60            # seconds a survivor gets to finish: generous, the machine is shared
FULL_KILLS = 1000    # per mechanism, with --full-chaos
QUICK_KILLS = 25     # per mechanism, in the normal suite
FULL_FUZZ = 4000     # corrupt segments, with --full-chaos
QUICK_FUZZ = 300

FORK = mp.get_context("fork")  # hundreds of restarts; start methods are covered elsewhere


@dataclass
class Chaos:
    seed: int
    kills: int
    fuzz_cases: int
    full: bool

    def rng(self, label: str) -> random.Random:
        """A generator for one test, derived from the seed and the test's label."""
        return random.Random(f"{self.seed}:{label}")


@pytest.fixture
def chaos(request) -> Chaos:
    full = request.config.getoption("--full-chaos")
    seed = int(os.environ.get("PROCWIRE_CHAOS_SEED", random.randrange(2**32)))
    kills = int(os.environ.get("PROCWIRE_CHAOS_KILLS", FULL_KILLS if full else QUICK_KILLS))
    cases = int(os.environ.get("PROCWIRE_FUZZ_CASES", FULL_FUZZ if full else QUICK_FUZZ))
    print(f"chaos seed={seed} kills={kills} fuzz_cases={cases} "
          f"(reproduce: PROCWIRE_CHAOS_SEED={seed})")
    return Chaos(seed, kills, cases, full)


def payload(tag: int, seq: int, big: bool = False) -> bytes:
    """The message `seq` of sender `tag`: checkable by the receiver, of varied size.

    With `big`, about one message in four is 20-120 KB (streamed through a
    64 KiB pipe ring, whose streaming threshold is a quarter of it).
    """
    rnd = random.Random(tag * 1_000_003 + seq)
    unit = hashlib.sha256(f"{tag}:{seq}".encode()).digest()
    if big and rnd.random() < 0.25:
        return unit * rnd.randint(640, 3800)
    return unit * rnd.randint(0, 90)


def kill(proc, finished_ok: bool = False) -> bool:
    """SIGKILL `proc` and reap it; True if the kill landed.

    It must not have ended by itself before, unless `finished_ok` and it
    ended successfully (a one-shot worker that was done already).
    """
    try:
        os.kill(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.join(JOIN)
    if finished_ok and proc.exitcode == 0:
        return False
    assert proc.exitcode == -signal.SIGKILL, (
        f"a chaos worker ended by itself (exit code {proc.exitcode}) before it was killed: "
        "its error is on stderr above")
    return True


def pause(rnd: random.Random, most: float = 0.01) -> None:
    time.sleep(rnd.uniform(0, most))  # chaos timing (when to kill), not synchronisation


def join_survivors(procs, what: str) -> None:
    """Every survivor must end by itself, successfully, within JOIN seconds."""
    deadline = time.monotonic() + JOIN
    for p in procs:
        p.join(max(0.1, deadline - time.monotonic()))
    hung = [p for p in procs if p.is_alive()]
    for p in hung:
        p.kill()
        p.join(JOIN)
    assert not hung, f"{what}: {len(hung)} survivor(s) still running after {JOIN} s (hang)"
    failed = [p.exitcode for p in procs if p.exitcode != 0]
    assert not failed, f"{what}: survivors failed with exit codes {failed}"


def reap_all(procs) -> None:
    for p in procs:
        if p.is_alive():
            p.kill()
        p.join(JOIN)


def kill_producers_and_consumers(rnd: random.Random, kills: int, q, results, make_producer,
                                 make_consumer, workers: int = 2) -> tuple[list, int]:
    """The queue chaos: `workers` producers and consumers of q, a random one of
    them SIGKILLed `kills` times and restarted (make_producer(tag),
    make_consumer(tag) build them); then the producers are killed, the
    consumers get one None each and must end by themselves. Returns the reports
    the consumers put into `results` and how many consumers were killed."""
    from procwire import Empty

    tags = iter(range(1, 10**9))
    producers = [make_producer(next(tags)) for _ in range(workers)]
    consumers = [make_consumer(next(tags)) for _ in range(workers)]
    delivered: list = []
    consumer_kills = 0

    def drain() -> None:
        while True:
            try:
                delivered.extend(results.get_many(block=False))
            except Empty:
                return

    try:
        for p in producers + consumers:
            p.start()
        for _ in range(kills):
            pause(rnd)
            pool = rnd.choice((producers, consumers))
            i = rnd.randrange(len(pool))
            os.kill(pool[i].pid, signal.SIGKILL)
            pool[i].join(JOIN)
            if pool is producers:
                pool[i] = make_producer(next(tags))
            else:
                consumer_kills += 1
                pool[i] = make_consumer(next(tags))
            pool[i].start()
            drain()
        for p in producers:
            os.kill(p.pid, signal.SIGKILL)
            p.join(JOIN)
        q.put_many([None] * len(consumers), timeout=JOIN)
        join_survivors(consumers, "consumers")
        drain()
    finally:
        reap_all(producers + consumers)
    return delivered, consumer_kills


# -- the kill loop of the random-kill tests over a queue or a pipe ----------------------

def kill_and_replace(pool: list, i: int, make) -> None:
    """SIGKILL ``pool[i]``, reap it, and start ``make()`` in its place."""
    os.kill(pool[i].pid, signal.SIGKILL)
    pool[i].join(JOIN)
    pool[i] = make()
    pool[i].start()


def drain(results, into: list) -> None:
    """Move every report waiting in the procwire queue ``results`` into ``into``."""
    from procwire import Empty
    while True:
        try:
            into.extend(results.get_many(block=False))
        except Empty:
            return


def delivered_by_tag(delivered: list) -> dict[int, set[int]]:
    """Check (tag, seq, ok) reports: none corrupt, none twice; the seqs seen per tag."""
    assert delivered, "nothing was delivered"
    assert all(ok for *_, ok in delivered), "a delivered message was corrupt"
    keys = [(tag, seq) for tag, seq, _ in delivered]
    assert len(keys) == len(set(keys)), "a message was delivered twice"
    by_tag: dict[int, set[int]] = {}
    for tag, seq in keys:
        by_tag.setdefault(tag, set()).add(seq)
    return by_tag


def missing(by_tag: dict[int, set[int]]) -> int:
    """Messages lost inside each tag's numbering (below the highest one seen)."""
    return sum(max(seqs) + 1 - len(seqs) for seqs in by_tag.values())


def take_some(q, rnd: random.Random, batch: int) -> list:
    """One take from ``q`` by a way chosen at random, so that kills land in each:
    get (asleep on an empty queue), get_many of up to ``batch``, or get with a
    short timeout (``[]`` when it runs out)."""
    from procwire import Empty
    mode = rnd.randrange(3)
    if mode == 0:
        return [q.get()]
    if mode == 1:
        return q.get_many(max_messages=batch)
    try:
        return [q.get(timeout=0.01)]
    except Empty:
        return []


def stopped(q, items: list) -> bool:
    """Whether ``items`` (a consumer's take) hold a stop signal (None); the stops
    beyond the first are other consumers': they go back into ``q``."""
    stops = items.count(None)
    if stops > 1:
        q.put_many([None] * (stops - 1))
    return stops > 0
