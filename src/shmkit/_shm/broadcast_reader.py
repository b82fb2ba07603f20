"""A broadcast subscriber's side of the protocol: its entry, cursor, counters and reads.

:class:`Reader` owns one claimed subscriber entry and the C ring bound to its
cursor word. It reads message n in one C call and turns what the ring says
into a value, a retry, or an :class:`~shmkit.errors.Overrun` with the exact
count lost; it keeps the cursor behind held zero-copy views. Waiting,
timeouts and the public surface are ``shmkit.broadcast.Subscriber``'s.
"""

from __future__ import annotations

import os
from typing import Any, Final

from .._core import _seqlock
from ..errors import Closed, LayoutError, MessageTooLarge, Overrun
from .broadcast_control import Control
from .broadcast_ring import _PUBLISHED, _S_MISSED, _S_OVERRUNS, _S_SKIPPED, RING_BP, SLOT_HEADER
from .broadcast_views import Message

__all__ = ["AGAIN", "BYTES", "INTO", "RETRY", "VIEW", "Reader"]

BYTES: Final = 0
INTO: Final = 1
VIEW: Final = 2
RETRY: Final = object()  # the slot does not show message n yet: re-read (bounded)
AGAIN: Final = object()  # recv_latest was overtaken: go for the new newest


class Reader:
    """One subscriber entry of a broadcast and the C ring over its cursor."""

    def __init__(self, ctl: Control, start: str | int, newest: bool, tethered: bool) -> None:
        self._ctl = ctl
        self.name = ctl.name
        self._q = ctl.q
        self._slots = ctl.slots
        self.newest = newest
        self.closed = False
        self.held: list[int] = []
        self._bad_crc = (-1, 0)  # (message, checksum failures with a stable seq)
        self.missed = self.skipped = self.overruns = 0
        self.entry = ctl.claim_entry()
        try:
            bp = ctl.params.backpressure and tethered
            self.ring = ctl.ring(ctl.cursor_offset(self.entry), RING_BP if bp else 0)
            self.first = ctl.join(self.entry, start, tethered, self.ring)
        except BaseException:
            ctl.leave(self.entry)
            raise
        self._base = ctl.entry_base(self.entry)
        self.ring.next = self.first
        # Wake hints must never repeat a value the publisher already woke for:
        # entry bits keep subscribers apart, random low bits keep a reused entry apart.
        self.ring.hint = (self.entry + 1) << 48 | int.from_bytes(os.urandom(5), "little")

    def leave(self) -> None:
        """Free the entry; a back-pressured publisher stops waiting for us."""
        self.closed = True
        self._ctl.leave(self.entry)
        self.ring.store_cursor(self.ring.next)  # wakes a publisher waiting on our cursor
        self.ring.wake_readers()  # another thread blocked in recv on this handle notices now
        self.ring.close()

    # ------------------------------------------------------------------ reads

    def read(self, n: int, mode: int, dst: Any, latest: bool) -> Any:
        """Read message n if it is whole (one C call); raise Overrun if it was overwritten."""
        ring = self.ring
        ring.next = n
        got: Any
        if mode == BYTES:
            got = ring.recv()
            if type(got) is bytes:
                return got
        elif mode == INTO:
            got = ring.recv_into(dst)
        else:
            got = ring.recv_view()
            if got >= 0:
                return self.view(n, got)
        if got >= 0:
            return got
        if got == _seqlock.LAPPED:
            return self.lapped(n, latest)
        if got == _seqlock.TOO_SMALL:
            raise MessageTooLarge(
                f"message #{n} of {ring.last_len} bytes does not fit a {len(dst)}-byte buffer"
            )
        if got == _seqlock.BAD_CRC:
            bad = self._bad_crc
            self._bad_crc = (n, bad[1] + 1 if bad[0] == n else 1)
            if self._bad_crc[1] >= 3:
                raise LayoutError(
                    f"broadcast {self.name!r}: message #{n} fails its checksum with a "
                    "stable sequence (corrupt slot)"
                )
        return RETRY  # not visible yet, or corrupt: bounded retries

    def view(self, n: int, length: int) -> Message:
        base = self._ctl.slot_base(n)
        off = base * 8 + SLOT_HEADER
        self.held.append(n)
        self.ring.pinned = True
        return Message(self, n, base, self._ctl.mv[off : off + length].toreadonly())

    def lapped(self, n: int, latest: bool) -> object:
        """Message n was overwritten: move on, record the loss, raise Overrun."""
        published = self._q[_PUBLISHED]
        if latest:
            self.skip(max(n + 1, published - 1) - n)
            return AGAIN
        new = max(n + 1, published - 1 if self.newest else self._ctl.oldest(published))
        missed = new - n
        self.ring.next = new
        self._count_missed(missed)
        if not self.held:
            self.ring.store_cursor(new)
        raise Overrun(
            f"subscriber of broadcast {self.name!r} was lapped: {missed} message(s) "
            f"#{n}..#{new - 1} were overwritten before it read them",
            missed=missed,
        )

    def _count_missed(self, missed: int) -> None:
        self.missed += missed
        self.overruns += 1
        self._q[self._base + _S_MISSED] = self.missed
        self._q[self._base + _S_OVERRUNS] = self.overruns

    def skip(self, count: int) -> None:
        self.ring.next += count
        self.skipped += count
        self._q[self._base + _S_SKIPPED] = self.skipped
        if not self.held:
            self.ring.store_cursor(self.ring.next)

    # ------------------------------------------------------------------ Message protocol

    def _check(self) -> None:
        if self.closed:
            raise Closed(f"broadcast {self.name!r} subscriber is closed")

    @property
    def _closed(self) -> bool:
        return self.closed

    def _still_valid(self, seq: int, length: int) -> bool:
        return self.ring.valid(seq, length)

    def _release_view(self, msg: Message) -> None:
        held = self.held
        try:
            held.remove(msg.seq)
        except ValueError:
            return
        if self.closed:
            return
        self.ring.pinned = bool(held)
        self.ring.store_cursor(held[0] if held else self.ring.next)

    def _view_overrun(self, msg: Message) -> Overrun:
        self._count_missed(1)
        return Overrun(
            f"message #{msg.seq} of broadcast {self.name!r} was overwritten while its view "
            "was held: discard what was computed from it",
            missed=1,
        )
