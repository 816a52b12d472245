#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Set up (Debian packages, when missing and we are root) and pass the tests:
# build in build/, run `make check` and `make distcheck`.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/deps.sh
autoreconf -fi >/dev/null 2>&1 || autoreconf -fi
mkdir -p build && cd build
../configure --enable-silent-rules ${DISTRATTN_CONFIGURE_FLAGS:-}
make -j"$(nproc)"
export DISTRATTN_REQUIRE_BACKENDS="${DISTRATTN_REQUIRE_BACKENDS:-cpu}"
make -j"$(nproc)" check || { cat tests/*.log 2>/dev/null | tail -200; exit 1; }
cat tests/*.log | grep -E '^\[  (PASSED|FAILED|SKIPPED)|tests? (passed|failed|skipped)' || true
../scripts/install-check.sh
if [ "${DISTRATTN_SKIP_DISTCHECK:-0}" != 1 ]; then
  make -j"$(nproc)" distcheck DISTCHECK_CONFIGURE_FLAGS="${DISTRATTN_CONFIGURE_FLAGS:-}"
fi
