"""Running code in separate, spawned interpreters for multi-process tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def spawn(code: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """Start ``python -c code args...`` in a new interpreter, pipes on stdin/stdout/stderr.

    The child prints lines to talk back (use ``print(..., flush=True)``).
    """
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = os.path.join(ROOT, "src") + os.pathsep + ROOT
    if env:
        full_env.update(env)
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=full_env,
    )


def read_line(proc: subprocess.Popen[str], timeout: float = 20.0) -> str:
    """Read one line the child printed, failing if none comes in ``timeout`` seconds.

    Reads the pipe's file descriptor a byte at a time, so nothing after the
    line is buffered here and ``finish()`` still sees the rest of the output.
    """
    import selectors

    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    end = time.monotonic() + timeout
    line = bytearray()
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while not line.endswith(b"\n"):
            if not sel.select(max(0.0, end - time.monotonic())):
                kill(proc)
                err = stderr_of(proc)
                raise AssertionError(f"child said nothing in {timeout} s; stderr: {err}")
            byte = os.read(fd, 1)
            if not byte:
                code = proc.wait(5)
                raise AssertionError(f"child exited ({code}) early; stderr: {stderr_of(proc)}")
            line += byte
    return line.decode().strip()


def stderr_of(proc: subprocess.Popen[str]) -> str:
    if proc.poll() is None:
        return "<still running>"
    assert proc.stderr is not None
    return proc.stderr.read()[-2000:]


def finish(proc: subprocess.Popen[str], timeout: float = 30.0) -> str:
    """Wait for the child to exit 0 and return its remaining stdout."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill(proc)
        raise AssertionError(f"child did not finish in {timeout} s") from None
    assert proc.returncode == 0, f"child exited {proc.returncode}: {err[-3000:]}"
    return out


def kill(proc: subprocess.Popen[str], sig: int = signal.SIGKILL) -> None:
    """Send ``sig`` and reap the child (never leaves a zombie)."""
    if proc.poll() is None:
        try:
            proc.send_signal(sig)
        except ProcessLookupError:
            pass
    if sig in (signal.SIGKILL, signal.SIGTERM, signal.SIGINT):
        try:
            proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate(timeout=10)


def run_all(procs: Sequence[subprocess.Popen[str]], timeout: float = 60.0) -> list[str]:
    """Finish every child within one shared deadline; return their outputs."""
    end = time.monotonic() + timeout
    outs = []
    try:
        for proc in procs:
            outs.append(finish(proc, max(0.1, end - time.monotonic())))
    finally:
        for proc in procs:
            kill(proc)
    return outs
