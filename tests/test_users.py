"""Sharing across users on request (issue #10 item 6, RELIABILITY T24).

The test makes a throwaway user and group (``useradd``/``groupadd``, removed
afterwards) and runs the other side in a forked child that drops to that
user with ``setgroups``/``setgid``/``setuid`` (no exec: the interpreter under
/root need not be readable by that user). Skipped where that is impossible
(not root, no useradd, no /dev/shm).
"""

from __future__ import annotations

import json
import os
import pickle
import select
import shutil
import subprocess
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import posix_ipc
import pytest

import shmkit
from shmkit import _names, registry

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("useradd") is None or not os.path.isdir("/dev/shm"),
    reason="needs root and useradd to make a second user",
)


@dataclass(frozen=True)
class User:
    name: str
    uid: int
    gid: int
    shared_gid: int  # a group the user is in besides its own


@pytest.fixture(scope="module")
def other() -> Iterator[User]:
    tag = f"shmkt{os.getpid() % 100000}"
    group = tag + "g"

    def run(*argv: str) -> None:
        subprocess.run(argv, check=True, capture_output=True, timeout=60)

    try:
        run("groupadd", group)
        run("useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", "-G", group, tag)
    except (subprocess.CalledProcessError, OSError) as exc:
        subprocess.run(["groupdel", group], capture_output=True, timeout=60)
        pytest.skip(f"cannot make a second user: {exc}")
    import grp
    import pwd

    pw = pwd.getpwnam(tag)
    try:
        yield User(tag, pw.pw_uid, pw.pw_gid, grp.getgrnam(group).gr_gid)
    finally:
        subprocess.run(["userdel", tag], capture_output=True, timeout=60)
        subprocess.run(["groupdel", group], capture_output=True, timeout=60)


def as_user(user: User, fn: Callable[[], Any], *, timeout: float = 30.0) -> Any:
    """Run ``fn`` in a forked child as ``user`` (in its shared group); return or re-raise."""
    r, w = os.pipe()
    with warnings.catch_warnings():
        # 3.12+ warns that forking a threaded process (pytest-timeout's timer) may
        # deadlock; the child only drops privileges, runs fn and _exits.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(r)
        try:
            os.setgroups([user.shared_gid])
            os.setgid(user.gid)
            os.setuid(user.uid)
            result: tuple[str, Any] = ("ok", fn())
        except BaseException as exc:
            result = ("error", exc)
        try:
            data = pickle.dumps(result)
        except Exception as exc:
            data = pickle.dumps(("error", RuntimeError(repr(exc))))
        os.write(w, data)
        os.close(w)
        os._exit(0)
    os.close(w)
    chunks = []
    end = time.monotonic() + timeout
    try:
        while True:
            ready, _, _ = select.select([r], [], [], max(0.0, end - time.monotonic()))
            if not ready:
                os.kill(pid, 9)
                raise AssertionError(f"child as {user.name} did not answer in {timeout} s")
            chunk = os.read(r, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(r)
        os.waitpid(pid, 0)
    status, value = pickle.loads(b"".join(chunks))
    if status == "error":
        raise value
    return value


def test_a_0666_queue_and_lock_are_shared_with_another_user(other: User, name: str) -> None:
    q = shmkit.Queue.create(name, capacity=4096, mode=0o666)
    lock = shmkit.Lock.create(name + "-l", mode=0o666)
    try:
        q.put(b"from root")

        def child() -> list[bytes]:
            with shmkit.Queue.open(name) as theirs:
                got = theirs.get(timeout=5)
                theirs.put(b"from " + str(os.geteuid()).encode())
            mine = shmkit.Lock.open(name + "-l")
            with mine.hold(timeout=5):
                pass
            mine.close()
            return [got]

        assert as_user(other, child) == [b"from root"]
        assert q.get(timeout=5) == f"from {other.uid}".encode()
        assert lock.acquire(timeout=5)
        lock.release()
    finally:
        q.unlink()
        q.close()
        lock.unlink()
        lock.close()


def test_a_0660_object_is_shared_through_its_group(other: User, name: str) -> None:
    os.setegid(other.shared_gid)  # objects made now belong to the shared group
    try:
        arr = shmkit.SharedArray.create(name, (4,), "int64", mode=0o660)
    finally:
        os.setegid(0)
    try:
        arr.array[:] = [1, 2, 3, 4]

        def child() -> int:
            with shmkit.SharedArray.open(name) as theirs:
                theirs.array[0] = 10
                return int(theirs.array.sum())

        assert as_user(other, child) == 19
        assert arr.array[0] == 10
    finally:
        arr.unlink()
        arr.close()


def test_a_private_object_stays_private(other: User, name: str) -> None:
    seg = shmkit.Segment.create(name, 64)  # default 0600
    try:

        def child() -> str:
            try:
                shmkit.Segment.open(name)
            except shmkit.PermissionDenied as exc:
                return str(exc)
            return "opened"

        text = as_user(other, child)
        assert "permission denied" in text and "mode 0o600" in text and "uid 0" in text, text
    finally:
        seg.unlink()
        seg.close()


def test_trust_uids_opens_another_users_private_object(other: User, name: str) -> None:
    def child() -> None:
        seg = shmkit.Segment.create(name, 64)  # 0600, owned by the other user
        seg.buf[:4] = b"mine"
        seg.close()

    as_user(other, child)
    try:
        # Root may open anything, so shmkit's own check is what refuses here.
        with pytest.raises(shmkit.ForeignOwner, match=f"trust_uids=\\[{other.uid}\\]"):
            shmkit.Segment.open(name)
        with shmkit.Segment.open(name, trust_uids=[other.uid]) as seg:
            assert bytes(seg.buf[:4]) == b"mine"
    finally:
        shmkit.Segment.remove(name)


def test_trust_uids_is_the_whole_list(other: User, name: str) -> None:
    def child() -> None:
        shmkit.Event.create(name, mode=0o666).close()

    as_user(other, child)
    try:
        with shmkit.Event.open(name) as ev:  # shared by its mode
            ev.set()
        with pytest.raises(shmkit.ForeignOwner, match="not among trust_uids=\\[\\]"):
            shmkit.Event.open(name, trust_uids=())
    finally:
        shmkit.Segment.remove(name)


def test_a_raw_posix_ipc_segment_opens_as_its_mode_allows(other: User, name: str) -> None:
    raw = "/" + name[-20:]
    shm = posix_ipc.SharedMemory(raw, posix_ipc.O_CREX, mode=0o644, size=4096)
    os.fchmod(shm.fd, 0o644)  # whatever the umask
    shm.close_fd()
    try:

        def child() -> list[Any]:
            out: list[Any] = []
            with shmkit.Segment.open(raw, readonly=True) as seg:
                out.append(seg.size)
            try:
                shmkit.Segment.open(raw)
            except shmkit.PermissionDenied:
                out.append("no write")
            return out

        assert as_user(other, child) == [4096, "no write"]
    finally:
        shm.unlink()


def test_ls_as_another_user_lists_shared_objects_and_calls_none_corrupt(
    other: User, name: str
) -> None:
    shared = shmkit.Queue.create(name, capacity=4096, mode=0o666)
    private = shmkit.Lock.create(name + "-p")
    try:

        def child() -> str:
            rows = {e.sysname: (e.name, e.kind, e.state) for e in registry.discover()}
            return json.dumps(rows)

        rows = json.loads(as_user(other, child))
        assert rows[_names.system_name(name)] == [name, "queue", "ready"]
        assert rows[_names.system_name(name + "-p")][2] == "foreign"
        assert all(state != "corrupt" for _, _, state in rows.values()), rows
    finally:
        shared.unlink()
        shared.close()
        private.unlink()
        private.close()


def test_info_as_root_describes_another_users_object(other: User, name: str) -> None:
    from shmkit import cli

    def child() -> None:
        shmkit.Lock.create(name).close()  # 0600, owned by the other user

    as_user(other, child)
    try:
        assert cli.main(["info", name, "--json"]) == 0
    finally:
        shmkit.Segment.remove(name)


def test_a_flock_lock_refuses_another_user_instead_of_excluding_nobody(
    other: User, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SHMKIT_MUTEX", "flock")  # the creator picks the backend
    lock = shmkit.Lock.create(name, mode=0o666)
    try:

        def child() -> str:
            try:
                shmkit.Lock.open(name)
            except shmkit.ForeignOwner as exc:
                return str(exc)
            return "opened"

        assert "flock files, private to each user" in as_user(other, child)
    finally:
        lock.unlink()
        lock.close()


def test_broadcast_and_latest_are_shared_by_mode(other: User, name: str) -> None:
    bc = shmkit.Broadcast.create(name, slot_size=64, slots=4, mode=0o666)
    pub = bc.publisher()
    latest = shmkit.Latest.create(name + "-l", size=16, mode=0o666)
    try:
        pub.publish(b"frame-1")
        latest.set(b"v1")

        def child() -> list[bytes]:
            with shmkit.subscribe(name, start="oldest") as sub:
                got = [bytes(sub.recv(timeout=5))]
            with shmkit.Latest.open(name + "-l") as lt:
                got.append(lt.get(timeout=5))
                lt.set(b"v2")
            return got

        assert as_user(other, child) == [b"frame-1", b"v1"]
        assert latest.get(timeout=5) == b"v2"
    finally:
        pub.close()
        bc.unlink()
        bc.close()
        latest.unlink()
        latest.close()
