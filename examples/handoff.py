"""Two programs hand data over through a named segment and a semaphore.

Run it: ``python examples/handoff.py`` (it starts the reader as a separate
program itself). The reader needs only the names.
"""

from __future__ import annotations

import subprocess
import sys

import shmkit

READER = """
import shmkit
from contextlib import closing
with (
    shmkit.Segment.open("example-frame") as seg,
    closing(shmkit.Semaphore.open("example-ready")) as ready,
):
    if not ready.acquire(timeout=5):
        raise SystemExit("no signal within 5 s")
    print("reader got:", bytes(seg.buf[:12]).decode())
"""


def main() -> None:
    seg = shmkit.Segment.create("example-frame", 1 << 20)  # 1 MiB, reserved now
    ready = shmkit.Semaphore.create("example-ready", value=0)
    try:
        reader = subprocess.Popen([sys.executable, "-c", READER])
        seg.buf[:12] = b"hello, world"  # zero-copy write into shared memory
        ready.release()  # signal the other program
        reader.wait(timeout=10)
    finally:
        # Lifetime is explicit: nothing disappears until someone unlinks it.
        for obj in (seg, ready):
            obj.unlink()
            obj.close()


if __name__ == "__main__":
    main()
