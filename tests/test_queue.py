"""Queue: the stdlib queue API by name, bad input, corruption, shutdown, and several processes."""

from __future__ import annotations

import concurrent.futures
import json
import math
import multiprocessing
import os
import pickle
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

import shmkit
from shmkit import _codec, _process
from shmkit import queue as qmod
from shmkit._shm import queue_liveness as live
from shmkit._shm import queue_ring as ring
from shmkit.errors import (
    Closed,
    Empty,
    Full,
    LayoutError,
    MessageTooLarge,
    NotFound,
)
from shmkit.queue import BufferTooSmall, Queue, QueueStatistics, describe
from shmkit.segment import Segment

from .helpers import finish, kill, read_line, spawn

pytestmark = pytest.mark.timeout(60)

#: Slack for timing assertions on two busy cores.
SLACK = 0.25


@pytest.fixture
def q(name: str) -> Iterator[Queue[bytes]]:
    """A 4 KiB queue, unlinked after the test."""
    queue = Queue.create(name, 4096)
    try:
        yield queue
    finally:
        queue.close()
        Segment.remove(name)


def _ring_words(q: Queue[Any]) -> memoryview:
    """The queue's control words (tests poke them to simulate corruption)."""
    return q._c


# ------------------------------------------------------------------ basics


def test_roundtrip_of_every_bytes_like_type(q: Queue[bytes]) -> None:
    arr = np.arange(12, dtype=np.float64).reshape(3, 4)
    items: list[Any] = [
        b"bytes",
        bytearray(b"bytearray"),
        memoryview(b"memoryview"),
        arr,
        arr[:, 1],  # not contiguous: sent as a copy of its bytes
        b"",
    ]
    for item in items:
        q.put(item)
    assert q.qsize() == len(items)
    assert q.get() == b"bytes"
    assert q.get() == b"bytearray"
    assert q.get() == b"memoryview"
    assert np.frombuffer(q.get(), dtype=np.float64).reshape(3, 4).tolist() == arr.tolist()
    assert np.frombuffer(q.get(), dtype=np.float64).tolist() == [1.0, 5.0, 9.0]
    assert q.get() == b""
    assert q.empty()


def test_fifo_order_across_many_wraps_with_mixed_sizes(name: str) -> None:
    with Queue.create(name, 200, unlink_on_exit=True) as q:
        expected: list[bytes] = []
        got: list[bytes] = []
        for i in range(3000):
            msg = bytes([i & 0xFF]) * (i * 7 % 90)
            while True:
                try:
                    q.put_nowait(msg)
                    expected.append(msg)
                    break
                except Full:
                    got.append(q.get_nowait())
        while not q.empty():
            got.append(q.get_nowait())
        assert got == expected
        stats = q.statistics()
        assert stats.total_puts == stats.total_gets == 3000
        assert stats.bytes_used == 0 and stats.messages == 0


def test_a_message_of_exactly_capacity_fits_and_one_more_byte_does_not(name: str) -> None:
    with Queue.create(name, 1000, unlink_on_exit=True) as q:
        assert q.capacity == 1000
        q.put(b"x" * 1000)
        assert q.full()
        with pytest.raises(Full):
            q.put_nowait(b"")
        assert q.get() == b"x" * 1000
        before = q.statistics()
        with pytest.raises(MessageTooLarge, match="1001 bytes"):
            q.put(b"x" * 1001)
        with pytest.raises(ValueError):  # MessageTooLarge is a ValueError
            q.put(b"x" * 5000, timeout=0)
        assert q.statistics() == before  # nothing in shared memory changed


def test_capacity_rounds_up_to_a_multiple_of_8(name: str) -> None:
    with Queue.create(name, 13, unlink_on_exit=True) as q:
        assert q.capacity == 16
        assert q.statistics().ring_bytes == 32


def test_empty_and_full_raise_the_stdlib_exceptions(q: Queue[bytes]) -> None:
    import queue

    with pytest.raises(queue.Empty):
        q.get_nowait()
    with pytest.raises(Empty):
        q.get(timeout=0)
    while True:
        try:
            q.put_nowait(b"y" * 100)
        except queue.Full:
            break
    with pytest.raises(Full, match="no room"):
        q.put(b"y" * 100, timeout=0.01)


@pytest.mark.parametrize("timeout", [0.0, 0.001, 0.05, 0.3])
def test_timeouts_are_honoured(q: Queue[bytes], timeout: float) -> None:
    """T29: t <= elapsed <= t + slack, on get (empty) and put (full)."""
    t0 = time.monotonic()
    with pytest.raises(Empty):
        q.get(timeout=timeout)
    elapsed = time.monotonic() - t0
    assert timeout <= elapsed + 1e-3 and elapsed <= timeout + SLACK
    q.put(b"z" * 4000)
    t0 = time.monotonic()
    with pytest.raises(Full):
        q.put(b"z" * 200, timeout=timeout)
    elapsed = time.monotonic() - t0
    assert timeout <= elapsed + 1e-3 and elapsed <= timeout + SLACK
    assert q.statistics().waiting_getters == q.statistics().waiting_putters == 0


def test_put_many_is_all_or_nothing_and_get_many_takes_a_batch(q: Queue[bytes]) -> None:
    q.put_many([b"a", b"bb", b"ccc"])
    q.put_many([])
    assert q.get_many(2) == [b"a", b"bb"]
    assert q.get_many(10) == [b"ccc"]
    q.put(b"x" * 3000)
    before = q.statistics()
    with pytest.raises(Full):
        q.put_many([b"y" * 500, b"y" * 600], timeout=0)  # 1128 bytes with header; 1056 free
    assert q.statistics() == before
    with pytest.raises(MessageTooLarge, match="batch of 600 messages"):
        q.put_many([b"m" * 8] * 600)  # 7,220 bytes as one batch record; the ring holds 4,112
    with pytest.raises(MessageTooLarge, match="message 1 of the batch"):
        q.put_many([b"ok", b"m" * 5000])
    with pytest.raises(TypeError):
        q.put_many([b"ok", "not bytes"])  # type: ignore[list-item]
    assert q.statistics() == before
    assert q.get_many(5) == [b"x" * 3000]
    with pytest.raises(Empty):
        q.get_many(5, timeout=0.01)


def test_get_many_rejects_bad_counts(q: Queue[bytes]) -> None:
    with pytest.raises(ValueError):
        q.get_many(0)
    with pytest.raises(TypeError):
        q.get_many(2.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        q.get_many(True)


def test_get_into_copies_once_and_keeps_a_message_that_does_not_fit(q: Queue[bytes]) -> None:
    q.put(b"0123456789")
    small = bytearray(4)
    with pytest.raises(BufferTooSmall) as info:
        q.get_into(small)
    assert info.value.needed == 10
    assert isinstance(info.value, MessageTooLarge)
    assert q.qsize() == 1
    arr = np.zeros(16, dtype=np.uint8)
    assert q.get_into(arr) == 10
    assert bytes(arr[:10]) == b"0123456789"
    with pytest.raises(TypeError):
        q.get_into(b"readonly")
    with pytest.raises(TypeError):
        q.get_into(np.zeros((4, 4), dtype=np.uint8)[:, 0])  # not contiguous
    with pytest.raises(TypeError):
        q.get_into(42)  # type: ignore[arg-type]
    with pytest.raises(Empty):
        q.get_into(arr, timeout=0)


def test_get_into_a_message_that_wraps_the_ring(name: str) -> None:
    with Queue.create(name, 104, unlink_on_exit=True) as q:
        q.put(b"a" * 60)
        assert q.get() == b"a" * 60
        payload = bytes(range(80))
        q.put(payload)  # starts 80 bytes in: wraps
        buf = bytearray(100)
        assert q.get_into(buf) == 80
        assert bytes(buf[:80]) == payload


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    ("capacity", "error"),
    [(0, ValueError), (-5, ValueError), (1.5, TypeError), (True, TypeError), ("8", TypeError),
     (1 << 40, ValueError)],
)  # fmt: skip
def test_bad_capacity_creates_nothing(name: str, capacity: Any, error: type[Exception]) -> None:
    with pytest.raises(error):
        Queue.create(name, capacity)
    with pytest.raises(NotFound):
        Queue.open(name)


def test_bad_arguments_raise_before_anything_changes(q: Queue[bytes]) -> None:
    q.put(b"keep")
    before = q.statistics()
    for bad in ("text", 42, None, 3.5, object()):
        with pytest.raises(TypeError):
            q.put(bad)  # type: ignore[call-overload]
    for timeout, error in (("1", TypeError), (-1, ValueError), (math.nan, ValueError)):
        with pytest.raises(error):
            q.put(b"x", timeout=timeout)  # type: ignore[arg-type]
        with pytest.raises(error):
            q.get(timeout=timeout)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Queue.open(q.name, codec="yaml")  # type: ignore[call-overload]
    with pytest.raises(TypeError):
        Queue.open(q.name, codec=object())  # type: ignore[call-overload]
    with pytest.raises(ValueError):
        Queue.open(q.name, spin=5.0)
    with pytest.raises(TypeError):
        Queue.create(q.name + "-x", 64, checksum="yes")  # type: ignore[call-overload]
    assert q.statistics() == before
    assert q.get() == b"keep"


def test_an_infinite_timeout_waits_like_none(q: Queue[bytes]) -> None:
    q.put(b"now")
    assert q.get(timeout=math.inf) == b"now"


def test_a_closed_handle_refuses_everything_but_stays_printable(name: str) -> None:
    q = Queue.create(name, 64)
    other = Queue.open(name)
    q.put(b"left")
    q.close()
    q.close()
    assert q.closed
    assert "closed" in repr(q)
    for call in (
        lambda: q.put(b"x"),
        q.get,
        lambda: q.put_many([b"x"]),
        lambda: q.get_many(1),
        lambda: q.get_into(bytearray(8)),
        q.qsize,
        q.empty,
        q.full,
        q.statistics,
        q.shutdown,
    ):
        with pytest.raises(Closed):
            call()
    assert other.get() == b"left"  # the queue itself is untouched
    other.close()
    q.unlink()
    with pytest.raises(NotFound):
        Queue.open(name)


def test_closing_a_handle_wakes_its_blocked_thread_and_frees_the_lock(name: str) -> None:
    with Queue.create(name, 64, unlink_on_exit=True) as q, Queue.open(name) as other:
        q.spin = 0.0
        errors: list[BaseException] = []

        def blocked() -> None:
            try:
                q.get()
            except BaseException as exc:
                errors.append(exc)

        t = threading.Thread(target=blocked)
        t.start()
        deadline = time.monotonic() + 5
        while other.statistics().waiting_getters != 1:
            assert time.monotonic() < deadline
            time.sleep(0.005)
        t0 = time.monotonic()
        q.close()
        t.join(5)
        assert time.monotonic() - t0 < 0.2
        assert len(errors) == 1 and isinstance(errors[0], Closed)
        other.put(b"still usable")
        assert other.get(timeout=1) == b"still usable"
        assert other.statistics().waiting_getters == 0


def test_repr_never_fails() -> None:
    broken = Queue.__new__(Queue)
    assert "Queue" in repr(broken)


def test_another_kind_of_object_is_not_a_queue(name: str) -> None:
    with shmkit.Lock.create(name) as lock:
        with pytest.raises(LayoutError, match="is a lock, not a queue"):
            Queue.open(name)
        lock.unlink()
    with Segment.create(name, 4096) as seg:
        with pytest.raises(LayoutError, match="not a queue"):
            Queue.open(name)
        seg.unlink()


def test_open_or_create_creates_then_opens(name: str) -> None:
    with Queue.open_or_create(name, 256) as a, Queue.open_or_create(name, 128) as b:
        a.put(b"hi")
        assert b.get() == b"hi"
        with pytest.raises(LayoutError, match="capacity"):
            Queue.open_or_create(name, 4096)
        a.unlink()


# ------------------------------------------------------------------ corruption


def test_corrupt_control_words_raise_and_lose_nothing(q: Queue[bytes]) -> None:
    q.put(b"one")
    q.put(b"two")
    c = _ring_words(q)
    head, tail = c[ring._W_HEAD], c[ring._W_TAIL]
    for word, value in (
        (ring._W_HEAD, tail + 8),  # head past tail
        (ring._W_TAIL, head + 10**9),  # tail far beyond the ring
        (ring._W_TAIL, tail + 3),  # misaligned
    ):
        old = c[word]
        c[word] = value
        # The general paths check every word; the fast paths hand anything odd to them.
        with pytest.raises(LayoutError, match="corrupt ring indices"):
            q.get_many(10, timeout=0)
        if word == ring._W_TAIL:
            with pytest.raises(LayoutError, match="corrupt ring indices"):
                q.put_many([b"x"])
            with pytest.raises(LayoutError, match="corrupt ring indices"):
                q.put(b"x" * 4000)
        # A producer reads head only when the head it saw last leaves too
        # little room (as a consumer reads tail only when it has caught up):
        # a put that needs the whole ring looks, and sees the corrupt head.
        with pytest.raises(LayoutError, match="corrupt ring indices"):
            q.put(b"x" * 4096)
        c[word] = old
    old = c[ring._W_GETS]
    c[ring._W_GETS] = old + 5
    with pytest.raises(LayoutError, match="corrupt counters"):
        q.get_many(4)
    c[ring._W_GETS] = old
    assert q.get_many(4) == [b"one", b"two"]  # nothing was lost


def test_a_corrupt_segment_header_is_refused_on_open(name: str) -> None:
    with Queue.create(name, 64, unlink_on_exit=True) as q:
        q._mm[100] ^= 0xFF  # inside the checksummed header
        with pytest.raises(LayoutError):
            Queue.open(name)
        q._mm[100] ^= 0xFF
        Queue.open(name).close()


def _record_offsets(q: Queue[Any]) -> list[int]:
    """Byte offsets (in the mapping) of the queued records, oldest first."""
    c = q._c
    pos, tail, out = c[ring._W_HEAD], c[ring._W_TAIL], []
    while pos < tail:
        i = pos % q._ring
        out.append(q._base + i)
        n = c[ring._W_RING + (i >> 3)] & 0xFFFFFFFF
        pos += (n + 23) & -8
    return out


@pytest.mark.parametrize(("field", "offset"), [("length", 0), ("seq", 5), ("check", 9)])
def test_a_corrupt_record_is_skipped_and_counted(q: Queue[bytes], field: str, offset: int) -> None:
    """T22: flip a byte of one record's header: the others arrive, the bad one never does."""
    msgs = [bytes([65 + i]) * (10 + i) for i in range(5)]
    for m in msgs:
        q.put(m)
    at = _record_offsets(q)[2]
    q._mm[at + offset] ^= 0x5A
    assert q.get_many(10) == msgs[:2] + msgs[3:]
    stats = q.statistics()
    assert stats.corrupt_records == 1
    assert stats.messages == 0 and stats.bytes_used == 0
    q.put(b"after")
    assert q.get() == b"after"


def test_a_huge_corrupt_length_never_reads_out_of_bounds(q: Queue[bytes]) -> None:
    q.put(b"a" * 10)
    q.put(b"b" * 10)
    at = _record_offsets(q)[0]
    q._mm[at : at + 4] = struct.pack("<I", 0xFFFFFFF0)
    assert q.get() == b"b" * 10
    assert q.statistics().corrupt_records == 1


def test_garbage_everywhere_drops_the_queue_contents_in_bounded_time(q: Queue[bytes]) -> None:
    for i in range(20):
        q.put(bytes([i]) * 100)
    start = q._base
    q._mm[start : start + q._ring] = os.urandom(q._ring)
    t0 = time.monotonic()
    with pytest.raises(Empty):
        q.get_many(100, timeout=0)
    assert time.monotonic() - t0 < 2.0
    assert q.statistics().corrupt_records == 20
    q.put(b"fresh")
    assert q.get() == b"fresh"


def test_payload_checksum_catches_a_flipped_payload_byte(name: str) -> None:
    with Queue.create(name, 256, checksum=True, unlink_on_exit=True) as q:
        assert q.statistics().checksum
        for m in (b"first", b"second", b"third"):
            q.put(m)
        at = _record_offsets(q)[1]
        q._mm[at + 16] ^= 1
        assert q.get() == b"first"
        assert q.get() == b"third"
        assert q.statistics().corrupt_records == 1
        # Without the checksum the same flip is delivered: document, do not hide.
    with Queue.create(name, 256, unlink_on_exit=True) as q:
        q.put(b"second")
        q._mm[_record_offsets(q)[0] + 16] ^= 1
        assert q.get() == b"recond"


def test_checksum_queue_roundtrips_wrapping_messages(name: str) -> None:
    with Queue.create(name, 100, checksum=True, unlink_on_exit=True) as q:
        for i in range(200):
            m = bytes([i & 0xFF]) * (i % 70)
            q.put(m)
            assert q.get() == m
        q.put_many([b"a" * 30, b"b" * 30])
        buf = bytearray(64)
        assert q.get_into(buf) == 30 and bytes(buf[:30]) == b"a" * 30
        assert q.get_many(3) == [b"b" * 30]
        assert q.statistics().corrupt_records == 0


# ------------------------------------------------------------------ large messages


def test_large_messages_are_copied_out_after_unlocking(name: str) -> None:
    big = [bytes([i]) * (ring._CLAIM_MIN + 1000 * i) for i in range(4)]
    with Queue.create(name, 3 * ring._CLAIM_MIN, unlink_on_exit=True) as q:
        for rnd in range(6):  # several laps: claimed payloads wrap around the ring too
            q.put(big[rnd % 4])
            q.put(b"small")
            assert q.get() == big[rnd % 4]
            assert q.get_many(5) == [b"small"]
        buf = bytearray(len(big[3]))
        q.put(big[3])
        for m in (b"a", big[0], b"b"):
            q.put(m)
        assert q.get_into(buf) == len(big[3]) and buf == big[3]
        assert q.get_many(10) == [b"a"]  # stops before a large one...
        assert q.get_many(10) == [big[0]]  # ...which comes alone
        assert q.get_many(10) == [b"b"]
        q.put_many([b"a", big[0], b"b"])  # one batch record: copied out under the lock
        assert q.get_many(2) == [b"a", big[0]]
        assert q.get_into(buf) == 1 and buf[:1] == b"b"
        with pytest.raises(BufferTooSmall):
            q.put(big[1])
            q.get_into(bytearray(10))
        assert q.get() == big[1]
        stats = q.statistics()
        assert (stats.bytes_used, stats.messages, stats.recoveries) == (0, 0, 0)


def test_a_claim_is_released_only_when_its_process_is_dead(name: str) -> None:
    """The space of a large message being copied out stays reserved while its taker lives:
    judged by the taker's attach slot (its OFD lock), or by pid only in the same PID
    namespace; unknown is never released (issue 9 item 1)."""
    with Queue.create(name, 4 * ring._CLAIM_MIN, unlink_on_exit=True) as q:
        c = q._c
        q.put(b"a" * 100)
        q.put(b"b" * 100)
        h0 = c[ring._W_HEAD]
        assert q.get() == b"a" * 100
        me = _process.current()
        child = subprocess.Popen([sys.executable, "-c", "pass"])
        child.wait()
        dead_pid = child.pid  # reaped: no such process (pid reuse this soon is unlikely)
        ns = live._TAG_NS | live._pidns()
        other_ns = live._TAG_NS | ((live._pidns() + 1) & ring._M31)
        cases = (
            (*live.identity(q._seg), False),  # this handle: its attach slot is locked
            (dead_pid | 7 << 32, 1, True),  # attach slot 6: free, so its holder is gone
            (me.pid | ns << 32, me.start, False),  # no slot, our namespace, alive pid
            (dead_pid | other_ns << 32, 1, False),  # another PID namespace: unknown
            (dead_pid, 1, False),  # no tag at all: unknown, never acted on
            (dead_pid | ns << 32, 1, True),  # no slot, our namespace, dead pid
        )
        for pid, ticks, released in cases:
            assert q._lock_until(time.monotonic() + 1)
            try:
                c[ring._W_CLAIM] = h0  # as if message "a" were still being copied out
                c[ring._W_CLAIM_PID], c[ring._W_CLAIM_TICKS] = pid, ticks
                c[ring._W_STATE] |= ring._CLAIMED
                assert q._reclaim_dead() is released
            finally:
                q._unlock()
            assert q.statistics().bytes_used == (120 if released else 240)
            c[ring._W_STATE] &= ~ring._CLAIMED
        assert q.statistics().recoveries == 2
        assert q.get() == b"b" * 100


# ------------------------------------------------------------------ codecs


def test_pickle_codec_roundtrips_objects(name: str) -> None:
    with Queue.create(name, 4096, codec="pickle", unlink_on_exit=True) as q:
        item = {"a": [1, 2.5, None], "b": ("x", b"y")}
        q.put(item)
        q.put(b"raw bytes are pickled too")
        q.put_many([1, 2])
        assert q.get() == item
        assert q.get() == b"raw bytes are pickled too"
        assert q.get_many(5) == [1, 2]
        assert q.statistics().codec == "pickle"


def test_msgpack_codec_roundtrips_values(name: str) -> None:
    with Queue.create(name, 4096, codec="msgpack", unlink_on_exit=True) as q:
        q.put({"k": [1, "two", b"3"]})
        assert q.get() == {"k": [1, "two", b"3"]}
        with pytest.raises(TypeError):
            q.put(object())


def test_msgpack_missing_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "msgpack", None)
    with pytest.raises(ImportError, match="pip install"):
        _codec.resolve("msgpack")


def test_a_custom_codec_types_the_queue(name: str) -> None:
    class Utf8:
        name = "utf8"

        def encode(self, item: str) -> bytes:
            return item.encode()

        def decode(self, data: bytes) -> str:
            return data.decode()

    with Queue.create(name, 256, codec=Utf8(), unlink_on_exit=True) as q:
        q.put("héllo")
        text: str = q.get()
        assert text == "héllo"
        assert describe_of(name)["codec"] == "utf8"


def describe_of(name: str) -> dict[str, object]:
    with Segment._open_object(name, shmkit.Kind.QUEUE, readonly=True, attach=False) as seg:
        return describe(seg)


MARKER_PICKLE = """
import os, pickle, sys
class Evil:
    def __reduce__(self):
        return (os.system, ("touch " + sys.argv[2],))
from shmkit.queue import Queue
with Queue.open(sys.argv[1]) as q:  # a bytes queue: the writer sends pickle bytes
    q.put(pickle.dumps(Evil()))
print("sent", flush=True)
"""


def test_default_codec_never_unpickles_hostile_data(name: str, tmp_path: Any) -> None:
    """T21: a writer sends a pickle that would run a command; the default reader gets bytes."""
    marker = tmp_path / "pwned"
    with Queue.create(name, 4096, unlink_on_exit=True) as q:
        proc = spawn(MARKER_PICKLE, name, str(marker))
        assert read_line(proc) == "sent"
        finish(proc)
        data = q.get(timeout=5)
        assert isinstance(data, bytes) and b"system" in data
        assert not marker.exists()
    # The opt-in codec documents its trust requirement where users look.
    assert "trusted" in (_codec.PickleCodec.__doc__ or "")
    assert "trusted" in (qmod.Queue.create.__doc__ or "")


# ------------------------------------------------------------------ inspection


def test_statistics_and_describe_agree_and_are_json(q: Queue[bytes]) -> None:
    q.put(b"x" * 10)
    q.put(b"y" * 20)
    stats = q.statistics()
    assert isinstance(stats, QueueStatistics)
    assert (stats.messages, stats.bytes_used, stats.total_puts) == (2, 32 + 40, 2)
    assert stats.capacity == 4096 and stats.ring_bytes == 4112
    with pytest.raises(AttributeError):
        stats.messages = 5  # type: ignore[misc]
    info = describe_of(q.name)
    assert json.loads(json.dumps(info)) == info
    assert info["messages"] == 2 and info["bytes_used"] == 72
    with Segment._open_object(q.name, None, readonly=True, attach=False) as seg:
        from shmkit import registry

        assert registry.describe(seg)["messages"] == 2


def test_describe_refuses_other_kinds(name: str) -> None:
    with Segment.create(name, 128, unlink_on_exit=True) as seg, pytest.raises(LayoutError):
        describe(seg)


# ------------------------------------------------------------------ shutdown


def test_shutdown_stops_producers_and_lets_consumers_drain(name: str) -> None:
    with Queue.create(name, 256, unlink_on_exit=True) as q, Queue.open(name) as other:
        q.put(b"a")
        q.put(b"b")
        other.shutdown()
        assert q.is_shutdown
        with pytest.raises(Closed, match="shut down"):
            q.put(b"c")
        with pytest.raises(Closed):
            q.put_many([b"c"])
        assert q.get() == b"a"
        assert q.get_many(4) == [b"b"]
        with pytest.raises(Closed, match="shut down and empty"):
            q.get()
        with pytest.raises(Closed):
            q.get_nowait()
        assert q.statistics().shut_down


def test_shutdown_immediate_discards(q: Queue[bytes]) -> None:
    q.put(b"gone")
    q.shutdown(immediate=True)
    with pytest.raises(Closed):
        q.get_nowait()
    assert q.statistics().messages == 0


def test_shutdown_wakes_blocked_threads_at_once(name: str) -> None:
    """A getter blocked on an empty queue and a putter blocked on a full one both get Closed."""
    with (
        Queue.create(name + "-e", 64, unlink_on_exit=True) as empty,
        Queue.create(name + "-f", 64, unlink_on_exit=True) as full,
    ):
        full.put(b"x" * 64)
        errors: list[BaseException] = []

        def blocked(call: Any) -> None:
            try:
                call()
            except BaseException as exc:
                errors.append(exc)

        threads = [
            threading.Thread(target=blocked, args=(lambda: Queue.open(name + "-e").get(),)),
            threading.Thread(target=blocked, args=(lambda: Queue.open(name + "-f").put(b"y"),)),
        ]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 5
        while not (empty.statistics().waiting_getters and full.statistics().waiting_putters):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        t0 = time.monotonic()
        empty.shutdown()
        full.shutdown()
        for t in threads:
            t.join(5)
        assert time.monotonic() - t0 < 0.2
        assert len(errors) == 2 and all(isinstance(e, Closed) for e in errors), errors
        assert full.get() == b"x" * 64  # a plain shutdown still lets consumers drain


# ------------------------------------------------------------------ threads and waits


def test_a_blocked_get_is_woken_by_a_put(name: str) -> None:
    with Queue.create(name, 256, unlink_on_exit=True) as q:
        q.spin = 0.0
        got: list[bytes] = []
        t = threading.Thread(target=lambda: got.append(q.get(timeout=10)))
        t.start()
        deadline = time.monotonic() + 5
        while q.statistics().waiting_getters != 1:
            assert time.monotonic() < deadline
            time.sleep(0.005)
        t0 = time.monotonic()
        q.put(b"wake")
        t.join(5)
        assert got == [b"wake"]
        assert time.monotonic() - t0 < 0.1
        assert q.statistics().waiting_getters == 0


def test_threads_share_one_handle(name: str) -> None:
    with Queue.create(name, 512, unlink_on_exit=True) as q:
        n = 2000
        seen: list[int] = []

        def produce(k: int) -> None:
            for i in range(n):
                q.put(struct.pack("<II", k, i))

        def consume() -> None:
            for _ in range(n):
                seen.append(struct.unpack("<II", q.get(timeout=10))[1])

        threads = [threading.Thread(target=produce, args=(k,)) for k in range(2)]
        threads += [threading.Thread(target=consume) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert sorted(seen) == sorted(list(range(n)) * 2)


# ------------------------------------------------------------------ pickling and pools


def test_a_handle_pickles_to_its_name(name: str) -> None:
    with Queue.create(name, 256, codec="pickle", unlink_on_exit=True) as q:
        clone = pickle.loads(pickle.dumps(q))
        try:
            assert clone.name == name and clone.codec.name == "pickle"
            clone.put([1, 2])
            assert q.get() == [1, 2]
        finally:
            clone.close()


def _pool_worker(q: Queue[Any], value: int) -> int:
    q.put({"square": value * value})
    q.close()
    return os.getpid()


def test_a_queue_passes_to_spawned_pool_workers(name: str) -> None:
    ctx = multiprocessing.get_context("spawn")
    with Queue.create(name, 4096, codec="pickle", unlink_on_exit=True) as q:
        with concurrent.futures.ProcessPoolExecutor(2, mp_context=ctx) as pool:
            pids = list(pool.map(_pool_worker, [q] * 4, range(4)))
        assert os.getpid() not in pids
        got = sorted(q.get(timeout=5)["square"] for _ in range(4))
        assert got == [0, 1, 4, 9]


# ------------------------------------------------------------------ several processes

PRODUCER = """
import struct, sys
from shmkit.queue import Queue
name, tag, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
with Queue.open(name) as q:
    print("ready", flush=True)
    for i in range(n):
        q.put(struct.pack("<II", tag, i) + bytes(i % 300))
print("done", flush=True)
"""

BLOCKED_GET = """
import sys
from shmkit.queue import Queue
q = Queue.open(sys.argv[1], spin=0.0)
print("waiting", flush=True)
try:
    q.get(timeout=float(sys.argv[2]) if len(sys.argv) > 2 else None)
except KeyboardInterrupt:
    print("interrupted", flush=True)
"""


def test_put_in_one_interpreter_get_in_another(name: str) -> None:
    with Queue.create(name, 2048, unlink_on_exit=True) as q:
        procs = [spawn(PRODUCER, name, str(tag), "2000") for tag in range(2)]
        for p in procs:
            assert read_line(p) == "ready"
        last = [-1, -1]
        for _ in range(4000):
            data = q.get(timeout=20)
            tag, i = struct.unpack_from("<II", data)
            assert i == last[tag] + 1 and data[8:] == bytes(i % 300)
            last[tag] = i
        for p in procs:
            assert finish(p).strip() == "done"
        assert q.empty()


def test_ctrl_c_interrupts_a_blocked_get_promptly(name: str) -> None:
    with Queue.create(name, 64, unlink_on_exit=True):
        proc = spawn(BLOCKED_GET, name)
        try:
            assert read_line(proc) == "waiting"
            time.sleep(0.1)
            t0 = time.monotonic()
            proc.send_signal(signal.SIGINT)
            assert read_line(proc) == "interrupted"
            assert time.monotonic() - t0 < 0.2 + SLACK
        finally:
            kill(proc)


def test_a_killed_waiter_is_forgotten(name: str) -> None:
    with Queue.create(name, 64, unlink_on_exit=True) as q:
        proc = spawn(BLOCKED_GET, name)
        assert read_line(proc) == "waiting"
        deadline = time.monotonic() + 5
        while q.statistics().waiting_getters != 1:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        kill(proc)
        assert q.statistics().waiting_getters == 0  # statistics() re-checks who is alive


def test_flock_backend_queue_works_across_processes(name: str) -> None:
    code = """
import sys
from shmkit.queue import Queue
with Queue.create(sys.argv[1], 256) as q:
    assert q._mutex.kind == "flock"
    q.put(b"via flock")
    print("put", flush=True)
    sys.stdin.readline()
    print(q.get(timeout=5).decode(), flush=True)
"""
    proc = spawn(code, name, env={"SHMKIT_MUTEX": "flock"})
    try:
        assert read_line(proc) == "put"
        with Queue.open(name) as q:  # the creator's backend is used whatever our env says
            assert q._mutex.kind == "flock"
            assert q.get(timeout=5) == b"via flock"
            q.put(b"back")
        assert proc.stdin is not None
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert read_line(proc) == "back"
        finish(proc)
    finally:
        kill(proc)
        Segment.remove(name)


# ------------------------------------------------------------------ stress (scripts/)

STRESS = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts", "queue_stress.py"
)


def _stress(*args: str, timeout: float) -> dict[str, Any]:
    import subprocess

    # Its own process group: on a timeout its children go with it.
    proc = subprocess.Popen(
        [sys.executable, STRESS, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
    assert proc.returncode == 0, out[-3000:] + err[-3000:]
    report: dict[str, Any] = json.loads(out[out.index("\n{") :])
    return report


@pytest.mark.timeout(180)
def test_stress_4_producers_4_consumers_reduced() -> None:
    """4 x 4 processes, 20,000 messages of 1 B..64 KiB: none lost, none doubled, order kept."""
    report = _stress("--preset", "small", timeout=170)
    assert report["ok"] and report["received"] == 20_000 and report["torn"] == 0


@pytest.mark.timeout(180)
def test_t25_mpmc_invariants_reduced_with_kills() -> None:
    """T25 at CI size: 8 x 8 on a ~16-message ring, 5 ms timeouts firing, 2 producers killed."""
    report = _stress("--preset", "t25", "--messages", "40000", "--kill", "2", timeout=170)
    assert report["ok"] and report["lost"] == 0 and report["duplicates"] == 0


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_stress_full_200k() -> None:
    report = _stress("--preset", "stress", timeout=890)
    assert report["ok"] and report["received"] == 200_000


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_t25_full_million_messages() -> None:
    report = _stress("--preset", "t25", timeout=1490)
    assert report["ok"] and report["received"] == 1_000_000


# ------------------------------------------------------------------ benchmark smoke test


@pytest.mark.timeout(120)
def test_bench_queue_quick_runs_and_cleans_up(capsys: pytest.CaptureFixture[str]) -> None:
    """`shmkit bench queue --quick` (two peers): every table prints, nothing is left behind."""
    from shmkit._bench import queue as bench

    def ours() -> set[str]:  # the benchmark's names (other tests may run beside us)
        return {e for e in os.listdir("/dev/shm") if "bq-" in e or e.startswith("iox2_")}

    before = ours()
    assert bench.main(["--quick", "--peers", "pipe,tutorial"]) == 0
    out = capsys.readouterr().out
    for title in ("round trip", "single put/get", "batched", "1 MiB"):
        assert title in out
    assert "failed" not in out
    assert "shmkit Queue" in out and "tutorial" in out
    assert ours() <= before


def test_put_and_get_take_the_stdlib_queue_signatures(name: str) -> None:
    """put(item, block=True, timeout=None) and get(block=True, timeout=None), as queue.Queue
    (issue 10 item 4); block=False never waits; the timeout is checked first either way."""
    with Queue.create(name, 64, unlink_on_exit=True) as q:
        q.put(b"a", True, 1.0)
        q.put(b"b", block=False)
        q.put(item=b"c", timeout=0.5)
        assert q.get(False) == b"a"
        assert q.get(True, 1.0) == b"b"
        assert q.get(block=True, timeout=0) == b"c"
        with pytest.raises(shmkit.Empty):
            q.get(False)
        with pytest.raises(shmkit.Empty):
            q.get(block=False, timeout=10)  # block=False: the timeout does not make it wait
        q.put(b"x" * 40)
        with pytest.raises(shmkit.Full):
            q.put(b"y" * 40, False)
        bads: tuple[Any, ...] = (-1, float("nan"), "1", True)
        for bad in bads:
            with pytest.raises((ValueError, TypeError)):
                q.get(True, bad)  # a message is queued: still rejected first
            with pytest.raises((ValueError, TypeError)):
                q.put(b"z", True, bad)
        with pytest.raises(TypeError):
            q.put(b"z", True, None, 1)  # type: ignore[call-overload]
        with pytest.raises(TypeError):
            q.get(bogus=1)  # type: ignore[call-arg]
        assert q.get_nowait() == b"x" * 40
