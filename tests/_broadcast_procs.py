"""Programs the Broadcast tests run in separate interpreters (through ``helpers.spawn``).

Messages carry their own number so every receiver can check order and
integrity: a "frame" is ``size`` bytes all equal to ``n & 0xFF`` (the torn-read
pattern of the issue), a "seq" message is ``n`` as 8 little-endian bytes
repeated. Children talk back with one JSON line at the end.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import sys
import time
from typing import Any, Literal

from shmkit.broadcast import Broadcast, Subscriber, subscribe
from shmkit.errors import Empty, Overrun, PeerDied


def make(kind: str, n: int, size: int) -> bytes:
    """Message ``n`` of the given kind."""
    if kind == "frame":
        return bytes([n & 0xFF]) * size
    return n.to_bytes(8, "little") * max(1, size // 8)


def whole(kind: str, n: int, data: bytes) -> bool:
    """True if ``data`` is exactly message ``n`` (not torn, not another message)."""
    if kind == "frame":
        return len(data) > 0 and data[0] == n & 0xFF and not data.strip(data[:1])
    return data[:8] == n.to_bytes(8, "little") and data == data[:8] * (len(data) // 8)


def publish(
    name: str,
    count: int,
    size: int,
    kind: str = "seq",
    pace: float = 0.0,
    *,
    wait_go: bool = False,
    loan: bool = False,
    die_at: int = -1,
    pause_at: int = -1,
    pause: float = 0.0,
) -> None:
    """Become the publisher and publish ``count`` messages (-1: until killed).

    ``wait_go``: wait for a line on stdin before the first message. ``loan``:
    fill loaned slots instead of ``publish``. ``die_at``: SIGKILL ourselves
    half-way through filling the loan of that message number. ``pause_at``:
    stay idle ``pause`` seconds after publishing that message number.
    """
    pub = Broadcast.open(name).publisher(timeout=5.0)
    n = pub.published
    print(json.dumps({"ready": n}), flush=True)
    if wait_go:
        sys.stdin.readline()
    end = n + count if count >= 0 else -1
    while n != end:
        data = make(kind, n, size)
        if loan:
            with pub.loan(len(data), timeout=10.0) as buf:
                if n == die_at:
                    buf[: len(data) // 2] = data[: len(data) // 2]
                    os.kill(os.getpid(), signal.SIGKILL)
                buf[:] = data
        else:
            pub.publish(data, timeout=10.0)
        if n == pause_at:
            time.sleep(pause)
        n += 1
        if pace:
            time.sleep(pace)
    print(json.dumps({"published": n}), flush=True)
    pub.close()


def receive(
    name: str,
    *,
    until: int,
    kind: str = "seq",
    mode: str = "bytes",
    start: str = "latest",
    tethered: bool = True,
    sleep: float = 0.0,
    after_death: int = 0,
    timeout: float = 10.0,
) -> None:
    """Receive until message ``until - 1`` (or PeerDied), checking every message.

    After PeerDied, keep going if ``after_death`` more messages are expected
    (a new publisher attaches). Prints one JSON summary line.
    """
    where: Literal["latest", "oldest"] | int = int(start) if start.isdigit() else "latest"
    if start == "oldest":
        where = "oldest"
    sub = subscribe(name, where, tethered=tethered)
    first = sub.next_seq
    print(json.dumps({"ready": first}), flush=True)
    seqs: list[int] = []
    overruns: list[list[int]] = []
    torn = deaths = 0
    died_at = 0.0
    out: dict[str, Any] = {}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        expected = sub.next_seq
        try:
            n, ok = _one(sub, kind, mode, timeout)
        except Overrun as exc:
            overruns.append([expected, exc.missed, sub.next_seq])
            continue
        except PeerDied:
            deaths += 1
            died_at = died_at or time.monotonic()
            if after_death <= 0:
                break
            time.sleep(0.02)  # a new publisher is coming: keep asking
            continue
        except Empty:
            out["empty_at"] = expected
            break
        if not ok:
            torn += 1
        seqs.append(n)
        if sleep:
            time.sleep(sleep)
        if n + 1 >= until:
            break
    covered = list(seqs)
    for expected, missed, _resumed in overruns:
        covered.extend(range(expected, expected + missed))
    out.update(
        t_end=time.monotonic(),
        accounted=sorted(covered) == list(range(first, sub.next_seq)),
        first=first,
        count=len(seqs),
        head=seqs[:3],
        last=seqs[-1] if seqs else -1,
        ordered=all(b > a for a, b in itertools.pairwise(seqs)),
        overruns=overruns,
        missed=sub.missed,
        received=sub.received,
        torn=torn,
        died_at=died_at,
        deaths=deaths,
        next=sub.next_seq,
    )
    print(json.dumps(out), flush=True)
    sub.close()


def _one(sub: Subscriber, kind: str, mode: str, timeout: float) -> tuple[int, bool]:
    if mode == "view":
        msg = sub.recv_view(timeout)
        try:
            data = msg.data.tobytes()
            msg.validate()  # raises Overrun if it changed under us: then it is not "torn"
        finally:
            msg.release()
        return msg.seq, whole(kind, msg.seq, data)
    if mode == "into":
        buf = bytearray(sub.slot_size)
        size = sub.recv_into(buf, timeout)
        n = sub.next_seq - 1
        return n, whole(kind, n, bytes(buf[:size]))
    data = sub.recv(timeout)
    n = sub.next_seq - 1
    return n, whole(kind, n, data)


def hold_view(name: str) -> None:
    """Take a view of the next message and hold it until killed."""
    sub = subscribe(name, "oldest")
    msg = sub.recv_view(10.0)
    print(json.dumps({"holding": msg.seq}), flush=True)
    time.sleep(60)


def block_forever(name: str) -> None:
    """Block in recv(timeout=None) (for Ctrl-C tests); report how it ended."""
    sub = subscribe(name)
    print(json.dumps({"ready": sub.next_seq}), flush=True)
    t0 = time.monotonic()
    try:
        sub.recv()
    except KeyboardInterrupt:
        print(json.dumps({"interrupted": time.monotonic() - t0}), flush=True)
        sub.close()
        sys.exit(0)
    os._exit(3)
