"""Awaited round trips (shmkit.aio) against blocking ones and zmq.asyncio; idle CPU of waiters.

The same as ``shmkit bench aio``; ``--quick`` gives a short smoke run::

    python benchmarks/bench_aio.py
"""

from __future__ import annotations

import sys

from shmkit._bench.aio import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
