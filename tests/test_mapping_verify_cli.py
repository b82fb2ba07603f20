"""``shmkit verify``: a dict's checker from the command line, exit status and output."""

from __future__ import annotations

import json
import struct
from typing import Any

import pytest

from shmkit import Latest, cli
from shmkit.mapping import SharedDict

pytestmark = pytest.mark.timeout(60)


def test_verify_a_sound_dict_exits_0(name: str, capsys: Any) -> None:
    with SharedDict.create(name, capacity=4, size=4096) as d:
        try:
            for i in range(40):
                d[f"k{i}"] = b"v"  # grown: the check follows the generation
            assert cli.main(["verify", name]) == 0
            assert "ok" in capsys.readouterr().out
            assert cli.main(["verify", name, "--readonly", "--json"]) == 0
            [result] = json.loads(capsys.readouterr().out)
            assert result["status"] == "sound" and result["kind"] == "dict"
        finally:
            d.unlink()


def test_verify_a_corrupt_dict_exits_1_and_names_the_problem(name: str, capsys: Any) -> None:
    with SharedDict.create(name, capacity=50, grow=False) as d:
        try:
            d["a"] = b"1"
            seg = d._segment()
            assert seg.header is not None
            # Break the count word: the live slots no longer match it.
            struct.pack_into("<Q", seg.mmap, seg.header.body_off + 80, 7)
            assert cli.main(["verify", name, "--readonly"]) == 1
            out = capsys.readouterr().out
            assert "FAILED" in out and "count word 7" in out
        finally:
            d.unlink()


def test_verify_other_kinds_and_missing_names(name: str, capsys: Any) -> None:
    with Latest.create(name, size=64) as latest:
        try:
            assert cli.main(["verify", name]) == 2
            assert "no structural checker" in capsys.readouterr().out
        finally:
            latest.unlink()
    assert cli.main(["verify", name + "-missing", "--json"]) == 1
    [result] = json.loads(capsys.readouterr().out)
    assert result["status"] == "error" and "NotFound" in result["problems"][0]
