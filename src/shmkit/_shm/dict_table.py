"""SharedDict's shared-memory format: params, control words, two indexes, a block heap.

Params (immutable, covered by the header CRC), little-endian::

    offset size field
         0    4 version     PARAMS_VERSION
         4    4 flags       bit 0 GROW: a full table grows into a new generation
         8    8 capacity    most live entries of this table (Full/growth beyond)
        16    8 nslots      index slots, a power of two >= capacity * 4 / 3
        24    8 heap_size   bytes of the block heap, a multiple of 64
        32    4 max_key     longest key in bytes (str keys: UTF-8)
        36    4 generation  0 for the root segment; N for the segment <root>~gN
        40    8 seed        hash seed, random per dict (the same in every process
                            and every generation)
        48   16 codec       value codec name, ASCII, zero-padded
        64    8 max_bytes   growth stops where root + table would pass it (0: no limit)

The root segment (the user's name) is generation 0 and holds the one writer
mutex, the ``writes`` futex word and the ``gen`` word for every generation;
generation N >= 1 is the segment ``<root sysname>~gN`` (a name no user name
maps to) with the same layout, whose own mutex and ``gen`` words are unused.

Body (offsets from body_off, which is 64-aligned; words are u64)::

    offset size field
         0   64 writer mutex    robust pthread mutex; one writer at a time
        64    8 writes          changes committed; low 32 bits: the futex word of
                                wait_changed (bumped, release, after every change)
        72    8 epoch           generation of the index: epoch & 1 names the active
                                index; bumped (release) by compaction and clear()
        80    8 count           live entries
        88    8 tombs           tombstones in the active index
        96    8 used            heap bytes in live blocks
       104    8 bump            heap bytes ever carved; above it the heap is untouched
       112    8 dirty           1 from a writer's first change to its last: a holder
                                that died mid-write leaves it set (flock backend too)
       120    8 deaths          writers that died mid-write (repairs made)
       128    4 waiters         processes asleep in wait_changed (u32)
       136    8 stamp           last block stamp handed out (block seq = 2 stamp + 2)
       144    8 compactions     index rebuilds (tombstones dropped)
       152    8 dropped         entries a repair found corrupt and dropped
       192    8 gen             root only, a cache line of its own: the current
                                generation; stored (release) once, by the grower,
                                after the new table is whole
       256  8*C free lists      head per size class (heap offset + 1; 0 = empty)
        I0  8*N index 0         N = nslots slot words; I0 = align64(256 + 8*C)
        I1  8*N index 1         I1 = I0 + 8*N
         H    . heap            H = align64(I1 + 8*N), heap_size bytes

Slot word: 0 EMPTY, 1 TOMBSTONE, else ``(hash >> 32) << 32 | (block / 64 + 2)``.
Open addressing, linear probing from ``hash & (N - 1)``; entries never move
while live (a compaction builds the other index and flips ``epoch``).

Block (64-aligned, a whole number of 64-byte units)::

         0    8 seq      2s+1 while written (or once freed); 2s+2 once whole
         8    8 hash     the key's 64-bit hash (seeded); free block: next free + 1
        16    4 klen     key bytes; bit 31 set for a str key (UTF-8)
        20    4 vlen     value bytes
        24    4 units    block size / 64
        28    4 reserved
        32    . key, then value

Size classes: units 1..64 have one class each (64 B .. 4 KiB); larger blocks
go to class 64 + log2(units) - 6. Free blocks are pushed on their class's
list; an allocation pops its class, carves from ``bump``, or splits a larger
free block; when all fail, the writer rebuilds the free lists from the live
entries (coalescing neighbours) once before raising Full.

Ordering rule (``_core/_dict.c``). Writer, holding the mutex, in one C call:
``dirty = 1``; allocate; ``seq = 2s+1``, release fence; fill the block;
``seq = 2s+2`` (release); **publish with one release store of the slot word**;
then free the old block (``seq`` odd, release fence, then its links) and fix
the counters; ``dirty = 0``; ``writes += 1`` (release); unlock; wake waiters.
A writer killed anywhere leaves each key's slot holding its old or its new
block; the next writer sees ``dirty`` (or EOWNERDEAD) and rebuilds the
allocator and counters from the active index (repair), so leaked blocks
return. Every write first checks, under the mutex, that the root's ``gen``
still names its table (else it follows; ``dict_gens``). Reader, no lock:
the root's ``gen`` (acquire) names the table it maps (else follow), then
``e = epoch`` (acquire), probe, ``w = slot``
(acquire), ``s = seq`` (acquire, even), copy key and value, acquire fence,
then ``seq``, ``slot`` and ``epoch`` unchanged -> the copy is that entry;
otherwise retry. Every block modification starts with an odd ``seq`` and a
release fence, so a copy that saw any later store fails the re-check.
"""

from __future__ import annotations

import secrets
import struct
from dataclasses import dataclass
from typing import Final

from .._layout import MAX_BODY, align, check_params_version
from ..errors import LayoutError

PARAMS: Final = struct.Struct("<IIQQQIIQ16sQ")
PARAMS_VERSION: Final = 2
#: Params flags.
GROW: Final = 1
#: Size classes (free-list heads).
CLASSES: Final = 96
CTL_END: Final = 256
UNIT: Final = 64
BLOCK_HEAD: Final = 32
#: Limits.
MAX_KEY: Final = 64 * 1024
MAX_CAPACITY: Final = 1 << 30
MIN_HEAP: Final = 4096
MAX_HEAP: Final = min(MAX_BODY // 2, (1 << 32) * UNIT)
DEFAULT_CAPACITY: Final = 1024
DEFAULT_MAX_KEY: Final = 1024
#: Control word offsets in the body.
WRITES_AT: Final = 64
EPOCH_AT: Final = 72
COUNT_AT: Final = 80
TOMBS_AT: Final = 88
USED_AT: Final = 96
BUMP_AT: Final = 104
DIRTY_AT: Final = 112
DEATHS_AT: Final = 120
WAITERS_AT: Final = 128
STAMP_AT: Final = 136
COMPACTIONS_AT: Final = 144
DROPPED_AT: Final = 152
GEN_AT: Final = 192
FREE_AT: Final = CTL_END


@dataclass(frozen=True)
class DictParams:
    """Validated SharedDict params and the geometry they imply."""

    capacity: int
    nslots: int
    heap_size: int
    max_key: int
    seed: int
    codec: str
    generation: int = 0
    grow: bool = False
    max_bytes: int = 0

    @property
    def index_off(self) -> tuple[int, int]:
        first = align(CTL_END + 8 * CLASSES)
        return first, first + 8 * self.nslots

    @property
    def heap_off(self) -> int:
        return align(self.index_off[1] + 8 * self.nslots)

    @property
    def body_size(self) -> int:
        return self.heap_off + self.heap_size


@dataclass(frozen=True)
class DictStats:
    """A snapshot of a SharedDict (``statistics()``)."""

    entries: int
    capacity: int
    bytes_used: int  # heap bytes in live entries (64-byte units, headers included)
    heap_size: int
    tombstones: int
    generation: int  # table generation: 0 at creation, +1 each time the dict grew
    writes: int  # changes committed since creation
    writer_deaths: int  # writers that died mid-write (each repaired by the next)
    compactions: int
    dropped: int  # corrupt entries a repair removed (0 unless memory was damaged)
    waiters: int  # processes asleep in wait_changed
    retries: int  # this handle: reads retried because a writer changed the entry
    index_epoch: int = 0  # index copy in use: bumped by compaction and clear()


def slots_for(capacity: int) -> int:
    """Index slots for ``capacity`` entries: a power of two keeping the load <= 3/4."""
    need = max(8, -(-capacity * 4 // 3))
    return 1 << (need - 1).bit_length()


def block_bytes(key_len: int, value_len: int) -> int:
    """Heap bytes one entry takes: header, key and value rounded up to 64."""
    return align(BLOCK_HEAD + key_len + value_len, UNIT)


def make_params(
    capacity: int,
    heap_size: int,
    max_key: int,
    seed: int,
    codec: str,
    *,
    generation: int = 0,
    grow: bool = False,
    max_bytes: int = 0,
) -> bytes:
    """Pack params (values already validated by the caller)."""
    return PARAMS.pack(
        PARAMS_VERSION,
        GROW if grow else 0,
        capacity,
        slots_for(capacity),
        heap_size,
        max_key,
        generation,
        seed,
        codec.encode("ascii").ljust(16, b"\0"),
        max_bytes,
    )


def parse_params(params: bytes, body_size: int, what: str = "dict") -> DictParams:
    """Validate a DICT segment's params against its body size (LayoutError).

    The pure parse step of ``open``; the Hypothesis tests feed it random bytes.
    """
    if len(params) != PARAMS.size:
        raise LayoutError(f"{what}: params are {len(params)} bytes, expected {PARAMS.size}")
    version, flags, capacity, nslots, heap, max_key, gen, seed, codec_b, max_bytes = PARAMS.unpack(
        params
    )
    check_params_version(what, version, PARAMS_VERSION)
    if flags & ~GROW:
        raise LayoutError(f"{what}: unknown flags {flags:#x}")
    if not 1 <= capacity <= MAX_CAPACITY or nslots != slots_for(capacity):
        raise LayoutError(f"{what}: capacity {capacity} / {nslots} slots are inconsistent")
    if not MIN_HEAP <= heap <= MAX_HEAP or heap % UNIT:
        raise LayoutError(f"{what}: heap of {heap} bytes is out of range")
    if not 1 <= max_key <= MAX_KEY:
        raise LayoutError(f"{what}: max_key {max_key} out of range")
    name = codec_b.rstrip(b"\0")
    if b"\0" in name or not name or not name.isascii():
        raise LayoutError(f"{what}: codec name {codec_b!r} is invalid")
    parsed = DictParams(
        capacity,
        nslots,
        heap,
        max_key,
        seed,
        name.decode("ascii"),
        gen,
        bool(flags & GROW),
        max_bytes,
    )
    if parsed.body_size != body_size:
        raise LayoutError(f"{what}: body of {body_size} bytes, its layout needs {parsed.body_size}")
    return parsed


def body_size(capacity: int, heap_size: int) -> int:
    """The body size a dict of ``capacity`` entries and ``heap_size`` heap bytes needs."""
    return DictParams(capacity, slots_for(capacity), heap_size, 1, 0, "bytes").body_size


def user_params(
    capacity: object,
    size: object,
    max_key: object,
    codec: str,
    *,
    grow: object = True,
    max_bytes: object = None,
) -> tuple[bytes, int]:
    """Validate ``SharedDict.create``'s arguments (TypeError/ValueError) and pack
    its params with a fresh random seed; returns ``(params, body size)``."""
    if max_bytes is not None and (isinstance(max_bytes, bool) or not isinstance(max_bytes, int)):
        raise TypeError(f"max_bytes must be an int or None, not {type(max_bytes).__name__}")
    if isinstance(max_bytes, int) and max_bytes < 1:
        raise ValueError(f"max_bytes must be positive, not {max_bytes}")
    for label, value in (("capacity", capacity), ("max_key", max_key)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{label} must be an int, not {type(value).__name__}")
    assert isinstance(capacity, int) and isinstance(max_key, int)
    if not 1 <= capacity <= MAX_CAPACITY:
        raise ValueError(f"capacity must be between 1 and {MAX_CAPACITY}, not {capacity}")
    if not 1 <= max_key <= MAX_KEY:
        raise ValueError(f"max_key must be between 1 and {MAX_KEY}, not {max_key}")
    if size is None:
        size = max(64 * 1024, 256 * capacity)
    if isinstance(size, bool) or not isinstance(size, int):
        raise TypeError(f"size must be an int, not {type(size).__name__}")
    heap = max(MIN_HEAP, -(-size // UNIT) * UNIT)
    if heap > MAX_HEAP:
        raise ValueError(f"size {size} is beyond shmkit's limit of {MAX_HEAP} bytes")
    if not codec.isascii() or len(codec) > 16:
        raise ValueError(f"codec name {codec!r} must be at most 16 ASCII characters")
    if max_bytes is not None and body_size(capacity, heap) > max_bytes:
        raise ValueError(
            f"capacity {capacity} and size {heap} need {body_size(capacity, heap)} bytes, "
            f"more than max_bytes={max_bytes}"
        )
    params = make_params(
        capacity,
        heap,
        max_key,
        secrets.randbits(64),
        codec,
        grow=bool(grow),
        max_bytes=max_bytes or 0,
    )
    return params, body_size(capacity, heap)
