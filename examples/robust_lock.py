"""A lock that survives its holder being killed, and tells the next holder.

Run it: ``python examples/robust_lock.py``.
"""

from __future__ import annotations

import subprocess
import sys
import time

import shmkit

HOLDER = """
import time, shmkit
lock = shmkit.Lock.open("example-lock")
lock.acquire()
print("holding", flush=True)
time.sleep(60)          # killed here, inside its critical section
"""


def main() -> None:
    lock = shmkit.Lock.create("example-lock")
    try:
        holder = subprocess.Popen([sys.executable, "-c", HOLDER], stdout=subprocess.PIPE, text=True)
        assert holder.stdout is not None
        holder.stdout.readline()
        holder.kill()  # SIGKILL while holding the lock
        holder.wait()
        t0 = time.monotonic()
        with lock.hold(timeout=5):
            waited_ms = 1e3 * (time.monotonic() - t0)
            print(f"acquired after {waited_ms:.1f} ms; owner_died={lock.owner_died}")
            if lock.owner_died:
                # repair whatever the lock protects, then:
                lock.mark_consistent()
    finally:
        lock.unlink()
        lock.close()


if __name__ == "__main__":
    main()
