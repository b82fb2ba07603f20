"""``shmkit.aio`` Latest, Broadcast (Publisher, Subscriber) and SharedDict.

Each awaited call tries its non-blocking twin on the loop thread; the
watcher thread sleeps on the object's futex word: Latest's version word, the
broadcast's published word (subscribers) or progress word (a back-pressured
publisher), the dict's write counter.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, Generic, TypeVar

from .. import broadcast as _b
from .. import latest as _l
from .. import mapping as _m
from .._broadcast_subscriber import Subscriber as _Sub
from .._shm.broadcast_ring import _PUBLISHED
from .._shm.broadcast_views import Loan, Message
from ..errors import Empty, Full, PeerDied, Timeout
from ._base import Wrapper, check_timeout
from ._watch import AGAIN, ALL, Op, Watcher, await_op, checkpoint

__all__ = ["Broadcast", "Latest", "Publisher", "SharedDict", "Subscriber"]

T = TypeVar("T")
_M32 = 0xFFFFFFFF

# ----------------------------------------------------------------------------- Latest


def _latest_probe(w: Watcher) -> Callable[[float, list[Any]], int]:
    lat: _l.Latest[Any] = w.state["obj"]

    def probe(seconds: float, args: list[Any]) -> int:
        try:
            lat.wait_newer(min(args), seconds)  # raises Closed, PeerDied: the waiters see them
        except Timeout:
            return 0
        return ALL

    return probe


class Latest(Wrapper["_l.Latest[T]"], Generic[T]):
    """An awaitable handle on a Latest value: ``await lat.wait_newer(version)``."""

    __slots__ = ()

    @classmethod
    def create(cls, name: str, *args: Any, **kwargs: Any) -> Latest[Any]:
        return cls(_l.Latest.create(name, *args, **kwargs))

    @classmethod
    def open(cls, name: str, **kwargs: Any) -> Latest[Any]:
        return cls(_l.Latest.open(name, **kwargs))

    @classmethod
    def open_or_create(cls, name: str, *args: Any, **kwargs: Any) -> Latest[Any]:
        return cls(_l.Latest.open_or_create(name, *args, **kwargs))

    async def wait_newer(self, version: int, timeout: float | None = None) -> int:
        """Wait until the version is above ``version``; the newest version (Timeout after)."""
        timeout = check_timeout(timeout)
        lat = self.sync

        def attempt() -> object:
            v = lat.get_version()
            return v if v > version else AGAIN

        w = self._watcher("newer", _latest_probe)
        op: Op[int] = Op(attempt, w, arg=lambda: version)
        return await await_op(op, timeout, lambda: lat.wait_newer(version, 0))


# ----------------------------------------------------------------------------- Broadcast


def _sub_probe(w: Watcher) -> Callable[[float, list[Any]], int]:
    sub: _Sub = w.state["obj"]

    def probe(seconds: float, args: list[Any]) -> int:
        # raises Closed, PeerDied (no live publisher, nothing new): the waiters see them.
        # A short spin only: this thread holds the GIL while it spins, which the
        # event loop's thread needs.
        end = time.monotonic() + seconds
        return ALL if sub._wait_published(min(args), end, adaptive=False) else 0

    return probe


class Subscriber(Wrapper[_Sub]):
    """An awaitable subscriber: ``await sub.recv()``, ``recv_view``, ``recv_into``."""

    __slots__ = ()

    def _op(self, attempt: Callable[[], object]) -> Op[Any]:
        sub = self.sync
        return Op(attempt, self._watcher("recv", _sub_probe), arg=lambda: sub.next_seq)

    async def _recv(self, call: Callable[[float], Any], timeout: float | None) -> Any:
        sub = self.sync

        def attempt() -> object:
            try:
                return call(0.0)
            except Empty:
                return AGAIN

        if timeout == 0:
            return await await_op(self._op(attempt), timeout, lambda: call(0.0))
        await checkpoint()
        r = attempt()
        if r is not AGAIN:
            return r
        # As the blocking call does before it waits: nothing new and no live
        # publisher is PeerDied now, not a timeout later.
        ctl = sub._bc._ctl
        if not ctl.publisher_alive() and sub._q[_PUBLISHED] <= sub.next_seq:
            raise PeerDied(ctl.publisher_gone())
        return await await_op(self._op(attempt), timeout, lambda: call(0.0), checked=True)

    async def recv(self, timeout: float | None = None) -> bytes:
        """The next message as bytes (see ``Subscriber.recv``): Empty, Overrun, PeerDied, Closed."""
        timeout = check_timeout(timeout)
        sub = self.sync
        data: bytes = await self._recv(sub.recv, timeout)
        return data

    async def recv_latest(self, timeout: float | None = None) -> bytes:
        """The newest message, skipping older unread ones."""
        timeout = check_timeout(timeout)
        sub = self.sync
        data: bytes = await self._recv(sub.recv_latest, timeout)
        return data

    async def recv_view(self, timeout: float | None = None, *, latest: bool = False) -> Message:
        """The next message as a zero-copy :class:`Message` view (validate it after use)."""
        timeout = check_timeout(timeout)
        sub = self.sync
        msg: Message = await self._recv(lambda t: sub.recv_view(t, latest=latest), timeout)
        return msg

    async def recv_into(
        self, buffer: Any, timeout: float | None = None, *, latest: bool = False
    ) -> int:
        """Copy the next message into ``buffer``; its size."""
        timeout = check_timeout(timeout)
        sub = self.sync
        n: int = await self._recv(lambda t: sub.recv_into(buffer, t, latest=latest), timeout)
        return n


def _room_probe(w: Watcher) -> Callable[[float, list[Any]], int]:
    pub: _b.Publisher = w.state["obj"]

    def probe(seconds: float, args: list[Any]) -> int:
        try:
            pub._make_room(pub._ring.next, seconds, adaptive=False)  # short spins: the GIL
        except Full:
            return 0
        return ALL

    return probe


class Publisher(Wrapper[_b.Publisher]):
    """An awaitable publisher: ``await pub.publish(data)`` waits for room under back-pressure."""

    __slots__ = ()

    async def publish(self, data: Any, timeout: float | None = None) -> int:
        """Copy ``data`` into the ring; the message number (Full after ``timeout``).

        A lossy ring never waits (this is one checkpoint, then the publish).
        """
        timeout = check_timeout(timeout)
        pub = self.sync

        def attempt() -> object:
            try:
                return pub.publish(data, 0.0)
            except Full:
                return AGAIN

        op: Op[int] = Op(attempt, self._watcher("room", _room_probe))
        return await await_op(op, timeout, lambda: pub.publish(data, 0.0))

    def loan(
        self,
        nbytes: int | None = None,
        *,
        dtype: Any = None,
        shape: int | Sequence[int] | None = None,
        timeout: float | None = None,
    ) -> LoanRequest:
        """Borrow the next slot: ``async with pub.loan(n) as buf:`` commits on exit.

        ``await pub.loan(...)`` returns the :class:`Loan` itself (commit or
        abort it). Cancelled while waiting for room: nothing is loaned. An
        exception or cancellation inside ``async with`` aborts the loan.
        """
        return LoanRequest(self, nbytes, dtype, shape, check_timeout(timeout))


class LoanRequest:
    """``await`` it for a Loan, or ``async with`` it for the buffer (commit on exit)."""

    __slots__ = ("_args", "_loan", "_pub", "_timeout")

    def __init__(
        self, pub: Publisher, nbytes: int | None, dtype: Any, shape: Any, timeout: float | None
    ) -> None:
        self._pub = pub
        self._args = (nbytes, dtype, shape)
        self._timeout = timeout
        self._loan: Loan | None = None

    async def _get(self) -> Loan:
        pub = self._pub.sync
        nbytes, dtype, shape = self._args

        def call(t: float) -> Loan:
            return pub.loan(nbytes, dtype=dtype, shape=shape, timeout=t)

        def attempt() -> object:
            try:
                return call(0.0)
            except Full:
                return AGAIN

        op: Op[Loan] = Op(attempt, self._pub._watcher("room", _room_probe))
        return await await_op(op, self._timeout, lambda: call(0.0))

    def __await__(self) -> Any:
        return self._get().__await__()

    async def __aenter__(self) -> Any:
        self._loan = await self._get()
        return self._loan.buffer

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        loan, self._loan = self._loan, None
        if loan is not None:
            loan.__exit__(t, e, tb)  # commit, or abort on an exception (cancellation too)


class Broadcast(Wrapper[_b.Broadcast]):
    """An aio Broadcast: its ``publisher()`` and ``subscribe()`` return aio handles."""

    __slots__ = ()

    @classmethod
    def create(cls, name: str, *args: Any, **kwargs: Any) -> Broadcast:
        return cls(_b.Broadcast.create(name, *args, **kwargs))

    @classmethod
    def open(cls, name: str) -> Broadcast:
        return cls(_b.Broadcast.open(name))

    @classmethod
    def open_or_create(cls, name: str, *args: Any, **kwargs: Any) -> Broadcast:
        return cls(_b.Broadcast.open_or_create(name, *args, **kwargs))

    def publisher(self, timeout: float | None = 0.0) -> Publisher:
        """Become the publisher (see ``Broadcast.publisher``; this call does not await)."""
        return Publisher(self.sync.publisher(timeout))

    def subscribe(self, *args: Any, **kwargs: Any) -> Subscriber:
        """A new subscriber (see ``Broadcast.subscribe``), wrapped."""
        return Subscriber(self.sync.subscribe(*args, **kwargs))


# ----------------------------------------------------------------------------- SharedDict


def _dict_probe(w: Watcher) -> Callable[[float, list[Any]], int]:
    d: _m.SharedDict[Any] = w.state["obj"]

    def probe(seconds: float, args: list[Any]) -> int:
        seen = args[0]
        if any(a != seen for a in args) or d._c_counters()[0] & _M32 != seen:
            return ALL  # some waiter is behind already
        d._c_wait(seen, seconds)
        d._check_open()
        return ALL if d._c_counters()[0] & _M32 != seen else 0

    return probe


class SharedDict(Wrapper["_m.SharedDict[Any]"]):
    """An awaitable SharedDict handle: ``await d.wait_changed(key)``; the mapping is ``.sync``.

    ``d.sync[key]`` and the other mapping operations are non-blocking C calls
    (forwarded: ``d.get(k)``, ``d.version(k)``, ...).
    """

    __slots__ = ()

    @classmethod
    def create(cls, name: str, *args: Any, **kwargs: Any) -> SharedDict:
        return cls(_m.SharedDict.create(name, *args, **kwargs))

    @classmethod
    def open(cls, name: str, **kwargs: Any) -> SharedDict:
        return cls(_m.SharedDict.open(name, **kwargs))

    @classmethod
    def open_or_create(cls, name: str, *args: Any, **kwargs: Any) -> SharedDict:
        return cls(_m.SharedDict.open_or_create(name, *args, **kwargs))

    def __getitem__(self, key: Any) -> Any:
        return self.sync[key]

    def __setitem__(self, key: Any, value: Any) -> None:
        self.sync[key] = value

    def __delitem__(self, key: Any) -> None:
        del self.sync[key]

    def __contains__(self, key: object) -> bool:
        return key in self.sync

    def __len__(self) -> int:
        return len(self.sync)

    async def wait_changed(
        self, key: Any, timeout: float | None = None, *, version: int | None = None
    ) -> int:
        """Wait until ``key``'s version differs from ``version`` (default: now); the new one."""
        timeout = check_timeout(timeout)
        d = self.sync
        start = d.version(key) if version is None else version

        def attempt() -> object:
            now = d.version(key)
            return now if now != start else AGAIN

        op: Op[int] = Op(
            attempt, self._watcher("changed", _dict_probe), arg=lambda: d._c_counters()[0] & _M32
        )
        return await await_op(op, timeout, lambda: d.wait_changed(key, 0, version=start))
