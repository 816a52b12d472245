#!/bin/sh
# SPDX-License-Identifier: Apache-2.0
# Every source file of ours carries `SPDX-License-Identifier: Apache-2.0` in
# its first five lines (LICENSE holds the text). The files checked: in a git
# checkout whose top is the source tree, `git ls-files`; otherwise (a
# tarball, as in `make distcheck`, whose folder may sit inside some other
# checkout) the files under the source tree, build trees and the autotools'
# own files (build-aux/, m4/) left out. Either list is narrowed to our
# sources by name: *.c *.h *.cu *.cuh *.cl *.py *.sh *.mk, Makefile.am,
# configure.ac, distrattn.pc.in, .ci/run and scripts/*. Generated files in an
# in-tree build (config.h, cl/*_cl.h) are not ours.
# Run by `make check` (srcdir set by the harness) or as
# `tests/spdx-check.sh [SRCDIR]`. Exit 1 lists the files lacking the line.
top=${1:-${srcdir:-.}}
cd "$top" || { echo "spdx-check: cannot enter $top" >&2; exit 99; }
here=$(pwd -P)

gittop=$(git rev-parse --show-toplevel 2>/dev/null) || gittop=
if [ -n "$gittop" ] && [ "$(cd "$gittop" && pwd -P)" = "$here" ]; then
  how="git ls-files"
  list=$(git ls-files) || { echo "spdx-check: git ls-files failed" >&2; exit 99; }
else
  how="files under $here"
  list=$(find . \( -name .git -o -name build-aux -o -name m4 -o -name autom4te.cache \
            -o -name _build -o -name 'distrattn-[0-9]*' \) -prune -o \
         -type d ! -name . -exec sh -c 'test -e "$1/config.status"' sh {} \; -prune -o \
         -type f -print | sed 's|^\./||')
fi

ours() {
  case $1 in
    config.h|cl/*_cl.h) return 1 ;;
    scripts/*|.ci/run|Makefile.am|configure.ac|distrattn.pc.in) return 0 ;;
    *.c|*.h|*.cu|*.cuh|*.cl|*.py|*.sh|*.mk) return 0 ;;
  esac
  return 1
}

n=0
missing=
for f in $list; do
  ours "$f" || continue
  [ -f "$f" ] || continue           # deleted in the work tree, not yet committed
  n=$((n + 1))
  head -n 5 "$f" | grep -q 'SPDX-License-Identifier: Apache-2.0' || missing="$missing $f"
done

if [ "$n" -eq 0 ]; then
  echo "spdx-check: no source files found ($how)" >&2
  exit 99
fi
if [ -n "$missing" ]; then
  echo "spdx-check: these files lack 'SPDX-License-Identifier: Apache-2.0' in their first 5 lines ($how):" >&2
  for f in $missing; do echo "  $f" >&2; done
  exit 1
fi
echo "spdx-check: $n source files carry the SPDX line ($how)"
