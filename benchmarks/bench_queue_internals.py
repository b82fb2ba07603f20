"""Two Queue measurements behind BENCHMARKS.md "Queue round 3" (not peers: shmkit alone).

``wakes``: one producer process streams 64-byte messages to this one; prints
the whole-run rate and how often producers bumped the consumers' futex word
(a wake-up for a registered waiter; the system call is made only for one
asleep in futex_wait). Run it under ``strace -f -c -e trace=futex`` to count
the system calls themselves.

``large-load``: 1 MiB messages with ``get_into`` while N CPU-bound processes
run beside it (0: none); prints GB/s and how often each side's futex word
was bumped (a sleeping peer woken; compare builds by alternating runs)::

    python benchmarks/bench_queue_internals.py wakes [--messages N] [--spin S]
    python benchmarks/bench_queue_internals.py large-load [--messages N] [--load N]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import time
from typing import Any

from shmkit import Queue

SMALL = 64
LARGE = 1 << 20
#: Byte offset of the consumers' futex word in the queue body (queue_ring.py: gwake).
_GWAKE_WORD = 328 // 8


def _produce(name: str, n: int, size: int) -> None:
    with Queue.open(name) as q:
        msg = bytes(size)
        put = q.put
        for _ in range(n):
            put(msg, timeout=60)


def _hog(stop: Any) -> None:
    x = 0
    while not stop.is_set():
        for _ in range(100_000):
            x += 1


def wakes(n: int, spin: float) -> None:
    name = f"bqi-{os.getpid()}"
    with Queue.create(name, 4096 * 80, spin=spin, unlink_on_exit=True) as q:
        proc = mp.get_context("spawn").Process(target=_produce, args=(name, n, SMALL))
        proc.start()
        get = q.get
        get(timeout=30)
        t0 = time.perf_counter()
        for _ in range(n - 1):
            get(timeout=30)
        dt = time.perf_counter() - t0
        proc.join(30)
        bumps = q._c[_GWAKE_WORD] & 0xFFFF_FFFF
    print(
        f"spin={spin:g}: {(n - 1) / dt / 1e6:.2f} M msg/s; consumers' futex word bumped "
        f"{bumps} times ({bumps / n * 1e3:.1f} per 1000 messages)"
    )


def large_load(n: int, load: int) -> None:
    ctx = mp.get_context("spawn")
    name = f"bqi-{os.getpid()}"
    stop = ctx.Event()
    hogs = [ctx.Process(target=_hog, args=(stop,)) for _ in range(load)]
    for h in hogs:
        h.start()
    try:
        with Queue.create(name, 3 * (LARGE + 16), unlink_on_exit=True) as q:
            time.sleep(0.3)
            proc = ctx.Process(target=_produce, args=(name, n, LARGE))
            proc.start()
            buf = bytearray(LARGE)
            q.get_into(buf, timeout=30)
            t0 = time.perf_counter()
            for _ in range(n - 1):
                q.get_into(buf, timeout=30)
            dt = time.perf_counter() - t0
            proc.join(30)
            words = q._c[_GWAKE_WORD]  # gwake (low 32 bits) and pwake (high)
    finally:
        stop.set()
        for h in hogs:
            h.join(10)
    rate = (n - 1) * LARGE / dt / 1e9
    print(
        f"1 MiB get_into beside {load} CPU-bound processes: {rate:.2f} GB/s; futex words "
        f"bumped: consumers' {words & 0xFFFF_FFFF}, producers' {words >> 32} (in {n} messages)"
    )


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", choices=["wakes", "large-load"])
    parser.add_argument("--messages", type=int, default=0, help="messages (default per mode)")
    parser.add_argument("--spin", type=float, default=50e-6, help="wakes: the consumer's spin")
    parser.add_argument("--load", type=int, default=os.cpu_count() or 1, help="CPU hogs")
    opts = parser.parse_args(argv)
    if opts.what == "wakes":
        wakes(opts.messages or 1_000_000, opts.spin)
    else:
        large_load(opts.messages or 1000, opts.load)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
