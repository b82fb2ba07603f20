"""The Queue's shared-memory format and its protocol under the locks.

The layout table, the record format, the store order and the repair rules
live here, beside the general (Python) paths that read and write records with
both locks held. The hot paths (one record at a time, no wrap-around, one lock)
are the C core's (``shmkit._core._queue.Ring``), which keeps exactly this
format and store order. ``shmkit.queue.Queue`` holds the policy.
"""

from __future__ import annotations

import mmap
import struct
import threading
import time
import zlib
from typing import Any, Final

from .. import _crash, _mutex, _process, _wait
from .._core import _queue
from ..errors import Closed, LayoutError, MessageTooLarge
from ..segment import Segment
from .queue_batch import U32, split_batch
from .queue_liveness import _Claim, _Reservation, holder_liveness, identity

__all__ = ["BufferTooSmall", "RingProtocol"]

# Queue parameters, stored once in the segment header's params (never change):
# offset size field
#      0    4 magic     b"QUE5" (the digit is the body layout version; 4: claim and
#                       reservation identities are attach slots, not bare pids; 5: the
#                       task words for task_done()/join(). Another digit is refused.)
#      4    4 flags     bit 0: every record carries a CRC32 of its payload
#      8    8 ring      ring bytes = capacity + 16 (one record header)
#     16    8 capacity  largest message in bytes (a multiple of 8)
#     24   16 codec     the creator's codec name, ASCII, NUL-padded (informational)
_PARAMS: Final = struct.Struct("<4sIQQ16s")
_MAGIC: Final = b"QUE5"
_F_CRC: Final = 1

# Body, from body_off (64-aligned); control words are little-endian u64:
# offset size field
#      0   64 mutex C   consumers' robust process-shared pthread mutex (the only
#                       lock in one-lock mode: the flock backend)
#     64   64 mutex P   producers' robust mutex (two-lock mode only)
#    128    8 head      stream position of the oldest record                (consumers)
#    136    8 gets      records removed so far                              (consumers)
#    144    8 i_who     a take's intent (see Tasks): its slot + 1, 0 when none is open
#    152    8 i_gets    gets once that take commits
#    160    8 i_new     taken[slot] once that take commits
#    192    8 tail      stream position just past the newest record         (producers)
#    200    8 puts      records published so far                            (producers)
#    208    8 pdied     producers' side repaired alone after a death; the rest is due
#    256    8 state     bit 0 shut down | bit 1 claimed | bit 2 reserved | bit 3 repair
#                       due | getters waiting << 4 | putters waiting << 32
#    264    8 recoveries  dead lock holders or claimers whose work was repaired
#    272    8 corrupt   records skipped because they failed validation
#    280    8 dirty     flock backend only: 1 while held (tells the next holder of a death)
#    288    8 claim     while claimed: stream position of the claimed record; the
#                       ring is free only from here on (not from head)
#    296    8 claim_id     who claims: pid (its own namespace's) | tag << 32, where
#                          tag = its attach slot + 1 (alive = that slot's OFD lock is
#                          held and the slot still records this pid and start), or
#                          1 << 31 | its PID namespace's id when it has no slot (the pid
#                          is then judged only by processes of that namespace); a
#                          claim whose process is dead is released by whoever notices,
#                          one whose liveness is unknown never (see identity())
#    304    8 claim_ticks  its start time
#    312    8 res_id       the reserving producer, likewise
#    320    8 res_ticks
#    328    4 gwake     futex word consumers sleep on (u32; bumped to wake them)
#    332    4 pwake     futex word producers sleep on
#    336    4 gsleep    consumers inside futex_wait on gwake (u32): a waker makes the
#                       wake system call only when it is not 0 (see Waking)
#    340    4 psleep    producers inside futex_wait on pwake (u32)
#    384  520 waiters   65 words, one per attach slot + 1 shared: getters | putters << 32
#    960    8 retired   tasks finished without a live slot's task_done (see Tasks)
#    968    4 jwake     futex word joiners sleep on (u32)
#    972    4 jwait     joiners asleep (u32; a hint for wakers)
#    976    8 abandoned tasks settled for consumers that died or closed (statistics)
#   1024  520 taken     65 words: messages each attach slot took (word 64: handles
#                       without a slot); written only under C; a slot with taken ==
#                       done holds no unfinished task
#   1600  520 done      65 words: task_done() calls credited to each slot (atomic)
#   2176 ring ring      the byte ring; a stream position p lives at ring index p % ring
# Each side's words have a cache line of their own, and so does each mutex: a
# producer and a consumer working at once touch each other's line only to
# read where the other one is.
#
# Two locks (robust mutexes, on every CPU). A put of a small message holds
# only P, a get only C (each in one C call: shmkit._core._queue.Ring), so one
# producer and one consumer never wait for each other. Everything else
# (batches that wrap, large messages, waiting, shutdown, statistics, repair)
# holds both, taken P then C, so it sees and changes the queue exactly as
# under one lock. What a P-holder and a C-holder share is ordered in C: the
# producer writes the record, then puts, then tail (release); the consumer
# loads tail (acquire), reads the record, then stores head (release) and
# gets; the producer loads head (acquire). Each reads the other's index only to learn where
# it may work (a stale value just means less room or fewer messages), and a
# single aligned 8-byte store publishes or consumes. The C fast paths keep
# the value they last loaded (a per-handle hint: tail for gets, head for
# puts) and load the other's line again only when it shows nothing to take
# or too little room. State bits and waiter
# counts change only under both locks (bit "repair due" under C alone, which
# still excludes every other writer of state).
#
# Record at stream position p (p % 8 == 0; it may wrap around the ring end):
#   word 0   length (low 32 bits) | seq = puts when written, mod 2**32 (high 32)
#   word 1   hcheck (low 32) | payload CRC32 (high 32; 0 unless created with checksum=True)
#            hcheck = (length ^ p ^ SALT) mod 2**32: a changed length, zeroed memory or
#            a record left from an earlier lap of the ring (another p) fails it; the
#            seq is checked against gets/puts. (Three integer operations: a put or get
#            in Python pays for every one, so no multiplicative hash.)
#   payload  length bytes, then zero to 7 bytes of padding to the next multiple of 8
#   A batch record (put_many of two or more) has SALT_BATCH in its hcheck and the
#   payload: u32 count k, k u32 end offsets (cumulative: message j is bytes
#   end[j-1] .. end[j] of what follows, so any one is found in O(1)), the k
#   messages back to back. Its seq is
#   that of its first message; it holds seqs seq .. seq+k-1, is taken in part
#   (gets - seq of them are gone) and frees its space when head passes it.
#
# Ordering rule. Every store that hands ring space from one party to another
# (publish, consume, reserve, claim, release) happens with its side's lock
# held (P for producers, C for consumers, both for reserve/claim/release);
# payload copies happen either under a lock or (large messages, below) on
# space the copier alone owns meanwhile. A producer writes the payload and
# the record header, then stores puts, then tail: that one aligned 8-byte
# store publishes the record. A consumer copies the payload out, then stores
# head (once the whole record is taken), then gets: a consumer killed between
# the two has consumed, and never repeats. A holder killed between two
# stores leaves the old state, or one that _repair maps back to it: a valid
# record at tail whose seq lags puts means puts was stored but tail was not;
# the record at head fixes gets. Lock-free reads (spin polls, qsize) are
# hints that never decide what is read or written.
#
# Large messages (>= _CLAIM_MIN bytes) are copied without the lock, so that a
# producer's copy-in and a consumer's copy-out overlap:
# - a producer *reserves* the space at tail (bit "reserved", its identity),
#   unlocks, writes payload and header, then locks again to publish (puts,
#   tail) and clear the bit. Other producers wait meanwhile; nothing is visible
#   before the publishing store, so a reserver that dies leaves nothing behind.
# - a consumer *claims* the record: it takes it under the lock (gets, head),
#   records the claim (bit "claimed", where, its identity) and copies the
#   payload out after unlocking; clearing the bit frees the space. Other
#   consumers go on meanwhile (copying under the lock).
# A reservation or claim whose process is dead is cleared by whoever notices
# (every waiter checks once per slice); a live one is never taken.
#
# Memory model: pthread_mutex_lock/unlock (and flock) are acquire/release
# barriers; between a P-holder and a C-holder the C fast paths pair release
# stores of tail/head with acquire loads (above), so the protocol is the same
# on x86-64 and arm64. A lock-free poll may see a value late, which only
# costs another poll. The flock backend (macOS) runs in one-lock mode (P is C)
# without fast paths.
#
# Waking. Sleepers wait on gwake (consumers) or pwake (producers), u32 futex
# words. A waiter registers (state counts, its slot word) and reads the word
# in the same critical section as its last attempt; a waker that finds
# waiters counted increments the word after its change, and makes the wake
# system call only if gsleep/psleep shows one inside futex_wait (a sleeper
# counts itself before futex_wait compares the word; both sides sequentially
# consistent, so a wake is never lost): a waiter that is registered but awake
# costs producers an increment per message, not a system call.
#
# Tasks (task_done/join, QUE5). unfinished = puts - finished, where finished =
# retired + the sum of done[]. A take of k messages by the handle in attach
# slot s (word 64 for a handle without one: a forked child's inherited
# handle) adds k to taken[s] in the same critical section: it stores the
# intent (i_gets, i_new, i_who), commits (head, gets), then taken[s]; the
# next holder of both locks after a death there finishes the taken store if
# gets shows the take committed (_r_repair_intent in _recover). task_done() increments
# done[] of its own slot while that slot took more than it marked done,
# else another slot's, else retired; it raises ValueError when nothing is
# unfinished. A slot whose process died, or whose handle closed, is
# settled under both locks: one compare-and-swap raises its done word to
# its taken word (never by more than is unfinished), so its unfinished
# tasks count as done (at most once: the messages were delivered or lost
# with it) and join() never waits for a consumer that is gone; a settler
# killed at any instant leaves them settled or not. Messages that leave the
# queue untaken (shutdown(immediate=True), corrupt records) are retired.
# Every word of finished only grows, and readers load puts last, so they
# may see fewer finished tasks than there are, never more. A joiner counts
# itself in jwait, reads jwake, re-checks and sleeps; whoever may have
# finished the last task fences, reads jwait and, if joiners sleep and
# nothing is unfinished, bumps jwake and wakes them all.
#
# Interrupted critical sections. The general path releases its locks in a
# finally through one C call (Ring.unlock); if an exception left the section
# (a signal handler's), that call first sets "repair due", and the next holder
# of both locks repairs exactly as after a death. A fast path holding P that
# finds P's holder dead repairs the producers' words itself and sets pdied.
#
# Deaths. A holder killed between two stores leaves the old state or one that
# _repair maps back to it. Whoever next takes a lock whose holder died
# (EOWNERDEAD) repairs: under both locks, everything (_recover). A consumer
# that finds C's holder dead holds only C and may not wait for P (lock
# order): it marks "repair due" and takes both. A producer that finds P's
# holder dead takes C too; if C stays busy past its deadline it repairs the
# producers' words alone and leaves pdied for the next holder of both.
_HDR: Final = 16
_W_HEAD: Final = 16
_W_GETS: Final = 17
_W_TAIL: Final = 24
_W_PUTS: Final = 25
_W_PDIED: Final = 26
_W_STATE: Final = 32
_W_RECOV: Final = 33
_W_CORRUPT: Final = 34
_W_DIRTY: Final = 35
_W_CLAIM: Final = 36
_W_CLAIM_PID: Final = 37
_W_CLAIM_TICKS: Final = 38
_W_RES_PID: Final = 39
_W_RES_TICKS: Final = 40
_W_WAITERS: Final = 48
_P_MUTEX: Final = 64  # byte offset of mutex P in the body
_SLOTS: Final = 64  # attach slots with their own waiter word; word 64 is shared by the rest
_W_I_WHO: Final = 18
_W_I_GETS: Final = 19
_W_I_NEW: Final = 20
_W_RETIRED: Final = 120
_W_ABANDONED: Final = 122
_W_TAKEN: Final = 128
_W_DONE: Final = 200
_RING_OFF: Final = 2176
_W_RING: Final = _RING_OFF // 8
assert _RING_OFF == _queue.RING_OFF and _W_DONE + _SLOTS + 1 <= _W_RING

_SALT: Final = 0x5155_4555_454B_4D53
_SALT_BATCH: Final = 0x4241_5443_484B_4D53  # batch records: a check word of their own
_M32: Final = 0xFFFF_FFFF
_M31: Final = 0x7FFF_FFFF
_M64: Final = 0xFFFF_FFFF_FFFF_FFFF
_GWM: Final = 0x0FFF_FFFF  # getters waiting: 28 bits from bit _GW
_GW: Final = 4
_SHUT: Final = 1
_CLAIMED: Final = 2
_RESERVED: Final = 4
_REPAIR: Final = 8
_BUSY: Final = _SHUT | _CLAIMED | _RESERVED | _REPAIR  # any of these: no fast put
_GETW_MASK: Final = _GWM << _GW
_PUTW_ONE: Final = 1 << 32
#: Messages this large are copied out without the lock (see Claims above).
_CLAIM_MIN: Final = 128 * 1024

#: Largest capacity: a record's length field has 32 bits.
MAX_CAPACITY: Final = (1 << 32) - 64
#: Default time an empty/full queue is polled without the lock before sleeping.
DEFAULT_SPIN: Final = _wait.SPIN
#: The adaptive spin never exceeds this (unless the base ``spin`` is larger).
_SPIN_MAX: Final = 1e-3
#: After a spin found this handle descheduled (a loaded machine), sleep at
#: once for this long (seconds) instead of spinning.
_CALM: Final = 0.0  # 0.05 made the unloaded ping-pong p50 17 µs instead of 1.2
#: Waiting handles re-check who is alive at most this often (seconds).
_REAP_EVERY: Final = 1.0

_ARMED: Final = _crash.ARMED
#: Crash points share one counter with the C fast paths' (SHMKIT_CRASH_AFTER).
_qcrash = _queue.crash_point

_perf = time.perf_counter
_mono = time.monotonic
_check_timeout = _wait.check_timeout

#: The C fast paths' answers (see _core/_queue.c).
_FULL: Final = _queue.FULL
_EMPTY: Final = _queue.EMPTY
_GENERAL: Final = _queue.GENERAL
#: Exceptions a critical section raises on purpose, leaving the queue consistent.
_CLEAN_EXIT: Final = (Closed, LayoutError, MessageTooLarge)


class _Again:
    """Sentinel: the locked attempt could not proceed; wait and try again."""


_AGAIN: Final = _Again()


class _NoLock:
    """Sentinel: the locks stayed busy until the deadline."""


_NOLOCK: Final = _NoLock()


class BufferTooSmall(MessageTooLarge):
    """``get_into``: the next message does not fit the buffer; it stays queued.

    Attributes:
        needed: the message's size in bytes.
    """

    def __init__(self, message: str, needed: int = 0) -> None:
        super().__init__(message)
        self.needed = needed


def _hcheck(w0: int, pos: int) -> int:
    return (w0 ^ pos ^ _SALT) & _M32


def _hcheck_batch(w0: int, pos: int) -> int:
    return (w0 ^ pos ^ _SALT_BATCH) & _M32


def _init_body(mm: mmap.mmap, body_off: int) -> None:
    # The reserved pages are zero already: every control word starts at 0.
    _mutex.Mutex.initialize(mm, body_off)
    _mutex.Mutex.initialize(mm, body_off + _P_MUTEX)  # used in two-lock mode only


class RingProtocol(_queue.QueueCore):
    """Reading and writing records with the queue's locks held (mixed into Queue)."""

    def _pending_ops(self) -> dict[int, _Reservation | _Claim]:
        """This handle's reservation or claim per thread, from marking until its copy ends."""
        try:
            return self._pending
        except AttributeError:
            self._pending: dict[int, _Reservation | _Claim] = {}
            return self._pending

    __slots__ = ("_pending",)
    _c: memoryview
    _cap: int
    _checksum: bool
    _base: int
    _mm: mmap.mmap
    _name: str
    _seg: Segment | None
    _ring: int
    _rv: memoryview
    _rw: int

    def _write_locked(self, data: Any, n: int, count: int) -> object:
        """Publish one record (both locks held): True, or _AGAIN if there is no room yet.

        ``count`` > 1: ``data`` is the payload of a batch record of that many messages.
        """
        total = (n + 23) & -8
        c = self._c
        head, tail, gets, puts = c[_W_HEAD], c[_W_TAIL], c[_W_GETS], c[_W_PUTS]
        self._check_indices(head, tail, gets, puts)
        st = c[_W_STATE]
        if st & _SHUT:
            raise Closed(f"queue {self._name!r} is shut down")
        if st & _RESERVED:
            return _AGAIN  # another producer is writing a large record at tail
        ring = self._ring
        free_from = head
        if st & _CLAIMED:
            free_from = c[_W_CLAIM]
            if (
                not free_from <= head <= free_from + ring
                or tail - free_from > ring
                or free_from & 7
            ):
                raise LayoutError(
                    f"queue {self._name!r}: corrupt claim position {free_from} "
                    f"(head {head}, tail {tail}); nothing was changed"
                )
        if ring - (tail - free_from) < total:
            return _AGAIN
        if _ARMED:
            _qcrash("queue.put.reserved")
        if count == 1 and n >= _CLAIM_MIN and not self._checksum:
            # Large: reserve the space now, write it after unlocking (see above).
            word, ticks = identity(self._seg)
            res = _Reservation(tail, puts, n, word)
            # Remembered before it is marked, so an exception from here until
            # the copy's try/finally (a Ctrl-C) can drop it: _abandon_pending.
            self._pending_ops()[threading.get_ident()] = res
            c[_W_RES_PID] = word
            c[_W_RES_TICKS] = ticks
            c[_W_STATE] = st | _RESERVED
            if _ARMED:
                _qcrash("queue.put.reserving")
            return res
        self._write_record(tail, puts, data, n, _SALT if count == 1 else _SALT_BATCH)
        seq = puts + count
        pos = tail + total
        if _ARMED:
            _qcrash("queue.put.copied")
        c[_W_PUTS] = seq
        if _ARMED:
            _qcrash("queue.put.counted")
        c[_W_TAIL] = pos
        if _ARMED:
            _qcrash("queue.put.published")
        if st & _GETW_MASK:
            self._wake(False, (st >> _GW) & _GWM, count)
        return True

    def _write_record(self, pos: int, seq: int, data: Any, n: int, salt: int = _SALT) -> None:
        ring = self._ring
        base = self._base
        mm = self._mm
        i = pos % ring
        s = i + _HDR
        if s >= ring:
            s -= ring
        if s + n <= ring:
            if _ARMED and n > 1:
                mm[base + s : base + s + n // 2] = memoryview(data)[: n // 2]
                _qcrash("queue.put.copying")
            mm[base + s : base + s + n] = data
        else:
            k = ring - s
            view = memoryview(data)
            mm[base + s : base + ring] = view[:k]
            if _ARMED:
                _qcrash("queue.put.copying")
            mm[base : base + n - k] = view[k:]
        crc = zlib.crc32(data) if self._checksum else 0
        w0 = n | (seq & _M32) << 32
        wi = i >> 3
        c = self._c
        c[_W_RING + wi] = w0
        check = (w0 ^ pos ^ salt) & _M32
        c[_W_RING + (wi + 1) % self._rw] = check | crc << 32

    def _reclaim_dead(self, count: bool = True) -> bool:
        """Release a claim whose process died while copying (lock held); True if it did.

        The claimed message was taken before the copy began, so it is lost (at
        most once), but its space must not stay reserved forever. A live
        claimer, however slow or stopped, keeps its claim.
        """
        c = self._c
        st = c[_W_STATE]
        dead = 0
        for bit, pid_word in ((_CLAIMED, _W_CLAIM_PID), (_RESERVED, _W_RES_PID)):
            if st & bit:
                word, ticks = c[pid_word], c[pid_word + 1]
                if holder_liveness(self._seg, word, ticks) is _process.Liveness.DEAD:
                    dead |= bit
        if not dead:
            return False
        # A dead reserver never published: tail and puts are still before its record.
        c[_W_STATE] = st & ~dead
        if count:
            c[_W_RECOV] += 1
        return True

    def _take_locked(self, limit: int, out: list[Any], into: memoryview | None) -> int:
        """Move up to ``limit`` messages into ``out`` (both locks held); return how many.

        With ``into``, copy one message into it and append its size instead.
        Invalid records are skipped and counted; raises Closed if the queue is
        shut down and empty, LayoutError if the control words are corrupt.
        """
        c = self._c
        ring = self._ring
        base = self._base
        mm = self._mm
        head, tail, gets, puts = c[_W_HEAD], c[_W_TAIL], c[_W_GETS], c[_W_PUTS]
        self._check_indices(head, tail, gets, puts)
        pos = head
        seq = gets
        got = 0
        noted = 0  # messages already counted in this slot's taken word (see Tasks)
        bad = 0
        while got < limit and pos < tail:
            i = pos % ring
            wi = i >> 3
            w0 = c[_W_RING + wi]
            w1 = c[_W_RING + (wi + 1) % self._rw]
            n = w0 & _M32
            rec = (n + 23) & -8
            rseq = w0 >> 32
            check = w1 & _M32
            batch = check != _hcheck(w0, pos)
            skip = (seq - rseq) & _M32
            if (
                (batch and check != _hcheck_batch(w0, pos))
                or rec > tail - pos
                or (skip and (not batch or pos != head))  # only a batch at head is taken in part
            ):
                head, tail, gets, puts = self._resync(seq, pos, head, gets, got - noted)
                pos, seq, noted = head, gets, got
                continue
            s = i + _HDR
            if s >= ring:
                s -= ring
            if _ARMED:
                _qcrash("queue.get.locked")
            if self._checksum or batch:
                k = min(n, ring - s)  # the payload may wrap around the ring's end
                if self._checksum:
                    crc = zlib.crc32(self._rv[base + s : base + s + k])
                    if k < n:
                        crc = zlib.crc32(self._rv[base : base + n - k], crc)
                    if crc != w1 >> 32:
                        if batch:  # its count is not to be trusted: skip to the next record
                            head, tail, gets, puts = self._resync(seq, pos, head, gets, got - noted)
                            pos, seq, noted = head, gets, got
                            continue
                        bad += 1
                        pos += rec
                        seq += 1
                        continue
                if batch:
                    if k == n:
                        area: Any = mm
                        start = base + s
                    else:
                        rv = self._rv
                        area = b"".join((rv[base + s : base + ring], rv[base : base + n - k]))
                        start = 0
                    want = 1 if into is not None else limit - got
                    split = split_batch(area, start, n, skip, want)
                    if split is None:
                        head, tail, gets, puts = self._resync(seq, pos, head, gets, got - noted)
                        pos, seq, noted = head, gets, got
                        continue
                    msgs, total = split
                    if into is not None:
                        m = len(msgs[0])
                        if m > len(into):
                            raise self._too_small(m, len(into), bad, seq, pos, head, gets)
                        into[:m] = msgs[0]
                        out.append(m)
                    else:
                        out.extend(msgs)
                    got += len(msgs)
                    seq += len(msgs)
                    if skip + len(msgs) == total:
                        pos += rec  # the whole batch record is taken
                    continue
            if into is not None and n > len(into):
                raise self._too_small(n, len(into), bad, seq, pos, head, gets)
            if n >= _CLAIM_MIN and not self._checksum and not c[_W_STATE] & _CLAIMED:
                if got:
                    break  # return what we have; the next call claims this one
                # Take it now, copy it after unlocking (see Claims): the claim
                # fields first, the flag last, then the usual head/gets stores.
                word, ticks = identity(self._seg)
                claim = _Claim(head, s, n, word)
                self._pending_ops()[threading.get_ident()] = claim  # see _abandon_pending
                c[_W_CLAIM] = head
                c[_W_CLAIM_PID] = word
                c[_W_CLAIM_TICKS] = ticks
                c[_W_STATE] |= _CLAIMED
                if _ARMED:
                    _qcrash("queue.get.claiming")
                out.append(claim)
                got = 1
                pos += rec
                seq += 1
                break
            if into is not None:
                if s + n <= ring:
                    into[:n] = self._rv[base + s : base + s + n]
                else:
                    k = ring - s
                    into[:k] = self._rv[base + s : base + ring]
                    into[k:n] = self._rv[base : base + n - k]
                out.append(n)
            elif s + n <= ring:
                out.append(mm[base + s : base + s + n])
            else:
                rv = self._rv
                out.append(b"".join((rv[base + s : base + ring], rv[base : base + n - ring + s])))
            got += 1
            pos += rec
            seq += 1
        if bad:
            c[_W_CORRUPT] += bad
            self._r_retire(bad)
        if seq != gets:
            if _ARMED:
                _qcrash("queue.get.copied")
            self._commit_take(seq, pos, head, gets, got - noted)
            st = c[_W_STATE]
            if st >= _PUTW_ONE:
                self._wake(True, (st >> 32) & _M31, _M31)
        if not got and c[_W_STATE] & _SHUT and c[_W_HEAD] == c[_W_TAIL]:
            raise Closed(f"queue {self._name!r} is shut down and empty")
        return got

    def _too_small(  # noqa: PLR0917
        self, needed: int, size: int, bad: int, seq: int, pos: int, head: int, gets: int
    ) -> BufferTooSmall:
        """get_into's buffer is too small: commit what was taken (the message stays queued)."""
        if bad:
            self._c[_W_CORRUPT] += bad
            self._r_retire(bad)
        self._commit_take(seq, pos, head, gets)
        return BufferTooSmall(
            f"queue {self._name!r}: the next message is {needed} bytes; the buffer holds {size}",
            needed=needed,
        )

    def _resync(
        self, seq: int, pos: int, head: int, gets: int, took: int
    ) -> tuple[int, int, int, int]:
        """Commit what was taken, skip the bad record at ``pos``; the new head, tail, gets, puts."""
        self._commit_take(seq, pos, head, gets, took)
        self._skip_corrupt()
        c = self._c
        return c[_W_HEAD], c[_W_TAIL], c[_W_GETS], c[_W_PUTS]

    def _commit_take(self, seq: int, pos: int, head: int, gets: int, took: int = 0) -> None:
        """Store head, then gets: a death between loses what was taken, never repeats it.

        ``took`` messages of them were delivered: this slot's taken word grows
        by as many, in the fast paths' order (intent, commit, taken; see Tasks).
        """
        c = self._c
        taken = self._r_take_intent(seq, took) if took else -1
        if pos != head:
            c[_W_HEAD] = pos
            if _ARMED:
                _qcrash("queue.get.advanced")
        if seq != gets:
            c[_W_GETS] = seq
            if _ARMED:
                _qcrash("queue.get.counted")
        if took:
            self._r_take_taken(taken)

    def _skip_corrupt(self) -> None:
        """The record at head failed validation (lock held): skip to the next valid one.

        Scans 8-byte steps up to tail for a record whose check word matches its
        position and whose seq is one of the queued ones (bounded: at most
        ring/8 steps); if none, drops everything queued. Counts the skipped
        records in ``corrupt``. Stores head before gets: _repair rebuilds gets
        from the record at head if we die between them.
        """
        c = self._c
        head, tail, gets, puts = c[_W_HEAD], c[_W_TAIL], c[_W_GETS], c[_W_PUTS]
        left = puts - gets
        pos = head + 8
        while pos + _HDR <= tail:
            hdr = self._peek(pos)
            if hdr is not None:
                n, s, _k = hdr
                ahead = (s - gets) & _M32
                if 0 < ahead < left and pos + ((n + 23) & -8) <= tail:
                    c[_W_HEAD] = pos
                    c[_W_GETS] = gets + ahead
                    c[_W_CORRUPT] += ahead
                    self._r_retire(ahead)
                    return
            pos += 8
        c[_W_HEAD] = tail
        c[_W_GETS] = puts
        c[_W_CORRUPT] += max(left, 1)
        self._r_retire(max(left, 0))

    def _peek(self, pos: int) -> tuple[int, int, int] | None:
        """(length, seq mod 2**32, messages) of a record at ``pos`` if its check word matches.

        ``messages`` is 1 for a single message; for a batch record, its count
        (0 if the count is implausible).
        """
        ring = self._ring
        i = pos % ring
        wi = i >> 3
        c = self._c
        w0 = c[_W_RING + wi]
        w1 = c[_W_RING + (wi + 1) % self._rw]
        n = w0 & _M32
        if n > ring - _HDR:
            return None
        if w1 & _M32 == _hcheck(w0, pos):
            if n > self._cap:
                return None
            return n, w0 >> 32, 1
        if w1 & _M32 != _hcheck_batch(w0, pos) or n < 8:
            return None
        s = (i + _HDR) % ring  # a multiple of 8, as ring is: the count never wraps
        k = U32.unpack_from(self._mm, self._base + s)[0]
        return n, w0 >> 32, k if 4 + 4 * k <= n else 0

    def _check_indices(self, head: int, tail: int, gets: int, puts: int) -> None:
        used = tail - head
        msgs = puts - gets
        if not 0 <= used <= self._ring or (head | tail) & 7:
            raise LayoutError(
                f"queue {self._name!r}: corrupt ring indices (head {head}, tail {tail}, "
                f"ring {self._ring}); nothing was changed"
            )
        if msgs < 0 or msgs * 4 > used or (used > 0) != (msgs > 0):
            raise LayoutError(
                f"queue {self._name!r}: corrupt counters ({msgs} messages in {used} bytes); "
                "nothing was changed"
            )

    def _overflow(self, exc: Exception) -> LayoutError:
        """A fast put's counter did not fit its word: corruption (nothing was published)."""
        return LayoutError(f"queue {self._name!r}: corrupt counters ({exc}); nothing was put")

    def _wake(self, putter: bool, waiters: int, most: int) -> None:
        """Wake up to ``min(most, waiters)`` sleepers of one side (a hint)."""
        self._r_wake(putter, min(most, waiters))
