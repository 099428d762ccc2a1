"""Value and Array in Redis: fixed-size little-endian bytes in one string key.

``v.value`` is one GET or SET; ``a[i]`` one GETRANGE or SETRANGE of its
element, so element reads and writes are atomic. A read-modify-write
(``v.value += 1``) needs the object's lock, as with multiprocessing:
``with v.get_lock(): v.value += 1`` (a Redis RLock named ``NAME.lock``).
"""
from __future__ import annotations

import ctypes
import struct
from typing import Any, Iterable

from procwire.redis.context import RedisContext, RedisObject
from procwire.redis.sync import Lock, RLock

# typecode -> struct format (standard sizes: the same bytes on every machine)
_FORMATS = {"b": "b", "B": "B", "h": "h", "H": "H", "i": "i", "I": "I", "l": "q", "L": "Q",
            "q": "q", "Q": "Q", "f": "f", "d": "d", "c": "c", "?": "?", "u": "4s"}


def _code(typecode_or_type: Any) -> str:
    if isinstance(typecode_or_type, str):
        code = typecode_or_type
    elif isinstance(typecode_or_type, type) and issubclass(typecode_or_type, ctypes._SimpleCData):
        code = typecode_or_type._type_  # type: ignore[attr-defined]
    else:
        code = None
    if not isinstance(code, str) or code not in _FORMATS or code == "u":
        raise TypeError(f"unsupported type for a Redis Value/Array: {typecode_or_type!r}; use "
                        f"one of the typecodes {''.join(sorted(_FORMATS.keys() - {'u'}))} or "
                        "the matching ctypes type")
    return code


class _Shared(RedisObject):
    def __init__(self, code: str, name: str | None, ctx: RedisContext, lock: Any) -> None:
        super().__init__(name, ctx)
        self._code = code
        self._struct = struct.Struct("<" + _FORMATS[code])
        self._size = self._struct.size
        self._data = self._k + "v"
        if lock is True:
            lock = RLock(name=self.name + ".lock", ctx=ctx)
        elif lock is not False and not isinstance(lock, Lock):
            raise TypeError("lock must be True, False, or a Lock/RLock of a Redis context")
        self._lock = lock or None

    def _pack(self, value: Any) -> bytes:
        try:
            return self._struct.pack(value)
        except struct.error as e:
            raise TypeError(f"{value!r} does not fit typecode {self._code!r}: {e}") from e

    def get_lock(self) -> Any:
        if self._lock is None:
            raise AttributeError(f"{type(self).__name__} {self.name!r} was created with "
                                 "lock=False")
        return self._lock

    def acquire(self, *args: Any) -> bool:
        return self.get_lock().acquire(*args)

    def release(self) -> None:
        self.get_lock().release()

    def __enter__(self) -> bool:
        return self.get_lock().__enter__()

    def __exit__(self, *exc: object) -> None:
        self.get_lock().__exit__(*exc)


class Value(_Shared):
    """``multiprocessing.Value``: ``.value``, ``get_lock()``."""

    _kind = "Value"

    def __init__(self, typecode_or_type: Any, *args: Any, lock: Any = True,
                 name: str | None = None, ctx: RedisContext) -> None:
        code = _code(typecode_or_type)
        super().__init__(code, name, ctx, lock)
        initial = args[0] if args else (b"\0" if code == "c" else 0)
        blob = self._pack(initial)
        # the first creator's value wins: the same name is the same object
        self._engine.call(lambda r: r.set(self._data, blob, nx=True), what="Value")

    def _params(self) -> dict[str, Any]:
        return {"typecode_or_type": self._code, "lock": self._lock or False}

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_value, (self._ctx, self.name, self._code, self._lock or False))

    @property
    def value(self) -> Any:
        blob = self._engine.call(lambda r: r.get(self._data), what="Value read")
        if blob is None or len(blob) != self._size:
            blob = bytes(self._size)  # Redis lost it (restart without persistence)
        return self._struct.unpack(blob)[0]

    @value.setter
    def value(self, v: Any) -> None:
        blob = self._pack(v)
        self._engine.call(lambda r: r.set(self._data, blob), what="Value write")

    def __repr__(self) -> str:
        return f"<procwire.redis.Value {self.name!r} {self._code!r}>"


def _rebuild_value(ctx: RedisContext, name: str, code: str, lock: Any) -> Value:
    return Value(code, lock=lock, name=name, ctx=ctx)


class Array(_Shared):
    """``multiprocessing.Array``: indexing, slices, len, iteration, ``get_lock()``."""

    _kind = "Array"

    def __init__(self, typecode_or_type: Any, size_or_initializer: int | Iterable[Any], *,
                 lock: Any = True, name: str | None = None, ctx: RedisContext) -> None:
        code = _code(typecode_or_type)
        super().__init__(code, name, ctx, lock)
        if isinstance(size_or_initializer, int):
            if size_or_initializer < 0:
                raise ValueError("array size must be >= 0")
            self._len = size_or_initializer
            blob = bytes(self._size * self._len)
        else:
            items = list(size_or_initializer)
            self._len = len(items)
            blob = b"".join(self._pack(x) for x in items)
        self._engine.call(lambda r: r.set(self._data, blob, nx=True), what="Array")

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_array, (self._ctx, self.name, self._code, self._len,
                                 self._lock or False))

    def __len__(self) -> int:
        return self._len

    def _index(self, i: int) -> int:
        if i < 0:
            i += self._len
        if not 0 <= i < self._len:
            raise IndexError("invalid index")
        return i

    def _read(self, start: int, stop: int) -> bytes:
        if stop <= start:
            return b""
        s = self._size
        blob = self._engine.call(lambda r: r.getrange(self._data, start * s, stop * s - 1),
                                 what="Array read")
        return blob.ljust((stop - start) * s, b"\0")

    def __getitem__(self, i: int | slice) -> Any:
        if isinstance(i, slice):
            start, stop, step = i.indices(self._len)
            lo, hi = (start, stop) if step > 0 else (stop + 1, start + 1)
            raw = self._read(lo, hi) if hi > lo else b""
            values = [self._struct.unpack_from(raw, k * self._size)[0]
                      for k in range(len(raw) // self._size)]
            return values[::step] if step > 0 else values[::-1][::-step]
        i = self._index(i)
        return self._struct.unpack(self._read(i, i + 1))[0]

    def __setitem__(self, i: int | slice, value: Any) -> None:
        if isinstance(i, slice):
            start, stop, step = i.indices(self._len)
            values = list(value)
            if step != 1:
                idx = list(range(start, stop, step))
                if len(idx) != len(values):
                    raise ValueError("can only assign a sequence of the same length")
                pipe_items = [(k, self._pack(v)) for k, v in zip(idx, values)]

                def many(r: Any) -> None:
                    p = r.pipeline()
                    for k, b in pipe_items:
                        p.setrange(self._data, k * self._size, b)
                    p.execute()
                self._engine.call(many, what="Array write")
                return
            if len(values) != max(0, stop - start):
                raise ValueError("can only assign a sequence of the same length")
            blob = b"".join(self._pack(v) for v in values)
        else:
            start = self._index(i)
            blob = self._pack(value)
        if blob:
            self._engine.call(lambda r: r.setrange(self._data, start * self._size, blob),
                              what="Array write")

    def __iter__(self) -> Any:
        return iter(self[:])

    def __repr__(self) -> str:
        return f"<procwire.redis.Array {self.name!r} {self._code!r}[{self._len}]>"


def _rebuild_array(ctx: RedisContext, name: str, code: str, length: int, lock: Any) -> Array:
    return Array(code, length, lock=lock, name=name, ctx=ctx)
