"""Every demo but the bus, run through the real ``procwire`` command.

Each demo must exit 0 within a few seconds, print its key lines *in the
order of events*, and leave nothing behind: while it runs, this process is
a child subreaper, so any process the demo abandons is re-parented here and
caught; temporary files are checked by name.
"""
from __future__ import annotations

import ast
import glob
import inspect
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import procwire

import pytest

from procwire import signals
from procwire.lessons import LESSONS, find

pytestmark = pytest.mark.timeout(120)

# Children import the same procwire this test does: the installed package
# (CI), or the source tree with its in-place build (development).
SRC = str(Path(procwire.__file__).resolve().parents[1])
CLI = [sys.executable, "-c", "from procwire.cli import main; main()"]
A_FEW_SECONDS = 10.0


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (SRC, env.get("PYTHONPATH")) if p)
    env["PYTHONIOENCODING"] = "utf-8"
    return env


def _children() -> set[int]:
    pids: set[int] = set()
    for task in os.listdir("/proc/self/task"):
        try:
            children = Path(f"/proc/self/task/{task}/children").read_text()
            pids.update(int(p) for p in children.split())
        except FileNotFoundError:
            pass
    return pids


def _collect_adopted(before: set[int]) -> list[int]:
    """End and reap every process re-parented to us; return their pids.

    Once the command has exited, any descendant still here -- running, or a
    zombie nobody reaped -- is one the demo left behind.
    """
    adopted = sorted(_children() - before)
    for pid in adopted:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        os.waitpid(pid, 0)
    return adopted


def procwire(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run the procwire command; fail if it leaves a process behind."""
    before = _children()
    with signals.subreaper():
        try:
            result = subprocess.run([*CLI, *args], capture_output=True, text=True, env=_env(),
                                    timeout=timeout, stdin=subprocess.DEVNULL)
        finally:
            left_behind = _collect_adopted(before)
    assert not left_behind, f"procwire {' '.join(args)} left processes behind: {left_behind}"
    return result


def assert_took(match: re.Match[str], at_least: float, group: int = 1) -> None:
    """A printed duration: never shorter than asked, and not much longer (a loaded CI
    machine may add a little, so the bound is generous)."""
    seconds = float(match.group(group))
    assert at_least <= seconds < at_least + 1.0, match.string


def assert_in_order(output: str, *patterns: str) -> list[re.Match[str]]:
    """Each regex matches a later line than the one before; return the matches."""
    lines = output.splitlines()
    matches, at = [], 0
    for pattern in patterns:
        for i in range(at, len(lines)):
            if m := re.search(pattern, lines[i]):
                matches.append(m)
                at = i + 1
                break
        else:
            raise AssertionError(f"{pattern!r} not found after line {at}:\n{output}")
    return matches


def run_demo(name: str) -> str:
    tmp_before = set(glob.glob(os.path.join(tempfile.gettempdir(), "procwire-*")))
    start = time.monotonic()
    result = procwire("demo", name)
    elapsed = time.monotonic() - start
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr == "", result.stderr
    assert elapsed < A_FEW_SECONDS, f"demo {name} took {elapsed:.1f}s"
    tmp_after = set(glob.glob(os.path.join(tempfile.gettempdir(), "procwire-*")))
    assert tmp_after <= tmp_before, f"demo {name} left {tmp_after - tmp_before}"
    return result.stdout


# --------------------------------------------------------------------------
# one test per demo
# --------------------------------------------------------------------------


def test_process() -> None:
    out = run_demo("process")
    m = assert_in_order(
        out,
        r"me: pid (\d+), parent",
        r"state R = running",
        r"child: pid (\d+), parent \(ppid\) (\d+)",
        r"state S = sleeping",
        r"its ppid is my pid \((\d+)\)",
        r"exited with code 0; /proc/(\d+) is gone: True",
    )
    me, child, parent, gone = m[0].group(1), m[2].group(1), m[2].group(2), m[5].group(1)
    assert parent == me == m[4].group(1)
    assert gone == child


def test_fork() -> None:
    out = run_demo("fork")
    m = assert_in_order(
        out,
        r"before fork: one process, pid (\d+)",
        r"child : fork\(\) returned 0; my pid is (\d+), my parent is (\d+)",
        r"child : I changed my copy: fruit = \['apple', 'banana'\]",
        r"parent: fork\(\) returned (\d+)",
        r"parent: my fruit is still \['apple'\]",
        r"parent: the child exited with code 7",
    )
    assert m[1].group(2) == m[0].group(1) and m[1].group(1) == m[3].group(1)


def test_process_class() -> None:
    out = run_demo("process-class")
    assert_in_order(
        out,
        r"hello world \(1/2\)",
        r"hello world \(2/2\)",
        r"name 'greeter', pid \d+, alive after start\(\): True, after join\(\): False, exitcode 3",
        r"countdown-3: 3",
        r"countdown-3: 1",
        r"countdown-3: lift-off",
        r"name 'countdown-3', pid \d+, exitcode 0",
    )


def test_pool() -> None:
    out = run_demo("pool")
    lines = assert_in_order(
        out,
        r"started a pool of 2 workers",
        r"callback got \[25, 36\]",
        *[rf"square\({n}\) = +{n * n} +\(worker \d+\)" for n in range(8)],
        r"8 jobs, done by worker",
        r"pool closed and joined",
    )
    assert len(lines) == 12


def test_zombie() -> None:
    out = run_demo("zombie")
    m = assert_in_order(
        out,
        r"/proc/(\d+)/stat: state Z = zombie",
        r"reaped: pid (\d+) exited with code 0",
        r"/proc/(\d+): gone",
        r"SIGCHLD, SIG_IGN",
        r"waitpid\((\d+)\): no child to collect",
        r"/proc/(\d+): gone",
    )
    assert m[0].group(1) == m[1].group(1) == m[2].group(1)
    assert m[4].group(1) == m[5].group(1)


def test_orphan() -> None:
    out = run_demo("orphan")
    m = assert_in_order(
        out,
        r"demo +(\d+): I am a child subreaper",
        r"parent (\d+): I made child (\d+), and exit without waiting",
        r"demo +(\d+): parent (\d+) has exited and I reaped it",
        r"child +(\d+): my parent was (\d+); now it is (\d+)",
        r"demo +(\d+): my adopted child (\d+) has exited and I reaped it",
    )
    demo, middle, orphan = m[0].group(1), m[1].group(1), m[1].group(2)
    assert m[2].groups() == (demo, middle)
    assert m[3].groups() == (orphan, middle, demo)  # re-parented to the subreaper
    assert m[4].groups() == (demo, orphan)


def test_filetypes() -> None:
    out = run_demo("filetypes")
    m = assert_in_order(
        out,
        r"In (/\S+):",
        r"^  (b\S+|b\.\.\.) ",
        r"^  c\S+ +/dev/null +character device",
        r"^  d\S+ +folder +directory",
        r"^  -\S+ +notes\.txt +regular file",
        r"^  l\S+ +link-to-notes +symbolic link",
        r"^  s\S+ +server\.sock +socket",
        r"^  p\S+ +fifo +named pipe",
        r"read from fifo \(written by child \d+\): 'hello through the FIFO'",
        r"Removed (/\S+) and everything in it: True",
    )
    assert m[0].group(1) == m[-1].group(1)
    assert not os.path.exists(m[0].group(1))


def test_pipe() -> None:
    out = run_demo("pipe")
    assert_in_order(
        out,
        r"child +\d+ received 'hello', answers 'HELLO'",
        r"parent \d+ got back 'HELLO'",
        r"child +\d+ received 'pipe', answers 'PIPE'",
        r"parent \d+ got back 'PIPE'",
        r"Pipe\(duplex=False\)",
        r"received str +'text'",
        r"received int +42",
        r"received list +\[1, 2, 3\]",
        r"received dict +\{'to': 'parent'\}",
        r"EOFError",
    )


def test_queue() -> None:
    out = run_demo("queue")
    m = assert_in_order(
        out,
        r"new queue: empty\(\) True, qsize\(\) 0",
        r"after 3 puts: full\(\) True, qsize\(\) 3, empty\(\) False",
        r"block=False\) +-> queue\.Full after (\d+\.\d)s",
        r"timeout=0\.5\) +-> queue\.Full after (\d+\.\d)s",
        r"get\(\) x3 -> \['one', 'two', 'three'\]",
        r"now: empty\(\) True, qsize\(\) 0",
        r"get\(block=False\) +-> queue\.Empty after (\d+\.\d)s",
        r"get\(timeout=0\.5\) +-> queue\.Empty after (\d+\.\d)s",
        *[rf"got 'message {n} from \d+'" for n in range(1, 6)],
        r"the producer exited with 0",
    )
    for match, timeout in zip((m[2], m[3], m[6], m[7]), (0.0, 0.5, 0.0, 0.5), strict=True):
        assert_took(match, timeout)


def test_value_array() -> None:
    out = run_demo("value-array")
    assert_in_order(
        out,
        r"Value\('d', 1\.0\) -> 1\.0, Array\('i', \[1, 2, 3, 4\]\) -> \[1, 2, 3, 4\], "
        r"Array\('i', 3\) -> \[0, 0, 0\]",
        r"child \d+: number\.value = 1\.0 -> 3\.5",
        r"number\.value = 3\.5, numbers = \[2, 4, 6, 8\], zeros = \[7, 7, 7\]",
    )


def test_lock() -> None:
    out = run_demo("lock")
    unsafe, safe = assert_in_order(
        out,
        r"without a lock: ([\d,]+) -- ([\d,]+) updates lost",
        r"with a lock: +([\d,]+) -- ([\d,]+) updates lost",
    )
    number = lambda text: int(text.replace(",", ""))  # noqa: E731
    assert number(unsafe.group(1)) + number(unsafe.group(2)) == 200_000
    assert 0 < number(unsafe.group(1)) <= 200_000
    assert safe.groups() == ("200,000", "0")


def test_event() -> None:
    out = run_demo("event")
    m = assert_in_order(
        out,
        r"new Event: is_set\(\) False",
        r"wait\(timeout=0\.3\) returned False after (\d+\.\d)s",
        r"worker (\d+) started; it waits",
        r"worker \d+: the event is set, I start now",
        r"set\(\) woke the worker; is_set\(\) True",
        r"clear\(\): is_set\(\) False, wait\(0\) returns False",
    )
    assert_took(m[1], 0.3)


def test_signals() -> None:
    out = run_demo("signals")
    m = assert_in_order(
        out,
        r"^ +2 SIGINT +terminate",
        r"^ +9 SIGKILL +terminate",
        r"parent (\d+): sending SIGUSR1 to (\d+)",
        r"child (\d+): received SIGUSR1 from pid (\d+)",
        r"handler: caught SIGUSR1",
        r"main program: still running",
        r"alarm\(5\), then alarm\(0\.3\): the 5 s alarm is replaced \((\d\.\d)s were left\)",
        r"the handler ran: SIGALRM rang after (\d+\.\d)s, and pause\(\) returned",
        r"nothing happened: ignored",
        r"child \d+ exit code -10: killed by SIGUSR1",
        r"cannot catch SIGKILL: it can never be caught",
    )
    assert 4.0 <= float(m[6].group(1)) <= 5.0
    assert_took(m[7], 0.3)
    sender, receiver = m[2].groups()
    assert m[3].groups() == (receiver, sender)


def test_socket() -> None:
    out = run_demo("socket")
    m = assert_in_order(
        out,
        r"server (\d+) listening on (/\S+)$",
        r"its type, as ls -l shows it: s",
        r"server \d+: received '你好, server' \(over the Unix socket\)",
        r"client \d+: the server answered '你好, SERVER -- got 10 characters' "
        r"\(over the Unix socket\)",
        r"socket closed, file removed: True",
        r"server \d+ listening on (/\S+) with an authkey",
        r"its type, as ls -l shows it: s",
        r"server \d+: received '你好, server' \(over a shared-memory pipe\)",
        r"client \d+: the server answered '你好, SERVER -- got 10 characters' "
        r"\(over a shared-memory pipe\)",
        r"socket closed, file removed: True",
    )
    assert not os.path.exists(os.path.dirname(m[0].group(2)))


def test_every_lesson_but_the_bus_has_a_test_here() -> None:
    tested = {n[len("test_"):].replace("_", "-") for n in globals() if n.startswith("test_")}
    assert {lesson.name for lesson in LESSONS} - {"bus"} <= tested


# --------------------------------------------------------------------------
# the lesson modules and the demo command
# --------------------------------------------------------------------------


@pytest.mark.parametrize("lesson", LESSONS, ids=lambda lesson: lesson.name)
def test_lesson_module_is_teaching_code(lesson) -> None:
    module = lesson.load()
    assert module.__doc__ and len(module.__doc__.splitlines()) >= 5
    assert callable(module.main)
    source = inspect.getsource(module)
    marked = [line for line in source.splitlines() if "WAITING FOR" in line]
    if lesson.waiting_for:
        # exactly one marked import line, naming what it waits for
        assert len(marked) == 1 and marked[0].startswith("from multiprocessing import"), marked
        for name in lesson.waiting_for.split(", "):
            assert name in marked[0]
    else:
        assert marked == []
    ast.parse(source)


def test_demo_lists_the_lessons() -> None:
    result = procwire("demo")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    for lesson in LESSONS:
        line = next(line for line in lines if line.split()[:1] == [lesson.name])
        assert lesson.title in line
        if lesson.waiting_for:
            assert f"[waiting for {lesson.waiting_for}]" in line
        else:
            assert "waiting for" not in line
    assert "procwire demo NAME --source" in result.stdout


@pytest.mark.parametrize("name", ["bus", "pipe"])
def test_demo_source_prints_the_lesson_code(name: str) -> None:
    result = procwire("demo", name, "--source")
    assert result.returncode == 0, result.stderr
    assert result.stdout == inspect.getsource(find(name).load())  # plain when piped


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["demo", "nope"], "no lesson called 'nope'"),
        (["demo", "zombi"], "did you mean 'zombie'"),
        (["demo", "fork", "--lang", "en"], "--lang changes only the bus demo"),
        (["demo", "--source"], "need a lesson NAME"),
    ],
)
def test_demo_usage_errors(args: list[str], says: str) -> None:
    result = procwire(*args)
    assert result.returncode == 2
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert says in result.stderr
