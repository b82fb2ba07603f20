"""Batch records of the Queue (``put_many``): the payload format and its reader.

A batch record's payload is a u32 count k, k u32 end offsets (cumulative,
from the first message's first byte) and the k messages back to back; see
the record format in ``queue_ring.py``. The C fast paths read the same format.
"""

from __future__ import annotations

import operator
import struct
from typing import Any, Final

__all__ = ["U32", "split_batch"]

U32: Final = struct.Struct("<I")
_U32X2: Final = struct.Struct("<II")


def split_batch(
    buf: Any, start: int, n: int, skip: int, limit: int
) -> tuple[list[bytes], int] | None:
    """Messages ``skip`` .. ``skip + limit`` of the batch payload ``buf[start : start + n]``.

    The payload is a u32 count k, k u32 end offsets (cumulative, from the
    first message's first byte) and the messages. Reads only the offsets it
    needs, so taking one message is O(1) however large the batch. Returns the
    messages and k, or None if the payload is not a well-formed batch.
    """
    if n < 8:
        return None
    k = U32.unpack_from(buf, start)[0]
    if not 0 < k <= (n - 4) >> 2 or skip >= k:
        return None
    first = start + 4 + 4 * k
    total = n - 4 - 4 * k
    if U32.unpack_from(buf, first - 4)[0] != total:  # the last end is the size
        return None
    m = min(limit, k - skip)
    if m == 1:  # one message (get): two offsets, no lists
        if skip:
            b, e = _U32X2.unpack_from(buf, start + 4 * skip)
        else:
            b, e = 0, U32.unpack_from(buf, start + 4)[0]
        if not b <= e <= total:
            return None
        return [buf[first + b : first + e]], k
    if skip:
        ends: tuple[int, ...] = struct.unpack_from(f"<{m + 1}I", buf, start + 4 * skip)
    else:
        ends = (0, *struct.unpack_from(f"<{m}I", buf, start + 4))
    if ends[-1] > total or not all(map(operator.le, ends, ends[1:])):
        return None
    offs = list(map(first.__add__, ends))
    return list(map(buf.__getitem__, map(slice, offs[:-1], offs[1:]))), k
