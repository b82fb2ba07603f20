"""shmkit.aio Lock, Semaphore, Event, Latest, Broadcast and SharedDict across real processes.

Run under asyncio and trio. The stopped-holder test asserts the loop keeps
ticking with a generous bound (the machine is shared).
"""

from __future__ import annotations

import os
import signal
import time

import anyio
import pytest

import shmkit
from shmkit import aio
from tests.helpers import finish, read_line, spawn

pytestmark = pytest.mark.anyio

MAX_GAP = 0.1


HOLDER = """
import sys
import shmkit
lock = shmkit.Lock.open(sys.argv[1])
lock.acquire()
print("held", flush=True)
sys.stdin.readline()
lock.release()
print("released", flush=True)
sys.stdin.readline()
"""


def _say(child: object, line: str = "") -> None:
    stdin = child.stdin  # type: ignore[attr-defined]
    stdin.write(line + "\n")
    stdin.flush()


async def _say_later(child: object) -> None:
    await anyio.sleep(0.05)
    _say(child)


async def test_stopped_lock_holder_does_not_stall_the_loop(name: str, frozen_heap: None) -> None:
    """SIGSTOP the holder: acquire(timeout) returns False on time and a ticker keeps ticking."""
    lock = aio.Lock.create(name)
    child = spawn(HOLDER, name)
    try:
        assert read_line(child) == "held"
        os.kill(child.pid, signal.SIGSTOP)
        gaps: list[float] = []

        async def ticker() -> None:
            last = time.perf_counter()
            while True:
                await anyio.sleep(0.01)
                now = time.perf_counter()
                gaps.append(now - last)
                last = now

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(ticker)
                t0 = time.monotonic()
                assert await lock.acquire(timeout=0.5) is False
                assert time.monotonic() - t0 >= 0.5
                with pytest.raises(shmkit.LockTimeout, match=f"pid {child.pid}"):
                    async with lock.hold(0.1):
                        pass
                tg.cancel_scope.cancel()
        assert len(gaps) >= 20 and max(gaps) <= MAX_GAP, max(gaps)
        os.kill(child.pid, signal.SIGCONT)
        # now it is released by the child while we wait
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(_say_later, child)
                assert await lock.acquire(timeout=5)
        assert lock.sync.holder() is not None and lock.sync.holder()[0] == os.getpid()  # type: ignore[index]
        lock.release()
        assert read_line(child) == "released"
        _say(child)
        finish(child)
    finally:
        if child.poll() is None:
            os.kill(child.pid, signal.SIGCONT)
            child.kill()
            child.wait(5)
        lock.sync.unlink()
        lock.close()


async def test_cancelled_acquire_leaves_the_lock_free(name: str) -> None:
    """Acquires cancelled while another process holds the lock never end up holding it."""
    lock = aio.Lock.create(name)
    child = spawn(HOLDER, name)
    try:
        assert read_line(child) == "held"
        for delay in (0.0, 0.001, 0.02):
            with anyio.move_on_after(delay) as scope:
                await lock.acquire()
            assert scope.cancelled_caught
        _say(child)
        assert read_line(child) == "released"
        assert not lock.locked()  # nobody holds it: our cancelled acquires took nothing
        async with lock:
            assert lock.sync.holder() is not None and lock.sync.holder()[0] == os.getpid()  # type: ignore[index]
        _say(child)
        finish(child)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(5)
        lock.sync.unlink()
        lock.close()


async def test_tasks_take_turns_on_the_lock(name: str) -> None:
    """Tasks of one loop and another process exclude each other; await inside is safe."""
    lock = aio.Lock.create(name)
    inside = 0
    most = 0

    async def worker() -> None:
        nonlocal inside, most
        for _ in range(5):
            async with lock:
                inside += 1
                most = max(most, inside)
                await anyio.sleep(0.001)
                inside -= 1

    try:
        child = spawn(
            """
            import sys, time
            import shmkit
            lock = shmkit.Lock.open(sys.argv[1])
            print("ready", flush=True)
            for _ in range(20):
                with lock.hold(10):
                    time.sleep(0.002)
                time.sleep(0.001)
            print("done", flush=True)
            """,
            name,
        )
        assert read_line(child) == "ready"
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                for _ in range(10):
                    tg.start_soon(worker)
        assert read_line(child) == "done"
        finish(child)
        assert most == 1
        assert not lock.locked()
    finally:
        lock.sync.unlink()
        lock.close()


async def test_semaphore_acquire_and_cancel(name: str) -> None:
    """A unit released by another process reaches a waiter; cancelled acquires take none."""
    sem = aio.Semaphore.create(name, 0)
    try:
        for delay in (0.0, 0.01):
            with anyio.move_on_after(delay):
                await sem.acquire()
        assert await sem.acquire(timeout=0.05) is False
        child = spawn(
            """
            import sys, time
            import shmkit
            sem = shmkit.Semaphore.open(sys.argv[1])
            time.sleep(0.1)
            sem.release(3)
            print("released", flush=True)
            """,
            name,
        )
        with anyio.fail_after(10):
            assert await sem.acquire(timeout=5)
        assert read_line(child) == "released"
        finish(child)
        end = time.monotonic() + 2
        while sem.value != 2 and time.monotonic() < end:  # a unit the watcher held goes back
            await anyio.sleep(0.01)
        assert sem.value == 2
    finally:
        sem.sync.unlink()
        sem.close()


async def test_event_latest_and_dict_wake_on_another_process(name: str) -> None:
    """Event.wait, Latest.wait_newer and SharedDict.wait_changed wake on a write elsewhere."""
    ev = aio.Event.create(name + "e")
    lat = aio.Latest.create(name + "l", size=16)
    d = aio.SharedDict.create(name + "d")
    try:
        assert await ev.wait(timeout=0.02) is False
        with pytest.raises(shmkit.Timeout):
            await lat.wait_newer(0, timeout=0.02)
        with pytest.raises(shmkit.Timeout):
            await d.wait_changed("k", timeout=0.02)
        child = spawn(
            """
            import sys, time
            import shmkit
            n = sys.argv[1]
            ev, lat = shmkit.Event.open(n + "e"), shmkit.Latest.open(n + "l")
            d = shmkit.SharedDict.open(n + "d")
            time.sleep(0.1)
            lat.set(b"v1")
            time.sleep(0.05)
            d["k"] = b"x"
            time.sleep(0.05)
            ev.set()
            print("done", flush=True)
            """,
            name,
        )
        results: dict[str, object] = {}

        async def on_event() -> None:
            results["event"] = await ev.wait(timeout=10)

        async def on_latest() -> None:
            results["latest"] = await lat.wait_newer(0, timeout=10)

        async def on_dict() -> None:
            results["dict"] = await d.wait_changed("k", timeout=10)

        with anyio.fail_after(15):
            async with anyio.create_task_group() as tg:
                for _ in range(3):
                    tg.start_soon(on_event)
                    tg.start_soon(on_latest)
                    tg.start_soon(on_dict)
        assert read_line(child) == "done"
        finish(child)
        assert results == {"event": True, "latest": 1, "dict": d.version("k")}
        assert d.version("k") > 0
    finally:
        for h in (ev, lat, d):
            h.sync.unlink()
            h.close()


async def test_subscriber_recv_from_another_process(name: str) -> None:
    """recv/recv_into/recv_view wake on publishes from another process; Closed when closed."""
    bc = aio.Broadcast.create(name, 64, 8)
    sub = bc.subscribe("oldest")
    try:
        with pytest.raises(shmkit.PeerDied):  # like the blocking recv: no publisher yet
            await sub.recv(timeout=0.02)
        child = spawn(
            """
            import sys, time
            import shmkit
            pub = shmkit.Broadcast.open(sys.argv[1]).publisher()
            print("ready", flush=True)
            time.sleep(0.2)
            for i in range(3):
                time.sleep(0.05)
                pub.publish(b"m%d" % i)
            sys.stdin.readline()
            pub.close()
            """,
            name,
        )
        assert read_line(child) == "ready"
        with pytest.raises(shmkit.Empty):
            await sub.recv(timeout=0.02)
        with anyio.fail_after(10):
            assert await sub.recv(timeout=5) == b"m0"
            buf = bytearray(64)
            assert await sub.recv_into(buf, timeout=5) == 2 and bytes(buf[:2]) == b"m1"
            with await sub.recv_view(timeout=5) as msg:
                assert bytes(msg) == b"m2"
        _say(child)
        finish(child)
        caught: list[BaseException] = []

        async def waiter() -> None:
            try:
                await sub.recv(timeout=10)
            except (shmkit.Closed, shmkit.PeerDied) as exc:
                caught.append(exc)

        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(waiter)
                await anyio.sleep(0.05)
                sub.close()
        assert caught and isinstance(caught[0], (shmkit.Closed, shmkit.PeerDied))
    finally:
        sub.close()
        bc.sync.unlink()
        bc.close()


async def test_backpressured_publish_and_cancelled_loan(name: str) -> None:
    """A full back-pressured ring: publish waits for the subscriber; a cancelled loan is aborted."""
    bc = aio.Broadcast.create(name, 32, 2, backpressure=True)
    sub = bc.subscribe("oldest")
    pub = bc.publisher()
    try:
        assert await pub.publish(b"a") == 0
        assert await pub.publish(b"b") == 1
        with pytest.raises(shmkit.Full):
            await pub.publish(b"c", timeout=0.05)
        with anyio.move_on_after(0.02) as scope:
            async with pub.loan(4) as buf:  # waits for room: cancelled, nothing loaned
                buf[:4] = b"lost"
        assert scope.cancelled_caught
        assert pub.sync._loan is None

        async def drain() -> None:
            await anyio.sleep(0.05)
            assert await sub.recv(timeout=5) == b"a"

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(drain)
                with pytest.raises(RuntimeError):
                    async with pub.loan(4, timeout=5) as buf:  # waits for room, then aborts
                        buf[:4] = b"junk"
                        raise RuntimeError
        assert pub.sync._loan is None
        async with pub.loan(4, timeout=1) as buf:
            buf[:4] = b"loan"
        assert await sub.recv(timeout=1) == b"b"
        assert await sub.recv(timeout=1) == b"loan"
    finally:
        pub.close()
        sub.close()
        bc.sync.unlink()
        bc.close()


async def test_closing_the_handle_ends_waits_with_closed(name: str) -> None:
    """close() on an aio Lock (held elsewhere) and Semaphore ends their waiters' waits: Closed."""
    lock = aio.Lock.create(name)
    sem = aio.Semaphore.create(name + "s", 0)
    child = spawn(HOLDER, name)
    caught: list[str] = []

    async def acquire(obj: aio.Lock | aio.Semaphore) -> None:
        try:
            await obj.acquire(timeout=30)
        except shmkit.Closed:
            caught.append(type(obj).__name__)

    try:
        assert read_line(child) == "held"
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(acquire, lock)
                tg.start_soon(acquire, sem)
                await anyio.sleep(0.1)
                lock.close()
                sem.close()
        assert sorted(caught) == ["Lock", "Semaphore"]
        _say(child)
        assert read_line(child) == "released"
        _say(child)
        finish(child)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(5)
        shmkit.Lock.open(name).unlink()
        shmkit.Semaphore.open(name + "s").unlink()
