"""Latest: the newest value only. Writers never wait for readers; readers never see a torn value.

For state that many readers poll (a controller's setpoint, a pose, the last
camera frame)::

    cfg = Latest.create("pose", size=64)             # values of up to 64 bytes
    cfg.set(b"x=1 y=2")                              # returns the new version, 1

    pose = Latest.open("pose")                       # in any other process
    data = pose.get()                                # a consistent copy
    v = pose.wait_newer(1, timeout=5.0)              # block until version > 1

    img = Latest.create("frame", shape=(480, 640, 3), dtype="uint8")
    img.set(frame)                                   # numpy values, shape/dtype in the header
    latest_frame = Latest.open("frame").get()        # a new ndarray

Lifetime is explicit, as for every shmkit object: the value persists until
``unlink()``. A value is copied in by ``set`` and copied out by ``get``
(``get_into`` fills a buffer you own), so nothing a caller holds can change
under it.

Design: a multi-slot buffer (3 slots by default) with a seqlock per slot
(format and ordering rule: ``shmkit._shm.latest_slot``). A writer fills the
slot *after* the newest one, seals it, then publishes it by storing its
version; readers copy the newest slot and keep the copy only if its sequence
did not change meanwhile. ``set``, ``get`` and ``get_into`` are single C calls
(``shmkit._core._seqlock``): the writer's mutex is taken and released inside
one, so no signal handler can leave it held. A writer killed mid-write leaves a slot
nobody publishes: readers keep getting the previous value, and the next writer
simply overwrites that slot. Writers take turns through a robust mutex the
kernel releases if its holder dies, so any number of writer processes may
share one Latest; ``set`` never waits for a reader.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Final, Generic, TypeVar, overload

from . import _dtype, _mutex, _ofd, _wait
from ._codec import flat_view
from ._core._seqlock import LatestBase
from ._handle import Handle, built_or_removed
from ._layout import Kind
from ._shm import latest_writers as writers
from ._shm.latest_slot import (
    C_ARRAY,
    C_CHECKSUM,
    C_FLOCK,
    DEATHS_AT,
    DEFAULT_SLOTS,
    PARAMS_VERSION,
    SLOT_HEAD,
    WRITERS,
    WTABLE,
    LatestParams,
    body_size,
    checked_params,
    new_params,
    parse_params,
)
from ._shm.latest_writers import LatestStats, describe
from .errors import (
    Closed,
    Full,
    LayoutError,
    LockTimeout,
    MessageTooLarge,
    PeerDied,
    PermissionDenied,
    ReadStarved,
    Timeout,
)
from .segment import Segment, open_or_create

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import DTypeLike, NDArray

__all__ = [
    "PARAMS_VERSION",
    "WRITERS",
    "Latest",
    "LatestParams",
    "LatestStats",
    "ReadStarved",
    "describe",
    "parse_params",
]

T = TypeVar("T")


#: Tries a read makes in C before falling back to the Python retry loop.
_TRIES: Final = 8
_live: weakref.WeakSet[Latest[Any]] = weakref.WeakSet()


class Latest(LatestBase, Handle, Generic[T]):
    """The newest value of a bytes or numpy value, shared by name.

    ``Latest[bytes]`` when created with ``size=``, ``Latest[NDArray]`` with
    ``shape=``/``dtype=``. Any number of processes may read and write.

    ``set(data, *, timeout=None) -> int`` publishes ``data`` as the newest
    value and returns its version (1, 2, ...). It never waits for readers,
    only while another writer is inside its own ``set`` (``timeout`` bounds
    that: LockTimeout). Bytes mode takes any C-contiguous buffer of at most
    ``size`` bytes (MessageTooLarge otherwise); array mode an array of exactly
    the shape whose dtype casts safely (ValueError / TypeError otherwise).
    Nothing changes on error.

    ``get(*, timeout=None)`` returns a consistent copy of the newest value
    (bytes, or a new ndarray). Raises Empty if nothing was ever set. A read
    that a writer overtakes is retried; ``timeout`` bounds the retrying
    (ReadStarved, a Timeout, after it; None retries as long as it takes,
    backing off; 0 tries a few times).

    Both are C methods of ``LatestBase``; they call ``_set_slow`` /
    ``_get_slow`` here for everything but the common case.
    """

    if TYPE_CHECKING:

        def set(self, data: Any, *, timeout: float | None = None) -> int: ...
        def get(self, *, timeout: float | None = None) -> T: ...

    def __init__(self, seg: Segment, params: LatestParams, dt: np.dtype[Any] | None) -> None:
        assert seg.header is not None
        self._name = seg.name
        self._seg: Segment | None = seg
        self._params = params
        self.readonly = seg.readonly
        self._dtype = dt
        self._mm = seg.mmap
        self._mmv = memoryview(self._mm)
        base = seg.header.body_off
        self._base = base
        body = self._mmv[base : base + params.body_size]
        #: The body as u64 words (cold paths, statistics, tests).
        self._ctl: memoryview | None = body.cast("Q")
        self._nslots = params.nslots
        self._size = params.size
        self._checksum = params.checksum
        starts = [params.slots_off + k * params.stride for k in range(params.nslots)]
        self._tagw = tuple(s // 8 for s in starts)  # word index of each slot's seq
        self._doff = tuple(base + s + SLOT_HEAD for s in starts)
        self._mutex = None if self.readonly else _mutex.Mutex(self._mm, base, seg.sysname, 0)
        flags = (C_CHECKSUM if params.checksum else 0) | (C_ARRAY if params.array else 0)
        if self._mutex is not None and self._mutex.kind != "pthread":
            flags |= C_FLOCK
        self._c_attach(
            self._mm,
            self._name,
            base,
            params.nslots,
            params.size,
            params.slots_off,
            params.stride,
            flags,
        )
        self._lock_fd: int | None = None
        self._wslot = -1  # our writer-table entry, claimed by the first set()
        self._starved = 0
        self._blocking = 0  # threads inside wait_newer; close() lets them leave
        self._tlock = threading.Lock()
        self._src: tuple[NDArray[Any], ...] = ()
        if params.array is not None:
            np = _dtype.numpy()
            self._src = tuple(
                np.frombuffer(self._mmv.toreadonly(), np.uint8, params.size, off)
                for off in self._doff
            )
        _live.add(self)

    # ------------------------------------------------------------ lifecycle

    @overload
    @classmethod
    def create(
        cls,
        name: str,
        *,
        size: int,
        slots: int = ...,
        checksum: bool | None = ...,
        mode: int = ...,
    ) -> Latest[bytes]: ...

    @overload
    @classmethod
    def create(
        cls,
        name: str,
        *,
        shape: int | tuple[int, ...] | list[int],
        dtype: DTypeLike,
        order: str = ...,
        slots: int = ...,
        checksum: bool | None = ...,
        mode: int = ...,
    ) -> Latest[NDArray[Any]]: ...

    @classmethod
    def create(
        cls,
        name: str,
        *,
        size: int | None = None,
        shape: int | tuple[int, ...] | list[int] | None = None,
        dtype: DTypeLike | None = None,
        order: str = "C",
        slots: int = DEFAULT_SLOTS,
        checksum: bool | None = None,
        mode: int = 0o600,
    ) -> Latest[Any]:
        """Create a Latest with no value yet (version 0); AlreadyExists if the name is taken.

        Args:
            size: bytes mode: the largest value, in bytes.
            shape, dtype, order: array mode: every value is an array of this
                shape and dtype (object dtypes are refused).
            slots: value buffers (2..16). A reader retries when writers fill
                ``slots - 1`` values while it copies one; 3 suits a writer
                about as fast as its readers.
            checksum: CRC-check every value (an integrity option against
                corruption; the seqlock alone rules out torn reads on every CPU).
            mode: permission bits (0o600: this user only).
        """
        params = new_params(
            size=size, shape=shape, dtype=dtype, order=order, slots=slots, checksum=checksum
        )
        parsed, dt = checked_params(params, body_size(params), 0, f"latest {name!r}")
        seg = Segment._create_object(
            name,
            Kind.LATEST,
            body_size=parsed.body_size,
            params=params,
            sem_values=[],
            mode=mode,
            init=_mutex.Mutex.initialize,
        )
        return built_or_removed(seg, lambda: cls(seg, parsed, dt))

    @classmethod
    def open(
        cls,
        name: str,
        *,
        readonly: bool = False,
        wait: float | None = 0.0,
        trust_uids: Iterable[int] | None = None,
    ) -> Latest[Any]:
        """Attach to an existing Latest by name.

        ``readonly=True``: ``get`` and ``wait_newer`` work, ``set`` raises
        PermissionDenied. ``wait``, ``trust_uids``: see :meth:`Segment.open`.
        """
        seg = Segment._open_object(
            name, Kind.LATEST, readonly=readonly, wait=wait, trust_uids=trust_uids
        )
        try:
            assert seg.header is not None
            h = seg.header
            return cls(seg, *checked_params(h.params, h.body_size, h.nsems, f"latest {name!r}"))
        except BaseException:
            seg.close()
            raise

    @overload
    @classmethod
    def open_or_create(
        cls, name: str, *, size: int, slots: int = ..., checksum: bool | None = ..., mode: int = ...
    ) -> Latest[bytes]: ...

    @overload
    @classmethod
    def open_or_create(
        cls,
        name: str,
        *,
        shape: int | tuple[int, ...] | list[int],
        dtype: DTypeLike,
        order: str = ...,
        slots: int = ...,
        checksum: bool | None = ...,
        mode: int = ...,
    ) -> Latest[NDArray[Any]]: ...

    @classmethod
    def open_or_create(
        cls,
        name: str,
        *,
        size: int | None = None,
        shape: int | tuple[int, ...] | list[int] | None = None,
        dtype: DTypeLike | None = None,
        order: str = "C",
        slots: int = DEFAULT_SLOTS,
        checksum: bool | None = None,
        mode: int = 0o600,
    ) -> Latest[Any]:
        """Open ``name`` or create it; safe when many processes race.

        Raises LayoutError if it exists with another size, shape, dtype or
        order (its slot count and checksum setting are the creator's).
        """
        want = new_params(
            size=size, shape=shape, dtype=dtype, order=order, slots=slots, checksum=checksum
        )

        def create() -> Latest[Any]:
            if size is not None:
                return cls.create(name, size=size, slots=slots, checksum=checksum, mode=mode)
            assert shape is not None and dtype is not None
            return cls.create(
                name,
                shape=shape,
                dtype=dtype,
                order=order,
                slots=slots,
                checksum=checksum,
                mode=mode,
            )

        def check(latest: Latest[Any]) -> None:
            assert latest._seg is not None and latest._seg.header is not None
            have = latest._seg.header.params
            # Compare what values look like: flags' array bit, size and the array meta.
            if (have[4] & 2, have[16:]) != (want[4] & 2, want[16:]):
                raise LayoutError(f"latest {name!r} exists with another value size or type")

        return open_or_create(create, lambda: cls.open(name), f"latest {name!r}", check)

    def close(self) -> None:
        """Detach this handle (idempotent). The value stays until ``unlink()``.

        A writer's entry is removed, so readers do not take this for a death.
        Threads of this process blocked in ``wait_newer`` get Closed. A thread
        still inside a C call keeps the mapping pinned until it returns.
        """
        if self._seg is None:
            return
        self._c_fast_set(False)
        self._release_writer()
        self._c_detach()  # every C path now raises Closed
        end = time.monotonic() + 4 * _wait.SLICE
        while self._blocking and time.monotonic() < end:
            time.sleep(0.001)  # waiters notice within one slice
        seg, self._seg = self._seg, None
        _live.discard(self)
        ctl, self._ctl = self._ctl, None
        if ctl is not None:
            ctl.release()
        mutex, self._mutex = self._mutex, None
        if mutex is not None:
            mutex.close()
        self._src = ()
        seg.close()

    def __reduce__(self) -> tuple[Any, ...]:
        return (_reopen, (self._name, self.readonly))

    def __repr__(self) -> str:
        what = (
            f"size={self._size}"
            if self._params.array is None
            else f"shape={self._params.array.shape} dtype={self._dtype}"
        )
        state = " closed" if self._seg is None else ""
        return f"<Latest {self._name!r} {what} slots={self._nslots}{state}>"

    # ------------------------------------------------------------ properties

    @property
    def size(self) -> int:
        """Largest value in bytes (array mode: the array's nbytes)."""
        return self._size

    @property
    def shape(self) -> tuple[int, ...] | None:
        """Array mode: every value's shape; None for bytes values."""
        return None if self._params.array is None else self._params.array.shape

    @property
    def dtype(self) -> np.dtype[Any] | None:
        """Array mode: every value's dtype; None for bytes values."""
        return self._dtype

    @property
    def slots(self) -> int:
        return self._nslots

    @property
    def checksum(self) -> bool:
        """True if every value is CRC-checked (an integrity option, asked for at create)."""
        return self._checksum

    # ------------------------------------------------------------ writing

    def _set_slow(self, data: Any, timeout: float | None) -> int:
        """``set`` minus its C fast path: arrays, first use, a busy mutex, flock."""
        if self._seg is None:
            raise Closed(f"latest {self._name!r} is closed")
        mutex = self._mutex
        if mutex is None:
            raise PermissionDenied(f"latest {self._name!r} is open readonly")
        if self._params.array is not None:
            data = self._array_bytes(data)
        elif type(data) is not bytes:
            data = flat_view(data, "Latest values")
        if len(data) > self._size:
            raise MessageTooLarge(f"latest {self._name!r}: {len(data)} bytes > size {self._size}")
        timeout = _wait.check_timeout(timeout)
        try:
            # Inside the try: release_if_held frees the mutex whatever a signal
            # handler raises, once acquire has returned holding it.
            got = self._acquire(mutex, timeout)
            if self._wslot < 0:
                self._claim_writer()
            v: int = self._c_write_locked(data, got == _mutex.OWNER_DIED)
        finally:
            mutex.core.release_if_held()
        self._c_wake()
        self._c_fast_set(self._wslot >= 0 and self._params.array is None)
        return v

    def _array_bytes(self, data: Any) -> Any:
        """A value as raw bytes in the array's memory order (checked shape and dtype)."""
        np = _dtype.numpy()
        meta = self._params.array
        assert meta is not None and self._dtype is not None
        arr = np.asarray(data)
        if arr.shape != meta.shape:
            raise ValueError(f"latest {self._name!r} holds shape {meta.shape}, not {arr.shape}")
        if not np.can_cast(arr.dtype, self._dtype, "safe"):
            raise TypeError(
                f"latest {self._name!r} holds {self._dtype}; {arr.dtype} does not cast safely"
            )
        order = meta.order
        arr = np.asarray(arr, dtype=self._dtype, order=order)
        if not (arr.flags.c_contiguous if order == "C" else arr.flags.f_contiguous):
            arr = arr.copy(order=order)
        return _dtype.raw_bytes(arr, order)

    def _acquire(self, mutex: _mutex.Mutex, timeout: float | None) -> int:
        """Take the writer mutex within ``timeout``: OK or OWNER_DIED (LockTimeout otherwise)."""
        result = mutex.acquire_within(timeout, self._check_open)
        if result is None:
            live, _dead = self._writers()
            raise LockTimeout(
                f"latest {self._name!r}: another writer kept the writer lock for {timeout} s "
                f"(live writers: pids {sorted(set(live)) or 'unknown'})"
            )
        return result

    def _lock_fd_or_none(self) -> int | None:
        if self._lock_fd is None and self._seg is not None:
            self._lock_fd = _ofd.open_for_locks(self._seg.sysname)
        return self._lock_fd

    def _claim_writer(self) -> None:
        """Take a writer-table entry (under the writer mutex) and clear dead writers' entries.

        The entry's OFD lock, which the kernel drops when we die, is what
        tells readers we live; the pid is for diagnostics.
        """
        ctl = self._ctl
        assert ctl is not None
        fd = self._lock_fd_or_none()
        if fd is None:
            self._wslot = WRITERS  # no OFD locks here: liveness unknown, never reported dead
            return
        mine = writers.claim(ctl, fd, self._base)
        if mine < 0:
            raise Full(f"latest {self._name!r} already has {WRITERS} live writers")
        self._wslot = mine

    def _release_writer(self) -> None:
        fd, self._lock_fd = self._lock_fd, None
        slot, self._wslot = self._wslot, -1
        if fd is None:
            return
        if 0 <= slot < WRITERS and self._seg is not None and not self.readonly:
            word = self._base + WTABLE + 16 * slot
            try:
                # Clear the entry before unlocking: a reader never sees our unlocked entry.
                self._mm[word : word + 16] = bytes(16)
            except ValueError:
                pass
        os.close(fd)  # drops the OFD lock

    # ------------------------------------------------------------ reading

    def _get_slow(self, timeout: float | None) -> T:
        """``get`` minus its C fast path: arrays and long retries."""
        return self._read(timeout, None)[1]  # type: ignore[no-any-return]

    def get_versioned(self, *, timeout: float | None = None) -> tuple[int, T]:
        """``(version, value)`` of the newest value, read together (see :meth:`get`)."""
        self._check_open()
        return self._read(timeout, None)

    def get_into(self, out: Any, *, timeout: float | None = None) -> tuple[int, int]:
        """Copy the newest value into ``out``; return ``(version, nbytes)``.

        No allocation: the way to read large values at memory speed. Bytes
        mode: any writable C-contiguous buffer (ValueError if the value does
        not fit). Array mode: an ndarray of the same shape, dtype and memory
        order. On ReadStarved, ``out`` holds garbage.
        """
        self._check_open()
        if self._params.array is not None:
            np = _dtype.numpy()
            if (
                not isinstance(out, np.ndarray)
                or out.shape != self.shape
                or out.dtype != self._dtype
            ):
                raise ValueError(f"out must be an ndarray of shape {self.shape}, {self._dtype}")
            if not out.flags.writeable:
                raise ValueError("out must be writable")
            dst = _dtype.raw_bytes(out, self._params.array.order)
        else:
            dst = memoryview(out).cast("B")
            if dst.readonly:
                raise ValueError("out must be writable")
        v, n = self._read(timeout, dst)
        return v, n

    def get_version(self) -> int:
        """The newest published version (0 if nothing was ever set); no copy."""
        return int(self._c_version())

    def _read(self, timeout: float | None, dst: Any) -> tuple[int, Any]:
        """Read (into ``dst``, or a new value) with retries bounded by ``timeout``."""
        if timeout is not None:
            timeout = _wait.check_timeout(timeout)
        end: float | None = None  # the clock is read only once a try has failed
        attempts = 0
        while True:
            if dst is None:
                read = self._c_read(_TRIES)
                if read is not None:
                    return read[0], self._value(read[1])
            else:
                got = self._c_read_into(dst, _TRIES)
                if got is not None:
                    return got
            attempts += 1
            if end is None and timeout is not None:
                end = time.monotonic() + timeout
            if end is not None and time.monotonic() >= end:
                self._starved += 1
                raise ReadStarved(
                    f"latest {self._name!r}: no stable value in {timeout} s "
                    f"({attempts * _TRIES} tries; writers kept overwriting the slot being read; "
                    f"{self._nslots} slots of {self._size} bytes)"
                )
            # Let the writer run (2 cores, many processes); a sleep also lets Ctrl-C in.
            time.sleep(0 if attempts < 4 else min(1e-3, 1e-5 * attempts))

    def _value(self, raw: bytes) -> Any:
        meta = self._params.array
        if meta is None:
            return raw
        np = _dtype.numpy()
        out = np.empty(meta.shape, self._dtype, order=meta.order)
        _dtype.raw_bytes(out, meta.order)[...] = np.frombuffer(raw, np.uint8)
        return out

    # ------------------------------------------------------------ waiting

    def wait_newer(self, version: int, timeout: float | None = None) -> int:
        """Block until the version is above ``version``; return the newest version.

        Spins briefly in C, then sleeps on the version's futex word in slices
        that notice Ctrl-C, ``close()`` (Closed) and a writer that died without
        closing while no other writer lives (PeerDied), within ~50 ms. Raises
        Timeout after ``timeout`` seconds (0 checks once; None forever).
        ``wait_newer(0)`` waits for the first value.
        """
        timeout = _wait.check_timeout(timeout)
        self._check_open()
        v = self._c_version()
        if v > version:
            return int(v)
        if timeout == 0:
            raise Timeout(f"latest {self._name!r}: no version newer than {version} in 0 s")
        end = None if timeout is None else time.monotonic() + timeout
        spin = True
        with self._tlock:
            self._blocking += 1
        try:
            while True:
                remaining = _wait.SLICE if end is None else min(_wait.SLICE, end - time.monotonic())
                if remaining <= 0:
                    raise Timeout(
                        f"latest {self._name!r}: no version newer than {version} in {timeout} s"
                    )
                got = self._c_wait(version, remaining, spin)
                if got:
                    return int(got)
                spin = False
                self._check_dead_writer(version)
        finally:
            with self._tlock:
                self._blocking -= 1

    def _check_dead_writer(self, version: int) -> None:
        self._check_open()
        live, dead = self._writers()
        if dead and not live and self._c_version() <= version:
            raise PeerDied(
                f"latest {self._name!r}: its writer (pid {', '.join(map(str, dead))}) died "
                "and no other writer is attached; the last value stays readable"
            )

    # ------------------------------------------------------------ introspection

    def _check_open(self) -> None:
        if self._seg is None or self._ctl is None:
            raise Closed(f"latest {self._name!r} is closed")

    def _writers(self) -> tuple[list[int], list[int]]:
        """(live pids, dead pids) from the writer table; empty where OFD locks are missing."""
        ctl = self._ctl
        fd = self._lock_fd_or_none()
        if ctl is None or fd is None:
            return [], []
        return writers.scan(ctl, fd, self._base, self._wslot)

    def writers(self) -> list[tuple[int, bool]]:
        """``(pid, alive)`` for every writer entry (alive: its process still runs)."""
        self._check_open()
        live, dead = self._writers()
        return [(p, True) for p in live] + [(p, False) for p in dead]

    def statistics(self) -> LatestStats:
        """A snapshot: version, writer deaths, live/dead writers, waiters, this handle's retries."""
        self._check_open()
        ctl = self._ctl
        assert ctl is not None
        live, dead = self._writers()
        return LatestStats(
            int(self._c_version()),
            int(ctl[DEATHS_AT // 8]),
            tuple(live),
            tuple(dead),
            int(self._c_waiters()),
            int(self._c_retries),
            self._starved,
        )

    def _after_fork_in_child(self) -> None:
        # Our writer entry's OFD lock is shared with the parent: drop the child's
        # copy so the parent's death is seen; the child re-claims on its first set.
        if self._lock_fd is not None:
            try:
                os.close(self._lock_fd)
            except OSError:
                pass
            self._lock_fd = None
        self._wslot = -1
        self._c_fast_set(False)  # the child claims its own entry on its first set
        self._blocking = 0
        self._tlock = threading.Lock()  # (a flock mutex reopens itself: _mutex)


def _reopen(name: str, readonly: bool) -> Latest[Any]:
    return Latest.open(name, readonly=readonly)


def _after_fork_in_child() -> None:
    for latest in list(_live):
        latest._after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
