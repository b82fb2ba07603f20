"""Fixtures shared by every test: unique names, a leak check on /dev/shm, the anyio backends."""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator

import pytest

from shmkit.testing import leaked_since, remove_entries, shm_entries, unique_name


@pytest.fixture
def name() -> str:
    """A unique short shmkit name for this test."""
    return unique_name("t")


@pytest.fixture(autouse=True)
def _no_leaks() -> Iterator[None]:
    """Fail any test that leaves shmkit objects in /dev/shm (and remove them).

    Only names made by ``unique_name`` in this process count, so runs in
    parallel (other sessions, benchmarks) do not disturb each other; .ci/run
    checks the whole of /dev/shm after the suite.
    """
    before = shm_entries()
    yield
    mark = f"-{os.getpid()}-"
    left = {e for e in leaked_since(before) if mark in e}
    if left:
        remove_entries(left)
        pytest.fail(f"test leaked shared-memory objects: {sorted(left)}")


# ---------------------------------------------------------------- asyncio and trio


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def frozen_heap() -> Iterator[None]:
    """Move pytest's big heap out of the collector's way for a loop-latency test.

    A full collection of this process's heap (pytest, hypothesis, numpy...)
    pauses every thread for 60-90 ms: a property of the interpreter, not of
    the loop. Services do the same after start-up (``gc.freeze()``).
    """
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
