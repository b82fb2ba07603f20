"""``shmkit bridge``: the parser and handler, hooked into shmkit's CLI by two lines."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from typing import Any

from ..errors import ShmkitError
from .protocol import WINDOW, Spec, parse_spec

__all__ = ["add_parser", "run"]

_EPILOG = """\
examples:
  host A:  shmkit bridge --listen tcp://10.0.0.1:7700 --export broadcast:frames --export queue:jobs
  host B:  shmkit bridge --connect tcp://10.0.0.1:7700 --import broadcast:frames --import queue:jobs
  state:   shmkit bridge --status [--name HOST]
See docs/bridge.md (security, systemd unit, guarantees).
"""


def _spec(export: bool) -> Any:
    def parse(text: str) -> Spec:
        try:
            return parse_spec(text, export)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``bridge`` to shmkit's subcommands; its handler is :func:`run`."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "bridge",
        help="carry Broadcast, Queue and Latest to other hosts (foreground, logs to stderr)",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--listen",
        metavar="tcp://IP:PORT",
        help="the one address to listen on (nothing listens without it)",
    )
    p.add_argument(
        "--connect",
        metavar="tcp://PEER:PORT",
        action="append",
        default=[],
        help="a peer bridge to import from (repeatable)",
    )
    p.add_argument(
        "--export",
        metavar="KIND:NAME[=KEY]",
        type=_spec(True),
        action="append",
        default=[],
        help="offer a local object (KIND: broadcast, queue, latest)",
    )
    p.add_argument(
        "--import",
        dest="imports",
        metavar="KIND:KEY[=NAME]",
        type=_spec(False),
        action="append",
        default=[],
        help="take a remote key into the local object NAME (default: same name)",
    )
    p.add_argument("--name", help="this bridge's name in bridge.<name> (default: host name)")
    p.add_argument(
        "--window",
        type=int,
        default=WINDOW,
        help=f"queue credit: messages in flight per imported queue (default {WINDOW})",
    )
    p.add_argument(
        "--curve-secret",
        metavar="FILE",
        help="this bridge's CURVE certificate (.key_secret): encrypts every link",
    )
    p.add_argument(
        "--curve-server-key",
        metavar="FILE",
        help="the listening peer's public certificate (.key), to --connect with CURVE",
    )
    p.add_argument(
        "--curve-allow",
        metavar="DIR",
        help="only clients whose public certificate is in DIR may connect",
    )
    p.add_argument(
        "--make-keys",
        nargs=2,
        metavar=("DIR", "NAME"),
        help="write a CURVE key pair DIR/NAME.key and DIR/NAME.key_secret, then exit",
    )
    p.add_argument(
        "--status",
        action="store_true",
        help="print the state of the bridge running on this host as JSON, then exit",
    )
    p.add_argument("--log-every", type=float, default=10.0, help="seconds between rate logs")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logs")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace, console: Any = None) -> int:
    """Run the bridge in the foreground until SIGINT/SIGTERM; 0 on a clean stop."""
    from . import engine  # noqa: PLC0415 - keep `shmkit ls` free of zmq
    from .core import Bridge, read_status  # noqa: PLC0415

    if args.status:
        print(json.dumps(read_status(args.name), indent=2))
        return 0
    engine.require()
    if args.make_keys:
        public, secret = engine.make_keys(*args.make_keys)
        print(f"public: {public}\nsecret: {secret}")
        return 0
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s shmkit-bridge %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    curve = None
    if args.curve_secret:
        curve = engine.Curve(args.curve_secret, args.curve_server_key, args.curve_allow)
    elif args.curve_server_key or args.curve_allow:
        raise ShmkitError("--curve-server-key/--curve-allow need --curve-secret")
    if not (args.export or args.imports):
        raise ShmkitError("nothing to do: give --export and/or --import")
    bridge = Bridge(
        listen=args.listen,
        connect=args.connect,
        exports=args.export,
        imports=args.imports,
        curve=curve,
        name=args.name,
        window=args.window,
        log_every=args.log_every,
    )

    def on_signal(signum: int, frame: Any) -> None:
        bridge.request_stop()

    # Several threads hand messages to each other: let a woken one take the
    # GIL within 0.5 ms rather than CPython's default 5 ms (tail latency).
    sys.setswitchinterval(0.0005)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        bridge.run()
    finally:
        bridge.stop()
    return 0
