"""Queue under kill -9: producers and consumers at every crash point, lock holders, random kills.

Survivors keep working within their timeouts, never receive a torn message,
and the queue's capacity and counters come back (RELIABILITY T05, T06).
"""

from __future__ import annotations

import random
import signal
import struct
import subprocess
import threading
import time
import zlib
from collections.abc import Iterator

import pytest

from shmkit.errors import Empty
from shmkit.queue import Queue
from shmkit.segment import Segment

from .helpers import finish, kill, read_line, spawn

pytestmark = pytest.mark.timeout(90)

#: Recovery bound R (two wait slices + 100 ms) with slack for two busy cores.
R = 0.5

# A message: tag, seq, crc32(body), then the body (its size varies with seq).
MESSAGES = """
import struct, zlib
def message(tag, seq):
    body = bytes([(seq * 7 + tag) & 0xFF]) * ((seq * 37) % 700 + 1)
    return struct.pack("<III", tag, seq, zlib.crc32(body)) + body
"""

PRODUCER = (
    MESSAGES
    + """
import sys
from shmkit.queue import Queue
name, tag, n, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
with Queue.open(name) as q:
    print("ready", flush=True)
    sys.stdin.readline()
    i = 0
    while i < n:
        msgs = [message(tag, j) for j in range(i, min(i + batch, n))]
        if batch == 1:
            q.put(msgs[0], timeout=30)
        else:
            q.put_many(msgs, timeout=30)
        i += len(msgs)
print("done", flush=True)
"""
)

CONSUMER = """
import sys
from shmkit.queue import Queue
name, many = sys.argv[1], sys.argv[2] == "many"
with Queue.open(name) as q:
    print("ready", flush=True)
    sys.stdin.readline()
    while True:
        try:
            got = q.get_many(2, timeout=2) if many else [q.get(timeout=2)]
        except Exception as exc:
            print("end", type(exc).__name__, flush=True)
            break
        for m in got:
            print(m.hex(), flush=True)
"""


def message(tag: int, seq: int) -> bytes:
    body = bytes([(seq * 7 + tag) & 0xFF]) * ((seq * 37) % 700 + 1)
    return struct.pack("<III", tag, seq, zlib.crc32(body)) + body


def check(data: bytes) -> tuple[int, int]:
    """(tag, seq) of an intact message; fails the test on a torn one."""
    tag, seq, crc = struct.unpack_from("<III", data)
    assert zlib.crc32(data[12:]) == crc, f"torn message from producer {tag}, seq {seq}"
    assert data == message(tag, seq)
    return tag, seq


@pytest.fixture
def queue(name: str) -> Iterator[Queue[bytes]]:
    q = Queue.create(name, 4096, spin=0.0)
    try:
        yield q
    finally:
        q.close()
        Segment.remove(name)


def _go(*procs: subprocess.Popen[str]) -> None:
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()


def _wait_dead(proc: subprocess.Popen[str], timeout: float = 20.0) -> int:
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        kill(proc)
        raise AssertionError("the armed child never reached its crash point") from None


def _capacity_is_back(q: Queue[bytes]) -> None:
    """Nothing is permanently lost: the whole ring is free and a capacity-sized message fits."""
    stats = q.statistics()
    assert (stats.messages, stats.bytes_used) == (0, 0), stats
    assert stats.waiting_getters == stats.waiting_putters == 0, stats
    q.put(b"c" * q.capacity, timeout=1)
    assert q.get(timeout=1) == b"c" * q.capacity


PUT_POINTS = [
    "queue.put.reserved",
    "queue.put.copying",
    "queue.put.copied",
    "queue.put.counted",
    "queue.put.published",
]


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("point", PUT_POINTS)
def test_producer_killed_mid_put(queue: Queue[bytes], point: str, batch: int) -> None:
    """T05: two producers, one killed at a crash point while holding the lock."""
    n = 240
    armed = spawn(
        PRODUCER,
        queue.name,
        "1",
        str(n),
        str(batch),
        env={"SHMKIT_CRASH_AT": point, "SHMKIT_CRASH_AFTER": "5"},
    )
    other = spawn(PRODUCER, queue.name, "2", str(n), str(batch))
    try:
        assert read_line(armed) == "ready" and read_line(other) == "ready"
        _go(armed, other)
        seen: dict[int, list[int]] = {1: [], 2: []}
        deadline = time.monotonic() + 40
        while len(seen[2]) < n or armed.poll() is None or not queue.empty():
            assert time.monotonic() < deadline, f"stuck: {len(seen[2])} of {n} from the survivor"
            try:
                tag, seq = check(queue.get(timeout=R))
            except Empty:
                continue
            seen[tag].append(seq)
        assert armed.wait(5) == -9  # SIGKILL at the crash point
        assert finish(other).strip() == "done"
        assert seen[2] == list(range(n))  # the survivor lost nothing, in order
        # The killed producer's messages: a gap-free prefix of whole batches.
        m = len(seen[1])
        assert seen[1] == list(range(m)) and m % batch == 0
        if point != "queue.put.copying":  # passed once per put; copying once per record
            assert m == batch * (6 if point == "queue.put.published" else 5), m
        assert queue.statistics().recoveries == 1
        _capacity_is_back(queue)
    finally:
        kill(armed)
        kill(other)


# In store order: head is stored first ("advanced"), then gets ("counted").
GET_POINTS = ["queue.get.locked", "queue.get.copied", "queue.get.advanced", "queue.get.counted"]


@pytest.mark.parametrize("many", [False, True])
@pytest.mark.parametrize(
    ("point", "batch"),
    [(p, False) for p in GET_POINTS]
    # One batch record taken two at a time: head moves only past its end, so
    # the second take dies with gets stored ("counted"), head untouched.
    + [(p, True) for p in GET_POINTS if p != "queue.get.advanced"],
)
def test_consumer_killed_mid_get(queue: Queue[bytes], point: str, batch: bool, many: bool) -> None:
    """T06: 10 messages, two consumers; the first is killed mid-get at a crash point.

    At most the message (or batch) it was taking is lost, and only once it was
    consumed (the head or gets store); nothing is delivered twice; producers go on.
    """
    msgs = [message(0, i) for i in range(10)]
    if batch:
        queue.put_many(msgs)  # one batch record
    else:
        for m in msgs:
            queue.put(m)
    armed = spawn(
        CONSUMER,
        queue.name,
        "many" if many else "one",
        env={"SHMKIT_CRASH_AT": point, "SHMKIT_CRASH_AFTER": "2"},
    )
    try:
        assert read_line(armed) == "ready"
        _go(armed)
        assert _wait_dead(armed) == -9
        out, _ = armed.communicate(timeout=5)
        first = [bytes.fromhex(line) for line in out.split()]
        second = queue.get_many(20, timeout=R)  # the surviving consumer
        got = first + second
        for m in got:
            check(m)
        assert len(set(got)) == len(got), "a message was delivered twice"
        lost = [m for m in msgs if m not in got]
        if point in ("queue.get.advanced", "queue.get.counted"):
            assert len(lost) == (2 if many else 1) and got == [m for m in msgs if m in got]
        else:
            assert lost == [] and got == msgs
        assert queue.statistics().recoveries == 1
        _capacity_is_back(queue)
    finally:
        kill(armed)


HOLDER = """
import sys, time
from shmkit.queue import Queue
q = Queue.open(sys.argv[1])
assert q._lock_until(time.monotonic() + 5)
print("held", flush=True)
time.sleep(600)
"""


def test_lock_holder_killed_unblocks_waiters_in_other_processes(queue: Queue[bytes]) -> None:
    """A process killed while holding the queue's lock: a blocked put and get both proceed."""
    queue.put(b"before")
    holder = spawn(HOLDER, queue.name)
    try:
        assert read_line(holder) == "held"
        results: list[object] = []

        def use() -> None:
            with Queue.open(queue.name) as q:
                q.put(b"after", timeout=10)
                results.append(q.get(timeout=10))

        t = threading.Thread(target=use)
        t.start()
        time.sleep(0.2)
        assert t.is_alive()  # blocked on the lock
        t0 = time.monotonic()
        kill(holder)
        t.join(10)
        assert not t.is_alive()
        assert time.monotonic() - t0 < R
        assert results == [b"before"]
        assert queue.get(timeout=1) == b"after"
        assert queue.statistics().recoveries == 1
        _capacity_is_back(queue)
    finally:
        kill(holder)


def test_a_stopped_holder_is_never_robbed(queue: Queue[bytes]) -> None:
    """T03 for queues: a live (stopped) holder keeps the lock; others time out cleanly."""
    holder = spawn(HOLDER, queue.name)
    try:
        assert read_line(holder) == "held"
        holder.send_signal(signal.SIGSTOP)
        t0 = time.monotonic()
        with pytest.raises(Empty, match="lock stayed held"):
            queue.get(timeout=0.2)
        assert 0.2 <= time.monotonic() - t0 < 0.2 + R
        assert queue.statistics().recoveries == 0
    finally:
        holder.send_signal(signal.SIGCONT)
        kill(holder)


STREAMER = (
    MESSAGES
    + """
import sys
from shmkit.queue import Queue
with Queue.open(sys.argv[1]) as q:
    print("ready", flush=True)
    i = 0
    while True:
        q.put(message(3, i), timeout=30)
        i += 1
"""
)

DRAINER = """
import sys
from shmkit.queue import Queue
with Queue.open(sys.argv[1]) as q:
    print("ready", flush=True)
    while True:
        print(q.get(timeout=30).hex(), flush=True)
"""


@pytest.mark.parametrize("round_", range(3))
def test_random_kills_of_a_streaming_producer_and_consumer(name: str, round_: int) -> None:
    """kill -9 at random instants (real deaths hit C code and the interpreter too)."""
    rng = random.Random(round_)
    with Queue.create(name, 8192, unlink_on_exit=True) as q:
        producer = spawn(STREAMER, name)
        consumer = spawn(DRAINER, name)
        try:
            assert read_line(producer) == "ready" and read_line(consumer) == "ready"
            time.sleep(rng.uniform(0.05, 0.3))
            first, second = (consumer, producer) if round_ % 2 else (producer, consumer)
            first.send_signal(signal.SIGKILL)
            time.sleep(rng.uniform(0.01, 0.1))
            second.send_signal(signal.SIGKILL)
            kill(producer)
            out, _ = consumer.communicate(timeout=10)
            taken = [check(bytes.fromhex(h))[1] for h in out.split()]
            rest = [check(m)[1] for m in q.get_many(10_000, timeout=0.1)] if not q.empty() else []
            seqs = taken + rest
            # In order, no duplicates, and at most one message missing: the one
            # the consumer was taking (or had taken but not printed) when killed.
            assert seqs == sorted(set(seqs))
            if seqs:
                assert seqs[-1] + 1 - len(seqs) <= 1
            stats = q.statistics()
            assert stats.messages == 0 and stats.bytes_used == 0
            q.put(b"still works", timeout=1)
            assert q.get(timeout=1) == b"still works"
        finally:
            kill(producer)
            kill(consumer)


def test_flock_backend_recovers_a_dead_holder(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The flock backend (macOS) detects a holder's death with its dirty word."""
    monkeypatch.setenv("SHMKIT_MUTEX", "flock")
    with Queue.create(name, 4096, spin=0.0, unlink_on_exit=True) as q:
        assert q._mutex.kind == "flock"
        armed = spawn(
            PRODUCER,
            name,
            "1",
            "50",
            "1",
            env={"SHMKIT_CRASH_AT": "queue.put.counted", "SHMKIT_CRASH_AFTER": "3"},
        )
        try:
            assert read_line(armed) == "ready"
            _go(armed)
            assert _wait_dead(armed) == -9
            got = [check(m)[1] for m in q.get_many(100, timeout=R)]
            assert got == [0, 1, 2]
            assert q.statistics().recoveries == 1
            _capacity_is_back(q)
        finally:
            kill(armed)


BIG = 200 * 1024  # above the claim threshold: copied out without the lock

BIG_CONSUMER = """
import sys
from shmkit.queue import Queue
with Queue.open(sys.argv[1]) as q:
    print("ready", flush=True)
    sys.stdin.readline()
    buf = bytearray(1 << 20)
    while True:
        n = q.get_into(buf, timeout=5)
        print(bytes(buf[:8]).hex(), flush=True)
"""


def _big(i: int) -> bytes:
    return struct.pack("<Q", i) + bytes([i]) * (BIG - 8)


@pytest.mark.parametrize(
    "point", ["queue.get.claiming", "queue.get.claim_copying", "queue.get.claim_copied"]
)
def test_consumer_killed_while_copying_a_large_message(name: str, point: str) -> None:
    """T06 for large messages (copied out after unlocking): a dead claimer's space comes
    back within R of a producer noticing, and only the message it was taking is lost."""
    with Queue.create(name, 3 * (BIG + 16), spin=0.0, unlink_on_exit=True) as q:
        for i in range(3):
            q.put(_big(i))
        armed = spawn(BIG_CONSUMER, name, env={"SHMKIT_CRASH_AT": point, "SHMKIT_CRASH_AFTER": "1"})
        try:
            assert read_line(armed) == "ready"
            _go(armed)
            assert _wait_dead(armed) == -9
            out, _ = armed.communicate(timeout=5)
            taken = [struct.unpack("<Q", bytes.fromhex(h))[0] for h in out.split()]
            assert taken == [0]
            # A producer blocked on the space the dead consumer claimed gets it back.
            t0 = time.monotonic()
            q.put(_big(3), timeout=5)
            assert time.monotonic() - t0 < R
            rest = []
            while not q.empty():  # large messages come one per get_many
                rest += [struct.unpack_from("<Q", m)[0] for m in q.get_many(10, timeout=1)]
            if point == "queue.get.claiming":  # died before taking it: nothing lost
                assert rest == [1, 2, 3]
            else:  # it was taken: lost with its consumer, at most once
                assert rest == [2, 3]
            stats = q.statistics()
            assert stats.recoveries == 1 and stats.bytes_used == 0
            _capacity_is_back(q)
        finally:
            kill(armed)


BIG_PRODUCER = """
import struct, sys
from shmkit.queue import Queue
big = int(sys.argv[2])
with Queue.open(sys.argv[1]) as q:
    print("ready", flush=True)
    sys.stdin.readline()
    for i in range(4):
        q.put(struct.pack("<Q", i) + bytes([i]) * (big - 8), timeout=10)
        print("put", i, flush=True)
"""


@pytest.mark.parametrize(
    "point",
    [
        "queue.put.reserving",
        "queue.put.res_copying",
        "queue.put.res_copied",
        "queue.put.counted",
        "queue.put.published",
    ],
)
def test_producer_killed_while_writing_a_large_message(name: str, point: str) -> None:
    """T05 for large messages (written after unlocking): nothing torn or partial is ever
    visible, the dead producer's reservation is dropped, and other producers go on."""
    with Queue.create(name, 3 * (BIG + 16), spin=0.0, unlink_on_exit=True) as q:
        armed = spawn(
            BIG_PRODUCER,
            name,
            str(BIG),
            env={"SHMKIT_CRASH_AT": point, "SHMKIT_CRASH_AFTER": "1"},
        )
        try:
            assert read_line(armed) == "ready"
            _go(armed)
            assert _wait_dead(armed) == -9
            t0 = time.monotonic()
            q.put(_big(7), timeout=5)  # a surviving producer gets the space within R
            assert time.monotonic() - t0 < R
            got = []
            buf = bytearray(BIG)
            while not q.empty():
                n = q.get_into(buf, timeout=1)
                assert n == BIG and buf == _big(struct.unpack_from("<Q", buf)[0])
                got.append(struct.unpack_from("<Q", buf)[0])
            assert got == ([0, 1, 7] if point == "queue.put.published" else [0, 7])
            assert q.statistics().recoveries == 1
            _capacity_is_back(q)
        finally:
            kill(armed)


# ------------------------------------------------------------------ one lock of two

# A process killed inside a fast put (holding only the producers' lock P) or a
# fast get (holding only the consumers' lock C), between the two stores of its
# operation: the C fast paths' own crash points.
ONE_LOCK = """
import sys
from shmkit.queue import Queue
name, side = sys.argv[1], sys.argv[2]
q = Queue.open(name)
if side == "put":  # a record written and counted, tail not stored
    q.put(b"never")
else:  # the first record consumed (head stored), gets not stored
    q.get()
print("survived", flush=True)
"""
ONE_LOCK_POINT = {"put": "queue.put.counted", "get": "queue.get.advanced"}


@pytest.mark.parametrize("side", ["put", "get"])
@pytest.mark.parametrize("first", ["put", "get", "get_many"])
def test_killed_holding_one_of_the_two_locks(queue: Queue[bytes], side: str, first: str) -> None:
    """The next put or get, from either side, repairs; the count of recoveries is one."""
    if not queue._two:
        pytest.skip("one-lock mode (flock backend or a weakly ordered CPU)")
    for i in range(3):
        queue.put(b"m%d" % i)
    child = spawn(ONE_LOCK, queue.name, side, env={"SHMKIT_CRASH_AT": ONE_LOCK_POINT[side]})
    _, err = child.communicate(timeout=10)
    assert child.returncode == -9, err
    t0 = time.monotonic()
    if first == "put":
        queue.put(b"after", timeout=R)
        got = queue.get_many(10, timeout=R)
    elif first == "get":
        got = [queue.get(timeout=R)]
        queue.put(b"after", timeout=R)
        got += queue.get_many(10, timeout=R)
    else:
        got = queue.get_many(10, timeout=R)
        queue.put(b"after", timeout=R)
        got += queue.get_many(10, timeout=R)
    assert time.monotonic() - t0 < 2 * R
    # A dead consumer took "m0" (lost, never repeated); a dead producer published nothing.
    want = [b"m1", b"m2", b"after"] if side == "get" else [b"m0", b"m1", b"m2", b"after"]
    assert got == want
    stats = queue.statistics()
    assert (stats.recoveries, stats.messages, stats.bytes_used) == (1, 0, 0)
    assert stats.total_puts == stats.total_gets
