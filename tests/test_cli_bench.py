"""Issue 10 item 10: `shmkit bench` lists, checks --only, emits JSON, plots what it printed."""

from __future__ import annotations

import json
import os
import sys

import pytest

from shmkit import cli
from shmkit._bench.common import Result, versus, versus_rate
from shmkit._cli import bench


def test_bare_bench_lists_what_it_can_run(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["bench"]) == 0
    out = capsys.readouterr().out
    for name in ("sync", "queue", "frames", "dict"):
        assert f"  {name} " in out
    assert "pingpong,stream,batched,large" in out and "lossless" in out
    assert cli.main(["bench", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert {row["name"] for row in listing} >= {"sync", "queue", "frames", "dict"}


@pytest.mark.parametrize(
    ("which", "valid"),
    [
        ("queue", "pingpong, stream, batched, large"),
        ("frames", "frames, fanout, lossless, small, latest"),
        ("sync", "uncontended, pingpong"),
    ],
)
def test_an_unknown_only_is_an_error_listing_the_valid_names(
    which: str, valid: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["bench", which, "--only", "nonsense"])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "unknown workload(s) for --only: nonsense" in err and f"valid: {valid}" in err


def test_an_unknown_bench_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["bench", "nonsense"])
    assert info.value.code == 2
    assert "invalid choice: 'nonsense'" in capsys.readouterr().err


def test_the_summary_says_faster_or_slower() -> None:
    ours = Result("shmkit Queue", 1.0, 2.0, rate=1e6)
    assert versus(ours, Result("zmq", 2.3, 3.0)) == "2.3x faster than zmq"
    assert versus(ours, Result("mq", 0.6, 1.0)) == "1.7x slower than mq"
    assert versus(ours, Result("same", 1.0, 1.0)) == "1.0x faster than same"
    assert versus_rate(ours, Result("iox", 1.0, 1.0, rate=5e5)) == "2.00x faster than iox"
    assert versus_rate(ours, Result("tut", 1.0, 1.0, rate=2e6)) == "2.00x slower than tut"


def test_queue_json_and_plot_match_the_printed_table(
    tmp_path: object, capsys: pytest.CaptureFixture[str]
) -> None:
    """`shmkit bench queue --plot out.png`: every bar is the table's number (read from the bars)."""
    pytest.importorskip("matplotlib")
    png = os.path.join(str(tmp_path), "out.png")
    argv = ["bench", "queue", "--quick", "--only", "pingpong", "--peers", "tutorial"]
    status = cli.main([*argv, "--json", "--plot", png])
    got = capsys.readouterr()
    assert status == 0, got.err
    report = json.loads(got.out)  # stdout holds the JSON alone; the tables went to stderr
    assert report["benchmark"] == "queue" and report["status"] == 0
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    (table,) = report["tables"]
    (drawn,) = report["plot"]["tables"]
    assert drawn["title"] == table["title"] and drawn["metric"] == "rate"
    assert drawn["labels"] == [r["name"] for r in table["rows"]]
    assert drawn["values"] == [r["rate"] for r in table["rows"]]
    assert {"shmkit Queue", "posix_ipc tutorial (slot + 2 sems)"} <= set(drawn["labels"])
    printed = got.err.replace("\n", " ")
    for value in drawn["values"]:
        assert f"{value:,.0f}" in printed  # the rate column as the table printed it
    assert "faster than posix_ipc" in printed or "slower than posix_ipc" in printed


def test_plot_without_matplotlib_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    with pytest.raises(SystemExit) as info:
        cli.main(["bench", "sync", "--quick", "--plot", "x.png"])
    assert "pip install 'shmkit[plot]'" in str(info.value.code)
    assert not os.path.exists("x.png")


def test_plot_draws_one_chart_per_table_with_the_table_values(tmp_path: object) -> None:
    pytest.importorskip("matplotlib")
    tables = [
        {
            "title": "times",
            "baseline": "a",
            "rows": [
                {"name": "a", "median_us": 1.5, "p99_us": 2.0, "rate": 0.0, "gbps": 0, "note": ""},
                {"name": "b", "median_us": 3.25, "p99_us": 4, "rate": 0.0, "gbps": 0, "note": "x"},
            ],
        },
        {
            "title": "rates",
            "baseline": "a",
            "rows": [
                {"name": "a", "median_us": 1, "p99_us": 1, "rate": 7.0, "gbps": 0, "note": ""}
            ],
        },
    ]
    drawn = bench.plot_tables(tables, os.path.join(str(tmp_path), "t.png"))
    assert [(d["metric"], d["values"]) for d in drawn] == [
        ("median_us", [1.5, 3.25]),
        ("rate", [7.0]),
    ]


def test_dict_only_lists_its_peers(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["bench", "dict", "--only", "nonsense"])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "no peer matches --only nonsense; valid: shmkit SharedDict" in err
