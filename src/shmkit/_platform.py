"""Platform capabilities, probed once. Code and tests gate on these names only."""

from __future__ import annotations

import fcntl
import mmap
import os
import platform
import sys
from typing import Final

import posix_ipc

from . import _core

LINUX: Final = sys.platform.startswith("linux")
MACOS: Final = sys.platform == "darwin"

#: sem_timedwait exists. Without it (macOS) a timeout > 0 would block forever,
#: so waits poll with acquire(0) and a capped sleep instead.
SEM_TIMEDWAIT: Final[bool] = bool(posix_ipc.SEMAPHORE_TIMEOUT_SUPPORTED)
#: sem_getvalue exists (not on macOS).
SEM_GETVALUE: Final[bool] = bool(posix_ipc.SEMAPHORE_VALUE_SUPPORTED)
SEM_VALUE_MAX: Final[int] = int(posix_ipc.SEMAPHORE_VALUE_MAX)

PAGE_SIZE: Final = mmap.PAGESIZE

#: Total store order (x86): stores become visible in program order and loads are
#: not reordered with older loads. Weaker CPUs (arm64) get per-record checksums.
TSO: Final[bool] = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686", "x86")

#: Where POSIX shared memory is visible as files (Linux). None where it is not (macOS).
SHM_DIR: Final[str | None] = "/dev/shm" if LINUX and os.path.isdir("/dev/shm") else None

#: Open-file-description locks: released by the kernel when the holder dies,
#: never dropped by closing an unrelated fd (unlike classic POSIX locks).
OFD_LOCKS: Final[bool] = hasattr(fcntl, "F_OFD_SETLK") and SHM_DIR is not None

#: posix_fallocate reserves tmpfs pages up front, so a full /dev/shm fails at
#: create() instead of raising SIGBUS on first touch.
FALLOCATE: Final[bool] = hasattr(os, "posix_fallocate") and LINUX

#: Portable limit for system names, including the leading slash: macOS allows
#: 31 bytes (PSHMNAMLEN); we use 30 everywhere so a name works on both.
SYSTEM_NAME_MAX: Final = 30


#: Process-shared robust pthread mutexes (glibc, musl): the kernel marks the
#: mutex owner-dead when its holder exits, and the next locker is told. Known
#: from the C core's build against the real headers (linked with libpthread,
#: so glibc < 2.34 is no different), never guessed through ctypes.
ROBUST_MUTEX: Final[bool] = LINUX and bool(_core.HAVE_ROBUST)
#: Bytes reserved in shared memory for one pthread_mutex_t (40 on x86-64 glibc,
#: 48 on aarch64); 64 keeps it alone on a cache line.
MUTEX_BYTES: Final = 64
