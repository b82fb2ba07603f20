"""What every subcommand shares: argument types, human sizes and ages, JSON output."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, TextIO


def human_size(n: float) -> str:
    """``1536`` -> ``"1.5 KiB"``: bytes in binary units."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover - unreachable


def human_age(since: float) -> str:
    """Seconds since the unix time ``since``, rounded to the largest unit (``"3m"``)."""
    if not since:
        return "?"
    return human_span(max(0.0, time.time() - since))


def human_span(secs: float) -> str:
    """A duration in seconds as ``"2h"``, ``"5m"``, ``"12s"`` or ``"0.250s"``."""
    for unit, span in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= span:
            return f"{secs / span:.0f}{unit}"
    return f"{secs:.0f}s" if secs >= 10 else f"{secs:.3f}s"


def print_json(obj: Any, file: TextIO | None = None) -> None:
    """Pretty JSON on stdout (or ``file``); non-JSON values become strings."""
    print(json.dumps(obj, indent=2, default=str), file=file or sys.stdout, flush=True)


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, not {text}")
    return value


def non_negative_float(text: str) -> float:
    """argparse type: a finite number >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be 0 or more seconds, not {text}")
    return value


def _int_at_least(text: str, low: int, rule: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"must be {rule}, not {value}")
    return value


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    return _int_at_least(text, 0, "0 or more")


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    return _int_at_least(text, 1, "at least 1")
