"""open(name, wait=...): a reader may start before its writer (issue #10, item 3)."""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any

import posix_ipc
import pytest

import shmkit
from shmkit import _names

from .helpers import finish, kill, read_line, shm_path, spawn

# The reader: checks the name is absent, says so, then opens it with a wait
# and reports what it got. The parent creates the object only after that line.
READER = """
import os, sys, shmkit
name, kind = sys.argv[1], sys.argv[2]
sysname = shmkit._names.system_name(name)
assert not os.path.exists("/dev/shm/" + sysname.lstrip("/")), "exists before the reader waits"
print("waiting", flush=True)
if kind == "segment":
    with shmkit.Segment.open(name, wait=30) as seg:
        print(bytes(seg.buf[:5]).decode(), flush=True)
elif kind == "raw":
    with shmkit.Segment.open(name, wait=30) as seg:
        print(seg.size, flush=True)
elif kind == "array":
    with shmkit.SharedArray.open(name, wait=30) as arr:
        print(int(arr.array.sum()), flush=True)
elif kind == "semaphore":
    sem = shmkit.Semaphore.open(name, wait=30)
    print(sem.acquire(timeout=10), flush=True)
    sem.close()
elif kind == "raw-semaphore":
    sem = shmkit.Semaphore.open(name, wait=30)
    print(sem.acquire(timeout=10), flush=True)
    sem.close()
elif kind == "lock":
    lock = shmkit.Lock.open(name, wait=30)
    print(lock.acquire(timeout=10), flush=True)
    lock.release()
    lock.close()
elif kind == "event":
    with shmkit.Event.open(name, wait=30) as ev:
        print(ev.wait(timeout=10), flush=True)
elif kind == "queue":
    with shmkit.Queue.open(name, wait=30) as q:
        print(q.get(timeout=10).decode(), flush=True)
elif kind == "latest":
    with shmkit.Latest.open(name, wait=30) as lt:
        print(lt.get(timeout=10).decode(), flush=True)
elif kind == "broadcast":
    with shmkit.subscribe(name, start="oldest", wait=30) as sub:
        print(bytes(sub.recv(timeout=10)).decode(), flush=True)
elif kind == "dict":
    with shmkit.SharedDict.open(name, wait=30) as d:
        print(d["k"].decode(), flush=True)
"""


def _raw_name(name: str) -> str:
    return "/" + name[-20:]


def _make(kind: str, name: str) -> tuple[Any, str]:
    """Create the object of ``kind`` called ``name``; return it and what the reader prints."""
    if kind == "segment":
        seg = shmkit.Segment.create(name, 64)
        seg.buf[:5] = b"hello"
        return seg, "hello"
    if kind == "raw":
        raw = shmkit.Segment.create(_raw_name(name), 4096)
        return raw, "4096"
    if kind == "array":
        arr = shmkit.SharedArray.create(name, (4,), "int64")
        arr.array[:] = [1, 2, 3, 4]
        return arr, "10"
    if kind in ("semaphore", "raw-semaphore"):
        sem = shmkit.Semaphore.create(_raw_name(name) if kind == "raw-semaphore" else name, value=1)
        return sem, "True"
    if kind == "lock":
        lock = shmkit.Lock.create(name)
        return lock, "True"
    if kind == "event":
        ev = shmkit.Event.create(name)
        ev.set()
        return ev, "True"
    if kind == "queue":
        q = shmkit.Queue.create(name, capacity=4096)
        q.put(b"job-1")
        return q, "job-1"
    if kind == "latest":
        lt = shmkit.Latest.create(name, size=16)
        lt.set(b"state-7")
        return lt, "state-7"
    if kind == "broadcast":
        pub = shmkit.publisher(name, slot_size=64, slots=4)
        pub.publish(b"frame-0")
        return pub, "frame-0"
    assert kind == "dict"
    d = shmkit.SharedDict.create(name, capacity=16)
    d["k"] = b"v"
    return d, "v"


KINDS = [
    "segment",
    "raw",
    "array",
    "semaphore",
    "raw-semaphore",
    "lock",
    "event",
    "queue",
    "latest",
    "broadcast",
    "dict",
]


@pytest.mark.parametrize("kind", KINDS)
def test_a_reader_started_first_opens_the_object_once_it_is_created(kind: str, name: str) -> None:
    target = _raw_name(name) if kind in ("raw", "raw-semaphore") else name
    if kind == "raw-semaphore":  # a semaphore has no /dev/shm segment file: check sem.*
        reader = READER.replace('"/dev/shm/" + sysname.lstrip("/")', '"/dev/shm/sem." + name[1:]')
    else:
        reader = READER
    proc = spawn(reader, target, kind)
    try:
        assert read_line(proc) == "waiting"
        obj, expected = _make(kind, name)
        try:
            assert read_line(proc) == expected
            finish(proc)
        finally:
            obj.unlink()
            obj.close()
    finally:
        kill(proc)


def test_open_waits_for_the_creator_to_finish_initialising(name: str) -> None:
    # The creator stops itself after filling the header and before storing READY;
    # an opener with a longer wait than init_timeout gets the object once it goes on.
    creator = spawn(
        """
        import sys, shmkit
        seg = shmkit.Segment.create(sys.argv[1], 64)
        seg.buf[:5] = b"ready"
        print("created", flush=True)
        sys.stdin.readline()
        seg.unlink()
        """,
        name,
        env={"SHMKIT_STOP_AT": "segment.create.before_ready"},
    )
    try:
        deadline = time.monotonic() + 20
        while not os.path.exists(shm_path(name)):  # created, then stopped before READY
            assert time.monotonic() < deadline, "creator never made the segment"
            time.sleep(0.01)
        got: list[Any] = []

        def opener() -> None:
            try:
                with shmkit.Segment.open(name, wait=30, init_timeout=0.0) as seg:
                    got.append(seg.size)  # the body is written after READY: check the header
            except Exception as exc:
                got.append(exc)

        thread = threading.Thread(target=opener)
        thread.start()
        time.sleep(0.2)  # let the opener find the half-made segment (ordering only)
        assert not got, f"opened before READY: {got}"
        os.kill(creator.pid, signal.SIGCONT)
        thread.join(20)
        assert got == [64]
        assert read_line(creator) == "created"
        assert creator.stdin is not None
        creator.stdin.write("\n")
        creator.stdin.flush()
        finish(creator)
    finally:
        kill(creator)
        shmkit.Segment.remove(name)


def test_wait_runs_out_with_one_line_not_found(name: str) -> None:
    start = time.monotonic()
    with pytest.raises(shmkit.NotFound) as info:
        shmkit.Queue.open(name, wait=0.2)
    assert time.monotonic() - start >= 0.2
    message = str(info.value)
    assert f"queue {name!r} does not exist (waited 0.2 s)" in message
    assert "\n" not in message
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_wait_zero_fails_at_once_and_says_how_to_wait(name: str) -> None:
    with pytest.raises(shmkit.NotFound, match=r"pass wait=SECONDS"):
        shmkit.Lock.open(name)
    with pytest.raises(shmkit.NotFound, match=r"pass wait=SECONDS"):
        shmkit.Semaphore.open("/" + name[-20:])


@pytest.mark.parametrize("bad", [-1, float("nan"), "1", True])
def test_bad_wait_values_are_refused_before_any_system_call(bad: Any, name: str) -> None:
    with pytest.raises((ValueError, TypeError), match="wait"):
        shmkit.Segment.open(name, wait=bad)


def test_raw_segment_waits_until_its_creator_sizes_it(name: str) -> None:
    raw = "/" + name[-20:]
    shm = posix_ipc.SharedMemory(raw, posix_ipc.O_CREX, mode=0o600)  # 0 bytes, like the tutorial
    try:
        got: list[Any] = []

        def opener() -> None:
            try:
                with shmkit.Segment.open(raw, wait=20) as seg:
                    got.append(seg.size)
            except Exception as exc:
                got.append(exc)

        thread = threading.Thread(target=opener)
        thread.start()
        time.sleep(0.1)  # ordering only: the opener sees 0 bytes first
        os.ftruncate(shm.fd, 8192)
        thread.join(20)
        assert got == [8192]
    finally:
        shm.close_fd()
        shm.unlink()
    assert not os.path.exists("/dev/shm/" + _names.system_name(raw).lstrip("/"))


def test_publisher_of_a_ring_made_later_waits_for_it(name: str) -> None:
    creator = spawn(
        """
        import sys, shmkit
        sys.stdin.readline()
        shmkit.Broadcast.create(sys.argv[1], slot_size=64, slots=4).close()
        print("created", flush=True)
        """,
        name,
    )
    try:
        assert creator.stdin is not None
        creator.stdin.write("\n")
        creator.stdin.flush()
        with shmkit.publisher(name, wait=30) as pub:  # no slot_size: open, do not create
            assert pub.publish(b"x") >= 0
        assert read_line(creator) == "created"
        finish(creator)
    finally:
        kill(creator)
        shmkit.Segment.remove(name)


def test_wait_none_waits_until_the_name_appears(name: str) -> None:
    got: list[Any] = []

    def opener() -> None:
        try:
            with shmkit.Event.open(name, wait=None) as ev:
                got.append(ev.is_set())
        except Exception as exc:
            got.append(exc)

    thread = threading.Thread(target=opener, daemon=True)
    thread.start()
    time.sleep(0.1)  # ordering only
    ev = shmkit.Event.create(name)
    try:
        ev.set()
        thread.join(20)
        assert not thread.is_alive() and got in ([True], [False]), got
    finally:
        ev.unlink()
        ev.close()
