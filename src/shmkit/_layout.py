"""The common segment header every shmkit object starts with, and its validation.

Segment map (offsets from the start of the mapping)::

    0            fixed header (128 bytes, below)
    128          user name (name_len bytes, UTF-8)
    128+name     kind parameters (params_len bytes, immutable after creation)
    attach_off   attach table: attach_slots x 32 bytes (pid, start, boot id)
    body_off     body: the object's control words and data (body_size bytes)

Fixed header, little-endian::

    offset size field
         0    8 magic         b"SHMKIT\\0\\1"
         8    2 version       LAYOUT_VERSION; bumped on any layout change
        10    2 kind          Kind
        12    2 header_size   128
        14    2 abi           what every process must agree on (see ABI): byte order,
                              pointer size, pthread_mutex_t size, C library
        16    4 state         INIT while the creator fills it in, READY after
        20    4 mode          permission bits the creator asked for
        24    8 total_size    body_off + body_size; must be <= the segment's real size
        32    4 name_len      <= 255
        36    4 params_len    <= MAX_PARAMS
        40    8 attach_off    align64(128 + name_len + params_len)
        48    8 body_off      align64(attach_off + 32 * attach_slots)
        56    4 nsems         companion semaphores <sysname>.s0 .. s{nsems-1}
        60    4 attach_slots  <= MAX_ATTACH
        64    8 creator_pid
        72    8 creator_start creator's start time in clock ticks since boot (0 = unknown)
        80    8 created_ns    time.time_ns() at creation
        88   16 boot_id       creator's boot id (zeros = unknown)
       104    4 uid           creator's uid
       108    4 header_crc    CRC32 of [0, attach_off) with state and this field zeroed
       112   16 reserved      zero

Ordering rule: the creator writes everything with state = INIT, then stores
state = READY last (one aligned 4-byte store). Openers read nothing else
until they see READY, and never trust a field before ``parse`` checked it.
"""

from __future__ import annotations

import platform
import struct
import sys
import zlib
from dataclasses import dataclass
from enum import IntEnum
from typing import Final

from . import _core
from .errors import IncompatibleLayout, LayoutError

MAGIC: Final = b"SHMKIT\x00\x01"
LAYOUT_VERSION: Final = 1
HEADER_SIZE: Final = 128


def _abi() -> int:
    """The ABI word: processes whose words differ cannot share an object.

    high byte: pointer size in bytes (a 32-bit and a 64-bit process differ);
    low byte: bit 0 little-endian, bits 1-4 sizeof(pthread_mutex_t) / 8 (x86-64
    glibc 40, aarch64 glibc 48: an emulated x86 process beside a native arm64
    one differs), bit 5 glibc (glibc and musl lay out the same 40 bytes
    differently). The lock mode (robust mutex or flock) is recorded with each
    mutex, so every process uses the creator's.
    """
    low = 1 if sys.byteorder == "little" else 0
    low |= ((_core.MUTEX_SIZE // 8) & 0xF) << 1
    if platform.libc_ver()[0] == "glibc":
        low |= 1 << 5
    return (struct.calcsize("P") << 8) | low


#: This process's ABI word (0x082B on x86-64 glibc, 0x082D on aarch64 glibc).
ABI: Final = _abi()
STATE_INIT: Final = 0x54494E49  # b"INIT"
STATE_READY: Final = 0x59444552  # b"REDY"
MAX_NAME_BYTES: Final = 255
MAX_PARAMS: Final = 64 * 1024
MAX_ATTACH: Final = 1024
MAX_SEMS: Final = 8
ATTACH_SLOT: Final = 32
#: Largest body shmkit will map: 1 TiB. Anything bigger is a corrupt header.
MAX_BODY: Final = 1 << 40

HEADER: Final = struct.Struct("<8sHHHHIIQIIQQIIQQQ16sII16s")
assert HEADER.size == HEADER_SIZE
STATE_OFFSET: Final = 16
CRC_OFFSET: Final = 108
ATTACH_SLOT_STRUCT: Final = struct.Struct("<qq16s")


class Kind(IntEnum):
    """What a segment holds. The value is stored in the header."""

    SEGMENT = 1
    LOCK = 2
    SEMAPHORE = 3
    EVENT = 4
    QUEUE = 5
    BROADCAST = 6
    LATEST = 7
    ARRAY = 8
    DICT = 9


def align(value: int, to: int = 64) -> int:
    """Round ``value`` up to a multiple of ``to`` (a power of two)."""
    return (value + to - 1) & ~(to - 1)


@dataclass(frozen=True)
class Header:
    """A parsed, validated common header."""

    kind: Kind
    state: int
    mode: int
    total_size: int
    name: str
    params: bytes
    attach_off: int
    body_off: int
    body_size: int
    nsems: int
    attach_slots: int
    creator_pid: int
    creator_start: int
    created_ns: int
    boot_id: bytes
    uid: int

    @property
    def ready(self) -> bool:
        return self.state == STATE_READY


def check_params_version(what: str, found: int, expected: int) -> None:
    """A kind's params version must be this shmkit's: else IncompatibleLayout (never
    "corrupt": another shmkit's programs may be using the object)."""
    if found != expected:
        raise IncompatibleLayout(
            f"{what}: params version {found}, this shmkit reads {expected}", found, expected
        )


def offsets(name_len: int, params_len: int, attach_slots: int) -> tuple[int, int]:
    """Return (attach_off, body_off) for the given variable-part sizes."""
    attach_off = align(HEADER_SIZE + name_len + params_len)
    return attach_off, align(attach_off + ATTACH_SLOT * attach_slots)


def build(
    *,
    kind: Kind,
    mode: int,
    name: str,
    params: bytes,
    body_size: int,
    nsems: int,
    attach_slots: int,
    creator_pid: int,
    creator_start: int,
    created_ns: int,
    boot_id: bytes,
    uid: int,
) -> bytes:
    """Return the bytes of [0, attach_off): fixed header, name and params, state INIT."""
    name_b = name.encode()
    attach_off, body_off = offsets(len(name_b), len(params), attach_slots)
    fixed = HEADER.pack(
        MAGIC,
        LAYOUT_VERSION,
        int(kind),
        HEADER_SIZE,
        ABI,
        STATE_INIT,
        mode,
        body_off + body_size,
        len(name_b),
        len(params),
        attach_off,
        body_off,
        nsems,
        attach_slots,
        creator_pid,
        creator_start,
        created_ns,
        boot_id,
        uid,
        0,
        bytes(16),
    )
    image = bytearray(fixed + name_b + params)
    image.extend(bytes(attach_off - len(image)))
    struct.pack_into("<I", image, CRC_OFFSET, _crc(image))
    return bytes(image)


def _crc(image: bytes | bytearray | memoryview) -> int:
    view = bytearray(image)
    view[STATE_OFFSET : STATE_OFFSET + 4] = bytes(4)
    view[CRC_OFFSET : CRC_OFFSET + 4] = bytes(4)
    return zlib.crc32(view)


def parse(buf: bytes | bytearray | memoryview, real_size: int, what: str) -> Header:
    """Validate and decode the header at the start of ``buf``.

    ``real_size`` is the segment's size from fstat. Every field is checked
    against it before anything is derived from it; any failure raises
    LayoutError (IncompatibleLayout for another version or ABI). Runs in
    bounded time and memory whatever the bytes are.
    """
    if real_size < HEADER_SIZE or len(buf) < HEADER_SIZE:
        raise LayoutError(f"{what}: {real_size} bytes is too small for a shmkit header")
    (
        magic,
        version,
        kind,
        header_size,
        abi,
        state,
        mode,
        total_size,
        name_len,
        params_len,
        attach_off,
        body_off,
        nsems,
        attach_slots,
        creator_pid,
        creator_start,
        created_ns,
        boot_id,
        uid,
        crc,
        reserved,
    ) = HEADER.unpack_from(buf, 0)
    if magic != MAGIC:
        raise LayoutError(f"{what}: not a shmkit segment (magic {magic!r})")
    if version != LAYOUT_VERSION:
        raise IncompatibleLayout(
            f"{what}: layout version {version}, this shmkit reads {LAYOUT_VERSION}",
            found=version,
            expected=LAYOUT_VERSION,
        )
    if abi != ABI:
        raise IncompatibleLayout(f"{what}: ABI flags {abi:#06x}, expected {ABI:#06x}", abi, ABI)
    if header_size != HEADER_SIZE:
        raise LayoutError(f"{what}: header size {header_size}, expected {HEADER_SIZE}")
    try:
        kind_e = Kind(kind)
    except ValueError:
        raise LayoutError(f"{what}: unknown kind {kind}") from None
    if state not in (STATE_INIT, STATE_READY):
        raise LayoutError(f"{what}: invalid state word {state:#x}")
    if mode & ~0o777:
        raise LayoutError(f"{what}: invalid mode {mode:#o}")
    if name_len > MAX_NAME_BYTES or params_len > MAX_PARAMS:
        raise LayoutError(f"{what}: name ({name_len}) or params ({params_len}) too long")
    if attach_slots > MAX_ATTACH or nsems > MAX_SEMS:
        raise LayoutError(f"{what}: {attach_slots} attach slots / {nsems} semaphores out of range")
    want_attach, want_body = offsets(name_len, params_len, attach_slots)
    if attach_off != want_attach or body_off != want_body:
        raise LayoutError(f"{what}: region offsets {attach_off}/{body_off} are inconsistent")
    body_size = total_size - body_off
    if total_size < body_off or body_size > MAX_BODY:
        raise LayoutError(f"{what}: total size {total_size} does not fit its header")
    if total_size > real_size:
        raise LayoutError(f"{what}: segment is {real_size} bytes, header says {total_size}")
    if len(buf) < attach_off:
        raise LayoutError(f"{what}: mapping shorter than the header")
    if reserved != bytes(16):
        raise LayoutError(f"{what}: reserved header bytes are not zero")
    if _crc(buf[:attach_off]) != crc:
        raise LayoutError(f"{what}: header checksum mismatch")
    try:
        name = bytes(buf[HEADER_SIZE : HEADER_SIZE + name_len]).decode()
    except UnicodeDecodeError:
        raise LayoutError(f"{what}: name is not UTF-8") from None
    params = bytes(buf[HEADER_SIZE + name_len : HEADER_SIZE + name_len + params_len])
    return Header(
        kind_e,
        state,
        mode,
        total_size,
        name,
        params,
        attach_off,
        body_off,
        body_size,
        nsems,
        attach_slots,
        creator_pid,
        creator_start,
        created_ns,
        boot_id,
        uid,
    )
