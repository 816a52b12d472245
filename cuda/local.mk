# SPDX-License-Identifier: Apache-2.0
# cuda/: the CUDA backend module distrattn_cuda.so, compiled by nvcc through
# libtool (cuda/nvcc-lt.sh writes the .lo files) and linked against the
# static CUDA runtime, so that it needs only the driver. cuBLAS (for
# DA_ALGO_GEMM) is opened with dlopen on first use.
SUFFIXES = .cu

NVCC_LT = $(SHELL) $(top_srcdir)/cuda/nvcc-lt.sh
DA_NVCCFLAGS_BASE = -O3 -std=c++17 \
	-Xcompiler -fvisibility=hidden,-fno-threadsafe-statics,-fno-exceptions
DA_NVCCFLAGS = $(DA_NVCCFLAGS_BASE) $(NVCC_GENCODE)

.cu.lo:
	$(AM_V_GEN)$(NVCC_LT) $@ $(NVCC) $(DA_NVCCFLAGS) $(NVCCFLAGS) $(DEFS) \
	  $(DEFAULT_INCLUDES) $(AM_CPPFLAGS) $(CPPFLAGS) -I$(top_srcdir)/cuda -c $<

# the Hopper kernel: sm_90a alone (configure's NVCC_WG_GENCODE)
cuda/cuda_wgmma.lo: $(top_srcdir)/cuda/cuda_wgmma.cu $(top_srcdir)/cuda/cuda_wgmma_ops.cuh
	$(AM_V_GEN)$(NVCC_LT) $@ $(NVCC) $(DA_NVCCFLAGS_BASE) $(NVCC_WG_GENCODE) $(NVCCFLAGS) $(DEFS) \
	  $(DEFAULT_INCLUDES) $(AM_CPPFLAGS) $(CPPFLAGS) -I$(top_srcdir)/cuda -c $(top_srcdir)/cuda/cuda_wgmma.cu

EXTRA_DIST += cuda/nvcc-lt.sh bench/cuda_check.c bench/cuda_gpu_run.sh \
	bench/bench_cuda_vs_fa2.py bench/cuda-h100.txt bench/cuda-h200.txt \
	bench/hash_bench.cu bench/gpu_check.sh bench/cuda-notes.md scripts/gen_wgmma.py
noinst_HEADERS += cuda/cuda_internal.h cuda/cuda_dev.cuh cuda/cuda_wgmma_ops.cuh

if HAVE_CUDA
backend_LTLIBRARIES += cuda/distrattn_cuda.la
cuda_distrattn_cuda_la_SOURCES = cuda/cuda_backend.cu cuda/cuda_hash.cu \
	cuda/cuda_simt.cu cuda/cuda_mma.cu cuda/cuda_wgmma.cu
cuda_distrattn_cuda_la_LDFLAGS = -module -avoid-version -no-undefined \
	-export-symbols-regex '^distrattn_backend_entry$$'
cuda_distrattn_cuda_la_LIBADD = $(CUDA_HOME)/lib64/libcudart_static.a -ldl -lrt -lpthread
$(cuda_distrattn_cuda_la_OBJECTS): $(top_srcdir)/cuda/cuda_internal.h \
	$(top_srcdir)/cuda/cuda_dev.cuh $(top_srcdir)/lib/da_backend.h \
	$(top_srcdir)/include/distrattn.h $(top_srcdir)/cuda/nvcc-lt.sh
endif
