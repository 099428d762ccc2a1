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
from typing import Any

from procwire import _core, _tracker
from procwire.errors import SegmentError

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

_KIND_QUEUE = 1  # layout.h, enum pw_kind


def mapped_size(fd: int, file_size: int) -> int:
    """How many bytes of a segment file to map: the whole file, except for a queue.

    A queue's file may be longer than its header says (``total_size``): the
    spill area beyond it holds messages that did not fit the ring, and is
    never mapped. Anything else is mapped whole and validated as before.
    """
    head = os.pread(fd, 64, 0)
    if len(head) == 64 and int.from_bytes(head[12:16], "little") == _KIND_QUEUE:
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
            buffer = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except BaseException:
            os.close(fd)
            raise
        seg = cls(buffer, fd, None, size)
        seg._finalizer = weakref.finalize(seg, os.close, fd)
        return seg

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
        """Adopt a descriptor received from a parent (it becomes ours to close)."""
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


class Named:
    """The by-name surface every segment-backed object shares."""

    _segment: Segment

    @property
    def name(self) -> str | None:
        """The name given at creation, or None for an anonymous object."""
        return self._segment.name

    def unlink(self) -> None:
        """Remove the name now; processes that have the object open keep using it."""
        self._segment.unlink()
