"""Shared segments: naming, creating, attaching, passing to children, cleanup.

Two kinds of segment back every procwire object:

* **anonymous** (the default): a ``memfd``. Nothing appears in /dev/shm, and
  the kernel frees the memory when the last process holding it exits, even
  after ``kill -9`` of every one of them. Children get it by inheritance
  (fork) or by descriptor passing (spawn, forkserver).
* **named**: ``/dev/shm/procwire.<name>``, mode 0600, so that an unrelated
  process of the same user can attach by name. The object that created the
  name removes it when it is closed, collected, or its process exits;
  ``procwire clean`` removes names whose creator was killed.

A named segment is fully initialised under a temporary name and then linked
into place, so an attacher never sees a half-built header. The header itself
is still validated on every attach: shared memory is untrusted input.
"""
from __future__ import annotations

import errno
import fcntl
import mmap
import os
import re
import secrets
import stat
import time
import weakref
from collections.abc import Callable
from multiprocessing import context as _mp_context, reduction as _mp_reduction
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Self, TypeVar, cast

from procwire import _core, _tracker
from procwire.errors import SegmentError

if TYPE_CHECKING:  # procwire.stats is imported on first statistics(): dataclasses costs ~5 ms
    from procwire.stats import Statistics

# Where named segments live. PROCWIRE_SHM_DIR moves them to another tmpfs
# directory (a container's private one, or a test session's own, out of reach
# of other sessions' clean-ups); every process that shares names must agree.
SHM_DIR = os.environ.get("PROCWIRE_SHM_DIR") or "/dev/shm"
PREFIX = "procwire."
TEMP_MARK = ".creating-"
MAX_NAME = 200
_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\Z")


def validate_name(name: object) -> str:
    """Return ``name`` if it can name a segment, else raise a clear error."""
    if not isinstance(name, str):
        raise TypeError(f"a procwire name must be a str, not {type(name).__name__}")
    if not name:
        raise ValueError("a procwire name must not be empty")
    if len(name) > MAX_NAME:
        raise ValueError(f"procwire name {name[:20]!r}... is {len(name)} characters long; "
                         f"the limit is {MAX_NAME}")
    if "/" in name or "\0" in name:
        raise ValueError(f"procwire name {name!r} must not contain '/' or NUL: it names a "
                         f"file in {SHM_DIR}, not a path")
    if ".." in name or TEMP_MARK in name:
        raise ValueError(f"procwire name {name!r} must not contain '..' or {TEMP_MARK!r}")
    if not _NAME_RE.match(name):
        raise ValueError(f"procwire name {name!r} may use only letters, digits, '_', '-' "
                         f"and '.', and must start with a letter, digit or '_'")
    return name


def ring_capacity(capacity: int | None, default: int) -> int:
    """A queue's or pipe's ring size in bytes: ``capacity`` checked and rounded up to a
    power of two (``default`` for None)."""
    if capacity is None:
        return default
    if not isinstance(capacity, int) or isinstance(capacity, bool):
        raise TypeError(f"capacity must be an int number of bytes, not {type(capacity).__name__}")
    if capacity < _core.RING_MIN_CAPACITY or capacity > _core.RING_MAX_CAPACITY:
        raise ValueError(f"capacity must be between {_core.RING_MIN_CAPACITY} bytes and "
                         f"{_core.RING_MAX_CAPACITY >> 30} GiB, not {capacity}")
    return 1 << (capacity - 1).bit_length()  # next power of two


def path_of(name: str) -> str:
    return os.path.join(SHM_DIR, PREFIX + validate_name(name))


def _reserve(fd: int, size: int, what: str, where: str | None) -> None:
    """Size a new segment and allocate every page of it now, or raise a clear OSError.

    tmpfs (and a memfd) hands out pages at first touch: a segment merely sized
    with ftruncate() on a full /dev/shm kills its first writer with SIGBUS,
    possibly long after creation. posix_fallocate() takes the pages up front.
    ``where`` is the directory of a named segment, None for a memfd.
    """
    try:
        os.ftruncate(fd, size)
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.ENOMEM, errno.EFBIG, errno.EDQUOT):
            raise
        if where is None:
            place = "in an anonymous memfd"
            advice = ("The machine, this process's memory cgroup or its file-size limit "
                      "(ulimit -f) has no room for it: make the object smaller")
        else:
            place = f"in {where}"
            advice = (f"Free space there (`df -h {where}`, `procwire clean`), make the object "
                      f"smaller, or give the container a larger /dev/shm "
                      f"(docker run --shm-size=...)")
        raise OSError(
            exc.errno,
            f"cannot create {what}: reserving its {size:,} bytes of shared memory {place} "
            f"failed ({os.strerror(exc.errno)}). {advice}") from None


# Anonymous segments cannot shrink or grow once made: a process that
# ftruncate()s one (any child holds the descriptor) gets EPERM instead of
# killing every user of it with SIGBUS. A queue's may grow: its spill area
# lies beyond the mapped part (see queue.py), reached with pread/pwrite only.
_SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL
_SEALS_GROWABLE = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_SEAL


def mapped_size(fd: int, file_size: int) -> int:
    """How many bytes of a segment file to map: the whole file, except for a queue.

    A queue's file may be longer than its header says (``total_size``): the
    spill area beyond it holds messages that did not fit the ring, and is
    never mapped. Anything else is mapped whole and validated as before.
    """
    head = os.pread(fd, 64, 0)
    if len(head) == 64 and int.from_bytes(head[12:16], "little") == _core.KIND_QUEUE:
        claimed = int.from_bytes(head[16:24], "little")
        if 0 < claimed < file_size:
            return claimed
    return file_size


def _release_guard(token: int, fd: int) -> None:
    _core.unguard_mapping(token)
    os.close(fd)


def _unlink_if_same(path: str, dev: int, ino: int, creator: int) -> None:
    """Remove a name we created, unless it now names another segment.

    Runs from a finalizer, so in forked children too: only the creating
    process may remove the name.
    """
    if os.getpid() != creator:
        return
    try:
        st = os.stat(path, follow_symlinks=False)
        if (st.st_dev, st.st_ino) == (dev, ino):
            os.unlink(path)
    except FileNotFoundError:
        pass
    _tracker.unregister(dev, ino)


# How long attach waits for an exclusive flock to go. Only the tracker takes
# one, for the few microseconds between finding a segment unused and removing
# its name; a process of this user holding one for longer is not procwire.
_ATTACH_LOCK_WAIT = 10.0


def _lock_shared(fd: int, path: str) -> None:
    """Take the shared flock that marks this process as a user of the segment."""
    deadline = None
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            now = time.monotonic()
            if deadline is None:
                deadline = now + _ATTACH_LOCK_WAIT
            elif now > deadline:
                raise SegmentError(
                    f"{path} has been locked exclusively (flock LOCK_EX) for "
                    f"{_ATTACH_LOCK_WAIT:.0f} s by some process; procwire's tracker holds "
                    f"that lock only for an instant. Find the holder in /proc/locks") from None
            time.sleep(0.001)


class Segment:
    """One process's mapping of a shared segment.

    ``buffer`` is the writable mmap the native core lays its structures in.
    ``fd`` stays open for anonymous segments only: it is what children get.
    """

    __slots__ = ("__weakref__", "_finalizer", "_guard", "_guard_fd", "_guard_token", "buffer",
                 "fd", "name", "size")

    def __init__(self, buffer: mmap.mmap, fd: int, name: str | None, size: int,
                 guard_fd: int = -1) -> None:
        self.buffer = buffer
        self.fd = fd
        self.name = name
        self.size = size
        self._finalizer: weakref.finalize[Any, Any] | None = None
        self._guard: weakref.finalize[Any, Any] | None = None
        self._guard_token: int | None = None
        self._guard_fd = guard_fd
        if guard_fd >= 0:
            # A named segment's file can be truncated by any process of this
            # user: _core's SIGBUS guard repairs faults in this mapping (see
            # segment.c) with the descriptor we keep open for it, until the
            # mapping itself goes.
            try:
                token = _core.guard_mapping(buffer, guard_fd)
            except BaseException:
                os.close(guard_fd)
                raise
            self._guard_token = token
            self._guard = weakref.finalize(buffer, _release_guard, token, guard_fd)

    # -- creation -------------------------------------------------------------

    @property
    def io_fd(self) -> int:
        """A descriptor of the segment's file for pread/pwrite (ours, closed with it)."""
        return self.fd if self.fd >= 0 else self._guard_fd

    @classmethod
    def create_anonymous(cls, size: int, label: str, *, growable: bool = False) -> Segment:
        fd = os.memfd_create(f"procwire:{label}", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            _reserve(fd, size, f"an anonymous {label}", None)
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS_GROWABLE if growable else _SEALS)
        except BaseException:
            os.close(fd)
            raise
        return cls.from_fd(fd)

    @classmethod
    def create_named(cls, name: str, size: int,
                     initialise: Callable[[mmap.mmap], object]) -> Segment:
        """Create /dev/shm/procwire.<name>, initialised by ``initialise(buffer)``.

        The segment is built under a temporary name and linked into place only
        when complete; ``FileExistsError`` if the name is taken.
        """
        final = path_of(name)
        temp = f"{final}{TEMP_MARK}{os.getpid()}-{secrets.token_hex(4)}"
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(temp, flags, 0o600)
        st = None
        linked = False
        try:
            # Our shared flock: this process (and its forked children, which
            # share the open file) uses the segment until the last descriptor goes.
            fcntl.flock(fd, fcntl.LOCK_SH)
            os.fchmod(fd, 0o600)  # the umask can only narrow it; be explicit anyway
            st = os.fstat(fd)
            # Known to the tracker before the name exists, so that a kill at any
            # point after the link leaves nothing behind.
            _tracker.register(final, temp, st.st_dev, st.st_ino)
            _reserve(fd, size, f"procwire object {name!r}", SHM_DIR)
            buffer = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            try:
                initialise(buffer)
                os.link(temp, final)  # atomic: fails if the name exists
                linked = True
            except BaseException:
                try:
                    buffer.close()
                except BufferError:
                    pass  # `initialise` still holds a view; the caller releases it
                raise
            guard_fd = os.dup(fd)
        except FileExistsError:
            raise FileExistsError(
                errno.EEXIST,
                f"a procwire object named {name!r} already exists; attach to it with "
                f".attach({name!r}), or remove it with `procwire rm {name}`", final) from None
        finally:
            try:
                os.unlink(temp)
            except FileNotFoundError:
                pass
            os.close(fd)
            if st is not None and not linked:
                _tracker.unregister(st.st_dev, st.st_ino)
        seg = cls(buffer, -1, name, size, guard_fd)
        seg._finalizer = weakref.finalize(seg, _unlink_if_same, final, st.st_dev, st.st_ino,
                                          os.getpid())
        return seg

    # -- attaching ------------------------------------------------------------

    @classmethod
    def attach_named(cls, name: str) -> Segment:
        path = path_of(name)
        # The tracker may remove the name of a dead creator's unused segment
        # between our open() and our flock(): after the flock, the path must
        # still name the file we opened, else we came too late (try again: the
        # name may belong to a new object by now).
        for _ in range(100):
            seg = cls._try_attach(name, path)
            if seg is not None:
                return seg
        raise SegmentError(f"procwire object {name!r} kept being removed and created again "
                           f"while attaching; try again")

    @classmethod
    def _try_attach(cls, name: str, path: str) -> Segment | None:
        try:
            fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            raise FileNotFoundError(
                errno.ENOENT, f"no procwire object is named {name!r} (see `procwire ls`)",
                path) from None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise SegmentError(f"{path} is a symbolic link, not a procwire segment") from None
            raise
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise SegmentError(f"{path} is not a regular shared-memory file")
            if st.st_uid != os.geteuid():
                raise PermissionError(
                    errno.EACCES, f"procwire object {name!r} belongs to uid {st.st_uid}, "
                    f"not to you (uid {os.geteuid()}); procwire never attaches to another "
                    f"user's segment", path)
            _lock_shared(fd, path)
            try:
                now = os.stat(path, follow_symlinks=False)
            except FileNotFoundError:
                now = None
            if now is None or (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
                os.close(fd)
                return None
            if st.st_size == 0:
                raise SegmentError(f"procwire object {name!r} at {path} is empty (0 bytes)")
            size = mapped_size(fd, st.st_size)
            buffer = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except BaseException:
            os.close(fd)
            raise
        return cls(buffer, -1, name, size, fd)

    @classmethod
    def from_fd(cls, fd: int) -> Segment:
        """Map an anonymous segment's descriptor (a new one, or one received from a
        parent): it becomes ours to close."""
        try:
            size = mapped_size(fd, os.fstat(fd).st_size)
            buffer = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except BaseException:
            os.close(fd)
            raise
        seg = cls(buffer, fd, None, size)
        seg._finalizer = weakref.finalize(seg, os.close, fd)
        return seg

    # -- passing to other processes ---------------------------------------------

    def reduce_handle(self, what: str) -> tuple[str, object]:
        """What a pickle of the owning object carries to reach this segment."""
        if self.name is not None:
            return ("name", self.name)
        if _mp_context.get_spawning_popen() is None:
            raise RuntimeError(
                f"{what} objects without a name can only be shared with child processes "
                f"through inheritance (as Process arguments); give it a name=... to pass it "
                f"any other way")
        return ("fd", _mp_reduction.DupFd(self.fd))

    @classmethod
    def from_handle(cls, handle: tuple[str, object]) -> Segment:
        how, value = handle
        if how == "name":
            return cls.attach_named(value)  # type: ignore[arg-type]
        return cls.from_fd(value.detach())  # type: ignore[attr-defined]

    # -- end of life ------------------------------------------------------------

    def unlink(self) -> None:
        """Remove the name now (the memory lives on while anyone maps it)."""
        if self.name is None:
            return
        try:
            os.unlink(path_of(self.name))
        except FileNotFoundError:
            pass
        if self._finalizer is not None:
            info = self._finalizer.detach()
            self._finalizer = None
            if info is not None:
                _, _, args, _ = info  # (obj, func, (path, dev, ino, creator), kwargs)
                if args[3] == os.getpid():
                    _tracker.unregister(args[1], args[2])

    def close(self) -> None:
        """Drop this process's mapping and descriptors; the creator also removes the name.

        Call after the native object has released its view of the buffer. If
        a call in another thread still uses it, the mapping is closed by the
        garbage collector once that call returns.
        """
        if self._finalizer is not None:
            self._finalizer()
            self._finalizer = None
        try:
            self.buffer.close()  # mmap holds a dup of the descriptor until closed
        except BufferError:
            return  # the guard goes with the mapping, when the collector closes it
        if self._guard is not None:
            self._guard()

    @property
    def lost(self) -> bool:
        """True once this process found the named segment's file truncated under it.

        The SIGBUS guard then gave the file its size back (its contents are
        zeroes, in every process) and marked it so that attaching fails.
        """
        return self._guard_token is not None and self._guard is not None and \
            self._guard.alive and _core.mapping_lost(self._guard_token)

    def check(self, what: str = "procwire object") -> None:
        """Raise SegmentError if the segment's file was truncated while in use."""
        if self.lost:
            raise SegmentError(
                f"{what} {self.name!r} was truncated while in use (its file in {SHM_DIR} "
                f"shrank under the processes using it): its contents are lost. Remove it "
                f"(`procwire rm {self.name}`) and create it again")


def new_segment(label: str, name: str | None, size: int,
                layout: Callable[[mmap.mmap], object], growable: bool = False) -> Segment:
    """A new segment of ``size`` bytes, laid out by ``layout(buffer)``.

    Anonymous (a memfd) without ``name``; else ``/dev/shm/procwire.<name>``,
    linked into place only once ``layout`` has returned. ``growable``: the
    memfd is not sealed against growing (a queue's spill area).
    """
    if name is None:
        segment = Segment.create_anonymous(size, label, growable=growable)
        try:
            layout(segment.buffer)
        except BaseException:
            segment.close()
            raise
        return segment
    validate_name(name)
    return Segment.create_named(name, size, layout)


StatsT = TypeVar("StatsT", bound="Statistics")


class SegmentObject(Generic[StatsT]):
    """The life cycle that every segment-backed procwire object shares.

    A subclass says how to open itself on a segment (:meth:`_bind`, which
    validates what it finds), and provides the native ``_close()`` (release
    the buffer; idempotent) and ``_counters()`` (a dict of the shared
    counters). This class does the rest, once for every type: creating
    (anonymous or named), attaching by name, pickling (to children by
    descriptor, anywhere by name) with one rebuild function, close and
    unlink, typed statistics and repr.
    """

    _label: ClassVar[str] = "object"  # the type's name in messages: "Queue", "Lock"
    _growable: ClassVar[bool] = False  # the file may grow beyond the mapping (a queue's spill)
    _statistics_type: ClassVar[str]  # the name of its class in procwire.stats
    # False for a view that shares its container's mapping (the RLock inside
    # a Condition or a Value): closing it leaves the segment to the container.
    _owns_segment = True
    _segment: Segment

    if TYPE_CHECKING:  # native, from the _core type every subclass also derives from
        def _close(self) -> None: ...
        def _counters(self) -> dict[str, Any]: ...

    # Opens the native object on self._segment, validating what it finds; its
    # keyword arguments are the type's own (what _pickle_state() returned,
    # when unpickled).
    _bind: Callable[..., None]

    def _pickle_state(self) -> dict[str, Any]:
        """What a pickle carries besides the segment, passed back to :meth:`_bind`."""
        return {}

    def _create(self, name: str | None, size: int, layout: Callable[[mmap.mmap], object],
                **state: Any) -> None:
        """Create this object's segment, laid out by ``layout(buffer)``, and open it."""
        self._adopt(new_segment(self._label, name, size, layout, self._growable), **state)

    def _adopt(self, segment: Segment, **state: Any) -> None:
        self._segment = segment
        try:
            self._bind(**state)
        except BaseException:
            if self._owns_segment:
                segment.close()
            raise

    @classmethod
    def _from_segment(cls, segment: Segment, owns: bool = True, **state: Any) -> Self:
        self = cls.__new__(cls)
        if not owns:
            self._owns_segment = False
        self._adopt(segment, **state)
        return self

    @classmethod
    def _from_handle(cls, handle: Any, state: dict[str, Any]) -> Self:
        """Rebuild from what :meth:`__reduce__` pickled (see :func:`rebuild`)."""
        return cls._from_segment(Segment.from_handle(handle), **state)

    def __reduce__(self) -> tuple[Any, ...]:
        handle = self._segment.reduce_handle(self._label)
        return (rebuild, (type(self), handle, self._pickle_state()))

    def _describe(self) -> str:
        """``Queue('jobs')``, or ``anonymous Queue``: in messages and reprs."""
        name = self._segment.name
        return f"{self._label}({name!r})" if name else f"anonymous {self._label}"

    # -- the public surface ----------------------------------------------------

    @classmethod
    def attach(cls, name: str) -> Self:
        """Open the object another process created with ``name=``.

        ``FileNotFoundError`` if there is none; :class:`procwire.SegmentError`
        if the name holds something else.
        """
        return cls._from_segment(Segment.attach_named(name))

    @property
    def name(self) -> str | None:
        """The name given at creation, or None for an anonymous object."""
        return self._segment.name

    def unlink(self) -> None:
        """Remove the name now; processes that have the object open keep using it."""
        self._segment.unlink()

    def close(self) -> None:
        """Release this process's handle. Further use of it raises ValueError.

        Other processes are not affected; a named object's creator also
        removes the name. Safe to call more than once.
        """
        self._close()
        if self._owns_segment:
            self._segment.close()

    def statistics(self) -> StatsT:
        """A snapshot of the live counters in shared memory (see :mod:`procwire.stats`)."""
        from procwire import stats
        reader: type[Statistics] = getattr(stats, self._statistics_type)
        return cast(StatsT, reader.from_counters(self._counters()))

    def _repr_state(self) -> str:
        """What the repr says after the name; raises ValueError once closed."""
        s = self.statistics()  # nested statistics (a Condition's lock) are left out
        from procwire.stats import Statistics
        return " ".join(f"{k}={s[k]}" for k in s._names() if not isinstance(s[k], Statistics))

    def __repr__(self) -> str:
        try:
            state = self._repr_state()
        except ValueError:
            state = "closed"
        return f"<procwire.{type(self).__name__} {self._describe()} {state}>"


def rebuild(cls: Any, handle: Any, state: dict[str, Any]) -> Any:
    """Unpickle any procwire object: ``cls._from_handle(handle, state)``."""
    return cls._from_handle(handle, state)


class ClosedOnExit:
    """``with obj:`` closes ``obj`` at the end (queues and pipe ends; locks are held instead)."""

    if TYPE_CHECKING:
        def close(self) -> None: ...

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
