"""SharedDict against Manager().dict(), UltraDict, shared-memory-dict and Redis, in one run.

The same as ``shmkit bench dict``; see ``shmkit._bench.dict`` for what is
measured and how. ``--quick`` gives a short smoke run::

    python benchmarks/bench_dict.py             # full run (several minutes here)
    python benchmarks/bench_dict.py --quick
"""

from __future__ import annotations

import sys

from shmkit._bench.dict import main

# The guard matters: benchmark children are spawned and re-import this file.
if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
