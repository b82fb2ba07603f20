"""SharedDict: a hash table in shared memory that unrelated processes open by name.

::

    d = SharedDict.create("cfg", capacity=10_000)     # entries; heap bytes: size=
    d["mode"] = b"fast"                               # str or bytes keys, bytes values
    SharedDict.open("cfg")["mode"]                    # b'fast', in any other process
    d.update_with("hits", lambda v: b"%d" % (int(v or 0) + 1))   # atomic across processes
    d.wait_changed("mode", timeout=5.0)               # until another process changes it

    cnt = SharedDict.create("counts", codec="pickle")  # any picklable value (trusted writers)

Every operation costs the same whatever the number of keys: a lookup hashes
the key (a seeded 64-bit hash stored in the header, never Python's ``hash()``)
and probes an open-addressing index. Reads take no lock and never see a torn
key or value (each entry is validated like a seqlock and retried); writes
serialise on a robust mutex taken and released inside one C call
(``shmkit._core._dict``; format and ordering rule: ``shmkit._shm.dict_table``).

Sizing: ``capacity`` entries and ``size`` heap bytes at creation. When either
runs out the dict grows (default) into a new segment twice the size that every
process follows (``shmkit._shm.dict_gens``); ``grow=False``, or ``max_bytes=``
reached, raises ``Full`` instead.

Crash safety: a writer killed at any instant leaves every key with its old or
its new value; the next writer repairs the free space (see ``verify()``).
Lifetime is explicit as for every shmkit object: ``unlink()`` removes it.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping
from typing import Any, Final, TypeVar, overload

from . import _codec, _mutex, _names, _wait
from ._codec import Codec
from ._core import _dict
from ._core._dict import DictBase
from ._handle import Handle, built_or_removed
from ._layout import Kind
from ._shm import dict_gens
from ._shm import dict_table as fmt
from ._shm.dict_table import DictStats
from .errors import (
    LayoutError,
    LockTimeout,
    NotFound,
    PermissionDenied,
    ReadStarved,
    Timeout,
)
from .segment import Segment, open_or_create

__all__ = ["DictStats", "SharedDict", "describe"]

V = TypeVar("V")
Key = str | bytes

#: How long a read keeps retrying while writers overtake it before ReadStarved.
READ_PATIENCE: Final = 2.0
_MISSING: Final = object()
_PLAIN = {"bytes", "pickle", "msgpack"}


class SharedDict(DictBase, Handle, MutableMapping[Key, V]):
    """A ``MutableMapping`` of str/bytes keys in shared memory, shared by name.

    ``d[k]``, ``k in d``, ``len(d)`` and ``d.get(k)`` are lock-free C calls;
    ``d[k] = v`` and ``del d[k]`` take the writer mutex inside one C call.
    ``keys()``, ``values()`` and ``items()`` return lists (snapshots, each
    entry read consistently; not one atomic snapshot of the whole map while
    writers run). Raises MessageTooLarge (a ValueError) for a key longer than
    ``max_key`` or an entry larger than the heap, Full when ``capacity``
    entries or the heap are used up, TypeError for keys other than str/bytes.
    """

    _WHAT = "dict"

    def __init__(
        self,
        seg: Segment,
        params: fmt.DictParams,
        codec: Codec[Any],
        trust_uids: Iterable[int] | None = None,
    ) -> None:
        assert seg.header is not None
        self._name = seg.name
        self._seg: Segment | None = seg  # the root: writer mutex, generation word
        self._gen_seg: Segment | None = None  # the current generation's table, once grown
        self._root_p = params
        self._trust = None if trust_uids is None else tuple(trust_uids)  # for generations
        self._p = params  # the current table's params
        self.readonly = seg.readonly
        self._codec = codec
        raw = isinstance(codec, _codec.RawCodec)
        base = seg.header.body_off
        self._mutex = None if self.readonly else _mutex.Mutex(seg.mmap, base, seg.sysname, 0)
        self._flock = self._mutex is not None and self._mutex.kind != "pthread"
        self._c_attach(
            seg.mmap,
            self._name,
            base,
            params.max_key,
            params.seed,
            self._flock,
            params.grow,
            None if raw else self._encode,
            None if raw else codec.decode,
        )
        self._c_retarget(seg.mmap, *dict_gens.geometry(seg, params))
        try:
            self._remap()
        except BaseException:
            self.close()
            raise

    def _encode(self, value: Any) -> Any:
        return _codec.as_bytes(self._codec.encode(value))

    # ------------------------------------------------------------ lifecycle

    @classmethod
    def create(
        cls,
        name: str,
        *,
        capacity: int = fmt.DEFAULT_CAPACITY,
        size: int | None = None,
        max_key: int = fmt.DEFAULT_MAX_KEY,
        codec: str | Codec[Any] = "bytes",
        mode: int = 0o600,
        grow: bool = True,
        max_bytes: int | None = None,
    ) -> SharedDict[Any]:
        """Create an empty dict; AlreadyExists if the name is taken.

        Args:
            capacity: entries the first table holds.
            size: heap bytes for keys and values (default 256 per entry of
                capacity, at least 64 KiB); rounded up to 64.
            max_key: longest key in bytes (str keys count their UTF-8 bytes).
            codec: ``"bytes"`` (default: bytes-like in, ``bytes`` out),
                ``"msgpack"``, ``"pickle"`` (every writer fully trusted) or a
                Codec; its name is recorded in the header.
            mode: permission bits (0o600: this user only).
            grow: when the table is full, grow into a table twice the size
                that every process follows (default); False: raise Full.
            max_bytes: the largest table (index and heap, bytes) growth may
                build; beyond it a full table raises Full. None: no limit
                but /dev/shm itself (ShmFull when it has no room).
        """
        cod = _codec.resolve(codec)
        params, body = fmt.user_params(
            capacity, size, max_key, cod.name, grow=grow, max_bytes=max_bytes
        )
        parsed = fmt.parse_params(params, body, f"dict {name!r}")
        seg = Segment._create_object(
            name,
            Kind.DICT,
            body_size=parsed.body_size,
            params=params,
            sem_values=[],
            mode=mode,
            init=_mutex.Mutex.initialize,
        )
        return built_or_removed(seg, lambda: cls(seg, parsed, cod))

    @classmethod
    def open(
        cls,
        name: str,
        *,
        codec: str | Codec[Any] | None = None,
        readonly: bool = False,
        wait: float | None = 0.0,
        trust_uids: Iterable[int] | None = None,
    ) -> SharedDict[Any]:
        """Attach to an existing dict by name.

        ``codec=None`` uses the codec the creator recorded when it is
        ``"bytes"`` or ``"msgpack"``; a ``"pickle"`` (or custom) dict must be
        opened with that codec named explicitly, so nothing is unpickled
        unless this process asked for it (``codec="bytes"`` reads raw bytes).
        ``readonly=True`` maps it read-only (writes raise PermissionDenied).
        ``wait``, ``trust_uids``: see :meth:`Segment.open`.
        """
        seg = Segment._open_object(
            name, Kind.DICT, readonly=readonly, wait=wait, trust_uids=trust_uids
        )
        try:
            assert seg.header is not None
            what = f"dict {name!r}"
            parsed = fmt.parse_params(seg.header.params, seg.header.body_size, what)
            if parsed.generation != 0:
                raise LayoutError(f"{what}: generation {parsed.generation} is not a dict's root")
            if seg.header.nsems != 0:
                raise LayoutError(f"{what}: {seg.header.nsems} semaphores, expected none")
            if codec is None:
                if parsed.codec not in ("bytes", "msgpack"):
                    raise ValueError(
                        f"{what} stores values with codec {parsed.codec!r}; pass codec= to "
                        "open it (pickle runs code chosen by whoever wrote the value)"
                    )
                codec = parsed.codec
            return cls(seg, parsed, _codec.resolve(codec), trust_uids)
        except BaseException:
            seg.close()
            raise

    @classmethod
    def open_or_create(
        cls,
        name: str,
        *,
        capacity: int = fmt.DEFAULT_CAPACITY,
        size: int | None = None,
        max_key: int = fmt.DEFAULT_MAX_KEY,
        codec: str | Codec[Any] = "bytes",
        mode: int = 0o600,
        grow: bool = True,
        max_bytes: int | None = None,
    ) -> SharedDict[Any]:
        """Open ``name`` or create it; safe when many processes race.

        An existing dict keeps its creator's sizes and growth policy.
        """
        return open_or_create(
            lambda: cls.create(
                name,
                capacity=capacity,
                size=size,
                max_key=max_key,
                codec=codec,
                mode=mode,
                grow=grow,
                max_bytes=max_bytes,
            ),
            lambda: cls.open(name, codec=codec),
            f"dict {name!r}",
        )

    def close(self) -> None:
        """Detach this handle (idempotent). The entries stay until ``unlink()``."""
        seg, self._seg = self._seg, None
        if seg is None:
            return
        self._c_detach()
        mutex, self._mutex = self._mutex, None
        if mutex is not None:
            mutex.close()
        gen_seg, self._gen_seg = self._gen_seg, None
        if gen_seg is not None:
            gen_seg.close()
        seg.close()

    def unlink(self) -> None:
        """Remove the dict's name and every generation segment it grew, for everyone."""
        sysname = self._seg.sysname if self._seg is not None else _names.system_name(self._name)
        Segment.remove(self._name)
        dict_gens.sweep(sysname, None, upto=self._p.generation)

    def __reduce__(self) -> tuple[Any, ...]:
        codec: object = self._codec.name if self._codec.name in _PLAIN else self._codec
        return (_reopen, (self._name, codec, self.readonly))

    def __repr__(self) -> str:
        state = " closed" if self._seg is None else ""
        return (
            f"<SharedDict {self._name!r} capacity={self._p.capacity} "
            f"codec={self._codec.name!r}{state}>"
        )

    # ------------------------------------------------------------ properties

    @property
    def capacity(self) -> int:
        """The most entries the dict holds."""
        return self._p.capacity

    @property
    def size(self) -> int:
        """Heap bytes for keys and values."""
        return self._p.heap_size

    @property
    def max_key(self) -> int:
        return self._p.max_key

    @property
    def codec(self) -> Codec[Any]:
        return self._codec

    # ------------------------------------------------------------ slow paths (C calls these)

    def _read_slow(self, key: Key) -> tuple[int, bytes] | None:
        """A read writers kept overtaking: retry with backoff, ReadStarved after a while."""
        end = time.monotonic() + READ_PATIENCE
        attempts = 0
        while True:
            self._check_open()
            got = self._c_read(key, 64)
            if got is not False:
                return got  # type: ignore[return-value]
            attempts += 1
            if time.monotonic() >= end:
                raise ReadStarved(
                    f"dict {self._name!r}: no stable copy of {key!r} in {READ_PATIENCE} s "
                    "(writers kept replacing it, or the entry is corrupt)"
                )
            time.sleep(0 if attempts < 4 else min(1e-3, 1e-5 * attempts))

    def _getitem_slow(self, key: Key) -> Any:
        got = self._read_slow(key)
        if got is None:
            raise KeyError(key)
        return self._decode(got[1])

    def _decode(self, raw: bytes) -> Any:
        return raw if isinstance(self._codec, _codec.RawCodec) else self._codec.decode(raw)

    def _write_slow(self, op: int, key: Any, data: Any, expect: int, timeout: float | None) -> Any:
        """One write op, waiting up to ``timeout`` for the writer mutex (LockTimeout),
        following the dict into newer generations and growing it when full."""
        self._check_open()
        if self._mutex is None:
            raise PermissionDenied(f"dict {self._name!r} is open readonly")
        timeout = _wait.check_timeout(timeout)
        end = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if end is None else max(0.0, end - time.monotonic())
            try:
                got = self._write_once(op, key, data, expect, left)
            except _dict.NeedGrowth as exc:
                left = None if end is None else max(0.0, end - time.monotonic())
                self._grow(int(exc.args[0]), left)
                continue
            if got is not _dict.MOVED:
                return got
            self._remap()

    def _write_once(self, op: int, key: Any, data: Any, expect: int, timeout: float | None) -> Any:
        if not self._flock:

            def attempt() -> Any:
                got = self._c_write(op, key, data, expect, 0.0)
                return None if got is _dict.BUSY else (got,)

            def block(seconds: float) -> Any:
                got = self._c_write(op, key, data, expect, seconds)
                return None if got is _dict.BUSY else (got,)

            result = _wait.wait(attempt, block, timeout, on_slice=self._check_open)
            if result is None:
                raise LockTimeout(
                    f"dict {self._name!r}: another writer held the lock for {timeout} s"
                )
            return result[0]
        # flock backend: the mutex is held by Python around one C call.
        with self._held(timeout) as got:
            return self._c_write(op, key, data, expect, _held_wait(got))

    @contextlib.contextmanager
    def _held(self, timeout: float | None) -> Iterator[int]:
        """Hold the writer mutex from Python (flock, growth, verify): OK or OWNER_DIED."""
        mutex = self._mutex
        if mutex is None:
            raise PermissionDenied(f"dict {self._name!r} is open readonly")
        got = _wait.wait(
            lambda: _none_if_busy(mutex.try_acquire()),
            lambda s: _none_if_busy(mutex.acquire_slice(s)),
            timeout,
            on_slice=self._check_open,
        )
        if got is None:
            raise LockTimeout(f"dict {self._name!r}: another writer held the lock for {timeout} s")
        try:
            yield got
        finally:
            mutex.core.release_if_held()

    def _write(self, op: int, key: Any, data: Any = None, expect: int = 0) -> Any:
        if not self._flock and self._mutex is not None:
            try:
                got = self._c_write(op, key, data, expect, 0.0)
            except _dict.NeedGrowth:
                got = _dict.BUSY
            if got is not _dict.BUSY and got is not _dict.MOVED:
                return got
        return self._write_slow(op, key, data, expect, None)

    # ------------------------------------------------------------ generations

    def _remap(self) -> None:
        """Follow the root's generation word to the current table (takes no lock)."""
        root = self._segment()
        for attempt in range(10_000):
            gen = self._c_gen()
            if gen == self._p.generation:
                return
            if gen == 0 or gen < self._p.generation:
                raise LayoutError(f"dict {self._name!r}: generation went back to {gen}")
            try:
                seg, p = dict_gens.open_generation(
                    root, self._root_p, gen, readonly=self.readonly, trust_uids=self._trust
                )
            except NotFound:
                time.sleep(min(1e-3, 1e-5 * attempt))  # replaced meanwhile: read gen again
                continue
            try:
                self._c_retarget(seg.mmap, *dict_gens.geometry(seg, p))
            except BaseException:
                seg.close()
                raise
            old, self._gen_seg, self._p = self._gen_seg, seg, p
            if old is not None:
                old.close()
            return
        raise LayoutError(
            f"dict {self._name!r}: the segment of its current generation "
            f"{self._c_gen()} is missing (removed by hand, or by a shmkit that "
            "predates generations?)"
        )

    def _grow(self, need: int, timeout: float | None) -> None:
        dict_gens.grow(self, need, timeout)  # the next generation: build, copy, publish

    def _data(self, value: Any) -> Any:
        return value if isinstance(self._codec, _codec.RawCodec) else self._encode(value)

    # ------------------------------------------------------------ the mapping

    def __iter__(self) -> Iterator[Key]:
        return iter(self.keys())

    def _scan(self, mode: int) -> list[Any]:
        end = time.monotonic() + READ_PATIENCE
        while True:
            self._check_open()
            got = self._c_scan(mode)
            if got is not False:
                return got  # type: ignore[return-value]
            if time.monotonic() >= end:
                raise ReadStarved(f"dict {self._name!r}: writers kept reshaping the index")
            time.sleep(1e-4)

    def keys(self) -> list[Key]:  # type: ignore[override]
        """Every key (a list; each read consistently while writers run)."""
        return self._scan(0)

    def values(self) -> list[V]:  # type: ignore[override]
        """Every value (a list)."""
        return [self._decode(raw) for raw in self._scan(1)]

    def items(self) -> list[tuple[Key, V]]:  # type: ignore[override]
        """Every ``(key, value)`` pair (a list; each pair read as one)."""
        return [(k, self._decode(raw)) for k, raw in self._scan(2)]

    def set(self, key: Key, value: V, *, timeout: float | None = None) -> int:
        """``d[key] = value`` with a bound on waiting for other writers; returns the new version."""
        got: int = self._write_slow(_dict.OP_SET, key, self._data(value), 0, timeout)
        return got

    @overload
    def pop(self, key: Key) -> V: ...
    @overload
    def pop(self, key: Key, default: V | Any) -> V | Any: ...

    def pop(self, key: Key, default: Any = _MISSING) -> Any:
        """Remove ``key`` and return its value (``default``, or KeyError, if absent); atomic."""
        raw = self._write(_dict.OP_POP, key)
        if raw is None:
            if default is _MISSING:
                raise KeyError(key)
            return default
        return self._decode(raw)

    def popitem(self) -> tuple[Key, V]:
        """Remove and return some ``(key, value)``; KeyError if empty."""
        got = self._write(_dict.OP_POPITEM, None)
        if got is None:
            raise KeyError("popitem(): dictionary is empty")
        return got[0], self._decode(got[1])

    def setdefault(self, key: Key, default: V | None = None) -> V:
        """Return ``d[key]``, first storing ``default`` if absent (atomic)."""
        raw = self._write(_dict.OP_SETDEFAULT, key, self._data(default))
        return default if raw is None else self._decode(raw)  # type: ignore[return-value]

    def update(self, other: Any = (), /, **kwds: V) -> None:
        """Set every pair of ``other`` (a mapping or pairs) and ``kwds``: one C call
        under one acquisition of the writer lock for the whole batch (split only
        where the dict grows). Every key and value is checked first (nothing is
        stored if one is bad); readers may see part of the batch, as with
        separate sets, and no other writer's change lands in between.
        """
        pairs: Iterable[tuple[Key, V]]
        if isinstance(other, Mapping):
            pairs = other.items()
        elif hasattr(other, "keys"):
            pairs = ((k, other[k]) for k in other.keys())  # noqa: SIM118 - any object with keys()
        else:
            pairs = other
        keys: list[Key] = []
        data: list[Any] = []
        for key, value in itertools.chain(pairs, kwds.items()):
            keys.append(key)
            data.append(self._data(value))
        while keys:
            done, need = self._write(_dict.OP_UPDATE, keys, data)
            if not need:
                return
            del keys[:done], data[:done]
            self._grow(need, None)

    def clear(self) -> None:
        """Remove every entry at once: readers see the old map or the empty one."""
        self._write(_dict.OP_CLEAR, None)

    # ------------------------------------------------------------ versions and atomic updates

    def get_versioned(self, key: Key) -> tuple[int, V | None]:
        """``(version, value)`` read together; ``(0, None)`` if absent.

        Versions are unique and grow with every write; use them with
        :meth:`compare_and_set` and :meth:`wait_changed`.
        """
        self._check_open()
        got = self._c_read(key, 64)
        if got is False:
            got = self._read_slow(key)
        if got is None:
            return 0, None
        assert isinstance(got, tuple)
        return got[0], self._decode(got[1])

    def version(self, key: Key) -> int:
        """The current version of ``key`` (0 if absent)."""
        return self.get_versioned(key)[0]

    def compare_and_set(self, key: Key, version: int, value: V, *, delete: bool = False) -> bool:
        """Store ``value`` (or delete: ``delete=True``) if ``key`` is still at ``version``.

        ``version`` 0 means "absent". Returns True if it stored; atomic
        across processes.
        """
        data = None if delete else self._data(value)
        ok, _ver = self._write(_dict.OP_CAS, key, data, version)
        return bool(ok)

    def update_with(
        self, key: Key, fn: Callable[[V | None], V], *, timeout: float | None = None
    ) -> V:
        """Atomically replace ``key``'s value with ``fn(current)``; return the new value.

        ``fn`` gets the current value, or None when the key is absent. It runs
        outside the lock (no Python code ever runs under it), so it may run
        again if another process changed the key meanwhile: keep it free of
        side effects. Raises Timeout if other writers kept winning for
        ``timeout`` seconds (None: retry as long as it takes).
        """
        timeout = _wait.check_timeout(timeout)
        end = None if timeout is None else time.monotonic() + timeout
        tries = 0
        while True:
            version, current = self.get_versioned(key)
            new = fn(current)
            ok, _v = self._write(_dict.OP_CAS, key, self._data(new), version)
            if ok:
                return new
            tries += 1
            if end is not None and time.monotonic() >= end:
                raise Timeout(f"dict {self._name!r}: update_with({key!r}) lost {tries} races")
            if tries > 8:
                time.sleep(min(1e-3, 1e-5 * tries))

    def wait_changed(
        self, key: Key, timeout: float | None = None, *, version: int | None = None
    ) -> int:
        """Block until ``key``'s version differs from ``version``; return the new version.

        ``version`` defaults to the key's version at the call (0 = absent), so
        the call waits for the next change; pass the version you last read to
        miss nothing in between. Sleeps on a futex word every write bumps, in
        slices that notice Ctrl-C and ``close()``. Raises Timeout.
        """
        timeout = _wait.check_timeout(timeout)
        start = self.version(key) if version is None else version
        end = None if timeout is None else time.monotonic() + timeout
        while True:
            writes = self._c_counters()[0] & 0xFFFFFFFF
            now = self.version(key)
            if now != start:
                return now
            remaining = _wait.SLICE if end is None else min(_wait.SLICE, end - time.monotonic())
            if remaining <= 0:
                raise Timeout(f"dict {self._name!r}: {key!r} did not change in {timeout} s")
            self._c_wait(writes, remaining)
            self._check_open()

    # ------------------------------------------------------------ introspection

    def verify(self, *, timeout: float | None = 10.0) -> list[str]:
        """Check the whole structure; return the problems found (empty: sound).

        Every index slot (block in bounds and whole, hash matching the key,
        reachable from its home slot, no duplicate), the counters, and that
        live and free blocks tile the used heap exactly, in the current
        generation. A writable handle takes the writer lock and first repairs
        what a dead writer or grower left (as the next writer would); a
        read-only one checks without it (exact only while nobody writes).
        """
        self._check_open()
        timeout = _wait.check_timeout(timeout)
        if self._mutex is None:
            for _ in range(1000):
                got = self._c_verify(0.0)
                if isinstance(got, list):
                    return [str(x) for x in got]
                self._remap()  # MOVED
            raise ReadStarved(f"dict {self._name!r}: it kept growing during verify()")
        root = self._segment()
        with self._held(timeout) as held:
            self._remap()
            dict_gens.sweep(root.sysname, self._p.generation or None, upto=self._p.generation)
            got = self._c_verify(_held_wait(held))
        assert isinstance(got, list)  # neither BUSY nor MOVED while we hold the mutex
        return [str(x) for x in got]

    def statistics(self) -> DictStats:
        """A snapshot of sizes and counters (see :class:`DictStats`)."""
        self._check_open()
        self._remap()
        (writes, epoch, count, tombs, used, _bump, _dirty, deaths, waiters, comp, dropped) = (
            self._c_counters()
        )
        return DictStats(
            count,
            self._p.capacity,
            used,
            self._p.heap_size,
            tombs,
            self._p.generation,
            writes,
            deaths,
            comp,
            dropped,
            waiters,
            self._c_retries,
            epoch,
        )


def _none_if_busy(got: int) -> int | None:
    return None if got == _mutex.BUSY else got


def _held_wait(got: int) -> float:
    """The ``wait`` argument of a C call made while Python holds the mutex."""
    return -2.0 if got == _mutex.OWNER_DIED else -1.0


def _none_if(got: Any) -> Any:
    return None if got is _dict.BUSY else got


def _reopen(name: str, codec: object, readonly: bool) -> SharedDict[Any]:
    return SharedDict.open(name, codec=_codec.resolve(codec), readonly=readonly)


def describe(seg: Segment) -> dict[str, object]:
    """JSON-serialisable facts about an opened dict (``shmkit ls``/``info``): the
    current generation's entries, capacity and bytes used, and the generation."""
    return dict_gens.describe(seg)
