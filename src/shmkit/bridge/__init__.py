"""shmkit.bridge: carry Broadcast, Queue and Latest to other hosts, programs unchanged.

One bridge process per host (``shmkit bridge``) exports local objects under
a key and imports remote keys into local objects of the same kind and name,
over ZeroMQ (``pip install 'shmkit[bridge]'``). See ``docs/bridge.md``.

    from shmkit.bridge import Bridge, parse_spec
    b = Bridge(listen="tcp://10.0.0.1:7700",
               exports=[parse_spec("broadcast:frames", export=True)])
    b.start(); ...; b.stop()
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .core import Bridge, read_status, status_name
    from .engine import AVAILABLE, Curve, make_keys
    from .protocol import Spec, parse_spec

__all__ = [
    "AVAILABLE",
    "Bridge",
    "Curve",
    "Spec",
    "make_keys",
    "parse_spec",
    "read_status",
    "status_name",
]

_WHERE = {
    "Bridge": "core",
    "read_status": "core",
    "status_name": "core",
    "AVAILABLE": "engine",
    "Curve": "engine",
    "make_keys": "engine",
    "Spec": "protocol",
    "parse_spec": "protocol",
}


def __getattr__(name: str) -> Any:
    # Lazy: `shmkit ls` builds the bridge's parser without importing zmq.
    if name not in _WHERE:
        raise AttributeError(f"module 'shmkit.bridge' has no attribute {name!r}")
    import importlib  # noqa: PLC0415

    return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
