#!/bin/sh
# SPDX-License-Identifier: Apache-2.0
# The command-line program as the README runs it: `distrattn demo` on the
# shipped SmolLM2 capture (the main job) prints every layer, exact
# attention within f16 rounding of the float64 reference and a finite G=2
# error below 1; `distrattn run` gives the same answer twice (fixed seed) and
# a different one for another --seed; bad options are usage errors (exit 2);
# calibrate, eval --proj and run --proj/--rank work end to end.
set -u
top=${srcdir:-$(dirname "$0")/..}  # the harness sets srcdir to the top source folder
tool=${DISTRATTN_TOOL:-./tools/distrattn}
fail=0
bad() { echo "cli-check: FAIL: $*"; fail=1; }

out=$("$tool" demo -b cpu -r 1 -g 2 "$top/data/smollm2-demo.dattncap") || bad "demo exited $?"
echo "$out"
for l in 0 14 29; do
  echo "$out" | grep -q "^layer $l " || bad "demo printed no row for layer $l"
done
echo "$out" | awk '/^(layer [0-9]+|all|random) / {
    e = ($1 == "layer" ? $4 : $3) + 0; g = $NF + 0
    if (!(e > 0 && e < 1e-3)) { print "cli-check: FAIL: exact error " e " in: " $0; bad = 1 }
    if (!(g > 0 && g < 1)) { print "cli-check: FAIL: G=2 error " $NF " in: " $0; bad = 1 }
  } END { exit bad }' || fail=1

err() { "$tool" run -b cpu --seq 300 --heads 2 --dim 32 --group 2 "$@" | awk '$1 == "error:" { print $2 }'; }
a=$(err)
b=$(err)
c=$(err --seed 7)
echo "cli-check: run --group 2 error: $a, again $b, --seed 7 $c"
[ -n "$a" ] && [ "$a" = "$b" ] || bad "two runs with the default seed differ: $a, $b"
[ "$a" != "$c" ] || bad "--seed 7 gave the default seed's error $a"

"$tool" demo -g 3 "$top/data/smollm2-demo.dattncap" >/dev/null 2>&1
[ $? -eq 2 ] || bad "demo -g 3 is not a usage error"
"$tool" demo -b cpu /nonexistent.dattncap >/dev/null 2>&1
[ $? -eq 1 ] || bad "demo on a missing file does not exit 1"
# the projection strategy: calibrate on the small SmolLM2 capture, then
# eval --proj and run --proj with that file; usage errors
prj=${TMPDIR:-/tmp}/cli-check-$$.prj
"$tool" calibrate -q --rank 16 --method pca -o "$prj" "$top/tests/data/smollm2-small.dattncap" ||
  bad "calibrate exited $?"
out=$("$tool" eval -b cpu --groups 1 --proj "$prj" "$top/tests/data/smollm2-small.dattncap") ||
  bad "eval --proj exited $?"
echo "$out" | awk '$2 == "proj" { e = $(NF-2) + 0; found = 1
    if (!(e > 0 && e < 0.5)) { print "cli-check: FAIL: eval --proj total " e; bad = 1 } }
  END { exit bad || !found }' || bad "eval --proj printed no sane projection row"
"$tool" run -b cpu --seq 64 --heads 9 --kv-heads 3 --dim 64 --causal --proj "$prj" \
  --proj-layer 2 >/dev/null || bad "run --proj exited $?"
"$tool" run -b cpu --seq 64 --dim 32 --rank 8 >/dev/null || bad "run --rank exited $?"
# the kernel a plan runs, after the overrides the core parsed for it
k=$(DISTRATTN_CPU_DECODE=1 DISTRATTN_CPU_THREADS=1 "$tool" run -b cpu --seq 4 --dim 32 |
  awk '$1 == "kernel:" { $1 = ""; print substr($0, 2) }')
[ "$k" = "${k#split-kv decode}" ] && bad "run with DISTRATTN_CPU_DECODE=1 printed kernel '$k'"
case $k in *", 1 thread") ;; *) bad "run with DISTRATTN_CPU_THREADS=1 printed kernel '$k'" ;; esac
k=$(DISTRATTN_CPU_DECODE=0 "$tool" run -b cpu --seq 4 --dim 32 --csv --csv-header)
case $k in *',kernel
'*',tile_lsh,0,"fused ('*) ;; *) bad "run --csv with DISTRATTN_CPU_DECODE=0 printed '$k'" ;; esac
DISTRATTN_CPU_DECODE=2 "$tool" run -b cpu --seq 4 --dim 32 >/dev/null 2>&1
[ $? -ne 0 ] || bad "run with DISTRATTN_CPU_DECODE=2 did not fail"
"$tool" run -b cpu --seq 64 --dim 32 --rank 33 >/dev/null 2>&1
[ $? -eq 2 ] || bad "run --rank 33 --dim 32 is not a usage error"
"$tool" calibrate --rank 8 "$top/tests/data/smollm2-small.dattncap" >/dev/null 2>&1
[ $? -eq 2 ] || bad "calibrate without -o is not a usage error"
"$tool" calibrate -o "$prj" --method svd "$top/tests/data/smollm2-small.dattncap" >/dev/null 2>&1
[ $? -eq 2 ] || bad "calibrate --method svd is not a usage error"
"$tool" eval -b cpu --proj /nonexistent.prj "$top/tests/data/smollm2-small.dattncap" >/dev/null 2>&1
[ $? -eq 1 ] || bad "eval --proj on a missing file does not exit 1"
rm -f "$prj"

[ $fail -eq 0 ] && echo "cli-check: passed"
exit $fail
