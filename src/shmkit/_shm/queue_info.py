"""What a queue says about itself without taking its locks: params and statistics.

``parse_params`` validates a queue segment's parameters against its body;
``snapshot`` and ``describe`` read the control words (layout in
``queue_ring``) into a ``QueueStatistics``, clamped so a corrupt word cannot
mislead much. None of it blocks or repairs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Final

from .._codec import Codec, resolve
from .._layout import Kind
from ..errors import CodecMismatch, IncompatibleLayout, LayoutError
from ..segment import Segment
from .queue_ring import (
    _CLAIMED,
    _F_CRC,
    _GW,
    _GWM,
    _HDR,
    _M31,
    _MAGIC,
    _PARAMS,
    _RING_OFF,
    _SHUT,
    _SLOTS,
    _W_ABANDONED,
    _W_CLAIM,
    _W_CORRUPT,
    _W_DONE,
    _W_GETS,
    _W_HEAD,
    _W_PUTS,
    _W_RECOV,
    _W_RETIRED,
    _W_STATE,
    _W_TAIL,
    MAX_CAPACITY,
)


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
        unfinished_tasks: messages put and not yet marked done with
            ``task_done()`` (what ``join()`` waits for).
        abandoned_tasks: tasks counted as done because the consumer that
            took them died or closed its handle first.
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
    unfinished_tasks: int
    abandoned_tasks: int
    shut_down: bool
    codec: str
    checksum: bool


def parse_params(seg: Segment) -> tuple[int, int, int, str]:
    """Validate a queue segment's params and body size: (flags, ring, capacity, codec)."""
    hdr = seg.header
    what = f"queue {seg.name!r}"
    if hdr is None or len(hdr.params) != _PARAMS.size:
        raise LayoutError(f"{what}: queue parameters missing or of the wrong size")
    magic, flags, ring, cap, codec = _PARAMS.unpack(hdr.params)
    if magic != _MAGIC:
        if magic[:3] == _MAGIC[:3] and magic[3:].isdigit():
            raise IncompatibleLayout(
                f"{what} has queue layout {magic.decode()} (made by another shmkit version); "
                f"this one reads {_MAGIC.decode()}: remove it (shmkit rm) and create it again",
                found=int(magic[3:]),
                expected=int(_MAGIC[3:]),
            )
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


def open_codec(seg: Segment, codec: Codec[Any] | None, allow_pickle: bool) -> Codec[Any]:
    """The codec a handle opening ``seg`` uses: the recorded one where that is safe.

    ``codec=None`` adopts ``"bytes"`` and ``"msgpack"``, and ``"pickle"`` only
    with ``allow_pickle``; an explicit codec must carry the recorded name.
    Raises CodecMismatch (a ValueError; one line, saying what to pass) otherwise.
    """
    recorded = parse_params(seg)[3]
    what = f"queue {seg.name!r} was created with codec={recorded!r}"
    if codec is not None:
        if codec.name != recorded:
            raise CodecMismatch(
                f"{what}; codec={codec.name!r} contradicts it: "
                f"pass codec={recorded!r} or leave codec out"
            )
        return codec
    if recorded == "pickle":
        if not allow_pickle:
            raise CodecMismatch(
                f"{what}, which runs code any writer chooses when unpickling: pass "
                "codec='pickle' (or allow_pickle=True) if every writer is trusted"
            )
        return resolve("pickle")
    if recorded in _ADOPTED:
        return resolve(recorded)
    raise CodecMismatch(f"{what} (a custom codec): pass that codec object as codec=")


#: Recorded codecs a handle adopts without being asked: decoding them runs no code.
_ADOPTED: Final = ("bytes", "msgpack")


def snapshot(
    c: memoryview, name: str, *, ring: int, cap: int, flags: int, codec: str
) -> QueueStatistics:
    """Statistics from the control words, clamped so a corrupt word cannot mislead much."""
    # retired before done[] and puts last (see Tasks): never more finished than there are
    finished = c[_W_RETIRED]
    finished += sum(c[_W_DONE : _W_DONE + _SLOTS + 1])
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
        unfinished_tasks=max(puts - finished, 0),
        abandoned_tasks=c[_W_ABANDONED],
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
    flags, ring, cap, codec = parse_params(seg)
    hdr = seg.header
    assert hdr is not None
    with memoryview(seg.mmap) as whole:
        body = whole[hdr.body_off : hdr.body_off + _RING_OFF]
        with body, body.cast("Q") as c:
            return asdict(snapshot(c, seg.name, ring=ring, cap=cap, flags=flags, codec=codec))
