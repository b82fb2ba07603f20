"""The Queue's locking, waiting and repair (mixed into ``shmkit.queue.Queue``).

Both locks are taken and released through single C calls (``Ring.lock`` and
``Ring.unlock``) that record a dead holder, or a critical section an exception
split, as "repair due" in shared memory before Python regains control; the
next holder of both locks repairs (``_recover``). Waiting: a bounded C spin,
then a futex word in the segment, in slices (see ``_wait``). Large messages
are reserved or claimed under the lock and copied outside it.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from .. import _process, _wait
from .._mutex import BUSY, Mutex
from ..errors import Closed, Empty, Full
from .queue_liveness import _Claim, _Reservation
from .queue_ring import (
    _AGAIN,
    _ARMED,
    _BUSY,
    _CALM,
    _CLAIMED,
    _CLEAN_EXIT,
    _GETW_MASK,
    _GW,
    _GWM,
    _HDR,
    _M31,
    _M32,
    _M64,
    _NOLOCK,
    _PUTW_ONE,
    _REAP_EVERY,
    _REPAIR,
    _RESERVED,
    _SALT,
    _SHUT,
    _SLOTS,
    _SPIN_MAX,
    _W_CLAIM,
    _W_CLAIM_PID,
    _W_DONE,
    _W_GETS,
    _W_HEAD,
    _W_PDIED,
    _W_PUTS,
    _W_RECOV,
    _W_RES_PID,
    _W_RING,
    _W_STATE,
    _W_TAIL,
    _W_TAKEN,
    _W_WAITERS,
    RingProtocol,
    _mono,
    _NoLock,
    _qcrash,
)

__all__ = ["LockAndWait"]

T2 = TypeVar("T2")


def _deadline(timeout: float | None) -> float:
    """The latest a blocking call may run (monotonic): its timeout plus one slice."""
    return math.inf if timeout is None else _mono() + timeout + _wait.SLICE


class LockAndWait(RingProtocol):
    """Both locks, the waits, repair, and the large-message reservations and claims."""

    __slots__ = ("_last_reap", "_slot_clean")
    _last_reap: float
    _slot_clean: bool
    _mutex: Mutex
    _pmutex: Mutex
    _pthread: bool
    _two: bool
    _wslot: int

    def _poll(self, putter: bool, need: int, seconds: float) -> bool:
        """Spin (in C, no lock) up to ``seconds`` until a put or get may succeed.

        A spinner that finds itself descheduled stops at once and spins no
        more for a while: on a loaded machine spinning takes the core the peer
        needs to answer.
        """
        if _mono() < self._calm_until:
            return False
        r = self._r_poll(putter, need, seconds)
        if r < 0:
            self._calm_until = _mono() + _CALM
            self._spin_now = self._spin
        return r > 0

    def _locked_cleanup(
        self, fn: Callable[[], T2], end: float
    ) -> tuple[T2 | _NoLock, BaseException | None]:
        """Run ``fn`` under the lock by ``end`` to end our reservation or claim, through a Ctrl-C.

        ``end`` is the caller's deadline plus one slice (a blocking call
        returns within its timeout plus one slice, even when a lock holder
        is stopped). A Ctrl-C while waiting gives the lock at most one more
        second. When the lock stays busy, the reservation or claim stays
        marked and this handle drops it at its next locked call (``Ring.lock``
        does), or others release it once this process is dead.
        """
        interrupted: BaseException | None = None
        while True:
            try:
                return self._run_locked(end, fn), interrupted
            except KeyboardInterrupt as exc:
                if interrupted is not None:
                    return _NOLOCK, interrupted
                interrupted = exc
                end = min(end, _mono() + 1.0)

    def _check_claim(self) -> None:
        """A waiter: is a claim or reservation in the way held by a dead process?"""
        if self._c[_W_STATE] & (_CLAIMED | _RESERVED):
            self._run_locked(_mono() + 0.001, self._reclaim_dead)

    def _can_get(self) -> bool:
        c = self._c
        return bool(c[_W_TAIL] != c[_W_HEAD] or c[_W_STATE] & _SHUT)

    def _wait(
        self,
        attempt: Callable[[], object],
        ready: Callable[[], bool],
        timeout: float | None,
        *,
        putter: bool,
        spin: float,
        need: int,
    ) -> object:
        """Run ``attempt`` under the lock until it succeeds or ``timeout`` runs out.

        Polls ``ready`` without the lock for ``spin`` seconds, then registers
        as a waiter (in the same critical section as a last attempt, so no
        wake-up is lost) and sleeps on the semaphore in slices of at most
        ``_wait.SLICE``. Returns attempt's result; raises Full/Empty on timeout.
        """
        self._check_open()
        start = _mono()
        end = math.inf if timeout is None else start + timeout
        # A busy lock is waited for at least one slice even by *_nowait calls:
        # its holder normally releases it within microseconds.
        lock_end = max(end, start + _wait.SLICE)
        if ready():
            r = self._run_locked(lock_end, attempt)
            if r is _NOLOCK:
                raise self._timeout_error(putter, timeout, need, busy=True)
            if r is not _AGAIN:
                return r
        if spin and timeout != 0 and self._poll(putter, need, min(spin, end - start)):
            r = self._run_locked(lock_end, attempt)
            if r is _NOLOCK:
                raise self._timeout_error(putter, timeout, need, busy=True)
            if r is not _AGAIN:
                return r
        if timeout == 0 or _mono() >= end:
            raise self._timeout_error(putter, timeout, need)
        # The last attempt and the registration as a waiter share one critical
        # section, and so does the read of the futex word we then sleep on: a
        # waker that changes the queue after us sees us counted and bumps it.
        wake_value = 0

        def attempt_or_register() -> object:
            nonlocal wake_value
            r = attempt()
            if r is _AGAIN:
                self._register(putter, 1)
                wake_value = self._r_wake_value(putter)
            return r

        r = self._run_locked(lock_end, attempt_or_register)
        if r is _NOLOCK:
            raise self._timeout_error(putter, timeout, need, busy=True)
        if r is not _AGAIN:
            return r
        registered = True
        slept = _mono()

        def attempt_and_leave() -> object:
            nonlocal registered, wake_value
            r = attempt()
            if r is _AGAIN:
                wake_value = self._r_wake_value(putter)
            else:
                self._register(putter, -1)
                registered = False
            return r

        try:
            while True:
                remaining = end - _mono()
                if remaining <= 0:
                    break
                woken = self._r_sleep(putter, wake_value, min(remaining, _wait.SLICE))
                self._check_open()
                if not ready():
                    if not woken:
                        self._check_claim()
                        if _mono() - self._last_reap > _REAP_EVERY:
                            self._reap_soon()
                    else:
                        wake_value = self._r_wake_value(putter)
                    continue
                r = self._run_locked(max(end, _mono() + _wait.SLICE), attempt_and_leave)
                if r is not _AGAIN and r is not _NOLOCK:
                    self._adapt_spin(_mono() - slept)
                    return r
        finally:
            if registered and self._seg is not None:
                self._run_locked(_mono() + 1.0, lambda: self._register(putter, -1))
        self._adapt_spin(math.inf)
        raise self._timeout_error(putter, timeout, need)

    def _run_locked(self, end: float, fn: Callable[[], T2]) -> T2 | _NoLock:
        """``fn()`` holding both locks (taken by ``end``), or _NOLOCK if they stayed busy.

        The locks are released in a ``finally`` by one C call. An exception
        other than a deliberate one (Closed, LayoutError, MessageTooLarge: the
        queue is left consistent) marks the repair due, as a death does: it may
        have split the critical section.
        """
        bad = True
        try:
            if not self._lock_until(end):
                bad = False
                return _NOLOCK
            r = fn()
            bad = False
            return r
        except _CLEAN_EXIT:
            bad = False
            raise
        finally:
            self._r_unlock(bad)

    def _adapt_spin(self, waited: float) -> None:
        """After sleeping ``waited`` seconds: spin longer if the peer was just slow to answer.

        Two processes handing messages back and forth otherwise settle into
        both sleeping, each wake-up costing tens of microseconds, once one
        hiccup outlasted the spin. A long wait means the queue was idle:
        back to the base budget.
        """
        base = self._spin
        if not base:
            return
        cap = max(base, _SPIN_MAX)
        if waited <= cap:
            self._spin_now = min(self._spin_now * 2, cap)
        else:
            self._spin_now = base

    def _timeout_error(
        self, putter: bool, timeout: float | None, need: int, busy: bool = False
    ) -> Exception:
        after = "" if not timeout else f" after {timeout:g} s"
        if busy:
            why = (
                f"queue {self._name!r}: its lock stayed held{after} "
                "(a participant is stopped or very slow)"
            )
            return Full(why) if putter else Empty(why)
        if putter:
            return Full(f"queue {self._name!r} has no room for {need} bytes{after}")
        return Empty(f"queue {self._name!r} is empty{after}")

    def _register(self, putter: bool, delta: int) -> None:
        """Add ``delta`` to this handle's waiter count (lock held); refresh the totals."""
        c = self._c
        w = _W_WAITERS + self._wslot
        if not self._slot_clean:
            # A slot's word may still count waiters of a dead process that had it.
            self._slot_clean = True
            if self._wslot < _SLOTS:
                c[w] = 0
                self._sum_waiters()
        e = c[w]
        g, p = e & _M32, e >> 32
        st = c[_W_STATE]
        sg, sp = (st >> _GW) & _GWM, (st >> 32) & _M31
        # The slot word and the total change together; a death between the two
        # stores is fixed by _recover, which sums the slot words again.
        if putter:
            p = min(max(p + delta, 0), _M31)
            sp = min(max(sp + delta, 0), _M31)
        else:
            g = min(max(g + delta, 0), _M31)
            sg = min(max(sg + delta, 0), _GWM)
        c[w] = g | p << 32
        c[_W_STATE] = (st & _BUSY) | sg << _GW | sp << 32

    def _sum_waiters(self) -> None:
        c = self._c
        g = p = 0
        for w in range(_W_WAITERS, _W_WAITERS + _SLOTS + 1):
            e = c[w]
            g += e & _M32
            p += e >> 32
        c[_W_STATE] = (c[_W_STATE] & _BUSY) | min(g, _GWM) << _GW | min(p, _M31) << 32

    def _reap_waiters(self) -> None:
        """Forget waiter counts of attach slots whose process is gone (lock held).

        A gone consumer's unfinished tasks are settled too (see Tasks in
        queue_ring.py): what it took and never marked done counts as done.
        """
        seg = self._seg
        if seg is None:
            return
        self._last_reap = _mono()
        self._reclaim_dead()
        alive = {a.slot for a in seg.attachments() if a.liveness != _process.Liveness.DEAD}
        alive.add(self._wslot)
        c = self._c
        for slot in range(_SLOTS):
            if slot not in alive:
                if c[_W_WAITERS + slot]:
                    c[_W_WAITERS + slot] = 0
                if c[_W_TAKEN + slot] != c[_W_DONE + slot]:
                    self._r_settle(slot)
        self._sum_waiters()

    def _gone_consumers(self) -> bool:
        """Does another attach slot hold tasks it took and has not marked done? (a hint)"""
        c = self._c
        return any(c[_W_TAKEN + s] != c[_W_DONE + s] for s in range(_SLOTS) if s != self._wslot)

    def _reap_soon(self) -> None:
        self._run_locked(_mono() + 0.001, self._reap_waiters)

    def _lock_until(self, end: float) -> bool:
        """Take both locks (P, then C) by ``end`` (monotonic); repair first if a holder died.

        Every caller releases with ``self._r_unlock(bad)`` in a ``finally``
        (one C call: C then P, whichever this thread holds), ``bad`` unless the
        critical section ended normally or by a deliberate error: an exception
        that split it (a signal handler's) marks the repair due.
        """
        try:
            if self._two and not self._take(True, end):
                return False
            if not self._take(False, end):
                self._r_unlock(False)
                return False
            c = self._c
            # A dead holder was recorded (pdied, repair due) by the C lock() itself.
            if c[_W_STATE] & _REPAIR or c[_W_PDIED]:
                self._recover()
        except BaseException:
            self._r_unlock(True)  # nothing held on the way out; a repair left due
            raise
        return True

    def _unlock(self) -> None:
        """Release both locks (C, then P) after a clean critical section: one C call."""
        self._r_unlock(False)

    def _take(self, producer: bool, end: float) -> bool:
        """Take P (``producer``) or C by ``end``; False on timeout."""
        while True:
            left = end - _mono()
            if left <= 0:
                return False
            got = self._r_lock(producer, None if left == math.inf else min(left, _wait.SLICE))
            if got != BUSY:
                return True
            self._check_open()

    def _recover(self) -> None:
        """Repair after a dead holder (both locks held): counters, claims, waiters."""
        self._repair()
        self._r_repair_intent()  # a take's taken store, after gets was repaired
        self._reclaim_dead(count=False)  # one death, one recovery
        self._reap_waiters()
        c = self._c
        c[_W_STATE] &= ~_REPAIR
        c[_W_PDIED] = 0
        c[_W_RECOV] += 1

    def _repair(self) -> None:
        """Make puts/gets agree with tail/head again (both locks held). Idempotent.

        A holder stops between any two stores of a put (record, puts, tail) or a
        get (gets, head) when it dies or an exception (Ctrl-C) interrupts it.
        The record headers say which stores happened.
        """
        c = self._c
        head, tail = c[_W_HEAD], c[_W_TAIL]
        if not 0 <= tail - head <= self._ring or (head | tail) & 7:
            return  # not repairable; every operation reports it as LayoutError
        self._repair_producers()
        if tail == head:
            if c[_W_GETS] != c[_W_PUTS]:
                c[_W_GETS] = c[_W_PUTS]
            return
        self._repair_consumers()

    def _repair_producers(self) -> None:
        """A valid record at tail whose seq lags puts: puts was stored, tail was not (P held)."""
        c = self._c
        tail, puts = c[_W_TAIL], c[_W_PUTS]
        if tail & 7:
            return
        hdr = self._peek(tail)
        if hdr is not None:
            lag = (puts - hdr[1]) & _M32
            if 0 < lag <= min(self._ring // 4, puts):
                c[_W_PUTS] = puts - lag

    def _repair_consumers(self) -> None:
        """The record at head carries the seq that gets must have (C held)."""
        c = self._c
        head, gets = c[_W_HEAD], c[_W_GETS]
        if head == c[_W_TAIL] or head & 7:
            return
        hdr = self._peek(head)
        if hdr is not None:
            # gets lies in [seq, seq + messages): a batch record may be taken in part.
            d = (hdr[1] - gets) & _M32
            if d >= 1 << 31:
                d -= 1 << 32
            # (gets + d out of range: corrupt beyond repair, reported as such)
            behind = d > 0 or (hdr[2] and -d >= hdr[2])
            if behind and abs(d) <= self._ring // 4 and 0 <= gets + d <= _M64:
                c[_W_GETS] = gets + d

    def _check_open(self) -> None:
        if self._seg is None:
            raise Closed(f"queue {self._name!r}: this handle is closed")

    def _abandon_pending(self) -> None:
        """An exception (Ctrl-C) left this thread's reservation or claim marked: drop it.

        Called from ``except BaseException`` around every call that may mark
        one; the record being put or taken is lost (at most once), the ring
        space comes back and nobody waits for a live process that gave up.
        """
        op = self._pending_ops().pop(threading.get_ident(), None)
        end = _mono() + 1.0
        if type(op) is _Reservation:
            self._finish_reservation(op, False, end)
        elif type(op) is _Claim:
            self._finish_claim(op, end)

    def _fill_reservation(self, res: _Reservation, data: Any, end: float) -> None:
        """Write a reserved record (no lock held, in C with the GIL released), then publish it."""
        self._pending_ops().pop(threading.get_ident(), None)  # the finally below owns it now
        published = False
        try:
            if _ARMED:
                _qcrash("queue.put.res_copying")
            ring = self._ring
            i = res.pos % ring
            self._r_copy_in((i + _HDR) % ring, data)
            w0 = res.n | (res.seq & _M32) << 32
            wi = i >> 3
            c = self._c
            c[_W_RING + wi] = w0
            c[_W_RING + (wi + 1) % self._rw] = (w0 ^ res.pos ^ _SALT) & _M32
            if _ARMED:
                _qcrash("queue.put.res_copied")
            published = True
        finally:
            if not self._finish_reservation(res, published, end) and published:
                raise Full(
                    f"queue {self._name!r}: its lock stayed held past the deadline (a "
                    "participant is stopped or very slow); the message was not put"
                )

    def _finish_reservation(self, res: _Reservation, publish: bool, end: float) -> bool:
        """Publish (or drop) our reserved record and clear the reservation, under the lock.

        False if the lock stayed busy until ``end`` (nothing published; the
        reservation is dropped by this handle's next locked call).
        """

        def finish() -> int:
            c = self._c
            st: int = c[_W_STATE]
            if st & _RESERVED and c[_W_RES_PID] == res.who:
                if publish and (c[_W_TAIL], c[_W_PUTS]) == (res.pos, res.seq):
                    c[_W_PUTS] = res.seq + 1
                    if _ARMED:
                        _qcrash("queue.put.counted")
                    c[_W_TAIL] = res.pos + ((res.n + 23) & -8)
                    if _ARMED:
                        _qcrash("queue.put.published")
                st &= ~_RESERVED
                c[_W_STATE] = st
            return st

        got, interrupted = self._locked_cleanup(finish, end)
        if isinstance(got, _NoLock):
            self._r_leave(True, res.pos, res.who)
        st = 0 if isinstance(got, _NoLock) else got
        if st & _GETW_MASK:
            self._wake(False, (st >> _GW) & _GWM, 1)
        if st >= _PUTW_ONE:  # producers that waited for the reservation to end
            self._wake(True, (st >> 32) & _M31, _M31)
        if interrupted is not None:
            raise interrupted
        return not isinstance(got, _NoLock)

    def _claimed(self, claim: _Claim, into: memoryview | None, end: float) -> bytes | int:
        """Copy a claimed record's payload out (no lock held; in C, the GIL released), then
        release the claim."""
        self._pending_ops().pop(threading.get_ident(), None)  # the finally below owns it now
        try:
            if _ARMED:
                _qcrash("queue.get.claim_copying")
            data: bytes | int = self._r_copy_out(claim.start, claim.n, into)
            if _ARMED:
                _qcrash("queue.get.claim_copied")
        finally:
            self._finish_claim(claim, end)
        return data

    def _finish_claim(self, claim: _Claim, end: float) -> None:
        """Clear our claim (one store under the lock): the ring space is free again."""

        def finish() -> int:
            c = self._c
            st: int = c[_W_STATE]
            if st & _CLAIMED and (c[_W_CLAIM], c[_W_CLAIM_PID]) == (claim.pos, claim.who):
                st &= ~_CLAIMED
                c[_W_STATE] = st
            return st

        st, interrupted = self._locked_cleanup(finish, end)
        if isinstance(st, _NoLock):
            self._r_leave(False, claim.pos, claim.who)  # dropped by our next locked call
        elif st >= _PUTW_ONE:
            self._wake(True, (st >> 32) & _M31, _M31)
        if interrupted is not None:
            raise interrupted
