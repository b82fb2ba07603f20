"""The C seqlock under Latest and Broadcast: mid-copy overwrites, corrupt words, signals (T31).

The reader's copy has a test hook (``SHMKIT_HOOK_AT``): the reader stops in
the middle of its copy, says so on ``SHMKIT_HOOK_FD`` and waits for a byte on
``SHMKIT_HOOK_WAIT_FD``, so a test overwrites the slot at exactly that moment.
"""

from __future__ import annotations

import json
import time

import pytest

import shmkit
from shmkit.broadcast import Broadcast, publisher, subscribe
from shmkit.errors import LayoutError, Overrun
from shmkit.latest import Latest

from .helpers import finish, kill, read_line, spawn

N = 4096
HOOK = {"SHMKIT_HOOK_FD": "1", "SHMKIT_HOOK_WAIT_FD": "0"}

LATEST_READER = """
import json, sys
from shmkit.latest import Latest
lt = Latest.open(sys.argv[1])
print("ready", flush=True)
data = lt.get(timeout=10)
print(json.dumps({"distinct": sorted(set(data)), "n": len(data)}), flush=True)
"""


def test_latest_value_overwritten_mid_copy_is_retried_never_returned(name: str) -> None:
    with Latest.create(name, size=N) as lt:
        lt.set(b"a" * N)  # version 1, slot 1
        reader = spawn(LATEST_READER, name, env={"SHMKIT_HOOK_AT": "latest.get.copying", **HOOK})
        try:
            assert read_line(reader) == "ready"
            assert read_line(reader) == "hook"  # half of version 1 copied
            for ch in b"bcd":  # versions 2..4: version 4 rewrites slot 1
                lt.set(bytes([ch]) * N)
            assert reader.stdin is not None
            reader.stdin.write("g" * 16)  # let this and any retry continue
            reader.stdin.flush()
            line = read_line(reader)
            while line == "hook":
                line = read_line(reader)
            got = json.loads(line)
            assert got == {"distinct": [ord("d")], "n": N}  # the retry's whole value
            finish(reader)
        finally:
            kill(reader)
        lt.unlink()


BROADCAST_READER = """
import json, sys
from shmkit.broadcast import subscribe
from shmkit.errors import Overrun
sub = subscribe(sys.argv[1], "oldest")
print("ready", flush=True)
mode = sys.argv[2]
try:
    if mode == "bytes":
        data = sub.recv(timeout=10)
    else:
        buf = bytearray(4096)
        data = bytes(buf[: sub.recv_into(buf, timeout=10)])
    print(json.dumps({"distinct": sorted(set(data))}), flush=True)
except Overrun as exc:
    print(json.dumps({"overrun": exc.missed, "next": sub.next_seq}), flush=True)
sub.close()
"""


@pytest.mark.parametrize("mode", ["bytes", "into"])
def test_broadcast_message_overwritten_mid_copy_is_an_overrun(name: str, mode: str) -> None:
    pub = publisher(name, slot_size=N, slots=2)
    try:
        pub.publish(b"a" * N)  # message 0, slot 0
        reader = spawn(
            BROADCAST_READER, name, mode, env={"SHMKIT_HOOK_AT": "broadcast.recv.copying", **HOOK}
        )
        try:
            assert read_line(reader) == "ready"
            assert read_line(reader) == "hook"  # half of message 0 copied
            pub.publish(b"b" * N)
            pub.publish(b"c" * N)  # message 2 rewrites slot 0
            assert reader.stdin is not None
            reader.stdin.write("g")
            reader.stdin.flush()
            got = json.loads(read_line(reader))
            assert got["overrun"] >= 1 and got["next"] >= 1, got  # never the mixed frame
            finish(reader)
        finally:
            kill(reader)
    finally:
        pub.unlink()
        pub.close()


# ------------------------------------------------------------------ corrupt words


def test_latest_length_beyond_the_slot_is_a_layout_error(name: str) -> None:
    with Latest.create(name, size=16) as lt:
        lt.set(b"x" * 16)
        ctl = lt._ctl
        assert ctl is not None
        word = lt._tagw[lt.get_version() % lt.slots]
        ctl[word + 1] = 100  # a length larger than the slot
        with pytest.raises(LayoutError, match="claims 100 bytes"):
            lt.get()
        with pytest.raises(LayoutError, match="claims 100 bytes"):
            lt.get_into(bytearray(4096))
        ctl[word + 1] = 2**63
        with pytest.raises(LayoutError):
            lt.get_versioned()
        lt.set(b"fresh")  # the next writer rewrites a whole slot
        assert lt.get() == b"fresh"
        lt.unlink()


def test_latest_corrupt_version_word_is_a_layout_error(name: str) -> None:
    with Latest.create(name, size=16) as lt:
        lt.set(b"ok")
        ctl = lt._ctl
        assert ctl is not None
        ctl[8] = 2**63  # the version word
        with pytest.raises(LayoutError, match="version word"):
            lt.get()
        ctl[8] = 5  # a version whose slot never held it: retried, then starved
        with pytest.raises(shmkit.ReadStarved):
            lt.get(timeout=0.05)
        lt.unlink()


@pytest.mark.parametrize("how", ["recv", "recv_into", "recv_view"])
def test_broadcast_length_beyond_the_slot_is_a_layout_error(name: str, how: str) -> None:
    """A 16-byte slot claiming 100 bytes: never bytes of the next slot (recv_into did)."""
    pub = publisher(name, slot_size=16, slots=4)
    sub = subscribe(name)
    try:
        pub.publish(b"x" * 16)
        pub.publish(b"y" * 16)
        base = pub._ctl.slot0  # slot 0's words
        pub._ctl.q[base + 1] = 100
        with pytest.raises(LayoutError, match="claims 100 bytes"):
            if how == "recv":
                sub.recv(0)
            elif how == "recv_into":
                sub.recv_into(bytearray(100), 0)
            else:
                sub.recv_view(0)
        assert sub.next_seq == 0  # nothing consumed
    finally:
        sub.close()
        pub.unlink()
        pub.close()


def test_broadcast_corrupt_sequence_and_published_words(name: str) -> None:
    pub = publisher(name, slot_size=16, slots=4)
    sub = subscribe(name)
    try:
        pub.publish(b"a")
        base = pub._ctl.slot0
        pub._ctl.q[base] = 2 * 50 + 2  # slot 0 claims a much later message: a lap
        with pytest.raises(Overrun):
            sub.recv(0)
        pub.publish(b"b")
        pub._ctl.q[0] = 2**63  # published
        with pytest.raises(LayoutError):
            sub.recv(0)
        pub._ctl.q[0] = 2
        slot1 = base + pub._ctl.stride_q
        pub._ctl.q[slot1] = 1  # an odd seq below the message's: never visible, bounded retries
        sub._ring.next = 1
        with pytest.raises(LayoutError):
            sub.recv(0)
    finally:
        sub.close()
        pub.unlink()
        pub.close()


# ------------------------------------------------------------------ T31


SIGNALLED = """
import signal, sys, time
from shmkit.broadcast import Broadcast, subscribe
from shmkit.latest import Latest

class Boom(Exception):
    pass

def handler(signum, frame):
    # Raise anywhere but in this module's own retry loop (its frame is <module>),
    # so the exception lands right after the C calls in body() and in shmkit.
    if frame is not None and frame.f_code.co_name not in ("<module>", "handler"):
        raise Boom

lt = Latest.open(sys.argv[1])
pub = Broadcast.open(sys.argv[2]).publisher()
sub = subscribe(sys.argv[2])

def body():
    lt.set(b"s" * 64)
    lt.get()
    pub.publish(b"p" * 64)
    try:
        sub.recv(0)
    except Exception as exc:
        if type(exc).__name__ not in ("Empty", "Overrun"):
            raise

signal.signal(signal.SIGALRM, handler)
signal.setitimer(signal.ITIMER_REAL, 50e-6, 50e-6)
loops = hits = 0
end = time.monotonic() + 1.5
while time.monotonic() < end:
    try:
        body()
        loops += 1
    except Boom:
        hits += 1
signal.setitimer(signal.ITIMER_REAL, 0, 0)
signal.signal(signal.SIGALRM, signal.SIG_IGN)
pub.publish(b"final")
print(loops, hits, flush=True)
sys.stdin.readline()
sub.close(); pub.close(); lt.close()
print("closed", flush=True)
"""


def test_t31_a_raising_signal_handler_never_leaves_anything_held(name: str) -> None:
    """SIGALRM raising every 50 us through set/get/publish/recv; others go on within 2 s."""
    lt = Latest.create(name + "-lt", size=64)
    pub = publisher(name + "-bc", slot_size=64, slots=8)
    pub.close()  # the child becomes the publisher
    probe = subscribe(name + "-bc")
    child = spawn(SIGNALLED, name + "-lt", name + "-bc")
    try:
        loops, hits = map(int, read_line(child, timeout=60).split())
        assert loops > 0 and hits > 0
        # The child still lives: a mutex left held by it would block us forever.
        t0 = time.monotonic()
        assert lt.set(b"other process", timeout=2.0) > 0
        assert lt.get() == b"other process"
        seen: list[bytes] = []
        while True:
            data = probe.recv_latest(timeout=2.0) if not seen else probe.recv(timeout=2.0)
            seen.append(data)
            if data == b"final":
                break
        assert time.monotonic() - t0 < 2.0
        assert child.stdin is not None
        child.stdin.write("\n")
        child.stdin.flush()
        assert read_line(child, timeout=10) == "closed"
        finish(child)
    finally:
        kill(child)
        probe.close()
        lt.unlink()
        lt.close()
        Broadcast.open(name + "-bc").unlink()
