"""``shmkit info NAME``: one object's header, attachments and per-kind facts.

A raw segment or semaphore (made by another program, no shmkit header) is
described as such with status 0; a segment that carries shmkit's magic but
fails validation is *corrupt* and the status is 3.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

from rich.console import Console
from rich.table import Table

from .. import _names, registry
from .._process import Liveness
from . import objects
from .common import human_size, print_json

#: Exit status of ``info`` for a shmkit-headed segment that fails validation.
CORRUPT_STATUS = 3


def add_parsers(sub: Any) -> None:
    """Register ``info``."""
    p = sub.add_parser("info", help="decode one object's header, attachments and statistics")
    p.add_argument("name", help="the object's name (a user name, or /verbatim for raw objects)")
    p.add_argument(
        "--json", action="store_true", help="print it as JSON (errors too, on stdout, rc != 0)"
    )
    p.set_defaults(func=cmd_info)


def find(name: str) -> registry.Entry:
    """The entry for ``name``: a shmkit object, a raw segment, or a raw semaphore."""
    sysname = name if _names.is_verbatim(name) else _names.system_name(name)
    path = os.path.join(objects.shm_dir(), sysname.lstrip("/"))
    if os.path.exists(path):
        if _names.is_ours(sysname) or objects.has_magic(path):
            return registry.find(sysname)
        raw = objects.raw_entry(sysname)
        if raw is not None:
            return raw
    if _names.is_verbatim(name):
        raw = objects.raw_entry(sysname, semaphore=True)
        if raw is not None:
            return raw
    return registry.find(name)  # NotFound (or an orphan semaphore's listing)


def collect(name: str) -> dict[str, Any]:
    """Everything ``info`` shows, JSON-serialisable."""
    entry = find(name)
    out: dict[str, Any] = {"entry": entry.as_dict()}
    out["entry"]["owner"] = objects.owner(entry.uid)
    out["details"] = objects.details(entry)
    if entry.state != "ready":
        return out
    with registry.open_for_inspection(entry.sysname, entry.uid) as seg:
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


def describe_raw(entry: dict[str, Any], details: dict[str, Any]) -> str:
    """``raw segment, 1.0 MiB (1048576 bytes), owner alice, mode 600``."""
    what = f"raw {entry['kind']}"
    if entry["kind"] == "semaphore":
        value = f", value {details['value']}" if "value" in details else ""
        return f"{what}{value}, owner {entry['owner']}, mode {entry['mode']:o}"
    return (
        f"{what}, {entry['size']} bytes ({human_size(entry['size'])}), "
        f"owner {entry['owner']}, mode {entry['mode']:o}"
    )


def cmd_info(args: argparse.Namespace, console: Console) -> int:
    """Print one object; status 3 for a corrupt shmkit segment."""
    info = collect(args.name)
    entry = info["entry"]
    status = CORRUPT_STATUS if entry["state"] == "corrupt" else 0
    if args.json:
        print_json(info)
        return status
    if entry["state"] == "raw":
        console.print(f"{entry['name']}: {describe_raw(entry, info['details'])}", highlight=False)
        return 0
    if entry["state"] == "foreign":
        console.print(
            f"{entry['name']}: {entry['kind']} of user {entry['owner']} ({entry['error']}), "
            f"{entry['size']} bytes, mode {entry['mode']:o}, creator {entry['creator']}",
            highlight=False,
        )
        return 0
    title = f"{entry['name']} ({entry['kind']}, {entry['state']})"
    table = Table(title=title, show_header=False)
    table.add_column("field")
    table.add_column("value")
    for key, value in _flatten(entry["kind"], info["details"]):
        table.add_row(key, value)
    for key, value in info.get("header", {}).items():
        table.add_row(key, str(value))
    table.add_row("owner", entry["owner"])
    table.add_row("system parts", ", ".join(entry["parts"]))
    live = [a for a in info.get("attachments", []) if a["liveness"] != Liveness.DEAD.value]
    table.add_row("attached", ", ".join(f"{a['pid']} ({a['liveness']})" for a in live) or "none")
    if entry["error"]:
        table.add_row("error", entry["error"])
    console.print(table)
    return status


def _flatten(prefix: str, value: Any) -> list[tuple[str, str]]:
    """Nested facts as ``holder.pid``-style rows; lists of dicts one row per item."""
    if isinstance(value, dict):
        rows: list[tuple[str, str]] = []
        for k, v in value.items():
            rows += _flatten(f"{prefix}.{k}" if prefix else str(k), v)
        return rows
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        return [
            (f"{prefix}[{i}]", ", ".join(f"{k}={v}" for k, v in item.items()))
            for i, item in enumerate(value)
        ]
    return [(prefix, str(value))]
