"""``shmkit bench frames``: Broadcast against what a Python user would otherwise pick.

One invocation, every peer measured in the same run, separate spawned
processes for the writer and each reader:

- 6 MiB frames (1920x1080x3 uint8), 1 writer -> 1 reader and 1 writer -> 3
  readers: frames/s and GB/s delivered per reader, the reader's per-frame
  interval (median, p99) and the writer's time per frame;
- 64-byte messages one way: streaming throughput, and the one-way latency of
  paced messages (2 kHz) to a blocked reader;
- lossless frames (issue 8): 1 MiB and 6 MiB, 1 writer -> 1 reader, the
  producer cycling through 8 source frames (so no copy reads a source still
  hot in the cache); shmkit loans a slot of a back-pressured ring and copies
  the frame in, against the one-slot posix_ipc tutorial and iceoryx2 (loan,
  copy, send), each row run ``repeat`` times interleaved, median frames/s;
- the Latest set/get rates (``shmkit._bench.latest``) when it is importable;
- memcpy of one frame in the same run, twice: into the same (cache-hot)
  buffer, and round a ring of frame-sized slots like a broadcast ring (the
  DRAM-bound physics a ring larger than the caches faces).

shmkit rows use back-pressure (lossless, like every peer here) unless they
say "lossy"; the "lossy" rows show the writer never waiting (its time per
frame is the cost of publishing) and count what readers missed. Readers of
zero-copy rows touch the frame header only; copying rows copy the frame out.
The default rows use a 4-slot ring (24 MiB: larger than this class of
machine's caches, so every copy goes to DRAM); the "1-slot hand-off" row keeps
the one slot cache-resident, and the "NT-store" row runs the writer with
glibc's non-temporal memcpy (``GLIBC_TUNABLES``), which skips reading each
destination line before writing it.

Peers: multiprocessing.Queue (pickled arrays, one queue per reader),
multiprocessing.shared_memory + multiprocessing semaphores (hand-rolled ring),
pyzmq PUSH/PULL zero-copy sends over ipc://, iceoryx2 publish-subscribe
(loaned slices, busy-polling subscribers) and the posix_ipc tutorial pattern
(one slot, two semaphores per reader, 50 µs spin). Missing packages skip
their rows with a note.

Everything created (segments, semaphores, sockets, iceoryx2 files) is removed
at the end, also after an error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import multiprocessing as mp
import os
import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import numpy as np
from rich.console import Console

from .common import (
    Result,
    header,
    iox2_files,
    memcpy_bandwidth,
    percentile,
    print_table,
    remove_paths,
    step,
    versus_rate,
    workloads,
)
from .frame_peers import (
    BASELINE,
    FRAME,
    HANDOFF,
    LOSSLESS,
    NT_TUNABLE,
    SMALL,
    Peer,
    Reader,
    Writer,
    frame_peers,
    lossless_peers,
    small_peers,
)

__all__ = ["main"]

#: What ``--only`` accepts, with what each workload measures.
WORKLOADS = {
    "frames": "6 MiB frames 1->1",
    "fanout": "6 MiB frames 1->3",
    "lossless": "1 and 6 MiB lossless frames vs the tutorial and iceoryx2",
    "small": "64-byte messages",
    "latest": "Latest set/get",
}
LATENCY_PACE = 0.0005  # seconds between paced 64-byte messages (2 kHz)


@dataclass(frozen=True)
class Plan:
    frames: int  # frames per 1 -> 1 row (scaled per peer)
    frames3: int  # frames per 1 -> 3 row
    small: int  # 64-byte messages streamed per row
    latency: int  # paced 64-byte messages per row
    memcpy: int  # memcpy repetitions
    lossless: int  # frames per lossless row at 1 MiB (divided by the size in MiB)
    repeat: int  # runs of each lossless row (the table shows their median)


FULL = Plan(
    frames=400, frames3=200, small=40_000, latency=1000, memcpy=200, lossless=3000, repeat=3
)
QUICK = Plan(frames=12, frames3=8, small=400, latency=40, memcpy=10, lossless=24, repeat=1)
#: The lossless workload's frame sizes and the source frames the producer cycles through.
LOSSLESS_SIZES = (1 << 20, 6 << 20)
LOSSLESS_SOURCES = 8

# ----------------------------------------------------------------------------- children


def _child(  # noqa: PLR0917 - the spawn target takes positional args
    role: str,
    peer: Peer,
    args: dict[str, Any],
    index: int,
    work: dict[str, Any],
    conn: Connection,
    go: Any,
) -> None:
    """A writer or reader process: report ready, run, send the measurements back."""
    try:
        if role == "writer":
            out = _write(peer.writer(args), work, conn, go)
        else:
            out = _read(peer.reader(args, index), work, conn, go)
        conn.send(("done", out))
    except BaseException as exc:
        conn.send(("error", repr(exc)))
        raise
    finally:
        conn.close()


def _write(w: Writer, work: dict[str, Any], conn: Connection, go: Any) -> dict[str, Any]:
    size, n, paced, warm = work["size"], work["n"], work["paced"], work["warm"]
    # The lossless workload cycles through several source frames (a camera's
    # buffers), so no copy reads a source still hot from the previous one.
    sources = [np.full(size, k, np.uint8) for k in range(work.get("sources", 1))]
    conn.send(("ready", None))
    go.wait(60)
    times = []
    clock = time.perf_counter
    frame = sources[0]
    try:
        cpu = 0.0
        for i in range(warm + n):
            frame = sources[i % len(sources)]
            frame[:8] = np.frombuffer(i.to_bytes(8, "little"), np.uint8)
            if i == warm:
                cpu = time.thread_time()
            t0 = clock()
            w.send(frame, i)
            times.append(clock() - t0)
        cpu = (time.thread_time() - cpu) / max(1, n)  # CPU the writer spent per frame
        del times[:warm]  # first laps fault pages in and fill caches
        for i in range(warm + n, warm + n + paced):
            time.sleep(LATENCY_PACE)
            frame[:8] = np.frombuffer(time.perf_counter_ns().to_bytes(8, "little"), np.uint8)
            w.send(frame, i)
    finally:
        w.close()
    return {"times": times, "cpu": cpu}


def _read(r: Reader, work: dict[str, Any], conn: Connection, go: Any) -> dict[str, Any]:
    n, paced, lossy = work["n"] + work["warm"], work["paced"], work["lossy"]
    conn.send(("ready", None))
    go.wait(60)  # the writer is attached by now (it said ready first)
    clock = time.perf_counter
    arrivals: list[float] = []
    latencies: list[float] = []
    try:
        while lossy or len(arrivals) < n:
            if r.recv() is None:
                break
            arrivals.append(clock())
        for _ in range(paced):
            sent = r.recv()
            if sent is None:
                break
            latencies.append((time.perf_counter_ns() - sent) / 1e9)
    finally:
        r.close()
    return {"arrivals": arrivals[work["warm"] :], "latencies": latencies, "missed": r.missed}


# ----------------------------------------------------------------------------- running


@dataclass
class Run:
    """What one peer row measured."""

    writer_times: list[float]
    writer_cpu: float
    readers: list[dict[str, Any]]


def _run(
    peer: Peer, tag: str, *, size: int, readers: int, n: int, paced: int, sources: int = 1
) -> Run:
    step(
        f"{peer.name} ({size / 2**20:.1f} MiB, {readers} reader(s))" if size > SMALL else peer.name
    )
    ctx = mp.get_context("spawn")
    args = peer.setup(tag, size, readers)
    procs: list[Any] = []
    conns: list[Connection] = []
    try:
        go = ctx.Event()
        warm = min(16, max(2, n // 4))
        work = {
            "size": size,
            "n": n,
            "paced": paced,
            "lossy": peer.lossy,
            "warm": warm,
            "sources": sources,
        }
        for index in range(readers):
            mine, theirs = ctx.Pipe()
            p = ctx.Process(
                target=_child, args=("reader", peer, args, index, work, theirs, go), daemon=True
            )
            p.start()
            theirs.close()
            procs.append(p)
            conns.append(mine)
        mine, theirs = ctx.Pipe()
        with _environ(peer.writer_env):
            w = ctx.Process(
                target=_child, args=("writer", peer, args, 0, work, theirs, go), daemon=True
            )
            w.start()
        theirs.close()
        procs.append(w)
        conns.append(mine)
        for c in conns:
            _expect(c, "ready", 60)
        go.set()
        outs = [_expect(c, "done", 120) for c in conns]
        return Run(outs[-1]["times"], outs[-1]["cpu"], outs[:-1])
    finally:
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.kill()
                p.join(5)
        for c in conns:
            c.close()
        peer.teardown(args)


@contextlib.contextmanager
def _environ(extra: dict[str, str]) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in extra}
    os.environ.update(extra)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _expect(conn: Connection, what: str, timeout: float) -> Any:
    if not conn.poll(timeout):
        raise TimeoutError(f"a benchmark child sent no {what!r} in {timeout} s")
    kind, payload = conn.recv()
    if kind == "error":
        raise RuntimeError(f"benchmark child failed: {payload}")
    if kind != what:
        raise RuntimeError(f"benchmark child said {kind!r}, expected {what!r}")
    return payload


def _frame_row(peer: Peer, run: Run, size: int) -> Result:
    """Per-reader delivery: interval median/p99 (all readers pooled), rate of the slowest."""
    intervals: list[float] = []
    rates = []
    missed = 0
    for r in run.readers:
        a = r["arrivals"]
        missed += r["missed"]
        intervals += [b - x for x, b in itertools.pairwise(a)]
        if len(a) > 1:
            rates.append((len(a) - 1) / (a[-1] - a[0]))
    if not intervals:
        intervals = [float("nan")]
    rate = min(rates) if rates else 0.0
    w = statistics.median(run.writer_times) * 1e6 if run.writer_times else float("nan")
    note = f"writer {w:,.0f} µs/frame, {run.writer_cpu * 1e6:,.0f} µs CPU"
    if peer.lossy:
        got = sum(len(r["arrivals"]) for r in run.readers)
        note += f", delivered {got}, missed {missed}"
    return Result(
        peer.name,
        statistics.median(intervals) * 1e6,
        percentile(intervals, 99) * 1e6,
        rate,
        rate * size / 1e9,
        note,
    )


def _small_row(peer: Peer, run: Run) -> Result:
    (r,) = run.readers
    a, lat = r["arrivals"], r["latencies"]
    rate = (len(a) - 1) / (a[-1] - a[0]) if len(a) > 1 else 0.0
    if not lat:
        lat = [float("nan")]
    return Result(
        peer.name,
        statistics.median(lat) * 1e6,
        percentile(lat, 99) * 1e6,
        rate,
        note=f"stream {1e6 / rate:.2f} µs/msg" if rate else "",
    )


def ring_memcpy(nbytes: int, slots: int, repeat: int) -> float:
    """memcpy bandwidth (GB/s) copying a frame round a ring of ``slots`` frame-sized slots."""
    src = np.full(nbytes, 7, np.uint8)
    ring = np.zeros(nbytes * slots, np.uint8)
    views = [ring[i * nbytes : (i + 1) * nbytes] for i in range(slots)]
    for v in views:
        np.copyto(v, src)
    times = []
    for i in range(repeat):
        t0 = time.perf_counter()
        np.copyto(views[i % slots], src)
        times.append(time.perf_counter() - t0)
    return nbytes / statistics.median(times) / 1e9


def main(argv: list[str]) -> int:
    """Run the frames benchmark; ``argv`` excludes the program name. Returns an exit code."""
    parser = argparse.ArgumentParser(prog="shmkit bench frames", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short run (for smoke tests)")
    parser.add_argument(
        "--peers", default="", help="comma-separated substrings of peer names (shmkit always runs)"
    )
    parser.add_argument(
        "--only",
        default=",".join(WORKLOADS),
        help="comma-separated workloads: " + ", ".join(f"{k} ({v})" for k, v in WORKLOADS.items()),
    )
    parser.add_argument(
        "--no-nt", action="store_true", help="skip the non-temporal-store memcpy row"
    )
    opts = parser.parse_args(argv)
    plan = QUICK if opts.quick else FULL
    work = set(workloads(parser, opts.only, WORKLOADS))
    wanted = [p.strip().lower() for p in opts.peers.split(",") if p.strip()]
    console = Console(width=None if sys.stdout.isatty() else 160)
    header(console)
    # glibc switches a large memcpy to non-temporal stores via this tunable
    # (x86 glibc only); a ring bigger than the caches then skips the
    # read-for-ownership of every destination line.
    nt = not opts.no_nt and sys.platform.startswith("linux") and _glibc_x86()
    iox_before = iox2_files()
    started = time.monotonic()
    interrupted = False
    try:
        hot = memcpy_bandwidth(FRAME, plan.memcpy)
        ring = ring_memcpy(FRAME, 4, plan.memcpy)
        console.print(
            f"memcpy of one {FRAME / 2**20:.2f} MiB frame: {hot:.1f} GB/s into the same buffer "
            f"(cache-hot, {hot * 1e9 / FRAME:,.0f} frames/s); {ring:.1f} GB/s round a 4-slot "
            f"ring like a broadcast's ({ring * 1e9 / FRAME:,.0f} frames/s)",
            highlight=False,
        )
        refs = [
            Result("memcpy, same buffer (cache-hot)", FRAME / hot / 1e3, 0, hot * 1e9 / FRAME, hot),
            Result("memcpy round a 4-slot ring", FRAME / ring / 1e3, 0, ring * 1e9 / FRAME, ring),
        ]
        tables: dict[str, list[Result]] = {}
        writer_cost: dict[str, float] = {}
        for table, readers in (("frames", 1), ("fanout", 3)):
            if table not in work:
                continue
            rows = tables.setdefault(table, [])
            for i, peer in enumerate(frame_peers(nt)):
                if not _selected(peer, wanted, console):
                    continue
                n = max(4, int((plan.frames if readers == 1 else plan.frames3) * peer.scale))
                try:
                    run = _run(
                        peer,
                        f"{os.getpid()}{table[0]}{i}",
                        size=FRAME,
                        readers=readers,
                        n=n,
                        paced=0,
                    )
                except Exception as exc:  # one broken peer must not end the run
                    console.print(f"{peer.name}: failed: {exc!r}", highlight=False)
                    continue
                rows.append(_frame_row(peer, run, FRAME))
                if peer.lossy and run.writer_times:
                    writer_cost[table] = run.writer_cpu
                    writer_cost[table + " wall"] = statistics.median(run.writer_times)
            title = (
                f"{FRAME / 2**20:.2f} MiB frames, 1 writer -> {readers} reader(s): per-reader "
                f"frame interval, frames/s of the slowest reader; ratio = this / {BASELINE}"
            )
            print_table(title, [*rows, *refs], baseline=BASELINE, console=console)
        if "small" in work:
            rows = []
            for i, peer in enumerate(small_peers()):
                if not _selected(peer, wanted, console):
                    continue
                n = max(50, int(plan.small * peer.scale))
                try:
                    run = _run(
                        peer, f"{os.getpid()}s{i}", size=SMALL, readers=1, n=n, paced=plan.latency
                    )
                except Exception as exc:
                    console.print(f"{peer.name}: failed: {exc!r}", highlight=False)
                    continue
                rows.append(_small_row(peer, run))
            tables["small"] = rows
            print_table(
                f"64-byte messages one way: latency of paced messages ({1 / LATENCY_PACE:,.0f}/s)"
                " to a waiting reader (median, p99); rate = streaming throughput",
                rows,
                baseline=rows[0].name if rows else "",
                console=console,
            )
        if "lossless" in work:
            for size in LOSSLESS_SIZES:
                tables[f"lossless {size >> 20} MiB"] = _lossless(console, plan, size, wanted)
        if "latest" in work:
            _latest(console, plan)
        _verdicts(console, tables, refs, writer_cost)
    except KeyboardInterrupt:
        interrupted = True
        console.print("interrupted; cleaning up", highlight=False)
    finally:
        remove_paths(iox2_files() - iox_before)
    console.print(f"total {time.monotonic() - started:.0f} s", highlight=False)
    return 130 if interrupted else 0


def _lossless(console: Console, plan: Plan, size: int, wanted: list[str]) -> list[Result]:
    """Issue 8's lossless frames: every row ``plan.repeat`` times, interleaved; medians."""
    peers = [p for p in lossless_peers() if _selected(p, wanted, console)]
    n = max(8, plan.lossless * (1 << 20) // size)
    runs: dict[str, list[Result]] = {p.name: [] for p in peers}
    for rep in range(plan.repeat):
        for i, peer in enumerate(peers):
            try:
                run = _run(
                    peer,
                    f"{os.getpid()}l{size >> 20}{i}{rep}",
                    size=size,
                    readers=1,
                    n=n,
                    paced=0,
                    sources=LOSSLESS_SOURCES,
                )
            except Exception as exc:  # one broken peer must not end the run
                console.print(f"{peer.name}: failed: {exc!r}", highlight=False)
                continue
            runs[peer.name].append(_frame_row(peer, run, size))
    rows = [_median_row(name, got) for name, got in runs.items() if got]
    print_table(
        f"lossless {size >> 20} MiB frames, 1 writer -> 1 reader, producer cycling through "
        f"{LOSSLESS_SOURCES} source frames: median of {plan.repeat} run(s) of {n} frames",
        rows,
        baseline=LOSSLESS,
        console=console,
        by_rate=True,
    )
    return rows


def _median_row(name: str, got: list[Result]) -> Result:
    """The run with the median rate (its own interval figures and note)."""
    ordered = sorted(got, key=lambda r: r.rate)
    mid = ordered[len(ordered) // 2]
    spread = f"runs {', '.join(f'{r.rate:,.0f}' for r in got)}/s; " if len(got) > 1 else ""
    return Result(name, mid.median_us, mid.p99_us, mid.rate, mid.gbps, spread + mid.note)


def _selected(peer: Peer, wanted: list[str], console: Console) -> bool:
    if (
        wanted
        and not peer.name.startswith("shmkit")
        and not any(w in peer.name.lower() for w in wanted)
    ):
        return False
    why = peer.available()
    if why:
        console.print(f"skipping {peer.name}: {why}", highlight=False)
        return False
    return True


def _glibc_x86() -> bool:
    import platform  # noqa: PLC0415

    libc, _ = platform.libc_ver()
    return libc == "glibc" and platform.machine().lower() in ("x86_64", "amd64")


def _latest(console: Console, plan: Plan) -> None:
    try:
        from .latest import BASELINE as LATEST_BASE  # noqa: PLC0415 - built in parallel
        from .latest import latest_rates  # noqa: PLC0415
    except ImportError as exc:
        console.print(f"skipping Latest rates: {exc}", highlight=False)
        return
    quick = plan is QUICK
    rows = latest_rates(20_000, 0.3, 200) if quick else latest_rates()
    print_table("Latest: 64-byte values", rows, baseline=LATEST_BASE, console=console)


def _verdicts(
    console: Console, tables: dict[str, list[Result]], refs: list[Result], cost: dict[str, float]
) -> None:
    """The issue's targets, measured (never asserted)."""
    hot, ring = refs[0].gbps, refs[1].gbps
    rows = {r.name: r for r in tables.get("frames", [])}
    lines = []
    base = rows.get(BASELINE)
    if base is not None:
        lines.append(
            f"copy-in publish delivers {base.gbps:.1f} GB/s = {base.gbps / hot:.0%} of the "
            f"cache-hot memcpy and {base.gbps / ring:.0%} of the ring memcpy measured now "
            "(target >= 80%)"
        )
    handoff = rows.get(HANDOFF)
    if handoff is not None:
        lines.append(
            f"with a 1-slot hand-off ring it delivers {handoff.gbps:.1f} GB/s = "
            f"{handoff.gbps / hot:.0%} / {handoff.gbps / ring:.0%}"
        )
    nt = next((r for n, r in rows.items() if "NT-store" in n), None)
    if nt is not None:
        lines.append(
            f"with NT-store memcpy (GLIBC_TUNABLES={NT_TUNABLE}) it delivers "
            f"{nt.gbps:.1f} GB/s = {nt.gbps / hot:.0%} / {nt.gbps / ring:.0%}"
        )
    loan = next((r for n, r in rows.items() if n.startswith("shmkit loan")), None)
    if loan is not None:
        copy_us = FRAME / hot / 1e3
        lines.append(
            f"loan + zero-copy read: {loan.median_us:.0f} µs per frame vs {copy_us:.0f} µs for "
            f"one memcpy of the frame (target: below one memcpy)"
        )
    if "frames" in cost and "fanout" in cost:
        lines.append(
            f"writer cost per frame (lossy publish, CPU time): 1 -> 1 {cost['frames'] * 1e6:.0f}"
            f" µs, 1 -> 3 {cost['fanout'] * 1e6:.0f} µs (target: 1 -> 3 no more than 1 -> 1); "
            f"wall time {cost['frames wall'] * 1e6:.0f} / {cost['fanout wall'] * 1e6:.0f} µs "
            f"({os.cpu_count()} CPUs for 2 and 4 processes)"
        )
    for name, table in tables.items():
        if not name.startswith("lossless"):
            continue
        # Each ring size is a setting a user chooses (docs/objects-broadcast.md says
        # which to pick): the summary names the fastest one and says so.
        ours = max(
            (r for r in table if r.name.startswith("shmkit")), key=lambda r: r.rate, default=None
        )
        peers = [r for r in table if not r.name.startswith("shmkit")]
        if ours is not None and peers:
            lines.append(
                f"{name} frames, fastest shmkit row ({ours.name.split(', ', 1)[-1]}) "
                f"{ours.rate:,.0f}/s: "
                + "; ".join(versus_rate(ours, r) for r in peers)
                + " (target: at least as many frames/s as both)"
            )
    for text in lines:
        console.print(text, highlight=False)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
