"""A hypothesis state machine: the ring against a plain deque, with wrap-around.

A small capacity makes records wrap around the end of the ring often, and a
maxsize makes the count limit bite; every step compares the queue with the
model, including what put refuses (Full) and what get finds (Empty).
"""
from __future__ import annotations

from collections import deque

from hypothesis import settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import procwire

CAPACITY = 4096
MAXSIZE = 12
payloads = st.one_of(
    st.binary(max_size=600),
    st.builds(bytearray, st.binary(max_size=300)),
    st.tuples(st.integers(), st.text(max_size=40)),
    st.none(),
)


def record_size(obj) -> int:
    """Bytes the ring spends on one message (header + payload padded to 8)."""
    import pickle
    if type(obj) in (bytes, bytearray):
        n = len(obj)
    else:
        n = len(pickle.dumps(obj, pickle.HIGHEST_PROTOCOL))
    return 8 + (n + 7) // 8 * 8


class RingModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.q = procwire.Queue(MAXSIZE, capacity=CAPACITY)
        self.model: deque = deque()

    def used(self) -> int:
        return sum(record_size(o) for o in self.model)

    def fits(self, objs) -> bool:
        return (len(self.model) + len(objs) <= MAXSIZE
                and self.used() + sum(record_size(o) for o in objs) <= CAPACITY)

    @rule(obj=payloads)
    def put(self, obj):
        if self.fits([obj]):
            self.q.put_nowait(obj)
            self.model.append(obj)
        else:
            try:
                self.q.put_nowait(obj)
            except procwire.Full:
                return
            raise AssertionError("put succeeded on a full queue")

    @rule(objs=st.lists(payloads, max_size=5))
    def put_many(self, objs):
        if self.fits(objs):
            self.q.put_many(objs, block=False)
            self.model.extend(objs)

    @precondition(lambda self: self.model)
    @rule()
    def get(self):
        assert self.q.get_nowait() == self.model.popleft()

    @precondition(lambda self: not self.model)
    @rule()
    def get_empty(self):
        try:
            self.q.get_nowait()
        except procwire.Empty:
            return
        raise AssertionError("get succeeded on an empty queue")

    @precondition(lambda self: self.model)
    @rule(n=st.integers(1, 6))
    def get_many(self, n):
        expected = [self.model.popleft() for _ in range(min(n, len(self.model)))]
        assert self.q.get_many(block=False, max_messages=n) == expected

    @invariant()
    def sizes_agree(self):
        assert self.q.qsize() == len(self.model)
        assert self.q.empty() == (not self.model)
        assert self.q.full() == (len(self.model) >= MAXSIZE)
        assert self.q.statistics()["bytes_used"] == self.used()

    def teardown(self):
        self.q.close()


TestRing = RingModel.TestCase
TestRing.settings = settings(max_examples=150, stateful_step_count=60, deadline=None)
