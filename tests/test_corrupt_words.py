"""Issue 9 items 6-7: impossible words read from shared memory and bad arguments
give shmkit's own errors (or an honest "unknown"), never a builtin exception."""

from __future__ import annotations

import struct
from contextlib import closing
from typing import Any

import pytest

import shmkit
from shmkit import Lock, Queue, Segment, Semaphore, _platform, cli, registry
from shmkit._process import Liveness
from shmkit.errors import Closed, LayoutError

from .helpers import attach_offset, header_field, poke

IMPOSSIBLE = [2**31, 2**40, 2**62]


@pytest.mark.parametrize("pid", IMPOSSIBLE)
def test_an_impossible_attach_pid_is_unknown_and_ls_and_gc_go_on(name: str, pid: int) -> None:
    q = Queue.create(name + "q", 4096)
    lock = Lock.create(name + "l")
    seg = Segment.create(name + "s", 4096)
    try:
        for which in (name + "q", name + "l", name + "s"):
            # a second record, slot 5, with no process behind it
            poke(which, attach_offset(which) + 5 * 32, struct.pack("<qq", pid, 1))
        with closing(Segment.open(name + "s")) as again:
            atts = {a.slot: a for a in again.attachments()}
            assert atts[5].liveness is Liveness.UNKNOWN
        q.put(b"x")
        assert q.get(timeout=1) == b"x"
        q.statistics()
        entries = {e.name: e for e in registry.discover() if e.name.startswith(name)}
        assert set(entries) == {name + "q", name + "l", name + "s"}
        assert all(e.attached_unknown == 1 for e in entries.values())
        assert cli.main(["ls"]) == 0
        assert cli.main(["ls", "--json"]) == 0
        # unknown is never acted on: gc keeps them all
        gone = {e.name for e in registry.gc(act=True, grace=0) if e.name.startswith(name)}
        assert gone == set()
    finally:
        q.close()
        lock.close()
        seg.close()
        for suffix in "qls":
            Segment.remove(name + suffix)


@pytest.mark.parametrize("pid", IMPOSSIBLE)
def test_an_impossible_lock_holder_pid_is_a_layout_error(name: str, pid: int) -> None:
    with closing(Lock.create(name)) as lock:
        try:
            rec = header_field(name, 48, 8) + 64  # body_off + the owner record
            poke(name, rec, struct.pack("<qq", 1, pid))  # HELD, by an impossible pid
            assert lock.locked
            with pytest.raises(LayoutError, match="impossible holder pid"):
                lock.holder()
            # the mutex itself is free: the next holder is told, and repairs
            assert lock.acquire(timeout=1)
            assert lock.owner_died
            lock.mark_consistent()
            lock.release()
            assert lock.holder() is None
        finally:
            lock.unlink()


def test_holder_on_a_closed_lock_raises_closed(name: str) -> None:
    lock = Lock.create(name)
    lock.unlink()
    lock.close()
    with pytest.raises(Closed):
        lock.holder()
    with pytest.raises(Closed):
        lock.acquire(timeout=0)


@pytest.mark.parametrize("n", [0, -1, True, 1.5, "2", 2**40])
def test_semaphore_release_refuses_bad_counts_and_posts_nothing(name: str, n: object) -> None:
    with closing(Semaphore.create(name, value=3)) as sem:
        try:
            with pytest.raises((ValueError, TypeError)):
                sem.release(n)  # type: ignore[arg-type]
            if _platform.SEM_GETVALUE:
                assert sem.value == 3
        finally:
            sem.unlink()


@pytest.mark.skipif(not _platform.SEM_GETVALUE, reason="sem_getvalue is missing (macOS)")
def test_semaphore_release_past_the_maximum_is_refused_at_once(name: str) -> None:
    with closing(Semaphore.create(name, value=5)) as sem:
        try:
            with pytest.raises(ValueError, match="maximum"):
                sem.release(_platform.SEM_VALUE_MAX)
            assert sem.value == 5
            sem.release(2)
            assert sem.value == 7
        finally:
            sem.unlink()


def test_shmkit_exports_the_error_used_here() -> None:
    assert issubclass(shmkit.errors.NotOwner, RuntimeError)


@pytest.mark.parametrize(
    ("what", "flip"),
    [
        ("32-bit pointers", lambda abi: (abi & 0xFF) | (4 << 8)),
        ("another pthread_mutex_t size (aarch64 beside emulated x86)", lambda abi: abi ^ (3 << 1)),
        ("another C library (musl beside glibc)", lambda abi: abi ^ (1 << 5)),
        ("big-endian", lambda abi: abi ^ 1),
    ],
)
@pytest.mark.parametrize("kind", ["lock", "queue", "latest"])
def test_an_object_of_another_abi_is_refused(name: str, what: str, flip: object, kind: str) -> None:
    """Issue 9 item 8: what every process must agree on is recorded; a mismatch is refused."""
    from shmkit import Latest, _layout

    if kind == "lock":
        Lock.create(name).close()
    elif kind == "queue":
        Queue.create(name, 4096).close()
    else:
        Latest.create(name, size=64).close()
    opener = {"lock": Lock.open, "queue": Queue.open, "latest": Latest.open}[kind]
    try:
        other = flip(_layout.ABI)  # type: ignore[operator]
        assert other != _layout.ABI
        poke(name, 14, struct.pack("<H", other))
        with pytest.raises(shmkit.IncompatibleLayout, match="ABI") as info:
            opener(name)  # type: ignore[operator]
        assert info.value.found == other and info.value.expected == _layout.ABI
    finally:
        Segment.remove(name)


def test_an_object_of_another_abi_is_listed_incompatible_and_gc_leaves_it(name: str) -> None:
    """A live object made by a process of another ABI (a 32-bit or emulated one, musl
    beside glibc) is not 'corrupt': ls says 'incompatible' and gc never removes it
    (found when arm64 processes under qemu-user shared /dev/shm with x86-64 ones)."""
    from shmkit import Latest, _layout

    Latest.create(name, size=64).close()
    try:
        poke(name, 14, struct.pack("<H", _layout.ABI ^ 0x0006))
        entry = registry.find(name)
        assert entry is not None
        assert entry.state == "incompatible" and "ABI" in entry.error
        assert entry.creator == "alive" and not entry.abandoned
        assert all(e.name != name for e in registry.gc(act=False, grace=0))
        assert all(e.name != name for e in registry.gc(act=False, grace=0, force=True))
        assert registry.find(name) is not None
    finally:
        Segment.remove(name)


def test_a_params_layout_of_another_version_is_incompatible_not_corrupt() -> None:
    """Every kind refuses another params version with IncompatibleLayout (a LayoutError)."""
    from shmkit._shm import broadcast_ring, dict_table, latest_slot

    modules: tuple[Any, ...] = (broadcast_ring, latest_slot, dict_table)
    for module in modules:
        bad = struct.pack("<I", module.PARAMS_VERSION + 1) + bytes(module.PARAMS.size - 4)
        with pytest.raises(shmkit.IncompatibleLayout) as info:
            module.parse_params(bad, 1 << 20)
        assert info.value.found == module.PARAMS_VERSION + 1
        assert info.value.expected == module.PARAMS_VERSION
