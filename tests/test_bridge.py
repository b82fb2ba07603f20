"""shmkit bridge on one host (loopback): specs, CLI errors, who may write what, CURVE, arrays."""

from __future__ import annotations

import os
import select
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import shmkit
from shmkit import Latest, Queue, registry
from shmkit.errors import Empty, InvalidName, NotFound, ShmkitError

zmq = pytest.importorskip("zmq", reason="the bridge needs pyzmq (pip install 'shmkit[bridge]')")

from shmkit.bridge import Bridge, Curve, make_keys, parse_spec, read_status  # noqa: E402
from shmkit.bridge import protocol as P  # noqa: E402
from shmkit.bridge.engine import Engine  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for(pred: Any, timeout: float, what: str) -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = pred()
        if got:
            return got
        time.sleep(0.02)
    raise AssertionError(f"{what}: not within {timeout} s")


@pytest.fixture
def bridges(name: str) -> Iterator[list[Bridge]]:
    made: list[Bridge] = []
    yield made
    for b in made:
        b.stop()
    for entry in registry.discover():
        if entry.name.startswith(name) or entry.name.startswith(f"bridge.{name}"):
            try:
                registry.remove(entry.name)
            except NotFound:
                pass


def test_packed_batches_round_trip_and_refuse_what_does_not_add_up() -> None:
    """PACKED: one frame per batch of small messages; a bad frame is a ValueError."""
    for batch in ([b"a"], [b"", b"x" * 7, b""], [bytes([i % 256]) * (i % 70) for i in range(300)]):
        frame = memoryview(P.pack(batch))
        assert [bytes(m) for m in P.unpack_batch(frame, len(batch))] == batch
    good = memoryview(P.pack([b"abc", b"de"]))
    for count, frame in (
        (0, good),  # no messages
        (3, good),  # more lengths than were packed
        (1, good),  # fewer: the bodies do not add up
        (2**31, good),  # a count no frame can hold
        (2, good[:-1]),  # truncated
        (2, memoryview(bytes(good) + b"!")),  # trailing bytes
    ):
        with pytest.raises(ValueError):
            P.unpack_batch(frame, count)


def test_specs() -> None:
    assert parse_spec("broadcast:frames", export=True) == P.Spec("broadcast", "frames", "frames")
    exp = parse_spec("queue:jobs=net.jobs", export=True)
    assert (exp.local, exp.key) == ("jobs", "net.jobs")
    imp = parse_spec("latest:pose=hostb.pose", export=False)
    assert (imp.local, imp.key) == ("hostb.pose", "pose")
    for bad in ("frames", "stream:frames", "queue:", "queue:a=b=c"):
        with pytest.raises(ValueError):
            parse_spec(bad, export=False)
    with pytest.raises(InvalidName):
        parse_spec("queue:/dev/x", export=True)


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    from shmkit.cli import main

    try:
        rc = main(["bridge", *args])
    except SystemExit as exc:  # argparse errors
        rc = int(exc.code or 0)
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_cli_refuses_what_it_cannot_do_safely(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # errors are one line on stderr (the CLI's rule; --json puts them on stdout)
    rc, _, out = run_cli(capsys)
    assert rc == 1 and "nothing to do" in out
    # nothing listens unless an address is named
    rc, _, out = run_cli(capsys, "--export", f"queue:{name}")
    assert rc == 1 and "--listen" in out
    rc, _, out = run_cli(capsys, "--import", f"queue:{name}")
    assert rc == 1 and "--connect" in out
    rc, _, err = run_cli(capsys, "--import", "stream:x", "--connect", "tcp://127.0.0.1:1")
    assert rc == 2 and "KIND" in err
    rc, _, out = run_cli(capsys, "--status", "--name", name)
    assert rc == 1 and "no bridge runs here" in out
    rc, _, out = run_cli(capsys, "--curve-allow", "/nonexistent", "--export", f"queue:{name}")
    assert rc == 1 and "--curve-secret" in out


def test_queue_latest_broadcast_over_loopback_and_status(name: str, bridges: list[Bridge]) -> None:
    port = free_port()
    qa = Queue.create(f"{name}.a.jobs", 1 << 14)
    la = Latest.create(f"{name}.a.pose", shape=(3, 4), dtype="f8")
    pub = shmkit.publisher(f"{name}.a.frames", 32, 16)
    try:
        bridges.append(
            Bridge(
                listen=f"tcp://127.0.0.1:{port}",
                exports=[
                    parse_spec(f"queue:{name}.a.jobs=jobs", True),
                    parse_spec(f"latest:{name}.a.pose=pose", True),
                    parse_spec(f"broadcast:{name}.a.frames=frames", True),
                ],
                name=f"{name}.a",
            )
        )
        bridges.append(
            Bridge(
                connect=[f"tcp://127.0.0.1:{port}"],
                imports=[
                    parse_spec(f"queue:jobs={name}.b.jobs", False),
                    parse_spec(f"latest:pose={name}.b.pose", False),
                    parse_spec(f"broadcast:frames={name}.b.frames", False),
                ],
                name=f"{name}.b",
                window=64,  # small, to see it hold below
            )
        )
        for b in bridges:
            b.start()
        import numpy as np

        value = np.arange(12, dtype="f8").reshape(3, 4)
        la.set(value)
        for i in range(50):
            qa.put(b"job%d" % i)
        qb = wait_for(lambda: _try_open(Queue.open, f"{name}.b.jobs"), 10, "imported queue")
        lb = wait_for(lambda: _try_open(Latest.open, f"{name}.b.pose"), 10, "imported latest")
        try:
            got = [qb.get(timeout=5.0) for _ in range(50)]
            assert got == [b"job%d" % i for i in range(50)]  # one consumer: in order
            lb.wait_newer(0, timeout=5.0)
            assert np.array_equal(lb.get(), value)
            # the importer holds no more than the credit window at a time
            for i in range(100):
                qa.put(b"more%d" % i)
            for i in range(100):
                qa.put(b"more%d" % i)
            wait_for(lambda: qb.qsize() >= 64, 10, "window filled")
            time.sleep(0.3)
            assert qb.qsize() <= 64 and qa.qsize() >= 200 - 64
            st = wait_for(lambda: _status(f"{name}.b"), 5, "status")
            assert st["imports"][0]["peers"] == {f"tcp://127.0.0.1:{port}": True}
        finally:
            qb.close()
            lb.close()
    finally:
        for obj in (qa, la, pub):
            obj.close()


def _try_open(opener: Any, n: str) -> Any:
    try:
        return opener(n)
    except NotFound:
        return None


def _status(n: str) -> Any:
    try:
        return read_status(n, timeout=0.1)
    except (NotFound, Empty):
        return None


def test_a_peer_gets_nothing_it_was_not_offered(name: str, bridges: list[Bridge]) -> None:
    """A SUB for a key not exported is refused, and neither side creates anything for it."""
    port = free_port()
    q = Queue.create(f"{name}.jobs", 4096)
    try:
        bridges.append(
            Bridge(
                listen=f"tcp://127.0.0.1:{port}",
                exports=[parse_spec(f"queue:{name}.jobs", True)],
                name=name,
            )
        )
        bridges[0].start()
        ctx = zmq.Context()
        try:
            s = ctx.socket(zmq.DEALER)
            s.setsockopt(zmq.LINGER, 0)
            s.connect(f"tcp://127.0.0.1:{port}")
            for kind, key in ((P.QUEUE, f"{name}.other"), (P.LATEST, f"{name}.jobs")):
                s.send_multipart([P.header(P.SUB, kind, 0, 8), key.encode(), b""])
                assert s.poll(5000)
                hdr, k, reason = s.recv_multipart()
                assert P.unpack(memoryview(hdr))[0] == P.NOEXPORT and k == key.encode()
                assert b"not exported" in reason
            # garbage is counted and ignored; the bridge keeps serving
            s.send_multipart([b"junk"])
            s.send_multipart([P.header(P.SUB, P.QUEUE, 0, 0), f"{name}.jobs".encode(), b""])
            assert s.poll(5000)
            assert P.unpack(memoryview(s.recv_multipart()[0]))[0] == P.DESC
            s.close()
        finally:
            ctx.destroy(linger=0)
        names = {e.name for e in registry.discover()}
        assert f"{name}.other" not in names
        assert not any(n.startswith(f"{name}.") and n != f"{name}.jobs" for n in names)
        assert bridges[0].listener is not None and bridges[0].listener.bad == 1
    finally:
        q.close()
        q.unlink()


def test_curve_encrypts_and_refuses_unknown_clients(
    name: str, bridges: list[Bridge], tmp_path: Path
) -> None:
    server_pub, server_sec = make_keys(str(tmp_path / "server"), "server")
    client_pub, client_sec = make_keys(str(tmp_path / "allowed"), "client")
    _, stranger_sec = make_keys(str(tmp_path / "strangers"), "stranger")
    assert os.stat(server_sec).st_mode & 0o777 == 0o600
    port = free_port()
    la = Latest.create(f"{name}.a.pose", size=16)
    la.set(b"secret")
    try:
        bridges.append(
            Bridge(
                listen=f"tcp://127.0.0.1:{port}",
                exports=[parse_spec(f"latest:{name}.a.pose=pose", True)],
                curve=Curve(server_sec, allow=str(tmp_path / "allowed")),
                name=f"{name}.a",
            )
        )
        for who, sec in (("s", stranger_sec), ("b", client_sec)):
            bridges.append(
                Bridge(
                    connect=[f"tcp://127.0.0.1:{port}"],
                    imports=[parse_spec(f"latest:pose={name}.{who}.pose", False)],
                    curve=Curve(sec, server_key=server_pub),
                    name=f"{name}.{who}",
                )
            )
        for b in bridges:
            b.start()
        lb = wait_for(lambda: _try_open(Latest.open, f"{name}.b.pose"), 10, "allowed client")
        with lb:
            lb.wait_newer(0, timeout=5.0)
            assert lb.get() == b"secret"
        time.sleep(0.5)
        with pytest.raises(NotFound):
            Latest.open(f"{name}.s.pose")  # the stranger never got a DESC
    finally:
        la.close()
    with pytest.raises(ShmkitError, match="server-key"):
        Bridge(
            connect=["tcp://127.0.0.1:1"],
            imports=[parse_spec(f"latest:x={name}.c", False)],
            curve=Curve(client_sec),
            name=f"{name}.c",
        )
    del client_pub


def test_big_frames_zero_copy_out_of_a_backpressured_ring(name: str, bridges: list[Bridge]) -> None:
    """Slots >= 64 KiB of a back-pressured ring go out without a copy; every frame arrives whole."""
    import zlib

    port = free_port()
    size = 256 * 1024
    bc = shmkit.Broadcast.create(f"{name}.a.big", size, 4, backpressure=True)
    try:
        bridges.append(
            Bridge(
                listen=f"tcp://127.0.0.1:{port}",
                exports=[parse_spec(f"broadcast:{name}.a.big=big", True)],
                name=f"{name}.a",
            )
        )
        bridges.append(
            Bridge(
                connect=[f"tcp://127.0.0.1:{port}"],
                imports=[parse_spec(f"broadcast:big={name}.b.big", False)],
                name=f"{name}.b",
            )
        )
        for b in bridges:
            b.start()
        sub = wait_for(lambda: _try_open(shmkit.subscribe, f"{name}.b.big"), 10, "import")
        time.sleep(0.3)  # the exporter's tethered subscriber joins
        received = missed = 0
        with sub, bc.publisher() as pub:
            for i in range(40):
                body = bytes([i % 251]) * (size - 8)
                pub.publish(zlib.crc32(body).to_bytes(4, "little") + i.to_bytes(4, "little") + body)
            while received + missed < 40:
                try:
                    data = sub.recv(timeout=5.0)
                except shmkit.errors.Overrun as exc:
                    missed += exc.missed
                    continue
                assert int.from_bytes(data[:4], "little") == zlib.crc32(data[8:])
                assert int.from_bytes(data[4:8], "little") == sub.next_seq - 1
                received += 1
        assert received > 0 and received + missed == 40
        assert bridges[0].exports[0].msgs >= 40  # the exporter sent every one
    finally:
        bc.unlink()
        bc.close()


def test_an_importer_survives_a_hostile_exporter(name: str, bridges: list[Bridge]) -> None:
    """Garbage, bad parameters and data for other keys are dropped; the import keeps working."""
    port = free_port()
    ctx = zmq.Context()
    server = ctx.socket(zmq.ROUTER)
    server.setsockopt(zmq.LINGER, 0)
    server.bind(f"tcp://127.0.0.1:{port}")
    try:
        bridges.append(
            Bridge(
                connect=[f"tcp://127.0.0.1:{port}"],
                imports=[parse_spec(f"queue:jobs={name}.b.jobs", False)],
                name=f"{name}.b",
            )
        )
        bridges[0].start()
        assert server.poll(5000)
        ident = server.recv_multipart()[0]
        sess = b"s" * 16

        def send(op: int, kind: int, key: bytes, a: int, *payload: bytes) -> None:
            server.send_multipart([ident, P.header(op, kind, a, 0, sess), key, *payload])

        send(P.DESC, P.QUEUE, b"jobs", 0, b"{not json")
        send(P.DESC, P.QUEUE, b"jobs", 0, b'{"capacity": 4096}')  # no codec
        send(P.DATA, P.QUEUE, b"other", 1, b"x")  # another key: ignored
        server.send_multipart([ident, b"short"])
        imp = bridges[0].imports[0]
        wait_for(lambda: imp.bad >= 2, 5, "bad messages counted")
        assert imp.is_alive()
        send(P.DESC, P.QUEUE, b"jobs", 0, b'{"capacity": 4096, "codec": "bytes"}')
        send(P.DATA, P.QUEUE, b"jobs", 1, b"one", b"two")
        qb = wait_for(lambda: _try_open(Queue.open, f"{name}.b.jobs"), 5, "imported queue")
        with qb:
            assert [qb.get(timeout=5.0), qb.get(timeout=5.0)] == [b"one", b"two"]
        names = {e.name for e in registry.discover()}
        assert f"{name}.b.other" not in names and "other" not in names
    finally:
        server.close(linger=0)
        ctx.destroy(linger=0)


def test_without_pyzmq_the_error_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    from shmkit.bridge import engine

    monkeypatch.setattr(engine, "zmq", None)
    with pytest.raises(ShmkitError, match=r"pip install 'shmkit\[bridge\]'"):
        engine.require()
    with pytest.raises(ShmkitError, match="pip install"):
        engine.Engine()


def test_two_exporters_of_one_key_the_importer_takes_from_one_only(
    name: str, bridges: list[Bridge]
) -> None:
    """Credit goes only to the followed peer: the other exporter's queue keeps its messages."""
    ports = [free_port(), free_port()]
    queues = [Queue.create(f"{name}.x{i}.jobs", 1 << 14) for i in range(2)]
    try:
        for i, port in enumerate(ports):
            bridges.append(
                Bridge(
                    listen=f"tcp://127.0.0.1:{port}",
                    exports=[parse_spec(f"queue:{name}.x{i}.jobs=jobs", True)],
                    name=f"{name}.x{i}",
                )
            )
        bridges.append(
            Bridge(
                connect=[f"tcp://127.0.0.1:{p}" for p in ports],
                imports=[parse_spec(f"queue:jobs={name}.b.jobs", False)],
                name=f"{name}.b",
            )
        )
        for i, q in enumerate(queues):
            for j in range(20):
                q.put(b"%d-%d" % (i, j))
        for b in bridges:
            b.start()
        qb = wait_for(lambda: _try_open(Queue.open, f"{name}.b.jobs"), 10, "imported queue")
        with qb:
            got = [qb.get(timeout=5.0) for _ in range(20)]
            time.sleep(0.5)
            assert qb.qsize() == 0
        src = {g.split(b"-")[0] for g in got}
        assert len(src) == 1  # all from the followed exporter, in order
        other = queues[1 - int(src.pop())]
        assert other.qsize() == 20  # untouched: nothing was sent anywhere
    finally:
        for q in queues:
            q.close()


def test_a_send_that_takes_the_listeners_wakeup_passes_it_on() -> None:
    """A request is heard at once even when an export thread's send swallowed its signal.

    The listening socket is shared: export threads send on it while its owner
    sleeps in poll(2) on the socket's edge-triggered descriptor. A send
    processes the socket's pending commands, so it can take the edge that
    announced a request; the sender must then wake the owner itself. Here the
    send lands exactly in that window: after the owner found nothing, before
    it sleeps.
    """
    engine = Engine()
    addr = f"tcp://127.0.0.1:{free_port()}"
    server = engine.listener(addr)
    client = engine.dialer(addr, b"client-1")
    real_poll = server._poll
    try:
        client.send([b"hello", b"", b""], block=True)  # the server learns our routing id
        assert server.wait(5.0)
        assert server.recv() is not None
        assert server.recv() is None

        class SendFirst:
            """poll(2), but first a request arrives and another thread sends."""

            def poll(self, ms: int) -> list[tuple[int, int]]:
                client.send([b"request", b"", b""], block=True)
                ready, _, _ = select.select([server._fd], [], [], 2.0)
                assert ready, "the request never signalled the socket"
                time.sleep(0.005)  # past ZeroMQ's command throttle: the send reads commands
                sender = threading.Thread(target=server.send, args=([b"client-1", b"x"], 0.0))
                sender.start()
                sender.join(5.0)
                return real_poll.poll(ms)

        server._poll = SendFirst()  # type: ignore[assignment]
        t = time.monotonic()
        assert server.wait(3.0), "the listener slept through a waiting request"
        assert time.monotonic() - t < 1.0
        got = server.recv()
        assert got is not None and bytes(got[1]) == b"request"
    finally:
        server._poll = real_poll
        client.close()
        server.close()
        engine.close()


def test_a_queue_import_applies_each_id_once_in_order(name: str) -> None:
    """Batches go in whole (put_many); repeats are dropped, a gap waits for its re-send."""
    from shmkit.bridge.importer import QueueImport

    engine = Engine()
    imp = QueueImport(parse_spec(f"queue:k={name}", False), engine, [], os.urandom(16), window=64)
    try:
        imp.open_local({"capacity": 1 << 16, "codec": "bytes"})

        def batch(*ids: int) -> list[memoryview]:
            return [memoryview(b"m%d" % i) for i in ids]

        imp.on_batch(1, batch(1, 2, 3, 4))
        imp.on_batch(3, batch(3, 4, 5, 6))  # a re-send overlapping what was applied
        imp.on_batch(8, batch(8, 9))  # 7 lost on the way: nothing after it goes in yet
        imp.on_batch(7, batch(7))
        imp.on_batch(8, batch(8, 9))
        assert (imp.applied, imp.dups, imp.gaps) == (9, 2, 1)
        with Queue.open(name) as q:
            assert [bytes(m) for m in q.get_many(100, timeout=1.0)] == [
                b"m%d" % i for i in range(1, 10)
            ]
    finally:
        imp.close_local()
        engine.close()
        registry.remove(name)
