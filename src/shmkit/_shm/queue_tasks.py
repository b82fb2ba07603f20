"""The Queue's tasks across processes: ``task_done()`` and ``join()`` (mixed into Queue).

``multiprocessing.JoinableQueue`` semantics between unrelated processes. The
counters live in the segment (layout and ordering: "Tasks" in
``queue_ring.py``): every put adds to ``puts``, every take adds to the
taking handle's attach-slot word ``taken``, every ``task_done()`` to a
``done`` word, so ``unfinished = puts - finished`` is one subtraction and a
sum. ``task_done()`` is C (``QueueCore.task_done``); ``join()`` sleeps on a
futex word in slices, and between slices settles consumers that died (or
closed) holding messages they never marked done, so it never waits for a
process that is gone.
"""

from __future__ import annotations

import math

from .. import _wait
from .queue_general import GeneralPaths
from .queue_ring import _REAP_EVERY, _SLOTS, _W_DONE, _W_TAKEN, _mono

__all__ = ["Tasks"]

#: join() looks for consumers that died holding unfinished tasks this often.
_JOIN_CHECK: float = _wait.SLICE


class Tasks(GeneralPaths):
    """task_done/join and the settling of gone consumers' tasks."""

    __slots__ = ()

    @property
    def unfinished_tasks(self) -> int:
        """Messages put and not yet marked done with :meth:`task_done` (a snapshot).

        The same count as ``queue.Queue.unfinished_tasks``, across every
        process: messages still queued plus those taken and in progress.
        """
        return self._r_unfinished()

    def join(self, timeout: float | None = None) -> bool:
        """Block until every message put so far has been marked done, in any process.

        Like ``queue.Queue.join()`` (and ``multiprocessing.JoinableQueue``),
        plus the one timeout every shmkit wait takes; it answers like
        ``threading.Event.wait``: True once nothing is unfinished, False when
        ``timeout`` ran out first (``timeout=0`` checks once, None waits
        forever). Wakes within microseconds of the last ``task_done()``.

        A consumer that dies (or closes its handle) before marking the
        messages it took done never keeps ``join()`` waiting: within one
        slice (50 ms) of its death the waiting joiner counts those tasks as
        done (``statistics().abandoned_tasks``). See docs/guarantees.md.

        Raises:
            Closed: this handle is closed.
            TypeError, ValueError: a bad timeout.
        """
        t = _wait.check_timeout(timeout)
        end = math.inf if t is None else _mono() + t
        while True:
            left = end - _mono()
            if self._r_join_sleep(max(0.0, min(left, _JOIN_CHECK))):
                return True
            self._check_open()
            if self._gone_consumers() or _mono() - self._last_reap >= _REAP_EVERY:
                # Under both locks: a consumer that died holding C (mid-take) is
                # repaired first, then gone slots are settled.
                self._run_locked(_mono() + _wait.SLICE, self._reap_waiters)
                if self._r_unfinished() == 0:
                    return True
            if _mono() >= end:
                return False

    def _settle_own(self, deadline: float) -> None:
        """Settle this handle's slot: at open (a dead predecessor's leftovers) or at close.

        Its unfinished tasks count as done (the handle can no longer mark
        them). Skipped for a handle inherited through fork (its slot is the
        parent's), and when the locks stay busy until ``deadline``.
        """
        slot = self._wslot
        seg = self._seg
        if slot >= _SLOTS or seg is None or getattr(seg, "_slot", -1) != slot:
            return
        c = self._c
        if c[_W_TAKEN + slot] != c[_W_DONE + slot]:
            self._run_locked(deadline, lambda: self._r_settle(slot))
