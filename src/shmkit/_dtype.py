"""numpy dtype, shape and order <-> header bytes: a safe, parseable, bounded encoding.

SharedArray and Latest (array mode) store what a reader needs to rebuild the
array in their immutable header params. The format never uses eval or pickle:
the dtype is a small JSON tree that this module validates *without numpy*
(so ``describe`` and the fuzz tests need no numpy), then rebuilds with plain
``np.dtype(...)`` calls and checks again.

Array meta, little-endian (part of an object's params)::

    offset size field
         0    2 ndim        0 .. MAX_NDIM
         2    1 order       b"C" or b"F"
         3    1 reserved    zero
         4    4 spec_len    bytes of the dtype spec that follows the shape
         8    8 itemsize    1 .. MAX_ITEMSIZE; must equal the spec's size
        16    8 nbytes      product(shape) * itemsize; <= MAX_BODY
        24  8*n shape       each dimension <= MAX_BODY
    24+8n   spec_len        dtype spec, UTF-8 JSON (below)

The dtype spec is one of:

- a type string as numpy writes it (``dtype.str``): ``"<f8"``, ``">i4"``,
  ``"|u1"``, ``"|b1"``, ``"<c16"``, ``"|S10"``, ``"<U5"``, ``"|V8"``,
  ``"<M8[ns]"``, ``"<m8[s]"``. Kinds: b i u f c m M S U V. Never ``O``.
- a subarray ``{"base": spec, "shape": [dims]}``;
- a structured dtype ``{"names": [...], "formats": [spec...], "offsets": [...],
  "itemsize": n, "aligned": bool}`` with optional ``"titles"`` (str or null),
  the dict form ``np.dtype`` accepts.

Object dtypes, and structured dtypes containing them, are rejected both when
written (TypeError) and when read (LayoutError): an object field read through
a buffer is a pointer forged by whoever wrote the memory.
"""

from __future__ import annotations

import json
import operator
import re
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, TypeAlias

from ._layout import MAX_BODY
from .errors import LayoutError

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import DTypeLike

__all__ = [
    "ArrayMeta",
    "MAX_NDIM",
    "dtype_spec",
    "encode_meta",
    "numpy",
    "parse_meta",
    "spec_itemsize",
    "to_dtype",
]

#: Most dimensions an array may have (numpy 1.x's limit; numpy 2 allows 64).
MAX_NDIM: Final = 32
#: Largest itemsize (numpy 1.x stores itemsize in a C int).
MAX_ITEMSIZE: Final = (1 << 31) - 1
#: Most fields in all structured dtypes of one spec, and deepest nesting.
MAX_FIELDS: Final = 4096
MAX_DEPTH: Final = 16
MAX_FIELD_NAME: Final = 256

META: Final = struct.Struct("<HccIQQ")
assert META.size == 24

_TYPESTR: Final = re.compile(r"([<>|])([biufcmMSUV])([0-9]{1,10})(\[[0-9]{0,9}[A-Za-z]{1,3}\])?")
_SIZES: Final[dict[str, tuple[int, ...]]] = {
    "b": (1,),
    "i": (1, 2, 4, 8),
    "u": (1, 2, 4, 8),
    "f": (2, 4, 8, 10, 12, 16),
    "c": (8, 16, 20, 24, 32),
    "m": (8,),
    "M": (8,),
}

Spec: TypeAlias = str | dict[str, Any]


def numpy() -> Any:
    """Import numpy, or raise ImportError saying how to get it."""
    try:
        import numpy as np  # noqa: PLC0415 - numpy is an optional extra, imported on first use
    except ImportError as exc:  # pragma: no cover - numpy is installed in the test env
        raise ImportError(
            "shmkit's numpy support needs numpy: pip install 'shmkit[numpy]'"
        ) from exc
    return np


@dataclass(frozen=True)
class ArrayMeta:
    """A validated array description (no numpy objects: safe to build from any bytes)."""

    shape: tuple[int, ...]
    order: str
    itemsize: int
    nbytes: int
    spec: Spec

    @property
    def count(self) -> int:
        """Number of elements."""
        return self.nbytes // self.itemsize


# ----------------------------------------------------------------- writing


def dtype_spec(dt: np.dtype[Any]) -> Spec:
    """The spec of a numpy dtype; TypeError for dtypes shmkit cannot share.

    >>> dtype_spec(np.dtype(">f4"))
    '>f4'
    """
    if dt.hasobject:
        raise TypeError(f"dtype {dt} holds Python objects; shared memory can only hold raw data")
    if dt.subdtype is not None:
        base, shape = dt.subdtype
        return {"base": dtype_spec(base), "shape": list(shape)}
    if dt.names is not None:
        assert dt.fields is not None
        formats: list[Spec] = []
        offsets: list[int] = []
        titles: list[str | None] = []
        for field in dt.names:
            if not 0 < len(field) <= MAX_FIELD_NAME:
                raise TypeError(
                    f"dtype {dt}: field names must have 1 to {MAX_FIELD_NAME} characters"
                )
            entry = dt.fields[field]
            formats.append(dtype_spec(entry[0]))
            offsets.append(int(entry[1]))
            title = entry[2] if len(entry) > 2 else None
            if title is not None and not (isinstance(title, str) and 0 < len(title) <= 256):
                raise TypeError(
                    f"dtype {dt}: field titles must be short strings, not {title!r:.40}"
                )
            titles.append(title)
        spec: dict[str, Any] = {
            "names": list(dt.names),
            "formats": formats,
            "offsets": offsets,
            "itemsize": dt.itemsize,
            "aligned": bool(dt.isalignedstruct),
        }
        if any(t is not None for t in titles):
            spec["titles"] = titles
        return spec
    if not _TYPESTR.fullmatch(dt.str):
        raise TypeError(f"dtype {dt} ({dt.str!r}) is not a fixed-size numpy dtype shmkit can share")
    return str(dt.str)


def encode_meta(shape: tuple[int, ...], dt: np.dtype[Any], order: str) -> bytes:
    """Array meta bytes for ``shape``/``dt``/``order`` (already normalised and checked)."""
    spec = dtype_spec(dt)
    text = json.dumps(spec, separators=(",", ":"), ensure_ascii=True).encode()
    count = 1
    for dim in shape:
        count *= dim
    head = META.pack(len(shape), order.encode(), b"\0", len(text), dt.itemsize, count * dt.itemsize)
    return head + struct.pack(f"<{len(shape)}Q", *shape) + text


# ----------------------------------------------------------------- reading


def parse_meta(buf: bytes, what: str) -> tuple[ArrayMeta, int]:
    """Validate array meta at the start of ``buf``; return it and the bytes it used.

    Pure Python, bounded time and memory; every failure is a LayoutError.
    """
    if len(buf) < META.size:
        raise LayoutError(f"{what}: array description is truncated")
    ndim, order_b, reserved, spec_len, itemsize, nbytes = META.unpack_from(buf, 0)
    if ndim > MAX_NDIM:
        raise LayoutError(f"{what}: {ndim} dimensions (the limit is {MAX_NDIM})")
    if order_b not in (b"C", b"F"):
        raise LayoutError(f"{what}: order {order_b!r} is not C or F")
    if reserved != b"\0":
        raise LayoutError(f"{what}: reserved array-description byte is not zero")
    if not 1 <= itemsize <= MAX_ITEMSIZE:
        raise LayoutError(f"{what}: itemsize {itemsize} is out of range")
    if nbytes > MAX_BODY:
        raise LayoutError(f"{what}: {nbytes} data bytes is beyond shmkit's limit")
    end = META.size + 8 * ndim + spec_len
    if end > len(buf):
        raise LayoutError(f"{what}: array description is truncated")
    shape = struct.unpack_from(f"<{ndim}Q", buf, META.size)
    count = 1
    for dim in shape:
        if dim > MAX_BODY:
            raise LayoutError(f"{what}: dimension {dim} is out of range")
        count *= dim
        if count > MAX_BODY:  # checked as we go, so the product stays small
            raise LayoutError(f"{what}: shape {shape} is too large")
    if count * itemsize != nbytes:
        raise LayoutError(
            f"{what}: shape {shape} x itemsize {itemsize} != {nbytes} data bytes recorded"
        )
    try:
        spec = json.loads(bytes(buf[META.size + 8 * ndim : end]).decode("ascii"))
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise LayoutError(f"{what}: dtype description is not valid JSON") from None
    budget = [MAX_FIELDS]
    if spec_itemsize(spec, what, 0, budget) != itemsize:
        raise LayoutError(f"{what}: dtype description does not match itemsize {itemsize}")
    return ArrayMeta(tuple(shape), order_b.decode(), itemsize, nbytes, spec), end


def _int(value: object, what: str, field: str, low: int = 0, high: int = MAX_ITEMSIZE) -> int:
    if type(value) is not int or not low <= value <= high:
        raise LayoutError(f"{what}: dtype {field} {value!r} is not an int in [{low}, {high}]")
    return value


def spec_itemsize(spec: object, what: str, depth: int = 0, budget: list[int] | None = None) -> int:
    """Validate a dtype spec structurally and return its itemsize (no numpy)."""
    if budget is None:
        budget = [MAX_FIELDS]
    if depth > MAX_DEPTH:
        raise LayoutError(f"{what}: dtype nests deeper than {MAX_DEPTH}")
    if isinstance(spec, str):
        match = _TYPESTR.fullmatch(spec)
        if match is None:
            raise LayoutError(f"{what}: {spec[:40]!r} is not a supported dtype")
        order, kind, digits, unit = match.groups()
        size = int(digits)
        if (unit is not None) != (kind in "mM"):
            raise LayoutError(f"{what}: dtype {spec!r} has a misplaced time unit")
        if kind in _SIZES:
            if size not in _SIZES[kind]:
                raise LayoutError(f"{what}: dtype {spec!r} has an impossible size")
            if (order == "|") != (size == 1):  # numpy writes "|" exactly for 1-byte numbers
                raise LayoutError(f"{what}: dtype {spec!r} has an inconsistent byte order")
        elif kind == "U":
            if order == "|":
                raise LayoutError(f"{what}: dtype {spec!r} needs a byte order")
            size *= 4
        elif order != "|":
            raise LayoutError(f"{what}: dtype {spec!r} must not have a byte order")
        if not 1 <= size <= MAX_ITEMSIZE:
            raise LayoutError(f"{what}: dtype {spec!r} size is out of range")
        return size
    if not isinstance(spec, dict):
        raise LayoutError(f"{what}: dtype description of type {type(spec).__name__}")
    budget[0] -= 1
    if budget[0] < 0:
        raise LayoutError(f"{what}: dtype has more than {MAX_FIELDS} parts")
    keys = set(spec)
    if keys == {"base", "shape"}:
        shape = spec["shape"]
        if not isinstance(shape, list) or len(shape) > MAX_NDIM:
            raise LayoutError(f"{what}: subarray shape {str(shape)[:40]} is invalid")
        size = spec_itemsize(spec["base"], what, depth + 1, budget)
        for dim in shape:
            size *= _int(dim, what, "subarray dimension")
            if size > MAX_ITEMSIZE:
                raise LayoutError(f"{what}: subarray is too large")
        return size
    if keys not in ({"names", "formats", "offsets", "itemsize", "aligned"},
                    {"names", "formats", "offsets", "itemsize", "aligned", "titles"}):  # fmt: skip
        raise LayoutError(f"{what}: dtype description has keys {sorted(keys)[:8]}")
    names, formats, offsets = spec["names"], spec["formats"], spec["offsets"]
    titles: Any = spec.get("titles", [None] * len(names) if isinstance(names, list) else None)
    itemsize = _int(spec["itemsize"], what, "itemsize")
    if type(spec["aligned"]) is not bool:
        raise LayoutError(f"{what}: dtype 'aligned' must be true or false")
    if not all(isinstance(x, list) for x in (names, formats, offsets, titles)):
        raise LayoutError(f"{what}: structured dtype parts must be lists")
    if not len(names) == len(formats) == len(offsets) == len(titles):
        raise LayoutError(f"{what}: structured dtype parts differ in length")
    seen: set[str] = set()
    for name, fmt, offset, title in zip(names, formats, offsets, titles, strict=True):
        for label in (name, title):
            if label is None and label is title:
                continue
            if not isinstance(label, str) or not 0 < len(label) <= MAX_FIELD_NAME or label in seen:
                raise LayoutError(f"{what}: invalid or repeated field name {str(label)[:40]!r}")
            seen.add(label)
        size = spec_itemsize(fmt, what, depth + 1, budget)
        if _int(offset, what, "field offset") + size > itemsize:
            raise LayoutError(f"{what}: field {name!r} ends past the itemsize {itemsize}")
    return itemsize


def to_dtype(spec: Spec, itemsize: int, what: str) -> np.dtype[Any]:
    """Build the numpy dtype of a spec that :func:`spec_itemsize` accepted; LayoutError if odd."""
    npm = numpy()
    try:
        dt: np.dtype[Any] = _build(npm, spec)
    except (TypeError, ValueError, OverflowError, KeyError, RecursionError) as exc:
        raise LayoutError(f"{what}: numpy rejects the stored dtype ({exc})") from None
    if dt.hasobject:
        raise LayoutError(f"{what}: stored dtype holds Python objects")
    if dt.itemsize != itemsize:
        raise LayoutError(f"{what}: stored dtype is {dt.itemsize} bytes, header says {itemsize}")
    return dt


def _build(np: Any, spec: Spec) -> Any:
    if isinstance(spec, str):
        return np.dtype(spec)
    if "base" in spec:
        return np.dtype((_build(np, spec["base"]), tuple(spec["shape"])))
    fields: dict[str, Any] = {
        "names": spec["names"],
        "formats": [_build(np, f) for f in spec["formats"]],
        "offsets": spec["offsets"],
        "itemsize": spec["itemsize"],
    }
    if "titles" in spec:
        fields["titles"] = spec["titles"]
    return np.dtype(fields, align=spec["aligned"])


def normalize(
    shape: object, dtype: DTypeLike, order: object
) -> tuple[tuple[int, ...], np.dtype[Any], str]:
    """Check user arguments; fold a subarray dtype into the shape as numpy does.

    Raises TypeError (not an int shape, object or unsupported dtype) or
    ValueError (negative dimension, too many dimensions, too large, bad order).
    """
    np = numpy()
    if order not in ("C", "F"):
        raise ValueError(f"order must be 'C' or 'F', not {order!r}")
    if isinstance(shape, bool):
        raise TypeError("shape must be an int or a sequence of ints")
    try:
        dims: tuple[int, ...] = (operator.index(shape),)  # type: ignore[arg-type]
    except TypeError:
        if not hasattr(shape, "__iter__"):
            raise TypeError(
                f"shape must be an int or a sequence of ints, not {type(shape).__name__}"
            ) from None
        dims = tuple(operator.index(d) for d in shape)
    dt = np.dtype(dtype)
    if dt.subdtype is not None:
        base, sub = dt.subdtype
        dims, dt = dims + tuple(sub), base
    if len(dims) > MAX_NDIM:
        raise ValueError(f"{len(dims)} dimensions; the limit is {MAX_NDIM}")
    if any(d < 0 for d in dims):
        raise ValueError(f"shape {dims} has a negative dimension")
    if dt.hasobject:
        raise TypeError(f"dtype {dt} holds Python objects; shared memory can only hold raw data")
    if dt.itemsize == 0:
        raise TypeError(f"dtype {dt} has no size")
    dtype_spec(dt)  # TypeError for kinds shmkit cannot share
    nbytes = dt.itemsize
    for d in dims:
        nbytes *= d
    if nbytes > MAX_BODY:
        raise ValueError(f"an array of {nbytes} bytes is beyond shmkit's limit of {MAX_BODY}")
    return dims, dt, order


def raw_bytes(arr: Any, order: str | None = None) -> Any:
    """A flat uint8 view of an array's memory, in ``order`` (default: its own); no copy."""
    if order is None:
        order = "F" if arr.flags.f_contiguous and not arr.flags.c_contiguous else "C"
    if not (arr.flags.c_contiguous if order == "C" else arr.flags.f_contiguous):
        raise ValueError(f"the array must be {order}-contiguous")
    # Reshaping a contiguous array in its own order is always a view.
    return arr.reshape(-1, order=order).view("u1")
