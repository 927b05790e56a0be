#!/usr/bin/env bash
# Builds native._sha512chain with sanitizers into temporary directories and runs the native tests
# against those builds (the installed one is untouched):
# - AddressSanitizer and UndefinedBehaviorSanitizer: every test of tests/test_native*.py;
# - ThreadSanitizer: the feed tests, where one thread pushes jobs while another hashes them (the
#   only memory two threads share in native/).
# Usage: bash native/sanitize.sh [pytest args...]   (PYTHON defaults to .venv/bin/python; the args
# go to the AddressSanitizer run)
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-$root/.venv/bin/python}"
cc="${CC:-cc}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# build NAME FLAGS SYMBOL...: the module built with FLAGS into $tmp/NAME/site, checked to carry
# each SYMBOL, with a copy of the native tests beside it.
build() {
    local name="$1" san="$2"
    shift 2
    local dir="$tmp/$name"
    echo "sanitize: building native with $san in $dir"
    # -g1, not -g: full debug info makes GCC take minutes on the unrolled kernels.
    (
        cd "$root"
        DYNWORK_NATIVE_CFLAGS="$san -O1 -g1" DYNWORK_NATIVE_LDFLAGS="$san" CC="$cc" \
            "$python" setup.py -q build_ext -j 2 --build-lib "$dir/site" --build-temp "$dir/build" >"$dir.log" 2>&1 \
            || { cat "$dir.log"; exit 1; }
    )
    cp "$root"/native/*.py "$dir/site/native/"
    for sym in "$@"; do
        nm -D "$dir"/site/native/_sha512chain*.so | grep -q "$sym" \
            || { echo "sanitize: the $name build is not instrumented ($sym missing)" >&2; exit 1; }
    done
    # The native tests run from a copy, away from tests/conftest.py (which puts the project root,
    # and with it the unsanitized build, first on sys.path).
    mkdir -p "$dir/site/native_tests"
    cp -r "$root"/tests/test_native*.py "$root"/tests/native_support.py "$root"/tests/data "$dir/site/native_tests/"
}

# runtime NAME: the sanitizer's runtime library, which must be loaded first (Python itself is not
# instrumented).
runtime() {
    local lib
    lib="$("$cc" -print-file-name="lib$1.so")"
    [ -e "$lib" ] || { echo "sanitize: lib$1.so not found for $cc" >&2; exit 1; }
    echo "$lib"
}

# run NAME RUNTIME [pytest args...]: the copied tests against the NAME build; `cd` there puts it
# first on sys.path with `python -m`, so it shadows the installed one.
run() {
    local dir="$tmp/$1" lib="$2"
    shift 2
    (
        cd "$dir/site"
        export DYNWORK_NATIVE_EXPECT_DIR="$dir/site/native" # test_native.py checks it tests this build
        LD_PRELOAD="$lib" "$python" -m pytest -q -p no:cacheprovider "$@" "$dir"/site/native_tests
    )
}

build asan "-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer" \
    __asan_init __ubsan_handle_
build tsan "-fsanitize=thread -fno-omit-frame-pointer" __tsan_init
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:strict_string_checks=1"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"
export TSAN_OPTIONS="halt_on_error=1:exitcode=66"
asan_lib="$(runtime asan)"
tsan_lib="$(runtime tsan)"
run asan "$asan_lib" "$@"
echo "sanitize: the feed tests under ThreadSanitizer"
run tsan "$tsan_lib" -k feed
