#!/usr/bin/env bash
# Sanitizer stage: the whole test suite against an extension built with AddressSanitizer,
# UndefinedBehaviorSanitizer (any report aborts the run) and Cython's bounds checks.
#
# The build happens in a temporary copy of the sources, so the working tree (and any normal
# in-place build in it) is left alone. CPython is not instrumented, so the ASan runtime is
# preloaded; CPython's deliberate leaks at exit are not reported. Needs GCC (or CC set to a
# compiler that understands -print-file-name=libasan.so) and the test extras installed.
#
# Usage: bash .ci/sanitize.sh [extra pytest arguments]
#
# With CONVX_SANITIZE_DIR set, the copy and its build live in that (new or empty) directory
# and are kept: `bash .ci/sanitize.sh --build-only` stops after the build, and a later run
# with the same directory tests that build (CI builds while another stage runs its tests).
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS=0

if [[ -n "${CONVX_SANITIZE_DIR:-}" ]]; then
    work="$CONVX_SANITIZE_DIR"
    mkdir -p "$work"
else
    work="$(mktemp -d "${TMPDIR:-/tmp}/convx-sanitize.XXXXXX")"
    trap 'rm -rf "$work"' EXIT
fi

if [[ ! -e "$work/.built" ]]; then
    cp -R setup.py pyproject.toml README.md LICENSE src tests bench docs examples "$work/"
    find "$work/src" \( -name '*.so' -o -name '_core.c' -o -name '__pycache__' -o -name '_core.html' \) \
        -prune -exec rm -rf {} +

    # The build needs Cython (pip's isolated build environments are not used here).
    python -c "import Cython" 2>/dev/null || python -m pip install --quiet "Cython>=3.0" "setuptools>=64"

    echo "== sanitize: building with ASan + UBSan + Cython bounds checks"
    (cd "$work" && CONVX_SANITIZE=1 CONVX_DEBUG_CYTHON=1 python setup.py -q build_ext --inplace \
        > "$work/build.log" 2>&1) || { cat "$work/build.log"; exit 1; }
    touch "$work/.built"
fi
if [[ "${1:-}" == "--build-only" ]]; then
    echo "== sanitize: built in $work (${SECONDS}s)"
    exit 0
fi

asan_runtime="$("${CC:-cc}" -print-file-name=libasan.so)"
if [[ ! -e "$asan_runtime" ]]; then
    echo "sanitize: the compiler has no ASan runtime (libasan.so)" >&2
    exit 1
fi

# Reports go to files as well as stderr: pytest captures stderr, and a run that aborts loses it.
reports="$work/reports"
mkdir -p "$reports"
# libstdc++ too, so that ASan finds the real C++ exception functions when it starts: C++
# extensions the tests load (matplotlib's) throw and catch exceptions, which abort otherwise.
libstdcxx="$("${CC:-cc}" -print-file-name=libstdc++.so.6)"
export LD_PRELOAD="$asan_runtime${libstdcxx:+:$libstdcxx}"
export ASAN_OPTIONS="detect_leaks=0:allocator_may_return_null=1:halt_on_error=1:log_path=$reports/asan"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:log_path=$reports/ubsan"
# Python's own allocations through malloc, where ASan watches them.
export PYTHONMALLOC=malloc
export PYTHONPATH="$work/src"

echo "== sanitize: running the test suite ($(( SECONDS ))s so far)"
status=0
(cd "$work" && timeout 2400 python -m pytest -p no:cacheprovider "$@") || status=$?
unset LD_PRELOAD

if compgen -G "$reports/*" > /dev/null; then
    echo "== sanitize: reports"
    cat "$reports"/*
    status=1
fi
echo "== sanitize: done in ${SECONDS}s (exit status $status)"
exit "$status"
