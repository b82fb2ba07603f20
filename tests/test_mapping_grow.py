"""SharedDict growth: new generations every process follows, limits, crashes, cleanup."""

from __future__ import annotations

import os
import random
import signal
import struct
import threading
import time
import zlib
from typing import Any

import pytest

from shmkit import cli, registry
from shmkit._shm import dict_gens
from shmkit.errors import Full, MessageTooLarge
from shmkit.mapping import SharedDict

from .helpers import finish, read_line, run_all, spawn, wait_stopped

pytestmark = pytest.mark.timeout(120)


def _gens(d: SharedDict[Any]) -> list[str]:
    return dict_gens.existing(d._segment().sysname)


def test_a_full_dict_grows_and_every_handle_follows(name: str) -> None:
    with SharedDict.create(name, capacity=4, size=4096) as d:
        try:
            other = SharedDict.open(name)
            ro = SharedDict.open(name, readonly=True)
            d["first"] = b"1"
            v_first = other.version("first")
            for i in range(500):
                d[f"k{i}"] = b"v%d" % i
            s = d.statistics()
            assert s.generation >= 5 and s.capacity >= 501 and s.entries == 501
            # The other handles are still on generation 0 until they touch the dict.
            for h in (other, ro):
                assert h["k499"] == b"v499" and len(h) == 501 and "k0" in h
                assert h.statistics().generation == s.generation
            # Versions carry over: a compare-and-set with a pre-growth version works.
            assert other.compare_and_set("first", v_first, b"2") and d["first"] == b"2"
            other["big"] = b"x" * 100_000  # larger than the whole first heap
            assert d["big"] == b"x" * 100_000 and ro.get("big") == b"x" * 100_000
            assert dict(ro.items()) == dict(d.items()) and len(d.keys()) == 502
            # Only the root and the current generation exist.
            gen = d.statistics().generation
            assert _gens(d) == [dict_gens.sysname_of(d._segment().sysname, gen)]
            assert d.verify() == [] and ro.verify() == [] and other.verify() == []
            other.close()
            ro.close()
        finally:
            d.unlink()
        assert _gens(d) == []
        assert not any(
            f.startswith(d._segment().sysname.lstrip("/")) for f in os.listdir("/dev/shm")
        )


def test_grow_false_and_max_bytes_give_full(name: str) -> None:
    with SharedDict.create(name, capacity=4, grow=False) as d:
        try:
            for i in range(4):
                d[f"k{i}"] = b""
            with pytest.raises(Full):
                d["more"] = b""
            assert d.statistics().generation == 0 and _gens(d) == []
        finally:
            d.unlink()
    with SharedDict.create(name, capacity=8, size=4096, max_bytes=64 * 1024) as d:
        try:
            stored = 0
            with pytest.raises(Full, match="max_bytes"):
                for i in range(10_000):
                    d[f"k{i}"] = b"v" * 100
                    stored += 1
            assert 8 < stored < 10_000 and len(d) == stored and d.verify() == []
            with pytest.raises(MessageTooLarge):
                d["huge"] = b"x" * (1 << 40 >> 8)  # beyond any table's heap
        finally:
            d.unlink()
    with pytest.raises(ValueError, match="max_bytes"):
        SharedDict.create(name, capacity=1000, max_bytes=4096)


def test_wait_changed_and_update_with_span_a_growth(name: str) -> None:
    with SharedDict.create(name, capacity=2, size=4096) as d:
        try:
            other = SharedDict.open(name)
            v = other.version("k")
            d["k"] = b"1"
            for i in range(50):
                d[f"fill{i}"] = b""  # grows
            assert other.wait_changed("k", timeout=5, version=v) > 0
            assert other.update_with("k", lambda x: (x or b"") + b"+") == b"1+"
            other.close()
        finally:
            d.unlink()


def test_ls_info_rm_and_gc_know_the_generation_segments(name: str, capsys: Any) -> None:
    d = SharedDict.create(name, capacity=2, size=4096)
    try:
        for i in range(20):
            d[f"k{i}"] = b"x" * 10
        entries = [e for e in registry.discover(with_stats=True) if e.name == name]
        assert len(entries) == 1, "a generation segment is listed as a part, not an object"
        entry = entries[0]
        gen = entry.stats["generation"]
        assert gen == d.statistics().generation > 0
        assert entry.stats["entries"] == 20 and entry.stats["bytes_used"] == 20 * 64
        assert dict_gens.sysname_of(entry.sysname, gen) in entry.parts
        assert entry.size == entry.stats["shm_bytes"]  # root and generation together
        assert cli.main(["info", name, "--json"]) == 0
        assert f'"generation": {gen}' in capsys.readouterr().out
        assert cli.main(["ls", "--stats", "--json"]) == 0
        capsys.readouterr()
        assert cli.main(["rm", name]) == 0
        assert _gens(d) == []
    finally:
        d.close()
        registry.remove(name) if os.path.exists(f"/dev/shm/{d._name}") else None


def test_an_orphaned_generation_is_listed_and_collected(name: str) -> None:
    # A process that created and grew a dict exits; its root alone is then removed
    # (as a crash of `rm` halfway would leave it): the generation is an orphan.
    child = spawn(
        """
        import sys
        from shmkit.mapping import SharedDict
        d = SharedDict.create(sys.argv[1], capacity=2, size=4096)
        for i in range(10):
            d[f"k{i}"] = b""
        print(d._segment().sysname, d.statistics().generation, flush=True)
        """,
        name,
    )
    root, gen = finish(child).split()
    gen_sys = dict_gens.sysname_of(root, int(gen))
    assert dict_gens.existing(root) == [gen_sys]
    [entry] = [e for e in registry.discover() if e.sysname == root]
    assert gen_sys in entry.parts  # while the root exists, a part of it
    os.unlink("/dev/shm/" + root.lstrip("/"))
    try:
        entries = [e for e in registry.discover() if e.sysname == gen_sys]
        assert len(entries) == 1 and entries[0].kind == "dict" and entries[0].abandoned
        # A dry run (acting would also collect other programs' abandoned objects).
        assert gen_sys in [e.sysname for e in registry.gc(act=False, grace=0.0)]
        assert registry.remove(gen_sys) == [gen_sys]
        assert dict_gens.existing(root) == []
    finally:
        dict_gens.sweep(root, None)


GROW_COUNTER = """
import struct, sys, zlib
from shmkit.mapping import SharedDict
name, me, keys, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
d = SharedDict.open(name)

def inc(v):
    n = 0 if v is None else struct.unpack_from("<Q", v)[0]
    body = struct.pack("<Q", n + 1) + bytes([me]) * ((n * 7) % 90 + 1)
    return body + struct.pack("<I", zlib.crc32(body))

for r in range(rounds):
    for k in range(keys):
        d.update_with(f"c{(k * 7 + me) % keys}", inc)
print("done", d.statistics().generation, flush=True)
"""

GROW_READER = """
import struct, sys, zlib
from shmkit.mapping import SharedDict
name, keys = sys.argv[1], int(sys.argv[2])
d = SharedDict.open(name, readonly=True)
print("ready", flush=True)
seen = bad = 0
while True:
    for k in range(keys):
        v = d.get(f"c{k}")
        if v is None:
            continue
        seen += 1
        if zlib.crc32(v[:-4]) != struct.unpack("<I", v[-4:])[0]:
            bad += 1
    if d.get("stop") is not None:
        break
print(seen, bad, d.statistics().generation, flush=True)
"""


def test_processes_write_and_read_while_the_dict_grows_totals_exact(name: str) -> None:
    writers, keys, rounds = 4, 300, 5
    with SharedDict.create(name, capacity=4, size=4096) as d:
        try:
            reader = spawn(GROW_READER, name, str(keys))
            assert read_line(reader) == "ready"
            procs = [
                spawn(GROW_COUNTER, name, str(i), str(keys), str(rounds)) for i in range(writers)
            ]
            outs = run_all(procs, timeout=300)
            assert all(o.startswith("done") for o in outs)
            d["stop"] = b"1"
            seen, bad, reader_gen = map(int, finish(reader).split())
            gen = d.statistics().generation
            assert bad == 0 and seen > 0 and gen >= 6 and reader_gen == gen
            for k in range(keys):
                v = d[f"c{k}"]
                assert struct.unpack_from("<Q", v)[0] == writers * rounds
                assert zlib.crc32(v[:-4]) == struct.unpack("<I", v[-4:])[0]
            assert d.verify() == [] and _gens(d) == [
                dict_gens.sysname_of(d._segment().sysname, gen)
            ]
        finally:
            d.unlink()


GROWER = """
import sys
from shmkit.mapping import SharedDict
name, start, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
d = SharedDict.open(name)
print("ready", flush=True)
for i in range(start, start + n):
    print(f"s {i}", flush=True)
    d[f"k{i}"] = b"v%d" % i
print("end", flush=True)
"""

GROW_POINTS = [
    ("dict.grow.created", 0),
    ("dict.grow.copying", 0),
    ("dict.grow.copying", 2),
    ("dict.grow.copied", 0),
    ("dict.grow.copied", 3),
    ("dict.grow.published", 0),
    ("dict.grow.published", 2),
    ("dict.grow.followed", 1),
]


@pytest.mark.parametrize(("point", "after"), GROW_POINTS)
def test_grower_killed_at_each_point_loses_nothing(name: str, point: str, after: int) -> None:
    with SharedDict.create(name, capacity=4, size=4096) as d:
        try:
            other = SharedDict.open(name, readonly=True)
            for i in range(3):
                d[f"k{i}"] = b"v%d" % i
            child = spawn(
                GROWER,
                name,
                "3",
                "400",
                env={"SHMKIT_CRASH_AT": point, "SHMKIT_CRASH_AFTER": str(after)},
            )
            assert read_line(child) == "ready"
            out, _err = child.communicate(timeout=60)
            assert child.returncode == -signal.SIGKILL, f"{point} was never reached"
            started = [int(x.split()[1]) for x in out.splitlines() if x.startswith("s ")]
            last = started[-1]
            # A growth's copy is one step: the killed write (last) is either there or not.
            assert d.verify() == []
            got = dict(d.items())
            want = {f"k{i}": b"v%d" % i for i in range(last)}
            assert got == want or got == {**want, f"k{last}": b"v%d" % last}
            assert dict(other.items()) == got and len(other) == len(got)
            gen = d.statistics().generation
            # verify() removed whatever the dead grower left: root + current only.
            assert _gens(d) == ([dict_gens.sysname_of(d._segment().sysname, gen)] if gen else [])
            for i in range(last + 1, last + 300):  # writes (and growth) go on
                d[f"k{i}"] = b"v%d" % i
            assert d.verify() == [] and other[f"k{last + 299}"] == b"v%d" % (last + 299)
            other.close()
        finally:
            d.unlink()


def test_growing_out_of_the_root_gives_its_table_memory_back(name: str) -> None:
    with SharedDict.create(name, capacity=20_000, size=4 << 20) as d:
        try:
            path = "/dev/shm/" + d._segment().sysname.lstrip("/")
            before = os.stat(path).st_blocks * 512
            reader = SharedDict.open(name, readonly=True)
            assert reader.get("k0") is None  # maps generation 0 and reads it
            for i in range(20_001):
                d[f"k{i}"] = b"x" * 40
            after = os.stat(path).st_blocks * 512
            assert before > 4 << 20 and after < 64 * 1024  # index and heap pages removed
            assert reader["k0"] == b"x" * 40 and len(reader) == 20_001
            assert d.verify() == [] and reader.verify() == []
            reader.close()
        finally:
            d.unlink()


def test_a_reader_stopped_mid_copy_during_growth_retries_in_the_new_generation(
    name: str,
) -> None:
    with SharedDict.create(name, capacity=2000, size=1 << 20) as d:
        try:
            d["k"] = b"A" * 1000
            child = spawn(
                """
                import sys
                from shmkit.mapping import SharedDict
                d = SharedDict.open(sys.argv[1], readonly=True)
                v = d["k"]  # stops itself after copying, before re-checking
                print(v[:1].decode(), len(v), d.statistics().generation, flush=True)
                """,
                name,
                env={"SHMKIT_STOP_AT": "dict.get.copied"},
            )
            try:
                wait_stopped(child)
                d["k"] = b"B" * 1000
                for i in range(2000):
                    d[f"fill{i}"] = b""  # grows: the root's table is retired and freed
                gen = d.statistics().generation
                assert gen >= 1
                child.send_signal(signal.SIGCONT)
                assert read_line(child) == f"B 1000 {gen}"
            finally:
                finish(child)
        finally:
            d.unlink()


def _random_kills_while_growing(name: str, rounds: int) -> None:
    rng = random.Random(rounds)
    with SharedDict.create(name, capacity=2, size=4096) as d:
        try:
            done = 0  # keys k0 .. k{done-1} are stored
            for _ in range(rounds):
                child = spawn(GROWER, name, str(done), "100000000")
                try:
                    assert read_line(child) == "ready"
                    time.sleep(rng.uniform(0.01, 0.3))
                finally:
                    child.send_signal(signal.SIGKILL)
                    out, _err = child.communicate(timeout=10)
                started = [int(x.split()[1]) for x in out.splitlines() if x.startswith("s ")]
                last = started[-1] if started else done
                assert d.verify() == []
                got = len(d)
                assert got in (last, last + 1), (got, last)
                for i in (*range(done, got), 0, got - 1):
                    if got:
                        assert d[f"k{i}"] == b"v%d" % i
                assert f"k{got}" not in d
                done = got
                gen = d.statistics().generation
                assert _gens(d) == (
                    [dict_gens.sysname_of(d._segment().sysname, gen)] if gen else []
                )
        finally:
            d.unlink()


def test_random_kills_while_growing_reduced(name: str) -> None:
    _random_kills_while_growing(name, 6)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_random_kills_while_growing_soak(name: str) -> None:
    _random_kills_while_growing(name, 100)


def test_growth_with_the_flock_backend(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHMKIT_MUTEX", "flock")
    with SharedDict.create(name, capacity=2, size=4096) as d:
        try:
            assert d._flock
            other = SharedDict.open(name)
            d.update((f"k{i}", b"x" * 30) for i in range(300))
            for i in range(300, 400):
                other[f"k{i}"] = b"y"
            assert len(d) == 400 and d["k399"] == b"y" and other["k0"] == b"x" * 30
            assert d.statistics().generation >= 7 and d.verify() == [] and other.verify() == []
            other.close()
        finally:
            d.unlink()


def test_threads_sharing_a_handle_while_it_grows(name: str) -> None:
    with SharedDict.create(name, capacity=2, size=4096) as d:
        try:
            errors: list[BaseException] = []

            def work(me: int) -> None:
                try:
                    for i in range(2000):
                        d[f"t{me}-{i}"] = b"%d" % i
                        assert d[f"t{me}-{i // 2}"] == b"%d" % (i // 2)
                except BaseException as exc:  # reported below
                    errors.append(exc)

            threads = [threading.Thread(target=work, args=(t,)) for t in range(3)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            assert not errors and len(d) == 6000 and d.verify() == []
            assert all(d[f"t{t}-1999"] == b"1999" for t in range(3))
        finally:
            d.unlink()
