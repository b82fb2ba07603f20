#!/usr/bin/env bash
# Build the C core under AddressSanitizer + UndefinedBehaviorSanitizer in a
# scratch virtual environment and run the suites that drive it hardest: the
# core and lock tests, the Queue crash, stress and model tests, the
# Broadcast/Latest tests, the SharedDict tests and both torn-read hunts.
#
#   bash scripts/sanitize.sh            # about 10 minutes on 2 cores
#
# Any ASan/UBSan report fails the run (halt_on_error; UBSan made fatal).
set -euo pipefail
cd "$(dirname "$0")/.."

venv=$(mktemp -d)/venv
python3 -m venv "$venv"
# shellcheck disable=SC1091
. "$venv/bin/activate"
python -m pip install --quiet --upgrade pip
# A separate copy of the tree so the in-place .so of the checkout is untouched.
work=$(mktemp -d)
git ls-files -z | xargs -0 -I{} cp --parents {} "$work"/
cd "$work"
SHMKIT_SANITIZE=1 SHMKIT_WERROR=1 python -m pip install --quiet --no-build-isolation -e ".[test]" 2>/dev/null \
  || SHMKIT_SANITIZE=1 SHMKIT_WERROR=1 python -m pip install --quiet -e ".[test]"

asan=$(gcc -print-file-name=libasan.so)
ubsan=$(gcc -print-file-name=libubsan.so)
export LD_PRELOAD="$asan $ubsan"
# CPython's own allocations are not instrumented; leaks at exit are its, not ours.
export ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:abort_on_error=1"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"
export PYTHONMALLOC=malloc

status=0
run() { echo "== $*"; "$@" || status=1; }
run python -m pytest -q -p no:cacheprovider -o addopts="" -m "not slow" \
    tests/test_core.py tests/test_sync.py tests/test_queue.py tests/test_queue_crash.py \
    tests/property/test_queue_model.py tests/test_latest.py tests/test_broadcast.py \
    tests/test_broadcast_crash.py tests/test_broadcast_waits.py tests/test_broadcast_lifecycle.py \
    tests/test_queue_native.py tests/test_seqlock.py \
    tests/test_overwritten_mid_copy.py tests/test_queue_corruption.py \
    tests/test_mapping.py tests/test_mapping_crash.py tests/property/test_dict_model.py \
    tests/test_queue_tasks.py tests/test_queue_codec.py \
    tests/test_mapping_grow.py tests/test_mapping_verify_cli.py
run python scripts/queue_stress.py --preset small
run python scripts/queue_stress.py --preset small --kill 3
run python scripts/torn_hunt_latest.py --seconds 5
run python scripts/torn_hunt_broadcast.py --seconds 5
if [ "$status" -ne 0 ]; then
    echo "sanitize: FAILED" >&2
    exit 1
fi
echo "sanitize: clean (ASan + UBSan)"
