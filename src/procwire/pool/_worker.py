"""The loop each pool worker process runs, and the wire format it speaks.

Each worker owns one duplex ``procwire.Pipe`` with the parent; nothing is
shared between workers, so a worker killed anywhere can only lose what it
held itself.

Parent -> worker, one message per batch of tasks: two pickles back to back,
``tids`` then ``tasks`` (``[(kind, func, data), ...]``). The ids come first so
that a worker that cannot unpickle the tasks (a class its interpreter cannot
import, say) can still name them in its answer. An empty message means "exit".

Worker -> parent, one pickle per message:

* ``(READY, pid)`` once the initializer has run;
* ``(INIT_FAILED, exception)`` if it raised (then the worker exits);
* ``(RESULTS, batch_done, seconds, [(tid, status, payload), ...])``: a
  result made only of plain built-in values (numbers, strings, bytes, None,
  and short lists or tuples of them) travels as itself (status ``PLAIN``), since
  it cannot fail to unpickle; any other result or exception is pickled on its
  own (``PICKLED``, ``FAILED``), so that one that cannot be pickled here, or
  unpickled in the parent, fails only its own task. ``batch_done`` is
  set on the last message of a batch; a long batch sends what it has after
  ``FLUSH_AFTER`` seconds, so results are never held back for long.
* ``(BAD_BATCH, tids, exception)``: the tasks could not be unpickled; the
  parent re-sends them one by one to find the culprit.
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
FAILED, PICKLED, PLAIN = range(3)  # a result's status
_PLAIN = frozenset({int, float, str, bytes, bool, type(None), complex})
APPLY, MAP, STARMAP = range(3)
FLUSH_AFTER = 0.005
_PROTOCOL = pickle.HIGHEST_PROTOCOL

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


def _dump_result(ok: bool, value: Any) -> tuple[int, Any]:
    if ok:
        kind = type(value)
        if kind in _PLAIN:
            return PLAIN, value
        if (kind is list or kind is tuple) and len(value) <= 32:  # (a long list pickles
            # faster than it is checked). A loop, not all() over a generator: this
            # runs once per task, and the generator's frame cost most of a microsecond.
            for v in value:
                if type(v) not in _PLAIN:
                    break
            else:
                return PLAIN, value
        try:
            return PICKLED, pickle.dumps(value, _PROTOCOL)
        except Exception as e:
            wrapped = MaybeEncodingError(e, value)
            return FAILED, pickle.dumps(wrapped, _PROTOCOL)
    return FAILED, dump_exception(value)


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
    if initializer is not None:
        try:
            initializer(*initargs)
        except BaseException as e:
            send(dumps((INIT_FAILED, dump_exception(e)), _PROTOCOL))
            return
    send(dumps((READY, os.getpid()), _PROTOCOL))
    clock = time.monotonic
    done = 0
    started = 0
    while maxtasks is None or done < maxtasks:
        try:
            data = conn.recv_bytes()
        except (EOFError, OSError):
            return  # the parent is gone
        if not data:
            return
        unpickler = pickle.Unpickler(io.BytesIO(data))
        tids = unpickler.load()
        try:
            tasks = unpickler.load()
        except Exception as e:
            send(dumps((BAD_BATCH, tids, dump_exception(e)), _PROTOCOL))
            started += len(tids)  # none of them will run here: keep counting the stream
            progress.value = started
            continue
        del data, unpickler
        results: list[tuple[int, int, Any]] = []
        start = last_flush = clock()
        last = len(tids) - 1
        for i, (tid, (kind, func, args)) in enumerate(zip(tids, tasks, strict=True)):
            started += 1
            progress.value = started
            try:
                if kind == APPLY:
                    value = func(*args[0], **args[1])
                elif kind == MAP:
                    value = list(map(func, args))
                else:
                    value = list(starmap(func, args))
                ok = True
            except Exception as e:
                ok, value = False, e
            status, payload = _dump_result(ok, value)
            del value
            results.append((tid, status, payload))
            done += 1
            now = clock()
            if i < last and now - last_flush > FLUSH_AFTER:
                send(dumps((RESULTS, False, 0.0, results), _PROTOCOL))
                results = []
                last_flush = now
        send(dumps((RESULTS, True, clock() - start, results), _PROTOCOL))
        del tasks, results
