"""Latest's shared-memory format: params, body, slots, and the seqlock rule.

Params (immutable, covered by the header CRC), little-endian::

    offset size field
         0    4 version     PARAMS_VERSION (2: seqlock slots, futex wake-ups, no semaphores)
         4    4 flags       F_CHECKSUM | F_ARRAY
         8    4 nslots      MIN_SLOTS .. MAX_SLOTS
        12    4 nwriters    writer-table entries, WRITERS
        16    8 size        largest value in bytes (array mode: the array's nbytes)
        24    . array meta  array mode only: shape, order, dtype (see _dtype)

Body (offsets from body_off, which is 64-aligned; words are u64 little-endian)::

    offset size field
         0   64 writer mutex    robust pthread mutex; one writer at a time
        64    8 version         newest published version, 0 = never set; its value
                                is in slot version % nslots. Its low 32 bits are the
                                futex word wait_newer sleeps on.
        72    8 writer_deaths   writers that died inside set (counted by the next writer)
        80    8 in_set          flock backend only: 1 from lock to unlock, so the next
                                writer knows its predecessor died inside set
        88    4 waiters         readers asleep in wait_newer (u32; the writer wakes
                                the version word only when it is non-zero)
        92   36 reserved
       128 16*W writer table    per writer: pid, start time; an OFD lock on the entry's
                                first byte, held while that writer lives
         S      slots           S = align64(128 + 16*W); slot k at S + k*stride,
                                stride = 64 + align64(size)
    slot+0    8 seq             0 never written; 2v+1 while version v is written;
                                2v+2 once it is whole
    slot+8    8 length          bytes of the value (never above size: checked in C)
    slot+16   8 crc             CRC32 of the value seeded with v (checksum mode only)
    slot+64   . data

Ordering rule (the seqlock of ``_core/_seqlock.c``, the same on x86-64 and
arm64). Writer, holding the mutex, inside one C call, v = version + 1,
k = v % nslots::

    (1) seq[k] = 2v+1; release fence     before any byte of slot k changes
    (2) data, length, crc
    (3) seq[k] = 2v+2 (release)          seal
    (4) version = v (release)            publish; unlock; seq_cst fence; if
                                         waiters: futex wake on version
Reader, one C call: v = version (acquire); seq[k] == 2v+2 (acquire); copy
length <= size bytes; acquire fence; seq[k] == 2v+2 again -> the copy is
value v. Otherwise a writer reached slot k again meanwhile (nslots - 1 values
ahead): retry. A writer killed before (4) leaves version, and so the slot
readers use, untouched; the next writer rewrites slot k from (1). A waiter
adds 1 to waiters (seq_cst), re-checks version, then sleeps on it: with the
writer's fence after (4), either it sees the new version or the writer sees
it waiting (Dekker). A reader that dies asleep leaves waiters high; writers
then make one futex wake per set, never a wrong result.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from .. import _dtype
from .._dtype import ArrayMeta
from .._layout import MAX_BODY, align, check_params_version
from ..errors import LayoutError

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import DTypeLike

PARAMS: Final = struct.Struct("<IIIIQ")
PARAMS_VERSION: Final = 2
F_CHECKSUM: Final = 1
F_ARRAY: Final = 2
MIN_SLOTS: Final = 2
MAX_SLOTS: Final = 16
DEFAULT_SLOTS: Final = 3
WRITERS: Final = 16
MAX_SIZE: Final = MAX_BODY // MAX_SLOTS
#: Byte offsets in the body.
VERSION_AT: Final = 64
DEATHS_AT: Final = 72
WTABLE: Final = 128
SLOT_HEAD: Final = 64
#: C flags of LatestBase._c_attach.
C_CHECKSUM: Final = 1
C_ARRAY: Final = 2
C_FLOCK: Final = 4


@dataclass(frozen=True)
class LatestParams:
    """Validated Latest params (no numpy objects)."""

    checksum: bool
    nslots: int
    nwriters: int
    size: int
    array: ArrayMeta | None

    @property
    def stride(self) -> int:
        return SLOT_HEAD + align(self.size)

    @property
    def slots_off(self) -> int:
        return align(WTABLE + 16 * self.nwriters)

    @property
    def body_size(self) -> int:
        return self.slots_off + self.nslots * self.stride


def checked_params(
    params: bytes, body_size: int, nsems: int, what: str
) -> tuple[LatestParams, np.dtype[Any] | None]:
    """Validated params and value dtype (None for bytes values) of a Latest."""
    parsed = parse_params(params, body_size, what)
    if nsems != 0:
        raise LayoutError(f"{what}: {nsems} semaphores, expected none")
    if parsed.array is None:
        return parsed, None
    return parsed, _dtype.to_dtype(parsed.array.spec, parsed.array.itemsize, what)


def parse_params(params: bytes, body_size: int, what: str = "latest") -> LatestParams:
    """Validate a LATEST segment's params against its body size (no numpy; LayoutError).

    The pure parse step of ``open``; the Hypothesis tests feed it random bytes.
    """
    if len(params) < PARAMS.size:
        raise LayoutError(f"{what}: params are truncated")
    version, flags, nslots, nwriters, size = PARAMS.unpack_from(params, 0)
    check_params_version(what, version, PARAMS_VERSION)
    if flags & ~(F_CHECKSUM | F_ARRAY):
        raise LayoutError(f"{what}: unknown flags {flags:#x}")
    if not MIN_SLOTS <= nslots <= MAX_SLOTS or nwriters != WRITERS:
        raise LayoutError(f"{what}: {nslots} slots / {nwriters} writers out of range")
    if size > MAX_SIZE:
        raise LayoutError(f"{what}: value size {size} is beyond shmkit's limit")
    meta = None
    used = PARAMS.size
    if flags & F_ARRAY:
        meta, n = _dtype.parse_meta(params[PARAMS.size :], what)
        used += n
        if meta.nbytes != size:
            raise LayoutError(f"{what}: array of {meta.nbytes} bytes in values of {size}")
    if used != len(params):
        raise LayoutError(f"{what}: {len(params) - used} stray bytes in params")
    parsed = LatestParams(bool(flags & F_CHECKSUM), nslots, nwriters, size, meta)
    if parsed.body_size != body_size:
        raise LayoutError(f"{what}: body of {body_size} bytes, its layout needs {parsed.body_size}")
    return parsed


def body_size(params: bytes) -> int:
    """The body size the params describe (for validating our own params at create)."""
    _v, _flags, nslots, nwriters, size = PARAMS.unpack_from(params, 0)
    return align(WTABLE + 16 * int(nwriters)) + int(nslots) * (SLOT_HEAD + align(size))


def make_params(
    size: int, slots: int, checksum: bool, meta: bytes = b"", array: bool = False
) -> bytes:
    """Pack params (values already validated by the caller)."""
    flags = (F_CHECKSUM if checksum else 0) | (F_ARRAY if array else 0)
    return PARAMS.pack(PARAMS_VERSION, flags, slots, WRITERS, size) + meta


def slot_offset(p: LatestParams, version: int) -> int:
    """Body offset of the slot that holds ``version``."""
    return p.slots_off + (version % p.nslots) * p.stride


def new_params(
    *,
    size: int | None,
    shape: int | tuple[int, ...] | list[int] | None,
    dtype: DTypeLike | None,
    order: str,
    slots: int,
    checksum: bool | None,
) -> bytes:
    """Validate a new Latest's arguments and pack its params (bytes or array values)."""
    if isinstance(slots, bool) or not isinstance(slots, int):
        raise TypeError(f"slots must be an int, not {type(slots).__name__}")
    if not MIN_SLOTS <= slots <= MAX_SLOTS:
        raise ValueError(f"slots must be between {MIN_SLOTS} and {MAX_SLOTS}, not {slots}")
    meta = b""
    array = False
    if size is not None:
        if shape is not None or dtype is not None:
            raise TypeError("give either size= (bytes values) or shape= and dtype=, not both")
        if isinstance(size, bool) or not isinstance(size, int):
            raise TypeError(f"size must be an int, not {type(size).__name__}")
        if not 0 <= size <= MAX_SIZE:
            raise ValueError(f"size must be between 0 and {MAX_SIZE}, not {size}")
    else:
        if shape is None or dtype is None:
            raise TypeError("give size= (bytes values) or both shape= and dtype=")
        dims, dt, order = _dtype.normalize(shape, dtype, order)
        meta = _dtype.encode_meta(dims, dt, order)
        size = _dtype.parse_meta(meta, "new latest")[0].nbytes
        if size > MAX_SIZE:
            raise ValueError(f"an array of {size} bytes is beyond shmkit's limit")
        array = True
    return make_params(size, slots, bool(checksum), meta, array)
