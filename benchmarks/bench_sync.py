"""Locks and semaphores against multiprocessing and raw posix_ipc, in one run.

The same as ``shmkit bench sync``; ``--quick`` gives a short smoke run::

    python benchmarks/bench_sync.py
"""

from __future__ import annotations

import sys

from shmkit._bench.sync import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
