"""Test-only crash points: ``SHMKIT_CRASH_AT=name`` makes the process SIGKILL itself there.

Library code marks each step of a multi-step mutation with::

    if _crash.ARMED:
        _crash.point("queue.put.copied")

so the check costs one global load when unarmed. ``SHMKIT_CRASH_AFTER=n``
lets the named point pass ``n`` times before it fires.
"""

from __future__ import annotations

import os
import signal
from typing import Final

ARMED: Final = bool(os.environ.get("SHMKIT_CRASH_AT"))
_TARGET: Final = os.environ.get("SHMKIT_CRASH_AT", "")
_remaining = int(os.environ.get("SHMKIT_CRASH_AFTER", "0") or 0)


def point(name: str) -> None:
    """Die by SIGKILL if ``name`` is the armed crash point (after the allowed passes)."""
    global _remaining
    if name != _TARGET:
        return
    if _remaining > 0:
        _remaining -= 1
        return
    os.kill(os.getpid(), signal.SIGKILL)
