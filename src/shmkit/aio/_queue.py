"""``shmkit.aio.Queue``: awaitable put/get over a :class:`shmkit.Queue`.

Every message is taken by a non-blocking attempt on the loop thread, so a
task cancelled while waiting has taken nothing. Waiting is done by one
watcher thread per (queue handle, direction) that sleeps on the queue's own
futex word, registered as an ordinary waiter (see ``_watch``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from .. import queue as _q
from .._shm.queue_ring import _AGAIN, _HDR, _P_MUTEX, _RING_OFF
from ..errors import Empty, Full, Timeout
from ._base import Wrapper, check_timeout
from ._watch import AGAIN, ALL, Op, Watcher, await_op, checkpoint

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["Queue"]

T = TypeVar("T")


#: The owner-tid bits of a glibc robust mutex's lock word (the rest: waiters, owner died).
_TID_BITS = 0x3FFFFFFF


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
    off = q._base - _RING_OFF + (_P_MUTEX if producer and q._two else 0)
    return bool(int.from_bytes(q._mm[off : off + 4], "little") & _TID_BITS)


def _get_probe(w: Watcher) -> Callable[[float, list[Any]], int]:
    q: _q.Queue[Any] = w.state["obj"]

    def attempt() -> object:
        return True if q._can_get() else _AGAIN

    def probe(seconds: float, args: list[Any]) -> int:
        try:
            q._wait(attempt, q._can_get, seconds, putter=False, spin=0.0, need=0)
        except Empty:
            return 0
        return max(1, q.qsize())

    return probe


def _put_probe(w: Watcher) -> Callable[[float, list[Any]], int]:
    q: _q.Queue[Any] = w.state["obj"]

    def ready() -> bool:
        return q.is_shutdown or not q.full()

    def attempt() -> object:
        return True if ready() else _AGAIN

    def probe(seconds: float, args: list[Any]) -> int:
        try:
            q._wait(attempt, ready, seconds, putter=True, spin=0.0, need=_HDR)
        except Full:
            return 0
        return ALL

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
        await checkpoint()
        if not _held(q, False):
            try:
                return q.get_nowait()  # the fast path: no closure, no watcher look-up
            except Empty:
                pass

        def attempt() -> object:
            if _held(q, False):
                return AGAIN
            try:
                return q.get_nowait()
            except Empty:
                return AGAIN

        op = self._getter(attempt)
        return await await_op(op, timeout, self._last(False, timeout, q.get), checked=True)

    async def get_many(self, max_items: int, timeout: float | None = None) -> list[T]:
        """Remove up to ``max_items`` messages, waiting up to ``timeout`` for the first."""
        timeout = check_timeout(timeout)
        q = self.sync

        def attempt() -> object:
            if _held(q, False):
                return AGAIN
            try:
                return q.get_many(max_items, timeout=0)
            except Empty:
                return AGAIN

        last = self._last(False, timeout, lambda timeout: q.get_many(max_items, timeout=timeout))
        return await await_op(self._getter(attempt), timeout, last)

    async def get_into(self, buffer: Any, timeout: float | None = None) -> int:
        """Copy the oldest message into ``buffer``; its size (see ``Queue.get_into``)."""
        timeout = check_timeout(timeout)
        q = self.sync

        def attempt() -> object:
            if _held(q, False):
                return AGAIN
            try:
                return q.get_into(buffer, timeout=0)
            except Empty:
                return AGAIN

        last = self._last(False, timeout, lambda timeout: q.get_into(buffer, timeout=timeout))
        return await await_op(self._getter(attempt), timeout, last)

    # ------------------------------------------------------------------ put

    def _putter(self, attempt: Callable[[], object]) -> Op[None]:
        return Op(attempt, self._watcher("put", _put_probe))

    async def put(self, item: Any, timeout: float | None = None) -> None:
        """Append one message, waiting up to ``timeout`` seconds for room (Full after)."""
        timeout = check_timeout(timeout)
        q = self.sync
        await checkpoint()
        if not _held(q, True):
            try:
                q.put_nowait(item)  # the fast path
                return
            except Full:
                pass

        def attempt() -> object:
            if _held(q, True):
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
            if _held(q, True):
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
        """Wait until every message put was marked done (``task_done()``).

        Only where the blocking Queue has ``join()``; raises AttributeError otherwise.
        """
        timeout = check_timeout(timeout)
        q: Any = self.sync
        if not hasattr(q, "join"):
            raise AttributeError("this shmkit.Queue has no join(); task_done/join are not built")

        def attempt() -> object:
            try:
                ok = q.join(timeout=0)
            except (Timeout, TimeoutError):
                return AGAIN
            return AGAIN if ok is False else ok

        return await await_op(
            Op(attempt, self._watcher("join", _join_probe)), timeout, lambda: q.join(timeout=0)
        )
