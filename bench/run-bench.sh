#!/bin/sh
# SPDX-License-Identifier: Apache-2.0
# Benchmark table for the README: `distrattn bench` with the settings of the
# DistrAttention comparison (batch 1, heads 8, f32, seq 1024..8192, head_dim
# 64 and 128; fused exact, GEMM exact, G=2 and G=4 fused), as Markdown on
# stdout, first without and then with the causal mask.
#
# Usage: bench/run-bench.sh [distrattn bench options...]
#   e.g. bench/run-bench.sh --backend cuda
#        CAUSAL=no bench/run-bench.sh --backend opencl --seqs 1024,2048
# Environment:
#   DISTRATTN  the program to run (default: tools/distrattn next to this
#              script's folder when built in tree, else `distrattn` on PATH)
#   CAUSAL     yes (default) also prints the causal table; no skips it
#   REPEAT     timed runs per cell (default 3)
set -eu

here=$(cd "$(dirname "$0")" && pwd)
if [ -z "${DISTRATTN:-}" ]; then
  if [ -x "$here/../tools/distrattn" ]; then
    DISTRATTN=$here/../tools/distrattn
  elif [ -x "./tools/distrattn" ]; then
    DISTRATTN=./tools/distrattn
  else
    DISTRATTN=distrattn
  fi
fi
REPEAT=${REPEAT:-3}
CAUSAL=${CAUSAL:-yes}

"$DISTRATTN" --version
echo
"$DISTRATTN" bench --markdown --seqs 1024,2048,4096,8192 --dims 64,128 \
  --batch 1 --heads 8 --dtype f32 --repeat "$REPEAT" --warmup 1 "$@"
if [ "$CAUSAL" = yes ]; then
  echo
  "$DISTRATTN" bench --markdown --seqs 1024,2048,4096,8192 --dims 64,128 \
    --batch 1 --heads 8 --dtype f32 --repeat "$REPEAT" --warmup 1 --causal "$@"
fi
