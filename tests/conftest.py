"""Fixtures shared by every test: unique names and a leak check on /dev/shm."""

from __future__ import annotations

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
