"""``shmkit.aio`` Lock, Semaphore and Event: awaitable acquire and wait.

Lock: a robust mutex belongs to a thread, and every task of a loop runs on
the loop's thread, so tasks of one loop first queue on an in-loop lock, then
the winner only ever *tries* the process-shared lock on the loop thread. The
watcher thread, on a handle of its own, waits in slices for the lock to
become free (acquire, then release at once) and wakes the tasks; a stopped
holder stalls only the watcher. Semaphore: the watcher takes a unit on the
waiters' behalf and hands it over; a unit nobody picks up goes back.
"""

from __future__ import annotations

import sys
import weakref
from collections.abc import Callable
from types import TracebackType
from typing import Any

from .. import sync as _s
from ..errors import LockTimeout
from . import _watch
from ._base import Wrapper, check_timeout
from ._watch import AGAIN, ALL, Op, Watcher, await_op

__all__ = ["Event", "Lock", "Semaphore"]

# _core_acquire's answers (shm.h / _native.c): OK, BUSY (timed out), OWNER_DIED, POISONED.
_OK, _BUSY, _OWNER_DIED = 0, 1, 2


# ----------------------------------------------------------------------------- Lock


def _lock_probe(w: Watcher) -> Callable[[float, list[Any]], int]:
    lock: _s.Lock = w.state["obj"]
    mine: list[_s.Lock] = []

    def probe(seconds: float, args: list[Any]) -> int:
        if not mine:
            mine.append(_s.Lock.open(lock.name))  # a handle of its own: the mutex is per-thread
        got = mine[0]._core_acquire(seconds, False)
        if got == _BUSY:
            return 0
        if got in (_OK, _OWNER_DIED):
            # Released at once, marked consistent first if its last holder died:
            # the task that takes it next is told (owner_died) instead.
            if got == _OWNER_DIED:
                w.state["died"] = True
            mine[0]._core_release(False)
        return ALL

    def release_handle(_w: Watcher) -> None:
        if mine:
            mine.pop().close()

    w.on_exit = release_handle
    return probe


def _loop_key() -> object:
    if _watch.is_trio():
        import trio  # noqa: PLC0415

        return trio.lowlevel.current_trio_token()
    import asyncio  # noqa: PLC0415

    return asyncio.get_running_loop()


def _new_local_lock() -> Any:
    if _watch.is_trio():
        import trio  # noqa: PLC0415

        return trio.Lock()
    import asyncio  # noqa: PLC0415

    return asyncio.Lock()


class Lock(Wrapper[_s.Lock]):
    """An awaitable handle on a named lock: ``async with lock:`` or ``await lock.acquire()``.

    Held by the loop (its thread), one task at a time; ``release()`` is
    synchronous, like ``asyncio.Lock.release``. ``owner_died`` is the blocking
    handle's (repair, then ``mark_consistent()``).
    """

    __slots__ = ("_local",)

    def __init__(self, sync: _s.Lock) -> None:
        super().__init__(sync)
        self._local: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()

    @classmethod
    def create(cls, name: str, **kwargs: Any) -> Lock:
        return cls(_s.Lock.create(name, **kwargs))

    @classmethod
    def open(cls, name: str) -> Lock:
        return cls(_s.Lock.open(name))

    @classmethod
    def open_or_create(cls, name: str, **kwargs: Any) -> Lock:
        return cls(_s.Lock.open_or_create(name, **kwargs))

    def _local_lock(self) -> Any:
        key = _loop_key()
        local = self._local.get(key)
        if local is None:
            local = self._local[key] = _new_local_lock()
        return local

    async def acquire(self, timeout: float | None = None) -> bool:
        """Take the lock within ``timeout`` seconds: True, or False on timeout.

        Cancelled while waiting: the lock is not held (neither the in-loop
        queue nor the shared lock). Raises LockNotRecoverable if poisoned,
        Closed.
        """
        timeout = check_timeout(timeout)
        self.sync._check_open()
        local = self._local_lock()
        end = None if timeout is None else _wait_now() + timeout
        if timeout == 0:
            if local.locked():
                return False
            await local.acquire()
        else:
            try:
                await _with_deadline(local.acquire(), end)
            except TimeoutError:
                return False
        try:
            got = await self._acquire_shared(None if end is None else max(0.0, end - _wait_now()))
        except BaseException:
            local.release()
            raise
        if not got:
            local.release()
        return got

    async def _acquire_shared(self, timeout: float | None) -> bool:
        lock = self.sync
        w = self._watcher("free", _lock_probe)

        def attempt() -> object:
            if not lock.acquire(0):
                return AGAIN
            if w.state.pop("died", False):
                lock.owner_died = True  # the watcher saw the death; tell this holder
            return True

        return bool(await await_op(Op(attempt, w), timeout, lambda: lock.acquire(0)))

    def release(self) -> None:
        """Release (from the loop that holds it); NotOwner otherwise."""
        self.sync.release()
        local = self._local.get(_loop_key())
        if local is not None and local.locked():
            local.release()

    def locked(self) -> bool:
        """True if some process holds the lock right now (a snapshot)."""
        return self.sync.locked

    async def __aenter__(self) -> Lock:
        if not await self.acquire():
            raise LockTimeout(f"lock {self.name!r} not acquired")  # pragma: no cover
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()

    def hold(self, timeout: float | None = None) -> _Hold:
        """``async with lock.hold(timeout=5):`` acquire or raise LockTimeout naming the holder."""
        return _Hold(self, timeout)


class _Hold:
    __slots__ = ("_lock", "_timeout")

    def __init__(self, lock: Lock, timeout: float | None) -> None:
        self._lock = lock
        self._timeout = check_timeout(timeout)

    async def __aenter__(self) -> Lock:
        if not await self._lock.acquire(self._timeout):
            raise LockTimeout(self._lock.sync._holder_message(self._timeout))
        return self._lock

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._lock.release()


def _wait_now() -> float:
    import time  # noqa: PLC0415

    return time.monotonic()


async def _with_deadline(aw: Any, end: float | None) -> Any:
    """Await ``aw`` by the monotonic ``end``; TimeoutError after it."""
    if end is None:
        return await aw
    remaining = max(0.0, end - _wait_now())
    if _watch.is_trio():
        import trio  # noqa: PLC0415

        with trio.move_on_after(remaining) as scope:
            return await aw
        if scope.cancelled_caught:
            raise TimeoutError
        return None  # pragma: no cover
    import asyncio  # noqa: PLC0415

    if sys.version_info >= (3, 11):
        async with asyncio.timeout(remaining):
            return await aw
    return await asyncio.wait_for(aw, remaining)  # pragma: no cover


# ----------------------------------------------------------------------------- Semaphore


def _sem_probe(w: Watcher) -> Callable[[float, list[Any]], int]:
    sem: _s.Semaphore = w.state["obj"]

    def probe(seconds: float, args: list[Any]) -> int:
        if w.tokens:
            return 1  # one still waits to be picked up
        if sem.acquire(seconds, spin=0.0):
            w.add_token()
            return 1
        return 0

    def give_back(_w: Watcher) -> None:
        # called with the watcher's condition held: nobody waits, return units
        while w.tokens:
            w.tokens -= 1
            try:
                sem.release()
            except Exception:
                w.tokens = 0  # closed: the units go with the handle
                break

    w.on_empty = give_back
    return probe


class Semaphore(Wrapper[_s.Semaphore]):
    """An awaitable handle on a named semaphore: ``await sem.acquire(timeout)``."""

    __slots__ = ()

    @classmethod
    def create(cls, name: str, value: int = 0, **kwargs: Any) -> Semaphore:
        return cls(_s.Semaphore.create(name, value, **kwargs))

    @classmethod
    def open(cls, name: str) -> Semaphore:
        return cls(_s.Semaphore.open(name))

    @classmethod
    def open_or_create(cls, name: str, value: int = 0, **kwargs: Any) -> Semaphore:
        return cls(_s.Semaphore.open_or_create(name, value, **kwargs))

    async def acquire(self, timeout: float | None = None) -> bool:
        """Decrement within ``timeout`` seconds: True, or False on timeout (Closed if closed).

        Cancelled while waiting: nothing was taken (a unit the watcher took
        for the waiters goes to the next waiter, or back to the semaphore).
        """
        timeout = check_timeout(timeout)
        sem = self.sync
        sem._handle()  # Closed
        w = self._watcher("acquire", _sem_probe)

        def attempt() -> object:
            if w.take_token() or sem.acquire(0):
                return True
            return AGAIN

        return bool(await await_op(Op(attempt, w), timeout, lambda: sem.acquire(0)))

    def release(self, n: int = 1) -> None:
        self.sync.release(n)

    def close(self) -> None:
        """Detach; units the watcher took for the waiters go back first; waiters get Closed."""
        w = _watch._registry.get((id(self.sync), "acquire"))
        if w is not None and w.on_empty is not None:
            with w._cv:
                w.on_empty(w)
        super().close()

    async def __aenter__(self) -> Semaphore:
        await self.acquire()
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


# ----------------------------------------------------------------------------- Event


def _event_probe(w: Watcher) -> Callable[[float, list[Any]], int]:
    ev: _s.Event = w.state["obj"]

    def probe(seconds: float, args: list[Any]) -> int:
        return ALL if ev.wait(seconds) else 0

    return probe


class Event(Wrapper[_s.Event]):
    """An awaitable handle on a named event: ``await ev.wait(timeout)``."""

    __slots__ = ()

    @classmethod
    def create(cls, name: str, **kwargs: Any) -> Event:
        return cls(_s.Event.create(name, **kwargs))

    @classmethod
    def open(cls, name: str) -> Event:
        return cls(_s.Event.open(name))

    @classmethod
    def open_or_create(cls, name: str, **kwargs: Any) -> Event:
        return cls(_s.Event.open_or_create(name, **kwargs))

    async def wait(self, timeout: float | None = None) -> bool:
        """Wait until the flag is set: True, or False after ``timeout`` seconds."""
        timeout = check_timeout(timeout)
        ev = self.sync
        ev._check_open()

        def attempt() -> object:
            return True if ev.is_set() else AGAIN

        w = self._watcher("set", _event_probe)
        return bool(await await_op(Op(attempt, w), timeout, lambda: ev.wait(0)))

    def set(self) -> None:
        self.sync.set()

    def clear(self) -> None:
        self.sync.clear()

    def is_set(self) -> bool:
        return self.sync.is_set()
