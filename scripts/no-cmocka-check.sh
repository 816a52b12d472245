#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# `make check` without cmocka: configures a scratch build in which cmocka is
# missing (PKG_CONFIG_LIBDIR names an empty folder, so pkg-config finds no
# .pc file at all; OpenCL and CUDA are left out to keep it short) and checks
#  1. configure succeeds and warns, the library builds, and `make check`
#     fails with the message naming cmocka and libcmocka-dev;
#  2. with --disable-tests-required, `make check` passes (running only what
#     needs no cmocka).
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
b=$(mktemp -d)
trap 'rm -rf "$b"' EXIT
empty="$b/no-pkgconfig"
mkdir "$empty"
cd "$b"
conf() { PKG_CONFIG_LIBDIR="$empty" "$top/configure" --enable-silent-rules --without-cuda --without-opencl "$@" >configure.out 2>&1 ||
  { tail -20 configure.out; echo "no-cmocka-check: configure $* failed"; exit 1; }; }

conf
grep -q 'WARNING: cmocka .*not found' configure.out || { cat configure.out; echo "no-cmocka-check: configure did not warn"; exit 1; }
make -j"$(nproc)" >make.out 2>&1 || { tail -20 make.out; echo "no-cmocka-check: the library did not build"; exit 1; }
if make check >check.out 2>&1; then
  cat check.out; echo "no-cmocka-check: make check passed without cmocka, tests required"; exit 1
fi
grep -q 'cmocka >= 1.1 was not found' check.out && grep -q 'libcmocka-dev' check.out ||
  { cat check.out; echo "no-cmocka-check: make check failed without naming cmocka"; exit 1; }
echo "no-cmocka-check: tests required: make check fails with:"
grep -A3 '^make check: FAILED' check.out | sed 's/^/  /'

conf --disable-tests-required
make check >check2.out 2>&1 || { cat check2.out; echo "no-cmocka-check: make check failed with --disable-tests-required"; exit 1; }
echo "no-cmocka-check: --disable-tests-required: make check passes ($(grep -E '^# TOTAL' check2.out))"
