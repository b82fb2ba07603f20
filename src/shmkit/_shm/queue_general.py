"""The Queue's general (Python) paths: what the C fast paths hand over (mixed into Queue).

``shmkit._core._queue.QueueCore`` implements the public ``put``/``get``/
``put_nowait``/``get_nowait``/``get_into``/``get_many``/``put_many``: each
checks its arguments (the timeout first), runs the fast path, a bounded spin
and the large-message path in C, and calls one of the methods below only
when none of those can finish: another codec, a wrapped or corrupt record, a
checksum queue, a shut-down queue, or waiting. They validate everything,
wait on the futex words and raise the precise errors.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from itertools import accumulate
from typing import Any

from .. import _codec, _wait
from ..errors import Closed, LayoutError, MessageTooLarge
from .queue_liveness import _Claim, _Reservation
from .queue_repair import LockAndWait, _deadline
from .queue_ring import (
    _AGAIN,
    _CLAIMED,
    _FULL,
    _RESERVED,
    _SHUT,
    _W_CLAIM,
    _W_HEAD,
    _W_STATE,
    _W_TAIL,
    _mono,
    _perf,
)

__all__ = ["GeneralPaths"]


class GeneralPaths(LockAndWait):
    """put/get and friends when the C fast paths cannot finish (see the module docstring)."""

    __slots__ = ()
    _cap: int
    _decode: Any
    _encode: Any
    _encoded: bool
    _raw: bool

    # ------------------------------------------------------------------ put

    def _put_py(self, item: Any, timeout: float | None) -> None:
        """put() of an item the C path does not send as is (another codec, not ``bytes``)."""
        if type(item) is not bytes or self._encoded:
            item = self._encode(item)  # raises TypeError before anything is touched
        r = self._r_put(item, 1)
        if not r:
            return
        spin = self._spin_now
        if r == _FULL and timeout != 0 and spin:
            start = _perf()
            need = (len(item) + 23) & -8
            if self._poll(True, need, spin if timeout is None else min(spin, timeout)):
                r = self._r_put(item, 1)
                if not r:
                    return
            if timeout is not None:
                timeout = max(0.0, timeout - (_perf() - start))
            spin = 0.0
        self._put_slow(item, len(item), 1, timeout, spin)

    def _put_many_py(self, items: Iterable[Any], timeout: float | None) -> None:
        """put_many() beyond a list of ``bytes`` that fits at once: encode, pack, wait."""
        if self._raw:
            datas = [x if type(x) is bytes else _codec.as_bytes(x) for x in items]
        else:
            encode = self._encode
            datas = [encode(x) for x in items]
        if not datas:
            return
        count = len(datas)
        if count == 1:
            data = datas[0]
        else:
            # One batch record: the message count, their end offsets, their bytes.
            lens = list(map(len, datas))
            if max(lens) > self._cap:
                index = next(i for i, n in enumerate(lens) if n > self._cap)
                raise MessageTooLarge(
                    f"queue {self._name!r}: message {index} of the batch is {lens[index]} "
                    f"bytes; the capacity is {self._cap}"
                )
            ends = struct.pack(f"<{count + 1}I", count, *accumulate(lens))
            data = b"".join([ends, *datas])
        if not self._r_put(data, count):
            return
        self._put_slow(data, len(data), count, timeout, self._spin_now)

    def _put_slow(self, data: Any, n: int, count: int, timeout: float | None, spin: float) -> None:
        """Publish one record (a message, or a batch of ``count``), waiting for room."""
        if count == 1 and n > self._cap:
            raise MessageTooLarge(
                f"queue {self._name!r}: message is {n} bytes; the capacity is {self._cap}"
            )
        total = (n + 23) & -8
        if total > self._ring:
            raise MessageTooLarge(
                f"queue {self._name!r}: a batch of {count} messages needs {total} bytes "
                f"with headers; the ring holds {self._ring}"
            )

        def attempt() -> object:
            return self._write_locked(data, n, count)

        def ready() -> bool:
            c = self._c
            st = c[_W_STATE]
            if st & _SHUT:
                return True
            free_from = c[_W_CLAIM] if st & _CLAIMED else c[_W_HEAD]
            return not st & _RESERVED and self._ring - (c[_W_TAIL] - free_from) >= total

        end = _deadline(timeout)
        try:
            r = self._wait(attempt, ready, timeout, putter=True, spin=spin, need=total)
            if type(r) is _Reservation:
                self._fill_reservation(r, data, end)
        except BaseException:
            self._abandon_pending()
            raise

    # ------------------------------------------------------------------ get

    def _get_slow(self, timeout: float | None, spin: float) -> Any:
        """get() when the C paths found nothing, or something only this path handles."""
        out: list[Any] = []
        end = _deadline(timeout)

        def attempt() -> object:
            return True if self._take_locked(1, out, None) else _AGAIN

        try:
            self._wait(attempt, self._can_get, timeout, putter=False, spin=spin, need=0)
            data = out[0]
            if type(data) is _Claim:
                data = self._claimed(data, None, end)
        except BaseException:
            self._abandon_pending()
            raise
        dec = self._decode
        return data if dec is None else dec(data)

    def _get_into_py(self, buffer: Any, timeout: float | None, spin: float) -> int:
        """get_into() when the C paths could not: checks the buffer, waits, copies."""
        try:
            view = memoryview(buffer)
        except TypeError:
            raise TypeError(
                f"get_into needs a writable buffer, not {type(buffer).__name__}"
            ) from None
        if view.readonly or not view.c_contiguous:
            raise TypeError("get_into needs a writable, C-contiguous buffer")
        view = view.cast("B")
        out: list[Any] = []
        end = _deadline(timeout)

        def attempt() -> object:
            return True if self._take_locked(1, out, view) else _AGAIN

        try:
            self._wait(attempt, self._can_get, timeout, putter=False, spin=spin, need=0)
            if type(out[0]) is _Claim:
                return int(self._claimed(out[0], view, end))
        except BaseException:
            self._abandon_pending()
            raise
        return int(out[0])

    def _get_many_py(self, max_items: int, timeout: float | None, fast: object) -> list[Any]:
        """get_many() after the C fast path's answer ``fast``: the rest, or waiting."""
        dec = self._decode
        out: list[Any]
        if type(fast) is tuple:
            out = fast[0]
            # It stopped at a record that wraps, is large or is corrupt: the
            # general path takes the rest now (and skips bad records).
            self._take_more(max_items - len(out), out)
            return out if dec is None else [dec(d) for d in out]
        out = []
        end = _deadline(timeout)

        def attempt() -> object:
            return True if self._take_locked(max_items, out, None) else _AGAIN

        try:
            self._wait(attempt, self._can_get, timeout, putter=False, spin=self._spin_now, need=0)
            if type(out[0]) is _Claim:
                out[0] = self._claimed(out[0], None, end)
        except BaseException:
            self._abandon_pending()
            raise
        return out if dec is None else [dec(d) for d in out]

    def _take_more(self, limit: int, out: list[Any]) -> None:
        """get_many after its fast path: up to ``limit`` more under both locks, if free soon."""
        try:
            try:
                self._run_locked(_mono() + _wait.SLICE, lambda: self._take_locked(limit, out, None))
            except (LayoutError, Closed):
                pass  # reported by the next call; these are already taken
            if out and type(out[-1]) is _Claim:
                out[-1] = self._claimed(out[-1], None, _mono() + _wait.SLICE)
        except BaseException:
            self._abandon_pending()
            raise
