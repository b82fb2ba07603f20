"""The ways ``shmkit bench frames`` moves frames: shmkit's Broadcast and its peers.

Each peer creates its shared resources in the parent (``setup``), makes a
``Writer`` in the writer process and a ``Reader`` in each reader process, and
removes everything in ``teardown``. Missing packages make ``available()``
return why, and the runner prints a skip line.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing as mp
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import posix_ipc

from ..broadcast import Broadcast, subscribe
from ..errors import Overrun, PeerDied
from ..segment import Segment
from ..testing import unique_name
from .common import take_spinning

try:
    import zmq
except ImportError:  # pragma: no cover - depends on the environment
    zmq = None  # type: ignore[assignment]
try:
    import iceoryx2 as iox2
except ImportError:  # pragma: no cover
    iox2 = None

SHAPE = (1080, 1920, 3)
FRAME = SHAPE[0] * SHAPE[1] * SHAPE[2]
SMALL = 64
BASELINE = "shmkit publish -> recv_view"
#: One slot with back-pressure: the slot stays cache-resident (see the module docstring).
HANDOFF = "shmkit publish, 1-slot hand-off -> recv_view"
#: glibc tunable that makes large memcpy use non-temporal stores (see main()).
#: The lossless frames workload's shmkit row (issue 8's target compares it with the peers):
#: double-buffered, as the peers are configured (iceoryx2 buffers 2 samples, the tutorial
#: has 1 slot). The default 8-slot ring is a second row: with frames of several MiB its
#: 8 slots leave the caches, and every copy goes to DRAM.
LOSSLESS = "shmkit back-pressured loan + copy, 2 slots"
#: One slot: the writer reuses a slot its cache still holds (a 1 MiB copy into a hot
#: slot costs ~57 µs against ~80 µs into a cold one here), at the price of waiting for
#: the reader to release it; wins when the reader is quick, like every reader here.
LOSSLESS_HANDOFF = "shmkit back-pressured loan + copy, 1 slot (hand-off)"
#: Two slots and a reader that spins up to 1 ms (``Subscriber.spin``) instead of the
#: adaptive 20-250 µs: a reader with a core of its own, as iceoryx2's busy-polling one.
LOSSLESS_SPIN = "shmkit back-pressured loan + copy, 2 slots, reader spin 1 ms"
NT_TUNABLE = "glibc.cpu.x86_non_temporal_threshold=0x100000"


# ----------------------------------------------------------------------------- peers


class Writer:
    """A peer's sending side in the writer process."""

    def send(self, frame: np.ndarray[Any, Any], i: int) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class Reader:
    """A peer's receiving side: ``recv()`` returns the message's first 8 bytes as an int.

    None means the stream ended (lossy rows: the publisher left).
    """

    missed = 0

    def recv(self) -> int | None:
        raise NotImplementedError

    def close(self) -> None:
        pass


@dataclass
class Peer:
    """One way to move frames: creates shared resources in the parent, ends in children."""

    name: str
    scale: float = 1.0  # fraction of the plan's frame count (slow peers run fewer)
    lossy: bool = False
    writer_env: dict[str, str] = field(default_factory=dict)

    def available(self) -> str:
        return ""

    def setup(self, tag: str, size: int, readers: int) -> dict[str, Any]:
        return {}

    def writer(self, args: dict[str, Any]) -> Writer:
        raise NotImplementedError

    def reader(self, args: dict[str, Any], index: int) -> Reader:
        raise NotImplementedError

    def teardown(self, args: dict[str, Any]) -> None:
        pass


def _head(buf: Any) -> int:
    return int.from_bytes(bytes(buf[:8]), "little")


@dataclass
class ShmkitPeer(Peer):
    """Broadcast: ``how`` is view, into, bytes, loan (header only), loancopy or lossy.

    ``loancopy`` loans the slot and copies the whole frame into it (the
    lossless frames workload of issue 8).
    """

    how: str = "view"
    slots: int = 4
    reader_spin: float | None = None  # Subscriber.spin (None: adaptive)

    def setup(self, tag: str, size: int, readers: int) -> dict[str, Any]:
        name = unique_name(f"bf{tag}")
        Broadcast.create(
            name,
            slot_size=size,
            slots=self.slots if size > SMALL else 1024,
            backpressure=not self.lossy,
            max_subscribers=readers + 2,
        ).close()  # the writer child takes the publisher role
        return {"name": name}

    def writer(self, args: dict[str, Any]) -> Writer:
        return _ShmkitWriter(args["name"], self.how)

    def reader(self, args: dict[str, Any], index: int) -> Reader:
        return _ShmkitReader(args["name"], self.how, self.lossy, self.reader_spin)

    def teardown(self, args: dict[str, Any]) -> None:
        Segment.remove(args["name"])


class _ShmkitWriter(Writer):
    def __init__(self, name: str, how: str) -> None:
        with Broadcast.open(name) as bc:
            self.pub = bc.publisher(timeout=5.0)
        self.how = how

    def send(self, frame: np.ndarray[Any, Any], i: int) -> None:
        if self.how == "loan":
            with self.pub.loan(frame.nbytes, timeout=30.0) as buf:  # only the header here
                buf[:8] = frame[:8]
        elif self.how == "loancopy":
            with self.pub.loan(frame.nbytes, timeout=30.0) as buf:
                buf[:] = frame  # the whole frame, copied into the slot
        else:
            self.pub.publish(frame, timeout=30.0)

    def close(self) -> None:
        self.pub.close()


class _ShmkitReader(Reader):
    def __init__(self, name: str, how: str, lossy: bool, spin: float | None = None) -> None:
        self.sub = subscribe(name)  # registered before the writer starts
        self.sub.spin = spin
        self.how = "view" if how in ("loan", "loancopy", "lossy") else how
        self.lossy = lossy
        self.buf = bytearray(self.sub.slot_size)

    def recv(self) -> int | None:
        sub = self.sub
        while True:
            try:
                if self.how == "view":
                    with sub.recv_view(30.0) as msg:
                        return _head(msg.data)
                if self.how == "into":
                    sub.recv_into(self.buf, 30.0)
                    return _head(self.buf)
                return _head(sub.recv(30.0))
            except Overrun as exc:
                self.missed += exc.missed
            except PeerDied:
                return None

    def close(self) -> None:
        self.sub.close()


class MpQueuePeer(Peer):
    def setup(self, tag: str, size: int, readers: int) -> dict[str, Any]:
        ctx = mp.get_context("spawn")
        return {"queues": [ctx.Queue(maxsize=2 if size > SMALL else 1000) for _ in range(readers)]}

    def writer(self, args: dict[str, Any]) -> Writer:
        return _MpQueueWriter(args["queues"])

    def reader(self, args: dict[str, Any], index: int) -> Reader:
        return _MpQueueReader(args["queues"][index])


class _MpQueueWriter(Writer):
    def __init__(self, queues: list[Any]) -> None:
        self.queues = queues

    def send(self, frame: np.ndarray[Any, Any], i: int) -> None:
        data = frame if frame.nbytes > SMALL else frame.tobytes()
        for q in self.queues:
            q.put(data)  # pickled (numpy) per queue

    def close(self) -> None:
        for q in self.queues:
            q.close()
            q.join_thread()


class _MpQueueReader(Reader):
    def __init__(self, queue: Any) -> None:
        self.queue = queue

    def recv(self) -> int | None:
        data = self.queue.get(timeout=30)
        return _head(data if isinstance(data, bytes) else data[:8].tobytes())


class SharedMemoryPeer(Peer):
    """multiprocessing.shared_memory ring + one empty/full semaphore pair per reader."""

    def setup(self, tag: str, size: int, readers: int) -> dict[str, Any]:
        from multiprocessing import shared_memory  # noqa: PLC0415 - only this peer needs it

        ctx = mp.get_context("spawn")
        slots = 4 if size > SMALL else 1024
        shm = shared_memory.SharedMemory(create=True, size=slots * size)
        shm.close()
        return {
            "shm": shm.name,
            "size": size,
            "slots": slots,
            "empty": [ctx.Semaphore(slots) for _ in range(readers)],
            "full": [ctx.Semaphore(0) for _ in range(readers)],
        }

    def writer(self, args: dict[str, Any]) -> Writer:
        return _ShmWriter(args)

    def reader(self, args: dict[str, Any], index: int) -> Reader:
        return _ShmReader(args, index)

    def teardown(self, args: dict[str, Any]) -> None:
        from multiprocessing import shared_memory  # noqa: PLC0415

        with contextlib.suppress(FileNotFoundError):
            shm = shared_memory.SharedMemory(args["shm"])
            shm.close()
            shm.unlink()


class _ShmWriter(Writer):
    def __init__(self, args: dict[str, Any]) -> None:
        from multiprocessing import shared_memory  # noqa: PLC0415

        self.shm = shared_memory.SharedMemory(args["shm"])
        self.buf: Any = self.shm.buf
        self.size, self.slots = args["size"], args["slots"]
        self.empty, self.full = args["empty"], args["full"]

    def send(self, frame: np.ndarray[Any, Any], i: int) -> None:
        for sem in self.empty:
            sem.acquire()
        off = (i % self.slots) * self.size
        self.buf[off : off + self.size] = frame.reshape(-1)
        for sem in self.full:
            sem.release()

    def close(self) -> None:
        del self.buf
        self.shm.close()


class _ShmReader(Reader):
    def __init__(self, args: dict[str, Any], index: int) -> None:
        from multiprocessing import shared_memory  # noqa: PLC0415

        self.shm = shared_memory.SharedMemory(args["shm"])
        self.buf: Any = self.shm.buf
        self.size, self.slots = args["size"], args["slots"]
        self.empty, self.full = args["empty"][index], args["full"][index]
        self.i = 0

    def recv(self) -> int | None:
        self.full.acquire()
        off = (self.i % self.slots) * self.size
        value = _head(self.buf[off : off + 8])  # zero-copy: only the header is read
        self.empty.release()
        self.i += 1
        return value

    def close(self) -> None:
        del self.buf
        self.shm.close()


class ZmqPeer(Peer):
    """pyzmq PUSH/PULL over ipc://, one socket pair per reader; zero-copy sends of frames."""

    def available(self) -> str:
        return "" if zmq is not None else "pyzmq is not installed"

    def setup(self, tag: str, size: int, readers: int) -> dict[str, Any]:
        path = tempfile.mkdtemp(prefix="shmkit-bench-")
        return {"dir": path, "urls": [f"ipc://{path}/r{r}" for r in range(readers)], "size": size}

    def writer(self, args: dict[str, Any]) -> Writer:
        return _ZmqWriter(args)

    def reader(self, args: dict[str, Any], index: int) -> Reader:
        return _ZmqReader(args, index)

    def teardown(self, args: dict[str, Any]) -> None:
        shutil.rmtree(args["dir"], ignore_errors=True)


class _ZmqWriter(Writer):
    def __init__(self, args: dict[str, Any]) -> None:
        self.ctx = zmq.Context()
        self.big = args["size"] > SMALL
        self.socks = []
        for url in args["urls"]:
            s = self.ctx.socket(zmq.PUSH)
            s.setsockopt(zmq.SNDHWM, 2 if self.big else 1000)
            s.connect(url)
            self.socks.append(s)

    def send(self, frame: np.ndarray[Any, Any], i: int) -> None:
        data = frame if self.big else frame.tobytes()
        for s in self.socks:
            s.send(data, copy=not self.big)  # type: ignore[call-overload]

    def close(self) -> None:
        for s in self.socks:
            s.close(linger=10_000)
        self.ctx.term()


class _ZmqReader(Reader):
    def __init__(self, args: dict[str, Any], index: int) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.PULL)
        self.sock.setsockopt(zmq.RCVHWM, 2 if args["size"] > SMALL else 1000)
        self.sock.setsockopt(zmq.RCVTIMEO, 30_000)
        self.sock.bind(args["urls"][index])

    def recv(self) -> int | None:
        msg = self.sock.recv(copy=False)
        return _head(msg.buffer)

    def close(self) -> None:
        self.sock.close(linger=0)
        self.ctx.term()


class Iceoryx2Peer(Peer):
    """iceoryx2 publish-subscribe of u8 slices: loan, copy in, send; subscribers busy-poll."""

    def available(self) -> str:
        return "" if iox2 is not None else "iceoryx2 is not installed"

    def setup(self, tag: str, size: int, readers: int) -> dict[str, Any]:
        args = {"service": f"shmkit-bench/frames/{tag}", "size": size, "readers": readers}
        # Created here, before the children race to open it; kept until teardown.
        _IOX_KEEP[tag] = _iox_service(args)
        return {**args, "tag": tag}

    def writer(self, args: dict[str, Any]) -> Writer:
        return _IoxWriter(args)

    def reader(self, args: dict[str, Any], index: int) -> Reader:
        return _IoxReader(args)

    def teardown(self, args: dict[str, Any]) -> None:
        _IOX_KEEP.pop(args["tag"], None)


_IOX_KEEP: dict[str, tuple[Any, Any]] = {}


def _iox_depth(size: int) -> int:
    """Samples a subscriber may queue: 2 frames (like the other rows), 512 small messages."""
    return 2 if size > SMALL else 512


def _iox_service(args: dict[str, Any]) -> tuple[Any, Any]:
    iox2.set_log_level(iox2.LogLevel.Error)
    node = iox2.NodeBuilder.new().create(iox2.ServiceType.Ipc)
    service = (
        node.service_builder(iox2.ServiceName.new(args["service"]))
        .publish_subscribe(iox2.Slice[ctypes.c_uint8])
        .max_subscribers(args["readers"] + 1)
        .subscriber_max_buffer_size(_iox_depth(args["size"]))
        .history_size(0)
        .enable_safe_overflow(False)  # lossless, like the other rows
        .open_or_create()
    )
    return node, service


class _IoxWriter(Writer):
    def __init__(self, args: dict[str, Any]) -> None:
        self.node, self.service = _iox_service(args)
        self.size = args["size"]
        self.pub = (
            self.service.publisher_builder()
            .initial_max_slice_len(self.size)
            .backpressure_strategy(iox2.BackpressureStrategy.RetryUntilDelivered)
            .create()
        )

    def send(self, frame: np.ndarray[Any, Any], i: int) -> None:
        sample = self.pub.loan_slice_uninit(self.size)
        ctypes.memmove(sample.payload().as_ptr(), frame.ctypes.data, self.size)
        sample.assume_init().send()

    def close(self) -> None:
        self.pub.delete()


class _IoxReader(Reader):
    def __init__(self, args: dict[str, Any]) -> None:
        self.node, self.service = _iox_service(args)
        self.sub = self.service.subscriber_builder().buffer_size(_iox_depth(args["size"])).create()
        self.head = ctypes.c_uint8 * 8

    def recv(self) -> int | None:
        receive = self.sub.receive
        end = time.monotonic() + 30
        while True:  # busy-poll: iceoryx2's subscribers have no blocking receive
            sample = receive()
            if sample is not None:
                value = _head(bytes(self.head.from_address(sample.payload().as_ptr())))
                sample.delete()
                return value
            if time.monotonic() > end:
                raise TimeoutError("iceoryx2 subscriber got nothing for 30 s")

    def close(self) -> None:
        self.sub.delete()


class TutorialPeer(Peer):
    """The posix_ipc tutorial: one shared slot, empty/full semaphores per reader, 50 µs spin."""

    def setup(self, tag: str, size: int, readers: int) -> dict[str, Any]:
        name = f"/bf-tut-{tag}"
        posix_ipc.SharedMemory(name, posix_ipc.O_CREX, size=size).close_fd()
        for r in range(readers):
            posix_ipc.Semaphore(f"{name}-e{r}", posix_ipc.O_CREX, initial_value=1).close()
            posix_ipc.Semaphore(f"{name}-f{r}", posix_ipc.O_CREX, initial_value=0).close()
        return {"name": name, "readers": readers, "size": size}

    def writer(self, args: dict[str, Any]) -> Writer:
        return _TutorialWriter(args)

    def reader(self, args: dict[str, Any], index: int) -> Reader:
        return _TutorialReader(args, index)

    def teardown(self, args: dict[str, Any]) -> None:
        name = args["name"]
        with contextlib.suppress(posix_ipc.ExistentialError):
            posix_ipc.unlink_shared_memory(name)
        for r in range(args["readers"]):
            for kind in "ef":
                with contextlib.suppress(posix_ipc.ExistentialError):
                    posix_ipc.unlink_semaphore(f"{name}-{kind}{r}")


def _mapping(name: str) -> Any:
    import mmap  # noqa: PLC0415 - tutorial peer only

    shm = posix_ipc.SharedMemory(name)
    mm = mmap.mmap(shm.fd, shm.size)
    shm.close_fd()
    return mm


class _TutorialWriter(Writer):
    def __init__(self, args: dict[str, Any]) -> None:
        name = args["name"]
        self.mm = _mapping(name)
        self.empty = [posix_ipc.Semaphore(f"{name}-e{r}") for r in range(args["readers"])]
        self.full = [posix_ipc.Semaphore(f"{name}-f{r}") for r in range(args["readers"])]

    def send(self, frame: np.ndarray[Any, Any], i: int) -> None:
        for sem in self.empty:
            take_spinning(sem, 50e-6, 30)
        self.mm.seek(0)
        self.mm.write(frame)  # the tutorial's mapfile.write
        for sem in self.full:
            sem.release()

    def close(self) -> None:
        self.mm.close()


class _TutorialReader(Reader):
    def __init__(self, args: dict[str, Any], index: int) -> None:
        name = args["name"]
        self.mm = _mapping(name)
        self.size = args["size"]
        self.empty = posix_ipc.Semaphore(f"{name}-e{index}")
        self.full = posix_ipc.Semaphore(f"{name}-f{index}")

    def recv(self) -> int | None:
        take_spinning(self.full, 50e-6, 30)
        self.mm.seek(0)
        data = self.mm.read(self.size)  # the tutorial's mapfile.read: a copy
        self.empty.release()
        return _head(data)

    def close(self) -> None:
        self.mm.close()


def frame_peers(quick_nt: bool) -> list[Peer]:
    """shmkit rows first (the baseline is the first), then the peers."""
    peers: list[Peer] = [
        ShmkitPeer(BASELINE),
        ShmkitPeer(HANDOFF, slots=1),
        ShmkitPeer("shmkit publish -> recv_view, 2-slot ring", slots=2),
        ShmkitPeer("shmkit publish -> recv_into (copy out)", how="into"),
        ShmkitPeer("shmkit loan (header only) -> recv_view", how="loan"),
        ShmkitPeer("shmkit publish, lossy -> recv_view", how="lossy", lossy=True, slots=8),
    ]
    if quick_nt:
        peers.append(
            ShmkitPeer(
                "shmkit publish, NT-store memcpy -> recv_view",
                writer_env={"GLIBC_TUNABLES": NT_TUNABLE},
            )
        )
    peers += [
        MpQueuePeer("multiprocessing.Queue (pickled ndarray)", scale=0.15),
        SharedMemoryPeer("shared_memory + mp semaphores (ring)"),
        ZmqPeer("pyzmq PUSH/PULL ipc:// (zero-copy)", scale=0.5),
        Iceoryx2Peer("iceoryx2 pub/sub (busy-poll)"),
        TutorialPeer("posix_ipc tutorial (1 slot, 2 sems, spin)"),
    ]
    return peers


def lossless_peers() -> list[Peer]:
    """The lossless frames workload: back-pressured loan + copy against the one-slot peers."""
    return [
        ShmkitPeer(LOSSLESS, how="loancopy", slots=2),
        ShmkitPeer(LOSSLESS_HANDOFF, how="loancopy", slots=1),
        ShmkitPeer("shmkit back-pressured loan + copy, 8 slots (default)", how="loancopy", slots=8),
        ShmkitPeer(LOSSLESS_SPIN, how="loancopy", slots=2, reader_spin=0.001),
        TutorialPeer("posix_ipc tutorial (1 slot, 2 sems, spin)"),
        Iceoryx2Peer("iceoryx2 pub/sub (busy-poll)"),
    ]


def small_peers() -> list[Peer]:
    return [
        ShmkitPeer("shmkit Broadcast recv()", how="bytes"),
        MpQueuePeer("multiprocessing.Queue", scale=0.25),
        SharedMemoryPeer("shared_memory + mp semaphores", scale=0.5),
        ZmqPeer("pyzmq PUSH/PULL ipc://"),
        Iceoryx2Peer("iceoryx2 pub/sub (busy-poll)"),
        TutorialPeer("posix_ipc tutorial (spin)"),
    ]
