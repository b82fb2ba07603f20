"""The Bridge: one process per host carrying Broadcast, Queue and Latest to other hosts.

It starts the listener (only if an address to listen on was given), one
thread per export and per import, and a status loop that writes the
bridge's state as JSON into the Latest ``bridge.<name>`` (``shmkit ls``
lists it; ``shmkit bridge --status`` prints it) and logs rates.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from typing import Any

from ..errors import MessageTooLarge, NotFound, ShmkitError
from ..latest import Latest
from . import protocol as P
from .engine import Curve, Engine, SharedSocket
from .exporter import Export, Listener, make_export
from .importer import Import, make_import

__all__ = ["STATUS_SIZE", "Bridge", "status_name"]

log = logging.getLogger("shmkit.bridge")

#: bytes of the status Latest (JSON)
STATUS_SIZE = 64 * 1024


def status_name(name: str | None) -> str:
    """The name of the Latest holding a bridge's state: ``bridge.<name or host name>``."""
    return f"bridge.{name or socket.gethostname().split('.')[0]}"


class Bridge:
    """Exports and imports over the network; ``start()``, then ``stop()`` (or ``run()``)."""

    def __init__(
        self,
        *,
        listen: str | None = None,
        connect: list[str] | None = None,
        exports: list[P.Spec] | None = None,
        imports: list[P.Spec] | None = None,
        curve: Curve | None = None,
        name: str | None = None,
        window: int = P.WINDOW,
        log_every: float = 10.0,
    ) -> None:
        exports, imports, connect = exports or [], imports or [], connect or []
        if exports and listen is None:
            raise ShmkitError("--export needs --listen ADDRESS (nothing listens unless named)")
        if imports and not connect:
            raise ShmkitError("--import needs at least one --connect ADDRESS")
        locals_ = [s.local for s in imports]
        if len(set(locals_)) != len(locals_):
            raise ShmkitError("two --import write into the same local object")
        if curve is not None and connect and curve.server_key is None:
            raise ShmkitError("--curve-server-key is needed to --connect with CURVE")
        self.session = os.urandom(16)
        self.status_name = status_name(name)
        self._log_every = log_every
        self._engine = Engine(curve)
        self._stop = threading.Event()
        self.exports: list[Export] = []
        self.listener: Listener | None = None
        self._sock: SharedSocket | None = None
        try:
            if listen is not None:
                self._sock = sock = self._engine.listener(listen)
                self.exports = [make_export(s, sock, self.session) for s in exports]
                self.listener = Listener(sock, listen, self.exports, self.session)
            self.imports: list[Import] = [
                make_import(s, self._engine, connect, self.session, window) for s in imports
            ]
            self._status = Latest.open_or_create(self.status_name, size=STATUS_SIZE)
        except BaseException:
            if self._sock is not None:
                self._sock.close()
            self._engine.close()
            raise
        self._status_thread = threading.Thread(target=self._status_loop, name="status", daemon=True)
        self._started = time.time()
        self._rates: dict[str, float] = {}

    def start(self) -> None:
        log.info(
            "bridge %s (session %s, pid %d)", self.status_name, self.session.hex()[:12], os.getpid()
        )
        if self.listener is not None:
            log.info("listening on %s", self.listener.address)
            self.listener.start()
        workers: list[Export | Import] = [*self.exports, *self.imports]
        for t in workers:
            log.info("%s %s", "export" if isinstance(t, Export) else "import", t.spec)
            t.start()
        self._status_thread.start()

    def stop(self, unlink_status: bool = True) -> None:
        """Stop every thread and close the local objects; the status object is removed."""
        self._stop.set()
        threads: list[Any] = [*self.imports, *self.exports]
        if self.listener is not None:
            threads.append(self.listener)
        for t in threads:
            t.stop_event.set()
        for t in threads:
            if t.is_alive():
                t.join(timeout=5.0)
        if self._status_thread.is_alive():
            self._status_thread.join(timeout=5.0)
        if unlink_status:
            self._status.unlink()
        self._status.close()
        if self._sock is not None:
            self._sock.close()
        self._engine.close()
        log.info("bridge stopped")

    def run(self) -> None:
        """Start, then block until ``stop()`` is called from another thread or a signal."""
        self.start()
        while not self._stop.wait(0.5):
            pass

    def request_stop(self) -> None:
        self._stop.set()

    def status(self) -> dict[str, Any]:
        """The bridge's state: peers, and per object its counters and message rate."""
        return {
            "name": self.status_name,
            "pid": os.getpid(),
            "session": self.session.hex()[:12],
            "since": round(self._started, 3),
            "updated": round(time.time(), 3),
            "listen": None if self.listener is None else self.listener.status(),
            "exports": [self._with_rate(e.status()) for e in self.exports],
            "imports": [self._with_rate(i.status()) for i in self.imports],
        }

    def _with_rate(self, st: dict[str, Any]) -> dict[str, Any]:
        st["msgs_per_s"] = self._rates.get(st["spec"], 0.0)
        return st

    def _status_loop(self) -> None:
        last: dict[str, tuple[float, int]] = {}
        next_log = time.monotonic() + self._log_every
        workers: list[Export | Import] = [*self.exports, *self.imports]
        while not self._stop.wait(1.0):
            now = time.monotonic()
            for t in workers:
                key = str(t.spec)
                t0, n0 = last.get(key, (now, t.msgs))
                if now > t0:
                    self._rates[key] = round((t.msgs - n0) / (now - t0), 1)
                last[key] = (now, t.msgs)
            st = self.status()
            data = json.dumps(st).encode()
            try:
                self._status.set(data[:STATUS_SIZE], timeout=1.0)
            except (MessageTooLarge, ShmkitError) as exc:
                log.error("status: %s", exc)
            if now >= next_log:
                next_log = now + self._log_every
                for item in st["exports"] + st["imports"]:
                    log.info(
                        "%s: %.1f msg/s, %d msgs%s",
                        item["spec"],
                        item["msgs_per_s"],
                        item["msgs"],
                        f", {item['gaps']} lost" if item.get("gaps") else "",
                    )


def read_status(name: str | None, timeout: float = 0.0) -> dict[str, Any]:
    """The last state a running bridge published (NotFound if none runs under that name)."""
    sname = status_name(name)
    try:
        lat = Latest.open(sname, readonly=True)
    except NotFound:
        raise NotFound(f"no bridge runs here under the name {sname!r} (--name)") from None
    with lat:
        raw = lat.get(timeout=timeout)
    result: dict[str, Any] = json.loads(bytes(raw))
    return result
