"""T02 LOCK-CRASH-WINDOWS: Lock users killed at every step while others contend; check invariants.

    python scripts/lock_crash_windows.py [--kills 1000] [--workers 4] [--iterations 30] [--seed N]

Each round starts ``--workers`` processes that meet at a barrier, then loop
``--iterations`` times over: acquire the lock, mark themselves inside a
shared counter, stay a little (so the others wait on the lock), leave,
release. Most workers are victims: ``SHMKIT_CRASH_AT`` names one of the
lock's crash points, chosen at random, and ``SHMKIT_CRASH_AFTER`` a random
pass, so they die mid-loop while the others are waiting for the lock or
inside the critical section. One more worker per round is killed by SIGKILL
at a random time (wherever it is, often inside the critical section). The
round ends when every worker has exited; rounds go on until ``--kills``
processes were killed.

Checked, from the shared counter and the workers' exit codes:

- never two holders: a worker that takes the lock finds nobody inside
  (unless the lock reports ``owner_died``, when it repairs the counter), and
  nobody enters while it is inside; the most ever inside at once is 1;
- ``owner_died`` is reported at least once per victim that died with the
  lock's record HELD (the ``lock.acquire.recorded`` point) and at most that
  plus the random kills;
- nobody waits for the lock longer than ``--max-wait`` seconds, every
  survivor finishes all its iterations, and this process takes the lock
  within R after every round.

Exit status 0 when every invariant held, 1 otherwise (the message says which).
"""

from __future__ import annotations

import argparse
import os
import random
import selectors
import signal
import subprocess
import sys
import time

import shmkit
from shmkit.testing import unique_name

POINTS = [
    "lock.acquire.locked",  # mutex taken, record not written: not "inside"
    "lock.acquire.recorded",  # record HELD: died inside (owner_died for the next holder)
    "lock.release.cleared",  # record FREE, mutex still taken: not "inside"
    "lock.release.unlocked",  # all done
]
#: Shared words (int64) in the "<name>-c" segment.
INSIDE, MAX_INSIDE, DIED_SEEN, ENTRIES, VIOLATIONS, WORST_WAIT_US = range(6)
WORKER = """
import struct, sys, time, shmkit
name, iterations, hold = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
lock = shmkit.Lock.open(name)
seg = shmkit.Segment.open(name + "-c")
words = seg.buf.cast("q")
print("ready", flush=True)
sys.stdin.readline()  # the barrier: every worker starts at once
clock = time.perf_counter
for _ in range(iterations):
    t0 = time.monotonic()
    if not lock.acquire(timeout=10):
        print("timeout", flush=True)
        sys.exit(3)
    waited = int((time.monotonic() - t0) * 1e6)
    if waited > words[5]:
        words[5] = waited
    if lock.owner_died:
        words[2] += 1
        words[0] = 0  # repair: only a dead holder can have left itself inside
        lock.mark_consistent()
    n = words[0]
    if n != 0:
        words[4] += 1
    words[0] = n + 1
    if n + 1 > words[1]:
        words[1] = n + 1
    end = clock() + hold
    while clock() < end:
        pass
    if words[0] != n + 1:
        words[4] += 1
    words[0] = n
    words[3] += 1
    lock.release()
print("done", flush=True)
"""
R = 2 * 0.05 + 0.1


class Failed(Exception):
    """An invariant did not hold."""


def _read_line(proc: subprocess.Popen[str], timeout: float) -> str:
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    line = bytearray()
    end = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while not line.endswith(b"\n"):
            if not sel.select(max(0.0, end - time.monotonic())):
                raise Failed(f"worker {proc.pid} said nothing in {timeout} s")
            byte = os.read(fd, 1)
            if not byte:
                break
            line += byte
    return line.decode().strip()


def _round(
    name: str, rng: random.Random, args: argparse.Namespace, env: dict[str, str]
) -> tuple[int, int, int]:
    """One round; returns (kills, expected owner_died reports, random kills)."""
    procs: list[tuple[subprocess.Popen[str], str | None, int]] = []
    expect_died = 0
    kills = 0
    try:
        for _ in range(args.workers):
            point: str | None = None
            after = args.iterations
            if rng.random() < args.victims:
                point = rng.choice(POINTS)
                after = rng.randrange(args.iterations)
            child_env = dict(env)
            if point is not None:
                child_env.update(SHMKIT_CRASH_AT=point, SHMKIT_CRASH_AFTER=str(after))
            proc = subprocess.Popen(
                [sys.executable, "-c", WORKER, name, str(args.iterations), str(args.hold)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=child_env,
            )
            procs.append((proc, point, after))
        for proc, _, _ in procs:
            if _read_line(proc, 30) != "ready":
                raise Failed(f"worker {proc.pid} did not start: {proc.stderr}")
        for proc, _, _ in procs:  # the barrier opens for everyone at once
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        random_kill = -1
        if args.random_kills:
            time.sleep(rng.uniform(0, args.iterations * args.hold * 2))
            running = [i for i, (p, _, _) in enumerate(procs) if p.poll() is None]
            if running:
                random_kill = rng.choice(running)
                procs[random_kill][0].send_signal(signal.SIGKILL)
        for i, (proc, point, after) in enumerate(procs):
            try:
                out, err = proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
                raise Failed(f"worker {proc.pid} hung (crash point {point})") from None
            if i == random_kill and proc.returncode == -signal.SIGKILL:
                kills += 1
                continue
            if point is not None and after < args.iterations:
                if proc.returncode != -signal.SIGKILL:
                    raise Failed(
                        f"victim ({point}, pass {after}) exited {proc.returncode}: {err[-800:]}"
                    )
                kills += 1
                expect_died += point == "lock.acquire.recorded"
            elif proc.returncode != 0:
                raise Failed(f"worker exited {proc.returncode} ({out.strip()}): {err[-800:]}")
    finally:
        for proc, _, _ in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    return kills, expect_died, int(random_kill >= 0)


def run(args: argparse.Namespace) -> str:
    """Run the rounds; return the summary line or raise Failed."""
    rng = random.Random(args.seed)
    name = unique_name("t02")
    lock = shmkit.Lock.create(name)
    seg = shmkit.Segment.create(name + "-c", 64)
    words = seg.buf.cast("q")
    src = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")
    env = dict(os.environ, PYTHONPATH=os.path.abspath(src))
    kills = expect_died = random_kills = died_seen_here = rounds = 0
    worst_recovery = 0.0
    try:
        while kills < args.kills:
            rounds += 1
            k, e, r = _round(name, rng, args, env)
            kills, expect_died, random_kills = kills + k, expect_died + e, random_kills + r
            t0 = time.monotonic()
            if not lock.acquire(timeout=5):
                raise Failed(f"round {rounds}: the lock was not free after every worker exited")
            worst_recovery = max(worst_recovery, time.monotonic() - t0)
            if lock.owner_died:
                died_seen_here += 1
                words[INSIDE] = 0
                lock.mark_consistent()
            if words[INSIDE] != 0:
                raise Failed(f"round {rounds}: {words[INSIDE]} left inside without owner_died")
            lock.release()
            if words[MAX_INSIDE] > 1 or words[VIOLATIONS]:
                raise Failed(
                    f"round {rounds}: two holders at once (most inside {words[MAX_INSIDE]}, "
                    f"{words[VIOLATIONS]} entries found someone inside)"
                )
            if args.verbose and rounds % 20 == 0:
                print(f"{rounds} rounds, {kills} kills, {words[ENTRIES]} entries", flush=True)
        died_seen = words[DIED_SEEN] + died_seen_here
        if not expect_died <= died_seen <= expect_died + random_kills:
            raise Failed(
                f"owner_died reported {died_seen} times; {expect_died} victims died holding "
                f"the record and {random_kills} more were killed at random times"
            )
        worst_wait = words[WORST_WAIT_US] / 1e6
        if worst_wait > args.max_wait:
            raise Failed(f"a worker waited {worst_wait:.3f} s for the lock (> {args.max_wait} s)")
        if worst_recovery > R:
            raise Failed(f"the lock took {worst_recovery:.3f} s to take after a round (> R)")
        return (
            f"OK: {rounds} rounds of {args.workers} workers, {kills} kills "
            f"({random_kills} at random times), {words[ENTRIES]} entries, most inside at once "
            f"{words[MAX_INSIDE]}, owner_died {died_seen} times ({expect_died} expected from "
            f"crash points), worst wait {worst_wait * 1e3:.1f} ms"
        )
    finally:
        words.release()
        for obj in (lock, seg):
            obj.close()
            obj.unlink()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kills", type=int, default=1000, help="processes to kill in all")
    parser.add_argument("--workers", type=int, default=4, help="processes per round")
    parser.add_argument("--iterations", type=int, default=30, help="lock cycles per worker")
    parser.add_argument("--hold", type=float, default=200e-6, help="seconds inside per cycle")
    parser.add_argument("--victims", type=float, default=0.75, help="share armed with a point")
    parser.add_argument("--random-kills", type=int, default=1, help="1: one SIGKILL per round")
    parser.add_argument("--max-wait", type=float, default=2.0, help="longest acceptable wait")
    parser.add_argument("--seed", type=int, default=random.randrange(1 << 30))
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    print(f"seed {args.seed}", flush=True)
    try:
        print(run(args))
    except Failed as exc:
        print(f"FAILED (seed {args.seed}): {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
