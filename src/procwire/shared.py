"""Shared values: ``Value``, ``Array``, ``RawValue`` and ``RawArray``.

Same signatures and semantics as :mod:`multiprocessing.sharedctypes`: the
elements are ctypes objects laid over shared memory (``from_buffer``), so
``.value``, indexing, slicing, ``c_char`` arrays' ``.value`` and ``.raw``, and
every error are exactly those of ctypes and multiprocessing.

What procwire adds:

* ``name=``: the object appears as ``/dev/shm/procwire.<name>``, and an
  unrelated process opens it with ``Value.attach(name)``,
  ``Array.attach(name)``, ``RawValue.attach(name)`` or ``RawArray.attach(name)``.
  The element type travels in the segment for ctypes' simple types; for
  another ctypes type (a Structure, say) pass it: ``attach(name, type)``.
* The default lock (``lock=True``) is a procwire :class:`~procwire.RLock` kept
  inside the value's own segment: robust, so a process killed while holding
  ``get_lock()`` never blocks the others (see :mod:`procwire.sync` for the
  owner-died report), and it comes along when the value is attached by name.
* A synchronized ``Array`` exports the buffer protocol: ``numpy.asarray(arr)``
  and ``memoryview(arr)`` are zero-copy views of the shared elements (no lock
  is taken for them: take ``arr.get_lock()`` yourself around the access).
* No resource tracker and no heap of arenas: each object is one segment,
  freed by the kernel when the last process holding it exits.
"""
from __future__ import annotations

import ctypes
from multiprocessing import reduction as _mp_reduction, sharedctypes as _mp_sharedctypes
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from procwire.stats import SharedStatistics

from procwire import _core
from procwire._segment import Segment, SegmentObject, new_segment, rebuild
from procwire.errors import SegmentError
from procwire.sync import Lock, RLock, attach_lock

__all__ = ["Array", "RawArray", "RawValue", "Value"]

# not in typeshed's multiprocessing.sharedctypes, but public there since 2.6
typecode_to_type: dict[str, type[Any]] = dict(
    _mp_sharedctypes.typecode_to_type)  # type: ignore[attr-defined]

# ctypes' _type_ code -> the ctypes class, for rebuilding a type by name from
# the code a segment records. Plain data only: the pointer types (c_void_p,
# c_char_p, c_wchar_p) are left out, because a code read from shared memory is
# untrusted, and reading a c_char_p element dereferences whatever address the
# segment holds (a corrupt 'd' turned into 'z' crashed the reader). A Value of
# a pointer type can still be attached by passing the type itself.
_SIMPLE_TYPES: dict[str, type] = {}
for _t in (ctypes.c_char, ctypes.c_wchar, ctypes.c_byte, ctypes.c_ubyte, ctypes.c_short,
           ctypes.c_ushort, ctypes.c_int, ctypes.c_uint, ctypes.c_long, ctypes.c_ulong,
           ctypes.c_longlong, ctypes.c_ulonglong, ctypes.c_float, ctypes.c_double,
           ctypes.c_longdouble, ctypes.c_bool, ctypes.c_size_t, ctypes.c_ssize_t):
    _SIMPLE_TYPES.setdefault(_t._type_, _t)


def _resolve(typecode_or_type: Any) -> type:
    resolved: type = typecode_to_type.get(typecode_or_type, typecode_or_type)
    return resolved


def _code_of(type_: type) -> str:
    code = getattr(type_, "_type_", None)
    if isinstance(code, str) and _SIMPLE_TYPES.get(code) is type_:
        return code
    return ""


class _Handle(SegmentObject["SharedStatistics"]):
    """This process's hold on one Value/Array segment.

    The ctypes object built over the segment keeps it as ``_wrapper``, the
    attribute multiprocessing's own ``reduce_ctype`` pickles: so a procwire
    RawValue/RawArray passes to children exactly as a multiprocessing one does
    (and the two can share a ctypes type without stepping on each other).
    """

    _label = "RawValue/RawArray"
    _statistics_type = "SharedStatistics"

    def _bind(self, kind: int = 0, type_hint: Any = None, **state: Any) -> None:
        """Check the segment's layout (and ``type_hint`` against it), learn the element type."""
        segment = self._segment
        what = f"procwire object {segment.name!r}" if segment.name else "the shared value"
        info = _core.inspect(segment.buffer, kind, what)
        if info["kind"] not in ("value", "array"):
            raise SegmentError(f"{what} is a {info['kind']}, not a value or array")
        elem = None
        if type_hint is not None:
            elem = _resolve(type_hint)
            if ctypes.sizeof(elem) != info["elem_size"]:
                raise TypeError(f"{what} holds elements of {info['elem_size']} bytes, not "
                                f"{ctypes.sizeof(elem)} ({elem.__name__})")
        elif info["typecode"]:
            elem = _SIMPLE_TYPES.get(info["typecode"])
            if elem is None:
                raise SegmentError(f"{what} is corrupt: unknown element type code "
                                   f"{info['typecode']!r}; pass the element type to "
                                   f"attach(name, type) if you trust the segment")
        if elem is None:
            raise TypeError(f"{what} holds a custom ctypes type: pass it to attach(name, type)")
        if ctypes.sizeof(elem) != info["elem_size"]:
            raise SegmentError(f"{what} is corrupt: element size {info['elem_size']} does not "
                               f"match type code {info['typecode']!r}")
        self.kind = _core.KIND_VALUE if info["kind"] == "value" else _core.KIND_ARRAY
        self.elem, self.length, self.info = elem, info["length"], info

    def _close(self) -> None:
        """Nothing native to release: the ctypes object over the buffer holds it."""

    def _counters(self) -> dict[str, Any]:
        return _core.inspect(self._segment.buffer)

    def _pickle_state(self) -> dict[str, Any]:
        return {"type_hint": self.elem}

    def create_memoryview(self) -> memoryview:
        nbytes = ctypes.sizeof(self.elem) * self.length
        start = _core.SHARED_DATA_OFFSET
        return memoryview(self._segment.buffer)[start:start + nbytes]


def _create(kind: int, elem: type, length: int, lock_mode: int, lock_name: bytes,
            name: str | None) -> _Handle:
    elem_size = ctypes.sizeof(elem)  # TypeError for a bad typecode, as in multiprocessing
    if length < 0:
        raise ValueError(f"array length must be >= 0, not {length}")
    code = _code_of(elem)
    segment = new_segment(
        "Value" if kind == _core.KIND_VALUE else "Array", name,
        _core.segment_size(kind, elem_size * length),
        lambda buf: _core.segment_init(buf, kind, typecode=code, elem_size=elem_size,
                                       length=length, lock_mode=lock_mode, lock_name=lock_name))
    return _Handle._from_segment(segment, kind=kind, type_hint=elem)


def _obj_over(h: _Handle) -> Any:
    elem: Any = h.elem  # a ctypes type: ctypes types multiply into array types
    type_: Any = elem if h.kind == _core.KIND_VALUE else elem * h.length
    obj = type_.from_buffer(h._segment.buffer, _core.SHARED_DATA_OFFSET)
    obj._wrapper = h
    # multiprocessing's reducer: it pickles obj._wrapper, i.e. our handle.
    # (reduce_ctype is not in typeshed's multiprocessing.sharedctypes)
    _mp_reduction.ForkingPickler.register(
        type_, _mp_sharedctypes.reduce_ctype)  # type: ignore[attr-defined]
    return obj


def _embedded_lock(h: _Handle) -> RLock:
    return RLock._from_segment(h._segment, owns=False)


def _lock_from_info(h: _Handle) -> Any:
    mode = h.info["lock_mode"]
    if mode == "embedded":
        return _embedded_lock(h)
    if mode == "named":
        return attach_lock(h.info["lock_name"])
    if mode == "external":
        raise ValueError(f"procwire object {h.name!r} was created with a lock that "
                         f"has no name; it can only be shared with child processes")
    return None


# --------------------------------------------------------- raw objects


class RawValue:
    """``RawValue(typecode_or_type, *args, name=None)``: a ctypes object in
    shared memory, with no lock, like ``multiprocessing.RawValue``.

    Returns the ctypes object itself. ``RawValue.attach(name)`` opens one that
    another process created with ``name=``.
    """

    def __new__(cls, typecode_or_type: Any, *args: Any, name: str | None = None) -> Any:
        return _new(_core.KIND_VALUE, typecode_or_type, 1, args, False, name)

    @staticmethod
    def attach(name: str, typecode_or_type: Any = None) -> Any:
        return _attach(name, _core.KIND_VALUE, typecode_or_type, raw=True)


class RawArray:
    """``RawArray(typecode_or_type, size_or_initializer, *, name=None)``: a
    ctypes array in shared memory, with no lock, like
    ``multiprocessing.RawArray``. Returns the ctypes array itself (which
    supports the buffer protocol). ``RawArray.attach(name)`` opens one by name.
    """

    def __new__(cls, typecode_or_type: Any, size_or_initializer: Any, *,
                name: str | None = None) -> Any:
        return _new(_core.KIND_ARRAY, typecode_or_type, *_sized(size_or_initializer), False,
                    name)

    @staticmethod
    def attach(name: str, typecode_or_type: Any = None) -> Any:
        return _attach(name, _core.KIND_ARRAY, typecode_or_type, raw=True)


# ---------------------------------------------------- synchronized forms


def _lock_mode_for(lock: Any, name: str | None) -> tuple[int, bytes]:
    if lock is False:
        return _core.LOCKMODE_NONE, b""
    if lock is True or lock is None:
        return _core.LOCKMODE_EMBEDDED, b""
    if not hasattr(lock, "acquire"):
        raise AttributeError(f"{lock!r} has no method 'acquire'")  # as multiprocessing
    if isinstance(lock, Lock) and lock.name is not None:
        return _core.LOCKMODE_NAMED, lock.name.encode()
    if name is not None:
        raise ValueError("a named Value or Array needs lock=True, lock=False or a named "
                         "procwire Lock/RLock, so that attach() can find the lock")
    return _core.LOCKMODE_EXTERNAL, b""


# Value and Array are classes whose __new__ returns the object made (as
# RawValue's), not functions with an `attach` attribute set on them: so type
# checkers see `Value.attach`.
class Value:
    """A ctypes object in shared memory, synchronized by a lock, like
    ``multiprocessing.Value``.

    ``lock=True`` (default) uses a new procwire RLock stored with the value;
    ``lock=False`` returns the raw ctypes object; any other object with
    ``acquire``/``release`` is used as the lock. ``.value``, ``get_lock()``,
    ``get_obj()``; ``Value.attach(name)`` opens a named one.
    """

    def __new__(cls, typecode_or_type: Any, *args: Any, lock: Any = True, ctx: object = None,
                name: str | None = None) -> Any:
        return _new(_core.KIND_VALUE, typecode_or_type, 1, args, lock, name)

    @staticmethod
    def attach(name: str, typecode_or_type: Any = None) -> Any:
        """Open the Value another process created with ``name=``."""
        return _attach(name, _core.KIND_VALUE, typecode_or_type)


class Array:
    """A ctypes array in shared memory, synchronized by a lock, like
    ``multiprocessing.Array``; also a zero-copy buffer (``numpy.asarray``).
    ``Array.attach(name)`` opens a named one.
    """

    def __new__(cls, typecode_or_type: Any, size_or_initializer: Any, *, lock: Any = True,
                ctx: object = None, name: str | None = None) -> Any:
        return _new(_core.KIND_ARRAY, typecode_or_type, *_sized(size_or_initializer), lock,
                    name)

    @staticmethod
    def attach(name: str, typecode_or_type: Any = None) -> Any:
        """Open the Array another process created with ``name=``."""
        return _attach(name, _core.KIND_ARRAY, typecode_or_type)


def _sized(size_or_initializer: Any) -> tuple[int, Any]:
    """(length, initial values or None) of an Array's second argument, as multiprocessing."""
    if isinstance(size_or_initializer, int):
        return size_or_initializer, None
    return len(size_or_initializer), size_or_initializer


def _new(kind: int, typecode_or_type: Any, length: int, init: Any, lock: Any,
         name: str | None) -> Any:
    """A new Value/Array (``lock`` as multiprocessing's; False: the raw ctypes object)."""
    type_ = _resolve(typecode_or_type)
    mode, lock_name = _lock_mode_for(lock, name)
    h = _create(kind, type_, length, mode, lock_name, name)
    obj = _obj_over(h)
    if init is not None:
        obj.__init__(*init)
    if mode == _core.LOCKMODE_NONE:
        return obj
    if mode == _core.LOCKMODE_EMBEDDED:
        lock = _embedded_lock(h)
    return _synchronized(obj, lock)


def _attach(name: str, kind: int, typecode_or_type: Any, raw: bool = False) -> Any:
    """Open a named Value/Array; ``raw``: the ctypes object, whatever its lock."""
    h = _Handle._from_segment(Segment.attach_named(name), kind=kind, type_hint=typecode_or_type)
    try:
        lock = None if raw else _lock_from_info(h)
    except BaseException:
        h.close()
        raise
    obj = _obj_over(h)
    return obj if lock is None else _synchronized(obj, lock)


def _synchronized(obj: Any, lock: Any) -> Any:
    if isinstance(obj, ctypes.Array):
        if obj._type_ is ctypes.c_char:
            return SynchronizedString(obj, lock)
        return SynchronizedArray(obj, lock)
    if isinstance(obj, ctypes._SimpleCData):
        return Synchronized(obj, lock)
    return _synchronized_class(type(obj))(obj, lock)


_struct_classes: dict[type, type] = {}


def _locked_field(name: str) -> property:
    """A property that reads and writes the wrapped ctypes object's ``name`` under the lock."""

    def get(self: Any) -> Any:
        with self._lock:
            return getattr(self._obj, name)

    def set_(self: Any, value: Any) -> None:
        with self._lock:
            setattr(self._obj, name, value)

    return property(get, set_)


def _synchronized_class(cls: type) -> type:
    """As multiprocessing.sharedctypes.synchronized: a wrapper of a Structure
    gets one locked property per field (``v.x``, ``v.y``)."""
    try:
        return _struct_classes[cls]
    except KeyError:
        fields = {f[0]: _locked_field(f[0]) for f in getattr(cls, "_fields_", ())}
        scls = _struct_classes[cls] = type("Synchronized" + cls.__name__,
                                           (SynchronizedBase,), fields)
        return scls


class SynchronizedBase:
    """A ctypes object and the lock that guards it (multiprocessing's
    ``SynchronizedBase``). Single reads and writes take the lock; hold
    ``get_lock()`` around read-modify-write sequences such as ``+=``."""

    def __init__(self, obj: Any, lock: Any) -> None:
        self._obj = obj
        self._lock = lock
        self.acquire = lock.acquire
        self.release = lock.release

    def __enter__(self) -> Any:
        return self._lock.__enter__()

    def __exit__(self, *args: object) -> Any:
        return self._lock.__exit__(*args)

    def __reduce__(self) -> tuple[Any, ...]:
        h: _Handle = self._obj._wrapper
        handle = h._segment.reduce_handle(type(self).__name__)
        embedded = isinstance(self._lock, RLock) and self._lock._segment is h._segment
        return (rebuild, (SynchronizedBase, handle,
                          {**h._pickle_state(), "lock": None if embedded else self._lock}))

    @classmethod
    def _from_handle(cls, handle: Any, state: dict[str, Any]) -> Any:
        """Rebuild (see procwire._segment.rebuild): the wrapper class follows the element type."""
        h = _Handle._from_segment(Segment.from_handle(handle), type_hint=state["type_hint"])
        lock = state["lock"]
        if lock is None:
            try:
                lock = _embedded_lock(h)
            except BaseException:
                h.close()
                raise
        return _synchronized(_obj_over(h), lock)

    def get_obj(self) -> Any:
        return self._obj

    def get_lock(self) -> Any:
        return self._lock

    @property
    def name(self) -> str | None:
        """The name given at creation, or None."""
        h: _Handle = self._obj._wrapper
        return h.name

    def unlink(self) -> None:
        """Remove the name now; processes that have it open keep using it."""
        h: _Handle = self._obj._wrapper
        h.unlink()

    def statistics(self) -> SharedStatistics:
        """The element type and length, and the lock's statistics (if a procwire lock)."""
        h: _Handle = self._obj._wrapper
        lock = self._lock.statistics() if isinstance(self._lock, Lock) else None
        from procwire.stats import SharedStatistics
        return SharedStatistics.from_counters({**h._counters(), "lock": lock})

    def __repr__(self) -> str:
        return f"<{type(self).__name__} wrapper for {self._obj}>"


class Synchronized(SynchronizedBase):
    value = _locked_field("value")


class SynchronizedArray(_core.BufferView, SynchronizedBase):
    def __init__(self, obj: Any, lock: Any) -> None:
        SynchronizedBase.__init__(self, obj, lock)
        self._buffer_target = obj

    def __len__(self) -> int:
        return len(self._obj)

    def __getitem__(self, i: Any) -> Any:
        with self._lock:
            return self._obj[i]

    def __setitem__(self, i: Any, value: Any) -> None:
        with self._lock:
            self._obj[i] = value

    def __getslice__(self, start: int, stop: int) -> Any:
        with self._lock:
            return self._obj[start:stop]

    def __setslice__(self, start: int, stop: int, values: Any) -> None:
        with self._lock:
            self._obj[start:stop] = values


class SynchronizedString(SynchronizedArray):
    value = _locked_field("value")
    raw = _locked_field("raw")
