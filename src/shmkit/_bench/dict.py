"""SharedDict against the maps a user would otherwise pick, in one run.

Peers: ``multiprocessing.Manager().dict()`` (a server process, a socket round
trip per access), UltraDict (a local copy per process, replayed from a shared
stream), ``shared-memory-dict`` (the whole dict pickled in shared memory) and
Redis over a unix socket (started here from the distribution's
``redis-server``). A peer that is not installed, or that cannot hold a size
in reasonable time, gets a skip line instead of a row.

Rows, for 1,000 / 100,000 / 1,000,000 keys of 64-byte values (str keys in
random order, the key objects made in that order so the loop reads them
sequentially at every size): ``get`` and ``set`` in one process; ``get`` while a writer in
another process sets as fast as it can; and a mixed 90% get / 10% set loop
running in two processes at once. Each rate is the median over batches of
operations (p99 across batches beside it)::

    shmkit bench dict                 # full run (several minutes here)
    shmkit bench dict --quick         # 1,000 and 10,000 keys, short rows
    python -m pip install UltraDict shared-memory-dict redis   # the peers
    apt-get install -y redis-server                             # Redis itself
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import multiprocessing as mp
import os
import random
import secrets
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from typing import Any

from rich.table import Table

from ..mapping import SharedDict
from .common import RECORDED, Result, _console, header, percentile, step

VALUE = b"v" * 64


# ------------------------------------------------------------ the maps, one adapter each


def _tag() -> str:
    # pid plus randomness: benchmarks in other PID namespaces share /dev/shm.
    return f"{os.getpid()}-{secrets.token_hex(4)}"


class Peer:
    """A map under test: ``open()`` in any process, then ``get``/``set``."""

    label = ""
    batch = 1000  # operations per timed batch

    def create(self, n: int) -> None:
        raise NotImplementedError

    def open(self) -> Any:
        """A handle in this process (the writer child calls it after unpickling)."""
        raise NotImplementedError

    def populate(self, handle: Any, keys: list[str]) -> None:
        for k in keys:
            handle[k] = VALUE

    def destroy(self) -> None:
        pass


class ShmkitPeer(Peer):
    label = "shmkit SharedDict"

    def create(self, n: int) -> None:
        self.name = f"bench-dict-{_tag()}"
        self.d = SharedDict.create(self.name, capacity=n, size=n * 160 + (1 << 16))

    def open(self) -> Any:
        return SharedDict.open(self.name)

    def destroy(self) -> None:
        self.d.unlink()
        self.d.close()

    def __getstate__(self) -> dict[str, Any]:
        return {"name": self.name}


class ManagerPeer(Peer):
    label = "multiprocessing Manager().dict()"
    batch = 100

    def create(self, n: int) -> None:
        self.manager = mp.get_context("spawn").Manager()
        self.proxy = self.manager.dict()

    def open(self) -> Any:
        return self.proxy

    def populate(self, handle: Any, keys: list[str]) -> None:
        for i in range(0, len(keys), 50_000):
            handle.update(dict.fromkeys(keys[i : i + 50_000], VALUE))

    def destroy(self) -> None:
        self.manager.shutdown()

    def __getstate__(self) -> dict[str, Any]:
        return {"proxy": self.proxy}


class UltraDictPeer(Peer):
    label = "UltraDict"
    batch = 200

    def create(self, n: int) -> None:
        UltraDict = importlib.import_module("UltraDict").UltraDict
        self.name = f"bud{_tag()}"
        self.d = UltraDict(name=self.name, create=True, buffer_size=1 << 22, shared_lock=True)

    def open(self) -> Any:
        UltraDict = importlib.import_module("UltraDict").UltraDict
        return UltraDict(name=self.name, create=False, shared_lock=True)

    def populate(self, handle: Any, keys: list[str]) -> None:
        handle.update(dict.fromkeys(keys, VALUE))

    def destroy(self) -> None:
        with contextlib.suppress(Exception):
            self.d.unlink()

    def __getstate__(self) -> dict[str, Any]:
        return {"name": self.name}


class SmdPeer(Peer):
    label = "shared-memory-dict"
    batch = 20

    def create(self, n: int) -> None:
        SharedMemoryDict = importlib.import_module("shared_memory_dict").SharedMemoryDict
        self.name = f"bsmd{_tag()}"
        self.size = n * 120 + (1 << 16)
        self.d = SharedMemoryDict(name=self.name, size=self.size)

    def open(self) -> Any:
        SharedMemoryDict = importlib.import_module("shared_memory_dict").SharedMemoryDict
        return SharedMemoryDict(name=self.name, size=self.size)

    def populate(self, handle: Any, keys: list[str]) -> None:
        handle.update(dict.fromkeys(keys, VALUE))

    def destroy(self) -> None:
        with contextlib.suppress(Exception):
            self.d.shm.close()
            self.d.shm.unlink()

    def __getstate__(self) -> dict[str, Any]:
        return {"name": self.name, "size": self.size}


class RedisPeer(Peer):
    label = "Redis (unix socket)"
    batch = 200

    def create(self, n: int) -> None:
        self.dir = tempfile.mkdtemp(prefix="shmkit-redis-")
        self.sock = os.path.join(self.dir, "redis.sock")
        self.proc = subprocess.Popen(
            [
                shutil.which("redis-server") or "redis-server",
                "--port",
                "0",
                "--unixsocket",
                self.sock,
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self.dir,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        end = time.monotonic() + 10
        while not os.path.exists(self.sock):
            if time.monotonic() > end or self.proc.poll() is not None:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.02)

    def open(self) -> Any:
        redis = importlib.import_module("redis")
        return _RedisMap(redis.Redis(unix_socket_path=self.sock))

    def populate(self, handle: Any, keys: list[str]) -> None:
        pipe = handle.r.pipeline(transaction=False)
        for i in range(0, len(keys), 10_000):
            pipe.mset(dict.fromkeys(keys[i : i + 10_000], VALUE))
        pipe.execute()

    def destroy(self) -> None:
        self.proc.kill()
        self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)

    def __getstate__(self) -> dict[str, Any]:
        return {"sock": self.sock}


class _RedisMap:
    def __init__(self, r: Any) -> None:
        self.r = r

    def __getitem__(self, k: str) -> Any:
        return self.r.get(k)

    def __setitem__(self, k: str, v: bytes) -> None:
        self.r.set(k, v)


def _available() -> list[tuple[type[Peer], str]]:
    """(peer, why it is skipped or '')."""
    out: list[tuple[type[Peer], str]] = [(ShmkitPeer, ""), (ManagerPeer, "")]
    for peer, module, hint in (
        (UltraDictPeer, "UltraDict", "pip install UltraDict"),
        (SmdPeer, "shared_memory_dict", "pip install shared-memory-dict"),
        (RedisPeer, "redis", "pip install redis"),
    ):
        try:
            importlib.import_module(module)
            why = ""
        except ImportError:
            why = f"not installed ({hint})"
        if peer is RedisPeer and not why and shutil.which("redis-server") is None:
            why = "no redis-server (apt-get install -y redis-server)"
        out.append((peer, why))
    return out


# ------------------------------------------------------------ measuring


def _loop(op: Callable[[str], Any], keys: list[str], batch: int, seconds: float) -> list[float]:
    """Per-operation seconds of each batch, for about ``seconds``."""
    samples: list[float] = []
    n = len(keys)
    i = random.randrange(n)
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(samples) < 3:
        t0 = time.perf_counter()
        for _ in range(batch):
            op(keys[i])
            i = i + 1 if i + 1 < n else 0
        samples.append((time.perf_counter() - t0) / batch)
    return samples


def _mixed(handle: Any, keys: list[str], batch: int, seconds: float) -> list[float]:
    def op(k: str, c: list[int] = [0]) -> None:  # noqa: B006 - a counter on purpose
        c[0] += 1
        if c[0] % 10 == 0:
            handle[k] = VALUE
        else:
            handle[k]

    return _loop(op, keys, batch, seconds)


def _access_order(keys: list[str]) -> list[str]:
    """The keys in random order, as new str objects allocated in that order.

    A shuffled list of the *original* objects would make the benchmark's own
    key objects miss the caches at large sizes (they lie in creation order);
    objects made in access order are read sequentially, so every size pays
    the same for them and the rows measure the map, not the key list.
    """
    order = keys[:]
    random.shuffle(order)
    return [k[:4] + k[4:] for k in order]  # a concatenation is always a new object


def _child(peer: Peer, keys: list[str], mode: str, ready: Any, stop: Any) -> None:
    handle = peer.open()
    shuffled = _access_order(keys)
    ready.set()
    n, i, c = len(shuffled), 0, 0
    # Stopped by an event between batches, never killed: a peer whose lock a
    # killed holder keeps (UltraDict's spin lock) would stall the parent.
    while not stop.is_set():
        for _ in range(peer.batch):
            c += 1
            if mode == "set" or c % 10 == 0:
                handle[shuffled[i]] = VALUE
            else:
                handle[shuffled[i]]
            i = i + 1 if i + 1 < n else 0


@contextlib.contextmanager
def _other_process(peer: Peer, keys: list[str], mode: str) -> Iterator[None]:
    ctx = mp.get_context("spawn")
    ready, stop = ctx.Event(), ctx.Event()
    proc = ctx.Process(target=_child, args=(peer, keys, mode, ready, stop), daemon=True)
    proc.start()
    try:
        if not ready.wait(60):
            raise RuntimeError("benchmark child did not start")
        time.sleep(0.1)
        yield
    finally:
        stop.set()
        proc.join(30)
        if proc.is_alive():
            proc.kill()
            proc.join(10)


Row = tuple[str, float, float]  # what, ops/s (median batch), p99 µs/op


def _rates(samples: list[float]) -> tuple[float, float]:
    med = sorted(samples)[len(samples) // 2]
    return 1.0 / med, percentile(samples, 99) * 1e6


def measure(peer_cls: type[Peer], n: int, seconds: float) -> dict[str, tuple[float, float]]:
    peer = peer_cls()
    peer.create(n)
    try:
        keys = [f"key:{i:08d}" for i in range(n)]
        handle = peer.open()
        peer.populate(handle, keys)
        keys = _access_order(keys)

        def put(k: str) -> None:
            handle[k] = VALUE

        out = {
            "get": _rates(_loop(handle.__getitem__, keys, peer.batch, seconds)),
            "set": _rates(_loop(put, keys, peer.batch, seconds)),
        }
        with _other_process(peer, keys, "set"):
            out["get, writer in another process"] = _rates(
                _loop(handle.__getitem__, keys, peer.batch, seconds)
            )
        with _other_process(peer, keys, "mixed"):
            out["mixed 90/10, 2 processes"] = _rates(_mixed(handle, keys, peer.batch, seconds))
        return out
    finally:
        peer.destroy()


#: Largest size each slow peer is asked to hold (its cost grows with the size).
_LIMITS: dict[type[Peer], int] = {SmdPeer: 100_000, UltraDictPeer: 1_000_000}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="shmkit bench dict", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1,000 and 10,000 keys, short rows")
    parser.add_argument("--sizes", type=int, nargs="+", help="key counts (default 1e3 1e5 1e6)")
    parser.add_argument("--seconds", type=float, default=1.0, help="per row")
    parser.add_argument("--only", nargs="+", help="peer labels to run (substring match)")
    args = parser.parse_args(argv)
    sizes = args.sizes or ([1000, 10_000] if args.quick else [1000, 100_000, 1_000_000])
    seconds = 0.3 if args.quick else args.seconds
    console = _console()
    header(console)
    peers = _available()
    if args.only:
        labels = [p.label for p, _ in peers]
        unknown = [o for o in args.only if not any(o.lower() in x.lower() for x in labels)]
        if unknown:
            parser.error(f"no peer matches --only {', '.join(unknown)}; valid: {', '.join(labels)}")
        peers = [(p, w) for p, w in peers if any(o.lower() in p.label.lower() for o in args.only)]
    for peer, why in peers:
        if why:
            console.print(f"skip {peer.label}: {why}", highlight=False)
    ours: dict[int, dict[str, tuple[float, float]]] = {}
    for n in sizes:
        results: dict[str, dict[str, tuple[float, float]]] = {}
        for peer, why in peers:
            if why:
                continue
            if n > _LIMITS.get(peer, n):
                console.print(
                    f"skip {peer.label} at {n:,} keys: every operation costs O(keys) "
                    f"(run up to {_LIMITS[peer]:,})",
                    highlight=False,
                )
                continue
            step(f"{peer.label}, {n:,} keys")
            try:
                results[peer.label] = measure(peer, n, seconds)
            except Exception as exc:  # a peer failing must not stop the others
                console.print(f"skip {peer.label} at {n:,} keys: {exc!r}", highlight=False)
        ours[n] = results.get(ShmkitPeer.label, {})
        _table(console, n, results)
    _flatness(console, ours)
    return 0


def _table(console: Any, n: int, results: dict[str, dict[str, tuple[float, float]]]) -> None:
    base = results.get(ShmkitPeer.label, {})
    table = Table(title=f"SharedDict: {n:,} keys, 64-byte values", title_justify="left")
    recorded: list[Result] = []
    for col in ("what", "map", "ops/s", "p99 µs/op", "shmkit is"):
        table.add_column(col, justify="left" if col in ("what", "map") else "right")
    for what in ("get", "set", "get, writer in another process", "mixed 90/10, 2 processes"):
        for label, rows in results.items():
            if what not in rows:
                continue
            rate, p99 = rows[what]
            ratio = ""
            if label != ShmkitPeer.label and what in base and rate > 0:
                ratio = f"{base[what][0] / rate:,.1f}x faster"
            table.add_row(what, label, f"{rate:,.0f}", f"{p99:.2f}", ratio)
            recorded.append(Result(f"{what}, {label}", 1e6 / rate if rate else 0.0, p99, rate))
    RECORDED.append(
        {"title": table.title, "baseline": ShmkitPeer.label, "rows": [asdict(r) for r in recorded]}
    )
    console.print(table)


def _flatness(console: Any, ours: dict[int, dict[str, tuple[float, float]]]) -> None:
    sizes = sorted(n for n in ours if ours[n])
    if len(sizes) < 2:
        return
    lo, hi = sizes[0], sizes[-1]
    for what in ("get", "set"):
        if what in ours[lo] and what in ours[hi]:
            growth = ours[lo][what][0] / ours[hi][what][0]
            console.print(
                f"shmkit {what}: cost per operation at {hi:,} keys is {growth:.2f}x that at "
                f"{lo:,} keys",
                highlight=False,
            )
    # What the loop itself costs, and the floor the memory hierarchy sets, in
    # the same loop shape: the same access list calling len() (the loop and
    # touching the key object), a process-local dict, and a bare dependent
    # read of a random slot and the entry it names in a mapping the size of
    # the table, which is the least memory work any lookup can do.
    for label, rate in (
        ("loop overhead, len(key) over the same access list", _loop_rate),
        ("a plain process-local dict, get", _local_get_rate),
        ("a dependent random slot + entry read in a table-sized mapping", _touch_rate),
    ):
        ns = {n: 1e9 / rate(n) for n in (lo, hi)}
        console.print(
            f"reference, {label}: {ns[lo]:.0f} ns at {lo:,} keys, {ns[hi]:.0f} ns at {hi:,} "
            f"({ns[hi] / ns[lo]:.2f}x)",
            highlight=False,
        )


def _keys(n: int) -> list[str]:
    return _access_order([f"key:{i:08d}" for i in range(n)])


def _loop_rate(n: int) -> float:
    return _rates(_loop(len, _keys(n), 1000, 0.5))[0]


def _local_get_rate(n: int) -> float:
    keys = [f"key:{i:08d}" for i in range(n)]
    local = dict.fromkeys(keys, VALUE)
    return _rates(_loop(local.__getitem__, _access_order(keys), 1000, 0.5))[0]


def _touch_rate(n: int) -> float:
    import mmap  # noqa: PLC0415 - only this reference needs it

    # The table's footprint at the benchmark's size: 16 bytes of index and
    # 160 of heap per key, every page touched first (as populate() does).
    # Each operation reads a random 8-byte slot, which holds the offset of a
    # random entry, then one byte of that entry: the dependent pair of cache
    # misses every hash lookup makes, and nothing else.
    index, heap = 16 * n, 160 * n
    mm = mmap.mmap(-1, index + heap)
    rng = random.Random(n)
    slots = index // 8
    table = [index + rng.randrange(heap // 64) * 64 for _ in range(slots)]
    mm[:index] = struct.pack(f"<{slots}Q", *table)
    mm[index:] = b"\1" * heap
    del table
    offsets = [rng.randrange(slots) * 8 for _ in range(n)]  # made in access order
    unpack = struct.Struct("<Q").unpack_from

    def touch(at: int) -> int:
        entry: int = unpack(mm, at)[0]
        return mm[entry]

    try:
        return _rates(_loop(touch, offsets, 1000, 0.5))[0]  # type: ignore[arg-type]
    finally:
        del offsets
        mm.close()


if __name__ == "__main__":
    sys.exit(main())
