"""Mutation check: plant plausible bugs in critical lines, one at a time; the tests must fail.

    python scripts/mutation_check.py                 # the whole catalogue
    python scripts/mutation_check.py --only header-crc,lock-contended-no-mutex
    python scripts/mutation_check.py --list          # the catalogue (and whether it applies)

For each entry of :data:`CATALOGUE` (a file, an exact piece of its text, the
text that replaces it, and the tests that should notice) it copies the
repository (working tree, built extensions included) to a scratch
directory once, writes the mutated file there, rebuilds the native core if
the mutated file is C, runs the entry's tests against the scratch copy
(``PYTHONPATH=<scratch>/src``, a time limit per entry) and restores the file.
A mutation is *killed* if its tests fail (or time out), *survived* if they
pass. Before that, every distinct test selection is run once unmutated: it
must pass, or a "kill" would mean nothing.

The table at the end says which; the exit status is 1 if any mutation
survived or could not be applied (its old text is gone or not unique: update
the entry), else 0. Run it before changing validation, re-check, CRC, mode,
repair, mutual-exclusion or timeout code, and add an entry for each new
critical line. Entries for the C core (``src/shmkit/_core/*.c``) look the
same; the script rebuilds the extension in the scratch copy for them (see
:func:`rebuild`).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

from rich.console import Console
from rich.table import Table

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NATIVE_SUFFIXES = (".c", ".h", ".pyx", ".pxd")


@dataclass(frozen=True)
class Mutation:
    """One planted bug: replace ``old`` (exactly once in ``file``) by ``new``, run ``tests``."""

    id: str
    what: str  # the plausible bug, in words
    file: str  # relative to the repository root
    old: str
    new: str
    tests: tuple[str, ...]  # pytest arguments: paths, node ids, -k expressions

    @property
    def native(self) -> bool:
        return self.file.endswith(NATIVE_SUFFIXES)


Q = "src/shmkit/queue.py"
QR = "src/shmkit/_shm/queue_ring.py"
QP = "src/shmkit/_shm/queue_repair.py"
B = "src/shmkit/broadcast.py"
S = "src/shmkit/sync.py"
QC = "src/shmkit/_core/_queue.c"
SC = "src/shmkit/_core/_seqlock.c"
NC = "src/shmkit/_core/_native.c"
H = "src/shmkit/_core/shm.h"
CORRUPTION = ("tests/test_queue_corruption.py",)
QNATIVE = ("tests/test_queue_native.py",)
MID_COPY_B = ("tests/test_overwritten_mid_copy.py", "-k", "broadcast")
MID_COPY_L = ("tests/test_overwritten_mid_copy.py", "-k", "latest")
MODES = ("tests/test_modes.py",)
USERS = ("tests/test_users.py",)
TIMEOUTS = ("tests/test_timeouts.py", "-k", "not lock_")  # Lock: see issue 14's report
C_TIMEOUTS = (*TIMEOUTS, "tests/test_core.py::test_fence_and_timeout_contract")
T02 = ("tests/test_lock_crash_windows.py",)
LARGE = ("tests/test_queue_procs.py::test_large_messages_across_processes_reduced",)
PUT_KILLED = ("tests/test_queue_crash.py", "-k", "producer_killed_mid_put")

CATALOGUE: tuple[Mutation, ...] = (
    # ------------------------------------------------------------ record validation (T22)
    # The fast paths are C (_queue.c: front() for get/get_into, Ring_get_many);
    # the general path that skips and counts bad records is Python (queue_ring.py).
    Mutation(
        "queue-get-fast-check",
        "Queue get() fast path (C) takes any single record as valid (skips its check word)",
        QC,
        "    if (w1 == hcheck(w0, t->head, SALT)) {\n"
        "        if ((w0 >> 32) != (t->gets & M32) || len >= CLAIM_MIN) {",
        "    if (1) {\n        if ((w0 >> 32) != (t->gets & M32) || len >= CLAIM_MIN) {",
        CORRUPTION,
    ),
    Mutation(
        "queue-get-fast-batch-check",
        "Queue get() fast path (C) takes any record as a batch record (skips its check word)",
        QC,
        "    if (w1 != hcheck(w0, t->head, SALT_BATCH)) {\n        return -1;\n    }",
        "    if (0) {\n        return -1;\n    }",
        CORRUPTION,
    ),
    Mutation(
        "queue-get-many-fast-check",
        "Queue get_many() fast path (C) skips the check word of single records",
        QC,
        "if (w1 == hcheck(w0, pos, SALT) && (w0 >> 32) == (seq & M32)) {",
        "if ((w0 >> 32) == (seq & M32)) {",
        CORRUPTION,
    ),
    Mutation(
        "queue-get-many-fast-batch-check",
        "Queue get_many() fast path (C) takes any record as a batch record",
        QC,
        "        else if (w1 == hcheck(w0, pos, SALT_BATCH)) {",
        "        else if (1) {",
        CORRUPTION,
    ),
    Mutation(
        "queue-get-fast-len-bounds",
        "Queue get() fast path (C) trusts a record's length (no bounds check against the ring)",
        QC,
        "    if (rec > t->used || i + len > self->size - Q_HDR) {\n        return -1;\n    }",
        "    if (0) {\n        return -1;\n    }",
        (*QNATIVE, *CORRUPTION),
    ),
    Mutation(
        "queue-get-many-len-bounds",
        "Queue get_many() fast path (C) trusts a record's length (reads past tail)",
        QC,
        "        if (rec > end - pos) {\n            break;\n        }",
        "        if (0) {\n            break;\n        }",
        (*QNATIVE, *CORRUPTION),
    ),
    Mutation(
        "queue-put-wrap-bounds",
        "Queue put() fast path (C) writes a record that runs past the ring's end",
        QC,
        "    else if (i + rec > self->size) {\n        res = Q_GENERAL;",
        "    else if (0) {\n        res = Q_GENERAL;",
        QNATIVE,
    ),
    Mutation(
        "queue-take-batch-check",
        "Queue locked take path: the batch-record check never fails",
        QR,
        "(batch and check != _hcheck_batch(w0, pos))",
        "(batch and False)",
        CORRUPTION,
    ),
    Mutation(
        "queue-take-seq-check",
        "Queue locked take path ignores a record's sequence number",
        QR,
        "                or (skip and (not batch or pos != head))",
        "                or False",
        CORRUPTION,
    ),
    Mutation(
        "queue-skip-uncounted",
        "Queue skips a corrupt record without counting it",
        QR,
        "                    c[_W_CORRUPT] += ahead\n",
        "                    pass\n",
        CORRUPTION,
    ),
    # ------------------------------------------------------------ queue protocol
    Mutation(
        "queue-put-many-loop",
        "put_many publishes its items one by one (another producer's message lands between)",
        QC,
        "        if (plain && total <= UINT32_MAX &&\n",
        "        for (Py_ssize_t j = 0; plain && j < k; j++) {\n"
        "            ring_put(self, PyBytes_AS_STRING(items[j]),\n"
        "                     (uint64_t)PyBytes_GET_SIZE(items[j]), 1, NULL);\n"
        "        }\n"
        "        if (plain) {\n"
        "            Py_RETURN_NONE;\n"
        "        }\n"
        "        if (plain && total <= UINT32_MAX &&\n",
        (
            "tests/test_queue_procs.py::"
            "test_put_many_batches_arrive_contiguous_and_in_order_with_concurrent_producers",
        ),
    ),
    Mutation(
        "queue-put-publish-order",
        "Queue put() fast path (C) publishes tail before it counts puts (store order)",
        QC,
        "            wr(self, Q_PUTS, seq + count);\n"
        '            shm_crash("queue.put.counted");\n'
        "            /* release: publishes payload, header and puts; pairs with the\n"
        "             * acquire load of tail in the consumers' paths */\n"
        "            shm_store64(W(self, Q_TAIL), tail + rec);\n",
        "            shm_store64(W(self, Q_TAIL), tail + rec);\n"
        '            shm_crash("queue.put.counted");\n'
        "            wr(self, Q_PUTS, seq + count);\n",
        PUT_KILLED,
    ),
    Mutation(
        "queue-reserve-unmarked",
        "A large put's reservation is not marked: other producers write into its space",
        QR,
        "            c[_W_STATE] = st | _RESERVED\n",
        "            c[_W_STATE] = st\n",
        LARGE,
    ),
    Mutation(
        "queue-claim-unmarked",
        "A large get's claim is not marked: producers overwrite what is being copied out",
        QR,
        "                c[_W_STATE] |= _CLAIMED\n",
        "                pass\n",
        LARGE,
    ),
    # ------------------------------------------------------------ owner-died repair
    Mutation(
        "queue-recover-no-repair",
        "The next holder after a dead one does not repair the queue's counters",
        QP,
        "        self._repair()\n        self._r_repair_intent()",
        "        self._r_repair_intent()",
        PUT_KILLED,
    ),
    # ------------------------------------------------------------ Lock (_native.c)
    Mutation(
        "lock-owner-died-lost",
        "Lock.acquire does not report owner_died after a holder died inside",
        NC,
        "        died = 1;\n",
        "        died = 0;\n",
        T02,
    ),
    Mutation(
        "lock-no-poison",
        "Releasing after owner_died without mark_consistent() does not poison the lock",
        NC,
        "LockCore_release(self, self->owner_died ? Py_True : Py_False)",
        "LockCore_release(self, Py_False)",
        ("tests/test_sync.py::test_release_without_repair_poisons_the_lock",),
    ),
    Mutation(
        "lock-contended-no-mutex",
        "A contended Lock.acquire proceeds without the mutex",
        NC,
        "    int got = own_acquire(&self->own, &r->v, timeout, spin ? SPIN_TRIES : 0);\n"
        "    if (got == GOT_PYERR || got == SHM_BUSY) {",
        "    int got = own_acquire(&self->own, &r->v, 0, 0);\n"
        "    if (got == SHM_BUSY && timeout != 0) {\n"
        "        got = SHM_OK;\n"
        "    }\n"
        "    if (got == GOT_PYERR || got == SHM_BUSY) {",
        T02,
    ),
    Mutation(
        "lock-release-not-owner",
        "Lock.release from a thread that does not hold it is not refused (no NotOwner)",
        NC,
        '"owned by the thread that acquired it)");\n        return NULL;\n',
        '"owned by the thread that acquired it)");\n        PyErr_Clear();\n',
        ("tests/test_core.py::test_release_from_another_thread_raises_and_the_holder_still_can",),
    ),
    # ------------------------------------------------------------ seqlock re-checks (_seqlock.c)
    Mutation(
        "seqlock-recheck-passes",
        "The seqlock re-check (sl_still) always passes: Latest and Broadcast readers alike",
        SC,
        "    return shm_relaxed64(slot + SL_SEQ) == seq;\n",
        "    return 1;\n",
        ("tests/test_overwritten_mid_copy.py",),
    ),
    Mutation(
        "broadcast-recv-recheck",
        "Broadcast recv()/recv_into() (fast and slow paths): the re-check after the copy passes",
        SC,
        "    if (!sl_still(slot, want, (size_t)len)) {",
        "    if (0) {",
        MID_COPY_B,
    ),
    Mutation(
        "broadcast-view-validate",
        "A zero-copy view is never found overwritten when it is validated",
        SC,
        "    if (!sl_still(slot, want, SHM_FENCE_MIN)) {\n        Py_RETURN_FALSE;\n    }",
        "    if (0) {\n        Py_RETURN_FALSE;\n    }",
        ("tests/test_broadcast.py", "-k", "view_valid_then_overwritten"),
    ),
    Mutation(
        "latest-read-recheck",
        "Latest reads (get, get_versioned, get_into, arrays): the tag re-check after the copy "
        "passes",
        SC,
        "    if (!sl_still(slot, want, (size_t)n)) {",
        "    if (0) {",
        MID_COPY_L,
    ),
    Mutation(
        "broadcast-asleep-never-woken",
        "A reader that frees room never wakes a back-pressured publisher asleep on progress "
        "(it waits out its 50 ms slice)",
        SC,
        "                RG_WW_ASLEEP) {\n                shm_futex_wake(w, INT_MAX);",
        "                RG_WW_ASLEEP + 1) {\n                shm_futex_wake(w, INT_MAX);",
        ("tests/test_broadcast_waits.py", "-k", "asleep"),
    ),
    Mutation(
        "broadcast-scan-waits-for-the-dead",
        "The C cursor scan waits for a dead tethered subscriber",
        SC,
        "            if (!rg_entry_alive((int)fd,",
        "            if (0 && !rg_entry_alive((int)fd,",
        ("tests/test_broadcast_waits.py", "-k", "scan"),
    ),
    # ------------------------------------------------------------ bounds (shm.h)
    Mutation(
        "shm-check-bounds",
        "shm_check no longer bounds an offset + length against the mapping",
        H,
        "    if (off < 0 || n < 0 || off > (long long)v->len || n > (long long)v->len - off) {",
        "    if (off < 0 || n < 0) {",
        ("tests/test_core.py::test_every_access_is_bounds_checked",),
    ),
    # ------------------------------------------------------------ header CRC
    Mutation(
        "header-crc",
        "The header CRC check is removed",
        "src/shmkit/_layout.py",
        "    if _crc(buf[:attach_off]) != crc:",
        "    if False:",
        (
            "tests/property/test_header_crc_live.py",
            "tests/property/test_header_fuzz.py::test_every_crc_covered_byte_mutation_is_rejected",
        ),
    ),
    # ------------------------------------------------------------ modes
    Mutation(
        "sem-world-writable",
        "Semaphores are created world-writable (0666)",
        "src/shmkit/_sysobj.py",
        '"sem." + sysname.lstrip("/")), mode)',
        '"sem." + sysname.lstrip("/")), 0o666)',
        MODES,
    ),
    Mutation(
        "sem-mode-umask",
        "Semaphore modes are left to sem_open and the umask (the Event 0660 -> 0640 defect)",
        "src/shmkit/_sysobj.py",
        '        os.chmod(os.path.join(_platform.SHM_DIR, "sem." + sysname.lstrip("/")), mode)\n',
        "        pass\n",
        MODES,
    ),
    Mutation(
        "segment-mode-umask",
        "The segment file keeps the mode sem_open/shm_open made of it (no fchmod)",
        "src/shmkit/segment.py",
        "            os.fchmod(fd, mode)  # exact mode: umask can only narrow, never widen\n",
        "            pass\n",
        MODES,
    ),
    # ------------------------------------------------------------ other users (#10 item 6)
    Mutation(
        "owner-any-mode",
        "Another user's object is accepted whatever its mode (no opt-in needed)",
        "src/shmkit/_opening.py",
        "    if _admits(st, readonly):\n        return\n    raise ForeignOwner(",
        "    if True:\n        return\n    raise ForeignOwner(",
        USERS,
    ),
    Mutation(
        "owner-trust-list-widened",
        "trust_uids no longer limits whose widely shared objects are accepted",
        "src/shmkit/_opening.py",
        "        if uid in trusted:\n",
        "        if uid in trusted or _admits(st, readonly):\n",
        USERS,
    ),
    # ------------------------------------------------------------ timeout validation
    Mutation(
        "timeout-semaphore-late",
        "Semaphore.acquire validates its timeout only after the fast path (the -1 -> True defect)",
        S,
        "        timeout = _wait.check_timeout(timeout)  # before any system call, free or busy\n",
        "",
        TIMEOUTS,
    ),
    Mutation(
        "timeout-nan",
        "NaN is accepted as a timeout (Python check)",
        "src/shmkit/_wait.py",
        "    if math.isnan(value) or value < 0:",
        "    if value < 0:",
        TIMEOUTS,
    ),
    Mutation(
        "timeout-bool",
        "True is accepted as a timeout (a bool is an int; Python check)",
        "src/shmkit/_wait.py",
        "    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):",
        "    if not isinstance(timeout, (int, float)):",
        TIMEOUTS,
    ),
    Mutation(
        "timeout-nan-c",
        "NaN is accepted as a timeout (C check, shm_parse_timeout)",
        H,
        "    if (isnan(t) || t < 0) {",
        "    if (t < 0) {",
        C_TIMEOUTS,
    ),
    Mutation(
        "timeout-bool-c",
        "True is accepted as a timeout (C check, shm_parse_timeout)",
        H,
        "    if (PyBool_Check(obj) || !(PyFloat_Check(obj) || PyLong_Check(obj))) {",
        "    if (!(PyFloat_Check(obj) || PyLong_Check(obj))) {",
        C_TIMEOUTS,
    ),
    Mutation(
        "timeout-queue-get",
        "Queue.get validates its timeout only when it has to wait",
        QC,
        '    if (parse_args("get", args, nargs, kwnames, names, 2, 0, a) ||\n'
        "        block_timeout(a[0], a[1], &t)) {\n"
        "        return NULL;\n"
        "    }\n",
        '    if (parse_args("get", args, nargs, kwnames, names, 2, 0, a)) {\n'
        "        return NULL;\n"
        "    }\n"
        "    int st0;\n"
        "    PyObject *b0 = ring_ready(self) ? NULL : get_fast(self, &st0);\n"
        "    if (b0 != NULL) {\n"
        "        return decoded(self, b0);\n"
        "    }\n"
        "    PyErr_Clear();\n"
        "    if (block_timeout(a[0], a[1], &t)) {\n"
        "        return NULL;\n"
        "    }\n",
        TIMEOUTS,
    ),
    Mutation(
        "timeout-broadcast-publish",
        "Broadcast.publish validates its timeout only when back-pressure makes it wait",
        B,
        "            timeout = _wait.check_timeout(timeout)"
        "  # ints, NaN, negatives: the slow check\n"
        "        if self._closed or self._loan is not None:",
        "            pass\n        if self._closed or self._loan is not None:",
        TIMEOUTS,
    ),
    Mutation(
        "timeout-latest-get",
        "Latest.get (C) validates its timeout only when it has to retry",
        SC,
        "    if (shm_parse_timeout(timeout, &t) || lt_ready(self)) {\n"
        "        return NULL; /* a bad timeout is refused before anything is read */",
        "    if (lt_ready(self)) {\n"
        "        return NULL; /* a bad timeout is refused before anything is read */",
        TIMEOUTS,
    ),
    Mutation(
        "queue-head-hint-trusted-when-full",
        "a put trusts its head hint even when the hint shows no room (never re-reads head)",
        QC,
        "    if (used > self->size - rec) {\n        /* acquire: pairs with the consumer's",
        "    if (0) {\n        /* acquire: pairs with the consumer's",
        ("tests/test_queue_native.py", "tests/test_queue.py"),
    ),
    Mutation(
        "subscriber-spin-ignored",
        "a subscriber's own spin budget (Subscriber.spin) is not what its wait spins",
        SC,
        "                        : spin == RG_SPIN_FIXED  ? self->fixed_spin",
        "                        : spin == RG_SPIN_FIXED  ? SL_SPIN",
        ("tests/test_broadcast_waits.py::test_a_subscribers_spin_is_checked_pickled_and_used",),
    ),
    Mutation(
        "bridge-send-keeps-wakeup",
        "an export thread's send takes the listening socket's edge and does not pass it on",
        "src/shmkit/bridge/engine.py",
        "        if self.raw.getsockopt(zmq.EVENTS) & zmq.POLLIN:\n            try:",
        "        if False:\n            try:",
        ("tests/test_bridge.py::test_a_send_that_takes_the_listeners_wakeup_passes_it_on",),
    ),
)


# ------------------------------------------------------------------------------- running


def _ignore(directory: str, names: list[str]) -> set[str]:
    skip = {".git", ".venv", "__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache"}
    return {n for n in names if n in skip or n == ".hypothesis"}


def scratch_copy() -> str:
    """Copy the working tree (built extensions included) to a fresh temporary directory."""
    dest = os.path.join(tempfile.mkdtemp(prefix="shmkit-mutants-"), "repo")
    shutil.copytree(ROOT, dest, ignore=_ignore, symlinks=True)
    return dest


def rebuild(scratch: str) -> tuple[bool, str]:
    """Rebuild the native core in place in ``scratch`` (after a C file changed).

    In place, because the tests import ``shmkit`` from ``<scratch>/src``: a
    ``pip install -e`` there would re-point the shared environment instead.
    ``build_ext`` rebuilds only the extensions whose sources (or ``shm.h``)
    are newer than their ``.so``: the one mutated, then the one restored.
    Without ``SHMKIT_WERROR``, so a mutation that leaves a variable unused
    still compiles. ``setup.py`` needs this environment's setuptools to read
    pyproject.toml (>= 77, in the ``test`` extra).
    """
    if not os.path.exists(os.path.join(scratch, "setup.py")):
        return False, "no setup.py: add the native core's in-place build command to rebuild()"
    cmd = [sys.executable, "setup.py", "-q", "build_ext", "--inplace"]
    env = {k: v for k, v in os.environ.items() if k not in ("SHMKIT_WERROR", "SHMKIT_SANITIZE")}
    proc = subprocess.run(cmd, cwd=scratch, env=env, capture_output=True, text=True, check=False)
    return proc.returncode == 0, (proc.stdout + proc.stderr)[-2000:]


def run_tests(scratch: str, tests: tuple[str, ...], timeout: float) -> tuple[str, float, str]:
    """Run pytest on ``tests`` in ``scratch``: (passed|failed|timeout|error, seconds, tail)."""
    env = dict(os.environ, PYTHONPATH=os.path.join(scratch, "src"))
    env.pop("SHMKIT_CRASH_AT", None)
    env.pop("SHMKIT_STOP_AT", None)
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "--no-header", "-p", "no:cacheprovider"]
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [*cmd, *tests],
        cwd=scratch,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # a timeout takes the test's children with it
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        return "timeout", time.monotonic() - t0, out[-1500:]
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    seconds = time.monotonic() - t0
    # A test process killed by a signal (SIGSEGV from an unchecked offset) failed.
    status = "crashed" if proc.returncode < 0 else "error"
    status = {0: "passed", 1: "failed"}.get(proc.returncode, status)
    return status, seconds, out[-1500:]


def check_applicable(m: Mutation) -> str | None:
    """None if ``m.old`` occurs exactly once in its file, else why not."""
    path = os.path.join(ROOT, m.file)
    if not os.path.exists(path):
        return f"{m.file} does not exist"
    with open(path) as f:
        count = f.read().count(m.old)
    return None if count == 1 else f"old text found {count} times in {m.file}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", help="comma-separated mutation ids")
    parser.add_argument("--list", action="store_true", help="list the catalogue and stop")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per test run")
    parser.add_argument("--no-baseline", action="store_true", help="skip the unmutated runs")
    parser.add_argument("--keep", action="store_true", help="keep the scratch copy")
    parser.add_argument("--verbose", action="store_true", help="print each run's output tail")
    args = parser.parse_args(argv)
    console = Console()
    catalogue = list(CATALOGUE)
    if args.only:
        wanted = set(args.only.split(","))
        unknown = wanted - {m.id for m in catalogue}
        if unknown:
            parser.error(f"unknown mutation ids: {sorted(unknown)}")
        catalogue = [m for m in catalogue if m.id in wanted]
    if args.list:
        table = Table(title="mutation catalogue")
        for col in ("id", "bug", "file", "applies"):
            table.add_column(col)
        for m in catalogue:
            table.add_row(m.id, m.what, m.file, check_applicable(m) or "yes")
        console.print(table)
        return 0

    scratch = scratch_copy()
    console.print(f"scratch copy: {scratch}")
    results: list[tuple[Mutation, str, float, str]] = []
    try:
        if any(m.native for m in catalogue):
            ok, log = rebuild(scratch)  # the build must work before any C mutation
            if not ok:
                console.print(log)
                console.print("[red]cannot rebuild the native core in the scratch copy[/red]")
                return 1
        if not args.no_baseline:
            for tests in dict.fromkeys(m.tests for m in catalogue):
                status, seconds, tail = run_tests(scratch, tests, args.timeout)
                console.print(f"baseline {' '.join(tests)}: {status} ({seconds:.1f} s)")
                if status != "passed":
                    console.print(tail)
                    console.print("[red]the unmutated tests must pass first[/red]")
                    return 1
        for m in catalogue:
            why = check_applicable(m)
            if why is not None:
                results.append((m, "error", 0.0, why))
                continue
            path = os.path.join(scratch, m.file)
            with open(path) as f:
                original = f.read()
            try:
                with open(path, "w") as f:
                    f.write(original.replace(m.old, m.new, 1))
                if m.native:
                    ok, log = rebuild(scratch)
                    if not ok:
                        results.append((m, "error", 0.0, "rebuild failed: " + log))
                        continue
                status, seconds, tail = run_tests(scratch, m.tests, args.timeout)
            finally:
                with open(path, "w") as f:
                    f.write(original)
                if m.native:
                    ok, log = rebuild(scratch)
                    if not ok:  # every later entry would test a mutant
                        raise RuntimeError(f"rebuild after restoring {m.file} failed: {log}")
            verdict = {
                "failed": "killed",
                "timeout": "killed (timeout)",
                "crashed": "killed (crash)",
                "passed": "survived",
            }
            results.append((m, verdict.get(status, "error"), seconds, tail))
            colour = "green" if status in ("failed", "timeout", "crashed") else "red"
            console.print(f"[{colour}]{m.id}: {verdict.get(status, 'error')}[/{colour}]")
            if args.verbose or status not in ("failed", "timeout", "crashed", "passed"):
                console.print(tail)
    finally:
        if not args.keep:
            shutil.rmtree(os.path.dirname(scratch), ignore_errors=True)

    table = Table(title="mutation check")
    for col in ("mutation", "planted bug", "file", "tests", "result", "s"):
        table.add_column(col)
    for m, verdict, seconds, _ in results:
        colour = "green" if verdict.startswith("killed") else "red"
        table.add_row(
            m.id,
            m.what,
            m.file.removeprefix("src/shmkit/"),
            " ".join(m.tests).replace("tests/", ""),
            f"[{colour}]{verdict}[/{colour}]",
            f"{seconds:.0f}",
        )
    console.print(table)
    bad = [m.id for m, verdict, _, _ in results if not verdict.startswith("killed")]
    killed = len(results) - len(bad)
    console.print(f"{killed} of {len(results)} killed" + (f"; not killed: {bad}" if bad else ""))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
