"""Broadcast's views into slots: a received :class:`Message` and a publisher's :class:`Loan`.

Both are windows onto one slot of the ring that the handle which made them
(a Subscriber, a Publisher in ``shmkit.broadcast``) validates or publishes;
they reach back to it only through the small protocols below.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol

from .._codec import flat_view
from ..errors import MessageTooLarge, Overrun

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

__all__ = ["Loan", "Message", "array_maker", "as_bytes", "check_int"]


def check_int(value: object, what: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int, not {type(value).__name__}")
    if not low <= value <= high:
        raise ValueError(f"{what} must be between {low} and {high}, not {value}")
    return value


def as_bytes(data: Any) -> memoryview:
    """``data`` as a flat byte view (TypeError for a non-contiguous buffer)."""
    return flat_view(data, "broadcast messages")


def array_maker(
    dtype: npt.DTypeLike, shape: int | Sequence[int] | None, nbytes: int | None, slot_size: int
) -> tuple[Any, int]:
    """(view -> ndarray function, nbytes) for a loan with a numpy dtype and shape."""
    import numpy  # noqa: PLC0415 - numpy is an optional extra, imported on first use

    dt = numpy.dtype(dtype)
    if dt.hasobject or dt.itemsize == 0:
        raise TypeError(f"dtype {dt} cannot live in shared memory")
    if shape is None:
        shape = (slot_size if nbytes is None else nbytes) // dt.itemsize
    dims = (shape,) if isinstance(shape, int) else tuple(shape)
    for d in dims:
        check_int(d, "shape entries", 0, 1 << 36)
    size = math.prod(dims) * dt.itemsize

    def make(view: memoryview) -> Any:
        return numpy.frombuffer(view, dtype=dt).reshape(dims)

    return make, size


class _Reader(Protocol):
    """What a Message needs from the subscriber that received it."""

    @property
    def _closed(self) -> bool: ...

    def _check(self) -> None: ...
    def _still_valid(self, seq: int, length: int) -> bool: ...
    def _view_overrun(self, msg: Message) -> Overrun: ...
    def _release_view(self, msg: Message) -> None: ...


class _Writer(Protocol):
    """What a Loan needs from the publisher that lent it."""

    @property
    def _closed(self) -> bool: ...

    def _check(self) -> None: ...
    def _commit(self, loan: Loan, nbytes: int) -> int: ...
    def _abort(self, loan: Loan) -> None: ...


class Message:
    """A zero-copy, read-only view of one received message.

    ``data`` is a read-only memoryview into the slot; ``seq`` the message
    number. The publisher may overwrite the slot at any time (unless the
    broadcast has back-pressure), so check after use: ``validate()`` raises
    Overrun if it was overwritten; ``valid`` says so without raising. As a
    context manager, leaving the block validates (unless the block raised)
    and releases::

        with sub.recv_view() as msg:
            total = numpy.frombuffer(msg.data, "u1").sum()
        # here total is known to come from one whole message
    """

    __slots__ = ("_base", "_checked", "_sub", "data", "seq")

    def __init__(self, sub: _Reader, seq: int, base: int, data: memoryview) -> None:
        self._sub: _Reader | None = sub
        self.seq = seq
        self._base = base
        self.data = data
        self._checked = False

    @property
    def valid(self) -> bool:
        """True if the slot still holds this message, whole."""
        sub = self._sub
        if sub is None:
            raise RuntimeError(f"message #{self.seq} was released")
        sub._check()
        # fenced in C: the caller's reads of the view complete before the re-check
        return sub._still_valid(self.seq, len(self.data))

    def validate(self) -> None:
        """Raise Overrun (``missed=1``) if the message was overwritten while held."""
        if self.valid:
            return
        sub = self._sub
        assert sub is not None
        if self._checked:
            raise Overrun(f"message #{self.seq} was overwritten", missed=0)
        self._checked = True
        raise sub._view_overrun(self)

    def array(self, dtype: npt.DTypeLike, shape: int | Sequence[int] | None = None) -> Any:
        """The message as a read-only numpy array (zero-copy). Validate after use."""
        import numpy  # noqa: PLC0415 - numpy is an optional extra, imported on first use

        dt = numpy.dtype(dtype)
        if dt.hasobject:
            raise TypeError(f"dtype {dt} cannot be read from shared memory")
        arr: np.ndarray[Any, Any] = numpy.frombuffer(self.data, dtype=dt)
        return arr if shape is None else arr.reshape(shape)

    def release(self) -> None:
        """Let go of the view (a back-pressured publisher may now reuse the slot)."""
        sub = self._sub
        if sub is None:
            return
        self._sub = None
        try:
            self.data.release()
        except BufferError:
            pass  # numpy arrays made from it are alive; they see later data
        sub._release_view(self)

    def __enter__(self) -> Message:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            if t is None and self._sub is not None and not self._sub._closed:
                self.validate()
        finally:
            self.release()

    def __len__(self) -> int:
        return len(self.data)

    def __bytes__(self) -> bytes:
        return self.data.tobytes()

    def __reduce__(self) -> tuple[Any, ...]:
        raise TypeError(
            f"a broadcast Message (#{self.seq}) is a view into shared memory and cannot be "
            "pickled: send bytes(msg) instead"
        )

    def __repr__(self) -> str:
        return f"<Message #{self.seq} {len(self.data)} B{' released' if self._sub is None else ''}>"


class Loan:
    """A slot lent to the publisher. ``buffer`` is writable until commit or abort.

    ``with pub.loan() as buf:`` commits on normal exit and aborts on an
    exception. Explicitly: ``loan.commit(nbytes)`` publishes the first
    ``nbytes`` bytes (default: the size asked for), ``loan.abort()`` drops it.
    """

    __slots__ = ("_base", "_pub", "_view", "buffer", "nbytes", "seq")

    def __init__(
        self, pub: _Writer, seq: int, base: int, *, view: memoryview, buffer: Any, nbytes: int
    ) -> None:
        self._pub: _Writer | None = pub
        self.seq = seq
        self._base = base
        self._view = view
        self.buffer = buffer
        self.nbytes = nbytes

    def __enter__(self) -> Any:
        return self.buffer

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._pub is None:
            return
        if t is None:
            self.commit()
        else:
            self.abort()

    def commit(self, nbytes: int | None = None) -> int:
        """Publish the slot (its first ``nbytes`` bytes); return the message number."""
        pub = self._pub
        if pub is None:
            raise RuntimeError("this loan was already committed or aborted")
        if nbytes is None:
            nbytes = self.nbytes
        elif not 0 <= check_int(nbytes, "nbytes", 0, 1 << 36) <= self.nbytes:
            raise MessageTooLarge(f"commit of {nbytes} bytes exceeds the {self.nbytes} loaned")
        pub._check()
        self._finish()
        return pub._commit(self, nbytes)

    def abort(self) -> None:
        """Give the slot back unpublished."""
        pub = self._pub
        if pub is None:
            return
        self._finish()
        pub._abort(self)

    def __reduce__(self) -> tuple[Any, ...]:
        raise TypeError("a broadcast Loan is a slot of shared memory and cannot be pickled")

    def _finish(self) -> None:
        self._pub = None
        self.buffer = None
        try:
            self._view.release()
        except BufferError:
            pass  # a numpy view of it is still alive; it must not be written any more
