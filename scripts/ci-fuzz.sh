#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# CI: build the libFuzzer targets with clang
# -fsanitize=fuzzer,address,undefined and run each for FUZZ_SECONDS (default
# 60) from its seeds, printing each one's number of executions:
#  - fuzz/fuzz_desc.c: descriptor validation and tiny attention runs on the
#    CPU backend, checked against the float64 reference (seeds fuzz/corpus/);
#  - fuzz/fuzz_capture.c: the DATTNCAP capture reader tools/capture_io.c
#    over memory (seeds fuzz/corpus-capture/).
# Exits non-zero when either finds a crash, a sanitizer error, an abort of
# its oracle or a timeout (both are run first); the input that did it is left
# in build-fuzz/ (<target>-crash-*, -timeout-*, -oom-*).
# Environment: FUZZ_CC (default clang), FUZZ_SECONDS (per target).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
out=$root/build-fuzz
cc=${FUZZ_CC:-clang}
secs=${FUZZ_SECONDS:-60}
command -v "$cc" >/dev/null || { echo "ci-fuzz: $cc not found (libFuzzer needs clang)" >&2; exit 1; }
mkdir -p "$out/obj" "$out/corpus-desc" "$out/corpus-capture"

# The library is compiled in with the target (no libtool): the sources of
# lib/libdacore.la as lib/local.mk lists them, the CPU backend only;
# DA_BACKEND_DIR points nowhere so that no module is loaded.
srcs=$(sed -n '/^lib_libdacore_la_SOURCES/,/[^\\]$/p' lib/local.mk | sed 's/^.*=//; s/\\//g')
[ -n "$srcs" ] || { echo "ci-fuzz: no lib_libdacore_la_SOURCES in lib/local.mk" >&2; exit 1; }
# Each source is compiled once (instrumented, without libFuzzer's main) and
# linked into the targets that need it: tools/util.c, which fuzz_capture
# takes its f16 widening from, calls the library too.
cflags=(-std=gnu11 -g -O1 -fno-omit-frame-pointer -fno-sanitize-recover=undefined -pthread
  -Iinclude -Ilib -Itools -DDISTRATTN_BUILDING -DDA_BACKEND_DIR='"/nonexistent-distrattn-fuzz"')
objs=()
for src in $srcs tests/ref.c tools/util.c tools/capture_io.c; do
  obj=$out/obj/$(echo "$src" | tr / _).o
  "$cc" "${cflags[@]}" -fsanitize=fuzzer-no-link,address,undefined -c "$src" -o "$obj"
  objs+=("$obj")
done
nlib=$(echo $srcs | wc -w)
lib_objs=("${objs[@]:0:$nlib}")
link() { # target, its source, the objects it needs
  local t=$1 src=$2
  shift 2
  "$cc" "${cflags[@]}" -fsanitize=fuzzer,address,undefined "$src" "$@" -ldl -lm -o "$out/$t"
}
link fuzz_desc fuzz/fuzz_desc.c "${lib_objs[@]}" "$out/obj/tests_ref.c.o"
link fuzz_capture fuzz/fuzz_capture.c "${lib_objs[@]}" "$out/obj/tools_util.c.o" \
  "$out/obj/tools_capture_io.c.o"

# LeakSanitizer is off (it cannot run under ptrace-restricted containers and
# the CPU backend's thread pool is process-lifetime); leaks are valgrind's
# job in scripts/ci-sanitize.sh. allocator_may_return_null: the library must
# answer a failed allocation with a status, not die.
export ASAN_OPTIONS=detect_leaks=0:allocator_may_return_null=1:abort_on_error=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
# run TARGET MAX_LEN SEEDS: prints its summary; returns non-zero on a finding.
run() {
  local t=$1 max_len=$2 seeds=$3 rc
  set +e
  "$out/$t" -max_total_time="$secs" -print_final_stats=1 -max_len="$max_len" -timeout=30 \
    -rss_limit_mb=2048 -artifact_prefix="$out/$t-" "$out/corpus-${t#fuzz_}" "$seeds" \
    >"$out/$t.log" 2>&1
  rc=$?
  set -e
  grep -v -E '^#[0-9]+.*(NEW|REDUCE|pulse)|^"|# Uses:|dictionary' "$out/$t.log" | tail -n 60 || true
  local execs
  execs=$(grep -E 'stat::number_of_executed_units' "$out/$t.log" | awk '{s += $2} END {print s + 0}')
  echo "ci-fuzz: $t: $execs executions in ${secs} s, corpus $(ls "$out/corpus-${t#fuzz_}" | wc -l) files, exit $rc"
  if [ "$rc" -ne 0 ] || ls "$out/$t"-crash-* "$out/$t"-timeout-* "$out/$t"-oom-* >/dev/null 2>&1; then
    echo "ci-fuzz: $t: FINDING: see $out/$t.log and the artifacts:" >&2
    ls -l "$out/$t"-crash-* "$out/$t"-timeout-* "$out/$t"-oom-* 2>/dev/null >&2 || true
    return 1
  fi
}
failed=0
run fuzz_desc 1024 fuzz/corpus || failed=1
run fuzz_capture 4096 fuzz/corpus-capture || failed=1
exit $failed
