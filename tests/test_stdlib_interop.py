"""multiprocessing.shared_memory beside shmkit (issue #10 item 7; README "plain posix_ipc").

A stdlib ``SharedMemory(name)`` that only *attaches* still registers the name
with the resource tracker (before Python 3.13 always, from 3.13 unless
``track=False``), and the tracker unlinks it when that program exits: a
shmkit raw segment disappears under its creator. Each test waits until the
reader's tracker process has ended (it cleans up on its way out), so the
outcome is settled, not raced.
"""

from __future__ import annotations

import os
import sys
import time

import pytest

import shmkit

from .helpers import finish, spawn

READER = """
import sys
from multiprocessing import resource_tracker, shared_memory
name, how = sys.argv[1], sys.argv[2]
if how == "track=False":
    shm = shared_memory.SharedMemory(name, track=False)
else:
    shm = shared_memory.SharedMemory(name)
    if how == "unregister":
        # The fix before 3.13: take the name back from the tracker.
        resource_tracker.unregister(shm._name, "shared_memory")
print(bytes(shm.buf[:5]).decode(), resource_tracker._resource_tracker._pid, flush=True)
shm.close()
"""


def _gone(pid: int) -> bool:
    """True once ``pid`` has exited (a zombie nobody reaps counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True


def _read_with_stdlib(raw: str, how: str) -> None:
    proc = spawn(READER, raw.lstrip("/"), how)
    out = finish(proc).split()
    assert out[0] == "hello"
    tracker = int(out[1]) if out[1] != "None" else 0
    deadline = time.monotonic() + 20
    while tracker and not _gone(tracker):
        assert time.monotonic() < deadline, "the stdlib resource tracker did not exit"
        time.sleep(0.02)


@pytest.fixture
def raw(name: str) -> str:
    return "/" + name[-20:]


def test_a_stdlib_reader_unlinks_a_shmkit_segment_when_it_exits(raw: str) -> None:
    seg = shmkit.Segment.create(raw, 4096)
    try:
        seg.buf[:5] = b"hello"
        _read_with_stdlib(raw, "default")
        # The problem the README warns about: the reader only attached, yet the name is gone.
        assert not os.path.exists("/dev/shm" + raw)
        with pytest.raises(shmkit.NotFound):
            shmkit.Segment.open(raw)
    finally:
        seg.unlink()  # already gone: a no-op
        seg.close()


def test_unregistering_keeps_the_segment(raw: str) -> None:
    seg = shmkit.Segment.create(raw, 4096)
    try:
        seg.buf[:5] = b"hello"
        _read_with_stdlib(raw, "unregister")
        with shmkit.Segment.open(raw) as again:
            assert bytes(again.buf[:5]) == b"hello"
    finally:
        seg.unlink()
        seg.close()


@pytest.mark.skipif(sys.version_info < (3, 13), reason="SharedMemory(track=False) is 3.13+")
def test_track_false_keeps_the_segment(raw: str) -> None:
    seg = shmkit.Segment.create(raw, 4096)
    try:
        seg.buf[:5] = b"hello"
        _read_with_stdlib(raw, "track=False")
        with shmkit.Segment.open(raw) as again:
            assert bytes(again.buf[:5]) == b"hello"
    finally:
        seg.unlink()
        seg.close()
