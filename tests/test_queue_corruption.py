"""T22 through every read API: a corrupt record is never returned and always counted.

The records are corrupted the way any same-uid process could: by writing
bytes into the queue's /dev/shm file at offsets taken from the documented
layout (the common header in ``_layout``, the queue body and record format in
``queue``'s layout comment). Everything else goes through the public API.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable, Iterator

import pytest

from shmkit import Empty, Queue
from shmkit.errors import IncompatibleLayout

from .helpers import attach_offset, body_offset, header_field, peek, poke, xor_byte

pytestmark = [
    pytest.mark.timeout(30),
    pytest.mark.skipif(not __import__("os").path.isdir("/dev/shm"), reason="needs /dev/shm"),
]

#: Byte offset of the ring in the queue body (queue.py's layout comment: "2176 ring").
RING_OFF = 2176
#: Record header bytes: word 0 length | seq << 32, word 1 check | crc << 32.
FIELDS = {"length": 0, "seq": 4, "check": 8, "check_top": 11}


def _ring(name: str) -> tuple[int, int]:
    """(file offset of the ring, ring bytes) from the header and the queue params."""
    name_len = header_field(name, 32, 4)
    params = 128 + name_len  # params follow the header and the name
    ring = header_field(name, params + 8, 8)  # params: magic, flags, ring, capacity
    return body_offset(name) + RING_OFF, ring


def _record_at(name: str, sizes: list[int], index: int) -> int:
    """File offset of record ``index`` when records of payload ``sizes`` were put from empty."""
    base, ring = _ring(name)
    pos = sum((n + 23) & -8 for n in sizes[:index])
    return base + pos % ring


def _drain(q: Queue[bytes], api: str) -> list[bytes]:
    """Everything the queue hands out through ``api`` until it is empty."""
    out: list[bytes] = []
    buf = bytearray(256)
    for _ in range(100):
        try:
            if api == "get":
                out.append(q.get(timeout=0))
            elif api == "get_many":
                out.extend(q.get_many(3, timeout=0))
            else:
                n = q.get_into(buf, timeout=0)
                out.append(bytes(buf[:n]))
        except Empty:
            return out
    raise AssertionError("the queue never ran empty")


@pytest.fixture
def q(name: str) -> Iterator[Queue[bytes]]:
    with Queue.create(name, 4096) as queue:
        try:
            yield queue
        finally:
            queue.unlink()


APIS = ["get", "get_many", "get_into"]
MSGS = [bytes([65 + i]) * (10 + i) for i in range(5)]


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("field", FIELDS)
@pytest.mark.parametrize("where", [0, 2, 4])
def test_a_corrupt_record_is_never_returned_and_is_counted(
    q: Queue[bytes], name: str, api: str, field: str, where: int
) -> None:
    """T22: one flipped header byte at the head, in the middle or last: skipped, counted once."""
    for m in MSGS:
        q.put(m)
    xor_byte(name, _record_at(name, [len(m) for m in MSGS], where) + FIELDS[field], 0x5A)
    assert _drain(q, api) == MSGS[:where] + MSGS[where + 1 :]
    stats = q.statistics()
    assert stats.corrupt_records == 1
    assert stats.messages == 0 and stats.bytes_used == 0
    q.put(b"after")
    assert _drain(q, api) == [b"after"]


def _batch_body(parts: list[bytes]) -> bytes:
    """A batch record's payload (queue.py: u32 count, u32 end offsets, the messages)."""
    ends = []
    total = 0
    for p in parts:
        total += len(p)
        ends.append(total)
    return struct.pack(f"<{len(parts) + 1}I", len(parts), *ends) + b"".join(parts)


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("field", ["length", "check", "check_top"])
@pytest.mark.parametrize("where", [0, 1])
def test_a_corrupt_message_that_looks_like_a_batch_is_never_split(
    q: Queue[bytes], name: str, api: str, field: str, where: int
) -> None:
    """A single message whose bytes form a well-formed batch body, header corrupted:
    neither it nor the "messages" inside it come out, and it is counted."""
    lookalike = _batch_body([b"abc", b"defg"])
    msgs = [b"first-message", b"second-message", b"third-message"]
    msgs.insert(where, lookalike)
    for m in msgs:
        q.put(m)
    xor_byte(name, _record_at(name, [len(m) for m in msgs], where) + FIELDS[field], 0x5A)
    got = _drain(q, api)
    assert got == [m for m in msgs if m is not lookalike]
    assert q.statistics().corrupt_records == 1


@pytest.mark.parametrize("api", APIS)
def test_an_intact_lookalike_is_one_ordinary_message(q: Queue[bytes], api: str) -> None:
    """The control case of the test above: uncorrupted, the lookalike is delivered whole."""
    lookalike = _batch_body([b"abc", b"defg"])
    q.put(lookalike)
    q.put(b"next")
    assert _drain(q, api) == [lookalike, b"next"]
    assert q.statistics().corrupt_records == 0


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("field", FIELDS)
def test_a_corrupt_batch_record_loses_only_its_own_messages(
    q: Queue[bytes], name: str, api: str, field: str
) -> None:
    """A put_many batch whose record header is corrupted: its messages are skipped and
    counted, the messages before and after arrive."""
    q.put(b"before")
    q.put_many([b"one", b"two", b"three"])
    q.put(b"after")
    sizes = [len(b"before"), len(_batch_body([b"one", b"two", b"three"])), len(b"after")]
    xor_byte(name, _record_at(name, sizes, 1) + FIELDS[field], 0x5A)
    assert _drain(q, api) == [b"before", b"after"]
    assert q.statistics().corrupt_records == 3


@pytest.mark.parametrize("api", APIS)
def test_a_lying_batch_count_is_never_trusted(q: Queue[bytes], name: str, api: str) -> None:
    """A batch record's count or end offsets overwritten with nonsense: skipped, not split."""
    q.put_many([b"one", b"two"])
    q.put(b"after")
    at = _record_at(name, [], 0) + 16  # payload: u32 count, then the end offsets
    poke(name, at, struct.pack("<I", 1000))
    got = _drain(q, api)
    assert got == [b"after"]
    assert q.statistics().corrupt_records >= 1


@pytest.mark.parametrize("api", APIS)
def test_a_record_moved_from_an_earlier_lap_is_refused(
    q: Queue[bytes], name: str, api: str
) -> None:
    """A whole valid record copied to another position (a stale lap): its check word names
    the position it was written at, so it fails at the new one."""
    q.put(b"x" * 40)  # record 0: 64 bytes at position 0
    q.put(b"y" * 40)  # record 1 at position 64
    at = _record_at(name, [], 0)
    rec0 = peek(name, at, 64)
    poke(name, at + 64, rec0[:16] + b"z" * 40)  # record 0's header, at position 64
    got = _drain(q, api)
    assert b"z" * 40 not in got and got == [b"x" * 40]
    assert q.statistics().corrupt_records == 1


READERS: dict[str, Callable[[Queue[bytes]], object]] = {
    "get": lambda q: q.get(timeout=0),
    "get_many": lambda q: q.get_many(10, timeout=0),
    "get_into": lambda q: q.get_into(bytearray(256), timeout=0),
}


@pytest.mark.parametrize("api", APIS)
def test_only_corrupt_records_leave_the_queue_empty_and_counted(
    q: Queue[bytes], name: str, api: str
) -> None:
    """Every record corrupted: the reader gets Empty (never garbage), each one counted."""
    for m in MSGS:
        q.put(m)
    sizes = [len(m) for m in MSGS]
    for i in range(len(MSGS)):
        xor_byte(name, _record_at(name, sizes, i) + FIELDS["check"], 0x01)
    with pytest.raises(Empty):
        READERS[api](q)
    assert q.statistics().corrupt_records == len(MSGS)
    q.put(b"fresh")
    assert _drain(q, api) == [b"fresh"]


@pytest.mark.parametrize("magic", [b"QUE4", b"QUE3", b"QUE9"])
def test_a_queue_of_another_layout_version_is_refused_with_a_clear_error(
    name: str, magic: bytes
) -> None:
    """A QUE4 queue (before task_done/join) or any other version is refused on open,
    with the CRC-covered header still valid: never reinterpreted (T20)."""
    with Queue.create(name, 256, unlink_on_exit=True):
        params = 128 + header_field(name, 32, 4)
        assert peek(name, params, 4) == b"QUE5"
        poke(name, params, magic)
        # Re-seal the header CRC (offset 108; CRC of [0, attach_off) with the state
        # word at 16 and the CRC zeroed), as a segment written by that version has.
        image = bytearray(peek(name, 0, attach_offset(name)))
        image[16:20] = bytes(4)
        image[108:112] = bytes(4)
        poke(name, 108, struct.pack("<I", zlib.crc32(image)))
        with pytest.raises(IncompatibleLayout) as info:
            Queue.open(name)
        err = info.value
        assert (err.found, err.expected) == (int(magic[3:]), 5)
        text = str(err)
        assert "\n" not in text and magic.decode() in text and "QUE5" in text
        assert "create it again" in text
