"""A mutex in shared memory that the kernel releases when its holder dies.

Linux: a process-shared, robust pthread mutex stored in the segment and driven
through ctypes. When a holder exits for any reason the kernel marks it
owner-dead and the next locker gets EOWNERDEAD; we make it consistent at once
and report ``OWNER_DIED`` so the caller can repair what it protects. Waits are
timed slices (``pthread_mutex_clocklock`` on CLOCK_MONOTONIC where glibc has it)
so Ctrl-C and deadlines are noticed.

Elsewhere (macOS): ``flock`` on a per-object lock file, which the kernel also
drops on death; waits poll with a capped backoff. Set ``SHMKIT_MUTEX=flock`` to
force this backend on Linux (tests do, so both stay honest).

The non-blocking try uses a ctypes prototype that keeps the GIL (it never
blocks, and skipping the GIL hand-off halves its cost); the timed lock
releases the GIL while it waits.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import mmap
import os
import tempfile
import time
import weakref
from typing import Final

from . import _platform
from .errors import Closed, LayoutError

OK: Final = 0
#: The backend is recorded in the last bytes of the 64-byte mutex area, which no
#: pthread_mutex_t uses (40 bytes on x86-64, 48 on aarch64).
_TAG_AT: Final = 56
_TAGS: Final = {b"PTHR": "pthread", b"FLCK": "flock"}
BUSY: Final = 1
OWNER_DIED: Final = 2

_CLOCK_MONOTONIC: Final = 1
_CLOCK_REALTIME: Final = 0


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def backend() -> str:
    """The mutex backend this process uses: ``"pthread"`` or ``"flock"``."""
    forced = os.environ.get("SHMKIT_MUTEX", "")
    if forced in ("pthread", "flock"):
        if forced == "pthread" and not _platform.ROBUST_MUTEX:
            return "flock"
        return forced
    return "pthread" if _platform.ROBUST_MUTEX else "flock"


if _platform.ROBUST_MUTEX:
    _libc = _platform.LIBC
    assert _libc is not None
    _proto = ctypes.PYFUNCTYPE(ctypes.c_int, ctypes.c_void_p)
    _proto_nogil = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p)
    _trylock = _proto(("pthread_mutex_trylock", _libc))
    _unlock = _proto(("pthread_mutex_unlock", _libc))
    _consistent = _proto(("pthread_mutex_consistent", _libc))
    if _platform.MUTEX_CLOCKLOCK:
        _clocklock = ctypes.CFUNCTYPE(
            ctypes.c_int, ctypes.c_void_p, ctypes.c_int, ctypes.POINTER(_Timespec)
        )(("pthread_mutex_clocklock", _libc))
    _timedlock = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.POINTER(_Timespec))(
        ("pthread_mutex_timedlock", _libc)
    )
    # Fast-path bindings for objects that drive the mutex memory themselves
    # (Queue, Latest): no argtypes, the mutex passed as its ctypes array (by
    # address), GIL kept (these never block): the cheapest call ctypes has,
    # about a quarter less per lock/unlock pair than the methods below. Unlock
    # returns nothing to Python (restype None): turning its int result into
    # a Python int costs as much again as the call itself here.
    _fast = ctypes.PYFUNCTYPE(ctypes.c_int)
    fast_trylock = _fast(("pthread_mutex_trylock", _libc))
    fast_unlock = ctypes.PYFUNCTYPE(None)(("pthread_mutex_unlock", _libc))
    fast_consistent = _fast(("pthread_mutex_consistent", _libc))
    _attr_init = _libc.pthread_mutexattr_init
    _attr_setpshared = _libc.pthread_mutexattr_setpshared
    _attr_setrobust = _libc.pthread_mutexattr_setrobust
    _mutex_init = _libc.pthread_mutex_init
    del _proto_nogil


def _lock_dir() -> str:
    path = os.path.join(tempfile.gettempdir(), f"shmkit-locks-{os.geteuid()}")
    os.makedirs(path, mode=0o700, exist_ok=True)
    return path


def flock_path(sysname: str, index: int) -> str:
    """Lock file of mutex ``index`` of a segment (flock backend)."""
    return os.path.join(_lock_dir(), sysname.lstrip("/") + f".m{index}")


class Mutex:
    """One robust mutex at ``offset`` in a mapping; one instance per handle.

    Create it once with :meth:`initialize` (creator only, before READY), then
    every handle constructs a ``Mutex`` over the same bytes.
    """

    __slots__ = (
        "__weakref__",
        "_addr",
        "_anchor",
        "_fd",
        "_flock_path",
        "_held_flock",
        "_ptr",
        "kind",
    )

    def __init__(self, mm: mmap.mmap, offset: int, sysname: str, index: int) -> None:
        if offset % 64 or offset < 0 or offset + _platform.MUTEX_BYTES > len(mm):
            raise LayoutError(f"mutex offset {offset} is out of bounds or unaligned")
        # Every process must use the backend the creator chose, whatever its environment.
        tag = bytes(mm[offset + _TAG_AT : offset + _TAG_AT + 4])
        if tag not in _TAGS:
            raise LayoutError(f"mutex at {offset} has an unknown backend tag {tag!r}")
        self.kind = _TAGS[tag]
        if self.kind == "pthread" and not _platform.ROBUST_MUTEX:
            raise LayoutError("object uses robust pthread mutexes, which this platform lacks")
        self._fd = -1
        self._held_flock = False
        self._flock_path = ""
        self._anchor: ctypes.Array[ctypes.c_char] | None = None
        self._ptr: ctypes.c_void_p | None = None
        if self.kind == "pthread":
            self._anchor = (ctypes.c_char * _platform.MUTEX_BYTES).from_buffer(mm, offset)
            self._ptr = ctypes.c_void_p(ctypes.addressof(self._anchor))
        else:
            self._flock_path = flock_path(sysname, index)
            self._fd = os.open(self._flock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            _flock_mutexes.add(self)

    @staticmethod
    def initialize(mm: mmap.mmap, offset: int) -> None:
        """Initialise the mutex bytes and record the backend (creator only, before READY)."""
        kind = backend()
        tag = next(t for t, k in _TAGS.items() if k == kind)
        mm[offset + _TAG_AT : offset + _TAG_AT + 4] = tag
        if kind != "pthread":
            return
        anchor = (ctypes.c_char * _platform.MUTEX_BYTES).from_buffer(mm, offset)
        attr = ctypes.create_string_buffer(64)
        try:
            _attr_init(attr)
            _attr_setpshared(attr, 1)  # PTHREAD_PROCESS_SHARED
            _attr_setrobust(attr, 1)  # PTHREAD_MUTEX_ROBUST
            rc = _mutex_init(ctypes.c_void_p(ctypes.addressof(anchor)), attr)
            if rc:
                raise OSError(rc, f"pthread_mutex_init: {os.strerror(rc)}")
        finally:
            del anchor

    def try_acquire(self) -> int:
        """OK, BUSY or OWNER_DIED (then held by us, already made consistent)."""
        if self._ptr is not None:
            rc = _trylock(self._ptr)
            if rc == 0:
                return OK
            if rc == errno.EBUSY:
                return BUSY
            return self._after_error(rc)
        if self._fd < 0:
            raise Closed("the mutex's handle is closed")
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return BUSY
        self._held_flock = True
        return OK

    def acquire_slice(self, seconds: float) -> int:
        """Wait up to ``seconds`` (a short slice) for the mutex. OK, BUSY or OWNER_DIED."""
        ptr = self._ptr
        if ptr is None:
            end = time.monotonic() + seconds
            pause = 50e-6
            while True:
                got = self.try_acquire()
                if got != BUSY or time.monotonic() >= end:
                    return got
                time.sleep(pause)
                pause = min(pause * 2, 0.005)
        ts = _Timespec()
        if _platform.MUTEX_CLOCKLOCK:
            deadline = time.clock_gettime(time.CLOCK_MONOTONIC) + seconds
            ts.tv_sec = int(deadline)
            ts.tv_nsec = int((deadline - ts.tv_sec) * 1e9)
            rc = _clocklock(ptr, _CLOCK_MONOTONIC, ctypes.byref(ts))
        else:
            deadline = time.time() + seconds
            ts.tv_sec = int(deadline)
            ts.tv_nsec = int((deadline - ts.tv_sec) * 1e9)
            rc = _timedlock(ptr, ctypes.byref(ts))
        if rc == 0:
            return OK
        if rc in (errno.ETIMEDOUT, errno.EINTR, errno.EAGAIN):
            return BUSY
        return self._after_error(rc)

    def _after_error(self, rc: int) -> int:
        assert self._ptr is not None
        if rc == errno.EOWNERDEAD:
            _consistent(self._ptr)
            return OWNER_DIED
        if rc == errno.ENOTRECOVERABLE:
            raise LayoutError("shared mutex is not recoverable (corrupt segment)")
        raise LayoutError(f"shared mutex error: {os.strerror(rc)}")

    def release(self) -> None:
        """Release the mutex (must be held by this thread/handle)."""
        if self._ptr is not None:
            _unlock(self._ptr)
            return
        if self._held_flock:
            self._held_flock = False
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        """Stop using the mutex (the shared mutex itself is untouched).

        The buffer anchor is kept: another thread may still be blocked inside
        ``acquire_slice`` on this memory, and the anchor keeps it mapped until
        this object is garbage-collected.
        """
        self._ptr = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def after_fork_in_child(self) -> None:
        """A flock held by the parent must not outlive it through our copy of the fd."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = os.open(self._flock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            self._held_flock = False


_flock_mutexes: weakref.WeakSet[Mutex] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for mutex in list(_flock_mutexes):
        mutex.after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def remove_lock_files(sysname: str, count: int) -> None:
    """Remove a segment's flock files (flock backend)."""
    for index in range(count):
        try:
            os.unlink(flock_path(sysname, index))
        except OSError:
            pass
