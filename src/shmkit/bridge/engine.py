"""The network engine behind the bridge: ZeroMQ through pyzmq, and nothing else.

This is the only module of shmkit that imports ``zmq``; the rest of the
bridge speaks to it through :class:`Engine`, :class:`Socket` and
:class:`Poller`, so another engine (Zenoh) could be put behind the same
few calls. What it provides:

- a *listener* (ROUTER) bound to one address the user named, which every
  export thread sends on directly (:class:`SharedSocket`: ZeroMQ sockets are
  not thread-safe, so each call takes a lock, and its owner waits on the
  socket's file descriptor rather than in ``zmq_poll``), and *dialers*
  (DEALER, one per import and peer) with a stable routing id, so a peer
  that reconnects is recognised (``ROUTER_HANDOVER``);
- ZMTP heartbeats (``HEARTBEAT_IVL``/``TIMEOUT``/``TTL``) so a dead link is
  torn down and re-dialled on its own (``RECONNECT_IVL`` .. ``_MAX``);
- CURVE encryption and authentication from zmq certificate files;
- zero-copy sends (``copy=False``) of the payload buffers it is handed.

Raises :class:`~shmkit.errors.ShmkitError` with an install hint when pyzmq
is missing (``pip install 'shmkit[bridge]'``).
"""

from __future__ import annotations

import os
import select
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from ..errors import ShmkitError

try:
    import zmq
    import zmq.auth
except ImportError:  # pragma: no cover - the bridge extra is not installed
    zmq = None  # type: ignore[assignment]

__all__ = [
    "AVAILABLE",
    "Curve",
    "Engine",
    "Poller",
    "SharedSocket",
    "Socket",
    "make_keys",
    "require",
]

AVAILABLE: Final = zmq is not None
HEARTBEAT_IVL_MS: Final = 500
HEARTBEAT_TIMEOUT_MS: Final = 2000
RECONNECT_IVL_MS: Final = 100
RECONNECT_IVL_MAX_MS: Final = 1000
#: messages queued per peer before the engine drops (ROUTER) or holds (DEALER) more
HWM: Final = 1000
#: how long a sender waits for room in a peer's queue before counting a drop
SEND_WAIT: Final = 0.2


def require() -> None:
    """Raise ShmkitError saying how to install the engine if pyzmq is missing."""
    if zmq is None:
        raise ShmkitError(
            "shmkit bridge needs ZeroMQ's Python binding: pip install 'shmkit[bridge]' "
            "(or pip install pyzmq)"
        )


@dataclass(frozen=True)
class Curve:
    """CURVE keys from zmq certificate files (``make_keys`` writes them).

    ``secret``: this bridge's certificate (the ``.key_secret`` file, which
    holds both keys). ``server_key``: the listening peer's public
    certificate (``.key``), needed to dial it. ``allow``: a folder of client
    public certificates; when given, only those clients may connect.
    """

    secret: str
    server_key: str | None = None
    allow: str | None = None


def make_keys(folder: str, name: str) -> tuple[str, str]:
    """Write a CURVE key pair ``name.key`` / ``name.key_secret`` into ``folder`` (mode 0600)."""
    require()
    os.makedirs(folder, mode=0o700, exist_ok=True)
    public, secret = zmq.auth.create_certificates(folder, name)
    os.chmod(secret, 0o600)
    return str(public), str(secret)


class Socket:
    """One engine socket; used only by the thread that made it."""

    def __init__(self, raw: Any) -> None:
        self.raw = raw

    def send(self, frames: Sequence[Any], block: bool = False) -> bool:
        """Queue a multipart message (payload buffers are not copied).

        False if the engine refused it (the peer's queue is full or no peer
        is connected; with ``block``, still full after the socket's send
        timeout): the caller counts that as a drop.
        """
        try:
            self.raw.send_multipart(frames, flags=0 if block else zmq.NOBLOCK, copy=False)
        except zmq.Again:
            return False
        except zmq.ZMQError as exc:
            if exc.errno == zmq.EHOSTUNREACH:
                return False
            raise
        return True

    def send_tracked(self, frames: Sequence[Any]) -> Any:
        """Send without copying and return a tracker whose ``done`` turns True once the
        engine no longer reads the buffers (None if the message was refused)."""
        try:
            tracker = self.raw.send_multipart(frames, copy=False, track=True)
        except zmq.Again:
            return None
        return tracker

    @staticmethod
    def sent(tracker: Any, timeout: float = 0.0) -> bool:
        """True once a tracked send no longer reads its buffers (waits up to ``timeout``)."""
        if tracker.done:
            return True
        if timeout <= 0:
            return False
        try:
            tracker.wait(timeout)
        except zmq.NotDone:
            return False
        return True

    def recv(self) -> list[memoryview] | None:
        """One multipart message if one is waiting, else None (frames zero-copy)."""
        try:
            frames = self.raw.recv_multipart(flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:
            return None
        return [f.buffer for f in frames]

    def close(self) -> None:
        self.raw.close(linger=0)


class SharedSocket:
    """The listening socket, sent on by every export thread and read by one owner thread.

    ZeroMQ sockets are not thread-safe, so every call on it takes a lock.
    The owner does not wait in ``zmq_poll`` (that would touch the socket
    outside the lock): it waits with poll(2) on the socket's ``ZMQ_FD`` and
    on a wake-up pipe. ``ZMQ_FD`` is edge-triggered and any call may consume
    its edge, so after each send the sender looks at ``ZMQ_EVENTS`` and
    rings the pipe if input is waiting. Sends go straight from the thread
    that reads the local object to ZeroMQ's I/O thread: no hop through
    another thread on the way out.
    """

    def __init__(self, raw: Any) -> None:
        self.raw = raw
        self._sock = Socket(raw)  # its calls, each made under the lock
        self._lock = threading.Lock()
        self._fd = raw.getsockopt(zmq.FD)
        self._ring_r, self._ring_w = os.pipe()
        os.set_blocking(self._ring_r, False)
        os.set_blocking(self._ring_w, False)
        self._poll = select.poll()
        self._poll.register(self._fd, select.POLLIN)
        self._poll.register(self._ring_r, select.POLLIN)

    def send(self, frames: Sequence[Any], wait: float = SEND_WAIT) -> bool:
        """Queue a multipart message for the peer named by ``frames[0]``.

        Payload buffers of 64 KiB and more are not copied. Waits up to
        ``wait`` seconds while that peer's queue is full; False if it stays
        full or the peer is not connected (the caller counts a drop).
        """
        return self._send(frames, wait, False) is not None

    def send_tracked(self, frames: Sequence[Any], wait: float = SEND_WAIT) -> Any:
        """Like :meth:`send` but return a tracker (see :meth:`Socket.sent`), or None."""
        return self._send(frames, wait, True)

    def _send(self, frames: Sequence[Any], wait: float, track: bool) -> Any:
        """The tracker (or True untracked) once queued; None if refused."""
        pause, end = 0.0002, time.monotonic() + wait
        while True:
            with self._lock:
                try:
                    tracker = self.raw.send_multipart(
                        frames, flags=zmq.NOBLOCK, copy=False, track=track
                    )
                    return tracker if track else True
                except zmq.Again:
                    pass  # the peer's queue is full: wait below, without the lock
                except zmq.ZMQError as exc:
                    if exc.errno != zmq.EHOSTUNREACH:
                        raise
                    return None  # not connected now: re-sent or counted by the protocol
                finally:
                    self._kick()
            if time.monotonic() >= end:
                return None
            time.sleep(pause)
            pause = min(pause * 2, 0.01)

    def _kick(self) -> None:
        # a send may have taken the FD's edge while input is waiting: tell the owner
        if self.raw.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            try:
                os.write(self._ring_w, b"\0")
            except BlockingIOError:
                pass  # already rung

    def wait(self, timeout: float) -> bool:
        """(Owner only) True once a message is waiting, False after ``timeout`` seconds."""
        with self._lock:
            if self.raw.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                return True
        if not self._poll.poll(int(timeout * 1000)):
            return False
        try:
            os.read(self._ring_r, 4096)
        except BlockingIOError:
            pass
        with self._lock:
            return bool(self.raw.getsockopt(zmq.EVENTS) & zmq.POLLIN)

    def recv(self) -> list[memoryview] | None:
        """One multipart message if one is waiting, else None."""
        with self._lock:
            return self._sock.recv()

    def close(self) -> None:
        with self._lock:
            self._sock.close()
        os.close(self._ring_r)
        os.close(self._ring_w)


class Poller:
    """Wait for any of several sockets to have a message."""

    def __init__(self, sockets: Sequence[Socket]) -> None:
        self._poller = zmq.Poller()
        self._by_raw: dict[Any, Socket] = {}
        for s in sockets:
            self._poller.register(s.raw, zmq.POLLIN)
            self._by_raw[s.raw] = s

    def wait(self, timeout: float) -> list[Socket]:
        """Sockets with a message waiting, after at most ``timeout`` seconds.

        ZeroMQ waits in whole milliseconds: a shorter wait looks, sleeps, and
        looks again.
        """
        if 0 < timeout < 0.001:
            ready = self._poller.poll(0)
            if not ready:
                time.sleep(timeout)
                ready = self._poller.poll(0)
        else:
            ready = self._poller.poll(int(timeout * 1000))
        return [self._by_raw[raw] for raw, _ in ready]


class Engine:
    """A pyzmq context and the sockets the bridge builds on it."""

    def __init__(self, curve: Curve | None = None) -> None:
        require()
        self._ctx = zmq.Context()
        self._curve = curve
        self._auth: Any = None
        self._keys: tuple[bytes, bytes] | None = None
        if curve is not None:
            if not zmq.has("curve"):
                raise ShmkitError("this libzmq was built without CURVE support")
            public, secret = zmq.auth.load_certificate(curve.secret)
            if secret is None:
                raise ShmkitError(f"{curve.secret} holds no secret key (use the .key_secret file)")
            self._keys = (public, secret)

    def _common(self, sock: Any) -> None:
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, HWM)
        sock.setsockopt(zmq.RCVHWM, HWM)
        sock.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_IVL_MS)
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_MS)
        sock.setsockopt(zmq.HEARTBEAT_TTL, HEARTBEAT_TIMEOUT_MS)
        sock.setsockopt(zmq.RECONNECT_IVL, RECONNECT_IVL_MS)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, RECONNECT_IVL_MAX_MS)

    def listener(self, address: str) -> SharedSocket:
        """A ROUTER bound to ``address`` (the only way the bridge listens)."""
        sock = self._ctx.socket(zmq.ROUTER)
        self._common(sock)
        sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
        # a full or unknown peer is an error the sender sees, never a silent drop
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        if self._keys is not None:
            assert self._curve is not None
            if self._curve.allow is not None and self._auth is None:
                from zmq.auth.thread import ThreadAuthenticator  # noqa: PLC0415 - optional

                self._auth = ThreadAuthenticator(self._ctx)
                self._auth.start()
                self._auth.configure_curve(domain="*", location=self._curve.allow)
            sock.curve_publickey, sock.curve_secretkey = self._keys
            sock.curve_server = True
        try:
            sock.bind(address)
        except zmq.ZMQError as exc:
            sock.close(linger=0)
            raise ShmkitError(f"cannot listen on {address}: {exc}") from None
        return SharedSocket(sock)

    def dialer(self, address: str, identity: bytes) -> Socket:
        """A DEALER that dials ``address`` (and re-dials it after any drop)."""
        sock = self._ctx.socket(zmq.DEALER)
        self._common(sock)
        sock.setsockopt(zmq.ROUTING_ID, identity)
        # Queue only to a live connection: what cannot be sent now is resent by
        # the protocol (heartbeat SUBs carry the whole state), never replayed stale.
        sock.setsockopt(zmq.IMMEDIATE, 1)
        if self._keys is not None:
            assert self._curve is not None
            if self._curve.server_key is None:
                raise ShmkitError("--curve-server-key is needed to dial with CURVE")
            server_public, _ = zmq.auth.load_certificate(self._curve.server_key)
            sock.curve_publickey, sock.curve_secretkey = self._keys
            sock.curve_serverkey = server_public
        try:
            sock.connect(address)
        except zmq.ZMQError as exc:
            sock.close(linger=0)
            raise ShmkitError(f"cannot dial {address}: {exc}") from None
        return Socket(sock)

    def close(self) -> None:
        if self._auth is not None:
            self._auth.stop()
        self._ctx.destroy(linger=0)
