"""How Broadcast waits: the C scan of the subscriber table, the adaptive spin of
receivers and of a back-pressured publisher, and the publisher's asleep flag that
spares readers a wake-up system call while it only spins."""

from __future__ import annotations

import pickle
import threading
import time
from collections.abc import Iterator

import pytest

from shmkit import _ofd
from shmkit._shm.broadcast_ring import _WRITER_WAITING
from shmkit.broadcast import Broadcast, publisher, subscribe
from shmkit.errors import Full, LayoutError
from shmkit.segment import Segment

from .helpers import kill
from .test_broadcast import child, line, result

#: The receivers' base spin (SL_SPIN in _core/_seqlock.c) and its cap (SL_SPIN_MAX).
BASE, CAP = 20e-6, 250e-6


@pytest.fixture
def cleanup(name: str) -> Iterator[str]:
    yield name
    Segment.remove(name)


def test_the_c_scan_skips_a_dead_subscriber_and_defers_without_ofd(cleanup: str) -> None:
    name = cleanup
    pub = publisher(name, slot_size=64, slots=2, backpressure=True)
    holder = None
    try:
        holder = child("hold_view", name)  # tethered, from the oldest message
        time.sleep(0.2)  # let it subscribe (it blocks in recv_view until #0 exists)
        pub.publish(b"x" * 64)
        assert line(holder)["holding"] == 0  # its cursor stays at 0 while it holds #0
        ring, ctl = pub._ring, pub._ctl
        subs = ctl.params.max_subscribers
        assert ctl.fd is not None
        assert ring.scan(1, 100, subs, ctl.fd) == 0  # alive and behind: waited for
        assert ring.scan(1, 100, subs, -1) == -1  # behind, no OFD fd: Python must probe
        assert ring.scan(0, 100, subs, -1) == 0  # not behind: no probe needed
        with pytest.raises(LayoutError):
            ring.scan(1, 100, 10**6, ctl.fd)  # more entries than the table holds
        kill(holder)
        holder = None
        assert ring.scan(1, 100, subs, ctl.fd) == 100  # dead: never waited for
        assert ctl.scan(ring, 1, 100) == 100
    finally:
        if holder is not None:
            kill(holder)
        pub.close()


def test_a_receivers_spin_grows_for_a_steady_stream_and_resets_when_it_idles(
    cleanup: str,
) -> None:
    """Messages ~0.15 ms apart: the spin doubles past its 20 µs base (never past its
    250 µs cap), so the next ones are caught spinning; a 0.3 s pause puts it back."""
    name = cleanup
    Broadcast.create(name, slot_size=64, slots=1024).close()
    sub = subscribe(name)
    pub = child("publish", name, count=1500, size=64, pace=0.0001, pause_at=1000, pause=0.3)
    try:
        assert line(pub)["ready"] == 0
        budget = sub._ring.spin_budget
        assert budget == pytest.approx(BASE)
        grown = 0.0
        for _ in range(1001):  # through #1000, after which the publisher pauses
            sub.recv(10.0)
            grown = max(grown, sub._ring.spin_budget)
        assert grown > BASE  # a wait that slept < 1 ms doubled the budget
        assert grown <= CAP
        sub.recv(10.0)  # #1001 comes after the pause: a long wait
        assert sub._ring.spin_budget == pytest.approx(BASE)
        for _ in range(1002, 1500):
            sub.recv(10.0)
        assert result(pub)["published"] == 1500
    finally:
        kill(pub)
        sub.close()


def test_a_sleeping_publisher_is_marked_asleep_and_woken_by_the_reader(cleanup: str) -> None:
    """The back-pressured publisher spins, then stores 'asleep' (2) in writer_waiting
    and sleeps; a reader that frees room wakes it at once (within the 50 ms slice it
    would otherwise sleep), and only then makes the wake-up system call."""
    name = cleanup
    pub = publisher(name, slot_size=64, slots=2, backpressure=True)
    sub = subscribe(name)
    try:
        pub.publish(b"0" * 64)
        pub.publish(b"1" * 64)  # the ring is full: #2 needs the reader to take #0
        done: list[float] = []

        def third() -> None:
            pub.publish(b"2" * 64, timeout=5.0)
            done.append(time.monotonic())

        t = threading.Thread(target=third)
        t.start()
        q = pub._ctl.q
        deadline = time.monotonic() + 5.0
        while q[_WRITER_WAITING] != 2 and time.monotonic() < deadline:
            time.sleep(0.001)
        assert q[_WRITER_WAITING] == 2, "the waiting publisher never marked itself asleep"
        # It stores 2 just before it releases the GIL and calls futex_wait: give it
        # time to be inside, 10 ms into its 50 ms slice.
        time.sleep(0.01)
        assert not done
        freed = time.monotonic()
        assert sub.recv(1.0) == b"0" * 64
        t.join(5.0)
        assert done, "the publisher never published #2"
        assert done[0] - freed < 0.02  # woken at once, not ~40 ms later at its slice's end
        assert q[_WRITER_WAITING] == 0
        assert sub.recv(1.0) == b"1" * 64
        assert sub.recv(1.0) == b"2" * 64
    finally:
        sub.close()
        pub.close()


def test_without_ofd_locks_the_publisher_waits_through_the_python_probe(
    monkeypatch: pytest.MonkeyPatch, cleanup: str
) -> None:
    """No OFD locks (ring.make_room answers -1 when a subscriber is behind): the
    Python loop probes liveness by pid, waits for room, and gives Full in time."""
    monkeypatch.setattr(_ofd, "open_for_locks", lambda sysname: None)
    name = cleanup
    pub = publisher(name, slot_size=64, slots=2, backpressure=True)
    sub = subscribe(name)
    try:
        assert pub._ctl.fd is None
        pub.publish(b"0")
        pub.publish(b"1")
        subs = pub._ctl.params.max_subscribers
        assert pub._ring.make_room(2, subs, -1, 0.0, True) == -1
        t0 = time.monotonic()
        with pytest.raises(Full, match="no room for message #2"):
            pub.publish(b"2", timeout=0.2)
        assert 0.15 < time.monotonic() - t0 < 2.0
        assert pub._ctl.q[_WRITER_WAITING] == 0

        def take() -> None:
            time.sleep(0.2)
            sub.recv(1.0)

        t = threading.Thread(target=take)
        t.start()
        pub.publish(b"2", timeout=5.0)  # waits until the thread took #0
        t.join(5.0)
        assert sub.recv(1.0) == b"1" and sub.recv(1.0) == b"2"
    finally:
        sub.close()
        pub.close()


def test_a_subscribers_spin_is_checked_pickled_and_used(cleanup: str) -> None:
    """``Subscriber.spin``: None adapts, a number of seconds (0 to 1) is spun before sleeping."""
    name = cleanup
    pub = publisher(name, slot_size=64, slots=4)
    sub = subscribe(name)
    try:
        assert sub.spin is None
        for bad, exc in (("1", TypeError), (True, TypeError), (-0.1, ValueError), (2, ValueError)):
            with pytest.raises(exc):
                sub.spin = bad  # type: ignore[assignment]
        assert sub.spin is None  # a refused value changes nothing

        sub.spin = 0.25
        copy = pickle.loads(pickle.dumps(sub))
        try:
            assert copy.spin == 0.25
        finally:
            copy.close()

        def cpu_while_waiting(spin: float, delay: float) -> float:
            """CPU seconds this thread spends in a recv that a message ends after ``delay``."""
            sub.spin = spin
            t = threading.Timer(delay, pub.publish, (b"m" * 64,))
            t.start()
            c0 = time.thread_time()
            assert sub.recv(timeout=5.0) == b"m" * 64
            used = time.thread_time() - c0
            t.join()
            return used

        # spin 0 sleeps at once: little CPU over a 5 ms wait; a 0.3 s spin spins
        # through it (a spinner that finds itself descheduled sleeps at once,
        # and this VM's vCPUs are now and then: that can cut one try short)
        assert min(cpu_while_waiting(0.0, 0.005) for _ in range(3)) < 0.002
        assert max(cpu_while_waiting(0.3, 0.005) for _ in range(5)) > 0.003
    finally:
        sub.close()
        pub.close()
