"""``import shmkit`` stays cheap: heavy modules load only when a program uses them."""

from __future__ import annotations

import json
import subprocess
import sys

import shmkit

HEAVY = ("numpy", "rich", "msgpack", "hashlib", "pickle", "shmkit._bench", "shmkit.cli")


def _loaded_after(code: str) -> set[str]:
    """Which of HEAVY are in sys.modules after a fresh interpreter runs ``code``."""
    report = f"print(json.dumps(sorted(set({HEAVY!r}) & set(sys.modules))))"
    probe = f"{code}\nimport json, sys\n{report}"
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    return set(json.loads(out.stdout.splitlines()[-1]))


def test_import_shmkit_loads_no_heavy_module() -> None:
    assert _loaded_after("import shmkit") == set()


def test_import_shmkit_loads_no_object_module_until_used() -> None:
    code = "import shmkit, sys\nassert 'shmkit.queue' not in sys.modules, 'queue loaded'"
    code += "\nassert 'shmkit.broadcast' not in sys.modules, 'broadcast loaded'"
    assert _loaded_after(code) == set()


def test_a_lock_user_loads_neither_numpy_nor_rich() -> None:
    assert not _loaded_after("import shmkit\nshmkit.Lock\nshmkit.Queue") & {"numpy", "rich"}


def test_every_public_name_resolves_and_star_import_works() -> None:
    namespace: dict[str, object] = {}
    exec("from shmkit import *", namespace)
    for name in shmkit.__all__:
        assert namespace[name] is getattr(shmkit, name)
    assert set(shmkit.__all__) <= set(dir(shmkit))


def test_unknown_attribute_is_an_attribute_error() -> None:
    try:
        shmkit.NoSuchThing  # noqa: B018
    except AttributeError as exc:
        assert "NoSuchThing" in str(exc)
    else:
        raise AssertionError("shmkit.NoSuchThing did not raise")
