"""Latest: versions and copies, waiting, dead writers (T08), torn-read hunts (T27), bad input."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from contextlib import closing
from typing import Any

import numpy as np
import pytest

import shmkit
from shmkit import _layout
from shmkit._layout import Kind
from shmkit.latest import PARAMS_VERSION, WRITERS, Latest, ReadStarved, describe
from shmkit.ndarray import SharedArray
from shmkit.segment import Segment
from shmkit.sync import Event, Lock

from .helpers import ROOT, finish, kill, read_line, spawn
from .test_ndarray import forge

HUNT = os.path.join(ROOT, "scripts", "torn_hunt_latest.py")


# ------------------------------------------------------------------ values and versions


def test_bytes_values_versions_and_copies(name: str) -> None:
    with Latest.create(name, size=64) as lt:
        assert lt.get_version() == 0 and lt.size == 64 and lt.shape is None
        with pytest.raises(shmkit.Empty, match="no value yet"):
            lt.get()
        assert lt.set(b"first") == 1
        assert lt.get() == b"first" and lt.get_version() == 1
        assert lt.set(bytearray(b"second")) == 2
        assert lt.set(memoryview(b"xthirdx")[1:-1]) == 3
        assert lt.get_versioned() == (3, b"third")
        assert lt.set(np.arange(8, dtype="<u8")) == 4  # any C-contiguous buffer: its bytes
        assert lt.get() == np.arange(8, dtype="<u8").tobytes()
        assert lt.set(b"") == 5 and lt.get() == b""
        assert lt.set(b"z" * 64) == 6
        buf = bytearray(100)
        assert lt.get_into(buf) == (6, 64) and buf[:64] == b"z" * 64
        with Latest.open(name) as other:
            assert other.get() == b"z" * 64
            assert other.set(b"from the other handle") == 7
        assert lt.get() == b"from the other handle"
        lt.unlink()


def test_bad_values_change_nothing(name: str) -> None:
    with Latest.create(name, size=8) as lt:
        lt.set(b"ok")
        with pytest.raises(shmkit.MessageTooLarge, match="9 bytes > size 8"):
            lt.set(b"123456789")
        with pytest.raises(TypeError):
            lt.set("text")
        with pytest.raises((TypeError, ValueError)):
            lt.set(np.arange(8, dtype="u1")[::2])  # not contiguous
        assert lt.get_versioned() == (1, b"ok")
        with pytest.raises(ValueError, match="does not fit"):
            lt.get_into(bytearray(1))
        with pytest.raises(ValueError, match="writable"):
            lt.get_into(b"12345678")
        lt.unlink()


def test_array_values(name: str) -> None:
    dt = np.dtype([("t", "<f8"), ("xy", ">f4", (2,))])
    with Latest.create(name, shape=(3, 2), dtype=dt, order="F") as lt:
        assert lt.shape == (3, 2) and lt.dtype == dt and lt.size == 6 * dt.itemsize
        value = np.zeros((3, 2), dt)
        value["t"] = np.arange(6).reshape(3, 2)
        assert lt.set(value) == 1
        got = lt.get()
        assert isinstance(got, np.ndarray) and got.dtype == dt and got.flags.f_contiguous
        assert np.array_equal(got, value) and got.flags.writeable
        got["t"][:] = -1  # a copy: the shared value is untouched
        assert lt.get()["t"].sum() == 15
        out = np.empty((3, 2), dt, order="F")
        assert lt.get_into(out) == (1, lt.size) and np.array_equal(out, value)
        with pytest.raises(ValueError, match="out must be"):
            lt.get_into(np.empty((2, 3), dt))
        with pytest.raises(ValueError, match="F-contiguous"):
            lt.get_into(np.empty((3, 2), dt, order="C"))
        with pytest.raises(ValueError, match="shape"):
            lt.set(np.zeros((2, 3), dt))
        with pytest.raises(TypeError, match="cast"):
            lt.set(np.zeros((3, 2), "f8"))
        assert lt.get_version() == 1
        lt.unlink()
    with Latest.create(name, shape=4, dtype="f8") as lt:
        assert lt.set(np.arange(4, dtype="i2")) == 1  # safe casts are fine
        assert lt.set([1.5, 2, 3, 4]) == 2
        assert lt.get().tolist() == [1.5, 2, 3, 4]
        with Latest.open(name, readonly=True) as ro:
            assert ro.get_versioned()[0] == 2 and ro.dtype == np.dtype("f8")
        lt.unlink()


def test_checksum_mode_round_trips_and_catches_corruption(name: str) -> None:
    with Latest.create(name, size=4096, checksum=True) as lt:
        assert lt.checksum
        lt.set(b"a" * 100)
        assert lt.get() == b"a" * 100 and lt.get_into(bytearray(4096)) == (1, 100)
        # Scribble on the published value: the tag still matches, the CRC does not.
        v = lt.get_version()
        off = lt._doff[v % lt.slots]
        lt._mm[off] = ord("b")
        with pytest.raises(shmkit.LayoutError, match="checksum"):
            lt.get(timeout=1)
        lt.set(b"fresh")
        assert lt.get() == b"fresh"
        lt.unlink()
    with Latest.create(name, shape=(2, 2), dtype="<i4", checksum=True) as lt:
        lt.set(np.eye(2, dtype="<i4"))
        assert lt.get().tolist() == [[1, 0], [0, 1]]
        lt.unlink()


def test_readonly_handle(name: str) -> None:
    with Latest.create(name, size=8) as lt, Latest.open(name, readonly=True) as ro:
        lt.set(b"v1")
        assert ro.readonly and ro.get() == b"v1" and ro.wait_newer(0, timeout=0) == 1
        with pytest.raises(shmkit.PermissionDenied):
            ro.set(b"no")
        lt.unlink()


def test_pickle_repr_statistics_and_describe(name: str) -> None:
    with Latest.create(name, size=16, slots=4) as lt:
        lt.set(b"abc")
        with closing(pickle.loads(pickle.dumps(lt))) as copy:
            assert copy.get() == b"abc" and copy.slots == 4
        assert repr(lt) == f"<Latest {name!r} size=16 slots=4>"
        stats = lt.statistics()
        assert stats.version == 1 and stats.live_writers == (os.getpid(),)
        assert stats.dead_writers == () and stats.writer_deaths == 0 and stats.waiters == 0
        with Segment._open_object(name, None, readonly=True) as seg:
            info = describe(seg)
        assert json.loads(json.dumps(info)) == info
        assert info["version"] == 1 and info["length"] == 3 and info["values"] == "bytes"
        assert info["writers"] == [{"pid": os.getpid(), "alive": True}]
        lt.unlink()
    with Latest.create(name, shape=(2, 3), dtype=">u2") as arr:
        assert "shape=(2, 3) dtype=>u2" in repr(arr)
        with Segment._open_object(name, None, readonly=True) as seg:
            info = describe(seg)
        assert info["shape"] == [2, 3] and info["dtype"] == ">u2" and info["version"] == 0
        arr.unlink()
    assert "closed" in repr(arr)


def test_closed_handles_raise_closed(name: str) -> None:
    lt = Latest.create(name, size=8)
    lt.set(b"x")
    lt.close()
    lt.close()
    for call in (
        lambda: lt.set(b"y"),
        lt.get,
        lt.get_version,
        lt.get_versioned,
        lambda: lt.get_into(bytearray(8)),
        lambda: lt.wait_newer(0),
        lt.statistics,
    ):
        with pytest.raises(shmkit.Closed):
            call()
    lt.unlink()


def test_open_or_create(name: str) -> None:
    with Latest.open_or_create(name, size=32) as a, Latest.open_or_create(name, size=32) as b:
        a.set(b"shared")
        assert b.get() == b"shared"
        with pytest.raises(shmkit.LayoutError, match="another value"):
            Latest.open_or_create(name, size=33)
        with pytest.raises(shmkit.LayoutError):
            Latest.open_or_create(name, shape=(4,), dtype="u8")
        a.unlink()
    with Latest.open_or_create(name, shape=(2,), dtype="f4") as c:
        with closing(Latest.open_or_create(name, shape=(2,), dtype="f4")):
            pass
        with pytest.raises(shmkit.LayoutError):
            Latest.open_or_create(name, shape=(2,), dtype="f8")
        c.unlink()


# ------------------------------------------------------------------ waiting


def test_wait_newer_timeouts(name: str) -> None:
    with Latest.create(name, size=8) as lt:
        lt.set(b"1")
        assert lt.wait_newer(0, timeout=0) == 1  # already newer: at once
        with pytest.raises(shmkit.Timeout):
            lt.wait_newer(1, timeout=0)
        t0 = time.monotonic()
        with pytest.raises(shmkit.Timeout, match="newer than 1"):
            lt.wait_newer(1, timeout=0.2)
        assert 0.2 <= time.monotonic() - t0 < 0.35
        with pytest.raises(ValueError):
            lt.wait_newer(1, timeout=-1)
        assert lt.statistics().waiters == 0  # the waiter unregistered
        lt.unlink()


WAITER = """
import sys, time
from shmkit.latest import Latest
lt = Latest.open(sys.argv[1])
print("ready", flush=True)
try:
    v = lt.wait_newer(int(sys.argv[2]), timeout=float(sys.argv[3]))
    print("woke", time.time(), v, lt.get().decode(), flush=True)
except Exception as e:
    print("raised", time.time(), type(e).__name__, flush=True)
"""


def test_a_set_wakes_a_waiting_process_promptly(name: str) -> None:
    with Latest.create(name, size=8) as lt:
        waiters = [spawn(WAITER, name, "0", "10") for _ in range(2)]
        try:
            for w in waiters:
                read_line(w)
            # let both get past their spin and block (a loaded machine may take a while)
            end = time.monotonic() + 10
            while lt.statistics().waiters < 2 and time.monotonic() < end:
                time.sleep(0.01)
            assert lt.statistics().waiters == 2
            t_set = time.time()
            lt.set(b"go")
            for w in waiters:
                kind, t_woke, v, value = read_line(w).split()
                assert (kind, v, value) == ("woke", "1", "go")
                assert float(t_woke) - t_set < 0.1  # a wake-up, not the 50 ms slice poll
                finish(w)
        finally:
            for w in waiters:
                kill(w)
            lt.unlink()


def test_close_from_another_thread_wakes_a_waiter(name: str) -> None:
    lt = Latest.create(name, size=8)
    result: list[Any] = []

    def wait() -> None:
        try:
            lt.wait_newer(0, timeout=10)
        except Exception as exc:
            result.append((exc, time.monotonic()))

    thread = threading.Thread(target=wait)
    thread.start()
    time.sleep(0.2)
    t0 = time.monotonic()
    lt.close()
    thread.join(5)
    assert isinstance(result[0][0], shmkit.Closed) and result[0][1] - t0 < 0.15
    lt.unlink()


def test_ctrl_c_interrupts_wait_newer(name: str) -> None:
    with Latest.create(name, size=8) as lt:
        child = spawn(
            WAITER.replace("except Exception", "except ZeroDivisionError"), name, "0", "30"
        )
        read_line(child)
        time.sleep(0.3)
        t0 = time.monotonic()
        child.send_signal(signal.SIGINT)
        try:
            _, err = child.communicate(timeout=5)
        finally:
            kill(child)
        assert time.monotonic() - t0 < 0.5
        assert child.returncode != 0 and "KeyboardInterrupt" in err
        assert lt.statistics().waiters in (0, 1)  # a process killed while registered stays counted
        lt.unlink()


# ------------------------------------------------------------------ writers that die (T08)

SET_AND_SLEEP = """
import sys, time
from shmkit.latest import Latest
lt = Latest.open(sys.argv[1])
lt.set(b"one")
if sys.argv[2] == "close":
    lt.close()
print("set", flush=True)
time.sleep(600)
"""


def test_a_dead_writer_is_reported_to_waiters_and_a_new_writer_takes_over(name: str) -> None:
    with Latest.create(name, size=8) as lt:
        writer = spawn(SET_AND_SLEEP, name, "stay")
        read_line(writer)
        assert lt.writers() == [(writer.pid, True)]
        with pytest.raises(shmkit.Timeout):
            lt.wait_newer(1, timeout=0.1)  # a live, idle writer is not an error
        kill(writer)
        t0 = time.monotonic()
        with pytest.raises(shmkit.PeerDied, match=f"pid {writer.pid}"):
            lt.wait_newer(1, timeout=5)
        assert time.monotonic() - t0 < 0.2
        assert lt.get() == b"one"  # the last value stays readable
        assert lt.writers() == [(writer.pid, False)]
        assert lt.set(b"two") == 2  # a new writer takes over and clears the dead entry
        assert lt.writers() == [(os.getpid(), True)]
        lt.unlink()


def test_a_writer_that_closed_is_not_a_death(name: str) -> None:
    with Latest.create(name, size=8) as lt:
        writer = spawn(SET_AND_SLEEP, name, "close")
        read_line(writer)
        try:
            assert lt.writers() == []
            with pytest.raises(shmkit.Timeout):
                lt.wait_newer(1, timeout=0.2)
        finally:
            kill(writer)
        with pytest.raises(shmkit.Timeout):
            lt.wait_newer(1, timeout=0.1)  # its exit after close() is no death either
        lt.unlink()


CRASHER = """
import sys
import numpy as np
from shmkit.latest import Latest
lt = Latest.open(sys.argv[1])
size = lt.size
def value(b):
    return np.full(lt.shape, b, lt.dtype) if lt.shape else bytes([b]) * size
for _ in range(5):
    lt.set(value(0x11))          # passes the armed crash point 5 times
print("ready", flush=True)
lt.set(value(0x22))              # dies at the crash point
print("survived", flush=True)
"""

POINTS = ["latest.set.copying", "latest.set.copied", "latest.set.sealed", "latest.set.published"]


def _uniform(value: Any) -> int:
    raw = value.tobytes() if isinstance(value, np.ndarray) else value
    assert raw == raw[:1] * len(raw), "torn value"
    return raw[0]


@pytest.mark.parametrize(
    ("mode", "point"),
    [("bytes", p) for p in POINTS]
    + [("array", POINTS[0])]  # the array path shares the later steps
    + [("checksum", POINTS[1])]  # the arm64 path
    + [("flock", POINTS[0]), ("flock", POINTS[-1])],  # before and after publication
)
def test_writer_killed_mid_set_leaves_the_previous_value(
    name: str, point: str, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """T08: crash points inside set; readers see the old or the new value whole, never torn."""
    env = {"SHMKIT_CRASH_AT": point, "SHMKIT_CRASH_AFTER": "5"}
    if mode == "flock":
        env["SHMKIT_MUTEX"] = "flock"
        monkeypatch.setenv("SHMKIT_MUTEX", "flock")
    lt = (
        Latest.create(name, shape=(256, 1024), dtype="u1")
        if mode == "array"
        else Latest.create(name, size=256 * 1024, checksum=mode == "checksum")
    )
    with lt:
        writer = spawn(CRASHER, name, env=env)
        read_line(writer)
        assert writer.wait(10) == -signal.SIGKILL
        kill(writer)
        version, value = lt.get_versioned(timeout=1)
        published = point == "latest.set.published"
        assert (version, _uniform(value)) == ((6, 0x22) if published else (5, 0x11))
        if not published:
            t0 = time.monotonic()
            with pytest.raises(shmkit.PeerDied):
                lt.wait_newer(5, timeout=5)
            assert time.monotonic() - t0 < 0.2
        new = np.full(lt.shape, 0x33, "u1") if lt.shape else b"\x33" * lt.size
        assert lt.set(new, timeout=1) == version + 1  # the next writer takes over
        assert _uniform(lt.get()) == 0x33
        stats = lt.statistics()
        assert stats.writer_deaths == 1 and stats.dead_writers == ()
        lt.unlink()


READER_THROUGH_CRASH = """
import sys, time
from shmkit.latest import Latest
lt = Latest.open(sys.argv[1])
print("ready", flush=True)
v = lt.wait_newer(0, timeout=10)
t_dead = None
while True:
    try:
        v = lt.wait_newer(v, timeout=10)
    except Exception as e:
        print(type(e).__name__, v, lt.get()[:1].hex(), time.time(), flush=True)
        break
"""


def test_a_reader_in_another_process_sees_the_writer_die(name: str) -> None:
    with Latest.create(name, size=1 << 20) as lt:
        reader = spawn(READER_THROUGH_CRASH, name)
        read_line(reader)
        writer = spawn(CRASHER, name, env={"SHMKIT_CRASH_AT": POINTS[0], "SHMKIT_CRASH_AFTER": "5"})
        read_line(writer)
        writer.wait(10)
        t_dead = time.time()
        kill(writer)
        kind, version, first, t_told = read_line(reader).split()
        assert (kind, version, first) == ("PeerDied", "5", "11")
        assert float(t_told) - t_dead < 0.3
        finish(reader)
        lt.unlink()


def test_at_most_sixteen_writer_handles_at_once(name: str) -> None:
    with Latest.create(name, size=16) as lt:
        handles = [Latest.open(name) for _ in range(WRITERS)]
        try:
            for i, h in enumerate(handles):
                assert h.set(b"%d" % i) == i + 1
            assert len(lt.writers()) == WRITERS
            with pytest.raises(shmkit.Full, match="16 live writers"):
                lt.set(b"one too many")
            assert lt.get_version() == WRITERS  # nothing changed
            handles.pop().close()  # a writer leaves: its entry is free again
            assert lt.set(b"now fine") == WRITERS + 1
        finally:
            for h in handles:
                h.close()
        lt.unlink()


LOCK_SQUATTER = """
import sys, time
from shmkit.latest import Latest
lt = Latest.open(sys.argv[1])
lt._mutex.try_acquire()       # stuck inside set, as far as other writers can tell
print("held", flush=True)
time.sleep(600)
"""


def test_a_stuck_writer_times_other_writers_out_but_never_readers(name: str) -> None:
    with Latest.create(name, size=8) as lt:
        lt.set(b"before")
        squatter = spawn(LOCK_SQUATTER, name)
        try:
            read_line(squatter)
            t0 = time.monotonic()
            assert lt.get() == b"before"  # readers never wait for writers
            with pytest.raises(shmkit.LockTimeout, match="another writer"):
                lt.set(b"after", timeout=0.2)
            assert 0.2 <= time.monotonic() - t0 < 0.5
            assert lt.get_versioned() == (1, b"before")
        finally:
            kill(squatter)
        assert lt.set(b"after", timeout=2) == 2  # the kernel released its mutex
        assert lt.statistics().writer_deaths == 1
        lt.unlink()


# ------------------------------------------------------------------ torn reads (T27)


def _hunt(*args: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, HUNT, "--json", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode in (0, 1), out.stderr[-3000:]
    summary: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return summary


@pytest.mark.parametrize("checksum", [False, True])
def test_torn_read_hunt_short(checksum: bool) -> None:
    """2 writers churn 1 MiB uniform values, 3 readers check every snapshot: none torn."""
    flags = ["--checksum"] if checksum else []
    summary = _hunt("--seconds", "1.5", "--size", "1MiB", *flags)
    assert not summary["failures"], summary["failures"]
    assert summary["torn"] == 0 and summary["regressions"] == 0
    assert summary["sets"] > 20 and all(r["reads"] > 0 for r in summary["readers"])


@pytest.mark.slow
def test_torn_read_hunt_full() -> None:
    """The issue's run: 6 MiB values, 2 writers, 3 readers, 10 s; plus a naive control reader."""
    summary = _hunt("--seconds", "10", "--size", "6MiB", "--control")
    assert not summary["failures"], summary["failures"]
    assert summary["torn"] == 0 and summary["regressions"] == 0
    assert all(r["reads"] > 0 for r in summary["readers"])
    print(json.dumps({k: v for k, v in summary.items() if k not in ("writers", "readers")}))


def test_a_starved_reader_gets_read_starved_within_its_timeout(name: str) -> None:
    with Latest.create(name, size=64) as lt:
        lt.set(b"x" * 64)
        ctl = lt._ctl
        assert ctl is not None
        word = lt._tagw[lt.get_version() % lt.slots]
        ctl[word] = 0  # as if writers kept rewriting the slot every read lands on
        for timeout in (0.0, 0.05, 0.2):
            t0 = time.monotonic()
            with pytest.raises(ReadStarved, match="no stable value"):
                lt.get(timeout=timeout)
            assert timeout <= time.monotonic() - t0 < timeout + 0.05
        assert isinstance(ReadStarved("x"), shmkit.Timeout)
        assert lt.statistics().starved == 3
        lt.unlink()


HOT_WRITER = """
import sys, time
import numpy as np
from shmkit.latest import Latest
lt = Latest.open(sys.argv[1])
buf = np.empty(lt.size, np.uint8)
print("ready", flush=True)
end = time.monotonic() + float(sys.argv[2])
n = 0
while time.monotonic() < end:
    buf.fill(n & 0xFF)
    lt.set(buf)
    n += 1
"""


def test_reads_under_a_hot_writer_finish_within_their_timeout(name: str) -> None:
    """T27: 2 slots of 4 MiB rewritten flat out: get(timeout=0.1) returns or starves in time."""
    with Latest.create(name, size=4 << 20, slots=2) as lt:
        lt.set(bytes(4 << 20))
        writer = spawn(HOT_WRITER, name, "3")
        read_line(writer)
        worst = 0.0
        got = starved = 0
        out = bytearray(4 << 20)
        try:
            end = time.monotonic() + 2
            while time.monotonic() < end:
                t0 = time.monotonic()
                try:
                    lt.get_into(out, timeout=0.1)
                    assert out == out[:1] * len(out)
                    got += 1
                except ReadStarved:
                    starved += 1
                worst = max(worst, time.monotonic() - t0)
        finally:
            finish(writer)
        assert got > 0 and worst < 0.25, (got, starved, worst)
        lt.unlink()


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    ("kwargs", "exc"),
    [
        ({}, TypeError),
        ({"size": 8, "shape": 3, "dtype": "f8"}, TypeError),
        ({"shape": 3}, TypeError),
        ({"size": -1}, ValueError),
        ({"size": 1 << 40}, ValueError),
        ({"size": 8.0}, TypeError),
        ({"size": 8, "slots": 1}, ValueError),
        ({"size": 8, "slots": 17}, ValueError),
        ({"size": 8, "slots": True}, TypeError),
        ({"shape": 3, "dtype": object}, TypeError),
        ({"shape": 3, "dtype": [("a", "O")]}, TypeError),
        ({"shape": -3, "dtype": "f8"}, ValueError),
        ({"shape": 3, "dtype": "f8", "order": "X"}, ValueError),
    ],
)
def test_bad_create_arguments(name: str, kwargs: dict[str, Any], exc: type[Exception]) -> None:
    with pytest.raises(exc):
        Latest.create(name, **kwargs)


def test_other_kinds_are_layout_errors(name: str) -> None:
    objs: list[Any] = [
        Segment.create(name + "s", 64),
        Lock.create(name + "l"),
        Event.create(name + "e"),
        SharedArray.create(name + "a", 4, "f8"),
    ]
    try:
        for suffix in "slea":
            with pytest.raises(shmkit.LayoutError, match="not a latest"):
                Latest.open(name + suffix)
    finally:
        for obj in objs:
            obj.unlink()
            obj.close()


def _params(
    version: int = PARAMS_VERSION, flags: int = 0, slots: int = 3, writers: int = WRITERS
) -> bytes:
    return (
        np.array([version, flags, slots, writers], "<u4").tobytes()
        + np.array([64], "<u8").tobytes()
    )


BODY = _layout.align(128 + 16 * WRITERS) + 3 * (64 + 64)


@pytest.mark.parametrize(
    ("params", "body", "nsems", "match"),
    [
        (_params(version=1), BODY, 0, "version"),  # the layout before the C seqlock
        (_params(flags=8), BODY, 0, "flags"),
        (_params(slots=1), BODY, 0, "slots"),
        (_params(slots=99), BODY, 0, "slots"),
        (_params(writers=3), BODY, 0, "writers"),
        (_params(), BODY + 64, 0, "body"),
        (_params() + b"junk", BODY, 0, "stray"),
        (_params()[:10], BODY, 0, "truncated"),
        (_params(), BODY, 2, "semaphores"),
        (_params(flags=2), BODY, 0, "truncated"),  # array flag without an array description
    ],
)
def test_forged_params_are_layout_errors(
    name: str, params: bytes, body: int, nsems: int, match: str
) -> None:
    forge(name, Kind.LATEST, params, body, nsems=nsems)
    try:
        with pytest.raises(shmkit.LayoutError, match=match):
            Latest.open(name)
    finally:
        Segment.remove(name)


def test_an_object_dtype_in_an_array_latest_is_refused_at_open(name: str) -> None:
    text = b'"|O8"'
    meta = (
        np.array([1], "<u2").tobytes()
        + b"C\0"
        + np.array([len(text)], "<u4").tobytes()
        + np.array([8, 64, 8], "<u8").tobytes()
        + text
    )
    forge(name, Kind.LATEST, _params(flags=2) + meta, BODY, nsems=0)
    try:
        with pytest.raises(shmkit.LayoutError, match="supported dtype"):
            Latest.open(name)
    finally:
        Segment.remove(name)


def test_corrupted_header_is_a_layout_error(name: str) -> None:
    with Latest.create(name, size=8) as lt:
        path = f"/dev/shm/{lt._seg.sysname[1:]}"  # type: ignore[union-attr]
        with open(path, "r+b") as f:
            f.seek(_layout.HEADER_SIZE + len(name) + 16)  # the size field of the params
            f.write(b"\x10")
        with pytest.raises(shmkit.LayoutError):
            Latest.open(name)
        lt.unlink()
