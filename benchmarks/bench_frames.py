"""6 MiB frames and 64-byte messages: Broadcast against its peers, in one run.

The same as ``shmkit bench frames``; see ``shmkit._bench.frames`` for what is
measured. ``--quick`` gives a short smoke run::

    python benchmarks/bench_frames.py            # full run (about a minute here)
    python benchmarks/bench_frames.py --quick
"""

from __future__ import annotations

import sys

from shmkit._bench.frames import main

# The guard matters: benchmark children are spawned and re-import this file.
if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
