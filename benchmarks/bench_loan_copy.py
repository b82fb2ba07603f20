"""What one lossless frame costs the publisher: ``loan`` + copy, by ring size, in one process.

Issue 8's lossless frames are bound by the writer's copy. This measures that
copy alone (no reader: a lossy ring of the same size), the producer cycling
through 8 source frames, rings of 2 and 8 slots interleaved ``--repeat``
times, thread CPU time per frame (so other processes' load counts less)::

    python benchmarks/bench_loan_copy.py            # 1 MiB and 6 MiB
    python benchmarks/bench_loan_copy.py --sizes 6 --slots 1 2 4 8
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np

from shmkit.broadcast import publisher
from shmkit.testing import unique_name


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 6], help="frame MiB")
    parser.add_argument("--slots", type=int, nargs="+", default=[2, 8], help="ring sizes")
    parser.add_argument("--repeat", type=int, default=4, help="interleaved runs per ring")
    parser.add_argument("--frames", type=int, default=600, help="frames per run at 1 MiB")
    opts = parser.parse_args(argv)
    for mib in opts.sizes:
        size = mib << 20
        sources = [np.full(size, k, np.uint8) for k in range(8)]
        n = max(20, opts.frames // mib)
        pubs = {s: publisher(unique_name("lc"), slot_size=size, slots=s) for s in opts.slots}
        cpu: dict[int, list[float]] = {s: [] for s in opts.slots}
        loan_only: list[float] = []
        try:
            for _ in range(opts.repeat):
                for slots, pub in pubs.items():
                    for i in range(16):  # fault in and warm up
                        with pub.loan(size) as buf:
                            buf[:] = sources[i & 7]
                    t0 = time.thread_time()
                    for i in range(n):
                        with pub.loan(size) as buf:
                            buf[:] = sources[i & 7]
                    cpu[slots].append((time.thread_time() - t0) / n * 1e6)
                pub = pubs[opts.slots[0]]
                t0 = time.thread_time()
                for _ in range(n):
                    with pub.loan(size):
                        pass
                loan_only.append((time.thread_time() - t0) / n * 1e6)
        finally:
            for pub in pubs.values():
                pub.unlink()
                pub.close()
        print(f"{mib} MiB frames, {n} per run, {opts.repeat} runs (CPU µs per frame, median):")
        print(f"  loan alone (no copy): {statistics.median(loan_only):.1f}")
        for slots, values in cpu.items():
            runs = ", ".join(f"{v:.0f}" for v in values)
            print(f"  loan + copy, {slots} slots: {statistics.median(values):.0f}  (runs {runs})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
