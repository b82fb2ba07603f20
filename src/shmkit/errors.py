"""shmkit's errors, and the one place that translates posix_ipc's.

Every error also inherits the matching built-in, so ``except FileNotFoundError``
or ``except queue.Empty`` keeps working::

    ShmkitError
    ├── InvalidName          (ValueError)     a name shmkit cannot use
    ├── NotFound             (FileNotFoundError)
    ├── AlreadyExists        (FileExistsError)
    ├── PermissionDenied     (PermissionError)
    │   ├── ForeignOwner                      the object belongs to another uid
    │   └── InsecurePermissions               mode wider than its creator asked for
    ├── Timeout              (TimeoutError)
    │   ├── LockTimeout                       names the live holder
    │   │   └── PublisherBusy                 (broadcast) another process publishes
    │   ├── NotReady                          creator never finished initialising
    │   └── ReadStarved                       writers overwrote every value a reader tried
    ├── Closed                                this handle (or the object) is closed
    ├── LayoutError                           header does not describe a valid object
    │   └── IncompatibleLayout                another layout version / ABI
    ├── ShmFull              (OSError)        /dev/shm cannot hold the object
    ├── MessageTooLarge      (ValueError)
    ├── OwnerDied                             lock acquired; its last holder died holding it
    ├── LockNotRecoverable                    a dead holder's lock was released unrepaired
    ├── NotOwner             (RuntimeError)   release() by a thread that does not hold it
    ├── PeerDied                              the writer of a Broadcast/Latest is gone
    ├── Empty                (queue.Empty)
    ├── Full                 (queue.Full)
    └── Overrun                               a reader was lapped; ``missed`` says by how much

Every error pickles with its arguments, so it crosses process boundaries.
"""

from __future__ import annotations

import _queue  # its Empty *is* queue.Empty; the queue module itself would pull in threading
import errno

import posix_ipc

# Not typing.TYPE_CHECKING: the C core imports this module at ``import shmkit``,
# and typing alone would cost more than the rest of that import.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import TracebackType
    from typing import Any

__all__ = [
    "ShmkitError",
    "InvalidName",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ForeignOwner",
    "InsecurePermissions",
    "Timeout",
    "LockTimeout",
    "PublisherBusy",
    "NotReady",
    "ReadStarved",
    "Closed",
    "LayoutError",
    "IncompatibleLayout",
    "ShmFull",
    "MessageTooLarge",
    "OwnerDied",
    "LockNotRecoverable",
    "NotOwner",
    "PeerDied",
    "Empty",
    "Full",
    "Overrun",
]  # and translate(), the one place that maps posix_ipc/OS errors (internal)


class ShmkitError(Exception):
    """Base of every error shmkit raises on purpose."""

    def __reduce__(self) -> tuple[Any, ...]:
        # Exception pickles only ``args``; keep keyword attributes too.
        return (_rebuild, (type(self), self.args, self.__dict__))


def _rebuild(cls: type[ShmkitError], args: tuple[Any, ...], state: dict[str, Any]) -> ShmkitError:
    err = cls.__new__(cls)
    Exception.__init__(err, *args)
    err.__dict__.update(state)
    return err


class InvalidName(ShmkitError, ValueError):
    """A name that shmkit cannot map to a system name."""


class NotFound(ShmkitError, FileNotFoundError):
    """No object of that name exists."""


class AlreadyExists(ShmkitError, FileExistsError):
    """An object of that name already exists."""


class PermissionDenied(ShmkitError, PermissionError):
    """The operating system refused access."""


class ForeignOwner(PermissionDenied):
    """The object is owned by another user; shmkit never adopts it."""


class InsecurePermissions(PermissionDenied):
    """The object's mode is wider than the mode its creator recorded."""


class Timeout(ShmkitError, TimeoutError):
    """A blocking call ran out of time."""


class LockTimeout(Timeout):
    """A lock stayed held by a live process until the deadline."""


class PublisherBusy(LockTimeout):
    """Another live process is this broadcast's publisher (only one at a time)."""


class NotReady(Timeout):
    """The object's creator never finished initialising it."""


class ReadStarved(Timeout):
    """A reader found no stable value within its timeout: writers kept overwriting it.

    Happens only when a value takes longer to copy out than writers take to
    fill the object's other slots; create it with more slots, or allow more time.
    """


class Closed(ShmkitError):
    """The handle was closed, or the object was closed for new work."""


class LayoutError(ShmkitError):
    """The segment's header or body does not describe a valid shmkit object."""


class IncompatibleLayout(LayoutError):
    """The segment was written by another layout version or ABI."""

    def __init__(self, message: str, found: int = 0, expected: int = 0) -> None:
        super().__init__(message)
        self.found = found
        self.expected = expected


class ShmFull(ShmkitError, OSError):
    """Shared memory (``/dev/shm``) has no room for the object."""


class MessageTooLarge(ShmkitError, ValueError):
    """A message can never fit in the object, however long one waits."""


class OwnerDied(ShmkitError):
    """The lock is now held by the caller; its previous holder died holding it.

    Repair what the lock protects, then call ``lock.mark_consistent()`` before
    ``release()``; releasing without it makes the lock unusable for everyone.
    """


class LockNotRecoverable(ShmkitError):
    """A lock whose dead holder's state was never marked consistent."""


class NotOwner(ShmkitError, RuntimeError):
    """release() from a thread or process that does not hold the lock."""


class PeerDied(ShmkitError):
    """The process this call depends on (a writer or publisher) is dead."""


class Empty(ShmkitError, _queue.Empty):
    """Nothing to receive before the deadline."""


if TYPE_CHECKING:
    import queue

    class Full(ShmkitError, queue.Full):
        """No room to send before the deadline."""

else:

    def __getattr__(name: str) -> type[ShmkitError]:
        # queue.Full lives in the pure-Python queue module, whose import (threading,
        # heapq...) would be most of ``import shmkit``: Full is made on first use.
        if name != "Full":
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        import queue  # noqa: PLC0415

        class Full(ShmkitError, queue.Full):
            """No room to send before the deadline."""

        Full.__module__, Full.__qualname__ = __name__, "Full"
        globals()["Full"] = Full
        return Full


class Overrun(ShmkitError):
    """A reader fell so far behind that the writer overwrote messages it had not read."""

    def __init__(self, message: str, missed: int = 0) -> None:
        super().__init__(message)
        self.missed = missed


class translate:
    """Turn posix_ipc and OS errors raised inside the block into shmkit errors.

    ``what`` names the object (for example ``"segment 'frames'"``) in the message.
    The cause is not chained: posix_ipc's exception adds nothing the message lacks.
    posix_ipc's ExistentialError means "exists" or "missing" depending on the call,
    so its errno-less message is read here and nowhere else. (A class rather than
    a ``contextlib`` generator: contextlib's import would slow ``import shmkit``.)
    """

    __slots__ = ("what",)

    def __init__(self, what: str) -> None:
        self.what = what

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, t: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        what = self.what
        if exc is None or isinstance(exc, ShmkitError):
            return
        if isinstance(exc, posix_ipc.ExistentialError):
            if "already exists" in str(exc):
                raise AlreadyExists(f"{what} already exists") from None
            raise NotFound(f"{what} does not exist") from None
        if isinstance(exc, posix_ipc.PermissionsError):
            raise PermissionDenied(f"{what}: permission denied") from None
        if isinstance(exc, FileExistsError):
            raise AlreadyExists(f"{what} already exists") from None
        if isinstance(exc, FileNotFoundError):
            raise NotFound(f"{what} does not exist") from None
        if isinstance(exc, PermissionError):
            raise PermissionDenied(f"{what}: permission denied") from None
        if isinstance(exc, OSError):
            if exc.errno in (errno.ENOSPC, errno.ENOMEM):
                full = f"{what}: shared memory is full ({exc.strerror})"
                raise ShmFull(exc.errno, full) from None
            if exc.errno == errno.ENAMETOOLONG:
                raise InvalidName(f"{what}: name too long for this platform") from None
