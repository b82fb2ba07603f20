"""shmkit: list, inspect, remove and collect shared-memory objects; pipe, demo, bench.

    shmkit ls [--all] [--stats] [--json]  what lives in /dev/shm (--all: raw and foreign too)
    shmkit watch [--interval S]           the same table with stats, refreshed until Ctrl-C
    shmkit info NAME [--json]             one object: header, attachments, per-kind facts
    shmkit put NAME / get NAME            pipe stdin lines (or --framed records) through a queue
    shmkit rm NAME... [--json]            remove objects and all their parts
    shmkit gc [--yes] [--force]           remove what is provably abandoned (dry run by default)
    shmkit verify NAME... [--readonly]    check objects' structure; exit 1 on problems
    shmkit demo                           writer and reader processes hand data over
    shmkit bench [NAME] [--json] [--plot FILE.png]   benchmarks against the peers, in one run
                                          (NAME: sync, queue, frames, dict, aio)

Holds no logic of its own: each subcommand lives in a private module of
``shmkit._cli`` (imported only when that subcommand runs) and calls
``registry`` and the objects. Errors are one line on stderr with status 1;
with ``--json`` they are a JSON object ``{"error": {"type", "message"}}`` on
stdout instead, so a script that parses stdout sees them, still with status 1
(a usage error: status 2, ``{"error": {"type": "UsageError", …}}``).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, NoReturn

from . import __version__
from ._cli import bench, info, ls, manage, pipe, verify
from .errors import ShmkitError

#: ``shmkit bench NAME`` -> the module whose ``main(argv) -> int`` runs it.
_BENCHES = {
    "sync": "shmkit._bench.sync",
    "queue": "shmkit._bench.queue",
    "frames": "shmkit._bench.frames",
    "dict": "shmkit._bench.dict",
    "aio": "shmkit._bench.aio",
}


class _Parser(argparse.ArgumentParser):
    """argparse, except that with ``--json`` on the command line a usage error is JSON too."""

    json_errors = False

    def error(self, message: str) -> NoReturn:
        if _Parser.json_errors:
            from ._cli.common import print_json  # noqa: PLC0415

            print_json({"error": {"type": "UsageError", "message": f"{self.prog}: {message}"}})
            raise SystemExit(2)
        super().error(message)


def build_parser() -> argparse.ArgumentParser:
    """The whole command line: one sub-parser per subcommand, each with its ``func``."""
    parser = _Parser(
        prog="shmkit",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"shmkit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    ls.add_parsers(sub)  # ls, watch
    info.add_parsers(sub)  # info
    pipe.add_parsers(sub)  # put, get
    manage.add_parsers(sub)  # rm, gc, demo
    bench.add_parser(sub, _BENCHES)  # bench
    verify.add_parsers(sub)  # verify
    from .bridge import cli as bridge_cli  # noqa: PLC0415 - zmq only when bridging

    bridge_cli.add_parser(sub)  # bridge
    return parser


def _console() -> Any:
    from rich.console import Console  # noqa: PLC0415 - keep `shmkit --help` light

    # Piped output (scripts, tests) gets a wide table instead of truncated names.
    return Console() if sys.stdout.isatty() else Console(width=200)


def _error(args: argparse.Namespace, exc: BaseException) -> int:
    if getattr(args, "json", False):
        from ._cli.common import print_json  # noqa: PLC0415

        print_json({"error": {"type": type(exc).__name__, "message": str(exc)}})
    else:
        print(f"shmkit {args.command}: error: {exc}", file=sys.stderr, flush=True)
    return 1


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; return the exit status."""
    _Parser.json_errors = "--json" in (sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args, _console()))
    except ShmkitError as exc:
        return _error(args, exc)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `shmkit ls --json | head`: the reader went away; no traceback. Point
        # stdout at /dev/null so the interpreter's final flush cannot fail too.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 141
    except OSError as exc:  # a system call shmkit does not translate (EACCES on a listing…)
        return _error(args, exc)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
