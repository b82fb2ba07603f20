"""Queue: a named, bounded, multi-producer multi-consumer queue of variable-size messages.

Any number of unrelated processes put and get messages through one shared
byte ring; the capacity is in bytes. The API mirrors the stdlib ``queue``
module (``put``/``get``, ``*_nowait``, ``Full``/``Empty``) and adds batches,
a copy-into-your-buffer read and a queue-wide shutdown::

    jobs = Queue.create("jobs", capacity=1 << 20)     # 1 MiB of messages
    jobs.put(b"resize img-0001.png")                  # in one program
    with Queue.open("jobs") as q:                     # in another
        job = q.get(timeout=5.0)                      # Empty after 5 s
    jobs.shutdown()                                   # producers: Closed; consumers drain
    jobs.unlink()                                     # remove the name

What other processes see and rely on:

- Messages come out in the order they were published; each message goes to
  exactly one consumer. A message larger than ``capacity`` raises
  ``MessageTooLarge`` at ``put()`` and is never waited on.
- A producer killed at any instant leaves no partial message visible; a
  consumer killed mid-``get`` loses at most the message it was taking; a
  process killed while holding the queue's lock delays the others by at most
  one lock hand-over, and the next holder repairs the counters
  (``statistics().recoveries``). See docs/guarantees.md.
- Waiting: an empty (or full) queue is first polled without the lock for
  ``spin`` seconds (default 50 µs, adapting up to 1 ms while the peer answers
  just after that, and none at all for a while once the spinner finds itself
  descheduled: a loaded machine; see :attr:`Queue.spin`), then the caller
  sleeps on a futex word in the segment in slices of at most 50 ms, so a
  deadline, Ctrl-C, a shutdown or a dead peer is noticed within one slice.
  Wake-ups are hints only; one ``/dev/shm`` entry per queue.
- Large messages (128 KiB and more) are copied in and out without holding the
  lock; prefer ``get_into(buffer)`` for them (one copy, no allocation).
- Producers and consumers have a lock each (on x86-64 Linux), so a put and a
  get run at the same time; ``put_many`` publishes its items as one batch
  record, the fast way to move many small messages.
"""

from __future__ import annotations

import math
import mmap
import operator
import struct
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from itertools import accumulate
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Generic, Literal, TypeVar, overload

from . import _codec, _crash, _mutex, _process, _wait
from ._codec import Codec
from ._core import _queue
from ._layout import Kind, align
from .errors import Closed, Empty, Full, LayoutError, MessageTooLarge
from .segment import Segment, open_or_create

if TYPE_CHECKING:
    from typing import Protocol

    from typing_extensions import Buffer

    class _ArrayLike(Protocol):
        """numpy arrays (their stubs declare the buffer protocol only for Python 3.12+)."""

        @property
        def __array_interface__(self) -> dict[str, Any]: ...

    BytesLike = Buffer | _ArrayLike

__all__ = ["BufferTooSmall", "Queue", "QueueStatistics", "describe"]

T = TypeVar("T")

# ----------------------------------------------------------------------------- layout

# Queue parameters, stored once in the segment header's params (never change):
# offset size field
#      0    4 magic     b"QUE3" (the digit is the body layout version)
#      4    4 flags     bit 0: every record carries a CRC32 of its payload
#      8    8 ring      ring bytes = capacity + 16 (one record header)
#     16    8 capacity  largest message in bytes (a multiple of 8)
#     24   16 codec     the creator's codec name, ASCII, NUL-padded (informational)
_PARAMS: Final = struct.Struct("<4sIQQ16s")
_MAGIC: Final = b"QUE3"
_F_CRC: Final = 1

# Body, from body_off (64-aligned); control words are little-endian u64:
# offset size field
#      0   64 mutex C   consumers' robust process-shared pthread mutex (the only
#                       lock in one-lock mode: flock backend, weakly ordered CPUs)
#     64   64 mutex P   producers' robust mutex (two-lock mode only)
#    128    8 head      stream position of the oldest record                (consumers)
#    136    8 gets      records removed so far                              (consumers)
#    192    8 tail      stream position just past the newest record         (producers)
#    200    8 puts      records published so far                            (producers)
#    208    8 pdied     producers' side repaired alone after a death; the rest is due
#    256    8 state     bit 0 shut down | bit 1 claimed | bit 2 reserved | bit 3 repair
#                       due | getters waiting << 4 | putters waiting << 32
#    264    8 recoveries  dead lock holders or claimers whose work was repaired
#    272    8 corrupt   records skipped because they failed validation
#    280    8 dirty     flock backend only: 1 while held (tells the next holder of a death)
#    288    8 claim     while claimed: stream position of the claimed record; the
#                       ring is free only from here on (not from head)
#    296    8 claim_pid    the claiming process (pid, start time): a claim whose
#    304    8 claim_ticks  process is dead is released by whoever notices
#    312    8 res_pid      the reserving producer (pid, start time): likewise
#    320    8 res_ticks
#    328    4 gwake     futex word consumers sleep on (u32; bumped to wake them)
#    332    4 pwake     futex word producers sleep on
#    384  520 waiters   65 words, one per attach slot + 1 shared: getters | putters << 32
#    960 ring ring      the byte ring; a stream position p lives at ring index p % ring
# Each side's words have a cache line of their own, and so does each mutex: a
# producer and a consumer working at once touch each other's line only to
# read where the other one is.
#
# Two locks (x86-64 with robust mutexes, the fast configuration). A put of a
# small message holds only P, a get only C, so one producer and one consumer
# never wait for each other. Everything else (batches that wrap, large
# messages, waiting, shutdown, statistics, repair) holds both, taken P then
# C, so it sees and changes the queue exactly as under one lock. What a
# P-holder and a C-holder share is safe on a TSO CPU: the producer writes the
# record, then puts, then tail; the consumer reads tail, then the record,
# then stores gets and head; each reads the other's index only to learn where
# it may work (a stale value just means less room or fewer messages), and a
# single aligned 8-byte store publishes or consumes. State bits and waiter
# counts change only under both locks (bit "repair due" under C alone, which
# still excludes every other writer of state).
#
# Record at stream position p (p % 8 == 0; it may wrap around the ring end):
#   word 0   length (low 32 bits) | seq = puts when written, mod 2**32 (high 32)
#   word 1   hcheck (low 32) | payload CRC32 (high 32; 0 unless created with checksum=True)
#            hcheck = (length ^ p ^ SALT) mod 2**32: a changed length, zeroed memory or
#            a record left from an earlier lap of the ring (another p) fails it; the
#            seq is checked against gets/puts. (Three integer operations: a put or get
#            in Python pays for every one, so no multiplicative hash.)
#   payload  length bytes, then zero to 7 bytes of padding to the next multiple of 8
#   A batch record (put_many of two or more) has SALT_BATCH in its hcheck and the
#   payload: u32 count k, k u32 end offsets (cumulative: message j is bytes
#   end[j-1] .. end[j] of what follows, so any one is found in O(1)), the k
#   messages back to back. Its seq is
#   that of its first message; it holds seqs seq .. seq+k-1, is taken in part
#   (gets - seq of them are gone) and frees its space when head passes it.
#
# Ordering rule. Every store that hands ring space from one party to another
# (publish, consume, reserve, claim, release) happens with its side's lock
# held (P for producers, C for consumers, both for reserve/claim/release);
# payload copies happen either under a lock or (large messages, below) on
# space the copier alone owns meanwhile. A producer writes the payload and
# the record header, then stores puts, then tail: that one aligned 8-byte
# store publishes the record. A consumer copies the payload out, then stores
# head (once the whole record is taken), then gets: a consumer killed between
# the two has consumed, and never repeats. A holder killed between two
# stores leaves the old state, or one that _repair maps back to it: a valid
# record at tail whose seq lags puts means puts was stored but tail was not;
# the record at head fixes gets. Lock-free reads (spin polls, qsize) are
# hints that never decide what is read or written.
#
# Large messages (>= _CLAIM_MIN bytes) are copied without the lock, so that a
# producer's copy-in and a consumer's copy-out overlap:
# - a producer *reserves* the space at tail (bit "reserved", its identity),
#   unlocks, writes payload and header, then locks again to publish (puts,
#   tail) and clear the bit. Other producers wait meanwhile; nothing is visible
#   before the publishing store, so a reserver that dies leaves nothing behind.
# - a consumer *claims* the record: it takes it under the lock (gets, head),
#   records the claim (bit "claimed", where, its identity) and copies the
#   payload out after unlocking; clearing the bit frees the space. Other
#   consumers go on meanwhile (copying under the lock).
# A reservation or claim whose process is dead is cleared by whoever notices
# (every waiter checks once per slice); a live one is never taken.
#
# Memory model: pthread_mutex_lock/unlock (and flock) are acquire/release
# barriers. On weakly ordered CPUs such as arm64 the queue runs in one-lock
# mode (P is C), where every hand-over is under the same mutex; there a
# lock-free poll may see a value late, which only costs another poll.
#
# Deaths. A holder killed between two stores leaves the old state or one that
# _repair maps back to it. Whoever next takes a lock whose holder died
# (EOWNERDEAD) repairs: under both locks, everything (_recover). A consumer
# that finds C's holder dead holds only C and may not wait for P (lock
# order): it marks "repair due" and takes both. A producer that finds P's
# holder dead takes C too; if C stays busy past its deadline it repairs the
# producers' words alone and leaves pdied for the next holder of both.
_HDR: Final = 16
_W_HEAD: Final = 16
_W_GETS: Final = 17
_W_TAIL: Final = 24
_W_PUTS: Final = 25
_W_PDIED: Final = 26
_W_STATE: Final = 32
_W_RECOV: Final = 33
_W_CORRUPT: Final = 34
_W_DIRTY: Final = 35
_W_CLAIM: Final = 36
_W_CLAIM_PID: Final = 37
_W_CLAIM_TICKS: Final = 38
_W_RES_PID: Final = 39
_W_RES_TICKS: Final = 40
_W_WAITERS: Final = 48
_P_MUTEX: Final = 64  # byte offset of mutex P in the body
_SLOTS: Final = 64  # attach slots with their own waiter word; word 64 is shared by the rest
_RING_OFF: Final = align(8 * (_W_WAITERS + _SLOTS + 1))
_W_RING: Final = _RING_OFF // 8

_SALT: Final = 0x5155_4555_454B_4D53
_SALT_BATCH: Final = 0x4241_5443_484B_4D53  # batch records: a check word of their own
_U32: Final = struct.Struct("<I")
_U32X2: Final = struct.Struct("<II")
_M32: Final = 0xFFFF_FFFF
_M31: Final = 0x7FFF_FFFF
_M64: Final = 0xFFFF_FFFF_FFFF_FFFF
_GWM: Final = 0x0FFF_FFFF  # getters waiting: 28 bits from bit _GW
_GW: Final = 4
_SHUT: Final = 1
_CLAIMED: Final = 2
_RESERVED: Final = 4
_REPAIR: Final = 8
_BUSY: Final = _SHUT | _CLAIMED | _RESERVED | _REPAIR  # any of these: no fast put
_GETW_MASK: Final = _GWM << _GW
_PUTW_ONE: Final = 1 << 32
#: Messages this large are copied out without the lock (see Claims above).
_CLAIM_MIN: Final = 128 * 1024

#: Largest capacity: a record's length field has 32 bits.
MAX_CAPACITY: Final = (1 << 32) - 64
#: Default time an empty/full queue is polled without the lock before sleeping.
DEFAULT_SPIN: Final = _wait.SPIN
#: The adaptive spin never exceeds this (unless the base ``spin`` is larger).
_SPIN_MAX: Final = 1e-3
#: After a spin found this handle descheduled (a loaded machine), sleep at
#: once for this long (seconds) instead of spinning.
_CALM: Final = 0.05
#: Waiting handles re-check who is alive at most this often (seconds).
_REAP_EVERY: Final = 1.0

_ARMED: Final = _crash.ARMED
#: Crash points share one counter with the C fast paths' (SHMKIT_CRASH_AFTER).
_qcrash = _queue.crash_point

_perf = time.perf_counter
_mono = time.monotonic
_check_timeout = _wait.check_timeout

#: The C fast paths' answers (see _core/_queue.c).
_FULL: Final = _queue.FULL
_EMPTY: Final = _queue.EMPTY
_GENERAL: Final = _queue.GENERAL
#: Exceptions a critical section raises on purpose, leaving the queue consistent.
_CLEAN_EXIT: Final = (Closed, LayoutError, MessageTooLarge)


class _Again:
    """Sentinel: the locked attempt could not proceed; wait and try again."""


_AGAIN: Final = _Again()


class _NoLock:
    """Sentinel: the locks stayed busy until the deadline."""


_NOLOCK: Final = _NoLock()
T2 = TypeVar("T2")


class _Reservation:
    """Space reserved at tail for one large record, written after unlocking."""

    __slots__ = ("n", "pos", "seq")

    def __init__(self, pos: int, seq: int, n: int) -> None:
        self.pos = pos  # stream position of the record (tail when reserved)
        self.seq = seq  # its sequence number (puts when reserved)
        self.n = n


class _Claim:
    """A record taken under the lock whose payload is copied out after unlocking."""

    __slots__ = ("n", "pos", "start")

    def __init__(self, pos: int, start: int, n: int) -> None:
        self.pos = pos  # stream position of the record (the claim word)
        self.start = start  # ring index of its payload
        self.n = n


class BufferTooSmall(MessageTooLarge):
    """``get_into``: the next message does not fit the buffer; it stays queued.

    Attributes:
        needed: the message's size in bytes.
    """

    def __init__(self, message: str, needed: int = 0) -> None:
        super().__init__(message)
        self.needed = needed


@dataclass(frozen=True)
class QueueStatistics:
    """A snapshot of a queue, as every process sees it.

    Attributes:
        name: the queue's name.
        capacity: the largest message, in bytes (as created, rounded up to 8).
        ring_bytes: bytes of the ring (capacity + one 16-byte record header).
        bytes_used: ring bytes holding messages, headers and padding included.
        messages: messages waiting to be taken.
        total_puts: messages ever published.
        total_gets: messages ever removed (delivered, skipped as corrupt, or
            discarded by ``shutdown(immediate=True)``).
        waiting_getters: consumers asleep on the queue (a hint; see R10).
        waiting_putters: producers asleep on the queue.
        recoveries: times a process died holding the lock and the next holder
            repaired the queue.
        corrupt_records: records skipped because they failed validation.
        shut_down: ``shutdown()`` was called.
        codec: the creator's codec name.
        checksum: every record carries a CRC32 of its payload.
    """

    name: str
    capacity: int
    ring_bytes: int
    bytes_used: int
    messages: int
    total_puts: int
    total_gets: int
    waiting_getters: int
    waiting_putters: int
    recoveries: int
    corrupt_records: int
    shut_down: bool
    codec: str
    checksum: bool


def _hcheck(w0: int, pos: int) -> int:
    return (w0 ^ pos ^ _SALT) & _M32


def _hcheck_batch(w0: int, pos: int) -> int:
    return (w0 ^ pos ^ _SALT_BATCH) & _M32


def _split_batch(
    buf: Any, start: int, n: int, skip: int, limit: int
) -> tuple[list[bytes], int] | None:
    """Messages ``skip`` .. ``skip + limit`` of the batch payload ``buf[start : start + n]``.

    The payload is a u32 count k, k u32 end offsets (cumulative, from the
    first message's first byte) and the messages. Reads only the offsets it
    needs, so taking one message is O(1) however large the batch. Returns the
    messages and k, or None if the payload is not a well-formed batch.
    """
    if n < 8:
        return None
    k = _U32.unpack_from(buf, start)[0]
    if not 0 < k <= (n - 4) >> 2 or skip >= k:
        return None
    first = start + 4 + 4 * k
    total = n - 4 - 4 * k
    if _U32.unpack_from(buf, first - 4)[0] != total:  # the last end is the size
        return None
    m = min(limit, k - skip)
    if m == 1:  # one message (get): two offsets, no lists
        if skip:
            b, e = _U32X2.unpack_from(buf, start + 4 * skip)
        else:
            b, e = 0, _U32.unpack_from(buf, start + 4)[0]
        if not b <= e <= total:
            return None
        return [buf[first + b : first + e]], k
    if skip:
        ends: tuple[int, ...] = struct.unpack_from(f"<{m + 1}I", buf, start + 4 * skip)
    else:
        ends = (0, *struct.unpack_from(f"<{m}I", buf, start + 4))
    if ends[-1] > total or not all(map(operator.le, ends, ends[1:])):
        return None
    offs = list(map(first.__add__, ends))
    return list(map(buf.__getitem__, map(slice, offs[:-1], offs[1:]))), k


def _parse_params(seg: Segment) -> tuple[int, int, int, str]:
    """Validate a queue segment's params and body size: (flags, ring, capacity, codec)."""
    hdr = seg.header
    what = f"queue {seg.name!r}"
    if hdr is None or len(hdr.params) != _PARAMS.size:
        raise LayoutError(f"{what}: queue parameters missing or of the wrong size")
    magic, flags, ring, cap, codec = _PARAMS.unpack(hdr.params)
    if magic != _MAGIC:
        raise LayoutError(f"{what}: queue layout {magic!r}, this shmkit reads {_MAGIC!r}")
    if flags & ~_F_CRC:
        raise LayoutError(f"{what}: unknown queue flags {flags:#x}")
    if cap % 8 or not 8 <= cap <= MAX_CAPACITY or ring != cap + _HDR:
        raise LayoutError(f"{what}: invalid capacity {cap} / ring {ring}")
    if hdr.body_size < _RING_OFF + ring:
        raise LayoutError(f"{what}: body of {hdr.body_size} bytes cannot hold a {ring}-byte ring")
    if hdr.nsems != 0:
        raise LayoutError(f"{what}: has {hdr.nsems} semaphores, a queue has none")
    name = codec.rstrip(b"\0").decode("ascii", "replace")
    return flags, ring, cap, name


def _snapshot(
    c: memoryview, name: str, *, ring: int, cap: int, flags: int, codec: str
) -> QueueStatistics:
    """Statistics from the control words, clamped so a corrupt word cannot mislead much."""
    gets = c[_W_GETS]
    head = c[_W_HEAD]
    tail = c[_W_TAIL]
    puts = c[_W_PUTS]
    st = c[_W_STATE]
    return QueueStatistics(
        name=name,
        capacity=cap,
        ring_bytes=ring,
        bytes_used=min(max(tail - (c[_W_CLAIM] if st & _CLAIMED else head), 0), ring),
        messages=min(max(puts - gets, 0), ring // 4),
        total_puts=puts,
        total_gets=gets,
        waiting_getters=(st >> _GW) & _GWM,
        waiting_putters=(st >> 32) & _M31,
        recoveries=c[_W_RECOV],
        corrupt_records=c[_W_CORRUPT],
        shut_down=bool(st & _SHUT),
        codec=codec,
        checksum=bool(flags & _F_CRC),
    )


def describe(seg: Segment) -> dict[str, object]:
    """JSON-serialisable statistics of an opened QUEUE segment (for ``shmkit ls``/``info``).

    Reads the control words without taking the queue's lock, so it never
    blocks and never repairs; the numbers are a consistent-enough snapshot.

    Raises:
        LayoutError: ``seg`` is not a valid queue.
    """
    if seg.kind != Kind.QUEUE:
        raise LayoutError(f"{seg.name!r} is not a queue")
    flags, ring, cap, codec = _parse_params(seg)
    hdr = seg.header
    assert hdr is not None
    with memoryview(seg.mmap) as whole:
        body = whole[hdr.body_off : hdr.body_off + _RING_OFF]
        with body, body.cast("Q") as c:
            return asdict(_snapshot(c, seg.name, ring=ring, cap=cap, flags=flags, codec=codec))


def _check_capacity(capacity: object) -> int:
    if isinstance(capacity, bool) or not isinstance(capacity, int):
        raise TypeError(f"capacity must be an int (bytes), not {type(capacity).__name__}")
    if not 0 < capacity <= MAX_CAPACITY:
        raise ValueError(f"capacity must be between 1 and {MAX_CAPACITY} bytes, not {capacity}")
    return max(8, align(capacity, 8))


def _check_spin(spin: object) -> float:
    if isinstance(spin, bool) or not isinstance(spin, (int, float)):
        raise TypeError(f"spin must be a number of seconds, not {type(spin).__name__}")
    if not 0 <= spin <= 1.0:
        raise ValueError(f"spin must be between 0 and 1 second, not {spin!r}")
    return float(spin)


def _init_body(mm: mmap.mmap, body_off: int) -> None:
    # The reserved pages are zero already: every control word starts at 0.
    _mutex.Mutex.initialize(mm, body_off)
    _mutex.Mutex.initialize(mm, body_off + _P_MUTEX)  # used in two-lock mode only


def _reopen(name: str, codec: object, spin: float) -> Queue[Any]:
    return Queue.open(name, codec=_codec.resolve(codec), spin=spin)


# ----------------------------------------------------------------------------- Queue


class Queue(Generic[T]):
    """A handle on a named queue. Create with :meth:`create`, attach with :meth:`open`.

    ``T`` is what ``get()`` returns: ``bytes`` for the default codec. Handles
    pickle to their name and reopen on the other side. One handle may be used
    from several threads; see :attr:`spin` for the waiting policy.
    """

    __slots__ = (
        "__weakref__",
        "_base",
        "_c",
        "_calm_until",
        "_cap",
        "_checksum",
        "_codec",
        "_decode",
        "_encode",
        "_encoded",
        "_flags",
        "_last_reap",
        "_mm",
        "_mutex",
        "_name",
        "_pmutex",
        "_pthread",
        "_q",
        "_raw",
        "_ring",
        "_rv",
        "_rw",
        "_seg",
        "_slot_clean",
        "_spin",
        "_spin_now",
        "_two",
        "_wslot",
    )

    def __init__(self, seg: Segment, codec: Codec[Any], spin: float) -> None:
        """Wrap an opened QUEUE segment; use :meth:`create` or :meth:`open` instead."""
        self._name = seg.name
        flags, ring, cap, _creator_codec = _parse_params(seg)
        hdr = seg.header
        assert hdr is not None
        self._seg: Segment | None = seg
        self._flags = flags
        self._ring = ring
        self._rw = ring // 8
        self._cap = cap
        self._checksum = bool(flags & _F_CRC)
        self._mm = seg.mmap
        self._rv = memoryview(self._mm)
        self._c = self._rv[hdr.body_off : hdr.body_off + _RING_OFF + ring].cast("Q")
        self._base = hdr.body_off + _RING_OFF
        self._codec = codec
        self._raw = isinstance(codec, _codec.RawCodec)
        self._encoded = not self._raw  # even bytes items go through the codec
        self._decode: Callable[[bytes], Any] | None = None if self._raw else codec.decode
        self._encode: Callable[[Any], bytes | bytearray | memoryview] = (
            _codec.as_bytes if self._raw else self._encode_with_codec
        )
        self._spin = spin
        self._spin_now = spin
        self._calm_until = 0.0
        self._last_reap = 0.0
        self._slot_clean = False
        slot: int = getattr(seg, "_slot", -1)  # Segment keeps its attach slot private
        self._wslot = slot if 0 <= slot < _SLOTS else _SLOTS
        self._mutex = _mutex.Mutex(self._mm, hdr.body_off, seg.sysname, 0)
        self._pthread = self._mutex.kind == "pthread"
        # Two locks need robust mutexes (see Two locks above); every process on
        # one machine decides alike (the backend is recorded in the segment).
        self._two = self._pthread
        self._pmutex = self._mutex
        if self._two:
            self._pmutex = _mutex.Mutex(self._mm, hdr.body_off + _P_MUTEX, seg.sysname, 1)
        rflags = _queue.F_TWO if self._two else 0
        if not self._pthread:
            rflags |= _queue.F_FLOCK
        elif not self._checksum:
            rflags |= _queue.F_FAST  # checksum queues take the general path
        # The hot paths, each one C call (see _core/_queue.c).
        self._q = _queue.Ring(
            self._mm, hdr.body_off, ring, cap, rflags, self._mutex.core, self._pmutex.core
        )

    # ------------------------------------------------------------------ lifecycle

    @overload
    @classmethod
    def create(
        cls,
        name: str,
        capacity: int,
        *,
        codec: Literal["bytes"] = ...,
        mode: int = ...,
        spin: float = ...,
        checksum: bool = ...,
        unlink_on_exit: bool = ...,
    ) -> Queue[bytes]: ...
    @overload
    @classmethod
    def create(
        cls,
        name: str,
        capacity: int,
        *,
        codec: Literal["pickle", "msgpack"],
        mode: int = ...,
        spin: float = ...,
        checksum: bool = ...,
        unlink_on_exit: bool = ...,
    ) -> Queue[Any]: ...
    @overload
    @classmethod
    def create(
        cls,
        name: str,
        capacity: int,
        *,
        codec: Codec[T],
        mode: int = ...,
        spin: float = ...,
        checksum: bool = ...,
        unlink_on_exit: bool = ...,
    ) -> Queue[T]: ...
    @classmethod
    def create(
        cls,
        name: str,
        capacity: int,
        *,
        codec: str | Codec[Any] = "bytes",
        mode: int = 0o600,
        spin: float = DEFAULT_SPIN,
        checksum: bool = False,
        unlink_on_exit: bool = False,
    ) -> Queue[Any]:
        """Create a queue holding up to ``capacity`` bytes of messages.

        The queue persists after this process exits until ``unlink()`` (or
        ``shmkit rm``), unless ``unlink_on_exit`` ties it to this handle.

        Args:
            name: the queue's name (see Segment for the rules).
            capacity: bytes of message data the queue holds at once; also the
                largest message. Each message additionally uses a 16-byte
                header and pads to 8 bytes, so many small messages fill it sooner.
            codec: ``"bytes"`` (default: bytes-like in, ``bytes`` out),
                ``"pickle"`` (all writers must be trusted), ``"msgpack"``, or a
                :class:`~shmkit._codec.Codec`.
            mode: permission bits for the segment and semaphores.
            spin: seconds to poll before sleeping (see :attr:`spin`).
            checksum: store a CRC32 of every payload and verify it on ``get``
                (catches stray writes into the ring; costs ~0.3 ms per MiB on
                both sides, and every operation takes the general path).
            unlink_on_exit: unlink the queue when this handle is closed.

        Raises:
            AlreadyExists: the name is taken.
            TypeError, ValueError: a bad argument (nothing is created).
            ShmFull: /dev/shm cannot hold the queue.
        """
        cap = _check_capacity(capacity)
        cod = _codec.resolve(codec)
        spin = _check_spin(spin)
        if not isinstance(checksum, bool):
            raise TypeError(f"checksum must be a bool, not {type(checksum).__name__}")
        ring = cap + _HDR
        params = _PARAMS.pack(_MAGIC, _F_CRC if checksum else 0, ring, cap, cod.name.encode())
        seg = Segment._create_object(
            name,
            Kind.QUEUE,
            body_size=_RING_OFF + ring,
            params=params,
            sem_values=(),
            mode=mode,
            init=_init_body,
            unlink_on_exit=unlink_on_exit,
        )
        try:
            return cls(seg, cod, spin)
        except BaseException:
            seg.unlink()
            seg.close()
            raise

    @overload
    @classmethod
    def open(
        cls, name: str, *, codec: Literal["bytes"] = ..., spin: float = ...
    ) -> Queue[bytes]: ...
    @overload
    @classmethod
    def open(
        cls, name: str, *, codec: Literal["pickle", "msgpack"], spin: float = ...
    ) -> Queue[Any]: ...
    @overload
    @classmethod
    def open(cls, name: str, *, codec: Codec[T], spin: float = ...) -> Queue[T]: ...
    @classmethod
    def open(
        cls, name: str, *, codec: str | Codec[Any] = "bytes", spin: float = DEFAULT_SPIN
    ) -> Queue[Any]:
        """Attach to an existing queue by name.

        The codec is this handle's choice: the one the creator recorded is
        never applied implicitly, so a pickle queue opened with the default
        codec yields raw bytes and never unpickles.

        Raises:
            NotFound: no such queue.
            LayoutError: the name holds another kind of object, or a corrupt queue.
        """
        cod = _codec.resolve(codec)
        spin = _check_spin(spin)
        seg = Segment._open_object(name, Kind.QUEUE)
        try:
            return cls(seg, cod, spin)
        except BaseException:
            seg.close()
            raise

    @overload
    @classmethod
    def open_or_create(
        cls,
        name: str,
        capacity: int,
        *,
        codec: Literal["bytes"] = ...,
        mode: int = ...,
        spin: float = ...,
        checksum: bool = ...,
    ) -> Queue[bytes]: ...
    @overload
    @classmethod
    def open_or_create(
        cls,
        name: str,
        capacity: int,
        *,
        codec: Literal["pickle", "msgpack"],
        mode: int = ...,
        spin: float = ...,
        checksum: bool = ...,
    ) -> Queue[Any]: ...
    @overload
    @classmethod
    def open_or_create(
        cls,
        name: str,
        capacity: int,
        *,
        codec: Codec[T],
        mode: int = ...,
        spin: float = ...,
        checksum: bool = ...,
    ) -> Queue[T]: ...
    @classmethod
    def open_or_create(
        cls,
        name: str,
        capacity: int,
        *,
        codec: str | Codec[Any] = "bytes",
        mode: int = 0o600,
        spin: float = DEFAULT_SPIN,
        checksum: bool = False,
    ) -> Queue[Any]:
        """Open ``name``, creating it if needed; safe when many processes race.

        Raises:
            LayoutError: it exists with a smaller capacity than asked for.
        """
        want = _check_capacity(capacity)
        cod = _codec.resolve(codec)
        q: Queue[Any] = open_or_create(
            lambda: cls.create(name, capacity, codec=cod, mode=mode, spin=spin, checksum=checksum),
            lambda: cls.open(name, codec=cod, spin=spin),
            f"queue {name!r}",
        )
        if q.capacity < want:
            q.close()
            raise LayoutError(f"queue {name!r} exists with capacity {q.capacity} < {want}")
        return q

    def close(self) -> None:
        """Detach this handle (idempotent). The queue and its messages stay."""
        seg = self._seg
        if seg is None:
            return
        self._seg = None
        # From here every operation raises Closed at its first step (a C call
        # on the ring). The mapping and the pthread mutexes stay until this
        # object is collected: a thread still inside an operation finishes it
        # and unlocks. (A flock mutex's lock file is closed now; closing it
        # releases the lock.)
        self._q.close()
        if not self._pthread:
            self._mutex.close()
        seg.close()

    def unlink(self) -> None:
        """Remove the queue's name for everyone; attached handles keep working."""
        Segment.remove(self._name)

    def shutdown(self, immediate: bool = False) -> None:
        """Close the queue for everyone (like ``queue.Queue.shutdown`` in Python 3.13).

        Producers then get ``Closed`` from ``put``; consumers get the messages
        still queued and then ``Closed``. Waiters wake at once. Permanent: to
        start over, unlink and create a new queue.

        Args:
            immediate: also discard every queued message (consumers get
                ``Closed`` at once).
        """
        self._check_open()

        def close_it() -> int:
            c = self._c
            st: int = c[_W_STATE] | _SHUT
            c[_W_STATE] = st
            if immediate:
                # Same order as a skip: head first, then gets (_repair copes with a death between).
                c[_W_HEAD] = c[_W_TAIL]
                c[_W_GETS] = c[_W_PUTS]
            return st

        st = self._run_locked(math.inf, close_it)
        assert not isinstance(st, _NoLock)
        self._wake(False, (st >> _GW) & _GWM, _M31)
        self._wake(True, (st >> 32) & _M31, _M31)

    @property
    def is_shutdown(self) -> bool:
        """True once ``shutdown()`` was called by any process."""
        self._check_open()
        return bool(self._c[_W_STATE] & _SHUT)

    @property
    def name(self) -> str:
        return self._name

    @property
    def capacity(self) -> int:
        """Bytes of message data the queue holds; also the largest message."""
        return self._cap

    @property
    def closed(self) -> bool:
        """True after ``close()`` on this handle."""
        return self._seg is None

    @property
    def codec(self) -> Codec[Any]:
        return self._codec

    @property
    def spin(self) -> float:
        """Seconds an empty (or full) queue is polled without the lock before sleeping.

        This is the base budget. A handle that keeps being woken soon after it
        went to sleep (its peer answers, but not within the budget) doubles
        its budget, up to 1 ms or ``spin`` if larger, and drops back to the
        base after a wait longer than that: the adaptive spinning of glibc's
        adaptive mutexes. 0 sleeps at once, always (least CPU).
        """
        return self._spin

    @spin.setter
    def spin(self, seconds: float) -> None:
        self._spin = self._spin_now = _check_spin(seconds)

    def __enter__(self) -> Queue[T]:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __reduce__(self) -> tuple[Any, ...]:
        codec: object = self._codec.name if type(self._codec) in _PLAIN_CODECS else self._codec
        return (_reopen, (self._name, codec, self._spin))

    def __repr__(self) -> str:
        try:
            state = "closed" if self._seg is None else f"capacity={self._cap}"
            return f"<Queue {self._name!r} {state} codec={self._codec.name!r}>"
        except Exception:
            return f"<Queue at {id(self):#x}>"

    def __del__(self) -> None:
        if getattr(self, "_seg", None) is not None:
            try:
                self.close()
            except Exception:
                pass

    # ------------------------------------------------------------------ put

    @overload
    def put(self: Queue[bytes], item: BytesLike, timeout: float | None = None) -> None: ...
    @overload
    def put(self, item: T, timeout: float | None = None) -> None: ...
    def put(self, item: Any, timeout: float | None = None) -> None:
        """Append one message, waiting up to ``timeout`` seconds for room.

        Args:
            item: for the default codec any bytes-like object (a numpy array is
                sent as its raw bytes); otherwise what the codec accepts.
            timeout: None waits as long as it takes, 0 does not wait.

        Raises:
            Full: no room before the deadline.
            Closed: the queue was shut down, or this handle closed.
            MessageTooLarge: the message is larger than ``capacity``.
            TypeError: the codec cannot encode ``item``.
        """
        if type(item) is not bytes or self._encoded:
            item = self._encode(item)  # raises TypeError before anything is touched
        if timeout is not None:
            timeout = _check_timeout(timeout)
        # The fast path: one C call takes P, checks, copies, publishes and
        # unlocks. Anything unusual (shut down, a large message, corrupt words,
        # wrapping) goes to the general path, which validates everything and
        # raises precise errors.
        r = self._q.put(item, 1)
        if not r:
            return
        spin = self._spin_now
        if r == _FULL and timeout != 0 and spin:
            start = _perf()
            need = (len(item) + 23) & -8
            if self._poll(True, need, spin if timeout is None else min(spin, timeout)):
                r = self._q.put(item, 1)
                if not r:
                    return
            if timeout is not None:
                timeout = max(0.0, timeout - (_perf() - start))
            spin = 0.0
        self._put_slow(item, len(item), 1, timeout, spin)

    def put_nowait(self, item: Any) -> None:
        """``put(item, timeout=0)``: raise Full at once if there is no room."""
        self.put(item, 0.0)

    @overload
    def put_many(
        self: Queue[bytes], items: Iterable[BytesLike], timeout: float | None = None
    ) -> None: ...
    @overload
    def put_many(self, items: Iterable[T], timeout: float | None = None) -> None: ...
    def put_many(self, items: Iterable[Any], timeout: float | None = None) -> None:
        """Append several messages at once: all of them, contiguous and in order, or none.

        The batch is published under one lock acquisition with one store, so
        no other producer's message lands in between, and a producer killed
        midway publishes nothing.

        Raises:
            Full: the whole batch did not fit before the deadline (nothing was put).
            MessageTooLarge: the batch (with 16 bytes of header per message and
                padding) can never fit in the ring; split it.
            Closed, TypeError: as for ``put``.
        """
        if self._raw:
            datas = [x if type(x) is bytes else _codec.as_bytes(x) for x in items]
        else:
            encode = self._encode
            datas = [encode(x) for x in items]
        if timeout is not None:
            timeout = _check_timeout(timeout)
        if not datas:
            return
        count = len(datas)
        if count == 1:
            data = datas[0]
        else:
            # One batch record: the message count, their end offsets, their bytes.
            lens = list(map(len, datas))
            if max(lens) > self._cap:
                index = next(i for i, n in enumerate(lens) if n > self._cap)
                raise MessageTooLarge(
                    f"queue {self._name!r}: message {index} of the batch is {lens[index]} "
                    f"bytes; the capacity is {self._cap}"
                )
            ends = struct.pack(f"<{count + 1}I", count, *accumulate(lens))
            data = b"".join([ends, *datas])
        if not self._q.put(data, count):
            return
        self._put_slow(data, len(data), count, timeout, self._spin_now)

    def _poll(self, putter: bool, need: int, seconds: float) -> bool:
        """Spin (in C, no lock) up to ``seconds`` until a put or get may succeed.

        A spinner that finds itself descheduled stops at once and spins no
        more for a while: on a loaded machine spinning takes the core the peer
        needs to answer.
        """
        if _mono() < self._calm_until:
            return False
        r = self._q.poll(putter, need, seconds)
        if r < 0:
            self._calm_until = _mono() + _CALM
            self._spin_now = self._spin
        return r > 0

    def _put_slow(self, data: Any, n: int, count: int, timeout: float | None, spin: float) -> None:
        """Publish one record (a message, or a batch of ``count``), waiting for room."""
        if count == 1 and n > self._cap:
            raise MessageTooLarge(
                f"queue {self._name!r}: message is {n} bytes; the capacity is {self._cap}"
            )
        total = (n + 23) & -8
        if total > self._ring:
            raise MessageTooLarge(
                f"queue {self._name!r}: a batch of {count} messages needs {total} bytes "
                f"with headers; the ring holds {self._ring}"
            )

        def attempt() -> object:
            return self._write_locked(data, n, count)

        def ready() -> bool:
            c = self._c
            st = c[_W_STATE]
            if st & _SHUT:
                return True
            free_from = c[_W_CLAIM] if st & _CLAIMED else c[_W_HEAD]
            return not st & _RESERVED and self._ring - (c[_W_TAIL] - free_from) >= total

        r = self._wait(attempt, ready, timeout, putter=True, spin=spin, need=total)
        if type(r) is _Reservation:
            self._fill_reservation(r, data)

    def _fill_reservation(self, res: _Reservation, data: Any) -> None:
        """Write a reserved record (no lock held), then publish it."""
        published = False
        try:
            if _ARMED:
                _qcrash("queue.put.res_copying")
            self._write_record(res.pos, res.seq, data, res.n)
            if _ARMED:
                _qcrash("queue.put.res_copied")
            published = True
        finally:
            self._finish_reservation(res, published)

    def _finish_reservation(self, res: _Reservation, publish: bool) -> None:
        """Publish (or drop) our reserved record and clear the reservation, under the lock."""

        def finish() -> int:
            c = self._c
            st: int = c[_W_STATE]
            me = _process.current()
            if st & _RESERVED and c[_W_RES_PID] == me.pid:
                if publish and (c[_W_TAIL], c[_W_PUTS]) == (res.pos, res.seq):
                    c[_W_PUTS] = res.seq + 1
                    if _ARMED:
                        _qcrash("queue.put.counted")
                    c[_W_TAIL] = res.pos + ((res.n + 23) & -8)
                    if _ARMED:
                        _qcrash("queue.put.published")
                st &= ~_RESERVED
                c[_W_STATE] = st
            return st

        got, interrupted = self._locked_cleanup(finish)
        st = 0 if isinstance(got, _NoLock) else got
        if st & _GETW_MASK:
            self._wake(False, (st >> _GW) & _GWM, 1)
        if st >= _PUTW_ONE:  # producers that waited for the reservation to end
            self._wake(True, (st >> 32) & _M31, _M31)
        if interrupted is not None:
            raise interrupted

    def _write_locked(self, data: Any, n: int, count: int) -> object:
        """Publish one record (both locks held): True, or _AGAIN if there is no room yet.

        ``count`` > 1: ``data`` is the payload of a batch record of that many messages.
        """
        total = (n + 23) & -8
        c = self._c
        head, tail, gets, puts = c[_W_HEAD], c[_W_TAIL], c[_W_GETS], c[_W_PUTS]
        self._check_indices(head, tail, gets, puts)
        st = c[_W_STATE]
        if st & _SHUT:
            raise Closed(f"queue {self._name!r} is shut down")
        if st & _RESERVED:
            return _AGAIN  # another producer is writing a large record at tail
        ring = self._ring
        free_from = head
        if st & _CLAIMED:
            free_from = c[_W_CLAIM]
            if (
                not free_from <= head <= free_from + ring
                or tail - free_from > ring
                or free_from & 7
            ):
                raise LayoutError(
                    f"queue {self._name!r}: corrupt claim position {free_from} "
                    f"(head {head}, tail {tail}); nothing was changed"
                )
        if ring - (tail - free_from) < total:
            return _AGAIN
        if _ARMED:
            _qcrash("queue.put.reserved")
        if count == 1 and n >= _CLAIM_MIN and not self._checksum:
            # Large: reserve the space now, write it after unlocking (see above).
            me = _process.current()
            c[_W_RES_PID] = me.pid
            c[_W_RES_TICKS] = me.start
            c[_W_STATE] = st | _RESERVED
            if _ARMED:
                _qcrash("queue.put.reserving")
            return _Reservation(tail, puts, n)
        self._write_record(tail, puts, data, n, _SALT if count == 1 else _SALT_BATCH)
        seq = puts + count
        pos = tail + total
        if _ARMED:
            _qcrash("queue.put.copied")
        c[_W_PUTS] = seq
        if _ARMED:
            _qcrash("queue.put.counted")
        c[_W_TAIL] = pos
        if _ARMED:
            _qcrash("queue.put.published")
        if st & _GETW_MASK:
            self._wake(False, (st >> _GW) & _GWM, count)
        return True

    def _write_record(self, pos: int, seq: int, data: Any, n: int, salt: int = _SALT) -> None:
        ring = self._ring
        base = self._base
        mm = self._mm
        i = pos % ring
        s = i + _HDR
        if s >= ring:
            s -= ring
        if s + n <= ring:
            if _ARMED and n > 1:
                mm[base + s : base + s + n // 2] = memoryview(data)[: n // 2]
                _qcrash("queue.put.copying")
            mm[base + s : base + s + n] = data
        else:
            k = ring - s
            view = memoryview(data)
            mm[base + s : base + ring] = view[:k]
            if _ARMED:
                _qcrash("queue.put.copying")
            mm[base : base + n - k] = view[k:]
        crc = zlib.crc32(data) if self._checksum else 0
        w0 = n | (seq & _M32) << 32
        wi = i >> 3
        c = self._c
        c[_W_RING + wi] = w0
        check = (w0 ^ pos ^ salt) & _M32
        c[_W_RING + (wi + 1) % self._rw] = check | crc << 32

    # ------------------------------------------------------------------ get

    def get(self, timeout: float | None = None) -> T:
        """Remove and return the oldest message, waiting up to ``timeout`` seconds.

        Raises:
            Empty: nothing arrived before the deadline.
            Closed: the queue was shut down and is empty, or this handle closed.
            LayoutError: the queue's control words are corrupt (nothing is changed).
        """
        if timeout is not None:
            timeout = _check_timeout(timeout)
        # The fast path: one C call takes C, validates the record at head,
        # copies it out, consumes it and unlocks. Anything else (wrapped,
        # corrupt, checksum, large, shut down, a repair due) goes to the
        # general path, which skips and counts bad records.
        r = self._q.get()
        if type(r) is not bytes:
            spin = self._spin_now
            if r == _EMPTY and timeout != 0 and spin:
                start = _perf()
                if self._poll(False, 0, spin if timeout is None else min(spin, timeout)):
                    r = self._q.get()
                if timeout is not None:
                    timeout = max(0.0, timeout - (_perf() - start))
                spin = 0.0
            if type(r) is not bytes:
                return self._get_slow(timeout, spin)
        dec = self._decode
        return r if dec is None else dec(r)  # type: ignore[return-value]

    def get_nowait(self) -> T:
        """``get(timeout=0)``: raise Empty at once if nothing is queued."""
        return self.get(0.0)

    def _get_slow(self, timeout: float | None, spin: float) -> T:
        out: list[Any] = []

        def attempt() -> object:
            return True if self._take_locked(1, out, None) else _AGAIN

        self._wait(attempt, self._can_get, timeout, putter=False, spin=spin, need=0)
        data = out[0]
        if type(data) is _Claim:
            data = self._claimed(data, None)
        dec = self._decode
        return data if dec is None else dec(data)  # type: ignore[no-any-return]

    def get_many(self, max_items: int, timeout: float | None = None) -> list[T]:
        """Remove and return up to ``max_items`` messages under one lock acquisition.

        Waits (up to ``timeout``) only for the first message; returns whatever
        is queued then, oldest first, at most ``max_items``.

        Raises:
            Empty: nothing arrived before the deadline.
            Closed: the queue was shut down and is empty, or this handle closed.
        """
        if isinstance(max_items, bool) or not isinstance(max_items, int):
            raise TypeError(f"max_items must be an int, not {type(max_items).__name__}")
        if max_items < 1:
            raise ValueError(f"max_items must be at least 1, not {max_items}")
        if timeout is not None:
            timeout = _check_timeout(timeout)
        dec = self._decode
        r = self._q.get_many(max_items)
        out: list[Any]
        if type(r) is tuple:
            out, more = r
            if more:
                # It stopped at a record that wraps, is large or is corrupt:
                # the general path takes the rest now (and skips bad records).
                self._take_more(max_items - len(out), out)
            return out if dec is None else [dec(d) for d in out]  # type: ignore[return-value]
        out = []

        def attempt() -> object:
            return True if self._take_locked(max_items, out, None) else _AGAIN

        self._wait(attempt, self._can_get, timeout, putter=False, spin=self._spin_now, need=0)
        if type(out[0]) is _Claim:
            out[0] = self._claimed(out[0], None)
        return out if dec is None else [dec(d) for d in out]

    def _take_more(self, limit: int, out: list[Any]) -> None:
        """get_many after its fast path: up to ``limit`` more under both locks, if free soon."""
        try:
            self._run_locked(_mono() + _wait.SLICE, lambda: self._take_locked(limit, out, None))
        except (LayoutError, Closed):
            pass  # reported by the next call; these are already taken
        if out and type(out[-1]) is _Claim:
            out[-1] = self._claimed(out[-1], None)

    def get_into(self, buffer: BytesLike, timeout: float | None = None) -> int:
        """Copy the oldest message into ``buffer`` and return its size in bytes.

        One copy, straight from shared memory into your writable buffer (a
        bytearray, a numpy array, an mmap): no allocation, which matters for
        large messages. The codec is bypassed: you get the raw bytes.

        Raises:
            BufferTooSmall: the message is larger than ``buffer``; it stays
                queued and ``needed`` says how large it is.
            TypeError: ``buffer`` is not a writable C-contiguous buffer.
            Empty, Closed: as for ``get``.
        """
        try:
            view = memoryview(buffer)  # type: ignore[arg-type]  # numpy: see BytesLike
        except TypeError:
            raise TypeError(
                f"get_into needs a writable buffer, not {type(buffer).__name__}"
            ) from None
        if view.readonly or not view.c_contiguous:
            raise TypeError("get_into needs a writable, C-contiguous buffer")
        if timeout is not None:
            timeout = _check_timeout(timeout)
        view = view.cast("B")
        n = self._q.get_into(view)
        if n >= 0:
            return int(n)
        out: list[Any] = []

        def attempt() -> object:
            return True if self._take_locked(1, out, view) else _AGAIN

        self._wait(attempt, self._can_get, timeout, putter=False, spin=self._spin_now, need=0)
        if type(out[0]) is _Claim:
            return int(self._claimed(out[0], view))
        return int(out[0])

    def _claimed(self, claim: _Claim, into: memoryview | None) -> bytes | int:
        """Copy a claimed record's payload out (no lock held), then release the claim."""
        try:
            if _ARMED:
                _qcrash("queue.get.claim_copying")
            ring = self._ring
            base = self._base
            s, n = claim.start, claim.n
            k = min(n, ring - s)  # the payload may wrap around the ring's end
            if into is not None:
                into[:k] = self._rv[base + s : base + s + k]
                if k < n:
                    into[k:n] = self._rv[base : base + n - k]
                data: bytes | int = n
            elif k == n:
                data = self._mm[base + s : base + s + n]
            else:  # one allocation and one copy, straight from the two parts
                rv = self._rv
                data = b"".join((rv[base + s : base + ring], rv[base : base + n - k]))
            if _ARMED:
                _qcrash("queue.get.claim_copied")
        finally:
            self._finish_claim(claim)
        return data

    def _finish_claim(self, claim: _Claim) -> None:
        """Clear our claim (one store under the lock): the ring space is free again."""

        def finish() -> int:
            c = self._c
            st: int = c[_W_STATE]
            me = _process.current()
            if st & _CLAIMED and (c[_W_CLAIM], c[_W_CLAIM_PID]) == (claim.pos, me.pid):
                st &= ~_CLAIMED
                c[_W_STATE] = st
            return st

        st, interrupted = self._locked_cleanup(finish)
        if not isinstance(st, _NoLock) and st >= _PUTW_ONE:
            self._wake(True, (st >> 32) & _M31, _M31)
        if interrupted is not None:
            raise interrupted

    def _locked_cleanup(self, fn: Callable[[], T2]) -> tuple[T2 | _NoLock, BaseException | None]:
        """Run ``fn`` under the lock to end our reservation or claim, even through a Ctrl-C.

        A Ctrl-C while waiting gives the lock one more second, then gives up:
        the reservation or claim then stays until this process exits, when
        others see it dead and release it.
        """
        end = math.inf
        interrupted: BaseException | None = None
        while True:
            try:
                return self._run_locked(end, fn), interrupted
            except KeyboardInterrupt as exc:
                if interrupted is not None:
                    return _NOLOCK, interrupted
                interrupted = exc
                end = _mono() + 1.0

    def _reclaim_dead(self, count: bool = True) -> bool:
        """Release a claim whose process died while copying (lock held); True if it did.

        The claimed message was taken before the copy began, so it is lost (at
        most once), but its space must not stay reserved forever. A live
        claimer, however slow or stopped, keeps its claim.
        """
        c = self._c
        st = c[_W_STATE]
        dead = 0
        for bit, pid_word in ((_CLAIMED, _W_CLAIM_PID), (_RESERVED, _W_RES_PID)):
            if st & bit:
                pid, ticks = c[pid_word], c[pid_word + 1]
                if _process.liveness(pid, ticks) is _process.Liveness.DEAD:
                    dead |= bit
        if not dead:
            return False
        # A dead reserver never published: tail and puts are still before its record.
        c[_W_STATE] = st & ~dead
        if count:
            c[_W_RECOV] += 1
        return True

    def _check_claim(self) -> None:
        """A waiter: is a claim or reservation in the way held by a dead process?"""
        if self._c[_W_STATE] & (_CLAIMED | _RESERVED):
            self._run_locked(_mono() + 0.001, self._reclaim_dead)

    def _can_get(self) -> bool:
        c = self._c
        return bool(c[_W_TAIL] != c[_W_HEAD] or c[_W_STATE] & _SHUT)

    def _take_locked(self, limit: int, out: list[Any], into: memoryview | None) -> int:
        """Move up to ``limit`` messages into ``out`` (both locks held); return how many.

        With ``into``, copy one message into it and append its size instead.
        Invalid records are skipped and counted; raises Closed if the queue is
        shut down and empty, LayoutError if the control words are corrupt.
        """
        c = self._c
        ring = self._ring
        base = self._base
        mm = self._mm
        head, tail, gets, puts = c[_W_HEAD], c[_W_TAIL], c[_W_GETS], c[_W_PUTS]
        self._check_indices(head, tail, gets, puts)
        pos = head
        seq = gets
        got = 0
        bad = 0
        while got < limit and pos < tail:
            i = pos % ring
            wi = i >> 3
            w0 = c[_W_RING + wi]
            w1 = c[_W_RING + (wi + 1) % self._rw]
            n = w0 & _M32
            rec = (n + 23) & -8
            rseq = w0 >> 32
            check = w1 & _M32
            batch = check != _hcheck(w0, pos)
            skip = (seq - rseq) & _M32
            if (
                (batch and check != _hcheck_batch(w0, pos))
                or rec > tail - pos
                or (skip and (not batch or pos != head))  # only a batch at head is taken in part
            ):
                head, tail, gets, puts = self._resync(seq, pos, head, gets)
                pos, seq = head, gets
                continue
            s = i + _HDR
            if s >= ring:
                s -= ring
            if _ARMED:
                _qcrash("queue.get.locked")
            if self._checksum or batch:
                k = min(n, ring - s)  # the payload may wrap around the ring's end
                if self._checksum:
                    crc = zlib.crc32(self._rv[base + s : base + s + k])
                    if k < n:
                        crc = zlib.crc32(self._rv[base : base + n - k], crc)
                    if crc != w1 >> 32:
                        if batch:  # its count is not to be trusted: skip to the next record
                            head, tail, gets, puts = self._resync(seq, pos, head, gets)
                            pos, seq = head, gets
                            continue
                        bad += 1
                        pos += rec
                        seq += 1
                        continue
                if batch:
                    if k == n:
                        area: Any = mm
                        start = base + s
                    else:
                        rv = self._rv
                        area = b"".join((rv[base + s : base + ring], rv[base : base + n - k]))
                        start = 0
                    want = 1 if into is not None else limit - got
                    split = _split_batch(area, start, n, skip, want)
                    if split is None:
                        head, tail, gets, puts = self._resync(seq, pos, head, gets)
                        pos, seq = head, gets
                        continue
                    msgs, total = split
                    if into is not None:
                        m = len(msgs[0])
                        if m > len(into):
                            raise self._too_small(m, len(into), bad, seq, pos, head, gets)
                        into[:m] = msgs[0]
                        out.append(m)
                    else:
                        out.extend(msgs)
                    got += len(msgs)
                    seq += len(msgs)
                    if skip + len(msgs) == total:
                        pos += rec  # the whole batch record is taken
                    continue
            if into is not None and n > len(into):
                raise self._too_small(n, len(into), bad, seq, pos, head, gets)
            if n >= _CLAIM_MIN and not self._checksum and not c[_W_STATE] & _CLAIMED:
                if got:
                    break  # return what we have; the next call claims this one
                # Take it now, copy it after unlocking (see Claims): the claim
                # fields first, the flag last, then the usual head/gets stores.
                me = _process.current()
                c[_W_CLAIM] = head
                c[_W_CLAIM_PID] = me.pid
                c[_W_CLAIM_TICKS] = me.start
                c[_W_STATE] |= _CLAIMED
                if _ARMED:
                    _qcrash("queue.get.claiming")
                out.append(_Claim(head, s, n))
                got = 1
                pos += rec
                seq += 1
                break
            if into is not None:
                if s + n <= ring:
                    into[:n] = self._rv[base + s : base + s + n]
                else:
                    k = ring - s
                    into[:k] = self._rv[base + s : base + ring]
                    into[k:n] = self._rv[base : base + n - k]
                out.append(n)
            elif s + n <= ring:
                out.append(mm[base + s : base + s + n])
            else:
                rv = self._rv
                out.append(b"".join((rv[base + s : base + ring], rv[base : base + n - ring + s])))
            got += 1
            pos += rec
            seq += 1
        if bad:
            c[_W_CORRUPT] += bad
        if seq != gets:
            if _ARMED:
                _qcrash("queue.get.copied")
            self._commit_take(seq, pos, head, gets)
            st = c[_W_STATE]
            if st >= _PUTW_ONE:
                self._wake(True, (st >> 32) & _M31, _M31)
        if not got and c[_W_STATE] & _SHUT and c[_W_HEAD] == c[_W_TAIL]:
            raise Closed(f"queue {self._name!r} is shut down and empty")
        return got

    def _too_small(  # noqa: PLR0917
        self, needed: int, size: int, bad: int, seq: int, pos: int, head: int, gets: int
    ) -> BufferTooSmall:
        """get_into's buffer is too small: commit what was taken (the message stays queued)."""
        if bad:
            self._c[_W_CORRUPT] += bad
        self._commit_take(seq, pos, head, gets)
        return BufferTooSmall(
            f"queue {self._name!r}: the next message is {needed} bytes; the buffer holds {size}",
            needed=needed,
        )

    def _resync(self, seq: int, pos: int, head: int, gets: int) -> tuple[int, int, int, int]:
        """Commit what was taken, skip the bad record at ``pos``; the new head, tail, gets, puts."""
        self._commit_take(seq, pos, head, gets)
        self._skip_corrupt()
        c = self._c
        return c[_W_HEAD], c[_W_TAIL], c[_W_GETS], c[_W_PUTS]

    def _commit_take(self, seq: int, pos: int, head: int, gets: int) -> None:
        """Store head, then gets: a death between loses what was taken, never repeats it."""
        c = self._c
        if pos != head:
            c[_W_HEAD] = pos
            if _ARMED:
                _qcrash("queue.get.advanced")
        if seq != gets:
            c[_W_GETS] = seq
            if _ARMED:
                _qcrash("queue.get.counted")

    def _skip_corrupt(self) -> None:
        """The record at head failed validation (lock held): skip to the next valid one.

        Scans 8-byte steps up to tail for a record whose check word matches its
        position and whose seq is one of the queued ones (bounded: at most
        ring/8 steps); if none, drops everything queued. Counts the skipped
        records in ``corrupt``. Stores head before gets: _repair rebuilds gets
        from the record at head if we die between them.
        """
        c = self._c
        head, tail, gets, puts = c[_W_HEAD], c[_W_TAIL], c[_W_GETS], c[_W_PUTS]
        left = puts - gets
        pos = head + 8
        while pos + _HDR <= tail:
            hdr = self._peek(pos)
            if hdr is not None:
                n, s, _k = hdr
                ahead = (s - gets) & _M32
                if 0 < ahead < left and pos + ((n + 23) & -8) <= tail:
                    c[_W_HEAD] = pos
                    c[_W_GETS] = gets + ahead
                    c[_W_CORRUPT] += ahead
                    return
            pos += 8
        c[_W_HEAD] = tail
        c[_W_GETS] = puts
        c[_W_CORRUPT] += max(left, 1)

    def _peek(self, pos: int) -> tuple[int, int, int] | None:
        """(length, seq mod 2**32, messages) of a record at ``pos`` if its check word matches.

        ``messages`` is 1 for a single message; for a batch record, its count
        (0 if the count is implausible).
        """
        ring = self._ring
        i = pos % ring
        wi = i >> 3
        c = self._c
        w0 = c[_W_RING + wi]
        w1 = c[_W_RING + (wi + 1) % self._rw]
        n = w0 & _M32
        if n > ring - _HDR:
            return None
        if w1 & _M32 == _hcheck(w0, pos):
            if n > self._cap:
                return None
            return n, w0 >> 32, 1
        if w1 & _M32 != _hcheck_batch(w0, pos) or n < 8:
            return None
        s = (i + _HDR) % ring  # a multiple of 8, as ring is: the count never wraps
        k = _U32.unpack_from(self._mm, self._base + s)[0]
        return n, w0 >> 32, k if 4 + 4 * k <= n else 0

    # ------------------------------------------------------------------ inspection

    def qsize(self) -> int:
        """Messages queued right now (a snapshot: others may change it at once)."""
        self._check_open()
        c = self._c
        gets = c[_W_GETS]  # read gets first: puts only grows, so the difference never dips
        return min(max(c[_W_PUTS] - gets, 0), self._ring // 4)

    def empty(self) -> bool:
        """True if no message is queued right now (a snapshot)."""
        self._check_open()
        c = self._c
        return bool(c[_W_TAIL] == c[_W_HEAD])

    def full(self) -> bool:
        """True if not even an empty message fits right now (a snapshot)."""
        self._check_open()
        c = self._c
        free_from = c[_W_CLAIM] if c[_W_STATE] & _CLAIMED else c[_W_HEAD]
        return bool(self._ring - (c[_W_TAIL] - free_from) < _HDR)

    def statistics(self) -> QueueStatistics:
        """A snapshot of the queue's counters (taken under its lock when it is free)."""
        self._check_open()
        self._run_locked(_mono() + _wait.SLICE, self._reap_waiters)
        return _snapshot(
            self._c,
            self._name,
            ring=self._ring,
            cap=self._cap,
            flags=self._flags,
            codec=self._codec_name(),
        )

    def _codec_name(self) -> str:
        seg = self._seg
        return _parse_params(seg)[3] if seg is not None else ""

    # ------------------------------------------------------------------ waiting

    def _wait(
        self,
        attempt: Callable[[], object],
        ready: Callable[[], bool],
        timeout: float | None,
        *,
        putter: bool,
        spin: float,
        need: int,
    ) -> object:
        """Run ``attempt`` under the lock until it succeeds or ``timeout`` runs out.

        Polls ``ready`` without the lock for ``spin`` seconds, then registers
        as a waiter (in the same critical section as a last attempt, so no
        wake-up is lost) and sleeps on the semaphore in slices of at most
        ``_wait.SLICE``. Returns attempt's result; raises Full/Empty on timeout.
        """
        self._check_open()
        start = _mono()
        end = math.inf if timeout is None else start + timeout
        # A busy lock is waited for at least one slice even by *_nowait calls:
        # its holder normally releases it within microseconds.
        lock_end = max(end, start + _wait.SLICE)
        if ready():
            r = self._run_locked(lock_end, attempt)
            if r is _NOLOCK:
                raise self._timeout_error(putter, timeout, need, busy=True)
            if r is not _AGAIN:
                return r
        if spin and timeout != 0 and self._poll(putter, need, min(spin, end - start)):
            r = self._run_locked(lock_end, attempt)
            if r is _NOLOCK:
                raise self._timeout_error(putter, timeout, need, busy=True)
            if r is not _AGAIN:
                return r
        if timeout == 0 or _mono() >= end:
            raise self._timeout_error(putter, timeout, need)
        # The last attempt and the registration as a waiter share one critical
        # section, and so does the read of the futex word we then sleep on: a
        # waker that changes the queue after us sees us counted and bumps it.
        wake_value = 0

        def attempt_or_register() -> object:
            nonlocal wake_value
            r = attempt()
            if r is _AGAIN:
                self._register(putter, 1)
                wake_value = self._q.wake_value(putter)
            return r

        r = self._run_locked(lock_end, attempt_or_register)
        if r is _NOLOCK:
            raise self._timeout_error(putter, timeout, need, busy=True)
        if r is not _AGAIN:
            return r
        registered = True
        slept = _mono()

        def attempt_and_leave() -> object:
            nonlocal registered, wake_value
            r = attempt()
            if r is _AGAIN:
                wake_value = self._q.wake_value(putter)
            else:
                self._register(putter, -1)
                registered = False
            return r

        try:
            while True:
                remaining = end - _mono()
                if remaining <= 0:
                    break
                woken = self._q.sleep(putter, wake_value, min(remaining, _wait.SLICE))
                self._check_open()
                if not ready():
                    if not woken:
                        self._check_claim()
                        if _mono() - self._last_reap > _REAP_EVERY:
                            self._reap_soon()
                    else:
                        wake_value = self._q.wake_value(putter)
                    continue
                r = self._run_locked(max(end, _mono() + _wait.SLICE), attempt_and_leave)
                if r is not _AGAIN and r is not _NOLOCK:
                    self._adapt_spin(_mono() - slept)
                    return r
        finally:
            if registered and self._seg is not None:
                self._run_locked(_mono() + 1.0, lambda: self._register(putter, -1))
        self._adapt_spin(math.inf)
        raise self._timeout_error(putter, timeout, need)

    def _run_locked(self, end: float, fn: Callable[[], T2]) -> T2 | _NoLock:
        """``fn()`` holding both locks (taken by ``end``), or _NOLOCK if they stayed busy.

        The locks are released in a ``finally`` by one C call. An exception
        other than a deliberate one (Closed, LayoutError, MessageTooLarge: the
        queue is left consistent) marks the repair due, as a death does: it may
        have split the critical section.
        """
        bad = True
        try:
            if not self._lock_until(end):
                bad = False
                return _NOLOCK
            r = fn()
            bad = False
            return r
        except _CLEAN_EXIT:
            bad = False
            raise
        finally:
            self._q.unlock(bad)

    def _adapt_spin(self, waited: float) -> None:
        """After sleeping ``waited`` seconds: spin longer if the peer was just slow to answer.

        Two processes handing messages back and forth otherwise settle into
        both sleeping, each wake-up costing tens of microseconds, once one
        hiccup outlasted the spin. A long wait means the queue was idle:
        back to the base budget.
        """
        base = self._spin
        if not base:
            return
        cap = max(base, _SPIN_MAX)
        if waited <= cap:
            self._spin_now = min(self._spin_now * 2, cap)
        else:
            self._spin_now = base

    def _timeout_error(
        self, putter: bool, timeout: float | None, need: int, busy: bool = False
    ) -> Exception:
        after = "" if not timeout else f" after {timeout:g} s"
        if busy:
            why = (
                f"queue {self._name!r}: its lock stayed held{after} "
                "(a participant is stopped or very slow)"
            )
            return Full(why) if putter else Empty(why)
        if putter:
            return Full(f"queue {self._name!r} has no room for {need} bytes{after}")
        return Empty(f"queue {self._name!r} is empty{after}")

    def _register(self, putter: bool, delta: int) -> None:
        """Add ``delta`` to this handle's waiter count (lock held); refresh the totals."""
        c = self._c
        w = _W_WAITERS + self._wslot
        if not self._slot_clean:
            # A slot's word may still count waiters of a dead process that had it.
            self._slot_clean = True
            if self._wslot < _SLOTS:
                c[w] = 0
                self._sum_waiters()
        e = c[w]
        g, p = e & _M32, e >> 32
        st = c[_W_STATE]
        sg, sp = (st >> _GW) & _GWM, (st >> 32) & _M31
        # The slot word and the total change together; a death between the two
        # stores is fixed by _recover, which sums the slot words again.
        if putter:
            p = min(max(p + delta, 0), _M31)
            sp = min(max(sp + delta, 0), _M31)
        else:
            g = min(max(g + delta, 0), _M31)
            sg = min(max(sg + delta, 0), _GWM)
        c[w] = g | p << 32
        c[_W_STATE] = (st & _BUSY) | sg << _GW | sp << 32

    def _sum_waiters(self) -> None:
        c = self._c
        g = p = 0
        for w in range(_W_WAITERS, _W_WAITERS + _SLOTS + 1):
            e = c[w]
            g += e & _M32
            p += e >> 32
        c[_W_STATE] = (c[_W_STATE] & _BUSY) | min(g, _GWM) << _GW | min(p, _M31) << 32

    def _reap_waiters(self) -> None:
        """Forget waiter counts of attach slots whose process is gone (lock held)."""
        seg = self._seg
        if seg is None:
            return
        self._last_reap = _mono()
        self._reclaim_dead()
        alive = {a.slot for a in seg.attachments() if a.liveness != _process.Liveness.DEAD}
        alive.add(self._wslot)
        c = self._c
        for slot in range(_SLOTS):
            if slot not in alive and c[_W_WAITERS + slot]:
                c[_W_WAITERS + slot] = 0
        self._sum_waiters()

    def _reap_soon(self) -> None:
        self._run_locked(_mono() + 0.001, self._reap_waiters)

    def _wake(self, putter: bool, waiters: int, most: int) -> None:
        """Wake up to ``min(most, waiters)`` sleepers of one side (a hint)."""
        self._q.wake(putter, min(most, waiters))

    # ------------------------------------------------------------------ lock & repair

    def _lock_until(self, end: float) -> bool:
        """Take both locks (P, then C) by ``end`` (monotonic); repair first if a holder died.

        Every caller releases with ``self._q.unlock(bad)`` in a ``finally``
        (one C call: C then P, whichever this thread holds), ``bad`` unless the
        critical section ended normally or by a deliberate error: an exception
        that split it (a signal handler's) marks the repair due.
        """
        try:
            if self._two and not self._take(True, end):
                return False
            if not self._take(False, end):
                self._q.unlock(False)
                return False
            c = self._c
            # A dead holder was recorded (pdied, repair due) by the C lock() itself.
            if c[_W_STATE] & _REPAIR or c[_W_PDIED]:
                self._recover()
        except BaseException:
            self._q.unlock(True)  # nothing held on the way out; a repair left due
            raise
        return True

    def _unlock(self) -> None:
        """Release both locks (C, then P) after a clean critical section: one C call."""
        self._q.unlock(False)

    def _take(self, producer: bool, end: float) -> bool:
        """Take P (``producer``) or C by ``end``; False on timeout."""
        while True:
            left = end - _mono()
            if left <= 0:
                return False
            got = self._q.lock(producer, None if left == math.inf else min(left, _wait.SLICE))
            if got != _mutex.BUSY:
                return True
            self._check_open()

    def _recover(self) -> None:
        """Repair after a dead holder (both locks held): counters, claims, waiters."""
        self._repair()
        self._reclaim_dead(count=False)  # one death, one recovery
        self._reap_waiters()
        c = self._c
        c[_W_STATE] &= ~_REPAIR
        c[_W_PDIED] = 0
        c[_W_RECOV] += 1

    def _repair(self) -> None:
        """Make puts/gets agree with tail/head again (both locks held). Idempotent.

        A holder stops between any two stores of a put (record, puts, tail) or a
        get (gets, head) when it dies or an exception (Ctrl-C) interrupts it.
        The record headers say which stores happened.
        """
        c = self._c
        head, tail = c[_W_HEAD], c[_W_TAIL]
        if not 0 <= tail - head <= self._ring or (head | tail) & 7:
            return  # not repairable; every operation reports it as LayoutError
        self._repair_producers()
        if tail == head:
            if c[_W_GETS] != c[_W_PUTS]:
                c[_W_GETS] = c[_W_PUTS]
            return
        self._repair_consumers()

    def _repair_producers(self) -> None:
        """A valid record at tail whose seq lags puts: puts was stored, tail was not (P held)."""
        c = self._c
        tail, puts = c[_W_TAIL], c[_W_PUTS]
        if tail & 7:
            return
        hdr = self._peek(tail)
        if hdr is not None:
            lag = (puts - hdr[1]) & _M32
            if 0 < lag <= min(self._ring // 4, puts):
                c[_W_PUTS] = puts - lag

    def _repair_consumers(self) -> None:
        """The record at head carries the seq that gets must have (C held)."""
        c = self._c
        head, gets = c[_W_HEAD], c[_W_GETS]
        if head == c[_W_TAIL] or head & 7:
            return
        hdr = self._peek(head)
        if hdr is not None:
            # gets lies in [seq, seq + messages): a batch record may be taken in part.
            d = (hdr[1] - gets) & _M32
            if d >= 1 << 31:
                d -= 1 << 32
            # (gets + d out of range: corrupt beyond repair, reported as such)
            behind = d > 0 or (hdr[2] and -d >= hdr[2])
            if behind and abs(d) <= self._ring // 4 and 0 <= gets + d <= _M64:
                c[_W_GETS] = gets + d

    def _check_indices(self, head: int, tail: int, gets: int, puts: int) -> None:
        used = tail - head
        msgs = puts - gets
        if not 0 <= used <= self._ring or (head | tail) & 7:
            raise LayoutError(
                f"queue {self._name!r}: corrupt ring indices (head {head}, tail {tail}, "
                f"ring {self._ring}); nothing was changed"
            )
        if msgs < 0 or msgs * 4 > used or (used > 0) != (msgs > 0):
            raise LayoutError(
                f"queue {self._name!r}: corrupt counters ({msgs} messages in {used} bytes); "
                "nothing was changed"
            )

    # ------------------------------------------------------------------ helpers

    def _overflow(self, exc: Exception) -> LayoutError:
        """A fast put's counter did not fit its word: corruption (nothing was published)."""
        return LayoutError(f"queue {self._name!r}: corrupt counters ({exc}); nothing was put")

    def _check_open(self) -> None:
        if self._seg is None:
            raise Closed(f"queue {self._name!r}: this handle is closed")

    def _encode_with_codec(self, item: Any) -> bytes | bytearray | memoryview:
        return _codec.as_bytes(self._codec.encode(item))


_PLAIN_CODECS: Final = (_codec.RawCodec, _codec.PickleCodec, _codec.MsgpackCodec)
