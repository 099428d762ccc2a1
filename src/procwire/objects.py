"""Named procwire objects as seen from outside: list, describe, remove, clean.

This is the logic behind ``procwire ls``, ``stat``, ``rm`` and ``clean``; the
commands in ``procwire.cli.objects`` only format it.

Every named object is a file ``/dev/shm/procwire.<name>``. Looking at one
never changes it: the file is opened read-only, mapped read-only, and its
header and counters are read by ``_core.inspect`` with plain atomic loads. No
lock is taken, so a wedged or malicious process cannot make ``procwire ls``
hang, and inspecting an object cannot disturb the processes using it. A file
that is not a valid procwire segment is reported as corrupt, with the reason.

Which processes use an object is the kernel's answer, not the header's: a
process uses a segment if ``/proc/<pid>/maps`` shows a mapping of it or
``/proc/<pid>/fd`` an open descriptor, matched by device and inode. A name that
was removed and created again is a different inode, so the processes still
using the old, deleted segment do not count for the new one. Only processes
whose ``/proc`` entries we may read are seen: those of the same user (or
every process, for root).
"""
from __future__ import annotations

import dataclasses
import errno
import mmap
import os
import stat as _stat
import time
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from procwire import _core
from procwire._segment import PREFIX, SHM_DIR, TEMP_MARK, validate_name
from procwire.errors import SegmentError
from procwire.stats import LockStatistics, Statistics, for_kind

__all__ = ["Entry", "clean_candidates", "describe", "printable", "remove", "scan", "users_of"]

# A segment's fixed common header (struct pw_header in _core/lib/layout.h): magic
# at 0, total_size at 16.
_HEADER_SIZE = 64


def printable(text: str) -> str:
    """`text` safe to show on a terminal: control characters escaped.

    Names come from the file system, where any user can put escape sequences
    (colours, cursor moves, a fake prompt), bidirectional overrides or bytes
    that are not UTF-8 into a file name. Those are shown as Python escapes
    (``\x1b``, ``\u202e``, ``\udcff`` for an undecodable byte) and a backslash
    as ``\\``, so the output names every file unambiguously. The commands
    never parse a name as rich markup either (they pass ``Text`` objects).
    """
    out = []
    for ch in text:
        code = ord(ch)
        if ch == "\\":
            out.append("\\\\")
        elif (code < 0x20 or 0x7f <= code < 0xa0 or 0xd800 <= code < 0xe000
              or unicodedata.category(ch) in ("Cf", "Cn", "Co", "Zl", "Zp")):
            out.append(ascii(ch)[1:-1])
        else:
            out.append(ch)
    return "".join(out)


# Statistics fields that count threads blocked on the object.
_WAITER_FIELDS = ("waiters", "consumers_waiting", "producers_waiting", "joiners_waiting")


@dataclass
class Entry:
    """One file under /dev/shm/procwire.*.

    ``state`` is one of:

    * ``"ok"``: a valid procwire object; ``info`` holds its header (and the raw
      counters), ``statistics`` the counters as its type's ``statistics()``
      snapshot (:mod:`procwire.stats`; None for a kind without counters);
    * ``"corrupt"``: not a valid segment; ``error`` says why;
    * ``"creating"``: a temporary file whose creator is still building it;
    * ``"stale"``: a temporary file whose creator died before finishing it.
    """

    name: str                      # the procwire name, or the temporary file's suffix
    path: str
    state: str
    size: int = 0
    uid: int = -1
    dev: int = 0
    ino: int = 0
    kind: str | None = None
    info: dict[str, Any] = field(default_factory=dict)
    statistics: Statistics | None = None
    error: str | None = None
    creator_pid: int | None = None
    creator_alive: bool | None = None
    users: list[int] = field(default_factory=list)
    regular: bool = True           # a regular file (the only kind `clean` removes)

    @property
    def temporary(self) -> bool:
        return self.state in ("creating", "stale")

    @property
    def in_use(self) -> bool:
        """Some process maps it or holds it open, or its creator still runs."""
        return bool(self.users) or bool(self.creator_alive)

    @property
    def waiters(self) -> int:
        """Live threads blocked on the object (its lock's included)."""
        s = self.statistics
        n = sum(getattr(s, k, 0) for k in _WAITER_FIELDS)
        lock = getattr(s, "lock", None)
        return n + (lock.waiters if isinstance(lock, LockStatistics) else 0)

    @property
    def counters(self) -> dict[str, Any]:
        """The statistics as a plain dict (nested ones too), for JSON."""
        return dataclasses.asdict(self.statistics) if self.statistics is not None else {}

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "path": self.path, "state": self.state, "kind": self.kind,
                "size": self.size, "creator_pid": self.creator_pid,
                "creator_alive": self.creator_alive, "users": self.users,
                "in_use": self.in_use, "waiters": self.waiters, "error": self.error,
                "regular": self.regular,
                "counters": self.counters}


# ----------------------------------------------------------------- processes

def _boot_time() -> float:
    try:
        with open("/proc/stat") as f:
            for line in f:
                if line.startswith("btime "):
                    return float(line.split()[1])
    except OSError:
        pass
    return 0.0


_CLK_TCK = os.sysconf("SC_CLK_TCK")


def _start_time(pid: int) -> float | None:
    """When process `pid` started (seconds since the epoch), or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    except OSError:
        return 0.0  # exists, but unreadable: assume it is old enough
    fields = data.rsplit(")", 1)[1].split()
    if fields[0] == "Z":  # a zombie runs no code and maps nothing
        return None
    return _boot_time() + int(fields[19]) / _CLK_TCK


def pid_alive(pid: int | None, created_ns: int | None = None) -> bool:
    """True if `pid` runs and, when `created_ns` is known, started before then.

    The start-time check tells a creator that still runs from a new process
    that happens to have been given a dead creator's pid.
    """
    if not pid:
        return False
    started = _start_time(pid)
    if started is None:
        return False
    # 1 s: clock-tick rounding
    return not (created_ns and started > created_ns / 1e9 + 1.0)


def process_name(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return "?"


def _pids() -> Iterable[int]:
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            yield int(entry)


def users_of(keys: set[tuple[int, int]] | None = None) -> dict[tuple[int, int], set[int]]:
    """(dev, ino) of /dev/shm/procwire.* files -> pids mapping them or holding them open.

    Reads /proc/<pid>/maps and /proc/<pid>/fd of every process we may read,
    the caller's own excepted. With `keys`, only those files are reported.
    """
    me = os.getpid()
    found: dict[tuple[int, int], set[int]] = {}
    marker = f"{SHM_DIR}/{PREFIX}"
    for pid in _pids():
        if pid == me:
            continue
        try:
            with open(f"/proc/{pid}/maps") as f:
                for line in f:
                    if marker not in line:
                        continue
                    parts = line.split(None, 5)
                    major, minor = (int(x, 16) for x in parts[3].split(":"))
                    key = (os.makedev(major, minor), int(parts[4]))
                    if keys is None or key in keys:
                        found.setdefault(key, set()).add(pid)
        except OSError:
            continue  # gone, or not ours to read
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            link = f"/proc/{pid}/fd/{fd}"
            try:
                if not os.readlink(link).startswith(marker):
                    continue
                st = os.stat(link)  # follows to the open file itself, deleted or not
            except OSError:
                continue
            key = (st.st_dev, st.st_ino)
            if keys is None or key in keys:
                found.setdefault(key, set()).add(pid)
    return found


# ---------------------------------------------------------------- reading

def _read(path: str, name: str) -> Entry:
    """Describe one file without modifying it (read-only open and mapping)."""
    entry = Entry(name=name, path=path, state="ok")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        raise
    except OSError as exc:
        # Whatever a file is, it is listed: a symlink (ELOOP), another
        # user's file (EACCES), a socket (ENXIO), ...
        st = os.lstat(path)
        entry.uid, entry.size, entry.dev, entry.ino = (st.st_uid, st.st_size, st.st_dev,
                                                       st.st_ino)
        entry.regular = _stat.S_ISREG(st.st_mode)
        entry.state = "corrupt"
        if exc.errno == errno.ELOOP:
            entry.error = "a symbolic link, not a segment"
        elif exc.errno == errno.EACCES:
            entry.error = f"not readable (owned by uid {st.st_uid})"
        elif not entry.regular:
            entry.error = "not a regular file"
        else:
            entry.error = f"cannot be opened: {exc.strerror}"
        return entry
    try:
        st = os.fstat(fd)
        entry.uid, entry.size, entry.dev, entry.ino = st.st_uid, st.st_size, st.st_dev, st.st_ino
        entry.regular = _stat.S_ISREG(st.st_mode)
        if not entry.regular:
            entry.state, entry.error = "corrupt", "not a regular file"
            return entry
        if st.st_size == 0:
            entry.state, entry.error = "corrupt", "empty (0 bytes)"
            return entry
        problem = _unmappable(fd, st.st_size)
        if problem:
            entry.state, entry.error = "corrupt", problem
            return entry
        try:
            m = mmap.mmap(fd, st.st_size, mmap.MAP_SHARED, mmap.PROT_READ)
        except (OSError, OverflowError, ValueError) as exc:
            entry.state = "corrupt"
            entry.error = f"cannot be mapped ({st.st_size} bytes): {exc}"
            return entry
        with m:
            try:
                entry.info = _core.inspect(m)
            except SegmentError as exc:
                entry.state = "corrupt"
                entry.error = str(exc).removeprefix("the segment ")
                return entry
    finally:
        os.close(fd)
    entry.kind = entry.info["kind"]
    reader = for_kind(entry.kind)
    if reader is not None:
        entry.statistics = reader.from_counters(entry.info)
    entry.creator_pid = entry.info["creator_pid"]
    entry.creator_alive = pid_alive(entry.creator_pid, entry.info["created_ns"])
    return entry


def _unmappable(fd: int, size: int) -> str | None:
    """Why the file must not be mapped, judged from its header read with pread.

    Only a file whose header claims exactly the file's size is mapped (and
    then validated whole by _core.inspect): anyone can make a sparse file of
    2^48 bytes in /dev/shm, and mapping it would fail, or take a large part
    of the address space, for nothing.
    """
    try:
        head = os.pread(fd, _HEADER_SIZE, 0)
    except OSError as exc:
        return f"cannot be read: {exc.strerror}"
    if len(head) < _HEADER_SIZE:
        return (f"is not a procwire segment: {len(head)} bytes is shorter than the "
                f"{_HEADER_SIZE}-byte header")
    claimed = int.from_bytes(head[16:24], "little")
    if claimed == size:
        return None
    try:
        _core.header_info(head)  # the first complaint about magic, version or kind
    except SegmentError as exc:
        message = str(exc).removeprefix("the segment ")
        if "truncated or corrupt" not in message:
            return message
    return (f"is truncated or corrupt: its header says {claimed} bytes but the file "
            f"has {size}")


def _temp_entry(path: str, suffix: str) -> Entry:
    """A `procwire.<name>.creating-<pid>-<hex>` file: stale once its pid is dead."""
    name, _, rest = suffix.rpartition(TEMP_MARK)
    try:
        pid = int(rest.split("-", 1)[0])
    except ValueError:
        pid = 0
    entry = Entry(name=suffix, path=path, state="creating", kind=None, creator_pid=pid or None)
    try:
        st = os.lstat(path)
        entry.uid, entry.size, entry.dev, entry.ino = st.st_uid, st.st_size, st.st_dev, st.st_ino
        entry.regular = _stat.S_ISREG(st.st_mode)
    except FileNotFoundError:
        raise
    entry.creator_alive = pid_alive(pid, st.st_mtime_ns)
    if not entry.creator_alive:
        entry.state = "stale"
        entry.error = f"temporary file of {name!r} left by dead process {pid}"
    return entry


def _entry_for(filename: str) -> Entry:
    path = os.path.join(SHM_DIR, filename)
    suffix = filename[len(PREFIX):]
    if TEMP_MARK in suffix:
        return _temp_entry(path, suffix)
    return _read(path, suffix)


def scan(with_users: bool = True) -> list[Entry]:
    """Every /dev/shm/procwire.* file, described, sorted by name."""
    entries = []
    for filename in sorted(os.listdir(SHM_DIR)):
        if not filename.startswith(PREFIX):
            continue
        try:
            entries.append(_entry_for(filename))
        except FileNotFoundError:
            continue  # removed while we looked
    if with_users:
        _attach_users(entries)
    return entries


def _attach_users(entries: list[Entry]) -> None:
    keys = {(e.dev, e.ino) for e in entries if e.ino}
    found = users_of(keys) if keys else {}
    for e in entries:
        e.users = sorted(found.get((e.dev, e.ino), ()))


def describe(name: str) -> Entry:
    """One named object. ValueError for an invalid name, FileNotFoundError if absent."""
    path = os.path.join(SHM_DIR, PREFIX + validate_name(name))
    try:
        entry = _read(path, name)
    except FileNotFoundError:
        raise FileNotFoundError(errno.ENOENT, f"no procwire object is named {name!r} "
                                "(see `procwire ls`)", path) from None
    _attach_users([entry])
    return entry


# ---------------------------------------------------------------- removing

def remove(name: str) -> None:
    """Remove the name (like ``Queue.unlink()``); processes using it keep working.

    ValueError for an invalid name, FileNotFoundError if there is none,
    PermissionError if it is not ours to remove.
    """
    path = os.path.join(SHM_DIR, PREFIX + validate_name(name))
    try:
        os.unlink(path)
    except FileNotFoundError:
        raise FileNotFoundError(errno.ENOENT, f"no procwire object is named {name!r} "
                                "(see `procwire ls`)", path) from None
    except PermissionError:
        raise PermissionError(errno.EACCES, f"not allowed to remove procwire object {name!r}",
                              path) from None


def clean_candidates(entries: list[Entry]) -> list[Entry]:
    """What ``procwire clean`` may remove: files of ours that nothing uses.

    Never an object some process maps or holds open, never one whose creator
    still runs, never a temporary file that is still being built, never
    another user's file.
    """
    me = os.geteuid()
    return [e for e in entries
            if (e.uid == me or me == 0) and e.regular and e.state != "creating"
            and not e.in_use]


def remove_unused(entry: Entry) -> bool:
    """Remove `entry` if it is still the same file and still unused; True if removed.

    Re-checks just before unlinking, so that a process that attached since
    the listing keeps its object's name. Never removes anything but a regular
    file; an error on one file (say, it became another user's) is False, so
    that ``clean`` goes on with the others.
    """
    try:
        st = os.lstat(entry.path)
    except OSError:
        return False
    if (st.st_dev, st.st_ino) != (entry.dev, entry.ino) or not _stat.S_ISREG(st.st_mode):
        return False  # removed and created again since we looked, or not a file
    if users_of({(entry.dev, entry.ino)}):
        return False
    try:
        os.unlink(entry.path)
    except OSError:
        return False
    return True


def sample(name: str) -> tuple[float, Entry]:
    """(monotonic time, description) for rate computations in ``stat --watch``."""
    return time.monotonic(), describe(name)
