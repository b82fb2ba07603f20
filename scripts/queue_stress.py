"""Queue stress: many producers and consumers in separate processes, checked offline.

Every message carries its producer's id, a sequence number and a CRC32 of its
body. Consumers log what they receive; afterwards the checker proves: nothing
lost, nothing duplicated, no torn message, and the order of each producer's
messages kept as each consumer saw them (RELIABILITY §5.3).

Presets::

    python scripts/queue_stress.py                  # the issue's run: 4 x 4, 200,000
                                                    # messages, payloads 1 B..64 KiB
    python scripts/queue_stress.py --preset t25     # T25: 8 x 8, 1,000,000 messages,
                                                    # payloads 0..200 B, a ring of ~16
                                                    # messages, 5 ms timeouts firing
    python scripts/queue_stress.py --preset t25 --kill 2   # plus 2 producers killed -9
    python scripts/queue_stress.py --preset small   # what the default test suite runs
    python scripts/queue_stress.py --preset large   # 4 x 4, 100,000 messages of 128-384 KiB:
                                                    # copied outside the lock (reserve/claim)
    python scripts/queue_stress.py --preset large-small   # its default-suite size

Exit status 0 when every invariant holds. Everything it creates is removed.
"""

from __future__ import annotations

import argparse
import array
import json
import os
import random
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from dataclasses import dataclass
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "src"))

from shmkit.errors import Closed, Empty, Full  # noqa: E402
from shmkit.queue import Queue  # noqa: E402
from shmkit.segment import Segment  # noqa: E402
from shmkit.testing import unique_name  # noqa: E402

#: Producer id (u16), sequence number (u32), CRC32 of the body (u32).
IDENT = struct.Struct("<HII")


@dataclass(frozen=True)
class Config:
    """One stress run."""

    producers: int
    consumers: int
    messages: int
    min_payload: int
    max_payload: int
    capacity: int
    timeout: float  # per put/get attempt; Full/Empty make the caller retry
    batch: int  # put_many/get_many batch size for half the processes (1: none)
    kill: int  # extra producers killed -9 at random instants (their messages are
    # checked for T05 only: a gap-free prefix, nothing torn)
    deadline: float  # seconds for the whole run
    into: bool = False  # even-numbered consumers read with get_into (one copy, no allocation)


PRESETS: dict[str, Config] = {
    "stress": Config(4, 4, 200_000, 1, 65536 - IDENT.size, 1 << 20, 0.05, 8, 0, 600),
    "t25": Config(8, 8, 1_000_000, 0, 200, 16 * 128, 0.005, 4, 0, 1200),
    "small": Config(4, 4, 20_000, 1, 65536 - IDENT.size, 1 << 20, 0.05, 8, 0, 120),
    # Messages of 128 KiB and more are copied outside the lock (reserve / claim):
    # a ring of a few messages, so copies in and out overlap all the time.
    "large": Config(4, 4, 100_000, 128 << 10, 384 << 10, 1 << 20, 0.05, 1, 0, 900, True),
    "large-small": Config(3, 3, 3000, 128 << 10, 384 << 10, 1 << 20, 0.05, 1, 0, 120, True),
}


# ----------------------------------------------------------------------------- children


def _orphaned(parent: int) -> bool:
    """True once the run's parent is gone: a child must not outlive its run."""
    return os.getppid() != parent


def produce(name: str, tag: int, n: int, cfg: Config, seed: int) -> dict[str, Any]:
    parent = os.getppid()
    rng = random.Random(seed)
    blob = rng.randbytes(cfg.max_payload + 4096)
    full = 0
    batch = cfg.batch if tag % 2 else 1
    with Queue.open(name) as q:
        seq = 0
        while seq < n:
            msgs = []
            for s in range(seq, min(seq + batch, n)):
                size = rng.randint(cfg.min_payload, cfg.max_payload)
                off = rng.randrange(4096)
                body = blob[off : off + size]
                msgs.append(IDENT.pack(tag, s, zlib.crc32(body)) + body)
            while True:
                try:
                    if len(msgs) == 1:
                        q.put(msgs[0], timeout=cfg.timeout)
                    else:
                        q.put_many(msgs, timeout=cfg.timeout)
                    break
                except Full:
                    full += 1
                    if _orphaned(parent):
                        raise SystemExit(3) from None
            seq += len(msgs)
    return {"tag": tag, "sent": n, "full_timeouts": full}


def consume(name: str, index: int, cfg: Config, log_path: str) -> dict[str, Any]:
    parent = os.getppid()
    log = array.array("I")
    torn = empty = 0
    batch = cfg.batch if index % 2 else 1
    buf = bytearray(cfg.max_payload + IDENT.size) if cfg.into and index % 2 == 0 else None
    with Queue.open(name) as q:
        while True:
            try:
                if buf is not None:
                    msgs = [bytes(buf[: q.get_into(buf, timeout=cfg.timeout)])]
                elif batch > 1:
                    msgs = q.get_many(batch, timeout=cfg.timeout)
                else:
                    msgs = [q.get(timeout=cfg.timeout)]
            except Empty:
                empty += 1
                if _orphaned(parent):
                    raise SystemExit(3) from None
                continue
            except Closed:
                break
            for m in msgs:
                tag, seq, crc = IDENT.unpack_from(m)
                if zlib.crc32(m[IDENT.size :]) != crc:
                    torn += 1
                log.append(tag)
                log.append(seq)
    with open(log_path, "wb") as f:
        log.tofile(f)
    return {"consumer": index, "received": len(log) // 2, "torn": torn, "empty_timeouts": empty}


def _child(argv: list[str]) -> int:
    role, name, cfg_json = argv[0], argv[1], argv[2]
    cfg = Config(**json.loads(cfg_json))
    print("ready", flush=True)
    sys.stdin.readline()
    if role == "producer":
        tag, n, seed = int(argv[3]), int(argv[4]), int(argv[5])
        result = produce(name, tag, n, cfg, seed)
    else:
        result = consume(name, int(argv[3]), cfg, argv[4])
    print(json.dumps(result), flush=True)
    return 0


# ----------------------------------------------------------------------------- parent


def _spawn(*args: str) -> subprocess.Popen[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.path.join(ROOT, "src") + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "--child", *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _result(proc: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    out, err = proc.communicate(timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"child failed ({proc.returncode}): {err[-2000:]}")
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def run(cfg: Config, seed: int = 1, verbose: bool = True) -> dict[str, Any]:
    """Run one stress configuration; return its report (``ok`` says whether it passed)."""
    name = unique_name("stress")
    tmp = tempfile.mkdtemp(prefix="shmkit-stress-")
    per = [
        cfg.messages // cfg.producers + (i < cfg.messages % cfg.producers)
        for i in range(cfg.producers)
    ]
    q = Queue.create(name, cfg.capacity)
    procs: list[subprocess.Popen[str]] = []
    t0 = time.monotonic()
    try:
        cfg_json = json.dumps(cfg.__dict__)
        logs = [os.path.join(tmp, f"c{i}.log") for i in range(cfg.consumers)]
        consumers = [
            _spawn("consumer", name, cfg_json, str(i), logs[i]) for i in range(cfg.consumers)
        ]
        producers = [
            _spawn("producer", name, cfg_json, str(t), str(per[t]), str(seed * 100 + t))
            for t in range(cfg.producers)
        ]
        victims = [
            _spawn(
                "producer",
                name,
                cfg_json,
                str(cfg.producers + k),
                str(10**8),
                str(seed * 100 + 50 + k),
            )
            for k in range(cfg.kill)
        ]
        procs = consumers + producers + victims
        for p in procs:
            assert p.stdout is not None
            if p.stdout.readline().strip() != "ready":
                raise RuntimeError(f"a child did not start: {p.communicate()[1][-2000:]}")
        start = time.monotonic()
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        killer = _Killer(victims, seed)
        killer.start()
        deadline = start + cfg.deadline
        sent = [_result(p, max(1.0, deadline - time.monotonic())) for p in producers]
        killer.join()
        q.shutdown()  # consumers drain what is left, then get Closed
        got = [_result(p, max(1.0, deadline - time.monotonic())) for p in consumers]
        elapsed = time.monotonic() - start
        report = check(cfg, per, logs, got, sent)
        stats = q.statistics()
        report.update(
            seconds=round(elapsed, 2),
            messages_per_s=round(report["received"] / elapsed),
            recoveries=stats.recoveries,
            corrupt_records=stats.corrupt_records,
            left_in_queue=stats.messages,
        )
        report["ok"] = report["ok"] and stats.corrupt_records == 0 and stats.messages == 0
        if cfg.kill == 0:
            report["ok"] = report["ok"] and stats.recoveries == 0
        return report
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            try:
                p.communicate(timeout=10)
            except (subprocess.TimeoutExpired, ValueError):
                pass
        q.close()
        Segment.remove(name)
        for f in os.listdir(tmp):
            os.unlink(os.path.join(tmp, f))
        os.rmdir(tmp)
        if verbose:
            print(f"run took {time.monotonic() - t0:.1f} s", file=sys.stderr)


class _Killer(threading.Thread):
    """Kills the victim producers at random instants while the others run."""

    def __init__(self, victims: list[subprocess.Popen[str]], seed: int) -> None:
        super().__init__(daemon=True)
        self.victims = victims
        self.rng = random.Random(seed)

    def run(self) -> None:
        for v in self.victims:
            time.sleep(self.rng.uniform(0.2, 2.0))
            v.send_signal(signal.SIGKILL)


def check(
    cfg: Config,
    per: list[int],
    logs: list[str],
    got: list[dict[str, Any]],
    sent: list[dict[str, Any]],
) -> dict[str, Any]:
    """The offline checker over every consumer's log."""
    problems: list[str] = []
    seen: dict[int, set[int]] = {}
    duplicates = 0
    order_breaks = 0
    for path in logs:
        log = array.array("I")
        with open(path, "rb") as f:
            log.frombytes(f.read())
        last: dict[int, int] = {}
        for i in range(0, len(log), 2):
            tag, seq = log[i], log[i + 1]
            if seq <= last.get(tag, -1):
                order_breaks += 1
            last[tag] = seq
            s = seen.setdefault(tag, set())
            if seq in s:
                duplicates += 1
            s.add(seq)
    lost = 0
    for tag, n in enumerate(per):
        missing = n - len(seen.get(tag, set()))
        lost += missing
        if missing:
            problems.append(f"producer {tag}: {missing} of {n} messages lost")
    for k in range(cfg.kill):
        s = seen.get(cfg.producers + k, set())
        if s and s != set(range(max(s) + 1)):
            problems.append(f"killed producer {cfg.producers + k}: not a gap-free prefix")
    torn = sum(g["torn"] for g in got)
    if torn:
        problems.append(f"{torn} torn messages")
    if duplicates:
        problems.append(f"{duplicates} duplicates")
    if order_breaks:
        problems.append(f"{order_breaks} order violations")
    received = sum(g["received"] for g in got)
    return {
        "ok": not problems,
        "problems": problems,
        "received": received,
        "lost": lost,
        "duplicates": duplicates,
        "torn": torn,
        "order_breaks": order_breaks,
        "killed_producers_delivered": [
            len(seen.get(cfg.producers + k, ())) for k in range(cfg.kill)
        ],
        "full_timeouts": sum(s["full_timeouts"] for s in sent),
        "empty_timeouts": sum(g["empty_timeouts"] for g in got),
    }


def main(argv: list[str]) -> int:
    if argv[:1] == ["--child"]:
        return _child(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="stress")
    parser.add_argument("--producers", type=int)
    parser.add_argument("--consumers", type=int)
    parser.add_argument("--messages", type=int)
    parser.add_argument("--kill", type=int, help="extra producers killed -9 at random instants")
    parser.add_argument("--seed", type=int, default=1)
    opts = parser.parse_args(argv)
    cfg = PRESETS[opts.preset]
    changes = {k: getattr(opts, k) for k in ("producers", "consumers", "messages", "kill")}
    cfg = Config(**{**cfg.__dict__, **{k: v for k, v in changes.items() if v is not None}})
    print(f"config: {json.dumps(cfg.__dict__)}", flush=True)
    report = run(cfg, seed=opts.seed)
    print(json.dumps(report, indent=2))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
