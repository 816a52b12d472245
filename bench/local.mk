# bench/: the script that produces the README's benchmark table.
dist_noinst_SCRIPTS += bench/run-bench.sh
