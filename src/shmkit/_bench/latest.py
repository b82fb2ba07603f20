"""``Latest`` rates: 64-byte set/get in one process and across two, against simple peers.

Workloads, all in the same run:

* set+get of a 64-byte value in one process (the issue's target: under 2 µs),
  set and get alone, and the checksum mode weakly ordered CPUs use;
* peers for the same job: ``multiprocessing.Array('c', 64)`` with its lock
  (the stdlib's shared state), and a bare memoryview copy in and out (no
  protocol at all: the floor for any Python implementation);
* across two processes: get while another process sets flat out, set while
  another process gets flat out (one Latest, two interpreters, both busy);
* a ping-pong between two processes through two Latests with ``wait_newer``
  (spins 50 µs, then blocks on a semaphore), reported as one-way latency.

``latest_rates()`` returns the rows; ``shmkit bench frames`` includes them.
Run alone with ``python -m shmkit._bench.latest``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from ..latest import Latest
from ..testing import unique_name
from .common import Result, header, print_table, summarize

__all__ = ["latest_rates", "main"]

VALUE = bytes(range(64))
BASELINE = "shmkit Latest set+get 64 B"


def _interleaved(
    loops: dict[str, Callable[[int], None]], n: int, batch: int = 500
) -> dict[str, list[float]]:
    """Per-operation times of every loop, their batches taken in turn.

    Round-robin batches share whatever else the machine is doing at the time,
    so the rows stay comparable with each other even on a busy machine.
    """
    out: dict[str, list[float]] = {name: [] for name in loops}
    for _ in range(max(1, n // batch)):
        for name, loop in loops.items():
            t0 = time.perf_counter()
            loop(batch)
            out[name].append((time.perf_counter() - t0) / batch)
    return out


def _pair_loop(lt: Latest[bytes]) -> Callable[[int], None]:
    # Locals bound as defaults: the loops time the calls, not name lookups.
    def pair(k: int, set_: Callable[..., int] = lt.set, get: Callable[[], bytes] = lt.get) -> None:
        for _ in range(k):
            set_(VALUE)
            get()

    return pair


def _one_process(n: int) -> list[Result]:
    plain = Latest.create(unique_name("bench-latest"), size=64, checksum=False)
    checked = Latest.create(unique_name("bench-latest"), size=64, checksum=True)
    arr: Any = mp.Array("c", 64)  # a SynchronizedString (typeshed: SynchronizedArray)
    lock = arr.get_lock()
    buf = memoryview(bytearray(4096))
    try:
        plain.set(VALUE)
        checked.set(VALUE)

        def only_set(k: int, set_: Callable[..., int] = plain.set) -> None:
            for _ in range(k):
                set_(VALUE)

        def only_get(k: int, get: Callable[[], bytes] = plain.get) -> None:
            for _ in range(k):
                get()

        def mp_pair(k: int) -> None:
            for _ in range(k):
                with lock:
                    arr.raw = VALUE
                with lock:
                    arr.raw  # noqa: B018 - the read is the point

        def raw_pair(k: int) -> None:
            for _ in range(k):
                buf[64:128] = VALUE
                bytes(buf[64:128])

        times = _interleaved(
            {
                "pair": _pair_loop(plain),
                "set": only_set,
                "get": only_get,
                "checked": _pair_loop(checked),
                "mp": mp_pair,
                "raw": raw_pair,
            },
            n,
        )
    finally:
        for lt in (plain, checked):
            lt.unlink()
            lt.close()
    return [
        summarize(BASELINE, times["pair"], note="1 process"),
        summarize("shmkit Latest.set 64 B", times["set"]),
        summarize("shmkit Latest.get 64 B", times["get"]),
        summarize(BASELINE + " (checksum)", times["checked"], note="integrity option"),
        summarize("multiprocessing.Array('c', 64) locked set+get", times["mp"]),
        summarize("bare memoryview copy in+out", times["raw"], note="no protocol"),
    ]


def _child(role: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "shmkit._bench.latest", "--child", role, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def _run_child(role: str, name: str, seconds: float) -> None:
    """The other process: set or get flat out for ``seconds``; report batch times as JSON."""
    lt = Latest.open(name)
    set_, get = lt.set, lt.get
    print("ready", flush=True)
    sys.stdin.readline()
    samples = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        if role == "setter":
            for _ in range(500):
                set_(VALUE)
        else:
            for _ in range(500):
                get()
        samples.append((time.perf_counter() - t0) / 500)
    print(json.dumps(samples), flush=True)
    lt.close()


def _run_echo(ping: str, pong: str, n: int) -> None:
    a, b = Latest.open(ping), Latest.open(pong)
    print("ready", flush=True)
    v = 0
    for _ in range(n):
        v = a.wait_newer(v, timeout=30)
        b.set(VALUE)
    a.close()
    b.close()


def _two_processes(seconds: float, rounds: int) -> list[Result]:
    rows = []
    for other in ("setter", "getter"):
        name = unique_name("bench-latest2")
        lt = Latest.create(name, size=64)
        lt.set(VALUE)
        child = _child(other, name, str(seconds))
        try:
            assert child.stdout is not None and child.stdin is not None
            child.stdout.readline()
            child.stdin.write("go\n")
            child.stdin.flush()
            mine: list[float] = []
            end = time.perf_counter() + seconds
            op = lt.get if other == "setter" else lt.set
            arg = () if other == "setter" else (VALUE,)
            while time.perf_counter() < end:
                t0 = time.perf_counter()
                for _ in range(500):
                    op(*arg)
                mine.append((time.perf_counter() - t0) / 500)
            theirs = json.loads(child.communicate(timeout=seconds + 30)[0].strip())
        finally:
            if child.poll() is None:
                child.kill()
                child.communicate()
            lt.unlink()
            lt.close()
        if other == "setter":
            rows.append(summarize("shmkit Latest.get 64 B, other process setting", mine))
            rows.append(summarize("shmkit Latest.set 64 B, other process getting", theirs))
        else:
            rows.append(summarize("shmkit Latest.set 64 B, other process getting (2)", mine))
    ping, pong = unique_name("bench-ping"), unique_name("bench-pong")
    a, b = Latest.create(ping, size=64), Latest.create(pong, size=64)
    echo = _child("echo", ping, pong, str(rounds))
    try:
        assert echo.stdout is not None
        echo.stdout.readline()
        rtts = []
        v = 0
        for _ in range(rounds):
            t0 = time.perf_counter()
            a.set(VALUE)
            v = b.wait_newer(v, timeout=30)
            rtts.append(time.perf_counter() - t0)
        echo.wait(30)
    finally:
        if echo.poll() is None:
            echo.kill()
        echo.communicate()
        for lt2 in (a, b):
            lt2.unlink()
            lt2.close()
    one_way = [t / 2 for t in rtts]
    rows.append(
        summarize("shmkit Latest ping-pong one-way", one_way, note="wait_newer: spin, then block")
    )
    return rows


def latest_rates(n: int = 200_000, seconds: float = 1.5, rounds: int = 2000) -> list[Result]:
    """Every Latest row: one process, two processes busy at once, ping-pong latency."""
    return _one_process(n) + _two_processes(seconds, rounds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="shmkit bench latest", description=__doc__.splitlines()[0]
    )
    parser.add_argument("-n", type=int, default=200_000, help="operations per one-process row")
    parser.add_argument("--seconds", type=float, default=1.5, help="per two-process row")
    parser.add_argument("--rounds", type=int, default=2000, help="ping-pong round trips")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        role, *rest = args.child
        if role == "echo":
            _run_echo(rest[0], rest[1], int(rest[2]))
        else:
            _run_child(role, rest[0], float(rest[1]))
        return 0
    rows = latest_rates(args.n, args.seconds, args.rounds)
    if args.json:
        print(json.dumps([r.__dict__ for r in rows]))
        return 0
    header()
    print_table("Latest: 64-byte values", rows, baseline=BASELINE)
    pair = next(r for r in rows if r.name == BASELINE)
    verdict = "met" if pair.median_us < 2.0 else "NOT met"
    print(f"target set+get of 64 bytes under 2 µs: {verdict} ({pair.median_us:.2f} µs median)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
