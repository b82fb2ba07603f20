"""Named cross-process Semaphore, Lock and Event.

All three are opened by name from unrelated processes, pickle to their name,
and take ``timeout=`` on every wait (None waits forever, 0 checks once).

As in ``threading`` and ``posix_ipc``, ``with lock:`` and ``with sem:`` hold
the object for the block; ``close()`` (or ``contextlib.closing``) detaches the
handle. ``with event:`` detaches on exit, like the other shmkit objects.

``Lock`` survives its holder's death: ownership is a robust mutex the kernel
releases when the holder exits (see ``_mutex``), and an owner record in shared
memory tells the next holder whether the previous one died *inside* its
critical section::

    lock = Lock.open_or_create("accounts")
    with lock.hold(timeout=5):           # LockTimeout names the holder if not in time
        if lock.owner_died:              # the last holder was killed mid-update
            repair_accounts()
            lock.mark_consistent()       # else the lock is poisoned on release
        update_accounts()

A live holder is never robbed: a waiter that runs out of time gets
``LockTimeout`` naming the holder's pid and how long it has held the lock.
"""

from __future__ import annotations

import os
import struct
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import ClassVar, Final

import posix_ipc

from . import _core, _mutex, _names, _opening, _platform, _process, _wait
from ._handle import Handle
from ._layout import Kind
from ._sysobj import create_semaphore
from .errors import (
    Closed,
    LayoutError,
    LockTimeout,
    Timeout,
    translate,
)
from .segment import Segment, open_or_create

__all__ = ["Event", "Lock", "Semaphore"]


class _Named(Handle):
    """A named synchronisation object: a Segment holding its state and semaphores."""

    KIND: ClassVar[Kind]


# --------------------------------------------------------------------- Semaphore

_SEM_PARAMS: Final = struct.Struct("<I")


class Semaphore(_Named):
    """A named counting semaphore.

    With a shmkit name it is listed by ``shmkit ls``; with a verbatim name
    (``"/name"``) it is a plain POSIX semaphore that ``posix_ipc.Semaphore("/name")``
    shares::

        sem = Semaphore.create("jobs-ready", value=0)
        sem.release()                 # in one process
        sem.acquire(timeout=1.0)      # in another: True, or False on timeout
    """

    KIND = Kind.SEMAPHORE

    def __init__(self, name: str, seg: Segment | None, sem: posix_ipc.Semaphore) -> None:
        self._name = name
        self._seg = seg
        self._sem: posix_ipc.Semaphore | None = sem

    @classmethod
    def create(cls, name: str, value: int = 0, *, mode: int = 0o600) -> Semaphore:
        """Create a semaphore with initial ``value``; AlreadyExists if the name is taken."""
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"value must be an int, not {type(value).__name__}")
        if not 0 <= value <= posix_ipc.SEMAPHORE_VALUE_MAX:
            raise ValueError(f"value must be between 0 and {posix_ipc.SEMAPHORE_VALUE_MAX}")
        if _names.is_verbatim(_names.validate(name)):
            with translate(f"semaphore {name!r}"):
                sem = create_semaphore(name, mode, value)
            return cls(name, None, sem)
        seg = Segment._create_object(
            name,
            Kind.SEMAPHORE,
            body_size=64,
            params=_SEM_PARAMS.pack(value),
            sem_values=[value],
            mode=mode,
        )
        return cls(name, seg, seg.semaphore(0))

    @classmethod
    def open(
        cls, name: str, *, wait: float | None = 0.0, trust_uids: Iterable[int] | None = None
    ) -> Semaphore:
        """Open an existing semaphore by name.

        ``wait`` seconds (None: forever) lets the name appear first;
        ``trust_uids`` as for :meth:`Segment.open`.
        """
        if _names.is_verbatim(_names.validate(name)):
            # A plain POSIX semaphore has no owner check: the kernel's mode is all there is.
            sem = _opening.appear(
                lambda: posix_ipc.Semaphore(name),
                wait=_opening.check_wait(wait),
                what=f"semaphore {name!r}",
                hint="create it first, or pass wait=SECONDS to open() to wait for its creator",
            )
            return cls(name, None, sem)
        seg = Segment._open_object(name, Kind.SEMAPHORE, wait=wait, trust_uids=trust_uids)
        if seg.header is None or seg.header.nsems != 1:
            seg.close()
            raise LayoutError(f"semaphore {name!r} has no semaphore")
        return cls(name, seg, seg.semaphore(0))

    @classmethod
    def open_or_create(cls, name: str, value: int = 0, *, mode: int = 0o600) -> Semaphore:
        """Open ``name``, creating it with ``value`` if it does not exist."""
        return open_or_create(
            lambda: cls.create(name, value, mode=mode),
            lambda: cls.open(name),
            f"semaphore {name!r}",
        )

    def _handle(self) -> posix_ipc.Semaphore:
        sem = self._sem
        if sem is None:
            raise Closed(f"semaphore {self._name!r} is closed")
        return sem

    def acquire(self, timeout: float | None = None, *, spin: float = _wait.SPIN) -> bool:
        """Decrement, waiting up to ``timeout`` seconds. True, or False on timeout.

        Tries once, then re-tries for ``spin`` seconds (cheap when the other
        side answers within microseconds), then blocks in short slices.
        """
        timeout = _wait.check_timeout(timeout)  # before any system call, free or busy
        sem = self._sem
        if sem is None:
            raise Closed(f"semaphore {self._name!r} is closed")
        try:
            sem.acquire(0)
            return True
        except posix_ipc.BusyError:
            pass
        if timeout == 0:
            return False
        if spin > 0:
            clock = time.perf_counter
            end = clock() + (spin if timeout is None else min(spin, timeout))
            while clock() < end:
                try:
                    sem.acquire(0)
                    return True
                except posix_ipc.BusyError:
                    pass
        if self._seg is None:  # a verbatim semaphore: this handle owns it alone
            return _wait.sem_wait(sem, timeout, spin=0.0, on_slice=self._check_open)
        with self._seg.sleeping():
            return _wait.sem_wait(sem, timeout, spin=0.0, on_slice=self._check_open)

    def release(self, n: int = 1) -> None:
        """Increment ``n`` times, waking up to ``n`` waiters.

        Raises:
            TypeError: ``n`` is not an int (bools are refused too).
            ValueError: ``n`` is below 1, or would take the value past the
                platform's maximum (``SEM_VALUE_MAX``); nothing is posted.
        """
        if isinstance(n, bool) or not isinstance(n, int):
            raise TypeError(f"release(n): n must be an int, not {type(n).__name__}")
        if n < 1:
            raise ValueError(f"release(n): n must be at least 1, not {n}")
        if n > _platform.SEM_VALUE_MAX:
            raise ValueError(
                f"release(n): n={n} is above the semaphore maximum {_platform.SEM_VALUE_MAX}"
            )
        sem = self._handle()
        if _platform.SEM_GETVALUE and int(sem.value) + n > _platform.SEM_VALUE_MAX:
            raise ValueError(
                f"semaphore {self._name!r}: releasing {n} would pass the maximum value "
                f"{_platform.SEM_VALUE_MAX} (now {int(sem.value)}); nothing was posted"
            )
        for _ in range(n):
            sem.release()

    @property
    def value(self) -> int:
        """Current value (not available on macOS)."""
        return int(self._handle().value)

    def close(self) -> None:
        sem, self._sem = self._sem, None
        if sem is not None and self._seg is None:
            sem.close()
        super().close()

    def unlink(self) -> None:
        if _names.is_verbatim(self._name):
            with translate(f"semaphore {self._name!r}"):
                posix_ipc.unlink_semaphore(self._name)
            return
        super().unlink()

    def __enter__(self) -> Semaphore:
        """``with sem:`` acquires (waiting forever) and releases on exit, like posix_ipc."""
        self.acquire()
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()

    @contextmanager
    def hold(self, timeout: float | None = None) -> Iterator[Semaphore]:
        """``with sem.hold(timeout=1):`` acquire (Timeout if not in time), release on exit."""
        if not self.acquire(timeout):
            raise Timeout(f"semaphore {self._name!r} not acquired within {timeout} s")
        try:
            yield self
        finally:
            self.release()


# -------------------------------------------------------------------------- Lock

# Lock body:
# offset size field
#      0   64 robust mutex (pthread_mutex_t + backend tag; see _mutex)
#     64    8 state        FREE / HELD / POISONED
#     72    8 pid          holder pid
#     80    8 start        holder start time (clock ticks since boot)
#     88    8 since_ns     wall-clock ns when it was taken
#     96    8 owner_deaths how many holders died holding it
#    104    8 tid          holder thread id
# Acquire and release are each one C call (_core.LockCore): take the mutex,
# store pid, start, since and tid, then HELD with a release store; on release
# check that this thread holds it, store FREE (or POISONED) with a release
# store, then unlock. A signal handler's exception can land only before or
# after such a call, never between taking the mutex and recording it. A
# record still HELD when the mutex is next taken means its holder died inside
# the critical section. A reader that loads HELD (acquire) sees that holder's
# fields or a later holder's, never zeroes: pid is never cleared.
_REC_OFF: Final = 64
_FREE: Final = 0
_HELD: Final = 1
_POISONED: Final = 2


class Lock(_core.LockCore, _Named):
    """A named mutex for unrelated processes that survives its holder's death.

    Like ``threading.Lock``, it is held by the thread that acquired it:
    ``release()`` from another thread raises ``NotOwner``.

    Attributes:
        owner_died: True while this handle holds a lock whose previous holder
            died inside its critical section. Repair, then ``mark_consistent()``;
            releasing without it poisons the lock (every later acquire raises
            LockNotRecoverable, as POSIX robust mutexes do).
    """

    KIND = Kind.LOCK

    def __init__(self, name: str, seg: Segment) -> None:
        self._name = name
        self._seg = seg
        assert seg.header is not None
        body = seg.header.body_off
        kind = self._backend = _mutex.kind_at(seg.mmap, body)
        self._region: _core.Region | None = _core.Region(seg.mmap)
        self._flock_fd = -1
        if kind == "flock":
            _mutex.check_same_user(seg.sysname)
            self._flock_path = _mutex.flock_path(seg.sysname, 0)
            self._flock_fd = os.open(self._flock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            _mutex.reopen_after_fork(self)
        self._core_attach(self._region, body, body + _REC_OFF, self._flock_fd)

    @classmethod
    def create(cls, name: str, *, mode: int = 0o600) -> Lock:
        """Create a lock; AlreadyExists if the name is taken."""
        seg = Segment._create_object(
            name,
            Kind.LOCK,
            body_size=128,
            mode=mode,
            init=_mutex.Mutex.initialize,
        )
        return cls(name, seg)

    @classmethod
    def open(
        cls, name: str, *, wait: float | None = 0.0, trust_uids: Iterable[int] | None = None
    ) -> Lock:
        """Open an existing lock by name (``wait``, ``trust_uids``: see :meth:`Segment.open`)."""
        return cls(name, Segment._open_object(name, Kind.LOCK, wait=wait, trust_uids=trust_uids))

    @classmethod
    def open_or_create(cls, name: str, *, mode: int = 0o600) -> Lock:
        """Open ``name``, creating it if needed (safe when many processes race)."""
        return open_or_create(
            lambda: cls.create(name, mode=mode), lambda: cls.open(name), f"lock {name!r}"
        )

    # acquire(timeout=None, *, spin=True) -> bool, release(), ``with lock:`` and
    # owner_died are the C base's (_core.LockCore): each is one C call, so a
    # signal handler's exception can never land between taking the lock and
    # the code that frees it. acquire raises ValueError/TypeError for a bad
    # timeout (before anything else), Closed, RuntimeError if this thread
    # already holds it through this handle, LockNotRecoverable if poisoned;
    # release raises NotOwner (a RuntimeError) unless this thread holds it.

    def _holder_message(self, timeout: float | None) -> str:
        state, pid, start, since, _deaths, _tid = self._core_record()
        if state == _HELD and 0 < pid <= _process.PID_MAX:
            live = _process.liveness(pid, start)
            held = max(0.0, (time.time_ns() - since) / 1e9)
            return (
                f"lock {self._name!r} not acquired within {timeout} s: held by pid {pid} "
                f"({live.value}) for {held:.3f} s"
            )
        return f"lock {self._name!r} not acquired within {timeout} s"

    def mark_consistent(self) -> None:
        """Declare the protected state repaired after ``owner_died``."""
        if not self._core_held():
            raise RuntimeError(f"lock {self._name!r} is not held by this thread")
        self.owner_died = False

    @property
    def backend(self) -> str:
        """The mutex backend its creator chose: ``"pthread"`` or ``"flock"``."""
        return self._backend

    @property
    def locked(self) -> bool:
        """True if some process holds the lock right now (a snapshot)."""
        self._segment()
        return self._core_record()[0] == _HELD

    def holder(self) -> tuple[int, _process.Liveness] | None:
        """(pid, liveness) of the recorded holder, or None if free."""
        self._segment()
        state, pid, start, _since, _deaths, _tid = self._core_record()
        if state != _HELD:
            return None
        if not 0 < pid <= _process.PID_MAX:
            raise LayoutError(f"lock {self._name!r} records an impossible holder pid {pid}")
        return pid, _process.liveness(pid, start)

    @contextmanager
    def hold(self, timeout: float | None = None) -> Iterator[Lock]:
        """``with lock.hold(timeout=5):`` acquire or raise LockTimeout naming the holder."""
        if not self.acquire(timeout):
            raise LockTimeout(self._holder_message(timeout))
        try:
            yield self
        finally:
            self.release()

    def close(self) -> None:
        """Detach this handle; releases the lock first if this thread holds it."""
        if self._seg is None:
            return
        if self._core_held():
            self.release()
        self._core_detach()
        if self._flock_fd >= 0:
            os.close(self._flock_fd)
            self._flock_fd = -1
        if self._region is not None:
            self._region.close()
            self._region = None
        super().close()

    def _after_fork_in_child(self) -> None:
        if self._flock_fd >= 0:
            old = self._flock_fd
            self._flock_fd = _mutex.reopen(old, self._flock_path)
            os.close(old)
        self._core_after_fork(self._flock_fd)


# ------------------------------------------------------------------------- Event

# Event body: offset 0, 4 bytes: flag (0 clear, 1 set). Semaphore s0 wakes waiters;
# a woken waiter re-posts it so every waiter wakes (a chain), and clear() drains it.
_FLAG: Final = slice(0, 4)
_SET: Final = (1).to_bytes(4, "little")
_CLEAR: Final = bytes(4)


class Event(_Named):
    """A named event flag: ``set()`` in one process wakes every ``wait()`` in others."""

    KIND = Kind.EVENT

    def __init__(self, name: str, seg: Segment) -> None:
        self._name = name
        self._seg = seg
        self._buf = seg.buf
        self._sem = seg.semaphore(0)

    @classmethod
    def create(cls, name: str, *, mode: int = 0o600) -> Event:
        """Create a cleared event; AlreadyExists if the name is taken."""
        return cls(
            name, Segment._create_object(name, Kind.EVENT, body_size=64, sem_values=[0], mode=mode)
        )

    @classmethod
    def open(
        cls, name: str, *, wait: float | None = 0.0, trust_uids: Iterable[int] | None = None
    ) -> Event:
        """Open an existing event by name (``wait``, ``trust_uids``: see :meth:`Segment.open`)."""
        seg = Segment._open_object(name, Kind.EVENT, wait=wait, trust_uids=trust_uids)
        if seg.header is None or seg.header.nsems != 1 or seg.size < 64:
            seg.close()
            raise LayoutError(f"event {name!r} has an invalid layout")
        return cls(name, seg)

    @classmethod
    def open_or_create(cls, name: str, *, mode: int = 0o600) -> Event:
        """Open ``name``, creating it if needed."""
        return open_or_create(
            lambda: cls.create(name, mode=mode), lambda: cls.open(name), f"event {name!r}"
        )

    def is_set(self) -> bool:
        self._segment()
        return bytes(self._buf[_FLAG]) == _SET

    def set(self) -> None:
        """Set the flag and wake every waiter."""
        self._segment()
        if bytes(self._buf[_FLAG]) != _SET:
            self._buf[_FLAG] = _SET
            self._sem.release()

    def clear(self) -> None:
        """Clear the flag."""
        self._segment()
        self._buf[_FLAG] = _CLEAR
        while _wait.sem_try(self._sem):
            pass

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the flag is set: True, or False after ``timeout`` seconds."""
        timeout = _wait.check_timeout(timeout)
        self._segment()

        def attempt() -> bool | None:
            return True if bytes(self._buf[_FLAG]) == _SET else None

        def block(seconds: float) -> bool | None:
            if _wait.sem_block(self._sem, seconds) and attempt():
                self._sem.release()  # pass the wake-up on to the next waiter
                return True
            return None

        with self._segment().sleeping():
            return bool(_wait.wait(attempt, block, timeout, on_slice=self._check_open))
