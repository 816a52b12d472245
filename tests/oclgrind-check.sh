#!/bin/sh
# SPDX-License-Identifier: Apache-2.0
# Runs tests/test_oclgrind under the Oclgrind simulator with its checkers on,
# once with each shape of the fused kernel (DISTRATTN_CL_KERNEL=rows, the
# CPU one, and tiled, the GPU one), and fails on anything Oclgrind reports
# (out-of-bounds access, data race, uninitialised value, barrier divergence,
# OpenCL API error), on a failed or skipped cmocka test and on a missing
# prerequisite.
#
#   DISTRATTN_OCLGRIND=1   required: without it this script is a SKIP (77)
#                          so that a plain `make check` does not need Oclgrind
#   OCLGRIND               the launcher (default: oclgrind on PATH)
#   OCLGRIND_FLAGS         replaces the checker options below
#   DA_OCLGRIND_PROGRAM    the test program (default: tests/test_oclgrind in
#                          the current, i.e. the build, folder)
#   DISTRATTN_BACKEND_PATH as for every test (set by make check; default
#                          cl/.libs of the build folder)
# Exit status: 0 pass, 1 fail, 77 skip (only without DISTRATTN_OCLGRIND=1).
set -u

if [ "${DISTRATTN_OCLGRIND:-0}" != 1 ]; then
  echo "oclgrind-check: DISTRATTN_OCLGRIND is not 1: skipped (make check-oclgrind runs it)"
  exit 77
fi

fail() {
  echo "oclgrind-check: FAIL: $*" >&2
  exit 1
}

launcher=${OCLGRIND:-oclgrind}
command -v "$launcher" >/dev/null 2>&1 ||
  fail "'$launcher' not found (apt-get install oclgrind)"
prog=${DA_OCLGRIND_PROGRAM:-./tests/test_oclgrind}
[ -x "$prog" ] || fail "$prog not built (make check builds it)"
if [ -z "${DISTRATTN_BACKEND_PATH:-}" ]; then
  DISTRATTN_BACKEND_PATH=$(pwd)/cl/.libs
  export DISTRATTN_BACKEND_PATH
fi
# -cl-opt-disable: Oclgrind 21.10 (Debian 12) misinterprets optimised IR
# with vectors of i1 (a zext of a <4 x i1> compare gives 255 per true lane,
# so da_hash's rank sort writes out of bounds on a correct kernel) and its
# --uninitialized plugin crashes on it; unoptimised kernels run right.
flags=${OCLGRIND_FLAGS:---data-races --uninitialized --check-api --build-options -cl-opt-disable}

tmp=$(mktemp -d "${TMPDIR:-/tmp}/oclgrind-check.XXXXXX") || fail "mktemp"
trap 'rm -rf "$tmp"' EXIT

# One run of the program with DISTRATTN_CL_KERNEL=$1 (the fused kernel's
# rows and tiled shapes); 0 when it passed every check.
run_one() {
  kern=$1
  log=$tmp/oclgrind-$kern.log
  errf=$tmp/stderr-$kern
  outf=$tmp/stdout-$kern
  start=$(date +%s)
  # shellcheck disable=SC2086
  DISTRATTN_CL_KERNEL=$kern "$launcher" $flags --log "$log" "$prog" >"$outf" 2>"$errf"
  rc=$?
  end=$(date +%s)

  cat "$outf"
  cat "$errf" >&2
  echo "oclgrind-check: $prog (DISTRATTN_CL_KERNEL=$kern) exited $rc after $((end - start)) s" \
    "under: $launcher $flags"

  st=0
  if [ -s "$log" ]; then
    echo "oclgrind-check: FAIL ($kern): Oclgrind reported:" >&2
    cat "$log" >&2
    st=1
  fi
  # Oclgrind's reports, should any go to stderr instead of the log.
  if grep -E -i 'invalid|data race|uninitiali[sz]ed|divergence|runtime error' "$errf" \
    >/dev/null 2>&1; then
    echo "oclgrind-check: FAIL ($kern): Oclgrind or the program reported on stderr (above)" >&2
    st=1
  fi
  if grep -E -i 'error' "$errf" >/dev/null 2>&1; then
    echo "oclgrind-check: FAIL ($kern): an error on stderr (above)" >&2
    st=1
  fi
  [ "$rc" -eq 0 ] || { echo "oclgrind-check: FAIL ($kern): $prog exited $rc" >&2; st=1; }
  if grep -E '^\[ *SKIPPED *\]' "$outf" "$errf" >/dev/null 2>&1; then
    echo "oclgrind-check: FAIL ($kern): a test was skipped; this group must run in full" >&2
    st=1
  fi
  grep -E '^\[ *PASSED *\] *[1-9]' "$outf" "$errf" >/dev/null 2>&1 ||
    { echo "oclgrind-check: FAIL ($kern): no '[  PASSED  ]' line from cmocka" >&2; st=1; }
  return "$st"
}

status=0
for kern in rows tiled; do
  run_one "$kern" || status=1
done
[ "$status" -eq 0 ] && echo "oclgrind-check: PASS"
exit "$status"
