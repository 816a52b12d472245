#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# CI: memory and undefined-behaviour checks.
#  1. build-asan/: the whole tree with -fsanitize=address,undefined
#     -fno-omit-frame-pointer (gcc; SANITIZE_CC=clang for clang), then
#     `make check` (OpenCL through PoCL included).
#     LeakSanitizer is off (ASAN_OPTIONS=detect_leaks=0): it needs ptrace-free
#     stop-the-world, which containers often refuse ("LeakSanitizer has
#     encountered a fatal error"), and it would report PoCL's process-lifetime
#     allocations. Leaks are checked by valgrind in step 2 instead.
#     allocator_may_return_null=1: the library must answer a failed
#     allocation (tests/test_faults asks for 2^50 bytes) with a status.
#  2. build-valgrind/: a plain -O1 -g build whose test programs run under
#     valgrind memcheck with --error-exitcode=1 --leak-check=full
#     --errors-for-leak-kinds=definite: zero errors and no definite leaks.
#     tests/valgrind.supp hides only what PoCL, LLVM and the OpenCL ICD
#     loader do inside themselves.
# The CUDA module is left out of both builds (nvcc does not take these flags
# and CI has no NVIDIA GPU). Environment: SANITIZE_CC, VALGRIND_TESTS (the
# test programs for step 2, or all; default below), SANITIZE_SKIP_ASAN=1,
# SANITIZE_SKIP_VALGRIND=1, JOBS.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
jobs=${JOBS:-$(nproc)}
[ -x configure ] || autoreconf -fi >/dev/null

# gcc by default (the compiler CI builds with); SANITIZE_CC=clang works too.
cc=${SANITIZE_CC:-gcc}
export DISTRATTN_REQUIRE_BACKENDS="${DISTRATTN_REQUIRE_BACKENDS:-cpu,opencl}"

if [ "${SANITIZE_SKIP_ASAN:-0}" != 1 ]; then
  echo "ci-sanitize: ASan + UBSan build with $cc in build-asan/"
  san="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"
  mkdir -p build-asan
  (cd build-asan && ../configure --enable-silent-rules --without-cuda CC="$cc" \
     CFLAGS="-g -O1 $san" LDFLAGS="$san" >/dev/null && make -j"$jobs" >/dev/null)
  # use_sigaltstack=0: PoCL's LLVM installs its own alternate signal stack in
  # its threads, and ASan then dies at thread exit ("unable to unmap").
  export ASAN_OPTIONS=detect_leaks=0:allocator_may_return_null=1:halt_on_error=1:use_sigaltstack=0:strict_string_checks=1:detect_stack_use_after_return=1
  export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
  if ! (cd build-asan && make -j"$jobs" check >/dev/null); then
    tail -n 100 build-asan/tests/*.log
    echo "ci-sanitize: make check failed under ASan/UBSan" >&2
    exit 1
  fi
  grep -h -E '^# (PASS|FAIL|SKIP|ERROR|XFAIL)' build-asan/test-suite.log | tr '\n' ' '
  echo
  unset ASAN_OPTIONS UBSAN_OPTIONS
fi

if [ "${SANITIZE_SKIP_VALGRIND:-0}" != 1 ]; then
  command -v valgrind >/dev/null || { echo "ci-sanitize: valgrind not found" >&2; exit 1; }
  echo "ci-sanitize: valgrind memcheck of the tests (build-valgrind/)"
  mkdir -p build-valgrind
  (cd build-valgrind && ../configure --enable-silent-rules --without-cuda CFLAGS="-g -O1" \
     >/dev/null && make -j"$jobs" >/dev/null && make -j"$jobs" check TESTS= >/dev/null)
  bd=$root/build-valgrind
  export DISTRATTN_BACKEND_PATH="$bd/cl/.libs"
  # Default: the suites of bad inputs, faults, modules, lazy loading and
  # threads, which cover every API entry on the CPU and OpenCL backends. The
  # big accuracy suites (test_attention, test_invariants, test_consistency)
  # take hours under valgrind with PoCL compiling kernels;
  # VALGRIND_TESTS=all runs them.
  tests=${VALGRIND_TESTS:-test_status test_desc test_hash test_modules test_lazy test_threads test_faults test_wrap test_capture}
  if [ "$tests" = all ]; then
    tests=$(cd "$bd" && ls tests/test_* | grep -v -E '\.[a-z]+$' | sed 's|^tests/||')
  fi
  fail=0
  for t in $tests; do
    [ -x "$bd/tests/$t" ] || continue
    start=$(date +%s)
    # Valgrind runs the forked children of tests/test_modules too.
    # libtool --mode=execute: a test linked with the shared library
    # (tests/test_wrap) is a libtool wrapper script in the build tree
    if (cd "$bd" && DA_TEST_TIMEOUT=3000 ./libtool --mode=execute valgrind -q --error-exitcode=1 --leak-check=full \
          --errors-for-leak-kinds=definite --show-leak-kinds=definite --num-callers=40 \
          --suppressions="$root/tests/valgrind.supp" "tests/$t" >"tests/$t.vg.log" 2>&1); then
      echo "ci-sanitize: valgrind $t: clean ($(( $(date +%s) - start )) s)"
    else
      echo "ci-sanitize: valgrind $t: FAILED ($(( $(date +%s) - start )) s)" >&2
      tail -n 80 "$bd/tests/$t.vg.log" >&2
      fail=1
    fi
  done
  [ "$fail" = 0 ] || exit 1
fi
echo "ci-sanitize: OK"
