"""Pickling for messages: multiprocessing's reducers at plain pickle's speed.

multiprocessing pickles every message with its ``ForkingPickler``, whose
dispatch table adds reducers to copyreg's: its own ``Connection`` and
``socket.socket`` (their descriptors are duplicated for the receiver), bound
methods, method descriptors and ``functools.partial``. Plain ``pickle.dumps``
gets the methods and partials right by itself and refuses sockets, but it
pickles a ``Connection`` as the bare *number* of its descriptor: the receiver
would hold -- and close -- whatever it has under that number.

``ForkingPickler.dumps`` costs about four times ``pickle.dumps`` for a small
tuple (a new pickler, a copy of the dispatch table and a buffer per call). So
messages take plain ``pickle.dumps``, and ``ForkingPickler`` only when plain
pickle cannot be trusted with them:

* it raised (a socket, say);
* the pickle names ``multiprocessing.connection`` (a Connection inside; user
  data that merely contains the string also takes the slow, equally correct
  path);
* someone registered a reducer of their own with ``ForkingPickler.register``:
  then every message goes through ``ForkingPickler``, as in multiprocessing.
"""
from __future__ import annotations

import io
import multiprocessing.connection  # noqa: F401 (registers the Connection reducer)
import pickle
from multiprocessing import reduction as _mp_reduction
from typing import Any

__all__ = ["HIGHEST", "MAX_OOB_BUFFERS", "dumps", "dumps_buffers", "loads"]

HIGHEST = pickle.HIGHEST_PROTOCOL  # >= 5 on every Python procwire supports

# ring.c: a record holds the pickle and at most 63 out-of-band buffers.
MAX_OOB_BUFFERS = 63

loads = pickle.loads

_ForkingPickler = _mp_reduction.ForkingPickler
_reducers = _ForkingPickler._extra_reducers
# The reducers multiprocessing registers itself: plain pickle agrees with all
# of them but the Connection's, which the marker below catches.
_STANDARD_COUNT = len(_reducers)
_CONNECTION_MARKER = b"multiprocessing.connection"
_MARKER_LENGTH = len(_CONNECTION_MARKER)


def _dump(obj: Any, buffers: list[pickle.PickleBuffer] | None) -> bytes:
    callback = None if buffers is None else buffers.append
    # A reducer registered since import (its count is enough: the standard
    # ones are never unregistered) sends everything through ForkingPickler.
    if len(_reducers) == _STANDARD_COUNT:
        try:
            data = pickle.dumps(obj, HIGHEST, buffer_callback=callback)
        except Exception:
            pass  # ForkingPickler may know it; if not, it raises the error again
        else:
            if _CONNECTION_MARKER not in data:
                return data
        if buffers is not None:
            buffers.clear()  # handed out by the pickle that is being redone
    buf = io.BytesIO()
    # ForkingPickler takes positional arguments only (file, protocol,
    # fix_imports, buffer_callback).
    _ForkingPickler(buf, HIGHEST, True, callback).dump(obj)
    return buf.getvalue()


def dumps(obj: Any, protocol: int = HIGHEST) -> bytes:
    """``pickle.dumps(obj, 5)`` with multiprocessing's reducers applied.

    ``protocol`` is accepted for the ring's calling convention; messages are
    always pickled with the highest protocol. (The hot path of _dump, inlined:
    this runs once per message.)
    """
    if len(_reducers) == _STANDARD_COUNT:
        try:
            data = pickle.dumps(obj, HIGHEST)
        except Exception:
            return _dump(obj, None)
        # A Connection's class is pickled as the module name in a
        # SHORT_BINUNICODE of length 26 (0x1a). Testing for that one byte is a
        # memchr; the 26-byte search costs twenty times more, so it only runs
        # when the byte is there.
        if _MARKER_LENGTH not in data or _CONNECTION_MARKER not in data:
            return data
    return _dump(obj, None)


def dumps_buffers(obj: Any) -> bytes | list[Any]:
    """Pickle an object that exports a buffer (a numpy array, say).

    Its data travels out of band: this returns ``[pickle, buffer, ...]`` when
    pickle hands buffers out, and the ring copies them straight into shared
    memory (one copy, not two). Other objects are pickled with :func:`dumps`;
    buffers nested inside them travel in band.
    """
    buffers: list[pickle.PickleBuffer] = []
    data = _dump(obj, buffers)
    if not buffers:
        return data
    if len(buffers) > MAX_OOB_BUFFERS:
        # A record carries at most 63 out-of-band buffers (a numpy object
        # array of 100 arrays has 100): pickle the rest in band, one copy more.
        return dumps(obj)
    try:
        return [data, *(b.raw() for b in buffers)]
    except BufferError:  # a non-contiguous buffer: let pickle copy it in band
        return dumps(obj)
