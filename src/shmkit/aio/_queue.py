"""``shmkit.aio.Queue``: awaitable put/get over a :class:`shmkit.Queue`.

Every message is taken by a non-blocking attempt on the loop thread, so a
task cancelled while waiting has taken nothing. Waiting is done by one
watcher thread per (queue handle, direction) that sleeps on the queue's own
futex word, registered as an ordinary waiter (see ``_watch``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from .. import _wait
from .. import queue as _q
from .._shm.queue_ring import _AGAIN, _NOLOCK, _P_MUTEX, _mono
from ..errors import Empty, Full, Timeout
from . import _watch
from ._base import Wrapper, check_timeout
from ._watch import AGAIN, ALL, Op, Watcher, await_op, idle, must_yield, yield_now

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["Queue"]

T = TypeVar("T")


#: The owner-tid bits of a glibc robust mutex's lock word (the rest: waiters, owner died).
_TID_BITS = 0x3FFFFFFF
_P_WORD = _P_MUTEX // 8


def _held(q: _q.Queue[Any], producer: bool) -> bool:
    """Is this side's queue lock held by a live thread right now? (a read-only peek)

    An attempt on the loop thread must not wait for the lock: a holder that
    is stopped (SIGSTOP, a debugger) would stall the whole loop for a slice.
    The pthread backend's lock word holds the owner's tid (0 when free,
    only the owner-died bit after a death: then the attempt repairs). The
    flock backend has no word to peek; its attempts may wait one slice.
    """
    if not q._pthread:
        return False
    # The control words (u64, from body_off) begin with mutex C; mutex P is at _P_MUTEX.
    return bool(q._c[_P_WORD if producer and q._two else 0] & _TID_BITS)


def _full(q: _q.Queue[Any]) -> bool:
    """Not even an empty message fits (and the queue is not shut down): do not try."""
    return q.full() and not q.is_shutdown


def _sleeper(
    w: Watcher, q: _q.Queue[Any], putter: bool, ready: Callable[[], bool]
) -> Callable[[float], bool]:
    """Sleep up to ``seconds`` on the side's futex word as a registered waiter; True if ready.

    The watcher registers as a waiter once (under the queue's locks, like
    ``Queue._wait``) and stays registered until its thread exits, so in
    steady state it takes no lock: it reads the futex word, looks, and
    sleeps. Any change after the read bumps the word (a waiter is counted),
    so no wake-up is lost. One futex sleep covers the whole slice.
    """
    registered = [False]

    def register() -> object:
        if ready():
            return True
        q._register(putter, 1)
        registered[0] = True
        return _AGAIN

    def unregister(_w: Watcher) -> None:
        if registered[0]:
            registered[0] = False
            if not q.closed:
                q._run_locked(_mono() + 1.0, lambda: q._register(putter, -1))

    w.on_exit = unregister

    def sleep(seconds: float) -> bool:
        q._check_open()
        if not putter:
            q._check_claim()  # a dead consumer's claim in the way is released, as waiters do
        if not registered[0]:
            r = q._run_locked(_mono() + _wait.SLICE, register)
            if r is True:
                return True
            if r is _NOLOCK:
                return False  # a stopped or slow lock holder: try again next slice
        word = q._r_wake_value(putter)  # acquire; then look, then sleep on it
        if ready():
            return True
        q._r_sleep(putter, word, seconds)
        q._check_open()
        return ready()

    return sleep


def _get_probe(w: Watcher) -> Callable[[float, list[Any]], int]:
    q: _q.Queue[Any] = w.state["obj"]
    sleep = _sleeper(w, q, False, q._can_get)

    def probe(seconds: float, args: list[Any]) -> int:
        if not sleep(seconds):
            return 0
        # Shut down: every waiter gets the rest, then Closed; otherwise one
        # waiter per queued message.
        return ALL if q.is_shutdown else max(1, q.qsize())

    return probe


def _put_probe(w: Watcher) -> Callable[[float, list[Any]], int]:
    q: _q.Queue[Any] = w.state["obj"]
    sleep = _sleeper(w, q, True, lambda: q.is_shutdown or not q.full())

    def probe(seconds: float, args: list[Any]) -> int:
        return ALL if sleep(seconds) else 0

    return probe


def _join_probe(w: Watcher) -> Callable[[float, list[Any]], int]:
    q: Any = w.state["obj"]

    def probe(seconds: float, args: list[Any]) -> int:
        try:
            ok = q.join(timeout=seconds)
        except (Timeout, TimeoutError):
            return 0
        return 0 if ok is False else ALL

    return probe


class Queue(Wrapper["_q.Queue[T]"], Generic[T]):
    """An awaitable handle on a named queue: ``await q.get()``, ``await q.put(x)``.

    Wraps a blocking :class:`shmkit.Queue` (``.sync``); ``Queue(sync_queue)``
    wraps one you already have. Non-blocking methods (``put_nowait``,
    ``get_nowait``, ``qsize``, ``shutdown``, ``statistics``...) are the blocking
    handle's. Awaited calls take the same arguments and raise the same errors
    as the blocking ones (Empty/Full on timeout, Closed, MessageTooLarge...).
    """

    __slots__ = ()

    @classmethod
    def create(cls, name: str, capacity: int, **kwargs: Any) -> Queue[Any]:
        """:meth:`shmkit.Queue.create`, wrapped."""
        return cls(_q.Queue.create(name, capacity, **kwargs))

    @classmethod
    def open(cls, name: str, **kwargs: Any) -> Queue[Any]:
        """:meth:`shmkit.Queue.open`, wrapped."""
        return cls(_q.Queue.open(name, **kwargs))

    @classmethod
    def open_or_create(cls, name: str, capacity: int, **kwargs: Any) -> Queue[Any]:
        """:meth:`shmkit.Queue.open_or_create`, wrapped."""
        return cls(_q.Queue.open_or_create(name, capacity, **kwargs))

    def _last(
        self, producer: bool, timeout: float | None, call: Callable[..., Any]
    ) -> Callable[[], Any]:
        """The attempt at the deadline: the blocking call's own, unless the lock is held."""
        q = self.sync

        def last() -> Any:
            if _held(q, producer):
                raise q._timeout_error(producer, timeout, 0, busy=True)
            return call(timeout=0)

        return last

    def close(self) -> None:
        """Detach; tasks awaiting on this handle raise Closed at once."""
        q = self.sync
        if not q.closed:
            # Wake our watchers (and, harmlessly, every sleeper on the queue:
            # wake-ups are hints) so they see the handle closed now.
            q._r_wake(False, 1 << 30)
            q._r_wake(True, 1 << 30)
        super().close()

    # ------------------------------------------------------------------ get

    def _getter(self, attempt: Callable[[], object]) -> Op[Any]:
        q = self.sync

        def spin(seconds: float) -> bool:
            return bool(q._r_poll(False, 0, seconds) > 0)  # C spin, no lock, no GIL hand-off

        return Op(attempt, self._watcher("get", _get_probe), spin=spin)

    async def get(self, timeout: float | None = None) -> T:
        """Remove and return the oldest message, waiting up to ``timeout`` seconds.

        Raises Empty on timeout, Closed (shut down and drained, or closed).
        Cancelled while waiting: no message was taken.
        """
        timeout = check_timeout(timeout)
        q = self.sync
        if must_yield():
            await yield_now()
        spun = False
        if not _held(q, False):
            # The fast path, no closure, no watcher look-up. A failed
            # get_nowait costs ~4 µs (its general path): look first.
            if q._can_get():
                try:
                    return q.get_nowait()
                except Empty:
                    pass
            if timeout != 0 and idle(q, "get"):
                # The spin, inline too: the answer usually comes within it.
                spun = True
                spin = _watch.SPIN if timeout is None else min(_watch.SPIN, timeout)
                if q._r_poll(False, 0, spin) > 0 and not _held(q, False):
                    try:
                        return q.get_nowait()
                    except Empty:
                        pass

        def attempt() -> object:
            if _held(q, False) or not q._can_get():
                return AGAIN
            try:
                return q.get_nowait()
            except Empty:
                return AGAIN

        op = self._getter(attempt)
        last = self._last(False, timeout, q.get)
        return await await_op(op, timeout, last, checked=True, spun=spun)

    async def get_many(self, max_items: int, timeout: float | None = None) -> list[T]:
        """Remove up to ``max_items`` messages, waiting up to ``timeout`` for the first."""
        q = self.sync
        result: list[T] = await self._get_by(
            lambda timeout: q.get_many(max_items, timeout=timeout), timeout
        )
        return result

    async def get_into(self, buffer: Any, timeout: float | None = None) -> int:
        """Copy the oldest message into ``buffer``; its size (see ``Queue.get_into``)."""
        q = self.sync
        size: int = await self._get_by(lambda timeout: q.get_into(buffer, timeout=timeout), timeout)
        return size

    async def _get_by(self, call: Callable[..., Any], timeout: float | None) -> Any:
        """Await ``call(timeout=...)``, a blocking getter, tried with ``timeout=0``."""
        timeout = check_timeout(timeout)
        q = self.sync

        def attempt() -> object:
            if _held(q, False) or not q._can_get():
                return AGAIN
            try:
                return call(timeout=0)
            except Empty:
                return AGAIN

        return await await_op(self._getter(attempt), timeout, self._last(False, timeout, call))

    # ------------------------------------------------------------------ put

    def _putter(self, attempt: Callable[[], object]) -> Op[None]:
        return Op(attempt, self._watcher("put", _put_probe))

    async def put(self, item: Any, timeout: float | None = None) -> None:
        """Append one message, waiting up to ``timeout`` seconds for room (Full after)."""
        timeout = check_timeout(timeout)
        q = self.sync
        if must_yield():
            await yield_now()
        if not _held(q, True):
            try:
                q.put_nowait(item)  # the fast path
                return
            except Full:
                pass

        def attempt() -> object:
            if _held(q, True) or _full(q):
                return AGAIN
            try:
                q.put_nowait(item)
            except Full:
                return AGAIN
            return None

        op = self._putter(attempt)
        last = self._last(True, timeout, lambda timeout: q.put(item, timeout=timeout))
        await await_op(op, timeout, last, checked=True)

    async def put_many(self, items: Iterable[Any], timeout: float | None = None) -> None:
        """Append several messages as one batch record (all or none), waiting for room."""
        timeout = check_timeout(timeout)
        q = self.sync
        batch = list(items)  # an iterator is consumed once, whatever the attempts

        def attempt() -> object:
            if _held(q, True) or _full(q):
                return AGAIN
            try:
                q.put_many(batch, timeout=0)
            except Full:
                return AGAIN
            return None

        last = self._last(True, timeout, lambda timeout: q.put_many(batch, timeout=timeout))
        await await_op(self._putter(attempt), timeout, last)

    # ------------------------------------------------------------------ join

    async def join(self, timeout: float | None = None) -> Any:
        """Wait until every message put was marked done (``task_done()``), in any process.

        True once nothing is unfinished, False when ``timeout`` ran out (like
        the blocking :meth:`shmkit.Queue.join`). Cancelling it changes no count.
        """
        timeout = check_timeout(timeout)
        q: Any = self.sync

        def attempt() -> object:
            try:
                ok = q.join(timeout=0)
            except (Timeout, TimeoutError):
                return AGAIN
            return AGAIN if ok is False else ok

        return await await_op(
            Op(attempt, self._watcher("join", _join_probe)), timeout, lambda: q.join(timeout=0)
        )
