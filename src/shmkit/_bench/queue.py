"""``shmkit bench queue``: Queue against the IPC a Python user would otherwise pick.

One invocation, two processes per measurement (the parent and one spawned
child), every peer measured in the same run:

- 64-byte ping-pong round trip (the parent times each round trip);
- 64-byte one-way streaming, child to parent, single put/get and batched;
- 1 MiB messages child to parent, in GB/s, beside the single-core memcpy
  bandwidth measured in the same run (the physical reference).

Peers: multiprocessing.Queue and Pipe, posix_ipc.MessageQueue, faster_fifo,
pyzmq PAIR over ipc://, the classic posix_ipc tutorial pattern (one
shared-memory slot and two semaphores, with and without a brief spin) and,
when importable, iceoryx2 (busy-polling, ping-pong only). Peers that are not
installed are skipped with a note. Waits are what each library does by
default: shmkit spins ``Queue.spin`` (50 µs) and then blocks on a semaphore.

Everything the run creates (segments, semaphores, message queues, socket
files, iceoryx2 files) is removed at the end, also after Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing as mp
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console

from .common import (
    Result,
    cpu_load,
    header,
    iox2_files,
    memcpy_bandwidth,
    print_table,
    remove_paths,
    step,
    summarize,
    versus,
    workloads,
)
from .queue_peers import (
    BASELINE,
    LARGE,
    SMALL,
    Peer,
    ShmkitPeer,
    Stalled,
    Unsupported,
    _watchdog,
    all_peers,
)


@dataclass(frozen=True)
class Plan:
    """How many operations each workload runs."""

    warmup: int
    pingpong: int
    stream: int
    batched: int
    batch: int
    large: int
    chunk: int


FULL = Plan(warmup=2000, pingpong=20_000, stream=200_000, batched=1_000_000, batch=256,
            large=300, chunk=1000)  # fmt: skip
QUICK = Plan(warmup=100, pingpong=500, stream=5_000, batched=20_000, batch=256, large=10,
             chunk=250)  # fmt: skip


# ----------------------------------------------------------------------------- child side


def _child(peer: Peer, args: dict[str, Any], work: str, n: int, size: int, batch: int) -> None:  # noqa: PLR0917
    """The spawned side: echo for ping-pong, produce for the one-way workloads."""
    ep = peer.endpoint(args, "b")
    try:
        msg = bytes(range(256)) * (size // 256) + bytes(size % 256)
        if work == "pingpong":
            send, recv = ep.send, ep.recv
            while True:
                m = recv()
                if m[:4] == b"done":
                    break
                send(m)
            return
        if work == "batched":
            assert ep.send_many is not None
            many = [msg] * batch
            for _ in range(n // batch):
                ep.send_many(many)
        else:
            send = ep.send
            for _ in range(n):
                send(msg)
        ep.recv()  # the parent says it is done, so nothing is torn down under it
    finally:
        ep.close()


@contextlib.contextmanager
def _spawned(  # noqa: PLR0917
    peer: Peer, args: dict[str, Any], work: str, n: int, size: int, batch: int
) -> Iterator[mp.process.BaseProcess]:
    proc = mp.get_context("spawn").Process(
        target=_child, args=(peer, args, work, n, size, batch), daemon=True
    )
    proc.start()
    try:
        yield proc
    finally:
        proc.join(10)
        if proc.is_alive():
            proc.kill()
            proc.join(5)


# ----------------------------------------------------------------------------- workloads


@dataclass
class Tables:
    """Rows per workload, printed at the end (and as they complete)."""

    rows: dict[str, list[Result]] = field(default_factory=dict)

    def add(self, table: str, row: Result) -> None:
        self.rows.setdefault(table, []).append(row)


def _pingpong(peer: Peer, args: dict[str, Any], plan: Plan) -> Result:
    total = plan.warmup + plan.pingpong
    with _spawned(peer, args, "pingpong", total, SMALL, 1):
        ep = peer.endpoint(args, "a")
        try:
            if ep.connect is not None:
                ep.connect()
            msg = b"p" * SMALL
            send, recv, clock = ep.send, ep.recv, time.perf_counter_ns
            samples = []
            for _ in range(total):
                t0 = clock()
                send(msg)
                recv()
                samples.append(clock() - t0)
            ep.send(b"done")
        finally:
            ep.close()
    return summarize(peer.name, [s / 1e9 for s in samples[plan.warmup :]])


def _stream(peer: Peer, args: dict[str, Any], plan: Plan, *, batched: bool, large: bool) -> Result:
    size = LARGE if large else SMALL
    n = plan.large if large else plan.batched if batched else plan.stream
    if batched:
        n -= n % plan.batch  # the producer sends whole batches
    chunk = 1 if large else plan.chunk
    with _spawned(peer, args, "batched" if batched else "stream", n, size, plan.batch):
        ep = peer.endpoint(args, "a")
        try:
            clock = time.perf_counter_ns
            times: list[float] = []
            if batched:
                assert ep.recv_many is not None
                recv_many, batch = ep.recv_many, plan.batch
                got = len(recv_many(batch))
                mark, t0 = got, clock()
                while got < n:
                    got += len(recv_many(batch))
                    if got - mark >= chunk:
                        t1 = clock()
                        times.append((t1 - t0) / (got - mark) / 1e9)
                        mark, t0 = got, t1
            else:
                if large and ep.recv_into is not None and peer.large_into:
                    buf = bytearray(size)
                    recv_into = ep.recv_into

                    def recv() -> object:
                        return recv_into(buf)

                else:
                    recv = ep.recv
                recv()
                got, mark, t0 = 1, 1, clock()
                while got < n:
                    recv()
                    got += 1
                    if got - mark >= chunk:
                        t1 = clock()
                        times.append((t1 - t0) / (got - mark) / 1e9)
                        mark, t0 = got, t1
            ep.send(b"done")
        finally:
            ep.close()
    name = peer.name + (" get_into()" if large and peer.large_into else "")
    if not times:
        times = [float("nan")]
    return summarize(name, times, nbytes=size)


def _run_peer(peer: Peer, tag: str, table: str, plan: Plan, tables: Tables) -> None:
    large = table == "large"
    batched = table == "batched"
    size = LARGE if large else SMALL
    # Room for 3 messages of 1 MiB (2 in flight): enough to overlap the two
    # sides, and small enough to stay in cache, as a user would size it.
    depth = 3 if large else 4096
    step(f"{table}: {peer.name}")
    args = peer.create(tag, size, depth)
    try:
        if table == "pingpong":
            row = _pingpong(peer, args, plan)
        else:
            row = _stream(peer, args, plan, batched=batched, large=large)
        tables.add(table, row)
    finally:
        peer.destroy(args)


TITLES = {
    "pingpong": "64-byte round trip (ping-pong, {n} round trips); time per round trip",
    "stream": "64-byte one-way streaming, single put/get ({n} messages); time per message",
    "batched": "64-byte one-way streaming, batched ({n} messages, batches of {b}); per message",
    "large": "1 MiB messages one way ({n} messages); time per message and GB/s",
}


def main(argv: list[str]) -> int:
    """Run the queue benchmark; ``argv`` excludes the program name. Returns an exit code."""
    parser = argparse.ArgumentParser(prog="shmkit bench queue", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="a short run (seconds; for smoke tests)"
    )
    parser.add_argument(
        "--peers",
        default="",
        help="comma-separated substrings of peer names to run (shmkit always runs)",
    )
    parser.add_argument(
        "--only",
        default="pingpong,stream,batched,large",
        help="workloads: pingpong, stream, batched, large (comma-separated)",
    )
    parser.add_argument(
        "--load",
        type=int,
        nargs="?",
        const=os.cpu_count() or 1,
        default=0,
        metavar="N",
        help="run N CPU-bound processes beside the benchmark (default: one per core)",
    )
    opts = parser.parse_args(argv)
    plan = QUICK if opts.quick else FULL
    work = workloads(parser, opts.only, TITLES)
    wanted = [p.strip().lower() for p in opts.peers.split(",") if p.strip()]
    console = Console()
    header(console)
    if opts.load:
        console.print(f"under load: {opts.load} CPU-bound processes beside the benchmark")
    peers = []
    for peer in all_peers():
        ours = isinstance(peer, ShmkitPeer)
        if wanted and not ours and not any(w in peer.name.lower() for w in wanted):
            continue
        why = peer.available()
        if why:
            console.print(f"skipping {peer.name}: {why}", highlight=False)
            continue
        peers.append(peer)
    tables = Tables()
    iox_before = iox2_files()
    interrupted = False
    load = cpu_load(opts.load) if opts.load else contextlib.nullcontext()
    try:
        with load:
            for table in work:
                for index, peer in enumerate(peers):
                    if table not in peer.tables:
                        continue
                    tag = f"{os.getpid()}-{table[:2]}{index}"
                    try:
                        with _watchdog(30 if opts.quick else 120):
                            _run_peer(peer, tag, table, plan, tables)
                    except Unsupported as exc:
                        console.print(f"{peer.name} / {table}: not run: {exc}", highlight=False)
                    except (Exception, Stalled) as exc:  # one broken peer must not end the run
                        console.print(f"{peer.name} / {table}: failed: {exc!r}", highlight=False)
                _print(table, tables, plan, console)
    except KeyboardInterrupt:
        interrupted = True
        console.print("interrupted; cleaning up", highlight=False)
    finally:
        remove_paths(iox2_files() - iox_before)
    return 130 if interrupted else 0


def _print(table: str, tables: Tables, plan: Plan, console: Console) -> None:
    rows = list(tables.rows.get(table, []))
    if not rows:
        return
    n = {"pingpong": plan.pingpong, "stream": plan.stream, "batched": plan.batched}.get(
        table, plan.large
    )
    title = TITLES[table].format(n=n, b=plan.batch)
    baseline = BASELINE
    if table == "large":
        ref6 = memcpy_bandwidth()
        ref1 = memcpy_bandwidth(LARGE, repeat=500)
        for label, gbps in ((f"memcpy 6 MiB, one core ({ref6:.1f} GB/s)", ref6),
                            (f"memcpy 1 MiB, one core ({ref1:.1f} GB/s)", ref1)):  # fmt: skip
            us = LARGE / (gbps * 1e9) * 1e6
            rows.append(Result(label, us, us, 1e6 / us, gbps, "reference"))
        baseline = BASELINE + " get_into()"
    print_table(title, rows, baseline=baseline, console=console)
    ours = next((r for r in rows if r.name == baseline), None)
    if ours is None:
        return
    others = [r for r in rows if not r.name.startswith("shmkit") and r.note != "reference"]
    if others:
        console.print(
            f"{baseline}: " + "; ".join(versus(ours, r) for r in others) + " (medians)",
            highlight=False,
        )
    if table == "large":
        ref = rows[-2].gbps
        console.print(
            f"{baseline}: {ours.gbps:.2f} GB/s = {ours.gbps / ref:.0%} of one-core memcpy (6 MiB)",
            highlight=False,
        )


if __name__ == "__main__":  # pragma: no cover
    import sys

    raise SystemExit(main(sys.argv[1:]))
