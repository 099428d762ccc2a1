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
:func:`dumps` takes the cheapest path that gives multiprocessing's result:

* while only multiprocessing's own reducers are registered, plain
  ``pickle.dumps``, redone with ``ForkingPickler`` only when plain pickle
  cannot be trusted with the object: it raised (a socket, say), or the pickle
  names ``multiprocessing.connection`` (a Connection inside; user data that
  merely contains the string also takes the slow, equally correct path);
* once anything else registered a reducer (``procwire.shared`` and
  ``procwire.connection`` do, and so do ``multiprocessing.managers`` and
  ``sharedctypes``: in practice, most programs), a reused pickler whose
  ``reducer_override`` looks objects up in ForkingPickler's reducers. The C
  pickler calls it only for objects it does not pickle itself (not for
  ``int``, ``str``, ``bytes``, tuples, lists, dicts...), so plain data costs
  what plain pickle costs, and every registered reducer is honoured, as in
  ``ForkingPickler``. (Before, every message took ``ForkingPickler`` then:
  a Pipe round trip of a small object cost 3 µs more than with bytes.)
"""
from __future__ import annotations

import io
import multiprocessing.connection  # noqa: F401 (registers the Connection reducer)
import pickle
import types
from collections.abc import Callable
from multiprocessing import reduction as _mp_reduction
from typing import Any

__all__ = ["HIGHEST", "MAX_OOB_BUFFERS", "dumps", "dumps_buffers", "loads"]

HIGHEST = pickle.HIGHEST_PROTOCOL  # >= 5 on every Python procwire supports

# ring.c: a record holds the pickle and at most 63 out-of-band buffers.
MAX_OOB_BUFFERS = 63

loads = pickle.loads

_ForkingPickler = _mp_reduction.ForkingPickler
_reducers = _ForkingPickler._extra_reducers  # type: ignore[attr-defined]  # private, untyped
# The reducers multiprocessing registers itself: plain pickle agrees with all
# of them but the Connection's, which the marker below catches.
_STANDARD_COUNT = len(_reducers)
_CONNECTION_MARKER = b"multiprocessing.connection"
_MARKER_LENGTH = len(_CONNECTION_MARKER)
_FunctionType = types.FunctionType

# bytes objects shorter than 256 or of at least _LARGE_BYTES bytes are pickled
# by hand (see dumps), exactly as pickle.dumps(obj, 5) pickles them.
_LARGE_BYTES = 1 << 16
_PROTO5_BINBYTES8 = b"\x80\x05\x8e"  # PROTO 5, BINBYTES8
_MEMOIZE_STOP = b"\x94."
# PROTO 5, FRAME <its length>, SHORT_BINBYTES <n>: the head of a short bytes' pickle
_SHORT_BYTES_HEAD = [b"\x80\x05\x95" + (n + 4).to_bytes(8, "little") + b"C" + bytes((n,))
                     for n in range(256)]


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


class _Sink:
    """The file a pooled pickler writes to: ``write`` appends to its list."""

    __slots__ = ("write",)
    write: Callable[[bytes], object]


class _MessagePickler(pickle.Pickler):
    """A reusable pickler applying ForkingPickler's reducers through reducer_override."""

    def __init__(self) -> None:
        self.out: list[bytes] = []
        sink = _Sink()
        sink.write = self.out.append
        super().__init__(sink, HIGHEST)

    def reducer_override(self, obj: Any) -> Any:
        # ForkingPickler's dispatch table is copyreg's updated with these; the
        # C pickler reaches its table only after it has handled the built-in
        # types, classes and functions itself, so those are left to it here
        # too (NotImplemented: the pickler goes on as it would without us).
        cls = type(obj)
        reduce = _reducers.get(cls)
        if reduce is None or cls is type or cls is _FunctionType:
            return NotImplemented
        return reduce(obj)


# Picklers not in use, each as (its dump, its output list, its clear_memo):
# bound once, not looked up per message. A pickler serves one dump at a time:
# a thread switch inside a reducer, or a reducer that sends a message itself,
# takes another.
_Idle = tuple[Callable[[Any], None], list[bytes], Callable[[], None]]
_idle: list[_Idle] = []
_join = b"".join


def _new_pickler() -> _Idle:
    pickler = _MessagePickler()
    return pickler.dump, pickler.out, pickler.clear_memo


def _dump_registered(obj: Any) -> bytes:
    try:
        entry = _idle.pop()
    except IndexError:
        entry = _new_pickler()
    dump, out, clear_memo = entry
    try:
        dump(obj)
        return _join(out)  # one piece (the same object) unless over 64 KiB
    finally:
        out.clear()
        clear_memo()  # the memo holds the objects: let them go
        _idle.append(entry)


def dumps(obj: Any, protocol: int = HIGHEST) -> bytes:
    """``pickle.dumps(obj, 5)`` with multiprocessing's reducers applied.

    ``protocol`` is accepted for the ring's calling convention; messages are
    always pickled with the highest protocol. (The hot path of _dump, inlined:
    this runs once per message.)
    """
    if type(obj) is bytes:  # no reducer applies to bytes
        n = len(obj)
        if n < 256:  # half pickle.dumps's cost: a join instead of a new pickler
            # (Pipe.send makes this same pickle in C, _core/bind/pipe.c, and
            # Pipe.recv reads it back without an unpickler.)
            return _join((_SHORT_BYTES_HEAD[n], obj, _MEMOIZE_STOP))
        if n < _LARGE_BYTES:
            return pickle.dumps(obj, HIGHEST)
        # The pickle pickle.dumps(obj, 5) means, built with one copy: pickle
        # itself regrows its buffer and takes ~10x longer for a 1 MiB bytes.
        return _join((_PROTO5_BINBYTES8, len(obj).to_bytes(8, "little"), obj, _MEMOIZE_STOP))
    if len(_reducers) != _STANDARD_COUNT:
        return _dump_registered(obj)
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
