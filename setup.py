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

setup(
    ext_modules=[
        Extension(
            "shmkit._core._native",
            sources=["src/shmkit/_core/_native.c"],
            depends=["src/shmkit/_core/shm.h"],
            extra_compile_args=_FLAGS,
            # glibc < 2.34 keeps the robust-mutex functions in libpthread.
            libraries=["pthread"],
            extra_link_args=_LINK,
        ),
        # The seqlock Latest and Broadcast share (zlib for the opt-in CRC).
        Extension(
            "shmkit._core._seqlock",
            sources=["src/shmkit/_core/_seqlock.c"],
            depends=["src/shmkit/_core/shm.h"],
            extra_compile_args=_FLAGS,
            libraries=["pthread", "z"],
            extra_link_args=_LINK,
        ),
    ],
)
