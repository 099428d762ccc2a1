"""Which /dev/shm/procwire.* entries that appeared during a test are that test's leaks.

Several test sessions may run on one machine at once (a developer's second
terminal, helpers running suites side by side), and all of them see the same
/dev/shm. An entry that appeared while a test ran is another session's, not
this test's leak, when:

* it is gone by the time we look at it (a short-lived object of a session
  that creates and removes names in a loop);
* its creator still runs and is not a child of this process;
* its creator is dead but processes outside this process's tree still use it
  (map it or hold it open), and none inside does. The cleanup tests do this on
  purpose: a SIGKILLed creator's name must stay while an unrelated process
  uses it. A leak check that removed it broke that test in the other session.

What is left is counted as the test's leak, as before, with one allowance: an
entry of a dead creator that nobody uses (a killed child's name) looks the
same whichever session made it. Other sessions' such entries are short-lived
(a tracker removes them within milliseconds, their test a moment later), so
such a suspect counts only if it is still there after ``GRACE`` seconds; a real
leak stays, and is found as before.
"""
from __future__ import annotations

import os
import time

SHM = "/dev/shm"
GRACE = 5.0  # seconds a suspect another session may have made gets to go away
_MAGIC = b"PRCWIRE1"  # pw_header.magic (layout.h PW_MAGIC), little-endian
_PID_MAX = 1 << 22  # the kernel's ceiling for pid_max


def shm_entries() -> set[str]:
    return {e for e in os.listdir(SHM) if e.startswith("procwire")}


def creator(entry: str) -> int | None:
    """The pid that created a segment, from its header or its temporary name."""
    if ".creating-" in entry:
        try:
            pid = int(entry.rsplit(".creating-", 1)[1].split("-")[0])
        except ValueError:
            return None
        return pid if 0 < pid <= _PID_MAX else None
    try:
        with open(os.path.join(SHM, entry), "rb") as f:
            header = f.read(64)
    except OSError:
        return None
    # Only a procwire header is trusted (a `procwire.*` name can be anything:
    # a file of the cleanup tests, a half-made or scribbled segment), and only
    # a pid the kernel could have given (os.kill refuses bigger numbers).
    if len(header) < 28 or header[:8] != _MAGIC:
        return None
    pid = int.from_bytes(header[24:28], "little")
    return pid if 0 < pid <= _PID_MAX else None


def children() -> set[int]:
    pids: set[int] = set()
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/children") as f:
                pids.update(int(p) for p in f.read().split())
        except FileNotFoundError:
            pass
    return pids


def _parent(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def in_our_tree(pid: int) -> bool:
    """True if ``pid`` is this process or one of its (living) descendants."""
    me = os.getpid()
    seen = 0
    while pid and pid != 1 and seen < 4096:
        if pid == me:
            return True
        pid = _parent(pid) or 0
        seen += 1
    return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _used_only_by_others(path: str) -> bool:
    """Some living process uses the file at ``path``, and none of ours does."""
    from procwire import objects  # lazily: `import procwire` is measured elsewhere

    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return True  # gone meanwhile: nobody's leak
    key = (st.st_dev, st.st_ino)
    users = objects.users_of({key}).get(key, set())  # every process but this one
    if not users:
        return False
    if any(in_our_tree(pid) for pid in users):
        return False
    # users_of skips this process itself: a mapping of ours makes it ours.
    marker = f"{SHM}/procwire"
    with open("/proc/self/maps") as f:
        for line in f:
            if marker in line:
                parts = line.split(None, 5)
                major, minor = (int(x, 16) for x in parts[3].split(":"))
                if (os.makedev(major, minor), int(parts[4])) == key:
                    return False
    return True


def is_leak(entry: str, known_children: set[int]) -> bool:
    """Whether ``entry``, new since the test began, is the test's own leak.

    ``known_children``: this process's children, as the caller found them.
    """
    path = os.path.join(SHM, entry)
    if not os.path.lexists(path):
        return False  # removed since it was listed
    pid = creator(entry)
    if pid and pid != os.getpid() and pid not in known_children and _alive(pid):
        return False  # a live process of another session made it
    if not os.path.lexists(path):
        return False  # removed while we read it (creator() then says None)
    # In use by processes of another session only: theirs.
    return pid == os.getpid() or not _used_only_by_others(path)


def leaks(new_entries: set[str], known_children: set[int], grace: float = GRACE) -> set[str]:
    """The entries of ``new_entries`` (new since the test began) that are the test's leaks.

    Entries this process created count at once; others that look leaked count
    if they are still there after ``grace`` seconds (polled, not slept through).
    """
    found = {e for e in new_entries if is_leak(e, known_children)}
    ours = {e for e in found if creator(e) == os.getpid()}
    suspects = found - ours
    deadline = time.monotonic() + grace
    while suspects and time.monotonic() < deadline:
        time.sleep(0.01)
        suspects = {e for e in suspects if is_leak(e, known_children)}
    return ours | suspects
