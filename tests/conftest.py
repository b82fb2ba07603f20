"""Fixtures shared by every test: unique names and a leak check on /dev/shm."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from shmkit.testing import leaked_since, remove_entries, shm_entries, unique_name


@pytest.fixture
def name() -> str:
    """A unique short shmkit name for this test."""
    return unique_name("t")


@pytest.fixture(autouse=True)
def _no_leaks() -> Iterator[None]:
    """Fail any test that leaves shmkit objects in /dev/shm (and remove them)."""
    before = shm_entries()
    yield
    left = leaked_since(before)
    if left:
        remove_entries(left)
        pytest.fail(f"test leaked shared-memory objects: {sorted(left)}")
