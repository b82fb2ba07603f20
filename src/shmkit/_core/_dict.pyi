"""Type stubs for SharedDict's C core (see _dict.c)."""

from typing import Any, Final

from shmkit.errors import Full

BUSY: Final[object]
MOVED: Final[object]

class NeedGrowth(Full):  # args[0]: bytes the entry needs
    ...

OP_SET: Final[int]
OP_POP: Final[int]
OP_SETDEFAULT: Final[int]
OP_CAS: Final[int]
OP_CLEAR: Final[int]
OP_POPITEM: Final[int]
OP_REPAIR: Final[int]
OP_COMPACT: Final[int]
OP_UPDATE: Final[int]

def hash_key(key: str | bytes, seed: int) -> int: ...
def reload_test_points() -> None: ...

class DictBase:
    _c_retries: int
    def __getitem__(self, key: Any) -> Any: ...
    def __setitem__(self, key: Any, value: Any) -> None: ...
    def __delitem__(self, key: Any) -> None: ...
    def __contains__(self, key: object) -> bool: ...
    def __len__(self) -> int: ...
    def get(self, key: Any, default: Any = None) -> Any: ...
    def _c_attach(
        self,
        root: Any,
        name: str,
        root_body_off: int,
        max_key: int,
        seed: int,
        flock: bool,
        grow: bool,
        encode: Any,
        decode: Any,
    ) -> None: ...
    def _c_retarget(
        self,
        table: Any,
        body_off: int,
        capacity: int,
        nslots: int,
        heap_size: int,
        idx0: int,
        idx1: int,
        heap_off: int,
        gen: int,
    ) -> None: ...
    def _c_grow(
        self,
        table: Any,
        body_off: int,
        capacity: int,
        nslots: int,
        heap_size: int,
        idx0: int,
        idx1: int,
        heap_off: int,
        gen: int,
        wait: float,
    ) -> int | object: ...
    def _c_gen(self) -> int: ...
    def _c_detach(self) -> None: ...
    def _c_read(self, key: str | bytes, tries: int) -> tuple[int, bytes] | bool | None: ...
    def _c_write(self, op: int, key: Any, data: Any, expect: int, wait: float) -> Any: ...
    def _c_scan(self, mode: int) -> list[Any] | bool: ...
    def _c_verify(self, wait: float) -> list[str] | object: ...
    def _c_wait(self, expected: int, seconds: float) -> bool: ...
    def _c_counters(
        self,
    ) -> tuple[int, int, int, int, int, int, int, int, int, int, int]: ...
