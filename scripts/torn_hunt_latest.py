"""Torn-read hunt for Latest (issue 4, RELIABILITY T27).

Writers publish values whose every byte equals the writer's running number, as
fast as they can; readers in other processes check every snapshot they get for
uniformity and their versions for monotonic order. Any non-uniform snapshot is
a torn read. The defaults are the issue's full run: 6 MiB values, 2 writers'
churn, 3 readers, 10 seconds::

    python scripts/torn_hunt_latest.py                 # full run, table
    python scripts/torn_hunt_latest.py --seconds 2 --size 1MiB --json

The three readers use the three read paths: ``get()`` (the bytes fast path),
``get_versioned()`` and ``get_into()``. Exit status 0 only if no read was
torn, no version went backwards, and every process finished cleanly.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import uuid
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

WRITER = r"""
import json, sys, time
import numpy as np
from shmkit.latest import Latest

name, wid = sys.argv[1], int(sys.argv[2])
lt = Latest.open(name)
buf = np.empty(lt.size, np.uint8)
print("ready", flush=True)
seconds = float(sys.stdin.readline())
t0 = time.monotonic()
end = t0 + seconds
n = 0
while time.monotonic() < end:
    buf.fill((2 * n + wid) & 0xFF)  # each writer's own number, so 2 writers never agree
    lt.set(buf, timeout=5.0)
    n += 1
elapsed = time.monotonic() - t0
print(json.dumps({"role": "writer", "id": wid, "sets": n, "seconds": elapsed}), flush=True)
lt.close()
"""

READER = r"""
import json, sys, time
import numpy as np
from shmkit.errors import Empty
from shmkit.latest import Latest, ReadStarved

name, rid, how = sys.argv[1], int(sys.argv[2]), sys.argv[3]
lt = Latest.open(name)
out = np.empty(lt.size, np.uint8)
words = out.view(np.uint64)
print("ready", flush=True)
seconds = float(sys.stdin.readline())
t0 = time.monotonic()
end = t0 + seconds
reads = torn = regress = starved = empty = distinct = 0
last = 0
while time.monotonic() < end:
    try:
        if how == "naive":
            # The control: the newest slot copied without the tag checks.
            v = -1
            k = lt._ctl[8] % lt.slots
            off = lt._doff[k]
            out[:] = lt._mmv[off : off + lt.size]
            arr = words
        elif how == "get":
            data = lt.get(timeout=1.0)
            v = -1
            arr = np.frombuffer(data, np.uint64)
        elif how == "versioned":
            v, data = lt.get_versioned(timeout=1.0)
            arr = np.frombuffer(data, np.uint64)
        else:
            v, n = lt.get_into(out, timeout=1.0)
            arr = words
    except Empty:
        empty += 1
        continue
    except ReadStarved:
        starved += 1
        continue
    reads += 1
    first = int(arr[0])
    if first != (first & 0xFF) * 0x0101010101010101 or not (arr == arr[0]).all():
        torn += 1
    if v >= 0:
        if v < last:
            regress += 1
        elif v > last:
            distinct += 1
            last = v
elapsed = time.monotonic() - t0
stats = lt.statistics()
print(json.dumps({
    "role": "reader", "id": rid, "how": how, "reads": reads, "torn": torn,
    "regressions": regress, "starved": starved, "empty": empty, "distinct": distinct,
    "retries": stats.retries, "seconds": elapsed,
}), flush=True)
lt.close()
"""


def _size(text: str) -> int:
    units = {"kib": 1024, "mib": 1024**2, "gib": 1024**3, "k": 1024, "m": 1024**2}
    low = text.strip().lower()
    for suffix, mult in units.items():
        if low.endswith(suffix):
            return int(float(low[: -len(suffix)]) * mult)
    return int(low)


def _spawn(code: str, *args: str) -> subprocess.Popen[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.path.join(ROOT, "src") + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def hunt(
    *,
    seconds: float,
    size: int,
    writers: int,
    readers: int,
    slots: int,
    checksum: bool,
    control: bool = False,
) -> dict[str, Any]:
    """Run one hunt; return the summary (children's reports plus totals)."""
    sys.path.insert(0, os.path.join(ROOT, "src"))
    from shmkit.latest import Latest  # imported after the path fix above

    name = f"hunt-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    lt = Latest.create(name, size=size, slots=slots, checksum=checksum)
    lt.set(bytes(size))  # readers never see Empty
    hows = ("get", "versioned", "into")
    procs = [_spawn(WRITER, name, str(w)) for w in range(writers)]
    procs += [_spawn(READER, name, str(r), hows[r % 3]) for r in range(readers)]
    if control:
        procs.append(_spawn(READER, name, str(readers), "naive"))
    reports: list[dict[str, Any]] = []
    failures: list[str] = []
    try:
        for proc in procs:
            assert proc.stdout is not None
            line = proc.stdout.readline().strip()
            if line != "ready":
                raise RuntimeError(f"child did not start: {line!r} {proc.communicate()[1][-2000:]}")
        for proc in procs:  # a common start, so every reader overlaps every writer
            assert proc.stdin is not None
            proc.stdin.write(f"{seconds}\n")
            proc.stdin.flush()
        for proc in procs:
            out, err = proc.communicate(timeout=seconds + 60)
            if proc.returncode != 0:
                failures.append(f"exit {proc.returncode}: {err[-2000:]}")
                continue
            reports.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        version = lt.get_version()
        lt.unlink()
        lt.close()
    rs = [r for r in reports if r["role"] == "reader" and r["how"] != "naive"]
    naive = [r for r in reports if r["role"] == "reader" and r["how"] == "naive"]
    ws = [r for r in reports if r["role"] == "writer"]
    return {
        "size": size,
        "seconds": seconds,
        "slots": slots,
        "checksum": checksum,
        "writers": ws,
        "readers": rs,
        "failures": failures,
        "sets": sum(w["sets"] for w in ws),
        "final_version": version,
        "reads": sum(r["reads"] for r in rs),
        "torn": sum(r["torn"] for r in rs),
        "regressions": sum(r["regressions"] for r in rs),
        "starved": sum(r["starved"] for r in rs),
        "retries": sum(r["retries"] for r in rs),
        "control": naive[0] if naive else None,
    }


def ok(summary: dict[str, Any]) -> bool:
    """The hunt passed: nothing torn or reordered, every child finished and read something."""
    return (
        not summary["failures"]
        and summary["torn"] == 0
        and summary["regressions"] == 0
        and all(r["reads"] > 0 for r in summary["readers"])
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--size", type=_size, default=6 * 1024 * 1024, help="e.g. 6MiB, 256KiB")
    parser.add_argument("--writers", type=int, default=2)
    parser.add_argument("--readers", type=int, default=3)
    parser.add_argument("--slots", type=int, default=3)
    parser.add_argument("--checksum", action="store_true", help="force the arm64 CRC path")
    parser.add_argument(
        "--control",
        action="store_true",
        help="add a naive reader (no tag checks) to show the hunt does catch torn reads",
    )
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = parser.parse_args(argv)
    if args.size % 8:
        parser.error("--size must be a multiple of 8")
    t0 = time.monotonic()
    summary = hunt(
        seconds=args.seconds,
        size=args.size,
        writers=args.writers,
        readers=args.readers,
        slots=args.slots,
        checksum=args.checksum,
        control=args.control,
    )
    summary["wall_seconds"] = round(time.monotonic() - t0, 2)
    if args.json:
        print(json.dumps(summary))
    else:
        mib = args.size / 2**20
        print(
            f"Latest torn-read hunt: {mib:g} MiB values, {args.writers} writers, "
            f"{args.readers} readers, {args.slots} slots, checksum={args.checksum}, "
            f"{args.seconds:g} s"
        )
        for w in summary["writers"]:
            rate = w["sets"] / w["seconds"]
            print(f"  writer {w['id']}: {w['sets']} sets ({rate:,.0f}/s)")
        for r in summary["readers"]:
            rate = r["reads"] / r["seconds"]
            print(
                f"  reader {r['id']} ({r['how']}): {r['reads']} reads ({rate:,.0f}/s, "
                f"{rate * args.size / 1e9:.2f} GB/s), torn {r['torn']}, "
                f"regressions {r['regressions']}, distinct versions {r['distinct']}, "
                f"retries {r['retries']}, starved {r['starved']}"
            )
        if summary["control"] is not None:
            c = summary["control"]
            print(f"  control (naive reader, not counted): {c['reads']} reads, torn {c['torn']}")
        for f in summary["failures"]:
            print(f"  FAILED child: {f}")
        verdict = "PASS" if ok(summary) else "FAIL"
        print(
            f"  total: {summary['sets']} sets, {summary['reads']} reads, "
            f"torn {summary['torn']}, starved {summary['starved']}: {verdict}"
        )
    return 0 if ok(summary) else 1


if __name__ == "__main__":
    sys.exit(main())
