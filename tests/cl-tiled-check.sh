#!/bin/sh
# SPDX-License-Identifier: Apache-2.0
# The OpenCL tests of test_attention, test_consistency, test_invariants,
# test_ext (strides, lengths, LSE, windows), test_faults (its non-finite
# inputs) and test_proj (the projection strategy, SPEC 1c) again with
# DISTRATTN_CL_KERNEL=tiled: the fused kernel in the shape GPUs
# run by default, checked on whatever OpenCL device is here (PoCL in CI,
# where the rows kernel is the default and the plain runs check that one).
#
# Exit status: 0 when every OpenCL test of these programs ran and passed; 1 on a
# failure, or when opencl is in DISTRATTN_REQUIRE_BACKENDS and no OpenCL
# test ran; 77 (skip) when no OpenCL test ran and opencl is not required.
set -u
dir=${DA_TEST_DIR:-./tests}
DISTRATTN_CL_KERNEL=tiled
export DISTRATTN_CL_KERNEL
if [ -z "${DISTRATTN_BACKEND_PATH:-}" ]; then
  DISTRATTN_BACKEND_PATH=$(pwd)/cl/.libs
  export DISTRATTN_BACKEND_PATH
fi

status=0
ran=0
# program:filter (DA_TEST_FILTER, a cmocka pattern naming its OpenCL tests)
for tf in 'test_attention:opencl:*' 'test_consistency:opencl:*' 'test_invariants:opencl:*' \
  'test_ext:opencl:*' 'test_faults:test_*_opencl' 'test_proj:opencl:*'; do
  t=${tf%%:*}
  [ -x "$dir/$t" ] || { echo "cl-tiled-check: FAIL: $dir/$t not built" >&2; exit 1; }
  out=$(DA_TEST_FILTER=${tf#*:} "$dir/$t" 2>&1)
  rc=$?
  printf '%s\n' "$out"
  [ "$rc" -eq 0 ] || { echo "cl-tiled-check: FAIL: $t exited $rc" >&2; status=1; }
  n=$(printf '%s\n' "$out" | grep -c -E '^\[ *OK *\] (opencl:|test_.*_opencl$)')
  echo "cl-tiled-check: $t: $n OpenCL tests passed with the tiled kernel"
  ran=$((ran + n))
done

if [ "$ran" -eq 0 ]; then
  case ",${DISTRATTN_REQUIRE_BACKENDS:-}," in
  *,opencl,*)
    echo "cl-tiled-check: FAIL: opencl is required but no OpenCL test ran" >&2
    exit 1
    ;;
  esac
  [ "$status" -eq 0 ] && { echo "cl-tiled-check: no OpenCL device: skipped"; exit 77; }
fi
[ "$status" -eq 0 ] && echo "cl-tiled-check: PASS"
exit "$status"
