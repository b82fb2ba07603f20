"""Semaphore, Lock, Event across real processes: exclusion, death, timeouts, signals."""

from __future__ import annotations

import math
import os
import pickle
import signal
import time
from collections.abc import Callable
from contextlib import closing

import posix_ipc
import pytest

import shmkit
from shmkit import Event, Lock, Segment, Semaphore

from .helpers import finish, kill, read_line, spawn

COUNTER = """
import sys, struct
import shmkit
name, n = sys.argv[1], int(sys.argv[2])
lock = shmkit.Lock.open(name)
seg = shmkit.Segment.open(name + "-c")
buf = seg.buf
for _ in range(n):
    with lock:
        # read-modify-write that interleaves badly without mutual exclusion
        v = struct.unpack_from("<q", buf, 0)[0]
        struct.pack_into("<q", buf, 0, v + 1)
print("done", flush=True)
"""


def test_lock_mutual_exclusion_under_contention(name: str) -> None:
    """4 processes x 10,000 increments of a shared counter end exact."""
    with closing(Lock.create(name)) as lock, Segment.create(name + "-c", 8) as seg:
        procs = [spawn(COUNTER, name, "10000") for _ in range(4)]
        for p in procs:
            finish(p, timeout=120)
        assert int.from_bytes(seg.buf[:8], "little") == 40_000
        assert not lock.locked
        lock.unlink()
        seg.unlink()


HOLDER = """
import sys, time
import shmkit
lock = shmkit.Lock.open(sys.argv[1])
lock.acquire()
print("held", flush=True)
time.sleep(600)
"""


def test_killed_holder_is_recovered_and_reported(name: str) -> None:
    """T01: kill -9 the holder; a waiter gets the lock within its timeout and is told."""
    with closing(Lock.create(name)) as lock:
        holder = spawn(HOLDER, name)
        read_line(holder)
        assert lock.acquire(timeout=0.1) is False  # a live holder is never robbed
        assert lock.holder() == (holder.pid, shmkit._process.Liveness.ALIVE)
        kill(holder)
        t0 = time.monotonic()
        assert lock.acquire(timeout=5) is True
        assert time.monotonic() - t0 < 0.3
        assert lock.owner_died is True
        lock.mark_consistent()
        lock.release()
        assert lock.acquire(timeout=1) and lock.owner_died is False
        lock.release()
        lock.unlink()


def test_release_without_repair_poisons_the_lock(name: str) -> None:
    with closing(Lock.create(name)) as lock:
        holder = spawn(HOLDER, name)
        read_line(holder)
        kill(holder)
        assert lock.acquire(timeout=5) and lock.owner_died
        lock.release()  # no mark_consistent(): poisoned, as POSIX robust mutexes do
        with pytest.raises(shmkit.LockNotRecoverable):
            lock.acquire(timeout=1)
        with closing(Lock.open(name)) as other, pytest.raises(shmkit.LockNotRecoverable):
            other.acquire(timeout=1)
        lock.unlink()


def test_stopped_holder_is_never_robbed(name: str) -> None:
    """T03: SIGSTOP the holder; the waiter times out naming it; after SIGCONT all is well."""
    with closing(Lock.create(name)) as lock:
        holder = spawn(
            """
            import sys, time
            import shmkit
            lock = shmkit.Lock.open(sys.argv[1])
            lock.acquire()
            print("held", flush=True)
            sys.stdin.readline()
            lock.release()
            print("released", flush=True)
            """,
            name,
        )
        read_line(holder)
        os.kill(holder.pid, signal.SIGSTOP)
        try:
            t0 = time.monotonic()
            with pytest.raises(shmkit.LockTimeout, match=f"pid {holder.pid}"), lock.hold(0.3):
                pass
            assert 0.3 <= time.monotonic() - t0 < 1.0
        finally:
            os.kill(holder.pid, signal.SIGCONT)
        assert holder.stdin is not None
        holder.stdin.write("\n")
        holder.stdin.flush()
        assert read_line(holder) == "released"
        finish(holder)
        assert lock.acquire(timeout=2) and not lock.owner_died
        lock.release()
        lock.unlink()


CRASHER = """
import sys, struct
import shmkit
lock = shmkit.Lock.open(sys.argv[1])
seg = shmkit.Segment.open(sys.argv[1] + "-c")
buf = seg.buf
lock.acquire()
inside = struct.unpack_from("<q", buf, 0)[0]
struct.pack_into("<q", buf, 0, inside + 1)   # inside the critical section
struct.pack_into("<q", buf, 8, max(struct.unpack_from("<q", buf, 8)[0], inside + 1))
struct.pack_into("<q", buf, 0, inside)
lock.release()
print("survived", flush=True)
"""

POINTS = [
    "lock.acquire.locked",
    "lock.acquire.recorded",
    "lock.release.cleared",
    "lock.release.unlocked",
]


@pytest.mark.parametrize("point", POINTS)
def test_crash_windows_never_two_holders(name: str, point: str) -> None:
    """T02 (reduced; scripts/lock_crash_windows.py runs the full 1,000): death at each step."""
    with closing(Lock.create(name)) as lock, Segment.create(name + "-c", 16) as seg:
        for _ in range(2):
            victim = spawn(CRASHER, name, env={"SHMKIT_CRASH_AT": point})
            assert victim.wait(30) == -signal.SIGKILL
            kill(victim)
            t0 = time.monotonic()
            assert lock.acquire(timeout=5)
            assert time.monotonic() - t0 < 0.3
            died_inside = point in ("lock.acquire.recorded",)
            assert lock.owner_died is died_inside
            if died_inside:
                # the victim died holding: its "inside" mark may be left; repair it
                seg.buf[:8] = bytes(8)
                lock.mark_consistent()
            assert int.from_bytes(seg.buf[:8], "little") == 0  # nobody else inside
            lock.release()
        assert int.from_bytes(seg.buf[8:16], "little") <= 1  # never two inside at once
        lock.unlink()
        seg.unlink()


@pytest.mark.parametrize("backend", ["pthread", "flock"])
def test_forked_child_does_not_keep_a_dead_parents_lock(name: str, backend: str) -> None:
    """T12: parent holds the lock and forks; killing the parent frees it while the child lives."""
    env = {"SHMKIT_MUTEX": backend}
    finish(spawn("import sys, shmkit; shmkit.Lock.create(sys.argv[1]).close()", name, env=env))
    with closing(Lock.open(name)) as lock:
        assert lock.backend == backend  # the creator's choice, whatever our environment
        parent = spawn(
            """
            import os, sys, time
            import shmkit
            lock = shmkit.Lock.open(sys.argv[1])
            lock.acquire()
            pid = os.fork()
            if pid == 0:
                devnull = os.open(os.devnull, os.O_RDWR)
                for fd in (0, 1, 2):
                    os.dup2(devnull, fd)  # do not hold the test's pipes open
                time.sleep(30)
                os._exit(0)
            print(pid, flush=True)
            time.sleep(600)
            """,
            name,
        )
        child_pid = int(read_line(parent))
        try:
            kill(parent)
            assert lock.acquire(timeout=5) and lock.owner_died
            os.kill(child_pid, 0)  # the child is still alive
            lock.mark_consistent()
            lock.release()
        finally:
            os.kill(child_pid, signal.SIGKILL)
        lock.unlink()


def test_flock_child_forked_after_unlink_still_excludes_its_parent(name: str) -> None:
    """#9 item 2: the child reopens the parent's lock file, not a new one at the same path."""
    out = finish(
        spawn(
            """
            import os, sys
            import shmkit
            lock = shmkit.Lock.create(sys.argv[1])
            lock.unlink()  # removes the path of the flock file; the handles go on
            assert lock.acquire(timeout=5)
            pid = os.fork()
            if pid == 0:
                got = lock.acquire(timeout=0.3)  # the parent holds it: must time out
                os._exit(10 if got else 20)
            _, status = os.waitpid(pid, 0)
            lock.release()
            print(lock.backend, os.waitstatus_to_exitcode(status), flush=True)
            """,
            name,
            env={"SHMKIT_MUTEX": "flock"},
        )
    )
    assert out.split() == ["flock", "20"]


def test_lock_misuse(name: str) -> None:
    with closing(Lock.create(name)) as lock:
        with pytest.raises(RuntimeError):
            lock.release()
        assert lock.acquire(0)
        with pytest.raises(RuntimeError):
            lock.acquire(0)
        lock.release()
        with pickle.loads(pickle.dumps(lock)) as again:
            assert again.name == name
        lock.unlink()
    with pytest.raises(shmkit.Closed):
        lock.acquire(0)
    assert "closed" in repr(lock)


def test_flock_backend_also_recovers(name: str) -> None:
    """The portable (macOS) backend, forced on Linux: kernel-released flock + owner record."""
    env = {"SHMKIT_MUTEX": "flock"}
    creator = spawn("import sys, shmkit; shmkit.Lock.create(sys.argv[1]).close()", name, env=env)
    finish(creator)
    holder = spawn(HOLDER, name, env=env)
    read_line(holder)
    checker = spawn(
        """
        import sys, shmkit
        lock = shmkit.Lock.open(sys.argv[1])
        print(lock.backend, lock.acquire(timeout=0.2), flush=True)
        sys.stdin.readline()
        print(lock.acquire(timeout=5), lock.owner_died, flush=True)
        lock.mark_consistent(); lock.release(); lock.unlink(); lock.close()
        """,
        name,
        env=env,
    )
    assert read_line(checker) == "flock False"
    kill(holder)
    assert checker.stdin is not None
    checker.stdin.write("\n")
    checker.stdin.flush()
    assert read_line(checker) == "True True"
    finish(checker)


# ------------------------------------------------------------------ Semaphore and Event


def test_semaphore_handoff_across_processes(name: str) -> None:
    with closing(Semaphore.create(name, 0)) as sem:
        child = spawn(
            """
            import sys, shmkit
            from contextlib import closing
            with closing(shmkit.Semaphore.open(sys.argv[1])) as sem:
                print(sem.acquire(timeout=10), flush=True)
                sem.release()
            """,
            name,
        )
        time.sleep(0.1)
        sem.release()
        assert finish(child).strip() == "True"
        assert sem.acquire(timeout=5)
        assert sem.value == 0
        sem.unlink()


def test_verbatim_semaphore_is_a_plain_posix_semaphore(name: str) -> None:
    sysname = "/" + name
    raw = posix_ipc.Semaphore(sysname, posix_ipc.O_CREX, initial_value=0)
    try:
        with closing(Semaphore.open(sysname)) as sem:
            raw.release()
            assert sem.acquire(timeout=1)
            sem.release()
            raw.acquire(1)
    finally:
        raw.unlink()
        raw.close()


def test_event_set_wakes_waiters_in_other_processes(name: str) -> None:
    with Event.create(name) as ev:
        waiters = [
            spawn(
                """
                import sys, time, shmkit
                ev = shmkit.Event.open(sys.argv[1])
                print("waiting", flush=True)
                print(ev.wait(timeout=10), flush=True)
                """,
                name,
            )
            for _ in range(3)
        ]
        for w in waiters:
            assert read_line(w) == "waiting"
        time.sleep(0.1)
        ev.set()
        for w in waiters:
            assert finish(w).strip() == "True"
        assert ev.is_set()
        ev.clear()
        assert not ev.is_set() and ev.wait(0) is False
        ev.unlink()


# ------------------------------------------------------------------ timeouts (T18, T29)


@pytest.mark.parametrize("t", [0, 0.001, 0.05, 0.2, 1.0])
def test_timeouts_are_honoured(name: str, t: float) -> None:
    with (
        closing(Lock.create(name)) as lock,
        closing(Semaphore.create(name + "s")) as sem,
        Event.create(name + "e") as ev,
    ):
        holder = spawn(HOLDER, name)
        read_line(holder)
        try:
            waits: tuple[Callable[[], bool], ...] = (
                lambda: lock.acquire(timeout=t),
                lambda: sem.acquire(timeout=t),
                lambda: ev.wait(timeout=t),
            )
            for wait in waits:
                t0 = time.monotonic()
                assert wait() is False
                elapsed = time.monotonic() - t0
                assert t <= elapsed <= t + 0.1, elapsed
        finally:
            kill(holder)
        for obj in (lock, sem, ev):
            obj.unlink()


@pytest.mark.parametrize("bad", [-1, -0.001, math.nan, "1", True])
def test_bad_timeouts_are_rejected_before_waiting(name: str, bad: object) -> None:
    with closing(Semaphore.create(name)) as sem:
        with pytest.raises((ValueError, TypeError)):
            sem.acquire(timeout=bad)  # type: ignore[arg-type]
        sem.release()
        assert sem.acquire(timeout=math.inf)  # infinite is "forever": fine when available
        sem.unlink()


# ------------------------------------------------------------------ signals (T28)


@pytest.mark.parametrize("what", ["lock", "semaphore", "event"])
def test_ctrl_c_interrupts_a_blocked_wait(name: str, what: str) -> None:
    with (
        closing(Lock.create(name)) as lock,
        closing(Semaphore.create(name + "s")) as sem,
        Event.create(name + "e") as ev,
    ):
        lock.acquire()
        child = spawn(
            """
            import sys, time, shmkit
            name, what = sys.argv[1], sys.argv[2]
            obj = {
                "lock": lambda: shmkit.Lock.open(name),
                "semaphore": lambda: shmkit.Semaphore.open(name + "s"),
                "event": lambda: shmkit.Event.open(name + "e"),
            }[what]()
            wait = obj.wait if what == "event" else obj.acquire
            print("blocking", flush=True)
            try:
                wait(timeout=None)
            except KeyboardInterrupt:
                print("interrupted", time.monotonic(), flush=True)
            """,
            name,
            what,
        )
        assert read_line(child) == "blocking"
        time.sleep(0.2)
        sent = time.monotonic()
        os.kill(child.pid, signal.SIGINT)
        word, when = read_line(child).split()
        assert word == "interrupted"
        assert float(when) - sent < 0.2
        finish(child)
        lock.release()
        for obj in (lock, sem, ev):
            obj.unlink()


def test_signal_storm_causes_no_spurious_failure(name: str) -> None:
    """SIGALRM every millisecond during a 0.5 s wait: it still returns False after 0.5 s."""
    with closing(Semaphore.create(name)) as sem:
        child = spawn(
            """
            import signal, sys, time, shmkit
            hits = 0
            def on_alarm(signum, frame):
                global hits
                hits += 1
            signal.signal(signal.SIGALRM, on_alarm)
            signal.setitimer(signal.ITIMER_REAL, 0.001, 0.001)
            sem = shmkit.Semaphore.open(sys.argv[1])
            t0 = time.monotonic()
            got = sem.acquire(timeout=0.5)
            elapsed = time.monotonic() - t0
            signal.setitimer(signal.ITIMER_REAL, 0, 0)
            print(got, round(elapsed, 3), hits > 50, flush=True)
            """,
            name,
        )
        got, elapsed, stormed = finish(child).split()
        assert got == "False" and stormed == "True"
        assert 0.5 <= float(elapsed) <= 0.6
        sem.unlink()


def test_errors_pickle_with_their_arguments() -> None:
    err = shmkit.Overrun("lapped", missed=7)
    again = pickle.loads(pickle.dumps(err))
    assert isinstance(again, shmkit.Overrun) and again.missed == 7 and str(again) == "lapped"
    inc = pickle.loads(pickle.dumps(shmkit.IncompatibleLayout("v", found=1, expected=2)))
    assert (inc.found, inc.expected) == (1, 2)
    assert isinstance(pickle.loads(pickle.dumps(shmkit.Empty("x"))), __import__("queue").Empty)


def test_close_from_another_thread_wakes_waiters_without_crashing(name: str) -> None:
    """close() while other threads block: they get Closed within a slice, no crash."""
    import threading

    ev = Event.create(name + "e")
    sem = Semaphore.create(name + "s")
    lock = Lock.create(name + "l")
    other = Lock.open(name + "l")
    other.acquire()
    errors: list[BaseException] = []

    def wait(fn: object) -> None:
        try:
            fn()  # type: ignore[operator]
        except shmkit.Closed as exc:
            errors.append(exc)

    threads = [
        threading.Thread(target=wait, args=(lambda: ev.wait(timeout=10),)),
        threading.Thread(target=wait, args=(lambda: sem.acquire(timeout=10),)),
        threading.Thread(target=wait, args=(lambda: lock.acquire(timeout=10),)),
    ]
    for t in threads:
        t.start()
    time.sleep(0.2)
    t0 = time.monotonic()
    for obj in (ev, sem, lock):
        obj.unlink()
        obj.close()
    for t in threads:
        t.join(5)
    assert time.monotonic() - t0 < 1.0
    assert len(errors) == 3
    other.release()
    other.close()
