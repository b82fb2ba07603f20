"""SharedDict generations: the segments a dict grows into, their names and sizes.

A dict is its root segment (the user's name, generation 0) plus, once it has
grown, the segment of its current generation N, ``<root sysname>~gN``. No user
name maps to such a name (``~`` is not allowed in names, and the hashed form
``<prefix>~<12 hex>`` never ends in ``~g<digits>``), so a generation can never
collide with another object. The root holds the one writer mutex and the
``gen`` word (format: ``dict_table``); growth runs under that mutex:

1. sweep every ``<root>~g*`` but the current one (what a grower killed before
   or after publishing left; nobody maps them: only a lock holder creates one,
   and handles follow the ``gen`` word, which names the current one);
2. create ``<root>~g(N+1)``, twice the entries and at least twice the heap;
3. one C call copies every live block into it and publishes it with one
   release store of ``gen`` (``_dict.DictBase._c_grow``);
4. unlink ``<root>~gN`` (N >= 1); processes still mapping it keep the memory
   until they follow ``gen``, which their next operation does.

A grower killed anywhere before step 3's store leaves the old table current
and untouched; after it, the new one complete. Either way the next grower (or
a writable ``verify()``, or ``unlink()``) removes what is left over.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import re
import struct
from typing import TYPE_CHECKING, Any, Final

from .. import _crash, _mutex, _platform
from .._core import _dict
from .._layout import Kind
from .._sysobj import unlink_shm
from ..errors import Full, LayoutError, MessageTooLarge, NotFound
from ..segment import Segment
from . import dict_table as fmt

if TYPE_CHECKING:
    from ..mapping import SharedDict

SEP: Final = "~g"
_GEN: Final = re.compile(r"(.+)~g([0-9]{1,9})")
#: Generations a dict may reach (capacity doubles each time).
MAX_GENERATION: Final = 64


def sysname_of(root_sysname: str, gen: int) -> str:
    """The system name of generation ``gen`` (>= 1) of the dict at ``root_sysname``."""
    return f"{root_sysname}{SEP}{gen}"


def split(sysname: str) -> tuple[str, int] | None:
    """``(root sysname, generation)`` for a generation segment's name, else None."""
    m = _GEN.fullmatch(sysname)
    if m is None or int(m.group(2)) < 1:
        return None
    return m.group(1), int(m.group(2))


def existing(root_sysname: str, *, upto: int = 0) -> list[str]:
    """The generation segments of a root that exist now (sorted by generation).

    Without a /dev/shm to list (macOS) it probes generations 1..``upto`` + 1.
    """
    if _platform.SHM_DIR is None:
        found = []
        for gen in range(1, upto + 2):
            path = sysname_of(root_sysname, gen)
            try:
                os.close(os.open(path, os.O_RDONLY))  # pragma: no cover - macOS only
            except OSError:
                continue
            found.append(path)  # pragma: no cover
        return found
    base = root_sysname.lstrip("/")
    gens = []
    for f in os.listdir(_platform.SHM_DIR):
        parsed = split("/" + f)
        if parsed is not None and parsed[0] == "/" + base:
            gens.append((parsed[1], "/" + f))
    return [name for _gen, name in sorted(gens)]


def sweep(root_sysname: str, keep: int | None, *, upto: int = 0) -> list[str]:
    """Unlink every generation segment of a root except ``keep``; return their names.

    Only safe under the root's writer mutex (or when the dict is being
    destroyed): a grower creates the next generation while holding it.
    """
    removed = []
    for name in existing(root_sysname, upto=upto):
        parsed = split(name)
        if parsed is not None and parsed[1] != keep and unlink_shm(name):
            removed.append(name)
    return removed


def next_size(p: fmt.DictParams, used: int, need: int, what: str) -> tuple[int, int]:
    """Capacity and heap of the generation after ``p``: twice the entries, and a
    heap of twice what the live entries and the entry being stored need (the
    old heap at least; the copy packs blocks, so a fragmented heap comes back
    whole). Full when ``max_bytes`` (or shmkit's limits) stop it;
    MessageTooLarge when no table could hold the entry.
    """
    if p.generation + 1 > MAX_GENERATION:
        raise Full(f"{what} has grown {p.generation} times; it grows no further")
    capacity = min(fmt.MAX_CAPACITY, 2 * p.capacity)
    heap = max(p.heap_size, 2 * (used + need))
    heap = -(-heap // fmt.UNIT) * fmt.UNIT
    if need > fmt.MAX_HEAP:
        raise MessageTooLarge(f"{what}: an entry of {need} bytes is beyond any table's heap")
    limit = fmt.MAX_HEAP
    if p.max_bytes:
        # The largest heap whose table (index included) stays within max_bytes.
        limit = p.max_bytes - fmt.body_size(capacity, fmt.MIN_HEAP) + fmt.MIN_HEAP
        limit = min(limit, fmt.MAX_HEAP) // fmt.UNIT * fmt.UNIT
    heap = min(heap, limit)
    if heap < used + need or heap < fmt.MIN_HEAP:
        raise Full(
            f"{what} is full, and a larger table would pass max_bytes={p.max_bytes} "
            f"({p.capacity} entries and {p.heap_size} heap bytes now)"
        )
    return capacity, heap


def geometry(seg: Segment, p: fmt.DictParams) -> tuple[int, int, int, int, int, int, int, int]:
    """The table arguments of ``_c_retarget``/``_c_grow`` (after the mapping)."""
    assert seg.header is not None
    idx0, idx1 = p.index_off
    return (
        seg.header.body_off,
        p.capacity,
        p.nslots,
        p.heap_size,
        idx0,
        idx1,
        p.heap_off,
        p.generation,
    )


def _check_same(p: fmt.DictParams, root: fmt.DictParams, gen: int, what: str) -> None:
    if (p.generation, p.seed, p.max_key, p.codec, p.grow, p.max_bytes) != (
        gen,
        root.seed,
        root.max_key,
        root.codec,
        root.grow,
        root.max_bytes,
    ):
        raise LayoutError(f"{what}: generation {gen} does not belong to this dict")


def open_generation(
    root: Segment,
    root_p: fmt.DictParams,
    gen: int,
    *,
    readonly: bool,
    trust_uids: tuple[int, ...] | None = None,
) -> tuple[Segment, fmt.DictParams]:
    """Open generation ``gen`` (>= 1) of a dict; NotFound if a newer one replaced it.

    A writable handle takes an attach slot in it, as in any segment it maps:
    ``shmkit info`` then shows who uses a generation, and even a shmkit that
    does not know generations never judges one in use abandoned.
    """
    what = f"dict {root.name!r}"
    seg = Segment._open_object(
        root.sysname,
        Kind.DICT,
        readonly=readonly,
        sysname=sysname_of(root.sysname, gen),
        trust_uids=trust_uids,
    )
    try:
        assert seg.header is not None
        p = fmt.parse_params(seg.header.params, seg.header.body_size, what)
        _check_same(p, root_p, gen, what)
        return seg, p
    except BaseException:
        seg.close()
        raise


def create_generation(
    root: Segment, p: fmt.DictParams, capacity: int, heap: int
) -> tuple[Segment, fmt.DictParams]:
    """Create the (empty) segment of generation ``p.generation + 1``; the caller
    holds the writer mutex and has swept leftovers, so the name is free."""
    assert root.header is not None
    gen = p.generation + 1
    params = fmt.make_params(
        capacity,
        heap,
        p.max_key,
        p.seed,
        p.codec,
        generation=gen,
        grow=p.grow,
        max_bytes=p.max_bytes,
    )
    what = f"dict {root.name!r}"
    parsed = fmt.parse_params(params, fmt.body_size(capacity, heap), what)
    seg = Segment._create_object(
        f"{root.name}{SEP}{gen}",
        Kind.DICT,
        body_size=parsed.body_size,
        params=params,
        mode=root.header.mode,
        sysname=sysname_of(root.sysname, gen),
    )
    return seg, parsed


def counters(seg: Segment) -> tuple[int, ...]:
    """The first eight control words of a table: writes, epoch, count, tombs,
    used, bump, dirty, deaths (a racy snapshot, for ``ls``/``info``)."""
    assert seg.header is not None
    return struct.unpack_from("<8Q", seg.mmap, seg.header.body_off + fmt.WRITES_AT)


def describe(seg: Segment) -> dict[str, object]:
    """JSON-serialisable facts about an opened dict root (``shmkit ls``/``info``).

    The entries and bytes are those of the current generation's table; the
    ``writes`` counter and the generation live in the root.
    """
    header = seg.header
    if header is None or header.kind != Kind.DICT:
        raise LayoutError(f"{seg.name!r} is not a dict")
    what = f"dict {seg.name!r}"
    p = fmt.parse_params(header.params, header.body_size, what)
    writes = counters(seg)[0]
    (gen,) = struct.unpack_from("<Q", seg.mmap, header.body_off + fmt.GEN_AT)
    table, tp, total = seg, p, header.total_size
    if p.generation == 0 and gen > 0:
        try:
            table, tp = open_generation(seg, p, gen, readonly=True)
            assert table.header is not None
            total += table.header.total_size
        except (NotFound, LayoutError):
            table = seg  # replaced meanwhile: show the root's figures
    try:
        _w, epoch, count, tombs, used, _bump, dirty, deaths = counters(table)
    finally:
        if table is not seg:
            table.close()
    return {
        "kind": "dict",
        "entries": count,
        "capacity": tp.capacity,
        "bytes_used": used,
        "heap_size": tp.heap_size,
        "generation": gen if p.generation == 0 else p.generation,
        "grows": p.grow,
        "max_bytes": p.max_bytes,
        "shm_bytes": total,
        "index_epoch": epoch,
        "tombstones": tombs,
        "writes": writes,
        "writer_deaths": deaths,
        "needs_repair": bool(dirty),
        "codec": p.codec,
        "max_key": p.max_key,
    }


def release_first_table(root: Segment, p: fmt.DictParams) -> None:
    """Give the root's own table (generation 0) back to the system once the dict
    has grown out of it: its index and heap pages are removed from the tmpfs
    file (MADV_REMOVE; the file keeps its size, so nobody gets SIGBUS, and the
    pages read as zeros). Safe under readers still copying from it: ``_c_grow``
    bumped its epoch first, so they retry and follow the generation word."""
    madv = getattr(mmap, "MADV_REMOVE", None)
    assert root.header is not None
    if madv is None or root.readonly:
        return  # pragma: no cover - not Linux: the memory stays until unlink()
    page = mmap.PAGESIZE
    start = -(-(root.header.body_off + p.index_off[0]) // page) * page
    end = (root.header.body_off + p.body_size) // page * page
    if end > start:
        with contextlib.suppress(OSError):
            root.mmap.madvise(madv, start, end - start)


def grow(d: SharedDict[Any], need: int, timeout: float | None) -> None:
    """Build the next generation (a table twice the size), copy, publish, follow.

    Runs under the writer mutex held from Python: creating a segment is
    Python code, but the shared state changes in one C call (``_c_grow``)
    and every step before it touches only the new, unpublished segment.
    """
    root = d._segment()
    seen = d._p.generation
    with d._held(timeout) as got:
        d._remap()
        if d._p.generation != seen:
            return  # another writer grew it meanwhile: retry the write there
        sweep(root.sysname, seen, upto=seen)
        used = d._c_counters()[4]
        capacity, heap = next_size(d._p, used, need, f"dict {d.name!r}")
        seg, p = create_generation(root, d._p, capacity, heap)
        try:
            if _crash.ARMED:
                _crash.point("dict.grow.created")
            wait = -2.0 if got == _mutex.OWNER_DIED else -1.0  # we hold it (a dead holder before)
            copied = d._c_grow(seg.mmap, *geometry(seg, p), wait)
            if copied is _dict.MOVED:  # cannot happen while we hold the mutex
                raise LayoutError(f"dict {d.name!r}: generation changed under the lock")
        except BaseException:
            seg.unlink()
            seg.close()
            raise
        old, d._gen_seg, d._p = d._gen_seg, seg, p
        if old is not None:
            old.close()
        else:
            release_first_table(root, d._root_p)
        if _crash.ARMED:
            _crash.point("dict.grow.followed")
        sweep(root.sysname, p.generation, upto=p.generation)
