"""T19 for SharedArray and Latest: random and mutated params give LayoutError, nothing else.

Each layout has a pure parse step (``ndarray.parse_params``, ``latest.parse_params``,
both built on ``_dtype.parse_meta``) and a numpy step (``_dtype.to_dtype``). Whatever
the bytes, the pair either yields a description whose dtype holds no objects and
whose sizes agree, or raises LayoutError, in bounded time.
"""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from shmkit import _dtype, _layout, latest, ndarray
from shmkit._layout import Kind
from shmkit._shm import latest_slot
from shmkit.errors import LayoutError

FAST = settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)


def _array_params(shape: tuple[int, ...], dtype: Any, order: str = "C") -> bytes:
    dims, dt, order = _dtype.normalize(shape, dtype, order)
    return ndarray._params(dims, dt, order)


def _array_body(params: bytes) -> int:
    """The body size an ARRAY params blob claims (from its nbytes field)."""
    nbytes = int.from_bytes(params[8 + 16 : 8 + 24], "little") if len(params) >= 32 else 0
    return _layout.align(ndarray.DATA_OFF + nbytes)


VALID_ARRAY = [
    _array_params((3, 4), "<f8"),
    _array_params((2,), np.dtype([("a", ">i4"), ("b", "u1", (2, 2)), ("c", "M8[ms]")])),
    _array_params((5, 1), np.dtype([(("ttl", "x"), "<c8"), ("s", "U3")], align=True), "F"),
    _array_params((), "|b1"),
]


def _latest_params(**kwargs: Any) -> bytes:
    return latest_slot.new_params(
        size=kwargs.get("size"),
        shape=kwargs.get("shape"),
        dtype=kwargs.get("dtype"),
        order=kwargs.get("order", "C"),
        slots=kwargs.get("slots", 3),
        checksum=kwargs.get("checksum", False),
    )


VALID_LATEST = [
    _latest_params(size=64),
    _latest_params(size=0, slots=2, checksum=True),
    _latest_params(shape=(4, 4), dtype=np.dtype([("p", "<f4", (3,)), ("q", ">u2")]), slots=5),
]


def _check_array(params: bytes, body_size: int) -> None:
    t0 = time.perf_counter()
    try:
        meta = ndarray.parse_params(params, body_size, "fuzz")
    except LayoutError:
        pass
    else:
        assert meta.nbytes == meta.count * meta.itemsize
        assert body_size == _layout.align(ndarray.DATA_OFF + meta.nbytes)
        _check_dtype(meta.spec, meta.itemsize)
    assert time.perf_counter() - t0 < 0.1


def _check_latest(params: bytes, body_size: int) -> None:
    t0 = time.perf_counter()
    try:
        parsed = latest.parse_params(params, body_size, "fuzz")
    except LayoutError:
        pass
    else:
        assert parsed.body_size == body_size and 2 <= parsed.nslots <= 16
        if parsed.array is not None:
            assert parsed.array.nbytes == parsed.size
            _check_dtype(parsed.array.spec, parsed.array.itemsize)
    assert time.perf_counter() - t0 < 0.1


def _check_dtype(spec: Any, itemsize: int) -> None:
    try:
        dt = _dtype.to_dtype(spec, itemsize, "fuzz")
    except LayoutError:
        return
    assert not dt.hasobject and dt.itemsize == itemsize


# ------------------------------------------------------------------ valid descriptions


@given(
    hnp.nested_dtypes(
        subtype_strategy=hnp.scalar_dtypes()
        | hnp.byte_string_dtypes()
        | hnp.unicode_string_dtypes()
        | st.sampled_from([np.dtype(">f8"), np.dtype("<i2"), np.dtype("V3")]),
        max_itemsize=512,
    ),
    hnp.array_shapes(min_dims=0, max_dims=4, max_side=5),
    st.sampled_from("CF"),
)
@FAST
def test_every_shareable_dtype_round_trips(dtype: np.dtype[Any], shape: Any, order: str) -> None:
    try:
        dims, dt, order = _dtype.normalize(shape, dtype, order)
    except TypeError:
        assume(False)  # a dtype shmkit refuses up front (zero-size, over-long names...)
        return
    params = ndarray._params(dims, dt, order)
    meta = ndarray.parse_params(params, _array_body(params), "round trip")
    assert meta.shape == dims and meta.order == order
    assert _dtype.to_dtype(meta.spec, meta.itemsize, "round trip") == dt
    assert json.loads(json.dumps(meta.spec)) == meta.spec


def test_the_valid_params_parse() -> None:
    for params in VALID_ARRAY:
        ndarray.parse_params(params, _array_body(params), "valid")
    for params in VALID_LATEST:
        parsed = latest.parse_params(params, latest_slot.body_size(params), "valid")
        assert parsed.body_size == latest_slot.body_size(params)


# ------------------------------------------------------------------ random and mutated bytes


@FAST
@given(st.binary(max_size=512), st.integers(min_value=0, max_value=1 << 41))
def test_random_array_params(params: bytes, body_size: int) -> None:
    _check_array(params, body_size)


@FAST
@given(st.binary(max_size=512), st.integers(min_value=0, max_value=1 << 41))
def test_random_latest_params(params: bytes, body_size: int) -> None:
    _check_latest(params, body_size)


def _mutations() -> st.SearchStrategy[list[tuple[str, int, int]]]:
    op = st.tuples(
        st.sampled_from(["set", "insert", "delete", "truncate"]),
        st.integers(min_value=0, max_value=4096),
        st.integers(min_value=0, max_value=255),
    )
    return st.lists(op, min_size=1, max_size=6)


def _mutate(data: bytes, ops: list[tuple[str, int, int]]) -> bytes:
    buf = bytearray(data)
    for kind, where, value in ops:
        pos = where % max(1, len(buf))
        if kind == "set" and buf:
            buf[pos] = value
        elif kind == "insert":
            buf.insert(pos, value)
        elif kind == "delete" and buf:
            del buf[pos]
        elif kind == "truncate":
            del buf[pos:]
    return bytes(buf)


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.sampled_from(VALID_ARRAY), _mutations(), st.booleans())
def test_mutated_array_params(params: bytes, ops: list[tuple[str, int, int]], same: bool) -> None:
    mutated = _mutate(params, ops)
    body = _array_body(params) if same else _array_body(mutated + bytes(32))
    _check_array(mutated, body)


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.sampled_from(VALID_LATEST), _mutations())
def test_mutated_latest_params(params: bytes, ops: list[tuple[str, int, int]]) -> None:
    _check_latest(_mutate(params, ops), latest_slot.body_size(params))


# ------------------------------------------------------------------ hostile dtype descriptions

_leaf = st.sampled_from(
    [
        "<f8", "|u1", ">i4", "|b1", "<U2", "|S3", "|V2", "<M8[ns]", "<m8",
        "|O8", "<O8", "|O", "O", "<f3", "|f8", "<u1", ">b1", "|U4", "<S2", "<M8",
        "<M8[us]x", "", "<c16", "<f16", "<i9999999999", "|V0", "|S0",
    ]
) | st.text(max_size=12)  # fmt: skip
_ints = st.integers(min_value=-2, max_value=1 << 33) | st.sampled_from([0, 1, 8, 1 << 31])
_spec: st.SearchStrategy[Any] = st.recursive(
    _leaf | st.none() | st.booleans() | _ints,
    lambda inner: (
        st.fixed_dictionaries({"base": inner, "shape": st.lists(_ints, max_size=4)})
        | st.fixed_dictionaries(
            {
                "names": st.lists(st.text(max_size=4) | st.none(), max_size=4),
                "formats": st.lists(inner, max_size=4),
                "offsets": st.lists(_ints, max_size=4),
                "itemsize": _ints,
                "aligned": st.booleans() | _ints,
            },
            optional={"titles": st.lists(st.text(max_size=3) | st.none(), max_size=4)},
        )
        | st.lists(inner, max_size=3)
        | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=20,
)


@settings(max_examples=800, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(_spec, st.integers(min_value=1, max_value=1 << 20))
def test_hostile_dtype_descriptions(spec: Any, itemsize: int) -> None:
    """Object fields, absurd sizes and junk in the JSON: LayoutError, or a safe dtype."""
    try:
        size = _dtype.spec_itemsize(spec, "fuzz")
    except LayoutError:
        return
    assert 0 <= size <= _dtype.MAX_ITEMSIZE
    _check_dtype(spec, size)
    _check_dtype(spec, itemsize)  # a header whose itemsize disagrees
    text = json.dumps(spec).encode()
    meta = (
        np.array([1], "<u2").tobytes()
        + b"C\0"
        + np.array([len(text)], "<u4").tobytes()
        + np.array([max(size, 1), max(size, 1) * 2, 2], "<u8").tobytes()
        + text
    )
    params = ndarray._PARAMS.pack(ndarray.PARAMS_VERSION, 0) + meta
    _check_array(params, _layout.align(ndarray.DATA_OFF + 2 * max(size, 1)))


def test_object_dtypes_never_parse() -> None:
    for spec in ("|O8", "|O", {"names": ["a"], "formats": ["|O8"], "offsets": [0],
                                "itemsize": 8, "aligned": False}):  # fmt: skip
        try:
            _dtype.spec_itemsize(spec, "objects")
        except LayoutError:
            continue
        raise AssertionError(f"{spec} parsed")


def test_deep_nesting_is_bounded() -> None:
    deep: Any = "<f8"
    for _ in range(40):
        deep = {"base": deep, "shape": [1]}
    try:
        _dtype.spec_itemsize(deep, "deep")
    except LayoutError as exc:
        assert "deeper" in str(exc)
    text = b"[" * 60000 + b"]" * 60000  # JSON the decoder would recurse on
    meta = (
        np.array([0], "<u2").tobytes()
        + b"C\0"
        + np.array([len(text)], "<u4").tobytes()
        + np.array([8, 8], "<u8").tobytes()
        + text
    )
    t0 = time.perf_counter()
    try:
        _dtype.parse_meta(meta, "deep json")
    except LayoutError:
        pass
    assert time.perf_counter() - t0 < 0.5


# ------------------------------------------------------------------ whole images


def _image(kind: Kind, params: bytes, body_size: int) -> tuple[bytes, int]:
    image = bytearray(
        _layout.build(
            kind=kind,
            mode=0o600,
            name="img",
            params=params,
            body_size=body_size,
            nsems=0,
            attach_slots=8,
            creator_pid=1,
            creator_start=1,
            created_ns=1,
            boot_id=bytes(16),
            uid=0,
        )
    )
    image[_layout.STATE_OFFSET : _layout.STATE_OFFSET + 4] = _layout.STATE_READY.to_bytes(
        4, "little"
    )
    return bytes(image), len(image) + body_size


IMAGES = [_image(Kind.ARRAY, p, _array_body(p)) for p in VALID_ARRAY] + [
    _image(Kind.LATEST, p, latest_slot.body_size(p)) for p in VALID_LATEST
]


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.sampled_from(IMAGES), _mutations())
def test_mutated_whole_images_give_only_layout_errors(
    image: tuple[bytes, int], ops: list[tuple[str, int, int]]
) -> None:
    """The open path without the mapping: common header, then the kind's params."""
    data, real_size = image
    mutated = _mutate(data, ops)
    try:
        header = _layout.parse(mutated, real_size, "image")
        if header.kind is Kind.ARRAY:
            _check_array(header.params, header.body_size)
        elif header.kind is Kind.LATEST:
            _check_latest(header.params, header.body_size)
    except LayoutError:
        pass
