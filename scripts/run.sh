#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Set up (packages, build) and run the main job on the default device:
# `distrattn run` (OpenCL on PoCL where present, else the CPU backend).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/deps.sh
[ -x configure ] || { autoreconf -fi >/dev/null 2>&1 || autoreconf -fi; }
mkdir -p build && cd build
[ -f Makefile ] || ../configure --enable-silent-rules >/dev/null
make -j"$(nproc)" >/dev/null
export DISTRATTN_BACKEND_PATH="$PWD/cl/.libs:$PWD/cuda/.libs"
./tools/distrattn devices
./tools/distrattn run "$@"
