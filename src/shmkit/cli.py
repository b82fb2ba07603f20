"""``shmkit``: list, inspect, remove and collect shared-memory objects; demo; bench.

    shmkit ls [--json]                 what lives in /dev/shm, grouped by object
    shmkit watch [--interval S]        the same table, refreshed until Ctrl-C
    shmkit info NAME [--json]          one object's decoded header, attachments, stats
    shmkit rm NAME... [--json]         remove objects and all their parts
    shmkit gc [--yes] [--force]        remove what is provably abandoned (dry run by default)
    shmkit verify NAME... [--readonly] check objects' structure; exit 1 on problems
    shmkit demo                        writer and reader processes hand data over
    shmkit bench sync|queue|frames|dict  benchmarks against the peers, in one run

Holds no logic of its own: it calls ``registry`` and the objects.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from . import __version__, _demo, _verify, registry
from ._process import Liveness
from .errors import ShmkitError
from .segment import Segment

_BENCHES = {
    "sync": "shmkit._bench.sync",
    "queue": "shmkit._bench.queue",
    "frames": "shmkit._bench.frames",
    "dict": "shmkit._bench.dict",
}


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def _age(created: float) -> str:
    if not created:
        return "?"
    secs = max(0.0, time.time() - created)
    for unit, span in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= span:
            return f"{secs / span:.0f}{unit}"
    return f"{secs:.0f}s"


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=str))


def cmd_ls(args: argparse.Namespace, console: Console) -> int:
    entries = registry.discover(with_stats=args.stats)
    if args.json:
        _print_json([e.as_dict() for e in entries])
        return 0
    console.print(_ls_table(entries))
    return 0


def cmd_watch(args: argparse.Namespace, console: Console) -> int:
    """Redraw the ``ls`` table every ``--interval`` seconds until Ctrl-C (or ``--count``).

    On a terminal the table is redrawn in place; piped, each refresh is
    printed after the last, so a log shows every one.
    """
    shown = 0
    if not console.is_terminal:
        while args.count <= 0 or shown < args.count:
            console.print(_ls_table(registry.discover(with_stats=True)))
            sys.stdout.flush()
            shown += 1
            if args.count <= 0 or shown < args.count:
                time.sleep(args.interval)
        return 0
    with Live(_ls_table(registry.discover()), console=console, auto_refresh=False) as live:
        while args.count <= 0 or shown < args.count:
            live.update(_ls_table(registry.discover(with_stats=True)), refresh=True)
            shown += 1
            if args.count <= 0 or shown < args.count:
                time.sleep(args.interval)
    return 0


def _ls_table(entries: list[registry.Entry]) -> Table:
    table = Table(title=f"shmkit objects in /dev/shm ({len(entries)})")
    for col in ("name", "kind", "state", "size", "mode", "creator", "attached", "parts", "age"):
        table.add_column(col, justify="right" if col in ("size", "attached", "parts") else "left")
    for e in entries:
        creator = f"{e.creator_pid} ({e.creator})" if e.creator_pid else e.creator
        state = e.state + (" (abandoned)" if e.abandoned and e.state == "ready" else "")
        attached = str(e.attached) + (f" +{e.attached_dead} dead" if e.attached_dead else "")
        table.add_row(
            e.name,
            e.kind,
            state,
            _size(e.size),
            f"{e.mode:o}",
            creator,
            attached,
            str(len(e.parts)),
            _age(e.created),
        )
    return table


def _info(name: str) -> dict[str, Any]:
    entry = registry.find(name)
    out: dict[str, Any] = {"entry": entry.as_dict()}
    if entry.state != "ready":
        return out
    with Segment._open_object(
        entry.sysname,
        None,
        readonly=True,
        init_timeout=0.0,
        allow_insecure=True,
        sysname=entry.sysname,
        attach=False,
    ) as seg:
        h = seg.header
        assert h is not None
        out["header"] = {
            "kind": h.kind.name.lower(),
            "name": h.name,
            "state": "ready" if h.ready else "init",
            "mode": f"{h.mode:o}",
            "total_size": h.total_size,
            "body_offset": h.body_off,
            "body_size": h.body_size,
            "semaphores": h.nsems,
            "attach_slots": h.attach_slots,
            "creator_pid": h.creator_pid,
            "creator_start": h.creator_start,
            "created": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(h.created_ns / 1e9)),
            "boot_id": h.boot_id.hex(),
            "uid": h.uid,
            "params_bytes": len(h.params),
        }
        out["attachments"] = [
            {"slot": a.slot, "pid": a.pid, "liveness": a.liveness.value} for a in seg.attachments()
        ]
    return out


def cmd_info(args: argparse.Namespace, console: Console) -> int:
    info = _info(args.name)
    if args.json:
        _print_json(info)
        return 0
    entry = info["entry"]
    table = Table(title=f"{entry['name']} ({entry['kind']}, {entry['state']})", show_header=False)
    table.add_column("field")
    table.add_column("value")
    for key, value in info.get("header", {}).items():
        table.add_row(key, str(value))
    table.add_row("system parts", ", ".join(entry["parts"]))
    live = [a for a in info.get("attachments", []) if a["liveness"] != Liveness.DEAD.value]
    table.add_row("attached", ", ".join(f"{a['pid']} ({a['liveness']})" for a in live) or "none")
    for key, value in entry["stats"].items():
        table.add_row(f"stats.{key}", str(value))
    if entry["error"]:
        table.add_row("error", entry["error"])
    console.print(table)
    return 0


def cmd_rm(args: argparse.Namespace, console: Console) -> int:
    results: dict[str, Any] = {}
    status = 0
    for name in args.names:
        try:
            results[name] = {"removed": registry.remove(name)}
        except ShmkitError as exc:
            results[name] = {"error": str(exc)}
            status = 1
    if args.json:
        _print_json(results)
    else:
        for name, res in results.items():
            if "error" in res:
                console.print(f"[red]{name}[/]: {res['error']}")
            else:
                console.print(f"removed {name}: {', '.join(res['removed'])}")
    return status


def cmd_gc(args: argparse.Namespace, console: Console) -> int:
    chosen = registry.gc(act=args.yes, force=args.force, grace=args.grace)
    if args.json:
        _print_json({"removed" if args.yes else "would_remove": [e.as_dict() for e in chosen]})
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
    report = _demo.run(args.size, args.timeout)
    if args.json:
        _print_json(report)
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


def cmd_bench(args: argparse.Namespace, console: Console) -> int:
    module = importlib.import_module(_BENCHES[args.which])
    return int(module.main(args.rest))


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, not {text}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {value}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="shmkit", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"shmkit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("ls", help="list shmkit objects in shared memory")
    p.add_argument("--json", action="store_true", help="print the list as JSON")
    p.add_argument("--stats", action="store_true", help="include per-kind statistics")
    p.set_defaults(func=cmd_ls)

    p = sub.add_parser("watch", help="the ls table, refreshed until Ctrl-C")
    p.add_argument(
        "--interval", type=_positive_float, default=1.0, help="seconds between refreshes (> 0)"
    )
    p.add_argument(
        "--count", type=_non_negative_int, default=0, help="stop after this many (0 = never)"
    )
    p.set_defaults(func=cmd_watch)

    p = sub.add_parser("info", help="decode one object's header, attachments and statistics")
    p.add_argument("name", help="the object's name")
    p.add_argument("--json", action="store_true", help="print it as JSON")
    p.set_defaults(func=cmd_info)

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
        "--size", type=_positive_int, default=6 * 1024 * 1024, help="payload bytes (>= 1)"
    )
    p.add_argument(
        "--timeout", type=_positive_float, default=10.0, help="seconds to wait for each step"
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("bench", help="benchmarks against the peers")
    p.add_argument("which", choices=sorted(_BENCHES))
    p.add_argument("rest", nargs=argparse.REMAINDER, help="options for that benchmark")
    p.set_defaults(func=cmd_bench)

    # `shmkit verify NAME...`: parser and handler live in _verify.py.
    _verify.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; return the exit status."""
    args = build_parser().parse_args(argv)
    # Piped output (scripts, tests) gets a wide table instead of truncated names.
    console = Console() if sys.stdout.isatty() else Console(width=200)
    try:
        return int(args.func(args, console))
    except ShmkitError as exc:
        console.print(f"[red]error:[/] {exc}")
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `shmkit ls --json | head`: the reader went away; no traceback. Point
        # stdout at /dev/null so the interpreter's final flush cannot fail too.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 141


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
