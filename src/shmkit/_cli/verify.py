"""``shmkit verify NAME...``: run an object's structural checker (``verify()``).

Exit status: 0 when every object is sound, 1 when any has problems (or
could not be opened), 2 when one is of a kind that has no checker. Today the
SharedDict has one; other kinds are reported as not verifiable rather than
silently passed. A dict is opened with the raw ``bytes`` codec (nothing is
unpickled) and, unless ``--readonly``, writable: its ``verify()`` then takes
the writer lock and first repairs what a dead writer or grower left, as the
next writer would.
"""

from __future__ import annotations

import argparse
import json
from typing import Any, Final

from rich.console import Console

from .. import registry
from ..errors import ShmkitError

#: Exit statuses.
SOUND: Final = 0
PROBLEMS: Final = 1
UNSUPPORTED: Final = 2


def add_parsers(sub: Any) -> None:
    """Register ``verify``."""
    p = sub.add_parser("verify", help="check objects' structure; exit 1 if problems are found")
    p.add_argument("names", nargs="+", help="the objects' names")
    p.add_argument(
        "--readonly", action="store_true", help="check without the writer lock (no repair)"
    )
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the lock")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=cmd_verify)


def verify_one(name: str, *, readonly: bool = False, timeout: float = 10.0) -> dict[str, Any]:
    """``{"name", "kind", "status": sound|problems|unsupported|error, "problems"}``."""
    out: dict[str, Any] = {"name": name, "kind": "?", "status": "error", "problems": []}
    try:
        entry = registry.find(name, with_stats=False)
        out["kind"] = entry.kind
        if entry.state != "ready":
            out["problems"] = [f"state {entry.state}: {entry.error or 'not a ready object'}"]
            return out
        if entry.kind != "dict":
            out["status"] = "unsupported"
            out["problems"] = [f"a {entry.kind} has no structural checker (verify())"]
            return out
        from ..mapping import SharedDict  # noqa: PLC0415 - keep `shmkit --help` light

        with SharedDict.open(entry.name, codec="bytes", readonly=readonly) as d:
            problems = d.verify(timeout=timeout)
    except (ShmkitError, OSError, ValueError) as exc:
        out["problems"] = [f"{type(exc).__name__}: {exc}"]
        return out
    out["status"] = "problems" if problems else "sound"
    out["problems"] = problems
    return out


def cmd_verify(args: argparse.Namespace, console: Console) -> int:
    results = [verify_one(n, readonly=args.readonly, timeout=args.timeout) for n in args.names]
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for r in results:
            if r["status"] == "sound":
                console.print(f"[green]ok[/]      {r['name']} ({r['kind']})", highlight=False)
                continue
            label = "[yellow]skipped[/]" if r["status"] == "unsupported" else "[red]FAILED[/] "
            console.print(f"{label} {r['name']} ({r['kind']})", highlight=False)
            for problem in r["problems"]:
                console.print(f"        {problem}", highlight=False, markup=False)
    statuses = {r["status"] for r in results}
    if statuses & {"problems", "error"}:
        return PROBLEMS
    return UNSUPPORTED if "unsupported" in statuses else SOUND
