"""Discover, describe, find stale and remove what lives in shared memory.

The CLI is a thin layer over these functions. Discovery scans ``/dev/shm``
(Linux); each shmkit segment is opened read-only *without* attaching, its
header validated, and its semaphores grouped with it. Liveness comes from the
attach table (an OFD lock per attached handle, released by the kernel when the
process dies) and the recorded creator (pid + start time + boot id).
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib
import os
import struct
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, Final

from . import _layout, _mutex, _names, _platform, _process
from ._layout import Kind
from ._shm import dict_gens
from ._sysobj import unlink_all, unlink_shm
from .errors import (
    IncompatibleLayout,
    LayoutError,
    NotFound,
    NotReady,
    PermissionDenied,
    ShmkitError,
)
from .segment import Segment

__all__ = ["Entry", "describe", "discover", "find", "gc", "remove"]

#: Objects younger than this are never collected (their creator may still be initialising).
DEFAULT_GRACE: Final = 5.0

_DESCRIBERS: Final = {
    Kind.QUEUE: "shmkit.queue",
    Kind.BROADCAST: "shmkit.broadcast",
    Kind.LATEST: "shmkit.latest",
    Kind.ARRAY: "shmkit.ndarray",
    Kind.DICT: "shmkit.mapping",
}


@dataclass
class Entry:
    """One object found in shared memory, as ``shmkit ls`` shows it."""

    name: str
    sysname: str
    kind: str
    state: str  # ready | init | corrupt | incompatible | foreign | orphan-semaphore
    size: int = 0
    mode: int = 0
    uid: int = -1
    creator_pid: int = 0
    creator: str = "unknown"  # alive | dead | unknown
    attached: int = 0  # live attachments
    attached_unknown: int = 0  # attachments from another boot / PID namespace
    attached_dead: int = 0  # records left by dead processes
    created: float = 0.0  # unix time
    parts: list[str] = field(default_factory=list)
    error: str = ""
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def abandoned(self) -> bool:
        """Provably abandoned: creator dead and no live (or unknown) attachment."""
        if self.state in ("corrupt", "orphan-semaphore"):
            return True
        return self.creator == "dead" and self.attached == 0 and self.attached_unknown == 0

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["abandoned"] = self.abandoned
        return out


def _sem_file(sysname: str) -> str:
    return "sem." + sysname.lstrip("/")


def _parts_of(sysname: str, sem_files: set[str]) -> list[str]:
    base = sysname.lstrip("/")
    parts = [sysname]
    parts += sorted("/" + f[len("sem.") :] for f in sem_files if f.startswith(f"sem.{base}.s"))
    # A SharedDict's generation segments (<sysname>~gN) are parts of its root.
    parts += dict_gens.existing(sysname) if dict_gens.split(sysname) is None else []
    return parts


def open_for_inspection(sysname: str, uid: int) -> Segment:
    """Open an object to describe it: read-only, no attach slot, no waiting.

    Every field is still validated. Another user's object (``uid``) is read
    when the kernel lets us; an unknown owner (-1) trusts nobody else.
    """
    return Segment._open_object(
        sysname,
        None,
        readonly=True,
        init_timeout=0.0,
        allow_insecure=True,
        sysname=sysname,
        attach=False,
        trust_uids=() if uid < 0 else (uid,),
    )


def _inspect(sysname: str, sem_files: set[str], *, with_stats: bool) -> Entry:
    entry = Entry(name=sysname, sysname=sysname, kind="?", state="corrupt")
    entry.parts = _parts_of(sysname, sem_files)
    path = os.path.join(_platform.SHM_DIR or "", sysname.lstrip("/"))
    try:
        st = os.stat(path)
        entry.size, entry.mode, entry.uid = st.st_size, st.st_mode & 0o777, st.st_uid
        entry.created = st.st_mtime
    except OSError:
        pass
    for part in entry.parts[1:]:
        if dict_gens.split(part) is not None:  # a grown dict: its size is all its segments
            with contextlib.suppress(OSError):
                entry.size += os.stat(
                    os.path.join(_platform.SHM_DIR or "", part.lstrip("/"))
                ).st_size
    try:
        seg = open_for_inspection(sysname, entry.uid)
    except PermissionDenied as exc:
        # Another user's object we may not read is theirs, not corrupt.
        entry.state = "foreign" if entry.uid != os.geteuid() else "corrupt"
        entry.error = str(exc)
        return entry
    except NotReady as exc:
        entry.state, entry.error = "init", str(exc)
        entry.creator_pid, entry.creator = _raw_creator(path)
        return entry
    except IncompatibleLayout as exc:
        # Made by another ABI (a 32-bit or emulated process, musl beside glibc)
        # or another layout version: possibly in use by programs that read it,
        # so never "corrupt" (which gc removes); gc --force may take it once
        # its creator is gone.
        entry.state, entry.error = "incompatible", str(exc)
        entry.creator_pid, entry.creator = _raw_creator(path)
        return entry
    except (LayoutError, ShmkitError, OSError) as exc:
        entry.error = str(exc)
        return entry
    with seg:
        header = seg.header
        assert header is not None
        entry.name, entry.kind, entry.state = header.name, header.kind.name.lower(), "ready"
        entry.creator_pid = header.creator_pid
        entry.creator = _process.liveness(
            header.creator_pid, header.creator_start, header.boot_id
        ).value
        entry.created = header.created_ns / 1e9
        for att in seg.attachments():
            if att.liveness is _process.Liveness.DEAD:
                entry.attached_dead += 1
            elif att.liveness is _process.Liveness.UNKNOWN:
                entry.attached_unknown += 1
            else:
                entry.attached += 1
        if with_stats:
            entry.stats = describe(seg)
    return entry


def _raw_creator(path: str) -> tuple[int, str]:
    """Creator pid and liveness from the raw header bytes (an object still initialising,
    or one this shmkit cannot parse: another ABI or layout version)."""
    try:
        with open(path, "rb") as f:
            raw = f.read(_layout.HEADER_SIZE)
    except OSError:
        return 0, "unknown"
    if len(raw) < _layout.HEADER_SIZE or raw[:8] != _layout.MAGIC:
        return 0, "dead"  # the creator never got as far as writing the header
    pid, start = struct.unpack_from("<qq", raw, 64)
    boot = raw[88:104]
    return pid, _process.liveness(pid, start, boot).value


def describe(seg: Segment) -> dict[str, Any]:
    """Kind-specific statistics of an open segment (empty if the kind has none)."""
    if seg.header is None:
        return {}
    module = _DESCRIBERS.get(seg.header.kind)
    stats: dict[str, Any] = {}
    if module is not None:
        try:
            stats = dict(importlib.import_module(module).describe(seg))
        except (ImportError, AttributeError):
            stats = {}
        except (ShmkitError, ValueError) as exc:
            stats = {"error": str(exc)}
    return stats


def discover(*, with_stats: bool = False) -> list[Entry]:
    """Every shmkit object in /dev/shm, plus semaphores whose segment is gone."""
    if _platform.SHM_DIR is None:
        return []
    files = set(os.listdir(_platform.SHM_DIR))
    tag = _names.PREFIX
    sem_files = {f for f in files if f.startswith("sem." + tag)}
    entries = [
        _inspect("/" + f, sem_files, with_stats=with_stats)
        for f in sorted(files)
        if f.startswith(tag) and not _is_generation_of_a_root(f, files)
    ]
    owned = {p for e in entries for p in e.parts}
    for f in sorted(sem_files):
        sysname = "/" + f[len("sem.") :]
        if sysname in owned:
            continue
        entry = Entry(name=sysname, sysname=sysname, kind="semaphore", state="orphan-semaphore")
        entry.parts = [sysname]
        with contextlib.suppress(OSError):
            entry.created = os.stat(os.path.join(_platform.SHM_DIR, f)).st_mtime
        entries.append(entry)
    return entries


def find(name: str, *, with_stats: bool = True) -> Entry:
    """The entry for a user name, system name, or verbatim name; NotFound if absent."""
    sysname = name if name.startswith("/") else _names.system_name(name)
    if _platform.SHM_DIR is None or not os.path.exists(
        os.path.join(_platform.SHM_DIR, sysname.lstrip("/"))
    ):
        raise NotFound(f"no shared-memory object called {name!r}")
    files = set(os.listdir(_platform.SHM_DIR))
    return _inspect(sysname, {f for f in files if f.startswith("sem.")}, with_stats=with_stats)


def _is_generation_of_a_root(f: str, files: set[str]) -> bool:
    """A dict's generation segment whose root exists (listed as one of its parts)."""
    parsed = dict_gens.split("/" + f)
    return parsed is not None and parsed[0].lstrip("/") in files


def _remove_parts(entry: Entry) -> list[str]:
    removed = []
    segment = entry.parts[0] if entry.state != "orphan-semaphore" else ""
    if segment:
        gens = [p for p in entry.parts[1:] if dict_gens.split(p) is not None]
        sems = [p for p in entry.parts[1:] if p not in gens]
        if unlink_all(segment, max(len(sems), _names.MAX_SEMS)):
            removed.append(segment)
        removed += sems
        removed += [g for g in gens if unlink_shm(g)]
    else:
        for sem in entry.parts:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(_platform.SHM_DIR or "", _sem_file(sem)))
                removed.append(sem)
    _mutex.remove_lock_files(entry.sysname, 4)
    return removed


def remove(name: str) -> list[str]:
    """Remove an object and every part of it (segment, semaphores). Returns what went."""
    try:
        entry = find(name, with_stats=False)
    except NotFound:
        sysname = name if name.startswith("/") else _names.system_name(name)
        sems = [
            "/" + f[4:]
            for f in (os.listdir(_platform.SHM_DIR) if _platform.SHM_DIR else [])
            if f.startswith(_sem_file(sysname) + ".s") or f == _sem_file(sysname)
        ]
        if not sems:
            raise
        entry = Entry(name=name, sysname=sysname, kind="semaphore", state="orphan-semaphore")
        entry.parts = sems
    return _remove_parts(entry)


@contextlib.contextmanager
def _single_cleaner() -> Iterator[None]:
    path = os.path.join(_mutex._lock_dir(), "gc.lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def gc(*, act: bool = False, force: bool = False, grace: float = DEFAULT_GRACE) -> list[Entry]:
    """Entries that are provably abandoned (and removed when ``act``).

    Abandoned: the creator is dead (pid gone, or reused by a newer process)
    and no live process is attached; or the segment is corrupt; or a
    semaphore has lost its segment. Objects younger than ``grace`` seconds
    are skipped (a creator may still be initialising). ``unknown`` liveness
    (another boot or PID namespace) counts as alive unless ``force``.
    Only objects of the current uid are considered. One cleaner runs at a time.
    """
    with _single_cleaner():
        now = time.time()
        chosen = []
        for entry in discover():
            if entry.uid not in (-1, os.geteuid()):
                continue
            if now - entry.created < grace:
                continue
            abandoned = entry.abandoned or (
                force and entry.creator != "alive" and entry.attached == 0
            )
            if not abandoned:
                continue
            chosen.append(entry)
            if act:
                _remove_parts(entry)
        return chosen
