"""The loop each pool worker process runs, and the wire format it speaks.

Each worker owns one duplex ``procwire.Pipe`` with the parent; nothing is
shared between workers, so a worker killed anywhere can only lose what it
held itself.

Parent -> worker, one message per batch of tasks: two pickles back to back,
``(count, sizes)`` then the spans ``[(kind, func, flat, items), ...]``,
followed by one message per out-of-band buffer (``sizes`` are their lengths;
see :func:`dumps_oob`). A span is consecutive tasks of one job with one function: ``items[k]``
is one task's argument -- ``(args, kwds)`` for ``APPLY``, one item for a
``flat`` map (chunksize 1), a chunk (a list of items) otherwise. The count
comes first so that a worker that cannot unpickle the spans (a class its
interpreter cannot import, say) can still account for them. An empty message
means "exit".

Worker -> parent, one pickle per message:

* ``(READY, pid)`` once the initializer has run;
* ``(INIT_FAILED, exception)`` if it raised (then the worker exits);
* ``(RESULTS, first, seconds, values, errors, nested)``: the outcomes of
  tasks ``first, first + 1, ...`` of the worker's stream (every task it was
  sent, numbered from 0 in the order sent; the parent's ledger knows which
  tasks those are, and checks ``first``). ``values[i]`` is the value when it is
  made only of plain built-in values (numbers, strings, bytes, None, and
  short lists or tuples of them), which cannot fail to unpickle; any other value is
  pickled on its own in ``nested`` as ``(i, bytes, sizes)``, its large
  buffers following the message as messages of their own, in order; an
  exception (or a
  value that cannot be pickled) in ``errors`` as ``(i, bytes)``, so that one
  that cannot be pickled here, or unpickled in the parent, fails only its own
  task. ``seconds`` (the batch's running time) is set on the last message of
  a batch, else None; a long batch sends what it has after ``FLUSH_AFTER``
  seconds, so results are never held back for long.
* ``(BAD_BATCH, first, count, exception)``: the batch of tasks ``first`` to
  ``first + count - 1`` could not be unpickled; the parent re-sends them one
  by one to find the culprit.

The worker publishes, in a shared 64-bit word, how many tasks of its stream
it has started (before each one runs): the parent reads it when the worker
dies, to tell the tasks that ran from those that never started.
"""
from __future__ import annotations

import io
import os
import pickle
import signal
import time
import weakref
from itertools import starmap
from multiprocessing.pool import ExceptionWithTraceback, MaybeEncodingError  # type: ignore[attr-defined]
from typing import Any

READY, INIT_FAILED, RESULTS, BAD_BATCH = range(4)
_PLAIN = frozenset({int, float, str, bytes, bool, type(None), complex})
APPLY, MAP, STARMAP = range(3)
FLUSH_AFTER = 0.005
_PROTOCOL = pickle.HIGHEST_PROTOCOL
OUT_OF_BAND = 1 << 16  # bytes: a buffer this large travels beside its pickle
# Tasks run in slices between which the worker reads the clock (to flush a
# long batch's results); a slice is sized to take about this long.
_SLICE_SECONDS = 0.0005

# The parent's ends of every pool pipe in this process. A worker started by
# fork inherits them and closes them at once: otherwise worker k would keep
# worker j's pipe open, and j would not see end-of-file when the parent dies.
parent_ends: weakref.WeakSet[Any] = weakref.WeakSet()

# In a worker: its own end of its pipe (diagnostics and crash tests read its
# statistics()).
connection: Any = None


def dump_exception(exc: BaseException) -> bytes:
    """Pickle an exception with its traceback text (multiprocessing's RemoteTraceback)."""
    try:
        return pickle.dumps(ExceptionWithTraceback(exc, exc.__traceback__), _PROTOCOL)
    except Exception as e:
        return pickle.dumps(MaybeEncodingError(e, exc), _PROTOCOL)


def dumps_oob(obj: Any, raws: list[memoryview]) -> tuple[bytes, list[int]]:
    """Pickle `obj` (protocol 5) with its large contiguous buffers out of band.

    A buffer of at least ``OUT_OF_BAND`` bytes (a numpy array's data, say) is
    not copied into the pickle: it is appended to `raws`, to be sent as a
    message of its own straight from the object's memory, and read on the
    other side into a buffer of its own (:func:`recv_buffers`) that the
    unpickled object uses as it is. Returns the pickle and the buffers' sizes.
    """
    sizes: list[int] = []

    def take(buffer: pickle.PickleBuffer) -> bool:
        try:
            raw = buffer.raw()
        except BufferError:
            return True  # not contiguous: in band
        if raw.nbytes < OUT_OF_BAND:
            return True
        raws.append(raw)
        sizes.append(raw.nbytes)
        return False

    return pickle.dumps(obj, _PROTOCOL, buffer_callback=take), sizes


def recv_buffers(conn: Any, sizes: list[int]) -> list[bytearray]:
    """The out-of-band buffers that follow a message, each in a writable buffer of its own."""
    out = []
    for n in sizes:
        buf = bytearray(n)
        conn.recv_bytes_into(buf)
        out.append(buf)
    return out


def _set_aside(values: list[Any], errors: list[tuple[int, bytes]],
               raws: list[memoryview]) -> list[tuple[int, bytes, list[int]]]:
    """Pickle, each on its own, the values that are not plain; return them as ``nested``.

    Plain values stay in ``values`` (one pickle for all of them, which cannot
    fail to load); the others are replaced by None there. Their large buffers
    go to `raws`, to be sent after the message.
    """
    plain = _PLAIN
    if plain.issuperset(map(type, values)):
        return []
    nested = []
    for i, v in enumerate(values):
        kind = type(v)
        if kind in plain:
            continue
        if (kind is list or kind is tuple) and len(v) <= 32 and plain.issuperset(map(type, v)):
            continue  # (a long list pickles faster than it is checked)
        mark = len(raws)
        try:
            payload, sizes = dumps_oob(v, raws)
            nested.append((i, payload, sizes))
        except Exception as e:
            del raws[mark:]
            errors.append((i, pickle.dumps(MaybeEncodingError(e, v), _PROTOCOL)))
        values[i] = None
    return nested


def _send_results(send: Any, first: int, seconds: float | None, values: list[Any],
                  errors: list[tuple[int, bytes]]) -> None:
    raws: list[memoryview] = []
    nested = _set_aside(values, errors, raws)
    send(pickle.dumps((RESULTS, first, seconds, values, errors, nested), _PROTOCOL))
    for raw in raws:
        send(raw)


def _caller(kind: int, func: Any, flat: bool) -> Any:
    """The function of one task's argument that runs it."""
    if kind == APPLY:
        return lambda a: func(*a[0], **a[1])
    if flat:
        return func if kind == MAP else (lambda a: func(*a))
    if kind == MAP:
        return lambda chunk: list(map(func, chunk))
    return lambda chunk: list(starmap(func, chunk))


def worker_main(conn: Any, progress: Any, initializer: Any, initargs: tuple[Any, ...],
                maxtasks: int | None) -> None:
    """Run batches from `conn` until told to stop, `maxtasks` are done, or the parent is gone.

    `progress` is a shared 64-bit value: before each task starts, the number
    of tasks this worker has started so far, published by one aligned store.
    If the worker dies, the parent reads it to tell the tasks that ran (they
    are lost: WorkerLost, or a retry) from the ones that never started (sent
    elsewhere as if nothing happened).
    """
    # Ctrl-C on a terminal reaches the whole process group: the parent decides
    # what happens to the pool (it terminates it); workers must not die of it
    # in the middle of a task.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for end in list(parent_ends):
        end.close()
    global connection
    connection = conn
    send = conn.send_bytes
    dumps = pickle.dumps
    published = memoryview(progress).cast("B").cast("q")  # one aligned 8-byte store per task
    if initializer is not None:
        try:
            initializer(*initargs)
        except BaseException as e:
            send(dumps((INIT_FAILED, dump_exception(e)), _PROTOCOL))
            return
    send(dumps((READY, os.getpid()), _PROTOCOL))
    clock = time.perf_counter
    done = 0
    started = 0
    step = 1  # tasks per slice, adapted to their measured duration
    while maxtasks is None or done < maxtasks:
        try:
            data = conn.recv_bytes()
        except (EOFError, OSError):
            return  # the parent is gone
        if not data:
            return
        stream = io.BytesIO(data)
        count, sizes = pickle.load(stream)
        try:
            buffers = recv_buffers(conn, sizes) if sizes else None
        except (EOFError, OSError):
            return  # the parent is gone
        try:
            spans = pickle.Unpickler(stream, buffers=buffers).load()
        except Exception as e:
            send(dumps((BAD_BATCH, started, count, dump_exception(e)), _PROTOCOL))
            started += count  # none of them will run here: keep counting the stream
            published[0] = started
            continue
        del data, stream, buffers
        values: list[Any] = []
        errors: list[tuple[int, bytes]] = []
        append = values.append
        start = last_flush = clock()
        first = started  # the stream position of values[0]
        left = count
        for kind, func, flat, items in spans:
            call = _caller(kind, func, flat)
            n = len(items)
            i = 0
            while i < n:
                j = min(n, i + step)
                t0 = clock()
                for item in items[i:j] if i or j < n else items:
                    started += 1
                    published[0] = started
                    try:
                        append(call(item))
                    except Exception as e:
                        errors.append((len(values), dump_exception(e)))
                        append(None)
                now = clock()
                left -= j - i
                i = j
                elapsed = now - t0
                if elapsed < _SLICE_SECONDS / 2:
                    step = min(step * 2, 1 << 16)
                elif elapsed > _SLICE_SECONDS * 2 and step > 1:
                    step //= 2
                if left and now - last_flush > FLUSH_AFTER:
                    _send_results(send, first, None, values, errors)
                    first += len(values)
                    values, errors = [], []
                    append = values.append
                    last_flush = now
        call = func = items = item = None  # arguments and results are not kept alive
        done += count
        _send_results(send, first, clock() - start, values, errors)
        del spans, values, errors
