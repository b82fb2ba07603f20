"""Start-up cost of ``import shmkit`` beside ``import posix_ipc, mmap``, side by side.

Each sample is a fresh interpreter (``python -c ...``) timed from spawn to
exit, alternating the two so a busy machine hurts both alike; the script
prints the median of each and their ratio. Bytecode is cached as in an
installed package, in a scratch ``PYTHONPYCACHEPREFIX`` (never in the trees),
even where the environment sets ``PYTHONDONTWRITEBYTECODE``. The target (issue #10, item 11):
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
import tempfile
import time

BASELINE = "import posix_ipc, mmap"
SUBJECT = "import shmkit"


def sample(code: str, cache: str, tree: str | None = None) -> float:
    """Seconds for a fresh interpreter to run ``code`` (shmkit from ``tree``/src if given)."""
    # As installed: bytecode cached (the warm-up run writes it under ``cache``);
    # with PYTHONDONTWRITEBYTECODE every run would compile every module.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = cache
    if tree is not None:
        env["PYTHONPATH"] = os.path.join(tree, "src")
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
    times: dict[tuple[str, str | None], list[float]] = {run: [] for run in runs}
    with tempfile.TemporaryDirectory() as cache:
        for code, tree in runs:  # warm the page cache and write the .pyc files
            sample(code, cache, tree)
        for _ in range(args.n):
            for code, tree in runs:
                times[code, tree].append(sample(code, cache, tree))
    base = statistics.median(times[BASELINE, None])
    print(f"python {sys.version.split()[0]}, {args.n} fresh interpreters each, medians:")
    for code, tree in runs:
        med = statistics.median(times[code, tree])
        label = code if tree is None else f"{code}  [{tree}]"
        print(f"  {label:<44} {med * 1e3:7.1f} ms  {med / base:5.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
