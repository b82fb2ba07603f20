"""The importing side: one thread per ``--import``, dialling every peer.

The thread owns its dialers (one per ``--connect`` address), sends a SUB
to each every ``HEARTBEAT`` seconds, and writes what arrives into the one
local object the user named, through the public API: a Broadcast
``Publisher``, ``Latest.set``, ``Queue.put``. Nothing else is ever created
or written on behalf of a peer.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

from .. import broadcast as _broadcast
from ..errors import Full, MessageTooLarge, ShmkitError
from ..latest import Latest
from ..queue import Queue
from . import protocol as P
from .engine import Engine, Poller, Socket

__all__ = ["Import", "make_import"]

log = logging.getLogger("shmkit.bridge")

#: seconds before a peer that said NOEXPORT is asked again
ASK_AGAIN = 5.0
#: a Queue import whose window sits unread in the local queue looks for room
#: after this long, 1.5 times longer each time up to ROOM_WAIT_MAX while its
#: consumers are away
ROOM_WAIT_MIN = 0.00005
ROOM_WAIT_MAX = 0.005


class _Raw:
    """A pass-through codec that records the exporter's codec name in the local queue."""

    def __init__(self, name: str) -> None:
        self.name = name

    def encode(self, item: Any) -> Any:
        return item

    def decode(self, data: bytes) -> bytes:
        return data


class _Peer:
    def __init__(self, address: str, sock: Socket) -> None:
        self.address = address
        self.sock = sock
        self.last_rx = 0.0
        self.session = b""
        self.connected = False
        self.exports = True  # until it says NOEXPORT
        self.next_ask = 0.0


class Import(threading.Thread):
    """One imported object: dials the peers, applies what the exporting peer sends."""

    def __init__(self, spec: P.Spec, engine: Engine, peers: list[str], session: bytes) -> None:
        super().__init__(name=f"import {spec}", daemon=True)
        self.spec = spec
        self.session = session
        self.stop_event = threading.Event()
        self.rid = f"{session.hex()[:12]}/{spec.kind}/{spec.key}".encode()
        self._engine = engine
        self._addresses = peers
        self.peers: list[_Peer] = []
        self.source: _Peer | None = None  # the peer whose stream we apply
        self.params: dict[str, Any] | None = None
        self.msgs = 0
        self.bytes = 0
        self.gaps = 0  # messages reported lost (Broadcast) / dropped out of order (Queue)
        self.dups = 0
        self.bad = 0
        self.last_data = 0.0

    def run(self) -> None:
        self.peers = [_Peer(a, self._engine.dialer(a, self.rid)) for a in self._addresses]
        poller = Poller([p.sock for p in self.peers])
        next_sub = 0.0
        try:
            while not self.stop_event.is_set():
                now = time.monotonic()
                if now >= next_sub:
                    self._heartbeat(now)
                    next_sub = now + P.HEARTBEAT
                wait = min(self.poll_s(), max(0.0, next_sub - time.monotonic()))
                for sock in poller.wait(wait):
                    peer = next(p for p in self.peers if p.sock is sock)
                    for _ in range(256):
                        frames = sock.recv()
                        if frames is None:
                            break
                        try:
                            self._on_message(peer, frames)
                        except (ValueError, KeyError, TypeError) as exc:
                            # a malformed DESC or payload from a peer: drop it, keep serving
                            self.bad += 1
                            log.warning("%s: bad message from %s: %r", self.spec, peer.address, exc)
                self.after_batch()
        finally:
            self.close_local()
            for p in self.peers:
                p.sock.close()

    def _heartbeat(self, now: float) -> None:
        for p in self.peers:
            alive = now - p.last_rx < P.SILENT
            if alive != p.connected:
                p.connected = alive
                if alive:
                    log.info("%s: connected to %s", self.spec, p.address)
                else:
                    log.warning(
                        "%s: %s silent for %.1f s (reconnecting)", self.spec, p.address, P.SILENT
                    )
            if p.exports or now >= p.next_ask:
                p.next_ask = now + ASK_AGAIN  # a peer that said NOEXPORT is asked again later
                self.send_sub(p)

    def send_sub(self, peer: _Peer) -> None:
        a, b = self.credit()
        if peer is not self.source:
            b = 0  # credit goes to the one peer we follow
        peer.sock.send(
            [P.header(P.SUB, self.spec.code, a, b, peer.session), self.spec.key.encode(), b""]
        )

    def credit(self) -> tuple[int, int]:
        return 0, 0

    def _on_message(self, peer: _Peer, frames: list[memoryview]) -> None:
        if len(frames) < 3:
            return
        try:
            op, kind, a, b, session = P.unpack(frames[0])
        except ValueError:
            return
        if kind != self.spec.code or bytes(frames[1]) != self.spec.key.encode():
            return
        peer.last_rx = time.monotonic()
        if session != peer.session:
            if peer.session:
                log.warning("%s: %s restarted (new session)", self.spec, peer.address)
            peer.session = session
            if peer is self.source:
                self.new_session()
        if op == P.NOEXPORT:
            if peer.exports:
                log.info("%s: %s does not export it", self.spec, peer.address)
            peer.exports = False
            return
        peer.exports = True
        if self.source is None:
            self.source = peer
        elif peer is not self.source:
            if self.source.last_rx < peer.last_rx - P.SILENT:
                log.warning("%s: switching source to %s", self.spec, peer.address)
                self.source = peer
                self.new_session()  # another exporter: its numbers are its own
            else:
                return  # another peer exports the same key: we follow one
        if op == P.DESC:
            if frames[2] and self.params is None:
                params = json.loads(bytes(frames[2]))
                if not isinstance(params, dict):
                    raise ValueError(f"parameters must be an object: {params!r}")
                try:
                    self.open_local(params)
                except ShmkitError as exc:
                    log.error("%s: cannot open the local object: %s", self.spec, exc)
                    self.stop_event.wait(1.0)
                    return
                self.params = params
        elif op in (P.DATA, P.PACKED) and self.params is not None:
            self.last_data = peer.last_rx
            if op == P.DATA:
                batch = frames[2:]
            elif len(frames) == 3:
                batch = P.unpack_batch(frames[2], b)  # ValueError: counted as bad
            else:
                raise ValueError(f"a packed batch in {len(frames) - 2} frames")
            self.on_batch(a, batch)

    # --- per kind
    def open_local(self, params: dict[str, Any]) -> None:
        raise NotImplementedError

    def close_local(self) -> None:
        raise NotImplementedError

    def on_data(self, n: int, payload: memoryview) -> bool:
        """Apply message n; False to drop the rest of its batch."""
        raise NotImplementedError

    def on_batch(self, first: int, batch: Sequence[memoryview]) -> None:
        """Apply messages first, first + 1, ... in order."""
        for i, payload in enumerate(batch):
            if not self.on_data(first + i, payload):
                break

    def new_session(self) -> None:
        """The exporting bridge restarted."""

    def after_batch(self) -> None:
        """Called after each poll (a Queue acknowledges promptly here)."""

    def poll_s(self) -> float:
        """Longest wait for the engine between two ``after_batch`` calls."""
        return 0.05

    def status(self) -> dict[str, Any]:
        now = time.monotonic()
        return {
            "spec": str(self.spec),
            "peers": {p.address: p.connected for p in self.peers},
            "source": None if self.source is None else self.source.address,
            "msgs": self.msgs,
            "bytes": self.bytes,
            "gaps": self.gaps,
            "duplicates": self.dups,
            "bad_messages": self.bad,
            "idle_s": None if not self.last_data else round(now - self.last_data, 3),
        }


class BroadcastImport(Import):
    """Republishes into the local ring; every gap in the numbering becomes Overrun(missed=n)."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._pub: _broadcast.Publisher | None = None
        self.expected: int | None = None

    def open_local(self, params: dict[str, Any]) -> None:
        self._pub = _broadcast.publisher(
            self.spec.local, params["slot_size"], params["slots"], timeout=2.0
        )
        pub = self._pub
        if pub.published == 0 and params.get("next", 0) > 0:
            pub._skip(params["next"])  # a fresh ring: number messages as the exporter does
        self.expected = pub.published
        log.info(
            "%s: publishing into local broadcast %r from #%d",
            self.spec,
            self.spec.local,
            pub.published,
        )

    def close_local(self) -> None:
        if self._pub is not None:
            self._pub.close()
            self._pub = None

    def on_data(self, n: int, payload: memoryview) -> bool:
        pub = self._pub
        assert pub is not None
        exp = self.expected
        assert exp is not None
        if n > exp:
            pub._skip(n - exp)
            self.gaps += n - exp
            log.warning(
                "%s: %d message(s) #%d..#%d lost on the way; local subscribers get Overrun",
                self.spec,
                n - exp,
                exp,
                n - 1,
            )
        elif n < exp:
            log.warning(
                "%s: remote numbering went back (#%d after #%d): the remote ring was re-created",
                self.spec,
                n,
                exp - 1,
            )
        pub.publish(payload)
        self.expected = n + 1
        self.msgs += 1
        self.bytes += len(payload)
        return True


class LatestImport(Import):
    """Sets the local Latest to each value newer than the last applied one."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._lat: Latest[Any] | None = None
        self.applied = 0
        self._np: Any = None

    def open_local(self, params: dict[str, Any]) -> None:
        if params["shape"] is None:
            self._lat = Latest.open_or_create(self.spec.local, size=params["size"])
        else:
            import numpy as np  # noqa: PLC0415 - array mode only

            self._np = np
            self._lat = Latest.open_or_create(
                self.spec.local,
                shape=tuple(params["shape"]),
                dtype=params["dtype"],
                order=params["order"],
            )

    def close_local(self) -> None:
        if self._lat is not None:
            self._lat.close()
            self._lat = None

    def new_session(self) -> None:
        self.applied = 0  # a restarted exporter reads the same Latest: versions continue

    def on_data(self, n: int, payload: memoryview) -> bool:
        if n <= self.applied:
            self.dups += 1
            return True
        lat = self._lat
        assert lat is not None and self.params is not None
        if self._np is None:
            lat.set(payload, timeout=1.0)
        else:
            p = self.params
            lat.set(
                self._np.frombuffer(payload, dtype=p["dtype"]).reshape(
                    p["shape"], order=p["order"]
                ),
                timeout=1.0,
            )
        self.applied = n
        self.msgs += 1
        self.bytes += len(payload)
        return True


class QueueImport(Import):
    """Feeds the local queue by credit; applies ids in order, exactly once."""

    def __init__(self, *args: Any, window: int = 64) -> None:
        super().__init__(*args)
        self._q: Queue[Any] | None = None
        self.window = window
        self.applied = 0
        self._granted = 0
        self._room_wait = ROOM_WAIT_MIN
        self.full_waits = 0

    def open_local(self, params: dict[str, Any]) -> None:
        self._q = Queue.open_or_create(
            self.spec.local, params["capacity"], codec=_Raw(params["codec"])
        )

    def close_local(self) -> None:
        if self._q is not None:
            self._q.close()
            self._q = None

    def credit(self) -> tuple[int, int]:
        if self._q is None:
            return self.applied, 0  # no credit before the local queue is open
        room = max(0, self.window - self._q.qsize())
        self._granted = self.applied + room
        return self.applied, room

    def new_session(self) -> None:
        # The exporter restarted: its ids start again at 1. What it had sent
        # us and we applied is delivered; what was in flight is lost.
        self.applied = 0

    def on_data(self, n: int, payload: memoryview) -> bool:
        if n <= self.applied:
            self.dups += 1
            return True
        if n > self.applied + 1:
            self.gaps += 1  # an earlier one was lost on the way: it will be re-sent
            return False
        q = self._q
        assert q is not None
        try:
            q.put(payload, timeout=0.1)
        except Full:
            self.full_waits += 1  # not applied: re-sent after RESEND
            return False
        self.applied = n
        self.msgs += 1
        self.bytes += len(payload)
        return True

    def on_batch(self, first: int, batch: Sequence[memoryview]) -> None:
        """Apply a batch with one ``put_many`` (all or none) where it can, else one by one."""
        if first <= self.applied:  # the front was applied already: duplicates
            done = min(self.applied + 1 - first, len(batch))
            self.dups += done
            first, batch = first + done, batch[done:]
        q = self._q
        if len(batch) > 1 and first == self.applied + 1 and q is not None:
            try:
                q.put_many(batch, timeout=0.1)
            except (Full, MessageTooLarge):
                pass  # no room for all of it (or too big as one record): one by one
            else:
                self.applied += len(batch)
                self.msgs += len(batch)
                self.bytes += sum(map(len, batch))
                return
        super().on_batch(first, batch)

    def after_batch(self) -> None:
        # acknowledge and grant credit promptly: after half a window applied,
        # or when local consumers freed half a window of room
        src = self.source
        if src is None or self._q is None:
            return
        limit = self.applied + max(0, self.window - self._q.qsize())
        if limit - self._granted >= max(1, self.window // 2):
            self.send_sub(src)
            self._room_wait = ROOM_WAIT_MIN
        elif self.applied >= self._granted:
            # the credit is used up and the window sits in the local queue: look
            # for room again soon, then less often while its consumers are away
            self._room_wait = min(self._room_wait * 1.5, ROOM_WAIT_MAX)

    def poll_s(self) -> float:
        # while the credit we granted is used up, look for freed local room often
        if self.source is not None and self.applied >= self._granted:
            return self._room_wait
        return 0.05

    def status(self) -> dict[str, Any]:
        out = super().status()
        out.update(applied=self.applied, full_waits=self.full_waits)
        return out


def make_import(
    spec: P.Spec, engine: Engine, peers: list[str], session: bytes, window: int
) -> Import:
    if spec.kind == "queue":
        return QueueImport(spec, engine, peers, session, window=window)
    cls = BroadcastImport if spec.kind == "broadcast" else LatestImport
    return cls(spec, engine, peers, session)
