"""Broadcast's Subscriber: one reader with its own cursor, and its waiting policy.

Import it from ``shmkit.broadcast`` (or ``shmkit``); it lives here to keep
each module small. The protocol under it (entry, cursor, reads, Overrun
accounting) is ``shmkit._shm.broadcast_reader.Reader``.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Literal

from . import _wait
from ._handle import Handle
from ._shm.broadcast_control import BroadcastStatistics, collect, live
from ._shm.broadcast_reader import AGAIN, BYTES, INTO, RETRY, VIEW, Reader
from ._shm.broadcast_ring import _PUBLISHED
from ._shm.broadcast_views import Message, as_bytes
from .errors import Closed, Empty, LayoutError, PeerDied

if TYPE_CHECKING:
    from .broadcast import Broadcast

__all__ = ["Subscriber"]

Start = Literal["latest", "oldest"] | int
OnOverrun = Literal["oldest", "newest"]


class Subscriber(Handle):
    """One reader of a broadcast, with its own cursor; holds its own :class:`Broadcast`.

    Not thread-safe per handle. Counters (this handle): ``received``,
    ``missed`` (lost to overruns), ``skipped`` (jumped over by
    ``recv_latest``), ``overruns`` (Overrun events). Pickling keeps the
    position: the copy is a new subscriber whose first message is the one
    this handle would receive next.
    """

    def __init__(self, bc: Broadcast, start: Start, on_overrun: OnOverrun, tethered: bool) -> None:
        try:
            if on_overrun not in ("oldest", "newest"):
                raise ValueError(f"on_overrun must be 'oldest' or 'newest', not {on_overrun!r}")
            if not (
                start in ("latest", "oldest")
                or (isinstance(start, int) and not isinstance(start, bool) and start >= 0)
            ):
                raise ValueError(
                    f"start must be 'latest', 'oldest' or a message number >= 0: {start!r}"
                )
            self._reader = Reader(bc._ctl, start, on_overrun == "newest", bool(tethered))
        except BaseException:
            bc.close()
            raise
        self._bc = bc
        self._name = bc.name
        self._q = bc._q
        self._ring = self._reader.ring
        self._on_overrun: OnOverrun = on_overrun
        self._tethered = bool(tethered)
        self._spin: float | None = None
        self._closed = False
        live.add(self)

    def close(self) -> None:
        """Leave the broadcast (idempotent); a back-pressured publisher stops waiting for us."""
        if self._closed:
            if not self._bc.closed:  # retired by fork: just let go of the mapping
                self._bc.close()
            return
        self._closed = True
        live.discard(self)
        self._reader.leave()
        self._bc.close()

    def __reduce__(self) -> tuple[Any, ...]:
        args = (self._name, self.next_seq, self._on_overrun, self._tethered, self._spin)
        return (_resubscribe, args)

    @property
    def spin(self) -> float | None:
        """Seconds a receive waits spinning (pause instruction) before it sleeps.

        None (the default) adapts: 20 µs, doubled while messages keep coming
        just after the spin ended, up to 250 µs. A number fixes it: 0 sleeps
        at once (least CPU); up to 1 second suits a reader with a core of its
        own waiting for frames that come every few hundred µs (it then never
        pays a wake-up, nor does the publisher). Either way a spinner that
        finds itself descheduled sleeps at once. ``sub.spin = 0.001``
        """
        return self._spin

    @spin.setter
    def spin(self, seconds: float | None) -> None:
        if seconds is None:
            self._spin = None
            return
        self._ring.fixed_spin = self._spin = _wait.check_spin(seconds)

    def __repr__(self) -> str:
        state = " closed" if self._closed else f" next=#{self._ring.next}"
        return f"<Subscriber of {self._name!r}{state}>"

    def _after_fork_in_child(self) -> None:
        # The parent owns the entry; the child's copy must not free or move it.
        self._closed = True
        self._reader.closed = True

    def _check(self) -> None:
        if self._closed:
            self._bc._check()
            raise Closed(f"broadcast {self._name!r} subscriber is closed")

    closed = property(lambda self: self._closed, doc="True after close().")
    params = property(lambda self: self._bc.params, doc="The ring's settings.")
    slot_size = property(lambda self: self._bc.slot_size, doc="Largest message in bytes.")
    slots = property(lambda self: self._bc.slots, doc="Ring length.")
    missed = property(lambda self: self._reader.missed, doc="Messages lost to overruns.")
    skipped = property(lambda self: self._reader.skipped, doc="Skipped by recv_latest.")
    overruns = property(lambda self: self._reader.overruns, doc="Overrun events.")

    @property
    def _entry(self) -> int:
        return self._reader.entry

    @property
    def published(self) -> int:
        """Messages published so far (the number the next message will get)."""
        self._check()
        return int(self._q[_PUBLISHED])

    @property
    def publisher_alive(self) -> bool:
        self._check()
        return self._bc._ctl.publisher_alive()

    @property
    def next_seq(self) -> int:
        """Number of the next message this subscriber will receive."""
        return self._ring.next

    @property
    def received(self) -> int:
        r = self._reader
        return self._ring.next - r.first - r.missed - r.skipped

    @property
    def lag(self) -> int:
        """Messages published that this subscriber has not consumed yet."""
        self._check()
        return max(0, int(self._q[_PUBLISHED]) - self._ring.next)

    def statistics(self) -> BroadcastStatistics:
        """A snapshot of the ring (see :meth:`Broadcast.statistics`)."""
        self._check()
        ctl = self._bc._ctl
        return collect(ctl, ctl.publisher_alive(), self._reader.entry)

    def unlink(self) -> None:
        """Remove the broadcast's name for everyone; open handles keep working."""
        self._bc.unlink()

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
        result: bytes = self._recv_slow(timeout, False, BYTES, None)
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
        result: bytes = self._recv_slow(timeout, True, BYTES, None)
        return result

    def recv_into(self, buffer: Any, timeout: float | None = None, *, latest: bool = False) -> int:
        """Copy the next message into ``buffer`` (writable, C-contiguous); return its size.

        Raises MessageTooLarge, without consuming the message, if it does not
        fit. If an Overrun is raised, ``buffer`` may hold garbage.
        """
        if timeout is not None and not (type(timeout) is float and timeout >= 0.0):
            timeout = _wait.check_timeout(timeout)
        dst = as_bytes(buffer)
        if dst.readonly:
            raise TypeError("recv_into needs a writable buffer")
        if not (latest or self._closed):
            got = self._ring.recv_into(dst)  # never reads past the slot's end
            if got >= 0:
                return got
        result: int = self._recv_slow(timeout, latest, INTO, dst)
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
                return self._reader.view(self._ring.next - 1, length)
        result: Message = self._recv_slow(timeout, latest, VIEW, None)
        return result

    def _recv_slow(self, timeout: float | None, latest: bool, mode: int, dst: Any) -> Any:
        try:
            return self._recv_loop(timeout, latest, mode, dst)
        except ValueError:
            if self._closed:  # closed by another thread: our views were released
                self._check()
            raise

    def _recv_loop(self, timeout: float | None, latest: bool, mode: int, dst: Any) -> Any:
        self._check()
        end = None if timeout is None else time.monotonic() + timeout
        q, reader, ring = self._q, self._reader, self._ring
        retries = 0
        while True:
            n = ring.next
            published = q[_PUBLISHED]
            if n < published:
                if latest and published - 1 > n:
                    reader.skip(published - 1 - n)
                    n = ring.next
                got = reader.read(n, mode, dst, latest)
                if got is AGAIN:
                    continue
                if got is not RETRY:
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

    def _wait_published(self, n: int, end: float | None, adaptive: bool = True) -> bool:
        """Block until message n is published. False at the deadline.

        Spins first (in C, with a pause instruction; :attr:`spin`, adaptive
        by default, or 20 µs with ``adaptive=False``), then sleeps on the
        futex in slices of at most ``_wait.SLICE``; raises PeerDied (no live
        publisher, nothing new) and Closed (closed by another thread) between
        slices.
        """
        q = self._q
        if end is not None and time.monotonic() >= end:
            return False
        ring, ctl = self._ring, self._bc._ctl
        # ring.wait's spin: 2 adaptive, 3 the user's (spin), 1 a fixed 20 µs, 0 none
        # (the first slice only)
        spin = 1 if not adaptive else 2 if self._spin is None else 3
        checked = False
        while True:
            if not checked or self._closed:
                self._check()
                if not ctl.publisher_alive() and q[_PUBLISHED] <= n:
                    raise PeerDied(ctl.publisher_gone())
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
            spin = 0
            checked = False


def _resubscribe(
    name: str, start: int, on_overrun: OnOverrun, tethered: bool, spin: float | None = None
) -> Subscriber:
    from .broadcast import Broadcast  # noqa: PLC0415 - broadcast imports this module

    sub = Subscriber(Broadcast.open(name), start, on_overrun, tethered)
    sub.spin = spin
    return sub
