"""Two "hosts" on one machine for tests and benchmarks: network namespaces joined by a veth pair.

Needs root and ``ip`` (iproute2). Each namespace gets one end of the veth
pair with an address in ``10.<a>.<b>.0/24`` and its loopback up; nothing
is routed anywhere else. ``/dev/shm`` stays shared between the namespaces,
so objects on the two "hosts" need different names (real hosts use the
same names).

    with TwoHosts.create() as hosts:
        hosts.run("a", ["python", "-m", "shmkit", "bridge", "--listen", hosts.url("a", 7700), ...])
        hosts.link(False)        # the cable is pulled: both ends go down
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Sequence
from typing import Any

from ..errors import ShmkitError

__all__ = ["TwoHosts", "unavailable"]


def _ip(*args: str, ns: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    cmd = ["ip", *args] if ns is None else ["ip", "netns", "exec", ns, "ip", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=check)


def unavailable() -> str | None:
    """Why two namespaces cannot be made here (None if they can): not root, no ``ip``, ..."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "the ip command (iproute2) is missing"
    probe = f"shmkprobe{uuid.uuid4().hex[:6]}"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"ip netns add failed: {made.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return None


class TwoHosts:
    """Namespaces ``a`` and ``b`` joined by a veth pair; ``close()`` removes them."""

    def __init__(self, tag: str, subnet: str) -> None:
        self.tag = tag
        self.ns = {"a": f"shmk{tag}a", "b": f"shmk{tag}b"}
        self.dev = {"a": f"vshm{tag}a", "b": f"vshm{tag}b"}
        self.addr = {"a": f"{subnet}.1", "b": f"{subnet}.2"}
        self._procs: list[subprocess.Popen[bytes]] = []

    @classmethod
    def create(cls) -> TwoHosts:
        """Make the namespaces and the link (ShmkitError if ``ip`` refuses)."""
        tag = uuid.uuid4().hex[:6]
        n = int(tag, 16)
        hosts = cls(tag, f"10.{200 + n % 50}.{(n >> 8) % 250}")
        try:
            for side in "ab":
                _ip("netns", "add", hosts.ns[side])
                _ip("link", "set", "lo", "up", ns=hosts.ns[side])
            _ip("link", "add", hosts.dev["a"], "type", "veth", "peer", "name", hosts.dev["b"])
            for side in "ab":
                _ip("link", "set", hosts.dev[side], "netns", hosts.ns[side])
                _ip(
                    "addr",
                    "add",
                    f"{hosts.addr[side]}/24",
                    "dev",
                    hosts.dev[side],
                    ns=hosts.ns[side],
                )
                _ip("link", "set", hosts.dev[side], "up", ns=hosts.ns[side])
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            hosts.close()
            raise ShmkitError(f"cannot make two hosts: {exc}") from None
        return hosts

    def url(self, side: str, port: int) -> str:
        return f"tcp://{self.addr[side]}:{port}"

    def run(self, side: str, argv: Sequence[str], **kw: Any) -> subprocess.Popen[bytes]:
        """Start ``argv`` inside namespace ``side``; ``close()`` kills it if still running."""
        proc = subprocess.Popen(["ip", "netns", "exec", self.ns[side], *argv], **kw)
        self._procs.append(proc)
        return proc

    def link(self, up: bool) -> None:
        """Set both ends of the veth pair up or down (a pulled cable)."""
        for side in "ab":
            _ip("link", "set", self.dev[side], "up" if up else "down", ns=self.ns[side])

    def close(self) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                proc.kill()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        for side in "ab":
            _ip("netns", "del", self.ns[side], check=False)  # takes the veth with it

    def __enter__(self) -> TwoHosts:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
