"""shmkit bridge between two hosts: network namespaces joined by a veth pair (root).

One bridge process per namespace (``ip netns exec NS python -m shmkit
bridge``). The programs use shared memory only, so they run here; the
names differ per "host" because /dev/shm is shared between namespaces.
Every message carries its number and a CRC32 of its body, and every test
counts: Broadcast received + missed (Overrun) == published with the
numbers strictly increasing and each gap exactly the Overrun's count;
Queue taken exactly once (at most once for the in-flight window across a
bridge kill -9); Latest never older than a value already seen, never torn.

Recovery bound stated in docs/bridge.md: data flows again within
``RECOVER`` seconds of the link coming back or the bridge restarting.
"""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

import shmkit
from shmkit import Latest, Queue, registry
from shmkit.errors import Empty, NotFound, Overrun, PeerDied

zmq = pytest.importorskip("zmq", reason="the bridge needs pyzmq (pip install 'shmkit[bridge]')")

from shmkit.bridge import make_keys, netns, read_status  # noqa: E402

_why = netns.unavailable()
pytestmark = pytest.mark.skipif(_why is not None, reason=f"two hosts: {_why}")

RECOVER = 6.0  # seconds: data flows again after the link returns or a bridge restarts
PORT = 7711
WINDOW = 64  # the bridges' queue credit: small, so the kill -9 bound below is tight
MSG = struct.Struct("<QI")


def pack(n: int, size: int = 48) -> bytes:
    body = (n.to_bytes(8, "little") * (size // 8 + 1))[:size]
    return MSG.pack(n, zlib.crc32(body)) + body


def unpack(data: bytes) -> int:
    n, crc = MSG.unpack_from(data)
    assert zlib.crc32(data[MSG.size :]) == crc, f"message {n}: bad checksum"
    return int(n)


class World:
    """Bridges on hosts a and b, objects named <name>.a.* and <name>.b.*."""

    def __init__(self, hosts: netns.TwoHosts, name: str, logs: Path) -> None:
        self.hosts, self.name, self.logs = hosts, name, logs
        self.bridges: dict[str, subprocess.Popen[bytes]] = {}
        self.made: list[str] = []

    def a(self, what: str) -> str:
        return f"{self.name}.a.{what}"

    def b(self, what: str) -> str:
        return f"{self.name}.b.{what}"

    def start(self, side: str, kinds: list[str], extra: Sequence[str] = ()) -> None:
        """Start (or restart) the bridge of one side for the given kinds (and flags)."""
        argv = [
            sys.executable,
            "-m",
            "shmkit",
            "bridge",
            "--name",
            f"{self.name}.{side}",
            "--log-every",
            "1",
            "--window",
            str(WINDOW),
        ]
        if side == "a":
            argv += ["--listen", self.hosts.url("a", PORT)]
            argv += [f"--export={k}:{self.a(w)}={w}" for k, w in kinds_words(kinds)]
        else:
            argv += ["--connect", self.hosts.url("a", PORT)]
            argv += [f"--import={k}:{w}={self.b(w)}" for k, w in kinds_words(kinds)]
        argv += extra
        log = open(self.logs / f"bridge-{side}.log", "ab")  # noqa: SIM115 - the child owns it
        self.bridges[side] = self.hosts.run(side, argv, stderr=log, stdout=log)
        log.close()

    def kill(self, side: str) -> None:
        proc = self.bridges[side]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)

    def stop(self) -> None:
        for proc in self.bridges.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.bridges.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()

    def connected(self, timeout: float) -> dict[str, Any]:
        """Wait until every import of b is connected with data flowing; return b's status."""
        end = time.monotonic() + timeout
        st: dict[str, Any] = {}
        while time.monotonic() < end:
            try:
                st = read_status(f"{self.name}.b", timeout=0.2)
                if st["imports"] and all(
                    all(i["peers"].values()) and i["source"] for i in st["imports"]
                ):
                    return st
            except (NotFound, Empty, shmkit.errors.Timeout, ValueError):
                pass
            time.sleep(0.05)
        raise AssertionError(f"bridge b not connected within {timeout} s: {st}\n{self.log()}")

    def log(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-3000:] for p in self.logs.glob("*.log"))

    def cleanup(self) -> None:
        self.stop()
        for n in (
            self.made
            + [self.a(w) for w in ("frames", "jobs", "pose")]
            + [self.b(w) for w in ("frames", "jobs", "pose")]
            + [f"bridge.{self.name}.a", f"bridge.{self.name}.b"]
        ):
            try:
                registry.remove(n)
            except NotFound:
                pass


def kinds_words(kinds: list[str]) -> list[tuple[str, str]]:
    words = {"broadcast": "frames", "queue": "jobs", "latest": "pose"}
    return [(k, words[k]) for k in kinds]


@pytest.fixture
def world(name: str, tmp_path: Path) -> Iterator[World]:
    with netns.TwoHosts.create() as hosts:
        w = World(hosts, name, tmp_path)
        try:
            yield w
        finally:
            w.cleanup()


class BroadcastCheck:
    """A subscriber on host b that checks numbers, checksums and Overrun counts.

    Host b's ring is numbered like host a's (a gap is skipped, not closed
    up), so every message's own number is its local number, and the numbers
    a subscriber never received are exactly the ones Overrun reported.
    """

    def __init__(self, name: str) -> None:
        self.sub = shmkit.subscribe(name, "oldest")
        self.received = 0
        self.missed = 0
        self.last = -1

    def drain(self, total: int, timeout: float, stop: threading.Event | None = None) -> None:
        end = time.monotonic() + timeout
        while self.received + self.missed < total and time.monotonic() < end:
            if stop is not None and stop.is_set():
                return
            try:
                n = unpack(self.sub.recv(timeout=0.2))
            except Empty:
                continue
            except PeerDied:  # host b's bridge (its publisher) is restarting
                time.sleep(0.05)
                continue
            except Overrun as exc:
                self.missed += exc.missed
                continue
            assert n == self.sub.next_seq - 1, (n, self.sub.next_seq)
            assert n > self.last
            self.last = n
            self.received += 1
            assert n + 1 == self.received + self.missed, (n, self.received, self.missed)


def publish_paced(
    pub: shmkit.Publisher, start: int, count: int, every: int = 50, pause: float = 0.002
) -> None:
    for i in range(start, start + count):
        pub.publish(pack(i))
        if i % every == 0:
            time.sleep(pause)


def test_broadcast_queue_latest_across_two_hosts(world: World) -> None:
    kinds = ["broadcast", "queue", "latest"]
    pub = shmkit.publisher(world.a("frames"), 64, 256)
    q = Queue.create(world.a("jobs"), 1 << 16)
    lat = Latest.create(world.a("pose"), size=64)
    try:
        lat.set(pack(0))
        world.start("a", kinds)
        world.start("b", kinds)
        world.connected(RECOVER + 4)
        check = BroadcastCheck(world.b("frames"))
        try:
            # Broadcast: 3000 messages; every one accounted for
            publish_paced(pub, 0, 3000)
            check.drain(3000, 10.0)
            assert check.received + check.missed == 3000, (check.received, check.missed)
            assert check.received > 0
        finally:
            check.sub.close()

        # Queue: producers here (host a); consumers on both hosts; exactly once
        n_jobs = 600
        for i in range(n_jobs):
            q.put(pack(i))
        child = ChildConsumer(world.b("jobs"), world.logs)
        taken_a, taken_b = take_all(q, child, n_jobs, 20.0)
        everything = taken_a + taken_b
        assert sorted(everything) == list(range(n_jobs)), (len(taken_a), len(taken_b))
        assert taken_b, "host b consumed nothing"

        # Latest: versions seen on b never go back, values never torn, the last one arrives
        with Latest.open(world.b("pose")) as lb:
            seen = [unpack(lb.get(timeout=5.0))]
            for v in range(1, 301):
                lat.set(pack(v))
                if v % 10 == 0:
                    time.sleep(0.005)
                    seen.append(unpack(lb.get(timeout=1.0)))
            end = time.monotonic() + 5.0
            while seen[-1] != 300 and time.monotonic() < end:
                seen.append(unpack(lb.get(timeout=1.0)))
                time.sleep(0.01)
            assert seen == sorted(seen) and seen[-1] == 300, seen
        st = read_status(f"{world.name}.b", timeout=1.0)
        assert {i["spec"].split(":")[0] for i in st["imports"]} == set(kinds)
        out = subprocess.run(
            [sys.executable, "-m", "shmkit", "ls"], capture_output=True, text=True, timeout=30
        )
        assert f"bridge.{world.name}.b" in out.stdout
    finally:
        for obj in (pub, q, lat):
            obj.close()


SNIFF = r"""
import socket, sys, time
dev, seconds, marker = sys.argv[1], float(sys.argv[2]), bytes.fromhex(sys.argv[3])
raw = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))  # ETH_P_ALL
raw.bind((dev, 0))
raw.settimeout(0.1)
print("ready", flush=True)
packets = seen = 0
end = time.monotonic() + seconds
while time.monotonic() < end:
    try:
        frame = raw.recv(65535)
    except socket.timeout:
        continue
    packets += 1
    seen += marker in frame
print(packets, seen, flush=True)
"""


@pytest.mark.parametrize("curve", [False, True], ids=["plain", "curve"])
def test_curve_across_two_hosts_hides_the_data_on_the_wire(
    world: World, tmp_path: Path, curve: bool
) -> None:
    """A raw-socket sniffer on host b's end of the link sees the marker in plain
    traffic (so it does see the traffic) and never with CURVE; with CURVE the
    allowed bridge still gets every job, and a bridge with an unknown key gets
    nothing and creates nothing."""
    marker = os.urandom(12)
    flags: dict[str, list[str]] = {"a": [], "b": []}
    if curve:
        server_pub, server_sec = make_keys(str(tmp_path / "server"), "a")
        _, client_sec = make_keys(str(tmp_path / "allowed"), "b")
        _, stranger_sec = make_keys(str(tmp_path / "strangers"), "s")
        flags["a"] = ["--curve-secret", server_sec, "--curve-allow", str(tmp_path / "allowed")]
        flags["b"] = ["--curve-secret", client_sec, "--curve-server-key", server_pub]
    q = Queue.create(world.a("jobs"), 1 << 16)
    stranger = None
    try:
        world.start("a", ["queue"], flags["a"])
        world.start("b", ["queue"], flags["b"])
        if curve:
            stranger_name = f"{world.name}.s.jobs"
            world.made += [stranger_name, f"bridge.{world.name}.s"]  # killed: its status stays
            argv = [sys.executable, "-m", "shmkit", "bridge", "--name", f"{world.name}.s"]
            argv += [
                "--connect",
                world.hosts.url("a", PORT),
                f"--import=queue:jobs={stranger_name}",
            ]
            argv += ["--curve-secret", stranger_sec, "--curve-server-key", server_pub]
            stranger = world.hosts.run(
                "b", argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
        world.connected(RECOVER + 4)
        sniffer = world.hosts.run(
            "b",
            [sys.executable, "-c", SNIFF, world.hosts.dev["b"], "6", marker.hex()],
            stdout=subprocess.PIPE,
        )
        assert sniffer.stdout is not None
        assert sniffer.stdout.readline().strip() == b"ready"
        n_jobs = 300
        for i in range(n_jobs):
            q.put(i.to_bytes(8, "little") + marker * 3)
        taken: list[int] = []
        with Queue.open(world.b("jobs"), wait=5.0) as qb:
            end = time.monotonic() + 20.0
            while len(taken) < n_jobs and time.monotonic() < end:
                try:
                    data = qb.get(timeout=0.2)
                except Empty:
                    continue
                assert data[8:] == marker * 3
                taken.append(int.from_bytes(data[:8], "little"))
        assert sorted(taken) == list(range(n_jobs)), len(taken)
        out, _ = sniffer.communicate(timeout=20)
        packets, seen = (int(x) for x in out.split())
        assert packets > 0
        if curve:
            assert seen == 0, f"the marker crossed the link in the clear {seen} time(s)"
            with pytest.raises(NotFound):
                Queue.open(f"{world.name}.s.jobs")  # the stranger never got a DESC
        else:
            assert seen > 0, "the sniffer saw none of the plain traffic"
    finally:
        if stranger is not None:
            stranger.kill()
            stranger.wait(timeout=10)
        q.close()


CHILD = r"""
import os, sys, time, struct, zlib
from shmkit import Queue
from shmkit.errors import Empty, NotFound
name, out, stop = sys.argv[1:4]
deadline = time.monotonic() + 60
while True:
    try:
        q = Queue.open(name)
        break
    except NotFound:
        time.sleep(0.05)
with open(out, "a") as f:
    while time.monotonic() < deadline:
        try:
            data = q.get(timeout=0.1)
        except Empty:
            if os.path.exists(stop):
                break
            continue
        n, crc = struct.unpack_from("<QI", data)
        assert zlib.crc32(data[12:]) == crc, n
        f.write(f"{n}\n")
        f.flush()
q.close()
"""


class ChildConsumer:
    """A consumer process of a queue (host b); its ids land in a file, one a line."""

    def __init__(self, qname: str, tmp: Path) -> None:
        self.qname = qname
        self.out, self.stop_file = tmp / f"taken-{os.getpid()}-{time.monotonic_ns()}", None
        self.stop_path = tmp / f"stop-{time.monotonic_ns()}"
        self.out.write_text("")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, qname, str(self.out), str(self.stop_path)]
        )

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)

    def taken(self) -> list[int]:
        return [int(x) for x in self.out.read_text().split()]

    def finish(self) -> list[int]:
        self.stop_path.write_text("stop")
        try:
            assert self.proc.wait(timeout=30) == 0
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(timeout=10)
        return self.taken()


def take_all(
    q: Queue[bytes], child: ChildConsumer, total: int, timeout: float, slow: float = 0.002
) -> tuple[list[int], list[int]]:
    """Consume on host a (slowly) while the child consumes on b, until ``total`` are taken."""
    taken_a: list[int] = []
    end = time.monotonic() + timeout
    quiet = 0.0  # since when both queues were seen empty (what a kill lost never comes)
    while time.monotonic() < end and len(taken_a) + len(child.taken()) < total:
        try:
            taken_a.append(unpack(q.get(timeout=0.05)))
            quiet = 0.0
        except Empty:
            with Queue.open(child.qname) as qb:
                empty = q.qsize() == 0 and qb.qsize() == 0
            if not empty:
                quiet = 0.0
            elif not quiet:
                quiet = time.monotonic()
            elif time.monotonic() - quiet > 2.0:
                break
        time.sleep(slow)
    return taken_a, child.finish()


class Traffic:
    """While it runs: a paced publisher on a, a checking subscriber on b, jobs put on a."""

    def __init__(self, world: World, pub: shmkit.Publisher, q: Queue[bytes]) -> None:
        self.pub, self.q, self.world = pub, q, world
        self.check = BroadcastCheck(world.b("frames"))
        self.pub_stop = threading.Event()
        self.sub_stop = threading.Event()
        self.published = 0
        self.jobs = 0
        self._pub_t = threading.Thread(target=self._publish)
        self._sub_t = threading.Thread(
            target=self.check.drain, args=(1 << 62, 120.0, self.sub_stop)
        )
        self._pub_t.start()
        self._sub_t.start()

    def _publish(self) -> None:
        while not self.pub_stop.is_set():
            self.pub.publish(pack(self.published))
            self.published += 1
            if self.published % 4 == 0:
                self.q.put(pack(self.jobs), timeout=5.0)
                self.jobs += 1
            time.sleep(0.001)

    def recovered_within(self, bound: float) -> float:
        """Seconds until b receives a message published after now (fails past ``bound``)."""
        t0 = time.monotonic()
        mark = self.published
        while self.check.last < mark:
            assert time.monotonic() - t0 < bound, f"no data within {bound} s: {self.world.log()}"
            time.sleep(0.02)
        return time.monotonic() - t0

    def finish(self) -> None:
        """Stop publishing; let b receive the rest, then stop the subscriber."""
        self.pub_stop.set()
        self._pub_t.join(timeout=10)
        end = time.monotonic() + RECOVER
        while self.check.received + self.check.missed < self.published:
            if time.monotonic() > end:
                break
            time.sleep(0.02)
        self.sub_stop.set()
        self._sub_t.join(timeout=10)
        self.check.sub.close()


def run_fault(world: World, fault: Any) -> tuple[Traffic, list[int], list[int], float]:
    """Traffic through the bridges while ``fault`` happens; returns what both hosts took.

    ``fault`` may be a list of faults, each followed by the recovery check;
    the time returned is the slowest recovery.
    """
    kinds = ["broadcast", "queue"]
    pub = shmkit.publisher(world.a("frames"), 64, 512)
    # ~250 jobs/s and nobody takes them on host a while the link is down: room for
    # an 8 s outage (2,000 jobs; 64 KiB held ~800, and the producer got Full)
    q = Queue.create(world.a("jobs"), 1 << 20)
    try:
        world.start("a", kinds)
        world.start("b", kinds)
        world.connected(RECOVER + 4)
        traffic = Traffic(world, pub, q)
        child = ChildConsumer(world.b("jobs"), world.logs)
        try:
            try:
                took = 0.0
                for one in fault if isinstance(fault, list) else [fault]:
                    time.sleep(0.5)
                    one()
                    took = max(took, traffic.recovered_within(RECOVER))
                time.sleep(0.5)
            finally:
                traffic.finish()
            taken_a, taken_b = take_all(q, child, traffic.jobs, 10.0, slow=0.0)
        finally:
            child.kill()
        return traffic, taken_a, taken_b, took
    finally:
        pub.close()
        q.close()


def assert_broadcast_counted(traffic: Traffic) -> None:
    c = traffic.check
    assert c.received > 0
    assert c.received + c.missed == traffic.published, (c.received, c.missed, traffic.published)


@pytest.mark.parametrize("down", [2.0, pytest.param(8.0, marks=pytest.mark.slow)])
def test_link_down_then_up(world: World, down: float) -> None:
    """2 s in the default run; 8 s (past the exporter's 5 s stream FORGET) when slow."""

    def fault() -> None:
        world.hosts.link(False)
        time.sleep(down)
        world.hosts.link(True)

    traffic, taken_a, taken_b, took = run_fault(world, fault)
    assert_broadcast_counted(traffic)
    c = traffic.check
    print(
        f"link down {down} s: recovered in {took:.2f} s; broadcast {c.received} received, "
        f"{c.missed} missed of {traffic.published}; {traffic.jobs} jobs"
    )
    # both bridges lived: every job taken exactly once, none lost
    assert sorted(taken_a + taken_b) == list(range(traffic.jobs)), world.log()
    assert took < RECOVER


@pytest.mark.parametrize("side", ["a", pytest.param("b", marks=pytest.mark.slow)])
def test_bridge_kill_9_and_restart(world: World, side: str) -> None:
    def fault() -> None:
        world.kill(side)
        time.sleep(0.3)
        world.start(side, ["broadcast", "queue"])

    traffic, taken_a, taken_b, took = run_fault(world, fault)
    assert_broadcast_counted(traffic)
    everything = taken_a + taken_b
    assert len(everything) == len(set(everything)), "a job was taken twice"
    lost = traffic.jobs - len(everything)
    c = traffic.check
    print(
        f"kill -9 {side}: recovered in {took:.2f} s; broadcast {c.received} received, "
        f"{c.missed} missed of {traffic.published}; jobs {len(everything)}/{traffic.jobs}"
    )
    assert 0 <= lost <= WINDOW, f"{lost} jobs lost (credit window {WINDOW})"
    assert took < RECOVER


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_soak_link_flaps_and_kills(world: World) -> None:
    """20 random faults in a row (link down 0.5-3 s, kill -9 of either bridge); counts hold."""
    import random

    rng = random.Random(int(os.environ.get("SHMKIT_SOAK_SEED", "13")))
    kills = 0

    def flap() -> None:
        world.hosts.link(False)
        time.sleep(rng.uniform(0.5, 3.0))
        world.hosts.link(True)

    def kill(side: str) -> Any:
        def go() -> None:
            nonlocal kills
            kills += 1
            world.kill(side)
            time.sleep(rng.uniform(0.0, 1.0))
            world.start(side, ["broadcast", "queue"])

        return go

    faults = [rng.choice([flap, kill("a"), kill("b")]) for _ in range(20)]
    traffic, taken_a, taken_b, took = run_fault(world, faults)
    assert_broadcast_counted(traffic)
    everything = taken_a + taken_b
    assert len(everything) == len(set(everything)), "a job was taken twice"
    lost = traffic.jobs - len(everything)
    assert 0 <= lost <= 64 * kills, f"{lost} jobs lost in {kills} kills"
    print(
        f"soak: {kills} kills; slowest recovery {took:.2f} s; broadcast "
        f"{traffic.check.received} received, {traffic.check.missed} missed; "
        f"jobs {len(everything)}/{traffic.jobs}"
    )
