"""Latest's writer table: who may set, and whether they live (format in latest_slot).

Each writer handle holds an OFD lock on its 16-byte entry (pid, start time)
of the table at WTABLE; the kernel drops the lock when the process dies, so
a locked entry is a live writer whatever its PID namespace, and an entry
without its lock is a writer that died (a closing writer clears its entry
before unlocking). Entries are claimed under the writer mutex.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

from .. import _ofd, _process
from .._layout import Kind
from ..errors import LayoutError
from ..segment import Segment
from .latest_slot import VERSION_AT, WRITERS, WTABLE, parse_params, slot_offset


@dataclass(frozen=True)
class LatestStats:
    """A snapshot of a Latest, for monitoring (``statistics()``)."""

    version: int
    writer_deaths: int
    live_writers: tuple[int, ...]
    dead_writers: tuple[int, ...]
    waiters: int  # processes blocked in wait_newer; -1 where the platform cannot tell
    retries: int  # this handle: reads retried because a writer overtook them
    starved: int  # this handle: ReadStarved raised


def claim(ctl: memoryview, fd: int, base: int) -> int:
    """Take a free entry (OFD lock, then pid and start time) and clear dead writers' entries.

    ``ctl`` is the body as 8-byte words; returns the entry's index, or -1 when
    all WRITERS entries are live.
    """
    mine = -1
    for i in range(WRITERS):
        word = (WTABLE + 16 * i) // 8
        off = base + WTABLE + 16 * i
        if mine < 0 and _ofd.try_lock(fd, off):
            mine = i
            me = _process.current()
            ctl[word] = me.pid
            ctl[word + 1] = me.start
        elif ctl[word] and not _ofd.is_locked(fd, off):
            ctl[word] = ctl[word + 1] = 0  # a writer that died between sets
    return mine


def scan(ctl: memoryview, fd: int, base: int, mine: int) -> tuple[list[int], list[int]]:
    """(live pids, dead pids) of the table; ``mine`` is this handle's own entry (or -1)."""
    live: list[int] = []
    dead: list[int] = []
    for i in range(WRITERS):
        word = (WTABLE + 16 * i) // 8
        pid = ctl[word]
        if i == mine:
            live.append(pid)
        elif _ofd.is_locked(fd, base + WTABLE + 16 * i):
            live.append(pid)  # may still be 0 for an instant while a writer claims it
        elif pid and ctl[word] == pid:
            # Re-read after the probe: a closing writer clears its entry before unlocking.
            dead.append(pid)
    return live, dead


def describe(seg: Segment) -> dict[str, object]:
    """JSON-serialisable facts about an opened LATEST segment (for ``shmkit info``).

    Needs no numpy. Raises LayoutError if ``seg`` is not a valid Latest.
    """
    header = seg.header
    if header is None or header.kind != Kind.LATEST:
        raise LayoutError(f"{seg.name!r} is not a latest")
    p = parse_params(header.params, header.body_size, f"latest {seg.name!r}")
    mm = seg.mmap
    base = header.body_off
    version, deaths = struct.unpack_from("<QQ", mm, base + VERSION_AT)
    length = None
    if version:
        seq, n = struct.unpack_from("<QQ", mm, base + slot_offset(p, version))
        length = n if seq == 2 * version + 2 and n <= p.size else None
    writers: list[dict[str, object]] = []
    fd = _ofd.open_for_locks(seg.sysname)
    try:
        for i in range(p.nwriters):
            pid, start = struct.unpack_from("<QQ", mm, base + WTABLE + 16 * i)
            locked = fd is not None and _ofd.is_locked(fd, base + WTABLE + 16 * i)
            if pid or locked:
                alive = locked or (fd is None and _process.liveness(pid, start).value != "dead")
                writers.append({"pid": pid, "alive": alive})
    finally:
        if fd is not None:
            os.close(fd)
    (waiters,) = struct.unpack_from("<I", mm, base + VERSION_AT + 24)
    info: dict[str, object] = {
        "kind": "latest",
        "values": "array" if p.array is not None else "bytes",
        "size": p.size,
        "slots": p.nslots,
        "checksum": p.checksum,
        "version": version,
        "length": length,
        "writer_deaths": deaths,
        "writers": writers,
        "waiters": waiters,
    }
    if p.array is not None:
        info.update(shape=list(p.array.shape), dtype=p.array.spec, order=p.array.order)
    return info
