#!/bin/sh
# SPDX-License-Identifier: Apache-2.0
# The command-line program as the README runs it: `distrattn demo` on the
# shipped SmolLM2 capture (the main job) prints every layer, exact
# attention within f16 rounding of the float64 reference and a finite G=2
# error below 1; `distrattn run` gives the same answer twice (fixed seed) and
# a different one for another --seed; bad options are usage errors (exit 2).
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
[ $fail -eq 0 ] && echo "cli-check: passed"
exit $fail
