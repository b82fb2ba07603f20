"""Queue against collections.deque (Hypothesis state machine), plus fuzzed control words.

The model knows the ring's exact byte accounting (a record is a 16-byte header
plus its payload padded to 8; a put_many of two or more messages is one batch
record whose payload is a count, the lengths and the bytes, and whose space
comes back only when its last message is taken), so it predicts every Full,
every BufferTooSmall and every MessageTooLarge, not only the order of messages.
Interrupted operations are simulated by stopping a put or get between its
stores, as a killed holder would, and running the repair a dead holder's
successor runs.
"""

from __future__ import annotations

import os
import time
from collections import deque
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from shmkit._mutex import OK
from shmkit._shm import queue_ring as ring
from shmkit.errors import (
    Closed,
    Empty,
    Full,
    LayoutError,
    MessageTooLarge,
    ShmkitError,
)
from shmkit.queue import BufferTooSmall, Queue
from shmkit.segment import Segment
from shmkit.testing import unique_name

pytestmark = pytest.mark.timeout(120)

payloads = st.binary(max_size=200)


def record_size(data: bytes) -> int:
    return 16 + (len(data) + 7) // 8 * 8


def batch_size(batch: list[bytes]) -> int:
    """Bytes a put_many of ``batch`` takes in the ring."""
    if len(batch) < 2:
        return sum(record_size(m) for m in batch)
    return 16 + (4 + 4 * len(batch) + sum(map(len, batch)) + 7) // 8 * 8


class QueueModel(RuleBasedStateMachine):
    """A queue with two handles, driven like a deque."""

    def __init__(self) -> None:
        super().__init__()
        self.model: deque[bytes] = deque()
        self.records: deque[list[int]] = deque()  # [size, messages left] per record
        self.name = unique_name("qm")
        self.queue: Queue[bytes] | None = None
        self.other: Queue[bytes] | None = None
        self.ring = 0
        self.shut = False
        # task_done/join, as queue.Queue counts them: put adds, task_done removes;
        # per handle, what it took and has not marked done (settled when it closes)
        self.unfinished = 0
        self.outstanding = {True: 0, False: 0}

    @initialize(capacity=st.integers(8, 400), checksum=st.booleans())
    def create(self, capacity: int, checksum: bool) -> None:
        self.queue = Queue.create(self.name, capacity, checksum=checksum)
        self.other = Queue.open(self.name)
        self.ring = self.queue.statistics().ring_bytes
        self.cap = self.queue.capacity

    def teardown(self) -> None:
        for q in (self.queue, self.other):
            if q is not None:
                q.close()
        Segment.remove(self.name)

    def handle(self, which: bool) -> Queue[bytes]:
        q = self.queue if which else self.other
        assert q is not None
        return q

    @property
    def used(self) -> int:
        return sum(size for size, _ in self.records)

    def take(self, k: int) -> list[bytes]:
        """The model's get of ``k`` messages (a record's bytes free with its last message)."""
        out = [self.model.popleft() for _ in range(k)]
        while k:
            rec = self.records[0]
            n = min(k, rec[1])
            rec[1] -= n
            k -= n
            if not rec[1]:
                self.records.popleft()
        return out

    @rule(data=payloads, which=st.booleans())
    def put(self, data: bytes, which: bool) -> None:
        q = self.handle(which)
        if len(data) > self.cap:
            with pytest.raises(MessageTooLarge):
                q.put_nowait(data)
        elif self.shut:
            with pytest.raises(Closed):
                q.put_nowait(data)
        elif self.used + record_size(data) > self.ring:
            with pytest.raises(Full):
                q.put_nowait(data)
        else:
            q.put_nowait(data)
            self.model.append(data)
            self.records.append([record_size(data), 1])
            self.unfinished += 1

    @rule(batch=st.lists(payloads, max_size=6), which=st.booleans())
    def put_many(self, batch: list[bytes], which: bool) -> None:
        q = self.handle(which)
        need = batch_size(batch)
        if any(len(m) > self.cap for m in batch) or need > self.ring:
            with pytest.raises(MessageTooLarge):
                q.put_many(batch, timeout=0)
        elif not batch:
            q.put_many(batch, timeout=0)
        elif self.shut:
            with pytest.raises(Closed):
                q.put_many(batch, timeout=0)
        elif self.used + need > self.ring:
            with pytest.raises(Full):
                q.put_many(batch, timeout=0)
        else:
            q.put_many(batch, timeout=0)
            self.model.extend(batch)
            self.records.append([need, len(batch)])
            self.unfinished += len(batch)

    @rule(which=st.booleans())
    def get(self, which: bool) -> None:
        q = self.handle(which)
        if self.model:
            assert q.get_nowait() == self.take(1)[0]
            self.outstanding[which] += 1
        elif self.shut:
            with pytest.raises(Closed):
                q.get_nowait()
        else:
            with pytest.raises(Empty):
                q.get_nowait()

    @rule(k=st.integers(1, 8), which=st.booleans())
    def get_many(self, k: int, which: bool) -> None:
        q = self.handle(which)
        if not self.model:
            with pytest.raises(Closed if self.shut else Empty):
                q.get_many(k, timeout=0)
            return
        want = self.take(min(k, len(self.model)))
        assert q.get_many(k, timeout=0) == want
        self.outstanding[which] += len(want)

    @rule(size=st.integers(0, 256), which=st.booleans())
    def get_into(self, size: int, which: bool) -> None:
        q = self.handle(which)
        buf = bytearray(size)
        if not self.model:
            with pytest.raises(Closed if self.shut else Empty):
                q.get_into(buf, timeout=0)
        elif len(self.model[0]) > size:
            with pytest.raises(BufferTooSmall):
                q.get_into(buf, timeout=0)
        else:
            n = q.get_into(buf, timeout=0)
            assert bytes(buf[:n]) == self.take(1)[0]
            self.outstanding[which] += 1

    @rule()
    def reopen(self) -> None:
        assert self.other is not None
        self.other.close()  # what it took and did not mark done counts as done
        self.unfinished -= min(self.outstanding[False], self.unfinished)
        self.outstanding[False] = 0
        self.other = Queue.open(self.name)

    @rule(which=st.booleans())
    def task_done(self, which: bool) -> None:
        q = self.handle(which)
        if not self.unfinished:
            with pytest.raises(ValueError):
                q.task_done()
            return
        q.task_done()
        self.unfinished -= 1
        for h in (which, not which):  # its own messages first, then the other handle's
            if self.outstanding[h]:
                self.outstanding[h] -= 1
                break
        assert q.join(timeout=0) == (not self.unfinished)

    @precondition(lambda self: not self.shut)
    @rule(data=payloads)
    def interrupted_put(self, data: bytes) -> None:
        """A producer stops after storing ``puts`` but before ``tail``; the next holder repairs."""
        q = self.handle(True)
        if len(data) > self.cap or self.used + record_size(data) > self.ring:
            return
        c = q._c
        tail, puts = c[ring._W_TAIL], c[ring._W_PUTS]
        q._write_record(tail, puts, data, len(data))
        c[ring._W_PUTS] = puts + 1
        q._repair()
        assert (c[ring._W_TAIL], c[ring._W_PUTS]) == (tail, puts)

    @precondition(lambda self: bool(self.model))
    @rule()
    def interrupted_get(self) -> None:
        """A consumer stops after storing ``head`` but before ``gets``: what it took is lost."""
        q = self.handle(False)
        c = q._c
        head = c[ring._W_HEAD]
        hdr = q._peek(head)
        assert hdr is not None
        c[ring._W_HEAD] = head + ((hdr[0] + 23) & -8)  # past the front record
        q._repair()
        self.take(self.records[0][1])  # the rest of the front record is gone
        assert c[ring._W_PUTS] - c[ring._W_GETS] == len(self.model)

    @precondition(lambda self: not self.shut)
    @rule()
    def shutdown(self) -> None:
        self.handle(False).shutdown()
        self.shut = True

    @invariant()
    def counts_match(self) -> None:
        if self.queue is None:
            return
        stats = self.queue.statistics()
        assert stats.messages == self.queue.qsize() == len(self.model)
        assert stats.bytes_used == self.used
        assert self.queue.empty() == (not self.model)
        assert self.queue.full() == (self.ring - self.used < 16)
        assert stats.corrupt_records == 0
        assert stats.waiting_getters == stats.waiting_putters == 0
        assert stats.unfinished_tasks == self.queue.unfinished_tasks == self.unfinished


QueueModel.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestQueueModel = QueueModel.TestCase


# ------------------------------------------------------------------ fuzzed control words

WORDS = [
    ring._W_HEAD,
    ring._W_GETS,
    ring._W_TAIL,
    ring._W_PUTS,
    ring._W_STATE,
    ring._W_WAITERS,
    ring._W_WAITERS + 64,
]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    pokes=st.lists(
        st.tuples(st.sampled_from(WORDS), st.integers(0, (1 << 64) - 1)), min_size=1, max_size=4
    ),
    ring_noise=st.lists(st.tuples(st.integers(0, 4095), st.integers(0, 255)), max_size=20),
)
def test_mutated_control_words_give_only_shmkit_errors(
    pokes: list[tuple[int, int]], ring_noise: list[tuple[int, int]]
) -> None:
    """T19/T22: whatever the words and ring bytes say, operations end in bounded time
    with a result or a shmkit error, and never read or write outside the ring."""
    name = unique_name("qf")
    q = Queue.create(name, 512, spin=0.0)
    try:
        for i in range(6):
            q.put(bytes([i]) * (i * 13))
        c = q._c
        for word, value in pokes:
            c[word] = value
        for at, value in ring_noise:
            q._mm[q._base + at % q._ring] = value
        t0 = time.monotonic()
        ops: list[Any] = [
            lambda: q.get(timeout=0),
            lambda: q.get_many(8, timeout=0),
            lambda: q.get_into(bytearray(600), timeout=0),
            lambda: q.put(b"p" * 40, timeout=0),
            lambda: q.put_many([b"a", b"b"], timeout=0),
            q.statistics,
            q.qsize,
        ]
        for op in ops:
            try:
                result = op()
            except ShmkitError:
                continue
            if isinstance(result, bytes):
                assert len(result) <= q.capacity
        assert time.monotonic() - t0 < 5
    finally:
        q.close()
        Segment.remove(name)


def test_a_fuzz_pass_leaves_no_lock_held() -> None:
    """After a LayoutError the mutex is free again (operations release it on every path)."""
    name = unique_name("ql")
    with Queue.create(name, 64) as q:
        q._c[ring._W_TAIL] = 3
        for _ in range(3):
            with pytest.raises(LayoutError):
                q.put_many([b"x"], timeout=0)
        for mutex in {q._mutex, q._pmutex}:
            assert mutex.try_acquire() == OK  # free, and not left to repair
            mutex.release()
        q.unlink()


def test_random_ring_bytes_never_hang_a_reader() -> None:
    name = unique_name("qr")
    with Queue.create(name, 4096, spin=0.0) as q:
        for i in range(40):
            q.put(os.urandom(i * 3))
        q._mm[q._base : q._base + q._ring] = os.urandom(q._ring)
        t0 = time.monotonic()
        for _ in range(50):
            try:
                q.get_many(100, timeout=0)
            except (Empty, LayoutError):
                break
        assert time.monotonic() - t0 < 2
        q.unlink()
