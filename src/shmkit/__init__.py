"""shmkit: named shared memory, locks, queues and numpy arrays for processes on one machine."""

import sys as _sys

if _sys.platform == "win32":  # pragma: no cover
    raise ImportError(
        "shmkit needs POSIX shared memory and named semaphores (Linux, macOS); "
        "Windows is not supported"
    )

from . import _core as _core  # the C extension; fails with build instructions if missing
from ._layout import Kind as Kind
from .broadcast import Broadcast as Broadcast
from .broadcast import Message as Message
from .broadcast import Publisher as Publisher
from .broadcast import Subscriber as Subscriber
from .broadcast import publisher as publisher
from .broadcast import subscribe as subscribe
from .errors import (
    AlreadyExists as AlreadyExists,
)
from .errors import (
    Closed as Closed,
)
from .errors import (
    Empty as Empty,
)
from .errors import (
    ForeignOwner as ForeignOwner,
)
from .errors import (
    Full as Full,
)
from .errors import (
    IncompatibleLayout as IncompatibleLayout,
)
from .errors import (
    InsecurePermissions as InsecurePermissions,
)
from .errors import (
    InvalidName as InvalidName,
)
from .errors import (
    LayoutError as LayoutError,
)
from .errors import (
    LockNotRecoverable as LockNotRecoverable,
)
from .errors import (
    LockTimeout as LockTimeout,
)
from .errors import (
    MessageTooLarge as MessageTooLarge,
)
from .errors import (
    NotFound as NotFound,
)
from .errors import (
    NotReady as NotReady,
)
from .errors import (
    Overrun as Overrun,
)
from .errors import (
    OwnerDied as OwnerDied,
)
from .errors import (
    PeerDied as PeerDied,
)
from .errors import (
    PermissionDenied as PermissionDenied,
)
from .errors import (
    PublisherBusy as PublisherBusy,
)
from .errors import (
    ReadStarved as ReadStarved,
)
from .errors import (
    ShmFull as ShmFull,
)
from .errors import (
    ShmkitError as ShmkitError,
)
from .errors import (
    Timeout as Timeout,
)
from .latest import Latest as Latest
from .mapping import SharedDict as SharedDict
from .ndarray import SharedArray as SharedArray
from .queue import Queue as Queue
from .segment import Segment as Segment
from .sync import Event as Event
from .sync import Lock as Lock
from .sync import Semaphore as Semaphore

__version__ = "0.1.0"

__all__ = [
    "Kind",
    "Segment",
    "Semaphore",
    "Lock",
    "Event",
    "Queue",
    "SharedArray",
    "Latest",
    "SharedDict",
    "Broadcast",
    "Publisher",
    "Subscriber",
    "Message",
    "publisher",
    "subscribe",
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
]
