"""Broadcast's control-block protocol: the publisher role, subscriber entries, cursors.

One :class:`Control` is one process's mapping of a broadcast ring (format in
``shmkit._shm.broadcast_ring``) plus the slow-path protocol over its control
block: who is the publisher and whether it lives, claiming and releasing a
subscriber entry, joining a back-pressured ring, rebuilding ``published``
after a crash, and the cursor scan a back-pressured publisher waits on. The
hot paths (publish, recv, waits) are ``shmkit._core._seqlock.Ring``; the
public classes and their policy are in ``shmkit.broadcast``.

Liveness is judged by the OFD lock byte each role holds (the publisher's at
``_PUB_LOCK_BYTE``, a subscriber's on its entry's first byte): the kernel
drops it when the process dies, in any PID namespace. Only where OFD locks
are missing (macOS) do pid + start time stand in, claimed under the robust
mutex.
"""

from __future__ import annotations

import mmap
import os
import sys
import time
import weakref
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Final, Protocol

from .. import _core, _mutex, _ofd, _process, _wait
from .._core import _seqlock
from .._layout import Kind
from ..errors import Full, LayoutError
from ..segment import Segment
from .broadcast_ring import (
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
    RING_CHECKSUM,
    SUBSCRIBER_SIZE,
    Params,
    check_control,
    parse_params,
)

__all__ = [
    "BroadcastStatistics",
    "Control",
    "SubscriberInfo",
    "collect",
    "live",
    "open_segment",
]

_STEP: Final = SUBSCRIBER_SIZE // 8


class _Retirable(Protocol):
    def _after_fork_in_child(self) -> None: ...


#: Every open broadcast handle, retired in a forked child (shmkit.broadcast registers the hook).
live: weakref.WeakSet[_Retirable] = weakref.WeakSet()


def open_segment(
    name: str, wait: float | None = 0.0, trust_uids: Iterable[int] | None = None
) -> tuple[Segment, Params]:
    """Open and validate a broadcast segment: header, params and control block."""
    seg = Segment._open_object(name, Kind.BROADCAST, wait=wait, trust_uids=trust_uids)
    try:
        assert seg.header is not None
        what = f"broadcast {name!r}"
        params = parse_params(seg.header.params, seg.header.body_size, what)
        check_control(seg.buf[: params.slots_offset].cast("Q"), params, what)
    except BaseException:
        seg.close()
        raise
    return seg, params


class Control:
    """One mapping of a broadcast and the control-block protocol over it.

    ``seg`` is None for a borrowed mapping (``describe``): then ``close``
    leaves the segment to its owner.
    """

    def __init__(self, seg: Segment, params: Params, *, owned: bool = True) -> None:
        assert seg.header is not None
        self.seg: Segment | None = seg if owned else None
        self._mm = seg.mmap
        self.sysname = seg.sysname
        self.name = seg.name
        self.params = params
        self.slots = params.slots
        self.body_off = seg.header.body_off
        self.mv: memoryview = seg.buf
        self.q: memoryview = self.mv.cast("Q")
        self.slot0 = params.slots_offset // 8
        self.stride_q = params.stride // 8
        self.sub0 = CONTROL_SIZE // 8
        self.fd: int | None = _ofd.open_for_locks(seg.sysname)
        self.mutex: _mutex.Mutex | None = None

    # ------------------------------------------------------------------ lifetime

    def drop_fd(self) -> None:
        """Close the lock fd (after fork: the parent's death must still free its locks)."""
        fd, self.fd = self.fd, None
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass

    def close(self) -> None:
        self.drop_fd()
        if self.mutex is not None:
            self.mutex.close()
            self.mutex = None
        self.q.release()
        seg, self.seg = self.seg, None
        if seg is not None:
            seg.close()

    def ring(self, cursor_off: int = -1, flags: int = 0) -> _seqlock.Ring:
        """The C seqlock ring over this mapping (cursor_off -1: the publisher)."""
        p = self.params
        return _seqlock.Ring(
            self._mm,
            self.name,
            self.body_off,
            p.slot_size,
            p.slots,
            p.slots_offset,
            p.stride,
            cursor_off,
            flags | (RING_CHECKSUM if p.checksum else 0),
        )

    def slot_base(self, n: int) -> int:
        """Word index of message n's slot header."""
        return self.slot0 + (n % self.slots) * self.stride_q

    # ------------------------------------------------------------------ liveness

    def publisher_alive(self) -> bool:
        q = self.q
        if q[_PUB_STATE] != _ATTACHED:
            return False
        if self.fd is not None:
            return _ofd.is_locked(self.fd, self.body_off + _PUB_LOCK_BYTE)
        return _process.liveness(q[_PUB_PID], q[_PUB_START]) is not _process.Liveness.DEAD

    def publisher_gone(self) -> str:
        """Why there is no live publisher (for PeerDied messages)."""
        q = self.q
        state, pid = q[_PUB_STATE], q[_PUB_PID]
        if state == _CLOSED_CLEANLY:
            return f"the publisher of broadcast {self.name!r} (pid {pid}) closed it"
        if state == _ATTACHED:
            return f"the publisher of broadcast {self.name!r} (pid {pid}) died"
        return f"broadcast {self.name!r} has no publisher"

    def entry_alive(self, index: int) -> bool:
        if self.fd is not None:
            return _ofd.is_locked(self.fd, self.body_off + CONTROL_SIZE + index * SUBSCRIBER_SIZE)
        base = self.sub0 + index * _STEP
        q = self.q
        return _process.liveness(q[base + _S_PID], q[base + _S_START]) is not (
            _process.Liveness.DEAD
        )

    def oldest(self, published: int) -> int:
        """Number of the oldest message still whole in the ring."""
        first = published - self.slots
        if first < 0:
            return 0
        return first if self.q[self.slot_base(first)] == 2 * first + 2 else first + 1

    def first_whole(self, start: int, published: int) -> int:
        """The first message number >= ``start`` whose slot holds it whole, else ``published``.

        Steps over numbers a relay skipped (``Publisher._skip``) so one
        Overrun counts a whole gap; in a plain lap it stops at once.
        """
        m = max(start, published - self.slots, 0)
        q = self.q
        while m < published and q[self.slot_base(m)] != 2 * m + 2:
            m += 1
        return m

    # ------------------------------------------------------------------ publisher role

    def lock_publisher(self, timeout: float | None) -> bool:
        """Take the publisher role (False if another live process holds it after timeout)."""
        if self.fd is not None:
            fd, off = self.fd, self.body_off + _PUB_LOCK_BYTE
            got = _wait.wait(
                lambda: True if _ofd.try_lock(fd, off) else None,
                lambda s: time.sleep(min(s, 0.01)),
                timeout,
                spin=0,
            )
        else:
            got = _wait.wait(
                self._claim_publisher_locked, lambda s: time.sleep(min(s, 0.01)), timeout, spin=0
            )
        return bool(got)

    def _claim_publisher_locked(self) -> bool | None:
        # No OFD locks (macOS): claim the role under the robust mutex, by pid liveness.
        mutex = self._mutex()
        if mutex.acquire_slice(0.05) == _mutex.BUSY:
            return None
        try:
            q = self.q
            if q[_PUB_STATE] == _ATTACHED and self.publisher_alive():
                return None
            me = _process.current()
            q[_PUB_PID], q[_PUB_START] = me.pid, me.start
            q[_PUB_STATE] = _ATTACHED  # claimed under the mutex: a racing attacher sees it
            return True
        finally:
            mutex.release()

    def _mutex(self) -> _mutex.Mutex:
        if self.mutex is None:
            self.mutex = _mutex.Mutex(self._mm, self.body_off + _MUTEX_OFF, self.sysname, 0)
        return self.mutex

    def mark_attached(self) -> None:
        """Record this process as the live publisher (after lock_publisher and repair)."""
        q = self.q
        me = _process.current()
        q[_PUB_PID] = me.pid
        q[_PUB_START] = me.start
        q[_ATTACHES] += 1
        q[_PUB_STATE] = _ATTACHED

    def mark_closed(self) -> None:
        self.q[_PUB_STATE] = _CLOSED_CLEANLY

    def repair(self) -> tuple[int, bool]:
        """Rebuild ``published`` from the slots (Agrona's unblock): (number, changed).

        A publisher that died between sealing a slot and storing ``published``
        left a whole message nobody can see: publish it. One that died
        mid-copy (or aborted a loan) left an odd seq: nobody ever sees that
        message, and the next publish rewrites its slot with the same number.
        ``published`` never goes backwards: with one slot an aborted loan
        leaves no sealed slot at all, and the count still stands.
        """
        q = self.q
        best = int(q[_PUBLISHED])
        for i in range(self.slots):
            s = q[self.slot0 + i * self.stride_q]
            if s and not s & 1 and s < 2 * _MAX_SEQ and ((s >> 1) - 1) % self.slots == i:
                best = max(best, s >> 1)
        if q[_PUBLISHED] == best:
            return best, False
        q[_PUBLISHED] = best
        q[_REPAIRS] += 1
        return best, True

    def prefault(self) -> None:
        """Map the ring's pages into this process now (Linux >= 5.14), not on first publish.

        The pages are already reserved (fallocate); this only saves the first
        lap a page fault per 4 KiB. Best effort: older kernels refuse.
        """
        populate = getattr(
            mmap, "MADV_POPULATE_WRITE", 23 if sys.platform.startswith("linux") else 0
        )
        if not populate:
            return
        page = mmap.PAGESIZE
        start = self.body_off + self.params.slots_offset
        end = self.body_off + self.params.body_size
        first = start - start % page
        try:
            self._mm.madvise(populate, first, min(len(self._mm), end) - first)
        except (OSError, ValueError):
            pass

    # ------------------------------------------------------------------ back-pressure

    def scan(self, ring: _seqlock.Ring, need: int, headroom: int) -> int:
        """Lowest cursor among live tethered subscribers (``headroom`` if none).

        The scan first notes the joins word: a subscriber that joins after it
        voids the room computed from this scan. A dead subscriber's stale
        cursor costs one liveness probe and is never waited for. One C pass
        (``ring.scan``) does it all where OFD locks tell liveness; without
        them it defers to the Python loop below for a subscriber that is behind.
        """
        fd = -1 if self.fd is None else self.fd
        low = ring.scan(max(need, 0), headroom, self.params.max_subscribers, fd)
        if low >= 0:
            return low
        ring.begin_scan()
        q = self.q
        low = headroom
        for i in range(self.params.max_subscribers):
            base = self.sub0 + i * _STEP
            if q[base + _S_STATE] != _TETHERED:
                continue
            cursor = q[base + _S_CURSOR]
            if cursor < need and not self.entry_alive(i):
                continue
            low = min(low, cursor)
        return low

    def wait_room_probing(
        self, ring: _seqlock.Ring, p: int, end: float, adaptive: bool, check: Callable[[], None]
    ) -> bool:
        """Wait for room for message p by ``end`` (False if none), probing liveness here.

        The publisher's wait where OFD locks are missing (``ring.make_room``
        returned -1): the same announce, scan and wait as the C call, with
        the scan's liveness probe made in Python. The caller calls
        ``stop_waiting()`` afterwards.
        """
        slots = self.params.slots
        need, headroom = p - slots + 1, p + slots
        while True:
            seen = self.announce_waiting()
            low = self.scan(ring, need, headroom)
            if low >= need:
                ring.room = low + slots
                return True
            remaining = end - time.monotonic()
            if remaining <= 0:
                return False
            ring.wait_room(seen, min(remaining, _wait.SLICE), adaptive)
            check()

    def announce_waiting(self) -> int:
        """Set writer_waiting, fence, and return the progress word to sleep on."""
        q = self.q
        q[_WRITER_WAITING] = 1
        _core.fence()  # pairs with the reader's fence after its cursor store
        return int(q[_PROGRESS] & 0xFFFFFFFF)

    def stop_waiting(self) -> None:
        self.q[_WRITER_WAITING] = 0

    def laggards(self, need: int) -> str:
        q = self.q
        lag = []
        for i in range(self.params.max_subscribers):
            base = self.sub0 + i * _STEP
            if q[base + _S_STATE] == _TETHERED and q[base + _S_CURSOR] < need:
                lag.append(f"pid {q[base + _S_PID]} at #{q[base + _S_CURSOR]}")
        return ", ".join(lag) or "a subscriber"

    # ------------------------------------------------------------------ subscriber entries

    def claim_entry(self) -> int:
        """Claim a free subscriber entry (its OFD lock byte); Full if none."""
        entry = -1
        if self.fd is not None:
            for i in range(self.params.max_subscribers):
                if _ofd.try_lock(self.fd, self.body_off + CONTROL_SIZE + i * SUBSCRIBER_SIZE):
                    entry = i
                    break
        else:
            entry = self._claim_entry_locked()
        if entry < 0:
            raise Full(
                f"broadcast {self.name!r} has {self.params.max_subscribers} live subscribers "
                "already (its max_subscribers)"
            )
        return entry

    def _claim_entry_locked(self) -> int:
        mutex = self._mutex()
        if mutex.acquire_slice(1.0) == _mutex.BUSY:
            raise Full(f"broadcast {self.name!r}: subscriber table stayed locked for 1 s")
        try:
            q = self.q
            for i in range(self.params.max_subscribers):
                base = self.sub0 + i * _STEP
                if q[base + _S_STATE] == _FREE or not self.entry_alive(i):
                    q[base + _S_STATE] = _FREE
                    q[base + _S_PID] = _process.current().pid
                    return i
            return -1
        finally:
            mutex.release()

    def entry_base(self, entry: int) -> int:
        return self.sub0 + entry * _STEP

    def cursor_offset(self, entry: int) -> int:
        """Byte offset (from the body) of an entry's cursor word, for the C ring."""
        return CONTROL_SIZE + entry * SUBSCRIBER_SIZE + 8 * _S_CURSOR

    def start_cursor(self, start: str | int, published: int) -> int:
        if start == "latest":
            return published
        if start == "oldest":
            return self.oldest(published)
        assert isinstance(start, int)
        if start > published:
            raise ValueError(f"start #{start} is beyond the {published} messages published")
        return start

    def join(self, entry: int, start: str | int, tethered: bool, ring: _seqlock.Ring) -> int:
        """Fill a claimed entry and return the subscriber's first message number.

        In a back-pressured ring a tethered subscriber is protected from its
        first message on: it stores its cursor and state, then ``ring.join()``
        voids the publisher's cached room and returns ``published`` as seen
        after that; every message the publisher may write without re-scanning
        is below that number + 1, so the subscriber starts no lower than
        that number + 1 - slots (``"latest"``: at that number).
        """
        q = self.q
        base = self.entry_base(entry)
        cursor = self.start_cursor(start, int(q[_PUBLISHED]))
        me = _process.current()
        q[base + _S_PID], q[base + _S_START] = me.pid, me.start
        q[base + _S_FIRST] = cursor
        q[base + _S_MISSED] = q[base + _S_SKIPPED] = q[base + _S_OVERRUNS] = 0
        q[base + _S_CURSOR] = cursor
        q[base + _S_STATE] = _TETHERED if tethered else _UNTETHERED  # state last
        if tethered and self.params.backpressure:
            seen = ring.join()
            if start == "latest":
                cursor = max(cursor, seen)
            elif start == "oldest":
                cursor = max(cursor, seen + 1 - self.slots)
            q[base + _S_FIRST] = cursor
            ring.store_cursor(cursor)  # only ever forward; wakes a waiting publisher
        return cursor

    def leave(self, entry: int) -> None:
        """Free a subscriber entry and its lock byte."""
        self.q[self.entry_base(entry) + _S_STATE] = _FREE
        if self.fd is not None:
            try:
                _ofd.unlock(self.fd, self.body_off + CONTROL_SIZE + entry * SUBSCRIBER_SIZE)
            except OSError:
                pass


# ---------------------------------------------------------------------------- statistics


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


def collect(ctl: Control, alive: bool, own: int) -> BroadcastStatistics:
    """A statistics snapshot (``own``: the caller's entry, counted alive)."""
    q = ctl.q
    p = ctl.params
    published = int(q[_PUBLISHED])
    state = int(q[_PUB_STATE])
    subs = []
    for i in range(p.max_subscribers):
        base = ctl.entry_base(i)
        st = int(q[base + _S_STATE])
        if st == _FREE:
            continue
        cursor, first = int(q[base + _S_CURSOR]), int(q[base + _S_FIRST])
        missed, skipped = int(q[base + _S_MISSED]), int(q[base + _S_SKIPPED])
        subs.append(
            SubscriberInfo(
                slot=i,
                pid=int(q[base + _S_PID]),
                alive=i == own or ctl.entry_alive(i),
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
        name=ctl.name,
        slot_size=p.slot_size,
        slots=p.slots,
        max_subscribers=p.max_subscribers,
        backpressure=p.backpressure,
        checksum=p.checksum,
        published=published,
        oldest=ctl.oldest(published),
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
    ctl = Control(seg, params, owned=False)  # the caller owns seg
    try:
        stats = asdict(collect(ctl, ctl.publisher_alive(), -1))
        stats["subscribers"] = list(stats["subscribers"])  # JSON arrays, not tuples
        return stats
    finally:
        ctl.close()
