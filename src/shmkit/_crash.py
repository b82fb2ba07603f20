"""Test-only hook points: crash (SIGKILL) or stop (SIGSTOP) the process at a named point.

Library code marks each step of a multi-step mutation, and each reader's
copy point, with::

    if _crash.ARMED:
        _crash.point("queue.put.copied")

so the check costs one global load when unarmed.

- ``SHMKIT_CRASH_AT=name`` makes the process SIGKILL itself there;
  ``SHMKIT_CRASH_AFTER=n`` lets the point pass ``n`` times before it fires.
- ``SHMKIT_STOP_AT=name`` makes the process SIGSTOP itself the first time it
  reaches the point. A test waits until the child is stopped, changes shared
  memory as it likes (publishes a full ring over the slot a reader has just
  copied, sends a SIGINT to land inside a critical section…), then SIGCONTs
  it: a deterministic interleaving without timing. The native core keeps the
  same point names.
"""

from __future__ import annotations

import os
import signal
from typing import Final

_TARGET: Final = os.environ.get("SHMKIT_CRASH_AT", "")
_stop_at = os.environ.get("SHMKIT_STOP_AT", "")
ARMED: Final = bool(_TARGET or _stop_at)
_remaining = int(os.environ.get("SHMKIT_CRASH_AFTER", "0") or 0)


def point(name: str) -> None:
    """Stop (once) or die by SIGKILL if ``name`` is an armed point."""
    global _remaining, _stop_at
    if name == _stop_at:
        _stop_at = ""
        os.kill(os.getpid(), signal.SIGSTOP)
        return
    if name != _TARGET:
        return
    if _remaining > 0:
        _remaining -= 1
        return
    os.kill(os.getpid(), signal.SIGKILL)
