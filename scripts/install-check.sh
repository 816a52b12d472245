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
# The demo capture is installed in $(pkgdatadir) (share/distrattn), where the
# program's DA_PKGDATADIR points, and the installed program reads it.
demo="$prefix/share/distrattn/smollm2-demo.dattncap"
[ -f "$demo" ] || { echo "install-check: $demo is not installed"; exit 1; }
LD_LIBRARY_PATH="$prefix/lib" "$prefix/bin/distrattn" eval --backend cpu --groups 1 "$demo" \
  >"$prefix/eval.log" 2>&1 || { cat "$prefix/eval.log"; echo "install-check: distrattn eval on the installed demo capture FAILED"; exit 1; }
echo "install-check: the installed demo capture: $(sed -n 1p "$prefix/eval.log")"
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
# Modules found beside the installed library (lib/registry.c). The build was
# configured for another prefix (its compiled-in module folder is that
# prefix's, /usr/local/lib/distrattn/backends by default, which may hold an
# older install), and is installed here with `make install prefix=...`. A
# small program, with DISTRATTN_BACKEND_PATH unset, asks for the OpenCL
# backend and prints the file of every loaded libdistrattn and OpenCL module
# (dl_iterate_phdr): both must lie under this prefix. Then the whole prefix
# is moved to another folder and the program run from there: its module
# must come from the new place, which neither the compiled-in folder nor
# the install-time prefix names, so only the lookup relative to the loaded
# library can have found it. `distrattn devices` from the moved prefix must
# list the OpenCL backend as well.
configured=$(sed -n 's/^prefix=//p' "$prefix/lib/pkgconfig/distrattn.pc")
if [ -f "$prefix/lib/distrattn/backends/distrattn_opencl.so" ]; then
  if [ "$configured" = "$prefix" ]; then
    echo "install-check: the build's configured prefix is the scratch prefix; cannot check the relative lookup"; exit 1
  fi
  cat > "$prefix/where.c" <<'WHERE'
#define _GNU_SOURCE
#include <distrattn.h>
#include <link.h>
#include <stdio.h>
#include <string.h>
static int show(struct dl_phdr_info *i, size_t size, void *data) {
  (void)size; (void)data;
  if (strstr(i->dlpi_name, "libdistrattn") || strstr(i->dlpi_name, "distrattn_opencl"))
    printf("loaded: %s\n", i->dlpi_name);
  return 0;
}
int main(void) {
  const char *why = NULL;
  int ok = da_backend_available(DA_BACKEND_OPENCL, &why);
  printf("opencl: %s%s\n", ok ? "available" : "not available: ", ok ? "" : why);
  dl_iterate_phdr(show, NULL);
  return 0;
}
WHERE
  cc -std=gnu11 "$prefix/where.c" $($pc --cflags --libs distrattn) -o "$prefix/where"
  where_check() { # $1: the prefix the files now lie in
    local at out
    at=$(cd "$1" && pwd -P)
    out=$(env -u DISTRATTN_BACKEND_PATH LD_LIBRARY_PATH="$1/lib" "$1/where")
    echo "$out" | sed 's/^/install-check:   /'
    if ! echo "$out" | grep -q "^loaded: .*/distrattn_opencl.so$"; then
      case ",${DISTRATTN_REQUIRE_BACKENDS:-}," in
        *,opencl,*) echo "install-check: no OpenCL module loaded from $1"; exit 1 ;;
        *) echo "install-check: the OpenCL module did not load here (see above): relative lookup not checked"; return 0 ;;
      esac
    fi
    local lib mod
    lib=$(echo "$out" | sed -n 's/^loaded: \(.*libdistrattn[^/]*\)$/\1/p')
    mod=$(echo "$out" | sed -n 's/^loaded: \(.*distrattn_opencl.so\)$/\1/p')
    lib=$(cd "$(dirname "$lib")" && pwd -P); mod=$(cd "$(dirname "$mod")" && pwd -P)
    [ "$lib" = "$at/lib" ] || { echo "install-check: libdistrattn loaded from $lib, not $at/lib"; exit 1; }
    [ "$mod" = "$at/lib/distrattn/backends" ] ||
      { echo "install-check: the OpenCL module loaded from $mod, not $at/lib/distrattn/backends"; exit 1; }
    env -u DISTRATTN_BACKEND_PATH LD_LIBRARY_PATH="$1/lib" "$1/bin/distrattn" devices >"$1/devices.txt" 2>&1 ||
      { cat "$1/devices.txt"; echo "install-check: distrattn devices from $1 failed"; exit 1; }
    grep -q '^opencl  *available' "$1/devices.txt" ||
      { cat "$1/devices.txt"; echo "install-check: distrattn devices from $1 does not list the OpenCL backend"; exit 1; }
  }
  echo "install-check: configured prefix $configured, installed in $prefix (DISTRATTN_BACKEND_PATH unset):"
  where_check "$prefix"
  moved=$(mktemp -d)
  trap 'rm -rf "$prefix" "$moved"' EXIT
  mv "$prefix" "$moved/moved"
  echo "install-check: the same install moved to $moved/moved:"
  where_check "$moved/moved"
  mv "$moved/moved" "$prefix"
  echo "install-check: modules found beside the installed library, before and after moving it: OK"
fi
bad=$(nm -D --defined-only "$prefix/lib/libdistrattn.so" | awk '$2 ~ /^[TDBR]$/ {print $3}' | grep -v '^da_' || true)
if [ -n "$bad" ]; then echo "install-check: symbols exported beyond da_*: $bad"; exit 1; fi
echo "install-check: installed library, pkg-config build of examples/app.c and exports OK"
