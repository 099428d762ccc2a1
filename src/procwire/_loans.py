"""Zero-copy messages: a writer's loan of ring space, a reader's view of a message.

``Queue.loan(nbytes)`` and ``Connection.loan(nbytes)`` (a Pipe end) reserve
room for one message in the ring and hand out a writable memoryview of it, in
shared memory: the writer builds the message in place
(``np.copyto(np.frombuffer(buf, ...), frame)``, a ``readinto``, ...) and it is
published when the ``with`` block ends, or discarded if the block raises.
``Queue.get(copy=False)`` and ``Connection.recv_bytes(copy=False)`` hand out
the oldest message as a read-only memoryview of the ring (a numpy array put
with ``Queue.put()`` comes back as a read-only array over it) that stays valid
until it is released. Both types use this module through :class:`Lender`;
the native halves are ``_core/bind/lease.c``.

How it stays crash-safe (the ring's rules, ring.c): a loan holds the
producers' robust lock, and its message becomes visible only with the one
publishing store made on exit; a writer killed inside the loan publishes
nothing, and the next producer takes the lock over. A view holds the
consumers' lock, and the message is consumed (its room freed) when the view
is released; a reader killed holding a view frees it: the next reader takes
the lock over and drops the message the dead reader held, exactly as a
reader killed inside ``get()`` loses at most the message it was taking.

While a loan is open, other producers wait for it (in every process); while a
view is open, other consumers do. Loans and views are for large messages,
held briefly, by the thread that took them. A Pipe end's loan also holds its
send lock (a loan never lands between a streamed message's pieces), its view
the end's receive lock.
"""
from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from procwire import _pickle

if TYPE_CHECKING:
    from procwire._segment import Segment

__all__ = ["Lender", "Loan", "View"]

# Record types (layout.h, enum pw_record_type).
_REC_BYTES, _REC_BYTEARRAY, _REC_PICKLE, _REC_PICKLE_OOB = 1, 2, 3, 4


class Lender:
    """What a Queue and a Pipe end share for loans and views: the bookkeeping of
    this handle's open ones, per thread. The native methods are the type's
    (``_loan_begin``/``_loan_commit``, ``_view_begin``, and ``_end_lease`` for both)."""

    if TYPE_CHECKING:
        _segment: Segment  # its mapping is what the offsets index

        def _describe(self) -> str: ...
        def _loan_begin(self, nbytes: int, block: bool = ...,
                        timeout: float | None = ...) -> int: ...
        def _loan_commit(self, nbytes: int, written: Any, /) -> None: ...
        def _end_lease(self, view: bool, /) -> None: ...

    _leases: set[Loan | View]  # this handle's open loans and views
    _loads = staticmethod(_pickle.loads)  # what a view's pickled message goes through

    def _lend(self, nbytes: int, block: bool, timeout: float | None) -> Loan:
        if not isinstance(nbytes, int) or isinstance(nbytes, bool):
            raise TypeError(f"nbytes must be an int, not {type(nbytes).__name__}")
        if nbytes < 0:
            raise ValueError(f"nbytes must be >= 0, not {nbytes}")
        self._check_own(Loan, "has an open loan on it; publish or discard it before another")
        offset = self._loan_begin(nbytes, block, timeout)
        try:
            loan = Loan(self, nbytes, offset)
        except BaseException:
            self._end_lease(False)
            raise
        self._leases.add(loan)
        return loan

    def _viewed(self, begun: tuple[int, int, int, bytes | None]) -> View:
        """The View of what ``_view_begin`` returned."""
        view = View(self, *begun)
        if begun[3] is None:
            self._leases.add(view)
        return view

    def _check_own(self, kind: type, doing: str) -> None:
        me = threading.get_ident()
        if self._leases and any(isinstance(x, kind) and x._owner == me for x in self._leases):
            raise RuntimeError(f"{self._describe()}: this thread {doing}")

    def _end_leases(self) -> None:
        """Before a close: discard this thread's loans, release its views."""
        leases = getattr(self, "_leases", None)
        if not leases:
            return
        me = threading.get_ident()
        if any(x._owner != me for x in leases):
            raise RuntimeError(f"{self._describe()}: another thread of this process holds a "
                               "loan or view of it; end that first")
        for x in list(leases):
            x._close()


class _Lease:
    """What a Loan and a View share: the handle whose lock it holds, and the
    thread that took it, the only one that may end it."""

    __slots__ = ("_owner", "_source")

    def __init__(self, source: Lender | None) -> None:
        self._source = source
        self._owner = threading.get_ident()

    def _detach(self, what: str) -> Lender | None:
        """Stop counting as the handle's open lease: its handle, None if ended already."""
        source = self._source
        if source is not None:
            if threading.get_ident() != self._owner:
                raise RuntimeError(f"{what} must be ended by the thread that took it: it "
                                   "holds a lock only that thread can release")
            self._source = None
            source._leases.discard(self)
        return source

    def _close(self) -> None:
        """End it without a result: a loan is discarded, a view released."""
        raise NotImplementedError

    def __del__(self) -> None:
        if self._source is not None and threading.get_ident() == self._owner:
            self._close()


class Loan(_Lease):
    """Room for one message, written in place; see :meth:`procwire.Queue.loan`.

    ``with q.loan(n) as buf:`` gives ``buf``, a writable memoryview of ``n``
    bytes in shared memory. Leaving the block normally publishes it as one
    message (``get()`` and ``recv_bytes()`` return it as ``bytes``); leaving
    it with an exception discards it. :meth:`publish` and :meth:`discard` do
    the same without a ``with`` block; ``publish(k)`` publishes only the first
    ``k`` bytes.
    """

    __slots__ = ("_nbytes", "_temp", "_view")

    def __init__(self, source: Lender, nbytes: int, offset: int) -> None:
        super().__init__(source)
        self._nbytes = nbytes
        # A message that would wrap around the ring's end is not contiguous
        # there: it is written into a buffer of ours and copied in on publish.
        self._temp = bytearray(nbytes) if offset < 0 else None
        self._view = (memoryview(self._temp) if self._temp is not None
                      else memoryview(source._segment.buffer)[offset:offset + nbytes])

    @property
    def buffer(self) -> memoryview:
        """The writable bytes of the message (a memoryview, format ``"B"``)."""
        if self._source is None:
            raise ValueError("this loan was already published or discarded")
        return self._view

    @property
    def in_place(self) -> bool:
        """True if the buffer is the ring itself (False: it is copied in on publish,
        for a message that would wrap around the ring's end)."""
        return self._temp is None

    def publish(self, nbytes: int | None = None) -> None:
        """Publish the first ``nbytes`` bytes (default: all) as one message."""
        n = self._nbytes if nbytes is None else nbytes
        if not isinstance(n, int) or isinstance(n, bool) or not 0 <= n <= self._nbytes:
            raise ValueError(f"publish() takes a byte count from 0 to the {self._nbytes} "
                             f"bytes loaned, not {n!r}")
        self._end("publish")._loan_commit(n, self._temp)

    def discard(self) -> None:
        """Give the room back: nothing is published. Idempotent."""
        if self._source is not None:
            self._end("discard")._end_lease(False)

    _close = discard

    def _end(self, what: str) -> Lender:
        source = self._detach(f"a loan's {what}()")
        if source is None:
            raise ValueError("this loan was already published or discarded")
        _release(self._view)
        return source

    def __enter__(self) -> memoryview:
        return self.buffer

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.publish()
        else:
            self.discard()

    def __repr__(self) -> str:
        state = "open" if self._source is not None else "ended"
        return f"<procwire.Loan of {self._nbytes} bytes, {state}>"


class View(_Lease):
    """One message read in place; see :meth:`procwire.Queue.get` with ``copy=False``
    and :meth:`procwire.pipe.Connection.recv_bytes` with ``copy=False``.

    ``value`` is the message: a read-only memoryview for bytes, bytearrays,
    loans and every Pipe message; an object rebuilt over read-only views of
    the ring for one put with out-of-band buffers (a numpy array comes back
    read-only, without a copy); an ordinary unpickled object otherwise. It
    stays valid until :meth:`release` (or the end of the ``with`` block),
    which consumes the message: after that the ring may reuse its bytes.
    """

    __slots__ = ("_views", "value")

    def __init__(self, source: Lender, rtype: int, offset: int, length: int,
                 copied: bytes | None) -> None:
        # copied: the message was not one record in place (it wrapped around
        # the ring's end, was spilled or streamed), so it was copied out and
        # consumed already; nothing is held.
        super().__init__(None if copied is not None else source)
        self._views: list[memoryview] = []
        data = (memoryview(copied) if copied is not None
                else memoryview(source._segment.buffer)[offset:offset + length].toreadonly())
        self._views.append(data)
        try:
            self.value: Any = self._convert(source, rtype, data)
        except BaseException:
            self.release()  # consumed, as get() consumes a message it cannot unpickle
            raise

    def _convert(self, source: Lender, rtype: int, data: memoryview) -> Any:
        if rtype in (_REC_BYTES, _REC_BYTEARRAY):
            return data
        if rtype == _REC_PICKLE:
            return source._loads(data)
        # _REC_PICKLE_OOB: u64 nparts, u64 len[nparts], then the parts (ring.c
        # checked that the lengths add up before handing the record out).
        nparts = int.from_bytes(data[:8], "little") & 0xFFFFFFFF
        lens = data[8:8 + 8 * nparts].cast("Q")
        pos = 8 + 8 * nparts
        parts = []
        for n in lens:
            part = data[pos:pos + n]
            self._views.append(part)
            parts.append(part)
            pos += n
        return source._loads(parts[0], buffers=parts[1:])

    def release(self) -> None:
        """Consume the message; the value must not be used after this. Idempotent."""
        source = self._detach("a view's release()")
        if source is None:
            return
        for v in reversed(self._views):
            _release(v)
        source._end_lease(True)

    def __enter__(self) -> Any:
        return self.value

    def __exit__(self, *exc: object) -> None:
        self.release()

    _close = release

    def __repr__(self) -> str:
        state = "held" if self._source is not None else "released"
        return f"<procwire.View {type(self.value).__name__}, {state}>"


def _release(view: memoryview) -> None:
    """Release our memoryview of the ring if nothing made from it is alive.

    A numpy array made from it keeps it (and with it the mapping) alive; its
    bytes are the ring's, reused after the message is consumed.
    """
    try:
        view.release()
    except BufferError:
        pass

