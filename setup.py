"""Build shmkit's C core (the rest of the metadata is in pyproject.toml)."""

import os

from setuptools import Extension, setup

_FLAGS = ["-std=gnu11", "-O2", "-Wall", "-Wextra", "-Wno-missing-field-initializers"]
# Warnings are errors in our own builds (CI sets SHMKIT_WERROR=1); a user's
# compiler of another vintage only warns.
if os.environ.get("SHMKIT_WERROR") == "1":
    _FLAGS.append("-Werror")
if os.environ.get("SHMKIT_SANITIZE") == "1":
    _FLAGS += ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-O1", "-g"]

_LINK = ["-fsanitize=address,undefined"] if os.environ.get("SHMKIT_SANITIZE") == "1" else []

def _extension(name: str, libraries: tuple[str, ...] = ()) -> Extension:
    return Extension(
        f"shmkit._core.{name}",
        sources=[f"src/shmkit/_core/{name}.c"],
        depends=["src/shmkit/_core/shm.h"],
        extra_compile_args=_FLAGS,
        # glibc < 2.34 keeps the robust-mutex functions in libpthread.
        libraries=["pthread", *libraries],
        extra_link_args=_LINK,
    )


setup(
    ext_modules=[
        _extension("_native"),
        _extension("_queue"),
        # The seqlock Latest and Broadcast share (zlib for the opt-in CRC).
        _extension("_seqlock", ("z",)),
        # SharedDict's hash table.
        _extension("_dict"),
    ]
)
