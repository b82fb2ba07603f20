"""Codecs: how a Queue turns items into bytes and back.

The default codec, ``"bytes"``, moves raw bytes-like objects (``bytes``,
``bytearray``, ``memoryview``, numpy arrays, anything with the buffer
protocol) and hands back ``bytes``. It never interprets what it reads, so a
hostile or buggy writer can at most send wrong bytes.

``"pickle"`` is opt-in because unpickling runs code chosen by whoever wrote
the message: every process that can write the queue (its uid, or the group
when ``mode`` widens it) must be fully trusted. ``"msgpack"`` is safe to
decode but needs the optional ``msgpack`` package (``pip install
shmkit[msgpack]``).

A custom codec is any object with a short ``name`` and ``encode``/``decode``
methods (see :class:`Codec`); it must be picklable if the queue handle is.
"""

from __future__ import annotations

import pickle
from typing import TYPE_CHECKING, Any, Final, Protocol, TypeVar

if TYPE_CHECKING:
    from typing_extensions import Buffer

__all__ = ["Codec", "MsgpackCodec", "PickleCodec", "RawCodec", "as_bytes", "resolve"]

T = TypeVar("T")

#: Longest codec name stored in a queue's header (bytes of ASCII).
NAME_MAX: Final = 16


class Codec(Protocol[T]):
    """Turns items of type ``T`` into bytes for the queue, and back.

    ``decode`` sees exactly the bytes ``encode`` produced, possibly written by
    another process; it must raise (not crash) on bytes it does not accept.
    """

    @property
    def name(self) -> str:
        """A short ASCII name recorded in the queue's header (for ``shmkit info``)."""
        ...

    def encode(self, item: T) -> Buffer:
        """Return a bytes-like object (one contiguous byte buffer) for ``item``."""
        ...

    def decode(self, data: bytes) -> T:
        """Return the item ``data`` encodes."""
        ...


def flat_view(data: Any, what: str) -> memoryview:
    """``data`` as a flat byte view; TypeError naming ``what`` for a non-contiguous buffer."""
    view = memoryview(data)
    if view.ndim != 1 or view.format != "B":
        try:
            view = view.cast("B")
        except TypeError:
            raise TypeError(
                f"{what} must be C-contiguous buffers (use numpy.ascontiguousarray or bytes())"
            ) from None
    return view


def as_bytes(item: Buffer) -> bytes | bytearray | memoryview:
    """Return ``item`` as a flat, C-contiguous byte buffer whose ``len`` is its size in bytes.

    Raises:
        TypeError: ``item`` does not support the buffer protocol (for
            example ``str``: encode it, or use ``codec="pickle"``).
    """
    if isinstance(item, (bytes, bytearray)):
        return item
    try:
        view = memoryview(item)
    except TypeError:
        raise TypeError(
            f"the 'bytes' codec sends bytes-like objects, not {type(item).__name__}; "
            "encode it first or create the queue with codec='pickle' or 'msgpack'"
        ) from None
    if not view.c_contiguous:
        return view.tobytes()  # one extra copy, but a correct one
    if view.ndim != 1 or view.format != "B":
        return view.cast("B")
    return view


class RawCodec:
    """The default: bytes-like objects in, ``bytes`` out; never interprets data."""

    name: Final = "bytes"

    def encode(self, item: Buffer) -> Buffer:
        return as_bytes(item)

    def decode(self, data: bytes) -> bytes:
        return data

    def __reduce__(self) -> tuple[Any, ...]:
        return (RawCodec, ())


class PickleCodec:
    """Any picklable object. Only for queues whose every writer is fully trusted.

    Unpickling data another process wrote can execute arbitrary code, which is
    why this codec is never the default (RELIABILITY.md R1).
    """

    name: Final = "pickle"

    def __init__(self, protocol: int = pickle.HIGHEST_PROTOCOL) -> None:
        self.protocol = protocol

    def encode(self, item: Any) -> Buffer:
        return pickle.dumps(item, protocol=self.protocol)

    def decode(self, data: bytes) -> Any:
        return pickle.loads(data)

    def __reduce__(self) -> tuple[Any, ...]:
        return (PickleCodec, (self.protocol,))


class MsgpackCodec:
    """msgpack-serialisable values (None, bool, int, float, str, bytes, lists, dicts)."""

    name: Final = "msgpack"

    def __init__(self) -> None:
        try:
            import msgpack  # noqa: PLC0415 - optional dependency, imported on demand
        except ImportError:
            raise ImportError(
                "codec='msgpack' needs the msgpack package: pip install 'shmkit[msgpack]'"
            ) from None
        self._packb = msgpack.packb
        self._unpackb = msgpack.unpackb

    def encode(self, item: Any) -> Buffer:
        data: bytes = self._packb(item, use_bin_type=True)
        return data

    def decode(self, data: bytes) -> Any:
        return self._unpackb(data, raw=False)

    def __reduce__(self) -> tuple[Any, ...]:
        return (MsgpackCodec, ())


_BUILTIN: Final = {"bytes": RawCodec, "pickle": PickleCodec, "msgpack": MsgpackCodec}


def resolve(codec: object) -> Codec[Any]:
    """Turn a ``codec=`` argument (a builtin name or a Codec object) into a Codec.

    Raises:
        ValueError: an unknown codec name.
        TypeError: an object that is not a codec.
        ImportError: ``"msgpack"`` without the msgpack package.
    """
    if isinstance(codec, str):
        factory = _BUILTIN.get(codec)
        if factory is None:
            raise ValueError(
                f"unknown codec {codec!r}; use 'bytes', 'pickle', 'msgpack' or a Codec"
            )
        made: Codec[Any] = factory()
        return made
    if not all(callable(getattr(codec, m, None)) for m in ("encode", "decode")):
        raise TypeError(f"codec must be a name or an object with encode/decode, not {codec!r}")
    name = getattr(codec, "name", None)
    if not isinstance(name, str) or not name.isascii() or not 0 < len(name) <= NAME_MAX:
        raise TypeError(f"codec {codec!r} needs a 'name' of 1 to {NAME_MAX} ASCII characters")
    custom: Codec[Any] = codec  # type: ignore[assignment]
    return custom
