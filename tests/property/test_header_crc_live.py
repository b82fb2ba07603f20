"""Every CRC-covered header byte of every kind of object, flipped in /dev/shm: open refuses.

The header (``_layout``'s comment) is covered by a CRC32 from byte 0 to
``attach_off``, the state word and the CRC field itself zeroed. Whatever byte
of it another process changes, ``open`` of that kind must raise LayoutError
(never open the object, never raise anything else); restored, it opens again.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest

from shmkit import (
    Broadcast,
    Event,
    Latest,
    LayoutError,
    Lock,
    Queue,
    Segment,
    Semaphore,
    SharedArray,
)

from ..helpers import SHM_DIR, attach_offset, peek, poke

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(not os.path.isdir(SHM_DIR), reason="needs /dev/shm"),
]

STATE = range(16, 20)  # the state word: not covered by the CRC (checked on its own)

#: kind -> (create(name), open(name))
KINDS: dict[str, tuple[Callable[[str], Any], Callable[[str], Any]]] = {
    "segment": (lambda n: Segment.create(n, 4096), Segment.open),
    "lock": (Lock.create, Lock.open),
    "semaphore": (lambda n: Semaphore.create(n, 1), Semaphore.open),
    "event": (Event.create, Event.open),
    "queue": (lambda n: Queue.create(n, 4096), Queue.open),
    "broadcast": (lambda n: Broadcast.create(n, slot_size=64, slots=4), Broadcast.open),
    "latest": (lambda n: Latest.create(n, size=64), Latest.open),
    "array": (lambda n: SharedArray.create(n, (3, 5), "<i4"), SharedArray.open),
}


@pytest.mark.parametrize("kind", KINDS)
def test_every_crc_covered_byte_flip_is_refused_on_open(name: str, kind: str) -> None:
    create, open_ = KINDS[kind]
    obj = create(name)
    try:
        end = attach_offset(name)
        assert 128 < end <= 4096
        accepted: list[tuple[int, int]] = []
        others: list[tuple[int, int, str]] = []
        for offset in range(end):
            if offset in STATE:
                continue
            old = peek(name, offset, 1)
            for mask in (0x01, 0x80, 0xFF):
                poke(name, offset, bytes([old[0] ^ mask]))
                try:
                    opened = open_(name)
                except LayoutError:
                    continue
                except Exception as exc:  # collected and reported below
                    others.append((offset, mask, repr(exc)))
                else:
                    opened.close()
                    accepted.append((offset, mask))
                finally:
                    poke(name, offset, old)
        assert not accepted, f"{kind}: opened despite flips at (offset, mask) {accepted[:8]}"
        assert not others, f"{kind}: not a LayoutError: {others[:5]}"
        open_(name).close()  # restored, it opens
    finally:
        obj.close()
        Segment.remove(name)
