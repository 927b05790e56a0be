#!/usr/bin/env bash
# Builds native._sha512chain with AddressSanitizer and UndefinedBehaviorSanitizer into a temporary
# directory and runs tests/test_native*.py against that build (the installed one is untouched).
# Usage: bash native/sanitize.sh [pytest args...]   (PYTHON defaults to .venv/bin/python)
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-$root/.venv/bin/python}"
cc="${CC:-cc}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# -g1, not -g: full debug info makes GCC take minutes on the unrolled kernels.
san="-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer"
echo "sanitize: building native with $san in $tmp"
(
    cd "$root"
    DYNWORK_NATIVE_CFLAGS="$san -O1 -g1" DYNWORK_NATIVE_LDFLAGS="$san" CC="$cc" \
        "$python" setup.py -q build_ext -j 2 --build-lib "$tmp/site" --build-temp "$tmp/build" >"$tmp/build.log" 2>&1 \
        || { cat "$tmp/build.log"; exit 1; }
)
cp "$root"/native/*.py "$tmp/site/native/"
for sym in __asan_init __ubsan_handle_; do
    nm -D "$tmp"/site/native/_sha512chain*.so | grep -q "$sym" \
        || { echo "sanitize: the build is not instrumented ($sym missing)" >&2; exit 1; }
done
# The native tests run from a copy, away from tests/conftest.py (which puts the project root, and
# with it the unsanitized build, first on sys.path).
mkdir -p "$tmp/site/native_tests"
cp -r "$root"/tests/test_native*.py "$root"/tests/native_support.py "$root"/tests/data "$tmp/site/native_tests/"

# Python itself is not instrumented, so the ASan runtime must be loaded first.
libasan="$("$cc" -print-file-name=libasan.so)"
[ -e "$libasan" ] || { echo "sanitize: libasan.so not found for $cc" >&2; exit 1; }

cd "$tmp/site" # first on sys.path with `python -m`: the sanitized build shadows the installed one
export LD_PRELOAD="$libasan"
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:strict_string_checks=1"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"
export DYNWORK_NATIVE_EXPECT_DIR="$tmp/site/native" # test_native.py checks it tests this build
"$python" -m pytest -q -p no:cacheprovider "$@" "$tmp"/site/native_tests
