#!/bin/sh
# SPDX-License-Identifier: Apache-2.0
# The CUDA backward pass's kernels run on the host (tests/cuda_emu: their
# own source, compiled by the host C++ compiler over an emulation of the
# CUDA they use: threads as fibers, ldmatrix and mma.sync from their PTX
# definitions) against the cpu backend's backward: their logic checked on a
# machine without a GPU. Needs the CUDA toolkit's headers (configure found
# nvcc) and a C++17 compiler ($CXX, else c++ or g++).
#
# Exit status: 0 when every case is within its bound, 1 on a failure, 77
# (skip) without a C++ compiler or the CUDA headers.
set -u
src=${DA_SRCDIR:-$(cd "$(dirname "$0")/.." && pwd)}
cuda=${DA_CUDA_HOME:-}
if [ -z "$cuda" ] && command -v nvcc >/dev/null 2>&1; then
  cuda=$(dirname "$(dirname "$(command -v nvcc)")")
fi
build=$(pwd)
if [ -z "$cuda" ] || [ ! -f "$cuda/include/cuda_runtime.h" ]; then
  echo "cuda-emu-check: SKIP: no CUDA headers (DA_CUDA_HOME=$cuda)"
  exit 77
fi
cxx=${CXX:-}
if [ -z "$cxx" ]; then
  for c in c++ g++ clang++; do
    if command -v "$c" >/dev/null 2>&1; then cxx=$c; break; fi
  done
fi
[ -n "$cxx" ] || { echo "cuda-emu-check: SKIP: no C++ compiler"; exit 77; }
lib=$build/lib/.libs
[ -f "$lib/libdistrattn.so" ] || { echo "cuda-emu-check: FAIL: $lib/libdistrattn.so not built" >&2; exit 1; }
bin=$build/tests/cuda_emu_bwd
if ! $cxx -std=c++17 -O2 -w -I"$cuda/include" -I"$src/include" -I"$src/lib" -I"$src/cuda" \
    -I"$src/tests/cuda_emu" "$src/tests/cuda_emu/bwd_emu.cc" -o "$bin" -L"$lib" -ldistrattn \
    -Wl,-rpath,"$lib" -lm; then
  echo "cuda-emu-check: FAIL: $cxx could not build tests/cuda_emu/bwd_emu.cc" >&2
  exit 1
fi
"$bin"
