"""Random SIGKILLs inside a Pipe's streaming paths.

Several sender processes share one end and send messages mostly larger than
a quarter of the ring (streamed in pieces under the end's send lock); several
receiver processes share the other end (a streamed message is taken under its
receive lock). Senders and receivers are killed at random moments. Properties:

* every message received is intact (content derived from its tag and number);
* none is received twice;
* a killed sender loses at most the message it was sending (each sender's
  messages arrive as a prefix 0..k-1, modulo receiver kills below);
* a killed receiver loses at most the message it was taking or reporting
  (the gaps across all senders number at most the receiver kills);
* afterwards, fresh senders and the surviving receivers finish within a
  timeout and every message of theirs arrives.

The "stall" variant also stops senders (SIGSTOP/SIGCONT) in mid-stream, so
that the single receiver's timeouts interrupt streamed messages constantly:
it must lose nothing but the killed senders' last messages.

PROCWIRE_CHAOS_KILLS sets the number of kills (default 40; CI runs 1000),
PROCWIRE_CHAOS_SEED the seed (printed).
"""
from __future__ import annotations

import hashlib
import multiprocessing as mp
import os
import random
import signal
import sys
import time

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "crash"))
from chaoshelpers import delivered_by_tag, drain, kill_and_replace, missing

import procwire

pytestmark = pytest.mark.timeout(600)

JOIN = 30
CAPACITY = 16384  # pieces of 4 KiB


def _payload(tag: int, seq: int) -> bytes:
    rnd = random.Random(tag * 1_000_003 + seq)
    size = rnd.choice((rnd.randint(1, 4000), rnd.randint(4000, 70000)))
    head = tag.to_bytes(4, "little") + seq.to_bytes(4, "little")
    block = hashlib.sha256(head).digest()
    return head + (block * (size // 32 + 1))[:size]


def _sender(conn, tag: int, count: int) -> None:
    for seq in range(count):
        conn.send_bytes(_payload(tag, seq))


def _receiver(conn, results, timeouts: bool) -> None:
    while True:
        try:
            # Timeouts interrupt streamed messages half-way, on purpose. They
            # are for a lone receiver: an interrupted message waits for the
            # next receive of the same Connection, and another process
            # receiving on the same end meanwhile drops it (README).
            data = conn.recv_bytes(timeout=random.uniform(0.001, 0.05) if timeouts else None)
        except TimeoutError:
            continue
        except EOFError:
            return
        if data == b"stop":
            return
        tag = int.from_bytes(data[:4], "little")
        seq = int.from_bytes(data[4:8], "little")
        results.put((tag, seq, data == _payload(tag, seq)))


@pytest.mark.parametrize("mode", ["kill", "stall"])
def test_chaos_kill_senders_and_receivers_mid_stream(mode):
    seed = int(os.environ.get("PROCWIRE_CHAOS_SEED") or random.randrange(2**32))
    kills = int(os.environ.get("PROCWIRE_CHAOS_KILLS") or 40)
    print(f"pipe chaos mode={mode} seed={seed} kills={kills}")
    rnd = random.Random(seed)
    ctx = mp.get_context("fork")  # hundreds of restarts; start methods are covered elsewhere
    rx, tx = procwire.Pipe(capacity=CAPACITY)
    results = procwire.Queue(capacity=16 << 20)
    tags = iter(range(1, 10**9))
    senders = [ctx.Process(target=_sender, args=(tx, next(tags), 10**9)) for _ in range(3)]
    timeouts = mode == "stall"
    receivers = [ctx.Process(target=_receiver, args=(rx, results, timeouts))
                 for _ in range(1 if timeouts else 2)]
    finals: list = []
    delivered: list[tuple[int, int, bool]] = []
    receiver_kills = 0
    final_tags: list[int] = []
    try:
        for p in senders + receivers:
            p.start()
        stats = rx.statistics
        for _ in range(kills):
            # Let some streaming happen first, then strike at a random moment.
            before = stats()["streamed_received"]
            deadline = time.monotonic() + JOIN
            while stats()["streamed_received"] == before:
                assert time.monotonic() < deadline, "the pipe stopped moving"
                time.sleep(0.0005)
            time.sleep(rnd.uniform(0, 0.005))  # chaos timing, not synchronisation
            if mode == "stall":
                victim = rnd.choice(senders)
                os.kill(victim.pid, signal.SIGSTOP)
                time.sleep(rnd.uniform(0, 0.06))  # long enough for receive timeouts
                os.kill(victim.pid, signal.SIGCONT)
                time.sleep(rnd.uniform(0, 0.005))
            pool = senders if mode == "stall" or rnd.random() < 0.6 else receivers
            if pool is senders:
                kill_and_replace(pool, rnd.randrange(len(pool)), lambda: ctx.Process(
                    target=_sender, args=(tx, next(tags), 10**9)))
            else:
                receiver_kills += 1
                kill_and_replace(pool, rnd.randrange(len(pool)), lambda: ctx.Process(
                    target=_receiver, args=(rx, results, timeouts)))
            drain(results, delivered)
        for p in senders:
            os.kill(p.pid, signal.SIGKILL)
            p.join(JOIN)
        # Survivors: fresh senders with a known count must get everything through.
        final_tags = [next(tags) for _ in range(3)]
        finals = [ctx.Process(target=_sender, args=(tx, tag, 30)) for tag in final_tags]
        for p in finals:
            p.start()
        for p in finals:
            p.join(JOIN)
            assert p.exitcode == 0, "a surviving sender did not finish"
        for _ in receivers:
            tx.send_bytes(b"stop")
        for p in receivers:
            p.join(JOIN)
            assert p.exitcode == 0, "a surviving receiver did not finish"
        drain(results, delivered)
    finally:
        for p in senders + receivers + finals:
            if p.is_alive():
                p.kill()
                p.join(JOIN)
        statistics = rx.statistics()
        send_owner_died = tx.statistics()["send_owner_died"]
        rx.close()
        tx.close()
        results.close()

    by_tag = delivered_by_tag(delivered)
    gaps = missing(by_tag)
    for tag in final_tags:
        gaps += 30 - len(by_tag.get(tag, ()))
    assert gaps <= receiver_kills, (
        f"{gaps} messages lost inside the streams, but only {receiver_kills} receivers "
        f"were killed (seed {seed})")
    print(f"pipe chaos: {len(delivered)} messages, {receiver_kills} receiver kills, "
          f"{kills - receiver_kills} sender kills, {gaps} lost to receiver kills, "
          f"{statistics['partial_dropped']} partial messages dropped, "
          f"{send_owner_died} sends found a dead sender's lock, "
          f"{statistics['recv_owner_died']} receives a dead receiver's")
