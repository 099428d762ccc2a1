"""procwire ls / stat / rm / clean against live objects, killed creators and junk."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
from clihelpers import (  # noqa: F401 (fixtures)
    ENV,
    SHM,
    TIMEOUT,
    Holder,
    ls_json,
    private_dir_left_empty,
    private_shm_dir,
    procwire_cmd,
    unique,
)


@pytest.fixture
def holder():
    made: list[Holder] = []

    def make(name: str, what: str = "create") -> Holder:
        h = Holder(name, what)
        made.append(h)
        return h

    yield make
    for h in made:
        h.close()


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait(TIMEOUT)
    return p.pid


def test_ls_shows_live_objects_with_their_users(holder):
    name = unique("ls")
    h = holder(name)
    entries = ls_json()
    q, lock = entries[name], entries[name + "-lock"]
    assert q["kind"] == "queue" and q["state"] == "ok"
    assert q["counters"]["messages"] == 3 and q["counters"]["total_in"] == 3
    assert q["creator_pid"] == h.pid and q["creator_alive"] is True
    assert h.pid in q["users"] and q["in_use"] is True
    assert lock["kind"] == "lock" and lock["counters"]["locked"] is True
    table = procwire_cmd("ls")
    assert table.returncode == 0
    line = next(ln for ln in table.stdout.splitlines() if ln.startswith(name + " "))
    assert "queue" in line and "3 msg" in line and str(h.pid) in line


def test_ls_matches_users_by_inode_not_by_name(holder):
    # A process still mapping a removed segment does not use the new one of that name.
    name = unique("inode")
    old = holder(name)
    assert procwire_cmd("rm", name).returncode == 0
    procwire_cmd("rm", name + "-lock")
    new = holder(name)
    users = ls_json()[name]["users"]
    assert new.pid in users and old.pid not in users
    old.check()  # the old object still works for its holder


def test_stat_counts_and_json(holder):
    name = unique("stat")
    holder(name)
    out = procwire_cmd("stat", name, "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["counters"]["messages"] == 3
    assert data["counters"]["bytes_in"] > 0 and data["waiters"] == 0
    text = procwire_cmd("stat", name)
    assert text.returncode == 0 and "total_in" in text.stdout and "queue" in text.stdout


def test_stat_watch_refreshes_until_interrupted(holder):
    name = unique("watch")
    holder(name)
    proc = subprocess.Popen([sys.executable, "-m", "procwire", "stat", name, "--watch",
                             "--json", "--interval", "0.05"], env=ENV,
                            stdout=subprocess.PIPE, text=True)
    try:
        first = json.loads(proc.stdout.readline())
        second = json.loads(proc.stdout.readline())
        assert first["counters"]["messages"] == 3
        assert "in/s" in second["rates"]
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(TIMEOUT) == 0
        proc.stdout.close()


def test_rm_removes_the_name_but_users_keep_working(holder):
    name = unique("rm")
    h = holder(name)
    out = procwire_cmd("rm", name, name + "-lock")
    assert out.returncode == 0, out.stderr
    assert not os.path.exists(SHM + name)
    h.check()


def test_rm_missing_and_bad_names_fail_in_one_line():
    for bad in ("no-such-" + unique("x"), "bad/name", "..", "a.creating-1-2"):
        out = procwire_cmd("rm", bad)
        assert out.returncode == 1, bad
        assert out.stderr.count("\n") == 1 and out.stderr.startswith("procwire: error:")
        assert "Traceback" not in out.stderr


def test_stat_missing_fails_in_one_line():
    out = procwire_cmd("stat", unique("missing"))
    assert out.returncode == 1
    assert "no procwire object is named" in out.stderr and out.stderr.count("\n") == 1


def test_stale_segment_of_a_killed_creator_is_listed_and_cleaned(holder):
    name = unique("stale")
    h = holder(name)
    h.kill()  # SIGKILL: no finalizer runs, the names stay
    assert os.path.exists(SHM + name)
    entry = ls_json()[name]
    assert entry["creator_alive"] is False and entry["users"] == [] and not entry["in_use"]
    assert entry["counters"]["messages"] == 3  # readable as it was left
    dry = procwire_cmd("clean", "--dry-run")
    assert dry.returncode == 0 and name in dry.stdout and os.path.exists(SHM + name)
    out = procwire_cmd("clean", "--yes")
    assert out.returncode == 0, out.stderr
    assert not os.path.exists(SHM + name) and not os.path.exists(SHM + name + "-lock")


def test_clean_never_removes_an_object_in_use(holder):
    name = unique("inuse")
    creator = holder(name)
    user = holder(name, what="attach")
    out = procwire_cmd("clean", "--yes")
    assert out.returncode == 0
    assert os.path.exists(SHM + name)
    creator.kill()  # the creator is gone, but another process still maps it
    entry = ls_json()[name]
    assert entry["creator_alive"] is False and entry["users"] == [user.pid]
    procwire_cmd("clean", "--yes")
    assert os.path.exists(SHM + name)
    user.check()
    user.close()
    procwire_cmd("clean", "--yes")  # now nobody uses it (nor the dead creator's lock)
    assert not os.path.exists(SHM + name) and not os.path.exists(SHM + name + "-lock")


def test_clean_asks_first(holder):
    name = unique("ask")
    holder(name).kill()
    no = procwire_cmd("clean", input="n\n")
    assert no.returncode == 0 and os.path.exists(SHM + name)
    yes = procwire_cmd("clean", input="y\n")
    assert yes.returncode == 0 and not os.path.exists(SHM + name)


def test_corrupt_segments_and_stale_temporaries():
    junk = unique("junk")
    with open(SHM + junk, "wb") as f:
        f.write(b"not a procwire segment" * 10)
    temp = f"{unique('temp')}.creating-{_dead_pid()}-abcd"
    with open(SHM + temp, "wb"):
        pass
    entries = ls_json()
    assert entries[junk]["state"] == "corrupt"
    assert "bad magic number 0x" in entries[junk]["error"]
    assert entries[temp]["state"] == "stale"
    table = procwire_cmd("ls")
    assert "corrupt: is not a procwire segment" in table.stdout
    out = procwire_cmd("clean", "--yes")
    assert out.returncode == 0
    assert not os.path.exists(SHM + junk) and not os.path.exists(SHM + temp)


def test_inspection_never_writes(holder):
    # ls and stat read through a read-only mapping: not one byte changes, and
    # the lock the holder keeps is reported, not taken.
    name = unique("ro")
    holder(name)
    def contents(n: str) -> bytes:
        with open(SHM + n, "rb") as f:
            return f.read()

    before = [contents(n) for n in (name, name + "-lock")]
    assert procwire_cmd("ls").returncode == 0
    out = procwire_cmd("stat", name + "-lock", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["counters"]["locked"] is True
    assert [contents(n) for n in (name, name + "-lock")] == before
