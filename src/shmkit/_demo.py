"""``shmkit demo``: the classic shared-memory tutorial, done right.

A writer process creates a segment and two semaphores, writes a payload with
its digest, and signals; a separate reader process waits (with a timeout),
reads, verifies, and acknowledges; the writer then removes everything. Both
are separate interpreters started here (the reader attaches before the writer
writes, so the wake-up latency is measured alone); each reports what it did and how long
each step took, as one JSON line on stdout.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from contextlib import closing
from typing import Any

from .segment import Segment
from .sync import Semaphore

_DIGEST = 32
_STAMP = 8


def _ms(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1e3, 3)


def writer(name: str, size: int) -> dict[str, Any]:
    """Create, fill and signal; wait for the reader's ack; remove everything."""
    steps: dict[str, float] = {}
    t0 = time.perf_counter()
    seg = Segment.create(name, _DIGEST + _STAMP + size)
    ready = Semaphore.create(name + ".ready", 0)
    ack = Semaphore.create(name + ".ack", 0)
    steps["create segment + 2 semaphores"] = _ms(t0)
    print(json.dumps({"created": True}), flush=True)
    try:
        t0 = time.perf_counter()
        if not ack.acquire(timeout=10.0):
            raise TimeoutError("reader did not attach within 10 s")
        steps["wait for the reader to attach"] = _ms(t0)
        t0 = time.perf_counter()
        payload = os.urandom(size)
        buf = seg.buf
        buf[_DIGEST + _STAMP :] = payload
        buf[:_DIGEST] = hashlib.blake2b(payload, digest_size=_DIGEST).digest()
        steps[f"make {size:,} random bytes, write, digest"] = _ms(t0)
        buf[_DIGEST : _DIGEST + _STAMP] = time.perf_counter_ns().to_bytes(8, "little")
        ready.release()
        t0 = time.perf_counter()
        if not ack.acquire(timeout=10.0):
            raise TimeoutError("reader did not acknowledge within 10 s")
        steps["wait for reader's ack"] = _ms(t0)
    finally:
        t0 = time.perf_counter()
        for obj in (seg, ready, ack):
            obj.unlink()
            obj.close()
        steps["unlink everything"] = _ms(t0)
    return {"role": "writer", "pid": os.getpid(), "steps": steps}


def reader(name: str, timeout: float) -> dict[str, Any]:
    """Open by name, wait for the signal, read, verify the digest, acknowledge."""
    steps: dict[str, float] = {}
    t0 = time.perf_counter()
    with (
        Segment.open(name) as seg,
        closing(Semaphore.open(name + ".ready")) as ready,
        closing(Semaphore.open(name + ".ack")) as ack,
    ):
        steps["open by name"] = _ms(t0)
        ack.release()  # attached: the writer may go on
        if not ready.acquire(timeout=timeout):
            raise TimeoutError(f"no signal within {timeout} s")
        woke = time.perf_counter_ns()
        buf = seg.buf
        sent = int.from_bytes(buf[_DIGEST : _DIGEST + _STAMP], "little")
        steps["signal -> reader awake"] = round((woke - sent) / 1e6, 3)
        t0 = time.perf_counter()
        data = bytes(buf[_DIGEST + _STAMP :])
        ok = hashlib.blake2b(data, digest_size=_DIGEST).digest() == bytes(buf[:_DIGEST])
        steps[f"read + verify {len(data):,} bytes"] = _ms(t0)
        ack.release()
    return {"role": "reader", "pid": os.getpid(), "steps": steps, "verified": ok}


def _child(role: str, name: str, arg: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "shmkit._demo", role, name, arg],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run(size: int = 6 * 1024 * 1024, timeout: float = 10.0) -> dict[str, Any]:
    """Run writer and reader as separate processes; return what each reported."""
    name = f"demo-{os.getpid()}"
    t0 = time.perf_counter()
    w = _child("writer", name, str(size))
    r: subprocess.Popen[str] | None = None
    try:
        assert w.stdout is not None
        first = w.stdout.readline()
        if not first:
            raise RuntimeError(f"writer failed: {w.communicate(timeout=timeout)[1][-2000:]}")
        r = _child("reader", name, str(timeout))
        r_out, r_err = r.communicate(timeout=timeout + 10)
        w_out, w_err = w.communicate(timeout=timeout + 10)
    finally:
        for proc in (w, r):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
    if r.returncode or w.returncode:
        raise RuntimeError(f"demo failed:\nwriter: {w_err[-2000:]}\nreader: {r_err[-2000:]}")
    return {
        "name": name,
        "writer": json.loads(w_out.strip().splitlines()[-1]),
        "reader": json.loads(r_out.strip().splitlines()[-1]),
        "total_ms": _ms(t0),
    }


def _main(argv: list[str]) -> int:
    role, name, arg = argv
    out = writer(name, int(arg)) if role == "writer" else reader(name, float(arg))
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
