# SPDX-License-Identifier: Apache-2.0
# bench/: the script that produces the README's benchmark table.
dist_noinst_SCRIPTS += bench/run-bench.sh
# The README's plots (issue 5): bench/plot.py draws bench/*.png from the CSV
# files in bench/data/ (distrattn bench --csv, distrattn eval --csv,
# tools/e2e.py --csv).
EXTRA_DIST += bench/plot.py bench/time-vs-seq.png bench/error-vs-g.png \
	bench/data/bench-cpu.csv bench/data/bench-opencl-pocl.csv \
	bench/data/eval-minilm.csv bench/data/e2e-minilm.csv \
	bench/gpu-check-issue15.txt bench/gpu-sessions-2026-12-02.txt \
	bench/gpu-sessions-2026-12-03.txt bench/fwd_race.py bench/gputime.py \
	bench/fwd-race-h200.txt bench/finetune-cpu.json bench/finetune-cpu.md \
	bench/zeroshot-minilm.json bench/zeroshot-minilm.md bench/zeroshot-mpnet.json \
	bench/zeroshot-mpnet.md bench/zeroshot-smollm2.json bench/zeroshot-smollm2.md \
	bench/zeroshot.png

# bench/bwd_time: a backward pass (cpu, opencl or cuda; f32, f16 or bf16;
# exact, G = 2 and the projection strategy of a rank) against the forward
# (not installed; `make bench/bwd_time`).
EXTRA_PROGRAMS = bench/bwd_time bench/membw bench/out_hash
bench_bwd_time_SOURCES = bench/bwd_time.c
bench_bwd_time_LDADD = lib/libdistrattn.la
# bench/membw.c: the machine's read bandwidth (two threads summing separate
# 512 MiB arrays), what `distrattn bench --decode --membw GBps` compares the
# decode path's K/V reads with. `make bench/membw` builds it; not installed.
# bench/out_hash.c: hashes of O and LSE over a fixed sweep of calls, to
# diff between two builds (a refactor that must be bit-identical);
# `make bench/out_hash`, not installed.
bench_out_hash_SOURCES = bench/out_hash.c
bench_out_hash_LDADD = lib/libdistrattn.la -lm
bench_membw_SOURCES = bench/membw.c
bench_membw_CFLAGS = $(AM_CFLAGS) -O2 -march=native
bench_membw_LDADD = -lpthread
CLEANFILES += bench/membw bench/out_hash
