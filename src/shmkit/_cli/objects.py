"""What the CLI knows about objects beyond ``registry``: raw entries, per-kind facts.

``registry.discover`` lists shmkit's own names. ``ls --all`` and ``info`` also
show what other programs made in ``/dev/shm``: a segment without a shmkit
header is *raw* (``posix_ipc.SharedMemory("/frames")``, iceoryx2, the stdlib's
``shared_memory``), a ``sem.*`` file that belongs to no shmkit object is a raw
semaphore. Only a segment that starts with shmkit's magic and fails
validation is *corrupt*.

``details`` opens a ready object read-only, without attaching, and returns
the facts an operator asks about first: a lock's holder, a semaphore's value,
an event's state, a queue's depth and waiters, a broadcast's write position
and slowest reader's lag, a latest's version, a dict's entries.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import stat
import struct
import time
from typing import Any

from .. import _layout, _platform, _process, registry
from .._layout import Kind
from ..errors import ShmkitError
from ..segment import Segment

#: Lock body record (see ``shmkit.sync``): state, pid, start, since_ns, deaths, tid.
_LOCK_REC = struct.Struct("<6Q")
_LOCK_REC_OFF = 64
_LOCK_STATES = {0: "free", 1: "held", 2: "poisoned"}


def shm_dir() -> str:
    """Where POSIX shared memory lives ("" where it cannot be listed)."""
    return _platform.SHM_DIR or ""


def owner(uid: int) -> str:
    """A uid as its user name (the number when unknown, ``?`` when not read)."""
    if uid < 0:
        return "?"
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _stat(path: str) -> os.stat_result | None:
    try:
        return os.stat(path)
    except OSError:
        return None


def has_magic(path: str) -> bool | None:
    """True if the file starts with shmkit's magic; None if it cannot be read."""
    try:
        with open(path, "rb") as f:
            return f.read(len(_layout.MAGIC)) == _layout.MAGIC
    except OSError:
        return None


def raw_entry(sysname: str, *, semaphore: bool = False) -> registry.Entry | None:
    """An Entry for a segment (or ``sem.`` file) that is not a shmkit object."""
    base = sysname.lstrip("/")
    path = os.path.join(shm_dir(), "sem." + base if semaphore else base)
    st = _stat(path)
    if st is None or not stat.S_ISREG(st.st_mode):  # gone, or a directory someone made
        return None
    kind = "semaphore" if semaphore else "segment"
    entry = registry.Entry(name=sysname, sysname=sysname, kind=kind, state="raw")
    entry.size, entry.mode, entry.uid = st.st_size, st.st_mode & 0o777, st.st_uid
    entry.created = st.st_mtime
    entry.parts = [sysname]
    return entry


def discover(*, include_raw: bool, with_stats: bool) -> list[registry.Entry]:
    """shmkit objects (and with ``include_raw`` everything else in /dev/shm), sorted by name."""
    entries = registry.discover(with_stats=with_stats)
    if include_raw and shm_dir():
        entries += _others({p for e in entries for p in e.parts}, with_stats=with_stats)
    return sorted(entries, key=lambda e: (e.name.lstrip("/").lower(), e.sysname))


def _others(shown: set[str], *, with_stats: bool) -> list[registry.Entry]:
    files = sorted(os.listdir(shm_dir()))
    found: list[registry.Entry] = []
    for f in files:
        if f.startswith(("sem.", "shmkit.")):
            continue
        sysname = "/" + f
        if has_magic(os.path.join(shm_dir(), f)):
            # A shmkit object under a verbatim name ("/frames"): the registry reads it.
            with contextlib.suppress(ShmkitError):
                found.append(registry.find(sysname, with_stats=with_stats))
                continue
        entry = raw_entry(sysname)
        if entry is not None:
            found.append(entry)
    owned = shown | {p for e in found for p in e.parts}
    for f in files:
        if not f.startswith("sem.") or f.startswith("sem.shmkit."):
            continue
        sysname = "/" + f[len("sem.") :]
        if sysname in owned:
            continue
        entry = raw_entry(sysname, semaphore=True)
        if entry is not None:
            found.append(entry)
    return found


# ----------------------------------------------------------------------------- details


def details(entry: registry.Entry) -> dict[str, Any]:
    """Kind-specific facts of a ready object or a raw semaphore (empty when none apply)."""
    if entry.state == "raw":
        return _raw_details(entry)
    if entry.state != "ready":
        return {}
    try:
        seg = registry.open_for_inspection(entry.sysname, entry.uid)
    except (ShmkitError, OSError) as exc:
        return {"error": str(exc)}
    with seg:
        try:
            return _kind_details(seg)
        except (ShmkitError, ValueError, struct.error) as exc:
            return {"error": str(exc)}


def _raw_details(entry: registry.Entry) -> dict[str, Any]:
    if entry.kind != "semaphore":
        return {}
    import posix_ipc  # noqa: PLC0415 - only a raw semaphore needs it

    try:
        sem = posix_ipc.Semaphore(entry.sysname)
    except (posix_ipc.Error, OSError) as exc:
        return {"error": str(exc)}
    try:
        return {"value": sem.value}
    except (AttributeError, posix_ipc.Error):  # macOS has no sem_getvalue
        return {}
    finally:
        sem.close()


def _kind_details(seg: Segment) -> dict[str, Any]:
    header = seg.header
    assert header is not None
    kind = header.kind
    if kind == Kind.LOCK:
        return _lock_details(seg, header.body_off)
    if kind == Kind.SEMAPHORE:
        with contextlib.suppress(AttributeError):  # macOS: no sem_getvalue
            return {"value": seg.semaphore(0).value}
        return {}
    if kind == Kind.EVENT:
        flag = int.from_bytes(seg.mmap[header.body_off : header.body_off + 4], "little")
        return {"set": flag == 1}
    stats = registry.describe(seg)
    if kind == Kind.BROADCAST and "subscribers" in stats:
        subs = [s for s in stats["subscribers"] if s.get("alive")]
        stats["live_subscribers"] = len(subs)
        stats["slowest_lag"] = max((int(s["lag"]) for s in subs), default=0)
    return stats


def _lock_details(seg: Segment, body_off: int) -> dict[str, Any]:
    state, pid, start, since_ns, deaths, tid = _LOCK_REC.unpack_from(
        seg.mmap, body_off + _LOCK_REC_OFF
    )
    out: dict[str, Any] = {"state": _LOCK_STATES.get(state, f"corrupt ({state})")}
    out["owner_deaths"] = deaths
    if state == 1 and 0 < pid <= _process.PID_MAX:
        out["holder"] = {
            "pid": pid,
            "thread": tid,
            "alive": _process.liveness(pid, start).value,
            "held_for_s": round(max(0.0, (time.time_ns() - since_ns) / 1e9), 3),
        }
    return out


def summary(entry: registry.Entry, facts: dict[str, Any]) -> str:
    """One short line of the facts, for ``ls --stats``."""
    if "error" in facts:
        return f"error: {facts['error']}"[:60]
    kind = entry.kind
    if kind == "lock":
        h = facts.get("holder")
        if h:
            return f"held by {h['pid']} ({h['alive']}) for {h['held_for_s']:.3f}s"
        return str(facts.get("state", ""))
    if kind == "semaphore" and "value" in facts:
        return f"value {facts['value']}"
    if kind == "event" and "set" in facts:
        return "set" if facts["set"] else "clear"
    if kind == "queue" and "messages" in facts:
        return (
            f"{facts['messages']} msgs, {facts['bytes_used']}/{facts['ring_bytes']} B, "
            f"waiting {facts['waiting_getters']} get / {facts['waiting_putters']} put"
        )
    if kind == "broadcast" and "published" in facts:
        return (
            f"#{facts['published']}, {facts['live_subscribers']} subs, "
            f"slowest lag {facts['slowest_lag']}"
        )
    if kind == "latest" and "version" in facts:
        return f"version {facts['version']}, {len(facts.get('writers', []))} writer(s)"
    if kind == "dict" and "entries" in facts:
        return (
            f"{facts['entries']} entries, {facts['bytes_used']} B used, "
            f"generation {facts.get('generation', 0)}"
        )
    if kind == "array" and "shape" in facts:
        return f"{facts['dtype']} {tuple(facts['shape'])}"
    return ""
