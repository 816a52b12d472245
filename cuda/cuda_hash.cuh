/* SPDX-License-Identifier: Apache-2.0 */
/* The hash kernel (SPEC steps 2-6 and the fused Q, cuda/cuda_hash_kernel.cuh)
 * as its dispatcher in cuda/cuda_hash.cu sees it: the tile geometry, the
 * bits-per-thread table and the launch of one instantiation, whose
 * definitions the files cuda/cuda_hash_g<G>.cu compile, one per G, so
 * that make builds them in parallel. */
#ifndef DA_CUDA_HASH_CUH
#define DA_CUDA_HASH_CUH

#include "cuda_dev.cuh"

/* Rows per chunk: a tile is streamed through shared memory in chunks of
 * this many rows, and R is laid out in them. A multiple of 4. */
#define DAC_HASH_CK 32
/* Threads per block at most (the kernel's launch bound). */
#define DAC_HASH_MAXT 256
/* Hash bits per thread, TB = 2, 4 or 8, chosen per launch (dac_hash_pick_tb),
 * and what goes with it. Each Q value read from shared memory and
 * converted feeds TB fmas, so 8 has the fewest instructions per fma (at 2,
 * about 1.6x as many) but the fewest threads: a small grid (seq 1024,
 * d 64: 512 blocks of one warp on 132 SMs) leaves every SM a few lone
 * warps whose waits nothing hides, and there 2 or 4 give each block 4x or
 * 2x the warps. Those blocks must then be resident together, so at 2 and
 * 4 the registers are capped at 80 (MINB: 3 blocks of 256 threads, 6 of
 * 128 per SM), which the fused Q meets with a half or a quarter of the
 * source columns per thread (SRC) and two rows per step (RB), and the
 * chains without unrolling (UNROLL). At 8 the registers are free (162):
 * shared memory bounds its blocks per SM as much. */
template <int TB>
struct dac_hash_tb {
  static_assert(TB == 2 || TB == 4 || TB == 8, "TB: 2, 4 or 8");
  static constexpr bool BIG = TB == 8;
  static constexpr int MINB = BIG ? 1 : 3;
  static constexpr int UNROLL = BIG ? 2 : 1;             /* of the chains' four-row steps */
  static constexpr int SRC = BIG ? 16 : TB == 4 ? 8 : 4; /* fused Q: source columns per thread */
  static constexpr int RB = BIG ? 4 : 2;                 /* fused Q: rows per step */
  /* fused Q: output columns per thread */
  __host__ __device__ static constexpr int ov(int G) { return SRC / G > 1 ? SRC / G : 1; }
};
/* A tile whose Q and R take more shared memory than this is streamed twice
 * (hash, then fused Q) rather than kept, so that blocks per SM stay >= 2. */
#define DAC_HASH_RESIDENT_MAX (80 * 1024)

/* Launch dac_hash_kernel<NB, GS, TB>: NB hash bits rounded up to 8, 16 or
 * 32; GS = G; TB the bits per thread. Defined in cuda_hash_kernel.cuh and
 * instantiated only by the cuda_hash_g<G>.cu files, for exactly the
 * combinations DAC_HASH_TBS_<NB> list and dac_launch_hash_tb can pick. */
template <int NB, int GS, int TB>
cudaError_t
dac_hash_launch(dim3 grid, int threads, size_t smem, cudaStream_t s, const void *q,
                const dac_qlayout &ql, da_dtype dt, int heads, int seq_q, int d, const float *proj, int hash_bits, int hash_block,
                int norm, int n_tiles, int resident, int rpad, int pb, int rvec, int *perm,
                float *wts, void *qs, da_dtype qs_dt, int qs_ld, int ng, int qs_vec);

/* X(NB, GS, TB) for each TB built at NB: 2, 4 and 8, but at NB = 32 only
 * 4 and 8 (dac_launch_hash_tb refuses TB 2 there) */
#define DAC_HASH_TBS_8(X, GS) X(8, GS, 2) X(8, GS, 4) X(8, GS, 8)
#define DAC_HASH_TBS_16(X, GS) X(16, GS, 2) X(16, GS, 4) X(16, GS, 8)
#define DAC_HASH_TBS_32(X, GS) X(32, GS, 4) X(32, GS, 8)

#endif
