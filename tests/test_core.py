"""The C core: each primitive on its own, and the Lock's single-call critical sections."""

from __future__ import annotations

import math
import mmap
import threading
import time
from contextlib import closing

import pytest

import shmkit
from shmkit import Lock, _core
from shmkit.errors import Closed, LayoutError, NotOwner

from .helpers import finish, kill, read_line, spawn


@pytest.fixture
def region() -> _core.Region:
    return _core.Region(mmap.mmap(-1, 4096))


# ---------------------------------------------------------------- atomics


def test_atomics_load_store_cas_add(region: _core.Region) -> None:
    region.store64(8, 2**64 - 1)
    assert region.load64(8) == 2**64 - 1
    assert region.cas64(8, 2**64 - 1, 5) is True
    assert region.cas64(8, 4, 6) is False
    assert region.load64(8) == 5
    assert region.add64(8, 3) == 5
    assert region.load64(8) == 8
    assert region.add64(8, -9) == 8  # wraps mod 2**64
    assert region.load64(8) == 2**64 - 1
    region.store32(4, 7)
    assert region.load32(4) == 7
    assert region.cas32(4, 7, 9) is True
    assert region.add32(4, 1) == 9
    assert region.load32(4) == 10
    with pytest.raises(OverflowError):
        region.store32(4, 2**32)


@pytest.mark.parametrize(
    ("method", "args"),
    [
        ("load64", (4096,)),
        ("load64", (4090,)),
        ("load64", (-8,)),
        ("load64", (4,)),  # unaligned
        ("load32", (4094,)),
        ("store64", (4096, 1)),
        ("cas64", (2**40, 0, 1)),
        ("add32", (4096, 1)),
        ("futex_wake", (4096,)),
        ("copy_out", (4000, 200)),
        ("copy_out", (0, -1)),
        ("copy_in", (4095, b"ab")),
    ],
)
def test_every_access_is_bounds_checked(
    region: _core.Region, method: str, args: tuple[int, ...]
) -> None:
    with pytest.raises(LayoutError):
        getattr(region, method)(*args)


def test_copies(region: _core.Region) -> None:
    region.copy_in(100, b"hello")
    assert region.copy_out(100, 5) == b"hello"
    big = bytes(range(256)) * 16
    region.copy_in(0, big[:4096])
    assert region.copy_out(0, 4096) == big[:4096]


def test_closed_region_raises_closed(region: _core.Region) -> None:
    region.close()
    assert region.closed
    with pytest.raises(Closed):
        region.load64(0)


def test_region_pins_the_mapping() -> None:
    mm = mmap.mmap(-1, 4096)
    region = _core.Region(mm)
    with pytest.raises(BufferError):
        mm.close()
    region.close()
    mm.close()


def test_fence_and_timeout_contract() -> None:
    _core.fence()
    assert _core.check_timeout(None) is None
    assert _core.check_timeout(0) == 0.0
    assert _core.check_timeout(1.5) == 1.5
    for bad in (-1, -0.001, math.nan):
        with pytest.raises(ValueError):
            _core.check_timeout(bad)
    for wrong in ("1", True, b"1", [1]):
        with pytest.raises(TypeError):
            _core.check_timeout(wrong)


# ---------------------------------------------------------------- futex


def test_futex_wait_times_out_on_the_monotonic_clock(region: _core.Region) -> None:
    t0 = time.monotonic()
    assert region.futex_wait(0, 0, 0.1) is False
    assert 0.09 <= time.monotonic() - t0 < 0.5


def test_futex_wait_returns_at_once_when_the_word_differs(region: _core.Region) -> None:
    region.store32(0, 1)
    t0 = time.monotonic()
    assert region.futex_wait(0, 0, 5) is True
    assert time.monotonic() - t0 < 0.5


@pytest.mark.skipif(not _core.HAVE_FUTEX, reason="no futex on this platform (polling fallback)")
def test_futex_wake_reaches_another_process(name: str) -> None:
    seg = shmkit.Segment.create(name, 4096)
    try:
        child = spawn(
            """
            import sys, time, shmkit
            from shmkit import _core
            seg = shmkit.Segment.open(sys.argv[1])
            r = _core.Region(seg.mmap)
            off = len(seg.mmap) - 64  # a word in the user's area, past the header
            print("ready", flush=True)
            t0 = time.monotonic()
            woke = r.futex_wait(off, 0, 10)
            print(woke, r.load32(off), round(time.monotonic() - t0, 3), flush=True)
            r.close(); seg.close()
            """,
            name,
        )
        assert read_line(child) == "ready"
        time.sleep(0.2)
        region = _core.Region(seg.mmap)
        off = len(seg.mmap) - 64
        region.store32(off, 1)
        region.futex_wake(off)
        woke, value, took = read_line(child).split()
        assert woke == "True" and value == "1" and float(took) < 5
        finish(child)
        region.close()
    finally:
        seg.close()
        seg.unlink()


def test_futex_wait_notices_ctrl_c(region: _core.Region) -> None:
    """A signal handler's exception ends a long wait within a slice."""
    import signal

    def boom(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGALRM, boom)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.1)
        t0 = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            region.futex_wait(0, 0, 10)
        assert time.monotonic() - t0 < 1.0
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


# ---------------------------------------------------------------- mutex


def test_mutex_try_acquire_release_and_not_owner(region: _core.Region) -> None:
    _core.Mutex.init(region, 64)
    m = _core.Mutex(region, 64)
    assert m.try_acquire() == _core.OK
    assert m.held
    assert m.try_acquire() == _core.BUSY
    errors: list[BaseException] = []

    def other() -> None:
        try:
            m.release()
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=other)
    t.start()
    t.join(5)
    assert len(errors) == 1 and isinstance(errors[0], NotOwner)
    assert isinstance(errors[0], RuntimeError)
    m.release()
    assert not m.held
    assert m.acquire(timeout=0) == _core.OK
    assert m.release_if_held() is True
    assert m.release_if_held() is False


def test_mutex_context_manager_and_timed_acquire(region: _core.Region) -> None:
    _core.Mutex.init(region, 128)
    m = _core.Mutex(region, 128)
    with m:
        assert m.held
        got: list[int] = []
        t = threading.Thread(target=lambda: got.append(_core.Mutex(region, 128).acquire(0.1)))
        t0 = time.monotonic()
        t.start()
        t.join(5)
        assert got == [_core.BUSY]
        assert 0.09 <= time.monotonic() - t0 < 1.0
    assert not m.held


def test_mutex_offset_checked(region: _core.Region) -> None:
    with pytest.raises(LayoutError):
        _core.Mutex(region, 4064)  # 64-byte area past the end
    with pytest.raises(LayoutError):
        _core.Mutex(region, 32)  # not 64-aligned
    with pytest.raises(LayoutError):
        _core.Mutex.init(region, 4096)


def test_mutex_reports_owner_died(name: str) -> None:
    seg = shmkit.Segment.create(name, 4096)
    try:
        region = _core.Region(seg.mmap)
        off = len(seg.mmap) - 64
        _core.Mutex.init(region, off)
        child = spawn(
            """
            import sys, time, shmkit
            from shmkit import _core
            seg = shmkit.Segment.open(sys.argv[1])
            m = _core.Mutex(_core.Region(seg.mmap), len(seg.mmap) - 64)
            print(m.try_acquire(), flush=True)
            time.sleep(60)
            """,
            name,
        )
        assert read_line(child) == str(_core.OK)
        kill(child)
        m = _core.Mutex(region, off)
        assert m.acquire(timeout=5) == _core.OWNER_DIED
        m.release()
        assert m.acquire(timeout=0) == _core.OK  # consistent again
        m.release()
        region.close()
    finally:
        seg.close()
        seg.unlink()


# ---------------------------------------------------------------- Lock (T31-T33)


def test_release_from_another_thread_raises_and_the_holder_still_can(name: str) -> None:
    """T32: release() by a thread that does not hold the lock raises NotOwner."""
    with closing(Lock.create(name)) as lock:
        try:
            assert lock.acquire(timeout=1)
            errors: list[BaseException] = []

            def other() -> None:
                try:
                    lock.release()
                except BaseException as exc:
                    errors.append(exc)

            t = threading.Thread(target=other)
            t.start()
            t.join(5)
            assert len(errors) == 1 and isinstance(errors[0], NotOwner)
            assert lock.locked
            lock.release()
            assert not lock.locked
            with closing(Lock.open(name)) as again:
                assert again.acquire(timeout=0)
                again.release()
        finally:
            lock.unlink()


@pytest.mark.parametrize("bad", [-1, -0.5, math.nan, "1", True, b"1"])
@pytest.mark.parametrize("busy", [False, True])
def test_lock_rejects_invalid_timeouts_free_or_busy(name: str, bad: object, busy: bool) -> None:
    with closing(Lock.create(name)) as lock, closing(Lock.open(name)) as other:
        try:
            if busy:
                t = threading.Thread(target=other.acquire)
                t.start()
                t.join(5)
            with pytest.raises((ValueError, TypeError)):
                lock.acquire(timeout=bad)  # type: ignore[arg-type]
            assert lock.locked is busy  # nothing was taken
        finally:
            lock.unlink()


def test_owner_record_is_never_seen_half_written(name: str) -> None:
    """T33: a reader in another process never sees HELD with a zero or foreign pid."""
    with closing(Lock.create(name)) as lock:
        try:
            child = spawn(
                """
                import sys, time, shmkit
                lock = shmkit.Lock.open(sys.argv[1])
                print("go", flush=True)
                end = time.monotonic() + 1.5
                n = 0
                while time.monotonic() < end:
                    lock.acquire(); lock.release(); n += 1
                print(n, flush=True)
                lock.close()
                """,
                name,
            )
            assert read_line(child) == "go"
            child_pid = child.pid
            seen_held = bad = reads = 0
            end = time.monotonic() + 1.2
            while time.monotonic() < end:
                for _ in range(1000):
                    state, pid, start, since, _deaths, tid = lock._core_record()
                    reads += 1
                    if state == 1:
                        seen_held += 1
                        if pid != child_pid or start == 0 or since == 0 or tid == 0:
                            bad += 1
                    elif state != 0:
                        bad += 1
            cycles = int(read_line(child))
            finish(child)
            assert cycles > 1000
            assert bad == 0, f"{bad} impossible records in {reads} reads"
            assert seen_held > 0
        finally:
            lock.unlink()


def test_signal_storm_never_leaves_the_lock_held(name: str) -> None:
    """T31: a handler raising every 50 µs during acquire/release; afterwards another
    process takes the lock at once and this process can close."""
    # The handler raises only when it interrupts code called from the loop
    # (work() and everything under it: the code under test), never the loop's
    # own bookkeeping at module level, so every raise is counted.
    child_code = """
        import signal, sys, time, shmkit
        class Storm(Exception):
            pass
        lock = shmkit.Lock.open(sys.argv[1])
        def work():
            with lock:
                pass
        def boom(signum, frame):
            if frame is not None and frame.f_code.co_name not in ("<module>", "boom"):
                raise Storm
        hits = ok = 0
        signal.signal(signal.SIGALRM, boom)
        signal.setitimer(signal.ITIMER_REAL, 0.00005, 0.00005)
        end = time.monotonic() + 1.5
        while time.monotonic() < end:
            try:
                work()
                ok += 1
            except Storm:
                hits += 1
        signal.setitimer(signal.ITIMER_REAL, 0)
        print(hits, ok, lock.locked, flush=True)
        time.sleep(30)
    """
    with closing(Lock.create(name)) as lock:
        try:
            child = spawn(child_code, name)
            hits, ok, locked = read_line(child, timeout=30).split()
            assert int(hits) > 0 and int(ok) > 0
            assert locked == "False", "the storm left the lock held by a live thread"
            t0 = time.monotonic()
            assert lock.acquire(timeout=2), "another process could not take the lock"
            assert time.monotonic() - t0 < 2
            lock.release()
            kill(child)
        finally:
            lock.unlink()


@pytest.mark.parametrize("backend", ["pthread", "flock"])
def test_threads_sharing_one_lock_handle_exclude_each_other(
    name: str, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """T35: threads on one handle are excluded on both backends (flock alone would not)."""
    monkeypatch.setenv("SHMKIT_MUTEX", backend)
    with closing(Lock.create(name)) as lock:
        try:
            assert lock.backend == backend
            inside = [0]
            worst = [0]
            count = [0]

            def worker() -> None:
                for _ in range(2000):
                    with lock:
                        inside[0] += 1
                        worst[0] = max(worst[0], inside[0])
                        count[0] += 1
                        if count[0] % 97 == 0:
                            time.sleep(0)  # let another thread try meanwhile
                        inside[0] -= 1

            threads = [threading.Thread(target=worker) for _ in range(3)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            assert not any(t.is_alive() for t in threads)
            assert worst[0] == 1
            assert count[0] == 6000
        finally:
            lock.unlink()
