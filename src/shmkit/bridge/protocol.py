"""What the bridges say to each other, and the ``KIND:NAME[=NAME]`` specs users write.

Every message is a ZeroMQ multipart message of three frames::

    header   HEADER: op u8, kind u8, 6 pad, a u64, b u64, session 16 bytes
    key      the exported name (UTF-8)
    payload  bytes (a value, a message, or JSON for DESC/NOEXPORT)

    op        direction            a                 b            session      payload
    SUB       importer->exporter   applied (queue)   window       exporter's   -
    DESC      exporter->importer   -                 -            exporter's   JSON params
    DATA      exporter->importer   seq/version/id    -            exporter's   the message(s)
    PACKED    exporter->importer   first seq/id      count        exporter's   packed messages
    NOEXPORT  exporter->importer   -                 -            exporter's   reason

DATA carries one message per payload frame (a batch of consecutive numbers
has several frames: a big frame goes out without a copy). PACKED carries a
batch of small messages in one frame: ``count`` u32 lengths, then the
messages back to back; one frame per batch instead of one per message is
what lets small messages cross at the engine's per-frame rate.

SUB is the importer's request, heartbeat, and for a Queue its
acknowledgement and credit all at once; it is re-sent every
``HEARTBEAT`` seconds, so a reconnect restores everything without a
handshake. DESC answers every SUB (the exporter's heartbeat). Sessions are
16 random bytes drawn when a bridge starts: a changed session tells the
other side the bridge restarted.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

from .._names import validate

__all__ = ["HEADER", "KINDS", "Spec", "pack", "parse_spec", "unpack_batch"]

HEADER: Final = struct.Struct("<BB6xQQ16s")

SUB: Final = 1
DESC: Final = 2
DATA: Final = 3
NOEXPORT: Final = 4
PACKED: Final = 5
#: a batch whose messages are all at most this big goes out PACKED
PACK_MAX: Final = 4096
#: a Queue import's default credit: messages in flight or waiting in its local
#: queue (what a bridge kill -9 can lose; ZeroMQ's own default queue is 1,000)
WINDOW: Final = 512

BROADCAST: Final = 1
QUEUE: Final = 2
LATEST: Final = 3
KINDS: Final = {"broadcast": BROADCAST, "queue": QUEUE, "latest": LATEST}
KIND_NAMES: Final = {v: k for k, v in KINDS.items()}

#: seconds between an importer's SUBs (each answered by a DESC)
HEARTBEAT: Final = 0.25
#: a peer silent this long is reported disconnected
SILENT: Final = 2.0
#: an importer the exporter has not heard from for this long is forgotten
FORGET: Final = 5.0


@dataclass(frozen=True)
class Spec:
    """One ``--export`` or ``--import``: the object's kind, its local name and its key.

    ``--export KIND:LOCAL[=KEY]`` offers the local object under KEY (default:
    its own name). ``--import KIND:KEY[=LOCAL]`` takes the remote KEY into
    the local object LOCAL (default: the same name, as on real hosts).
    """

    kind: str
    local: str
    key: str

    @property
    def code(self) -> int:
        return KINDS[self.kind]

    def __str__(self) -> str:
        return f"{self.kind}:{self.local}" + ("" if self.key == self.local else f"<->{self.key}")


def parse_spec(text: str, export: bool) -> Spec:
    """Parse ``KIND:NAME[=NAME]``; ValueError (InvalidName for a bad name) saying why."""
    kind, sep, rest = text.partition(":")
    if not sep or kind not in KINDS:
        raise ValueError(f"{text!r}: expected KIND:NAME with KIND one of {', '.join(KINDS)}")
    first, _, second = rest.partition("=")
    first = validate(first)
    second = validate(second) if second else first
    if export:
        return Spec(kind, local=first, key=second)
    return Spec(kind, local=second, key=first)


def header(op: int, kind: int, a: int = 0, b: int = 0, session: bytes = bytes(16)) -> bytes:
    return HEADER.pack(op, kind, a, b, session)


def unpack(frame: memoryview) -> tuple[int, int, int, int, bytes]:
    """(op, kind, a, b, session) of a header frame; ValueError if it is not one."""
    if len(frame) != HEADER.size:
        raise ValueError(f"bad header frame of {len(frame)} bytes")
    op, kind, a, b, session = HEADER.unpack(frame)
    return int(op), int(kind), int(a), int(b), bytes(session)


def pack(payloads: list[bytes]) -> bytes:
    """One PACKED frame: the u32 lengths, then the messages back to back."""
    return struct.pack(f"<{len(payloads)}I", *map(len, payloads)) + b"".join(payloads)


def unpack_batch(frame: memoryview, count: int) -> list[memoryview]:
    """The messages of a PACKED frame; ValueError if its lengths do not add up."""
    if count < 1 or 4 * count > len(frame):
        raise ValueError(f"a packed batch of {count} message(s) in {len(frame)} bytes")
    lengths = struct.unpack_from(f"<{count}I", frame)
    off = 4 * count
    if off + sum(lengths) != len(frame):
        raise ValueError(f"packed lengths add up to {sum(lengths)}, not {len(frame) - off}")
    out = []
    for n in lengths:
        out.append(frame[off : off + n])
        off += n
    return out
