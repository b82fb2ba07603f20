"""Broadcast: one-process semantics, then fan-out, overrun and torn-read hunts across processes."""

from __future__ import annotations

import json
import math
import mmap
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

from shmkit import _names, _ofd, _platform
from shmkit.broadcast import (
    Broadcast,
    Publisher,
    PublisherBusy,
    Subscriber,
    describe,
    subscribe,
)
from shmkit.errors import (
    Closed,
    Empty,
    Full,
    LayoutError,
    MessageTooLarge,
    NotFound,
    Overrun,
    PeerDied,
)
from shmkit.segment import Segment
from shmkit.sync import Lock, Semaphore

from .helpers import finish, kill, read_line, spawn

Make = Callable[..., Publisher]


@pytest.fixture
def make(name: str) -> Iterator[Make]:
    """Create the test's broadcast (``name``) and always remove it afterwards."""
    made: list[Publisher] = []

    def create(**kw: Any) -> Publisher:
        kw.setdefault("slot_size", 64)
        kw.setdefault("slots", 8)
        with Broadcast.create(name, **kw) as bc:
            pub = bc.publisher()
        made.append(pub)
        return pub

    yield create
    for pub in made:
        pub.close()
    Segment.remove(name)


def child(func: str, *args: Any, env: dict[str, str] | None = None, **kw: Any) -> Any:
    """Run ``tests._broadcast_procs.func(*args, **kw)`` in a new interpreter."""
    code = (
        "import json, sys\n"
        f"from tests._broadcast_procs import {func}\n"
        f"{func}(*json.loads(sys.argv[1]), **json.loads(sys.argv[2]))\n"
    )
    return spawn(code, json.dumps(args), json.dumps(kw), env=env)


def line(proc: subprocess.Popen[str], timeout: float = 20.0) -> Any:
    return json.loads(read_line(proc, timeout))


def result(proc: subprocess.Popen[str], timeout: float = 60.0) -> Any:
    """The child's last JSON line, once it exited 0.

    Drains stdout and stderr while waiting (``communicate``): a child whose
    report outgrows the pipe buffer would otherwise block forever writing it.
    ``read_line`` reads unbuffered, so nothing it left behind is lost here.
    """
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill(proc)
        raise AssertionError(f"child did not finish in {timeout} s") from None
    code = proc.returncode
    assert code == 0, f"child exited {code}: {err[-3000:]}"
    return json.loads(out.strip().splitlines()[-1])


# ---------------------------------------------------------------------- one process


def test_roundtrip_every_buffer_kind(make: Make, name: str) -> None:
    pub = make(slot_size=64)
    with subscribe(name) as sub:
        payloads: list[Any] = [
            b"bytes",
            bytearray(b"bytearray"),
            memoryview(b"memoryview"),
            np.arange(6, dtype=np.uint8).reshape(2, 3),
            np.array([1.5, 2.5], dtype=np.float32),
            b"",
        ]
        for i, p in enumerate(payloads):
            assert pub.publish(p) == i
        got = [sub.recv(0) for _ in payloads]
    assert got[:3] == [b"bytes", b"bytearray", b"memoryview"]
    assert got[3] == bytes(range(6))
    assert np.frombuffer(got[4], np.float32).tolist() == [1.5, 2.5]
    assert got[5] == b""


def test_statistics_and_counters(make: Make, name: str) -> None:
    pub = make(slot_size=32, slots=4)
    sub = subscribe(name)
    for i in range(3):
        pub.publish(bytes([i]))
    sub.recv(0)
    stats = pub.statistics()
    assert stats.published == 3 and stats.oldest == 0
    assert stats.publisher_alive and stats.publisher_state == "attached"
    assert stats.live_subscribers == 1
    (info,) = stats.subscribers
    assert (info.cursor, info.lag, info.received, info.pid) == (1, 2, 1, os.getpid())
    assert sub.lag == 2 and sub.received == 1 and sub.published == 3
    assert sub.statistics() == pub.statistics()
    sub.close()
    assert pub.statistics().live_subscribers == 0


def test_recv_into(make: Make, name: str) -> None:
    pub = make(slot_size=16)
    with subscribe(name) as sub:
        pub.publish(b"0123456789")
        small = bytearray(4)
        with pytest.raises(MessageTooLarge):
            sub.recv_into(small, 0)
        assert sub.next_seq == 0  # not consumed
        arr = np.zeros(16, np.uint8)
        assert sub.recv_into(arr, 0) == 10
        assert arr[:10].tobytes() == b"0123456789"
        with pytest.raises(TypeError):
            sub.recv_into(b"readonly", 0)
        pub.publish(b"xy")
        assert sub.recv_into(memoryview(arr.data), 0.0) == 2


def test_view_valid_then_overwritten(make: Make, name: str) -> None:
    pub = make(slot_size=16, slots=2)
    with subscribe(name) as sub:
        pub.publish(b"first")
        with sub.recv_view(0) as msg:
            assert bytes(msg) == b"first" and msg.seq == 0 and msg.valid
            assert msg.data.readonly
        assert sub.received == 1
        pub.publish(b"second")
        msg = sub.recv_view(0)
        arr = msg.array("u1")
        assert not arr.flags.writeable
        pub.publish(b"x")
        pub.publish(b"y")  # overwrites message 1's slot while the view is held
        assert not msg.valid
        with pytest.raises(Overrun) as exc:
            msg.validate()
        assert exc.value.missed == 1
        msg.release()
        assert sub.missed == 1 and sub.received == 1
        # The same check on leaving a with block.
        pub.publish(b"z")
        with pytest.raises(Overrun), sub.recv_view(0, latest=True) as msg2:
            assert msg2.seq == 4
            pub.publish(b"1")
            pub.publish(b"2")
        assert sub.statistics().subscribers[0].missed == sub.missed


def test_view_exception_in_block_is_not_masked(make: Make, name: str) -> None:
    pub = make()
    with subscribe(name) as sub:
        pub.publish(b"a")
        with pytest.raises(KeyError), sub.recv_view(0):
            for _ in range(20):
                pub.publish(b"b")
            raise KeyError("mine")


def test_loan_memoryview_numpy_and_abort(make: Make, name: str) -> None:
    pub = make(slot_size=64, slots=4)
    with subscribe(name) as sub:
        with pub.loan(5) as buf:
            buf[:] = b"hello"
        assert sub.recv(0) == b"hello"
        with pub.loan(dtype=np.float32, shape=(2, 2)) as arr:
            assert arr.shape == (2, 2) and arr.flags.writeable
            arr[:] = [[1, 2], [3, 4]]
        assert np.frombuffer(sub.recv(0), np.float32).tolist() == [1, 2, 3, 4]
        with pub.loan(dtype="u2") as whole:
            assert whole.shape == (32,)
        assert len(sub.recv(0)) == 64
        with pytest.raises(ZeroDivisionError), pub.loan() as buf:
            buf[:3] = b"bad"
            raise ZeroDivisionError
        assert pub.published == 3 and pub.statistics().aborted_loans == 1
        with pytest.raises(Empty):
            sub.recv(0)
        loan = pub.loan()
        loan.buffer[:2] = b"ok"
        assert loan.commit(2) == 3
        with pytest.raises(RuntimeError):
            loan.commit()
        assert sub.recv(0) == b"ok"


def test_loan_misuse(make: Make) -> None:
    pub = make(slot_size=8)
    with pytest.raises(MessageTooLarge):
        pub.loan(9)
    with pytest.raises(MessageTooLarge):
        pub.loan(dtype="f8", shape=(2,))
    with pytest.raises(TypeError):
        pub.loan(dtype=object)
    with pytest.raises(TypeError):
        pub.loan(shape=(2,))
    loan = pub.loan(4)
    with pytest.raises(RuntimeError):
        pub.publish(b"x")
    with pytest.raises(RuntimeError):
        pub.loan()
    with pytest.raises(MessageTooLarge):
        loan.commit(5)
    loan.abort()
    loan.abort()  # idempotent
    assert pub.publish(b"x") == 0


@pytest.mark.parametrize("policy", ["oldest", "newest"])
def test_overrun_reports_exact_loss(make: Make, name: str, policy: Any) -> None:
    pub = make(slots=4)
    with subscribe(name, on_overrun=policy) as sub:
        for i in range(11):
            pub.publish(i.to_bytes(8, "little"))
        with pytest.raises(Overrun) as exc:
            sub.recv(0)
        resume = 7 if policy == "oldest" else 10  # slots 7..10 survive
        assert exc.value.missed == resume
        got = []
        while True:
            try:
                got.append(int.from_bytes(sub.recv(0), "little"))
            except Empty:
                break
        assert got == list(range(resume, 11))
        assert sub.received + sub.missed == 11 and sub.overruns == 1
        (info,) = sub.statistics().subscribers
        assert (info.missed, info.overruns, info.received) == (resume, 1, 11 - resume)


def test_overrun_while_publisher_writes_the_oldest_slot(make: Make, name: str) -> None:
    pub = make(slots=4)
    with subscribe(name, "oldest") as sub:
        for i in range(4):
            pub.publish(bytes([i]))
        loan = pub.loan(1)  # message 4 is being written over message 0
        with pytest.raises(Overrun) as exc:
            sub.recv(0)
        assert exc.value.missed == 1
        assert sub.recv(0) == b"\x01"
        loan.abort()


def test_recv_latest_skips_and_never_overruns(make: Make, name: str) -> None:
    pub = make(slots=4)
    with subscribe(name) as sub:
        for i in range(10):
            pub.publish(bytes([i]))
        assert sub.recv_latest(0) == b"\x09"
        assert (sub.skipped, sub.missed, sub.received) == (9, 0, 1)
        with pytest.raises(Empty):
            sub.recv_latest(0)
        pub.publish(b"\x0a")
        assert sub.recv_latest(0) == b"\x0a"
        buf = bytearray(1)
        pub.publish(b"\x0b")
        pub.publish(b"\x0c")
        assert sub.recv_into(buf, 0, latest=True) == 1 and buf == b"\x0c"
        pub.publish(b"\x0d")
        with sub.recv_view(0, latest=True) as msg:
            assert bytes(msg) == b"\x0d"


def test_start_positions(make: Make, name: str) -> None:
    pub = make(slots=4)
    for i in range(6):
        pub.publish(bytes([i]))
    with subscribe(name) as latest, subscribe(name, "oldest") as oldest, subscribe(name, 3) as at:
        assert (latest.next_seq, oldest.next_seq, at.next_seq) == (6, 2, 3)
        assert oldest.recv(0) == b"\x02" and at.recv(0) == b"\x03"
        with pytest.raises(Empty):
            latest.recv(0)
    with pytest.raises(ValueError):
        subscribe(name, 7)
    with pytest.raises(ValueError):
        subscribe(name, "newest")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        subscribe(name, on_overrun="latest")  # type: ignore[arg-type]


def test_too_large_message_leaves_ring_untouched(make: Make, name: str) -> None:
    pub = make(slot_size=8, slots=2)
    pub.publish(b"12345678")
    before = bytes(pub._ctl.mv)
    with pytest.raises(MessageTooLarge):
        pub.publish(b"123456789")
    with pytest.raises(MessageTooLarge):
        pub.publish(np.zeros(3, np.float32))
    with pytest.raises(TypeError):
        pub.publish(np.zeros((4, 4), np.uint8)[:, :1])  # not contiguous
    with pytest.raises(TypeError):
        pub.publish("text")
    assert bytes(pub._ctl.mv) == before


@pytest.mark.parametrize(
    ("kw", "error"),
    [
        ({"slot_size": 0}, ValueError),
        ({"slot_size": -1}, ValueError),
        ({"slot_size": True}, TypeError),
        ({"slot_size": "64"}, TypeError),
        ({"slot_size": 1 << 40}, ValueError),
        ({"slots": 0}, ValueError),
        ({"slots": 2.0}, TypeError),
        ({"max_subscribers": 0}, ValueError),
        ({"mode": 0o400}, ValueError),
    ],
)
def test_create_rejects_bad_arguments(name: str, kw: dict[str, Any], error: type) -> None:
    args: dict[str, Any] = {"slot_size": 64, "slots": 4, **kw}
    with pytest.raises(error):
        Broadcast.create(name, **args)
    with pytest.raises(NotFound):
        Broadcast.open(name)


@pytest.mark.parametrize("timeout", [-1, math.nan, "1", True])
def test_bad_timeouts(make: Make, name: str, timeout: Any) -> None:
    make()
    with subscribe(name) as sub:
        with pytest.raises((TypeError, ValueError)):
            sub.recv(timeout)
        with pytest.raises((TypeError, ValueError)):
            sub.recv_view(timeout)


def test_closed_handles_raise_closed(make: Make, name: str) -> None:
    pub = make()
    sub = subscribe(name)
    bc = Broadcast.open(name)
    pub.close()
    sub.close()
    bc.close()
    for h in (pub, sub, bc):
        h.close()  # idempotent
        assert h.closed and "closed" in repr(h)
        with pytest.raises(Closed):
            h.statistics()
    with pytest.raises(Closed):
        pub.publish(b"x")
    with pytest.raises(Closed):
        pub.loan()
    with pytest.raises(Closed):
        sub.recv(0)
    with pytest.raises(Closed):
        bc.subscribe()


def test_opening_other_kinds_is_a_layout_error(name: str) -> None:
    with Lock.create(name):
        with pytest.raises(LayoutError, match="not a broadcast"):
            Broadcast.open(name)
        with pytest.raises(LayoutError):
            subscribe(name)
        Segment.remove(name)
    sem = Semaphore.create(name)  # (its with-block would acquire it)
    try:
        with pytest.raises(LayoutError):
            Broadcast.open(name)
    finally:
        sem.close()
        Segment.remove(name)
    with Segment.create(name, 4096):
        with pytest.raises(LayoutError):
            Broadcast.open(name)
        Segment.remove(name)
    try:
        from shmkit.queue import Queue  # built in parallel; absent in early trees
    except ImportError:
        return
    q = Queue.create(name, 4096)
    try:
        with pytest.raises(LayoutError):
            Broadcast.open(name)
    finally:
        q.close()
        Segment.remove(name)


def _poke(name: str, offset: int, data: bytes) -> None:
    """Overwrite bytes of a segment behind shmkit's back (raw mapping)."""
    path = os.path.join(_platform.SHM_DIR or "/dev/shm", _names.system_name(name).lstrip("/"))
    with open(path, "r+b") as f, mmap.mmap(f.fileno(), 0) as mm:
        mm[offset : offset + len(data)] = data


@pytest.mark.skipif(_platform.SHM_DIR is None, reason="needs /dev/shm")
def test_corrupt_segments_are_layout_errors(make: Make, name: str) -> None:
    pub = make()
    header = pub._ctl.seg.header if pub._ctl.seg else None
    assert header is not None
    body, params_off = header.body_off, 128 + len(name)
    pub.close()
    _poke(name, params_off + 8, (1 << 50).to_bytes(8, "little"))  # slot size: header CRC fails
    with pytest.raises(LayoutError):
        Broadcast.open(name)
    Segment.remove(name)
    make().close()
    _poke(name, body, (1 << 63).to_bytes(8, "little"))  # published count
    with pytest.raises(LayoutError, match="published"):
        subscribe(name)
    _poke(name, body, bytes(8))
    _poke(name, body + 320, (7).to_bytes(8, "little"))  # subscriber entry state
    with pytest.raises(LayoutError, match="subscriber entry"):
        Broadcast.open(name)
    _poke(name, 0, b"NOTSHMKT")
    with pytest.raises(LayoutError):
        Broadcast.open(name)


def test_not_found(name: str) -> None:
    with pytest.raises(NotFound):
        Broadcast.open(name)
    with pytest.raises(NotFound):
        subscribe(name)


def test_one_publisher_at_a_time(make: Make, name: str) -> None:
    pub = make()
    pub.publish(b"a")
    bc = Broadcast.open(name)
    t0 = time.monotonic()
    with pytest.raises(PublisherBusy, match=f"pid {os.getpid()}"):
        bc.publisher(timeout=0.1)
    assert time.monotonic() - t0 >= 0.1
    pub.close()
    with bc.publisher() as pub2:
        assert pub2.publish(b"b") == 1
        assert pub2.statistics().publisher_attaches == 2
    bc.close()


def test_pickle_reopens_by_name(make: Make, name: str) -> None:
    """A Broadcast re-opens by name; a Subscriber keeps its position; a Publisher refuses."""
    pub = make()
    bc = pickle.loads(pickle.dumps(Broadcast.open(name)))
    assert type(bc) is Broadcast and bc.name == name
    sub = subscribe(name)
    pub.publish(b"m0")
    pub.publish(b"m1")
    assert sub.recv(0) == b"m0"
    sub2 = pickle.loads(pickle.dumps(sub))
    assert isinstance(sub2, Subscriber) and sub2._entry != sub._entry
    assert sub2.next_seq == sub.next_seq == 1 and sub2.recv(0) == b"m1"
    with pytest.raises(TypeError, match=rf"shmkit\.publisher\('{name}'\)"):
        pickle.dumps(pub)
    for h in (bc, sub, sub2):
        h.close()
    pub.close()


def test_describe_is_json_on_a_readonly_handle(make: Make, name: str) -> None:
    pub = make(slots=3, backpressure=True)
    pub.publish(b"x")
    with subscribe(name):
        seg = Segment._open_object(name, None, readonly=True, attach=False)
        try:
            stats = describe(seg)
        finally:
            seg.close()
    text = json.dumps(stats)
    assert '"published": 1' in text and stats["backpressure"] is True
    assert stats["live_subscribers"] == 1 and stats["publisher_state"] == "attached"


@pytest.mark.parametrize("timeout", [0, 0.05, 0.2])
def test_recv_timeout_accuracy(make: Make, name: str, timeout: float) -> None:
    make()
    with subscribe(name) as sub:
        t0 = time.monotonic()
        with pytest.raises(Empty):
            sub.recv(timeout)
        elapsed = time.monotonic() - t0
    assert timeout <= elapsed <= timeout + 0.1


def test_close_from_another_thread_wakes_recv(make: Make, name: str) -> None:
    make()
    sub = subscribe(name)
    seen: list[BaseException] = []

    def wait() -> None:
        try:
            sub.recv(5.0)
        except BaseException as exc:
            seen.append(exc)

    t = threading.Thread(target=wait)
    t.start()
    time.sleep(0.1)
    t0 = time.monotonic()
    sub.close()
    t.join(2.0)
    assert not t.is_alive() and time.monotonic() - t0 < 0.2
    assert isinstance(seen[0], Closed)


def test_publisher_close_raises_peer_died_after_drain(make: Make, name: str) -> None:
    pub = make()
    sub = subscribe(name)
    pub.publish(b"last")
    assert sub.publisher_alive
    pub.close()
    assert not sub.publisher_alive
    assert sub.recv(1.0) == b"last"  # what was published is still delivered
    t0 = time.monotonic()
    with pytest.raises(PeerDied, match="closed"):
        sub.recv(5.0)
    assert time.monotonic() - t0 < 0.2
    assert sub.statistics().publisher_state == "closed"
    sub.close()


def test_backpressure_waits_for_the_slowest_tethered_subscriber(make: Make, name: str) -> None:
    pub = make(slots=2, backpressure=True)
    slow = subscribe(name)
    free = subscribe(name, tethered=False)
    pub.publish(b"0")
    pub.publish(b"1")
    t0 = time.monotonic()
    with pytest.raises(Full, match=f"pid {os.getpid()} at #0"):
        pub.publish(b"2", timeout=0.1)
    assert 0.1 <= time.monotonic() - t0 < 0.3
    assert slow.recv(0) == b"0"
    pub.publish(b"2", timeout=0)
    # A held view pins its slot in back-pressure mode.
    msg = slow.recv_view(0)
    with pytest.raises(Full):
        pub.publish(b"3", timeout=0.05)
    msg.release()
    pub.publish(b"3", timeout=0)
    assert slow.recv(0) == b"2"
    with pytest.raises(Overrun):
        free.recv(0)  # untethered: overwritten without waiting
    # A blocked publisher is released when the laggard closes.
    threading.Timer(0.1, slow.close).start()
    pub.publish(b"4", timeout=2.0)
    pub.publish(b"5", timeout=2.0)
    free.close()


def test_checksum_mode(make: Make, name: str) -> None:
    pub = make(slot_size=32, slots=4, checksum=True)
    sub = subscribe(name)
    assert pub.params.checksum
    pub.publish(b"checked")
    with pub.loan(4) as buf:
        buf[:] = b"loan"
    assert sub.recv(0) == b"checked"
    with sub.recv_view(0) as msg:
        assert bytes(msg) == b"loan"
    pub.publish(b"into")
    buf2 = bytearray(8)
    assert sub.recv_into(buf2, 0) == 4
    # A payload corrupted behind the protocol's back is never delivered.
    pub.publish(b"victim")
    off = pub._ctl.slot0 * 8 + ((3 % 4) * pub._ctl.stride_q) * 8 + 64
    pub._ctl.mv[off] ^= 0xFF
    with pytest.raises(LayoutError):
        sub.recv(0)
    sub.close()


def test_without_ofd_locks_uses_the_mutex_and_pids(
    monkeypatch: pytest.MonkeyPatch, make: Make, name: str
) -> None:
    monkeypatch.setattr(_ofd, "open_for_locks", lambda sysname: None)
    pub = make()
    with subscribe(name) as sub, subscribe(name, "oldest") as sub2:
        assert sub._bc._ctl.fd is None and sub._entry != sub2._entry
        pub.publish(b"x")
        assert sub.recv(0) == b"x" and sub.publisher_alive
        assert pub.statistics().live_subscribers == 2
        with pytest.raises(PublisherBusy):
            Broadcast.open(name).publisher()
    pub.close()
    with Broadcast.open(name) as bc, bc.publisher() as again:
        again.publish(b"y")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_fork_retires_inherited_handles(make: Make, name: str) -> None:
    pub = make()
    sub = subscribe(name)
    pid = os.fork()
    if pid == 0:  # child: inherited handles are closed, shared state untouched
        code = 0 if pub.closed and sub.closed else 1
        try:
            pub.publish(b"x")
            code = 2
        except Closed:
            pass
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert pub.publish(b"parent") == 0 and sub.recv(0) == b"parent"
    sub.close()


# ---------------------------------------------------------------------- processes


def test_fanout_to_processes_is_lossless_with_backpressure(make: Make, name: str) -> None:
    pub = make(slot_size=256, slots=16, backpressure=True)
    kids = [child("receive", name, until=3000, mode=mode, kind="seq") for mode in ("bytes", "view")]
    try:
        for k in kids:
            assert line(k)["ready"] == 0
        for i in range(3000):
            pub.publish(i.to_bytes(8, "little") * 32, timeout=10)
        outs = [result(k) for k in kids]
    finally:
        for k in kids:
            kill(k)
    for out in outs:
        assert out["count"] == 3000 and out["ordered"] and out["torn"] == 0
        assert out["missed"] == 0 and out["head"] == [0, 1, 2]


def test_t26_slow_subscriber_late_joiner_fast_subscribers(make: Make, name: str) -> None:
    """RELIABILITY T26: exact loss for the slow one, late joiner at latest, fast lossless."""
    total = 4000
    pub = make(slot_size=64, slots=32, backpressure=True)
    fast = [child("receive", name, until=total, mode=m) for m in ("bytes", "into")]
    slow = child("receive", name, until=total, tethered=False, sleep=0.01, timeout=5.0)
    kids = [*fast, slow]
    try:
        for k in kids:
            line(k)
        for i in range(total // 2):
            pub.publish(i.to_bytes(8, "little") * 8, timeout=10)
        joined_after = pub.published
        late = child("receive", name, until=total)
        kids.append(late)
        start = line(late)["ready"]
        for i in range(total // 2, total):
            pub.publish(i.to_bytes(8, "little") * 8, timeout=10)
        outs = [result(k) for k in kids]
    finally:
        for k in kids:
            kill(k)
    for out in outs[:2]:
        assert out["count"] == total and out["ordered"] and out["missed"] == 0
    s = outs[2]
    assert s["torn"] == 0 and s["ordered"] and s["overruns"]
    assert s["accounted"]  # delivered + reported-missed cover every number exactly once
    assert s["received"] + s["missed"] == s["next"] - s["first"]
    assert s["count"] == s["received"]
    j = outs[3]
    assert start >= joined_after and j["head"][0] == start
    assert j["count"] == total - start and j["ordered"] and j["missed"] == 0


def test_lossy_fanout_accounts_for_every_message(make: Make, name: str) -> None:
    total = 20000
    pub = make(slot_size=64, slots=16)
    kids = [
        child("receive", name, until=total, mode="bytes", timeout=2.0),
        child("receive", name, until=total, mode="view", sleep=0.0005, timeout=2.0),
    ]
    try:
        for k in kids:
            line(k)
        for i in range(total):
            pub.publish(i.to_bytes(8, "little") * 8)
        outs = [result(k) for k in kids]
    finally:
        for k in kids:
            kill(k)
    for out in outs:
        assert out["torn"] == 0 and out["ordered"]
        assert out["received"] + out["missed"] == out["next"] - out["first"]
        assert out["accounted"] and sum(m for _, m, _ in out["overruns"]) == out["missed"]
        assert out["last"] == total - 1 or "empty_at" in out


def test_torn_read_hunt_short(make: Make, name: str) -> None:
    """The issue's torn-read hunt, scaled to a default run: 1 MiB frames, 3 s, 3 readers."""
    size = 1 << 20
    make(slot_size=size, slots=4).close()  # leave the publisher role to the child
    writer = child("publish", name, -1, size, "frame")
    readers = []
    try:
        line(writer)
        readers = [
            child("receive", name, until=1 << 40, kind="frame", mode=m, timeout=3.0)
            for m in ("bytes", "into", "view")
        ]
        for r in readers:
            line(r)
        time.sleep(3.0)
        kill(writer)
        outs = [result(r) for r in readers]
    finally:
        for p in [*readers, writer]:
            kill(p)
    total = sum(o["count"] for o in outs)
    overruns = sum(len(o["overruns"]) for o in outs)
    print(f"torn-hunt short: {total} frames checked, {overruns} overruns, torn 0 expected")
    for o in outs:
        assert o["torn"] == 0 and o["ordered"] and o["count"] > 50
        assert o["deaths"] >= 1  # the killed writer was reported


def test_blocked_reader_wakes_on_publish_quickly(make: Make, name: str) -> None:
    pub = make()
    kid = child("receive", name, until=1, timeout=10.0)
    try:
        line(kid)
        time.sleep(0.3)  # the child is asleep on the futex by now
        t0 = time.monotonic()
        pub.publish(b"\0" * 8)
        out = result(kid)
    finally:
        kill(kid)
    assert out["count"] == 1
    assert out["t_end"] - t0 < 0.1  # futex wake-up, not a polling slice


def test_ctrl_c_interrupts_a_blocked_recv(make: Make, name: str) -> None:
    make()
    kid = child("block_forever", name)
    try:
        line(kid)
        time.sleep(0.3)
        t0 = time.monotonic()
        kid.send_signal(signal.SIGINT)
        out = line(kid, 5.0)
        elapsed = time.monotonic() - t0
        finish(kid, 5.0)
    finally:
        kill(kid)
    assert out["interrupted"] > 0.2 and elapsed < 0.2


def test_bench_frames_quick_smoke(capsys: pytest.CaptureFixture[str]) -> None:
    """``shmkit bench frames --quick`` runs end to end (shmkit rows and one peer)."""
    from shmkit._bench import frames

    code = frames.main(["--quick", "--only", "frames,small", "--peers", "tutorial", "--no-nt"])
    out = capsys.readouterr().out
    assert code == 0
    assert "shmkit publish -> recv_view" in out and "posix_ipc tutorial" in out
    assert "failed" not in out


@pytest.mark.slow
def test_torn_hunt_full_script() -> None:
    """The issue's full hunt: 6 MiB frames, 10 s, 3 readers (scripts/torn_hunt_broadcast.py)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.path.join(root, "src"))
    proc = subprocess.run(
        [sys.executable, os.path.join(root, "scripts", "torn_hunt_broadcast.py")],
        capture_output=True,
        text=True,
        timeout=100,
        env=env,
        check=False,
    )
    print(proc.stdout)
    assert proc.returncode == 0, proc.stdout + proc.stderr
