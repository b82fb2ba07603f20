"""Queue: a named, bounded, multi-producer multi-consumer queue of variable-size messages.

Any number of unrelated processes put and get messages through one shared
byte ring; the capacity is in bytes. The API mirrors the stdlib ``queue``
module (``put``/``get``, ``*_nowait``, ``Full``/``Empty``, ``task_done``/
``join`` across processes) and adds batches, a copy-into-your-buffer read
and a queue-wide shutdown::

    jobs = Queue.create("jobs", capacity=1 << 20)     # 1 MiB of messages
    jobs.put(b"resize img-0001.png")                  # in one program
    with Queue.open("jobs") as q:                     # in another
        job = q.get(timeout=5.0)                      # Empty after 5 s
        q.task_done()                                 # after processing it
    jobs.join(timeout=60.0)                           # True once every job is done
    jobs.shutdown()                                   # producers: Closed; consumers drain
    jobs.unlink()                                     # remove the name

What other processes see and rely on:

- Messages come out in the order they were published; each message goes to
  exactly one consumer. A message larger than ``capacity`` raises
  ``MessageTooLarge`` at ``put()`` and is never waited on.
- A producer killed at any instant leaves no partial message visible; a
  consumer killed mid-``get`` loses at most the message it was taking; a
  process killed while holding the queue's lock delays the others by at most
  one lock hand-over, and the next holder repairs the counters
  (``statistics().recoveries``). See docs/guarantees.md.
- Waiting: an empty (or full) queue is first polled without the lock for
  ``spin`` seconds (default 50 µs, adapting up to 1 ms while the peer answers
  just after that, and none at all for a while once the spinner finds itself
  descheduled: a loaded machine; see :attr:`Queue.spin`), then the caller
  sleeps on a futex word in the segment in slices of at most 50 ms, so a
  deadline, Ctrl-C, a shutdown or a dead peer is noticed within one slice.
  Wake-ups are hints only; one ``/dev/shm`` entry per queue.
- ``open()`` decodes with the codec the creator recorded where that runs no
  code (bytes, msgpack); a pickle queue needs ``codec="pickle"`` or
  ``allow_pickle=True``.
- A consumer that dies (or closes) before ``task_done()`` never makes
  ``join()`` hang: what it took counts as done (``abandoned_tasks``).
- Large messages (128 KiB and more) are copied in and out without holding the
  lock; prefer ``get_into(buffer)`` for them (one copy, no allocation).
- Producers and consumers have a lock each (on x86-64 Linux), so a put and a
  get run at the same time; ``put_many`` publishes its items as one batch
  record, the fast way to move many small messages.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Final, Generic, Literal, TypeVar, overload

from . import _codec, _mutex, _wait
from ._codec import Codec
from ._core import _queue
from ._handle import Handle, built_or_removed
from ._layout import Kind, align
from ._shm.queue_info import QueueStatistics, describe, open_codec, parse_params, snapshot
from ._shm.queue_liveness import identity
from ._shm.queue_ring import (  # noqa: F401  (the layout's names, for tests and tools)
    _AGAIN,
    _CLAIM_MIN,
    _CLAIMED,
    _EMPTY,
    _F_CRC,
    _FULL,
    _GW,
    _GWM,
    _HDR,
    _M31,
    _MAGIC,
    _NOLOCK,
    _P_MUTEX,
    _PARAMS,
    _RING_OFF,
    _SHUT,
    _SLOTS,
    _W_CLAIM,
    _W_CLAIM_PID,
    _W_CLAIM_TICKS,
    _W_GETS,
    _W_HEAD,
    _W_PUTS,
    _W_RING,
    _W_STATE,
    _W_TAIL,
    _W_WAITERS,
    DEFAULT_SPIN,
    MAX_CAPACITY,
    BufferTooSmall,
    _check_timeout,
    _init_body,
    _mono,
    _NoLock,
    _perf,
)
from ._shm.queue_tasks import Tasks
from .errors import LayoutError, ShmkitError
from .segment import Segment, open_or_create

if TYPE_CHECKING:
    from typing import Protocol

    from typing_extensions import Buffer

    class _ArrayLike(Protocol):
        """numpy arrays (their stubs declare the buffer protocol only for Python 3.12+)."""

        @property
        def __array_interface__(self) -> dict[str, Any]: ...

    BytesLike = Buffer | _ArrayLike

__all__ = ["BufferTooSmall", "Queue", "QueueStatistics", "describe"]

T = TypeVar("T")


def _check_capacity(capacity: object) -> int:
    if isinstance(capacity, bool) or not isinstance(capacity, int):
        raise TypeError(f"capacity must be an int (bytes), not {type(capacity).__name__}")
    if not 0 < capacity <= MAX_CAPACITY:
        raise ValueError(f"capacity must be between 1 and {MAX_CAPACITY} bytes, not {capacity}")
    return max(8, align(capacity, 8))


def _reopen(name: str, codec: object, spin: float) -> Queue[Any]:
    return Queue.open(name, codec=_codec.resolve(codec), spin=spin)


# ----------------------------------------------------------------------------- Queue


class Queue(Tasks, Handle, Generic[T]):
    """A handle on a named queue. Create with :meth:`create`, attach with :meth:`open`.

    ``T`` is what ``get()`` returns: ``bytes`` for the default codec. Handles
    pickle to their name and reopen on the other side. One handle may be used
    from several threads; see :attr:`spin` for the waiting policy.
    """

    __slots__ = (
        "__weakref__",
        "_base",
        "_c",
        "_cap",
        "_checksum",
        "_codec",
        "_decode",
        "_encode",
        "_encoded",
        "_flags",
        "_mm",
        "_mutex",
        "_name",
        "_pmutex",
        "_pthread",
        "_raw",
        "_ring",
        "_rv",
        "_rw",
        "_seg",
        "_two",
        "_wslot",
    )

    def __init__(self, seg: Segment, codec: Codec[Any], spin: float) -> None:
        """Wrap an opened QUEUE segment; use :meth:`create` or :meth:`open` instead."""
        self._name = seg.name
        flags, ring, cap, _creator_codec = parse_params(seg)
        hdr = seg.header
        assert hdr is not None
        self._seg: Segment | None = seg
        self._flags = flags
        self._ring = ring
        self._rw = ring // 8
        self._cap = cap
        self._checksum = bool(flags & _F_CRC)
        self._mm = seg.mmap
        self._rv = memoryview(self._mm)
        self._c = self._rv[hdr.body_off : hdr.body_off + _RING_OFF + ring].cast("Q")
        self._base = hdr.body_off + _RING_OFF
        self._codec = codec
        self._raw = isinstance(codec, _codec.RawCodec)
        self._encoded = not self._raw  # even bytes items go through the codec
        self._decode: Callable[[bytes], Any] | None = None if self._raw else codec.decode
        self._encode: Callable[[Any], bytes | bytearray | memoryview] = (
            _codec.as_bytes if self._raw else self._encode_with_codec
        )
        self._spin = spin
        self._spin_now = spin
        self._calm_until = 0.0
        self._last_reap = 0.0
        self._slot_clean = False
        slot: int = getattr(seg, "_slot", -1)  # Segment keeps its attach slot private
        self._wslot = slot if 0 <= slot < _SLOTS else _SLOTS
        self._mutex = _mutex.Mutex(self._mm, hdr.body_off, seg.sysname, 0)
        self._pthread = self._mutex.kind == "pthread"
        # Two locks need robust mutexes (see Two locks above); every process on
        # one machine decides alike (the backend is recorded in the segment).
        self._two = self._pthread
        self._pmutex = self._mutex
        if self._two:
            self._pmutex = _mutex.Mutex(self._mm, hdr.body_off + _P_MUTEX, seg.sysname, 1)
        rflags = _queue.F_TWO if self._two else 0
        if not self._pthread:
            rflags |= _queue.F_FLOCK
        elif not self._checksum:
            rflags |= _queue.F_FAST  # checksum queues take the general path
        # The hot paths, each one C call (see _core/_queue.c): this object is the ring.
        _queue.QueueCore.__init__(
            self, self._mm, hdr.body_off, ring, cap, rflags, self._mutex.core, self._pmutex.core
        )
        self._set_decode(self._decode)
        word, ticks = identity(seg)
        self._set_identity(word, ticks, os.getpid(), self._wslot)
        # A slot's task words left by a process that died in it (nobody settled
        # them yet) are not ours: settle them before this handle takes anything.
        self._settle_own(_mono() + 1.0)

    # ------------------------------------------------------------------ lifecycle

    @overload
    @classmethod
    def create(
        cls,
        name: str,
        capacity: int,
        *,
        codec: Literal["bytes"] = ...,
        mode: int = ...,
        spin: float = ...,
        checksum: bool = ...,
        unlink_on_exit: bool = ...,
    ) -> Queue[bytes]: ...
    @overload
    @classmethod
    def create(
        cls,
        name: str,
        capacity: int,
        *,
        codec: Literal["pickle", "msgpack"],
        mode: int = ...,
        spin: float = ...,
        checksum: bool = ...,
        unlink_on_exit: bool = ...,
    ) -> Queue[Any]: ...
    @overload
    @classmethod
    def create(
        cls,
        name: str,
        capacity: int,
        *,
        codec: Codec[T],
        mode: int = ...,
        spin: float = ...,
        checksum: bool = ...,
        unlink_on_exit: bool = ...,
    ) -> Queue[T]: ...
    @classmethod
    def create(
        cls,
        name: str,
        capacity: int,
        *,
        codec: str | Codec[Any] = "bytes",
        mode: int = 0o600,
        spin: float = DEFAULT_SPIN,
        checksum: bool = False,
        unlink_on_exit: bool = False,
    ) -> Queue[Any]:
        """Create a queue holding up to ``capacity`` bytes of messages.

        The queue persists after this process exits until ``unlink()`` (or
        ``shmkit rm``), unless ``unlink_on_exit`` ties it to this handle.

        Args:
            name: the queue's name (see Segment for the rules).
            capacity: bytes of message data the queue holds at once; also the
                largest message. Each message additionally uses a 16-byte
                header and pads to 8 bytes, so many small messages fill it sooner.
            codec: ``"bytes"`` (default: bytes-like in, ``bytes`` out),
                ``"pickle"`` (all writers must be trusted), ``"msgpack"``, or a
                :class:`~shmkit._codec.Codec`.
            mode: permission bits for the segment and semaphores.
            spin: seconds to poll before sleeping (see :attr:`spin`).
            checksum: store a CRC32 of every payload and verify it on ``get``
                (catches stray writes into the ring; costs ~0.3 ms per MiB on
                both sides, and every operation takes the general path).
            unlink_on_exit: unlink the queue when this handle is closed.

        Raises:
            AlreadyExists: the name is taken.
            TypeError, ValueError: a bad argument (nothing is created).
            ShmFull: /dev/shm cannot hold the queue.
        """
        cap = _check_capacity(capacity)
        cod = _codec.resolve(codec)
        spin = _wait.check_spin(spin)
        if not isinstance(checksum, bool):
            raise TypeError(f"checksum must be a bool, not {type(checksum).__name__}")
        ring = cap + _HDR
        params = _PARAMS.pack(_MAGIC, _F_CRC if checksum else 0, ring, cap, cod.name.encode())
        seg = Segment._create_object(
            name,
            Kind.QUEUE,
            body_size=_RING_OFF + ring,
            params=params,
            sem_values=(),
            mode=mode,
            init=_init_body,
            unlink_on_exit=unlink_on_exit,
        )
        return built_or_removed(seg, lambda: cls(seg, cod, spin))

    @overload
    @classmethod
    def open(
        cls,
        name: str,
        *,
        codec: Literal["bytes"],
        spin: float = ...,
        allow_pickle: bool = ...,
        wait: float | None = ...,
        trust_uids: Iterable[int] | None = ...,
    ) -> Queue[bytes]: ...
    @overload
    @classmethod
    def open(
        cls,
        name: str,
        *,
        codec: Literal["pickle", "msgpack"] | None = ...,
        spin: float = ...,
        allow_pickle: bool = ...,
        wait: float | None = ...,
        trust_uids: Iterable[int] | None = ...,
    ) -> Queue[Any]: ...
    @overload
    @classmethod
    def open(
        cls,
        name: str,
        *,
        codec: Codec[T],
        spin: float = ...,
        allow_pickle: bool = ...,
        wait: float | None = ...,
        trust_uids: Iterable[int] | None = ...,
    ) -> Queue[T]: ...
    @classmethod
    def open(
        cls,
        name: str,
        *,
        codec: str | Codec[Any] | None = None,
        spin: float = DEFAULT_SPIN,
        allow_pickle: bool = False,
        wait: float | None = 0.0,
        trust_uids: Iterable[int] | None = None,
    ) -> Queue[Any]:
        """Attach to an existing queue by name.

        The creator records its codec in the queue's header. By default
        (``codec=None``) the handle adopts it when that is safe: ``"bytes"``
        and ``"msgpack"``. A ``"pickle"`` queue is refused unless the opener
        consents (``codec="pickle"`` or ``allow_pickle=True``), because
        unpickling runs code any writer chooses. A codec passed explicitly
        must be the recorded one.

        ``wait`` seconds (None: forever) lets the name appear first;
        ``trust_uids``: see :meth:`Segment.open`.

        Raises:
            NotFound: no such queue (after ``wait``).
            LayoutError: the name holds another kind of object, a corrupt
                queue, or a queue of another layout version.
            CodecMismatch: (a ValueError) a pickle queue opened without consent, a custom
                codec's queue opened without that codec, or a ``codec`` that
                contradicts the recorded one (the message says what to pass).
        """
        if codec is not None:
            codec = _codec.resolve(codec)
        if not isinstance(allow_pickle, bool):
            raise TypeError(f"allow_pickle must be a bool, not {type(allow_pickle).__name__}")
        spin = _wait.check_spin(spin)
        seg = Segment._open_object(name, Kind.QUEUE, wait=wait, trust_uids=trust_uids)
        try:
            cod = open_codec(seg, codec, allow_pickle)
            return cls(seg, cod, spin)
        except BaseException:
            seg.close()
            raise

    @overload
    @classmethod
    def open_or_create(
        cls,
        name: str,
        capacity: int,
        *,
        codec: Literal["bytes"],
        mode: int = ...,
        spin: float = ...,
        checksum: bool = ...,
        allow_pickle: bool = ...,
    ) -> Queue[bytes]: ...
    @overload
    @classmethod
    def open_or_create(
        cls,
        name: str,
        capacity: int,
        *,
        codec: Literal["pickle", "msgpack"] | None = ...,
        mode: int = ...,
        spin: float = ...,
        checksum: bool = ...,
        allow_pickle: bool = ...,
    ) -> Queue[Any]: ...
    @overload
    @classmethod
    def open_or_create(
        cls,
        name: str,
        capacity: int,
        *,
        codec: Codec[T],
        mode: int = ...,
        spin: float = ...,
        checksum: bool = ...,
        allow_pickle: bool = ...,
    ) -> Queue[T]: ...
    @classmethod
    def open_or_create(
        cls,
        name: str,
        capacity: int,
        *,
        codec: str | Codec[Any] | None = None,
        mode: int = 0o600,
        spin: float = DEFAULT_SPIN,
        checksum: bool = False,
        allow_pickle: bool = False,
    ) -> Queue[Any]:
        """Open ``name``, creating it if needed; safe when many processes race.

        ``codec`` as for :meth:`open` when the queue exists (None adopts the
        recorded one where safe); a new queue gets ``codec`` or ``"bytes"``.

        Raises:
            LayoutError: it exists with a smaller capacity than asked for.
            CodecMismatch: as :meth:`open` (a codec that contradicts the queue's).
        """
        want = _check_capacity(capacity)
        cod = None if codec is None else _codec.resolve(codec)
        q: Queue[Any] = open_or_create(
            lambda: cls.create(
                name, capacity, codec=cod or "bytes", mode=mode, spin=spin, checksum=checksum
            ),
            lambda: cls.open(name, codec=cod, spin=spin, allow_pickle=allow_pickle),
            f"queue {name!r}",
        )
        if q.capacity < want:
            q.close()
            raise LayoutError(f"queue {name!r} exists with capacity {q.capacity} < {want}")
        return q

    def close(self) -> None:
        """Detach this handle (idempotent). The queue and its messages stay."""
        seg = self._seg
        if seg is None:
            return
        with contextlib.suppress(ShmkitError):  # a corrupt segment must not stop close
            # What this handle took and did not mark done counts as done now.
            self._settle_own(_mono() + 1.0)
        self._seg = None
        # From here every operation raises Closed at its first step (a C call
        # on the ring). The mapping and the pthread mutexes stay until this
        # object is collected: a thread still inside an operation finishes it
        # and unlocks. (A flock mutex's lock file is closed now; closing it
        # releases the lock.)
        self._r_close()
        if not self._pthread:
            self._mutex.close()
        seg.close()

    def shutdown(self, immediate: bool = False) -> None:
        """Close the queue for everyone (like ``queue.Queue.shutdown`` in Python 3.13).

        Producers then get ``Closed`` from ``put``; consumers get the messages
        still queued and then ``Closed``. Waiters wake at once. Permanent: to
        start over, unlink and create a new queue.

        Args:
            immediate: also discard every queued message (consumers get
                ``Closed`` at once).
        """
        self._check_open()

        def close_it() -> int:
            c = self._c
            st: int = c[_W_STATE] | _SHUT
            c[_W_STATE] = st
            if immediate:
                # The discarded messages' tasks are done (queue.Queue in 3.13 does the same).
                self._r_retire(max(c[_W_PUTS] - c[_W_GETS], 0))
                # Same order as a skip: head first, then gets (_repair copes with a death between).
                c[_W_HEAD] = c[_W_TAIL]
                c[_W_GETS] = c[_W_PUTS]
            return st

        st = self._run_locked(math.inf, close_it)
        assert not isinstance(st, _NoLock)
        self._wake(False, (st >> _GW) & _GWM, _M31)
        self._wake(True, (st >> 32) & _M31, _M31)

    @property
    def is_shutdown(self) -> bool:
        """True once ``shutdown()`` was called by any process."""
        self._check_open()
        return bool(self._c[_W_STATE] & _SHUT)

    @property
    def capacity(self) -> int:
        """Bytes of message data the queue holds; also the largest message."""
        return self._cap

    @property
    def codec(self) -> Codec[Any]:
        return self._codec

    @property
    def spin(self) -> float:
        """Seconds an empty (or full) queue is polled without the lock before sleeping.

        This is the base budget. A handle that keeps being woken soon after it
        went to sleep (its peer answers, but not within the budget) doubles
        its budget, up to 1 ms or ``spin`` if larger, and drops back to the
        base after a wait longer than that: the adaptive spinning of glibc's
        adaptive mutexes. 0 sleeps at once, always (least CPU).
        """
        return self._spin

    @spin.setter
    def spin(self, seconds: float) -> None:
        self._spin = self._spin_now = _wait.check_spin(seconds)

    def __reduce__(self) -> tuple[Any, ...]:
        codec: object = self._codec.name if type(self._codec) in _PLAIN_CODECS else self._codec
        return (_reopen, (self._name, codec, self._spin))

    def __repr__(self) -> str:
        try:
            state = "closed" if self._seg is None else f"capacity={self._cap}"
            return f"<Queue {self._name!r} {state} codec={self._codec.name!r}>"
        except Exception:
            return f"<Queue at {id(self):#x}>"

    # ------------------------------------------------------------------ put & get
    #
    # put, put_nowait, put_many, get, get_nowait, get_into and get_many are the
    # C base's (_core._queue.QueueCore): each is one C call from the call site
    # when it can finish there (arguments and timeout checked first, then the
    # fast path, a bounded spin, the large-message path); otherwise it calls
    # the general paths in _shm/queue_general.py. Their signatures, for type
    # checkers and readers (stdlib ``queue.Queue``'s, plus batches and get_into):

    if TYPE_CHECKING:

        @overload
        def put(
            self: Queue[bytes], item: BytesLike, block: bool = True, timeout: float | None = None
        ) -> None: ...
        @overload
        def put(self, item: T, block: bool = True, timeout: float | None = None) -> None: ...
        def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
            """Append one message, waiting up to ``timeout`` seconds for room.

            ``block=False`` (or ``timeout=0``) does not wait. For the default codec
            ``item`` is any bytes-like object (a numpy array goes as its raw bytes).
            Raises Full, Closed, MessageTooLarge (larger than ``capacity``), TypeError.
            """

        @overload
        def put_nowait(self: Queue[bytes], item: BytesLike) -> None: ...
        @overload
        def put_nowait(self, item: T) -> None: ...
        def put_nowait(self, item: Any) -> None:
            """``put(item, block=False)``: raise Full at once if there is no room."""

        @overload
        def put_many(
            self: Queue[bytes], items: Iterable[BytesLike], timeout: float | None = None
        ) -> None: ...
        @overload
        def put_many(self, items: Iterable[T], timeout: float | None = None) -> None: ...
        def put_many(self, items: Iterable[Any], timeout: float | None = None) -> None:
            """Append several messages as one batch record: all, contiguous and in order, or none.

            Raises Full (nothing was put), MessageTooLarge (the batch can never
            fit: split it), Closed, TypeError.
            """

        def get(self, block: bool = True, timeout: float | None = None) -> T:
            """Remove and return the oldest message, waiting up to ``timeout`` seconds.

            Raises Empty, Closed (shut down and empty, or this handle closed),
            LayoutError (corrupt control words; nothing is changed).
            """

        def get_nowait(self) -> T:
            """``get(block=False)``: raise Empty at once if nothing is queued."""

        def get_many(self, max_items: int, timeout: float | None = None) -> list[T]:
            """Remove up to ``max_items`` messages under one lock acquisition, oldest first.

            Waits (up to ``timeout``) only for the first. Raises Empty, Closed.
            """

        def get_into(self, buffer: BytesLike, timeout: float | None = None) -> int:
            """Copy the oldest message into ``buffer`` (writable, C-contiguous); its size.

            One copy, no allocation; the codec is bypassed. Raises BufferTooSmall
            (the message stays queued; ``needed`` says its size), TypeError,
            Empty, Closed.
            """

    # ------------------------------------------------------------------ inspection

    def qsize(self) -> int:
        """Messages queued right now (a snapshot: others may change it at once)."""
        self._check_open()
        c = self._c
        gets = c[_W_GETS]  # read gets first: puts only grows, so the difference never dips
        return min(max(c[_W_PUTS] - gets, 0), self._ring // 4)

    def empty(self) -> bool:
        """True if no message is queued right now (a snapshot)."""
        self._check_open()
        c = self._c
        return bool(c[_W_TAIL] == c[_W_HEAD])

    def full(self) -> bool:
        """True if not even an empty message fits right now (a snapshot)."""
        self._check_open()
        c = self._c
        free_from = c[_W_CLAIM] if c[_W_STATE] & _CLAIMED else c[_W_HEAD]
        return bool(self._ring - (c[_W_TAIL] - free_from) < _HDR)

    def statistics(self) -> QueueStatistics:
        """A snapshot of the queue's counters (taken under its lock when it is free)."""
        self._check_open()
        self._run_locked(_mono() + _wait.SLICE, self._reap_waiters)
        return snapshot(
            self._c,
            self._name,
            ring=self._ring,
            cap=self._cap,
            flags=self._flags,
            codec=self._codec_name(),
        )

    def _codec_name(self) -> str:
        seg = self._seg
        return parse_params(seg)[3] if seg is not None else ""

    # ------------------------------------------------------------------ waiting

    # ------------------------------------------------------------------ lock & repair

    # ------------------------------------------------------------------ helpers

    def _encode_with_codec(self, item: Any) -> bytes | bytearray | memoryview:
        return _codec.as_bytes(self._codec.encode(item))


_PLAIN_CODECS: Final = (_codec.RawCodec, _codec.PickleCodec, _codec.MsgpackCodec)
