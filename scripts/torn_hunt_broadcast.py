"""Torn-read hunt for Broadcast (issue 4): 6 MiB frames, 10 s, 3 reader processes.

A writer publishes 1920x1080x3 uint8 frames whose every byte equals the
frame's number (mod 256), as fast as it can: even frames by ``publish``
(copy-in), odd ones by ``loan`` + fill in place. Three readers in other
processes check every frame they receive for uniformity:

- ``into``: ``recv_into`` a private buffer, then check the copy;
- ``view``: ``recv_view`` zero-copy, check the shared memory in place, then
  ``validate()`` (a view overwritten meanwhile is *invalidated*, not torn);
- ``bytes``: ``recv`` (a fresh bytes copy), then check it.

Torn = a frame delivered as valid whose bytes are not all equal to its
number. Overruns (laps) are counted and reported, never hidden. Exit status
1 if anything torn was seen::

    python scripts/torn_hunt_broadcast.py                # the issue's full run
    python scripts/torn_hunt_broadcast.py --seconds 3 --height 270
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any

import numpy as np

from shmkit.broadcast import Broadcast, subscribe
from shmkit.errors import Overrun, PeerDied
from shmkit.segment import Segment


def writer(name: str, seconds: float, shape: tuple[int, ...]) -> None:
    pub = Broadcast.open(name).publisher(timeout=5.0)
    staging = np.empty(shape, np.uint8)
    print("ready", flush=True)
    sys.stdin.readline()
    n = pub.published
    end = time.monotonic() + seconds
    t0 = time.perf_counter()
    while time.monotonic() < end:
        if n & 1:
            with pub.loan(dtype=np.uint8, shape=shape) as frame:
                frame.fill(n & 0xFF)
        else:
            staging.fill(n & 0xFF)
            pub.publish(staging)
        n += 1
    elapsed = time.perf_counter() - t0
    pub.close()  # readers drain, then get PeerDied
    print(json.dumps({"published": n, "fps": n / elapsed}), flush=True)


def reader(name: str, mode: str, nbytes: int) -> None:
    sub = subscribe(name)
    buf = np.empty(nbytes, np.uint8)
    print("ready", flush=True)
    checked = torn = invalidated = overruns = 0
    t0 = time.perf_counter()
    while True:
        try:
            if mode == "view":
                msg = sub.recv_view(10.0)
                arr = msg.array(np.uint8)
                v = msg.seq & 0xFF
                ok = arr.size == nbytes and arr.min() == v and arr.max() == v
                try:
                    msg.validate()
                except Overrun:
                    invalidated += 1  # overwritten while we looked: discarded, not torn
                    continue
                finally:
                    del arr
                    msg.release()
            elif mode == "into":
                size = sub.recv_into(buf, 10.0)
                v = (sub.next_seq - 1) & 0xFF
                ok = size == nbytes and buf.min() == v and buf.max() == v
            else:
                data = np.frombuffer(sub.recv(10.0), np.uint8)
                v = (sub.next_seq - 1) & 0xFF
                ok = data.size == nbytes and data.min() == v and data.max() == v
        except Overrun:
            overruns += 1
            continue
        except PeerDied:
            break
        checked += 1
        torn += not ok
    elapsed = time.perf_counter() - t0
    print(
        json.dumps(
            {
                "mode": mode,
                "checked": checked,
                "torn": torn,
                "overruns": overruns,
                "missed": sub.missed,
                "invalidated_views": invalidated,
                "fps": checked / elapsed,
            }
        ),
        flush=True,
    )
    sub.close()


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--width", type=int, default=1920)
    ap.add_argument("--height", type=int, default=1080)
    ap.add_argument("--slots", type=int, default=8)
    ap.add_argument("--readers", default="into,view,bytes", help="comma-separated modes")
    ap.add_argument("--role", choices=["main", "writer", "reader"], default="main")
    ap.add_argument("--name", default=f"torn-bc-{os.getpid()}")
    ap.add_argument("--mode", default="into")
    args = ap.parse_args(argv)
    shape = (args.height, args.width, 3)
    nbytes = args.height * args.width * 3
    if args.role == "writer":
        writer(args.name, args.seconds, shape)
        return 0
    if args.role == "reader":
        reader(args.name, args.mode, nbytes)
        return 0

    Broadcast.create(args.name, slot_size=nbytes, slots=args.slots).close()
    procs: list[subprocess.Popen[str]] = []
    base = [sys.executable, os.path.abspath(__file__), "--name", args.name]
    size = ["--width", str(args.width), "--height", str(args.height)]
    try:
        w = subprocess.Popen(
            [*base, *size, "--role", "writer", "--seconds", str(args.seconds)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        procs.append(w)
        assert w.stdout is not None and w.stdin is not None
        w.stdout.readline()
        modes = args.readers.split(",")
        for mode in modes:
            procs.append(
                subprocess.Popen(
                    [*base, *size, "--role", "reader", "--mode", mode],
                    stdout=subprocess.PIPE,
                    text=True,
                )
            )
        for p in procs[1:]:
            assert p.stdout is not None
            p.stdout.readline()
        w.stdin.write("go\n")
        w.stdin.flush()
        results: list[Any] = []
        for p in procs:
            out, _ = p.communicate(timeout=args.seconds + 60)
            if p.returncode:
                raise SystemExit(f"child exited {p.returncode}")
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        Segment.remove(args.name)
    wr, rd = results[0], results[1:]
    print(
        f"broadcast torn-read hunt: {nbytes / 2**20:.2f} MiB frames, {args.slots} slots, "
        f"{args.seconds:.0f} s, writer {wr['published']} frames ({wr['fps']:.0f}/s)"
    )
    unaccounted = 0
    for r in rd:
        # Every frame published is either checked or reported missed, exactly.
        exact = r["checked"] + r["missed"] == wr["published"]
        unaccounted += not exact
        print(
            f"  reader {r['mode']:5s}: {r['checked']:6d} frames checked ({r['fps']:.0f}/s), "
            f"torn {r['torn']}, overruns {r['overruns']} ({r['missed']} frames missed, "
            f"{r['invalidated_views']} of them views overwritten while held); "
            f"checked + missed == published: {exact}"
        )
    torn = sum(r["torn"] for r in rd)
    print(f"TORN FRAMES: {torn}")
    return 1 if torn or unaccounted else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
