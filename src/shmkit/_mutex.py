"""A mutex in shared memory that the kernel releases when its holder dies.

Linux: a process-shared, robust pthread mutex stored in the segment, driven by
the C core (``_core.Mutex``: every return code checked, waits on
CLOCK_MONOTONIC with the GIL released, Ctrl-C noticed between 50 ms slices).
When a holder exits for any reason the kernel marks it owner-dead and the next
locker gets EOWNERDEAD; we make it consistent at once and report
``OWNER_DIED`` so the caller can repair what it protects.

Elsewhere (macOS): ``flock`` on a per-object lock file, which the kernel also
drops on death, plus a process-local mutex so threads sharing a handle
exclude each other too. Set ``SHMKIT_MUTEX=flock`` to force this backend on
Linux (tests do, so both stay honest).

``release()`` by a thread that does not hold the mutex raises ``NotOwner``.
"""

from __future__ import annotations

import mmap
import os
import weakref
from collections.abc import Callable
from typing import Any, Final

from . import _core, _platform, _wait
from .errors import Closed, ForeignOwner, LayoutError

OK: Final = _core.OK
#: The backend is recorded in the last bytes of the 64-byte mutex area, which no
#: pthread_mutex_t uses (40 bytes on x86-64, 48 on aarch64; checked at compile time).
_TAG_AT: Final = 56
_TAGS: Final = {b"PTHR": "pthread", b"FLCK": "flock"}
BUSY: Final = _core.BUSY
OWNER_DIED: Final = _core.OWNER_DIED


def backend() -> str:
    """The mutex backend this process uses: ``"pthread"`` or ``"flock"``."""
    forced = os.environ.get("SHMKIT_MUTEX", "")
    if forced in ("pthread", "flock"):
        if forced == "pthread" and not _platform.ROBUST_MUTEX:
            return "flock"
        return forced
    return "pthread" if _platform.ROBUST_MUTEX else "flock"


def _lock_dir() -> str:
    # A fixed directory, never $TMPDIR: every process of the user must find
    # the same lock file whatever its environment.
    path = os.path.join("/tmp", f"shmkit-locks-{os.geteuid()}")
    os.makedirs(path, mode=0o700, exist_ok=True)
    return path


def check_same_user(sysname: str) -> None:
    """Refuse another user's object whose mutexes are flock files.

    Lock files live in a directory private to each uid, so two users would
    lock different files and exclude nobody: such an object cannot be
    shared across users (robust pthread mutexes, Linux's default, can).
    """
    path = None if _platform.SHM_DIR is None else os.path.join(_platform.SHM_DIR, sysname[1:])
    try:
        owner = os.stat(path).st_uid if path else os.geteuid()
    except OSError:
        return
    if owner != os.geteuid():
        raise ForeignOwner(
            f"{sysname}: its locks are flock files, private to each user (SHMKIT_MUTEX=flock, "
            f"or no robust mutexes), so uid {os.geteuid()} cannot share it with its owner, "
            f"uid {owner}"
        )


def flock_path(sysname: str, index: int) -> str:
    """Lock file of mutex ``index`` of a segment (flock backend)."""
    return os.path.join(_lock_dir(), sysname.lstrip("/") + f".m{index}")


def kind_at(mm: mmap.mmap, offset: int) -> str:
    """The backend recorded in the mutex area at ``offset``: ``"pthread"`` or ``"flock"``.

    Every process uses the backend the creator chose, whatever its environment.
    """
    if offset % 64 or offset < 0 or offset + _platform.MUTEX_BYTES > len(mm):
        raise LayoutError(f"mutex offset {offset} is out of bounds or unaligned")
    tag = bytes(mm[offset + _TAG_AT : offset + _TAG_AT + 4])
    if tag not in _TAGS:
        raise LayoutError(f"mutex at {offset} has an unknown backend tag {tag!r}")
    kind = _TAGS[tag]
    if kind == "pthread" and not _platform.ROBUST_MUTEX:
        raise LayoutError("object uses robust pthread mutexes, which this platform lacks")
    return kind


class Mutex:
    """One robust mutex at ``offset`` in a mapping; one instance per handle.

    Create it once with :meth:`initialize` (creator only, before READY), then
    every handle constructs a ``Mutex`` over the same bytes.
    """

    __slots__ = ("__weakref__", "_core", "_fd", "_flock_path", "_region", "kind")

    def __init__(self, mm: mmap.mmap, offset: int, sysname: str, index: int) -> None:
        self.kind = kind_at(mm, offset)
        self._region: _core.Region | None = _core.Region(mm)
        self._flock_path = ""
        self._fd = -1
        if self.kind == "pthread":
            self._core = _core.Mutex(self._region, offset)
        else:
            check_same_user(sysname)
            self._flock_path = flock_path(sysname, index)
            self._fd = os.open(self._flock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            self._core = _core.Mutex(self._region, offset, self._fd)
            reopen_after_fork(self)

    @staticmethod
    def initialize(mm: mmap.mmap, offset: int) -> None:
        """Initialise the mutex bytes and record the backend (creator only, before READY)."""
        kind = backend()
        tag = next(t for t, k in _TAGS.items() if k == kind)
        mm[offset + _TAG_AT : offset + _TAG_AT + 4] = tag
        if kind != "pthread":
            return
        region = _core.Region(mm)
        try:
            _core.Mutex.init(region, offset)
        finally:
            region.close()

    @property
    def core(self) -> _core.Mutex:
        """The C mutex (``with m.core:`` holds it for a block no signal can split)."""
        return self._core

    def try_acquire(self) -> int:
        """OK, BUSY or OWNER_DIED (then held by us, already made consistent)."""
        if self._region is None:
            raise Closed("the mutex's handle is closed")
        return self._core.try_acquire()

    def acquire_slice(self, seconds: float) -> int:
        """Wait up to ``seconds`` (a short slice) for the mutex. OK, BUSY or OWNER_DIED."""
        if self._region is None:
            raise Closed("the mutex's handle is closed")
        return self._core.acquire(max(0.0, seconds), spin=False)

    def acquire_within(self, timeout: float | None, on_slice: Callable[[], None]) -> int | None:
        """Wait up to ``timeout`` for the mutex: OK or OWNER_DIED, None when time ran out.

        The one wait loop (``_wait.wait``): a try, then slices with
        ``on_slice`` (e.g. a closed-handle check) between them.
        """

        def attempt() -> int | None:
            got = self.try_acquire()
            return None if got == BUSY else got

        def block(seconds: float) -> int | None:
            got = self.acquire_slice(seconds)
            return None if got == BUSY else got

        return _wait.wait(attempt, block, timeout, on_slice=on_slice)

    def release(self) -> None:
        """Release the mutex (NotOwner unless this thread holds it)."""
        if self._region is None:
            return
        self._core.release()

    def close(self) -> None:
        """Stop using the mutex (the shared mutex itself is untouched).

        The region stays pinned while another thread is still blocked in a
        wait on this memory; the C core releases it when that wait returns.
        """
        region, self._region = self._region, None
        if region is not None:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
            region.close()

    def _after_fork_in_child(self) -> None:
        """A flock held by the parent must not outlive it through our copy of the fd.

        The child needs its own open file description of the *same* lock file.
        Where ``/proc`` exists we reopen the inherited descriptor through it,
        which finds the file even after ``unlink()`` removed its path (reopening
        by path would create a new file that excludes nobody).
        """
        if self._flock_path and self._region is not None:
            old, self._fd = self._fd, reopen(self._fd, self._flock_path)
            self._core.set_fd(self._fd)
            self._core.forget()
            if old >= 0:
                os.close(old)


def reopen(fd: int, path: str) -> int:
    """A new open file description of the file behind ``fd`` (falls back to ``path``)."""
    try:
        return os.open(f"/proc/self/fd/{fd}", os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)


#: Holders of a flock descriptor (a Mutex, a sync.Lock): in a forked child each
#: reopens its own (``_after_fork_in_child``), so parent and child exclude each other.
_flock_holders: weakref.WeakSet[Any] = weakref.WeakSet()


def reopen_after_fork(holder: Any) -> None:
    """Run ``holder._after_fork_in_child()`` in every child forked while it lives."""
    _flock_holders.add(holder)


def _after_fork_in_child() -> None:
    for holder in list(_flock_holders):
        holder._after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def remove_lock_files(sysname: str, count: int) -> None:
    """Remove a segment's flock files (flock backend).

    Without ``/proc`` (macOS) the files stay: a handle forked after the unlink
    could not reopen a removed file, and an empty file in the lock directory
    is cheaper than a lock that excludes nobody.
    """
    if not os.path.isdir("/proc/self/fd"):
        return
    for index in range(count):
        try:
            os.unlink(flock_path(sysname, index))
        except OSError:
            pass
