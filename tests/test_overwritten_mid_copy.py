"""A slot overwritten while a reader copies it: the reader retries or raises Overrun.

Deterministic, no timing: the reader runs in a child with
``SHMKIT_STOP_AT=<kind>.…copied``, so it stops itself (SIGSTOP) right after
copying a slot and before re-checking the slot's sequence word or tag. This
process then publishes a full ring, so the slot the reader copied now holds a
later message, and lets it continue (SIGCONT). The reader must notice: a
Broadcast subscriber raises Overrun (or, reading "latest", moves on to the
newest message); a Latest reader retries and returns the newest value. Never
the data it copied from the overwritten slot.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import pytest

from shmkit import Latest, publisher

from .helpers import finish, kill, read_line, spawn, wait_stopped

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs /proc to see a stopped child"),
]

SLOTS = 4

BROADCAST_READER = """
import sys
from shmkit import Overrun, subscribe

api, path, name = sys.argv[1:4]
sub = subscribe(name)
print("subscribed", flush=True)
if path != "slow":
    sys.stdin.readline()  # the message is published: the fast path finds it
else:
    print("waiting", flush=True)  # and block in the receive until it comes
try:
    if api == "recv":
        data = sub.recv(timeout=20)
    elif api == "recv_into":
        buf = bytearray(64)
        data = bytes(buf[: sub.recv_into(buf, timeout=20)])
    elif api == "recv_view":
        with sub.recv_view(timeout=20) as msg:
            data = bytes(msg.data)
    else:
        data = sub.recv_latest(timeout=20)
    print("data", data.decode(), flush=True)
except Overrun as exc:
    print("overrun", exc.missed, flush=True)
sub.close()
"""


def _message(i: int) -> bytes:
    return bytes([65 + i]) * 32


def _wait_blocked(pid: int) -> None:
    """Give the reader time to block in its receive (sleeping: state S)."""
    time.sleep(0.05)
    end = time.monotonic() + 5
    while time.monotonic() < end:
        with open(f"/proc/{pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "S":
                return
        time.sleep(0.005)


@pytest.mark.parametrize(
    ("api", "path"),
    [
        ("recv", "fast"),
        ("recv", "slow"),
        ("recv", "checksum"),
        ("recv_into", "fast"),
        ("recv_into", "slow"),
        ("recv_into", "checksum"),
        ("recv_view", "fast"),
        ("recv_view", "slow"),
        ("recv_latest", "fast"),
    ],
)
def test_broadcast_reader_never_returns_a_slot_overwritten_during_its_copy(
    name: str, api: str, path: str
) -> None:
    with publisher(name, slot_size=64, slots=SLOTS, checksum=path == "checksum") as pub:
        reader = spawn(
            BROADCAST_READER, api, path, name, env={"SHMKIT_STOP_AT": "broadcast.recv.copied"}
        )
        try:
            assert read_line(reader) == "subscribed"
            if path == "slow":
                assert read_line(reader) == "waiting"
                _wait_blocked(reader.pid)
            pub.publish(_message(0))
            if path != "slow":
                assert reader.stdin is not None
                reader.stdin.write("\n")
                reader.stdin.flush()
            wait_stopped(reader)  # it copied message 0 and has not re-checked yet
            for i in range(1, SLOTS + 1):  # a full ring: message SLOTS lands in slot 0
                pub.publish(_message(i))
            reader.send_signal(signal.SIGCONT)
            got = read_line(reader).split()
            finish(reader)
        finally:
            kill(reader)
        pub.unlink()
    if api == "recv_latest":
        assert got == ["data", _message(SLOTS).decode()]  # moved on to the newest
    else:
        assert got[0] == "overrun", f"returned an overwritten slot's copy: {got}"
        assert int(got[1]) >= 1


LATEST_READER = """
import sys
from shmkit import Latest

api, name = sys.argv[1:3]
lt = Latest.open(name)
print("open", flush=True)
version = "-"
if api == "get":
    data = lt.get()
elif api == "get_versioned":
    version, data = lt.get_versioned()
elif api == "get_into":
    buf = bytearray(64)
    version, n = lt.get_into(buf)
    data = bytes(buf[:n])
else:
    data = lt.get().tobytes()
print("data", version, data.hex(), flush=True)
lt.close()
"""


@pytest.mark.parametrize(
    ("api", "variant"),
    [
        ("get", "plain"),
        ("get", "checksum"),
        ("get_versioned", "plain"),
        ("get_versioned", "checksum"),
        ("get_into", "plain"),
        ("array", "plain"),
    ],
)
def test_latest_reader_retries_when_its_slot_is_overwritten_during_its_copy(
    name: str, api: str, variant: str
) -> None:
    nslots = 3
    if api == "array":
        import numpy as np

        lt: Latest[Any] = Latest.create(name, shape=(4,), dtype="<i8", slots=nslots)

        def value(i: int) -> bytes:
            return np.full(4, i + 1, "<i8").tobytes()

        def put(i: int) -> None:
            lt.set(np.frombuffer(value(i), "<i8"))
    else:
        lt = Latest.create(name, size=64, slots=nslots, checksum=variant == "checksum")

        def value(i: int) -> bytes:
            return _message(i)

        def put(i: int) -> None:
            lt.set(value(i))

    with lt:
        put(0)  # version 1
        reader = spawn(LATEST_READER, api, name, env={"SHMKIT_STOP_AT": "latest.get.copied"})
        try:
            assert read_line(reader) == "open"
            wait_stopped(reader)  # it copied version 1 and has not re-checked the tag
            for i in range(1, nslots + 1):  # versions 2..4: version 4 reuses version 1's slot
                put(i)
            reader.send_signal(signal.SIGCONT)
            got = read_line(reader).split()
            finish(reader)
        finally:
            kill(reader)
        lt.unlink()
    assert got[2] == value(nslots).hex(), "returned a copy of an overwritten slot"
    if api in ("get_versioned", "get_into"):
        assert got[1] == str(nslots + 1)
