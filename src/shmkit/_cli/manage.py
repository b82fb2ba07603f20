"""``shmkit rm``, ``shmkit gc`` and ``shmkit demo``."""

from __future__ import annotations

import argparse
from typing import Any

from rich.console import Console
from rich.table import Table

from .. import __version__, registry
from ..errors import ShmkitError
from .common import positive_float, positive_int, print_json


def add_parsers(sub: Any) -> None:
    """Register ``rm``, ``gc`` and ``demo``."""
    p = sub.add_parser("rm", help="remove objects (segment and semaphores)")
    p.add_argument("names", nargs="+", help="the objects' names")
    p.add_argument("--json", action="store_true", help="print what was removed as JSON")
    p.set_defaults(func=cmd_rm)

    p = sub.add_parser("gc", help="remove provably abandoned objects (dry run unless --yes)")
    p.add_argument("--yes", action="store_true", help="really remove")
    p.add_argument("--force", action="store_true", help="also remove when liveness is unknown")
    p.add_argument(
        "--grace", type=float, default=registry.DEFAULT_GRACE, help="minimum age in seconds"
    )
    p.add_argument("--json", action="store_true", help="print the candidates as JSON")
    p.set_defaults(func=cmd_gc)

    p = sub.add_parser("demo", help="writer and reader processes share memory by name")
    p.add_argument(
        "--size", type=positive_int, default=6 * 1024 * 1024, help="payload bytes (>= 1)"
    )
    p.add_argument(
        "--timeout", type=positive_float, default=10.0, help="seconds to wait for each step"
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_demo)


def cmd_rm(args: argparse.Namespace, console: Console) -> int:
    """Remove each name with all its parts; status 1 if any failed."""
    results: dict[str, Any] = {}
    status = 0
    for name in args.names:
        try:
            results[name] = {"removed": registry.remove(name)}
        except ShmkitError as exc:
            results[name] = {"error": str(exc)}
            status = 1
    if args.json:
        print_json(results)
    else:
        for name, res in results.items():
            if "error" in res:
                console.print(f"[red]{name}[/]: {res['error']}")
            else:
                console.print(f"removed {name}: {', '.join(res['removed'])}")
    return status


def cmd_gc(args: argparse.Namespace, console: Console) -> int:
    """List (or with --yes remove) what is provably abandoned."""
    chosen = registry.gc(act=args.yes, force=args.force, grace=args.grace)
    if args.json:
        print_json({"removed" if args.yes else "would_remove": [e.as_dict() for e in chosen]})
        return 0
    verb = "removed" if args.yes else "would remove"
    for e in chosen:
        console.print(f"{verb} {e.name} ({e.kind}, {e.state}, creator {e.creator})")
    if not chosen:
        console.print("nothing abandoned")
    elif not args.yes:
        console.print("dry run: pass --yes to remove")
    return 0


def cmd_demo(args: argparse.Namespace, console: Console) -> int:
    """Run the two-process demo and show each step's time."""
    from .. import _demo  # noqa: PLC0415 - only demo needs it

    report = _demo.run(args.size, args.timeout)
    if args.json:
        print_json(report)
        return 0 if report["reader"]["verified"] else 1
    console.print(
        f"shmkit {__version__} demo: writer and reader processes share {args.size:,} bytes"
    )
    table = Table(title=f"demo '{report['name']}'")
    for col in ("process", "step", "ms"):
        table.add_column(col, justify="right" if col == "ms" else "left")
    for role in ("writer", "reader"):
        part = report[role]
        for step, ms in part["steps"].items():
            table.add_row(f"{role} (pid {part['pid']})", step, f"{ms:.3f}")
    console.print(table)
    ok = report["reader"]["verified"]
    left = [e for e in registry.discover() if e.name.startswith(report["name"])]
    console.print(
        f"reader verified the digest: {'yes' if ok else '[red]NO[/]'}; "
        f"objects left in /dev/shm: {len(left)}; total {report['total_ms']:.1f} ms"
    )
    return 0 if ok and not left else 1
