"""Who reserves or claims a large message in a Queue, and whether that process is alive.

A reservation or claim records an identity word (see the layout table in
``queue_ring.py``, QUE4): the handle's attach slot, whose OFD lock the kernel
drops when the process dies, in any PID namespace. A pid read from shared
memory alone is never trusted across PID namespaces; what cannot be known is
"unknown", treated as alive, never acted on (issue 9 item 1).
"""

from __future__ import annotations

import os
from typing import Final

from .. import _layout, _ofd, _process
from ..segment import Segment

__all__ = ["_Claim", "_Reservation", "holder_liveness", "identity"]

_M31: Final = 0x7FFF_FFFF
_M32: Final = 0xFFFF_FFFF
#: Identity tags (high 32 bits of a claim's or reservation's identity word).
_TAG_NS: Final = 1 << 31  # no attach slot: | the pid namespace's id (31 bits)
_pidns_cache: list[int] = [0, 0]  # pid, namespace id


def _pidns() -> int:
    """This process's PID namespace (31 bits of its inode; 0 if unknown)."""
    pid = os.getpid()
    if _pidns_cache[0] != pid:
        try:
            ns = os.stat("/proc/self/ns/pid").st_ino & _M31
        except OSError:
            ns = 0
        _pidns_cache[:] = [pid, ns]
    return _pidns_cache[1]


def identity(seg: Segment | None) -> tuple[int, int]:
    """Who reserves or claims: (pid | tag << 32, start time), as recorded in the segment.

    The tag is the handle's attach slot + 1: others judge it alive by that
    slot's OFD lock, which the kernel drops when the process dies, in any
    PID namespace. A handle without a slot (a forked child's inherited one,
    a full table) records its PID namespace instead; its pid is trusted
    only by processes of the same namespace, and is "unknown" (alive) to others.
    """
    me = _process.current()
    slot: int = getattr(seg, "_slot", -1) if seg is not None else -1
    tag = slot + 1 if slot >= 0 else _TAG_NS | _pidns()
    return (me.pid & _M32) | tag << 32, me.start


def holder_liveness(seg: Segment | None, word: int, ticks: int) -> _process.Liveness:
    """Is the reserver or claimer recorded as ``word``/``ticks`` alive? Never DEAD on a guess."""
    unknown = _process.Liveness.UNKNOWN
    tag, pid = word >> 32, word & _M32
    if seg is None or seg.header is None:
        return unknown
    hdr = seg.header
    if 1 <= tag <= hdr.attach_slots:
        slot = tag - 1
        if slot == getattr(seg, "_slot", -1):
            return _process.Liveness.ALIVE  # this very handle's slot: us
        fd = seg._lock_fd
        if fd is None:
            return unknown
        off = hdr.attach_off + slot * _layout.ATTACH_SLOT
        rpid, rstart, _boot = _layout.ATTACH_SLOT_STRUCT.unpack_from(seg.mmap, off)
        if (rpid, rstart) != (pid, ticks):
            return _process.Liveness.DEAD  # it detached (or died): the slot is free or another's
        return _process.Liveness.ALIVE if _ofd.is_locked(fd, off) else _process.Liveness.DEAD
    if tag & _TAG_NS and (tag & _M31) == _pidns() != 0 and 0 < pid <= _process.PID_MAX:
        return _process.liveness(pid, ticks)
    return unknown  # another PID namespace, or a word we cannot read: never acted on


class _Reservation:
    """Space reserved at tail for one large record, written after unlocking."""

    __slots__ = ("n", "pos", "seq", "who")

    def __init__(self, pos: int, seq: int, n: int, who: int) -> None:
        self.pos = pos  # stream position of the record (tail when reserved)
        self.seq = seq  # its sequence number (puts when reserved)
        self.n = n
        self.who = who  # the identity word recorded (identity())


class _Claim:
    """A record taken under the lock whose payload is copied out after unlocking."""

    __slots__ = ("n", "pos", "start", "who")

    def __init__(self, pos: int, start: int, n: int, who: int) -> None:
        self.pos = pos  # stream position of the record (the claim word)
        self.start = start  # ring index of its payload
        self.n = n
        self.who = who  # the identity word recorded (identity())
