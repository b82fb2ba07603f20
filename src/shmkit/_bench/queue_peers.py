"""The transports ``shmkit bench queue`` measures: shmkit's Queue and its peers.

Each ``Peer`` creates its channel in the parent (``create``), gives each side
an ``Endpoint`` (``endpoint``: the parent is side ``"a"``, the spawned child
``"b"``) and removes everything in ``destroy``. Missing packages make
``available()`` say why, and the runner prints a skip line.
"""

from __future__ import annotations

import contextlib
import ctypes
import mmap
import multiprocessing as mp
import os
import resource
import signal
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import FrameType
from typing import Any

import posix_ipc

# Optional peers: a missing package skips its rows with a note.
try:
    import faster_fifo
except ImportError:  # pragma: no cover - depends on the environment
    faster_fifo = None
try:
    import zmq
except ImportError:  # pragma: no cover
    zmq = None  # type: ignore[assignment]
try:
    import iceoryx2 as iox2
except ImportError:  # pragma: no cover
    iox2 = None

from ..queue import Queue
from ..segment import Segment
from .common import take_spinning

SMALL = 64
LARGE = 1 << 20
BASELINE = "shmkit Queue"


def _read_int(path: str) -> int:
    try:
        with open(path, encoding="ascii") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return 0


# ----------------------------------------------------------------------------- endpoints


@dataclass
class Endpoint:
    """One side of a two-way channel: ``send`` goes to the other side, ``recv`` comes from it."""

    send: Callable[[bytes], Any]
    recv: Callable[[], Any]
    send_many: Callable[[list[bytes]], Any] | None = None
    recv_many: Callable[[int], list[Any]] | None = None
    recv_into: Callable[[bytearray], int] | None = None
    close: Callable[[], None] = lambda: None
    #: Parent side: make sure the child is listening before the timed loop
    #: (transports that drop messages sent before the receiver attached).
    connect: Callable[[], None] | None = None


class Unsupported(Exception):
    """This peer cannot run this workload here (the reason is printed, the run goes on)."""


class Peer:
    """A transport under test. ``create`` runs in the parent, ``endpoint`` on both sides."""

    name = ""
    #: Workloads this peer takes part in (batched needs a batch API).
    tables: tuple[str, ...] = ("pingpong", "stream", "large")
    #: 1 MiB workload: receive with recv_into (into one reused buffer) instead of recv.
    large_into = False

    def available(self) -> str:
        """Empty if usable here, else why not."""
        return ""

    def create(self, tag: str, size: int, depth: int) -> dict[str, Any]:
        raise NotImplementedError

    def endpoint(self, args: dict[str, Any], side: str) -> Endpoint:
        raise NotImplementedError

    def destroy(self, args: dict[str, Any]) -> None:
        """Remove what ``create`` made (idempotent; runs after Ctrl-C too)."""


class ShmkitPeer(Peer):
    name = BASELINE
    tables: tuple[str, ...] = ("pingpong", "stream", "batched", "large")
    large_into = True

    def __init__(
        self,
        spin: float | None = None,
        label: str = "",
        tables: tuple[str, ...] | None = None,
        large_into: bool = True,
    ) -> None:
        self.spin = spin
        self.large_into = large_into
        if label:
            self.name = label
        if tables is not None:
            self.tables = tables

    def create(self, tag: str, size: int, depth: int) -> dict[str, Any]:
        cap = max(1 << 16, depth * (size + 16))
        for d in ("ab", "ba"):
            Queue.create(f"bq-{tag}-{d}", cap).close()
        return {"tag": tag, "spin": self.spin}

    def endpoint(self, args: dict[str, Any], side: str) -> Endpoint:
        out, inn = ("ab", "ba") if side == "a" else ("ba", "ab")
        qo = Queue.open(f"bq-{args['tag']}-{out}")
        qi = Queue.open(f"bq-{args['tag']}-{inn}")
        if args["spin"] is not None:
            qo.spin = qi.spin = args["spin"]

        def close() -> None:
            qo.close()
            qi.close()

        return Endpoint(qo.put, qi.get, qo.put_many, qi.get_many, qi.get_into, close)

    def destroy(self, args: dict[str, Any]) -> None:
        for d in ("ab", "ba"):
            Segment.remove(f"bq-{args['tag']}-{d}")


class MpQueuePeer(Peer):
    name = "multiprocessing.Queue"

    def create(self, tag: str, size: int, depth: int) -> dict[str, Any]:
        ctx = mp.get_context("spawn")
        return {"ab": ctx.Queue(), "ba": ctx.Queue()}

    def endpoint(self, args: dict[str, Any], side: str) -> Endpoint:
        qo, qi = (args["ab"], args["ba"]) if side == "a" else (args["ba"], args["ab"])
        return Endpoint(qo.put, qi.get)

    def destroy(self, args: dict[str, Any]) -> None:
        for q in (args.get("ab"), args.get("ba")):
            if q is not None:
                q.close()
                q.join_thread()


class PipePeer(Peer):
    name = "multiprocessing.Pipe"

    def create(self, tag: str, size: int, depth: int) -> dict[str, Any]:
        a, b = mp.get_context("spawn").Pipe()
        return {"a": a, "b": b}

    def endpoint(self, args: dict[str, Any], side: str) -> Endpoint:
        conn = args[side]
        return Endpoint(conn.send_bytes, conn.recv_bytes, recv_into=conn.recv_bytes_into)

    def destroy(self, args: dict[str, Any]) -> None:
        args["a"].close()
        args["b"].close()


class MessageQueuePeer(Peer):
    name = "posix_ipc.MessageQueue"

    def available(self) -> str:
        return "" if posix_ipc.MESSAGE_QUEUES_SUPPORTED else "no POSIX message queues here"

    def create(self, tag: str, size: int, depth: int) -> dict[str, Any]:
        limit = _read_int("/proc/sys/fs/mqueue/msgsize_max")
        if limit and size > limit and os.geteuid() != 0:
            raise Unsupported(f"messages are limited to {limit} bytes (fs.mqueue.msgsize_max)")
        depth = min(depth, 10)
        need = 2 * depth * (size + 64)
        soft, hard = resource.getrlimit(resource.RLIMIT_MSGQUEUE)
        if soft != resource.RLIM_INFINITY and soft < need:
            # Linux charges message queues to RLIMIT_MSGQUEUE (800 KiB by default).
            with contextlib.suppress(ValueError, OSError):
                resource.setrlimit(resource.RLIMIT_MSGQUEUE, (max(need, hard), max(need, hard)))
        names = {d: f"/bq-{tag}-{d}" for d in ("ab", "ba")}
        for n in names.values():
            try:
                posix_ipc.MessageQueue(
                    n, posix_ipc.O_CREX, max_messages=depth, max_message_size=size
                ).close()
            except ValueError:
                self.destroy(names)
                raise Unsupported(
                    f"the kernel refuses {size}-byte messages "
                    f"(fs.mqueue.msgsize_max is {limit or 'unknown'})"
                ) from None
        return names

    def endpoint(self, args: dict[str, Any], side: str) -> Endpoint:
        out, inn = ("ab", "ba") if side == "a" else ("ba", "ab")
        mo = posix_ipc.MessageQueue(args[out])
        mi = posix_ipc.MessageQueue(args[inn])
        receive = mi.receive

        def recv() -> bytes:
            data: bytes = receive()[0]
            return data

        def close() -> None:
            mo.close()
            mi.close()

        return Endpoint(mo.send, recv, close=close)

    def destroy(self, args: dict[str, Any]) -> None:
        for n in args.values():
            with contextlib.suppress(posix_ipc.ExistentialError):
                posix_ipc.unlink_message_queue(n)


class FasterFifoPeer(Peer):
    name = "faster_fifo.Queue"
    tables: tuple[str, ...] = ("pingpong", "stream", "batched", "large")

    def available(self) -> str:
        return "" if faster_fifo is not None else "faster_fifo is not installed"

    def create(self, tag: str, size: int, depth: int) -> dict[str, Any]:
        cap = max(1 << 20, 2 * depth * (size + 64))
        return {"ab": faster_fifo.Queue(cap), "ba": faster_fifo.Queue(cap)}

    def endpoint(self, args: dict[str, Any], side: str) -> Endpoint:
        qo, qi = (args["ab"], args["ba"]) if side == "a" else (args["ba"], args["ab"])
        get_many = qi.get_many

        def recv_many(k: int) -> list[Any]:
            got: list[Any] = get_many(max_messages_to_get=k)
            return got

        return Endpoint(qo.put, qi.get, qo.put_many, recv_many)


class ZmqPeer(Peer):
    name = "pyzmq PAIR ipc://"

    def available(self) -> str:
        return "" if zmq is not None else "pyzmq is not installed"

    def create(self, tag: str, size: int, depth: int) -> dict[str, Any]:
        path = os.path.join(tempfile.gettempdir(), f"shmkit-bq-{tag}.sock")
        return {"url": "ipc://" + path, "path": path}

    def endpoint(self, args: dict[str, Any], side: str) -> Endpoint:
        ctx = zmq.Context()
        sock = ctx.socket(zmq.PAIR)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, 100_000)
        sock.setsockopt(zmq.RCVHWM, 100_000)
        if side == "a":
            sock.bind(args["url"])
        else:
            sock.connect(args["url"])

        def close() -> None:
            sock.close(0)
            ctx.term()

        return Endpoint(sock.send, sock.recv, close=close)

    def destroy(self, args: dict[str, Any]) -> None:
        with contextlib.suppress(OSError):
            os.unlink(args["path"])


class Payload64(ctypes.Structure):
    """iceoryx2 payload: 64 raw bytes."""

    _fields_ = [("data", ctypes.c_uint8 * SMALL)]


class Stalled(KeyboardInterrupt):
    """A measurement made no progress (its other side died or hung).

    A KeyboardInterrupt subclass because posix_ipc turns any other exception a
    signal handler raises during a semaphore wait into SignalError.
    """


@contextlib.contextmanager
def _watchdog(seconds: int) -> Iterator[None]:
    """Raise Stalled in this (main) thread if the block takes longer than ``seconds``."""

    def expired(signum: int, frame: FrameType | None) -> None:
        raise Stalled(f"no progress in {seconds} s (the other side died or hung)")

    old = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


class _Slot:
    """The posix_ipc tutorial: one shared-memory slot guarded by an empty and a full semaphore."""

    def __init__(self, name: str, spin: float) -> None:
        shm = posix_ipc.SharedMemory(name)
        self.mm = mmap.mmap(shm.fd, shm.size)
        shm.close_fd()
        self.empty = posix_ipc.Semaphore(name + "-e")
        self.full = posix_ipc.Semaphore(name + "-f")
        self.spin = spin

    def _take(self, sem: posix_ipc.Semaphore) -> None:
        take_spinning(sem, self.spin, None)

    def send(self, data: bytes) -> None:
        self._take(self.empty)
        n = len(data)
        self.mm[:8] = n.to_bytes(8, "little")
        self.mm[8 : 8 + n] = data
        self.full.release()

    def recv(self) -> bytes:
        self._take(self.full)
        n = int.from_bytes(self.mm[:8], "little")
        data = self.mm[8 : 8 + n]
        self.empty.release()
        return data

    def close(self) -> None:
        self.mm.close()
        self.empty.close()
        self.full.close()


class TutorialPeer(Peer):
    def __init__(self, spin: float) -> None:
        self.spin = spin
        self.name = "posix_ipc tutorial (slot + 2 sems" + (", spin)" if spin else ")")

    def create(self, tag: str, size: int, depth: int) -> dict[str, Any]:
        names = {d: f"/bq-{tag}-{d}" for d in ("ab", "ba")}
        for n in names.values():
            posix_ipc.SharedMemory(n, posix_ipc.O_CREX, size=8 + size).close_fd()
            posix_ipc.Semaphore(n + "-e", posix_ipc.O_CREX, initial_value=1).close()
            posix_ipc.Semaphore(n + "-f", posix_ipc.O_CREX, initial_value=0).close()
        return {"names": names, "spin": self.spin}

    def endpoint(self, args: dict[str, Any], side: str) -> Endpoint:
        out, inn = ("ab", "ba") if side == "a" else ("ba", "ab")
        so = _Slot(args["names"][out], args["spin"])
        si = _Slot(args["names"][inn], args["spin"])

        def close() -> None:
            so.close()
            si.close()

        return Endpoint(so.send, si.recv, close=close)

    def destroy(self, args: dict[str, Any]) -> None:
        for n in args["names"].values():
            with contextlib.suppress(posix_ipc.ExistentialError):
                posix_ipc.unlink_shared_memory(n)
            for s in ("-e", "-f"):
                with contextlib.suppress(posix_ipc.ExistentialError):
                    posix_ipc.unlink_semaphore(n + s)


class Iceoryx2Peer(Peer):
    name = "iceoryx2 (busy-poll)"
    tables = ("pingpong",)

    def available(self) -> str:
        return "" if iox2 is not None else "iceoryx2 is not installed"

    def create(self, tag: str, size: int, depth: int) -> dict[str, Any]:
        return {"tag": tag}

    def endpoint(self, args: dict[str, Any], side: str) -> Endpoint:
        iox2.set_log_level(iox2.LogLevel.Error)
        node = iox2.NodeBuilder.new().create(iox2.ServiceType.Ipc)

        def service(d: str) -> Any:
            return (
                node.service_builder(iox2.ServiceName.new(f"shmkit-bench/{args['tag']}/{d}"))
                .publish_subscribe(Payload64)
                .subscriber_max_buffer_size(16)
                .open_or_create()
            )

        out, inn = ("ab", "ba") if side == "a" else ("ba", "ab")
        so, si = service(out), service(inn)
        pub = so.publisher_builder().create()
        sub = si.subscriber_builder().create()
        send_copy = pub.send_copy
        receive = sub.receive
        from_copy = Payload64.from_buffer_copy

        def send(data: bytes) -> None:
            send_copy(from_copy(data.ljust(SMALL, b"\0")))

        def poll(seconds: float) -> bytes | None:
            end = time.perf_counter() + seconds
            while True:
                sample = receive()
                if sample is not None:
                    data = bytes(sample.payload().contents.data)
                    sample.delete()
                    return data
                if time.perf_counter() > end:
                    return None

        def recv() -> bytes:
            while True:  # busy-poll; the watchdog ends a run whose peer died
                data = poll(1.0)
                if data is not None:
                    return data

        def connect() -> None:
            # Samples published before the subscriber attached are lost: knock
            # until the child answers, then drop the extra echoes.
            while poll(0.02) is None:
                send(b"hello")
            while poll(0.05) is not None:
                pass

        def close() -> None:
            sub.delete()
            pub.delete()

        ep = Endpoint(send, recv, close=close, connect=connect)
        ep.keep = (node, so, si)  # type: ignore[attr-defined]
        return ep


def all_peers() -> list[Peer]:
    """shmkit first (the baseline of every ratio), then the peers."""
    return [
        ShmkitPeer(),
        ShmkitPeer(spin=0.0, label="shmkit Queue, spin=0 (sleeps at once)", tables=("pingpong",)),
        ShmkitPeer(label="shmkit Queue get() -> bytes", tables=("large",), large_into=False),
        MpQueuePeer(),
        PipePeer(),
        MessageQueuePeer(),
        FasterFifoPeer(),
        ZmqPeer(),
        TutorialPeer(spin=0.0),
        TutorialPeer(spin=50e-6),
        Iceoryx2Peer(),
    ]
