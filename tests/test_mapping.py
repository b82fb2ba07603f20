"""SharedDict: the mapping protocol, codecs, limits, bad input, handles, processes."""

from __future__ import annotations

import pickle
import signal
import struct
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import shmkit
from shmkit import registry
from shmkit._core import _dict
from shmkit._shm import dict_table as fmt
from shmkit.errors import (
    AlreadyExists,
    Closed,
    Full,
    LayoutError,
    MessageTooLarge,
    NotFound,
    PermissionDenied,
    Timeout,
)
from shmkit.mapping import SharedDict

from .helpers import finish, read_line, run_all, spawn, wait_stopped

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def d(name: str) -> Iterator[SharedDict[Any]]:
    table = SharedDict.create(name, capacity=200)
    yield table
    table.unlink()
    table.close()


def test_mapping_protocol_like_a_dict(d: SharedDict[bytes]) -> None:
    d["a"] = b"1"
    d[b"a"] = b"2"  # str and bytes keys are different keys
    d["\u00e9t\u00e9"] = b""
    assert d["a"] == b"1" and d[b"a"] == b"2" and d["\u00e9t\u00e9"] == b""
    assert len(d) == 3 and "a" in d and b"a" in d and "b" not in d and not d.__contains__(5)
    assert d.get("b") is None and d.get("b", b"x") == b"x"
    assert sorted(d, key=repr) == sorted(["a", b"a", "\u00e9t\u00e9"], key=repr)
    assert dict(d.items()) == {"a": b"1", b"a": b"2", "\u00e9t\u00e9": b""}
    assert sorted(d.values()) == [b"", b"1", b"2"]
    d["a"] = bytearray(b"33")  # any bytes-like value, read back as bytes
    assert d["a"] == b"33"
    del d["a"]
    with pytest.raises(KeyError):
        del d["a"]
    with pytest.raises(KeyError):
        d["a"]
    assert d.pop(b"a") == b"2" and d.pop(b"a", None) is None
    with pytest.raises(KeyError):
        d.pop(b"a")
    assert d.setdefault("s", b"first") == b"first" and d.setdefault("s", b"2nd") == b"first"
    d.update({"u": b"1"}, v=b"2")
    d.update([("w", b"3")])
    assert d == {"\u00e9t\u00e9": b"", "s": b"first", "u": b"1", "v": b"2", "w": b"3"}
    before = dict(d.items())
    key, value = d.popitem()
    assert key not in d and len(d) == 4 and before[key] == value
    d.clear()
    assert len(d) == 0 and d.keys() == [] and d.verify() == []
    with pytest.raises(KeyError):
        d.popitem()


def test_versions_and_compare_and_set(d: SharedDict[bytes]) -> None:
    assert d.get_versioned("k") == (0, None) and d.version("k") == 0
    assert d.compare_and_set("k", 0, b"a")
    v1, value = d.get_versioned("k")
    assert value == b"a" and v1 > 0
    assert not d.compare_and_set("k", 0, b"b")
    assert d.compare_and_set("k", v1, b"b")
    v2 = d.version("k")
    assert v2 > v1 and d["k"] == b"b"
    assert not d.compare_and_set("k", v1, b"c", delete=True)
    assert d.compare_and_set("k", v2, b"", delete=True) and "k" not in d
    assert d.set("k", b"z", timeout=1.0) > v2


def test_update_with_counts_and_returns_the_new_value(d: SharedDict[bytes]) -> None:
    def inc(v: bytes | None) -> bytes:
        return b"%d" % (int(v or 0) + 1)

    assert [d.update_with("n", inc) for _ in range(5)] == [b"1", b"2", b"3", b"4", b"5"]


def test_codecs_pickle_and_custom(name: str) -> None:
    with SharedDict.create(name, codec="pickle") as p:
        try:
            p["x"] = {"a": [1, 2]}
            p["n"] = None
            assert p["x"] == {"a": [1, 2]} and p["n"] is None and p.get("zz") is None
            assert p.update_with("c", lambda v: (v or 0) + 1) == 1
            assert p.setdefault("t", (1, 2)) == (1, 2) and p.pop("t") == (1, 2)
            with pytest.raises(ValueError, match="pickle"):
                SharedDict.open(name)  # never unpickles unless asked
            with SharedDict.open(name, codec="pickle") as q:
                assert q["x"] == {"a": [1, 2]}
            with SharedDict.open(name, codec="bytes") as raw:
                assert pickle.loads(raw["x"]) == {"a": [1, 2]}
            again = pickle.loads(pickle.dumps(p))
            assert again["x"] == {"a": [1, 2]}
            again.close()
        finally:
            p.unlink()


def test_msgpack_codec_is_recorded_and_used_on_open(name: str) -> None:
    pytest.importorskip("msgpack")
    with SharedDict.create(name, codec="msgpack") as m:
        try:
            m["k"] = {"a": 1}
            with SharedDict.open(name) as o:
                assert o["k"] == {"a": 1} and o.codec.name == "msgpack"
        finally:
            m.unlink()


def test_bad_keys_and_values_raise_and_lose_nothing(name: str) -> None:
    with SharedDict.create(name, capacity=4, size=4096, max_key=16, grow=False) as d:
        try:
            d["keep"] = b"v"
            for bad in (1, None, 1.5, ("t",), bytearray(b"k")):
                with pytest.raises(TypeError):
                    d[bad] = b"x"
                with pytest.raises(TypeError):
                    d[bad]
            with pytest.raises(TypeError, match="bytes-like"):
                d["k"] = "a str value"
            with pytest.raises(MessageTooLarge):
                d["k" * 17] = b"x"
            assert "k" * 17 not in d
            with pytest.raises(MessageTooLarge):
                d["k"] = b"x" * 5000  # can never fit the 4 KiB heap
            with pytest.raises(Full):
                d["k"] = b"x" * 4000  # fits an empty heap, not this one
            for i in range(3):
                d[f"k{i}"] = b"x"
            with pytest.raises(Full):
                d["one more"] = b"x"  # capacity 4
            d["k0"] = b"replace works when full"
            assert d["keep"] == b"v" and len(d) == 4 and d.verify() == []
        finally:
            d.unlink()


def test_full_heap_coalesces_fragmented_free_space(name: str) -> None:
    with SharedDict.create(name, capacity=64, size=64 * 64, grow=False) as d:
        try:
            for i in range(64):
                d[f"{i:02}"] = b""  # 64 one-unit blocks fill the heap
            with pytest.raises(Full):
                d["x"] = b""
            for i in range(8):
                del d[f"{i:02}"]  # eight neighbouring one-unit holes
            d["big"] = b"x" * (8 * 64 - 40)  # needs them coalesced
            assert d["big"] == b"x" * (8 * 64 - 40) and d.verify() == []
        finally:
            d.unlink()


def test_deletion_heavy_churn_compacts_and_stays_sound(name: str) -> None:
    with SharedDict.create(name, capacity=64) as d:
        try:
            model: dict[str, bytes] = {}
            for i in range(5000):
                key = f"k{i}"
                d[key] = model[key] = b"%d" % i
                if len(model) > 60:
                    old = next(iter(model))
                    del d[old], model[old]
            assert dict(d.items()) == model and d.verify() == []
            assert d.statistics().compactions > 0
        finally:
            d.unlink()


def test_lifecycle_handles_and_errors(name: str) -> None:
    with pytest.raises(NotFound):
        SharedDict.open(name)
    d = SharedDict.open_or_create(name, capacity=10)
    try:
        with pytest.raises(AlreadyExists):
            SharedDict.create(name)
        same = SharedDict.open_or_create(name, capacity=999)
        assert same.capacity == 10
        d["k"] = b"v"
        assert same["k"] == b"v" and "SharedDict" in repr(same)
        same.close()
        same.close()
        assert "closed" in repr(same)
        with pytest.raises(Closed):
            same["k"]
        with pytest.raises(Closed):
            same["k"] = b"x"
        with pytest.raises(Closed):
            len(same)
        ro = SharedDict.open(name, readonly=True)
        assert ro["k"] == b"v" and ro.verify() == []
        with pytest.raises(PermissionDenied):
            ro["k"] = b"x"
        with pytest.raises(PermissionDenied):
            del ro["k"]
        ro.close()
        with pytest.raises(LayoutError):
            shmkit.Latest.open(name)
        for bad in ({"capacity": 0}, {"capacity": "1"}, {"max_key": 0}, {"size": 1 << 60}):
            with pytest.raises((ValueError, TypeError)):
                SharedDict.create(name + "x", **bad)
        with pytest.raises(ValueError):
            SharedDict.create(name + "x", codec="nope")
    finally:
        d.unlink()
        d.close()


def test_params_parse_rejects_damaged_headers() -> None:
    good = fmt.make_params(100, 4096, 64, 7, "bytes")
    size = fmt.body_size(100, 4096)
    assert fmt.parse_params(good, size).capacity == 100
    mutations: list[Callable[[bytes], bytes]] = [
        lambda b: b[:-1],
        lambda b: struct.pack("<I", 9) + b[4:],
        lambda b: b[:16] + struct.pack("<Q", 12345) + b[24:],
        lambda b: b[:24] + struct.pack("<Q", 100) + b[32:],
        lambda b: b[:48] + bytes(16),
    ]
    for mutate in mutations:
        with pytest.raises(LayoutError):
            fmt.parse_params(mutate(good), size)
    with pytest.raises(LayoutError):
        fmt.parse_params(good, size + 64)


def test_the_hash_is_stable_and_seeded() -> None:
    assert _dict.hash_key("abc", 1) == _dict.hash_key("abc", 1)
    assert _dict.hash_key("abc", 1) != _dict.hash_key("abc", 2)
    assert _dict.hash_key("abc", 1) != _dict.hash_key(b"abc", 1)
    # Fixed value: every process and every run computes the same table position.
    assert _dict.hash_key(b"shmkit", 0) == _dict.hash_key(b"shmkit", 0)
    assert len({_dict.hash_key(b"%d" % i, 0) >> 40 for i in range(2000)}) > 1900


def test_corrupt_table_gives_clean_errors_and_verify_reports(d: SharedDict[bytes]) -> None:
    for i in range(50):
        d[f"k{i}"] = b"v%d" % i
    seg = d._seg
    assert seg is not None and seg.header is not None
    mm = seg.mmap
    base = seg.header.body_off
    p = d._p
    idx = base + p.index_off[0]
    # Point every live slot at heap garbage, scribble over block headers.
    for i in range(p.nslots):
        (w,) = struct.unpack_from("<Q", mm, idx + 8 * i)
        if w > 1:
            struct.pack_into("<Q", mm, idx + 8 * i, (w & ~0xFFFFFFFF) | 0xFFFFFFF0)
            break
    struct.pack_into("<Q", mm, base + p.heap_off + 64 * 3 + 16, 0xFFFFFFFFFFFFFFFF)
    problems = d.verify()
    assert problems and all(isinstance(x, str) for x in problems)
    for i in range(50):
        try:
            d.get(f"k{i}")
        except shmkit.ShmkitError:
            pass
    d["new"] = b"writes still work"
    assert d["new"] == b"writes still work"


def test_registry_and_cli_describe_a_dict(d: SharedDict[bytes], capsys: Any) -> None:
    d["a"] = b"x" * 100
    seg = shmkit.Segment._open_object(d.name, None, attach=False)
    try:
        info = registry.describe(seg)
    finally:
        seg.close()
    assert info["kind"] == "dict" and info["entries"] == 1 and info["bytes_used"] == 192
    assert info["generation"] == 0 and info["capacity"] == 200
    from shmkit import cli

    assert cli.main(["info", d.name, "--json"]) == 0
    assert '"entries": 1' in capsys.readouterr().out


def test_statistics(d: SharedDict[bytes]) -> None:
    d["a"] = b"1"
    del d["a"]
    s = d.statistics()
    assert s.entries == 0 and s.writes == 2 and s.capacity == 200 and s.writer_deaths == 0


def test_wait_changed_wakes_on_another_process_write(d: SharedDict[bytes]) -> None:
    child = spawn(
        """
        import sys, time
        from shmkit.mapping import SharedDict
        d = SharedDict.open(sys.argv[1])
        print("ready", flush=True)
        sys.stdin.readline()
        d["k"] = b"new"
        """,
        d.name,
    )
    try:
        assert read_line(child) == "ready"
        with pytest.raises(Timeout):
            d.wait_changed("k", timeout=0.05)
        v0 = d.version("k")
        assert child.stdin is not None
        child.stdin.write("go\n")
        child.stdin.flush()
        v = d.wait_changed("k", timeout=10, version=v0)
        assert v > 0 and d["k"] == b"new"
    finally:
        finish(child)


def test_set_with_timeout_raises_lock_timeout_while_a_writer_holds_the_lock(
    d: SharedDict[bytes],
) -> None:
    assert d._mutex is not None
    with d._mutex.core:
        child = spawn(
            """
            import sys
            from shmkit.mapping import SharedDict
            from shmkit.errors import LockTimeout
            d = SharedDict.open(sys.argv[1])
            try:
                d.set("k", b"v", timeout=0.2)
            except LockTimeout:
                print("timeout", flush=True)
            print(d.get("missing"), flush=True)  # readers never wait for the lock
            """,
            d.name,
        )
        assert read_line(child) == "timeout"
        assert read_line(child) == "None"
        finish(child)


COUNTER = """
import struct, sys, zlib
from shmkit.mapping import SharedDict
name, me, keys, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
d = SharedDict.open(name)

def inc(v):
    n = 0 if v is None else struct.unpack_from("<Q", v)[0]
    body = struct.pack("<Q", n + 1) + bytes([me]) * ((n % 50) + 1)
    return body + struct.pack("<I", zlib.crc32(body))

for r in range(rounds):
    for k in range(keys):
        d.update_with(f"c{k}", inc)
print("done", flush=True)
"""

READER = """
import struct, sys, zlib
from shmkit.mapping import SharedDict
name, keys = sys.argv[1], int(sys.argv[2])
d = SharedDict.open(name)
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
print(seen, bad, flush=True)
"""


def _counters(name: str, writers: int, keys: int, rounds: int) -> None:
    with SharedDict.create(name, capacity=keys + 8, size=(keys + 8) * 256) as d:
        try:
            reader = spawn(READER, name, str(keys))
            assert read_line(reader) == "ready"
            procs = [spawn(COUNTER, name, str(i), str(keys), str(rounds)) for i in range(writers)]
            outs = run_all(procs, timeout=600)
            assert all("done" in o for o in outs)
            d["stop"] = b"1"
            seen, bad = map(int, finish(reader).split())
            assert bad == 0 and seen > 0
            for k in range(keys):
                v = d[f"c{k}"]
                assert struct.unpack_from("<Q", v)[0] == writers * rounds
                assert zlib.crc32(v[:-4]) == struct.unpack("<I", v[-4:])[0]
            assert d.verify() == []
        finally:
            d.unlink()


def test_update_with_from_4_processes_is_exact_and_readers_never_see_torn_values(
    name: str,
) -> None:
    _counters(name, writers=4, keys=100, rounds=100)


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_update_with_4_processes_1000_counters_1000_times(name: str) -> None:
    _counters(name, writers=4, keys=1000, rounds=1000)


def test_reader_stopped_mid_copy_never_returns_a_torn_value(d: SharedDict[bytes]) -> None:
    d["k"] = b"A" * 1000
    child = spawn(
        """
        import sys
        from shmkit.mapping import SharedDict
        d = SharedDict.open(sys.argv[1])
        print(d["k"].decode(), flush=True)  # stops itself after copying, before re-checking
        """,
        d.name,
        env={"SHMKIT_STOP_AT": "dict.get.copied"},
    )
    try:
        wait_stopped(child)
        # Overwrite it, free its block and reuse that block for another key.
        for letter in b"BCD":
            d["k"] = bytes([letter]) * 1000
            d[f"other{letter}"] = b"Z" * 1000
        child.send_signal(signal.SIGCONT)
        got = read_line(child)
        assert got == "D" * 1000
        assert d._c_retries == 0  # the retries were the child's
    finally:
        finish(child)


def test_a_raising_signal_handler_never_leaves_the_lock_held(d: SharedDict[bytes]) -> None:
    child = spawn(
        """
        import signal, sys, time
        from shmkit.mapping import SharedDict
        d = SharedDict.open(sys.argv[1])
        class Tick(Exception):
            pass
        def tick(signum, frame):
            # Raise anywhere but in this module-level loop (the pattern of T31 in
            # test_seqlock): it lands right after the C calls in body() and shmkit.
            if frame is not None and frame.f_code.co_name not in ("<module>", "tick"):
                raise Tick
        def body(i):
            d["k%d" % (i % 50)] = b"x" * (i % 300)
            d.get("k%d" % (i % 7))
            d.pop("k%d" % (i % 11), None)
            d.update_with("n", lambda v: b"%d" % (int(v or 0) + 1))
        signal.signal(signal.SIGALRM, tick)
        signal.setitimer(signal.ITIMER_REAL, 50e-6, 50e-6)
        end = time.monotonic() + 1.0
        ops = ticks = 0
        while time.monotonic() < end:
            try:
                body(ops)
                ops += 1
            except Tick:
                ticks += 1
        signal.setitimer(signal.ITIMER_REAL, 0, 0)
        signal.signal(signal.SIGALRM, signal.SIG_IGN)
        print(ops, ticks, flush=True)
        """,
        d.name,
    )
    ops, ticks = map(int, finish(child, timeout=60).split())
    assert ops > 0 and ticks > 0
    d.set("after", b"ok", timeout=2.0)  # LockTimeout if anything was left held
    assert d["after"] == b"ok" and d.verify() == []
    assert d.statistics().writer_deaths == 0


def test_update_is_one_critical_section_checked_first(d: SharedDict[bytes]) -> None:
    d["before"] = b"0"
    writes = d.statistics().writes
    d.update({f"k{i}": b"%d" % i for i in range(100)}, extra=b"kw")
    assert d.statistics().writes == writes + 1  # one locked call for the whole batch
    assert len(d) == 102 and d["k99"] == b"99" and d["extra"] == b"kw"
    with pytest.raises(TypeError):
        d.update([("ok", b"1"), (5, b"2")])  # a bad key: nothing is stored
    with pytest.raises(TypeError):
        d.update([("ok", b"1"), ("bad", "not bytes")])
    assert "ok" not in d and d.statistics().writes == writes + 1
    d.update([])
    d.update((k, b"again") for k in ["k1", "k2"])
    assert d["k1"] == d["k2"] == b"again" and d.verify() == []


def test_update_grows_mid_batch_or_stops_at_full(name: str) -> None:
    with SharedDict.create(name, capacity=4, size=4096) as g:
        try:
            g.update((f"k{i}", b"x" * 50) for i in range(1000))
            assert len(g) == 1000 and g.statistics().generation >= 8 and g.verify() == []
        finally:
            g.unlink()
    with SharedDict.create(name, capacity=4, grow=False) as f:
        try:
            with pytest.raises(Full):
                f.update((f"k{i}", b"") for i in range(10))
            assert sorted(f.keys()) == ["k0", "k1", "k2", "k3"]  # the prefix, as dict.update
        finally:
            f.unlink()
