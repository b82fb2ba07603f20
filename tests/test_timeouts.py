"""Invalid timeouts are refused by every blocking call, on free and busy objects alike.

``timeout=`` is None (forever) or a number >= 0 (inf = forever). -1 and NaN
raise ValueError, a string or a bool TypeError, before any system call: the
object is exactly as it was (a semaphore keeps its count, a queue its
messages, a lock stays free) whether the call would have succeeded at once
("free") or waited ("busy").
"""

from __future__ import annotations

import math
import signal
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, closing, contextmanager
from typing import Any

import pytest

from shmkit import (
    Broadcast,
    Event,
    Latest,
    Lock,
    Queue,
    Segment,
    Semaphore,
    SharedArray,
    publisher,
    subscribe,
)

from .helpers import finish, kill, read_line, spawn, wait_stopped

pytestmark = pytest.mark.timeout(60)

BAD: list[tuple[object, type[Exception]]] = [
    (-1, ValueError),
    (math.nan, ValueError),
    ("1", TypeError),
    (True, TypeError),
]

Call = Callable[[Any], object]
State = Callable[[], object]
Case = Callable[[str, bool], AbstractContextManager[tuple[Call, State]]]
CASES: dict[str, Case] = {}


def case(fn: Callable[[str, bool], Iterator[tuple[Call, State]]]) -> None:
    CASES[fn.__name__] = contextmanager(fn)


# ---------------------------------------------------------------------- sync


@case
def semaphore_acquire(name: str, busy: bool) -> Iterator[tuple[Call, State]]:
    with closing(Semaphore.create(name, 0 if busy else 1)) as sem:
        yield (lambda t: sem.acquire(timeout=t)), (lambda: sem.value)
        sem.unlink()


@case
def semaphore_hold(name: str, busy: bool) -> Iterator[tuple[Call, State]]:
    with closing(Semaphore.create(name, 0 if busy else 1)) as sem:

        def call(t: Any) -> None:
            with sem.hold(timeout=t):
                pass

        yield call, (lambda: sem.value)
        sem.unlink()


def _lock_state(other: Lock) -> bool:
    """True if the lock is free: another handle takes it at once (then lets go)."""
    if other.acquire(timeout=0):
        other.release()
        return True
    return False


@case
def lock_acquire(name: str, busy: bool) -> Iterator[tuple[Call, State]]:
    with closing(Lock.create(name)) as lock, closing(Lock.open(name)) as holder:
        if busy:
            assert holder.acquire(timeout=0)
        probe = Lock.open(name)
        try:
            yield (lambda t: lock.acquire(timeout=t)), (lambda: _lock_state(probe))
        finally:
            probe.close()
            if busy:
                holder.release()
        lock.unlink()


@case
def lock_hold(name: str, busy: bool) -> Iterator[tuple[Call, State]]:
    with closing(Lock.create(name)) as lock, closing(Lock.open(name)) as holder:
        if busy:
            assert holder.acquire(timeout=0)

        def call(t: Any) -> None:
            with lock.hold(timeout=t):
                pass

        probe = Lock.open(name)
        try:
            yield call, (lambda: _lock_state(probe))
        finally:
            probe.close()
            if busy:
                holder.release()
        lock.unlink()


@case
def event_wait(name: str, busy: bool) -> Iterator[tuple[Call, State]]:
    with Event.create(name) as ev:
        if not busy:
            ev.set()
        yield (lambda t: ev.wait(timeout=t)), ev.is_set
        ev.unlink()


@contextmanager
def _array(name: str, busy: bool) -> Iterator[tuple[SharedArray, State]]:
    with SharedArray.create(name, (2,), "f8") as arr, SharedArray.open(name) as holder:
        if busy:
            assert holder.acquire(timeout=0)

        def state() -> bool:
            with SharedArray.open(name) as probe:
                if probe.acquire(timeout=0):
                    probe.release()
                    return True
                return False

        yield arr, state
        if busy:
            holder.release()
        arr.unlink()


@case
def array_acquire(name: str, busy: bool) -> Iterator[tuple[Call, State]]:
    with _array(name, busy) as (arr, state):
        yield (lambda t: arr.acquire(timeout=t)), state


@case
def array_lock(name: str, busy: bool) -> Iterator[tuple[Call, State]]:
    with _array(name, busy) as (arr, state):

        def call(t: Any) -> None:
            with arr.lock(timeout=t):
                pass

        yield call, state


# ---------------------------------------------------------------------- queue


@contextmanager
def _queue(name: str, busy: bool, full: bool) -> Iterator[Queue[bytes]]:
    with Queue.create(name, 64) as q:
        if full:
            if busy:
                while True:
                    try:
                        q.put_nowait(b"x" * 8)
                    except Exception:
                        break
        elif not busy:
            q.put(b"item")
        yield q
        q.unlink()


def _queue_state(q: Queue[bytes]) -> object:
    s = q.statistics()
    return (s.messages, s.total_puts, s.total_gets, s.bytes_used)


@case
def queue_get(name: str, busy: bool) -> Iterator[tuple[Call, State]]:
    with _queue(name, busy, full=False) as q:
        yield (lambda t: q.get(timeout=t)), (lambda: _queue_state(q))


@case
def queue_get_many(name: str, busy: bool) -> Iterator[tuple[Call, State]]:
    with _queue(name, busy, full=False) as q:
        yield (lambda t: q.get_many(4, timeout=t)), (lambda: _queue_state(q))


@case
def queue_get_into(name: str, busy: bool) -> Iterator[tuple[Call, State]]:
    with _queue(name, busy, full=False) as q:
        yield (lambda t: q.get_into(bytearray(64), timeout=t)), (lambda: _queue_state(q))


@case
def queue_put(name: str, busy: bool) -> Iterator[tuple[Call, State]]:
    with _queue(name, busy, full=True) as q:
        yield (lambda t: q.put(b"y", timeout=t)), (lambda: _queue_state(q))


@case
def queue_put_many(name: str, busy: bool) -> Iterator[tuple[Call, State]]:
    with _queue(name, busy, full=True) as q:
        yield (lambda t: q.put_many([b"a", b"b"], timeout=t)), (lambda: _queue_state(q))


@case
def queue_join(name: str, busy: bool) -> Iterator[tuple[Call, State]]:
    with _queue(name, busy, full=True) as q:  # full: tasks are unfinished
        yield (lambda t: q.join(timeout=t)), (lambda: _queue_state(q))


# ---------------------------------------------------------------------- broadcast


@contextmanager
def _subscriber(name: str, busy: bool) -> Iterator[tuple[Any, Any]]:
    with publisher(name, slot_size=64, slots=4) as pub, subscribe(name) as sub:
        if not busy:
            pub.publish(b"message")
        yield pub, sub
        pub.unlink()


@case
def broadcast_recv(name: str, busy: bool) -> Iterator[tuple[Call, State]]:
    with _subscriber(name, busy) as (_pub, sub):
        yield (lambda t: sub.recv(timeout=t)), (lambda: (sub.next_seq, sub.lag))


@case
def broadcast_recv_into(name: str, busy: bool) -> Iterator[tuple[Call, State]]:
    with _subscriber(name, busy) as (_pub, sub):
        yield (lambda t: sub.recv_into(bytearray(64), timeout=t)), (lambda: (sub.next_seq, sub.lag))


@case
def broadcast_recv_view(name: str, busy: bool) -> Iterator[tuple[Call, State]]:
    with _subscriber(name, busy) as (_pub, sub):

        def call(t: Any) -> None:
            with sub.recv_view(timeout=t):
                pass

        yield call, (lambda: (sub.next_seq, sub.lag))


@case
def broadcast_recv_latest(name: str, busy: bool) -> Iterator[tuple[Call, State]]:
    with _subscriber(name, busy) as (_pub, sub):
        yield (lambda t: sub.recv_latest(timeout=t)), (lambda: (sub.next_seq, sub.lag))


@contextmanager
def _publisher(name: str, busy: bool) -> Iterator[Any]:
    """Busy: a back-pressured ring held full by a subscriber that reads nothing."""
    with publisher(name, slot_size=64, slots=2, backpressure=True) as pub:
        with subscribe(name):
            if busy:
                pub.publish(b"1")
                pub.publish(b"2")
            yield pub
        pub.unlink()


@case
def broadcast_publish(name: str, busy: bool) -> Iterator[tuple[Call, State]]:
    with _publisher(name, busy) as pub:
        yield (lambda t: pub.publish(b"m", timeout=t)), (lambda: pub.published)


@case
def broadcast_loan(name: str, busy: bool) -> Iterator[tuple[Call, State]]:
    with _publisher(name, busy) as pub:

        def call(t: Any) -> None:
            with pub.loan(8, timeout=t):
                pass

        yield call, (lambda: pub.published)


@case
def broadcast_publisher(name: str, busy: bool) -> Iterator[tuple[Call, State]]:
    with publisher(name, slot_size=64, slots=2) as pub, Broadcast.open(name) as b:
        if not busy:
            pub.close()
        yield (lambda t: b.publisher(timeout=t)), (lambda: b.publisher_alive)
        b.unlink()


# ---------------------------------------------------------------------- latest


@contextmanager
def _latest(name: str, busy: bool) -> Iterator[Latest[bytes]]:
    with Latest.create(name, size=64) as lt:
        if not busy:
            lt.set(b"value")
        yield lt
        lt.unlink()


@case
def latest_get(name: str, busy: bool) -> Iterator[tuple[Call, State]]:
    with _latest(name, busy) as lt:
        yield (lambda t: lt.get(timeout=t)), lt.get_version


@case
def latest_get_versioned(name: str, busy: bool) -> Iterator[tuple[Call, State]]:
    with _latest(name, busy) as lt:
        yield (lambda t: lt.get_versioned(timeout=t)), lt.get_version


@case
def latest_get_into(name: str, busy: bool) -> Iterator[tuple[Call, State]]:
    with _latest(name, busy) as lt:
        yield (lambda t: lt.get_into(bytearray(64), timeout=t)), lt.get_version


@case
def latest_wait_newer(name: str, busy: bool) -> Iterator[tuple[Call, State]]:
    with Latest.create(name, size=64) as lt:
        lt.set(b"one")
        version = 1 if busy else 0  # busy: nothing newer than version 1 yet
        yield (lambda t: lt.wait_newer(version, timeout=t)), lt.get_version
        lt.unlink()


@case
def latest_set(name: str, busy: bool) -> Iterator[tuple[Call, State]]:
    """Busy: another process stopped inside its own set, holding the writer lock."""
    with Latest.create(name, size=64) as lt:
        lt.set(b"one")
        writer = None
        if busy:
            writer = spawn(
                """
                import sys
                from shmkit import Latest
                lt = Latest.open(sys.argv[1])
                print("open", flush=True)
                lt.set(b"two")
                print("set", flush=True)
                lt.close()
                """,
                name,
                env={"SHMKIT_STOP_AT": "latest.set.copying"},
            )
            try:
                read_line(writer)
                wait_stopped(writer)
            except BaseException:
                kill(writer)
                raise
        try:
            yield (lambda t: lt.set(b"mine", timeout=t)), lt.get_version
        finally:
            if writer is not None:
                writer.send_signal(signal.SIGCONT)
                assert read_line(writer) == "set"
                finish(writer)
        lt.unlink()


@pytest.mark.parametrize("busy", [False, True], ids=["free", "busy"])
@pytest.mark.parametrize("call", sorted(CASES))
def test_invalid_timeouts_raise_before_anything_changes(name: str, call: str, busy: bool) -> None:
    try:
        with CASES[call](name, busy) as (do, state):
            before = state()
            for bad, error in BAD:
                with pytest.raises(error):
                    do(bad)
                assert state() == before, f"timeout={bad!r} changed the object"
    finally:
        Segment.remove(name)  # also when the call wrongly succeeded and skipped the cleanup


def test_the_cases_cover_every_public_blocking_call() -> None:
    """Every public method that takes ``timeout`` has a case above."""
    import inspect

    from shmkit.broadcast import Publisher, Subscriber

    have = set(CASES)
    missing = []
    for cls, prefix in [
        (Semaphore, "semaphore"),
        (Lock, "lock"),
        (Event, "event"),
        (SharedArray, "array"),
        (Queue, "queue"),
        (Subscriber, "broadcast"),
        (Publisher, "broadcast"),
        (Broadcast, "broadcast"),
        (Latest, "latest"),
    ]:
        for attr, member in inspect.getmembers(cls, callable):
            if attr.startswith("_"):
                continue
            try:
                params = inspect.signature(member).parameters
            except (TypeError, ValueError):
                continue
            if "timeout" in params and f"{prefix}_{attr}" not in have:
                missing.append(f"{cls.__name__}.{attr}")
    assert not missing, f"no invalid-timeout case for {missing}"
