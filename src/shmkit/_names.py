"""User names -> system names. The only naming scheme shmkit has.

A user name such as ``frames`` becomes the segment ``/shmkit.frames`` and its
semaphores ``/shmkit.frames.s0``, ``.s1``… When that would pass the portable
30-byte limit (macOS), the system name is ``/shmkit.<prefix>~<hash>``: the
same on every platform, derived from the name alone, and the full user name is
kept in the segment header for ``shmkit ls``.

A name that starts with ``/`` is a verbatim system name (raw mode): shmkit
uses it as given, so it can attach to objects made by plain posix_ipc code.
"""

from __future__ import annotations

import re
from typing import Final

from . import _platform
from .errors import InvalidName

PREFIX: Final = "shmkit."
MAX_NAME: Final = 200
MAX_SEMS: Final = 8
_SEM_SUFFIX: Final = ".s0"
_VALID: Final = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")
#: Linux limit for a verbatim name (NAME_MAX less the "sem." of semaphore files).
_VERBATIM_MAX: Final = 251


def is_verbatim(name: str) -> bool:
    """True for a name used as the system name itself (starts with ``/``)."""
    return isinstance(name, str) and name.startswith("/")


def validate(name: object) -> str:
    """Return ``name`` if shmkit can use it, else raise InvalidName saying why."""
    if not isinstance(name, str):
        raise InvalidName(f"a name must be str, not {type(name).__name__}")
    if is_verbatim(name):
        body = name[1:]
        if not body or "/" in body or "\0" in body:
            raise InvalidName(
                f"verbatim name {name!r} must be '/' and a non-empty name without '/' or NUL"
            )
        if len(name.encode("utf-8", "surrogatepass")) > _VERBATIM_MAX:
            raise InvalidName(f"verbatim name {name[:40]!r}… is longer than {_VERBATIM_MAX} bytes")
        return name
    if not name:
        raise InvalidName("a name cannot be empty")
    if len(name) > MAX_NAME:
        raise InvalidName(f"name {name[:40]!r}… is {len(name)} characters; the limit is {MAX_NAME}")
    if not _VALID.fullmatch(name):
        raise InvalidName(
            f"name {name!r} may use only letters, digits, '.', '_', '-' and not start with '.'"
        )
    return name


def system_name(name: str) -> str:
    """The segment's system name for a validated user or verbatim name."""
    name = validate(name)
    if is_verbatim(name):
        return name
    plain = "/" + PREFIX + name
    if len(plain) + len(_SEM_SUFFIX) <= _platform.SYSTEM_NAME_MAX:
        return plain
    import hashlib  # noqa: PLC0415 - only long names need it; it costs ms at import

    digest = hashlib.blake2b(name.encode(), digest_size=6).hexdigest()
    return "/" + PREFIX + name[:6] + "~" + digest


def semaphore_name(sysname: str, index: int) -> str:
    """The system name of semaphore ``index`` that belongs to segment ``sysname``."""
    if not 0 <= index < MAX_SEMS:
        raise ValueError(f"semaphore index {index} out of range")
    return f"{sysname}.s{index}"


def is_ours(sysname: str) -> bool:
    """True for a system name in shmkit's namespace."""
    return sysname.lstrip("/").startswith(PREFIX)
