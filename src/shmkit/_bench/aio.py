"""``shmkit bench aio``: awaited round trips against blocking ones and zmq.asyncio; idle CPU.

Round trip: this process sends a small message to an echo process and waits
for the answer, blocking (``Queue.get``), awaited (``await aio.Queue.get``
in an asyncio loop) and with ``zmq.asyncio`` REQ against a REP echo over
ipc:// (skipped without pyzmq); then both shmkit rows again with this
side's spinning off, so each answer is a wake-up from the futex (the
blocking call's own wake against the watcher thread's plus the loop's).
Idle: ``--tasks`` tasks await ``get`` on 10 empty queues for ``--idle``
seconds; the process's CPU time (CLOCK_PROCESS_CPUTIME_ID) over that time, as a share of
one core.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence

from .. import Queue, aio
from ..aio import _watch
from ..errors import Closed
from ..testing import unique_name
from .common import Result, header, percentile, print_table, summarize

ECHO = """
import sys
import shmkit
a, b = shmkit.Queue.open(sys.argv[1]), shmkit.Queue.open(sys.argv[2])
print("ready", flush=True)
while True:
    m = a.get(timeout=30)
    if m == b"stop":
        break
    b.put(m)
"""

ZMQ_ECHO = """
import sys, zmq
ctx = zmq.Context()
s = ctx.socket(zmq.REP)
s.bind(sys.argv[1])
print("ready", flush=True)
while True:
    m = s.recv()
    s.send(m)
    if m == b"stop":
        break
"""


def _child(code: str, *args: str) -> subprocess.Popen[str]:
    p = subprocess.Popen(
        [sys.executable, "-c", code, *args], stdout=subprocess.PIPE, text=True, env=os.environ
    )
    assert p.stdout is not None
    if p.stdout.readline().strip() != "ready":
        raise RuntimeError("echo process did not start")
    return p


def _shmkit(n: int, spin: bool = True) -> list[Result]:
    name = unique_name("ba")
    a, b = Queue.create(name + "a", 1 << 16), Queue.create(name + "b", 1 << 16)
    tag = "" if spin else ", no spin: sleeps, woken"
    if not spin:
        b.spin = 0.0
    child = _child(ECHO, name + "a", name + "b")
    msg = b"x" * 64
    rows = []
    try:
        for _ in range(200):
            a.put(msg)
            b.get(timeout=5)
        samples = []
        for _ in range(n):
            t0 = time.perf_counter()
            a.put(msg)
            b.get(timeout=5)
            samples.append(time.perf_counter() - t0)
        rows.append(summarize("shmkit Queue blocking get" + tag, samples))

        async def awaited() -> list[float]:
            qa, qb = aio.Queue(a), aio.Queue(b)
            for _ in range(200):
                await qa.put(msg)
                await qb.get(timeout=5)
            out = []
            for _ in range(n):
                t0 = time.perf_counter()
                await qa.put(msg)
                await qb.get(timeout=5)
                out.append(time.perf_counter() - t0)
            return out

        saved = _watch.SPIN
        if not spin:
            setattr(_watch, "SPIN", 0.0)  # noqa: B010 - the wake path alone (Final for users)
        try:
            got = asyncio.run(awaited())
        finally:
            setattr(_watch, "SPIN", saved)  # noqa: B010
        rows.append(summarize("shmkit.aio Queue awaited get" + tag, got))
        a.put(b"stop")
        child.wait(10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(5)
        for q in (a, b):
            q.unlink()
            q.close()
    return rows


def _zmq(n: int) -> list[Result]:
    try:
        import zmq  # noqa: PLC0415
        import zmq.asyncio  # noqa: PLC0415
    except ImportError:
        return []
    path = os.path.join(tempfile.mkdtemp(), "echo")
    addr = f"ipc://{path}"
    child = _child(ZMQ_ECHO, addr)
    msg = b"x" * 64

    async def run() -> list[float]:
        ctx = zmq.asyncio.Context()
        s = ctx.socket(zmq.REQ)
        s.connect(addr)
        out = []
        try:
            for i in range(n + 200):
                t0 = time.perf_counter()
                await s.send(msg)
                await s.recv()
                if i >= 200:
                    out.append(time.perf_counter() - t0)
            await s.send(b"stop")
            await s.recv()
        finally:
            s.close(0)
            ctx.term()
        return out

    try:
        samples = asyncio.run(run())
        child.wait(10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(5)
        try:
            os.unlink(path)
            os.rmdir(os.path.dirname(path))
        except OSError:
            pass
    return [summarize("zmq.asyncio REQ/REP ipc://", samples)]


PRODUCER = """
import sys, time
import shmkit
q = shmkit.Queue.open(sys.argv[1])
print("ready", flush=True)
for i in range(int(sys.argv[2])):
    q.put(b"%d" % i, timeout=10)
    if i % 20 == 19:
        time.sleep(0.001)
q.shutdown()
"""


def _ticker(n: int, consumers: int = 100) -> tuple[float, float, float]:
    """100 tasks drain ``n`` messages put by another process; a task ticks every 10 ms.

    Returns the ticker's largest and 99th-percentile gap (seconds) and the
    consumers' messages per second. The heap is frozen first (gc.freeze).
    """
    name = unique_name("bt")
    q = aio.Queue.create(name, 1 << 16)
    gaps: list[float] = []
    got = [0]

    async def consume() -> None:
        while True:
            try:
                await q.get(timeout=30)
            except Closed:
                return
            got[0] += 1

    async def tick() -> None:
        last = time.perf_counter()
        while True:
            await asyncio.sleep(0.01)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    async def run() -> float:
        child = _child(PRODUCER, name, str(n))  # blocks until it is ready: before the ticker
        t = asyncio.create_task(tick())
        t0 = time.perf_counter()
        try:
            await asyncio.gather(*(consume() for _ in range(consumers)))
            return got[0] / (time.perf_counter() - t0)
        finally:
            t.cancel()
            child.wait(30)

    gc.collect()
    gc.freeze()
    try:
        rate = asyncio.run(run())
    finally:
        gc.unfreeze()
        q.sync.unlink()
        q.close()
    return max(gaps), percentile(gaps, 99), rate


def _idle(tasks: int, seconds: float, queues: int = 10) -> tuple[float, int]:
    """CPU share of one core used by ``tasks`` tasks awaiting get for ``seconds``; threads."""
    name = unique_name("bi")
    qs = [aio.Queue.create(f"{name}{i}", 4096) for i in range(queues)]
    threads = 0

    async def run() -> float:
        nonlocal threads
        waiters = [asyncio.create_task(qs[i % queues].get()) for i in range(tasks)]
        await asyncio.sleep(0.5)  # let them settle
        # CLOCK_PROCESS_CPUTIME_ID: exact run time of every thread (getrusage
        # is tick-sampled on some kernels and reads 2-3x high at this level).
        c0 = time.process_time()
        t0 = time.monotonic()
        await asyncio.sleep(seconds)
        c1 = time.process_time()
        elapsed = time.monotonic() - t0
        threads = aio.active_watchers()
        for w in waiters:
            w.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)
        return (c1 - c0) / elapsed

    try:
        share = asyncio.run(run())
    finally:
        for q in qs:
            q.sync.unlink()
            q.close()
    return share, threads


def main(argv: Sequence[str] | None = None) -> int:
    """Run the aio benchmark; print the environment line and the tables."""
    p = argparse.ArgumentParser(prog="shmkit bench aio", description=__doc__)
    p.add_argument("-n", type=int, default=5000, help="round trips per row (default 5000)")
    p.add_argument("--tasks", type=int, default=1000, help="idle waiting tasks (default 1000)")
    p.add_argument("--idle", type=float, default=10.0, help="idle seconds measured (default 10)")
    p.add_argument("--quick", action="store_true", help="short smoke run")
    args = p.parse_args(argv)
    n, idle = (500, 1.0) if args.quick else (args.n, args.idle)
    header()
    rows = _shmkit(n) + _zmq(n) + _shmkit(n, spin=False)
    print_table(
        "round trip, 64-byte message to an echo process",
        rows,
        baseline="shmkit Queue blocking get",
    )
    worst, p99, rate = _ticker(2000 if args.quick else 20000)
    print(
        f"ticker (10 ms) beside 100 consumer tasks fed by another process: largest gap "
        f"{worst * 1e3:.1f} ms, p99 {p99 * 1e3:.1f} ms (target <= 20 ms); {rate:,.0f} messages/s"
    )
    share, threads = _idle(args.tasks, idle)
    print(
        f"idle: {args.tasks} tasks awaiting get on 10 queues for {idle:g} s: "
        f"{share * 100:.3f}% of one core (target <= 1%), {threads} watcher threads"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
