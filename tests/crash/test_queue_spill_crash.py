"""The spill area under SIGKILL (issue 11 item 1): producers and consumers of an
unbounded queue whose ring is tiny, so that most messages, and every message
larger than the ring, go through the spill; and the states a process killed
between the steps of a spilling publish leaves (layout.h, "The spill area"),
made by hand and repaired by the next process."""
from __future__ import annotations

import hashlib
import os
import random
import struct
import time

import pytest
from chaoshelpers import (  # noqa: F401 (chaos: a fixture)
    FORK,
    JOIN,
    chaos,
    kill_producers_and_consumers,
    stopped,
    take_some,
)

from procwire import Queue
from procwire._core import _testing

MiB = 1 << 20

# The byte offsets in a queue segment of the ring's words (struct pw_ring,
# layout.h), as the core reports them: the tests follow the struct's changes.
_WORDS = _testing.queue_words
TAIL, OV_TAIL, OV_TAIL_INTENT, OV_TAIL_INTENT_END = (
    _WORDS[w] for w in ("tail", "ov_tail", "ov_tail_intent", "ov_tail_intent_end"))
HEAD, OV_HEAD, OV_HEAD_INTENT, OV_HEAD_INTENT_END = (
    _WORDS[w] for w in ("head", "ov_head", "ov_head_intent", "ov_head_intent_end"))
VALID = _testing.spill_intent_valid


def _u64(q, off):
    return struct.unpack_from("<Q", q._segment.buffer, off)[0]


def _set(q, off, value):
    struct.pack_into("<Q", q._segment.buffer, off, value)


def _spilled_queue(n=20):
    q = Queue(capacity=4096)
    for i in range(n):
        q.put((i, b"s" * 900))
    assert _u64(q, OV_TAIL) > 0 and _u64(q, TAIL) == q._word(0)  # the offsets are right
    return q


def test_producer_killed_after_publishing_before_moving_ov_tail():
    q = _spilled_queue()
    try:
        # What a producer killed between its publishing store and its ov_tail
        # store leaves: the count includes its record, ov_tail does not.
        count, ov_tail = _u64(q, TAIL) >> 32, _u64(q, OV_TAIL)
        q.put((20, b"s" * 900))
        end = _u64(q, OV_TAIL)
        _set(q, OV_TAIL_INTENT_END, end)
        _set(q, OV_TAIL_INTENT, VALID | count)
        _set(q, OV_TAIL, ov_tail)
        q.put((21, b"s" * 900))  # repairs first, then appends after record 20
        assert [q.get(timeout=JOIN)[0] for _ in range(22)] == list(range(22))
        assert q.qsize() == 0 and _u64(q, OV_TAIL_INTENT) == 0
    finally:
        q.close()


def test_producer_killed_before_publishing_leaves_nothing_visible():
    q = _spilled_queue()
    try:
        count, ov_tail = _u64(q, TAIL) >> 32, _u64(q, OV_TAIL)
        # Killed after writing a record and its intent, before the publish.
        _set(q, OV_TAIL_INTENT_END, ov_tail + 4096)
        _set(q, OV_TAIL_INTENT, VALID | count)
        q.put((20, b"s" * 900))  # drops the intent and overwrites the record
        assert [q.get(timeout=JOIN)[0] for _ in range(21)] == list(range(21))
        assert q.qsize() == 0
    finally:
        q.close()


def test_consumer_killed_after_taking_before_moving_ov_head():
    q = _spilled_queue()
    try:
        # Drain the ring, then take one spilled record as a killed consumer
        # would have: its head store done, ov_head not moved.
        while _u64(q, HEAD) & 0xffffffff != _u64(q, TAIL) & 0xffffffff:
            q.get(timeout=JOIN)
        first = q.qsize()
        count, ov_head = _u64(q, HEAD) >> 32, _u64(q, OV_HEAD)
        got = q.get(timeout=JOIN)
        end = _u64(q, OV_HEAD)
        _set(q, OV_HEAD_INTENT_END, end)
        _set(q, OV_HEAD_INTENT, VALID | count)
        _set(q, OV_HEAD, ov_head)
        rest = [q.get(timeout=JOIN)[0] for _ in range(first - 1)]
        assert rest == list(range(got[0] + 1, 20)) and q.qsize() == 0
    finally:
        q.close()


def test_consumer_killed_before_publishing_takes_nothing():
    q = _spilled_queue()
    try:
        while _u64(q, HEAD) & 0xffffffff != _u64(q, TAIL) & 0xffffffff:
            q.get(timeout=JOIN)
        left = q.qsize()
        count, ov_head = _u64(q, HEAD) >> 32, _u64(q, OV_HEAD)
        _set(q, OV_HEAD_INTENT_END, ov_head + 4096)
        _set(q, OV_HEAD_INTENT, VALID | count)
        got = [q.get(timeout=JOIN)[0] for _ in range(left)]
        assert got == list(range(20 - left, 20)) and q.qsize() == 0
    finally:
        q.close()


# -- chaos ----------------------------------------------------------------------

def _payload(tag: int, seq: int) -> bytes:
    rnd = random.Random(tag * 1_000_003 + seq)
    unit = hashlib.sha256(f"{tag}:{seq}".encode()).digest()
    # One message in ten is larger than the 4 KiB ring: spilled whatever the state.
    return unit * (rnd.randint(200, 700) if rnd.random() < 0.1 else rnd.randint(0, 60))


def _producer(q, tag, limit):
    rnd = random.Random(tag)
    seq = 0
    while True:
        if q.qsize() > limit:  # back-pressure, so the backlog stays bounded
            time.sleep(0.0005)
            continue
        if rnd.random() < 0.5:
            q.put((tag, seq, _payload(tag, seq)))
            seq += 1
        else:
            n = rnd.randint(2, 8)
            q.put_many([(tag, seq + i, _payload(tag, seq + i)) for i in range(n)])
            seq += n


BATCH = 6


def _consumer(q, results, me):
    rnd = random.Random(me)
    last: dict[int, int] = {}
    while True:
        items = take_some(q, rnd, BATCH)
        if not items:
            continue
        reports = []
        for item in items:
            if item is None:
                continue
            tag, seq, body = item
            # FIFO as one producer's puts are seen by one consumer.
            in_order = seq > last.get(tag, -1)
            last[tag] = seq
            reports.append((tag, seq, body == _payload(tag, seq), in_order))
        results.put_many(reports)
        if stopped(q, items):
            return


@pytest.mark.chaos
def test_spill_producers_and_consumers_killed_at_random(chaos):
    rnd = chaos.rng("spill")
    kills = max(chaos.kills, 100)
    q = Queue(capacity=4096)
    results = Queue(capacity=64 << 20)
    delivered, consumer_kills = kill_producers_and_consumers(
        rnd, kills, q, results,
        lambda tag: FORK.Process(target=_producer, args=(q, tag, 4000)),
        lambda tag: FORK.Process(target=_consumer, args=(q, results, tag)))
    try:
        assert delivered, "nothing was delivered"
        assert all(ok for _, _, ok, _ in delivered), "a delivered message was corrupt"
        assert all(order for *_, order in delivered), "a consumer saw a producer out of order"
        keys = [(tag, seq) for tag, seq, _, _ in delivered]
        assert len(keys) == len(set(keys)), "a message was delivered twice"
        by_tag: dict[int, set[int]] = {}
        for tag, seq in keys:
            by_tag.setdefault(tag, set()).add(seq)
        missing = sum(max(seqs) + 1 - len(seqs) for seqs in by_tag.values())
        assert missing <= BATCH * consumer_kills, f"{missing} lost, {consumer_kills} killed"
        stats = q.statistics()
        assert stats["messages"] == q.qsize() == 0 and stats["spill_bytes"] == 0, stats
        assert stats["total_in"] == stats["total_out"], stats
        # The spill's memory went back: at most the allocation ahead and a page.
        held = os.fstat(q._segment.io_fd).st_blocks * 512 - q._segment.size
        assert held <= 2 * MiB, held
        q.put(b"x" * 10000)  # and the queue still works, spill included
        assert q.get(timeout=10) == b"x" * 10000
        print(f"spill: kills={kills} delivered={len(delivered)} lost={missing} "
              f"owner_died={stats['owner_died']} spilled_held={held}")
    finally:
        q.close()
        results.close()
