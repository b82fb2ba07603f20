"""Frames (6 MiB fan-out, 1 and 6 MiB lossless) and 64-byte messages: Broadcast vs its peers.

The same as ``shmkit bench frames``; see ``shmkit._bench.frames`` for what is
measured. ``--quick`` gives a short smoke run::

    python benchmarks/bench_frames.py            # full run (about a minute here)
    python benchmarks/bench_frames.py --quick
    python benchmarks/bench_frames.py --only lossless   # issue 8's lossless frames alone
"""

from __future__ import annotations

import sys

from shmkit._bench.frames import main

# The guard matters: benchmark children are spawned and re-import this file.
if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
