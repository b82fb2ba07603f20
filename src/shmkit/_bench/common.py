"""What every benchmark shares: the environment line, statistics, memcpy reference, output."""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any, NoReturn, Protocol

from rich.console import Console
from rich.table import Table

from .. import __version__


def _console() -> Console:
    # Piped output (BENCHMARKS.md, CI logs) gets full-width tables, not truncated names.
    return Console() if sys.stdout.isatty() else Console(width=150)


def environment() -> str:
    """One line naming the machine and versions, printed at the top of every run."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (
        f"shmkit {__version__} | Python {platform.python_version()} | "
        f"{platform.system()} {platform.release()} {platform.machine()} | {cpu} | "
        f"{os.cpu_count()} CPUs"
    )


@dataclass(frozen=True)
class Result:
    """One measured row: a name, a median, a p99 and a rate or bandwidth if relevant."""

    name: str
    median_us: float
    p99_us: float
    rate: float = 0.0  # messages per second (or frames per second)
    gbps: float = 0.0  # GB/s when bytes moved matter
    note: str = ""


class _Parser(Protocol):
    def error(self, message: str) -> NoReturn: ...


#: Every table ``print_table`` printed in this process, in order: what
#: ``shmkit bench --json`` emits and ``--plot`` draws (the same numbers).
RECORDED: list[dict[str, Any]] = []
_step_hook: list[Callable[[str], None]] = []


def on_step(hook: Callable[[str], None] | None) -> None:
    """Install (or with None remove) the callback ``step`` reports to (the progress bar)."""
    _step_hook.clear()
    if hook is not None:
        _step_hook.append(hook)


def step(label: str) -> None:
    """Say that the benchmark starts measuring ``label`` (one row)."""
    for hook in _step_hook:
        hook(label)


def workloads(parser: _Parser, text: str, valid: Iterable[str]) -> list[str]:
    """The comma-separated ``--only`` list; an unknown name is an error listing the valid ones."""
    known = list(valid)
    chosen = [w.strip() for w in text.split(",") if w.strip()]
    unknown = [w for w in chosen if w not in known]
    if unknown or not chosen:
        parser.error(
            f"unknown workload(s) for --only: {', '.join(unknown) or repr(text)}; "
            f"valid: {', '.join(known)}"
        )
    return chosen


def _faster(ours: float, theirs: float, name: str, digits: int) -> str:
    """``ours`` and ``theirs`` are speeds (bigger is better)."""
    if ours <= 0 or theirs <= 0:
        return f"not comparable with {name}"
    ratio = ours / theirs
    if ratio >= 1:
        return f"{ratio:.{digits}f}x faster than {name}"
    return f"{1 / ratio:.{digits}f}x slower than {name}"


def versus(ours: Result, theirs: Result) -> str:
    """``"2.3x faster than X"`` or ``"1.7x slower than X"``, comparing medians (time per op)."""
    if ours.median_us <= 0 or theirs.median_us <= 0:
        return f"not comparable with {theirs.name}"
    return _faster(1 / ours.median_us, 1 / theirs.median_us, theirs.name, 1)


def versus_rate(ours: Result, theirs: Result) -> str:
    """As :func:`versus`, comparing rates (frames/s of the slowest reader)."""
    return _faster(ours.rate, theirs.rate, theirs.name, 2)


def take_spinning(sem: Any, spin: float, timeout: float | None) -> None:
    """The posix_ipc tutorial's wait: ``acquire(0)`` for ``spin`` seconds, then block."""
    import posix_ipc  # noqa: PLC0415 - only the tutorial peers need it

    end = time.perf_counter() + spin
    while time.perf_counter() < end:
        try:
            sem.acquire(0)
            return
        except posix_ipc.BusyError:
            pass
    sem.acquire(timeout)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) of ``values`` by nearest rank."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def summarize(name: str, samples_s: Sequence[float], *, nbytes: int = 0, note: str = "") -> Result:
    """Turn per-operation times (seconds) into a Result (median, p99, rate, GB/s)."""
    med = statistics.median(samples_s)
    rate = 1.0 / med if med > 0 else 0.0
    return Result(name, med * 1e6, percentile(samples_s, 99) * 1e6, rate, nbytes * rate / 1e9, note)


def memcpy_bandwidth(nbytes: int = 6 * 1024 * 1024, repeat: int = 200) -> float:
    """Single-core memcpy bandwidth in GB/s for ``nbytes`` copies (the physical reference)."""
    src = bytearray(os.urandom(min(nbytes, 1 << 16)) * (nbytes // min(nbytes, 1 << 16) + 1))[
        :nbytes
    ]
    dst = bytearray(nbytes)
    view = memoryview(dst)
    best = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        view[:] = src
        best.append(time.perf_counter() - t0)
    return nbytes / statistics.median(best) / 1e9


def print_table(
    title: str,
    rows: Sequence[Result],
    *,
    baseline: str,
    console: Console | None = None,
    by_rate: bool = False,
) -> None:
    """Print rows with their speed relative to ``baseline`` (a row name) using rich.

    The last column is ``baseline median / row median``: 3.00x means three
    times faster than the baseline, 0.50x twice as slow. With ``by_rate`` it
    is ``row rate / baseline rate`` instead (frames/s of the slowest reader,
    where a median interval would hide stalls).
    """
    console = console or _console()
    RECORDED.append({"title": title, "baseline": baseline, "rows": [asdict(r) for r in rows]})
    base = next((r for r in rows if r.name == baseline), None)
    table = Table(title=title, title_justify="left")
    for col in ("what", "median µs", "p99 µs", "rate /s", "GB/s", f"speed vs {baseline}"):
        table.add_column(col, justify="left" if col == "what" else "right")
    for r in rows:
        ratio = ""
        if r is base:
            ratio = "1.00x"
        elif base is not None and by_rate and base.rate > 0:
            ratio = f"{r.rate / base.rate:.2f}x"
        elif base is not None and not by_rate and r.median_us > 0:
            ratio = f"{base.median_us / r.median_us:.2f}x"
        table.add_row(
            r.name + (f" ({r.note})" if r.note else ""),
            f"{r.median_us:.2f}",
            f"{r.p99_us:.2f}",
            f"{r.rate:,.0f}" if r.rate else "",
            f"{r.gbps:.2f}" if r.gbps else "",
            ratio,
        )
    console.print(table)


def header(console: Console | None = None) -> None:
    """Print the environment line."""
    (console or _console()).print(environment(), highlight=False)
    sys.stdout.flush()


def iox2_files() -> set[str]:
    """Files iceoryx2 leaves in /dev/shm and the temp dir (removed after its rows run)."""
    try:
        found = {
            os.path.join("/dev/shm", e) for e in os.listdir("/dev/shm") if e.startswith("iox2_")
        }
    except OSError:
        found = set()
    root = os.path.join(tempfile.gettempdir(), "iceoryx2")
    if os.path.isdir(root):
        found.add(root)
    return found


def remove_paths(paths: set[str]) -> None:
    """Remove files and directories, ignoring ones already gone."""
    for p in paths:
        if os.path.isdir(p):
            shutil.rmtree(p, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                os.unlink(p)


@contextlib.contextmanager
def cpu_load(workers: int) -> Iterator[None]:
    """Run ``workers`` CPU-bound processes (one per core by default) for the block.

    Measures what a user's busy machine does to a wait policy: a spin that
    only wins on idle cores loses here. The burners are killed on exit.
    """
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", "while True: pass"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(workers)
    ]
    try:
        time.sleep(0.2)  # let them reach the scheduler
        yield
    finally:
        for proc in procs:
            proc.kill()
        for proc in procs:
            proc.wait(10)
