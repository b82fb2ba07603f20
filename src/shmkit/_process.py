"""Process identity and liveness: (pid, start time, boot id), so PID reuse is not life."""

from __future__ import annotations

import os
from dataclasses import dataclass
from enum import Enum
from typing import Final

from . import _platform

_NO_BOOT: Final = b"\0" * 16


def _pid_max() -> int:
    try:
        with open("/proc/sys/kernel/pid_max", "rb") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 4_194_304  # Linux's upper bound (PID_MAX_LIMIT on 64-bit)


#: The largest pid this system hands out; a pid word above it is corrupt.
PID_MAX: Final = _pid_max()


class Liveness(str, Enum):
    """What shmkit knows about a recorded process."""

    ALIVE = "alive"
    DEAD = "dead"
    #: Another boot or PID namespace, or access denied: treated as alive, never cleaned.
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class Identity:
    """Who a process is: pid, start time in clock ticks since boot, and the boot id."""

    pid: int
    start: int
    boot_id: bytes


def start_time(pid: int) -> int:
    """Return the start time of ``pid`` in clock ticks since boot, 0 if unknown."""
    if not _platform.LINUX:
        return 0
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return 0
    # comm (field 2) may contain spaces and parentheses: split after the last ')'.
    fields = data[data.rfind(b")") + 2 :].split()
    try:
        return int(fields[19])  # field 22 overall
    except (IndexError, ValueError):
        return 0


def _is_zombie(pid: int) -> bool:
    if not _platform.LINUX:
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return False
    return data[data.rfind(b")") + 2 : data.rfind(b")") + 3] == b"Z"


def _read_boot_id() -> bytes:
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            return bytes.fromhex(f.read().strip().replace("-", ""))
    except (OSError, ValueError):
        return _NO_BOOT


BOOT_ID: Final = _read_boot_id()
_current: Identity | None = None


def current() -> Identity:
    """This process's identity (cached; recomputed in a forked child)."""
    global _current
    me = _current
    if me is None:
        pid = os.getpid()
        me = _current = Identity(pid, start_time(pid), BOOT_ID)
    return me


def _forget_identity() -> None:
    global _current
    _current = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_identity)


def liveness(pid: int, start: int, boot_id: bytes = _NO_BOOT) -> Liveness:
    """Classify a recorded process. Unknown is never reported as dead."""
    if pid <= 0:
        return Liveness.DEAD
    if pid > PID_MAX:
        # No process can have it: a corrupt or foreign word. Never acted on.
        return Liveness.UNKNOWN
    if boot_id not in (_NO_BOOT, BOOT_ID):
        return Liveness.UNKNOWN
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return Liveness.DEAD
    except PermissionError:
        pass  # exists, another uid: compare start times below
    except OSError:
        return Liveness.UNKNOWN
    if _is_zombie(pid):
        return Liveness.DEAD
    if start:
        now = start_time(pid)
        if now and now != start:
            return Liveness.DEAD  # the pid was reused by a newer process
        if not now:
            return Liveness.UNKNOWN
    return Liveness.ALIVE
