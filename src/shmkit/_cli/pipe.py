"""``shmkit put NAME`` and ``shmkit get NAME``: shell pipes into and out of a Queue or Broadcast.

So that shell scripts and programs in other languages can join::

    tail -f app.log | shmkit put logs --create      # one message per line
    shmkit get logs --count 10 --timeout 5          # ten lines, or fewer after 5 s idle

Records are *lines* by default: each line read from stdin, without its
newline, is one message; ``get`` writes each message followed by a newline.
With ``--framed`` they are *length-framed*, for binary data: every record on
stdin and stdout is a 4-byte little-endian unsigned length followed by that
many bytes (``struct.pack("<I", len(data)) + data``). A truncated frame at
the end of stdin is an error (status 1); what came before it was sent.

``get`` flushes stdout after every record. It stops after ``--count``
records, when ``--timeout`` seconds pass without one (status 0 without
``--count``; 1 with ``--count`` not reached), when a broadcast's publisher
left and everything was read, or when stdout is closed (status 141; the
record being written is lost: it was already taken from the queue).

From a Broadcast, ``get`` is a new subscriber: it sees the messages
published after it subscribed (start it before the publisher, or use a
queue), and waits up to ``--timeout`` for a publisher to attach. ``put``
into a Broadcast takes the publisher role (one at a time per ring).
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
import time
from collections.abc import Iterator
from typing import Any, BinaryIO

from rich.console import Console

from .. import registry
from ..errors import Empty, MessageTooLarge, NotFound, PeerDied, ShmkitError
from .common import non_negative_float, positive_int

#: The ``--framed`` header: payload length, 4 bytes, little-endian, unsigned.
FRAME = struct.Struct("<I")
#: Queue capacity (bytes) and broadcast slot size used by ``--create``.
DEFAULT_CAPACITY = 1 << 20
DEFAULT_SLOT = 64 * 1024
#: Seconds to wait for an object another process is still creating.
INIT_WAIT = 2.0


def add_parsers(sub: Any) -> None:
    """Register ``put`` and ``get``."""
    p = sub.add_parser("put", help="send stdin's lines (or framed records) to a Queue/Broadcast")
    _common(p)
    p.add_argument(
        "--create",
        choices=("queue", "broadcast"),
        nargs="?",
        const="queue",
        help="create NAME if missing: a queue (default) or a broadcast",
    )
    p.add_argument(
        "--capacity",
        type=positive_int,
        default=DEFAULT_CAPACITY,
        help=f"bytes of a queue made by --create (default {DEFAULT_CAPACITY})",
    )
    p.add_argument(
        "--slot-size",
        type=positive_int,
        default=DEFAULT_SLOT,
        help=f"largest record of a broadcast made by --create (default {DEFAULT_SLOT})",
    )
    p.add_argument(
        "--lossy",
        action="store_true",
        help="a broadcast made by --create overwrites slow readers (default: back-pressure)",
    )
    p.set_defaults(func=cmd_put)

    p = sub.add_parser("get", help="print records of a Queue/Broadcast to stdout")
    _common(p)
    p.add_argument("--count", type=positive_int, help="stop after this many records")
    p.add_argument(
        "--create",
        action="store_true",
        help="create the queue if missing (--capacity bytes) instead of failing",
    )
    p.add_argument(
        "--capacity",
        type=positive_int,
        default=DEFAULT_CAPACITY,
        help=f"bytes of a queue made by --create (default {DEFAULT_CAPACITY})",
    )
    p.set_defaults(func=cmd_get)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", help="the Queue's or Broadcast's name")
    p.add_argument(
        "--framed",
        action="store_true",
        help="records are a 4-byte little-endian length + bytes (default: lines)",
    )
    p.add_argument(
        "--timeout",
        type=non_negative_float,
        default=None,
        help="seconds to wait for room (put) or for a record (get); default: forever",
    )


# ----------------------------------------------------------------------------- put


def read_records(stream: BinaryIO, framed: bool) -> Iterator[bytes]:
    """The records on ``stream``: lines without their newline, or length-framed payloads."""
    if not framed:
        while True:
            line = stream.readline()
            if not line:
                return
            yield line[:-1] if line.endswith(b"\n") else line
    while True:
        head = _read_exactly(stream, FRAME.size)
        if not head:
            return
        (n,) = FRAME.unpack(head)
        body = _read_exactly(stream, n)
        if len(body) != n:
            raise ShmkitError(f"stdin ended inside a {n}-byte record ({len(body)} bytes read)")
        yield body


def _read_exactly(stream: BinaryIO, n: int) -> bytes:
    chunks = []
    left = n
    while left:
        chunk = stream.read(left)
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    data = b"".join(chunks)
    if 0 < len(data) < FRAME.size and n == FRAME.size:
        raise ShmkitError(f"stdin ended inside a record header ({len(data)} of 4 bytes)")
    return data


def _kind_of(name: str) -> str:
    """``queue`` or ``broadcast`` for an existing name; NotFound if missing."""
    entry = registry.find(name, with_stats=False)
    deadline = time.monotonic() + INIT_WAIT
    while entry.state == "init" and time.monotonic() < deadline:
        time.sleep(0.005)  # another process (a `get --create`) is creating it right now
        entry = registry.find(name, with_stats=False)
    kind = entry.kind
    if kind not in ("queue", "broadcast"):
        raise ShmkitError(f"{name!r} is a {kind}; put/get need a queue or a broadcast")
    return kind


def _kind_or_create(args: argparse.Namespace, new_kind: str, made: str) -> tuple[str, bool]:
    """(NAME's kind, False), or (``new_kind``, True) when it is missing and --create was given."""
    try:
        return _kind_of(args.name), False
    except NotFound:
        if not args.create:
            raise NotFound(
                f"no queue or broadcast called {args.name!r} (pass --create to make {made})"
            ) from None
        return new_kind, True


def _sender(args: argparse.Namespace) -> tuple[Any, Any]:
    """(send(data), close()) for NAME, created if asked."""
    from .. import broadcast, queue  # noqa: PLC0415 - only put/get need the objects

    kind, create = _kind_or_create(args, args.create, "one")
    if kind == "queue":
        # An existing queue is used as it is (--capacity applies to a new one only).
        q = (
            queue.Queue.open_or_create(args.name, args.capacity)
            if create
            else queue.Queue.open(args.name)
        )

        text = q.codec.name != "bytes"  # a msgpack queue gets each record as a str

        def put(data: bytes) -> None:
            q.put(data.decode("utf-8", "replace") if text else data, timeout=args.timeout)

        return put, q.close
    pub = broadcast.publisher(
        args.name,
        args.slot_size if create else None,
        backpressure=not args.lossy,
        timeout=args.timeout if args.timeout is not None else 5.0,
    )

    def publish(data: bytes) -> None:
        pub.publish(data, timeout=args.timeout)

    return publish, pub.close


def cmd_put(args: argparse.Namespace, console: Console) -> int:
    """Send every record on stdin; status 0 at end of input."""
    send, close = _sender(args)
    sent = 0
    try:
        for record in read_records(sys.stdin.buffer, args.framed):
            try:
                send(record)
            except MessageTooLarge as exc:
                raise MessageTooLarge(f"record {sent + 1} ({len(record)} bytes): {exc}") from None
            sent += 1
    finally:
        close()
    return 0


# ----------------------------------------------------------------------------- get


def _receiver(args: argparse.Namespace) -> tuple[Any, Any]:
    """(recv() -> bytes | None at end of stream, close()) for NAME."""
    from .. import broadcast, queue  # noqa: PLC0415

    kind, create = _kind_or_create(args, "queue", "a queue")
    if kind == "queue":
        q = (
            queue.Queue.open_or_create(args.name, args.capacity)
            if create
            else queue.Queue.open(args.name)
        )

        def get() -> bytes | None:
            item = q.get(timeout=args.timeout)
            if isinstance(item, (bytes, bytearray, memoryview)):
                return bytes(item)
            # A msgpack queue yields objects: one JSON document per record.
            return json.dumps(item, default=repr).encode()

        return get, q.close
    sub = broadcast.subscribe(args.name)
    seen = [False]  # a publisher was attached at some point

    def recv() -> bytes | None:
        end = None if args.timeout is None else time.monotonic() + args.timeout
        while True:
            left = None if end is None else max(0.0, end - time.monotonic())
            try:
                data = sub.recv(timeout=left)
                seen[0] = True
                return data
            except PeerDied:
                if seen[0]:
                    return None  # the publisher left and everything was read
            # No publisher yet (a reader started first): wait for one to attach.
            if sub.publisher_alive:
                seen[0] = True
            elif left is not None and left <= 0:
                raise Empty(f"broadcast {args.name!r} got no publisher within {args.timeout} s")
            else:
                time.sleep(0.01 if left is None else min(0.01, left))

    return recv, sub.close


def cmd_get(args: argparse.Namespace, console: Console) -> int:
    """Write records to stdout, flushing each; see the module docstring for when it stops."""
    recv, close = _receiver(args)
    out = sys.stdout.buffer
    got = 0
    try:
        while args.count is None or got < args.count:
            try:
                data = recv()
            except Empty:
                break
            if data is None:
                break
            out.write(FRAME.pack(len(data)) + data if args.framed else data + b"\n")
            out.flush()
            got += 1
    finally:
        close()
    if args.count is not None and got < args.count:
        print(
            f"shmkit get: {got} of {args.count} records from {args.name!r} "
            f"(none for {args.timeout} s)",
            file=sys.stderr,
        )
        return 1
    return 0
