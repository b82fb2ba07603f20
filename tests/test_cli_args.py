"""Issue 10 item 10 (part): the CLI refuses bad arguments in one line, survives a
closed pipe, prints every watch refresh when piped, and documents every flag."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import pytest

from shmkit import cli

from .helpers import ROOT


@pytest.mark.parametrize(
    "argv",
    [
        ["watch", "--interval", "0"],
        ["watch", "--interval", "-1"],
        ["watch", "--interval", "nan"],
        ["watch", "--count", "-1"],
        ["demo", "--size", "-5"],
        ["demo", "--size", "0"],
        ["demo", "--timeout", "0"],
    ],
)
def test_bad_arguments_are_one_line_errors(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith(f"shmkit {argv[0]}: error: argument")


def _run(args: list[str], **kw: object) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "src"))
    return subprocess.Popen(  # type: ignore[call-overload, no-any-return]
        [sys.executable, "-m", "shmkit", *args], env=env, stderr=subprocess.PIPE, **kw
    )


def test_a_closed_pipe_is_not_a_traceback() -> None:
    """`shmkit ls --json | head -c 1`: the reader leaves early."""
    r, w = os.pipe()
    os.close(r)  # nobody will read
    proc = _run(["ls", "--json"], stdout=w)
    os.close(w)
    _, err = proc.communicate(timeout=30)
    assert b"Traceback" not in err, err.decode()
    assert proc.returncode in (0, 141)


def test_watch_prints_every_refresh_when_piped() -> None:
    proc = _run(["watch", "--count", "3", "--interval", "0.05"], stdout=subprocess.PIPE)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode()
    assert out.decode().count("objects in /dev/shm (") == 3  # one table title per refresh


def test_every_flag_has_help() -> None:
    parser = cli.build_parser()
    missing = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                for a in sub._actions:
                    if a.option_strings and a.help in (None, "") and "-h" not in a.option_strings:
                        missing.append(f"{sub_name} {a.option_strings}")
    assert not missing, missing


def test_help_texts_have_no_literal_markup(capsys: pytest.CaptureFixture[str]) -> None:
    parser = cli.build_parser()
    texts = [parser.format_help()]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            texts += [sub.format_help() for sub in action.choices.values()]
    for text in texts:
        assert "``" not in text, text
