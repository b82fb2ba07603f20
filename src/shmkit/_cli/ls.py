"""``shmkit ls`` and ``shmkit watch``: the table of what lives in /dev/shm."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from rich.console import Console
from rich.table import Table

from .. import registry
from . import objects
from .common import human_age, human_size, non_negative_int, positive_float, print_json


def add_parsers(sub: Any) -> None:
    """Register ``ls`` and ``watch``."""
    p = sub.add_parser("ls", help="list shmkit objects in shared memory (--all: everything)")
    p.add_argument("--json", action="store_true", help="print the list as JSON")
    p.add_argument(
        "--stats", action="store_true", help="add a column of per-kind facts (depth, holder…)"
    )
    p.add_argument(
        "--all",
        action="store_true",
        help="also raw segments and semaphores of other programs and users",
    )
    p.set_defaults(func=cmd_ls)

    p = sub.add_parser("watch", help="the ls table, refreshed until Ctrl-C")
    p.add_argument(
        "--interval", type=positive_float, default=1.0, help="seconds between refreshes (> 0)"
    )
    p.add_argument(
        "--count", type=non_negative_int, default=0, help="stop after this many (0 = never)"
    )
    p.add_argument(
        "--all", action="store_true", help="also raw segments and semaphores (as ls --all)"
    )
    p.set_defaults(func=cmd_watch)


def collect(*, include_raw: bool, stats: bool) -> list[tuple[registry.Entry, dict[str, Any]]]:
    """Entries sorted by name, each with its per-kind facts (empty unless ``stats``)."""
    return _split(include_raw=include_raw, stats=stats)[0]


def _split(
    *, include_raw: bool, stats: bool
) -> tuple[list[tuple[registry.Entry, dict[str, Any]]], int]:
    """The rows to show, and how many entries of /dev/shm they leave out."""
    every = objects.discover(include_raw=True, with_stats=False)
    shown = [e for e in every if include_raw or e.state != "raw"]
    return [(e, objects.details(e) if stats else {}) for e in shown], len(every) - len(shown)


def cmd_ls(args: argparse.Namespace, console: Console) -> int:
    """Print the table (or JSON) of objects."""
    rows, hidden = _split(include_raw=args.all, stats=args.stats)
    if args.json:
        out = []
        for entry, facts in rows:
            item = entry.as_dict()
            item["owner"] = objects.owner(entry.uid)
            if args.stats:
                item["stats"] = facts
            out.append(item)
        print_json(out)
        return 0
    console.print(table(rows, stats=args.stats))
    if hidden:
        console.print(f"{hidden} more in /dev/shm not made by shmkit: shmkit ls --all")
    return 0


def cmd_watch(args: argparse.Namespace, console: Console) -> int:
    """Redraw the table every ``--interval`` seconds until Ctrl-C (or ``--count``).

    On a terminal the table is redrawn in place; piped, each refresh is
    printed after the last, so a log shows every one.
    """
    from rich.live import Live  # noqa: PLC0415 - only watch needs it

    shown = 0

    def current() -> Table:
        return table(collect(include_raw=args.all, stats=True), stats=True)

    if not console.is_terminal:
        while args.count <= 0 or shown < args.count:
            console.print(current())
            sys.stdout.flush()
            shown += 1
            if args.count <= 0 or shown < args.count:
                time.sleep(args.interval)
        return 0
    with Live(current(), console=console, auto_refresh=False) as live:
        while args.count <= 0 or shown < args.count:
            live.update(current(), refresh=True)
            shown += 1
            if args.count <= 0 or shown < args.count:
                time.sleep(args.interval)
    return 0


def table(rows: list[tuple[registry.Entry, dict[str, Any]]], *, stats: bool) -> Table:
    """The ls table; with ``stats`` a last column of per-kind facts."""
    result = Table(title=f"objects in /dev/shm ({len(rows)})")
    cols = ["name", "kind", "state", "size", "mode", "owner", "creator", "attached", "parts"]
    cols += ["age"] + (["stats"] if stats else [])
    for col in cols:
        result.add_column(col, justify="right" if col in ("size", "attached", "parts") else "left")
    for e, facts in rows:
        creator = f"{e.creator_pid} ({e.creator})" if e.creator_pid else e.creator
        if e.state == "raw":
            creator = ""
        state = e.state + (" (abandoned)" if e.abandoned and e.state == "ready" else "")
        attached = str(e.attached) + (f" +{e.attached_dead} dead" if e.attached_dead else "")
        cells = [
            e.name,
            e.kind,
            state,
            human_size(e.size),
            f"{e.mode:o}",
            objects.owner(e.uid),
            creator,
            attached if e.state != "raw" else "",
            str(len(e.parts)),
            human_age(e.created),
        ]
        if stats:
            cells.append(objects.summary(e, facts))
        result.add_row(*cells)
    return result
