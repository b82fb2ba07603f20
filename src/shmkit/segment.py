"""Segment: named shared memory with a validated header, plus raw mode.

Lifetime is explicit. ``create()`` makes an object that lives until someone
calls ``unlink()``, ``shmkit rm`` or ``shmkit gc`` removes it, even after every
process has exited; ``close()`` only detaches this handle. ``open()`` never
unlinks. To tie the object's life to a block, use ``with Segment.create(...)``
and pass ``unlink_on_exit=True``::

    with Segment.create("frames", 1 << 20) as seg:    # survives the block
        seg.buf[:5] = b"hello"
    with Segment.open("frames") as seg:               # another program
        assert bytes(seg.buf[:5]) == b"hello"
    Segment.remove("frames")                           # destroy it

A name starting with ``/`` is a verbatim system name: the segment has no
shmkit header (raw mode) and interoperates with plain ``posix_ipc``/``mmap``
code and ``multiprocessing.shared_memory``.
"""

from __future__ import annotations

import contextlib
import math
import mmap as _mm
import os
import stat
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final

import posix_ipc

from . import _crash, _layout, _names, _ofd, _opening, _process
from ._layout import Kind
from ._opening import create_exclusive as _create_exclusive
from ._opening import open_or_create
from ._sysobj import (
    create_semaphore,
    reserve,
    unlink_all,
    unlink_sem,
    unlink_sems,
    unlink_shm,
)
from .errors import (
    Closed,
    InsecurePermissions,
    InvalidName,
    LayoutError,
    NotFound,
    NotReady,
    PermissionDenied,
    translate,
)

__all__ = ["Attachment", "Segment", "open_or_create"]

DEFAULT_ATTACH_SLOTS: Final = 64
#: How long open() waits for a creator to finish initialising a segment.
DEFAULT_INIT_TIMEOUT: Final = 1.0
#: A byte far past any data: the creator holds an OFD lock on it until READY,
#: so an opener can tell a creator still reserving memory from a dead one.
_INIT_LOCK: Final = 1 << 62

_live: weakref.WeakSet[Segment] = weakref.WeakSet()


@dataclass(frozen=True)
class Attachment:
    """One attach-table slot: a process that has the object open (or had, if dead)."""

    slot: int
    pid: int
    start: int
    liveness: _process.Liveness


def _check_mode(mode: object) -> int:
    if not isinstance(mode, int) or isinstance(mode, bool) or not 0 <= mode <= 0o777:
        raise ValueError(f"mode must be an int between 0 and 0o777, not {mode!r}")
    if not mode & 0o600 == 0o600:
        raise ValueError(f"mode {mode:#o} must give the owner read and write (0o600)")
    return mode


def _check_size(size: object, what: str = "size") -> int:
    if not isinstance(size, int) or isinstance(size, bool):
        raise TypeError(f"{what} must be an int, not {type(size).__name__}")
    if size <= 0:
        raise ValueError(f"{what} must be positive, not {size}")
    if size > _layout.MAX_BODY:
        raise ValueError(f"{what} {size} is larger than shmkit's limit of {_layout.MAX_BODY} bytes")
    return size


def _slot_liveness(held: bool, pid: int, start: int, boot: bytes) -> _process.Liveness:
    """Liveness of an attach-table record.

    Every attached handle holds an OFD lock on its slot, which the kernel
    drops when the process dies: a held lock is alive, whatever PID namespace
    the holder is in (the registry probes the locks too, through a read-only
    descriptor of its own). A record without its lock is judged by pid +
    start time, which errs only towards "alive" or "unknown" (never acted
    on); an impossible pid word is "unknown", never an OverflowError.
    """
    if held:
        return _process.Liveness.ALIVE
    return _process.liveness(pid, start, boot)


class Segment:
    """A mapped shared-memory segment, opened or created by name.

    Attributes other processes see: the header (kind, sizes, creator), the
    attach table (who has it open) and ``buf``, the body bytes.
    """

    def __init__(
        self,
        *,
        name: str,
        sysname: str,
        mm: _mm.mmap,
        header: _layout.Header | None,
        sems: list[posix_ipc.Semaphore],
        lock_fd: int | None,
        unlink_on_exit: bool = False,
        readonly: bool = False,
    ) -> None:
        self.name = name
        self.sysname = sysname
        self.header = header
        self.readonly = readonly
        self._mm: _mm.mmap | None = mm
        self._sems = sems
        self._guard = threading.Lock()
        self._sleepers = 0
        self._lock_fd = lock_fd
        self._slot = -1
        self._unlink_on_exit = unlink_on_exit
        if header is None:
            self._buf = memoryview(mm)
        else:
            self._buf = memoryview(mm)[header.body_off : header.total_size]
        if readonly:
            self._buf = self._buf.toreadonly()
        _live.add(self)

    # ---------------------------------------------------------------- lifecycle

    @classmethod
    def create(
        cls, name: str, size: int, *, mode: int = 0o600, unlink_on_exit: bool = False
    ) -> Segment:
        """Create a segment with ``size`` body bytes; raise AlreadyExists if the name is taken.

        Memory is reserved at once (a full /dev/shm raises ShmFull here). The
        object persists after this process exits unless ``unlink_on_exit`` is
        set, in which case leaving the ``with`` block (or ``close()``) unlinks it.
        """
        size = _check_size(size)
        if _names.is_verbatim(_names.validate(name)):
            return cls._create_raw(name, size, mode=mode, unlink_on_exit=unlink_on_exit)
        return cls._create_object(
            name, Kind.SEGMENT, body_size=size, mode=mode, unlink_on_exit=unlink_on_exit
        )

    @classmethod
    def open(
        cls,
        name: str,
        *,
        readonly: bool = False,
        init_timeout: float | None = None,
        allow_insecure: bool = False,
        wait: float | None = 0.0,
        trust_uids: Iterable[int] | None = None,
    ) -> Segment:
        """Attach to an existing segment by name; validate its header first.

        ``wait`` seconds (None: forever) lets the name appear first, so a
        reader may start before its writer; every object's ``open`` takes it.
        A segment whose creator is still initialising it is waited for as long
        as the creator is alive and working when ``init_timeout`` is None, else
        at most ``init_timeout`` seconds (or ``wait`` if longer).
        ``trust_uids`` names the other users whose objects this process
        accepts (see the README's threat model); by default another user's
        object opens only if its mode shares it with this user.

        Raises NotFound (after ``wait``), LayoutError (not a valid shmkit
        segment of kind SEGMENT), NotReady (creator died before finishing, or
        still initialising at the timeout), ForeignOwner or InsecurePermissions.
        """
        if _names.is_verbatim(_names.validate(name)):
            return cls._open_raw(name, readonly=readonly, wait=wait, trust_uids=trust_uids)
        return cls._open_object(
            name,
            Kind.SEGMENT,
            readonly=readonly,
            init_timeout=init_timeout,
            allow_insecure=allow_insecure,
            wait=wait,
            trust_uids=trust_uids,
        )

    @classmethod
    def open_or_create(cls, name: str, size: int, *, mode: int = 0o600) -> Segment:
        """Open ``name`` if it exists, else create it. Safe when many processes race."""
        size = _check_size(size)
        seg = open_or_create(
            lambda: cls.create(name, size, mode=mode), lambda: cls.open(name), f"segment {name!r}"
        )
        have = seg.size  # read before close(), which makes it 0
        if have < size:
            seg.close()
            raise LayoutError(
                f"segment {name!r} exists with {have} bytes, fewer than the {size} asked for; "
                f"open it with Segment.open, or remove it first (shmkit rm {name})"
            )
        return seg

    @staticmethod
    def remove(name: str) -> bool:
        """Unlink the segment called ``name`` and its semaphores; False if it did not exist."""
        sysname = _names.system_name(name)
        nsems = _names.MAX_SEMS
        try:
            with Segment._open_object(name, None, init_timeout=0.0, allow_insecure=True) as seg:
                nsems = seg.header.nsems if seg.header else 0
        except (LayoutError, NotReady, InvalidName, PermissionDenied):
            pass  # another user's or a broken object: the kernel decides who may unlink
        except NotFound:
            return unlink_sems(sysname, nsems) > 0
        return unlink_all(sysname, nsems)

    def close(self) -> None:
        """Detach this handle. Idempotent. Never unlinks unless ``unlink_on_exit`` was set."""
        mm = self._mm
        if mm is None:
            return
        self._mm = None
        _live.discard(self)
        if self._lock_fd is not None:
            if self._slot >= 0 and self.header is not None:
                off = self.header.attach_off + self._slot * _layout.ATTACH_SLOT
                try:
                    if not self.readonly:
                        mm[off : off + _layout.ATTACH_SLOT] = bytes(_layout.ATTACH_SLOT)
                    _ofd.unlock(self._lock_fd, off)
                except (OSError, ValueError):
                    pass
            os.close(self._lock_fd)
            self._lock_fd = None
        with self._guard:
            # A thread still blocked on a semaphore keeps it open; the last one out closes it.
            if self._sleepers == 0:
                self._close_sems()
        self._buf.release()
        try:
            mm.close()
        except BufferError:
            pass  # views (numpy arrays) still use the mapping; it goes when they do
        if self._unlink_on_exit:
            self._unlink_names()

    def _close_sems(self) -> None:
        sems, self._sems = self._sems, []
        for sem in sems:
            try:
                sem.close()
            except posix_ipc.Error:
                pass

    @contextlib.contextmanager
    def sleeping(self) -> Iterator[None]:
        """Mark a blocking wait on this handle's semaphores (another thread may close()).

        ``close()`` never closes a semaphore a thread is blocked on (sem_close
        under a waiter is undefined behaviour); the last sleeper closes it.
        Objects wrap their blocking calls (not their fast paths) in this.
        """
        with self._guard:
            self._sleepers += 1
        try:
            yield
        finally:
            with self._guard:
                self._sleepers -= 1
                if self._mm is None and self._sleepers == 0:
                    self._close_sems()

    def unlink(self) -> None:
        """Destroy the name (segment and semaphores) for everyone. Mappings stay valid."""
        self._unlink_names()

    def _unlink_names(self) -> None:
        nsems = self.header.nsems if self.header is not None else 0
        unlink_all(self.sysname, nsems)

    def __enter__(self) -> Segment:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __reduce__(self) -> tuple[Any, ...]:
        return (Segment.open, (self.name,))

    def __repr__(self) -> str:
        state = "closed" if self._mm is None else f"{self.size} bytes"
        kind = self.header.kind.name if self.header else "RAW"
        return f"<Segment {self.name!r} {kind} {state}>"

    def __del__(self) -> None:
        if getattr(self, "_mm", None) is not None:
            self.close()

    # ---------------------------------------------------------------- access

    @property
    def closed(self) -> bool:
        return self._mm is None

    @property
    def raw(self) -> bool:
        """True for a header-less (verbatim-name) segment."""
        return self.header is None

    @property
    def kind(self) -> Kind | None:
        return self.header.kind if self.header is not None else None

    @property
    def size(self) -> int:
        """Body size in bytes (the whole mapping in raw mode)."""
        return len(self._buf) if self._mm is not None else 0

    @property
    def buf(self) -> memoryview:
        """Zero-copy view of the body. Raises Closed after ``close()``."""
        if self._mm is None:
            raise Closed(f"segment {self.name!r} is closed")
        return self._buf

    @property
    def mmap(self) -> _mm.mmap:
        """The whole mapping, header included (objects build on it)."""
        if self._mm is None:
            raise Closed(f"segment {self.name!r} is closed")
        return self._mm

    def semaphore(self, index: int) -> posix_ipc.Semaphore:
        """Companion semaphore ``index`` (objects use these as wake-up hints)."""
        if self._mm is None:
            raise Closed(f"segment {self.name!r} is closed")
        return self._sems[index]

    def attachments(self) -> list[Attachment]:
        """Processes recorded in the attach table, with their liveness."""
        if self.header is None or self._mm is None:
            return []
        out = []
        base = self.header.attach_off
        probe_fd = self._lock_fd
        own_probe = probe_fd is None
        if own_probe:
            # Not attached (the registry): a descriptor of our own can still
            # ask the kernel which slots are locked.
            probe_fd = _ofd.open_for_locks(self.sysname, probe_only=True)
        try:
            for slot in range(self.header.attach_slots):
                off = base + slot * _layout.ATTACH_SLOT
                pid, start, boot = _layout.ATTACH_SLOT_STRUCT.unpack_from(self._mm, off)
                held = probe_fd is not None and (
                    (slot == self._slot and self._lock_fd is not None)
                    or _ofd.is_locked(probe_fd, off)
                )
                if pid == 0 and not held:
                    continue
                out.append(Attachment(slot, pid, start, _slot_liveness(held, pid, start, boot)))
        finally:
            if own_probe and probe_fd is not None:
                os.close(probe_fd)
        return out

    # ---------------------------------------------------------------- objects

    @classmethod
    def _create_object(
        cls,
        name: str,
        kind: Kind,
        *,
        body_size: int,
        params: bytes = b"",
        sem_values: Sequence[int] = (),
        mode: int = 0o600,
        init: Callable[[_mm.mmap, int], None] | None = None,
        attach_slots: int = DEFAULT_ATTACH_SLOTS,
        unlink_on_exit: bool = False,
        sysname: str | None = None,
    ) -> Segment:
        """Create a shmkit object (READY stored last); ``sysname``: a dict generation's."""
        if sysname is None:  # (a SharedDict generation names its segment itself)
            name = _names.validate(name)
            if _names.is_verbatim(name):
                raise InvalidName(f"{kind.name.lower()} objects need a shmkit name, not {name!r}")
            sysname = _names.system_name(name)
        mode = _check_mode(mode)
        what = f"{kind.name.lower()} {name!r}"
        me = _process.current()
        image = _layout.build(
            kind=kind,
            mode=mode,
            name=name,
            params=params,
            body_size=body_size,
            nsems=len(sem_values),
            attach_slots=attach_slots,
            creator_pid=me.pid,
            creator_start=me.start,
            created_ns=time.time_ns(),
            boot_id=me.boot_id,
            uid=os.geteuid(),
        )
        _, body_off = _layout.offsets(len(name.encode()), len(params), attach_slots)
        total = body_off + body_size
        shm = _create_exclusive(sysname, what, name)
        fd = shm.fd
        sems: list[posix_ipc.Semaphore] = []
        lock_fd = _ofd.open_for_locks(sysname)
        try:
            if lock_fd is not None:
                _ofd.try_lock(lock_fd, _INIT_LOCK)  # "creator at work", until READY
            os.fchmod(fd, mode)  # exact mode: umask can only narrow, never widen
            reserve(fd, total, what)
            mm = _mm.mmap(fd, total)
            for index, value in enumerate(sem_values):
                with translate(f"{what} semaphore {index}"):
                    sems.append(
                        create_semaphore(_names.semaphore_name(sysname, index), mode, value)
                    )
            mm[: len(image)] = image
            if init is not None:
                init(mm, body_off)
            if _crash.ARMED:
                _crash.point("segment.create.before_ready")
            # Publish: the state word is stored last, after everything above.
            mm[_layout.STATE_OFFSET : _layout.STATE_OFFSET + 4] = _layout.STATE_READY.to_bytes(
                4, "little"
            )
        except BaseException:
            for index in range(len(sems)):
                unlink_sem(_names.semaphore_name(sysname, index))
            for sem in sems:
                sem.close()
            shm.close_fd()
            unlink_shm(sysname)
            if lock_fd is not None:
                os.close(lock_fd)
            raise
        shm.close_fd()
        if lock_fd is not None:
            _ofd.unlock(lock_fd, _INIT_LOCK)
        header = _layout.parse(_head(mm), total, what)
        seg = cls(
            name=name,
            sysname=sysname,
            mm=mm,
            header=header,
            sems=sems,
            lock_fd=lock_fd,
            unlink_on_exit=unlink_on_exit,
        )
        seg._attach()
        return seg

    @classmethod
    def _open_object(
        cls,
        name: str,
        kind: Kind | None,
        *,
        readonly: bool = False,
        init_timeout: float | None = None,
        allow_insecure: bool = False,
        sysname: str | None = None,
        attach: bool = True,
        wait: float | None = 0.0,
        trust_uids: Iterable[int] | None = None,
    ) -> Segment:
        """Open and validate a shmkit object of ``kind`` (any kind if None).

        With ``sysname`` (inspection by the CLI) ``name`` is ignored and taken
        from the header; with ``attach=False`` the handle takes no attach slot.
        ``wait`` and ``trust_uids`` are ``Segment.open``'s.
        """
        label = kind.name.lower() if kind is not None else "object"
        if sysname is None:
            name = _names.validate(name)
            if _names.is_verbatim(name):
                cls_name = _opening.class_name(kind)
                raise LayoutError(
                    f"{label} {name!r} is a raw segment, not {_opening.article(label)}: a name "
                    f"starting with '/' is a plain POSIX segment; use Segment.open({name!r}), "
                    f"or a {cls_name} name without the '/'"
                )
            sysname = _names.system_name(name)
        else:
            name = sysname
        what = f"{label} {name!r}"
        wait = _opening.check_wait(wait)
        started = time.monotonic()
        shm = _opening.appear(
            lambda: posix_ipc.SharedMemory(sysname, 0, read_only=readonly),
            wait=wait,
            what=what,
            hint="create it first, or pass wait=SECONDS to open() to wait for its creator",
            mode_of=_ofd.lock_path(sysname) or "",
        )
        # The creator stores READY last. ``grace``: how long a creator that shows
        # no sign of life may take; ``limit``: the caller's bound on the whole wait.
        asked = math.inf if wait is None else wait
        grace = max(DEFAULT_INIT_TIMEOUT if init_timeout is None else init_timeout, asked, 0.0)
        limit = math.inf if init_timeout is None else started + grace
        deadline = started + grace
        try:
            while True:
                st = os.fstat(shm.fd)
                if not stat.S_ISREG(st.st_mode):
                    raise LayoutError(f"{what}: not a regular shared-memory object")
                _opening.check_owner(st, what, readonly=readonly, trust_uids=trust_uids)
                mm = None
                if st.st_size >= _layout.HEADER_SIZE:
                    prot = _mm.PROT_READ if readonly else _mm.PROT_READ | _mm.PROT_WRITE
                    mm = _mm.mmap(shm.fd, st.st_size, prot=prot)
                    magic = mm[:8]
                    state = int.from_bytes(
                        mm[_layout.STATE_OFFSET : _layout.STATE_OFFSET + 4], "little"
                    )
                    if magic == _layout.MAGIC and state == _layout.STATE_READY:
                        break
                    if magic not in (_layout.MAGIC, bytes(8)):
                        mm.close()
                        raise LayoutError(f"{what}: not a shmkit segment (magic {magic!r})")
                    mm.close()
                    if magic == _layout.MAGIC and state != _layout.STATE_INIT:
                        raise LayoutError(f"{what}: invalid state word {state:#x}")
                now = time.monotonic()
                if now >= deadline:
                    working = _ofd.held_by_anyone(sysname, _INIT_LOCK)
                    if working and now < limit:
                        deadline = now + grace  # alive: wait on, and again after it stops
                    elif working:
                        raise NotReady(
                            f"{what}: its creator is alive and still initialising it after "
                            f"{now - started:.1f} s (pass a longer init_timeout, or None to "
                            "wait while it works)"
                        )
                    else:
                        raise NotReady(
                            f"{what} was not initialised within {now - started:.1f} s and its "
                            "creator is gone (`shmkit gc` removes it)"
                        )
                time.sleep(0.005)
            try:
                header = _layout.parse(_head(mm), st.st_size, what)
                if kind is not None and header.kind != kind:
                    have = _opening.article(header.kind.name.lower())
                    raise LayoutError(
                        f"{what} is {have}, not {_opening.article(label)}; open it with "
                        f"{_opening.class_name(header.kind)}.open, or use another name"
                    )
                if name == sysname:
                    name = header.name
                elif header.name != name:
                    raise LayoutError(f"{what}: header names {header.name!r} (hash collision?)")
                if st.st_mode & 0o777 & ~header.mode and not allow_insecure:
                    raise InsecurePermissions(
                        f"{what} has mode {st.st_mode & 0o777:#o}, wider than the {header.mode:#o} "
                        "its creator asked for (pass allow_insecure=True to accept)"
                    )
            except BaseException:
                mm.close()
                raise
        finally:
            shm.close_fd()
        sems = []
        try:
            for index in range(header.nsems):
                with translate(f"{what} semaphore {index}"):
                    sems.append(posix_ipc.Semaphore(_names.semaphore_name(sysname, index)))
        except BaseException:
            for sem in sems:
                sem.close()
            mm.close()
            raise
        seg = cls(
            name=name,
            sysname=sysname,
            mm=mm,
            header=header,
            sems=sems,
            lock_fd=_ofd.open_for_locks(sysname),
            readonly=readonly,
        )
        if attach and not readonly:
            seg._attach()
        return seg

    def _attach(self) -> None:
        """Claim a free attach slot: an OFD lock on its byte says we are alive."""
        if self._lock_fd is None or self.header is None or self._mm is None:
            return
        me = _process.current()
        for slot in range(self.header.attach_slots):
            off = self.header.attach_off + slot * _layout.ATTACH_SLOT
            if _ofd.try_lock(self._lock_fd, off):
                _layout.ATTACH_SLOT_STRUCT.pack_into(self._mm, off, me.pid, me.start, me.boot_id)
                self._slot = slot
                return

    def _after_fork_in_child(self) -> None:
        # The OFD lock fd is shared with the parent: drop our copy so the
        # parent's death releases its slot; the child is simply not listed.
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
            self._slot = -1

    # ---------------------------------------------------------------- raw mode

    @classmethod
    def _create_raw(cls, name: str, size: int, *, mode: int, unlink_on_exit: bool) -> Segment:
        mode = _check_mode(mode)
        what = f"raw segment {name!r}"
        shm = _create_exclusive(name, what, name)
        try:
            os.fchmod(shm.fd, mode)
            reserve(shm.fd, size, what)
            mm = _mm.mmap(shm.fd, size)
        except BaseException:
            shm.close_fd()
            unlink_shm(name)
            raise
        shm.close_fd()
        return cls(
            name=name,
            sysname=name,
            mm=mm,
            header=None,
            sems=[],
            lock_fd=None,
            unlink_on_exit=unlink_on_exit,
        )

    @classmethod
    def _open_raw(
        cls,
        name: str,
        *,
        readonly: bool,
        wait: float | None = 0.0,
        trust_uids: Iterable[int] | None = None,
    ) -> Segment:
        what = f"raw segment {name!r}"
        shm = _opening.appear_sized(name, readonly=readonly, wait=wait, what=what)
        try:
            st = os.fstat(shm.fd)
            _opening.check_owner(st, what, readonly=readonly, trust_uids=trust_uids)
            if st.st_size == 0:
                raise LayoutError(f"{what} is empty (0 bytes): its creator has not sized it")
            prot = _mm.PROT_READ if readonly else _mm.PROT_READ | _mm.PROT_WRITE
            mm = _mm.mmap(shm.fd, st.st_size, prot=prot)
        finally:
            shm.close_fd()
        return cls(
            name=name, sysname=name, mm=mm, header=None, sems=[], lock_fd=None, readonly=readonly
        )


def _head(mm: _mm.mmap) -> bytes:
    """A bounded copy of the header region (never a view: a failed parse must not pin mm)."""
    return mm[: _layout.HEADER_SIZE + _layout.MAX_NAME_BYTES + _layout.MAX_PARAMS + 64]


def _after_fork_in_child() -> None:
    for seg in list(_live):
        seg._after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
