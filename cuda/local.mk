# SPDX-License-Identifier: Apache-2.0
# cuda/: the CUDA backend module distrattn_cuda.so, compiled by nvcc through
# libtool and linked against the static CUDA runtime (configure's
# CUDA_LIBS), so that it needs only the driver. cuBLAS (for DA_ALGO_GEMM)
# is opened with dlopen on first use.
#
# libtool drives nvcc itself (--mode=compile writes the .lo files), with
# libtool's C tag and two adjustments, because the tag's options are
# spelled for gcc: libtool would add its PIC flags "-fPIC -DPIC", which
# nvcc refuses, so -prefer-non-pic leaves them out and nvcc's own
# -Xcompiler=-fPIC makes the object position independent instead; and
# libtool takes a bare -Xcompiler for its own option (passing the next
# word on alone), so nvcc's host options are written -Xcompiler=... here.
# NVCC_LT_SHARED (-shared unless --disable-shared): one object per source,
# none for a static archive, since the module is only ever dlopened.
#
# The kernels are spread over translation units so that make -j compiles
# them in parallel: the hash kernel's 32 instantiations (NB 8, 16 or 32
# hash bits x G 1, 2, 4, 8 x the bits per thread TB) in the four
# cuda_hash_g<G>.cu, which include cuda_hash_kernel.cuh and instantiate one
# G each, and the mma.sync kernel in one file per dtype and kind (dense,
# da_attn_ext). (Each nvcc run
# costs about 1.2 s of CPU besides its kernels, so a file per (NB, G),
# twelve, was slower on two cores.) The hash kernel's PTX is the same for
# every architecture, so those files are translated to PTX once and
# assembled for each architecture (configure's NVCC_GENCODE_ONEPTX); the
# other files' PTX differs between sm_80 and sm_90 (bf16 conversions), and
# each architecture gets its own (NVCC_GENCODE).
SUFFIXES = .cu

DA_NVCCFLAGS = -O3 -std=c++17 \
	-Xcompiler=-fPIC,-fvisibility=hidden,-fno-threadsafe-statics,-fno-exceptions
NVCC_LTCOMPILE = $(LIBTOOL) $(AM_V_lt) --tag=CC $(AM_LIBTOOLFLAGS) $(LIBTOOLFLAGS) \
	--mode=compile $(NVCC) $(NVCC_LT_SHARED) -prefer-non-pic $(DA_NVCCFLAGS) $(NVCCFLAGS) \
	$(DEFS) $(DEFAULT_INCLUDES) $(AM_CPPFLAGS) $(CPPFLAGS) -I$(top_srcdir)/cuda

.cu.lo:
	$(AM_V_GEN)$(NVCC_LTCOMPILE) $(NVCC_GENCODE) -c -o $@ $<

# the Hopper kernel: sm_90a alone (configure's NVCC_WG_GENCODE)
cuda/cuda_wgmma.lo: $(top_srcdir)/cuda/cuda_wgmma.cu $(top_srcdir)/cuda/cuda_wgmma_ops.cuh $(top_srcdir)/cuda/cuda_wg.cuh
	$(AM_V_GEN)$(NVCC_LTCOMPILE) $(NVCC_WG_GENCODE) -c -o $@ $(top_srcdir)/cuda/cuda_wgmma.cu

# the Hopper backward kernel likewise
cuda/cuda_bwd_wgmma.lo: $(top_srcdir)/cuda/cuda_bwd_wgmma.cu $(top_srcdir)/cuda/cuda_wgmma_ops.cuh \
		$(top_srcdir)/cuda/cuda_wg.cuh $(top_srcdir)/cuda/cuda_bwd_tile.cuh
	$(AM_V_GEN)$(NVCC_LTCOMPILE) $(NVCC_WG_GENCODE) -c -o $@ $(top_srcdir)/cuda/cuda_bwd_wgmma.cu

# the hash kernel's instantiations: one PTX for all architectures
DAC_HASH_DEPS = $(top_srcdir)/cuda/cuda_hash.cuh $(top_srcdir)/cuda/cuda_hash_kernel.cuh
cuda/cuda_hash_g1.lo: $(top_srcdir)/cuda/cuda_hash_g1.cu $(DAC_HASH_DEPS)
	$(AM_V_GEN)$(NVCC_LTCOMPILE) $(NVCC_GENCODE_ONEPTX) -c -o $@ $(top_srcdir)/cuda/cuda_hash_g1.cu
cuda/cuda_hash_g2.lo: $(top_srcdir)/cuda/cuda_hash_g2.cu $(DAC_HASH_DEPS)
	$(AM_V_GEN)$(NVCC_LTCOMPILE) $(NVCC_GENCODE_ONEPTX) -c -o $@ $(top_srcdir)/cuda/cuda_hash_g2.cu
cuda/cuda_hash_g4.lo: $(top_srcdir)/cuda/cuda_hash_g4.cu $(DAC_HASH_DEPS)
	$(AM_V_GEN)$(NVCC_LTCOMPILE) $(NVCC_GENCODE_ONEPTX) -c -o $@ $(top_srcdir)/cuda/cuda_hash_g4.cu
cuda/cuda_hash_g8.lo: $(top_srcdir)/cuda/cuda_hash_g8.cu $(DAC_HASH_DEPS)
	$(AM_V_GEN)$(NVCC_LTCOMPILE) $(NVCC_GENCODE_ONEPTX) -c -o $@ $(top_srcdir)/cuda/cuda_hash_g8.cu

EXTRA_DIST += bench/cuda-h100.txt bench/cuda-h200.txt \
	bench/hash_bench.cu bench/gpu_check.sh bench/cuda-notes.md scripts/gen_wgmma.py \
	bench/decode_race.py bench/bwd_race.py
noinst_HEADERS += cuda/cuda_internal.h cuda/cuda_dev.cuh cuda/cuda_softmax.cuh cuda/cuda_wg.cuh cuda/cuda_wgmma_ops.cuh \
	cuda/cuda_hash.cuh cuda/cuda_hash_kernel.cuh cuda/cuda_mma.cuh cuda/cuda_decode.cuh \
	cuda/cuda_bwd.cuh cuda/cuda_bwd_kern.cuh cuda/cuda_bwd_tile.cuh cuda/cuda_bwd_mma.cuh \
	cuda/cuda_bwd_split.cuh

if HAVE_CUDA
backend_LTLIBRARIES += cuda/distrattn_cuda.la
# largest first, so that make -j's last jobs are short ones: the hash
# kernel at G 2, 4, 8 and 1, the mma kernel's two dtypes, wgmma, simt, then
# the files without kernels' instantiations
cuda_distrattn_cuda_la_SOURCES = cuda/cuda_hash_g2.cu cuda/cuda_hash_g4.cu \
	cuda/cuda_hash_g8.cu cuda/cuda_hash_g1.cu cuda/cuda_mma_f16.cu \
	cuda/cuda_mma_bf16.cu cuda/cuda_mma_f16_ext.cu cuda/cuda_mma_bf16_ext.cu \
	cuda/cuda_mma_f16_proj.cu cuda/cuda_mma_bf16_proj.cu cuda/cuda_bwd_mma_f16.cu cuda/cuda_bwd_mma_bf16.cu \
	cuda/cuda_bwd_split_f16.cu cuda/cuda_bwd_split_bf16.cu cuda/cuda_bwd_wgmma.cu \
	cuda/cuda_wgmma.cu cuda/cuda_decode_f16.cu cuda/cuda_decode_bf16.cu cuda/cuda_decode_f32.cu \
	cuda/cuda_simt.cu cuda/cuda_bwd.cu cuda/cuda_hash.cu cuda/cuda_backend.cu cuda/cuda_mma.cu \
	cuda/cuda_proj.cu cuda/cuda_proj_mma.cu
# -z defs: every symbol resolved at link time, so that a launch the
# dispatch names but no file instantiates (cuda_hash.cuh, cuda_internal.h)
# fails the build here rather than dlopen on a GPU machine
cuda_distrattn_cuda_la_LDFLAGS = -module -avoid-version -no-undefined -Wl,-z,defs \
	-export-symbols-regex '^distrattn_backend_entry$$'
cuda_distrattn_cuda_la_LIBADD = $(CUDA_LIBS)
$(cuda_distrattn_cuda_la_OBJECTS): $(top_srcdir)/cuda/cuda_internal.h \
	$(top_srcdir)/cuda/cuda_dev.cuh $(top_srcdir)/cuda/cuda_softmax.cuh $(top_srcdir)/lib/da_backend.h \
	$(top_srcdir)/include/distrattn.h
cuda/cuda_hash.lo: $(top_srcdir)/cuda/cuda_hash.cuh
cuda/cuda_mma_f16.lo cuda/cuda_mma_bf16.lo cuda/cuda_mma_f16_ext.lo \
	cuda/cuda_mma_bf16_ext.lo cuda/cuda_mma_f16_proj.lo \
	cuda/cuda_mma_bf16_proj.lo cuda/cuda_proj_mma.lo: $(top_srcdir)/cuda/cuda_mma.cuh
cuda/cuda_decode_f16.lo cuda/cuda_decode_bf16.lo \
	cuda/cuda_decode_f32.lo: $(top_srcdir)/cuda/cuda_decode.cuh
cuda/cuda_bwd.lo cuda/cuda_backend.lo: $(top_srcdir)/cuda/cuda_bwd.cuh
cuda/cuda_bwd.lo: $(top_srcdir)/cuda/cuda_bwd_kern.cuh
cuda/cuda_bwd_mma_f16.lo cuda/cuda_bwd_mma_bf16.lo: $(top_srcdir)/cuda/cuda_bwd.cuh \
	$(top_srcdir)/cuda/cuda_bwd_tile.cuh $(top_srcdir)/cuda/cuda_bwd_mma.cuh \
	$(top_srcdir)/cuda/cuda_mma.cuh
cuda/cuda_bwd_split_f16.lo cuda/cuda_bwd_split_bf16.lo: $(top_srcdir)/cuda/cuda_bwd.cuh \
	$(top_srcdir)/cuda/cuda_bwd_tile.cuh $(top_srcdir)/cuda/cuda_bwd_split.cuh \
	$(top_srcdir)/cuda/cuda_mma.cuh
endif
