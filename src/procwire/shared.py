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
from multiprocessing import reduction as _mp_reduction
from multiprocessing import sharedctypes as _mp_sharedctypes
from typing import Any

from procwire import _core
from procwire._segment import Segment, validate_name
from procwire.sync import Lock, RLock

__all__ = ["Array", "RawArray", "RawValue", "Value"]

typecode_to_type = dict(_mp_sharedctypes.typecode_to_type)

# ctypes' _type_ code -> the ctypes class, for rebuilding a type by name.
_SIMPLE_TYPES: dict[str, type] = {}
for _t in (ctypes.c_char, ctypes.c_wchar, ctypes.c_byte, ctypes.c_ubyte, ctypes.c_short,
           ctypes.c_ushort, ctypes.c_int, ctypes.c_uint, ctypes.c_long, ctypes.c_ulong,
           ctypes.c_longlong, ctypes.c_ulonglong, ctypes.c_float, ctypes.c_double,
           ctypes.c_longdouble, ctypes.c_bool, ctypes.c_void_p, ctypes.c_char_p,
           ctypes.c_wchar_p, ctypes.c_size_t, ctypes.c_ssize_t):
    _SIMPLE_TYPES.setdefault(_t._type_, _t)


def _resolve(typecode_or_type: Any) -> type:
    return typecode_to_type.get(typecode_or_type, typecode_or_type)


def _code_of(type_: type) -> str:
    code = getattr(type_, "_type_", None)
    if isinstance(code, str) and _SIMPLE_TYPES.get(code) is type_:
        return code
    return ""


class _Handle:
    """This process's hold on one Value/Array segment.

    The ctypes object built over the segment keeps it as ``_wrapper``, the
    attribute multiprocessing's own ``reduce_ctype`` pickles: so a procwire
    RawValue/RawArray passes to children exactly as a multiprocessing one does
    (and the two can share a ctypes type without stepping on each other).
    """

    __slots__ = ("segment", "kind", "elem", "length", "__weakref__")

    def __init__(self, segment: Segment, kind: int, elem: type, length: int) -> None:
        self.segment = segment
        self.kind = kind
        self.elem = elem
        self.length = length

    def create_memoryview(self) -> memoryview:
        nbytes = ctypes.sizeof(self.elem) * self.length
        start = _core.SHARED_DATA_OFFSET
        return memoryview(self.segment.buffer)[start:start + nbytes]

    def __reduce__(self) -> tuple:
        return (_rebuild_handle, (self.segment.reduce_handle("RawValue/RawArray"), self.elem))


def _rebuild_handle(handle: tuple[str, object], elem: type) -> _Handle:
    segment = Segment.from_handle(handle)
    try:
        return _open(segment, 0, elem)[0]
    except BaseException:
        segment.close()
        raise


def _create(kind: int, elem: type, length: int, lock_mode: int, lock_name: bytes,
            name: str | None) -> _Handle:
    elem_size = ctypes.sizeof(elem)  # TypeError for a bad typecode, as in multiprocessing
    if length < 0:
        raise ValueError(f"array length must be >= 0, not {length}")
    size = _core.shared_size(elem_size * length)
    code = _code_of(elem)

    def initialise(buffer: Any) -> None:
        _core.shared_init(buffer, kind, code, elem_size, length, lock_mode, lock_name)

    if name is None:
        segment = Segment.create_anonymous(size, "Value" if kind == _core.KIND_VALUE else "Array")
        try:
            initialise(segment.buffer)
        except BaseException:
            segment.close()
            raise
    else:
        validate_name(name)
        segment = Segment.create_named(name, size, initialise)
    return _Handle(segment, kind, elem, length)


def _obj_over(h: _Handle) -> Any:
    type_ = h.elem if h.kind == _core.KIND_VALUE else h.elem * h.length
    obj = type_.from_buffer(h.segment.buffer, _core.SHARED_DATA_OFFSET)
    obj._wrapper = h
    # multiprocessing's reducer: it pickles obj._wrapper, i.e. our handle.
    _mp_reduction.ForkingPickler.register(type_, _mp_sharedctypes.reduce_ctype)
    return obj


def _open(segment: Segment, kind: int, type_hint: Any = None) -> tuple[_Handle, dict]:
    what = f"procwire object {segment.name!r}" if segment.name else "the shared value"
    info = _core.shared_info(segment.buffer, kind, what)
    elem = None
    if type_hint is not None:
        elem = _resolve(type_hint)
        if ctypes.sizeof(elem) != info["elem_size"]:
            raise TypeError(f"{what} holds elements of {info['elem_size']} bytes, not "
                            f"{ctypes.sizeof(elem)} ({elem.__name__})")
    elif info["typecode"]:
        elem = _SIMPLE_TYPES.get(info["typecode"])
    if elem is None:
        raise TypeError(f"{what} holds a custom ctypes type: pass it to attach(name, type)")
    if ctypes.sizeof(elem) != info["elem_size"]:
        from procwire.errors import SegmentError
        raise SegmentError(f"{what} is corrupt: element size {info['elem_size']} does not "
                           f"match type code {info['typecode']!r}")
    return _Handle(segment, _core.KIND_VALUE if info["kind"] == "value" else _core.KIND_ARRAY,
                   elem, info["length"]), info


def _embedded_lock(h: _Handle) -> RLock:
    return RLock._from_segment(h.segment, owns=False)


def _lock_from_info(h: _Handle, info: dict) -> Any:
    mode = info["lock_mode"]
    if mode == _core.LOCKMODE_EMBEDDED:
        return _embedded_lock(h)
    if mode == _core.LOCKMODE_NAMED:
        from procwire.sync import _attached_kind
        lname = info["lock_name"].decode()
        return (Lock if _attached_kind(lname) == "lock" else RLock).attach(lname)
    if mode == _core.LOCKMODE_EXTERNAL:
        raise ValueError(f"procwire object {h.segment.name!r} was created with a lock that "
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
        type_ = _resolve(typecode_or_type)
        h = _create(_core.KIND_VALUE, type_, 1, _core.LOCKMODE_NONE, b"", name)
        obj = _obj_over(h)
        obj.__init__(*args)
        return obj

    @staticmethod
    def attach(name: str, typecode_or_type: Any = None) -> Any:
        h, _ = _open(Segment.attach_named(name), _core.KIND_VALUE, typecode_or_type)
        return _obj_over(h)


class RawArray:
    """``RawArray(typecode_or_type, size_or_initializer, *, name=None)``: a
    ctypes array in shared memory, with no lock, like
    ``multiprocessing.RawArray``. Returns the ctypes array itself (which
    supports the buffer protocol). ``RawArray.attach(name)`` opens one by name.
    """

    def __new__(cls, typecode_or_type: Any, size_or_initializer: Any, *,
                name: str | None = None) -> Any:
        type_ = _resolve(typecode_or_type)
        if isinstance(size_or_initializer, int):
            length, init = size_or_initializer, None
        else:
            init = size_or_initializer
            length = len(init)
        h = _create(_core.KIND_ARRAY, type_, length, _core.LOCKMODE_NONE, b"", name)
        obj = _obj_over(h)
        if init is not None:
            obj.__init__(*init)
        return obj

    @staticmethod
    def attach(name: str, typecode_or_type: Any = None) -> Any:
        h, _ = _open(Segment.attach_named(name), _core.KIND_ARRAY, typecode_or_type)
        return _obj_over(h)


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


def Value(typecode_or_type: Any, *args: Any, lock: Any = True, ctx: object = None,
          name: str | None = None) -> Any:
    """A ctypes object in shared memory, synchronized by a lock, like
    ``multiprocessing.Value``.

    ``lock=True`` (default) uses a new procwire RLock stored with the value;
    ``lock=False`` returns the raw ctypes object; any other object with
    ``acquire``/``release`` is used as the lock. ``.value``, ``get_lock()``,
    ``get_obj()``; ``Value.attach(name)`` opens a named one.
    """
    type_ = _resolve(typecode_or_type)
    mode, lock_name = _lock_mode_for(lock, name)
    h = _create(_core.KIND_VALUE, type_, 1, mode, lock_name, name)
    obj = _obj_over(h)
    obj.__init__(*args)
    if mode == _core.LOCKMODE_NONE:
        return obj
    if mode == _core.LOCKMODE_EMBEDDED:
        lock = _embedded_lock(h)
    return _synchronized(obj, lock)


def Array(typecode_or_type: Any, size_or_initializer: Any, *, lock: Any = True,
          ctx: object = None, name: str | None = None) -> Any:
    """A ctypes array in shared memory, synchronized by a lock, like
    ``multiprocessing.Array``; also a zero-copy buffer (``numpy.asarray``).
    ``Array.attach(name)`` opens a named one.
    """
    type_ = _resolve(typecode_or_type)
    mode, lock_name = _lock_mode_for(lock, name)
    if isinstance(size_or_initializer, int):
        length, init = size_or_initializer, None
    else:
        init = size_or_initializer
        length = len(init)
    h = _create(_core.KIND_ARRAY, type_, length, mode, lock_name, name)
    obj = _obj_over(h)
    if init is not None:
        obj.__init__(*init)
    if mode == _core.LOCKMODE_NONE:
        return obj
    if mode == _core.LOCKMODE_EMBEDDED:
        lock = _embedded_lock(h)
    return _synchronized(obj, lock)


def _attach_value(name: str, typecode_or_type: Any = None) -> Any:
    """Open the Value another process created with ``name=``."""
    return _attach(name, _core.KIND_VALUE, typecode_or_type)


def _attach_array(name: str, typecode_or_type: Any = None) -> Any:
    """Open the Array another process created with ``name=``."""
    return _attach(name, _core.KIND_ARRAY, typecode_or_type)


def _attach(name: str, kind: int, typecode_or_type: Any) -> Any:
    segment = Segment.attach_named(name)
    try:
        h, info = _open(segment, kind, typecode_or_type)
        lock = _lock_from_info(h, info)
    except BaseException:
        segment.close()
        raise
    obj = _obj_over(h)
    return obj if lock is None else _synchronized(obj, lock)


Value.attach = _attach_value  # type: ignore[attr-defined]
Array.attach = _attach_array  # type: ignore[attr-defined]


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

    def __reduce__(self) -> tuple:
        h = self._obj._wrapper
        handle = h.segment.reduce_handle(type(self).__name__)
        embedded = isinstance(self._lock, RLock) and self._lock._segment is h.segment
        return (_rebuild_synchronized, (handle, h.elem, None if embedded else self._lock))

    def get_obj(self) -> Any:
        return self._obj

    def get_lock(self) -> Any:
        return self._lock

    @property
    def name(self) -> str | None:
        """The name given at creation, or None."""
        return self._obj._wrapper.segment.name

    def unlink(self) -> None:
        """Remove the name now; processes that have it open keep using it."""
        self._obj._wrapper.segment.unlink()

    def statistics(self) -> dict[str, Any]:
        """The lock's statistics, plus the element type and length."""
        h = self._obj._wrapper
        s = self._lock.statistics() if hasattr(self._lock, "statistics") else {}
        return {"type": h.elem.__name__, "length": h.length, "lock": s}

    def __repr__(self) -> str:
        return f"<{type(self).__name__} wrapper for {self._obj}>"


def _rebuild_synchronized(handle: tuple[str, object], elem: type, lock: Any) -> Any:
    segment = Segment.from_handle(handle)
    try:
        h, info = _open(segment, 0, elem)
        if lock is None:
            lock = _embedded_lock(h)
    except BaseException:
        segment.close()
        raise
    return _synchronized(_obj_over(h), lock)


class Synchronized(SynchronizedBase):
    @property
    def value(self) -> Any:
        with self._lock:
            return self._obj.value

    @value.setter
    def value(self, v: Any) -> None:
        with self._lock:
            self._obj.value = v


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
    @property
    def value(self) -> bytes:
        with self._lock:
            return self._obj.value

    @value.setter
    def value(self, v: bytes) -> None:
        with self._lock:
            self._obj.value = v

    @property
    def raw(self) -> bytes:
        with self._lock:
            return self._obj.raw

    @raw.setter
    def raw(self, v: bytes) -> None:
        with self._lock:
            self._obj.raw = v
