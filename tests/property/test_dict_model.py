"""SharedDict against ``dict`` (Hypothesis state machine), plus fuzzed params.

Two handles on one table, driven like a dict through every method; the model
predicts each KeyError and each Full (a new key beyond ``capacity`` of a
fixed-size dict; a growing one moves to a new generation instead, which the
other handle must follow). Keys
come from a small alphabet so sets, overwrites and deletions hit the same
keys often (deletion-heavy runs pile up tombstones and force compactions),
str and bytes keys of the same spelling are distinct, and ``verify()`` must
find nothing wrong after every step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from shmkit._core import _dict
from shmkit._shm import dict_gens
from shmkit._shm import dict_table as fmt
from shmkit.errors import Full, LayoutError
from shmkit.mapping import SharedDict
from shmkit.testing import unique_name

pytestmark = pytest.mark.timeout(300)

names = st.sampled_from([f"k{i}" for i in range(12)] + ["", "\u00e9", "k0" * 30])
keys = st.one_of(names, names.map(str.encode))
values = st.binary(max_size=300)


class DictModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.model: dict[Any, bytes] = {}
        self.name = unique_name("dm")
        self.d: SharedDict[bytes] | None = None
        self.other: SharedDict[bytes] | None = None

    @initialize(capacity=st.integers(1, 24), grow=st.booleans())
    def create(self, capacity: int, grow: bool) -> None:
        # Fixed: a heap large enough that only ``capacity`` limits (heap Full is
        # tested elsewhere). Growing: the smallest heap, so entries and heap
        # bytes both run out and the dict grows through many generations.
        size = 4096 if grow else capacity * 1024
        self.d = SharedDict.create(self.name, capacity=capacity, size=size, grow=grow)
        self.other = SharedDict.open(self.name)
        self.capacity = capacity
        self.grow = grow

    def full(self, key: Any) -> bool:
        """Would storing ``key`` raise Full (a new key in a full, fixed-size dict)?"""
        return not self.grow and key not in self.model and len(self.model) >= self.capacity

    def handle(self, which: bool) -> SharedDict[bytes]:
        h = self.d if which else self.other
        assert h is not None
        return h

    @rule(which=st.booleans(), key=keys, value=values)
    def set(self, which: bool, key: Any, value: bytes) -> None:
        if self.full(key):
            with pytest.raises(Full):
                self.handle(which)[key] = value
            return
        self.handle(which)[key] = value
        self.model[key] = value

    @rule(which=st.booleans(), key=keys)
    def delete(self, which: bool, key: Any) -> None:
        if key in self.model:
            del self.handle(which)[key]
            del self.model[key]
        else:
            with pytest.raises(KeyError):
                del self.handle(which)[key]

    @rule(which=st.booleans(), key=keys)
    def pop(self, which: bool, key: Any) -> None:
        assert self.handle(which).pop(key, None) == self.model.pop(key, None)

    @rule(which=st.booleans(), key=keys, value=values)
    def setdefault(self, which: bool, key: Any, value: bytes) -> None:
        if self.full(key):
            with pytest.raises(Full):
                self.handle(which).setdefault(key, value)
            return
        assert self.handle(which).setdefault(key, value) == self.model.setdefault(key, value)

    @rule(which=st.booleans(), key=keys)
    def update_with(self, which: bool, key: Any) -> None:
        if self.full(key):
            return

        def grow(v: bytes | None) -> bytes:
            return (v or b"") + b"+"

        assert self.handle(which).update_with(key, grow) == grow(self.model.get(key))
        self.model[key] = grow(self.model.get(key))

    @rule(which=st.booleans(), pairs=st.lists(st.tuples(keys, values), max_size=8))
    def update(self, which: bool, pairs: list[tuple[Any, bytes]]) -> None:
        after = {**self.model, **dict(pairs)}
        if not self.grow and len(after) > self.capacity:
            with pytest.raises(Full):  # stores the prefix that fits, as dict.update would
                self.handle(which).update(pairs)
            for key, value in pairs:
                if key not in self.model and len(self.model) >= self.capacity:
                    break
                self.model[key] = value
            return
        self.handle(which).update(pairs)
        self.model = after

    @rule(which=st.booleans())
    def popitem(self, which: bool) -> None:
        if not self.model:
            with pytest.raises(KeyError):
                self.handle(which).popitem()
            return
        key, value = self.handle(which).popitem()
        assert self.model.pop(key) == value

    @rule(which=st.booleans())
    def clear(self, which: bool) -> None:
        self.handle(which).clear()
        self.model.clear()

    @rule()
    def compact(self) -> None:
        self.handle(True)._c_write(_dict.OP_COMPACT, None, None, 0, 0.0)

    @rule()
    def reopen(self) -> None:
        assert self.other is not None
        self.other.close()
        self.other = SharedDict.open(self.name)

    @rule(which=st.booleans(), key=keys)
    def get(self, which: bool, key: Any) -> None:
        h = self.handle(which)
        assert h.get(key) == self.model.get(key)
        assert (key in h) == (key in self.model)

    @invariant()
    def same_as_the_model(self) -> None:
        if self.d is None:
            return
        assert len(self.d) == len(self.model)
        assert dict(self.d.items()) == self.model
        assert self.d.verify() == []
        # Only the current generation's segment exists besides the root.
        assert self.other is not None
        gen = self.d.statistics().generation
        assert self.grow or gen == 0
        assert len(self.other) == len(self.model) and self.other.statistics().generation == gen
        root = self.d._segment().sysname
        assert dict_gens.existing(root) == ([dict_gens.sysname_of(root, gen)] if gen else [])

    def teardown(self) -> None:
        for h in (self.other, self.d):
            if h is not None:
                h.close()
        if self.d is not None:
            self.d.unlink()


# Typed alias: older Hypothesis releases leave this function unannotated.
_run_machine: Callable[..., None] = run_state_machine_as_test


def test_dict_behaves_like_a_dict() -> None:
    _run_machine(
        DictModel,
        settings=settings(
            max_examples=60,
            stateful_step_count=60,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )


@given(st.binary(min_size=0, max_size=80), st.integers(0, 1 << 24))
@settings(max_examples=300, deadline=None)
def test_params_parse_never_crashes_on_random_bytes(raw: bytes, body: int) -> None:
    try:
        parsed = fmt.parse_params(raw, body)
    except LayoutError:
        return
    assert parsed.body_size == body


@given(st.data())
@settings(max_examples=200, deadline=None)
def test_mutated_params_are_refused_or_consistent(data: st.DataObject) -> None:
    good = bytearray(fmt.make_params(100, 8192, 64, 5, "bytes"))
    body = fmt.body_size(100, 8192)
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(good) - 1))
        good[i] = data.draw(st.integers(0, 255))
    try:
        parsed = fmt.parse_params(bytes(good), body)
    except LayoutError:
        return
    assert parsed.body_size == body and parsed.nslots == fmt.slots_for(parsed.capacity)
