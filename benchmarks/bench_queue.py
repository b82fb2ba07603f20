"""64-byte round trips, 64-byte streams and 1 MiB messages: Queue against its peers, in one run.

The same as ``shmkit bench queue``; see ``shmkit._bench.queue`` for what is
measured and how. ``--quick`` gives a short smoke run::

    python benchmarks/bench_queue.py             # full run (one to two minutes here)
    python benchmarks/bench_queue.py --quick
"""

from __future__ import annotations

import sys

from shmkit._bench.queue import main

# The guard matters: benchmark children are spawned and re-import this file.
if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
