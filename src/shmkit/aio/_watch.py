"""Waiting without a thread per task: one watcher thread per awaited object and direction.

An awaited call first tries its non-blocking twin on the loop thread (after
one checkpoint), then spins briefly, then registers a *waiter* with the
object's :class:`Watcher`. The watcher is one daemon thread per (object,
direction) in this process, shared by every task of every event loop waiting
on it. It sleeps in the object's own blocking primitive (the futex word in the
segment, a semaphore, the robust mutex) in slices of at most
``_wait.SLICE`` seconds and, on each change, wakes waiters without blocking
(asyncio: ``loop.call_soon_threadsafe``; trio: ``TrioToken.run_sync_soon``).
A woken task retries its non-blocking attempt on its loop thread, so whatever
the call takes (a message, a token, the lock) is taken there and nowhere
else: a task cancelled between attempts has taken nothing.

Lost wake-ups: a task reads the watcher's ``epoch`` before its attempt and
registers with it; the watcher bumps the epoch whenever it wakes waiters, and
a registration with a stale epoch is refused (the task retries at once).
Each probe also checks readiness (or compares against the values the waiters
saw) before it sleeps, so a change between a task's failed attempt and the
watcher going to sleep is seen.

Herds: a probe says how many waiters a change can satisfy (a queue: its
length; an event: all). The watcher wakes that many, oldest first, and probes
again only once every woken waiter has retried, re-registered or left: no
busy loop while tasks catch up. A thread with no waiters lingers one slice,
then exits. Slices grow to ``IDLE_SLICE`` while nothing changes (idle CPU).
"""

from __future__ import annotations

import copy
import math
import os
import threading
import time
from collections.abc import Callable
from typing import Any, Final, Generic, TypeVar

import sniffio

from .. import _wait

__all__ = [
    "AGAIN",
    "ALL",
    "Op",
    "Probe",
    "Watcher",
    "active_watchers",
    "await_op",
    "checkpoint",
    "idle",
    "must_yield",
    "poke",
    "watcher_for",
    "yield_now",
]

T = TypeVar("T")

#: An attempt's "not now" answer.
AGAIN: Final = object()
#: A probe's "wake every waiter" answer.
ALL: Final = 1 << 30
#: Seconds the loop thread may spin (re-trying without blocking) before registering.
SPIN: Final = 50e-6
#: Seconds an idle watcher thread waits for a new waiter before it exits.
LINGER: Final = _wait.SLICE
#: Longest slice of a watcher whose object stays unchanged: its slices double
#: from ``_wait.SLICE`` up to this (idle CPU), and drop back at any change.
#: A handle closed by another thread, or a dead peer, is noticed within it.
IDLE_SLICE: Final = 4.0
#: How often a watcher looks for waiters whose event loop was closed under them.
SWEEP: Final = 0.5

#: probe(seconds, args) -> how many waiters to wake (0: nothing changed);
#: ``args`` are the values registered waiters saw before their attempt.
Probe = Callable[[float, list[Any]], int]


def _never(seconds: float, args: list[Any]) -> int:
    time.sleep(seconds)
    return 0


class _Waiter:
    """One waiting task: how to wake it from another thread, and what it saw."""

    __slots__ = ("alive", "arg", "error", "wake", "woken")

    def __init__(
        self, wake: Callable[[], None], arg: Any, alive: Callable[[], bool] | None = None
    ) -> None:
        self.wake = wake
        self.alive = alive  # False once its loop is closed (a loop closed with tasks pending)
        self.arg = arg
        self.woken = False
        self.error: BaseException | None = None


class Watcher:
    """The one thread waiting on one object in one direction for every task of this process."""

    def __init__(self, key: tuple[int, str], name: str) -> None:
        self.key = key
        self.probe: Probe = _never
        self.name = name
        self.epoch = 0
        self.progress = 0  # woken tasks whose attempt then succeeded (a hint, bumped unlocked)
        self.tokens = 0  # semaphores: units the watcher took and hands over
        self.state: dict[str, Any] = {}  # per-kind hand-over state (e.g. a dead lock holder)
        #: Runs with the condition held whenever nobody waits (semaphores: give units back).
        self.on_empty: Callable[[Watcher], None] | None = None
        #: Runs without the condition before the thread exits (unregister, close a handle);
        #: the thread goes on if a waiter came meanwhile.
        self.on_exit: Callable[[Watcher], None] | None = None
        self._cv = threading.Condition(threading.Lock())
        self._waiters: dict[int, _Waiter] = {}
        #: ``[w.arg for w in _waiters]``, rebuilt only after a change: an idle
        #: slice allocates nothing per waiter (no garbage-collector work either).
        self._args: list[Any] | None = None
        self._next_sweep = 0.0  # when to look for waiters whose loop was closed
        self._inflight = 0  # woken waiters that have not retried yet
        self._thread: threading.Thread | None = None

    @property
    def waiting(self) -> int:
        """Registered waiters right now (a snapshot)."""
        return len(self._waiters)

    def register(self, waiter: _Waiter, epoch: int) -> bool:
        """Add ``waiter`` unless something changed since ``epoch`` (then retry at once)."""
        with self._cv:
            if epoch != self.epoch:
                return False
            self._waiters[id(waiter)] = waiter
            self._args = None
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name=f"shmkit-aio {self.name}", daemon=True
                )
                self._thread.start()
            else:
                self._cv.notify()
        return True

    def done(self, waiter: _Waiter) -> None:
        """The task is back (woken, timed out or cancelled): forget it."""
        with self._cv:
            if waiter.woken:
                self._inflight -= 1
                if self._inflight == 0:
                    self._cv.notify()
            elif self._waiters.pop(id(waiter), None) is not None:
                self._args = None

    def take_token(self) -> bool:
        """Take a unit the watcher acquired on a waiter's behalf (semaphores)."""
        if not self.tokens:
            return False
        with self._cv:
            if self.tokens:
                self.tokens -= 1
                return True
        return False

    def add_token(self) -> None:
        """The probe acquired one unit for the waiters."""
        with self._cv:
            self.tokens += 1

    def _wake(self, n: int, error: BaseException | None) -> None:
        # called with the condition held
        self.epoch += 1
        self._args = None
        for key in list(self._waiters)[:n]:
            w = self._waiters.pop(key)
            w.woken = True
            w.error = error
            self._inflight += 1
            try:
                w.wake()
            except Exception:  # its loop is closed or its run finished: nobody to wake
                self._inflight -= 1

    def _current_args(self) -> list[Any]:
        # called with the condition held
        if self._args is None:
            self._args = [w.arg for w in self._waiters.values()]
        return self._args

    def _run(self) -> None:
        cv = self._cv
        stuck_rounds = 0
        slice_s = _wait.SLICE
        woke = False
        progress = self.progress
        while True:
            with cv:
                end = time.monotonic() + _wait.SLICE
                while self._inflight and time.monotonic() < end:
                    cv.wait(_wait.SLICE)  # let the woken retry before probing again
                stuck = woke and self.progress == progress and bool(self._waiters)
                args = self._current_args()
            if stuck:
                # Every woken task failed. Usually others took what there was
                # (tasks that came back for more, finding it at once); if it
                # still looks ready round after round (a live claim in the
                # way, say), back off rather than spin on it.
                try:
                    stuck = self.probe(0.0, args) > 0
                except Exception:
                    stuck = False
            if stuck:
                stuck_rounds += 1
                if stuck_rounds >= 3:
                    time.sleep(min(0.0002 * 2 ** (stuck_rounds - 3), _wait.SLICE))
            elif woke:
                stuck_rounds = 0
            woke = False
            progress = self.progress
            with cv:
                idle = False
                if not self._waiters:
                    if self.on_empty is not None:
                        self.on_empty(self)
                    cv.wait(LINGER)
                    idle = not self._waiters and not self._inflight
            if idle:
                if self.on_exit is not None:
                    self.on_exit(self)
                with cv:
                    if not self._waiters and not self._inflight:
                        if self.on_empty is not None:
                            self.on_empty(self)
                        self._thread = None
                        _forget(self)
                        return
                continue
            with cv:
                now = time.monotonic()
                if now >= self._next_sweep:
                    self._next_sweep = now + SWEEP
                    for key, waiter in list(self._waiters.items()):
                        if waiter.alive is not None and not waiter.alive():
                            del self._waiters[key]  # its loop was closed under it
                            self._args = None
                if not self._waiters:
                    continue
                args = self._current_args()
            error: BaseException | None = None
            try:
                n = self.probe(slice_s, args)
            except Exception as exc:  # Closed, PeerDied...: the waiters raise it
                n, error = ALL, exc
            if error is not None:
                # The object may keep failing (closed); do not spin on it.
                time.sleep(0.001)
            if n:
                slice_s = _wait.SLICE
                with cv:
                    woke = bool(self._waiters)
                    self._wake(n, error)
            else:
                slice_s = min(slice_s * 2, IDLE_SLICE)


_registry: dict[tuple[int, str], Watcher] = {}
_registry_lock = threading.Lock()


def idle(obj: object, direction: str) -> bool:
    """True unless tasks of this process already wait on ``obj`` there (no lock: a hint)."""
    w = _registry.get((id(obj), direction))
    return w is None or not w._waiters


def watcher_for(
    obj: object, direction: str, make: Callable[[Watcher], Probe], name: str
) -> Watcher:
    """The process's watcher of ``obj`` in ``direction`` (created on first use)."""
    key = (id(obj), direction)
    with _registry_lock:
        w = _registry.get(key)
        if w is None:
            w = Watcher(key, name)
            w.state["obj"] = obj  # keeps id(obj) from being reused while registered
            w.probe = make(w)
            _registry[key] = w
        return w


def _forget(w: Watcher) -> None:
    with _registry_lock:
        if _registry.get(w.key) is w:
            del _registry[w.key]


def _after_fork_in_child() -> None:
    """A forked child has none of the parent's watcher threads: forget their records."""
    global _registry_lock
    _registry.clear()
    _registry_lock = threading.Lock()
    _budget[0] = 0


os.register_at_fork(after_in_child=_after_fork_in_child)


def poke(obj: object) -> None:
    """Wake every task waiting on ``obj`` (it was closed here: their next attempt raises)."""
    with _registry_lock:
        found = [w for (ident, _d), w in _registry.items() if ident == id(obj)]
    for w in found:
        with w._cv:
            w._wake(ALL, None)


def active_watchers() -> int:
    """Watcher threads alive in this process (for tests and diagnostics)."""
    with _registry_lock:
        return sum(1 for w in _registry.values() if w._thread is not None)


# ----------------------------------------------------------------------------- backends


def is_trio() -> bool:
    """Is the running async library trio? (sniffio's answer, without its asyncio probe).

    trio names itself in ``sniffio.thread_local`` (or the context variable)
    for its whole run; anything else here runs on asyncio. 1.2 µs saved per
    call against ``sniffio.current_async_library()``.
    """
    name = sniffio.thread_local.name or sniffio.current_async_library_cvar.get()
    if name is None:
        return False
    if name not in ("trio", "asyncio"):
        raise RuntimeError(f"shmkit.aio runs under asyncio or trio, not {name}")
    return bool(name == "trio")


def _resolve(fut: Any) -> None:
    if not fut.done():
        fut.set_result(None)


#: Under asyncio, calls that complete at once yield to the loop every BUDGET-th time.
BUDGET: Final = 16
_budget = [0]


def must_yield() -> bool:
    """Whether this call should pass a checkpoint now (see :func:`checkpoint`); cheap."""
    if is_trio():
        return True
    _budget[0] += 1
    if _budget[0] >= BUDGET:
        _budget[0] = 0
        return True
    return False


async def yield_now() -> None:
    """One checkpoint: let other tasks run, deliver a pending cancellation."""
    if is_trio():
        import trio  # noqa: PLC0415 - optional

        await trio.lowlevel.checkpoint()
    else:
        import asyncio  # noqa: PLC0415

        await asyncio.sleep(0)


async def checkpoint() -> None:
    """Let other tasks run and deliver a pending cancellation.

    Trio: every call (trio's rule). asyncio: every ``BUDGET``-th call that
    would not otherwise wait (a yield costs ~7 µs, as much as a whole
    round trip; asyncio.Queue.get does not yield at all when it has an item):
    a consumer that always finds data still lets the loop run. Hot paths
    call ``if must_yield(): await yield_now()`` instead (no coroutine).
    """
    if must_yield():
        await yield_now()


async def _sleep_until_woken(w: Watcher, epoch: int, arg: Any, end: float) -> _Waiter | None:
    """Register and sleep until woken or ``end`` (monotonic); None if the epoch was stale.

    The caller re-tries, then calls ``w.done(waiter)`` (the watcher waits for
    that before it probes again); on cancellation this calls it.
    """
    if is_trio():
        import trio  # noqa: PLC0415

        ev = trio.Event()
        token = trio.lowlevel.current_trio_token()
        waiter = _Waiter(lambda: token.run_sync_soon(ev.set), arg)
        if not w.register(waiter, epoch):
            return None
        try:
            with trio.move_on_at(trio.current_time() + (end - time.monotonic())):
                await ev.wait()
        except BaseException:
            w.done(waiter)
            raise
        return waiter
    import asyncio  # noqa: PLC0415

    loop = asyncio.get_running_loop()
    fut = loop.create_future()

    def wake() -> None:
        loop.call_soon_threadsafe(_resolve, fut)

    waiter = _Waiter(wake, arg, lambda: not loop.is_closed())
    if not w.register(waiter, epoch):
        return None
    timer = None
    if end != math.inf:
        timer = loop.call_at(loop.time() + (end - time.monotonic()), _resolve, fut)
    try:
        await fut
    except BaseException:
        w.done(waiter)
        raise
    finally:
        if timer is not None:
            timer.cancel()
    return waiter


class Op(Generic[T]):
    """What one awaited call needs: a non-blocking attempt and where to wait."""

    __slots__ = ("arg", "attempt", "spin", "watcher")

    def __init__(
        self,
        attempt: Callable[[], T | object],
        watcher: Watcher,
        arg: Callable[[], Any] | None = None,
        spin: Callable[[float], bool] | None = None,
    ) -> None:
        self.attempt = attempt
        self.watcher = watcher
        self.arg = arg
        self.spin = spin


async def await_op(
    op: Op[T],
    timeout: float | None,
    on_timeout: Callable[[], T],
    *,
    checked: bool = False,
    spun: bool = False,
) -> T:
    """Run ``op`` to completion within ``timeout`` (checked by the caller); ``on_timeout()`` then.

    ``on_timeout`` is the blocking call with ``timeout=0``: it makes the
    last attempt and raises (or returns) exactly what the blocking call would.
    ``checked``: the caller already passed a checkpoint (and tried once);
    ``spun``: it also spun already.
    """
    if not checked:
        await checkpoint()
    w = op.watcher
    get_arg = op.arg
    # The epoch and the waiter's value are read *before* each attempt: a
    # change after them is either seen by the attempt or refuses/wakes the waiter.
    epoch, arg = w.epoch, None if get_arg is None else get_arg()
    r = op.attempt()
    if r is not AGAIN:
        return r  # type: ignore[return-value]
    if timeout == 0:
        return on_timeout()
    end = math.inf if timeout is None else time.monotonic() + timeout
    # Spin only when nobody is queued here already: a registered sibling means
    # the object was not ready a moment ago, and 100 spinners would stall the loop.
    if w.waiting == 0 and not spun:
        spin = min(SPIN, end - time.monotonic())
        if spin > 0:
            stop = time.perf_counter() + spin
            while True:
                ready = op.spin(spin) if op.spin is not None else time.perf_counter() < stop
                if not ready:
                    break
                epoch, arg = w.epoch, None if get_arg is None else get_arg()
                r = op.attempt()
                if r is not AGAIN:
                    return r  # type: ignore[return-value]
                if op.spin is not None:
                    break
    while True:
        if time.monotonic() >= end:
            return on_timeout()
        waiter = await _sleep_until_woken(w, epoch, arg, end)
        try:
            epoch, arg = w.epoch, None if get_arg is None else get_arg()
            r = op.attempt()
            if r is not AGAIN:
                if waiter is not None and waiter.woken:
                    w.progress += 1
                return r  # type: ignore[return-value]
        finally:
            if waiter is not None:
                w.done(waiter)
        if waiter is not None and waiter.error is not None:
            err = copy.copy(waiter.error)
            raise err.with_traceback(None)
