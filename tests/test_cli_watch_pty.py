"""Issue 10 item 10: ``shmkit watch`` in a real pseudo-terminal redraws a changing number.

Also: the bench progress bar appears on a terminal's stderr and never in a pipe.
"""

from __future__ import annotations

import fcntl
import os
import re
import select
import struct
import subprocess
import sys
import termios
import time

import shmkit

from .helpers import ROOT

_ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]")


def _pty(rows: int = 50, cols: int = 220) -> tuple[int, int]:
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    return master, slave


def _env() -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "src"), TERM="xterm-256color")
    for var in ("COLUMNS", "LINES", "NO_COLOR", "TERM_PROGRAM", "CI"):
        env.pop(var, None)
    return env


class _Screen:
    """Everything the program wrote to the terminal, escape sequences stripped."""

    def __init__(self, master: int) -> None:
        self.master = master
        self.raw = b""

    def text(self) -> str:
        return _ANSI.sub(b"", self.raw).decode("utf-8", "replace")

    def wait_for(self, pattern: str, timeout: float = 30.0) -> str:
        end = time.monotonic() + timeout
        while not re.search(pattern, self.text()):
            left = end - time.monotonic()
            assert left > 0, f"{pattern!r} never appeared; screen: {self.text()[-2000:]!r}"
            ready, _, _ = select.select([self.master], [], [], min(left, 0.5))
            if ready:
                try:
                    chunk = os.read(self.master, 65536)
                except OSError:  # EIO: the program exited and closed the terminal
                    chunk = b""
                if not chunk:
                    assert re.search(pattern, self.text()), f"{pattern!r}: {self.text()[-2000:]!r}"
                    break
                self.raw += chunk
        return self.text()


def test_watch_redraws_a_changing_queue_depth_in_a_terminal(name: str) -> None:
    q = shmkit.Queue.create(name, 4096)
    master, slave = _pty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "shmkit", "watch", "--interval", "0.1", "--count", "600"],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=_env(),
        close_fds=True,
    )
    os.close(slave)
    screen = _Screen(master)
    try:
        screen.wait_for(rf"{re.escape(name)}.*\b0 msgs")
        first = len(screen.raw)
        q.put(b"one")
        q.put(b"two")
        screen.wait_for(rf"{re.escape(name)}.*\b2 msgs")
        later = _ANSI.sub(b"", screen.raw[first:]).decode("utf-8", "replace")
        assert re.search(rf"{re.escape(name)}.*\b2 msgs", later)  # a later refresh, same place
        assert b"\x1b[" in screen.raw  # redrawn in place (cursor movement), not appended
    finally:
        proc.kill()
        proc.wait(10)
        os.close(master)
        q.unlink()
        q.close()


def test_bench_progress_bar_only_on_a_terminal() -> None:
    argv = [sys.executable, "-m", "shmkit", "bench", "sync", "--quick", "--only", "uncontended"]
    master, slave = _pty()
    out_r, out_w = os.pipe()
    proc = subprocess.Popen(argv, stdin=slave, stdout=out_w, stderr=slave, env=_env())
    os.close(slave)
    os.close(out_w)
    screen = _Screen(master)
    try:
        screen.wait_for(r"bench sync.*(rows done|uncontended)", timeout=60)
        assert proc.wait(120) == 0
        with os.fdopen(out_r, "rb") as f:
            table = f.read().decode()
        assert "uncontended lock acquire" in table and "rows done" not in table
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        os.close(master)
    piped = subprocess.run(argv, capture_output=True, env=_env(), timeout=120, check=True)
    assert b"rows done" not in piped.stderr and b"rows done" not in piped.stdout
