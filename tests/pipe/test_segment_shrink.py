"""Defect 13: shrinking a segment in use must never kill its users with SIGBUS.

* Anonymous segments (memfds) are sealed: ftruncate() on one, by any process
  holding its descriptor, fails with PermissionError and changes nothing.
* A named segment's file can be truncated by any process of its user; the
  processes using it survive, the segment is reported lost, and attaching to
  it raises a SegmentError that says what happened.

Each scenario runs in a fresh interpreter: on a regression SIGBUS kills that
interpreter, and the test reports it, instead of killing the test session.
"""
from __future__ import annotations

import json
import signal

import pytest
from _tmpfs import run_python, tiny_tmpfs

pytestmark = pytest.mark.timeout(120)


def _check(done) -> dict:
    assert done.returncode == 0, (
        f"the process died (exit {done.returncode}"
        f"{', SIGBUS' if done.returncode == -signal.SIGBUS else ''}): {done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


ANONYMOUS = r"""
import errno, json, os, sys
import multiprocessing as mp
import procwire

def shrink(fds, out):
    res = []
    for fd in fds:
        try:
            os.ftruncate(fd, 0)
            res.append("shrunk")
        except OSError as exc:
            res.append(exc.errno)
        try:
            os.ftruncate(fd, os.fstat(fd).st_size * 2)
            res.append("grown")
        except OSError as exc:
            res.append(exc.errno)
    out.send(res)

a, b = procwire.Pipe()
q = procwire.Queue()
v = procwire.Value("i", 41)
lock = procwire.Lock()
segs = [a._segment, q._segment, v._segment if hasattr(v, "_segment") else None, lock._segment]
fds = [s.fd for s in segs if s is not None]
r, w = mp.Pipe(duplex=False)
p = mp.get_context("fork").Process(target=shrink, args=(fds, w))
p.start()
res = r.recv()
p.join(30)
# Everything still works, in full.
a.send_bytes(b"x" * 300000)
big = b.recv_bytes()
q.put("q"); got = q.get(timeout=10)
with v.get_lock():
    v.value += 1
lock.acquire(); lock.release()
print(json.dumps({"child": res, "exit": p.exitcode, "big": len(big), "q": got,
                  "v": v.value, "sizes": [os.fstat(fd).st_size for fd in fds]}))
"""


def test_anonymous_segments_are_sealed_against_resizing():
    with tiny_tmpfs("1m") as shm:  # only to keep stray files out of /dev/shm
        out = _check(run_python(ANONYMOUS, shm))
    assert out["exit"] == 0
    # EPERM every time, but for growing the Queue's memfd (index 3): a queue's
    # spill area lies beyond its mapping, so its file may grow, harmlessly.
    child = out["child"]
    assert child and child[3] == "grown" and all(
        r == 1 for i, r in enumerate(child) if i != 3), out
    assert out["big"] == 300000 and out["q"] == "q" and out["v"] == 42


NAMED = r"""
import json, os
import multiprocessing as mp
import procwire
from procwire import _segment
from procwire.errors import SegmentError

def attach(kind, name, out):
    try:
        getattr(procwire, kind).attach(name) if kind != "RawArray" else None
        out.send(["attached"])
    except SegmentError as exc:
        out.send(["SegmentError", str(exc)])
    except Exception as exc:
        out.send([type(exc).__name__, str(exc)])

def touch(arr, q, out):
    # A forked user of the truncated segments survives too.
    out.send([arr[0], q.empty()])

arr = procwire.RawArray("d", 20000, name="shrink-arr")    # 160 KB: many pages
q = procwire.Queue(capacity=65536, name="shrink-q")
ev = procwire.Event(name="shrink-ev")
arr[0] = 1.5
arr[19999] = 2.5
q.put("before")
for name in ("shrink-arr", "shrink-q", "shrink-ev"):
    os.truncate(_segment.path_of(name), 0)     # what `truncate -s 0` does
# Use them: every access used to die of SIGBUS.
seen = [arr[0], arr[19999]]
arr[5] = 7.0
# The ring's internal locks were zeroed with the rest: no longer valid robust
# mutexes, so the calls that take them fail their validation (README).
try:
    q.put("after")
    got = q.get(timeout=5)
except SegmentError as exc:
    got = ["SegmentError", str(exc)]
ev.set()
r, w = mp.Pipe(duplex=False)
p = mp.get_context("fork").Process(target=touch, args=(arr, q, w))
p.start(); child = r.recv() if r.poll(30) else ["no answer"]; p.join(30)
lost = [o._segment.lost for o in (q, ev)]
results = {}
for kind, name in (("Queue", "shrink-q"), ("Event", "shrink-ev")):
    # A fork child attaching by name maps the file afresh, as any process would.
    p = mp.get_context("fork").Process(target=attach, args=(kind, name, w))
    p.start()
    results[kind] = r.recv() if r.poll(30) else ["no answer", ""]
    p.join(30)
checked = None
try:
    q._segment.check("Queue")
except SegmentError as exc:
    checked = str(exc)
sizes = [os.stat(_segment.path_of(n)).st_size for n in ("shrink-arr", "shrink-q", "shrink-ev")]
print(json.dumps({"seen": seen, "got": got, "child": child, "lost": lost, "attach": results,
                  "checked": checked, "sizes": sizes, "exit": p.exitcode}))
"""


def test_truncated_named_segments_do_not_kill_their_users():
    with tiny_tmpfs("8m") as shm:
        out = _check(run_python(NAMED, shm))
    # The contents are gone (zeroes), but nobody died.
    assert out["seen"] == [0.0, 0.0]
    assert out["got"][0] == "SegmentError", out["got"]
    assert "robust mutexes" in out["got"][1], out["got"]
    assert out["child"][0] == 0.0
    assert out["lost"] == [True, True]
    assert all(size > 0 for size in out["sizes"]), "the files were given their size back"
    for kind, result in out["attach"].items():
        assert result[0] == "SegmentError", (kind, result)
        assert "truncated while in use" in result[1], (kind, result)
    assert "truncated while in use" in out["checked"]


ATTACH_AFTER = r"""
import json, os
import procwire
from procwire import _segment
from procwire.errors import SegmentError
q = procwire.Queue(capacity=65536, name="cut-q")
os.truncate(_segment.path_of("cut-q"), 4096)   # before anyone else attaches
try:
    procwire.Queue.attach("cut-q")
    print(json.dumps(["attached"]))
except SegmentError as exc:
    print(json.dumps(["SegmentError", str(exc)]))
"""


def test_attaching_to_a_shrunken_file_is_a_clear_error():
    with tiny_tmpfs("8m") as shm:
        out = _check(run_python(ATTACH_AFTER, shm))
    assert out[0] == "SegmentError" and "truncated" in out[1], out
