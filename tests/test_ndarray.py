"""SharedArray: dtypes and orders by name, zero-copy views, readonly, the writer lock, bad input."""

from __future__ import annotations

import json
import mmap
import os
import pickle
import time
from contextlib import closing
from typing import Any

import numpy as np
import posix_ipc
import pytest

import shmkit
from shmkit import _layout, _names, _process
from shmkit._layout import Kind
from shmkit.latest import Latest
from shmkit.ndarray import SharedArray, describe
from shmkit.segment import Segment
from shmkit.sync import Event, Lock

from .helpers import finish, kill, read_line, spawn

DTYPES = [
    "float64",
    ">i4",
    "<u2",
    "u1",
    "bool",
    "<c16",
    ">f2",
    "M8[ns]",
    ">m8[s]",
    "U5",
    ">U3",
    "S7",
    "V4",
    np.dtype([("x", "<f4"), ("y", ">i8", (2, 3)), ("s", "S3")]),
    np.dtype([("x", "u1"), ("y", "<f8")], align=True),
    np.dtype({"names": ["a", "b"], "formats": ["<i4", "<i4"], "offsets": [8, 0], "itemsize": 16}),
    np.dtype([(("the title", "t"), "<i2"), ("n", [("inner", ">f8", (2,))])]),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("order", ["C", "F"])
def test_every_fixed_size_dtype_round_trips_by_name(name: str, dtype: Any, order: str) -> None:
    dt = np.dtype(dtype)
    with SharedArray.create(name, (3, 4), dt, order=order) as sa:
        raw = os.urandom(12 * dt.itemsize)
        sa.array.reshape(-1, order="A").view(np.uint8)[:] = np.frombuffer(raw, np.uint8)
        with SharedArray.open(name) as other:
            assert other.dtype == dt and other.shape == (3, 4) and other.order == order
            assert other.array.reshape(-1, order="A").view(np.uint8).tobytes() == raw
            assert (
                other.array.flags.f_contiguous if order == "F" else other.array.flags.c_contiguous
            )
        sa.unlink()


@pytest.mark.parametrize("shape", [(), (0,), (5, 0, 3), (7,), (2, 3, 4, 5)])
def test_odd_shapes(name: str, shape: tuple[int, ...]) -> None:
    with SharedArray.create(name, shape, "<i8") as sa, SharedArray.open(name) as other:
        assert other.shape == shape and other.array.shape == shape
        if sa.array.size:
            sa.array.reshape(-1)[-1] = 42
            assert other.array.reshape(-1)[-1] == 42
        sa.unlink()


def test_views_are_zero_copy_and_writes_are_shared(name: str) -> None:
    with SharedArray.create(name, (1000,), "f8") as sa, SharedArray.open(name) as other:
        view = other.array[10:20]
        sa.array[10:20] = 7.0
        assert (view == 7.0).all()  # a view taken before the write sees it: no copy anywhere
        assert sa.array.base is not None and not sa.array.flags.owndata
        assert sa.nbytes == 8000
        sa.unlink()


def test_from_array_copies_data_dtype_and_order(name: str) -> None:
    src = np.arange(24, dtype=">i4").reshape(4, 6).T  # F-contiguous, non-native
    with SharedArray.from_array(name, src) as sa:
        assert sa.order == "F" and sa.dtype == np.dtype(">i4")
        with SharedArray.open(name, readonly=True) as ro:
            assert np.array_equal(ro.array, src) and ro.array.flags.f_contiguous
        sa.unlink()
    with SharedArray.from_array(name, [[1.5, 2.5]]) as sa:  # plain lists too
        assert sa.shape == (1, 2) and sa.array.sum() == 4.0
        sa.unlink()


def test_another_process_needs_only_the_name(name: str) -> None:
    dt = np.dtype([("t", "<f8"), ("xy", "<f4", (2,))])
    with SharedArray.create(name, (4,), dt) as sa:
        sa.array["t"] = [1, 2, 3, 4]
        child = spawn(
            """
            import sys
            from shmkit.ndarray import SharedArray
            with SharedArray.open(sys.argv[1]) as sa:
                print(sa.shape, sa.dtype.names, float(sa.array["t"].sum()), flush=True)
                sa.array["xy"][2] = (5, 6)
            """,
            name,
        )
        assert finish(child).strip() == "(4,) ('t', 'xy') 10.0"
        assert sa.array["xy"][2].tolist() == [5.0, 6.0]
        sa.unlink()


def test_readonly_handles_cannot_write(name: str) -> None:
    with SharedArray.create(name, 8, "u1") as sa, SharedArray.open(name, readonly=True) as ro:
        assert ro.readonly and not ro.array.flags.writeable
        with pytest.raises(ValueError, match="read-only"):
            ro.array[0] = 1
        with pytest.raises(ValueError):
            ro.array.setflags(write=True)
        with pytest.raises(shmkit.PermissionDenied), ro.lock():
            pass
        sa.array[0] = 9
        assert ro.array[0] == 9
        sa.unlink()


def test_close_is_idempotent_and_old_views_stay_valid(name: str) -> None:
    sa = SharedArray.create(name, (4,), "i8")
    view = sa.array
    view[:] = [1, 2, 3, 4]
    sa.close()
    sa.close()
    assert sa.closed and "closed" in repr(sa)
    with pytest.raises(shmkit.Closed):
        _ = sa.array
    with pytest.raises(shmkit.Closed), sa.lock():
        pass
    assert view.sum() == 10  # the mapping lives as long as a view does
    sa.unlink()
    assert view.sum() == 10  # even after the name is gone


def test_pickle_reopens_by_name(name: str) -> None:
    with SharedArray.create(name, 3, "f4") as sa:
        sa.array[:] = 1.5
        for ro in (False, True):
            with SharedArray.open(name, readonly=ro) as h:
                copy = pickle.loads(pickle.dumps(h))
                with closing(copy):
                    assert copy.readonly is ro and copy.array.tolist() == [1.5] * 3
        sa.unlink()


def test_repr(name: str) -> None:
    with SharedArray.create(name, (2, 2), ">u2", order="F") as sa:
        assert repr(sa) == f"<SharedArray {name!r} shape=(2, 2) dtype=>u2 order=F>"
        sa.unlink()


def test_open_or_create_races_and_checks_the_description(name: str) -> None:
    with (
        SharedArray.open_or_create(name, (3,), "f8") as a,
        SharedArray.open_or_create(name, 3, np.float64) as b,
    ):
        a.array[1] = 5
        assert b.array[1] == 5
        with pytest.raises(shmkit.LayoutError, match="exists as"):
            SharedArray.open_or_create(name, (4,), "f8")
        with pytest.raises(shmkit.LayoutError):
            SharedArray.open_or_create(name, (3,), "f4")
        a.unlink()


# ------------------------------------------------------------------ writer lock

LOCK_HOLDER = """
import sys, time
from shmkit.ndarray import SharedArray
sa = SharedArray.open(sys.argv[1])
sa.acquire()
sa.array[:] = 1          # a half-done update...
print("held", flush=True)
time.sleep(600)
"""


def test_writer_lock_excludes_and_reports_a_dead_holder(name: str) -> None:
    with SharedArray.create(name, 16, "u1") as sa:
        holder = spawn(LOCK_HOLDER, name)
        try:
            read_line(holder)
            assert sa.acquire(timeout=0) is False
            t0 = time.monotonic()
            with pytest.raises(shmkit.LockTimeout, match=f"pid {holder.pid}"):
                sa.acquire(timeout=0.1)
            assert time.monotonic() - t0 < 1.0
        finally:
            kill(holder)
        t0 = time.monotonic()
        with sa.lock(timeout=5):
            assert time.monotonic() - t0 < 0.5
            assert sa.owner_died  # ...that its holder never finished
            sa.array[:] = 0
        with sa.lock(timeout=1):
            assert not sa.owner_died
        seg = sa._seg
        assert seg is not None
        info = describe(seg)
        assert info["lock_owner_deaths"] == 1 and info["lock_holder"] is None
        sa.unlink()


def test_lock_is_not_reentrant_and_release_needs_holding(name: str) -> None:
    with SharedArray.create(name, 1, "u1") as sa:
        with sa.lock(timeout=1), pytest.raises(RuntimeError):
            sa.acquire(timeout=0)
        with pytest.raises(RuntimeError):
            sa.release()
        sa.acquire()
        sa.close()  # releases
        with SharedArray.open(name) as other, other.lock(timeout=1):
            assert not other.owner_died
        other.unlink()


def test_flock_backend_lock_reports_death_too(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHMKIT_MUTEX", "flock")
    with SharedArray.create(name, 4, "u1") as sa:
        holder = spawn(LOCK_HOLDER, name, env={"SHMKIT_MUTEX": "flock"})
        read_line(holder)
        assert sa.acquire(timeout=0) is False
        kill(holder)
        with sa.lock(timeout=5):
            assert sa.owner_died
        sa.unlink()


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    ("shape", "dtype", "exc"),
    [
        ((3,), object, TypeError),
        ((3,), [("a", "f8"), ("b", object)], TypeError),
        ((3,), np.dtypes.StringDType(), TypeError),
        ((3,), "V0", TypeError),
        ((3,), "not a dtype", TypeError),
        ((-1,), "f8", ValueError),
        ((1,) * 33, "f8", ValueError),
        ((1 << 40, 1 << 20), "f8", ValueError),
        ((2.5,), "f8", TypeError),
        ("abc", "f8", TypeError),
        (None, "f8", TypeError),
        (True, "f8", TypeError),
    ],
)
def test_bad_arguments_are_rejected_before_anything_exists(
    name: str, shape: Any, dtype: Any, exc: type[Exception]
) -> None:
    with pytest.raises(exc):
        SharedArray.create(name, shape, dtype)
    assert not os.path.exists(f"/dev/shm/{_names.system_name(name)[1:]}")


def test_bad_order(name: str) -> None:
    with pytest.raises(ValueError, match="order"):
        SharedArray.create(name, 3, "f8", order="K")


def test_missing_is_not_found(name: str) -> None:
    with pytest.raises(shmkit.NotFound):
        SharedArray.open(name)


def test_other_kinds_are_layout_errors(name: str) -> None:
    objs: list[Any] = [
        Segment.create(name + "s", 64),
        Lock.create(name + "l"),
        Event.create(name + "e"),
        Latest.create(name + "t", size=8),
    ]
    try:
        for suffix in "slet":
            with pytest.raises(shmkit.LayoutError, match=r"not an? array"):
                SharedArray.open(name + suffix)
        with SharedArray.create(name, 2, "f8") as sa:
            with pytest.raises(shmkit.LayoutError):
                Latest.open(name)
            sa.unlink()
    finally:
        for obj in objs:
            obj.unlink()
            obj.close()


def forge(name: str, kind: Kind, params: bytes, body_size: int, nsems: int = 0) -> None:
    """A segment whose header is valid (CRC and all) but whose params are ``params``."""
    image = bytearray(
        _layout.build(
            kind=kind,
            mode=0o600,
            name=name,
            params=params,
            body_size=body_size,
            nsems=nsems,
            attach_slots=4,
            creator_pid=os.getpid(),
            creator_start=_process.start_time(os.getpid()),
            created_ns=time.time_ns(),
            boot_id=bytes(16),
            uid=os.geteuid(),
        )
    )
    image[_layout.STATE_OFFSET : _layout.STATE_OFFSET + 4] = _layout.STATE_READY.to_bytes(
        4, "little"
    )
    sysname = _names.system_name(name)
    total = _layout.offsets(len(name.encode()), len(params), 4)[1] + body_size
    shm = posix_ipc.SharedMemory(sysname, posix_ipc.O_CREX, size=total)
    with mmap.mmap(shm.fd, total) as mm:
        mm[: len(image)] = image
    shm.close_fd()
    for i in range(nsems):
        posix_ipc.Semaphore(_names.semaphore_name(sysname, i), posix_ipc.O_CREX).close()


def _array_params(
    shape: tuple[int, ...], spec: object, itemsize: int, order: bytes = b"C"
) -> bytes:
    text = json.dumps(spec).encode()
    n = itemsize
    for d in shape:
        n *= d
    meta = (
        np.array([len(shape)], "<u2").tobytes()
        + order
        + b"\0"
        + np.array([len(text)], "<u4").tobytes()
        + np.array([itemsize, n, *shape], "<u8").tobytes()
        + text
    )
    return b"\1\0\0\0\0\0\0\0" + meta


@pytest.mark.parametrize(
    ("params", "match"),
    [
        (_array_params((4,), "|O8", 8), "supported dtype"),  # T19: an object dtype
        (
            _array_params(
                (2,),
                {
                    "names": ["a", "o"],
                    "formats": ["<f8", "|O8"],
                    "offsets": [0, 8],
                    "itemsize": 16,
                    "aligned": False,
                },
                16,
            ),
            "supported dtype",
        ),  # a structured dtype hiding an object field
        (_array_params((4,), "<f8", 4), "itemsize"),  # itemsize disagrees with the dtype
        (_array_params((4,), "<f8", 8)[:-3], "JSON|truncated"),
        (_array_params((4,), "<f8", 8) + b"xx", "stray|JSON"),
        (_array_params((4,), "<f8", 8, b"Z"), "order"),
        (_array_params((4,), "<q8", 8), "supported dtype"),
        (_array_params((4,), "<M8[parsec]", 8), "numpy rejects|supported"),
        (b"\2\0\0\0\0\0\0\0" + _array_params((4,), "<f8", 8)[8:], "version"),
    ],
)
def test_forged_params_are_layout_errors(name: str, params: bytes, match: str) -> None:
    forge(name, Kind.ARRAY, params, _layout.align(128 + 32))
    try:
        with pytest.raises(shmkit.LayoutError, match=match):
            SharedArray.open(name)
    finally:
        Segment.remove(name)


def test_a_body_too_small_for_the_shape_is_a_layout_error(name: str) -> None:
    forge(name, Kind.ARRAY, _array_params((1000,), "<f8", 8), 256)
    try:
        with pytest.raises(shmkit.LayoutError, match="body"):
            SharedArray.open(name)
    finally:
        Segment.remove(name)


def test_corrupted_header_is_a_layout_error(name: str) -> None:
    with SharedArray.create(name, 16, "f8") as sa:
        path = f"/dev/shm/{sa._seg.sysname[1:]}"  # type: ignore[union-attr]
        with open(path, "r+b") as f:
            f.seek(_layout.HEADER_SIZE + len(name) + 10)  # inside the params: CRC catches it
            f.write(b"\xff")
        with pytest.raises(shmkit.LayoutError, match="checksum"):
            SharedArray.open(name)
        sa.unlink()


def test_describe_is_json_and_needs_no_numpy_objects(name: str) -> None:
    dt = np.dtype([("a", ">i4"), ("b", "u1", (3,))])
    with SharedArray.create(name, (2, 5), dt, order="F") as sa:
        with Segment._open_object(name, None, readonly=True) as seg:
            info = describe(seg)
        assert json.loads(json.dumps(info)) == info
        assert info["shape"] == [2, 5] and info["order"] == "F" and info["nbytes"] == 70
        assert info["lock_holder"] is None
        with sa.lock():
            with Segment._open_object(name, None, readonly=True) as seg:
                holder = describe(seg)["lock_holder"]
            assert isinstance(holder, dict) and holder["pid"] == os.getpid()
        with Segment.create(name + "x", 8) as other:
            with pytest.raises(shmkit.LayoutError):
                describe(other)
            other.unlink()
        sa.unlink()


def test_without_numpy_the_error_says_how_to_install_it(name: str) -> None:
    child = spawn(
        """
        import sys
        sys.modules["numpy"] = None           # as if numpy were not installed
        import shmkit.ndarray, shmkit.latest  # importing needs no numpy
        from shmkit.latest import Latest
        lt = Latest.create(sys.argv[1] + "b", size=8)   # bytes values need no numpy
        lt.set(b"ok")
        print(lt.get().decode(), flush=True)
        lt.unlink(); lt.close()
        try:
            shmkit.ndarray.SharedArray.create(sys.argv[1], 3, "f8")
        except ImportError as e:
            print(e, flush=True)
        """,
        name,
    )
    out = finish(child).splitlines()
    assert out[0] == "ok"
    assert "pip install 'shmkit[numpy]'" in out[1]
