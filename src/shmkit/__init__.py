"""shmkit: named shared memory, locks, queues and numpy arrays for processes on one machine.

``import shmkit`` loads only the C core; each public name is imported on
first use (PEP 562), so a program that only uses a Lock never pays for the
Queue, Broadcast or numpy. ``from shmkit import Queue`` works as usual.
"""

import sys as _sys

if _sys.platform == "win32":  # pragma: no cover
    raise ImportError(
        "shmkit needs POSIX shared memory and named semaphores (Linux, macOS); "
        "Windows is not supported"
    )

from . import _core as _core  # the C extension; fails with build instructions if missing

# Not typing.TYPE_CHECKING: importing typing would double this module's import time.
TYPE_CHECKING = False

__version__ = "0.1.0"

#: Public name -> the module that defines it (imported on first access).
_LAZY = {
    "Kind": "._layout",
    "Segment": ".segment",
    "Semaphore": ".sync",
    "Lock": ".sync",
    "Event": ".sync",
    "Queue": ".queue",
    "SharedArray": ".ndarray",
    "Latest": ".latest",
    "SharedDict": ".mapping",
    "Broadcast": ".broadcast",
    "Publisher": ".broadcast",
    "Subscriber": ".broadcast",
    "Message": ".broadcast",
    "publisher": ".broadcast",
    "subscribe": ".broadcast",
    **dict.fromkeys(
        (
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
            "PeerDied",
            "Empty",
            "Full",
            "Overrun",
        ),
        ".errors",
    ),
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        # A submodule (shmkit.registry, shmkit.segment...): loaded on first use too.
        import importlib.util  # noqa: PLC0415 - only this rare path needs it

        if name.isidentifier() and importlib.util.find_spec(f"{__name__}.{name}") is not None:
            return importlib.import_module(f"{__name__}.{name}")
        raise AttributeError(f"module 'shmkit' has no attribute {name!r}")
    from importlib import import_module  # noqa: PLC0415 - not at import: it costs ms

    value = getattr(import_module(module, __name__), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


if TYPE_CHECKING:  # what type checkers and IDEs see; at run time __getattr__ imports them
    from ._layout import Kind as Kind
    from .broadcast import Broadcast as Broadcast
    from .broadcast import Message as Message
    from .broadcast import Publisher as Publisher
    from .broadcast import Subscriber as Subscriber
    from .broadcast import publisher as publisher
    from .broadcast import subscribe as subscribe
    from .errors import AlreadyExists as AlreadyExists
    from .errors import Closed as Closed
    from .errors import Empty as Empty
    from .errors import ForeignOwner as ForeignOwner
    from .errors import Full as Full
    from .errors import IncompatibleLayout as IncompatibleLayout
    from .errors import InsecurePermissions as InsecurePermissions
    from .errors import InvalidName as InvalidName
    from .errors import LayoutError as LayoutError
    from .errors import LockNotRecoverable as LockNotRecoverable
    from .errors import LockTimeout as LockTimeout
    from .errors import MessageTooLarge as MessageTooLarge
    from .errors import NotFound as NotFound
    from .errors import NotReady as NotReady
    from .errors import Overrun as Overrun
    from .errors import OwnerDied as OwnerDied
    from .errors import PeerDied as PeerDied
    from .errors import PermissionDenied as PermissionDenied
    from .errors import PublisherBusy as PublisherBusy
    from .errors import ReadStarved as ReadStarved
    from .errors import ShmFull as ShmFull
    from .errors import ShmkitError as ShmkitError
    from .errors import Timeout as Timeout
    from .latest import Latest as Latest
    from .mapping import SharedDict as SharedDict
    from .ndarray import SharedArray as SharedArray
    from .queue import Queue as Queue
    from .segment import Segment as Segment
    from .sync import Event as Event
    from .sync import Lock as Lock
    from .sync import Semaphore as Semaphore

del TYPE_CHECKING  # not a public name
