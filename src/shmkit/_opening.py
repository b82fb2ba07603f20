"""How ``open()`` finds a name: waiting for it to appear, and whose objects it accepts.

Waiting (``open(name, wait=seconds)``): the system name is tried at once,
then again after 1, 2, 4 ... ms, never more than 50 ms apart, until it
exists or the wait runs out. Polling costs one failed ``shm_open`` per try
and works wherever ``posix_ipc`` does (inotify would save at most 50 ms
once, on Linux only). Ctrl-C interrupts the sleep.

Ownership (RELIABILITY.md T24, README "threat model"): an object owned by
the caller's uid is always accepted. One owned by another uid is accepted

- when ``trust_uids`` is None (the default) and its mode shares it with the
  caller: the group bits if the caller is in the object's group, otherwise
  the "other" bits, must grant read (and write, unless read-only) -- the
  creator widened the mode on purpose (for shmkit objects the header records
  the mode asked for, and a file mode wider than that is refused anyway);
- when ``trust_uids`` names its owner (whatever the mode; the kernel still
  checks access). Given, ``trust_uids`` is the whole list: objects of any
  other uid are refused even if their mode is wide, and ``trust_uids=()``
  accepts the caller's own objects only.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import time
from collections.abc import Callable, Iterable
from typing import Final, TypeVar

import posix_ipc

from . import _layout, _ofd, _wait
from .errors import AlreadyExists, ForeignOwner, NotFound, PermissionDenied, translate

T = TypeVar("T")

#: Longest pause between two tries while waiting for a name to appear.
MAX_PAUSE: Final = 0.05


def check_wait(wait: object) -> float | None:
    """Validate ``wait=``: seconds >= 0 (0 tries once), or None to wait forever."""
    try:
        return _wait.check_timeout(wait)
    except (TypeError, ValueError) as exc:
        raise type(exc)(str(exc).replace("timeout", "wait", 1)) from None


def article(word: str) -> str:
    """``"an array"``, ``"a queue"``."""
    return f"{'an' if word[:1] in 'aeiou' else 'a'} {word}"


def class_name(kind: _layout.Kind | None) -> str:
    """The class a user opens ``kind`` with: ``SharedArray`` for ARRAY, ``Queue`` for QUEUE."""
    if kind is None:
        return "Segment"
    return {"ARRAY": "SharedArray", "DICT": "SharedDict"}.get(kind.name, kind.name.capitalize())


def _owner(uid: int) -> str:
    try:
        import pwd  # noqa: PLC0415 - only error messages need it

        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except (ImportError, KeyError):
        return f"uid {uid}"


def appear(
    attempt: Callable[[], T], *, wait: float | None, what: str, hint: str, mode_of: str = ""
) -> T:
    """``attempt()`` until it stops raising "missing" (or "no permission"), for ``wait`` seconds.

    Raises NotFound (naming ``what`` and ``hint``, without posix_ipc's
    traceback chained) or PermissionDenied (with the owner and mode of the
    file ``mode_of`` where it can be read) once the wait runs out.
    """
    end = None if wait is None else time.monotonic() + wait
    pause = 0.001
    while True:
        try:
            return attempt()
        except posix_ipc.ExistentialError:
            missing = True
        except (posix_ipc.PermissionsError, PermissionError):
            missing = False
        remaining = None if end is None else end - time.monotonic()
        if remaining is not None and remaining <= 0:
            waited = f" (waited {wait:g} s)" if wait else ""
            if missing:
                raise NotFound(f"{what} does not exist{waited}; {hint}") from None
            raise PermissionDenied(f"{what}: permission denied{_why_denied(mode_of)}") from None
        time.sleep(pause if remaining is None else min(pause, remaining))
        pause = min(pause * 2, MAX_PAUSE)


def _why_denied(path: str) -> str:
    try:
        st = os.stat(path)
    except OSError:
        return ""
    return (
        f" (owned by {_owner(st.st_uid)}, mode {st.st_mode & 0o777:#o}; its creator can "
        "widen the mode, e.g. mode=0o660 for a shared group)"
    )


def _admits(st: os.stat_result, readonly: bool) -> bool:
    """True if the file mode grants this process (not its owner) read/write access."""
    need = 0o4 if readonly else 0o6
    mode = st.st_mode & 0o777
    if st.st_gid == os.getegid() or st.st_gid in os.getgroups():
        return (mode >> 3) & need == need
    return mode & need == need


def check_owner(
    st: os.stat_result, what: str, *, readonly: bool, trust_uids: Iterable[int] | None
) -> None:
    """Raise ForeignOwner unless the object's owner is accepted (see the module docstring)."""
    uid = st.st_uid
    if uid == os.geteuid():
        return
    if trust_uids is not None:
        trusted = set(trust_uids)
        if uid in trusted:
            return
        raise ForeignOwner(
            f"{what} belongs to {_owner(uid)}, not among trust_uids={sorted(trusted)}; "
            f"add {uid} to trust_uids if you trust that user"
        )
    if _admits(st, readonly):
        return
    raise ForeignOwner(
        f"{what} belongs to {_owner(uid)} and its mode {st.st_mode & 0o777:#o} does not share "
        f"it with you; its creator can pass mode=0o660 (shared group) or 0o666, or pass "
        f"trust_uids=[{uid}] to trust that user"
    )


def existing_kind(sysname: str) -> str:
    """What already holds ``sysname``, for an AlreadyExists message (best effort, never raises)."""
    try:
        shm = posix_ipc.SharedMemory(sysname, 0, read_only=True)
    except (posix_ipc.Error, OSError):
        return "an object this process cannot read"
    try:
        size = os.fstat(shm.fd).st_size
        if size < _layout.HEADER_SIZE:
            return "an object still being created" if size == 0 else "a raw (non-shmkit) segment"
        with contextlib.closing(mmap.mmap(shm.fd, _layout.HEADER_SIZE, prot=mmap.PROT_READ)) as mm:
            head = bytes(mm)
    except (OSError, ValueError):
        return "an object this process cannot read"
    finally:
        shm.close_fd()
    if head[:8] != _layout.MAGIC:
        return "a raw (non-shmkit) segment"
    try:
        kind = _layout.Kind(int.from_bytes(head[10:12], "little"))
    except ValueError:
        return "a shmkit object of unknown kind"
    return article(kind.name.lower())


def open_or_create(
    create: Callable[[], T],
    open_: Callable[[], T],
    what: str,
    check: Callable[[T], None] | None = None,
) -> T:
    """Create, or open if it exists; safe when many processes race for the same name.

    A creator that fails half-way unlinks what it made, so an opener can see
    NotFound after AlreadyExists: then the whole dance is tried again.
    ``check`` vets an object that was opened rather than created (e.g. that
    it has the asked-for size): if it raises, the handle is closed first.
    """
    for _ in range(20):
        try:
            return create()
        except AlreadyExists:
            pass
        try:
            obj = open_()
        except NotFound:
            continue
        if check is not None:
            try:
                check(obj)
            except BaseException:
                obj.close()  # type: ignore[attr-defined]
                raise
        return obj
    raise NotFound(f"{what} kept appearing and vanishing")


def create_exclusive(sysname: str, what: str, name: str) -> posix_ipc.SharedMemory:
    """shm_open(O_CREAT|O_EXCL, 0600); AlreadyExists says what holds the name now."""
    try:
        with translate(what):
            return posix_ipc.SharedMemory(sysname, posix_ipc.O_CREX, mode=0o600)
    except AlreadyExists:
        held = existing_kind(sysname)
        raise AlreadyExists(
            f"{what}: the name is taken by {held}; pick another name, open the existing "
            f"object, or remove it first (shmkit rm {name})"
        ) from None


def appear_sized(
    name: str, *, readonly: bool, wait: float | None, what: str
) -> posix_ipc.SharedMemory:
    """Open a raw (verbatim) segment, waiting up to ``wait`` for it to exist *and* have a size.

    A plain posix_ipc creator makes the name, then sizes it: until then it
    counts as missing, so a waiting reader never maps 0 bytes.
    """
    wait = check_wait(wait)
    end = None if wait is None else time.monotonic() + wait

    def sized() -> posix_ipc.SharedMemory:
        shm = posix_ipc.SharedMemory(name, 0, read_only=readonly)
        if os.fstat(shm.fd).st_size == 0 and (end is None or time.monotonic() < end):
            shm.close_fd()
            raise posix_ipc.ExistentialError(f"{name} has no size yet")
        return shm

    return appear(
        sized,
        wait=wait,
        what=what,
        hint="create it first, or pass wait=SECONDS to open() to wait for its creator",
        mode_of=_ofd.lock_path(name) or "",
    )
