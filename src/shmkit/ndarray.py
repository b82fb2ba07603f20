"""SharedArray: a numpy array by name, zero-copy, described by its own header.

The creator fixes shape, dtype and memory order; they live in the segment's
validated header, so a reader needs only the name::

    with SharedArray.create("frame", (1080, 1920, 3), "uint8") as sa:
        sa.array[:] = 0                           # writes go straight to shared memory

    with SharedArray.open("frame", readonly=True) as ro:   # another program
        img = ro.array                            # zero-copy and read-only

    SharedArray.open("frame").unlink()            # destroy the name for everyone

Lifetime is explicit, as for every shmkit object: the array persists until
``unlink()`` (or ``shmkit rm``) even after its creator exits, and ``close()``
only detaches this handle. ``.array`` is a view of the mapping: a view (or a
slice of it) that outlives ``close()`` keeps the mapping alive and keeps
working, as with ``mmap``; copy it (``arr.copy()``) to keep data past the
object's life.

Concurrent writers coordinate with the optional writer lock, a robust mutex
the kernel releases if its holder dies::

    with sa.lock(timeout=1.0):
        if sa.owner_died:                         # last holder died mid-update
            ...                                   # the data may be half-written
        sa.array[10:20] = new_rows

Any fixed-size numpy dtype works, structured and non-native byte order
included; object dtypes (and structured dtypes holding objects) are refused at
create and at open, since an object field read from shared memory is a pointer
forged by whoever wrote it.
"""

from __future__ import annotations

import mmap
import os
import struct
import threading
import time
import weakref
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Final

from . import _dtype, _layout, _mutex, _process, _wait
from ._dtype import ArrayMeta
from ._handle import Handle, built_or_removed
from ._layout import Kind, align
from .errors import Closed, IncompatibleLayout, LayoutError, LockTimeout, PermissionDenied
from .segment import Segment, open_or_create

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import ArrayLike, DTypeLike, NDArray

__all__ = ["SharedArray", "describe", "parse_params"]

# Params (immutable, covered by the header CRC), little-endian:
# offset size field
#      0    4 version     PARAMS_VERSION
#      4    4 reserved    zero
#      8    . array meta  ndim, order, itemsize, nbytes, shape, dtype spec (see _dtype)
#
# Body (offsets from body_off, which is 64-aligned):
# offset size field
#      0   64 writer mutex   robust pthread mutex (unused by the flock backend)
#     64    4 state          FREE / HELD: the lock record, diagnostics and death detection
#     68    4 tid            holder's native thread id
#     72    8 pid            holder pid
#     80    8 start          holder start time (clock ticks since boot)
#     88    8 since_ns       time.time_ns() when taken
#     96    8 acquisitions   total acquisitions
#    104    8 owner_deaths   holders that died holding the lock
#    128    n data           nbytes of array data; body_size = align64(128 + nbytes)
#
# Lock ordering: take the mutex, write the record with state HELD stored last;
# release stores FREE, then unlocks. A taker that finds HELD knows the previous
# holder died inside (the flock backend has no EOWNERDEAD, so the record is the
# one signal both backends share). The data itself has no ordering rule: it is
# plain shared memory, coordinated by the lock or by the application.
_PARAMS: Final = struct.Struct("<II")
PARAMS_VERSION: Final = 1
_REC: Final = struct.Struct("<IIqqqqq")
_REC_OFF: Final = 64
DATA_OFF: Final = 128
_FREE: Final = 0
_HELD: Final = 1

_live: weakref.WeakSet[SharedArray] = weakref.WeakSet()


def parse_params(params: bytes, body_size: int, what: str = "array") -> ArrayMeta:
    """Validate an ARRAY segment's params against its body size (no numpy; LayoutError).

    The pure parse step of ``open``; the Hypothesis tests feed it random bytes.
    """
    if len(params) < _PARAMS.size:
        raise LayoutError(f"{what}: params are truncated")
    version, reserved = _PARAMS.unpack_from(params, 0)
    _layout.check_params_version(what, version, PARAMS_VERSION)
    if reserved:  # in use: a later version's
        raise IncompatibleLayout(
            f"{what}: array params reserved field is {reserved:#x}", version, PARAMS_VERSION
        )
    meta, used = _dtype.parse_meta(params[_PARAMS.size :], what)
    if _PARAMS.size + used != len(params):
        raise LayoutError(f"{what}: {len(params) - _PARAMS.size - used} stray bytes in params")
    if body_size != align(DATA_OFF + meta.nbytes):
        raise LayoutError(f"{what}: body of {body_size} bytes does not hold {meta.nbytes} bytes")
    return meta


def _params(shape: tuple[int, ...], dt: np.dtype[Any], order: str) -> bytes:
    return _PARAMS.pack(PARAMS_VERSION, 0) + _dtype.encode_meta(shape, dt, order)


def _view(
    mm: mmap.mmap, offset: int, meta: ArrayMeta, dt: np.dtype[Any], readonly: bool
) -> NDArray[Any]:
    """The zero-copy ndarray over ``meta.nbytes`` at ``offset``; never np.ndarray(buffer=)."""
    np = _dtype.numpy()
    mem = memoryview(mm)[offset : offset + meta.nbytes]
    if readonly:
        mem = mem.toreadonly()
    arr: NDArray[Any] = np.frombuffer(mem, dtype=dt, count=meta.count)
    return arr.reshape(meta.shape, order=meta.order)  # type: ignore[call-overload,no-any-return]


class SharedArray(Handle):
    """A numpy ndarray in named shared memory; its shape, dtype and order are in the header.

    Attributes:
        owner_died: while this handle holds :meth:`lock`, True if the previous
            holder died holding it (its update may be half done).
    """

    def __init__(self, seg: Segment, meta: ArrayMeta, dt: np.dtype[Any], readonly: bool) -> None:
        assert seg.header is not None
        self._name = seg.name
        self._seg: Segment | None = seg
        self._meta = meta
        self._dtype = dt
        self.readonly = readonly
        self._mm = seg.mmap
        self._rec = seg.header.body_off + _REC_OFF
        self._array: NDArray[Any] | None = _view(
            self._mm, seg.header.body_off + DATA_OFF, meta, dt, readonly
        )
        self._mutex = (
            None if readonly else _mutex.Mutex(self._mm, seg.header.body_off, seg.sysname, 0)
        )
        self._held = False
        self.owner_died = False
        _live.add(self)

    # ------------------------------------------------------------ lifecycle

    @classmethod
    def create(
        cls,
        name: str,
        shape: int | tuple[int, ...] | list[int],
        dtype: DTypeLike = "float64",
        *,
        order: str = "C",
        mode: int = 0o600,
    ) -> SharedArray:
        """Create a zero-filled array; AlreadyExists if the name is taken.

        Raises TypeError for an object or otherwise unshareable dtype and
        ValueError for a bad shape or order, before anything is created.
        """
        dims, dt, order = _dtype.normalize(shape, dtype, order)
        return cls._create(name, shape=dims, dt=dt, order=order, src=None, mode=mode)

    @classmethod
    def from_array(cls, name: str, arr: ArrayLike, *, mode: int = 0o600) -> SharedArray:
        """Create a shared copy of ``arr`` (same shape, dtype and C/F order).

        Readers that open the name see the data complete: it is copied in
        before the object is published.
        """
        np = _dtype.numpy()
        src = np.asarray(arr)
        order = "F" if src.flags.f_contiguous and not src.flags.c_contiguous else "C"
        dims, dt, order = _dtype.normalize(src.shape, src.dtype, order)
        if dims != src.shape:
            src = src.reshape(dims)  # pragma: no cover - asarray never has a subarray dtype
        return cls._create(name, shape=dims, dt=dt, order=order, src=src, mode=mode)

    @classmethod
    def _create(
        cls,
        name: str,
        *,
        shape: tuple[int, ...],
        dt: np.dtype[Any],
        order: str,
        src: NDArray[Any] | None,
        mode: int,
    ) -> SharedArray:
        params = _params(shape, dt, order)
        meta = parse_params(params, align(DATA_OFF + _nbytes(shape, dt)))
        if _dtype.to_dtype(meta.spec, meta.itemsize, "new array") != dt:
            raise TypeError(f"dtype {dt} does not survive storage; shmkit cannot share it")

        def init(mm: mmap.mmap, body_off: int) -> None:
            _mutex.Mutex.initialize(mm, body_off)
            if src is not None and meta.nbytes:
                view = _view(mm, body_off + DATA_OFF, meta, dt, False)
                view[...] = src
                del view

        seg = Segment._create_object(
            name,
            Kind.ARRAY,
            body_size=align(DATA_OFF + meta.nbytes),
            params=params,
            mode=mode,
            init=init,
        )
        return built_or_removed(seg, lambda: cls(seg, meta, dt, False))

    @classmethod
    def open(
        cls,
        name: str,
        *,
        readonly: bool = False,
        wait: float | None = 0.0,
        trust_uids: Iterable[int] | None = None,
    ) -> SharedArray:
        """Attach to an existing array by name.

        ``readonly=True`` maps the memory read-only: ``.array`` cannot be
        written (numpy refuses, and the page protection backs it up) and
        :meth:`lock` is unavailable. ``wait`` and ``trust_uids``: see
        :meth:`Segment.open`. Raises NotFound, or LayoutError when
        ``name`` is another kind of object or its header is invalid.
        """
        seg = Segment._open_object(
            name, Kind.ARRAY, readonly=readonly, wait=wait, trust_uids=trust_uids
        )
        try:
            assert seg.header is not None
            what = f"array {name!r}"
            meta = parse_params(seg.header.params, seg.header.body_size, what)
            dt = _dtype.to_dtype(meta.spec, meta.itemsize, what)
            return cls(seg, meta, dt, readonly)
        except BaseException:
            seg.close()
            raise

    @classmethod
    def open_or_create(
        cls,
        name: str,
        shape: int | tuple[int, ...] | list[int],
        dtype: DTypeLike = "float64",
        *,
        order: str = "C",
        mode: int = 0o600,
    ) -> SharedArray:
        """Open ``name`` or create it zero-filled; safe when many processes race.

        Raises LayoutError if it exists with another shape, dtype or order.
        """
        dims, dt, order = _dtype.normalize(shape, dtype, order)

        def check(sa: SharedArray) -> None:
            if (sa.shape, sa.dtype, sa.order) != (dims, dt, order):
                raise LayoutError(
                    f"array {name!r} exists as {sa._meta.shape} {sa._dtype} order {sa.order}, "
                    f"not {dims} {dt} order {order}"
                )

        return open_or_create(
            lambda: cls._create(name, shape=dims, dt=dt, order=order, src=None, mode=mode),
            lambda: cls.open(name),
            f"array {name!r}",
            check,
        )

    def close(self) -> None:
        """Detach this handle (idempotent); releases the lock if this handle holds it.

        Views of ``.array`` taken earlier stay valid and keep the mapping alive.
        """
        seg = self._seg
        if seg is None:
            return
        if self._held:
            self.release()
        mutex, self._mutex = self._mutex, None
        if mutex is not None and mutex.kind == "flock":
            mutex.close()
        # A pthread mutex is just dropped: a thread of ours still waiting in it
        # holds the Mutex, whose ctypes anchor keeps the mapping alive until it returns.
        self._array = None
        self._seg = None
        _live.discard(self)
        seg.close()

    def __reduce__(self) -> tuple[Any, ...]:
        return (_reopen, (self._name, self.readonly))

    def __repr__(self) -> str:
        state = " closed" if self._seg is None else ""
        ro = " readonly" if self.readonly else ""
        return (
            f"<SharedArray {self._name!r} shape={self._meta.shape} dtype={self._dtype} "
            f"order={self._meta.order}{ro}{state}>"
        )

    # ------------------------------------------------------------ data

    @property
    def array(self) -> NDArray[Any]:
        """The zero-copy ndarray over shared memory (read-only for readonly handles)."""
        arr = self._array
        if arr is None:
            raise Closed(f"array {self._name!r} is closed")
        return arr

    @property
    def shape(self) -> tuple[int, ...]:
        return self._meta.shape

    @property
    def dtype(self) -> np.dtype[Any]:
        return self._dtype

    @property
    def order(self) -> str:
        """``"C"`` or ``"F"``: the memory order the creator chose."""
        return self._meta.order

    @property
    def nbytes(self) -> int:
        return self._meta.nbytes

    # ------------------------------------------------------------ lock

    def _check_open(self) -> None:
        self._held_mutex()

    def _held_mutex(self) -> _mutex.Mutex:
        if self._seg is None or (self._mutex is None and not self.readonly):
            raise Closed(f"array {self._name!r} is closed")
        if self._mutex is None:
            raise PermissionDenied(f"array {self._name!r} is open readonly; it has no writer lock")
        return self._mutex

    def acquire(self, timeout: float | None = None) -> bool:
        """Take the writer lock within ``timeout`` seconds (0 tries once); False on timeout 0.

        Raises LockTimeout (naming the holder) when a positive or None timeout
        runs out. Sets ``owner_died`` if the previous holder died holding it.
        """
        timeout = _wait.check_timeout(timeout)
        mutex = self._held_mutex()
        if self._held:
            raise RuntimeError(f"array {self._name!r}: this handle already holds the lock")
        got = mutex.acquire_within(timeout, self._check_open)
        if got is None:
            if timeout == 0:
                return False
            raise LockTimeout(self._holder_message(timeout))
        state, _tid, _pid, _start, _since, count, deaths = _REC.unpack_from(self._mm, self._rec)
        died = got == _mutex.OWNER_DIED or state == _HELD
        me = _process.current()
        _REC.pack_into(
            self._mm,
            self._rec,
            _FREE,
            threading.get_native_id(),
            me.pid,
            me.start,
            time.time_ns(),
            count + 1,
            deaths + died,
        )
        # HELD last: a death before this store leaves FREE, and nothing was touched yet.
        self._mm[self._rec : self._rec + 4] = _HELD.to_bytes(4, "little")
        self._held = True
        self.owner_died = died
        return True

    def release(self) -> None:
        """Release the writer lock held by this handle."""
        mutex = self._held_mutex()
        if not self._held:
            raise RuntimeError(f"array {self._name!r}: this handle does not hold the lock")
        self._mm[self._rec : self._rec + 4] = _FREE.to_bytes(4, "little")
        self._held = False
        self.owner_died = False
        mutex.release()

    @contextmanager
    def lock(self, timeout: float | None = None) -> Iterator[SharedArray]:
        """``with sa.lock(timeout=1):`` hold the writer lock for the block.

        The lock is advisory: it orders writers that use it, it does not stop
        a process that writes without it. Raises LockTimeout if not taken in time.
        """
        self.acquire(timeout)
        try:
            yield self
        finally:
            self.release()

    def _holder_message(self, timeout: float | None) -> str:
        state, tid, pid, start, since, _count, _deaths = _REC.unpack_from(self._mm, self._rec)
        base = f"array {self._name!r}: writer lock not acquired within {timeout} s"
        if state == _HELD and pid:
            held = max(0.0, (time.time_ns() - since) / 1e9)
            live = _process.liveness(pid, start).value
            return f"{base}: held by pid {pid} (thread {tid}, {live}) for {held:.3f} s"
        return base

    def _after_fork_in_child(self) -> None:
        # The child does not hold what its parent held; a flock must not outlive the parent.
        self._held = False
        self.owner_died = False  # (a flock mutex reopens itself: _mutex)


def _nbytes(shape: tuple[int, ...], dt: np.dtype[Any]) -> int:
    n = int(dt.itemsize)
    for d in shape:
        n *= d
    return n


def _reopen(name: str, readonly: bool) -> SharedArray:
    return SharedArray.open(name, readonly=readonly)


def describe(seg: Segment) -> dict[str, object]:
    """JSON-serialisable facts about an opened ARRAY segment (for ``shmkit info``).

    Needs no numpy. Raises LayoutError if ``seg`` is not a valid array.
    """
    header = seg.header
    if header is None or header.kind != Kind.ARRAY:
        raise LayoutError(f"{seg.name!r} is not an array")
    meta = parse_params(header.params, header.body_size, f"array {seg.name!r}")
    state, tid, pid, start, since, count, deaths = _REC.unpack_from(
        seg.mmap, header.body_off + _REC_OFF
    )
    holder: dict[str, object] | None = None
    if state == _HELD:
        holder = {
            "pid": pid,
            "thread": tid,
            "liveness": _process.liveness(pid, start).value,
            "since_ns": since,
        }
    return {
        "kind": "array",
        "shape": list(meta.shape),
        "dtype": meta.spec,
        "order": meta.order,
        "itemsize": meta.itemsize,
        "nbytes": meta.nbytes,
        "lock_holder": holder,
        "lock_acquisitions": count,
        "lock_owner_deaths": deaths,
    }


def _after_fork_in_child() -> None:
    for sa in list(_live):
        sa._after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
