"""Issue 10 item 10: ``shmkit put``/``get`` pipe lines and framed records through the shell."""

from __future__ import annotations

import io
import os
import shlex
import struct
import subprocess
import sys
import time

import pytest

import shmkit
from shmkit import cli, registry
from shmkit.broadcast import Broadcast

from .helpers import ROOT


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.path.join(ROOT, "src"))


def _shmkit() -> str:
    return f"{shlex.quote(sys.executable)} -m shmkit"


def _stdin(monkeypatch: pytest.MonkeyPatch, data: bytes) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))


def test_ten_thousand_lines_between_two_shells_in_order(name: str, tmp_path: object) -> None:
    out = os.path.join(str(tmp_path), "got.txt")
    getter = subprocess.Popen(
        ["sh", "-c", f"{_shmkit()} get {name} --create --count 10000 --timeout 60 > {out}"],
        env=_env(),
        stderr=subprocess.PIPE,
    )
    try:
        putter = subprocess.run(
            ["sh", "-c", f"seq 1 10000 | {_shmkit()} put {name} --create"],
            env=_env(),
            capture_output=True,
            timeout=90,
        )
        assert putter.returncode == 0, putter.stderr.decode()
        _, err = getter.communicate(timeout=90)
        assert getter.returncode == 0, err.decode()
        with open(out, encoding="ascii") as f:
            assert f.read().splitlines() == [str(i) for i in range(1, 10001)]
    finally:
        if getter.poll() is None:
            getter.kill()
            getter.wait(10)
        registry.remove(name)


def test_framed_records_round_trip_through_main(
    name: str, monkeypatch: pytest.MonkeyPatch, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    records = [b"", b"\x00\n\xffbinary", b"x" * 5000]
    _stdin(monkeypatch, b"".join(struct.pack("<I", len(r)) + r for r in records))
    assert cli.main(["put", name, "--create", "--framed"]) == 0
    try:
        capsysbinary.readouterr()
        assert cli.main(["get", name, "--framed", "--count", "3", "--timeout", "5"]) == 0
        out = capsysbinary.readouterr().out
        got, pos = [], 0
        while pos < len(out):
            (n,) = struct.unpack_from("<I", out, pos)
            got.append(out[pos + 4 : pos + 4 + n])
            pos += 4 + n
        assert got == records
    finally:
        registry.remove(name)


def test_lines_keep_their_text_and_get_stops_on_count_or_timeout(
    name: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _stdin(monkeypatch, b"first line\n\nthird, no newline")
    assert cli.main(["put", name, "--create"]) == 0
    try:
        assert cli.main(["get", name, "--count", "2", "--timeout", "1"]) == 0
        assert capsys.readouterr().out == "first line\n\n"
        status = cli.main(["get", name, "--count", "2", "--timeout", "0.2"])
        got = capsys.readouterr()
        assert status == 1 and got.out == "third, no newline\n"
        assert "1 of 2 records" in got.err
        assert cli.main(["get", name, "--timeout", "0.1"]) == 0  # no --count: idle ends it
    finally:
        registry.remove(name)


@pytest.mark.parametrize(
    "argv",
    [
        ["get", "x", "--count", "0"],
        ["get", "x", "--timeout", "-1"],
        ["put", "x", "--capacity", "0"],
        ["put", "x", "--create", "ring"],
    ],
)
def test_bad_arguments_are_usage_errors(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(f"shmkit {argv[0]}: error")


def test_missing_name_wrong_kind_and_bad_frames_are_one_line_errors(
    name: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _stdin(monkeypatch, b"a\n")
    assert cli.main(["put", name]) == 1
    assert "pass --create" in capsys.readouterr().err
    assert cli.main(["get", name, "--timeout", "0"]) == 1
    assert "pass --create" in capsys.readouterr().err
    assert not registry.discover() or name not in {e.name for e in registry.discover()}
    lock = shmkit.Lock.create(name)
    try:
        assert cli.main(["put", name]) == 1
        assert "is a lock; put/get need a queue or a broadcast" in capsys.readouterr().err
    finally:
        lock.unlink()
        lock.close()
    _stdin(monkeypatch, struct.pack("<I", 10) + b"short")
    try:
        assert cli.main(["put", name, "--create", "--framed"]) == 1
        err = capsys.readouterr().err
        assert "ended inside a 10-byte record" in err and len(err.strip().splitlines()) == 1
    finally:
        registry.remove(name)
    _stdin(monkeypatch, b"y" * 100 + b"\n")
    try:
        assert cli.main(["put", name, "--create", "--capacity", "64"]) == 1
        err = capsys.readouterr().err
        assert "record 1 (100 bytes)" in err and len(err.strip().splitlines()) == 1
    finally:
        registry.remove(name)


def test_a_broadcast_fans_lines_out(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    bc = Broadcast.create(name, slot_size=256, slots=8, backpressure=True)
    getters = [
        subprocess.Popen(
            [sys.executable, "-m", "shmkit", "get", name, "--count", "3", "--timeout", "30"],
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(2)
    ]
    try:
        deadline = time.monotonic() + 30
        while bc.statistics().live_subscribers < 2:  # both subscribed: nothing is missed
            assert time.monotonic() < deadline, "the getters did not subscribe"
            time.sleep(0.02)
        _stdin(monkeypatch, b"one\ntwo\nthree\n")
        assert cli.main(["put", name]) == 0
        for g in getters:
            out, err = g.communicate(timeout=30)
            assert g.returncode == 0, err.decode()
            assert out == b"one\ntwo\nthree\n"
    finally:
        for g in getters:
            if g.poll() is None:
                g.kill()
                g.wait(10)
        bc.unlink()
        bc.close()


def test_get_into_a_closed_pipe_is_status_141_without_traceback(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _stdin(monkeypatch, b"1\n2\n3\n")
    assert cli.main(["put", name, "--create"]) == 0
    r, w = os.pipe()
    os.close(r)  # `shmkit get ... | head -0`: the reader is gone
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "shmkit", "get", name, "--timeout", "5"],
            env=_env(),
            stdout=w,
            stderr=subprocess.PIPE,
        )
        os.close(w)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 141 and b"Traceback" not in err, err.decode()
    finally:
        registry.remove(name)


def test_an_existing_small_queue_is_used_as_it_is(
    name: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    q = shmkit.Queue.create(name, 4096)  # smaller than --create's default capacity
    try:
        _stdin(monkeypatch, b"a\nb\n")
        assert cli.main(["put", name, "--create"]) == 0
        assert [q.get(timeout=1), q.get(timeout=1)] == [b"a", b"b"]
        q.put(b"from python")
        assert cli.main(["get", name, "--create", "--count", "1", "--timeout", "1"]) == 0
        assert capsys.readouterr().out == "from python\n"
    finally:
        q.unlink()
        q.close()


def test_each_line_is_sent_as_it_arrives_like_tail_f(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`tail -f log | shmkit put logs`: a line goes out before stdin ends."""
    putter = subprocess.Popen(
        [sys.executable, "-m", "shmkit", "put", name, "--create"],
        env=_env(),
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert putter.stdin is not None
        putter.stdin.write(b"first\n")
        putter.stdin.flush()
        assert cli.main(["get", name, "--create", "--count", "1", "--timeout", "30"]) == 0
        assert capsys.readouterr().out == "first\n"
        assert putter.poll() is None  # still reading its stdin
        putter.stdin.write(b"second\n")
        _, err = putter.communicate(timeout=30)  # closes stdin: end of input
        assert putter.returncode == 0, err.decode()
        assert cli.main(["get", name, "--count", "1", "--timeout", "5"]) == 0
        assert capsys.readouterr().out == "second\n"
    finally:
        if putter.poll() is None:
            putter.kill()
            putter.communicate(timeout=10)
        registry.remove(name)
