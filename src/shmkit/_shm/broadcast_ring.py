"""Broadcast's shared-memory format: params, control block, subscriber table, slots.

The hot paths over it (publish, commit, recv, validation, futex waits) are
``shmkit._core._seqlock.Ring``; the public class and its policy live in
``shmkit.broadcast``.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from .. import _layout
from .._layout import Kind, align
from ..errors import LayoutError

# Params (immutable, in the segment header, covered by its CRC), little-endian:
#
#   offset size field
#        0    4 version          PARAMS_VERSION (4: C seqlock, futex words, joins word,
#                                 writer_waiting 2 = asleep)
#        4    4 flags            1 back-pressure, 2 checksum
#        8    8 slot_size        payload bytes per slot
#       16    8 stride           align64(64 + slot_size): slot header + payload
#       24    4 slots            ring length
#       28    4 max_subscribers  subscriber table entries
#       32    4 control_size     CONTROL_SIZE
#       36    4 reserved         zero
#
# Body (offsets from the 64-aligned body start; u64 little-endian words):
#
#     0  published      messages published so far = number of the next one.
#                       Its low 32 bits are the futex word readers sleep on.
#     8  wake_hint      a fresh value each reader stores before it sleeps
#    64  pub_state      0 none, 1 attached, 2 closed cleanly (cold line)
#    72  pub_pid        80 pub_start (clock ticks since boot, for PID reuse)
#    88  attaches       publishers attached so far
#    96  repairs        publish indexes rebuilt after a publisher died
#   104  aborted        loans abandoned (block raised, handle closed)
#   128  writer_waiting 1 while a back-pressured publisher waits for room, 2 while it
#                       sleeps on the progress word (only then do readers wake it)
#   136  progress       (u32) bumped by readers that move while writer_waiting
#   144  joins          bumped by each tethered subscriber joining a back-pressured ring
#   192  publisher lock byte: the live publisher holds an OFD lock on it
#   256  robust mutex (only where OFD locks are missing: claims slots under it)
#   320  subscriber table, max_subscribers x 64 bytes, one cache line each:
#          +0 state (0 free, 1 tethered, 2 untethered)  +8 cursor (next to consume)
#          +16 pid  +24 start  +32 first  +40 missed  +48 skipped  +56 overruns
#          The entry's first byte is its OFD lock byte: held while the reader lives.
#     S  slots, slots x stride; message n lives in slot n % slots:
#          +0 seq     0 never written; 2n+1 while message n is written; 2n+2 once whole
#          +8 length  payload bytes     +16 crc  CRC32 of the payload seeded with n
#          +64 payload
#
# Ordering rule: the seqlock of shmkit/_core/_seqlock.c (Aeron/Agrona style),
# the same code on x86-64 and arm64. The publisher writes message n in one C call:
#   seq = 2n+1; release fence; payload; length; crc; seq = 2n+2 (release);
#   published = n+1 (release); seq_cst fence; if wake_hint changed since the
#   last wake: futex wake-all on published's low word.
# A reader of message n, in one C call: published (acquire) > n; seq (acquire)
# == 2n+2; length <= slot_size (else LayoutError, never bytes of the next
# slot); copy; acquire fence; seq == 2n+2 again -> the copy is whole. seq >
# 2n+2 (or a changed seq after the copy) means message n was overwritten:
# Overrun. Copies of 16 KiB or more add full fences (x86 non-temporal and
# string moves). Readers about to sleep store a new wake_hint, fence, re-check
# published, then futex-wait on its low word: either the reader sees the new
# message or the publisher sees the new hint (Dekker). Each hint is woken once.
# Back-pressure: a waiting publisher stores writer_waiting = 1, fences, scans
# the cursors, then futex-waits on progress; a reader stores its cursor
# (release), fences, and if writer_waiting bumps progress and wakes it.
# Joining a back-pressured ring: the subscriber stores its cursor and state,
# fetch-adds joins (seq_cst), fences, reads published P, and protects from
# message P + 1 - slots on. Before writing a message the publisher compares
# joins (after the seq_cst fence that follows its previous store of
# published) with the value it last scanned at; a change voids its cached
# room and it re-scans (Dekker: either it sees the join or the joiner sees
# every message it may write without a scan).
# The CRC (checksum=True) is an integrity option only.

PARAMS: Final = struct.Struct("<IIQQIIII")
PARAMS_VERSION: Final = 4
FLAG_BACKPRESSURE: Final = 1
FLAG_CHECKSUM: Final = 2
_KNOWN_FLAGS: Final = FLAG_BACKPRESSURE | FLAG_CHECKSUM

CONTROL_SIZE: Final = 320
SUBSCRIBER_SIZE: Final = 64
SLOT_HEADER: Final = 64
MAX_SLOT_SIZE: Final = 1 << 36
MAX_SLOTS: Final = 1 << 20
MAX_SUBSCRIBERS: Final = 1024

# Word indexes (byte offset / 8) into the body.
_PUBLISHED: Final = 0
_WAKE_HINT: Final = 1
_PUB_STATE: Final = 8
_PUB_PID: Final = 9
_PUB_START: Final = 10
_ATTACHES: Final = 11
_REPAIRS: Final = 12
_ABORTED: Final = 13
_WRITER_WAITING: Final = 16
_PROGRESS: Final = 17
_JOINS: Final = 18
_PUB_LOCK_BYTE: Final = 192
_MUTEX_OFF: Final = 256
# Subscriber entry words.
_S_STATE: Final = 0
_S_CURSOR: Final = 1
_S_PID: Final = 2
_S_START: Final = 3
_S_FIRST: Final = 4
_S_MISSED: Final = 5
_S_SKIPPED: Final = 6
_S_OVERRUNS: Final = 7

_NO_PUBLISHER: Final = 0
_ATTACHED: Final = 1
_CLOSED_CLEANLY: Final = 2
_FREE: Final = 0
_TETHERED: Final = 1
_UNTETHERED: Final = 2
#: Message numbers stay below this; anything larger is a corrupt control block.
_MAX_SEQ: Final = 1 << 62
_NEVER: Final = 1 << 63
#: Flags of the C Ring.
RING_CHECKSUM: Final = 1
RING_BP: Final = 2


@dataclass(frozen=True)
class Params:
    """The immutable shape of a broadcast, decoded and validated."""

    slot_size: int
    slots: int
    max_subscribers: int
    backpressure: bool
    checksum: bool

    @property
    def stride(self) -> int:
        return align(SLOT_HEADER + self.slot_size)

    @property
    def slots_offset(self) -> int:
        return CONTROL_SIZE + SUBSCRIBER_SIZE * self.max_subscribers

    @property
    def body_size(self) -> int:
        return self.slots_offset + self.slots * self.stride

    def pack(self) -> bytes:
        flags = (FLAG_BACKPRESSURE if self.backpressure else 0) | (
            FLAG_CHECKSUM if self.checksum else 0
        )
        return PARAMS.pack(
            PARAMS_VERSION,
            flags,
            self.slot_size,
            self.stride,
            self.slots,
            self.max_subscribers,
            CONTROL_SIZE,
            0,
        )


def parse_params(params: bytes, body_size: int, what: str = "broadcast") -> Params:
    """Validate and decode a broadcast's header params against its body size.

    Pure and bounded: any bytes give a Params or a LayoutError, nothing else.
    """
    if len(params) != PARAMS.size:
        raise LayoutError(f"{what}: params are {len(params)} bytes, expected {PARAMS.size}")
    version, flags, slot_size, stride, slots, max_subs, control, reserved = PARAMS.unpack(params)
    _layout.check_params_version(what, version, PARAMS_VERSION)
    if flags & ~_KNOWN_FLAGS or reserved:
        raise LayoutError(f"{what}: unknown flags {flags:#x} or non-zero reserved field")
    if not 1 <= slot_size <= MAX_SLOT_SIZE:
        raise LayoutError(f"{what}: slot size {slot_size} out of range 1..{MAX_SLOT_SIZE}")
    if not 1 <= slots <= MAX_SLOTS:
        raise LayoutError(f"{what}: {slots} slots out of range 1..{MAX_SLOTS}")
    if not 1 <= max_subs <= MAX_SUBSCRIBERS:
        raise LayoutError(f"{what}: {max_subs} subscriber entries out of range")
    if control != CONTROL_SIZE:
        raise LayoutError(f"{what}: control block of {control} bytes, expected {CONTROL_SIZE}")
    p = Params(slot_size, slots, max_subs, bool(flags & FLAG_BACKPRESSURE), bool(flags & 2))
    if stride != p.stride:
        raise LayoutError(f"{what}: slot stride {stride} does not match slot size {slot_size}")
    if body_size != p.body_size:
        raise LayoutError(f"{what}: body is {body_size} bytes, its params need {p.body_size}")
    return p


def check_control(q: Sequence[int], params: Params, what: str = "broadcast") -> None:
    """Reject a control block no publisher could have written (LayoutError).

    ``q`` is the body as u64 words. Runtime fields cannot be covered by the
    header CRC; these bounds keep a corrupt segment from driving readers into
    absurd numbers.
    """
    published = q[_PUBLISHED]
    if published >= _MAX_SEQ:
        raise LayoutError(f"{what}: published count {published} is corrupt")
    if q[_PUB_STATE] not in (_NO_PUBLISHER, _ATTACHED, _CLOSED_CLEANLY):
        raise LayoutError(f"{what}: publisher state {q[_PUB_STATE]} is corrupt")
    base = CONTROL_SIZE // 8
    for i in range(params.max_subscribers):
        entry = base + i * (SUBSCRIBER_SIZE // 8)
        if q[entry + _S_STATE] not in (_FREE, _TETHERED, _UNTETHERED):
            raise LayoutError(f"{what}: subscriber entry {i} is corrupt")
        if q[entry + _S_STATE] != _FREE and q[entry + _S_CURSOR] >= _MAX_SEQ:
            raise LayoutError(f"{what}: subscriber entry {i} has a corrupt cursor")


def parse_image(image: bytes, what: str = "broadcast image") -> Params:
    """Validate a whole broadcast segment image (header, params, control block).

    The pure core of ``Broadcast.open``'s checks, for fuzzing: any bytes give
    Params or LayoutError.
    """
    header = _layout.parse(image, len(image), what)
    if header.kind != Kind.BROADCAST:
        kind = header.kind.name.lower()
        raise LayoutError(
            f"{what} is {'an' if kind[0] in 'aeiou' else 'a'} {kind}, not a broadcast"
        )
    params = parse_params(header.params, header.body_size, what)
    body = memoryview(image)[header.body_off : header.body_off + params.slots_offset]
    check_control(body.cast("Q"), params, what)
    return params
