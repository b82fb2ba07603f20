"""Helpers for tests of programs that use shmkit: unique names and leak checks.

from shmkit.testing import unique_name, leaked_since, shm_entries

before = shm_entries()
name = unique_name("jobs")
...                                  # create and unlink objects
assert not leaked_since(before)
"""

from __future__ import annotations

import os
import uuid

from . import _names, _platform


def unique_name(prefix: str = "t") -> str:
    """A fresh shmkit name that no other test or process uses."""
    return f"{prefix}-{os.getpid()}-{uuid.uuid4().hex[:10]}"


def shm_entries() -> set[str]:
    """shmkit-prefixed entries in /dev/shm (segments and ``sem.`` semaphores); empty off Linux."""
    if _platform.SHM_DIR is None:
        return set()
    tag = _names.PREFIX
    return {e for e in os.listdir(_platform.SHM_DIR) if e.startswith((tag, "sem." + tag))}


def leaked_since(before: set[str]) -> set[str]:
    """shmkit entries present now that were not in ``before``."""
    return shm_entries() - before


def remove_entries(entries: set[str]) -> None:
    """Delete /dev/shm entries by file name (cleanup after a failed test)."""
    if _platform.SHM_DIR is None:
        return
    for entry in entries:
        try:
            os.unlink(os.path.join(_platform.SHM_DIR, entry))
        except OSError:
            pass
