#!/usr/bin/env bash
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
bad=$(nm -D --defined-only "$prefix/lib/libdistrattn.so" | awk '$2 ~ /^[TDBR]$/ {print $3}' | grep -v '^da_' || true)
if [ -n "$bad" ]; then echo "install-check: symbols exported beyond da_*: $bad"; exit 1; fi
echo "install-check: installed library, pkg-config build of examples/app.c and exports OK"
