#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Set up (packages, build) and run the main job on the default device:
# `distrattn demo` on the SmolLM2 capture shipped in data/ (exact attention
# and DistrAttention side by side: time, speed-up, error). Options go to the
# demo (e.g. --groups 2,4,8, --seed 3, --backend opencl); a first argument
# that names another command runs that one instead (run, bench, check, eval,
# devices).
set -euo pipefail
cd "$(dirname "$0")/.."
top=$(pwd)
. scripts/deps.sh
[ -x configure ] || { autoreconf -fi >/dev/null 2>&1 || autoreconf -fi; }
mkdir -p build && cd build
[ -f Makefile ] || ../configure --enable-silent-rules >/dev/null
make -j"$(nproc)" >/dev/null
export DISTRATTN_BACKEND_PATH="$PWD/cl/.libs:$PWD/cuda/.libs"
case "${1:-}" in
  run|bench|check|eval|devices|demo) exec ./tools/distrattn "$@" ;;
esac
exec ./tools/distrattn demo "$@" "$top/data/smollm2-demo.dattncap"
