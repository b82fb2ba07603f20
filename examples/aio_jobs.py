"""An asyncio service consumes jobs that another program puts on a shared Queue.

Run it: ``python examples/aio_jobs.py`` (it starts the producer as a separate
program itself). Ten consumer tasks await ``get()`` while a ticker task keeps
running: waiting never blocks the event loop, and no thread is started per task.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys

import shmkit
import shmkit.aio

PRODUCER = """
import shmkit
with shmkit.Queue.open("example-jobs") as q:
    for i in range(100):
        q.put(b"job %d" % i)
    q.shutdown()  # consumers drain what is queued, then get Closed
"""


async def consumer(q: shmkit.aio.Queue[bytes], done: list[bytes]) -> None:
    while True:
        try:
            done.append(await q.get(timeout=10))
        except shmkit.Closed:  # shut down and drained
            return


async def ticker() -> int:
    ticks = 0
    while True:
        await asyncio.sleep(0.01)
        ticks += 1


async def main() -> None:
    q = shmkit.aio.Queue.create("example-jobs", 1 << 16)
    try:
        producer = subprocess.Popen([sys.executable, "-c", PRODUCER])
        done: list[bytes] = []
        tick = asyncio.create_task(ticker())
        await asyncio.gather(*(consumer(q, done) for _ in range(10)))
        tick.cancel()
        producer.wait(timeout=10)
        assert sorted(done) == sorted(b"job %d" % i for i in range(100))
        print(f"consumed {len(done)} jobs; the loop kept ticking meanwhile")
    finally:
        q.sync.unlink()
        q.close()


if __name__ == "__main__":
    asyncio.run(main())
