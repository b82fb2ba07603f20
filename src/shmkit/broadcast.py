"""Broadcast: one publisher, any number of subscribers, a ring of fixed-size slots.

Every subscriber has its own cursor, joins and leaves at any time, and reads
every message in order unless it falls more than ``slots`` messages behind.
**By default the ring is lossy**: the publisher never waits, it overwrites
what a slow subscriber had not read, and that subscriber's next receive
raises :class:`~shmkit.errors.Overrun` carrying exactly how many messages it
lost, before it carries on from the oldest message still in the ring (or the
newest, with ``on_overrun="newest"``). **For lossless fan-out pass
``backpressure=True``** when creating the ring: the publisher then waits for
the slowest live tethered subscriber instead of overwriting, and a joining
subscriber is protected from its first message on. A message is never
delivered torn, in either mode.

Publisher (re-running it is fine: ``publisher`` opens or creates the ring)::

    pub = shmkit.publisher("frames", slot_size=1920 * 1080 * 3, slots=8)
    pub.publish(frame)                             # copies in (memcpy speed)
    with pub.loan(dtype="u1", shape=(1080, 1920, 3)) as img:
        camera.read_into(img)                      # fill the slot in place
    # published on leaving the block; not published if the block raised

Subscriber (any process)::

    sub = shmkit.subscribe("frames")               # from the next message on
    data = sub.recv(timeout=1.0)                   # bytes (a copy); Empty on timeout
    n = sub.recv_into(buffer)                      # copy into your own buffer
    with sub.recv_view() as msg:                   # zero-copy, read-only
        img = msg.array("u1", (1080, 1920, 3))
        result = model(img)
    # leaving the block checks the slot was not overwritten meanwhile: Overrun if it was

The ring itself is a :class:`Broadcast` handle (``create``, ``open``,
``open_or_create``); its :meth:`~Broadcast.publisher` and
:meth:`~Broadcast.subscribe` give the two roles, each holding its own
Broadcast handle (its own mapping, closed with it).

Zero-copy reads are *checked after use*, Agrona style: a view is never
pinned against a lossy publisher, so the block's exit (or
``msg.validate()``) re-reads the slot's sequence word and raises ``Overrun``
if the message was overwritten while you held it. In back-pressure mode a
held view *is* pinned until released (the cursor only moves on release).

The publisher is a single live process at a time, held by a kernel lock that
dies with it. When no live publisher is attached and nothing is left to read,
``recv`` raises :class:`~shmkit.errors.PeerDied`. A new publisher can attach
after the old one closed or died: it repairs the ring and numbering carries
on (never backwards), so subscribers simply resume.

Transfers between processes (pickling): a ``Broadcast`` re-opens by name; a
``Subscriber`` becomes a new subscriber at the position the original would
read next; a ``Publisher`` refuses with ``TypeError`` (one live publisher per
ring: pass the name and call :func:`publisher` there).

Memory model: the seqlock of ``shmkit._core._seqlock``; the format and its
ordering rule are drawn in ``shmkit._shm.broadcast_ring``, the control-block
protocol is ``shmkit._shm.broadcast_control``.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Final

from . import _core, _mutex, _wait
from ._broadcast_subscriber import OnOverrun, Start, Subscriber
from ._handle import Handle, built_or_removed
from ._layout import Kind
from ._shm.broadcast_control import (
    BroadcastStatistics,
    Control,
    SubscriberInfo,
    collect,
    describe,
    live,
    open_segment,
)
from ._shm.broadcast_ring import (
    _MUTEX_OFF,
    _PUB_PID,
    _PUBLISHED,
    CONTROL_SIZE,
    MAX_SLOT_SIZE,
    MAX_SLOTS,
    MAX_SUBSCRIBERS,
    PARAMS,
    PARAMS_VERSION,
    RING_BP,
    SLOT_HEADER,
    Params,
    parse_image,
    parse_params,
)
from ._shm.broadcast_views import Loan, Message, array_maker, check_int
from .errors import (
    Closed,
    Full,
    LayoutError,
    MessageTooLarge,
    PublisherBusy,
)
from .segment import Segment, open_or_create

if TYPE_CHECKING:
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
    "publisher",
    "subscribe",
    "describe",
    "parse_params",
    "parse_image",
]


_FORKED: Final = "inherited across fork() (open a new handle in the child)"


# ---------------------------------------------------------------------------- the ring


class Broadcast(Handle):
    """A handle on a named broadcast ring: inspect it, publish or subscribe.

    ``create``, ``open`` and ``open_or_create`` all return a Broadcast; its
    :meth:`publisher` and :meth:`subscribe` give the two roles. Each role
    holds its own Broadcast (its own mapping), so closing this handle leaves
    them working. Pickles by name: the copy re-opens the ring.
    """

    def __init__(self, ctl: Control) -> None:
        self._ctl = ctl
        self._name = ctl.name
        self._params = ctl.params
        self._q: memoryview = ctl.q
        self._closed = False
        self._closed_why = "closed"
        live.add(self)

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
    ) -> Broadcast:
        """Create a broadcast ring; call :meth:`publisher` on it to publish.

        Args:
            slot_size: largest message in bytes (each slot holds one message).
            slots: ring length; a subscriber more than ``slots`` messages behind
                is overrun (unless ``backpressure``).
            max_subscribers: size of the subscriber table (live subscribers at once).
            mode: permission bits; subscribers need read and write access.
            backpressure: lossless fan-out: the publisher waits for the slowest
                live tethered subscriber instead of overwriting. The default
                (False) is lossy: a subscriber that falls ``slots`` behind
                loses messages and is told so (Overrun).
            checksum: CRC32-check every message: an integrity option against
                corruption (off by default; never needed against torn reads).

        Raises AlreadyExists, InvalidName, ShmFull, TypeError/ValueError.
        """
        params = _make_params(slot_size, slots, max_subscribers, backpressure, checksum)

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
        return built_or_removed(seg, lambda: cls(Control(seg, params)))

    @classmethod
    def open(
        cls, name: str, *, wait: float | None = 0.0, trust_uids: Iterable[int] | None = None
    ) -> Broadcast:
        """Open an existing broadcast by name (validates header, params and control block).

        ``wait``, ``trust_uids``: see :meth:`Segment.open`. Raises NotFound,
        LayoutError (not a broadcast, or corrupt), NotReady.
        """
        seg, params = open_segment(name, wait, trust_uids)
        try:
            return cls(Control(seg, params))
        except BaseException:
            seg.close()
            raise

    @classmethod
    def open_or_create(
        cls,
        name: str,
        slot_size: int,
        slots: int = 8,
        *,
        max_subscribers: int = 32,
        mode: int = 0o600,
        backpressure: bool = False,
        checksum: bool | None = None,
    ) -> Broadcast:
        """Open ``name`` or create it with these settings; safe when many processes race.

        Raises LayoutError if it exists with another slot size, slot count or
        back-pressure setting (max_subscribers and checksum are the creator's).
        """
        want = _make_params(slot_size, slots, max_subscribers, backpressure, checksum)

        def create() -> Broadcast:
            return cls.create(
                name,
                slot_size,
                slots,
                max_subscribers=max_subscribers,
                mode=mode,
                backpressure=backpressure,
                checksum=checksum,
            )

        def check(bc: Broadcast) -> None:
            have = bc._params
            if (have.slot_size, have.slots, have.backpressure) != (
                want.slot_size,
                want.slots,
                want.backpressure,
            ):
                raise LayoutError(
                    f"broadcast {name!r} exists with {have.slots}x{have.slot_size} B slots"
                    f"{', back-pressure' if have.backpressure else ', lossy'}; asked for "
                    f"{want.slots}x{want.slot_size} B{', back-pressure' if backpressure else ''}"
                )

        return open_or_create(create, lambda: cls.open(name), f"broadcast {name!r}", check)

    def publisher(self, timeout: float | None = 0.0) -> Publisher:
        """Become the publisher (the ring's one live writer).

        Repairs what a dead publisher left half-done; subscribers resume.
        Raises PublisherBusy if another live process still publishes after
        ``timeout`` seconds (0: fail at once).
        """
        self._check()
        timeout = _wait.check_timeout(timeout)
        return Publisher(Broadcast.open(self._name), timeout=timeout)

    def subscribe(
        self,
        start: Start = "latest",
        *,
        on_overrun: OnOverrun = "oldest",
        tethered: bool = True,
    ) -> Subscriber:
        """A new subscriber of this broadcast (its own mapping; close it separately).

        Args:
            start: ``"latest"`` receives messages published from now on;
                ``"oldest"`` starts with the oldest message still in the ring
                (with back-pressure: the oldest one the publisher can no
                longer overwrite); an int resumes at that message number
                (``statistics().published`` or a ``Message.seq`` + 1).
            on_overrun: after an Overrun, continue at the ``"oldest"`` message
                still in the ring or jump to the ``"newest"``.
            tethered: in back-pressure mode, whether the publisher waits for
                this subscriber (False: it may be overrun, Aeron's "untethered").
        """
        self._check()
        return Subscriber(Broadcast.open(self._name), start, on_overrun, tethered)

    def close(self) -> None:
        """Detach this handle (idempotent). The broadcast lives on until ``unlink()``."""
        if self._closed and self._closed_why == "closed":
            return
        live.discard(self)
        self._closed, self._closed_why = True, "closed"
        self._ctl.close()

    def __repr__(self) -> str:
        p = self._params
        state = f" {self._closed_why}" if self._closed else ""
        mode = " backpressure" if p.backpressure else ""
        return f"<Broadcast {self._name!r} {p.slots}x{p.slot_size} B{mode}{state}>"

    def _after_fork_in_child(self) -> None:
        # Our OFD locks are shared with the parent through the inherited fd:
        # drop the fd so the parent's death still releases them, and retire
        # the handle (two publishers, or two owners of one subscriber entry,
        # would corrupt the ring). Shared memory is left as the parent has it.
        self._ctl.drop_fd()
        self._closed, self._closed_why = True, _FORKED

    # ------------------------------------------------------------------ access

    def _check(self) -> None:
        if self._closed:
            raise Closed(f"broadcast {self._name!r} handle is {self._closed_why}")

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def params(self) -> Params:
        return self._params

    @property
    def slot_size(self) -> int:
        return self._params.slot_size

    @property
    def slots(self) -> int:
        return self._params.slots

    @property
    def backpressure(self) -> bool:
        """True for a lossless (back-pressured) ring, False for the default lossy one."""
        return self._params.backpressure

    @property
    def published(self) -> int:
        """Messages published so far (the number the next message will get)."""
        self._check()
        return int(self._q[_PUBLISHED])

    @property
    def publisher_alive(self) -> bool:
        """True while a live publisher is attached (a dead one is noticed at once)."""
        self._check()
        return self._ctl.publisher_alive()

    def statistics(self) -> BroadcastStatistics:
        """A snapshot: counts, publisher, and every subscriber's lag and losses."""
        self._check()
        return collect(self._ctl, self._ctl.publisher_alive(), -1)


def _make_params(
    slot_size: int, slots: int, max_subscribers: int, backpressure: bool, checksum: bool | None
) -> Params:
    slot_size = check_int(slot_size, "slot_size", 1, MAX_SLOT_SIZE)
    slots = check_int(slots, "slots", 1, MAX_SLOTS)
    max_subscribers = check_int(max_subscribers, "max_subscribers", 1, MAX_SUBSCRIBERS)
    # the seqlock alone rules out torn reads on every CPU: the CRC is opt-in integrity
    return Params(slot_size, slots, max_subscribers, bool(backpressure), bool(checksum))


def publisher(
    name: str,
    slot_size: int | None = None,
    slots: int = 8,
    *,
    backpressure: bool = False,
    max_subscribers: int = 32,
    mode: int = 0o600,
    checksum: bool | None = None,
    timeout: float | None = 0.0,
    wait: float | None = 0.0,
) -> Publisher:
    """Become the publisher of broadcast ``name``, creating it if ``slot_size`` is given.

    Re-running a writer is fine: with ``slot_size`` the ring is opened if it
    exists (same slot size, slots and ``backpressure``) and created
    otherwise, and a new publisher carries on the numbering of a previous
    one that closed or died. ``backpressure=True`` makes the ring lossless
    (the default is lossy). Raises PublisherBusy if another live process
    still publishes after ``timeout`` seconds, NotFound without
    ``slot_size`` if the ring does not exist (after ``wait`` seconds), LayoutError
    on a mismatch.
    """
    if slot_size is None:
        bc = Broadcast.open(name, wait=wait)
    else:
        bc = Broadcast.open_or_create(
            name,
            slot_size,
            slots,
            max_subscribers=max_subscribers,
            mode=mode,
            backpressure=backpressure,
            checksum=checksum,
        )
    with bc:
        return bc.publisher(timeout)


def subscribe(
    name: str,
    start: Start = "latest",
    *,
    on_overrun: OnOverrun = "oldest",
    tethered: bool = True,
    wait: float | None = 0.0,
    trust_uids: Iterable[int] | None = None,
) -> Subscriber:
    """Subscribe to the broadcast called ``name`` (see :meth:`Broadcast.subscribe`).

    ``wait`` seconds (None: forever) lets a subscriber start before its publisher.
    """
    bc = Broadcast.open(name, wait=wait, trust_uids=trust_uids)
    return Subscriber(bc, start, on_overrun, tethered)


def _after_fork_in_child() -> None:
    for handle in list(live):
        handle._after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


# ---------------------------------------------------------------------------- publisher


class Publisher(Handle):
    """The one live writer of a broadcast; holds its own :class:`Broadcast`.

    Not thread-safe: one thread publishes. Cannot be pickled (one live
    publisher per ring): pass the name and call :func:`publisher` in the
    other process.
    """

    def __init__(self, bc: Broadcast, *, timeout: float | None) -> None:
        self._bc = bc
        self._ctl = ctl = bc._ctl
        self._name = bc.name
        self._slots = ctl.slots
        self._slot_size = ctl.params.slot_size
        self._loan: Loan | None = None
        self._closed = True
        try:
            self._ring = ctl.ring(-1, RING_BP if ctl.params.backpressure else 0)
            if not ctl.lock_publisher(timeout):
                raise PublisherBusy(
                    f"broadcast {self._name!r} already has a live publisher "
                    f"(pid {ctl.q[_PUB_PID]}); close it first, or wait with timeout="
                )
            self._ring.next, repaired = ctl.repair()
            if repaired:
                self._ring.wake_readers()
            ctl.prefault()
            ctl.mark_attached()
            if ctl.params.backpressure:
                self._ring.room = self._ring.next + self._slots
        except BaseException:
            bc.close()
            raise
        self._closed = False
        live.add(self)

    def close(self) -> None:
        """Stop publishing and detach. Subscribers drain what is left, then get PeerDied."""
        if self._closed:
            if not self._bc.closed:  # retired by fork: just let go of the mapping
                self._ring.close()
                self._bc.close()
            return
        if self._loan is not None:
            self._loan.abort()
        self._ctl.mark_closed()
        self._ring.wake_readers()  # sleepers learn at once, not at their next slice
        self._closed = True
        live.discard(self)
        self._ring.close()
        self._bc.close()

    def __reduce__(self) -> tuple[Any, ...]:
        raise TypeError(
            f"a Publisher of broadcast {self._name!r} cannot be pickled: a ring has one live "
            f"publisher. Pass the name and call shmkit.publisher({self._name!r}) in the other "
            "process (after this one closes)"
        )

    def __repr__(self) -> str:
        state = " closed" if self._closed else f" next=#{self._ring.next}"
        return f"<Publisher of {self._name!r} {self._slots}x{self._slot_size} B{state}>"

    def _after_fork_in_child(self) -> None:
        self._closed = True  # the parent is the publisher; the child's copy is retired

    def _check(self) -> None:
        if self._closed:
            self._bc._check()
            raise Closed(f"broadcast {self._name!r} publisher is closed")

    closed = property(lambda self: self._closed, doc="True after close().")
    params = property(lambda self: self._bc.params, doc="The ring's settings.")
    slot_size = property(lambda self: self._slot_size, doc="Largest message in bytes.")
    slots = property(lambda self: self._slots, doc="Ring length.")
    backpressure = property(lambda self: self._bc.backpressure, doc="True if lossless.")

    @property
    def published(self) -> int:
        """Messages published so far (the number the next message will get)."""
        self._check()
        return int(self._bc._q[_PUBLISHED])

    @property
    def publisher_alive(self) -> bool:
        return not self._closed

    def statistics(self) -> BroadcastStatistics:
        """A snapshot of the ring (see :meth:`Broadcast.statistics`)."""
        self._check()
        return collect(self._ctl, True, -1)

    def unlink(self) -> None:
        """Remove the broadcast's name for everyone; open handles keep working."""
        self._bc.unlink()

    # ------------------------------------------------------------------ publishing

    def publish(self, data: Any, timeout: float | None = None) -> int:
        """Copy ``data`` (any C-contiguous buffer: bytes, memoryview, ndarray) into the ring.

        Lossy ring (the default): never waits; a subscriber more than
        ``slots`` behind is overrun. Back-pressured ring: waits up to
        ``timeout`` for the slowest live tethered subscriber and raises Full
        if it does not catch up.

        Returns the message number. Raises MessageTooLarge (nothing written)
        if ``data`` is larger than a slot, TypeError for a non-contiguous buffer.
        """
        if timeout is not None and not (type(timeout) is float and timeout >= 0.0):
            timeout = _wait.check_timeout(timeout)  # ints, NaN, negatives: the slow check
        if self._closed or self._loan is not None:
            self._check_publish()
        p = self._ring.publish(data)  # the whole publish, crash points included
        while p < 0:  # back-pressure: message p needs room (or a re-scan) first
            self._make_room(self._ring.next, timeout)
            p = self._ring.publish(data)
        return p

    def _skip(self, count: int) -> int:
        """Number ``count`` messages as lost without publishing them; return the next number.

        For relays (``shmkit bridge``) that learn of messages lost upstream:
        a subscriber that reaches a skipped number gets ``Overrun`` counting
        it, exactly as if the message had been overwritten, never a silent
        gap. Each skipped slot gets (a release store) the odd sequence ``2(m + slots) + 1``
        ("being written", as a publisher leaves it mid-copy; ``repair``
        ignores it) so readers of message m see it lapped, then
        ``published`` moves on. Lossy rings only (a back-pressured ring has
        no lost messages to report): ValueError otherwise.
        """
        self._check_publish()
        if self._bc.backpressure:
            raise ValueError(f"broadcast {self._name!r}: _skip needs a lossy ring")
        count = check_int(count, "count", 0, 1 << 62)
        ctl, slots = self._ctl, self._slots
        n = self._ring.next
        end = n + count
        region = _core.Region(ctl._mm)
        try:
            base = ctl.body_off
            for m in range(max(n, end - slots), end):
                # release: each marker is visible before published below
                region.store64(base + 8 * ctl.slot_base(m), 2 * (m + slots) + 1)
            # release: pairs with the acquire load of published in every reader
            region.store64(base + 8 * _PUBLISHED, end)
        finally:
            region.close()
        self._ring.next = end
        self._ring.wake_readers()
        return end

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
            make, nbytes = array_maker(dtype, shape, nbytes, self._slot_size)
        elif shape is not None:
            raise TypeError("shape= needs dtype=")
        if nbytes is None:
            nbytes = self._slot_size
        nbytes = check_int(nbytes, "nbytes", 0, MAX_SLOT_SIZE)
        if nbytes > self._slot_size:
            raise MessageTooLarge(
                f"a loan of {nbytes} bytes does not fit broadcast {self._name!r} "
                f"(slot size {self._slot_size})"
            )
        p = self._ring.loan()  # marks the slot busy, fenced
        while p < 0:
            self._make_room(self._ring.next, timeout)
            p = self._ring.loan()
        base = self._ctl.slot_base(p)
        off = base * 8 + SLOT_HEADER
        view = self._ctl.mv[off : off + nbytes]
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
        if not self._closed:
            self._ring.abort()

    # ------------------------------------------------------------------ back-pressure

    def _make_room(self, p: int, timeout: float | None, adaptive: bool = True) -> None:
        """Wait until every live tethered subscriber consumed message p - slots.

        One C call per slice (``ring.make_room``) scans the cursors, announces
        the wait and waits like a receiver: it spins with a pause instruction
        (the adaptive budget, or 20 µs with ``adaptive=False``), then sleeps on
        the progress futex.
        """
        ctl, ring = self._ctl, self._ring
        fd = -1 if ctl.fd is None else ctl.fd
        subs = ctl.params.max_subscribers
        end = math.inf if timeout is None else time.monotonic() + timeout
        while True:
            remaining = end - time.monotonic()
            got = ring.make_room(p, subs, fd, max(0.0, min(remaining, _wait.SLICE)), adaptive)
            if got > 0:
                return
            if got < 0:  # no OFD locks: a subscriber behind needs the Python probe
                try:
                    if not ctl.wait_room_probing(ring, p, end, adaptive, self._check):
                        raise self._no_room(p, timeout)
                finally:
                    if not self._closed:  # (closed by another thread: the words are gone)
                        ctl.stop_waiting()
                return
            if time.monotonic() >= end:
                raise self._no_room(p, timeout)
            self._check()

    def _no_room(self, p: int, timeout: float | None) -> Full:
        need = p - self._slots + 1
        return Full(
            f"broadcast {self._name!r}: no room for message #{p} within {timeout} s; "
            f"slowest: {self._ctl.laggards(need)}"
        )
