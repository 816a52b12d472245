/* SPDX-License-Identifier: Apache-2.0 */
/* SPEC steps 2-6 on the GPU: the choice and launch of the hash kernel
 * (cuda_hash.cuh; the kernel itself is in cuda_hash_kernel.cuh, built by
 * the cuda_hash_g<G>.cu files), the fused Q, and the helpers of the GEMM
 * algorithm. */
#include <math.h>
#include <stdint.h>

#include "cuda_hash.cuh"

/* Threads of a block at TB bits per thread: one per (4 columns, bit group),
 * in whole warps. */
static int dac_hash_threads(int tb, int hash_bits, int d) {
  return ((hash_bits + tb - 1) / tb * ((d + 3) / 4) + 31) / 32 * 32;
}

/* Warps per SM below which a grid is latency-bound: fewer than this many
 * per SM (4 per scheduler) leave the waits on shared and global memory
 * and the barriers unhidden. */
#define DAC_HASH_WARPS_SM 16

/* TB for a grid of `blocks` blocks on `sms` SMs. 4 by default: measured on
 * an H200 (bench/hash_bench.cu, batch 4 x 16 heads, f16, 16 bits,
 * hash_block 128, G 2), it beats 8 on small and large grids alike (seq
 * 8192, d 128: MEAN 151 -> 138 us, NORM 270 -> 198 us; the fused Q's
 * divisions of NORM gain most from the threads). 2 when the grid gives an
 * SM fewer than DAC_HASH_WARPS_SM warps at 4 and all its blocks fit on the
 * SMs at once at 2 (seq 1024, d 64: 512 blocks, 4 per SM of 128 threads;
 * NORM 38 -> 30 us); at d 128 those blocks have 256 threads, three per SM,
 * and 4 stays. Not 2 above 16 bits (those blocks would have at most 112
 * columns, and that kernel, 4 bytes over its 80 registers, is not built).
 * 8 when the block would pass DAC_HASH_MAXT threads at 4 (d above 128
 * with more than 16 bits). */
static int dac_hash_pick_tb(long long blocks, int sms, int hash_bits, int d) {
  const long long per_sm = (blocks + sms - 1) / sms;
  const int t4 = dac_hash_threads(4, hash_bits, d), t2 = dac_hash_threads(2, hash_bits, d);
  if (t4 > DAC_HASH_MAXT) return 8;
  if (hash_bits <= 16 && per_sm * (t4 / 32) < DAC_HASH_WARPS_SM && t2 > t4 &&
      t2 <= DAC_HASH_MAXT && per_sm * t2 <= DAC_HASH_MAXT * dac_hash_tb<2>::MINB)
    return 2;
  return 4;
}

/* The launch, Q read through ql, TB given (2, 4 or 8; 0: dac_hash_pick_tb's). */
static cudaError_t dac_launch_hash_l(const void *q, const dac_qlayout &ql, da_dtype dt, int batch,
                                     int heads, int seq_q, int d, const float *proj, int hash_bits,
                                     int hash_block, int G, da_fusion fusion, int *perm, float *wts,
                                     void *qs, da_dtype qs_dt, int qs_ld, int ng, cudaStream_t s,
                                     int tb) {
  if (d < 1 || d > 256 || hash_bits < 1 || hash_bits > 32 || hash_block < 1 ||
      (G != 1 && G != 2 && G != 4 && G != 8) || (tb != 0 && tb != 2 && tb != 4 && tb != 8))
    return cudaErrorInvalidValue;
  if (batch <= 0 || heads <= 0 || seq_q <= 0) return cudaSuccess;
  const int CK = DAC_HASH_CK;
  const int n_tiles = (seq_q + hash_block - 1) / hash_block;
  const size_t es = dac_dtype_size(dt);
  /* cp.async pieces of Q rows: 16 bytes, else 8 (4 columns of f16/bf16),
   * else element by element; every row's start must be aligned to the
   * piece (the strides in bytes too) */
  const unsigned long long sbits =
      (unsigned long long)(ql.sb * (long long)es) | (unsigned long long)(ql.sh * (long long)es) |
      (unsigned long long)(ql.sr * (long long)es) | (unsigned long long)(uintptr_t)q;
  const int pb = (size_t)d * es % 16 == 0 && sbits % 16 == 0            ? 16
                 : es == 2 && d % 4 == 0 && sbits % 8 == 0               ? 8
                                                                         : 0;
  const int rvec = hash_block % 4 == 0 && (uintptr_t)proj % 16 == 0;
  const int nb = hash_bits <= 8 ? 8 : hash_bits <= 16 ? 16 : 32;
  const size_t units = ((size_t)d * es + 15) / 16; /* 16-byte units of a row */
  const size_t rbytes = 2 * (size_t)nb * CK * sizeof(float);
  const int rmax = min(hash_block, seq_q); /* rows of the longest tile */
  const int fused = wts && qs && G > 1;
  int dev, optin, sms;
  cudaError_t e;
  if ((e = cudaGetDevice(&dev)) != cudaSuccess) return e;
  if ((e = cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev)) !=
      cudaSuccess)
    return e;
  if ((e = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev)) != cudaSuccess)
    return e;
  /* the whole tile's Q when the fused Q reads it again and it fits, else
   * two chunk slots */
  int rpad = (rmax + 3) / 4 * 4 + 1;
  size_t smem = units * rpad * 16 + rbytes;
  const int resident = fused && smem <= min((size_t)optin, (size_t)DAC_HASH_RESIDENT_MAX);
  if (!resident) {
    rpad = CK + 1;
    smem = 2 * units * rpad * 16 + rbytes;
    if (smem > (size_t)optin) return cudaErrorInvalidConfiguration;
  }
  if (tb == 0) tb = dac_hash_pick_tb((long long)n_tiles * heads * batch, sms, hash_bits, d);
  /* the fused Q's columns per thread: one store of them when qs allows */
  const int ov = tb == 2   ? dac_hash_tb<2>::ov(G)
                 : tb == 4 ? dac_hash_tb<4>::ov(G)
                           : dac_hash_tb<8>::ov(G);
  const int qs_vec =
      fused && qs_ld % ov == 0 && (uintptr_t)qs % ((size_t)ov * dac_dtype_size(qs_dt)) == 0;
  const int threads = dac_hash_threads(tb, hash_bits, d);
  if (threads > DAC_HASH_MAXT || (tb == 2 && nb == 32)) return cudaErrorInvalidValue;
  const dim3 grid(n_tiles, heads, batch);
  const int norm = fusion == DA_FUSE_NORM;
#define DAC_HASH_LAUNCH(NB, GS, TB)                                                                \
  return dac_hash_launch<NB, GS, TB>(grid, threads, smem, s, q, ql, dt, heads, seq_q, d, proj,         \
                                     hash_bits, hash_block, norm, n_tiles, resident, rpad, pb,     \
                                     rvec, perm, wts, qs, qs_dt, qs_ld, ng, qs_vec)
  /* TB2: 2, or for NB = 32, which has no TB 2 (refused above), 4 */
#define DAC_HASH_LAUNCH_T(NB, GS, TB2)                                                             \
  switch (tb) {                                                                                    \
  case 2: DAC_HASH_LAUNCH(NB, GS, TB2);                                                            \
  case 4: DAC_HASH_LAUNCH(NB, GS, 4);                                                              \
  default: DAC_HASH_LAUNCH(NB, GS, 8);                                                             \
  }
#define DAC_HASH_LAUNCH_G(NB, TB2)                                                                 \
  switch (G) {                                                                                     \
  case 1: DAC_HASH_LAUNCH_T(NB, 1, TB2);                                                           \
  case 2: DAC_HASH_LAUNCH_T(NB, 2, TB2);                                                           \
  case 4: DAC_HASH_LAUNCH_T(NB, 4, TB2);                                                           \
  default: DAC_HASH_LAUNCH_T(NB, 8, TB2);                                                          \
  }
  if (nb == 8) DAC_HASH_LAUNCH_G(8, 2)
  if (nb == 16) DAC_HASH_LAUNCH_G(16, 2)
  DAC_HASH_LAUNCH_G(32, 4)
#undef DAC_HASH_LAUNCH_G
#undef DAC_HASH_LAUNCH_T
#undef DAC_HASH_LAUNCH
}

/* dac_launch_hash with TB given (2, 4 or 8; 0: dac_hash_pick_tb's), so
 * that bench/hash_bench.cu can time and check each. */
extern "C" cudaError_t dac_launch_hash_tb(const void *q, da_dtype dt, int batch, int heads,
                                          int seq_q, int d, const float *proj, int hash_bits,
                                          int hash_block, int G, da_fusion fusion, int *perm,
                                          float *wts, void *qs, da_dtype qs_dt, int qs_ld, int ng,
                                          cudaStream_t s, int tb) {
  /* dense: [batch][heads][seq_q][d] */
  dac_qlayout ql;
  ql.sr = d;
  ql.sh = (long long)seq_q * d;
  ql.sb = (long long)heads * ql.sh;
  ql.cu_q = NULL;
  ql.rows_q = 0;
  return dac_launch_hash_l(q, ql, dt, batch, heads, seq_q, d, proj, hash_bits, hash_block, G,
                           fusion, perm, wts, qs, qs_dt, qs_ld, ng, s, tb);
}

extern "C" cudaError_t dac_launch_hash_ext(const void *q, const dac_qlayout *ql, da_dtype dt,
                                           int batch, int heads, int seq_q, int d,
                                           const float *proj, int hash_bits, int hash_block, int G,
                                           da_fusion fusion, int *perm, float *wts, void *qs,
                                           da_dtype qs_dt, int qs_ld, int ng, cudaStream_t s) {
  return dac_launch_hash_l(q, *ql, dt, batch, heads, seq_q, d, proj, hash_bits, hash_block, G,
                           fusion, perm, wts, qs, qs_dt, qs_ld, ng, s, 0);
}

extern "C" cudaError_t dac_launch_hash(const void *q, da_dtype dt, int batch, int heads, int seq_q,
                                       int d, const float *proj, int hash_bits, int hash_block,
                                       int G, da_fusion fusion, int *perm, float *wts, void *qs,
                                       da_dtype qs_dt, int qs_ld, int ng, cudaStream_t s) {
  return dac_launch_hash_tb(q, dt, batch, heads, seq_q, d, proj, hash_bits, hash_block, G, fusion,
                            perm, wts, qs, qs_dt, qs_ld, ng, s, 0);
}

/* qx[bh][r][c] = Qs[r][g(c)] * a_c: the logits Qs Kf^T written as qx K^T. */
__global__ void dac_expand_q_kernel(dac_args a, void *__restrict__ qx, da_dtype qx_dt) {
  const size_t total = (size_t)a.batch * a.heads * a.seq_q * a.d;
  for (size_t idx = blockIdx.x * (size_t)blockDim.x + threadIdx.x; idx < total;
       idx += (size_t)gridDim.x * blockDim.x) {
    const int c = (int)(idx % a.d);
    const size_t row = idx / a.d;
    const int r = (int)(row % a.seq_q);
    const size_t bh = row / a.seq_q;
    const size_t poff = (bh * a.n_tiles + r / a.hash_block) * (size_t)a.d;
    int pos = 0;
    for (int i = 0; i < a.d; i++)
      if (a.perm[poff + i] == c) pos = i;
    const int i0 = (pos / a.G) * a.G, i1 = min(i0 + a.G, a.d);
    float num = 0.0f, den = 0.0f;
    for (int i = i0; i < i1; i++) {
      const int cc = a.perm[poff + i];
      num += dac_ld(a.q, a.dt, row * a.d + cc);
      den += a.wts[poff + cc];
    }
    dac_st(qx, qx_dt, idx, num / den * a.wts[poff + c]);
  }
}

extern "C" cudaError_t dac_launch_expand_q(const dac_args *a, void *qx, cudaStream_t s) {
  const size_t total = (size_t)a->batch * a->heads * a->seq_q * a->d;
  const size_t blocks = (total + 255) / 256;
  dac_expand_q_kernel<<<(unsigned)(blocks < 65536 ? blocks : 65536), 256, 0, s>>>(*a, qx, a->dt);
  return cudaGetLastError();
}

__device__ __forceinline__ float dac_block_reduce(float v, bool is_max, float *red) {
  for (int o = 16; o > 0; o >>= 1) {
    const float w = __shfl_xor_sync(0xffffffffu, v, o);
    v = is_max ? fmaxf(v, w) : v + w;
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, nw = blockDim.x / 32;
  __syncthreads();
  if (lane == 0) red[warp] = v;
  __syncthreads();
  v = red[0];
  for (int i = 1; i < nw; i++) v = is_max ? fmaxf(v, red[i]) : v + red[i];
  return v;
}

/* One block per row of logits: p = softmax(scale * s + mask). */
__global__ void dac_softmax_kernel(const float *__restrict__ sl, void *__restrict__ p, da_dtype pdt,
                                   int seq_q, int seq_k, int causal, float scale) {
  __shared__ float red[32];
  const size_t row = blockIdx.x;
  const int i = (int)(row % seq_q);
  const int nvis = causal ? max(0, min(seq_k, i + (seq_k - seq_q) + 1)) : seq_k;
  const float *sr = sl + row * seq_k;
  const size_t po = row * seq_k;
  float m = -INFINITY;
  /* __fmul_rn: never contracted into an fma with "- m", so the maximum's
   * exponent is exactly 0 whatever the logits' size (SPEC 1, "Scale") */
  for (int j = threadIdx.x; j < nvis; j += blockDim.x) m = fmaxf(m, __fmul_rn(sr[j], scale));
  m = dac_block_reduce(m, true, red);
  float sum = 0.0f;
  for (int j = threadIdx.x; j < nvis; j += blockDim.x) sum += expf(__fmul_rn(sr[j], scale) - m);
  sum = dac_block_reduce(sum, false, red);
  const float inv = nvis > 0 ? 1.0f / sum : 0.0f;
  for (int j = threadIdx.x; j < seq_k; j += blockDim.x)
    dac_st(p, pdt, po + j, j < nvis ? expf(__fmul_rn(sr[j], scale) - m) * inv : 0.0f);
}

extern "C" cudaError_t dac_launch_softmax(const float *sl, void *p, da_dtype pdt, long long rows,
                                          int seq_q, int seq_k, int causal, float scale,
                                          cudaStream_t s) {
  if (rows <= 0) return cudaSuccess;
  dac_softmax_kernel<<<(unsigned)rows, 256, 0, s>>>(sl, p, pdt, seq_q, seq_k, causal, scale);
  return cudaGetLastError();
}
