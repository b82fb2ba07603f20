"""Start-up cost of ``import shmkit`` beside ``import posix_ipc, mmap``, side by side.

Each sample is a fresh interpreter (``python -c ...``) timed from spawn to
exit, alternating the two so a busy machine hurts both alike; the script
prints the median of each and their ratio. The target (issue #10, item 11):
``import shmkit`` within 2x of ``import posix_ipc, mmap``.

    python scripts/import_time.py            # 41 samples each
    python scripts/import_time.py -n 101 --also "import shmkit; shmkit.Queue"
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

BASELINE = "import posix_ipc, mmap"
SUBJECT = "import shmkit"


def sample(code: str) -> float:
    """Seconds for a fresh interpreter to run ``code`` and exit."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=41, help="fresh interpreters per statement")
    parser.add_argument(
        "--also", action="append", default=[], help="another statement to time (repeatable)"
    )
    args = parser.parse_args(argv)
    codes = [BASELINE, SUBJECT, *args.also]
    for code in codes:  # warm the page cache and .pyc files
        sample(code)
    times: dict[str, list[float]] = {code: [] for code in codes}
    for _ in range(args.n):
        for code in codes:
            times[code].append(sample(code))
    base = statistics.median(times[BASELINE])
    print(f"python {sys.version.split()[0]}, {args.n} fresh interpreters each, medians:")
    for code in codes:
        med = statistics.median(times[code])
        print(f"  {code:<40} {med * 1e3:7.1f} ms  {med / base:5.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
