"""The exact mode of every part of every object, whatever the umask (R6).

Each object is a segment file and zero or more named semaphores (files
``/dev/shm/sem.<system name>.sN`` on Linux). Every one of them must carry
exactly the mode the creator asked for: the umask may not narrow it (the
README promises the mode "exactly, whatever the umask") and nothing may be
wider than asked.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

import shmkit
from shmkit import Broadcast, Event, Latest, Lock, Queue, Segment, Semaphore, SharedArray

from .helpers import SHM_DIR, sem_paths, shm_path

pytestmark = [
    pytest.mark.timeout(30),
    pytest.mark.skipif(not os.path.isdir(SHM_DIR), reason="needs /dev/shm"),
]

#: kind -> (create(name, mode), how many semaphores it has)
KINDS: dict[str, tuple[Callable[[str, int], Any], int]] = {
    "segment": (lambda n, m: Segment.create(n, 4096, mode=m), 0),
    "lock": (lambda n, m: Lock.create(n, mode=m), 0),
    "semaphore": (lambda n, m: Semaphore.create(n, 1, mode=m), 1),
    "event": (lambda n, m: Event.create(n, mode=m), 1),
    # Queue, Broadcast and Latest wait on futex words in their segment: one part each.
    "queue": (lambda n, m: Queue.create(n, 4096, mode=m), 0),
    "broadcast": (lambda n, m: Broadcast.create(n, slot_size=64, slots=4, mode=m), 0),
    "latest": (lambda n, m: Latest.create(n, size=64, mode=m), 0),
    "array": (lambda n, m: SharedArray.create(n, (4, 4), "f8", mode=m), 0),
}


@contextmanager
def _umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("mode", [0o600, 0o660])
@pytest.mark.parametrize("umask", [0o000, 0o022, 0o077])
@pytest.mark.parametrize("kind", KINDS)
def test_every_part_has_exactly_the_requested_mode(
    name: str, kind: str, umask: int, mode: int
) -> None:
    create, nsems = KINDS[kind]
    with _umask(umask):
        obj = create(name, mode)
    try:
        parts = [shm_path(name), *sem_paths(name)]
        assert len(parts) == 1 + nsems, parts
        modes = {os.path.basename(p): _mode(p) for p in parts}
        assert modes == dict.fromkeys(modes, mode), f"umask {umask:#o}: {modes}"
    finally:
        obj.close()
        Segment.remove(name)


@pytest.mark.parametrize("mode", [0o600, 0o660])
@pytest.mark.parametrize("umask", [0o000, 0o022, 0o077])
def test_verbatim_semaphore_and_raw_segment_have_exactly_the_requested_mode(
    name: str, umask: int, mode: int
) -> None:
    """Raw mode (``"/name"``, plain posix_ipc objects) keeps the same promise."""
    sysname = f"/{name}"
    with _umask(umask):
        sem = Semaphore.create(sysname + "-sem", 0, mode=mode)
        seg = Segment.create(sysname, 4096, mode=mode)
    try:
        assert _mode(os.path.join(SHM_DIR, f"sem.{name}-sem")) == mode
        assert _mode(os.path.join(SHM_DIR, name)) == mode
    finally:
        sem.close()
        sem.unlink()
        seg.close()
        seg.unlink()


def test_the_mode_check_reads_the_real_semaphore_file(name: str) -> None:
    """The control case: the files the tests above stat are the object's (a chmod shows)."""
    with Event.create(name, mode=0o600) as ev:
        (path,) = sem_paths(name)
        os.chmod(path, 0o666)
        assert _mode(path) == 0o666
        ev.unlink()
    assert not os.path.exists(path)


def test_the_kinds_cover_every_public_object() -> None:
    """A new object kind must be added to KINDS above (its semaphores need the same care)."""
    public = {
        shmkit.Segment,
        shmkit.Lock,
        shmkit.Semaphore,
        shmkit.Event,
        shmkit.Queue,
        shmkit.Broadcast,
        shmkit.Latest,
        shmkit.SharedArray,
    }
    assert len(KINDS) == len(public)
    kinds = {k.name.lower() for k in shmkit.Kind} - {"dict"}
    assert kinds == set(KINDS)
