"""Queue.task_done()/join() across processes (multiprocessing.JoinableQueue semantics).

Every put (a put_many by its count) adds an unfinished task, every task_done()
removes one; join() returns True once none is left, False when its timeout
runs out. A consumer that dies or closes before marking what it took done
never keeps join() waiting (docs/guarantees.md, "Tasks").
"""

from __future__ import annotations

import queue as std_queue
import select
import threading
import time

import pytest

from shmkit import Queue
from shmkit.errors import Closed

from .helpers import finish, kill, read_line, run_all, spawn

pytestmark = pytest.mark.timeout(120)


def test_every_put_is_a_task_and_too_many_task_done_raises_value_error(name: str) -> None:
    with Queue.create(name, 4096, unlink_on_exit=True) as q:
        with pytest.raises(ValueError, match="too many times"):
            q.task_done()
        q.put(b"a")
        q.put_nowait(b"b")
        q.put_many([b"c", b"d", b"e"])
        q.put(b"x" * 200_000 if q.capacity > 200_000 else b"f")
        assert q.unfinished_tasks == 6
        assert q.join(timeout=0) is False
        got = [q.get(), q.get_nowait(), *q.get_many(10)]
        assert len(got) == 6 and q.unfinished_tasks == 6  # taken is not done
        for i in range(6):
            assert q.unfinished_tasks == 6 - i
            q.task_done()
        assert q.unfinished_tasks == 0 and q.join(timeout=0) is True and q.join() is True
        with pytest.raises(ValueError, match="too many times"):
            q.task_done()
        assert q.statistics().unfinished_tasks == 0


def test_stdlib_semantics_task_done_before_get_and_from_another_handle(name: str) -> None:
    """Like queue.Queue: any handle may mark any put message done, taken or not."""
    ref: std_queue.Queue[bytes] = std_queue.Queue()
    with Queue.create(name, 4096, unlink_on_exit=True) as q, Queue.open(name) as other:
        for h in (q, ref):
            h.put(b"a")
            h.put(b"b")
        for h in (q, ref):  # done before anyone took it
            h.task_done()
        assert q.unfinished_tasks == ref.unfinished_tasks == 1
        assert q.get() == b"a" and ref.get() == b"a"
        other.task_done()  # another handle than the taker
        ref.task_done()
        assert q.unfinished_tasks == ref.unfinished_tasks == 0
        assert q.join(timeout=0) is True
        for h in (q, ref):
            with pytest.raises(ValueError):
                h.task_done()
        # one message stays queued; the queue itself has nothing unfinished
        assert q.get() == b"b" and q.unfinished_tasks == 0


def test_join_timeout_and_bad_timeouts(name: str) -> None:
    with Queue.create(name, 4096, unlink_on_exit=True) as q:
        q.put(b"a")
        assert q.join(timeout=0) is False
        assert q.join(timeout=0.05) is False
        with pytest.raises(ValueError):
            q.join(timeout=-1)
        with pytest.raises(TypeError):
            q.join(timeout="1")  # type: ignore[arg-type]
        q.get()
        q.task_done()
        assert q.join(timeout=0.05) is True
    with pytest.raises(Closed):
        q.join(timeout=0)
    with pytest.raises(Closed):
        q.task_done()


def test_join_in_a_thread_wakes_on_the_last_task_done(name: str) -> None:
    with Queue.create(name, 4096, unlink_on_exit=True) as q:
        q.put_many([b"a", b"b"])
        results: list[bool] = []
        joiner = threading.Thread(target=lambda: results.append(q.join(timeout=30)))
        joiner.start()
        q.get_many(2)
        q.task_done()
        joiner.join(0.2)
        assert joiner.is_alive() and not results  # one task is still unfinished
        q.task_done()
        joiner.join(30)
        assert results == [True]


PRODUCER = """
import sys
from shmkit import Queue
name, tag, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
with Queue.open(name) as q:
    print("ready", flush=True)
    sys.stdin.readline()
    for i in range(0, n, 4):
        if i % 8:
            q.put_many([f"{tag}:{j}".encode() for j in range(i, min(i + 4, n))], timeout=30)
        else:
            for j in range(i, min(i + 4, n)):
                q.put(f"{tag}:{j}".encode(), timeout=30)
print("done", flush=True)
"""

CONSUMER = """
import sys
from shmkit import Closed, Empty, Queue
name = sys.argv[1]
done = 0
with Queue.open(name) as q:
    print("ready", flush=True)
    sys.stdin.readline()
    while True:
        try:
            items = [q.get(timeout=1.0)] if done % 2 else q.get_many(3, timeout=1.0)
        except Empty:
            continue
        except Closed:  # shut down and drained
            break
        for item in items:
            assert item.count(b":") == 1, item
            q.task_done()
            done += 1
    print(done, flush=True)
"""

JOINER = """
import sys, time
from shmkit import Queue
with Queue.open(sys.argv[1]) as q:
    print("joining", flush=True)
    ok = q.join(timeout=float(sys.argv[2]))
    print("joined" if ok else "timeout", q.unfinished_tasks, flush=True)
"""


def test_producers_consumers_and_a_joiner_in_separate_processes(name: str) -> None:
    n = 300
    with Queue.create(name, 1024, unlink_on_exit=True) as q:
        producers = [spawn(PRODUCER, name, tag, str(n)) for tag in ("p", "r")]
        consumers = [spawn(CONSUMER, name) for _ in range(2)]
        joiner = None
        try:
            for p in producers + consumers:
                assert read_line(p) == "ready"
            for p in producers + consumers:
                assert p.stdin is not None
                p.stdin.write("go\n")
                p.stdin.flush()
            for p in producers:
                assert read_line(p) == "done"
            joiner = spawn(JOINER, name, "60")  # all is put: join waits for the consumers
            assert read_line(joiner) == "joining"
            # every message put is marked done by some consumer before join returns
            assert read_line(joiner, timeout=60) == "joined 0"
            assert q.join(timeout=0) is True
            q.shutdown()
            outs = run_all(consumers)
            assert sum(int(o.split()[-1]) for o in outs) == 2 * n
            finish(joiner)
            run_all(producers)
            stats = q.statistics()
            assert stats.total_puts == 2 * n and stats.unfinished_tasks == 0
            assert stats.abandoned_tasks == 0
        finally:
            for p in [*producers, *consumers, *([joiner] if joiner else [])]:
                kill(p)


HOLDER = """
import sys
from shmkit import Queue
with Queue.open(sys.argv[1]) as q:
    got = q.get_many(int(sys.argv[2]), timeout=10)
    print("got", len(got), flush=True)
    sys.stdin.readline()  # "done": mark them done; EOF: leave them undone
    for _ in got:
        q.task_done()
    print("marked", flush=True)
    sys.stdin.readline()
"""


def _still_running(proc: object, seconds: float) -> bool:
    """True if the child printed nothing more within ``seconds`` (it is still blocked)."""
    out = proc.stdout  # type: ignore[attr-defined]
    ready, _, _ = select.select([out], [], [], seconds)
    return not ready


def test_join_returns_exactly_when_the_last_task_done_lands(name: str) -> None:
    with Queue.create(name, 4096, unlink_on_exit=True) as q:
        q.put_many([b"a", b"b", b"c"])
        holder = spawn(HOLDER, name, "3")
        joiner = spawn(JOINER, name, "60")
        try:
            assert read_line(holder) == "got 3"
            assert read_line(joiner) == "joining"
            assert _still_running(joiner, 0.3)  # three tasks taken, none done
            assert q.unfinished_tasks == 3 and q.empty()
            assert holder.stdin is not None
            holder.stdin.write("done\n")
            holder.stdin.flush()
            assert read_line(holder) == "marked"
            assert read_line(joiner, timeout=10) == "joined 0"
            finish(joiner)
            holder.stdin.write("bye\n")
            holder.stdin.flush()
            finish(holder)
            assert q.statistics().abandoned_tasks == 0
        finally:
            kill(holder)
            kill(joiner)


def test_consumer_killed_holding_undone_items_does_not_block_join(name: str) -> None:
    with Queue.create(name, 4096, unlink_on_exit=True) as q:
        for i in range(5):
            q.put(b"m%d" % i)
        holder = spawn(HOLDER, name, "3")
        try:
            assert read_line(holder) == "got 3"
            assert q.join(timeout=0.2) is False
            assert q.unfinished_tasks == 5
            kill(holder)  # SIGKILL: its three tasks can never be marked done
            assert q.get_many(5) == [b"m3", b"m4"]
            q.task_done()
            q.task_done()
            assert q.join(timeout=10) is True  # settles the dead consumer's three
            stats = q.statistics()
            assert (stats.unfinished_tasks, stats.abandoned_tasks) == (0, 3)
            with pytest.raises(ValueError):
                q.task_done()  # exact: nothing counted twice
        finally:
            kill(holder)


def test_a_handle_closed_with_undone_items_settles_them(name: str) -> None:
    with Queue.create(name, 4096, unlink_on_exit=True) as q:
        q.put_many([b"a", b"b", b"c"])
        other = Queue.open(name)
        assert other.get_many(2) == [b"a", b"b"]
        other.task_done()
        other.close()
        stats = q.statistics()
        assert (stats.unfinished_tasks, stats.abandoned_tasks) == (1, 1)
        q.get()
        q.task_done()
        assert q.join(timeout=0) is True


def test_shutdown_immediate_marks_discarded_messages_done(name: str) -> None:
    with Queue.create(name, 4096, unlink_on_exit=True) as q:
        q.put_many([b"a", b"b", b"c"])
        q.get()
        q.shutdown(immediate=True)
        assert q.unfinished_tasks == 1  # the one taken still needs its task_done
        q.task_done()
        assert q.join(timeout=0) is True


TAKER = """
import sys
from shmkit import Queue
with Queue.open(sys.argv[1]) as q:
    print("ready", flush=True)
    sys.stdin.readline()
    q.get_many(2, timeout=5) if sys.argv[2] == "many" else q.get(timeout=5)
    print("survived", flush=True)
"""


@pytest.mark.parametrize(
    "point", ["queue.get.locked", "queue.get.copied", "queue.get.advanced", "queue.get.counted"]
)
@pytest.mark.parametrize("many", [False, True])
def test_consumer_killed_mid_take_leaves_the_task_count_exact(
    name: str, point: str, many: bool
) -> None:
    """Killed at each step of a take (C fast path): join still returns, nothing counts twice.

    What it took before dying counts as done once (its take committed) or
    stays queued (it did not); survivors mark the rest done and join returns.
    """
    with Queue.create(name, 4096, unlink_on_exit=True) as q:
        for i in range(6):
            q.put(b"m%d" % i)
        armed = spawn(
            TAKER,
            name,
            "many" if many else "one",
            env={"SHMKIT_CRASH_AT": point, "SHMKIT_CRASH_AFTER": "0"},
        )
        try:
            assert read_line(armed) == "ready"
            assert armed.stdin is not None
            armed.stdin.write("go\n")
            armed.stdin.flush()
            assert armed.wait(20) == -9
            rest = q.get_many(10, timeout=1)
            lost = 6 - len(rest)
            assert lost in ((0, 2) if many else (0, 1))
            for _ in rest:
                q.task_done()
            assert q.join(timeout=10) is True
            stats = q.statistics()
            assert (stats.unfinished_tasks, stats.abandoned_tasks) == (0, lost)
            with pytest.raises(ValueError):
                q.task_done()
        finally:
            kill(armed)


def test_join_wakes_many_joiners_across_processes(name: str) -> None:
    with Queue.create(name, 4096, unlink_on_exit=True) as q:
        q.put(b"a")
        joiners = [spawn(JOINER, name, "60") for _ in range(3)]
        try:
            for j in joiners:
                assert read_line(j) == "joining"
            time.sleep(0.1)
            q.get()
            q.task_done()
            assert [read_line(j, timeout=10) for j in joiners] == ["joined 0"] * 3
            run_all(joiners)
        finally:
            for j in joiners:
                kill(j)


BIG_HOLDER = """
import sys
from shmkit import Queue
with Queue.open(sys.argv[1]) as q:
    buf = bytearray(1 << 18)
    n = q.get_into(buf, timeout=10)  # a large message: claimed, copied outside the locks
    print("got", n, flush=True)
    sys.stdin.readline()
"""


def test_consumer_killed_holding_an_undone_large_message(name: str) -> None:
    """The large-message path (claim, copy outside the locks) counts the take the same way."""
    big = 200_000
    with Queue.create(name, 3 * (big + 16), unlink_on_exit=True) as q:
        q.put(b"L" * big)
        q.put(b"s")
        holder = spawn(BIG_HOLDER, name)
        try:
            assert read_line(holder) == f"got {big}"
            assert q.unfinished_tasks == 2
            kill(holder)
            assert q.get(timeout=1) == b"s"
            q.task_done()
            assert q.join(timeout=10) is True
            assert q.statistics().abandoned_tasks == 1
        finally:
            kill(holder)
