"""Open-file-description byte locks: kernel-released on death, probe-able by others.

Used for liveness only (attach slots), never on a per-message hot path: a
lock/unlock pair costs a few microseconds. Classic POSIX (``lockf``/``F_SETLK``)
locks are never used: closing any other fd of the same file drops them.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
from typing import Final

from . import _platform

# struct flock, native layout: short l_type, short l_whence, off_t l_start,
# off_t l_len, pid_t l_pid (l_pid must be 0 for OFD requests).
_FLOCK: Final = struct.Struct("@hhqqi4x")
_SETLK: Final = getattr(fcntl, "F_OFD_SETLK", 37)
_GETLK: Final = getattr(fcntl, "F_OFD_GETLK", 36)


def lock_path(sysname: str) -> str | None:
    """Path of the file behind a system shm name, where the platform shows one."""
    if _platform.SHM_DIR is None:
        return None
    return os.path.join(_platform.SHM_DIR, sysname.lstrip("/"))


def open_for_locks(sysname: str, *, probe_only: bool = False) -> int | None:
    """A fresh open file description of the segment, for OFD locks (None if unsupported).

    ``probe_only`` opens it read-only: enough to ask who holds a lock
    (``is_locked``), not to take one.
    """
    path = lock_path(sysname)
    if path is None or not _platform.OFD_LOCKS:
        return None
    try:
        return os.open(path, (os.O_RDONLY if probe_only else os.O_RDWR) | os.O_CLOEXEC)
    except OSError:
        return None


def try_lock(fd: int, offset: int, length: int = 1) -> bool:
    """Take an exclusive OFD lock on [offset, offset+length); False if someone holds it."""
    try:
        fcntl.fcntl(fd, _SETLK, _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, offset, length, 0))
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True


def unlock(fd: int, offset: int, length: int = 1) -> None:
    """Release an OFD lock taken by this open file description."""
    fcntl.fcntl(fd, _SETLK, _FLOCK.pack(fcntl.F_UNLCK, os.SEEK_SET, offset, length, 0))


def is_locked(fd: int, offset: int, length: int = 1) -> bool:
    """True if another open file description holds a lock on the range."""
    probe = _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, offset, length, 0)
    l_type = _FLOCK.unpack(fcntl.fcntl(fd, _GETLK, probe))[0]
    return bool(l_type != fcntl.F_UNLCK)


def held_by_anyone(sysname: str, offset: int) -> bool:
    """True if some open file description holds a lock on byte ``offset`` of the segment."""
    fd = open_for_locks(sysname, probe_only=True)
    if fd is None:
        return False
    try:
        return is_locked(fd, offset)
    finally:
        os.close(fd)
