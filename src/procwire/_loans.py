"""Zero-copy messages: a writer's loan of ring space, a reader's view of a message.

``Queue.loan(nbytes)`` reserves room for one message in the ring and hands out
a writable memoryview of it, in shared memory: the writer builds the message
in place (``np.copyto(np.frombuffer(buf, ...), frame)``, a ``readinto``, ...)
and it is published when the ``with`` block ends, or discarded if the block
raises. ``Queue.get(copy=False)`` hands out the oldest message as a read-only
memoryview of the ring (a numpy array put with ``put()`` comes back as a
read-only array over it) that stays valid until it is released.

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
held briefly, by the thread that took them.
"""
from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from procwire.queue import Queue

__all__ = ["Loan", "View"]

# Record types (layout.h, enum pw_record_type).
_REC_BYTES, _REC_BYTEARRAY, _REC_PICKLE, _REC_PICKLE_OOB = 1, 2, 3, 4


def _not_this_thread(what: str) -> RuntimeError:
    return RuntimeError(f"{what} must be ended by the thread that took it: it holds "
                        "a lock only that thread can release")


class Loan:
    """Room for one message, written in place; see :meth:`procwire.Queue.loan`.

    ``with q.loan(n) as buf:`` gives ``buf``, a writable memoryview of ``n``
    bytes in shared memory. Leaving the block normally publishes it as one
    message (``get()`` returns it as ``bytes``); leaving it with an exception
    discards it. :meth:`publish` and :meth:`discard` do the same without a
    ``with`` block; ``publish(k)`` publishes only the first ``k`` bytes.
    """

    __slots__ = ("_nbytes", "_owner", "_queue", "_temp", "_view")

    def __init__(self, queue: Queue[Any], nbytes: int, offset: int) -> None:
        self._queue: Queue[Any] | None = queue
        self._nbytes = nbytes
        self._owner = threading.get_ident()
        # A message that would wrap around the ring's end is not contiguous
        # there: it is written into a buffer of ours and copied in on publish.
        self._temp = bytearray(nbytes) if offset < 0 else None
        self._view = (memoryview(self._temp) if self._temp is not None
                      else memoryview(queue._segment.buffer)[offset:offset + nbytes])

    @property
    def buffer(self) -> memoryview:
        """The writable bytes of the message (a memoryview, format ``"B"``)."""
        if self._queue is None:
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
        if self._queue is not None:
            self._end("discard")._loan_abort()

    def _end(self, what: str) -> Queue[Any]:
        queue = self._queue
        if queue is None:
            raise ValueError("this loan was already published or discarded")
        if threading.get_ident() != self._owner:
            raise _not_this_thread(f"a loan's {what}()")
        self._queue = None
        queue._leases.discard(self)
        _release(self._view)
        return queue

    def __enter__(self) -> memoryview:
        return self.buffer

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.publish()
        else:
            self.discard()

    def __del__(self) -> None:
        if self._queue is not None and threading.get_ident() == self._owner:
            self.discard()

    def __repr__(self) -> str:
        state = "open" if self._queue is not None else "ended"
        return f"<procwire.Loan of {self._nbytes} bytes, {state}>"


class View:
    """One message read in place; see :meth:`procwire.Queue.get` with ``copy=False``.

    ``value`` is the message: a read-only memoryview for bytes, bytearrays and
    loans; an object rebuilt over read-only views of the ring for one put with
    out-of-band buffers (a numpy array comes back read-only, without a copy);
    an ordinary unpickled object otherwise. It stays valid until
    :meth:`release` (or the end of the ``with`` block), which consumes the
    message: after that the ring may reuse its bytes.
    """

    __slots__ = ("_owner", "_queue", "_views", "value")

    def __init__(self, queue: Queue[Any], rtype: int, offset: int, length: int,
                 copied: bytes | None) -> None:
        self._owner = threading.get_ident()
        self._views: list[memoryview] = []
        # copied: the message wrapped around the ring's end, so the ring
        # copied it out and consumed it already; nothing is held.
        self._queue: Queue[Any] | None = None if copied is not None else queue
        data = (memoryview(copied) if copied is not None
                else memoryview(queue._segment.buffer)[offset:offset + length].toreadonly())
        self._views.append(data)
        try:
            self.value: Any = self._convert(queue, rtype, data)
        except BaseException:
            self.release()  # consumed, as get() consumes a message it cannot unpickle
            raise

    def _convert(self, queue: Queue[Any], rtype: int, data: memoryview) -> Any:
        if rtype in (_REC_BYTES, _REC_BYTEARRAY):
            return data
        if rtype == _REC_PICKLE:
            return queue._loads(data)
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
        return queue._loads(parts[0], buffers=parts[1:])

    def release(self) -> None:
        """Consume the message; the value must not be used after this. Idempotent."""
        queue = self._queue
        if queue is None:
            return
        if threading.get_ident() != self._owner:
            raise _not_this_thread("a view's release()")
        self._queue = None
        queue._leases.discard(self)
        for v in reversed(self._views):
            _release(v)
        queue._view_end()

    def __enter__(self) -> Any:
        return self.value

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __del__(self) -> None:
        if self._queue is not None and threading.get_ident() == self._owner:
            self.release()

    def __repr__(self) -> str:
        state = "held" if self._queue is not None else "released"
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

