"""Broadcast lifecycle and handles: create/open/open_or_create, publisher(), pickling
through process pools, back-pressure that protects a joining subscriber, and
message numbers that never go backwards (issue 9 items 3-4, issue 10 items 1-2).
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import pickle
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import shmkit
from shmkit.broadcast import Broadcast, Publisher, PublisherBusy, Subscriber, publisher, subscribe
from shmkit.errors import Empty, Full, LayoutError
from shmkit.segment import Segment

from .test_broadcast import child

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def ring(name: str) -> Iterator[str]:
    yield name
    Segment.remove(name)


def test_lifecycle_verbs_return_a_broadcast(ring: str) -> None:
    with Broadcast.create(ring, slot_size=32, slots=4) as bc:
        assert type(bc) is Broadcast and not bc.backpressure
        with bc.publisher() as pub:  # never PublisherBusy naming our own pid
            assert isinstance(pub, Publisher) and pub.publish(b"a") == 0
    with Broadcast.open_or_create(ring, slot_size=32, slots=4) as again:
        assert again.published == 1
    with pytest.raises(LayoutError, match="lossy"):
        Broadcast.open_or_create(ring, slot_size=32, slots=4, backpressure=True)
    with pytest.raises(shmkit.AlreadyExists):
        Broadcast.create(ring, slot_size=32, slots=4)


def test_rerunning_a_writer_continues_the_numbering(ring: str) -> None:
    for run in range(3):
        with publisher(ring, slot_size=32, slots=4, backpressure=True) as pub:
            assert pub.backpressure and pub.publish(b"x") == run
    pub = shmkit.publisher(ring)  # no slot_size: open only
    with pytest.raises(PublisherBusy):
        publisher(ring, slot_size=32, slots=4, backpressure=True)
    pub.close()


# ---------------------------------------------------------------------------- pools


def _published(bc: Broadcast) -> int:
    with bc:
        return bc.published


def _next_message(sub: Subscriber) -> tuple[int, bytes]:
    with sub:
        return sub.next_seq, sub.recv(timeout=5.0)


def _publish_one(pub: Publisher) -> int:  # never runs: a Publisher does not pickle
    return pub.publish(b"never")


Pool = Callable[[], Any]
POOLS: dict[str, Pool] = {
    "futures-fork": lambda: cf.ProcessPoolExecutor(1, mp_context=mp.get_context("fork")),
    "futures-spawn": lambda: cf.ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")),
    "mp-pool-spawn": lambda: mp.get_context("spawn").Pool(1),
    "mp-pool-fork": lambda: mp.get_context("fork").Pool(1),
}


def _run(pool: Any, fn: Callable[..., Any], arg: Any) -> Any:
    if isinstance(pool, cf.Executor):
        return pool.submit(fn, arg).result(timeout=60)
    return pool.apply_async(fn, (arg,)).get(timeout=60)


@pytest.mark.parametrize("kind", sorted(POOLS))
def test_every_handle_through_process_pools(ring: str, kind: str) -> None:
    """Broadcast re-opens by name, Subscriber keeps its position, Publisher refuses
    at pickle time with a TypeError naming what to pass; the pool survives."""
    pool = POOLS[kind]()
    try:
        with publisher(ring, slot_size=32, slots=8) as pub, Broadcast.open(ring) as bc:
            sub = subscribe(ring)
            pub.publish(b"m0")
            pub.publish(b"m1")
            assert sub.recv(0) == b"m0"
            assert _run(pool, _published, bc) == 2
            assert _run(pool, _next_message, sub) == (1, b"m1")  # not Empty: the position went
            with pytest.raises(TypeError, match=r"shmkit\.publisher"):
                _run(pool, _publish_one, pub)
            assert _run(pool, _published, bc) == 2  # the pool still works
            assert sub.recv(0) == b"m1"  # the original keeps its own position
            sub.close()
    finally:
        if isinstance(pool, cf.Executor):
            pool.shutdown()
        else:
            pool.close()
            pool.join()


def test_message_and_loan_refuse_pickling(ring: str) -> None:
    with publisher(ring, slot_size=32, slots=4) as pub, subscribe(ring) as sub:
        with pub.loan(4) as buf:
            buf[:] = b"abcd"
            with pytest.raises(TypeError):
                pickle.dumps(pub._loan)
        with sub.recv_view(0) as msg, pytest.raises(TypeError, match="bytes"):
            pickle.dumps(msg)


# ---------------------------------------------------------------------------- issue 9 item 3


@pytest.mark.parametrize("start", ["latest", "oldest", 3])
def test_backpressure_protects_a_joining_subscriber(ring: str, start: str | int) -> None:
    """A subscriber joining after the publisher cached room (none registered) is
    protected from its first message on: the publisher stops (Full) instead of
    lapping it, and the subscriber reads on without Overrun."""
    slots = 4
    with publisher(ring, slot_size=16, slots=slots, backpressure=True) as pub:
        for i in range(5):  # nobody subscribed: the publisher computed room ahead
            pub.publish(i.to_bytes(8, "little"), timeout=0.0)
        with subscribe(ring, start) as sub:  # type: ignore[arg-type]
            first = sub.next_seq
            assert first >= (5 + 1 - slots if start == "oldest" else 3)
            sent = 5
            with pytest.raises(Full):
                while True:
                    pub.publish(sent.to_bytes(8, "little"), timeout=0.0)
                    sent += 1
            assert sent == first + slots  # exactly one ring of room for it
            got = [int.from_bytes(sub.recv(0), "little") for _ in range(sent - first)]
            assert got == list(range(first, sent)) and sub.missed == 0


def test_backpressure_joins_race_with_a_publishing_thread(ring: str) -> None:
    """Subscribers join and leave at random points while a back-pressured
    publisher runs flat out: none is ever overrun."""
    stop, ready = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            with publisher(ring, slot_size=16, slots=2, backpressure=True) as pub:
                ready.set()
                n = 0
                while not stop.is_set():
                    try:
                        pub.publish(n.to_bytes(8, "little"), timeout=0.05)
                        n += 1
                    except Full:
                        continue
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    with Broadcast.create(ring, slot_size=16, slots=2, backpressure=True):
        t = threading.Thread(target=run)
        t.start()
        try:
            assert ready.wait(10)
            for i in range(60):
                with subscribe(ring, "oldest" if i % 2 else "latest") as sub:
                    n = sub.next_seq
                    for _ in range(20):
                        assert int.from_bytes(sub.recv(timeout=5.0), "little") == n  # no Overrun
                        n += 1
        finally:
            stop.set()
            t.join(10)
    assert not errors


# ---------------------------------------------------------------------------- issue 9 item 4


def _new_publisher_continues(ring: str, published: int) -> None:
    with subscribe(ring) as sub:
        assert sub.next_seq == published
        with publisher(ring) as pub:
            assert pub.published == published  # never backwards
            assert pub.publish(b"next") == published
        assert sub.recv(timeout=5.0) == b"next"  # the subscriber waiting at #n gets #n


def test_one_slot_aborted_loan_keeps_the_numbering(ring: str) -> None:
    with publisher(ring, slot_size=16, slots=1) as pub:
        for _ in range(5):
            pub.publish(b"m")
        with pytest.raises(RuntimeError), pub.loan(4) as buf:
            buf[:] = b"half"
            raise RuntimeError("abandon the loan")
    _new_publisher_continues(ring, 5)


@pytest.mark.parametrize("slots", [1, 2])
def test_one_slot_publisher_killed_mid_copy_keeps_the_numbering(ring: str, slots: int) -> None:
    Broadcast.create(ring, slot_size=64, slots=slots).close()
    writer = child("publish", ring, -1, 64, "seq", 0.0, loan=True, die_at=5)
    writer.communicate(timeout=30)  # reaps it and closes its pipes
    assert writer.returncode == -signal.SIGKILL
    _new_publisher_continues(ring, 5)


def test_a_new_publisher_never_lowers_published(ring: str) -> None:
    with publisher(ring, slot_size=16, slots=1) as pub:
        pub.publish(b"a")
        pub.publish(b"b")
        pub._ctl.q[pub._ctl.slot0] = 1  # the only slot looks mid-copy (odd seq)
    with publisher(ring) as again:
        assert again.published == 2
    with subscribe(ring, "oldest") as sub, pytest.raises(Empty):
        assert sub.next_seq == 2  # the odd slot holds nothing whole
        sub.recv(0)
