"""shmkit.aio Queue: awaited get/put across real processes, under asyncio and trio.

The loop-latency bound (the ticker) is the issue's acceptance property; it is
asserted generously (the machine is shared) and measured in benchmarks/bench_aio.py.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import anyio
import pytest

import shmkit
from shmkit import aio
from tests.helpers import finish, kill, read_line, spawn, wait_stopped

pytestmark = pytest.mark.anyio

#: Generous bound on the ticker's largest gap: the issue asks 20 ms on a quiet machine
#: (measured by `shmkit bench aio`); this shared 2-core VM sometimes takes 50 ms.
MAX_GAP = 0.1


@pytest.fixture
def queue(name: str) -> Iterator[aio.Queue[bytes]]:
    q = aio.Queue.create(name, 1 << 16)
    try:
        yield q
    finally:
        q.sync.unlink()
        q.close()


PRODUCER = """
import sys, time
import shmkit
q = shmkit.Queue.open(sys.argv[1])
n, pace = int(sys.argv[2]), float(sys.argv[3])
print("ready", flush=True)
sys.stdin.readline()
for i in range(n):
    q.put(b"%d" % i, timeout=10)
    if i % 50 == 49:
        time.sleep(pace)
q.shutdown()
print("done", flush=True)
"""


class Ticker:
    """Ticks every 10 ms and records the largest gap between ticks."""

    def __init__(self) -> None:
        self.max_gap = 0.0
        self.ticks = 0

    async def run(self) -> None:
        last = time.perf_counter()
        while True:
            await anyio.sleep(0.01)
            now = time.perf_counter()
            self.max_gap = max(self.max_gap, now - last)
            self.ticks += 1
            last = now


async def test_hundred_consumers_ticker_and_half_cancelled(
    queue: aio.Queue[bytes], frozen_heap: None
) -> None:
    """100 tasks drain a queue fed by another process; half are cancelled mid-run; none lost."""
    n = 4000
    child = spawn(PRODUCER, queue.name, str(n), "0.005")
    got: list[bytes] = []
    ticker = Ticker()
    scopes: list[anyio.CancelScope] = []
    cancelled = 0

    async def consume(scope: anyio.CancelScope) -> None:
        nonlocal cancelled
        with scope:
            while True:
                try:
                    got.append(await queue.get(timeout=20))
                except shmkit.Closed:
                    return
        if scope.cancelled_caught:
            cancelled += 1

    try:
        assert read_line(child) == "ready"
        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                tg.start_soon(ticker.run)
                async with anyio.create_task_group() as consumers:
                    for _ in range(100):
                        scope = anyio.CancelScope()
                        scopes.append(scope)
                        consumers.start_soon(consume, scope)
                    assert child.stdin is not None
                    child.stdin.write("go\n")
                    child.stdin.flush()
                    while len(got) < n // 3:
                        await anyio.sleep(0.005)
                    for scope in scopes[::2]:
                        scope.cancel()
                tg.cancel_scope.cancel()
        assert read_line(child) == "done"
        finish(child)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(5)
    assert cancelled == 50
    assert sorted(map(int, got)) == list(range(n))  # every message exactly once
    assert ticker.ticks > 10
    assert ticker.max_gap <= MAX_GAP, ticker.max_gap


async def test_cancelled_gets_lose_nothing(queue: aio.Queue[bytes]) -> None:
    """Gets cancelled at random instants while another process puts: every message arrives."""
    n = 1500
    child = spawn(PRODUCER, queue.name, str(n), "0.002")
    got: list[bytes] = []
    timeouts = 0
    try:
        assert read_line(child) == "ready"
        assert child.stdin is not None
        child.stdin.write("go\n")
        child.stdin.flush()
        with anyio.fail_after(60):
            k = 0
            while True:
                k += 1
                with anyio.move_on_after((k % 7) * 0.0003) as scope:
                    try:
                        got.append(await queue.get())
                    except shmkit.Closed:
                        break
                timeouts += scope.cancelled_caught
        finish(child)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(5)
    assert timeouts > 0
    assert sorted(map(int, got)) == list(range(n))


async def test_put_waits_for_room_from_another_process(name: str) -> None:
    """A full queue: await put() returns once a consumer in another process makes room."""
    q = aio.Queue.create(name, 64)
    try:
        await q.put(b"x" * 48)
        with pytest.raises(shmkit.Full):
            await q.put(b"y" * 48, timeout=0.05)
        child = spawn(
            """
            import sys, time
            import shmkit
            q = shmkit.Queue.open(sys.argv[1])
            print("ready", flush=True)
            time.sleep(0.2)
            print(len(q.get(timeout=5)), len(q.get(timeout=5)), flush=True)
            """,
            name,
        )
        assert read_line(child) == "ready"
        with anyio.fail_after(10):
            await q.put_many([b"y" * 40])
        assert read_line(child) == "48 40"
        finish(child)
    finally:
        q.sync.unlink()
        q.close()


async def test_get_many_get_into_and_timeouts(queue: aio.Queue[bytes]) -> None:
    """get_many/get_into work; timeouts are validated like the blocking calls and raise Empty."""
    await queue.put_many([b"a", b"bb", b"ccc"])
    assert await queue.get_many(2) == [b"a", b"bb"]
    buf = bytearray(8)
    assert await queue.get_into(buf) == 3 and bytes(buf[:3]) == b"ccc"
    with pytest.raises(shmkit.Empty):
        await queue.get(timeout=0)
    t0 = time.monotonic()
    with pytest.raises(shmkit.Empty):
        await queue.get(timeout=0.1)
    assert time.monotonic() - t0 >= 0.1
    for bad, err in ((-1, ValueError), (float("nan"), ValueError), ("1", TypeError)):
        with pytest.raises(err):
            await queue.get(timeout=bad)  # type: ignore[arg-type]
        with pytest.raises(err):
            queue.sync.get(timeout=bad)  # type: ignore[arg-type]
    with pytest.raises(TimeoutError), anyio.fail_after(0.05):
        await queue.get()
    queue.put_nowait(b"kept")  # the fail_after above took nothing
    assert await queue.get(timeout=1) == b"kept"


async def test_closed_while_awaiting_raises_closed(queue: aio.Queue[bytes]) -> None:
    """Closing the handle under a waiting task ends its wait with Closed."""
    result: list[BaseException] = []

    async def waiter() -> None:
        try:
            await queue.get(timeout=10)
        except shmkit.Closed as exc:
            result.append(exc)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter)
            await anyio.sleep(0.05)
            queue.sync.close()
    assert len(result) == 1
    with pytest.raises(shmkit.Closed):
        await queue.get()


async def test_no_watcher_left_after_the_run(name: str) -> None:
    """Waiting tasks start watcher threads; once they are gone, so are the threads."""
    end = time.monotonic() + 2
    while aio.active_watchers() and time.monotonic() < end:  # earlier tests' watchers linger
        await anyio.sleep(0.01)
    baseline = threading.active_count()
    q = aio.Queue.create(name, 1024)
    empty = aio.Queue.create(name + "e", 1024)
    try:
        q.put_nowait(b"z" * 1000)
        with anyio.move_on_after(0.2):
            async with anyio.create_task_group() as tg:
                for _ in range(50):
                    tg.start_soon(empty.get)
                    tg.start_soon(q.put, b"z" * 1000)  # full: waits
                await anyio.sleep(0.1)
                assert aio.active_watchers() == 2  # one per queue and direction, not per task
                assert threading.active_count() == baseline + 2
    finally:
        for x in (q, empty):
            x.sync.unlink()
            x.close()
    end = time.monotonic() + 2
    while threading.active_count() > baseline and time.monotonic() < end:
        await anyio.sleep(0.01)
    assert threading.active_count() == baseline
    assert aio.active_watchers() == 0


def test_wrap_an_existing_queue_and_forwarding(name: str) -> None:
    """aio.Queue(sync) wraps a handle; non-blocking calls and properties are the handle's."""
    with shmkit.Queue.create(name, 1024) as sync:
        q: aio.Queue[Any] = aio.Queue(sync)
        assert q.sync is sync and q.name == name and q.capacity == 1024
        q.put_nowait(b"1")
        assert q.qsize() == 1 and sync.get_nowait() == b"1"
        sync.unlink()


async def test_stopped_queue_lock_holder_does_not_stall_the_loop(
    queue: aio.Queue[bytes], frozen_heap: None
) -> None:
    """A consumer stopped inside get (holding the queue's lock): awaited gets time out on time,
    the loop keeps ticking; once it resumes, the next get succeeds."""
    queue.put_nowait(b"first")
    queue.put_nowait(b"second")
    child = spawn(
        """
        import sys
        import shmkit
        q = shmkit.Queue.open(sys.argv[1])
        print(q.get(timeout=5).decode(), flush=True)
        """,
        queue.name,
        env={"SHMKIT_STOP_AT": "queue.get.locked"},
    )
    ticker = Ticker()
    try:
        wait_stopped(child)
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(ticker.run)
                t0 = time.monotonic()
                with pytest.raises(shmkit.Empty, match="lock stayed held"):
                    await queue.get(timeout=0.3)
                assert time.monotonic() - t0 < 0.3 + 0.2
                tg.cancel_scope.cancel()
        assert ticker.ticks >= 10 and ticker.max_gap <= MAX_GAP, ticker.max_gap
    finally:
        os.kill(child.pid, signal.SIGCONT)
    assert read_line(child) == "first"
    finish(child)
    with anyio.fail_after(5):
        assert await queue.get(timeout=2) == b"second"


def test_loop_closed_under_waiting_tasks_leaves_no_thread(name: str) -> None:
    """A loop closed while tasks still await (never cancelled): the watcher drops them and exits."""
    import asyncio

    q = aio.Queue.create(name, 1024)
    loop = asyncio.new_event_loop()
    try:
        tasks = [loop.create_task(q.get()) for _ in range(5)]
        loop.run_until_complete(asyncio.sleep(0.05))
        assert aio.active_watchers() >= 1 and not any(t.done() for t in tasks)
    finally:
        loop.close()
    end = time.monotonic() + 3
    while aio.active_watchers() and time.monotonic() < end:
        time.sleep(0.01)
    assert aio.active_watchers() == 0
    q.sync.unlink()
    q.close()


def test_aio_all_is_honest() -> None:
    """Every name shmkit.aio exports exists, and each mirror wraps its blocking class."""
    for export in aio.__all__:
        assert hasattr(aio, export), export
    assert aio.Queue.open.__doc__ and aio.Lock.acquire.__doc__


def test_aio_handles_pickle_by_name(name: str) -> None:
    """An aio handle pickles like its blocking handle (reopened by name) and comes back wrapped."""
    import pickle

    q = aio.Queue.create(name, 1024)
    try:
        q.put_nowait(b"hello")
        other = pickle.loads(pickle.dumps(q))
        assert isinstance(other, aio.Queue) and other.sync is not q.sync
        assert other.get_nowait() == b"hello"
        other.close()
    finally:
        q.sync.unlink()
        q.close()


def test_asyncio_timeout_and_wait_for_cancel_cleanly(name: str) -> None:
    """asyncio.timeout() / wait_for() around an awaited get: TimeoutError, nothing taken."""
    import asyncio

    async def main(q: aio.Queue[bytes]) -> None:
        if hasattr(asyncio, "timeout"):
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.05):
                    await q.get()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(q.get(), 0.05)
        q.put_nowait(b"x")
        assert await asyncio.wait_for(q.get(), 5) == b"x"

    q = aio.Queue.create(name, 1024)
    try:
        asyncio.run(main(q))
    finally:
        q.sync.unlink()
        q.close()


WORKER = """
import sys, time
import shmkit
q = shmkit.Queue.open(sys.argv[1])
print("ready", flush=True)
for _ in range(int(sys.argv[2])):
    q.get(timeout=10)
    time.sleep(0.002)
    q.task_done()
"""


async def test_join_waits_for_task_done_in_another_process(queue: aio.Queue[bytes]) -> None:
    """await q.join() returns exactly when another process marked the last task done."""
    assert await queue.join(timeout=0) is True  # nothing put yet
    for i in range(20):
        await queue.put(b"%d" % i)
    assert await queue.join(timeout=0.05) is False  # nobody works on them yet
    worker = spawn(WORKER, queue.name, "20")
    try:
        assert read_line(worker) == "ready"
        with anyio.fail_after(20):
            assert await queue.join(timeout=15) is True
        assert queue.sync.unfinished_tasks == 0
        finish(worker)
    finally:
        kill(worker)


async def test_cancelled_join_leaves_the_count_alone(queue: aio.Queue[bytes]) -> None:
    await queue.put(b"x")
    with anyio.move_on_after(0.05) as scope:
        await queue.join()
    assert scope.cancelled_caught
    assert queue.sync.unfinished_tasks == 1
    assert await queue.get(timeout=1) == b"x"
    queue.task_done()
    assert await queue.join(timeout=1) is True
