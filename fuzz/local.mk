# SPDX-License-Identifier: Apache-2.0
# fuzz/: the libFuzzer targets that scripts/ci-fuzz.sh builds with clang
# (make does not build them) and their seeds, and CI's sanitizer and fuzzer
# scripts, which .ci/run calls: shipped so that the tarball holds everything
# CI runs. fuzz/gen_capture_seeds.py regenerates fuzz/corpus-capture/.
dist_noinst_SCRIPTS += scripts/ci-fuzz.sh scripts/ci-sanitize.sh fuzz/gen_capture_seeds.py
EXTRA_DIST += fuzz/fuzz_desc.c fuzz/fuzz_capture.c \
	fuzz/corpus-capture/bad_limits \
	fuzz/corpus-capture/bad_nonfinite_f16 \
	fuzz/corpus-capture/bad_trailing \
	fuzz/corpus-capture/bad_truncated_data \
	fuzz/corpus-capture/bad_v2_kv_heads \
	fuzz/corpus-capture/bad_v2_model \
	fuzz/corpus-capture/bad_v2_scale_nan \
	fuzz/corpus-capture/bad_version3 \
	fuzz/corpus-capture/v2_gqa_causal_f16 \
	fuzz/corpus-capture/v2_mha_name64 \
	fuzz/corpus-capture/v2_mqa_f32 \
	fuzz/corpus-capture/valid_f16 \
	fuzz/corpus-capture/valid_f16_one \
	fuzz/corpus-capture/valid_f32 \
	fuzz/corpus-capture/valid_f32_dim8 \
	fuzz/corpus/distr_g2_causal_f16 \
	fuzz/corpus/exact_f32 \
	fuzz/corpus/gemm_bf16_g4 \
	fuzz/corpus/nonfinite_g8 \
	fuzz/corpus/raw_invalid \
	fuzz/corpus/raw_overflow
