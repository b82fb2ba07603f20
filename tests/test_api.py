"""The public surface: __all__ is honest, the package is typed, errors form one tree."""

from __future__ import annotations

import importlib.resources
import inspect
import queue

import shmkit
from shmkit import errors


def test_all_names_exist_and_everything_public_is_listed() -> None:
    for name in shmkit.__all__:
        assert hasattr(shmkit, name), name
    public = {n for n in vars(shmkit) if not n.startswith("_") and n[0].isupper()}
    assert public <= set(shmkit.__all__), public - set(shmkit.__all__)


def test_package_ships_py_typed() -> None:
    assert importlib.resources.files("shmkit").joinpath("py.typed").is_file()


def test_every_error_is_a_shmkit_error_and_the_builtins_still_match() -> None:
    for name in errors.__all__:
        obj = getattr(errors, name)
        if inspect.isclass(obj):
            assert issubclass(obj, errors.ShmkitError), name
    assert issubclass(errors.NotFound, FileNotFoundError)
    assert issubclass(errors.AlreadyExists, FileExistsError)
    assert issubclass(errors.Timeout, TimeoutError)
    assert issubclass(errors.Empty, queue.Empty)
    assert issubclass(errors.Full, queue.Full)
    assert issubclass(errors.ShmFull, OSError)
    assert issubclass(errors.InvalidName, ValueError)


def test_module_entry_point_runs() -> None:
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "shmkit", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert out.stdout.strip() == f"shmkit {shmkit.__version__}"
