"""Errors in one line that name the object, its kind and what to do (issue #10, item 9)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import traceback

import posix_ipc
import pytest

import shmkit

from .helpers import ROOT


def _one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text, text
    return text


def test_open_or_create_reports_the_real_size_of_a_smaller_segment(name: str) -> None:
    with shmkit.Segment.create(name, 1024) as seg:
        try:
            with pytest.raises(shmkit.LayoutError) as info:
                shmkit.Segment.open_or_create(name, 1 << 20)
            text = _one_line(info.value)
            assert f"segment {name!r} exists with 1024 bytes" in text, text
            assert "1048576 asked" in text and "shmkit rm" in text
        finally:
            seg.unlink()


def test_opening_a_raw_segment_as_a_queue_says_so_at_once(name: str) -> None:
    raw = "/" + name[-20:]
    with shmkit.Segment.create(raw, 4096) as seg:
        try:
            with pytest.raises(shmkit.LayoutError) as info:
                shmkit.Queue.open(raw)
            text = _one_line(info.value)
            assert f"queue {raw!r} is a raw segment, not a queue" in text, text
            assert f"Segment.open({raw!r})" in text
            assert "gc" not in text  # gc never touches a raw segment: do not suggest it
        finally:
            seg.unlink()


def test_creating_a_lock_over_a_segment_names_what_holds_the_name(name: str) -> None:
    with shmkit.Segment.create(name, 64) as seg:
        try:
            with pytest.raises(shmkit.AlreadyExists) as info:
                shmkit.Lock.create(name)
            text = _one_line(info.value)
            assert f"lock {name!r}: the name is taken by a segment" in text, text
            assert f"shmkit rm {name}" in text
        finally:
            seg.unlink()


def test_creating_over_a_raw_segment_says_raw(name: str) -> None:
    raw = "/" + name[-20:]
    shm = posix_ipc.SharedMemory(raw, posix_ipc.O_CREX, size=4096)
    shm.close_fd()
    try:
        with pytest.raises(shmkit.AlreadyExists, match="taken by a raw"):
            shmkit.Segment.create(raw, 64)
    finally:
        shm.unlink()


def test_not_found_is_not_chained_to_posix_ipc(name: str) -> None:
    with pytest.raises(shmkit.NotFound) as info:
        shmkit.Segment.open(name)
    exc = info.value
    assert exc.__cause__ is None and exc.__suppress_context__
    printed = "".join(traceback.format_exception(exc))
    assert "ExistentialError" not in printed and "During handling" not in printed
    assert printed.count('File "') <= 4, printed  # test, open, _open_object, appear
    assert f"segment {name!r} does not exist" in _one_line(exc)


@pytest.mark.parametrize(
    ("opener", "label"),
    [(shmkit.Queue.open, "queue"), (shmkit.Lock.open, "lock"), (shmkit.Latest.open, "latest")],
)
def test_wrong_kind_uses_the_right_article_and_names_the_class(
    opener: object, label: str, name: str
) -> None:
    arr = shmkit.SharedArray.create(name, (4,), "int64")
    try:
        with pytest.raises(shmkit.LayoutError) as info:
            opener(name)  # type: ignore[operator]
        text = _one_line(info.value)
        assert f"{label} {name!r} is an array, not a" in text, text
        assert "SharedArray.open" in text
    finally:
        arr.unlink()
        arr.close()


def test_broadcast_image_of_another_kind_reads_well(name: str) -> None:
    from shmkit._shm.broadcast_ring import parse_image

    with shmkit.Event.create(name) as ev:
        try:
            image = bytes(ev._segment().mmap)
            with pytest.raises(shmkit.LayoutError, match="is an event, not a broadcast"):
                parse_image(image)
        finally:
            ev.unlink()


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None,
    reason="needs root and unshare(1) for a private 64 MiB /dev/shm",
)
def test_shm_full_says_how_much_is_free_and_what_to_do() -> None:
    code = (
        "import shmkit\n"
        "try:\n"
        "    shmkit.Segment.create('big', 100 << 20)\n"
        "except shmkit.ShmFull as e:\n"
        "    print(e)\n"
    )
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "src"))
    out = subprocess.run(
        [
            "unshare",
            "-m",
            "sh",
            "-c",
            'mount -t tmpfs -o size=64m tmpfs /dev/shm && exec "$0" -c "$1"',
            sys.executable,
            code,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    if out.returncode != 0 and "mount" in out.stderr:
        pytest.skip(f"cannot mount a private tmpfs: {out.stderr.strip()}")
    text = out.stdout.strip()
    assert "\n" not in text and "segment 'big': cannot reserve" in text, out.stdout + out.stderr
    assert "/dev/shm has 64 MiB free of 64 MiB" in text and "--shm-size" in text, text
