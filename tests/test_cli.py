"""The CLI and registry: ls, info, rm, gc, demo; stale detection (T04, T10, T11)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

import pytest

import shmkit
from shmkit import _layout, _process, cli, registry
from shmkit.segment import Segment

from .helpers import ROOT, finish, kill, read_line, spawn


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any]:
    status = cli.main(list(argv))
    got = capsys.readouterr()
    return status, json.loads(got.out) if "--json" in argv else got.out + got.err


def test_ls_groups_parts_and_shows_creator(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    with Segment.create(name, 1000) as seg, shmkit.Event.create(name + "-ev") as ev:
        status, listing = run_cli(capsys, "ls", "--json")
        assert status == 0
        mine = {e["name"]: e for e in listing if e["name"].startswith(name)}
        assert mine[name]["kind"] == "segment" and mine[name]["state"] == "ready"
        assert mine[name]["creator_pid"] == os.getpid() and mine[name]["creator"] == "alive"
        assert mine[name]["attached"] >= 1 and not mine[name]["abandoned"]
        assert len(mine[name + "-ev"]["parts"]) == 2  # segment + its semaphore
        status, text = run_cli(capsys, "ls")
        assert status == 0 and name in text
        seg.unlink()
        ev.unlink()


def test_info_decodes_the_header(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    with Segment.create(name, 4096, mode=0o640) as seg:
        status, info = run_cli(capsys, "info", name, "--json")
        assert status == 0
        assert info["header"]["kind"] == "segment"
        assert info["header"]["body_size"] == 4096 and info["header"]["mode"] == "640"
        assert {a["pid"] for a in info["attachments"]} == {os.getpid()}
        status, text = run_cli(capsys, "info", name)
        assert status == 0 and "body_size" in text
        seg.unlink()
    status, text = run_cli(capsys, "info", name)
    assert status == 1 and "no shared-memory object" in text


def test_rm_removes_every_part(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    shmkit.Semaphore.create(name, 1).close()
    shmkit.Event.create(name + "-e").close()
    status, result = run_cli(capsys, "rm", name, name + "-e", "--json")
    assert status == 0
    assert len(result[name]["removed"]) == 2 and len(result[name + "-e"]["removed"]) == 2
    assert not [e for e in registry.discover() if e.name.startswith(name)]
    status, result = run_cli(capsys, "rm", name, "--json")
    assert status == 1 and "error" in result[name]


def _forge_attachment(name: str, pid: int, start: int, boot: bytes) -> None:
    with Segment._open_object(name, None) as seg:
        assert seg.header is not None
        off = seg.header.attach_off + (seg.header.attach_slots - 1) * _layout.ATTACH_SLOT
        _layout.ATTACH_SLOT_STRUCT.pack_into(seg.mmap, off, pid, start, boot)


def _create_in_dead_process(name: str) -> None:
    finish(spawn("import sys, shmkit; shmkit.Event.create(sys.argv[1]).close()", name))


def test_pid_reuse_and_foreign_records_are_classified(name: str) -> None:
    """T04: forged records: wrong start time -> dead, right -> alive, other boot -> unknown."""
    me = _process.current()
    other_boot = bytes(range(1, 17))
    cases = {
        "a": (me.pid, me.start + 12345, me.boot_id),  # live pid, wrong start time: reused
        "b": (me.pid, me.start, me.boot_id),  # really this process
        "c": (me.pid, me.start, other_boot),  # another boot / namespace
    }
    for suffix, record in cases.items():
        _create_in_dead_process(name + suffix)
        _forge_attachment(name + suffix, *record)
    try:
        entries = {e.name: e for e in registry.discover() if e.name.startswith(name)}
        assert entries[name + "a"].attached_dead == 1 and entries[name + "a"].abandoned
        assert entries[name + "b"].attached == 1 and not entries[name + "b"].abandoned
        assert entries[name + "c"].attached_unknown == 1 and not entries[name + "c"].abandoned
        collected = {e.name for e in registry.gc(act=True, grace=0) if e.name.startswith(name)}
        assert collected == {name + "a"}
        collected = {
            e.name for e in registry.gc(act=True, grace=0, force=True) if e.name.startswith(name)
        }
        assert collected == {name + "c"}
        assert [e.name for e in registry.discover() if e.name.startswith(name)] == [name + "b"]
    finally:
        for suffix in cases:
            Segment.remove(name + suffix)


def test_creator_killed_during_init(name: str) -> None:
    """T10: openers get NotReady (no hang), ls says init, gc removes it, re-create works."""
    victim = spawn(
        "import sys, shmkit; shmkit.Lock.create(sys.argv[1])",
        name,
        env={"SHMKIT_CRASH_AT": "segment.create.before_ready"},
    )
    assert victim.wait(30) == -signal.SIGKILL
    kill(victim)
    t0 = time.monotonic()
    with pytest.raises(shmkit.NotReady):
        shmkit.Lock.open(name)
    assert time.monotonic() - t0 < 2.0
    (entry,) = [e for e in registry.discover() if e.sysname.endswith(name)]
    assert entry.state == "init" and entry.creator == "dead" and entry.abandoned
    assert entry.sysname in {e.sysname for e in registry.gc(act=True, grace=0)}
    lock = shmkit.Lock.create(name)
    assert lock.acquire(0)
    lock.release()
    lock.unlink()
    lock.close()


def test_everyone_killed_then_gc_removes_exactly_the_abandoned(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """T11: killed users leave objects; ls marks them abandoned; gc removes only those."""
    users = [
        spawn(
            """
            import sys, time, shmkit
            name = sys.argv[1]
            lock = shmkit.Lock.open_or_create(name + "-lock")
            seg = shmkit.Segment.open_or_create(name + "-seg", 4096)
            lock.acquire(timeout=0)
            print("ready", flush=True)
            time.sleep(600)
            """,
            name,
        )
        for _ in range(3)
    ]
    live = Segment.create(name + "-live", 10)
    try:
        for user in users:
            read_line(user)
        _, dry = run_cli(capsys, "gc", "--grace", "0", "--json")
        assert not [e for e in dry["would_remove"] if e["name"].startswith(name)]
        for user in users:
            kill(user)
        _, listing = run_cli(capsys, "ls", "--json")
        mine = {e["name"]: e["abandoned"] for e in listing if e["name"].startswith(name)}
        assert mine == {name + "-lock": True, name + "-seg": True, name + "-live": False}
        _status, dry = run_cli(capsys, "gc", "--grace", "0", "--json")
        assert {e["name"] for e in dry["would_remove"] if e["name"].startswith(name)} == {
            name + "-lock",
            name + "-seg",
        }
        Segment.open(name + "-seg").close()  # the dry run removed nothing
        _, done = run_cli(capsys, "gc", "--grace", "0", "--yes", "--json")
        assert {e["name"] for e in done["removed"] if e["name"].startswith(name)} == {
            name + "-lock",
            name + "-seg",
        }
        left = [e.name for e in registry.discover() if e.name.startswith(name)]
        assert left == [name + "-live"]
    finally:
        for user in users:
            kill(user)
        live.unlink()
        live.close()


def test_gc_skips_young_objects(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    _create_in_dead_process(name)
    try:
        _, dry = run_cli(capsys, "gc", "--json")  # default grace: 5 s
        assert not [e for e in dry["would_remove"] if e["name"] == name]
    finally:
        Segment.remove(name)


def test_demo_runs_two_processes_and_leaves_nothing() -> None:
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "src"))
    out = subprocess.run(
        [sys.executable, "-m", "shmkit", "demo", "--json", "--size", "100000"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=True,
    )
    report = json.loads(out.stdout)
    assert report["reader"]["verified"] is True
    assert report["writer"]["pid"] != report["reader"]["pid"]
    assert not [e for e in registry.discover() if e.name.startswith(report["name"])]


def test_watch_redraws_the_table(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    with Segment.create(name, 10) as seg:
        assert cli.main(["watch", "--count", "2", "--interval", "0.01"]) == 0
        assert name in capsys.readouterr().out
        seg.unlink()
