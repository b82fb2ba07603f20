"""shmkit bridge across a veth pair: the bridge against pyzmq used directly and against one host.

Two network namespaces joined by a veth pair (root; see shmkit.bridge.netns),
one bridge in each. Measured in one run, each for ``--seconds``:

- 64-byte messages/s: a Broadcast published at full speed (delivered/s on
  host b and the share lost, lossy ring), and a Queue (lossless; messages/s
  until all arrived);
- 64-byte round trip: ping over a Broadcast a->b, echoed over another b->a;
- 1 MiB and 6 MiB frames/s through a Broadcast (read in place on host b with
  ``recv_view``, as the pyzmq receiver takes its frames with ``copy=False``);
- the same with plain pyzmq programs over the same link (PUSH/PULL, REQ/REP);
- the same objects on one host (no bridge).

    python benchmarks/bench_bridge.py            # about a minute
    python benchmarks/bench_bridge.py --seconds 1
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time
from typing import Any

import shmkit
from shmkit import Queue, registry
from shmkit._bench.common import environment
from shmkit.bridge import netns
from shmkit.bridge.protocol import WINDOW
from shmkit.errors import Empty, NotFound, Overrun, PeerDied

SIZES = {"64": 64, "1m": 1 << 20, "6m": 6 << 20}
SLOTS = {"64": 4096, "1m": 16, "6m": 8}
PY = sys.executable

PUBLISH = r"""
import sys, time, shmkit
name, size, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
pub = shmkit.publisher(name)
data = bytes(size)
n, end = 0, time.monotonic() + seconds
while time.monotonic() < end:
    for _ in range(64):
        pub.publish(data)
    n += 64
pub.close()
print(n)
"""

PRODUCE = r"""
import sys, shmkit
q = shmkit.Queue.open(sys.argv[1])
data = bytes(64)
for _ in range(int(sys.argv[2])):
    q.put(data, timeout=30)
q.close()
"""

ECHO = r"""
import sys, time, shmkit
from shmkit.errors import Empty, NotFound, Overrun, PeerDied
src, dst, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
end = time.monotonic() + seconds
while True:
    try:
        sub = shmkit.subscribe(src)
        break
    except NotFound:
        time.sleep(0.05)
pub = shmkit.publisher(dst)
print("ready", flush=True)
while time.monotonic() < end:
    try:
        pub.publish(sub.recv(timeout=0.2))
    except (Empty, Overrun):
        pass
    except PeerDied:  # the pinger has not attached yet
        time.sleep(0.01)
"""

ZMQ = r"""
import sys, time, statistics, zmq
mode, addr, size, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
ctx = zmq.Context()
if mode == "pull":
    s = ctx.socket(zmq.PULL); s.bind(addr)
    print("ready", flush=True)
    s.recv(); n, t0 = 0, time.monotonic()
    while time.monotonic() - t0 < seconds:
        if s.poll(500):
            s.recv(copy=False); n += 1
    print(n / (time.monotonic() - t0))
elif mode == "push":
    s = ctx.socket(zmq.PUSH); s.setsockopt(zmq.SNDTIMEO, 1000); s.connect(addr)
    data, end = bytes(size), time.monotonic() + seconds + 1.0
    try:
        while time.monotonic() < end:
            s.send(data, copy=False)
    except zmq.Again:
        pass
elif mode == "rep":
    s = ctx.socket(zmq.REP); s.bind(addr)
    print("ready", flush=True)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if s.poll(200):
            s.send(s.recv())
elif mode == "req":
    s = ctx.socket(zmq.REQ); s.connect(addr)
    data, rtts = bytes(size), []
    for _ in range(500):
        t = time.perf_counter(); s.send(data); s.recv(); rtts.append(time.perf_counter() - t)
    rtts.sort()
    print(statistics.median(rtts) * 1e6, rtts[int(len(rtts) * 0.99)] * 1e6)
ctx.destroy(linger=0)
"""


def drain(sub: shmkit.Subscriber, seconds: float, view: bool) -> tuple[float, int, int]:
    """(delivered per second, received, missed) until the stream stays quiet 1 s.

    ``view``: read each message in place (``recv_view``), as pyzmq's receiver
    here takes its frames without a copy (``copy=False``); else ``recv()``.
    """
    got = missed = 0
    t0 = t_last = 0.0
    end = time.monotonic() + seconds + 10
    while time.monotonic() < end:
        try:
            if view:
                with sub.recv_view(timeout=1.0 if got else 5.0):
                    pass  # validated on leaving: an overwritten view raises Overrun
            else:
                sub.recv(timeout=1.0 if got else 5.0)
        except Empty:
            break
        except PeerDied:
            time.sleep(0.01)
            continue
        except Overrun as exc:
            missed += exc.missed
            continue
        t_last = time.monotonic()
        if not got:
            t0 = t_last
        got += 1
    rate = (got - 1) / (t_last - t0) if got > 1 and t_last > t0 else 0.0
    return rate, got, missed


def stream(sub_name: str, pub_name: str, key: str, seconds: float) -> tuple[float, float]:
    """Publish ``key``-sized messages at full speed for ``seconds``; (delivered/s, lost share)."""
    with shmkit.subscribe(sub_name) as sub:
        child = subprocess.Popen(
            [PY, "-c", PUBLISH, pub_name, str(SIZES[key]), str(seconds)],
            stdout=subprocess.PIPE,
            text=True,
        )
        rate, got, missed = drain(sub, seconds, view=SIZES[key] > 4096)
        child.wait(timeout=60)
    return rate, missed / max(1, got + missed)


def queue_rate(src: str, dst: str, n: int) -> float:
    with Queue.open(dst) as q:
        child = subprocess.Popen([PY, "-c", PRODUCE, src, str(n)])
        q.get(timeout=30)
        t0 = time.monotonic()
        for _ in range(n - 1):
            q.get(timeout=30)
        rate = (n - 1) / (time.monotonic() - t0)
        child.wait(timeout=60)
    return rate


def ping(
    ping_a: str, pong_a: str, ping_b: str, pong_b: str, rounds: int = 300
) -> tuple[float, float]:
    echo = subprocess.Popen(
        [PY, "-c", ECHO, ping_b, pong_b, "60"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert echo.stdout is not None
        echo.stdout.readline()
        pub = shmkit.publisher(ping_a)
        sub = _wait_open(lambda: shmkit.subscribe(pong_a))
        rtts: list[float] = []
        with pub, sub:
            for i in range(20 + rounds):
                t = time.perf_counter()
                pub.publish(i.to_bytes(8, "little") * 8)
                try:
                    # a late pong of an earlier ping is skipped, never timed
                    while int.from_bytes(sub.recv(timeout=2.0)[:8], "little") != i:
                        pass
                except (Empty, Overrun):
                    continue
                rtts.append(time.perf_counter() - t)
        rtts = sorted(rtts[20:])
        return statistics.median(rtts) * 1e6, rtts[int(len(rtts) * 0.99)] * 1e6
    finally:
        echo.send_signal(signal.SIGTERM)
        echo.wait(timeout=10)


def _wait_open(opener: Any, timeout: float = 20.0) -> Any:
    end = time.monotonic() + timeout
    while True:
        try:
            return opener()
        except NotFound:
            if time.monotonic() > end:
                raise
            time.sleep(0.05)


def zmq_direct(hosts: netns.TwoHosts, seconds: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, size in SIZES.items():
        pull = hosts.run(
            "b",
            [PY, "-c", ZMQ, "pull", hosts.url("b", 7900), "0", str(seconds)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert pull.stdout is not None
        pull.stdout.readline()
        push = hosts.run(
            "a", [PY, "-c", ZMQ, "push", hosts.url("b", 7900), str(size), str(seconds)]
        )
        out[key] = float(pull.stdout.readline())
        push.wait(timeout=60)
        pull.wait(timeout=60)
    rep = hosts.run(
        "b",
        [PY, "-c", ZMQ, "rep", hosts.url("b", 7901), "0", "60"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert rep.stdout is not None
    rep.stdout.readline()
    req = hosts.run(
        "a",
        [PY, "-c", ZMQ, "req", hosts.url("b", 7901), "64", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    req_out, _ = req.communicate(timeout=60)
    out["rtt"] = tuple(float(x) for x in req_out.split())
    rep.kill()
    rep.wait(timeout=10)
    return out


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--queue-messages", type=int, default=20000)
    ap.add_argument(
        "--window",
        type=int,
        default=WINDOW,
        help="the importing bridge's queue credit (--window)",
    )
    args = ap.parse_args(argv)
    why = netns.unavailable()
    if why is not None:
        print(f"skipped: {why}")
        return 0
    print(environment())
    tag = f"bb{os.getpid()}"
    a, b = f"{tag}.a", f"{tag}.b"
    made: list[Any] = []
    for key, size in SIZES.items():
        # back-pressure on host a: the publisher waits for the bridge (or the local
        # subscriber) instead of burning a core on messages nobody can take
        made.append(shmkit.Broadcast.create(f"{a}.f{key}", size, SLOTS[key], backpressure=True))
        made.append(shmkit.Broadcast.create(f"{a}.local{key}", size, SLOTS[key], backpressure=True))
    made.append(Queue.create(f"{a}.jobs", 1 << 20))
    made.append(Queue.create(f"{a}.localjobs", 1 << 20))
    for n in ("ping", "lping", "lpong"):
        made.append(shmkit.Broadcast.create(f"{a}.{n}", 64, 64))
    made.append(shmkit.Broadcast.create(f"{b}.pong", 64, 64))
    rows: dict[str, Any] = {}
    with netns.TwoHosts.create() as hosts:
        ex_a = [f"--export=broadcast:{a}.f{k}=f{k}" for k in SIZES]
        ex_a += [f"--export=queue:{a}.jobs=jobs", f"--export=broadcast:{a}.ping=ping"]
        im_b = [f"--import=broadcast:f{k}={b}.f{k}" for k in SIZES]
        im_b += [f"--import=queue:jobs={b}.jobs", f"--import=broadcast:ping={b}.ping"]
        bridge = [PY, "-m", "shmkit", "bridge", "--log-every", "3600", "--window", str(args.window)]
        log = open(os.devnull, "wb")  # noqa: SIM115 - the children own it
        hosts.run(
            "a",
            [
                *bridge,
                "--name",
                a,
                "--listen",
                hosts.url("a", 7800),
                *ex_a,
                "--connect",
                hosts.url("b", 7801),
                f"--import=broadcast:pong={a}.pong",
            ],
            stderr=log,
        )
        hosts.run(
            "b",
            [
                *bridge,
                "--name",
                b,
                "--listen",
                hosts.url("b", 7801),
                f"--export=broadcast:{b}.pong=pong",
                "--connect",
                hosts.url("a", 7800),
                *im_b,
            ],
            stderr=log,
        )
        try:
            for key in SIZES:
                _wait_open(lambda k=key: shmkit.Broadcast.open(f"{b}.f{k}")).close()
            for key in SIZES:
                rows[f"bridge {key}"] = stream(f"{b}.f{key}", f"{a}.f{key}", key, args.seconds)
                rows[f"local {key}"] = stream(
                    f"{a}.local{key}", f"{a}.local{key}", key, args.seconds
                )
            _wait_open(lambda: Queue.open(f"{b}.jobs")).close()
            rows["bridge queue"] = queue_rate(f"{a}.jobs", f"{b}.jobs", args.queue_messages)
            rows["local queue"] = queue_rate(
                f"{a}.localjobs", f"{a}.localjobs", args.queue_messages
            )
            rows["bridge rtt"] = ping(f"{a}.ping", f"{a}.pong", f"{b}.ping", f"{b}.pong")
            rows["local rtt"] = ping(f"{a}.lping", f"{a}.lpong", f"{a}.lping", f"{a}.lpong")
            direct = zmq_direct(hosts, args.seconds)
        finally:
            for proc in hosts._procs:
                proc.send_signal(signal.SIGTERM)
            hosts.close()
            for obj in made:
                obj.unlink()
                obj.close()
            for n in (
                f"{b}.f64",
                f"{b}.f1m",
                f"{b}.f6m",
                f"{b}.jobs",
                f"{b}.ping",
                f"{a}.pong",
                f"bridge.{a}",
                f"bridge.{b}",
            ):
                try:
                    registry.remove(n)
                except NotFound:
                    pass
    names = {"64": "64 B msgs/s", "1m": "1 MiB frames/s", "6m": "6 MiB frames/s"}
    print(f"{'':22}{'bridge':>14}{'lost':>7}{'pyzmq direct':>14}{'ratio':>7}{'one host':>14}")
    for key in SIZES:
        rate, lost = rows[f"bridge {key}"]
        local, _ = rows[f"local {key}"]
        ratio = direct[key] / rate if rate else float("inf")
        print(
            f"{names[key]:22}{rate:14,.1f}{lost:7.1%}{direct[key]:14,.1f}{ratio:7.2f}{local:14,.1f}"
        )
    q, lq = rows["bridge queue"], rows["local queue"]
    print(
        f"{'64 B Queue msgs/s':22}{q:14,.1f}{'0':>7}{direct['64']:14,.1f}"
        f"{direct['64'] / q:7.2f}{lq:14,.1f}"
    )
    (m, p), (dm, dp), (lm, lp) = rows["bridge rtt"], direct["rtt"], rows["local rtt"]
    print(
        f"{'64 B round trip us':22}{m:14,.0f}{'':7}{dm:14,.0f}{m / dm:7.2f}{lm:14,.1f}   "
        f"(p99 {p:,.0f} / {dp:,.0f} / {lp:,.1f})"
    )
    print("ratio: bridge time over pyzmq time (>1: the bridge is slower); target <= 1.5")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
