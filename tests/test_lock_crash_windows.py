"""T02 LOCK-CRASH-WINDOWS: processes killed at every step of Lock while others contend.

The work is done by ``scripts/lock_crash_windows.py`` (see its docstring for
the invariants: never two holders, owner_died exactly for deaths with the
record HELD, bounded waits). The default suite runs it small; ``-m slow``
runs it at full size (1,000 kills).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from .helpers import ROOT

SCRIPT = os.path.join(ROOT, "scripts", "lock_crash_windows.py")


def _run(*args: str, backend: str = "pthread", timeout: float = 120) -> str:
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "src"), SHMKIT_MUTEX=backend)
    proc = subprocess.run(
        [sys.executable, SCRIPT, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "OK:" in proc.stdout
    return proc.stdout


@pytest.mark.timeout(150)
@pytest.mark.parametrize("backend", ["pthread", "flock"])
def test_t02_killed_at_every_step_while_others_contend_reduced(backend: str) -> None:
    """T02 (reduced): 4 workers a round meet at a barrier; ~16 of them die at random points."""
    _run("--kills", "16", "--workers", "4", "--iterations", "25", backend=backend)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_t02_full_size() -> None:
    """T02 at full size: 1,000 kills."""
    _run("--kills", "1000", timeout=1700)
