"""The Queue's C hot paths (shmkit._core._queue): bounds checks, and signals (T31).

The Ring is driven directly over a private buffer (a zeroed pthread mutex is a
valid default mutex), with records and control words forged in place: every
offset and length it reads is checked, a bad record is left to the general
path (which skips and counts it), and nothing outside the mapping is touched.
"""

from __future__ import annotations

import mmap
import struct
import time

import pytest

from shmkit._core import _queue
from shmkit.errors import LayoutError
from shmkit.queue import Queue
from shmkit.segment import Segment

from .helpers import finish, kill, read_line, spawn

RING = 256
BODY = _queue.RING_OFF + RING
HEAD, GETS, TAIL, PUTS, STATE = 128, 136, 192, 200, 256
SALT = 0x5155_4555_454B_4D53
SALT_BATCH = 0x4241_5443_484B_4D53


class _Ring:
    """A Ring over a bytearray, with helpers to read and forge its words."""

    def __init__(self) -> None:
        self.buf = mmap.mmap(-1, BODY)  # page-aligned, as a segment's body is
        flags = _queue.F_FAST | _queue.F_TWO
        self.ring = _queue.Ring(self.buf, 0, RING, RING - 16, flags, None, None)

    def word(self, off: int, value: int | None = None) -> int:
        if value is not None:
            struct.pack_into("<Q", self.buf, off, value)
        return int(struct.unpack_from("<Q", self.buf, off)[0])

    def rec(self, pos: int) -> int:
        return _queue.RING_OFF + pos % RING


@pytest.fixture
def r() -> _Ring:
    return _Ring()


def test_put_get_roundtrip_and_store_order(r: _Ring) -> None:
    assert r.ring._r_get() == _queue.EMPTY
    assert r.ring._r_put(b"hello", 1) == _queue.OK
    assert (r.word(TAIL), r.word(PUTS)) == (24, 1)
    w0 = r.word(r.rec(0))
    assert w0 == 5  # length 5, seq 0
    assert r.word(r.rec(0) + 8) == (w0 ^ 0 ^ SALT) & 0xFFFFFFFF
    assert r.ring._r_get() == b"hello"
    assert (r.word(HEAD), r.word(GETS)) == (24, 1)


def test_a_full_ring_says_full_and_a_wrapping_record_goes_general(r: _Ring) -> None:
    assert r.ring._r_put(b"x" * 200, 1) == _queue.OK  # 216 of 256 bytes
    assert r.ring._r_put(b"y" * 40, 1) == _queue.FULL
    assert r.ring._r_get() == b"x" * 200
    assert r.ring._r_put(b"y" * 40, 1) == _queue.GENERAL  # would wrap: the general path's job


def test_a_put_reads_head_only_when_the_head_it_saw_last_leaves_too_little_room(
    r: _Ring,
) -> None:
    """The producer's head hint: a stale one only understates the room, so a put
    trusts it while it leaves room and loads head (checking it) when it does not."""
    assert r.ring._r_put(b"a" * 8, 1) == _queue.OK  # a 24-byte record: tail 24
    r.word(HEAD, 10**6)  # head past tail: corrupt, but this put has room by its hint
    assert r.ring._r_put(b"b" * 8, 1) == _queue.OK  # tail 48
    before = bytes(r.buf)
    assert r.ring._r_put(b"c" * 200, 1) == _queue.GENERAL  # needs head: sees it is bad
    assert bytes(r.buf) == before
    r.word(HEAD, 0)  # put right: the bad head was not kept as a hint
    assert r.ring._r_put(b"c" * 176, 1) == _queue.OK  # 192 bytes: 240 of 256 used
    assert r.ring._r_put(b"d" * 8, 1) == _queue.FULL  # head re-read: still full
    assert r.ring._r_get() == b"a" * 8  # head 24
    assert r.ring._r_put(b"d" * 8, 1) == _queue.GENERAL  # head re-read: room, but it wraps
    assert [r.ring._r_get() for _ in range(2)] == [b"b" * 8, b"c" * 176]
    assert r.ring._r_get() == _queue.EMPTY


@pytest.mark.parametrize(
    ("what", "forge"),
    [
        ("length beyond the ring", lambda r: r.word(r.rec(0), 0xFFFF_FFF0)),
        ("length beyond tail", lambda r: r.word(r.rec(0), 100)),
        ("check word", lambda r: r.word(r.rec(0) + 8, 12345)),
        ("seq", lambda r: r.word(r.rec(0), 5 | 7 << 32)),
        ("head misaligned", lambda r: r.word(HEAD, 3)),
        ("tail far beyond", lambda r: r.word(TAIL, 10**12)),
        ("head past tail", lambda r: r.word(HEAD, 48)),
    ],
)
def test_a_corrupt_record_or_index_is_left_to_the_general_path(
    r: _Ring, what: str, forge: object
) -> None:
    """Nothing is returned, nothing consumed, nothing read or written out of bounds."""
    r.ring._r_put(b"hello", 1)
    forge(r)  # type: ignore[operator]
    before = bytes(r.buf)
    assert r.ring._r_get() == _queue.GENERAL, what
    assert r.ring._r_get_many(10) == _queue.GENERAL, what
    assert r.ring._r_get_into(bytearray(64)) == -_queue.GENERAL, what
    assert bytes(r.buf) == before, what


@pytest.mark.parametrize(
    ("what", "length"),
    [("beyond tail", 100), ("beyond the ring", 0xFFFF_FFF0), ("to the ring's end", RING - 16)],
)
def test_a_length_with_a_matching_check_word_is_still_bounded(
    r: _Ring, what: str, length: int
) -> None:
    """The check word covers the length, but a forged header can match it: the
    length alone is bounded by tail and the ring, and such a record is never read."""
    r.ring._r_put(b"hello", 1)
    r.word(r.rec(0), length)  # seq 0
    r.word(r.rec(0) + 8, (length ^ 0 ^ SALT) & 0xFFFF_FFFF)  # its check word matches
    before = bytes(r.buf)
    assert r.ring._r_get() == _queue.GENERAL, what
    assert r.ring._r_get_many(10) == _queue.GENERAL, what
    assert r.ring._r_get_into(bytearray(RING)) == -_queue.GENERAL, what
    assert bytes(r.buf) == before, what


def _batch(msgs: list[bytes]) -> bytes:
    ends, total = [], 0
    for m in msgs:
        total += len(m)
        ends.append(total)
    return struct.pack(f"<{len(msgs) + 1}I", len(msgs), *ends) + b"".join(msgs)


def test_a_batch_record_is_taken_one_by_one_and_in_part(r: _Ring) -> None:
    assert r.ring._r_put(_batch([b"a", b"bb", b"ccc"]), 3) == _queue.OK
    assert r.word(PUTS) == 3
    assert r.ring._r_get() == b"a"
    assert r.word(HEAD) == 0  # the rest stays at head
    assert r.ring._r_get_many(10) == ([b"bb", b"ccc"], False)
    assert (r.word(HEAD), r.word(GETS)) == (r.word(TAIL), 3)


@pytest.mark.parametrize(
    ("what", "payload"),
    [
        ("count too large", struct.pack("<II", 1000, 0) + b"abcd"),
        ("count zero", struct.pack("<II", 0, 0) + b"abcd"),
        ("last end is not the size", struct.pack("<III", 2, 1, 9) + b"abcd"),
        ("ends decrease", struct.pack("<III", 2, 3, 1) + b"abc"),
        ("an end beyond the data", struct.pack("<III", 2, 7, 4) + b"abcd"),
    ],
)
def test_a_malformed_batch_is_never_returned_even_in_part(
    r: _Ring, what: str, payload: bytes
) -> None:
    assert r.ring._r_put(payload, 2) == _queue.OK
    before = bytes(r.buf)
    assert r.ring._r_get() == _queue.GENERAL, what
    assert r.ring._r_get_many(10) == _queue.GENERAL, what
    assert bytes(r.buf) == before, what


def test_get_into_a_small_buffer_takes_nothing(r: _Ring) -> None:
    r.ring._r_put(b"x" * 40, 1)
    assert r.ring._r_get_into(bytearray(8)) == -_queue.GENERAL
    buf = bytearray(64)
    assert r.ring._r_get_into(buf) == 40 and buf[:40] == b"x" * 40


def test_repair_due_or_busy_state_sends_everything_to_the_general_path(r: _Ring) -> None:
    r.ring._r_put(b"hello", 1)
    r.word(STATE, 8)  # repair due
    assert r.ring._r_get() == _queue.GENERAL
    assert r.ring._r_put(b"x", 1) == _queue.GENERAL
    r.word(STATE, 1)  # shut down
    assert r.ring._r_put(b"x", 1) == _queue.GENERAL


@pytest.mark.parametrize(
    ("size", "ring", "cap"),
    [
        (BODY - 1, RING, RING - 16),  # the ring does not fit the mapping
        (BODY, RING + 4, RING - 12),  # not a multiple of 8
        (BODY, RING, RING),  # capacity inconsistent with the ring
        (BODY, 8, 0),  # too small for one record
    ],
)
def test_the_ring_refuses_a_layout_that_does_not_fit(size: int, ring: int, cap: int) -> None:
    with pytest.raises(LayoutError):
        _queue.Ring(mmap.mmap(-1, size), 0, ring, cap, _queue.F_FAST, None, None)


def test_a_closed_ring_raises_closed() -> None:
    from shmkit.errors import Closed

    r = _Ring()
    r.ring._r_close()
    with pytest.raises(Closed):
        r.ring._r_put(b"x", 1)
    with pytest.raises(Closed):
        r.ring._r_get()


def test_poll_sees_data_and_room(r: _Ring) -> None:
    assert r.ring._r_poll(False, 0, 0.0) == 0
    r.ring._r_put(b"x", 1)
    assert r.ring._r_poll(False, 0, 0.001) == 1
    assert r.ring._r_poll(True, 16, 0.001) == 1
    assert r.ring._r_poll(True, RING, 0.0) == 0


# ------------------------------------------------------------------ T31

SIGNALLED = """
import signal, sys, time
from shmkit.errors import Empty, Full
from shmkit.queue import Queue

class Tick(Exception):
    pass

armed = False

def tick(signum, frame):
    # Raises only inside the library calls below: the test's own bookkeeping
    # (the except clause, the loop) must not be hit itself.
    if armed:
        raise Tick

q = Queue.open(sys.argv[1])
signal.signal(signal.SIGALRM, tick)
signal.setitimer(signal.ITIMER_REAL, 50e-6, 50e-6)
ticks = ops = 0
end = time.monotonic() + 1.5
while time.monotonic() < end:
    try:
        armed = True
        q.put(b"p" * (ops % 90), timeout=0.01)
        q.put_many([b"a", b"bb"], timeout=0.01)
        q.get(timeout=0.01)
        q.get_many(3, timeout=0.01)
        armed = False
        ops += 1
    except (Tick, Full, Empty):
        armed = False
        ticks += 1
signal.setitimer(signal.ITIMER_REAL, 0)
print("stopped", ticks, ops, flush=True)
sys.stdin.readline()
q.shutdown()
q.close()
print("closed", flush=True)
"""


def test_t31_a_raising_signal_handler_never_leaves_the_queue_locked(name: str) -> None:
    """T31: SIGALRM raising every 50 µs during put/get; then another process makes progress."""
    q = Queue.create(name, 256)  # small: records wrap often, so the general path runs too
    proc = spawn(SIGNALLED, name)
    try:
        line = read_line(proc, timeout=30)
        assert line.startswith("stopped"), line
        _, ticks, _ops = line.split()
        assert int(ticks) > 0
        t0 = time.monotonic()
        while True:  # drain what the loop left, then a round trip of our own
            try:
                q.get_many(100, timeout=0)
            except Exception:
                break
        q.put(b"after", timeout=2)
        assert q.get(timeout=2) == b"after"
        assert time.monotonic() - t0 < 2
        stats = q.statistics()
        assert stats.waiting_getters == stats.waiting_putters == 0
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
        assert read_line(proc, timeout=5) == "closed"  # shutdown() and close() returned
        finish(proc)
    finally:
        kill(proc)
        q.close()
        Segment.remove(name)
