"""The one wait loop: check once, spin briefly, then block in short slices.

Every blocking call in shmkit goes through :func:`wait`. Deadlines are on
``time.monotonic()``; a slice is at most :data:`SLICE` seconds, so Ctrl-C, a
handle closed by another thread, and a dead peer are noticed within one slice.
posix_ipc's SignalError (EINTR) is retried; KeyboardInterrupt and anything a
signal handler raises propagate.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Final, TypeVar

import posix_ipc

from . import _platform

T = TypeVar("T")

#: Longest time one blocking system call may sleep.
SLICE: Final = 0.05
#: Default time spent re-checking before the first blocking call (seconds).
SPIN: Final = 50e-6


def check_spin(spin: object) -> float:
    """Validate a ``spin=`` budget: a number of seconds from 0 to 1."""
    if isinstance(spin, bool) or not isinstance(spin, (int, float)):
        raise TypeError(f"spin must be a number of seconds, not {type(spin).__name__}")
    if not 0 <= spin <= 1.0:
        raise ValueError(f"spin must be between 0 and 1 second, not {spin!r}")
    return float(spin)


def check_timeout(timeout: object) -> float | None:
    """Validate a ``timeout=`` argument: None (forever), or a finite or infinite number >= 0."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be a number or None, not {type(timeout).__name__}")
    value = float(timeout)
    if math.isnan(value) or value < 0:
        raise ValueError(f"timeout must be >= 0 or None, not {timeout!r}")
    return None if math.isinf(value) else value


def wait(
    attempt: Callable[[], T | None],
    block: Callable[[float], T | None],
    timeout: float | None,
    *,
    spin: float = SPIN,
    on_slice: Callable[[], None] | None = None,
) -> T | None:
    """Return ``attempt()``'s first non-None result, or None when ``timeout`` runs out.

    ``block(seconds)`` sleeps at most ``seconds`` waiting for a change (it may
    return a result itself, e.g. a semaphore it acquired). ``on_slice`` runs
    between slices and may raise (closed handle, dead peer).
    """
    got = attempt()
    if got is not None or timeout == 0:
        return got
    now = time.monotonic()
    end = math.inf if timeout is None else now + timeout
    if spin > 0:
        spin_end = time.perf_counter() + min(spin, end - now)
        while time.perf_counter() < spin_end:
            got = attempt()
            if got is not None:
                return got
    while True:
        remaining = end - time.monotonic()
        if remaining <= 0:
            return attempt()
        try:
            got = block(min(remaining, SLICE))
        except posix_ipc.SignalError:
            got = None  # EINTR: recompute the remaining time and go on
        if got is not None:
            return got
        if on_slice is not None:
            on_slice()
        got = attempt()
        if got is not None:
            return got


def sem_try(sem: posix_ipc.Semaphore) -> bool | None:
    """Take ``sem`` without blocking: True, or None if it is zero."""
    try:
        sem.acquire(0)
    except posix_ipc.BusyError:
        return None
    return True


def sem_block(sem: posix_ipc.Semaphore, seconds: float) -> bool | None:
    """Wait up to ``seconds`` for ``sem``: True if taken, None on timeout.

    Where sem_timedwait is missing (macOS) a positive timeout would block
    forever, so this polls with a short sleep instead.
    """
    if _platform.SEM_TIMEDWAIT:
        try:
            sem.acquire(seconds)
        except posix_ipc.BusyError:
            return None
        return True
    end = time.monotonic() + seconds
    pause = 100e-6
    while True:
        if sem_try(sem):
            return True
        if time.monotonic() >= end:
            return None
        time.sleep(pause)
        pause = min(pause * 2, 0.005)


def sem_wait(
    sem: posix_ipc.Semaphore,
    timeout: float | None,
    *,
    spin: float = SPIN,
    on_slice: Callable[[], None] | None = None,
) -> bool:
    """Acquire ``sem`` within ``timeout`` (see :func:`wait`); False on timeout."""
    return bool(
        wait(
            lambda: sem_try(sem), lambda s: sem_block(sem, s), timeout, spin=spin, on_slice=on_slice
        )
    )
