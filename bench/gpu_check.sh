#!/bin/sh
# SPDX-License-Identifier: Apache-2.0
# The library's own test suite on a GPU machine that has the CUDA toolkit but
# no package manager and no network (the device tool's machines).
#
#   sh bench/gpu_check.sh DIST_TARBALL DEB_DIR [OUT_DIR]
#
# DIST_TARBALL: `make dist` output (configure is already generated, so no
# autotools are needed there). DEB_DIR: Debian packages fetched where the
# network is, e.g.
#   apt-get download libcmocka0 libcmocka-dev ocl-icd-libopencl1 \
#     ocl-icd-opencl-dev opencl-c-headers libclblast1 libclblast-dev
# They are unpacked into a private root (never into /) and handed to
# configure through its *_CFLAGS/*_LIBS variables, so pkg-config is not
# needed either. NVIDIA's OpenCL driver, where the machine has one without an
# ICD file, is registered through OCL_ICD_VENDORS.
#
# Then: configure with CUDA for sm_90 (sm_90a for the Hopper kernel), make,
# `make check` with DISTRATTN_REQUIRE_BACKENDS=cpu,cuda (plus opencl when the
# NVIDIA OpenCL driver is there), and compute-sanitizer memcheck and
# racecheck over the CUDA consistency tests (racecheck gates on hazards in
# our kernels; those inside cuBLAS's are listed) and over the backward
# pass's CUDA tests. Logs go to OUT_DIR
# (default $OUT, else /tmp/gpu_check). Exit status: non-zero when any step failed.
# DA_GPU_CHECK_REQUIRE replaces cpu,cuda (a dry run on a machine without a
# GPU: DA_GPU_CHECK_REQUIRE=cpu). DA_GPU_CHECK_PHASE=build stops after
# make, =test runs the checks on the build a previous call left (so the
# build can overlap other work on the machine); default: both.
set -u
if [ $# -lt 2 ]; then
  echo "usage: $0 DIST_TARBALL DEB_DIR [OUT_DIR]" >&2
  exit 2
fi
tarball=$(readlink -f "$1")
debs=$(readlink -f "$2")
out=${3:-${OUT:-/tmp/gpu_check}}
mkdir -p "$out"
root=${DA_GPU_CHECK_ROOT:-/tmp/gpu_check_root}
work=${DA_GPU_CHECK_WORK:-/tmp/gpu_check_build}
phase=${DA_GPU_CHECK_PHASE:-all}
fail=0

if [ "$phase" != test ]; then
  rm -rf "$root" "$work"
  mkdir -p "$root" "$work"
  for f in "$debs"/*.deb; do
    dpkg-deb -x "$f" "$root" || { echo "gpu_check: cannot unpack $f" >&2; exit 1; }
  done
fi
lib=$root/usr/lib/x86_64-linux-gnu
inc=$root/usr/include
export LD_LIBRARY_PATH="$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

require=${DA_GPU_CHECK_REQUIRE:-cpu,cuda}
nvcl=$(ls /usr/local/nvidia/lib64/libnvidia-opencl.so.1 /usr/lib/x86_64-linux-gnu/libnvidia-opencl.so.1 \
  2>/dev/null | head -n 1)
if [ -n "$nvcl" ]; then
  mkdir -p "$root/etc/OpenCL/vendors"
  echo "$nvcl" > "$root/etc/OpenCL/vendors/nvidia.icd"
  export OCL_ICD_VENDORS="$root/etc/OpenCL/vendors"
  require=$require,opencl
  echo "gpu_check: NVIDIA OpenCL driver: $nvcl"
else
  echo "gpu_check: no NVIDIA OpenCL driver found; the OpenCL backend is not required"
fi
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | sed 's/^/gpu_check: GPU: /'

if [ "$phase" = test ]; then
  cd "$work"/distrattn-* || { echo "gpu_check: no build in $work (DA_GPU_CHECK_PHASE=build first)"; exit 1; }
else
  cd "$work" && tar xzf "$tarball" && cd distrattn-* || exit 1
  ./configure --enable-silent-rules --with-cuda --with-cuda-arch=90 \
    CMOCKA_CFLAGS="-I$inc" CMOCKA_LIBS="-L$lib -lcmocka" \
    OPENCL_CFLAGS="-I$inc" OPENCL_LIBS="-L$lib -lOpenCL" \
    CLBLAST_CFLAGS="-I$inc" CLBLAST_LIBS="-L$lib -lclblast" \
    > "$out/configure.log" 2>&1 || { echo "gpu_check: configure failed"; tail -n 30 "$out/configure.log"; exit 1; }
  sed -n '/^configure:$/,$p' "$out/configure.log"
  make -j"$(nproc)" > "$out/make.log" 2>&1 || { echo "gpu_check: make failed"; grep -v '^ptxas info' "$out/make.log" | tail -n 30; exit 1; }
  [ "$phase" = build ] && { echo "gpu_check: built in $PWD"; exit 0; }
fi

echo "gpu_check: make check with DISTRATTN_REQUIRE_BACKENDS=$require"
if DISTRATTN_REQUIRE_BACKENDS=$require make -j"$(nproc)" check > "$out/check.log" 2>&1; then
  grep -E '^# (TOTAL|PASS|SKIP|FAIL|ERROR)' "$out/check.log"
else
  fail=1
  grep -E '^(FAIL|ERROR)|^# ' "$out/check.log"
  cat tests/*.log > "$out/tests.log" 2>/dev/null
fi

cs=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null)
if [ -n "$cs" ]; then
  san() { # tool log [options...]: the CUDA consistency tests under the tool
    tool=$1 log=$2
    shift 2
    DISTRATTN_BACKEND_PATH="$PWD/cl/.libs:$PWD/cuda/.libs" DISTRATTN_REQUIRE_BACKENDS=cuda \
      ./libtool --mode=execute "$cs" --tool "$tool" "$@" ${SAN_PROG:-tests/test_consistency} > "$out/$log" 2>&1
  }
  summary() { grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$out/$1" | tail -n 1; }
  if san memcheck memcheck.log --error-exitcode 3; then
    echo "gpu_check: compute-sanitizer memcheck on tests/test_consistency: $(summary memcheck.log)"
  else
    fail=1
    echo "gpu_check: compute-sanitizer memcheck on tests/test_consistency FAILED"
    tail -n 20 "$out/memcheck.log"
  fi
  # The caller's memory (tests/test_wrap: 1,000 wraps and destroys over one
  # cuMemAlloc of the client's, then its checks and its own cuMemFree)
  if SAN_PROG=tests/test_wrap san memcheck memcheck-wrap.log --error-exitcode 3 &&
     grep -q 'PASSED.*3 test' "$out/memcheck-wrap.log"; then
    echo "gpu_check: compute-sanitizer memcheck on tests/test_wrap: $(summary memcheck-wrap.log)"
  else
    fail=1
    echo "gpu_check: compute-sanitizer memcheck on tests/test_wrap FAILED"
    tail -n 20 "$out/memcheck-wrap.log"
  fi
  # The backward pass (tests/test_backward's CUDA tests): memcheck over all
  # of them, racecheck over the windows-and-strides ones (both kernels,
  # several blocks; racecheck is slow)
  DA_TEST_FILTER='cuda:*'
  export DA_TEST_FILTER
  if SAN_PROG=tests/test_backward san memcheck memcheck-bwd.log --error-exitcode 3 &&
     grep -q 'PASSED.*7 test' "$out/memcheck-bwd.log"; then
    echo "gpu_check: compute-sanitizer memcheck on tests/test_backward (cuda): $(summary memcheck-bwd.log)"
  else
    fail=1
    echo "gpu_check: compute-sanitizer memcheck on tests/test_backward (cuda) FAILED"
    tail -n 20 "$out/memcheck-bwd.log"
  fi
  DA_TEST_FILTER='cuda: windows and strides'
  SAN_PROG=tests/test_backward san racecheck racecheck-bwd.log
  rc=$?
  ours=$(grep -A1 -E 'Race reported' "$out/racecheck-bwd.log" | grep -cE 'dac_|access at 0x')
  if [ $rc = 0 ] && [ "$ours" = 0 ] && grep -q 'RACECHECK SUMMARY' "$out/racecheck-bwd.log"; then
    echo "gpu_check: compute-sanitizer racecheck on tests/test_backward (cuda windows and strides): $(summary racecheck-bwd.log)"
  else
    fail=1
    echo "gpu_check: compute-sanitizer racecheck on tests/test_backward FAILED (exit $rc, $ours report lines on our kernels)"
    tail -n 20 "$out/racecheck-bwd.log"
  fi
  # the same under DISTRATTN_CUDA_BWD_DQ=split (the dK/dV and dQ kernels)
  DISTRATTN_CUDA_BWD_DQ=split
  export DISTRATTN_CUDA_BWD_DQ
  SAN_PROG=tests/test_backward san racecheck racecheck-bwd-split.log
  rc=$?
  unset DISTRATTN_CUDA_BWD_DQ
  ours=$(grep -A1 -E 'Race reported' "$out/racecheck-bwd-split.log" | grep -cE 'dac_|access at 0x')
  if [ $rc = 0 ] && [ "$ours" = 0 ] && grep -q 'RACECHECK SUMMARY' "$out/racecheck-bwd-split.log"; then
    echo "gpu_check: compute-sanitizer racecheck on tests/test_backward (cuda windows and strides, split): $(summary racecheck-bwd-split.log)"
  else
    fail=1
    echo "gpu_check: compute-sanitizer racecheck on tests/test_backward (split) FAILED (exit $rc, $ours report lines on our kernels)"
    tail -n 20 "$out/racecheck-bwd-split.log"
  fi
  unset DA_TEST_FILTER
  # PyTorch as the client, where it is installed: plain, then under memcheck
  if python3 -c 'import torch' 2>/dev/null; then
    tw() {
      DISTRATTN_LIB="$PWD/lib/.libs/libdistrattn.so" DISTRATTN_BACKEND_PATH="$PWD/cuda/.libs" \
        DISTRATTN_REQUIRE_BACKENDS=cuda "$@" python3 tests/torch_wrap.py
    }
    if tw > "$out/torch_wrap.log" 2>&1; then tail -n 2 "$out/torch_wrap.log" | sed 's/^/gpu_check: /'
    else fail=1; echo "gpu_check: tests/torch_wrap.py FAILED"; tail -n 20 "$out/torch_wrap.log"; fi
    if tw "$cs" --tool memcheck --error-exitcode 3 > "$out/memcheck-torch.log" 2>&1; then
      echo "gpu_check: compute-sanitizer memcheck on tests/torch_wrap.py: $(summary memcheck-torch.log)"
    else
      fail=1
      echo "gpu_check: compute-sanitizer memcheck on tests/torch_wrap.py FAILED"
      tail -n 20 "$out/memcheck-torch.log"
    fi
  else
    echo "gpu_check: no torch here: tests/torch_wrap.py not run"
  fi
  # racecheck: the tests must pass under it and no hazard may touch our
  # kernels (all named dac_*) or an unnamed address. The DA_ALGO_GEMM tests
  # also run cuBLAS's kernels, whose shared memory is NVIDIA's business:
  # hazards reported inside them are listed, and fail nothing. (Restricting
  # the tool with --kernel-name kns=dac_ instead made context creation fail
  # under racecheck, compute-sanitizer 2025.3.1.)
  san racecheck racecheck.log
  rc=$?
  ours=$(grep -A1 -E 'Race reported' "$out/racecheck.log" | grep -cE 'dac_|access at 0x')
  if [ $rc = 0 ] && [ "$ours" = 0 ] && grep -q 'RACECHECK SUMMARY' "$out/racecheck.log"; then
    echo "gpu_check: compute-sanitizer racecheck on tests/test_consistency: no hazard in our kernels ($(summary racecheck.log))"
  else
    fail=1
    echo "gpu_check: compute-sanitizer racecheck on tests/test_consistency FAILED (exit $rc, $ours report lines on our kernels)"
    tail -n 20 "$out/racecheck.log"
  fi
  grep -E '^========= (Error|Warning): Race' "$out/racecheck.log" | grep -v dac_ |
    sed 's/^=========/gpu_check:   not ours:/' | head -n 5
else
  echo "gpu_check: no compute-sanitizer here"
fi
[ $fail = 0 ] && echo "gpu_check: all passed" || echo "gpu_check: FAILED (logs in $out)"
exit $fail
