"""How long a SharedDict's growth pauses writers, and a batched update().

    python benchmarks/bench_dict_growth.py [--entries 500000]

Fills a dict created at exactly ``--entries`` capacity, then times the one
write that finds it full (it builds, fills and publishes the next
generation, twice the size, segment creation included), and an
``update()`` of as many new pairs in one batch.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from shmkit._bench.common import _console, header
from shmkit.mapping import SharedDict


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=500_000)
    n = parser.parse_args(argv).entries
    header(_console())
    value = b"v" * 64
    d = SharedDict.create(f"bench-grow-{os.getpid()}", capacity=n, size=n * 160)
    try:
        d.update((f"key:{i:08d}", value) for i in range(n))
        t0 = time.perf_counter()
        d["one more"] = value
        grow = time.perf_counter() - t0
        s = d.statistics()
        print(
            f"growth of {n:,} entries into generation {s.generation} ({s.capacity:,}): "
            f"{grow * 1e3:.0f} ms"
        )
        t0 = time.perf_counter()
        d.update((f"new:{i:08d}", value) for i in range(n))
        batch = time.perf_counter() - t0
        print(
            f"update() of {n:,} new pairs in one batch: {batch * 1e3:.0f} ms "
            f"({n / batch:,.0f} pairs/s)"
        )
    finally:
        d.unlink()
        d.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
