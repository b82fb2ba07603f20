"""Broadcast under kill -9: publisher mid-frame, at every crash point, at random times;
readers holding views or mid-copy. Survivors continue within their timeouts and never
see a torn frame (RELIABILITY T07)."""

from __future__ import annotations

import random
import signal
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from shmkit.broadcast import Broadcast, publisher, subscribe
from shmkit.errors import Full
from shmkit.segment import Segment

from .helpers import kill
from .test_broadcast import child, line, result

#: Recovery bound R (2 slices + 100 ms) with slack for two busy CI cores.
R = 0.45
FRAME = 64 * 1024


@pytest.fixture
def ring(name: str) -> Iterator[str]:
    """A 4-slot ring of 64 KiB frames whose publisher role is free for a child."""
    Broadcast.create(name, slot_size=FRAME, slots=4).close()
    yield name
    Segment.remove(name)


def _stop(*procs: subprocess.Popen[str] | None) -> None:
    for p in procs:
        if p is not None:
            kill(p)


def _go(proc: subprocess.Popen[str]) -> None:
    assert proc.stdin is not None
    proc.stdin.write("go\n")
    proc.stdin.flush()


def _readers(name: str, until: int, **kw: Any) -> list[subprocess.Popen[str]]:
    kids = [
        child("receive", name, until=until, kind="frame", mode=m, start="oldest", **kw)
        for m in ("bytes", "into", "view")
    ]
    for k in kids:
        line(k)
    return kids


def _republish(name: str, until: int) -> dict[str, int]:
    """Attach a new publisher (repairing the ring) and publish frames up to ``until``."""
    with Broadcast.open(name) as bc, bc.publisher(timeout=1.0) as pub:
        start = pub.published
        stats = pub.statistics()
        for n in range(start, until):
            pub.publish(bytes([n & 0xFF]) * FRAME)
        return {"start": start, "repairs": stats.repairs, "attaches": stats.publisher_attaches}


@pytest.mark.parametrize(
    ("point", "loan"),
    [
        ("broadcast.publish.busy", False),
        ("broadcast.publish.half", False),
        ("broadcast.publish.copied", False),
        ("broadcast.publish.sealed", False),
        ("broadcast.loan.taken", True),
        ("", True),  # killed half-way through filling a loan (die_at)
    ],
)
def test_publisher_killed_mid_frame(ring: str, point: str, loan: bool) -> None:
    """T07: subscribers never receive the torn frame, learn of the death within R,
    and resume when a new publisher attaches and repairs the ring."""
    env = {"SHMKIT_CRASH_AT": point, "SHMKIT_CRASH_AFTER": "30"} if point else None
    writer = child(
        "publish", ring, -1, FRAME, "frame", 0.003, wait_go=True, loan=loan, die_at=30, env=env
    )
    readers: list[subprocess.Popen[str]] = []
    try:
        line(writer)
        readers = _readers(ring, until=45, after_death=1)
        _go(writer)
        assert writer.wait(20) == -signal.SIGKILL
        died = time.monotonic()
        time.sleep(R)  # every reader has seen PeerDied by now
        info = _republish(ring, 45)
        outs = [result(r, 30) for r in readers]
    finally:
        _stop(writer, *readers)
    sealed = point == "broadcast.publish.sealed"
    assert info["start"] == (31 if sealed else 30)  # the sealed frame was whole: published
    # attaches: the killed writer, then the new one
    assert info["repairs"] == (1 if sealed else 0) and info["attaches"] == 2
    for out in outs:
        assert out["torn"] == 0 and out["ordered"] and out["accounted"]
        assert out["deaths"] >= 1 and out["died_at"] - died < R
        assert out["last"] == 44


def test_publisher_killed_at_random_times(name: str) -> None:
    """kill -9 at an arbitrary instant of a full-speed stream of 1 MiB frames."""
    size = 1 << 20
    Broadcast.create(name, slot_size=size, slots=4).close()
    rng = random.Random(1234)
    try:
        for _ in range(2):
            writer = child("publish", name, -1, size, "frame", wait_go=True)
            readers: list[subprocess.Popen[str]] = []
            try:
                line(writer)
                readers = [
                    child("receive", name, until=1 << 40, kind="frame", mode=m, timeout=5.0)
                    for m in ("bytes", "into", "view")
                ]
                for r in readers:
                    line(r)
                _go(writer)
                time.sleep(rng.uniform(0.2, 0.8))
                writer.send_signal(signal.SIGKILL)
                writer.wait(10)
                died = time.monotonic()
                outs = [result(r, 30) for r in readers]
            finally:
                _stop(writer, *readers)
            for out in outs:
                assert out["torn"] == 0 and out["ordered"] and out["accounted"]
                assert out["count"] > 0 and out["deaths"] == 1 and out["died_at"] - died < R
    finally:
        Segment.remove(name)


def test_reader_killed_holding_a_view_releases_the_publisher(name: str) -> None:
    """Back-pressure: a view pins its slot; the holder's death frees it within R."""
    pub = publisher(name, slot_size=64, slots=4, backpressure=True)
    holder = reader = None
    try:
        holder = child("hold_view", name)
        reader = child("receive", name, until=20, start="oldest")
        line(reader)
        pub.publish((0).to_bytes(8, "little") * 8)
        assert line(holder)["holding"] == 0
        for n in range(1, 4):
            pub.publish(n.to_bytes(8, "little") * 8, timeout=5)
        with pytest.raises(Full):
            pub.publish((4).to_bytes(8, "little") * 8, timeout=0.2)
        kill(holder)
        t0 = time.monotonic()
        pub.publish((4).to_bytes(8, "little") * 8, timeout=5)
        assert time.monotonic() - t0 < R
        for n in range(5, 20):
            pub.publish(n.to_bytes(8, "little") * 8, timeout=5)
        out = result(reader)
        assert out["count"] == 20 and out["ordered"] and out["missed"] == 0
        assert pub.statistics().live_subscribers == 0
    finally:
        _stop(holder, reader)
        pub.close()
        pub.unlink()


def test_reader_killed_mid_copy_costs_nobody_anything(name: str) -> None:
    pub = publisher(name, slot_size=FRAME, slots=4, backpressure=True)
    env = {"SHMKIT_CRASH_AT": "broadcast.recv.copied", "SHMKIT_CRASH_AFTER": "5"}
    victim = child("receive", name, until=100, kind="frame", env=env)
    other = None
    try:
        other = child("receive", name, until=100, kind="frame", mode="view")
        line(victim)
        line(other)
        t0 = time.monotonic()
        for n in range(100):
            pub.publish(bytes([n & 0xFF]) * FRAME, timeout=5)
        assert victim.wait(10) == -signal.SIGKILL
        out = result(other)
        assert out["count"] == 100 and out["torn"] == 0 and out["missed"] == 0
        assert time.monotonic() - t0 < 10
        with subscribe(name) as late:
            assert late.statistics().live_subscribers == 1  # the dead one is not counted
    finally:
        _stop(victim, other)
        pub.close()
        pub.unlink()
