"""The exporting side: the listener thread and one worker thread per exported object.

The listener thread reads the one listening socket: it answers each
importer's SUB (request + heartbeat + queue credit) with a DESC and hands
the SUB to the object's worker. A worker reads its local object with the
ordinary public API (a Subscriber, ``wait_newer``, ``Queue.get``) and sends
what it read on the same socket itself (:class:`~.engine.SharedSocket`), so
a message leaves for the network from the thread that read it.

An exporter only ever *reads* local objects (a Queue export takes messages
out of the queue it was told to export): a remote peer cannot create or
write any local object through it.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

from .. import broadcast as _broadcast
from ..errors import Closed, Empty, NotFound, Overrun, PeerDied, ShmkitError, Timeout
from ..latest import Latest
from ..queue import Queue
from . import protocol as P
from .engine import SharedSocket, Socket

__all__ = ["Export", "Listener", "make_export"]

log = logging.getLogger("shmkit.bridge")

#: seconds before an unacknowledged queue message is sent again
RESEND: float = 1.0
#: most messages, and bytes, sent as one engine message (what was already waiting)
BATCH: int = 256
BATCH_BYTES: int = 256 * 1024
#: slots at least this large are sent straight out of a back-pressured ring
ZERO_COPY_MIN: int = 64 * 1024
#: seconds before a silent queue importer's state (and its in-flight messages) is dropped
QUEUE_FORGET: float = 120.0


class Export(threading.Thread):
    """One exported object: its subscribers (importer ids) and its reading loop."""

    def __init__(self, spec: P.Spec, out: SharedSocket, session: bytes) -> None:
        super().__init__(name=f"export {spec}", daemon=True)
        self.spec = spec
        self._out = out
        self.session = session
        self.stop_event = threading.Event()
        self.lock = threading.Lock()
        self.subs: dict[bytes, float] = {}  # importer routing id -> last SUB (monotonic)
        self.params: dict[str, Any] | None = None
        self.msgs = 0
        self.bytes = 0
        self.drops = 0
        self.overruns = 0
        self._missing_logged = False

    # --- called by the listener thread
    def on_sub(self, ident: bytes, a: int, b: int, session: bytes) -> None:
        with self.lock:
            if ident not in self.subs:
                log.info("%s: importer %s subscribed", self.spec, ident.decode(errors="replace"))
            self.subs[ident] = time.monotonic()

    def desc(self) -> bytes:
        return b"" if self.params is None else json.dumps(self.params).encode()

    def status(self) -> dict[str, Any]:
        return {
            "spec": str(self.spec),
            "importers": len(self.subs),
            "msgs": self.msgs,
            "bytes": self.bytes,
            "drops": self.drops,
            "overruns": self.overruns,
        }

    # --- the worker thread
    def run(self) -> None:
        while not self.stop_event.is_set():
            try:
                self.loop()
            except (NotFound, Closed) as exc:
                if not self._missing_logged:
                    log.warning("%s: waiting for the local object (%s)", self.spec, exc)
                    self._missing_logged = True
                self.stop_event.wait(0.5)
            except ShmkitError as exc:
                log.error("%s: %s; retrying in 1 s", self.spec, exc)
                self.stop_event.wait(1.0)
            except Exception:  # a bug must not end the export silently
                log.exception("%s: unexpected error; retrying in 1 s", self.spec)
                self.stop_event.wait(1.0)

    def loop(self) -> None:
        raise NotImplementedError

    def live_subs(self) -> list[bytes]:
        now = time.monotonic()
        with self.lock:
            for ident, seen in list(self.subs.items()):
                if now - seen > P.FORGET:
                    del self.subs[ident]
                    log.warning(
                        "%s: importer %s silent for %.0f s, forgotten",
                        self.spec,
                        ident.decode(errors="replace"),
                        P.FORGET,
                    )
                    self.forget(ident)
            return list(self.subs)

    def forget(self, ident: bytes) -> None:
        """An importer went silent for good (a Queue export counts what it loses)."""

    def send(self, ident: bytes, a: int, payloads: list[Any]) -> None:
        """Send messages a, a+1, ... (consecutive numbers) to one importer as one batch.

        Small messages go in one PACKED frame, bigger ones a frame each (DATA).
        """
        if len(payloads) > 1 and max(map(len, payloads)) <= P.PACK_MAX:
            hdr = P.header(P.PACKED, self.spec.code, a, len(payloads), self.session)
            frames = [ident, hdr, self.spec.key.encode(), P.pack(payloads)]
        else:
            hdr = P.header(P.DATA, self.spec.code, a, 0, self.session)
            frames = [ident, hdr, self.spec.key.encode(), *payloads]
        if self._out.send(frames):
            self.msgs += len(payloads)
            self.bytes += sum(len(p) for p in payloads)
        else:
            self.drops += len(payloads)


class BroadcastExport(Export):
    """Reads the local ring with its own Subscriber; sends (number, payload) to each importer."""

    _bc: _broadcast.Broadcast | None = None
    _sub: _broadcast.Subscriber | None = None

    def loop(self) -> None:
        while not self.live_subs():  # nobody to send to: do not hold a subscriber
            if self.stop_event.wait(0.1):
                return
        with (
            _broadcast.Broadcast.open(self.spec.local) as bc,
            _broadcast.subscribe(self.spec.local) as sub,
        ):
            self.params = {"slot_size": bc.slot_size, "slots": bc.slots}
            self._bc = bc
            self._missing_logged = False
            try:
                self._stream(sub)
            finally:
                self._bc = None

    def desc(self) -> bytes:
        # "next": where the importer's fresh ring starts numbering, so both
        # hosts number every message alike (read live; the handle may close)
        bc = self._bc
        if self.params is None or bc is None:
            return b""
        try:
            nxt = bc.published
        except (ShmkitError, ValueError):
            return b""
        return json.dumps({**self.params, "next": nxt}).encode()

    def status(self) -> dict[str, Any]:
        out = super().status()
        sub = self._sub
        try:
            out["lag"] = 0 if sub is None else sub.lag  # published here, not yet sent
        except (ShmkitError, ValueError):
            out["lag"] = None
        return out

    def _stream(self, sub: _broadcast.Subscriber) -> None:
        self._sub = sub
        try:
            self._stream_any(sub)
        finally:
            self._sub = None

    def _stream_any(self, sub: _broadcast.Subscriber) -> None:
        log.info("%s: reading from message #%d", self.spec, sub.next_seq)
        if sub.params.backpressure and sub.slot_size >= ZERO_COPY_MIN:
            self._stream_views(sub)
            return
        idle_check = time.monotonic()
        while not self.stop_event.is_set():
            with self.lock:
                idents = list(self.subs)
            try:
                data = sub.recv(timeout=0.1)
            except Empty:
                data = None
            except Overrun as exc:
                # our own subscriber was lapped: the importers see the gap
                # in the numbering and raise Overrun(missed=n) on their side
                self.overruns += 1
                log.warning("%s: exporter lapped, %d message(s) lost here", self.spec, exc.missed)
                continue
            except PeerDied:
                self.stop_event.wait(0.1)
                data = None
            now = time.monotonic()
            if data is None or now - idle_check > 1.0:
                idle_check = now
                if not self.live_subs():
                    return
            if data is not None:
                first = sub.next_seq - 1
                batch = [data]
                size = len(data)
                # what is already waiting goes in the same batch (consecutive numbers
                # only); a look at lag first spares the usual lone message an Empty
                while len(batch) < BATCH and size < BATCH_BYTES and sub.lag:
                    try:
                        more = sub.recv_nowait()
                    except (Empty, PeerDied):
                        break
                    except Overrun:
                        self.overruns += 1  # the gap shows in the numbering
                        break
                    if sub.next_seq - 1 != first + len(batch):
                        self._flush(idents, first, batch)
                        first, batch, size = sub.next_seq - 1, [], 0
                    batch.append(more)
                    size += len(more)
                self._flush(idents, first, batch)

    def _stream_views(self, sub: _broadcast.Subscriber) -> None:
        """Zero-copy out of a back-pressured ring: the engine sends the slot itself.

        A held view pins its slot (the publisher waits for it), so the slot
        cannot change while the engine reads it; each view is released once
        the engine's trackers say every send of it is done. In a lossy ring
        this would be unsafe (the slot may be overwritten mid-send), so lossy
        rings take the copying path.
        """
        pending: deque[tuple[Any, list[Any]]] = deque()
        limit = max(1, sub.slots - 1)
        key = self.spec.key.encode()
        try:
            while not self.stop_event.is_set():
                while pending and all(Socket.sent(t) for t in pending[0][1]):
                    pending.popleft()[0].release()
                if len(pending) >= limit:  # the engine is behind: wait for the oldest
                    for t in pending[0][1]:
                        Socket.sent(t, 0.1)
                    continue
                with self.lock:
                    idents = list(self.subs)
                try:
                    msg = sub.recv_view(timeout=0.002 if pending else 0.1)
                except Empty:
                    if not pending and not self.live_subs():
                        return
                    continue
                except PeerDied:
                    self.stop_event.wait(0.1)
                    continue
                hdr = P.header(P.DATA, self.spec.code, msg.seq, 0, self.session)
                trackers = []
                for ident in idents:
                    t = self._out.send_tracked([ident, hdr, key, msg.data])
                    if t is None:
                        self.drops += 1
                    else:
                        trackers.append(t)
                        self.msgs += 1
                        self.bytes += len(msg.data)
                pending.append((msg, trackers))
        finally:
            for t_msg, trackers in pending:
                for t in trackers:
                    Socket.sent(t, 1.0)
                t_msg.release()

    def _flush(self, idents: list[bytes], first: int, batch: list[bytes]) -> None:
        for ident in idents:
            self.send(ident, first, batch)


class LatestExport(Export):
    """Follows the local Latest (``wait_newer``) and sends (version, value) to each importer."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._fresh: set[bytes] = set()

    def on_sub(self, ident: bytes, a: int, b: int, session: bytes) -> None:
        with self.lock:
            if ident not in self.subs:
                self._fresh.add(ident)  # a new importer gets the current value at once
        super().on_sub(ident, a, b, session)

    def loop(self) -> None:
        with Latest.open(self.spec.local, readonly=True) as lat:
            order = "C"
            arr = getattr(lat, "_params", None)
            if arr is not None and arr.array is not None:
                order = arr.array.order
            self.params = {
                "size": lat.size,
                "shape": None if lat.shape is None else list(lat.shape),
                "dtype": None if lat.dtype is None else lat.dtype.str,
                "order": order,
            }
            self._missing_logged = False
            sent = 0
            value: Any = b""
            version = 0
            while not self.stop_event.is_set():
                subs = self.live_subs()
                with self.lock:
                    fresh, self._fresh = self._fresh, set()
                try:
                    lat.wait_newer(sent if not fresh else -1, timeout=0.1)
                except (Timeout, PeerDied):
                    continue
                if lat.get_version() > version:
                    version, got = lat.get_versioned(timeout=1.0)
                    value = got if isinstance(got, bytes) else _dtype_bytes(got, order)
                if version == 0:
                    continue
                targets = subs if version > sent else [i for i in subs if i in fresh]
                for ident in targets:
                    self.send(ident, version, [value])
                sent = version


def _dtype_bytes(arr: Any, order: str) -> bytes:
    return bytes(arr.tobytes(order=order))


@dataclass
class _QState:
    """What the exporter knows of one importer of a Queue."""

    acked: int = 0
    limit: int = 0
    next_id: int = 1
    seen: float = 0.0
    unacked: OrderedDict[int, tuple[bytes, float]] = field(default_factory=OrderedDict)


class QueueExport(Export):
    """The authoritative queue: hands messages out on credit and keeps them until acknowledged.

    Each importer asks for messages with a SUB that carries the last id it
    applied and its free window. A message taken from the local queue gets
    the importer's next id and stays in ``unacked`` until that importer
    acknowledges it; after ``RESEND`` seconds without an acknowledgement it
    is sent again (the importer drops duplicates by id). Nothing new goes to
    an importer silent for ``SILENT`` seconds; one silent for
    ``QUEUE_FORGET`` seconds is forgotten and its unacknowledged messages
    are counted as ``lost`` (at-most-once for those: it died, or its link
    was down that long).
    """

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.states: dict[bytes, _QState] = {}
        self.lost = 0
        self.resent = 0
        self._q: Queue[Any] | None = None
        self.work = threading.Event()
        self._send_lock = threading.Lock()

    def on_sub(self, ident: bytes, a: int, b: int, session: bytes) -> None:
        super().on_sub(ident, a, b, session)
        with self.lock:
            st = self.states.get(ident)
            if st is None:
                st = self.states[ident] = _QState()
                if session == self.session:
                    # it knows our ids but we forgot it: carry on after what it applied
                    st.acked, st.next_id = a, a + 1
            st.seen = time.monotonic()
            if session == self.session and a > st.acked:
                st.acked = min(a, st.next_id - 1)
                for key in [k for k in st.unacked if k <= st.acked]:
                    del st.unacked[key]
            st.limit = st.acked + b
        self.work.set()
        self._pump(0.0)

    def forget(self, ident: bytes) -> None:
        """Its stream ends here; its queue state lives on for ``QUEUE_FORGET`` seconds."""

    def _purge(self, now: float) -> None:
        with self.lock:
            gone = [i for i, st in self.states.items() if now - st.seen > QUEUE_FORGET]
            for ident in gone:
                self._drop(ident)

    def _drop(self, ident: bytes) -> None:
        st = self.states.pop(ident, None)
        if st is not None and st.unacked:
            self.lost += len(st.unacked)
            log.warning(
                "%s: %d message(s) sent to %s never acknowledged: lost (at-most-once)",
                self.spec,
                len(st.unacked),
                ident.decode(errors="replace"),
            )

    def status(self) -> dict[str, Any]:
        out = super().status()
        q = self._q
        try:
            backlog = None if q is None else q.qsize()
        except (ShmkitError, ValueError):
            backlog = None
        out.update(
            lag=backlog,
            lost=self.lost,
            resent=self.resent,
            unacked=sum(len(s.unacked) for s in self.states.values()),
        )
        return out

    def loop(self) -> None:
        with Queue.open(self.spec.local) as q:
            self.params = {"capacity": q.capacity, "codec": q.statistics().codec}
            self._missing_logged = False
            self._q = q
            try:
                while not self.stop_event.is_set():
                    self.live_subs()
                    self._resend()
                    self._purge(time.monotonic())
                    if not self._pump(0.05):  # nobody has credit: wait for a SUB
                        self.work.wait(0.05)
                        self.work.clear()
            finally:
                self._q = None

    def _pump(self, wait: float) -> bool:
        """Send what the importers' credit allows; False if none has credit.

        The export thread calls it waiting up to ``wait`` for a first message;
        the listener thread calls it without waiting as credit arrives, so a
        credit's answer leaves without a hand-off to the export thread.
        ``_send_lock`` keeps each importer's ids leaving in the order given.
        """
        q = self._q
        if q is None or not self._send_lock.acquire(blocking=wait > 0):
            return wait > 0  # the export thread is sending: it sees the credit next
        try:
            now = time.monotonic()
            with self.lock:
                ready = [
                    (i, s)
                    for i, s in self.states.items()
                    if s.next_id <= s.limit and now - s.seen < P.SILENT
                ]
            for ident, st in ready:
                try:
                    got = q.get_many(min(st.limit - st.next_id + 1, BATCH), timeout=wait)
                except Empty:
                    break
                now = time.monotonic()
                with self.lock:
                    first = st.next_id
                    for data in got:
                        st.unacked[st.next_id] = (data, now)
                        st.next_id += 1
                self.send(ident, first, got)
            return bool(ready)
        except (ShmkitError, ValueError):
            if wait > 0:
                raise
            return False  # closed under the listener: the export thread reopens it
        finally:
            self._send_lock.release()

    def _resend(self) -> None:
        now = time.monotonic()
        due: list[tuple[bytes, int, bytes]] = []
        with self.lock:
            for ident, st in self.states.items():
                # unacked is in the order of the last send: the due ones lead
                for mid, (data, sent) in st.unacked.items():
                    if now - sent <= RESEND:
                        break
                    due.append((ident, mid, data))
            for ident, mid, data in due:
                unacked = self.states[ident].unacked
                unacked[mid] = (data, now)
                unacked.move_to_end(mid)
        for ident, mid, data in due:
            self.resent += 1
            self.send(ident, mid, [data])


def make_export(spec: P.Spec, out: SharedSocket, session: bytes) -> Export:
    classes: dict[str, type[Export]] = {
        "broadcast": BroadcastExport,
        "latest": LatestExport,
        "queue": QueueExport,
    }
    return classes[spec.kind](spec, out, session)


class Listener(threading.Thread):
    """Owns the listening socket: answers SUBs, forwards the workers' messages."""

    def __init__(
        self, sock: SharedSocket, address: str, exports: list[Export], session: bytes
    ) -> None:
        super().__init__(name=f"listen {address}", daemon=True)
        self.address = address
        self.session = session
        self.stop_event = threading.Event()
        self._by_key = {(e.spec.code, e.spec.key): e for e in exports}
        self.peers: dict[bytes, float] = {}  # importer id -> last message (monotonic)
        self._router = sock
        self.bad = 0

    def run(self) -> None:
        router = self._router
        while not self.stop_event.is_set():
            if not router.wait(0.1):
                continue
            for _ in range(64):
                frames = router.recv()
                if frames is None:
                    break
                try:
                    self._on_request(frames)
                except (ValueError, KeyError, TypeError):
                    self.bad += 1

    def _on_request(self, frames: list[memoryview]) -> None:
        if len(frames) != 4:
            self.bad += 1
            return
        ident = bytes(frames[0])
        try:
            op, kind, a, b, session = P.unpack(frames[1])
            key = bytes(frames[2]).decode()
        except (ValueError, UnicodeDecodeError):
            self.bad += 1
            return
        if op != P.SUB:
            self.bad += 1
            return
        now = time.monotonic()
        if ident not in self.peers or now - self.peers[ident] > P.SILENT:
            log.info("importer %s connected", ident.decode(errors="replace"))
        self.peers[ident] = now
        exp = self._by_key.get((kind, key))
        if exp is None:
            reason = f"{P.KIND_NAMES.get(kind, kind)}:{key} is not exported here"
            self._router.send(
                [ident, P.header(P.NOEXPORT, kind, 0, 0, self.session), frames[2], reason.encode()],
                wait=0,
            )
            return
        exp.on_sub(ident, a, b, session)
        self._router.send(
            [ident, P.header(P.DESC, kind, 0, 0, self.session), frames[2], exp.desc()], wait=0
        )

    def status(self) -> dict[str, Any]:
        now = time.monotonic()
        return {
            "address": self.address,
            "importers": sorted(
                i.decode(errors="replace") for i, t in self.peers.items() if now - t < P.SILENT
            ),
            "bad_messages": self.bad,
        }
