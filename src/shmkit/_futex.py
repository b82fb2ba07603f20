"""Wake-up hints on a 32-bit word in shared memory: Linux futex, polling elsewhere.

A futex wait sleeps only while the word still holds the value the caller
last saw (the kernel compares atomically), and one wake call wakes *every*
sleeper, in any process that maps the word. That makes it the broadcast
doorbell a one-writer/many-readers ring needs; a counting semaphore wakes one
waiter per post and would pile up posts nobody takes.

Everything here is a hint: callers re-check shared state after every return,
sleep in slices of at most ``_wait.SLICE``, and stay correct if a wake-up is
lost or spurious. Where there is no futex (macOS, unknown Linux ABIs) ``wait``
polls with a short capped sleep instead.

:func:`fence` is a full memory barrier on x86-64 (a locked instruction inside
CPython's lock), costing about 0.2 µs; see ``broadcast`` for why it is needed.
"""

from __future__ import annotations

import ctypes
import mmap
import platform
import threading
import time
from typing import Final

from . import _platform

# syscall(2) numbers of futex per machine (Linux); absent -> polling fallback.
_SYS_FUTEX: Final = {"x86_64": 202, "amd64": 202, "aarch64": 98, "arm64": 98, "riscv64": 98}
_FUTEX_WAIT: Final = 0  # shared (not FUTEX_PRIVATE_FLAG): the word lives in a shared mapping
_FUTEX_WAKE: Final = 1
_WAKE_ALL: Final = 0x7FFFFFFF

_MACHINE: Final = platform.machine().lower()
#: True when futex wait/wake is available (Linux on a known ABI).
AVAILABLE: Final[bool] = _platform.LINUX and _platform.LIBC is not None and _MACHINE in _SYS_FUTEX
#: Total store order: see _platform.TSO (kept here as the name broadcast uses).
TSO: Final[bool] = _platform.TSO


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


if AVAILABLE:
    assert _platform.LIBC is not None
    _NR: Final = _SYS_FUTEX[_MACHINE]
    _argtypes = (
        ctypes.c_long,
        ctypes.c_void_p,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.c_uint,
    )
    # Wake never blocks: keep the GIL (half the cost). Wait releases it.
    _wake_call = ctypes.PYFUNCTYPE(ctypes.c_long, *_argtypes)(("syscall", _platform.LIBC))
    _wait_call = ctypes.CFUNCTYPE(ctypes.c_long, *_argtypes, use_errno=True)(
        ("syscall", _platform.LIBC)
    )

_fence_lock = threading.Lock()
_fence_acquire = _fence_lock.acquire
_fence_release = _fence_lock.release


def fence() -> None:
    """Full memory barrier on x86-64 (acquire/release of a process-local lock)."""
    _fence_acquire()
    _fence_release()


class Word:
    """The address of one aligned 32-bit word in a mapping, for wait/wake.

    Holding a ``Word`` pins the mapping (a ctypes export); call :meth:`close`
    before closing the mmap.
    """

    __slots__ = ("_anchor", "addr")

    def __init__(self, mm: mmap.mmap, offset: int) -> None:
        if offset % 4 or offset + 4 > len(mm):
            raise ValueError(f"futex word offset {offset} is unaligned or out of bounds")
        self._anchor: ctypes.c_uint32 | None = None
        self.addr = 0
        if AVAILABLE:
            self._anchor = ctypes.c_uint32.from_buffer(mm, offset)
            self.addr = ctypes.addressof(self._anchor)

    def wake_all(self) -> None:
        """Wake every process sleeping in :meth:`wait` on this word."""
        if self.addr:
            _wake_call(_NR, self.addr, _FUTEX_WAKE, _WAKE_ALL, None, None, 0)

    def wait(self, expected: int, seconds: float) -> None:
        """Sleep up to ``seconds`` unless the word no longer equals ``expected``.

        Returns on a wake, a timeout, a changed value or a signal; the caller
        re-checks its condition in every case.
        """
        if self.addr:
            ts = _Timespec(int(seconds), int((seconds % 1.0) * 1e9))
            _wait_call(
                _NR, self.addr, _FUTEX_WAIT, expected & 0xFFFFFFFF, ctypes.addressof(ts), None, 0
            )
        else:
            time.sleep(min(seconds, 0.002))

    def close(self) -> None:
        """Drop the export so the mapping can be closed."""
        self._anchor = None
        self.addr = 0
