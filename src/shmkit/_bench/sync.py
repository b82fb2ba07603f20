"""``shmkit bench sync``: locks and semaphores against multiprocessing and raw posix_ipc.

Two workloads, every contender in the same run:

* uncontended acquire+release of a lock, in one process;
* a two-process semaphore ping-pong (round trip), where the other side is a
  separate interpreter: shmkit with its default brief spin, shmkit with no
  spin (pure blocking), raw posix_ipc blocking, raw posix_ipc spinning on
  ``acquire(0)``, and ``multiprocessing.Semaphore`` (spawned child).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import posix_ipc

from .. import Lock, Semaphore
from ..testing import unique_name
from .common import Result, header, print_table, step, summarize, workloads


def _time_each(op: Callable[[], Any], n: int, batch: int = 100) -> list[float]:
    """Per-operation times from ``n`` operations timed in batches (timer cost amortised)."""
    out = []
    for _ in range(max(1, n // batch)):
        t0 = time.perf_counter()
        for _ in range(batch):
            op()
        out.append((time.perf_counter() - t0) / batch)
    return out


def uncontended(n: int) -> list[Result]:
    """Acquire+release pairs with nobody else around."""
    rows = []
    name = unique_name("bench-lock")
    lock = Lock.create(name)
    try:

        def shmkit_pair() -> None:
            lock.acquire()
            lock.release()

        rows.append(summarize("shmkit.Lock (robust, named)", _time_each(shmkit_pair, n)))
    finally:
        lock.unlink()
        lock.close()
    mlock = mp.Lock()

    def mp_pair() -> None:
        mlock.acquire()
        mlock.release()

    rows.append(summarize("multiprocessing.Lock", _time_each(mp_pair, n)))
    sysname = "/" + unique_name("bench-sem")
    sem = posix_ipc.Semaphore(sysname, posix_ipc.O_CREX, initial_value=1)
    try:

        def raw_pair() -> None:
            sem.acquire()
            sem.release()

        rows.append(summarize("posix_ipc.Semaphore as lock", _time_each(raw_pair, n)))
    finally:
        sem.unlink()
        sem.close()
    return rows


# ------------------------------------------------------------------ ping-pong


def _echo_shmkit(ping: str, pong: str, n: int, spin: float) -> None:
    a, b = Semaphore.open(ping), Semaphore.open(pong)
    for _ in range(n):
        a.acquire(spin=spin)
        b.release()
    a.close()
    b.close()


def _echo_raw(ping: str, pong: str, n: int, spin: bool) -> None:
    a, b = posix_ipc.Semaphore(ping), posix_ipc.Semaphore(pong)
    for _ in range(n):
        if spin:
            while True:
                try:
                    a.acquire(0)
                    break
                except posix_ipc.BusyError:
                    pass
        else:
            a.acquire()
        b.release()


def _echo_mp(a: Any, b: Any, n: int) -> None:
    for _ in range(n):
        a.acquire()
        b.release()


def _child(kind: str, ping: str, pong: str, n: int, spin: float) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "shmkit._bench.sync", "--echo", kind, ping, pong, str(n), str(spin)]
    )


def _acquirer(sem: Semaphore, spin: float) -> Callable[[], bool]:
    return lambda: sem.acquire(spin=spin)


def _spinner(sem: posix_ipc.Semaphore) -> Callable[[], None]:
    def spin_acquire() -> None:
        while True:
            try:
                sem.acquire(0)
                return
            except posix_ipc.BusyError:
                pass

    return spin_acquire


def _round_trips(release: Callable[[], None], acquire: Callable[[], Any], n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        release()
        acquire()
        out.append(time.perf_counter() - t0)
    return out


def ping_pong(n: int) -> list[Result]:
    """Round trips through two semaphores with the other side in another process."""
    rows = []
    for label, spin in (
        ("shmkit.Semaphore, spin 50 µs then block", 50e-6),
        ("shmkit.Semaphore, block", 0.0),
    ):
        base = unique_name("bench-pp")
        ping, pong = Semaphore.create(base + "a"), Semaphore.create(base + "b")
        child = _child("shmkit", base + "a", base + "b", n, spin)
        try:
            samples = _round_trips(ping.release, _acquirer(pong, spin), n)
            rows.append(summarize(label, samples[n // 10 :]))
        finally:
            child.wait(60)
            for s in (ping, pong):
                s.unlink()
                s.close()
    for label, raw_spin in (
        ("posix_ipc raw, spin on acquire(0)", True),
        ("posix_ipc raw, block", False),
    ):
        base = "/" + unique_name("bench-raw")
        a = posix_ipc.Semaphore(base + "a", posix_ipc.O_CREX, initial_value=0)
        b = posix_ipc.Semaphore(base + "b", posix_ipc.O_CREX, initial_value=0)
        child = _child("raw", base + "a", base + "b", n, float(raw_spin))
        try:
            samples = _round_trips(a.release, _spinner(b) if raw_spin else b.acquire, n)
            rows.append(summarize(label, samples[n // 10 :]))
        finally:
            child.wait(60)
            for s in (a, b):
                s.unlink()
                s.close()
    ctx = mp.get_context("spawn")
    ma, mb = ctx.Semaphore(0), ctx.Semaphore(0)
    proc = ctx.Process(target=_echo_mp, args=(ma, mb, n))
    proc.start()
    try:
        samples = _round_trips(ma.release, mb.acquire, n)
        rows.append(summarize("multiprocessing.Semaphore (spawned)", samples[n // 10 :]))
    finally:
        proc.join(60)
    return rows


#: What ``--only`` accepts.
WORKLOADS = ("uncontended", "pingpong")


def main(argv: list[str]) -> int:
    """Run the sync benchmark and print its tables."""
    parser = argparse.ArgumentParser(prog="shmkit bench sync")
    parser.add_argument("--quick", action="store_true", help="short run (smoke test)")
    parser.add_argument("--echo", nargs=5, help=argparse.SUPPRESS)
    parser.add_argument(
        "--only",
        default=",".join(WORKLOADS),
        help="comma-separated workloads: " + ", ".join(WORKLOADS),
    )
    args = parser.parse_args(argv)
    work = workloads(parser, args.only, WORKLOADS)
    if args.echo:
        kind, ping, pong, n, spin = args.echo
        if kind == "shmkit":
            _echo_shmkit(ping, pong, int(n), float(spin))
        else:
            _echo_raw(ping, pong, int(n), bool(float(spin)))
        return 0
    n_pairs = 20_000 if args.quick else 400_000
    n_trips = 2_000 if args.quick else 40_000
    header()
    print(f"pid {os.getpid()}; uncontended pairs: {n_pairs:,}; round trips: {n_trips:,}")
    if "uncontended" in work:
        step("uncontended lock acquire + release")
        print_table(
            "uncontended lock acquire + release (one process)",
            uncontended(n_pairs),
            baseline="multiprocessing.Lock",
        )
    if "pingpong" in work:
        step("two-process semaphore ping-pong")
        print_table(
            "two-process semaphore ping-pong (round trip)",
            ping_pong(n_trips),
            baseline="multiprocessing.Semaphore (spawned)",
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
