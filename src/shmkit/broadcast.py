"""Broadcast: one publisher, any number of subscribers, a ring of fixed-size slots.

Every subscriber has its own cursor, joins and leaves at any time, and reads
every message in order unless it falls more than ``slots`` messages behind:
then the publisher has overwritten what it had not read, and its next receive
raises :class:`~shmkit.errors.Overrun` carrying exactly how many messages it
lost, before it carries on from the oldest message still in the ring (or the
newest, with ``on_overrun="newest"``). A message is never delivered torn.

Publisher::

    pub = Broadcast.create("frames", slot_size=1920 * 1080 * 3, slots=8)
    pub.publish(frame)                             # copies in (memcpy speed)
    with pub.loan(dtype="u1", shape=(1080, 1920, 3)) as img:
        camera.read_into(img)                      # fill the slot in place
    # published on leaving the block; not published if the block raised

Subscriber (any process)::

    sub = subscribe("frames")                      # from the next message on
    data = sub.recv(timeout=1.0)                   # bytes (a copy); Empty on timeout
    n = sub.recv_into(buffer)                      # copy into your own buffer
    with sub.recv_view() as msg:                   # zero-copy, read-only
        img = msg.array("u1", (1080, 1920, 3))
        result = model(img)
    # leaving the block checks the slot was not overwritten meanwhile: Overrun if it was

Zero-copy reads are *checked after use*, Agrona style: a view is never
pinned against the publisher (publishing never waits for slow readers), so
the block's exit (or ``msg.validate()``) re-reads the slot's sequence word and
raises ``Overrun`` if the message was overwritten while you held it; discard
anything computed from it. In back-pressure mode (``backpressure=True``) the
publisher waits for the slowest live tethered subscriber, and a held view *is*
pinned until released (the subscriber's cursor only moves on release).

The publisher is a single live process at a time, held by a kernel lock that
dies with it. When no live publisher is attached and nothing is left to read,
``recv`` raises :class:`~shmkit.errors.PeerDied` (``publisher_alive`` tells the
same without receiving). A new publisher can attach after the old one died
(``Broadcast.open(name).publisher()``): it repairs the ring and numbering
carries on, so subscribers simply resume.

Memory model: the seqlock of ``shmkit._core._seqlock``; the format and its
ordering rule are drawn in ``shmkit._shm.broadcast_ring``. Publishing,
committing a loan and every receive are single C calls.
"""

from __future__ import annotations

import math
import mmap
import os
import sys
import time
import weakref
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Literal, TypeVar

from . import _core, _mutex, _ofd, _process, _wait
from ._core import _seqlock
from ._layout import Kind
from ._shm.broadcast_ring import (
    _ABORTED,
    _ATTACHED,
    _ATTACHES,
    _CLOSED_CLEANLY,
    _FREE,
    _MAX_SEQ,
    _MUTEX_OFF,
    _NO_PUBLISHER,
    _PROGRESS,
    _PUB_LOCK_BYTE,
    _PUB_PID,
    _PUB_START,
    _PUB_STATE,
    _PUBLISHED,
    _REPAIRS,
    _S_CURSOR,
    _S_FIRST,
    _S_MISSED,
    _S_OVERRUNS,
    _S_PID,
    _S_SKIPPED,
    _S_START,
    _S_STATE,
    _TETHERED,
    _UNTETHERED,
    _WRITER_WAITING,
    CONTROL_SIZE,
    MAX_SLOT_SIZE,
    MAX_SLOTS,
    MAX_SUBSCRIBERS,
    PARAMS,
    PARAMS_VERSION,
    RING_BP,
    RING_CHECKSUM,
    SLOT_HEADER,
    SUBSCRIBER_SIZE,
    Params,
    check_control,
    parse_image,
    parse_params,
)
from .errors import (
    Closed,
    Empty,
    Full,
    LayoutError,
    LockTimeout,
    MessageTooLarge,
    Overrun,
    PeerDied,
)
from .segment import Segment

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

__all__ = [
    "CONTROL_SIZE",
    "PARAMS",
    "PARAMS_VERSION",
    "Broadcast",
    "Publisher",
    "Subscriber",
    "Message",
    "Loan",
    "Params",
    "BroadcastStatistics",
    "SubscriberInfo",
    "PublisherBusy",
    "subscribe",
    "describe",
    "parse_params",
    "parse_image",
]


class PublisherBusy(LockTimeout):
    """Another live process is this broadcast's publisher (only one at a time)."""


# ---------------------------------------------------------------------------- stats


@dataclass(frozen=True)
class SubscriberInfo:
    """One entry of the subscriber table (a snapshot)."""

    slot: int
    pid: int
    alive: bool
    tethered: bool
    cursor: int
    lag: int
    received: int
    missed: int
    skipped: int
    overruns: int


@dataclass(frozen=True)
class BroadcastStatistics:
    """A snapshot of a broadcast, as every process sees it.

    ``published`` counts messages ever published; ``oldest`` is the number of
    the oldest message still in the ring. Per subscriber: ``lag`` messages
    not yet consumed, ``missed`` lost to overruns, ``skipped`` on purpose.
    """

    name: str
    slot_size: int
    slots: int
    max_subscribers: int
    backpressure: bool
    checksum: bool
    published: int
    oldest: int
    publisher_pid: int
    publisher_state: str
    publisher_alive: bool
    publisher_attaches: int
    repairs: int
    aborted_loans: int
    live_subscribers: int
    subscribers: tuple[SubscriberInfo, ...]


# ---------------------------------------------------------------------------- handles

_live: weakref.WeakSet[Broadcast] = weakref.WeakSet()
_H = TypeVar("_H", bound="Broadcast")


def _check_int(value: object, what: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int, not {type(value).__name__}")
    if not low <= value <= high:
        raise ValueError(f"{what} must be between {low} and {high}, not {value}")
    return value


def _open_segment(name: str) -> tuple[Segment, Params]:
    seg = Segment._open_object(name, Kind.BROADCAST)
    try:
        assert seg.header is not None
        what = f"broadcast {name!r}"
        params = parse_params(seg.header.params, seg.header.body_size, what)
        check_control(seg.buf[: params.slots_offset].cast("Q"), params, what)
    except BaseException:
        seg.close()
        raise
    return seg, params


class Broadcast:
    """A handle on a named broadcast ring: inspect it, subscribe, or publish.

    ``Broadcast.create`` returns the :class:`Publisher`; ``Broadcast.open``
    returns a plain handle whose :meth:`subscribe` and :meth:`publisher` give
    the two roles (each on its own mapping, closed independently).
    """

    def __init__(self, seg: Segment, params: Params) -> None:
        assert seg.header is not None
        self._seg: Segment | None = seg
        self._name = seg.name
        self._params = params
        self._slot_size = params.slot_size
        self._slots = params.slots
        self._body_off = seg.header.body_off
        self._mv: memoryview = seg.buf
        self._q: memoryview = self._mv.cast("Q")
        self._slot0 = params.slots_offset // 8
        self._stride_q = params.stride // 8
        self._sub0 = CONTROL_SIZE // 8
        self._fd: int | None = _ofd.open_for_locks(seg.sysname)
        self._closed = False
        self._closed_why = "closed"
        _live.add(self)

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    def create(
        cls,
        name: str,
        slot_size: int,
        slots: int = 8,
        *,
        max_subscribers: int = 32,
        mode: int = 0o600,
        backpressure: bool = False,
        checksum: bool | None = None,
    ) -> Publisher:
        """Create a broadcast ring and return its publisher.

        Args:
            slot_size: largest message in bytes (each slot holds one message).
            slots: ring length; a subscriber more than ``slots`` messages behind
                is overrun (unless ``backpressure``).
            max_subscribers: size of the subscriber table (live subscribers at once).
            mode: permission bits; subscribers need read and write access.
            backpressure: the publisher waits for the slowest live tethered
                subscriber instead of overwriting (lossless fan-out).
            checksum: CRC32-check every message: an integrity option against
                corruption (off by default; never needed against torn reads).

        Raises AlreadyExists, InvalidName, ShmFull, TypeError/ValueError.
        """
        slot_size = _check_int(slot_size, "slot_size", 1, MAX_SLOT_SIZE)
        slots = _check_int(slots, "slots", 1, MAX_SLOTS)
        max_subscribers = _check_int(max_subscribers, "max_subscribers", 1, MAX_SUBSCRIBERS)
        if checksum is None:
            checksum = False  # the seqlock alone rules out torn reads on every CPU
        params = Params(slot_size, slots, max_subscribers, bool(backpressure), bool(checksum))

        def init(mm: Any, body_off: int) -> None:
            _mutex.Mutex.initialize(mm, body_off + _MUTEX_OFF)

        seg = Segment._create_object(
            name,
            Kind.BROADCAST,
            body_size=params.body_size,
            params=params.pack(),
            sem_values=[],
            mode=mode,
            init=init,
        )
        try:
            return Publisher(seg, params, timeout=0.0)
        except BaseException:
            seg.unlink()
            seg.close()
            raise

    @classmethod
    def open(cls, name: str) -> Broadcast:
        """Open an existing broadcast by name (validates header, params and control block).

        Raises NotFound, LayoutError (not a broadcast, or corrupt), NotReady.
        """
        seg, params = _open_segment(name)
        try:
            return cls(seg, params)
        except BaseException:
            seg.close()
            raise

    def subscribe(
        self,
        start: Literal["latest", "oldest"] | int = "latest",
        *,
        on_overrun: Literal["oldest", "newest"] = "oldest",
        tethered: bool = True,
    ) -> Subscriber:
        """A new subscriber of this broadcast (its own mapping; close it separately).

        Args:
            start: ``"latest"`` receives messages published from now on;
                ``"oldest"`` starts with the oldest message still in the ring;
                an int resumes at that message number (``statistics().published``
                or a ``Message.seq`` + 1 from earlier).
            on_overrun: after an Overrun, continue at the ``"oldest"`` message
                still in the ring or jump to the ``"newest"``.
            tethered: in back-pressure mode, whether the publisher waits for
                this subscriber (False: it may be overrun, Aeron's "untethered").
        """
        self._check()
        return Subscriber._open(self._name, start, on_overrun, tethered)

    def publisher(self, timeout: float | None = 0.0) -> Publisher:
        """Become the publisher (after the previous one closed or died).

        Repairs what a dead publisher left half-done; subscribers resume.
        Raises PublisherBusy if another live process still publishes after
        ``timeout`` seconds (0: fail at once).
        """
        self._check()
        timeout = _wait.check_timeout(timeout)
        seg, params = _open_segment(self._name)
        try:
            return Publisher(seg, params, timeout=timeout)
        except BaseException:
            seg.close()
            raise

    def close(self) -> None:
        """Detach this handle (idempotent). The broadcast lives on until ``unlink()``."""
        if self._seg is None:
            return
        self._closed = True
        self._release()

    def _release(self) -> None:
        seg, self._seg = self._seg, None
        _live.discard(self)
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = None
        self._q.release()
        if seg is not None:
            seg.close()

    def unlink(self) -> None:
        """Remove the broadcast's name for everyone; open handles keep working."""
        Segment.remove(self._name)

    def __enter__(self: _H) -> _H:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            if getattr(self, "_seg", None) is not None:
                self.close()
        except Exception:  # interpreter shutdown: nothing sensible left to do
            pass

    def __reduce__(self) -> tuple[Any, ...]:
        return (Broadcast.open, (self._name,))

    def __repr__(self) -> str:
        state = f" {self._closed_why}" if self._closed else ""
        return (
            f"<{type(self).__name__} {self._name!r} {self._slots}x{self._slot_size} B"
            f"{' backpressure' if self._params.backpressure else ''}{state}>"
        )

    def _after_fork_in_child(self) -> None:
        # Our OFD locks are shared with the parent through the inherited fd:
        # drop the fd so the parent's death still releases them, and retire
        # the handle (two publishers, or two owners of one subscriber entry,
        # would corrupt the ring). Shared memory is left as the parent has it.
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = None
        self._closed = True
        self._closed_why = "inherited across fork() (open a new handle in the child)"

    # ------------------------------------------------------------------ access

    def _check(self) -> None:
        if self._closed:
            raise Closed(f"broadcast {self._name!r} handle is {self._closed_why}")

    @property
    def name(self) -> str:
        return self._name

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def params(self) -> Params:
        return self._params

    @property
    def slot_size(self) -> int:
        return self._slot_size

    @property
    def slots(self) -> int:
        return self._slots

    @property
    def published(self) -> int:
        """Messages published so far (the number the next message will get)."""
        self._check()
        return int(self._q[_PUBLISHED])

    @property
    def publisher_alive(self) -> bool:
        """True while a live publisher is attached (a dead one is noticed at once)."""
        self._check()
        return self._publisher_alive()

    def _publisher_alive(self) -> bool:
        q = self._q
        if q[_PUB_STATE] != _ATTACHED:
            return False
        if self._fd is not None:
            return _ofd.is_locked(self._fd, self._body_off + _PUB_LOCK_BYTE)
        return _process.liveness(q[_PUB_PID], q[_PUB_START]) is not _process.Liveness.DEAD

    def _publisher_gone(self) -> str:
        """Why there is no live publisher (for PeerDied messages)."""
        q = self._q
        state, pid = q[_PUB_STATE], q[_PUB_PID]
        if state == _CLOSED_CLEANLY:
            return f"the publisher of broadcast {self._name!r} (pid {pid}) closed it"
        if state == _ATTACHED:
            return f"the publisher of broadcast {self._name!r} (pid {pid}) died"
        return f"broadcast {self._name!r} has no publisher"

    def _entry_alive(self, index: int) -> bool:
        base = self._sub0 + index * (SUBSCRIBER_SIZE // 8)
        if self._fd is not None:
            off = self._body_off + CONTROL_SIZE + index * SUBSCRIBER_SIZE
            return _ofd.is_locked(self._fd, off)
        q = self._q
        return _process.liveness(q[base + _S_PID], q[base + _S_START]) is not (
            _process.Liveness.DEAD
        )

    def _oldest(self, published: int) -> int:
        """Number of the oldest message still whole in the ring."""
        first = published - self._slots
        if first < 0:
            return 0
        base = self._slot0 + (first % self._slots) * self._stride_q
        return first if self._q[base] == 2 * first + 2 else first + 1

    def statistics(self) -> BroadcastStatistics:
        """A snapshot: counts, publisher, and every subscriber's lag and losses."""
        self._check()
        return _collect(self)


def _collect(h: Broadcast) -> BroadcastStatistics:
    q = h._q
    p = h._params
    published = int(q[_PUBLISHED])
    state = int(q[_PUB_STATE])
    alive = isinstance(h, Publisher) or h._publisher_alive()
    subs = []
    own = h._entry if isinstance(h, Subscriber) else -1
    for i in range(p.max_subscribers):
        base = h._sub0 + i * (SUBSCRIBER_SIZE // 8)
        st = int(q[base + _S_STATE])
        if st == _FREE:
            continue
        cursor, first = int(q[base + _S_CURSOR]), int(q[base + _S_FIRST])
        missed, skipped = int(q[base + _S_MISSED]), int(q[base + _S_SKIPPED])
        subs.append(
            SubscriberInfo(
                slot=i,
                pid=int(q[base + _S_PID]),
                alive=i == own or h._entry_alive(i),
                tethered=st == _TETHERED,
                cursor=cursor,
                lag=max(0, published - cursor),
                received=max(0, cursor - first - missed - skipped),
                missed=missed,
                skipped=skipped,
                overruns=int(q[base + _S_OVERRUNS]),
            )
        )
    names = {_NO_PUBLISHER: "none", _ATTACHED: "attached", _CLOSED_CLEANLY: "closed"}
    label = names.get(state, "corrupt")
    if state == _ATTACHED and not alive:
        label = "dead"
    return BroadcastStatistics(
        name=h._name,
        slot_size=p.slot_size,
        slots=p.slots,
        max_subscribers=p.max_subscribers,
        backpressure=p.backpressure,
        checksum=p.checksum,
        published=published,
        oldest=h._oldest(published),
        publisher_pid=int(q[_PUB_PID]),
        publisher_state=label,
        publisher_alive=alive,
        publisher_attaches=int(q[_ATTACHES]),
        repairs=int(q[_REPAIRS]),
        aborted_loans=int(q[_ABORTED]),
        live_subscribers=sum(s.alive for s in subs),
        subscribers=tuple(subs),
    )


def describe(seg: Segment) -> dict[str, object]:
    """JSON-serialisable statistics of an open BROADCAST segment (for ``shmkit info``).

    Works on a read-only handle; never writes to the segment.
    """
    if seg.header is None or seg.header.kind != Kind.BROADCAST:
        raise LayoutError(f"segment {seg.name!r} is not a broadcast")
    params = parse_params(seg.header.params, seg.header.body_size, f"broadcast {seg.name!r}")
    view = Broadcast.__new__(Broadcast)
    view._seg = None
    view._name = seg.name
    view._params = params
    view._slot_size, view._slots = params.slot_size, params.slots
    view._body_off = seg.header.body_off
    view._mv = seg.buf
    view._q = view._mv.cast("Q")
    view._slot0, view._stride_q = params.slots_offset // 8, params.stride // 8
    view._sub0 = CONTROL_SIZE // 8
    view._fd = _ofd.open_for_locks(seg.sysname)
    view._closed, view._closed_why = False, ""
    try:
        stats = asdict(_collect(view))
        stats["subscribers"] = list(stats["subscribers"])  # JSON arrays, not tuples
        return stats
    finally:
        if view._fd is not None:
            os.close(view._fd)
        view._q.release()
        view._seg = None  # the caller owns seg; __del__ must not close it


# ---------------------------------------------------------------------------- publisher


class Publisher(Broadcast):
    """The one live writer of a broadcast. Not thread-safe: one thread publishes."""

    def __init__(self, seg: Segment, params: Params, *, timeout: float | None) -> None:
        super().__init__(seg, params)
        self._bp = params.backpressure
        self._loan: Loan | None = None
        self._ring = _ring(seg, self._body_off, params, -1, 0)
        self._mutex: _mutex.Mutex | None = None
        try:
            self._attach(timeout)
        except BaseException:
            self._closed = True
            self._ring.close()
            self._release()
            raise

    @property
    def _next(self) -> int:
        return self._ring.next

    def _attach(self, timeout: float | None) -> None:
        q = self._q
        me = _process.current()
        if self._fd is not None:
            fd, off = self._fd, self._body_off + _PUB_LOCK_BYTE
            got = _wait.wait(
                lambda: True if _ofd.try_lock(fd, off) else None,
                lambda s: time.sleep(min(s, 0.01)),
                timeout,
                spin=0,
            )
        else:
            got = _wait.wait(
                self._attach_locked, lambda s: time.sleep(min(s, 0.01)), timeout, spin=0
            )
        if not got:
            pid = q[_PUB_PID]
            raise PublisherBusy(
                f"broadcast {self._name!r} already has a live publisher (pid {pid})"
            )
        self._ring.next = self._repair()
        seg = self._seg
        assert seg is not None
        start = self._body_off + self._params.slots_offset
        _prefault(seg.mmap, start, self._body_off + self._params.body_size)
        q[_PUB_PID] = me.pid
        q[_PUB_START] = me.start
        q[_ATTACHES] += 1
        q[_PUB_STATE] = _ATTACHED
        if self._bp:
            self._ring.room = self._next + self._slots

    def _attach_locked(self) -> bool | None:
        # No OFD locks (macOS): claim the role under the robust mutex, by pid liveness.
        seg = self._seg
        assert seg is not None
        if self._mutex is None:
            self._mutex = _mutex.Mutex(seg.mmap, self._body_off + _MUTEX_OFF, seg.sysname, 0)
        if self._mutex.acquire_slice(0.05) == _mutex.BUSY:
            return None
        try:
            q = self._q
            if q[_PUB_STATE] == _ATTACHED and self._publisher_alive():
                return None
            me = _process.current()
            q[_PUB_PID], q[_PUB_START] = me.pid, me.start
            q[_PUB_STATE] = _ATTACHED  # claimed under the mutex: a racing attacher sees it
            return True
        finally:
            self._mutex.release()

    def _repair(self) -> int:
        """Rebuild ``published`` from the slots (Agrona's unblock) and return it.

        A publisher that died between sealing a slot and storing ``published``
        left a whole message nobody can see: publish it. One that died mid-copy
        left an odd seq: nobody ever sees that message; the slot is rewritten
        by the next publish with the same number.
        """
        q = self._q
        best = 0
        for i in range(self._slots):
            s = q[self._slot0 + i * self._stride_q]
            if s and not s & 1 and s < 2 * _MAX_SEQ and ((s >> 1) - 1) % self._slots == i:
                best = max(best, s >> 1)
        if q[_PUBLISHED] != best:
            q[_PUBLISHED] = best
            q[_REPAIRS] += 1
            self._ring.wake_readers()
        return best

    def close(self) -> None:
        """Stop publishing and detach. Subscribers drain what is left, then get PeerDied."""
        if self._seg is None:
            return
        if not self._closed:
            if self._loan is not None:
                self._loan.abort()
            q = self._q
            q[_PUB_STATE] = _CLOSED_CLEANLY
            self._ring.wake_readers()  # sleepers learn at once, not at their next slice
        self._closed = True
        self._ring.close()
        if self._mutex is not None:
            self._mutex.close()
        self._release()

    def __reduce__(self) -> tuple[Any, ...]:
        return (_reopen_publisher, (self._name,))

    def __repr__(self) -> str:
        r = super().__repr__()
        return r[:-1] + f" next=#{self._next}>"

    @property
    def publisher_alive(self) -> bool:
        return not self._closed

    # ------------------------------------------------------------------ publishing

    def publish(self, data: Any, timeout: float | None = None) -> int:
        """Copy ``data`` (any C-contiguous buffer: bytes, memoryview, ndarray) into the ring.

        Never waits for subscribers, unless the broadcast has back-pressure:
        then it waits up to ``timeout`` for the slowest live tethered
        subscriber and raises Full if it does not catch up.

        Returns the message number. Raises MessageTooLarge (nothing written)
        if ``data`` is larger than a slot, TypeError for a non-contiguous buffer.
        """
        if timeout is not None and not (type(timeout) is float and timeout >= 0.0):
            timeout = _wait.check_timeout(timeout)  # ints, NaN, negatives: the slow check
        if self._closed or self._loan is not None:
            self._check_publish()
        p = self._ring.publish(data)  # the whole publish, crash points included
        if p < 0:  # back-pressure: message p needs room first
            self._make_room(self._ring.next, timeout)
            p = self._ring.publish(data)
        return p

    def _check_publish(self) -> None:
        self._check()
        if self._loan is not None:
            raise RuntimeError(f"broadcast {self._name!r}: commit or abort the open loan first")

    def loan(
        self,
        nbytes: int | None = None,
        *,
        dtype: npt.DTypeLike | None = None,
        shape: int | Sequence[int] | None = None,
        timeout: float | None = None,
    ) -> Loan:
        """Lend the next slot for filling in place; publish it with ``commit()``.

        As a context manager the block's value is the buffer: a writable
        memoryview of ``nbytes`` (default: the slot size), or with ``dtype``
        (and ``shape``) a numpy array over the slot. Leaving the block commits;
        an exception aborts (nothing is published). The buffer is valid only
        until then: never keep it.

        In back-pressure mode this waits like ``publish``. Raises
        MessageTooLarge if the requested size exceeds the slot.
        """
        self._check_publish()
        timeout = _wait.check_timeout(timeout)
        make: Any = None
        if dtype is not None:
            make, nbytes = _array_maker(dtype, shape, nbytes, self._slot_size)
        elif shape is not None:
            raise TypeError("shape= needs dtype=")
        if nbytes is None:
            nbytes = self._slot_size
        nbytes = _check_int(nbytes, "nbytes", 0, MAX_SLOT_SIZE)
        if nbytes > self._slot_size:
            raise MessageTooLarge(
                f"a loan of {nbytes} bytes does not fit broadcast {self._name!r} "
                f"(slot size {self._slot_size})"
            )
        p = self._ring.loan()  # marks the slot busy, fenced
        if p < 0:
            self._make_room(self._ring.next, timeout)
            p = self._ring.loan()
        base = self._slot0 + (p % self._slots) * self._stride_q
        off = base * 8 + SLOT_HEADER
        view = self._mv[off : off + nbytes]
        buffer: Any = view if make is None else make(view)
        loan = Loan(self, p, base, view=view, buffer=buffer, nbytes=nbytes)
        self._loan = loan
        return loan

    def _commit(self, loan: Loan, nbytes: int) -> int:
        self._loan = None
        return self._ring.commit(nbytes)

    def _abort(self, loan: Loan) -> None:
        # The slot stays marked busy (its old message is partly overwritten,
        # readers of it see a lap); the next publish reuses this number.
        self._loan = None
        self._ring.abort()

    # ------------------------------------------------------------------ back-pressure

    def _make_room(self, p: int, timeout: float | None) -> None:
        """Wait until every live tethered subscriber consumed message p - slots."""
        timeout = _wait.check_timeout(timeout)
        need = p - self._slots + 1
        low = self._scan(need)
        if low >= need:
            self._ring.room = low + self._slots
            return
        q = self._q
        ring = self._ring
        end = math.inf if timeout is None else time.monotonic() + timeout
        try:
            while True:
                q[_WRITER_WAITING] = 1
                _core.fence()  # pairs with the reader's fence after its cursor store
                seen = q[_PROGRESS] & 0xFFFFFFFF
                low = self._scan(need)
                if low >= need:
                    ring.room = low + self._slots
                    return
                remaining = end - time.monotonic()
                if remaining <= 0:
                    raise Full(self._laggard_message(need, timeout))
                ring.wait_room(seen, min(remaining, _wait.SLICE))
                self._check()
        finally:
            if not self._closed:  # (closed by another thread: the words are gone)
                q[_WRITER_WAITING] = 0

    def _scan(self, need: int) -> int:
        """Lowest cursor among live tethered subscribers (dead ones cost one probe)."""
        q = self._q
        low = self._next + self._slots  # nobody registered: one lap of headroom
        step = SUBSCRIBER_SIZE // 8
        for i in range(self._params.max_subscribers):
            base = self._sub0 + i * step
            if q[base + _S_STATE] != _TETHERED:
                continue
            cursor = q[base + _S_CURSOR]
            if cursor < need and not self._entry_alive(i):
                continue  # died without closing: never waited for
            low = min(low, cursor)
        return low

    def _laggard_message(self, need: int, timeout: float | None) -> str:
        q = self._q
        step = SUBSCRIBER_SIZE // 8
        lag = []
        for i in range(self._params.max_subscribers):
            base = self._sub0 + i * step
            if q[base + _S_STATE] == _TETHERED and q[base + _S_CURSOR] < need:
                lag.append(f"pid {q[base + _S_PID]} at #{q[base + _S_CURSOR]}")
        who = ", ".join(lag) or "a subscriber"
        return (
            f"broadcast {self._name!r}: no room for message #{need + self._slots - 1} "
            f"within {timeout} s; slowest: {who}"
        )


def _ring(
    seg: Segment, body_off: int, params: Params, cursor_off: int, flags: int
) -> _seqlock.Ring:
    """The C seqlock ring over a broadcast's mapping (cursor_off -1: the publisher)."""
    return _seqlock.Ring(
        seg.mmap,
        seg.name,
        body_off,
        params.slot_size,
        params.slots,
        params.slots_offset,
        params.stride,
        cursor_off,
        flags | (RING_CHECKSUM if params.checksum else 0),
    )


def _prefault(mm: mmap.mmap, start: int, end: int) -> None:
    """Map the ring's pages into this process now (Linux >= 5.14), not on first publish.

    The pages are already reserved (fallocate); this only saves the first lap
    a page fault per 4 KiB. Best effort: older kernels refuse, nothing changes.
    """
    populate = getattr(mmap, "MADV_POPULATE_WRITE", 23 if sys.platform.startswith("linux") else 0)
    if not populate:
        return
    page = mmap.PAGESIZE
    first = start - start % page
    try:
        mm.madvise(populate, first, min(len(mm), end) - first)
    except (OSError, ValueError):
        pass


def _as_bytes(data: Any) -> memoryview:
    view = memoryview(data)
    if view.ndim != 1 or view.format != "B":
        try:
            view = view.cast("B")
        except TypeError:
            raise TypeError(
                "broadcast messages must be C-contiguous buffers "
                "(use numpy.ascontiguousarray or bytes())"
            ) from None
    return view


def _array_maker(
    dtype: npt.DTypeLike, shape: int | Sequence[int] | None, nbytes: int | None, slot_size: int
) -> tuple[Any, int]:
    """(view -> ndarray function, nbytes) for a loan with a numpy dtype and shape."""
    import numpy  # noqa: PLC0415 - numpy is an optional extra, imported on first use

    dt = numpy.dtype(dtype)
    if dt.hasobject or dt.itemsize == 0:
        raise TypeError(f"dtype {dt} cannot live in shared memory")
    if shape is None:
        shape = (slot_size if nbytes is None else nbytes) // dt.itemsize
    dims = (shape,) if isinstance(shape, int) else tuple(shape)
    for d in dims:
        _check_int(d, "shape entries", 0, MAX_SLOT_SIZE)
    size = math.prod(dims) * dt.itemsize

    def make(view: memoryview) -> Any:
        return numpy.frombuffer(view, dtype=dt).reshape(dims)

    return make, size


def _reopen_publisher(name: str) -> Publisher:
    with Broadcast.open(name) as bc:
        return bc.publisher()


class Loan:
    """A slot lent to the publisher. ``buffer`` is writable until commit or abort.

    ``with pub.loan() as buf:`` commits on normal exit and aborts on an
    exception. Explicitly: ``loan.commit(nbytes)`` publishes the first
    ``nbytes`` bytes (default: the size asked for), ``loan.abort()`` drops it.
    """

    __slots__ = ("_base", "_pub", "_view", "buffer", "nbytes", "seq")

    def __init__(
        self, pub: Publisher, seq: int, base: int, *, view: memoryview, buffer: Any, nbytes: int
    ) -> None:
        self._pub: Publisher | None = pub
        self.seq = seq
        self._base = base
        self._view = view
        self.buffer = buffer
        self.nbytes = nbytes

    def __enter__(self) -> Any:
        return self.buffer

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._pub is None:
            return
        if t is None:
            self.commit()
        else:
            self.abort()

    def commit(self, nbytes: int | None = None) -> int:
        """Publish the slot (its first ``nbytes`` bytes); return the message number."""
        pub = self._pub
        if pub is None:
            raise RuntimeError("this loan was already committed or aborted")
        if nbytes is None:
            nbytes = self.nbytes
        elif not 0 <= _check_int(nbytes, "nbytes", 0, MAX_SLOT_SIZE) <= self.nbytes:
            raise MessageTooLarge(f"commit of {nbytes} bytes exceeds the {self.nbytes} loaned")
        pub._check()
        self._finish()
        return pub._commit(self, nbytes)

    def abort(self) -> None:
        """Give the slot back unpublished."""
        pub = self._pub
        if pub is None:
            return
        self._finish()
        if not pub._closed:
            pub._abort(self)
        else:
            pub._loan = None

    def _finish(self) -> None:
        self._pub = None
        self.buffer = None
        try:
            self._view.release()
        except BufferError:
            pass  # a numpy view of it is still alive; it must not be written any more


# ---------------------------------------------------------------------------- subscriber


class Subscriber(Broadcast):
    """One reader of a broadcast, with its own cursor. Not thread-safe per handle.

    Counters (this handle): ``received``, ``missed`` (lost to overruns),
    ``skipped`` (jumped over by ``recv_latest``), ``overruns`` (Overrun events).
    """

    def __init__(
        self,
        seg: Segment,
        params: Params,
        start: Literal["latest", "oldest"] | int,
        on_overrun: Literal["oldest", "newest"],
        tethered: bool,
    ) -> None:
        if on_overrun not in ("oldest", "newest"):
            raise ValueError(f"on_overrun must be 'oldest' or 'newest', not {on_overrun!r}")
        if not (
            start in ("latest", "oldest")
            or (isinstance(start, int) and not isinstance(start, bool) and start >= 0)
        ):
            raise ValueError(
                f"start must be 'latest', 'oldest' or a message number >= 0: {start!r}"
            )
        super().__init__(seg, params)
        self._newest = on_overrun == "newest"
        self._on_overrun: Literal["oldest", "newest"] = on_overrun
        self._tethered = bool(tethered)
        self._bp = params.backpressure and self._tethered
        self._held: list[int] = []
        self._bad_crc = (-1, 0)  # (message, checksum failures with a stable seq)
        self._missed = self._skipped = self._overruns = 0
        self._entry = -1
        self._first = 0
        self._mutex: _mutex.Mutex | None = None
        # The ring's cursor word is known once an entry is claimed (_claim).
        self._ring = _ring(seg, self._body_off, params, -1, 0)
        try:
            self._claim(start)
        except BaseException:
            self._closed = True
            self._ring.close()
            self._release()
            raise

    @property
    def _next(self) -> int:
        return self._ring.next

    @_next.setter
    def _next(self, value: int) -> None:
        self._ring.next = value

    @classmethod
    def _open(
        cls,
        name: str,
        start: Literal["latest", "oldest"] | int,
        on_overrun: Literal["oldest", "newest"],
        tethered: bool,
    ) -> Subscriber:
        seg, params = _open_segment(name)
        try:
            return cls(seg, params, start, on_overrun, tethered)
        except BaseException:
            seg.close()
            raise

    def _claim(self, start: Literal["latest", "oldest"] | int) -> None:
        q = self._q
        step = SUBSCRIBER_SIZE // 8
        entry = -1
        if self._fd is not None:
            for i in range(self._params.max_subscribers):
                if _ofd.try_lock(self._fd, self._body_off + CONTROL_SIZE + i * SUBSCRIBER_SIZE):
                    entry = i
                    break
        else:
            entry = self._claim_locked()
        if entry < 0:
            raise Full(
                f"broadcast {self._name!r} has {self._params.max_subscribers} live subscribers "
                "already (its max_subscribers)"
            )
        self._entry = entry
        base = self._sub0 + entry * step
        self._cursor_ix = base + _S_CURSOR
        self._base = base
        published = q[_PUBLISHED]
        if start == "latest":
            cursor = published
        elif start == "oldest":
            cursor = self._oldest(published)
        else:
            if start > published:
                raise ValueError(f"start #{start} is beyond the {published} messages published")
            cursor = start
        me = _process.current()
        q[base + _S_PID], q[base + _S_START] = me.pid, me.start
        q[base + _S_FIRST] = cursor
        q[base + _S_MISSED] = q[base + _S_SKIPPED] = q[base + _S_OVERRUNS] = 0
        q[base + _S_CURSOR] = cursor
        q[base + _S_STATE] = _TETHERED if self._tethered else _UNTETHERED  # state last
        seg = self._seg
        assert seg is not None
        self._ring.close()
        self._ring = _ring(
            seg,
            self._body_off,
            self._params,
            CONTROL_SIZE + entry * SUBSCRIBER_SIZE + 8 * _S_CURSOR,
            RING_BP if self._bp else 0,
        )
        self._ring.next = self._first = cursor
        # Wake hints must never repeat a value the publisher already woke for:
        # entry bits keep subscribers apart, random low bits keep a reused entry apart.
        self._ring.hint = (entry + 1) << 48 | int.from_bytes(os.urandom(5), "little")

    def _claim_locked(self) -> int:
        seg = self._seg
        assert seg is not None
        self._mutex = _mutex.Mutex(seg.mmap, self._body_off + _MUTEX_OFF, seg.sysname, 0)
        if self._mutex.acquire_slice(1.0) == _mutex.BUSY:
            raise Full(f"broadcast {self._name!r}: subscriber table stayed locked for 1 s")
        try:
            q = self._q
            for i in range(self._params.max_subscribers):
                base = self._sub0 + i * (SUBSCRIBER_SIZE // 8)
                if q[base + _S_STATE] == _FREE or not self._entry_alive(i):
                    q[base + _S_STATE] = _FREE
                    q[base + _S_PID] = _process.current().pid
                    return i
            return -1
        finally:
            self._mutex.release()

    def close(self) -> None:
        """Leave the broadcast (idempotent); a back-pressured publisher stops waiting for us."""
        if self._seg is None:
            return
        if not self._closed and self._entry >= 0:
            q = self._q
            q[self._base + _S_STATE] = _FREE
            if self._fd is not None:
                try:
                    _ofd.unlock(self._fd, self._body_off + CONTROL_SIZE + self._entry * 64)
                except OSError:
                    pass
            self._ring.store_cursor(self._next)  # a back-pressured publisher stops waiting
        self._closed = True
        self._ring.wake_readers()  # another thread blocked in recv on this handle notices now
        self._ring.close()
        if self._mutex is not None:
            self._mutex.close()
        self._release()

    def __reduce__(self) -> tuple[Any, ...]:
        return (_resubscribe, (self._name, self._on_overrun, self._tethered))

    def __repr__(self) -> str:
        r = super().__repr__()
        return r[:-1] + f" next=#{self._next}>"

    @property
    def publisher_alive(self) -> bool:
        self._check()
        return self._publisher_alive()

    @property
    def next_seq(self) -> int:
        """Number of the next message this subscriber will receive."""
        return self._next

    @property
    def received(self) -> int:
        return self._next - self._first - self._missed - self._skipped

    @property
    def missed(self) -> int:
        return self._missed

    @property
    def skipped(self) -> int:
        return self._skipped

    @property
    def overruns(self) -> int:
        return self._overruns

    @property
    def lag(self) -> int:
        """Messages published that this subscriber has not consumed yet."""
        self._check()
        return max(0, int(self._q[_PUBLISHED]) - self._next)

    # ------------------------------------------------------------------ receiving

    def recv(self, timeout: float | None = None) -> bytes:
        """The next message as bytes (a copy), waiting up to ``timeout`` seconds.

        Raises Empty on timeout (``timeout=0`` checks once), Overrun if this
        subscriber was lapped (``exc.missed`` messages lost; the next call
        continues), PeerDied if no live publisher is attached and nothing is
        left to read, Closed after ``close()``.
        """
        if timeout is not None and not (type(timeout) is float and timeout >= 0.0):
            timeout = _wait.check_timeout(timeout)  # ints, NaN, negatives: the slow check
        if not self._closed:
            data = self._ring.recv()  # bytes, or a code the slow path handles
            if type(data) is bytes:
                return data
        result: bytes = self._recv_slow(timeout, False, _BYTES, None)
        return result

    def recv_nowait(self) -> bytes:
        """``recv(timeout=0)``: the next message or Empty at once."""
        return self.recv(0)

    def recv_latest(self, timeout: float | None = None) -> bytes:
        """The newest message, skipping older unread ones (counted in ``skipped``).

        If nothing newer than the last received message exists, waits for the
        next one. Never raises Overrun: being overtaken just means skipping more.
        """
        timeout = _wait.check_timeout(timeout)
        result: bytes = self._recv_slow(timeout, True, _BYTES, None)
        return result

    def recv_into(self, buffer: Any, timeout: float | None = None, *, latest: bool = False) -> int:
        """Copy the next message into ``buffer`` (writable, C-contiguous); return its size.

        Raises MessageTooLarge, without consuming the message, if it does not
        fit. If an Overrun is raised, ``buffer`` may hold garbage.
        """
        if timeout is not None and not (type(timeout) is float and timeout >= 0.0):
            timeout = _wait.check_timeout(timeout)
        dst = _as_bytes(buffer)
        if dst.readonly:
            raise TypeError("recv_into needs a writable buffer")
        if not (latest or self._closed):
            got = self._ring.recv_into(dst)  # never reads past the slot's end
            if got >= 0:
                return got
        result: int = self._recv_slow(timeout, latest, _INTO, dst)
        return result

    def recv_view(self, timeout: float | None = None, *, latest: bool = False) -> Message:
        """The next message as a zero-copy, read-only :class:`Message` view.

        The view is *not* pinned (except in back-pressure mode): validate it
        after use — ``with sub.recv_view() as msg:`` does so on exit, or call
        ``msg.validate()`` — which raises Overrun if the slot was overwritten
        meanwhile. Release views promptly.
        """
        if timeout is not None and not (type(timeout) is float and timeout >= 0.0):
            timeout = _wait.check_timeout(timeout)
        if not (latest or self._closed):
            length = self._ring.recv_view()
            if length >= 0:
                return self._view(self._next - 1, length)
        result: Message = self._recv_slow(timeout, latest, _VIEW, None)
        return result

    def _recv_slow(self, timeout: float | None, latest: bool, mode: int, dst: Any) -> Any:
        try:
            return self._recv_loop(timeout, latest, mode, dst)
        except ValueError:
            if self._closed:  # closed by another thread: our views were released
                raise Closed(f"broadcast {self._name!r} handle is {self._closed_why}") from None
            raise

    def _recv_loop(self, timeout: float | None, latest: bool, mode: int, dst: Any) -> Any:
        self._check()
        end = None if timeout is None else time.monotonic() + timeout
        q = self._q
        retries = 0
        while True:
            n = self._next
            published = q[_PUBLISHED]
            if n < published:
                if latest and published - 1 > n:
                    self._skip(published - 1 - n)
                    n = self._next
                got = self._read(n, mode, dst, latest)
                if got is _AGAIN:
                    continue
                if got is not _RETRY:
                    return got
                retries += 1
                if retries > 10_000:
                    raise LayoutError(
                        f"broadcast {self._name!r}: message #{n} is published but its slot "
                        "never holds it (corrupt ring)"
                    )
                continue
            if not self._wait_published(n, end):
                raise Empty(f"nothing new on broadcast {self._name!r} within {timeout} s")

    def _read(self, n: int, mode: int, dst: Any, latest: bool) -> Any:
        """Read message n if it is whole (one C call); raise Overrun if it was overwritten."""
        ring = self._ring
        ring.next = n
        got: Any
        if mode == _BYTES:
            got = ring.recv()
            if type(got) is bytes:
                return got
        elif mode == _INTO:
            got = ring.recv_into(dst)
        else:
            got = ring.recv_view()
            if got >= 0:
                return self._view(n, got)
        if got >= 0:
            return got
        if got == _seqlock.LAPPED:
            return self._lapped(n, latest)
        if got == _seqlock.TOO_SMALL:
            raise MessageTooLarge(
                f"message #{n} of {ring.last_len} bytes does not fit a {len(dst)}-byte buffer"
            )
        if got == _seqlock.BAD_CRC:
            bad = self._bad_crc
            self._bad_crc = (n, bad[1] + 1 if bad[0] == n else 1)
            if self._bad_crc[1] >= 3:
                raise LayoutError(
                    f"broadcast {self._name!r}: message #{n} fails its checksum with a "
                    "stable sequence (corrupt slot)"
                )
        return _RETRY  # not visible yet, or corrupt: bounded retries

    def _view(self, n: int, length: int) -> Message:
        base = self._slot0 + (n % self._slots) * self._stride_q
        off = base * 8 + SLOT_HEADER
        self._held.append(n)
        self._ring.pinned = True
        return Message(self, n, base, self._mv[off : off + length].toreadonly())

    def _lapped(self, n: int, latest: bool) -> object:
        """Message n was overwritten: move on, record the loss, raise Overrun."""
        q = self._q
        published = q[_PUBLISHED]
        if latest:
            self._skip(max(n + 1, published - 1) - n)
            return _AGAIN
        new = max(n + 1, published - 1 if self._newest else self._oldest(published))
        missed = new - n
        self._next = new
        self._missed += missed
        self._overruns += 1
        base = self._base
        q[base + _S_MISSED] = self._missed
        q[base + _S_OVERRUNS] = self._overruns
        if not self._held:
            self._ring.store_cursor(new)
        raise Overrun(
            f"subscriber of broadcast {self._name!r} was lapped: {missed} message(s) "
            f"#{n}..#{new - 1} were overwritten before it read them",
            missed=missed,
        )

    def _skip(self, count: int) -> None:
        self._next += count
        self._skipped += count
        q = self._q
        q[self._base + _S_SKIPPED] = self._skipped
        if not self._held:
            self._ring.store_cursor(self._next)

    def _wait_published(self, n: int, end: float | None) -> bool:
        """Block until message n is published. False at the deadline.

        Spins briefly, then sleeps on the futex in slices of at most
        ``_wait.SLICE``; raises PeerDied (no live publisher, nothing new) and
        Closed (closed by another thread) between slices.
        """
        q = self._q
        if end is not None and time.monotonic() >= end:
            return False
        ring = self._ring
        spin = True  # a bounded spin in C with pause, first slice only
        checked = False
        while True:
            if not checked or self._closed:
                self._check()
                if not self._publisher_alive() and q[_PUBLISHED] <= n:
                    raise PeerDied(self._publisher_gone())
                checked = True
            if end is None:
                slice_s = _wait.SLICE
            else:
                now = time.monotonic()
                if now >= end:
                    return bool(q[_PUBLISHED] > n)
                slice_s = min(end - now, _wait.SLICE)
            if ring.wait(n, slice_s, spin):
                return True
            spin = False
            checked = False

    def _release_view(self, msg: Message) -> None:
        held = self._held
        try:
            held.remove(msg.seq)
        except ValueError:
            return
        if self._closed:
            return
        self._ring.pinned = bool(held)
        self._ring.store_cursor(held[0] if held else self._next)

    def _view_overrun(self, msg: Message) -> Overrun:
        self._missed += 1
        self._overruns += 1
        q = self._q
        q[self._base + _S_MISSED] = self._missed
        q[self._base + _S_OVERRUNS] = self._overruns
        return Overrun(
            f"message #{msg.seq} of broadcast {self._name!r} was overwritten while its view "
            "was held: discard what was computed from it",
            missed=1,
        )


def _resubscribe(name: str, on_overrun: Literal["oldest", "newest"], tethered: bool) -> Subscriber:
    return Subscriber._open(name, "latest", on_overrun, tethered)


def subscribe(
    name: str,
    start: Literal["latest", "oldest"] | int = "latest",
    *,
    on_overrun: Literal["oldest", "newest"] = "oldest",
    tethered: bool = True,
) -> Subscriber:
    """Subscribe to the broadcast called ``name`` (see :meth:`Broadcast.subscribe`)."""
    return Subscriber._open(name, start, on_overrun, tethered)


_BYTES: Final = 0
_INTO: Final = 1
_VIEW: Final = 2
_RETRY: Final = object()  # the slot does not show message n yet: re-read (bounded)
_AGAIN: Final = object()  # recv_latest was overtaken: go for the new newest


class Message:
    """A zero-copy, read-only view of one received message.

    ``data`` is a read-only memoryview into the slot; ``seq`` the message
    number. The publisher may overwrite the slot at any time (unless the
    broadcast has back-pressure), so check after use: ``validate()`` raises
    Overrun if it was overwritten; ``valid`` says so without raising. As a
    context manager, leaving the block validates (unless the block raised)
    and releases::

        with sub.recv_view() as msg:
            total = numpy.frombuffer(msg.data, "u1").sum()
        # here total is known to come from one whole message
    """

    __slots__ = ("_base", "_checked", "_sub", "data", "seq")

    def __init__(self, sub: Subscriber, seq: int, base: int, data: memoryview) -> None:
        self._sub: Subscriber | None = sub
        self.seq = seq
        self._base = base
        self.data = data
        self._checked = False

    @property
    def valid(self) -> bool:
        """True if the slot still holds this message, whole."""
        sub = self._sub
        if sub is None:
            raise RuntimeError(f"message #{self.seq} was released")
        sub._check()
        # fenced in C: the caller's reads of the view complete before the re-check
        return sub._ring.valid(self.seq, len(self.data))

    def validate(self) -> None:
        """Raise Overrun (``missed=1``) if the message was overwritten while held."""
        if self.valid:
            return
        sub = self._sub
        assert sub is not None
        if self._checked:
            raise Overrun(f"message #{self.seq} was overwritten", missed=0)
        self._checked = True
        raise sub._view_overrun(self)

    def array(self, dtype: npt.DTypeLike, shape: int | Sequence[int] | None = None) -> Any:
        """The message as a read-only numpy array (zero-copy). Validate after use."""
        import numpy  # noqa: PLC0415 - numpy is an optional extra, imported on first use

        dt = numpy.dtype(dtype)
        if dt.hasobject:
            raise TypeError(f"dtype {dt} cannot be read from shared memory")
        arr: np.ndarray[Any, Any] = numpy.frombuffer(self.data, dtype=dt)
        return arr if shape is None else arr.reshape(shape)

    def release(self) -> None:
        """Let go of the view (a back-pressured publisher may now reuse the slot)."""
        sub = self._sub
        if sub is None:
            return
        self._sub = None
        try:
            self.data.release()
        except BufferError:
            pass  # numpy arrays made from it are alive; they see later data
        sub._release_view(self)

    def __enter__(self) -> Message:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            if t is None and self._sub is not None and not self._sub._closed:
                self.validate()
        finally:
            self.release()

    def __len__(self) -> int:
        return len(self.data)

    def __bytes__(self) -> bytes:
        return self.data.tobytes()

    def __repr__(self) -> str:
        return f"<Message #{self.seq} {len(self.data)} B{' released' if self._sub is None else ''}>"


def _after_fork_in_child() -> None:
    for handle in list(_live):
        handle._after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
