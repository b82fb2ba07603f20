"""shmkit's native core: the C extension every object's shared-memory protocol runs on.

``_native`` holds the primitives (bounds-checked atomics on a mapping, futex
wait/wake, the robust process-shared mutex, copies) and the Lock's critical
sections. There is no pure-Python fallback: without the compiled extension
``import shmkit`` fails and says how to build it.
"""

from __future__ import annotations

try:
    from . import _native  # noqa: F401  (fails here, with the message below, if unbuilt)
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ImportError(
        "shmkit's C extension (shmkit._core._native) is not built. Install shmkit with "
        "`pip install .` (or `pip install -e .` in a checkout); that needs a C compiler "
        "and the Python headers (e.g. `apt-get install gcc python3-dev`)."
    ) from exc

from ._native import (
    BUSY,
    HAVE_CLOCKLOCK,
    HAVE_FUTEX,
    HAVE_ROBUST,
    MUTEX_AREA,
    MUTEX_SIZE,
    OK,
    OWNER_DIED,
    POISONED,
    LockCore,
    Mutex,
    Region,
    check_timeout,
    fence,
)

__all__ = [
    "BUSY",
    "HAVE_CLOCKLOCK",
    "HAVE_FUTEX",
    "HAVE_ROBUST",
    "MUTEX_AREA",
    "MUTEX_SIZE",
    "OK",
    "OWNER_DIED",
    "POISONED",
    "LockCore",
    "Mutex",
    "Region",
    "check_timeout",
    "fence",
]
