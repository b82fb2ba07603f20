"""Issue 10 item 10: ``ls --all``/``--stats`` and ``info`` on raw, corrupt and every kind."""

from __future__ import annotations

import json
import os
import threading
import time
from typing import Any

import posix_ipc
import pytest

import shmkit
from shmkit import _layout, cli
from shmkit.broadcast import Broadcast, subscribe

from .helpers import finish, kill, read_line, spawn


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any, str]:
    """main(argv): status, stdout (parsed when --json), stderr."""
    status = cli.main(list(argv))
    got = capsys.readouterr()
    return status, json.loads(got.out) if "--json" in argv else got.out, got.err


@pytest.fixture
def raw(name: str) -> Any:
    """A raw segment of 1234 bytes and a raw semaphore of value 3, as posix_ipc code makes them."""
    seg, sem = "/" + name, "/" + name + "-sem"
    posix_ipc.SharedMemory(seg, posix_ipc.O_CREX, size=1234).close_fd()
    posix_ipc.Semaphore(sem, posix_ipc.O_CREX, initial_value=3).close()
    yield seg, sem
    posix_ipc.unlink_shared_memory(seg)
    posix_ipc.unlink_semaphore(sem)


def test_ls_all_lists_raw_segments_and_semaphores(
    raw: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    seg, sem = raw
    status, listing, _ = run(capsys, "ls", "--json")
    assert status == 0 and not {seg, sem} & {e["name"] for e in listing}
    status, text, _ = run(capsys, "ls")
    assert "not made by shmkit: shmkit ls --all" in text
    status, listing, _ = run(capsys, "ls", "--all", "--json", "--stats")
    assert status == 0
    mine = {e["name"]: e for e in listing if e["name"] in (seg, sem)}
    assert mine[seg]["kind"] == "segment" and mine[seg]["state"] == "raw"
    assert mine[seg]["size"] == 1234 and mine[seg]["owner"] and mine[seg]["mode"] == 0o600
    assert mine[sem]["kind"] == "semaphore" and mine[sem]["stats"] == {"value": 3}
    names = [e["name"].lstrip("/").lower() for e in listing]
    assert names == sorted(names)
    status, text, _ = run(capsys, "ls", "--all", "--stats")
    line = next(x for x in text.splitlines() if seg + " " in x)
    assert "raw" in line and "1.2 KiB" in line
    assert "value 3" in next(x for x in text.splitlines() if sem in x)


def test_info_describes_a_raw_segment_and_semaphore(
    raw: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    seg, sem = raw
    status, text, _ = run(capsys, "info", seg)
    assert status == 0
    owner = __import__("pwd").getpwuid(os.geteuid()).pw_name
    assert f"raw segment, 1234 bytes (1.2 KiB), owner {owner}, mode 600" in text
    assert "corrupt" not in text
    status, text, _ = run(capsys, "info", sem)
    assert status == 0 and f"raw semaphore, value 3, owner {owner}, mode 600" in text
    status, info, _ = run(capsys, "info", seg, "--json")
    assert status == 0 and info["entry"]["state"] == "raw" and info["entry"]["size"] == 1234


def test_info_calls_only_a_bad_shmkit_header_corrupt(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    sysname = "/" + name
    shm = posix_ipc.SharedMemory(sysname, posix_ipc.O_CREX, size=4096)
    try:
        os.write(shm.fd, _layout.MAGIC + b"\xff" * 200)  # the magic, then garbage
        shm.close_fd()
        status, text, _ = run(capsys, "info", sysname)
        assert status == 3 and "corrupt" in text
        status, info, _ = run(capsys, "info", sysname, "--json")
        assert status == 3 and info["entry"]["state"] == "corrupt" and info["entry"]["error"]
        status, listing, _ = run(capsys, "ls", "--all", "--json")
        assert {e["name"]: e["state"] for e in listing}[sysname] == "corrupt"
    finally:
        posix_ipc.unlink_shared_memory(sysname)


def test_json_errors_are_json_with_a_nonzero_status(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = run(capsys, "info", name, "--json")
    assert status == 1 and out["error"]["type"] == "NotFound" and name in out["error"]["message"]
    assert err == ""
    status, text, err = run(capsys, "info", name)
    assert status == 1 and text == "" and err.startswith("shmkit info: error: no shared-memory")
    assert len(err.strip().splitlines()) == 1
    with pytest.raises(SystemExit) as info:
        cli.main(["info", "--json"])  # a usage error: still JSON, status 2
    assert info.value.code == 2
    out = json.loads(capsys.readouterr().out)
    assert out["error"]["type"] == "UsageError" and "required: name" in out["error"]["message"]


def test_info_shows_a_lock_holder_from_another_process(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    lock = shmkit.Lock.create(name)
    holder = spawn(
        """
        import sys, time, shmkit
        lock = shmkit.Lock.open(sys.argv[1])
        lock.acquire(timeout=10)
        print("held", flush=True)
        sys.stdin.readline()
        lock.release()
        """,
        name,
    )
    try:
        assert read_line(holder) == "held"
        status, info, _ = run(capsys, "info", name, "--json")
        assert status == 0
        d = info["details"]
        assert d["state"] == "held" and d["holder"]["pid"] == holder.pid
        assert d["holder"]["alive"] == "alive" and d["holder"]["held_for_s"] >= 0
        status, text, _ = run(capsys, "ls", "--stats")
        assert f"held by {holder.pid} (alive)" in next(x for x in text.splitlines() if name in x)
        status, text, _ = run(capsys, "info", name)
        assert "lock.holder.pid" in text and str(holder.pid) in text
        assert holder.stdin is not None
        holder.stdin.write("\n")
        holder.stdin.flush()
        finish(holder)
        status, info, _ = run(capsys, "info", name, "--json")
        assert info["details"]["state"] == "free" and "holder" not in info["details"]
    finally:
        kill(holder)
        lock.unlink()
        lock.close()


def test_info_shows_semaphore_event_latest_and_dict_state(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    sem = shmkit.Semaphore.create(name + "-s", 2)
    ev = shmkit.Event.create(name + "-e")
    lt = shmkit.Latest.create(name + "-l", size=64)
    d = shmkit.SharedDict.create(name + "-d")
    try:
        sem.release()
        assert run(capsys, "info", name + "-s", "--json")[1]["details"] == {"value": 3}
        assert run(capsys, "info", name + "-e", "--json")[1]["details"] == {"set": False}
        ev.set()
        assert run(capsys, "info", name + "-e", "--json")[1]["details"] == {"set": True}
        lt.set(b"a")
        lt.set(b"b")
        assert run(capsys, "info", name + "-l", "--json")[1]["details"]["version"] == 2
        d["k1"] = b"v" * 10
        d["k2"] = b"w"
        facts = run(capsys, "info", name + "-d", "--json")[1]["details"]
        assert facts["entries"] == 2 and facts["bytes_used"] > 0
        _, text, _ = run(capsys, "ls", "--stats")
        rows = {x.split()[1]: x for x in text.splitlines() if name in x}
        assert "value 3" in rows[name + "-s"] and "│ set " in rows[name + "-e"]
        assert "version 2" in rows[name + "-l"] and "2 entries" in rows[name + "-d"]
    finally:
        for obj in (sem, ev, lt, d):
            obj.unlink()
            obj.close()


def test_info_shows_queue_depth_and_waiters(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    q = shmkit.Queue.create(name, 4096)
    try:
        for i in range(3):
            q.put(b"x" * (i + 1))
        d = run(capsys, "info", name, "--json")[1]["details"]
        assert d["messages"] == 3 and d["waiting_getters"] == 0
        for _ in range(3):
            q.get(timeout=1)
        got: list[bytes] = []
        getter = threading.Thread(target=lambda: got.append(q.get(timeout=60)))  # queue empty
        getter.start()
        try:
            deadline = time.monotonic() + 30
            while True:
                d = run(capsys, "info", name, "--json")[1]["details"]
                if d["waiting_getters"] == 1 or time.monotonic() > deadline:
                    break
                time.sleep(0.01)
            assert d["messages"] == 0 and d["waiting_getters"] == 1
            _, text, _ = run(capsys, "ls", "--stats")
            assert "0 msgs" in text and "waiting 1 get" in text
        finally:
            q.put(b"wake")
            getter.join(30)
        assert got == [b"wake"]
    finally:
        q.unlink()
        q.close()


def test_info_shows_broadcast_position_and_slowest_lag(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    bc = Broadcast.create(name, slot_size=64, slots=16)
    pub = bc.publisher()
    fast, slow = subscribe(name), subscribe(name)
    try:
        for i in range(5):
            pub.publish(bytes([i]))
        for _ in range(5):
            fast.recv(timeout=1)
        slow.recv(timeout=1)
        d = run(capsys, "info", name, "--json")[1]["details"]
        assert d["published"] == 5 and d["live_subscribers"] == 2 and d["slowest_lag"] == 4
        _, text, _ = run(capsys, "ls", "--stats")
        assert "#5, 2 subs, slowest lag 4" in text
    finally:
        for h in (fast, slow, pub):
            h.close()
        bc.unlink()
        bc.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a segment to another uid needs root")
def test_another_users_object_is_listed_not_corrupt(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    seg = shmkit.Segment.create(name, 100, mode=0o644)
    path = os.path.join("/dev/shm", seg.sysname.lstrip("/"))
    os.chown(path, 54321, -1)
    try:
        status, listing, _ = run(capsys, "ls", "--all", "--json")
        (mine,) = [e for e in listing if e["sysname"] == seg.sysname]
        # readable by us (mode 0644): listed as what it is, with its owner; never corrupt
        assert mine["state"] == "ready" and mine["kind"] == "segment" and mine["name"] == name
        assert mine["uid"] == 54321 and mine["owner"] == "54321"
        status, text, _ = run(capsys, "info", name)
        assert status == 0 and name in text and "corrupt" not in text
    finally:
        os.chown(path, 0, -1)
        seg.unlink()
        seg.close()
