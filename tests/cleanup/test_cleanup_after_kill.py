"""A named object whose creator is killed leaves /dev/shm once nobody uses it (issue 11, item 6).

The creators are child processes (fork, spawn, forkserver) that turn the
tracker on for themselves; the test process never creates a tracker, so the
suite's leak check (which runs with PROCWIRE_TRACKER=0, see conftest.py) sees
nothing but what these tests leave. Synchronisation: pipes, the kernel's lock
table (/proc/locks shows the tracker waiting for a segment's users) and
conditions polled against a deadline, never sleeps.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
import uuid

import pytest

import procwire
from procwire import _segment, objects

JOIN = 30
FORK = mp.get_context("fork")  # the tests whose children fork or share patched modules
# The bound these tests hold the tracker to: a killed creator's unused names are
# gone this long after its death (on an idle machine it takes milliseconds; the
# suite runs on a loaded 2-vCPU machine).
BOUND = 10.0

_KEEP: list = []  # the creator's objects: never collected, so only the tracker can clean


def _unique(label: str) -> str:
    return f"cleanup-{label}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _path(name: str) -> str:
    return _segment.path_of(name)


def _wait_until(cond, what: str, timeout: float = BOUND) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.002)


def _own_tracker(on: str = "1") -> None:
    """Make this child start its own tracker at its first named create.

    A fork child would otherwise use the test process's tracker, if the suite
    runs with PROCWIRE_TRACKER=1; these tests kill and watch their own.
    """
    os.environ["PROCWIRE_TRACKER"] = on  # forkserver children do not see the test's env
    from procwire import _tracker
    if _tracker._sock is not None and _tracker.tracker_pid() is None:
        _tracker._sock.close()
        _tracker._sock = None


def _creator(base: str, tracker: str, conn) -> None:
    """Create one named object of each family, report, then block until killed."""
    _own_tracker(tracker)
    # A test run started in the background by a shell without job control
    # inherits SIGINT ignored, and the creator would survive it; the test is
    # about SIGINT as a terminal's Ctrl-C delivers it, so take Python's default.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    from procwire import _tracker
    _KEEP.extend([procwire.Queue(name=base + "-q"), procwire.Lock(name=base + "-lock"),
                  procwire.Value("i", 7, name=base + "-value"),
                  procwire.Event(name=base + "-event")])
    conn.send(_tracker.tracker_pid())
    conn.recv()  # blocks until killed (SIGINT: KeyboardInterrupt here)


SUFFIXES = ("-q", "-lock", "-value", "-event")


def _start(ctx, target, *args):
    """Start ``target(*args, conn)``; return the process, our end, and its first message."""
    ours, theirs = ctx.Pipe()
    p = ctx.Process(target=target, args=(*args, theirs))
    p.start()
    theirs.close()
    assert ours.poll(JOIN), f"{target.__name__} did not start"
    return p, ours, ours.recv()


def _start_creator(ctx, base: str, tracker: str = "1"):
    p, ours, tracker_pid = _start(ctx, _creator, base, tracker)
    for s in SUFFIXES:
        assert os.path.exists(_path(base + s))
    return p, ours, tracker_pid


def _kill(p, sig) -> None:
    os.kill(p.pid, sig)
    p.join(JOIN)
    assert p.exitcode is not None, "the creator survived its signal"


def _gone(base: str) -> bool:
    return not any(os.path.exists(_path(base + s)) for s in SUFFIXES)


ATTACHER = r"""
import sys, procwire
q = procwire.Queue.attach(sys.argv[1])
print("ready", flush=True)
for line in sys.stdin:             # "check": a round trip through the queue; EOF: exit
    q.put(b"ping")
    assert q.get(timeout=30) == b"ping"
    print("ok", flush=True)
"""


class Attacher:
    """An unrelated process (not a descendant of the creator) that attaches by name."""

    def __init__(self, name: str) -> None:
        src = os.path.dirname(os.path.dirname(procwire.__file__))
        env = {**os.environ, "PYTHONPATH": src}
        self.proc = subprocess.Popen([sys.executable, "-c", ATTACHER, name], env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self._line() == "ready"

    def _line(self) -> str:
        import select
        ready, _, _ = select.select([self.proc.stdout], [], [], JOIN)
        assert ready, "the attacher did not answer"
        return self.proc.stdout.readline().strip()

    def check(self) -> None:
        self.proc.stdin.write("check\n")
        self.proc.stdin.flush()
        assert self._line() == "ok"

    def end(self, how: str) -> None:
        if how == "kill":
            self.proc.kill()
        else:
            self.proc.stdin.close()
        self.proc.wait(JOIN)
        for f in (self.proc.stdin, self.proc.stdout):
            if not f.closed:
                f.close()


def _tracker_waits_on(path: str) -> bool:
    """True once some process is blocked in flock(LOCK_EX) on the file at ``path``."""
    st = os.stat(path)
    dev = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    with open("/proc/locks") as f:
        for line in f:
            fields = line.split()
            if len(fields) > 5 and fields[1] == "->" and fields[2] == "FLOCK" \
                    and fields[4] == "WRITE" and fields[6] == dev:
                return True
    return False


@pytest.fixture
def new_base():
    """``new_base(label)``: a fresh base name, whose names are removed at the end if the
    test failed halfway."""
    made: list[str] = []

    def make(label: str) -> str:
        made.append(_unique(label))
        return made[-1]
    yield make
    for base in made:
        for s in (*SUFFIXES, ""):
            try:
                os.unlink(_path(base + s))
            except FileNotFoundError:
                pass


# ----------------------------------------------------------------------- tests

@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL],
                         ids=["SIGTERM", "SIGINT", "SIGKILL"])
def test_a_killed_creators_unused_names_are_removed(ctx, sig, new_base):
    base = new_base("unused")
    p, conn, tracker = _start_creator(ctx, base)
    assert tracker is not None, "the creator started no tracker"
    _kill(p, sig)
    conn.close()
    _wait_until(lambda: _gone(base), f"every name of a creator killed by {sig.name} to go")


@pytest.mark.parametrize("user_ends", ["exit", "kill"])
def test_a_name_stays_while_an_unrelated_process_uses_it(ctx, user_ends, new_base):
    base = new_base("used")
    p, conn, _ = _start_creator(ctx, base)
    user = Attacher(base + "-q")
    try:
        _kill(p, signal.SIGKILL)
        conn.close()
        # The tracker has seen the death, found a user, and waits for it:
        _wait_until(lambda: _tracker_waits_on(_path(base + "-q")),
                    "the tracker to wait on the used segment")
        # The objects nobody used are gone already; the used one is not.
        for s in ("-lock", "-value", "-event"):
            _wait_until(lambda s=s: not os.path.exists(_path(base + s)), f"{s} to go")
        assert os.path.exists(_path(base + "-q"))
        user.check()                                  # it still works for its user...
        again = procwire.Queue.attach(base + "-q")    # ...and can still be attached by name
        again.close()
        assert os.path.exists(_path(base + "-q"))
    finally:
        user.end(user_ends)
    _wait_until(lambda: not os.path.exists(_path(base + "-q")),
                f"the name to go once its last user "
                f"{'exited' if user_ends == 'exit' else 'was killed'}")


def test_a_new_object_under_the_same_name_is_never_removed(ctx, new_base):
    base = new_base("renamed")
    path = _path(base + "-q")
    p, conn, _ = _start_creator(ctx, base)
    user = Attacher(base + "-q")
    try:
        _kill(p, signal.SIGKILL)
        conn.close()
        _wait_until(lambda: _tracker_waits_on(path), "the tracker to wait on the used segment")
        old_ino = os.stat(path).st_ino
        objects.remove(base + "-q")          # `procwire rm`: the name is free again
        fresh = procwire.Queue(name=base + "-q")      # a new object, a new inode
        assert os.stat(path).st_ino != old_ino
    finally:
        user.end("exit")
    try:
        # The tracker's wait ends with the old segment's last user...
        _wait_until(lambda: not any(_tracker_waits_on_ino(old_ino)),
                    "the tracker to stop waiting on the old segment")
        # ...and it leaves the new object's name alone.
        assert os.path.exists(path)
        fresh.put(b"still here")
        assert procwire.Queue.attach(base + "-q").get(timeout=JOIN) == b"still here"
    finally:
        fresh.close()
    assert not os.path.exists(path)


def _tracker_waits_on_ino(ino: int):
    with open("/proc/locks") as f:
        for line in f:
            fields = line.split()
            if len(fields) > 6 and fields[1] == "->" and fields[6].endswith(f":{ino}"):
                yield True


def _creator_with_child(base: str, conn) -> None:
    """A creator that forks a grandchild sharing the object, then waits to be killed."""
    _own_tracker()
    q = procwire.Queue(name=base + "-q")
    _KEEP.append(q)
    r, _w = os.pipe()  # the write end stays open here: the read never returns
    pid = os.fork()
    if pid == 0:  # the grandchild: holds the inherited queue until it is killed
        q.put(b"grandchild alive")
        os.read(r, 1)  # never returns: this process holds the write end too
        os._exit(0)
    conn.send(pid)
    conn.recv()


def test_a_forked_grandchild_keeps_the_inherited_object_alive(new_base):
    base = new_base("grandchild")
    p, ours, grandchild = _start(FORK, _creator_with_child, base)
    path = _path(base + "-q")
    q = procwire.Queue.attach(base + "-q")
    try:
        assert q.get(timeout=JOIN) == b"grandchild alive"
        q.close()
        _kill(p, signal.SIGKILL)
        ours.close()
        # The grandchild shares the creator's open file (and so its flock).
        _wait_until(lambda: _tracker_waits_on(path), "the tracker to wait for the grandchild")
        assert os.path.exists(path)
    finally:
        os.kill(grandchild, signal.SIGKILL)  # reparented away from us: pidfd-free wait below
    _wait_until(lambda: not os.path.exists(path), "the name to go with the grandchild")


def _create_kill_tracker_create(base: str, conn) -> None:
    _own_tracker()
    from procwire import _tracker
    _KEEP.append(procwire.Queue(name=base + "-q"))
    first = _tracker.tracker_pid()
    os.kill(first, signal.SIGKILL)
    os.waitpid(first, 0)
    _KEEP.append(procwire.Lock(name=base + "-lock"))   # finds the tracker dead: starts one
    conn.send((first, _tracker.tracker_pid()))
    conn.recv()


def test_a_killed_tracker_is_replaced_at_the_next_create_with_every_name(new_base):
    base = new_base("tracker")
    p, ours, (first, second) = _start(FORK, _create_kill_tracker_create, base)
    assert second not in (None, first)
    _kill(p, signal.SIGKILL)
    ours.close()
    # The new tracker knows the name made before the old one was killed too.
    _wait_until(lambda: not os.path.exists(_path(base + "-q"))
                and not os.path.exists(_path(base + "-lock")), "both names to go")


def test_with_the_tracker_off_names_stay_for_procwire_clean(tmp_path, monkeypatch):
    # A private directory: other test sessions on this machine run `procwire
    # clean` on /dev/shm, which would take these names before we look. Fork
    # only, so that the child sees the patched module.
    shm = tmp_path / "shm"
    shm.mkdir(mode=0o700)
    monkeypatch.setattr(_segment, "SHM_DIR", str(shm))
    monkeypatch.setattr(objects, "SHM_DIR", str(shm))
    base = _unique("off")
    p, conn, tracker = _start_creator(FORK, base, tracker="0")
    assert tracker is None
    _kill(p, signal.SIGKILL)
    conn.close()
    # Nothing was going to remove them: they are there, and `clean` takes them.
    entries = objects.scan()
    assert sorted(e.name for e in entries) == sorted(base + s for s in SUFFIXES)
    candidates = objects.clean_candidates(entries)
    assert len(candidates) == len(SUFFIXES)
    for e in candidates:
        assert objects.remove_unused(e)
    assert os.listdir(shm) == []


def test_attach_after_the_tracker_removed_the_name_raises_file_not_found(ctx, new_base):
    base = new_base("late")
    p, conn, _ = _start_creator(ctx, base)
    _kill(p, signal.SIGKILL)
    conn.close()
    _wait_until(lambda: _gone(base), "the names to go")
    with pytest.raises(FileNotFoundError, match="no procwire object is named"):
        procwire.Queue.attach(base + "-q")


def test_every_user_holds_a_shared_flock_and_nothing_else(new_base):
    """The mark the tracker relies on: creators and attachers hold LOCK_SH; closing drops it."""
    import fcntl
    name = new_base("flock")
    q = procwire.Queue(name=name)
    fd = os.open(_path(name), os.O_RDONLY)
    try:
        with pytest.raises(BlockingIOError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)   # shared with other users
        fcntl.flock(fd, fcntl.LOCK_UN)
        other = procwire.Queue.attach(name)
        q.close()          # the creator's lock goes, the attacher's stays
        with pytest.raises(BlockingIOError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        other.close()
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)   # nobody left
    finally:
        os.close(fd)


def _parent_and_forked_creator(base: str, conn) -> None:
    """Create a name, fork a child that creates another through the same tracker."""
    _own_tracker()
    from procwire import _tracker
    _KEEP.append(procwire.Queue(name=base + "-q"))
    r, w = os.pipe()
    block_r, _block_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        _KEEP.append(procwire.Lock(name=base + "-lock"))
        os.write(w, b"x")
        os.read(block_r, 1)  # never returns (this process holds the write end): killed
        os._exit(0)
    assert os.read(r, 1) == b"x"
    conn.send((pid, _tracker.tracker_pid()))
    conn.recv()


def _process_gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_a_forked_creator_shares_the_tracker_and_is_cleaned_up_alone(new_base):
    """The tracker follows each creator, not the program: a killed forked child's name
    goes while its parent (the tracker's starter) lives on with its own."""
    base = new_base("shared")
    p, ours, (child, tracker) = _start(FORK, _parent_and_forked_creator, base)
    try:
        os.kill(child, signal.SIGKILL)
        _wait_until(lambda: not os.path.exists(_path(base + "-lock")),
                    "the killed child's name to go")
        assert os.path.exists(_path(base + "-q"))  # its parent still runs
        assert not _process_gone(tracker)          # one tracker, still serving the parent
    finally:
        _kill(p, signal.SIGKILL)
        ours.close()
    _wait_until(lambda: not os.path.exists(_path(base + "-q")), "the parent's name to go")
    # Nothing left to watch and nobody to serve: the tracker ends.
    _wait_until(lambda: _process_gone(tracker), "the tracker to exit")


def _orderly_creator(base: str, conn) -> None:
    _own_tracker()
    from procwire import _tracker
    q = procwire.Queue(name=base + "-q")
    conn.send(_tracker.tracker_pid())
    q.close()
    conn.send(os.path.exists(_path(base + "-q")))


def test_an_orderly_creator_removes_its_own_name_and_its_tracker_ends(ctx, new_base):
    base = new_base("orderly")
    p, ours, tracker = _start(ctx, _orderly_creator, base)
    assert ours.poll(JOIN)
    assert ours.recv() is False   # close() removed it, as before
    p.join(JOIN)
    assert p.exitcode == 0
    ours.close()
    _wait_until(lambda: _process_gone(tracker), "the tracker to exit with its program")
