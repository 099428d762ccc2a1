"""Names, modes and attaching to segments that are not what they claim to be."""
from __future__ import annotations

import os
import stat
import struct
import uuid

import pytest

import procwire
from procwire import Queue, _core


@pytest.fixture
def name():
    return f"test-{uuid.uuid4().hex[:8]}"


def _write_segment(name: str, data: bytes) -> str:
    path = f"/dev/shm/procwire.{name}"
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return path


def test_anonymous_queue_leaves_nothing_in_dev_shm():
    before = set(os.listdir("/dev/shm"))
    q = Queue()
    q.put(1)
    assert set(os.listdir("/dev/shm")) == before
    q.close()


def test_named_segment_mode_is_0600_and_name_goes_on_close(name):
    old = os.umask(0)  # even with a permissive umask
    try:
        q = Queue(name=name)
    finally:
        os.umask(old)
    path = f"/dev/shm/procwire.{name}"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    q.close()
    assert not os.path.exists(path)


def test_name_taken_raises_file_exists_with_advice(name):
    q = Queue(name=name)
    try:
        with pytest.raises(FileExistsError, match="attach"):
            Queue(name=name)
    finally:
        q.close()


def test_unlink_removes_name_but_queue_keeps_working(name):
    q = Queue(name=name)
    other = Queue.attach(name)
    try:
        q.unlink()
        assert not os.path.exists(f"/dev/shm/procwire.{name}")
        other.put("still here")
        assert q.get(timeout=5) == "still here"
        q2 = Queue(name=name)  # the name is free again
        q2.close()
    finally:
        other.close()
        q.close()


@pytest.mark.parametrize("bad, exc", [
    ("", ValueError), ("a/b", ValueError), ("..", ValueError), ("a..b", ValueError),
    (".hidden", ValueError), ("x" * 201, ValueError), ("sp ace", ValueError),
    ("nul\0", ValueError), ("é", ValueError), (42, TypeError), (None, TypeError),
])
def test_bad_names_are_refused_with_a_clear_error(bad, exc):
    with pytest.raises(exc, match="name"):
        Queue.attach(bad)
    if bad is not None:
        with pytest.raises(exc, match="name"):
            Queue(name=bad)


def test_attach_missing_name(name):
    with pytest.raises(FileNotFoundError, match=name):
        Queue.attach(name)


def test_attach_to_garbage_raises_segment_error(name):
    path = _write_segment(name, os.urandom(8192))
    try:
        with pytest.raises(procwire.SegmentError, match="not a procwire segment"):
            Queue.attach(name)
    finally:
        os.unlink(path)


def test_attach_to_empty_or_short_file(name):
    path = _write_segment(name, b"")
    try:
        with pytest.raises(procwire.SegmentError, match="empty"):
            Queue.attach(name)
    finally:
        os.unlink(path)
    path = _write_segment(name, b"\0" * 10)
    try:
        with pytest.raises(procwire.SegmentError, match="shorter"):
            Queue.attach(name)
    finally:
        os.unlink(path)


def _valid_image(capacity: int = 4096) -> bytearray:
    q = Queue(capacity=capacity)
    q.put(b"hello")
    image = bytearray(q._segment.buffer)
    q.close()
    return image


def test_attach_to_a_valid_copy_works(name):
    path = _write_segment(name, bytes(_valid_image()))
    try:
        q = Queue.attach(name)
        assert q.get(timeout=1) == b"hello"
        q.close()
    finally:
        os.unlink(path)


@pytest.mark.parametrize("corrupt, match", [
    (lambda b: b.__setitem__(slice(8, 12), struct.pack("I", 99)), "layout version 99"),
    (lambda b: b.__setitem__(slice(12, 16), struct.pack("I", 9)), "is a event, not a queue"),
    (lambda b: b.__setitem__(slice(12, 16), struct.pack("I", 0)), "invalid object kind"),
    (lambda b: b.__setitem__(slice(16, 24), struct.pack("Q", 1 << 40)), "truncated or corrupt"),
    (lambda b: b.__setitem__(slice(0, 8), b"\0" * 8), "not initialised"),
    (lambda b: b.__setitem__(slice(64, 72), struct.pack("Q", 3000)), "capacity 3000"),
])
def test_attach_to_corrupt_header(name, corrupt, match):
    image = _valid_image()
    corrupt(image)
    path = _write_segment(name, bytes(image))
    try:
        with pytest.raises(procwire.SegmentError, match=match):
            Queue.attach(name)
    finally:
        os.unlink(path)


def test_truncated_segment(name):
    image = _valid_image()
    path = _write_segment(name, bytes(image[: len(image) // 2]))
    try:
        with pytest.raises(procwire.SegmentError, match="truncated"):
            Queue.attach(name)
    finally:
        os.unlink(path)


def test_corrupt_record_length_is_caught_before_any_copy(name):
    image = _valid_image()
    data_offset = struct.unpack_from("Q", image, 32)[0]
    struct.pack_into("I", image, data_offset, 0xFFFFFFF0)  # the first record's length
    path = _write_segment(name, bytes(image))
    try:
        q = Queue.attach(name)
        with pytest.raises(procwire.SegmentError, match="corrupt"):
            q.get(timeout=1)
        q.close()
    finally:
        os.unlink(path)


def test_corrupt_record_type(name):
    image = _valid_image()
    data_offset = struct.unpack_from("Q", image, 32)[0]
    struct.pack_into("I", image, data_offset + 4, 77)
    path = _write_segment(name, bytes(image))
    try:
        q = Queue.attach(name)
        with pytest.raises(procwire.SegmentError, match="unknown record type"):
            q.get(timeout=1)
        q.close()
    finally:
        os.unlink(path)


def test_symlink_is_refused(name, tmp_path):
    target = tmp_path / "target"
    target.write_bytes(bytes(_valid_image()))
    link = f"/dev/shm/procwire.{name}"
    os.symlink(target, link)
    try:
        with pytest.raises(procwire.SegmentError, match="symbolic link"):
            Queue.attach(name)
    finally:
        os.unlink(link)


def test_header_info_describes_a_segment():
    q = Queue()
    try:
        info = _core.header_info(q._segment.buffer)
        assert info["kind"] == "queue" and info["creator_pid"] == os.getpid()
        assert info["version"] == _core.LAYOUT_VERSION
    finally:
        q.close()
