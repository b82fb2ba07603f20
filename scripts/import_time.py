"""Start-up cost of ``import shmkit`` beside ``import posix_ipc, mmap``, side by side.

Each sample is a fresh interpreter (``python -c ...``) timed from spawn to
exit, alternating the two so a busy machine hurts both alike; the script
prints the median of each and their ratio. The target (issue #10, item 11):
``import shmkit`` within 2x of ``import posix_ipc, mmap``.

    python scripts/import_time.py            # 41 samples each
    python scripts/import_time.py -n 101 --also "import shmkit; shmkit.Queue"
    python scripts/import_time.py --tree /work/main   # also another checkout's import shmkit
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

BASELINE = "import posix_ipc, mmap"
SUBJECT = "import shmkit"


def sample(code: str, tree: str | None = None) -> float:
    """Seconds for a fresh interpreter to run ``code`` (shmkit from ``tree``/src if given)."""
    env = None
    if tree is not None:
        env = dict(os.environ, PYTHONPATH=os.path.join(tree, "src"))
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, env=env)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=41, help="fresh interpreters per statement")
    parser.add_argument(
        "--also", action="append", default=[], help="another statement to time (repeatable)"
    )
    parser.add_argument("--tree", help="also time `import shmkit` from TREE/src (e.g. main)")
    args = parser.parse_args(argv)
    runs = [(code, None) for code in (BASELINE, SUBJECT, *args.also)]
    if args.tree:
        runs.append((SUBJECT, args.tree))
    for code, tree in runs:  # warm the page cache and .pyc files
        sample(code, tree)
    times: dict[tuple[str, str | None], list[float]] = {run: [] for run in runs}
    for _ in range(args.n):
        for code, tree in runs:
            times[code, tree].append(sample(code, tree))
    base = statistics.median(times[BASELINE, None])
    print(f"python {sys.version.split()[0]}, {args.n} fresh interpreters each, medians:")
    for code, tree in runs:
        med = statistics.median(times[code, tree])
        label = code if tree is None else f"{code}  [{tree}]"
        print(f"  {label:<44} {med * 1e3:7.1f} ms  {med / base:5.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
