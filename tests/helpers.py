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


# ------------------------------------------------------------ the /dev/shm files

#: Where POSIX shared memory and named semaphores are files (Linux).
SHM_DIR = "/dev/shm"


def shm_path(name: str) -> str:
    """The /dev/shm file of the shmkit object ``name`` (the naming scheme in ``_names``)."""
    from shmkit import _names

    return os.path.join(SHM_DIR, _names.system_name(name).lstrip("/"))


def sem_paths(name: str) -> list[str]:
    """The /dev/shm files of the object's semaphores (``sem.<system name>.s0`` …)."""
    from shmkit import _names

    prefix = "sem." + _names.system_name(name).lstrip("/") + ".s"
    return sorted(os.path.join(SHM_DIR, e) for e in os.listdir(SHM_DIR) if e.startswith(prefix))


def peek(name: str, offset: int, size: int) -> bytes:
    """Read ``size`` bytes at ``offset`` of the object's segment file."""
    with open(shm_path(name), "rb") as f:
        f.seek(offset)
        return f.read(size)


def poke(name: str, offset: int, data: bytes) -> None:
    """Write ``data`` at ``offset`` of the object's segment file (what any same-uid process can)."""
    with open(shm_path(name), "r+b") as f:
        f.seek(offset)
        f.write(data)


def xor_byte(name: str, offset: int, mask: int) -> None:
    """Flip bits of one byte of the segment file."""
    poke(name, offset, bytes([peek(name, offset, 1)[0] ^ mask]))


def header_field(name: str, offset: int, size: int) -> int:
    """A little-endian field of the common header (offsets from ``_layout``'s comment)."""
    return int.from_bytes(peek(name, offset, size), "little")


def body_offset(name: str) -> int:
    """Header word ``body_off`` (offset 48): where the object's body starts."""
    return header_field(name, 48, 8)


def attach_offset(name: str) -> int:
    """Header word ``attach_off`` (offset 40): the end of the CRC-covered header."""
    return header_field(name, 40, 8)


def wait_stopped(proc: subprocess.Popen[str], timeout: float = 20.0) -> None:
    """Wait until the child stopped itself (``SHMKIT_STOP_AT``): state ``T`` in /proc."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise AssertionError(f"child exited ({proc.returncode}): {stderr_of(proc)}")
        try:
            with open(f"/proc/{proc.pid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            state = ""
        if state in ("T", "t"):
            return
        time.sleep(0.002)
    kill(proc)
    raise AssertionError(f"child did not stop within {timeout} s: {stderr_of(proc)}")
