"""T19 for Broadcast: random and mutated params, headers and control bytes give only LayoutError.

The pure parsers (``parse_params``, ``parse_image``) are fuzzed on in-memory
images; then a live segment has its control block and slot headers mutated
behind shmkit's back and is used: only shmkit's own errors may come out,
in bounded time.
"""

from __future__ import annotations

import mmap
import os
import struct
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shmkit import _layout, _names, _platform
from shmkit._layout import Kind
from shmkit.broadcast import (
    CONTROL_SIZE,
    PARAMS,
    Params,
    describe,
    parse_image,
    parse_params,
    publisher,
    subscribe,
)
from shmkit.errors import LayoutError, ShmkitError
from shmkit.segment import Segment

FAST = settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow], deadline=None)

GOOD = Params(slot_size=64, slots=4, max_subscribers=4, backpressure=True, checksum=False)


def _image(params: Params, name: str = "fuzz") -> bytes:
    head = _layout.build(
        kind=Kind.BROADCAST,
        mode=0o600,
        name=name,
        params=params.pack(),
        body_size=params.body_size,
        nsems=0,
        attach_slots=4,
        creator_pid=1,
        creator_start=2,
        created_ns=3,
        boot_id=bytes(16),
        uid=0,
    )
    _, body_off = _layout.offsets(len(name), PARAMS.size, 4)
    image = bytearray(head) + bytearray(body_off - len(head) + params.body_size)
    image[_layout.STATE_OFFSET : _layout.STATE_OFFSET + 4] = _layout.STATE_READY.to_bytes(
        4, "little"
    )
    return bytes(image)


VALID = _image(GOOD)


def _check(image: bytes) -> None:
    t0 = time.perf_counter()
    try:
        params = parse_image(image)
    except LayoutError:
        pass
    else:
        assert params.body_size <= len(image)
    assert time.perf_counter() - t0 < 0.1


def test_the_valid_image_parses() -> None:
    assert parse_image(VALID) == GOOD
    assert parse_params(GOOD.pack(), GOOD.body_size) == GOOD


@FAST
@given(st.binary(max_size=64), st.integers(min_value=0, max_value=1 << 64))
def test_random_params(params: bytes, body_size: int) -> None:
    try:
        got = parse_params(params, body_size)
    except LayoutError:
        return
    assert got.body_size == body_size and got.pack() == params


@FAST
@given(
    st.lists(st.tuples(st.integers(0, PARAMS.size - 1), st.integers(0, 255)), min_size=1),
    st.booleans(),
)
def test_mutated_params(flips: list[tuple[int, int]], same_size: bool) -> None:
    raw = bytearray(GOOD.pack())
    for offset, value in flips:
        raw[offset] = value
    try:
        got = parse_params(bytes(raw), GOOD.body_size if same_size else GOOD.body_size + 64)
    except LayoutError:
        return
    assert got.pack() == bytes(raw)


@FAST
@given(st.sampled_from([0, 4, 8, 16, 24, 28, 32, 36]), st.integers(0, (1 << 64) - 1))
def test_huge_param_fields(offset: int, value: int) -> None:
    """Sizes that overflow or are absurd are refused before anything is derived."""
    raw = bytearray(GOOD.pack())
    width = 8 if offset in (8, 16) else 4
    raw[offset : offset + width] = (value % (1 << (8 * width))).to_bytes(width, "little")
    try:
        parse_params(bytes(raw), GOOD.body_size)
    except LayoutError:
        pass


@FAST
@given(st.binary(max_size=4096))
def test_random_images(image: bytes) -> None:
    _check(image)


@FAST
@given(
    st.lists(
        st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255)), min_size=1, max_size=12
    )
)
def test_mutated_images(flips: list[tuple[int, int]]) -> None:
    image = bytearray(VALID)
    for offset, value in flips:
        image[offset] = value
    _check(bytes(image))


@FAST
@given(st.integers(0, CONTROL_SIZE // 8 + 4 * 8 - 1), st.integers(0, (1 << 64) - 1))
def test_control_words(word: int, value: int) -> None:
    """Runtime words the CRC cannot cover: bounded, and absurd ones are refused."""
    image = bytearray(VALID)
    off = len(VALID) - GOOD.body_size + 8 * word
    struct.pack_into("<Q", image, off, value)
    _check(bytes(image))


@pytest.mark.skipif(_platform.SHM_DIR is None, reason="needs /dev/shm")
def test_mutated_live_segment_gives_only_shmkit_errors(name: str) -> None:
    """Corrupt the control block and slot headers of a live broadcast, then use it."""
    pub = publisher(name, slot_size=32, slots=4, max_subscribers=4)
    try:
        for n in range(6):
            pub.publish(bytes([n]) * 32)
        body_off = pub._ctl.body_off
        slots_off = pub.params.slots_offset
        path = os.path.join(_platform.SHM_DIR or "", _names.system_name(name).lstrip("/"))
        with open(path, "r+b") as f, mmap.mmap(f.fileno(), 0) as mm:
            original = bytes(mm)
            words = (len(mm) - body_off) // 8

            @settings(max_examples=80, suppress_health_check=list(HealthCheck), deadline=None)
            @given(
                st.lists(
                    st.tuples(
                        st.one_of(
                            st.integers(0, slots_off // 8 - 1),  # control + subscribers
                            st.sampled_from(range(slots_off // 8, words, 5)),  # slot headers
                        ),
                        st.integers(0, (1 << 64) - 1),
                    ),
                    min_size=1,
                    max_size=4,
                )
            )
            def use(ops: list[tuple[int, int]]) -> None:
                mm[:] = original
                for word, value in ops:
                    struct.pack_into("<Q", mm, body_off + 8 * word, value)
                t0 = time.perf_counter()
                _exercise(name)
                assert time.perf_counter() - t0 < 2.0

            use()
            mm[:] = original
    finally:
        pub.close()
        pub.unlink()


def _exercise(name: str) -> None:
    try:
        with subscribe(name, "oldest") as sub:
            for _ in range(8):
                try:
                    sub.recv(0)
                except ShmkitError:
                    pass
            sub.statistics()
    except ShmkitError:
        pass
    seg: Any = None
    try:
        seg = Segment._open_object(name, None, readonly=True, attach=False)
        describe(seg)
    except ShmkitError:
        pass
    finally:
        if seg is not None:
            seg.close()
