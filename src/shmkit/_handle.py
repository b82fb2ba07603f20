"""The one handle base: what every shmkit object's handle does the same way.

A handle is a ``Segment`` (``_seg``, None once closed) opened under a user
name (``_name``). The base gives it ``name``, ``closed``, ``unlink()``, the
context manager (``with X.open(name) as h:`` detaches on exit), a
``__del__`` that only detaches (never unlinks), and a default ``__reduce__``
and ``__repr__``. Subclasses override ``close()`` to release what they hold
before calling ``super().close()``, and ``__reduce__`` when reopening needs
more than the name.
"""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType
from typing import Any, TypeVar

from .errors import Closed
from .segment import Segment

H = TypeVar("H", bound="Handle")
T = TypeVar("T")


def built_or_removed(seg: Segment, build: Callable[[], T]) -> T:
    """``build()`` the handle over ``seg``, a segment just created; remove it if that fails."""
    try:
        return build()
    except BaseException:
        seg.unlink()
        seg.close()
        raise


class Handle:
    """Base of every object handle: name, close/unlink, ``with``, pickling by name."""

    _name: str
    _seg: Segment | None
    #: The word for this kind in messages; the class name, lower-cased, if empty.
    _WHAT = ""

    @property
    def name(self) -> str:
        """The user-facing name the object was created or opened under."""
        return self._name

    @property
    def closed(self) -> bool:
        """True after ``close()`` on this handle (handles without a ``_seg`` override it)."""
        return self._seg is None

    def _segment(self) -> Segment:
        """The open segment, or Closed."""
        seg = self._seg
        if seg is None:
            what = self._WHAT or type(self).__name__.lower()
            raise Closed(f"{what} {self._name!r} is closed")
        return seg

    def _check_open(self) -> None:
        self._segment()

    def close(self) -> None:
        """Detach this handle (idempotent). The object stays until ``unlink()``."""
        seg, self._seg = self._seg, None
        if seg is not None:
            seg.close()

    def unlink(self) -> None:
        """Remove the object's name (segment and any semaphores) for everyone.

        Handles already open keep working until they close.
        """
        Segment.remove(self._name)

    def __enter__(self: H) -> H:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            if not self.closed:
                self.close()
        except Exception:
            pass  # half-built, or interpreter shutdown: modules may already be gone

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self).open, (self._name,))  # type: ignore[attr-defined]

    def __repr__(self) -> str:
        name = getattr(self, "_name", "?")
        closed = " closed" if getattr(self, "_seg", None) is None else ""  # never raises
        return f"<{type(self).__name__} {name!r}{closed}>"
