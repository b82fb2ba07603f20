"""Latest: the newest value only. Writers never wait for readers; readers never see a torn value.

For state that many readers poll (a controller's setpoint, a pose, the last
camera frame)::

    cfg = Latest.create("pose", size=64)             # values of up to 64 bytes
    cfg.set(b"x=1 y=2")                              # returns the new version, 1

    pose = Latest.open("pose")                       # in any other process
    data = pose.get()                                # a consistent copy
    v = pose.wait_newer(1, timeout=5.0)              # block until version > 1

    img = Latest.create("frame", shape=(480, 640, 3), dtype="uint8")
    img.set(frame)                                   # numpy values, shape/dtype in the header
    latest_frame = Latest.open("frame").get()        # a new ndarray

Lifetime is explicit, as for every shmkit object: the value persists until
``unlink()``. A value is copied in by ``set`` and copied out by ``get``
(``get_into`` fills a buffer you own), so nothing a caller holds can change
under it.

Design: a multi-slot buffer (3 slots by default) with a tag per slot. A
writer fills the slot *after* the newest one, seals it, then publishes it by
storing its version; readers copy the newest slot and keep the copy only if
its tag did not change meanwhile. A writer killed mid-write leaves a slot
nobody publishes: readers keep getting the previous value, and the next writer
simply overwrites that slot. Writers take turns through a robust mutex the
kernel releases if its holder dies, so any number of writer processes may
share one Latest; ``set`` never waits for a reader.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import struct
import threading
import time
import weakref
import zlib
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Generic, TypeVar, overload

import posix_ipc

from . import _crash, _dtype, _mutex, _ofd, _platform, _process, _wait
from ._dtype import ArrayMeta
from ._layout import MAX_BODY, Kind, align
from .errors import (
    AlreadyExists,
    Closed,
    Empty,
    Full,
    LayoutError,
    LockTimeout,
    MessageTooLarge,
    NotFound,
    PeerDied,
    PermissionDenied,
    ReadStarved,
    Timeout,
)
from .segment import Segment

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import DTypeLike, NDArray

__all__ = ["Latest", "LatestStats", "ReadStarved", "describe", "parse_params"]

T = TypeVar("T")


# Params (immutable, covered by the header CRC), little-endian:
# offset size field
#      0    4 version     PARAMS_VERSION
#      4    4 flags       F_CHECKSUM | F_ARRAY
#      8    4 nslots      MIN_SLOTS .. MAX_SLOTS
#     12    4 nwriters    writer-table entries, WRITERS
#     16    8 size        largest value in bytes (array mode: the array's nbytes)
#     24    . array meta  array mode only: shape, order, dtype (see _dtype)
#
# Body (offsets from body_off, which is 64-aligned; words are u64 little-endian):
# offset size field
#      0   64 writer mutex    robust pthread mutex; one writer at a time
#     64    8 version         newest published version, 0 = never set;
#                             its value is in slot version % nslots
#     72    8 writer_deaths   writers that died inside set (counted by the next writer)
#     80    8 in_set          flock backend only: 1 from lock to unlock, so the next
#                             writer knows its predecessor died inside set
#     88   40 reserved
#    128 16*W writer table    per writer: pid, start time; an OFD lock on the entry's
#                             first byte, held while that writer lives
#      S      slots           S = align64(128 + 16*W); slot k at S + k*stride,
#                             stride = 64 + align64(size)
# slot+0    8 tag             version v held by the slot; 0 (BUSY) while being written
# slot+8    8 length          bytes of the value
# slot+16   8 crc             CRC32 of the value, seeded with v (checksum mode only)
# slot+64   . data
#
# Ordering rule. Writer, holding the mutex, with v = version + 1 and k = v % nslots:
#   (1) tag[k] = BUSY (0)   before any byte of slot k changes
#   (2) length, data, crc
#   (3) tag[k] = v          seal
#   (4) version = v         publish; then unlock and wake waiters
# Reader: v = version; k = v % nslots; tag[k] == v; copy length bytes;
# tag[k] == v again (and the crc matches, in checksum mode) -> the copy is value v.
# Otherwise a writer reached slot k again meanwhile (it is nslots - 1 values
# ahead): retry. A writer killed before (4) leaves version, and so the slot
# readers use, untouched; the next writer rewrites slot k from (1).
#
# Memory models. Python has no fences; every step above is a separate C call
# (an aligned 8-byte store through memoryview, or memcpy), so the compiler
# cannot reorder them, and the CPU model decides the rest:
# - x86-64 (TSO): stores become visible in program order and loads are not
#   reordered with older loads, which is exactly what the rule needs: a reader
#   that sees tag v at its final check cannot have copied a byte of a later
#   value, because that value's BUSY tag (1) was stored before its data.
#   glibc's non-temporal memcpy for huge copies ends with sfence. Checksums are
#   off by default here.
# - arm64 and other weakly ordered CPUs: stores and loads may be observed out of
#   order, so the tags alone prove nothing. There every value carries a CRC32
#   seeded with its version (checksum mode, on by default off x86), computed by
#   the writer and checked by the reader on its copy: a reordered, mixed or
#   mislabelled copy fails the check (all but 2**-32 of the time) and is
#   retried, so reordering costs a retry, never a torn value. The semaphores
#   that wake waiters are hints, never needed for correctness.
_PARAMS: Final = struct.Struct("<IIIIQ")
PARAMS_VERSION: Final = 1
F_CHECKSUM: Final = 1
F_ARRAY: Final = 2
MIN_SLOTS: Final = 2
MAX_SLOTS: Final = 16
DEFAULT_SLOTS: Final = 3
WRITERS: Final = 16
BUSY: Final = 0  # no version is 0; a small int, so the store allocates nothing
_CRC_MASK: Final = 0xFFFFFFFF
_VER: Final = 8  # word index of version in the body
_DEATHS: Final = 9
_IN_SET: Final = 10
_WTABLE: Final = 128
_SLOT_HEAD: Final = 64

#: CPUs whose memory model (TSO) makes the tag protocol sufficient on its own.
STRONG_ORDER: Final = _platform.TSO

_CRASH: Final = _crash.ARMED

if _platform.ROBUST_MUTEX:
    # The mutex's pthread calls, bound once in _mutex for the fast paths.
    _p_trylock = _mutex.fast_trylock
    _p_unlock = _mutex.fast_unlock
    _p_consistent = _mutex.fast_consistent
_live: weakref.WeakSet[Latest[Any]] = weakref.WeakSet()


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
        return _SLOT_HEAD + align(self.size)

    @property
    def slots_off(self) -> int:
        return align(_WTABLE + 16 * self.nwriters)

    @property
    def body_size(self) -> int:
        return self.slots_off + self.nslots * self.stride


def parse_params(params: bytes, body_size: int, what: str = "latest") -> LatestParams:
    """Validate a LATEST segment's params against its body size (no numpy; LayoutError).

    The pure parse step of ``open``; the Hypothesis tests feed it random bytes.
    """
    if len(params) < _PARAMS.size:
        raise LayoutError(f"{what}: params are truncated")
    version, flags, nslots, nwriters, size = _PARAMS.unpack_from(params, 0)
    if version != PARAMS_VERSION:
        raise LayoutError(f"{what}: latest params version {version} is not {PARAMS_VERSION}")
    if flags & ~(F_CHECKSUM | F_ARRAY):
        raise LayoutError(f"{what}: unknown flags {flags:#x}")
    if not MIN_SLOTS <= nslots <= MAX_SLOTS or nwriters != WRITERS:
        raise LayoutError(f"{what}: {nslots} slots / {nwriters} writers out of range")
    if size > MAX_BODY // MAX_SLOTS:
        raise LayoutError(f"{what}: value size {size} is beyond shmkit's limit")
    meta = None
    used = _PARAMS.size
    if flags & F_ARRAY:
        meta, n = _dtype.parse_meta(params[_PARAMS.size :], what)
        used += n
        if meta.nbytes != size:
            raise LayoutError(f"{what}: array of {meta.nbytes} bytes in values of {size}")
    if used != len(params):
        raise LayoutError(f"{what}: {len(params) - used} stray bytes in params")
    parsed = LatestParams(bool(flags & F_CHECKSUM), nslots, nwriters, size, meta)
    if parsed.body_size != body_size:
        raise LayoutError(f"{what}: body of {body_size} bytes, its layout needs {parsed.body_size}")
    return parsed


@dataclass(frozen=True)
class LatestStats:
    """A snapshot of a Latest, for monitoring (``statistics()``)."""

    version: int
    writer_deaths: int
    live_writers: tuple[int, ...]
    dead_writers: tuple[int, ...]
    waiters: int  # processes blocked in wait_newer; -1 where the platform cannot tell
    retries: int  # this handle: reads retried because a writer overtook them
    starved: int  # this handle: ReadStarved raised


def _crash_copy(mm: mmap.mmap, off: int, data: Any, n: int) -> None:
    """The armed (test-only) copy: two halves with a crash point between them."""
    half = n // 2
    mm[off : off + half] = memoryview(data).cast("B")[:half]
    _crash.point("latest.set.copying")
    mm[off + half : off + n] = memoryview(data).cast("B")[half:]


class Latest(Generic[T]):
    """The newest value of a bytes or numpy value, shared by name.

    ``Latest[bytes]`` when created with ``size=``, ``Latest[NDArray]`` with
    ``shape=``/``dtype=``. Any number of processes may read and write.
    """

    def __init__(self, seg: Segment, params: LatestParams, dt: np.dtype[Any] | None) -> None:
        assert seg.header is not None
        self._name = seg.name
        self._seg: Segment | None = seg
        self._params = params
        self.readonly = seg.readonly
        self._dtype = dt
        self._mm = seg.mmap
        self._mmv = memoryview(self._mm)
        base = seg.header.body_off
        self._base = base
        body = memoryview(self._mm)[base : base + params.body_size]
        self._ctl: memoryview | None = body.cast("Q")
        self._nslots = params.nslots
        self._size = params.size
        self._checksum = params.checksum
        # Fast paths for bytes values (get: without checksums, and with them);
        # arrays, get_into and retries take _read.
        self._fast = params.array is None and not params.checksum
        self._fast_crc = params.array is None and params.checksum
        starts = [params.slots_off + k * params.stride for k in range(params.nslots)]
        self._tagw = tuple(s // 8 for s in starts)
        self._doff = tuple(base + s + _SLOT_HEAD for s in starts)
        self._mutex = None if self.readonly else _mutex.Mutex(self._mm, base, seg.sysname, 0)
        self._can_fast_set = (
            params.array is None
            and not _CRASH
            and self._mutex is not None
            and self._mutex.kind == "pthread"
        )
        # The address of the mutex for the fast path. The anchor pins the mapping
        # until this handle is garbage: close() never unmaps memory that another
        # thread of ours may be about to lock (it would crash, not raise).
        self._anchor: ctypes.Array[ctypes.c_char] | None = None
        if self._can_fast_set:
            self._anchor = (ctypes.c_char * _platform.MUTEX_BYTES).from_buffer(self._mm, base)
        self._fast_set = False  # until the first set claims our writer entry
        self._wakesem: posix_ipc.Semaphore = seg.semaphore(0)
        self._waitsem: posix_ipc.Semaphore | None = (
            seg.semaphore(1) if _platform.SEM_GETVALUE else None
        )
        self._lock_fd: int | None = None
        self._wslot = -1  # our writer-table entry, claimed by the first set()
        self._retries = 0
        self._starved = 0
        self._blocking = 0  # threads inside a semaphore wait; close() lets them leave
        self._tlock = threading.Lock()
        self._src: tuple[NDArray[Any], ...] = ()
        self._dst: tuple[NDArray[Any], ...] = ()
        if params.array is not None:
            assert dt is not None
            np = _dtype.numpy()
            meta = params.array
            mem = self._mmv
            if self.readonly:
                mem = mem.toreadonly()
            self._src = tuple(np.frombuffer(mem, np.uint8, meta.nbytes, off) for off in self._doff)
            self._dst = tuple(
                np.frombuffer(mem, dt, meta.count, off).reshape(meta.shape, order=meta.order)
                for off in self._doff
            )
        _live.add(self)

    # ------------------------------------------------------------ lifecycle

    @overload
    @classmethod
    def create(
        cls,
        name: str,
        *,
        size: int,
        slots: int = ...,
        checksum: bool | None = ...,
        mode: int = ...,
    ) -> Latest[bytes]: ...

    @overload
    @classmethod
    def create(
        cls,
        name: str,
        *,
        shape: int | tuple[int, ...] | list[int],
        dtype: DTypeLike,
        order: str = ...,
        slots: int = ...,
        checksum: bool | None = ...,
        mode: int = ...,
    ) -> Latest[NDArray[Any]]: ...

    @classmethod
    def create(
        cls,
        name: str,
        *,
        size: int | None = None,
        shape: int | tuple[int, ...] | list[int] | None = None,
        dtype: DTypeLike | None = None,
        order: str = "C",
        slots: int = DEFAULT_SLOTS,
        checksum: bool | None = None,
        mode: int = 0o600,
    ) -> Latest[Any]:
        """Create a Latest with no value yet (version 0); AlreadyExists if the name is taken.

        Args:
            size: bytes mode: the largest value, in bytes.
            shape, dtype, order: array mode: every value is an array of this
                shape and dtype (object dtypes are refused).
            slots: value buffers (2..16). A reader retries when writers fill
                ``slots - 1`` values while it copies one; 3 suits a writer
                about as fast as its readers.
            checksum: CRC-check every value (None: on, except on x86-64
                where the memory model makes it unnecessary).
            mode: permission bits (0o600: this user only).
        """
        params = cls._make_params(
            size=size, shape=shape, dtype=dtype, order=order, slots=slots, checksum=checksum
        )
        parsed = parse_params(params, _body_size(params), f"latest {name!r}")
        dt = None
        if parsed.array is not None:
            dt = _dtype.to_dtype(parsed.array.spec, parsed.array.itemsize, f"latest {name!r}")
        seg = Segment._create_object(
            name,
            Kind.LATEST,
            body_size=parsed.body_size,
            params=params,
            sem_values=[0, 0],
            mode=mode,
            init=_mutex.Mutex.initialize,
        )
        try:
            return cls(seg, parsed, dt)
        except BaseException:
            seg.unlink()
            seg.close()
            raise

    @staticmethod
    def _make_params(
        *,
        size: int | None,
        shape: int | tuple[int, ...] | list[int] | None,
        dtype: DTypeLike | None,
        order: str,
        slots: int,
        checksum: bool | None,
    ) -> bytes:
        if isinstance(slots, bool) or not isinstance(slots, int):
            raise TypeError(f"slots must be an int, not {type(slots).__name__}")
        if not MIN_SLOTS <= slots <= MAX_SLOTS:
            raise ValueError(f"slots must be between {MIN_SLOTS} and {MAX_SLOTS}, not {slots}")
        if checksum is None:
            checksum = not STRONG_ORDER
        flags = F_CHECKSUM if checksum else 0
        meta = b""
        if size is not None:
            if shape is not None or dtype is not None:
                raise TypeError("give either size= (bytes values) or shape= and dtype=, not both")
            if isinstance(size, bool) or not isinstance(size, int):
                raise TypeError(f"size must be an int, not {type(size).__name__}")
            if not 0 <= size <= MAX_BODY // MAX_SLOTS:
                raise ValueError(f"size must be between 0 and {MAX_BODY // MAX_SLOTS}, not {size}")
        else:
            if shape is None or dtype is None:
                raise TypeError("give size= (bytes values) or both shape= and dtype=")
            dims, dt, order = _dtype.normalize(shape, dtype, order)
            meta = _dtype.encode_meta(dims, dt, order)
            size = _dtype.parse_meta(meta, "new latest")[0].nbytes
            if size > MAX_BODY // MAX_SLOTS:
                raise ValueError(f"an array of {size} bytes is beyond shmkit's limit")
            flags |= F_ARRAY
        return _PARAMS.pack(PARAMS_VERSION, flags, slots, WRITERS, size) + meta

    @classmethod
    def open(cls, name: str, *, readonly: bool = False) -> Latest[Any]:
        """Attach to an existing Latest by name.

        ``readonly=True`` maps it read-only: ``get`` and ``wait_newer`` work,
        ``set`` raises PermissionDenied. Raises NotFound, or LayoutError for
        another kind of object or an invalid header.
        """
        seg = Segment._open_object(name, Kind.LATEST, readonly=readonly)
        try:
            assert seg.header is not None
            what = f"latest {name!r}"
            parsed = parse_params(seg.header.params, seg.header.body_size, what)
            if seg.header.nsems != 2:
                raise LayoutError(f"{what}: {seg.header.nsems} semaphores, expected 2")
            dt = None
            if parsed.array is not None:
                dt = _dtype.to_dtype(parsed.array.spec, parsed.array.itemsize, what)
            return cls(seg, parsed, dt)
        except BaseException:
            seg.close()
            raise

    @overload
    @classmethod
    def open_or_create(
        cls, name: str, *, size: int, slots: int = ..., checksum: bool | None = ..., mode: int = ...
    ) -> Latest[bytes]: ...

    @overload
    @classmethod
    def open_or_create(
        cls,
        name: str,
        *,
        shape: int | tuple[int, ...] | list[int],
        dtype: DTypeLike,
        order: str = ...,
        slots: int = ...,
        checksum: bool | None = ...,
        mode: int = ...,
    ) -> Latest[NDArray[Any]]: ...

    @classmethod
    def open_or_create(
        cls,
        name: str,
        *,
        size: int | None = None,
        shape: int | tuple[int, ...] | list[int] | None = None,
        dtype: DTypeLike | None = None,
        order: str = "C",
        slots: int = DEFAULT_SLOTS,
        checksum: bool | None = None,
        mode: int = 0o600,
    ) -> Latest[Any]:
        """Open ``name`` or create it; safe when many processes race.

        Raises LayoutError if it exists with another size, shape, dtype or
        order (its slot count and checksum setting are the creator's).
        """
        want = cls._make_params(
            size=size, shape=shape, dtype=dtype, order=order, slots=slots, checksum=checksum
        )
        for _ in range(20):
            try:
                if size is not None:
                    return cls.create(name, size=size, slots=slots, checksum=checksum, mode=mode)
                assert shape is not None and dtype is not None
                return cls.create(
                    name,
                    shape=shape,
                    dtype=dtype,
                    order=order,
                    slots=slots,
                    checksum=checksum,
                    mode=mode,
                )
            except AlreadyExists:
                pass
            try:
                latest = cls.open(name)
            except NotFound:
                continue
            assert latest._seg is not None and latest._seg.header is not None
            have = latest._seg.header.params
            # Compare what values look like: flags' array bit, size and the array meta.
            if (have[4] & F_ARRAY, have[16:]) != (want[4] & F_ARRAY, want[16:]):
                latest.close()
                raise LayoutError(f"latest {name!r} exists with another value size or type")
            return latest
        raise NotFound(f"latest {name!r} kept appearing and vanishing")

    def close(self) -> None:
        """Detach this handle (idempotent). The value stays until ``unlink()``.

        A writer's entry is removed, so readers do not take this for a death.
        Threads of this process blocked in ``wait_newer`` get Closed. The
        mapping itself is released when the handle is garbage-collected, so a
        thread still inside ``set`` never touches unmapped memory.
        """
        if self._seg is None:
            return
        self._ctl = None  # fast paths now raise Closed
        self._fast_set = self._can_fast_set = False
        self._release_writer()
        end = time.monotonic() + 4 * _wait.SLICE
        while self._blocking and time.monotonic() < end:
            time.sleep(0.001)  # waiters notice within one slice; sem_close under them is unsafe
        seg, self._seg = self._seg, None
        _live.discard(self)
        mutex, self._mutex = self._mutex, None
        if mutex is not None and mutex.kind == "flock":
            mutex.close()
        # Else just drop it: a thread of ours still inside a mutex call keeps the
        # ctypes anchor, and so the mapping, alive until it returns.
        self._src = self._dst = ()
        seg.close()

    def unlink(self) -> None:
        """Destroy the name for everyone. Open handles keep working."""
        Segment.remove(self._name)

    def __enter__(self) -> Latest[T]:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_seg", None) is not None:
            try:
                self.close()
            except Exception:
                pass  # interpreter shutdown: modules may already be gone

    def __reduce__(self) -> tuple[Any, ...]:
        return (_reopen, (self._name, self.readonly))

    def __repr__(self) -> str:
        what = (
            f"size={self._size}"
            if self._params.array is None
            else f"shape={self._params.array.shape} dtype={self._dtype}"
        )
        state = " closed" if self._seg is None else ""
        return f"<Latest {self._name!r} {what} slots={self._nslots}{state}>"

    # ------------------------------------------------------------ properties

    @property
    def name(self) -> str:
        return self._name

    @property
    def closed(self) -> bool:
        return self._seg is None

    @property
    def size(self) -> int:
        """Largest value in bytes (array mode: the array's nbytes)."""
        return self._size

    @property
    def shape(self) -> tuple[int, ...] | None:
        """Array mode: every value's shape; None for bytes values."""
        return None if self._params.array is None else self._params.array.shape

    @property
    def dtype(self) -> np.dtype[Any] | None:
        """Array mode: every value's dtype; None for bytes values."""
        return self._dtype

    @property
    def slots(self) -> int:
        return self._nslots

    @property
    def checksum(self) -> bool:
        """True if every value is CRC-checked (weakly ordered CPUs, or asked for)."""
        return self._checksum

    # ------------------------------------------------------------ writing

    def set(self, data: Any, *, timeout: float | None = None) -> int:
        """Publish ``data`` as the newest value; return its version (1, 2, ...).

        Never waits for readers. It waits only while another writer is inside
        its own ``set`` (``timeout`` bounds that: LockTimeout). Bytes mode takes
        any C-contiguous buffer of at most ``size`` bytes (MessageTooLarge
        otherwise); array mode an array of exactly the shape whose dtype casts
        safely (ValueError / TypeError otherwise). Nothing changes on error.
        """
        # The fast path: bytes values, writer entry claimed, pthread mutex, crash
        # points disarmed. It is _set minus its branches (keep the two in step);
        # every call here is measured (a 64-byte set+get under 2 us).
        if timeout is not None and not (type(timeout) is float and timeout >= 0.0):
            timeout = _wait.check_timeout(timeout)  # ints, NaN, negatives: the slow check
        if not self._fast_set:
            return self._set(data, timeout)
        ctl = self._ctl
        ptr = self._anchor
        if ctl is None or ptr is None:
            raise Closed(f"latest {self._name!r} is closed")
        if type(data) is not bytes:
            data = memoryview(data).cast("B")
        n = len(data)
        if n > self._size:
            raise MessageTooLarge(f"latest {self._name!r}: {n} bytes > size {self._size}")
        rc = _p_trylock(ptr)
        if rc:
            self._trylock_failed(ptr, rc, timeout)
        try:
            v = ctl[8] + 1
            k = v % self._nslots
            w = self._tagw[k]
            ctl[w] = 0  # BUSY
            ctl[w + 1] = n
            off = self._doff[k]
            self._mm[off : off + n] = data
            if self._checksum:
                ctl[w + 2] = zlib.crc32(data, v & _CRC_MASK)
            ctl[w] = v
            ctl[8] = v
        finally:
            _p_unlock(ptr)
        ws = self._waitsem
        if ws is not None and ws.value:
            self._wake(ws)
        return v

    def _set(self, data: Any, timeout: float | None) -> int:
        """The general set: arrays, checksums, crash points, first use, flock backend."""
        ctl = self._ctl
        if ctl is None:
            raise Closed(f"latest {self._name!r} is closed")
        mutex = self._mutex
        if mutex is None:
            raise PermissionDenied(f"latest {self._name!r} is open readonly")
        arr: Any = None
        if self._dst:
            np = _dtype.numpy()
            meta = self._params.array
            assert meta is not None and self._dtype is not None
            arr = np.asarray(data)
            if arr.shape != meta.shape:
                raise ValueError(f"latest {self._name!r} holds shape {meta.shape}, not {arr.shape}")
            if not np.can_cast(arr.dtype, self._dtype, "safe"):
                raise TypeError(
                    f"latest {self._name!r} holds {self._dtype}; {arr.dtype} does not cast safely"
                )
            n = self._size
        else:
            if type(data) is not bytes:
                data = memoryview(data).cast("B")
            n = len(data)
            if n > self._size:
                raise MessageTooLarge(f"latest {self._name!r}: {n} bytes > size {self._size}")
        got = mutex.try_acquire()
        if got:
            self._acquire_slow(mutex, got, timeout)
        flock = mutex.kind != "pthread"
        try:
            v = ctl[_VER] + 1
            k = v % self._nslots
            w = self._tagw[k]
            if flock:
                # flock has no EOWNERDEAD: a word set from lock to unlock tells.
                if ctl[_IN_SET]:
                    ctl[_DEATHS] += 1
                ctl[_IN_SET] = 1
            if self._wslot < 0:
                self._claim_writer(ctl)
            ctl[w] = BUSY
            ctl[w + 1] = n
            off = self._doff[k]
            if arr is not None:
                if _CRASH:
                    _crash.point("latest.set.copying")
                np.copyto(self._dst[k], arr, casting="safe")
            elif _CRASH:
                _crash_copy(self._mm, off, data, n)
            else:
                self._mm[off : off + n] = data
            if _CRASH:
                _crash.point("latest.set.copied")
            if self._checksum:
                ctl[w + 2] = zlib.crc32(self._mmv[off : off + n], v & _CRC_MASK)
            ctl[w] = v
            if _CRASH:
                _crash.point("latest.set.sealed")
            ctl[_VER] = v
            if _CRASH:
                _crash.point("latest.set.published")
        finally:
            if flock:
                ctl[_IN_SET] = 0
            mutex.release()
        self._fast_set = self._can_fast_set and self._wslot >= 0
        ws = self._waitsem
        if ws is not None and ws.value:
            self._wake(ws)
        return v

    def _trylock_failed(
        self, ptr: ctypes.Array[ctypes.c_char], rc: int, timeout: float | None
    ) -> None:
        """The fast path's pthread_mutex_trylock returned ``rc``: finish acquiring."""
        if rc == errno.EOWNERDEAD:
            _p_consistent(ptr)  # we hold it: make it usable again, as Mutex does
            self._acquire_slow(None, _mutex.OWNER_DIED, timeout)
        elif rc == errno.EBUSY and self._mutex is not None:
            self._acquire_slow(self._mutex, _mutex.BUSY, timeout)
        else:
            raise LayoutError(f"latest {self._name!r}: writer mutex error: {os.strerror(rc)}")

    def _acquire_slow(self, mutex: _mutex.Mutex | None, got: int, timeout: float | None) -> None:
        """try_acquire said BUSY (wait for the other writer) or OWNER_DIED (count the death).

        Returns holding the writer mutex; raises LockTimeout or Closed without it.
        """
        if got == _mutex.BUSY and mutex is not None:
            timeout = _wait.check_timeout(timeout)

            def attempt() -> int | None:
                got = mutex.try_acquire()
                return None if got == _mutex.BUSY else got

            def block(seconds: float) -> int | None:
                got = mutex.acquire_slice(seconds)
                return None if got == _mutex.BUSY else got

            result = _wait.wait(attempt, block, timeout, on_slice=self._check_open)
            if result is None:
                live, _dead = self._writers()
                raise LockTimeout(
                    f"latest {self._name!r}: another writer kept the writer lock for {timeout} s "
                    f"(live writers: pids {sorted(set(live)) or 'unknown'})"
                )
            got = result
        if got == _mutex.OWNER_DIED and self._ctl is not None:
            # A writer died inside set. Nothing to repair: it never published
            # (4), or finished it; the slot it was filling is simply rewritten.
            self._ctl[_DEATHS] += 1

    def _lock_fd_or_none(self) -> int | None:
        if self._lock_fd is None and self._seg is not None:
            self._lock_fd = _ofd.open_for_locks(self._seg.sysname)
        return self._lock_fd

    def _claim_writer(self, ctl: memoryview) -> None:
        """Take a writer-table entry (under the writer mutex) and clear dead writers' entries.

        The entry's OFD lock, which the kernel drops when we die, is what
        tells readers we live; the pid is for diagnostics.
        """
        fd = self._lock_fd_or_none()
        if fd is None:
            self._wslot = WRITERS  # no OFD locks here: liveness unknown, never reported dead
            return
        mine = -1
        for i in range(WRITERS):
            word = (_WTABLE + 16 * i) // 8
            off = self._base + _WTABLE + 16 * i
            if mine < 0 and _ofd.try_lock(fd, off):
                mine = i
                me = _process.current()
                ctl[word] = me.pid
                ctl[word + 1] = me.start
            elif ctl[word] and not _ofd.is_locked(fd, off):
                ctl[word] = ctl[word + 1] = 0  # a writer that died between sets
        if mine < 0:
            raise Full(f"latest {self._name!r} already has {WRITERS} live writers")
        self._wslot = mine

    def _release_writer(self) -> None:
        fd, self._lock_fd = self._lock_fd, None
        slot, self._wslot = self._wslot, -1
        if fd is None:
            return
        if 0 <= slot < WRITERS and self._seg is not None and not self.readonly:
            word = self._base + _WTABLE + 16 * slot
            try:
                # Clear the entry before unlocking: a reader never sees our unlocked entry.
                self._mm[word : word + 16] = bytes(16)
            except ValueError:
                pass
        os.close(fd)  # drops the OFD lock

    def _wake(self, waiting: posix_ipc.Semaphore) -> None:
        """Give each process blocked in wait_newer a token (a hint; waits are sliced anyway)."""
        try:
            missing = min(waiting.value, 64) - self._wakesem.value
            for _ in range(missing):
                self._wakesem.release()
        except (posix_ipc.Error, ValueError):
            pass  # closed under us by another thread, or at SEM_VALUE_MAX: waiters poll

    # ------------------------------------------------------------ reading

    def get(self, *, timeout: float | None = None) -> T:
        """A consistent copy of the newest value (bytes, or a new ndarray).

        Raises Empty if nothing was ever set. A read that a writer overtakes is
        retried; ``timeout`` bounds the retrying (ReadStarved, a Timeout, after
        it; None retries as long as it takes, backing off; 0 tries once).
        """
        if timeout is not None and not (type(timeout) is float and timeout >= 0.0):
            timeout = _wait.check_timeout(timeout)  # ints, NaN, negatives: the slow check
        ctl = self._ctl
        if ctl is None:
            raise Closed(f"latest {self._name!r} is closed")
        if self._fast:
            # Bytes without checksums: see the ordering rule. Checking the tag
            # before the copy is not needed: the version was published after the
            # seal, and a length read from a slot being rewritten is bounded here
            # and then fails the tag check after the copy.
            v = ctl[8]
            if v:
                k = v % self._nslots
                w = self._tagw[k]
                n = ctl[w + 1]
                if n <= self._size:
                    off = self._doff[k]
                    data = self._mm[off : off + n]
                    if _CRASH:
                        _crash.point("latest.get.copied")
                    if ctl[w] == v:
                        return data  # type: ignore[return-value]
        elif self._fast_crc:
            # The same with the checksum (weakly ordered CPUs): the CRC of our own
            # copy, seeded with the version, must match the one the writer stored.
            v = ctl[8]
            if v:
                k = v % self._nslots
                w = self._tagw[k]
                n = ctl[w + 1]
                if n <= self._size:
                    off = self._doff[k]
                    data = self._mm[off : off + n]
                    if _CRASH:
                        _crash.point("latest.get.copied")
                    crc = ctl[w + 2]
                    if ctl[w] == v and zlib.crc32(data, v & _CRC_MASK) == crc:
                        return data  # type: ignore[return-value]
        return self._read(timeout, None)[1]  # type: ignore[no-any-return]

    def get_versioned(self, *, timeout: float | None = None) -> tuple[int, T]:
        """``(version, value)`` of the newest value, read together (see :meth:`get`)."""
        self._check_open()
        return self._read(timeout, None)

    def get_into(self, out: Any, *, timeout: float | None = None) -> tuple[int, int]:
        """Copy the newest value into ``out``; return ``(version, nbytes)``.

        No allocation: the way to read large values at memory speed. Bytes
        mode: any writable C-contiguous buffer (ValueError if the value does
        not fit). Array mode: an ndarray of the same shape, dtype and memory
        order. On ReadStarved, ``out`` holds garbage.
        """
        self._check_open()
        if self._dst:
            np = _dtype.numpy()
            if (
                not isinstance(out, np.ndarray)
                or out.shape != self.shape
                or out.dtype != self._dtype
            ):
                raise ValueError(f"out must be an ndarray of shape {self.shape}, {self._dtype}")
            if not out.flags.writeable:
                raise ValueError("out must be writable")
            dst = _raw_bytes(out, self._params.array.order)  # type: ignore[union-attr]
        else:
            dst = memoryview(out).cast("B")
            if dst.readonly:
                raise ValueError("out must be writable")
        v, n = self._read(timeout, dst)
        return v, n

    def get_version(self) -> int:
        """The newest published version (0 if nothing was ever set); no copy."""
        ctl = self._ctl
        if ctl is None:
            raise Closed(f"latest {self._name!r} is closed")
        return int(ctl[_VER])

    def _read(self, timeout: float | None, dst: Any) -> tuple[int, Any]:
        """The general read: retries, checksums, arrays, ``get_into``; bounded by ``timeout``."""
        if timeout is not None:
            timeout = _wait.check_timeout(timeout)
        end: float | None = None  # the clock is read only once a try has failed
        attempts = 0
        bad_crc = (0, 0)  # (version, consecutive checksum failures with a stable tag)
        while True:
            ctl = self._ctl
            if ctl is None:
                raise Closed(f"latest {self._name!r} is closed")
            v = ctl[_VER]
            if v == 0:
                raise Empty(f"latest {self._name!r} has no value yet")
            k = v % self._nslots
            w = self._tagw[k]
            if ctl[w] == v:
                n = ctl[w + 1]
                if self._dst:
                    n = self._size  # array values are always full size
                if n > self._size:
                    value: Any = None  # a length no writer stores: the tag will differ
                elif dst is None:
                    value = self._copy_out(k, n)
                else:
                    if n > len(dst):
                        raise ValueError(f"the value ({n} bytes) does not fit in {len(dst)} bytes")
                    off = self._doff[k]
                    dst[:n] = self._src[k] if self._src else self._mmv[off : off + n]
                    value = n
                if _CRASH:
                    _crash.point("latest.get.copied")
                crc = ctl[w + 2]
                if ctl[w] == v and value is not None:
                    if not self._checksum:
                        return v, value
                    if dst is not None:
                        raw = dst[:n]
                    else:
                        raw = value if isinstance(value, bytes) else _raw_bytes(value)
                    if zlib.crc32(raw, v & _CRC_MASK) == crc:
                        return v, value
                    bad_crc = (v, bad_crc[1] + 1) if bad_crc[0] == v else (v, 1)
                    if bad_crc[1] >= 3:
                        raise LayoutError(
                            f"latest {self._name!r}: version {v} fails its checksum; "
                            "the segment is corrupt"
                        )
            attempts += 1
            self._retries += 1
            if end is None and timeout is not None:
                end = time.monotonic() + timeout
            if end is not None and time.monotonic() >= end:
                self._starved += 1
                raise ReadStarved(
                    f"latest {self._name!r}: no stable value in {timeout} s "
                    f"({attempts} tries; writers kept overwriting the slot being read; "
                    f"{self._nslots} slots of {self._size} bytes)"
                )
            if attempts > 2:
                # Let the writer run (2 cores, many processes); a sleep also lets Ctrl-C in.
                time.sleep(0 if attempts < 20 else min(1e-3, 1e-6 * attempts))

    def _copy_out(self, k: int, n: int) -> Any:
        if not self._dst:
            off = self._doff[k]
            return self._mm[off : off + n]
        np = _dtype.numpy()
        meta = self._params.array
        assert meta is not None
        out = np.empty(meta.shape, self._dtype, order=meta.order)
        _raw_bytes(out, meta.order)[...] = self._src[k]
        return out

    # ------------------------------------------------------------ waiting

    def wait_newer(self, version: int, timeout: float | None = None) -> int:
        """Block until the version is above ``version``; return the newest version.

        Spins briefly, then sleeps on a semaphore the writer posts, in slices
        that notice Ctrl-C, ``close()`` (Closed) and a writer that died
        without closing while no other writer lives (PeerDied), within ~50 ms.
        Raises Timeout after ``timeout`` seconds (0 checks once; None forever).
        ``wait_newer(0)`` waits for the first value.
        """
        timeout = _wait.check_timeout(timeout)
        ctl = self._ctl
        if ctl is None:
            raise Closed(f"latest {self._name!r} is closed")
        v = ctl[_VER]
        if v > version:
            return int(v)
        registered = False
        waitsem = self._waitsem

        def attempt() -> int | None:
            c = self._ctl
            if c is None:
                raise Closed(f"latest {self._name!r} is closed")
            now = c[_VER]
            return int(now) if now > version else None

        def block(seconds: float) -> int | None:
            nonlocal registered
            if not registered and waitsem is not None:
                waitsem.release()  # tell writers someone sleeps, then re-check: no lost wake-up
                registered = True
                got = attempt()
                if got is not None:
                    return got
            if waitsem is None:  # no sem_getvalue: writers cannot tell, so poll
                time.sleep(min(seconds, 0.002))
            else:
                _wait.sem_block(self._wakesem, seconds)
            return attempt()

        def on_slice() -> None:
            self._check_open()
            live, dead = self._writers()
            if dead and not live and self._ctl is not None and self._ctl[_VER] <= version:
                raise PeerDied(
                    f"latest {self._name!r}: its writer (pid {', '.join(map(str, dead))}) died "
                    "and no other writer is attached; the last value stays readable"
                )

        with self._tlock:
            self._blocking += 1
        try:
            got = _wait.wait(attempt, block, timeout, on_slice=on_slice)
        finally:
            if registered and waitsem is not None and self._seg is not None:
                _wait.sem_try(waitsem)
            with self._tlock:
                self._blocking -= 1
        if got is None:
            raise Timeout(f"latest {self._name!r}: no version newer than {version} in {timeout} s")
        return got

    # ------------------------------------------------------------ introspection

    def _check_open(self) -> None:
        if self._seg is None or self._ctl is None:
            raise Closed(f"latest {self._name!r} is closed")

    def _writers(self) -> tuple[list[int], list[int]]:
        """(live pids, dead pids) from the writer table; empty where OFD locks are missing."""
        ctl = self._ctl
        fd = self._lock_fd_or_none()
        if ctl is None or fd is None:
            return [], []
        return _scan_writers(ctl, fd, self._base, self._wslot)

    def writers(self) -> list[tuple[int, bool]]:
        """``(pid, alive)`` for every writer entry (alive: its process still runs)."""
        self._check_open()
        live, dead = self._writers()
        return [(p, True) for p in live] + [(p, False) for p in dead]

    def statistics(self) -> LatestStats:
        """A snapshot: version, writer deaths, live/dead writers, waiters, this handle's retries."""
        self._check_open()
        ctl = self._ctl
        assert ctl is not None
        live, dead = self._writers()
        waiters = -1 if self._waitsem is None else int(self._waitsem.value)
        return LatestStats(
            int(ctl[_VER]),
            int(ctl[_DEATHS]),
            tuple(live),
            tuple(dead),
            waiters,
            self._retries,
            self._starved,
        )

    def _after_fork_in_child(self) -> None:
        # Our writer entry's OFD lock is shared with the parent: drop the child's
        # copy so the parent's death is seen; the child re-claims on its first set.
        if self._lock_fd is not None:
            try:
                os.close(self._lock_fd)
            except OSError:
                pass
            self._lock_fd = None
        self._wslot = -1
        self._fast_set = False  # the child claims its own entry on its first set
        self._blocking = 0
        self._tlock = threading.Lock()
        if self._mutex is not None:
            self._mutex.after_fork_in_child()


def _body_size(params: bytes) -> int:
    """The body size the params describe (for validating our own params at create)."""
    _v, _flags, nslots, nwriters, size = _PARAMS.unpack_from(params, 0)
    return align(_WTABLE + 16 * int(nwriters)) + int(nslots) * (_SLOT_HEAD + align(size))


def _raw_bytes(arr: Any, order: str | None = None) -> Any:
    """A flat uint8 view of an array's memory, in ``order`` (default: its own); no copy."""
    if order is None:
        order = "F" if arr.flags.f_contiguous and not arr.flags.c_contiguous else "C"
    if not (arr.flags.c_contiguous if order == "C" else arr.flags.f_contiguous):
        raise ValueError(f"the array must be {order}-contiguous")
    # Reshaping a contiguous array in its own order is always a view.
    return arr.reshape(-1, order=order).view("u1")


def _scan_writers(ctl: memoryview, fd: int, base: int, mine: int) -> tuple[list[int], list[int]]:
    live: list[int] = []
    dead: list[int] = []
    for i in range(WRITERS):
        word = (_WTABLE + 16 * i) // 8
        pid = ctl[word]
        if i == mine:
            live.append(pid)
        elif _ofd.is_locked(fd, base + _WTABLE + 16 * i):
            live.append(pid)  # may still be 0 for an instant while a writer claims it
        elif pid and ctl[word] == pid:
            # Re-read after the probe: a closing writer clears its entry before unlocking.
            dead.append(pid)
    return live, dead


def _reopen(name: str, readonly: bool) -> Latest[Any]:
    return Latest.open(name, readonly=readonly)


def describe(seg: Segment) -> dict[str, object]:
    """JSON-serialisable facts about an opened LATEST segment (for ``shmkit info``).

    Needs no numpy. Raises LayoutError if ``seg`` is not a valid Latest.
    """
    header = seg.header
    if header is None or header.kind != Kind.LATEST:
        raise LayoutError(f"{seg.name!r} is not a latest")
    p = parse_params(header.params, header.body_size, f"latest {seg.name!r}")
    mm = seg.mmap
    base = header.body_off
    version, deaths = struct.unpack_from("<QQ", mm, base + 64)
    length = None
    if version:
        tag, n = struct.unpack_from("<QQ", mm, base + p.slots_off + (version % p.nslots) * p.stride)
        length = n if tag == version else None
    writers: list[dict[str, object]] = []
    fd = _ofd.open_for_locks(seg.sysname)
    try:
        for i in range(p.nwriters):
            pid, start = struct.unpack_from("<QQ", mm, base + _WTABLE + 16 * i)
            locked = fd is not None and _ofd.is_locked(fd, base + _WTABLE + 16 * i)
            if pid or locked:
                alive = locked or (fd is None and _process.liveness(pid, start).value != "dead")
                writers.append({"pid": pid, "alive": alive})
    finally:
        if fd is not None:
            os.close(fd)
    waiters: int | None = None
    if _platform.SEM_GETVALUE and header.nsems == 2:
        try:
            waiters = int(seg.semaphore(1).value)
        except posix_ipc.Error:
            pass
    info: dict[str, object] = {
        "kind": "latest",
        "values": "array" if p.array is not None else "bytes",
        "size": p.size,
        "slots": p.nslots,
        "checksum": p.checksum,
        "version": version,
        "length": length,
        "writer_deaths": deaths,
        "writers": writers,
        "waiters": waiters,
    }
    if p.array is not None:
        info.update(shape=list(p.array.shape), dtype=p.array.spec, order=p.array.order)
    return info


def _after_fork_in_child() -> None:
    for latest in list(_live):
        latest._after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
