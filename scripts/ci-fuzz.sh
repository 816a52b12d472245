#!/usr/bin/env bash
# CI: build the libFuzzer target fuzz/fuzz_desc.c (descriptor validation and
# tiny attention runs on the CPU backend, checked against the float64
# reference) with clang -fsanitize=fuzzer,address,undefined, run it for
# FUZZ_SECONDS (default 60) from the seeds in fuzz/corpus/, print the number
# of executions. Exits non-zero when the fuzzer finds a crash, a sanitizer
# error, a leak-free abort of the oracle or a timeout; the input that did it
# is left in build-fuzz/ (crash-*, timeout-*, oom-*).
# Environment: FUZZ_CC (default clang), FUZZ_SECONDS.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
out=$root/build-fuzz
cc=${FUZZ_CC:-clang}
secs=${FUZZ_SECONDS:-60}
command -v "$cc" >/dev/null || { echo "ci-fuzz: $cc not found (libFuzzer needs clang)" >&2; exit 1; }
mkdir -p "$out/corpus"

# The library is compiled in with the target (no libtool): the sources of
# lib/libdacore.la as lib/local.mk lists them, the CPU backend only;
# DA_BACKEND_DIR points nowhere so that no module is loaded.
srcs=$(sed -n '/^lib_libdacore_la_SOURCES/,/[^\\]$/p' lib/local.mk | sed 's/^.*=//; s/\\//g')
[ -n "$srcs" ] || { echo "ci-fuzz: no lib_libdacore_la_SOURCES in lib/local.mk" >&2; exit 1; }
"$cc" -std=gnu11 -g -O1 -fno-omit-frame-pointer \
  -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
  -pthread -Iinclude -Ilib -DDISTRATTN_BUILDING \
  -DDA_BACKEND_DIR='"/nonexistent-distrattn-fuzz"' \
  $srcs tests/ref.c fuzz/fuzz_desc.c -ldl -lm -o "$out/fuzz_desc"

# LeakSanitizer is off (it cannot run under ptrace-restricted containers and
# the CPU backend's thread pool is process-lifetime); leaks are valgrind's
# job in scripts/ci-sanitize.sh. allocator_may_return_null: the library must
# answer a failed allocation with a status, not die.
export ASAN_OPTIONS=detect_leaks=0:allocator_may_return_null=1:abort_on_error=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
set +e
"$out/fuzz_desc" -max_total_time="$secs" -print_final_stats=1 -max_len=1024 -timeout=30 \
  -rss_limit_mb=2048 -artifact_prefix="$out/" "$out/corpus" fuzz/corpus >"$out/fuzz.log" 2>&1
rc=$?
set -e
grep -v -E '^#[0-9]+.*(NEW|REDUCE|pulse)|^"|# Uses:|dictionary' "$out/fuzz.log" | tail -n 60 || true
execs=$(grep -E 'stat::number_of_executed_units' "$out/fuzz.log" | awk '{s += $2} END {print s + 0}')
echo "ci-fuzz: $execs executions in ${secs} s, corpus $(ls "$out/corpus" | wc -l) files, exit $rc"
if [ "$rc" -ne 0 ] || ls "$out"/crash-* "$out"/timeout-* "$out"/oom-* >/dev/null 2>&1; then
  echo "ci-fuzz: FINDING: see $out/fuzz.log and the artifacts:" >&2
  ls -l "$out"/crash-* "$out"/timeout-* "$out"/oom-* 2>/dev/null >&2 || true
  exit 1
fi
