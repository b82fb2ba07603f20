"""Queue.open and the creator's codec: adopted where safe, pickle only with consent.

Every combination of the codec a queue was created with and what the opener
passes (nothing, ``allow_pickle=True``, each builtin name, a custom codec).
"""

from __future__ import annotations

import pickle
from typing import Any

import pytest

from shmkit import Queue
from shmkit.errors import CodecMismatch

from .helpers import finish, read_line, spawn

pytestmark = pytest.mark.timeout(60)


class Upper:
    """A custom codec: str in, upper-cased str out."""

    name = "upper"

    def encode(self, item: str) -> bytes:
        return item.encode()

    def decode(self, data: bytes) -> str:
        return data.decode().upper()


ITEM: dict[str, Any] = {"bytes": b"raw", "pickle": {"k": (1, 2)}, "msgpack": [1, "two"]}
CREATED = ["bytes", "pickle", "msgpack", "custom"]
OPENED = ["default", "allow_pickle", "bytes", "pickle", "msgpack", "custom"]


def _codec(label: str) -> Any:
    return Upper() if label == "custom" else label


def _expect(created: str, opened: str) -> str:
    """What opening does: 'ok' (the recorded codec is used) or the error's key words."""
    if opened in ("default", "allow_pickle"):
        if created == "pickle" and opened == "default":
            return "allow_pickle=True"
        if created == "custom":
            return "custom codec"
        return "ok"
    return "ok" if opened == created else "contradicts"


@pytest.mark.parametrize("opened", OPENED)
@pytest.mark.parametrize("created", CREATED)
def test_every_created_and_opened_codec_combination(name: str, created: str, opened: str) -> None:
    with Queue.create(name, 4096, codec=_codec(created), unlink_on_exit=True) as q:
        item = "mixed Case" if created == "custom" else ITEM[created]
        q.put(item)
        kwargs: dict[str, Any] = {}
        if opened == "allow_pickle":
            kwargs["allow_pickle"] = True
        elif opened != "default":
            kwargs["codec"] = _codec(opened)
        want = _expect(created, opened)
        if want != "ok":
            with pytest.raises(CodecMismatch, match=want) as info:
                Queue.open(name, **kwargs)
            message = str(info.value)
            assert "\n" not in message and name in message
            recorded = "upper" if created == "custom" else created
            assert f"codec={recorded!r}" in message  # names the recorded codec
            return
        with Queue.open(name, **kwargs) as other:
            got = other.get(timeout=1)
            assert got == ("MIXED CASE" if created == "custom" else item)
            assert other.codec.name == q.codec.name


def test_pickle_refusal_says_what_to_pass(name: str) -> None:
    with Queue.create(name, 4096, codec="pickle", unlink_on_exit=True):
        with pytest.raises(CodecMismatch) as info:
            Queue.open(name)
        text = str(info.value)
        assert "codec='pickle'" in text and "allow_pickle=True" in text and "trusted" in text


def test_open_or_create_adopts_and_checks_the_codec(name: str) -> None:
    q = Queue.open_or_create(name, 4096, codec="msgpack")
    try:
        q.put([1, 2])
        with Queue.open_or_create(name, 4096) as adopted:  # codec=None: adopt msgpack
            assert adopted.codec.name == "msgpack" and adopted.get(timeout=1) == [1, 2]
        with pytest.raises(CodecMismatch, match="contradicts"):
            Queue.open_or_create(name, 4096, codec="bytes")
    finally:
        q.unlink()
        q.close()
    with Queue.open_or_create(name, 4096) as fresh:  # created with the default codec
        assert fresh.codec.name == "bytes"
        fresh.unlink()


def test_bad_allow_pickle_is_a_type_error(name: str) -> None:
    with (
        Queue.create(name, 64, unlink_on_exit=True),
        pytest.raises(TypeError, match="allow_pickle"),
    ):
        Queue.open(name, allow_pickle=1)  # type: ignore[call-overload]


PICKLE_READER = """
import sys
from shmkit import Queue
from shmkit.errors import CodecMismatch
try:
    Queue.open(sys.argv[1])
except CodecMismatch:
    print("refused", flush=True)
with Queue.open(sys.argv[1], allow_pickle=True) as q:
    print(repr(q.get(timeout=5)), flush=True)
"""


def test_another_process_adopts_pickle_only_with_consent(name: str) -> None:
    with Queue.create(name, 4096, codec="pickle", unlink_on_exit=True) as q:
        q.put({"job": 7})
        proc = spawn(PICKLE_READER, name)
        assert read_line(proc) == "refused"
        assert read_line(proc) == "{'job': 7}"
        finish(proc)
        assert pickle.loads(pickle.dumps(q)).codec.name == "pickle"  # reopens consistently
