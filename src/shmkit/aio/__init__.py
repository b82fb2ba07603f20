"""shmkit for asyncio and trio: ``await`` every blocking call, from thousands of tasks.

A mirror of the blocking objects (like ``zmq.asyncio``)::

    import shmkit.aio

    q = shmkit.aio.Queue.open("jobs")        # or .create(...), or Queue(sync_queue)
    job = await q.get(timeout=5.0)           # Empty after 5 s; cancellable
    q.put_nowait(b"done")                    # non-blocking calls are the handle's own
    q.sync                                   # the blocking shmkit.Queue underneath

Each awaited call tries its non-blocking twin, spins up to 50 µs,
then waits through one watcher thread per awaited object and direction (not
per task) sleeping on the object's futex word or semaphore. The event loop is
never blocked by a waiter, and a cancelled call has taken nothing. Works
under asyncio and trio (picked with sniffio; anyio programs get either).
See docs/asyncio.md.
"""

from ._objects import Broadcast, Latest, LoanRequest, Publisher, SharedDict, Subscriber
from ._queue import Queue
from ._sync import Event, Lock, Semaphore
from ._watch import active_watchers

__all__ = [
    "Queue",
    "Lock",
    "Semaphore",
    "Event",
    "Latest",
    "Broadcast",
    "Publisher",
    "Subscriber",
    "LoanRequest",
    "SharedDict",
    "active_watchers",
]
