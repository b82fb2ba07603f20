"""Segment: create/open across processes, lifetime, raw mode, bad input, permissions."""

from __future__ import annotations

import mmap
import os
import pickle
import shutil
import signal
import stat
import struct
import subprocess
import sys
import threading
import time
from contextlib import closing
from multiprocessing import shared_memory

import posix_ipc
import pytest

import shmkit
from shmkit import _layout, _names
from shmkit.segment import Segment

from .helpers import finish, kill, read_line, spawn, wait_stopped


def test_create_in_one_process_read_in_another(name: str) -> None:
    with Segment.create(name, 4096) as seg:
        seg.buf[:11] = b"hello world"
        child = spawn(
            """
            import sys
            from shmkit import Segment
            with Segment.open(sys.argv[1]) as seg:
                print(bytes(seg.buf[:11]).decode(), seg.size, flush=True)
                seg.buf[11:13] = b"!!"
            """,
            name,
        )
        assert finish(child).split() == ["hello", "world", "4096"]
        assert bytes(seg.buf[11:13]) == b"!!"
        seg.unlink()


def test_object_outlives_its_creator_until_unlinked(name: str) -> None:
    """Lifetime rule: create() persists after the creator exits; open() never unlinks."""
    creator = spawn(
        """
        import sys
        from shmkit import Segment
        seg = Segment.create(sys.argv[1], 100)
        seg.buf[:3] = b"abc"
        seg.close()
        """,
        name,
    )
    finish(creator)
    with Segment.open(name) as seg:
        assert bytes(seg.buf[:3]) == b"abc"
    with Segment.open(name) as seg:  # closing a handle did not unlink it either
        assert seg.size == 100
    assert Segment.remove(name) is True
    assert Segment.remove(name) is False
    with pytest.raises(shmkit.NotFound):
        Segment.open(name)


def test_unlink_on_exit_scopes_lifetime_to_the_block(name: str) -> None:
    with Segment.create(name, 64, unlink_on_exit=True) as seg:
        seg.buf[0] = 7
        with Segment.open(name) as other:
            assert other.buf[0] == 7
    with pytest.raises(FileNotFoundError):
        Segment.open(name)


def test_close_is_idempotent_and_buf_raises_closed(name: str) -> None:
    seg = Segment.create(name, 64)
    seg.close()
    seg.close()
    assert seg.closed
    with pytest.raises(shmkit.Closed):
        _ = seg.buf
    assert "closed" in repr(seg)
    Segment.remove(name)


def test_open_or_create_and_duplicate_create(name: str) -> None:
    with Segment.open_or_create(name, 128) as a, Segment.open_or_create(name, 128) as b:
        a.buf[0] = 42
        assert b.buf[0] == 42
        with pytest.raises(shmkit.AlreadyExists):
            Segment.create(name, 128)
        with pytest.raises(FileExistsError):
            Segment.create(name, 128)
        with pytest.raises(shmkit.LayoutError):
            Segment.open_or_create(name, 1 << 20)  # exists, but smaller than asked
        a.unlink()


def test_handles_pickle_by_name(name: str) -> None:
    with Segment.create(name, 32) as seg:
        seg.buf[:2] = b"ok"
        with pickle.loads(pickle.dumps(seg)) as again:
            assert bytes(again.buf[:2]) == b"ok"
        seg.unlink()


def test_memory_is_reserved_at_create(name: str) -> None:
    with Segment.create(name, 8 << 20) as seg:
        st = os.stat(f"/dev/shm/{seg.sysname[1:]}")
        assert st.st_blocks * 512 >= 8 << 20  # posix_fallocate'd, not sparse
        seg.unlink()


def test_attach_table_lists_live_handles(name: str) -> None:
    with Segment.create(name, 32) as seg:
        child = spawn(
            """
            import sys, time
            from shmkit import Segment
            seg = Segment.open(sys.argv[1])
            print("attached", flush=True)
            sys.stdin.readline()
            """,
            name,
        )
        read_line(child)
        pids = {a.pid for a in seg.attachments() if a.liveness.value == "alive"}
        assert {os.getpid(), child.pid} <= pids
        assert child.stdin is not None
        child.stdin.write("\n")
        child.stdin.flush()
        finish(child)
        pids = {a.pid for a in seg.attachments() if a.liveness.value == "alive"}
        assert child.pid not in pids
        seg.unlink()


# ------------------------------------------------------------------ raw mode / interop


def test_posix_ipc_tutorial_writer_shmkit_reader(name: str) -> None:
    """A writer with only posix_ipc + mmap (the classic tutorial), a shmkit reader."""
    sysname = f"/{name}"
    writer = spawn(
        """
        import mmap, sys, posix_ipc
        shm = posix_ipc.SharedMemory(sys.argv[1], posix_ipc.O_CREX, size=4096)
        sem = posix_ipc.Semaphore(sys.argv[1] + "-sem", posix_ipc.O_CREX, initial_value=0)
        mm = mmap.mmap(shm.fd, shm.size)
        shm.close_fd()
        mm[:13] = b"from posix_ipc"[:13]
        sem.release()
        sem.close()
        """,
        sysname,
    )
    finish(writer)
    with (
        closing(shmkit.Semaphore.open(sysname + "-sem")) as sem,
        Segment.open(sysname) as seg,
    ):
        assert sem.acquire(timeout=5)
        assert seg.raw and seg.size == 4096
        assert bytes(seg.buf[:13]) == b"from posix_ipc"[:13]
        seg.unlink()
        sem.unlink()


def test_shmkit_raw_writer_posix_ipc_reader(name: str) -> None:
    sysname = f"/{name}"
    with (
        Segment.create(sysname, 4096) as seg,
        closing(shmkit.Semaphore.create(sysname + "-sem", 0)) as sem,
    ):
        seg.buf[:6] = b"shmkit"
        sem.release()
        reader = spawn(
            """
            import mmap, sys, posix_ipc
            sem = posix_ipc.Semaphore(sys.argv[1] + "-sem")
            sem.acquire(5)
            shm = posix_ipc.SharedMemory(sys.argv[1])
            mm = mmap.mmap(shm.fd, shm.size)
            print(mm[:6].decode(), shm.size, flush=True)
            """,
            sysname,
        )
        assert finish(reader).split() == ["shmkit", "4096"]
        seg.unlink()
        sem.unlink()


def test_raw_open_of_multiprocessing_shared_memory() -> None:
    shm = shared_memory.SharedMemory(create=True, size=100)
    try:
        assert shm.buf is not None
        shm.buf[:4] = b"mpsm"
        with Segment.open("/" + shm.name.lstrip("/")) as seg:
            assert bytes(seg.buf[:4]) == b"mpsm"
    finally:
        shm.close()
        shm.unlink()


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    "bad",
    ["", "/", "a/b", "a\0b", "x" * 256, ".hidden", "sp ace", "ü", "/a/b", 7, None, b"bytes"],
)
def test_invalid_names_raise_before_any_system_call(bad: object) -> None:
    with pytest.raises(shmkit.InvalidName):
        Segment.create(bad, 10)  # type: ignore[arg-type]
    with pytest.raises(shmkit.InvalidName):
        Segment.open(bad)  # type: ignore[arg-type]


def test_invalid_name_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="letters, digits"):
        Segment.create("no spaces", 10)


def test_long_names_hash_to_a_portable_system_name(name: str) -> None:
    long = name + "-" + "x" * 150
    sysname = _names.system_name(long)
    assert len(sysname) + len(".s0") <= 30
    with Segment.create(long, 10) as seg:
        assert seg.sysname == sysname
        with Segment.open(long) as again:
            assert again.header is not None and again.header.name == long
        seg.unlink()


@pytest.mark.parametrize(
    ("size", "exc"),
    [
        (0, ValueError),
        (-1, ValueError),
        (1 << 62, ValueError),
        (1.5, TypeError),
        ("9", TypeError),
        (True, TypeError),
    ],
)
def test_invalid_sizes(name: str, size: object, exc: type[Exception]) -> None:
    with pytest.raises(exc):
        Segment.create(name, size)  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", [-1, 0o1000, 0o400, 0o200, "0600", 1.0])
def test_invalid_modes(name: str, mode: object) -> None:
    with pytest.raises(ValueError):
        Segment.create(name, 10, mode=mode)  # type: ignore[arg-type]


def test_open_missing_raises_not_found(name: str) -> None:
    with pytest.raises(shmkit.NotFound):
        Segment.open(name)


def test_wrong_kind_is_a_layout_error(name: str) -> None:
    lock = shmkit.Lock.create(name)
    try:
        with pytest.raises(shmkit.LayoutError, match="is a lock"):
            Segment.open(name)
    finally:
        lock.unlink()
        lock.close()


def _image_path(seg: Segment) -> str:
    return f"/dev/shm/{seg.sysname[1:]}"


def _corrupt(name: str, offset: int, data: bytes) -> None:
    path = f"/dev/shm/{_names.system_name(name)[1:]}"
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


@pytest.mark.parametrize(
    ("offset", "data", "exc"),
    [
        (0, b"NOTSHMKT", shmkit.LayoutError),  # magic
        (8, struct.pack("<H", 99), shmkit.IncompatibleLayout),  # future version
        (14, struct.pack("<H", 0x0401), shmkit.IncompatibleLayout),  # other ABI
        (10, struct.pack("<H", 999), shmkit.LayoutError),  # unknown kind
        (12, struct.pack("<H", 64), shmkit.LayoutError),  # header size
        (16, struct.pack("<I", 12345), shmkit.LayoutError),  # state word
        (20, struct.pack("<I", 0o7777), shmkit.LayoutError),  # mode
        (24, struct.pack("<Q", 1 << 50), shmkit.LayoutError),  # total size > real size
        (32, struct.pack("<I", 10_000), shmkit.LayoutError),  # name length
        (36, struct.pack("<I", 1 << 30), shmkit.LayoutError),  # params length
        (40, struct.pack("<Q", 3), shmkit.LayoutError),  # attach offset
        (48, struct.pack("<Q", 1 << 62), shmkit.LayoutError),  # body offset
        (56, struct.pack("<I", 100), shmkit.LayoutError),  # semaphore count
        (60, struct.pack("<I", 1 << 20), shmkit.LayoutError),  # attach slots
        (64, struct.pack("<q", 1), shmkit.LayoutError),  # creator pid (checksum)
        (108, struct.pack("<I", 0), shmkit.LayoutError),  # checksum
        (112, b"\1", shmkit.LayoutError),  # reserved
        (128, b"Z", shmkit.LayoutError),  # name byte (checksum / name mismatch)
    ],
)
def test_every_corrupted_header_field_is_a_layout_error(
    name: str, offset: int, data: bytes, exc: type[Exception]
) -> None:
    with Segment.create(name, 256) as seg:
        seg.buf[:4] = b"keep"
    _corrupt(name, offset, data)
    try:
        with pytest.raises(exc):
            Segment.open(name, init_timeout=0.05)
    finally:
        assert Segment.remove(name)


def test_truncated_segment_is_a_layout_error(name: str) -> None:
    with Segment.create(name, 1 << 16) as seg:
        path = _image_path(seg)
    os.truncate(path, 4096)  # another process shrank it
    try:
        with pytest.raises(shmkit.LayoutError, match="header says"):
            Segment.open(name)
    finally:
        Segment.remove(name)


def test_foreign_bytes_under_our_name_are_a_layout_error(name: str) -> None:
    sysname = _names.system_name(name)
    shm = posix_ipc.SharedMemory(sysname, posix_ipc.O_CREX, size=4096)
    with mmap.mmap(shm.fd, 4096) as mm:
        mm[:8] = b"\x7fELF\0\0\0\0"
    shm.close_fd()
    try:
        with pytest.raises(shmkit.LayoutError, match="not a shmkit segment"):
            Segment.open(name)
    finally:
        posix_ipc.unlink_shared_memory(sysname)


def test_empty_segment_times_out_not_ready(name: str) -> None:
    """A creator that died before writing anything: NotReady after init_timeout, no hang."""
    sysname = _names.system_name(name)
    shm = posix_ipc.SharedMemory(sysname, posix_ipc.O_CREX, size=0)
    shm.close_fd()
    try:
        with pytest.raises(shmkit.NotReady):
            Segment.open(name, init_timeout=0.1)
    finally:
        posix_ipc.unlink_shared_memory(sysname)


# ------------------------------------------------------------------ permissions (T23, T24)


@pytest.mark.parametrize("umask", [0o000, 0o077])
def test_default_mode_is_exactly_0600_whatever_the_umask(name: str, umask: int) -> None:
    old = os.umask(umask)
    try:
        objs: list[Segment | shmkit.Lock | shmkit.Event | shmkit.Semaphore] = [
            Segment.create(name + "s", 10),
            shmkit.Lock.create(name + "l"),
            shmkit.Event.create(name + "e"),
            shmkit.Semaphore.create(name + "m"),
        ]
    finally:
        os.umask(old)
    for suffix, obj in zip("slem", objs, strict=True):
        sysname = _names.system_name(name + suffix)
        assert stat.S_IMODE(os.stat(f"/dev/shm/{sysname[1:]}").st_mode) == 0o600
        obj.unlink()
        obj.close()


def test_group_mode_is_exact_under_umask_022(name: str) -> None:
    old = os.umask(0o022)
    try:
        seg = Segment.create(name, 10, mode=0o660)
    finally:
        os.umask(old)
    with seg:
        assert stat.S_IMODE(os.stat(_image_path(seg)).st_mode) == 0o660
        seg.unlink()


def test_widened_mode_is_refused_unless_allowed(name: str) -> None:
    with Segment.create(name, 10) as seg:
        os.chmod(_image_path(seg), 0o666)
        with pytest.raises(shmkit.InsecurePermissions):
            Segment.open(name)
        with Segment.open(name, allow_insecure=True) as again:
            assert again.size == 10
        seg.unlink()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give the segment to another uid")
def test_segment_of_another_uid_is_never_adopted(name: str) -> None:
    with Segment.create(name, 10) as seg:
        os.chown(_image_path(seg), 12345, 12345)
        with pytest.raises(shmkit.ForeignOwner, match="uid 12345"):
            Segment.open(name)
        with pytest.raises(shmkit.AlreadyExists):
            Segment.create(name, 10)
        seg.unlink()


# ------------------------------------------------------------------ full /dev/shm (T13)


def _can_unshare() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True, timeout=10, check=False)
    return probe.returncode == 0


@pytest.mark.skipif(not _can_unshare(), reason="needs root and unshare(1) for a private tmpfs")
def test_full_dev_shm_raises_at_create_not_sigbus() -> None:
    code = (
        "import shmkit, os\n"
        "try:\n"
        "    shmkit.Segment.create('big', 4 << 20)\n"
        "except shmkit.ShmFull as e:\n"
        "    print('ShmFull', isinstance(e, OSError), os.listdir('/dev/shm'))\n"
    )
    env = dict(os.environ, PYTHONPATH=os.path.join(os.path.dirname(__file__), "..", "src"))
    out = subprocess.run(
        [
            "unshare",
            "-m",
            "sh",
            "-c",
            'mount -t tmpfs -o size=64k tmpfs /dev/shm && exec "$0" -c "$1"',
            sys.executable,
            code,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ShmFull True []", out.stdout + out.stderr


# ------------------------------------------------------------------ concurrency (T16)


def test_concurrent_create_same_name_one_winner(name: str) -> None:
    code = """
        import sys, time
        import shmkit
        name, start = sys.argv[1], float(sys.argv[2])
        while time.time() < start:
            time.sleep(0.001)
        try:
            seg = shmkit.Segment.create(name, 4096)
            won = "won"
        except shmkit.AlreadyExists:
            won = "lost"
        with shmkit.Segment.open_or_create(name + "-oc", 4096) as oc:
            oc.buf[0] = 1
        print(won, flush=True)
    """
    import time

    start = str(time.time() + 3.0)
    procs = [spawn(code, name, start) for _ in range(16)]
    outs = [finish(p, timeout=60).strip() for p in procs]
    try:
        assert sorted(outs) == ["lost"] * 15 + ["won"]
        with Segment.open(name + "-oc") as oc:
            assert oc.buf[0] == 1
    finally:
        Segment.remove(name)
        Segment.remove(name + "-oc")


def test_header_layout_constants() -> None:
    assert _layout.HEADER.size == 128
    assert _layout.offsets(0, 0, 0)[0] % 64 == 0


def test_opener_waits_for_a_creator_still_initialising(name: str) -> None:
    """#9 item 5: a live creator slow to initialise is waited for; a dead one is not."""
    creator = spawn(
        """
        import sys, shmkit
        q = shmkit.Queue.create(sys.argv[1], 1 << 16)
        print("ready", flush=True)
        sys.stdin.readline()
        q.unlink()
        """,
        name,
        env={"SHMKIT_STOP_AT": "segment.create.before_ready"},
    )
    try:
        wait_stopped(creator)  # stopped between reserving memory and READY
        t0 = time.monotonic()
        with pytest.raises(shmkit.NotReady, match="alive and still initialising"):
            Segment.open(name, init_timeout=0.3)
        assert time.monotonic() - t0 < 2.0
        opened: list[object] = []
        opener = threading.Thread(target=lambda: opened.append(shmkit.Queue.open(name)))
        opener.start()
        opener.join(1.5)  # past the 1 s grace for a creator with no sign of life
        assert opener.is_alive() and not opened  # still waiting, not NotReady
        os.kill(creator.pid, signal.SIGCONT)
        opener.join(10)
        assert not opener.is_alive()
        (q,) = opened
        assert isinstance(q, shmkit.Queue)
        assert read_line(creator) == "ready"
        q.close()
        assert creator.stdin is not None
        creator.stdin.write("\n")
        creator.stdin.flush()
        finish(creator)
    finally:
        if creator.poll() is None:
            os.kill(creator.pid, signal.SIGCONT)
        kill(creator)
        Segment.remove(name)
