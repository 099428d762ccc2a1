"""Removing the names of killed creators: a small tracker process per program.

A named segment's name is removed in order by the object that created it
(``close()``, garbage collection, normal exit). A creator killed by a signal
(SIGKILL, or SIGTERM/SIGINT whose default action or ``os._exit`` skips the
finalizers) cannot do it, so each program that creates named objects starts,
on its first named create, one tracker process that does it instead:

* **Users are counted by the kernel.** Every process that has a named segment
  open holds a shared ``flock`` on its descriptor (taken by ``_segment`` at
  create and attach; inherited across fork, released by the kernel when the
  last descriptor goes, at death included). Nothing is added to put/get/send.
* **The tracker learns each name at creation**, before the name is linked into
  place: its path, the temporary path, the file's (device, inode) and a pidfd
  of the creating process, over a SOCK_SEQPACKET socket (``SCM_RIGHTS``). An
  orderly removal unregisters it again.
* **When a creator dies** (its pidfd becomes readable; no polling), for each
  name it still owns the tracker opens the file, checks that the path still
  names the same inode (a name removed and created again by someone else is
  never touched), and tries ``LOCK_EX|LOCK_NB``: if no process holds the
  segment, it unlinks the name at once; otherwise a thread blocks in
  ``flock(LOCK_EX)`` and unlinks when the last user closes it or dies (the
  inode is checked again first). A process attaching at that moment takes its
  ``LOCK_SH`` after the unlink, sees that the path no longer names the file it
  opened, and retries or raises ``FileNotFoundError``, as if it came later.
* Forked children use their parent's tracker (each registration carries the
  sender's own pidfd); spawn and forkserver children start their own when
  they first create a name. The tracker ignores SIGINT, SIGTERM and SIGHUP and
  runs in its own session, so the signal that kills the program does not kill
  it; it exits once every process holding its socket is gone and every name it
  watches is resolved.

Bound: a killed creator's names go as soon as the tracker has run after the
death and the last user has closed the segment (milliseconds on an idle
machine). If the tracker itself is SIGKILLed, the names it watched stay until
the creating process's next named create (which starts a new tracker and
registers its live names again) or ``procwire clean``.

``PROCWIRE_TRACKER=0`` in the environment turns the tracker off (names of
killed creators then stay until ``procwire clean``).

This file runs as the tracker with ``python -I -S _tracker.py FD``: it imports
only the standard library, so the tracker starts fast and does not depend on
procwire being importable.
"""
from __future__ import annotations

import array
import fcntl
import os
import select
import signal
import socket
import subprocess
import sys
import threading

_MSG_MAX = 8192


def _encode(*fields: object) -> bytes:
    return b"\0".join(os.fsencode(f) if isinstance(f, str) else str(f).encode() for f in fields)


# ============================================================== the client

_lock = threading.Lock()
_sock: socket.socket | None = None
_proc: subprocess.Popen[bytes] | None = None
_pidfd: int = -1
_names: dict[tuple[int, int], tuple[str, str]] = {}   # this process's registered names


def enabled() -> bool:
    return os.environ.get("PROCWIRE_TRACKER", "1") != "0" and hasattr(os, "pidfd_open")


def _after_fork_in_child() -> None:
    # The socket is shared with the parent (its tracker serves us too); the
    # pidfd names the parent, and the names are the parent's to unregister.
    global _lock, _pidfd, _names, _proc
    _lock = threading.Lock()
    if _pidfd >= 0:
        os.close(_pidfd)
    _pidfd = -1
    _names = {}
    _proc = None  # the parent's child, not ours to reap


os.register_at_fork(after_in_child=_after_fork_in_child)


def _start() -> socket.socket:
    """Start a tracker; return our end of its socket."""
    global _sock, _proc
    if _proc is not None:
        _proc.poll()  # reap a tracker that died
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        cmd = [sys.executable, "-I", "-S", os.path.abspath(__file__), str(theirs.fileno())]
        # No stdout/stderr of the program: a parent reading the program's output
        # to EOF must not wait for a tracker that outlives it (waiting for users).
        _proc = subprocess.Popen(cmd, pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                 start_new_session=True, close_fds=True)
    except BaseException:
        ours.close()
        raise
    finally:
        theirs.close()
    ours.set_inheritable(False)
    old, _sock = _sock, ours
    if old is not None:
        old.close()
    return ours


def _send(sock: socket.socket, msg: bytes, fds: list[int]) -> None:
    anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
    sock.sendmsg([msg], anc)


def _own_pidfd() -> int:
    global _pidfd
    if _pidfd < 0:
        _pidfd = os.pidfd_open(os.getpid())
        os.set_inheritable(_pidfd, False)
    return _pidfd


def register(path: str, temp: str, dev: int, ino: int) -> None:
    """Have a tracker remove ``path`` (and ``temp``) if this process dies owning them.

    Never raises for the tracker's sake: without one, names of a killed
    creator stay until ``procwire clean``, as they always did.
    """
    if not enabled():
        return
    with _lock:
        _names[(dev, ino)] = (path, temp)
        try:
            pidfd = _own_pidfd()
            msg = _encode("R", path, temp, dev, ino)
            sock = _sock
            if sock is not None:
                try:
                    _send(sock, msg, [pidfd])
                    return
                except OSError:
                    pass  # the tracker is gone (killed): start another
            sock = _start()
            for (d, i), (p, t) in _names.items():  # ours, this one included
                _send(sock, _encode("R", p, t, d, i), [pidfd])
        except OSError as exc:
            _warn(f"procwire: could not start the cleanup tracker ({exc}); names of this "
                  f"process stay in place if it is killed, until `procwire clean`")


def ensure_running() -> None:
    """Start this process's tracker now rather than at the first named create."""
    if not enabled():
        return
    with _lock:
        if _sock is None:
            _start()
        _own_pidfd()


def unregister(dev: int, ino: int) -> None:
    """This process removed (or never linked) the name itself."""
    with _lock:
        if _names.pop((dev, ino), None) is None or _sock is None:
            return
        try:
            _send(_sock, _encode("U", dev, ino), [])
        except OSError:
            pass


def tracker_pid() -> int | None:
    """The pid of the tracker this process started, if any (for tests and tools).

    None in a forked child that uses its parent's tracker.
    """
    return _proc.pid if _proc is not None else None


def _warn(text: str) -> None:
    import warnings
    warnings.warn(text, RuntimeWarning, stacklevel=3)


# ============================================================= the tracker

class _Watched:
    __slots__ = ("dev", "ino", "path", "pidfd", "temp")

    def __init__(self, path: str, temp: str, dev: int, ino: int, pidfd: int) -> None:
        self.path, self.temp, self.dev, self.ino, self.pidfd = path, temp, dev, ino, pidfd


def _names_same_file(path: str, dev: int, ino: int) -> bool:
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


def _unlink_if_same(path: str, dev: int, ino: int) -> None:
    if _names_same_file(path, dev, ino):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


class _Tracker:
    def __init__(self, fd: int) -> None:
        self.sock = socket.socket(fileno=fd)
        self.poll = select.epoll()
        self.poll.register(self.sock.fileno(), select.EPOLLIN)
        self.by_pidfd: dict[int, _Watched] = {}
        self.by_key: dict[tuple[int, int], _Watched] = {}
        self.waiting = 0                      # threads waiting for users to close
        self.wake_r, self.wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self.poll.register(self.wake_r, select.EPOLLIN)
        self.connected = True
        self.mutex = threading.Lock()

    def run(self) -> None:
        while self.connected or self.by_pidfd or self.waiting:
            for fd, _ in self.poll.poll():
                if fd == self.sock.fileno():
                    self._receive()
                elif fd == self.wake_r:
                    try:
                        os.read(self.wake_r, 4096)
                    except BlockingIOError:
                        pass
                elif fd in self.by_pidfd:
                    self._creator_died(self.by_pidfd[fd])

    def _receive(self) -> None:
        try:
            msg, anc, _, _ = self.sock.recvmsg(_MSG_MAX, socket.CMSG_SPACE(16 * 4))
        except OSError:
            msg, anc = b"", []
        fds: list[int] = []
        for level, kind, data in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                a = array.array("i")
                a.frombytes(data[:len(data) - len(data) % a.itemsize])
                fds.extend(a)
        if not msg:
            for fd in fds:
                os.close(fd)
            self.poll.unregister(self.sock.fileno())
            self.sock.close()
            self.connected = False
            return
        fields = msg.split(b"\0")
        try:
            if fields[0] == b"R" and len(fields) == 5 and len(fds) == 1:
                path, temp = os.fsdecode(fields[1]), os.fsdecode(fields[2])
                w = _Watched(path, temp, int(fields[3]), int(fields[4]), fds.pop())
                self._forget((w.dev, w.ino))
                self.by_key[(w.dev, w.ino)] = w
                self.by_pidfd[w.pidfd] = w
                self.poll.register(w.pidfd, select.EPOLLIN)
            elif fields[0] == b"U" and len(fields) == 3:
                self._forget((int(fields[1]), int(fields[2])))
        except ValueError:
            pass  # malformed: our own client never sends one
        for fd in fds:
            os.close(fd)

    def _forget(self, key: tuple[int, int]) -> _Watched | None:
        w = self.by_key.pop(key, None)
        if w is not None:
            del self.by_pidfd[w.pidfd]
            self.poll.unregister(w.pidfd)
            os.close(w.pidfd)
        return w

    def _creator_died(self, w: _Watched) -> None:
        self._forget((w.dev, w.ino))
        # Died before linking the name into place: only its temporary file.
        _unlink_if_same(w.temp, w.dev, w.ino)
        try:
            fd = os.open(w.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError:
            return  # removed already
        try:
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) != (w.dev, w.ino):
                os.close(fd)  # the name now belongs to another object
                return
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.waiting += 1
            threading.Thread(target=self._wait_for_users, args=(w, fd), daemon=True).start()
            return
        except OSError:
            os.close(fd)
            return
        _unlink_if_same(w.path, w.dev, w.ino)
        os.close(fd)

    def _wait_for_users(self, w: _Watched, fd: int) -> None:
        """Some process still uses the segment: remove its name once the last one closes it."""
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX)
                    break
                except InterruptedError:
                    continue
            _unlink_if_same(w.path, w.dev, w.ino)
        except OSError:
            pass
        finally:
            os.close(fd)
            with self.mutex:
                self.waiting -= 1
            try:
                os.write(self.wake_w, b"x")
            except OSError:
                pass


def main(fd: int) -> None:
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    try:  # one pidfd per watched name
        import resource
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ImportError, ValueError, OSError):
        pass
    _Tracker(fd).run()


if __name__ == "__main__":
    main(int(sys.argv[1]))
