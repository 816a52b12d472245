#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Installs the build in build/ into a scratch prefix, then builds the README's
# example with `cc app.c $(pkg-config --cflags --libs distrattn)` against it
# and runs it; also checks that only da_* symbols are exported.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
prefix=$(mktemp -d)
trap 'rm -rf "$prefix"' EXIT
make -C "$top/build" install prefix="$prefix" >/dev/null
# The .pc file names the configured prefix; --define-variable points it at
# the scratch one (libdir and includedir derive from prefix).
export PKG_CONFIG_PATH="$prefix/lib/pkgconfig"
pc="pkg-config --define-variable=prefix=$prefix"
cc "$top/examples/app.c" $($pc --cflags --libs distrattn) -o "$prefix/app"
LD_LIBRARY_PATH="$prefix/lib" "$prefix/app"
# tests/test_wrap, a client owning its memory (issue 15), built against the
# installed headers and library as a user builds it, with the installed
# OpenCL module (and CUDA's where this machine has a GPU).
if pkg-config --exists cmocka; then
  clflags=""
  if [ -f "$prefix/include/distrattn_opencl.h" ] && pkg-config --exists OpenCL; then
    clflags="-DDA_TEST_HAVE_OPENCL $(pkg-config --cflags --libs OpenCL)"
  fi
  cc -std=gnu11 "$top/tests/test_wrap.c" $($pc --cflags distrattn) $(pkg-config --cflags cmocka) \
    $clflags $($pc --libs distrattn) $(pkg-config --libs cmocka) -ldl -lm -o "$prefix/test_wrap"
  mods=$(ls -d "$prefix"/lib/distrattn/backends 2>/dev/null || true)
  LD_LIBRARY_PATH="$prefix/lib" DISTRATTN_BACKEND_PATH="$mods" "$prefix/test_wrap" >"$prefix/test_wrap.log" 2>&1 ||
    { cat "$prefix/test_wrap.log"; echo "install-check: tests/test_wrap against the installed library FAILED"; exit 1; }
  echo "install-check: tests/test_wrap against the installed library: $(grep -E '^\[  PASSED' "$prefix/test_wrap.log")"
fi
bad=$(nm -D --defined-only "$prefix/lib/libdistrattn.so" | awk '$2 ~ /^[TDBR]$/ {print $3}' | grep -v '^da_' || true)
if [ -n "$bad" ]; then echo "install-check: symbols exported beyond da_*: $bad"; exit 1; fi
echo "install-check: installed library, pkg-config build of examples/app.c and exports OK"
