#!/usr/bin/env bash
# Compile the C core for aarch64 (needs gcc-aarch64-linux-gnu: apt-get install
# gcc-aarch64-linux-gnu libc6-dev-arm64-cross) with our warning flags as errors,
# and count the ordering instructions the compiler emitted for our atomics:
# acquire loads (ldar/ldapr), release stores (stlr), fences (dmb) and the
# outline LSE atomics (__aarch64_cas*/ldadd*/swp*). It shows the memory model is
# expressed in C11 atomics that compile for arm64; it does not run on arm64.
set -euo pipefail
cd "$(dirname "$0")/.."
cc=${CC_AARCH64:-aarch64-linux-gnu-gcc}
objdump=${OBJDUMP_AARCH64:-aarch64-linux-gnu-objdump}
inc=$(python3 -c "import sysconfig; print(sysconfig.get_paths()['include'])")
out=$(mktemp -d)
for src in src/shmkit/_core/*.c; do
    obj="$out/$(basename "$src" .c).o"
    "$cc" -std=gnu11 -O2 -Wall -Wextra -Wno-missing-field-initializers -Werror -fPIC \
        -I"$inc" -Isrc/shmkit/_core -c "$src" -o "$obj"
    dis=$("$objdump" -d "$obj")
    printf '%-12s acquire loads %3d, release stores %3d, dmb %3d, LSE calls %3d\n' \
        "$(basename "$src")" \
        "$(grep -cE '\s(ldar|ldapr)[a-z]*\s' <<<"$dis" || true)" \
        "$(grep -cE '\sstlr[a-z]*\s' <<<"$dis" || true)" \
        "$(grep -cE '\sdmb\s' <<<"$dis" || true)" \
        "$(grep -cE '__aarch64_(cas|ldadd|swp|ldclr|ldset)' <<<"$dis" || true)"
done
rm -rf "$out"
echo "aarch64: the C core compiles with -Werror"
