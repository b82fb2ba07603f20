"""Run the ```python blocks of a Markdown file as the programs the text describes.

Convention (HTML comments, invisible on GitHub), written just before a block:

- ``<!-- snippet: program NAME -->``: the block runs in the program (process)
  called NAME. Blocks without it run in the program ``main``. Every program
  keeps its variables from one of its blocks to the next, and blocks run in
  the order of the file, so "one program creates, another program opens,
  then the first cleans up" is three blocks in two programs.
- ``<!-- snippet: skip REASON -->``: the block is not run (say why).
- A hidden block of setup code, run in the block's program just before it
  (stand-ins such as ``camera_frame = np.zeros(...)``, or a raw segment that
  "plain posix_ipc code" made)::

      <!-- snippet-setup
      camera_frame = np.zeros((1080, 1920, 3), np.uint8)
      -->

Each program is a fresh interpreter in a scratch directory. Where the test
may (root with ``unshare``/``nsenter``), all programs of a file share a
private, empty tmpfs on ``/dev/shm`` that vanishes with the run, so the
documentation's fixed names ("jobs", "frames") never meet another run's or
the machine's; elsewhere they use the real ``/dev/shm`` and the caller
cleans up (:func:`names_in`).
"""

from __future__ import annotations

import json
import os
import re
import select
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass, field

from .helpers import ROOT

_FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>[\w+-]*)\s*$")
_NOTE = re.compile(r"^\s*<!--\s*snippet:\s*(?P<verb>program|skip)\b\s*(?P<arg>.*?)\s*-->\s*$")
_SETUP = re.compile(r"^\s*<!--\s*snippet-setup\s*$")

#: Seconds one block may run.
BLOCK_TIMEOUT = 60.0

_SERVER = r"""
import json, os, sys, traceback
replies = os.fdopen(int(sys.argv[1]), "w")
ns = {"__name__": "__main__"}
for line in sys.stdin:
    msg = json.loads(line)
    try:
        exec(compile(msg["code"], msg["where"], "exec"), ns)
        reply = {"ok": True}
    except BaseException:
        reply = {"ok": False, "error": traceback.format_exc(limit=-6)}
    sys.stdout.flush(); sys.stderr.flush()
    replies.write(json.dumps(reply) + "\n")
    replies.flush()
"""


@dataclass
class Block:
    """One ```python block and what its annotations say."""

    path: str
    line: int  # 1-based line of the opening fence
    code: str
    program: str = "main"
    skip: str = ""
    setup: str = ""
    where: str = field(init=False)

    def __post_init__(self) -> None:
        self.where = f"{os.path.relpath(self.path, ROOT)}:{self.line}"


def parse(path: str) -> list[Block]:
    """The python blocks of ``path`` with their annotations; ValueError on a dangling one."""
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    blocks: list[Block] = []
    program, skip, setup, note_line = "main", "", "", 0
    i = 0
    while i < len(lines):
        line = lines[i]
        note = _NOTE.match(line)
        if note:
            if note["verb"] == "program":
                program = note["arg"] or "main"
            else:
                skip = note["arg"] or "skipped"
            note_line = note_line or i + 1
            i += 1
            continue
        if _SETUP.match(line):
            end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "-->")
            setup = textwrap.dedent("\n".join(lines[i + 1 : end]))
            note_line = note_line or i + 1
            i = end + 1
            continue
        fence = _FENCE.match(line)
        if fence and fence["lang"]:
            indent = fence["indent"]
            end = i + 1
            while not lines[end].strip().startswith("```"):
                end += 1
            body = [x[len(indent) :] if x.startswith(indent) else x for x in lines[i + 1 : end]]
            if fence["lang"] == "python":
                blocks.append(Block(path, i + 1, "\n".join(body) + "\n", program, skip, setup))
            program, skip, setup, note_line = "main", "", "", 0
            i = end + 1
            continue
        if line.strip() and note_line:
            raise ValueError(f"{path}:{note_line}: snippet annotation not followed by a block")
        i += 1
    if note_line:
        raise ValueError(f"{path}:{note_line}: snippet annotation at the end of the file")
    return blocks


class Program:
    """A persistent interpreter that executes blocks sent to it, in one namespace."""

    def __init__(self, name: str, cwd: str, prefix: list[str]) -> None:
        self.name = name
        self.log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - closed in stop()
        read_fd, write_fd = os.pipe()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.path.join(ROOT, "src") + os.pathsep + ROOT
        self.proc = subprocess.Popen(
            [*prefix, sys.executable, "-c", _SERVER, str(write_fd)],
            stdin=subprocess.PIPE,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=cwd,
            env=env,
            pass_fds=(write_fd,),
        )
        os.close(write_fd)
        self.replies = os.fdopen(read_fd, "r")

    def run(self, code: str, where: str) -> str | None:
        """Execute ``code``; None if it ran, else the error text (with the program's output)."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"code": code, "where": where}) + "\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.replies], [], [], BLOCK_TIMEOUT)
        line = self.replies.readline() if ready else ""
        if not line:
            self.stop()
            return f"no answer within {BLOCK_TIMEOUT} s (or the program died)\n{self.output()}"
        reply = json.loads(line)
        if reply["ok"]:
            return None
        return f"{reply['error']}\n--- output of program {self.name!r}:\n{self.output()}"

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read()[-3000:]

    def stop(self) -> None:
        """End the program (EOF first, then SIGKILL) and reap it."""
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(30)
        self.replies.close()
        self.log.close()


class Sandbox:
    """A mount namespace with its own empty tmpfs on /dev/shm, held by a sleeping process."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[str] | None = None
        if os.geteuid() != 0 or not (shutil.which("unshare") and shutil.which("nsenter")):
            return
        script = "mount -t tmpfs -o size=1g,mode=1777 shm /dev/shm && echo ready && exec sleep 600"
        proc = subprocess.Popen(
            ["unshare", "-m", "--propagation", "private", "sh", "-c", script],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        if ready and proc.stdout.readline().strip() == "ready":
            self.proc = proc  # unshare and sh exec in place: proc.pid holds the namespace
        else:
            proc.kill()
            proc.communicate(timeout=30)

    @property
    def prefix(self) -> list[str]:
        """Argv prefix that runs a command inside the sandbox (empty: no sandbox)."""
        return [] if self.proc is None else ["nsenter", "-t", str(self.proc.pid), "-m", "--"]

    def close(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.communicate(timeout=30)  # reaps it and closes its stdout


def run_file(path: str, *, sandbox: bool = True) -> list[str]:
    """Run every block of ``path``; return one failure message per failing block."""
    failures: list[str] = []
    programs: dict[str, Program] = {}
    box = Sandbox() if sandbox else None
    prefix = box.prefix if box is not None else []
    with tempfile.TemporaryDirectory() as cwd:
        try:
            for block in parse(path):
                if block.skip:
                    continue
                prog = programs.get(block.program)
                if prog is None:
                    prog = programs[block.program] = Program(block.program, cwd, prefix)
                if block.setup:
                    error = prog.run(block.setup, f"{block.where} (snippet-setup)")
                    if error:
                        failures.append(f"{block.where} setup failed:\n{error}")
                        break
                error = prog.run(block.code, block.where)
                if error:
                    failures.append(f"{block.where} (program {block.program!r}) failed:\n{error}")
                    break  # later blocks depend on this one
        finally:
            start = time.monotonic()
            for prog in programs.values():
                prog.stop()
            if box is not None:
                box.close()
            assert time.monotonic() - start < 120
    return failures


def names_in(path: str) -> set[str]:
    """String literals of ``path`` that could be object names (for cleaning up)."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    return set(re.findall(r"""["'](/?[A-Za-z0-9][A-Za-z0-9._-]{0,60})["']""", text))
