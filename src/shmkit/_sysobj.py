"""The system objects behind a name: shm files and named semaphores by system name.

Creating them exactly (a semaphore's mode whatever the umask), reserving a
segment's memory up front, and removing every part of an object. Names
come from ``_names``; the validated header and the handle are ``segment``'s.
"""

from __future__ import annotations

import os

import posix_ipc

from . import _mutex, _names, _platform
from .errors import ShmFull


def reserve(fd: int, total: int, what: str) -> None:
    """Allocate every page now, so a full /dev/shm fails here and not as SIGBUS later."""
    if _platform.FALLOCATE:
        try:
            os.posix_fallocate(fd, 0, total)
        except OSError as exc:
            raise ShmFull(exc.errno, f"{what}: cannot reserve {total} bytes{_room()}") from None
    else:
        os.ftruncate(fd, total)


def _room() -> str:
    """What /dev/shm has left, and what to do about it (for ShmFull messages)."""
    if _platform.SHM_DIR is None:
        return ": shared memory is full"
    try:
        st = os.statvfs(_platform.SHM_DIR)
    except OSError:
        return f": {_platform.SHM_DIR} is full"
    free, size = st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize
    return (
        f": {_platform.SHM_DIR} has {free >> 20} MiB free of {size >> 20} MiB; remove what is "
        "abandoned (`shmkit gc`) or enlarge it (Docker: --shm-size; see docs/operations.md)"
    )


def create_semaphore(sysname: str, mode: int, value: int) -> posix_ipc.Semaphore:
    """Create the named semaphore ``sysname`` (O_EXCL) with exactly ``mode``, whatever the umask.

    sem_open applies the umask, which can only narrow a mode (even the owner's
    bits): create it 0600, then chmod its file (Linux: /dev/shm/sem.<name>) to
    the exact mode, as segments are fchmod-ed. Where semaphores have no file
    (macOS) the mode is what sem_open makes of it.
    """
    if _platform.SHM_DIR is None:
        return posix_ipc.Semaphore(sysname, posix_ipc.O_CREX, mode=mode, initial_value=value)
    sem = posix_ipc.Semaphore(sysname, posix_ipc.O_CREX, mode=0o600, initial_value=value)
    try:
        os.chmod(os.path.join(_platform.SHM_DIR, "sem." + sysname.lstrip("/")), mode)
    except BaseException:
        sem.close()
        unlink_sem(sysname)
        raise
    return sem


def unlink_shm(sysname: str) -> bool:
    try:
        posix_ipc.unlink_shared_memory(sysname)
    except posix_ipc.ExistentialError:
        return False
    return True


def unlink_sem(sysname: str) -> bool:
    try:
        posix_ipc.unlink_semaphore(sysname)
    except posix_ipc.ExistentialError:
        return False
    return True


def unlink_sems(sysname: str, nsems: int) -> int:
    return sum(unlink_sem(_names.semaphore_name(sysname, i)) for i in range(nsems))


def unlink_all(sysname: str, nsems: int) -> bool:
    removed = unlink_shm(sysname)
    unlink_sems(sysname, max(nsems, 0))
    _mutex.remove_lock_files(sysname, 4)
    return removed
