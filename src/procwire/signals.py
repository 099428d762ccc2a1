"""Signals and child processes, by name, with errors that say what to do.

The lesson (信号) in one breath: a signal is an *asynchronous* message from the
kernel or another process. Each one has a name, a meaning and a default action
(terminate, dump core, stop, continue or ignore), and a process may keep that
default (``SIG_DFL``), ignore the signal (``SIG_IGN``) or catch it with its own
handler -- except SIGKILL and SIGSTOP, which the kernel keeps for itself.

This module is a thin layer over :mod:`signal` and :mod:`os`. It adds what the
standard library leaves to the reader:

* :func:`table` -- every signal of this system, with its default action and a
  one-line meaning (``procwire signals`` prints it: ``kill -l`` that explains
  itself);
* :func:`send` -- by name or number (``"INT"``, ``"SIGINT"``, ``2``), raising
  :class:`NoSuchProcessError` or :class:`SignalPermissionError` with a message
  that says what to check;
* :func:`handle`, :func:`ignore`, :func:`default` -- change what a signal does,
  as a decorator or as a context manager that puts the previous action back;
* :func:`blocked` and :func:`wait` -- hold signals back and take them
  synchronously, with a timeout; the race-free alternative to :func:`pause`;
* :func:`alarm` and :func:`pause`, the lesson's clock and wait;
* :func:`reap` and :func:`ignore_children` -- the two cures for zombies;
  :func:`subreaper` and :func:`die_with_parent` (Linux ``prctl``) so that
  no descendant outlives its parent unnoticed.

Signal dispositions belong to the whole process but handlers run only in the
main thread, and the signal mask is per thread: call :func:`handle`,
:func:`blocked` and :func:`wait` from the main thread.
"""
from __future__ import annotations

import contextlib
import ctypes
import difflib
import enum
import errno
import functools
import os
import re
import signal
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from types import FrameType
from typing import Any, TypeVar, overload

__all__ = [
    "Action",
    "Disposition",
    "NoSuchProcessError",
    "Reaped",
    "Received",
    "SignalError",
    "SignalInfo",
    "SignalLike",
    "SignalPermissionError",
    "UncatchableSignalError",
    "UnknownSignalError",
    "alarm",
    "alive",
    "blocked",
    "default",
    "die_with_parent",
    "handle",
    "ignore",
    "ignore_children",
    "info",
    "name",
    "number",
    "pause",
    "reap",
    "send",
    "subreaper",
    "table",
    "unblocked",
    "wait",
]

#: Anything that names a signal: ``"INT"``, ``"SIGINT"``, ``"sigint"``, ``"2"``,
#: ``2``, ``signal.SIGINT`` or ``"RTMIN+3"``.
SignalLike = int | str | signal.Signals

#: A signal handler, as :func:`signal.signal` calls it.
HandlerFunc = Callable[[int, FrameType | None], Any]
_H = TypeVar("_H", bound=Callable[..., Any])

_UNCATCHABLE = frozenset({signal.SIGKILL, signal.SIGSTOP})


# --------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------


class SignalError(Exception):
    """Base class of the errors raised by :mod:`procwire.signals`."""


class UnknownSignalError(SignalError, ValueError):
    """A name or number that is not a signal on this system."""


class UncatchableSignalError(SignalError, ValueError):
    """An attempt to catch, ignore, block or wait for SIGKILL or SIGSTOP."""


class NoSuchProcessError(SignalError, ProcessLookupError):
    """The target pid does not exist (it exited and was reaped, or never was)."""

    def __init__(self, pid: int, message: str) -> None:
        super().__init__(errno.ESRCH, message)
        self.pid = pid


class SignalPermissionError(SignalError, PermissionError):
    """This process may not signal the target (it belongs to another user)."""

    def __init__(self, pid: int, message: str) -> None:
        super().__init__(errno.EPERM, message)
        self.pid = pid


def _uncatchable(signum: int, verb: str) -> UncatchableSignalError:
    if signum == signal.SIGKILL:
        why = (
            "the kernel keeps it so that any process can always be killed, "
            "whatever its code does; to clean up before exiting, catch SIGTERM "
            "(what `kill PID` sends) instead"
        )
    else:
        why = (
            "the kernel keeps it so that any process can always be stopped "
            "(SIGCONT resumes it); to react to Ctrl-Z, catch SIGTSTP instead"
        )
    return UncatchableSignalError(
        f"cannot {verb} {name(signum)}: it can never be caught, blocked or ignored, "
        f"because {why}"
    )


# --------------------------------------------------------------------------
# The signal table
# --------------------------------------------------------------------------


class Action(enum.StrEnum):
    """What the kernel does with a signal when the process keeps SIG_DFL."""

    TERMINATE = "terminate"
    CORE = "core"  # terminate and write a core dump
    STOP = "stop"
    CONTINUE = "continue"
    IGNORE = "ignore"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class SignalInfo:
    """One row of :func:`table`."""

    number: int
    name: str  # canonical, with the SIG prefix: "SIGINT", "SIGRTMIN+3"
    action: Action  # the kernel's default action
    catchable: bool  # False only for SIGKILL and SIGSTOP
    description: str
    aliases: tuple[str, ...] = ()


_T, _C, _S, _K, _I = Action.TERMINATE, Action.CORE, Action.STOP, Action.CONTINUE, Action.IGNORE

# name without "SIG" -> (default action, one-line meaning); from signal(7).
_STANDARD: dict[str, tuple[Action, str]] = {
    "HUP": (_T, "Hang-up: the controlling terminal went away; daemons read it as 'reload'"),
    "INT": (_T, "Interrupt from the keyboard (Ctrl-C); Python turns it into KeyboardInterrupt"),
    "QUIT": (_C, "Quit from the keyboard (Ctrl-\\), leaving a core dump"),
    "ILL": (_C, "Illegal CPU instruction"),
    "TRAP": (_C, "Trace or breakpoint trap, used by debuggers"),
    "ABRT": (_C, "Abort, raised by abort(), e.g. after a failed C assert()"),
    "BUS": (_C, "Bus error: bad memory access, e.g. past the end of a mapped file"),
    "FPE": (_C, "Arithmetic error, e.g. integer division by zero"),
    "KILL": (_T, "Kill at once; the kernel acts itself: cannot be caught, blocked or ignored"),
    "USR1": (_T, "User-defined signal 1: no fixed meaning, free for programs to agree on"),
    "SEGV": (_C, "Segmentation fault: invalid memory reference"),
    "USR2": (_T, "User-defined signal 2: no fixed meaning, free for programs to agree on"),
    "PIPE": (_T, "Wrote to a pipe or socket nobody reads (Python ignores it: BrokenPipeError)"),
    "ALRM": (_T, "Alarm clock: the timer set by alarm() or setitimer() ran out"),
    "TERM": (_T, "Terminate: the polite request to exit, sent by `kill PID` and by init"),
    "STKFLT": (_T, "Stack fault on a coprocessor (unused on Linux)"),
    "CHLD": (_I, "A child stopped, continued or exited; if ignored, the kernel reaps children"),
    "CONT": (_K, "Continue if stopped (fg, bg); resumes the process even when caught"),
    "STOP": (_S, "Stop the process; the kernel acts itself: cannot be caught, blocked or ignored"),
    "TSTP": (_S, "Stop request from the keyboard (Ctrl-Z)"),
    "TTIN": (_S, "A background process tried to read from its terminal"),
    "TTOU": (_S, "A background process tried to write to its terminal (with stty tostop)"),
    "URG": (_I, "Urgent (out-of-band) data arrived on a socket"),
    "XCPU": (_C, "CPU-time limit (RLIMIT_CPU) exceeded"),
    "XFSZ": (_C, "File-size limit (RLIMIT_FSIZE) exceeded (Python ignores it: OSError EFBIG)"),
    "VTALRM": (_T, "Virtual timer ran out (setitimer ITIMER_VIRTUAL: user CPU time)"),
    "PROF": (_T, "Profiling timer ran out (setitimer ITIMER_PROF)"),
    "WINCH": (_I, "The terminal window changed size"),
    "IO": (_T, "I/O is now possible on a file descriptor opened with O_ASYNC"),
    "PWR": (_T, "Power failure"),
    "SYS": (_C, "Bad system call, e.g. one forbidden by a seccomp filter"),
}

_RT_DESCRIPTION = (
    "Real-time signal: no fixed meaning; queued (never merged), delivered in order, "
    "can carry a value"
)


def _rt_name(signum: int) -> str:
    """Name a real-time signal the way ``kill -l`` does: RTMIN+k below the middle, RTMAX-k above."""
    lo, hi = signal.SIGRTMIN, signal.SIGRTMAX
    if signum == lo:
        return "SIGRTMIN"
    if signum == hi:
        return "SIGRTMAX"
    if signum - lo <= (hi - lo) // 2:
        return f"SIGRTMIN+{signum - lo}"
    return f"SIGRTMAX-{hi - signum}"


def _make_info(signum: int) -> SignalInfo:
    if signal.SIGRTMIN <= signum <= signal.SIGRTMAX:
        return SignalInfo(signum, _rt_name(signum), Action.TERMINATE, True, _RT_DESCRIPTION)
    canonical = signal.Signals(signum).name
    aliases = tuple(
        alias
        for alias, member in signal.Signals.__members__.items()
        if int(member) == signum and alias != canonical
    )
    action, description = _STANDARD.get(
        canonical[3:], (Action.TERMINATE, signal.strsignal(signum) or canonical)
    )
    return SignalInfo(
        signum, canonical, action, signum not in _UNCATCHABLE, description, aliases
    )


@functools.cache
def table() -> tuple[SignalInfo, ...]:
    """Every signal this system knows, in number order (``kill -l``, explained).

    The numbers come from :func:`signal.valid_signals`, so real-time signals
    run from SIGRTMIN to SIGRTMAX as this C library defines them (glibc keeps
    32 and 33 for its threads, so SIGRTMIN is 34).
    """
    return tuple(_make_info(int(n)) for n in sorted(signal.valid_signals()))


@functools.cache
def _by_name() -> dict[str, int]:
    """Upper-case name without SIG -> number, aliases and RTMIN+k forms included."""
    names: dict[str, int] = {}
    for row in table():
        for full in (row.name, *row.aliases):
            names[full[3:]] = row.number
    lo, hi = signal.SIGRTMIN, signal.SIGRTMAX
    for n in range(lo, hi + 1):  # every spelling: RTMIN+k and RTMAX-k
        names[f"RTMIN+{n - lo}"] = n
        names[f"RTMAX-{hi - n}"] = n
    return names


def _valid_ranges() -> str:
    nums = sorted(signal.valid_signals())
    ranges: list[str] = []
    start = prev = nums[0]
    for n in [*nums[1:], None]:
        if n is not None and n == prev + 1:
            prev = n
            continue
        ranges.append(f"{start}-{prev}" if start != prev else str(start))
        if n is not None:
            start = prev = n
    return " and ".join(ranges)


def number(sig: SignalLike) -> int:
    """The number of a signal named by name or number; raise :class:`UnknownSignalError`.

    Names are case-insensitive, with or without ``SIG``; aliases (``IOT``,
    ``CLD``, ``POLL``) and real-time forms (``RTMIN+3``, ``RTMAX-1``) work too.
    """
    if isinstance(sig, bool) or not isinstance(sig, (int, str)):
        raise TypeError(
            f"a signal is a name like 'INT' or a number like 2, not {type(sig).__name__}"
        )
    if isinstance(sig, str):
        text = sig.strip()
        if re.fullmatch(r"[+-]?[0-9]+", text):
            return number(int(text))
        key = text.upper()
        key = key[3:] if key.startswith("SIG") else key
        found = _by_name().get(key)
        if found is None:
            raise UnknownSignalError(_unknown_name_message(sig))
        return found
    signum = int(sig)
    if signum not in signal.valid_signals():
        hint = ""
        if signum == 0:
            hint = " (0 is not a signal: signals.alive(pid) tests whether a process exists)"
        elif signum < 0:
            hint = " (write kill's -9 as 9 or 'KILL')"
        raise UnknownSignalError(
            f"there is no signal {signum} on this system: valid numbers are "
            f"{_valid_ranges()}{hint}; `procwire signals` lists them"
        )
    return signum


def _unknown_name_message(sig: str) -> str:
    wanted = sig.strip().upper()
    wanted = wanted[3:] if wanted.startswith("SIG") else wanted
    close = difflib.get_close_matches(wanted, _by_name(), n=1) if wanted else []
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return (
        f"unknown signal {sig!r}{hint}: use a name like 'INT' or 'SIGINT', or a number; "
        "`procwire signals` lists them"
    )


def name(sig: SignalLike) -> str:
    """The canonical name of a signal: ``name(2) == name("int") == "SIGINT"``."""
    return info(sig).name


def info(sig: SignalLike) -> SignalInfo:
    """The :func:`table` row of one signal."""
    signum = number(sig)
    return next(row for row in table() if row.number == signum)


# --------------------------------------------------------------------------
# Sending
# --------------------------------------------------------------------------


def _check_pid(pid: int) -> None:
    if isinstance(pid, bool) or not isinstance(pid, int):
        raise TypeError(f"pid must be an int, not {type(pid).__name__}")
    if pid <= 0:
        raise ValueError(
            f"pid must be a positive process id, not {pid}: for kill(), 0 and negative "
            "numbers mean whole process groups; use os.killpg(pgid, sig) if you mean that"
        )


def _owner(pid: int) -> str:
    """Who owns `pid`, for error messages (best effort: /proc may hide it)."""
    try:
        return f"uid {os.stat(f'/proc/{pid}').st_uid}"
    except OSError:
        return "another user"


def send(pid: int, sig: SignalLike) -> None:
    """Send a signal to one process: ``os.kill`` with names and clear errors.

    Raises :class:`UnknownSignalError` for a bad signal, :class:`NoSuchProcessError`
    (a :class:`ProcessLookupError`) for a pid that does not exist and
    :class:`SignalPermissionError` (a :class:`PermissionError`) when this
    process may not signal that one. Note that a zombie still exists: sending
    to it succeeds and does nothing.
    """
    signum = number(sig)
    _check_pid(pid)
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        raise NoSuchProcessError(
            pid,
            f"cannot send {name(signum)} to pid {pid}: no such process (it has exited "
            "and been reaped, or never existed); check the pid with `ps -p PID`",
        ) from None
    except PermissionError:
        raise SignalPermissionError(
            pid,
            f"not allowed to send {name(signum)} to pid {pid} (owned by {_owner(pid)}, "
            f"you are uid {os.geteuid()}): a process may signal only processes of its "
            "own user; run as that user, or as root",
        ) from None


def alive(pid: int) -> bool:
    """Whether a process with this pid exists (zombies included): ``kill(pid, 0)``."""
    _check_pid(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists; it just is not ours
    return True


# --------------------------------------------------------------------------
# Dispositions: default, ignore, or a handler
# --------------------------------------------------------------------------


def _numbers(sigs: SignalLike | Iterable[SignalLike]) -> list[int]:
    if isinstance(sigs, (int, str)):
        return [number(sigs)]
    nums = [number(s) for s in sigs]
    if not nums:
        raise ValueError("name at least one signal")
    return list(dict.fromkeys(nums))  # de-duplicated, order kept


def _catchable(sigs: SignalLike | Iterable[SignalLike], verb: str) -> list[int]:
    nums = _numbers(sigs)
    for n in nums:
        if n in _UNCATCHABLE:
            raise _uncatchable(n, verb)
    return nums


class Disposition(contextlib.AbstractContextManager["Disposition"]):
    """Signal actions that were just installed, and the ones they replaced.

    Returned by :func:`handle`, :func:`ignore`, :func:`default` and
    :func:`ignore_children`. The new actions are already in force; use the
    object in a ``with`` block (or call :meth:`restore`) to put the previous
    actions back, or drop it to keep the new ones.
    """

    def __init__(self, previous: dict[int, Any]) -> None:
        self._previous = previous

    @property
    def signals(self) -> tuple[int, ...]:
        return tuple(self._previous)

    def restore(self) -> None:
        """Put back the actions that were in force before (idempotent)."""
        while self._previous:
            signum, old = self._previous.popitem()
            # getsignal() gives None for a handler installed outside Python;
            # the default is the only thing we can put back then.
            signal.signal(signum, signal.SIG_DFL if old is None else old)

    def __exit__(self, *exc_info: object) -> None:
        self.restore()

    def __repr__(self) -> str:
        names = ", ".join(name(n) for n in self._previous) or "restored"
        return f"<Disposition {names}>"


def _install(nums: list[int], action: Any) -> Disposition:
    previous: dict[int, Any] = {}
    try:
        for n in nums:
            previous[n] = signal.signal(n, action)
    except BaseException:
        Disposition(previous).restore()
        raise
    return Disposition(previous)


@overload
def handle(sigs: SignalLike | Iterable[SignalLike]) -> Callable[[_H], _H]: ...
@overload
def handle(sigs: SignalLike | Iterable[SignalLike], handler: HandlerFunc) -> Disposition: ...
def handle(
    sigs: SignalLike | Iterable[SignalLike], handler: HandlerFunc | None = None
) -> Disposition | Callable[[_H], _H]:
    """Catch signals with a handler ``handler(signum, frame)``.

    As a decorator it installs the function for good and returns it unchanged::

        @signals.handle("USR1")
        def on_usr1(signum, frame): ...

    Given the handler, it installs it at once and returns a :class:`Disposition`,
    so that a ``with`` block puts the previous handlers back::

        with signals.handle(["INT", "TERM"], on_stop):
            serve()

    Python runs handlers in the main thread, between two bytecodes: a handler
    may run in the middle of any line of the main program, so keep it short
    (``os.write`` rather than ``print``, which is not reentrant).
    """
    nums = _catchable(sigs, "catch")
    if handler is not None:
        if not callable(handler):
            raise TypeError(f"a signal handler must be callable, not {type(handler).__name__}")
        return _install(nums, handler)

    def decorator(func: _H) -> _H:
        _install(nums, func)
        return func

    return decorator


def ignore(*sigs: SignalLike) -> Disposition:
    """Ignore signals (``SIG_IGN``): the kernel discards them, even pending ones.

    ``with signals.ignore("INT"): ...`` ignores them only inside the block.
    Ignored signals stay ignored across ``exec``; handlers do not survive it.
    """
    return _install(_catchable(sigs, "ignore"), signal.SIG_IGN)


def default(*sigs: SignalLike) -> Disposition:
    """Give signals back their default action (``SIG_DFL``, see :func:`table`)."""
    return _install(_catchable(sigs, "change the action of"), signal.SIG_DFL)


# --------------------------------------------------------------------------
# Blocking and waiting synchronously
# --------------------------------------------------------------------------


@contextlib.contextmanager
def blocked(*sigs: SignalLike) -> Iterator[None]:
    """Hold signals back (they stay pending) inside the block; restore the mask after.

    A blocked signal is not lost: it waits in the kernel, and is delivered
    to whatever action is in force when it is unblocked (two of the same
    standard signal merge into one). Across ``fork`` the child inherits the
    mask, which is how a parent and child can install their actions with no
    moment where a keystroke could kill either. The mask is per thread.
    """
    nums = _catchable(sigs, "block")
    old = signal.pthread_sigmask(signal.SIG_BLOCK, nums)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


@contextlib.contextmanager
def unblocked(*sigs: SignalLike) -> Iterator[None]:
    """Let blocked signals through inside the block (pending ones arrive at once)."""
    nums = _numbers(sigs)
    old = signal.pthread_sigmask(signal.SIG_UNBLOCK, nums)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


@dataclass(frozen=True)
class Received:
    """A signal taken by :func:`wait`, with what the kernel says about its sender."""

    signal: int
    pid: int  # sender's pid; 0 when the kernel sent it (keyboard, timer)
    uid: int  # sender's real uid
    code: int  # si_code: 0 (SI_USER) for kill(), 128 (SI_KERNEL) for the terminal

    @property
    def name(self) -> str:
        return name(self.signal)

    def __str__(self) -> str:
        sender = f"pid {self.pid}" if self.pid else "the kernel"
        return f"{self.name} from {sender}"


@overload
def wait(*sigs: SignalLike, timeout: None = None) -> Received: ...
@overload
def wait(*sigs: SignalLike, timeout: float) -> Received | None: ...
def wait(*sigs: SignalLike, timeout: float | None = None) -> Received | None:
    """Wait until one of `sigs` arrives and take it, instead of running its action.

    Returns the signal that came, or ``None`` after `timeout` seconds
    (``None``: wait for ever). The signals are blocked while waiting
    (``sigtimedwait``), so the one that arrives is taken here and not given
    to its handler or default action; Ctrl-C (SIGINT) still interrupts the
    wait unless it is one of `sigs`.

    A signal that arrives *before* the call goes to its action as usual. To
    miss none, block the signals first and wait inside the block::

        with signals.blocked("USR1"):
            start_the_child()
            signals.wait("USR1", timeout=5)

    Unlike :func:`pause`, this has no window in which the signal can slip by.
    """
    nums = _catchable(sigs, "wait for")
    if not nums:
        raise ValueError("name at least one signal to wait for")
    if timeout is not None and timeout < 0:
        raise ValueError(f"timeout must be >= 0 or None, not {timeout}")
    got: signal.struct_siginfo | None
    old = signal.pthread_sigmask(signal.SIG_BLOCK, nums)
    try:
        if timeout is None:  # for ever; EINTR (a handled signal) is retried by Python
            got = signal.sigwaitinfo(nums)
        else:
            got = signal.sigtimedwait(nums, timeout)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
    if got is None:
        return None
    return Received(got.si_signo, got.si_pid, got.si_uid, got.si_code)


# --------------------------------------------------------------------------
# The lesson's clock and wait
# --------------------------------------------------------------------------


def alarm(seconds: float, interval: float = 0.0) -> float:
    """Have the kernel send SIGALRM to this process after `seconds`; 0 cancels.

    Like :func:`signal.alarm`, but fractions of a second work, and with an
    `interval` the alarm rings again every `interval` seconds until
    cancelled. As the lesson says, a process has one alarm clock: a later
    call replaces the earlier alarm, and the return value is what was left
    of it (0.0 if none). SIGALRM terminates the process unless it is caught.
    """
    if seconds < 0 or interval < 0:
        raise ValueError(f"seconds and interval must be >= 0, not {seconds}, {interval}")
    left, _interval = signal.setitimer(signal.ITIMER_REAL, seconds, interval)
    return left


def pause() -> None:
    """Sleep until a signal arrives and its handler has run (``signal.pause``).

    It returns only for a signal that is *caught*: an ignored one does not
    wake it, a default one may end the process. Beware the window just
    before the call: Python runs a handler between two bytecodes, so a signal
    that arrives as ``pause()`` is starting is handled only after the *next*
    signal wakes it. Use :func:`wait` with :func:`blocked` where that
    matters, or an alarm that repeats (``alarm(t, interval=t)``).
    """
    signal.pause()


# --------------------------------------------------------------------------
# Children: reaping, and the lesson's signal(SIGCHLD, SIG_IGN)
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Reaped:
    """A child collected by :func:`reap`."""

    pid: int
    status: int  # the raw wait status

    @property
    def exitcode(self) -> int:
        """The exit code, or ``-N`` if signal N killed it (as ``Process.exitcode``)."""
        return os.waitstatus_to_exitcode(self.status)

    def __str__(self) -> str:
        code = self.exitcode
        if code < 0:
            return f"pid {self.pid} was killed by {name(-code)}"
        return f"pid {self.pid} exited with code {code}"


def reap(pid: int = -1) -> list[Reaped]:
    """Collect children that have already ended, without waiting; return them.

    A child that has exited stays a zombie (state ``Z``) until its parent
    collects its exit status; this collects every such child (or just `pid`)
    and returns at once. It also collects children that a
    ``multiprocessing.Process`` or ``subprocess.Popen`` would have waited
    for, leaving those objects without an exit code: use it in code that
    owns its children.
    """
    reaped: list[Reaped] = []
    while True:
        try:
            got, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:  # no children (left) to wait for
            break
        if got == 0:  # children remain, but none has ended
            break
        reaped.append(Reaped(got, status))
        if pid > 0:
            break
    return reaped


def ignore_children() -> Disposition:
    """The lesson's zombie cure: ``signal(SIGCHLD, SIG_IGN)``.

    With SIGCHLD ignored, the kernel reaps children as they exit, so none
    becomes a zombie -- and none can be waited for: ``os.waitpid`` blocks
    until all children have ended and then raises ChildProcessError, and
    ``subprocess``/``multiprocessing`` lose their exit codes. Use it in a
    ``with`` block, or in a process that starts only fire-and-forget children.
    """
    return _install([signal.SIGCHLD], signal.SIG_IGN)


_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
_PR_GET_CHILD_SUBREAPER = 37


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _prctl(option: int, arg: Any) -> None:
    if _libc().prctl(option, arg, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl({option}): {os.strerror(err)}")


def die_with_parent(sig: SignalLike = "TERM", *, parent: int | None = None) -> None:
    """Ask the kernel to send `sig` to this process when its parent dies.

    (Linux ``prctl(PR_SET_PDEATHSIG)``.) Call it in a child right after
    ``fork``, passing the parent's pid as `parent` so that a parent that died
    before the call is noticed too. Without it, a child whose parent was
    killed lives on as an orphan.
    """
    signum = number(sig)
    _prctl(_PR_SET_PDEATHSIG, signum)
    if parent is not None and os.getppid() != parent:
        os.kill(os.getpid(), signum)


@contextlib.contextmanager
def subreaper() -> Iterator[None]:
    """Inside the block, orphaned descendants are re-parented to this process.

    (Linux ``prctl(PR_SET_CHILD_SUBREAPER)``.) Normally an orphan is adopted
    by init (pid 1); a subreaper -- systemd, a container's init, a test
    harness -- adopts the orphans of its own descendants instead, and so can
    wait for them.
    """
    was = ctypes.c_int(0)
    _prctl(_PR_GET_CHILD_SUBREAPER, ctypes.byref(was))
    _prctl(_PR_SET_CHILD_SUBREAPER, 1)
    try:
        yield
    finally:
        _prctl(_PR_SET_CHILD_SUBREAPER, was.value)
