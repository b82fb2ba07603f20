"""T19 for the common header: random and mutated bytes give LayoutError, nothing else."""

from __future__ import annotations

import time

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shmkit import _layout
from shmkit._layout import Kind
from shmkit.errors import LayoutError

VALID = _layout.build(
    kind=Kind.QUEUE,
    mode=0o600,
    name="fuzzed",
    params=b"\x01\x02\x03\x04" * 8,
    body_size=4096,
    nsems=2,
    attach_slots=64,
    creator_pid=1234,
    creator_start=99,
    created_ns=1,
    boot_id=bytes(16),
    uid=0,
)
VALID_READY = bytearray(VALID)
VALID_READY[_layout.STATE_OFFSET : _layout.STATE_OFFSET + 4] = _layout.STATE_READY.to_bytes(
    4, "little"
)
REAL_SIZE = _layout.offsets(6, 32, 64)[1] + 4096


def _parse(image: bytes, real_size: int) -> None:
    t0 = time.perf_counter()
    try:
        _layout.parse(image, real_size, "fuzz")
    except LayoutError:
        pass
    assert time.perf_counter() - t0 < 0.1  # bounded time, whatever the bytes


def test_the_valid_image_parses() -> None:
    header = _layout.parse(bytes(VALID_READY), REAL_SIZE, "fuzz")
    assert header.kind is Kind.QUEUE and header.name == "fuzzed" and header.body_size == 4096


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=1024), st.integers(min_value=0, max_value=1 << 40))
def test_random_bytes(image: bytes, real_size: int) -> None:
    _parse(image, real_size)


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(st.integers(min_value=0, max_value=len(VALID) - 1), st.integers(0, 255)),
        min_size=1,
        max_size=8,
    ),
    st.integers(min_value=0, max_value=REAL_SIZE * 2),
)
def test_mutated_bytes(flips: list[tuple[int, int]], real_size: int) -> None:
    image = bytearray(VALID_READY)
    for offset, value in flips:
        image[offset] = value
    _parse(bytes(image), real_size)


@settings(max_examples=300)
@given(
    st.sampled_from([24, 32, 36, 40, 48, 56, 60]),
    st.integers(min_value=0, max_value=(1 << 64) - 1),
)
def test_huge_size_fields(offset: int, value: int) -> None:
    """Sizes and offsets that overflow or point far away never allocate or crash."""
    image = bytearray(VALID_READY)
    width = 8 if offset in (24, 40, 48) else 4
    image[offset : offset + width] = (value % (1 << (8 * width))).to_bytes(width, "little")
    _parse(bytes(image), REAL_SIZE)


@settings(max_examples=200)
@given(st.binary(min_size=1, max_size=64), st.integers(min_value=0, max_value=len(VALID)))
def test_truncated_and_extended(tail: bytes, cut: int) -> None:
    _parse(bytes(VALID_READY[:cut]) + tail, REAL_SIZE)


def test_every_crc_covered_byte_mutation_is_rejected() -> None:
    """Every change to any byte of [0, attach_off) but the state word raises LayoutError.

    The fields no other check looks at (creator pid and start, created_ns,
    boot id, uid, name bytes, params, padding) are caught by the header CRC
    alone, so this fails if the CRC check is lost.
    """
    attach_off = _layout.offsets(6, 32, 64)[0]
    state = range(_layout.STATE_OFFSET, _layout.STATE_OFFSET + 4)
    accepted = []
    for offset in range(attach_off):
        if offset in state:
            continue
        for mask in range(1, 256):
            image = bytearray(VALID_READY)
            image[offset] ^= mask
            try:
                _layout.parse(bytes(image), REAL_SIZE, "fuzz")
            except LayoutError:
                continue
            accepted.append((offset, mask))
    assert not accepted, f"{len(accepted)} mutations accepted, e.g. {accepted[:5]}"
