"""The aio wrappers' common base: composition over a blocking handle, forwarding the rest."""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType
from typing import Any, Generic, TypeVar

from .. import _wait
from ._watch import Probe, Watcher, poke, watcher_for

__all__ = ["Wrapper", "check_timeout"]

S = TypeVar("S")
W = TypeVar("W", bound="Wrapper[Any]")


def check_timeout(timeout: object) -> float | None:
    """Validate ``timeout=`` exactly like the blocking calls (TypeError, ValueError)."""
    return _wait.check_timeout(timeout)


class Wrapper(Generic[S]):
    """Holds the blocking handle in ``.sync``; attributes it does not define are the handle's.

    ``close()``, ``unlink()``, ``name`` and every non-blocking method are the
    blocking handle's own (forwarded); the awaitable twins of its blocking
    methods are defined on the subclasses.
    """

    __slots__ = ("sync",)

    def __init__(self, sync: S) -> None:
        """Wrap an already opened blocking handle (it stays usable directly)."""
        self.sync = sync

    def __getattr__(self, attr: str) -> Any:
        if attr == "sync":  # not set yet (a half-built object): no recursion
            raise AttributeError(attr)
        return getattr(self.sync, attr)

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickles as its blocking handle does (reopened by name), wrapped again."""
        return (type(self), (self.sync,))

    @property
    def name(self) -> str:
        return str(getattr(self.sync, "name", ""))

    def close(self) -> None:
        """Detach (the blocking handle's ``close()``); tasks awaiting on it raise Closed."""
        self.sync.close()  # type: ignore[attr-defined]
        poke(self.sync)

    def _watcher(self, direction: str, make: Callable[[Watcher], Probe]) -> Watcher:
        return watcher_for(self.sync, direction, make, _label(self, direction))

    def __enter__(self: W) -> W:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    async def __aenter__(self: W) -> W:
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<aio {self.sync!r}>"


def _label(obj: Wrapper[Any], direction: str) -> str:
    try:
        return f"{type(obj).__name__} {obj.name!r} {direction}"
    except Exception:
        return f"{type(obj).__name__} {direction}"
