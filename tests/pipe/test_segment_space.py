"""Defect 8: a full tmpfs must give a clear OSError at creation, never SIGBUS.

Each named kind is created on a 2 MiB tmpfs that a filler file has used up.
The objects run in a fresh interpreter (PROCWIRE_SHM_DIR is read at import),
so that a SIGBUS kills that interpreter, not the test session.
"""
from __future__ import annotations

import errno
import json
import signal

import pytest
from _tmpfs import run_python, tiny_tmpfs

pytestmark = pytest.mark.timeout(120)

KINDS = {
    "Queue": "procwire.Queue(capacity=65536, name=n)",
    "JoinableQueue": "procwire.JoinableQueue(capacity=65536, name=n)",
    "SimpleQueue": "procwire.SimpleQueue(capacity=65536, name=n)",
    "Lock": "procwire.Lock(name=n)",
    "RLock": "procwire.RLock(name=n)",
    "Semaphore": "procwire.Semaphore(2, name=n)",
    "BoundedSemaphore": "procwire.BoundedSemaphore(2, name=n)",
    "Condition": "procwire.Condition(name=n)",
    "Event": "procwire.Event(name=n)",
    "Barrier": "procwire.Barrier(2, name=n)",
    "Value": "procwire.Value('d', 1.5, name=n)",
    "Array": "procwire.Array('i', range(1000), name=n)",
    "RawValue": "procwire.RawValue('i', 7, name=n)",
    "RawArray": "procwire.RawArray('d', 5000, name=n)",
}

SCRIPT = """
import errno, json, os, sys
import procwire
from procwire import _segment
kinds = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {kinds!r}
filler = os.path.join(_segment.SHM_DIR, "filler")
fd = os.open(filler, os.O_RDWR | os.O_CREAT, 0o600)
# Use up the whole tmpfs: fallocate what fits, page by page at the end.
size = os.statvfs(_segment.SHM_DIR).f_bavail * os.statvfs(_segment.SHM_DIR).f_frsize
os.posix_fallocate(fd, 0, size)
try:
    os.posix_fallocate(fd, size, 4096)
    raise SystemExit("the tmpfs is not full")
except OSError as exc:
    assert exc.errno == errno.ENOSPC
results = {{}}
for kind, expr in kinds.items():
    n = "full-" + kind
    try:
        obj = eval(expr)
    except OSError as exc:
        results[kind] = [exc.errno, str(exc)]
    else:
        results[kind] = ["created"]
        obj.close() if hasattr(obj, "close") else None
os.close(fd)
os.unlink(filler)
left = sorted(os.listdir(_segment.SHM_DIR))
# With room again, every kind can be created.
made = []
for kind, expr in kinds.items():
    n = "room-" + kind
    made.append(eval(expr))
print(json.dumps({{"results": results, "left": left,
                  "made": len(made)}}))
"""


def test_full_tmpfs_raises_a_clear_oserror_for_every_named_kind():
    with tiny_tmpfs("2m") as shm:
        done = run_python(SCRIPT.format(kinds=KINDS), shm)
        assert done.returncode == 0, (
            f"the process died (signal {-done.returncode if done.returncode < 0 else '-'}"
            f"{', SIGBUS' if done.returncode == -signal.SIGBUS else ''}): {done.stderr[-2000:]}")
        out = json.loads(done.stdout)
        for kind, result in out["results"].items():
            assert result[0] == errno.ENOSPC, f"{kind}: {result}"
            message = result[1]
            assert shm in message and "bytes of shared memory" in message, message
            # (a Barrier's first segment is its state, named '<name>.state')
            assert f"'full-{kind}{'.state' if kind == 'Barrier' else ''}'" in message, message
        assert out["left"] == [], "a failed creation left files behind"
        assert out["made"] == len(KINDS)


ANONYMOUS = """
import errno, json, resource
import procwire
# The one limit an unprivileged test can put on a memfd's size: the largest
# file this process may make. The reservation must fail cleanly under it.
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
out = {}
for kind, make in (("Pipe", lambda: procwire.Pipe(capacity=4 << 20)),
                   ("Queue", lambda: procwire.Queue(capacity=4 << 20)),
                   ("Array", lambda: procwire.Array("d", 1 << 20))):
    try:
        make()
        out[kind] = ["created"]
    except OSError as exc:
        out[kind] = [exc.errno, str(exc)]
small = procwire.Pipe(capacity=65536)
small[0].send("fits"); out["small"] = small[1].recv()
print(json.dumps(out))
"""


def test_anonymous_segments_that_cannot_be_reserved_raise_a_clear_oserror():
    with tiny_tmpfs("1m") as shm:
        done = run_python(ANONYMOUS, shm)
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout)
    assert out.pop("small") == "fits"
    for kind, result in out.items():
        assert result[0] == errno.EFBIG, (kind, result)
        assert f"cannot create an anonymous {kind}" in result[1], result
        assert "bytes of shared memory in an anonymous memfd" in result[1], result
