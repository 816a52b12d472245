/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The CUDA backend's backward pass (SPEC 1b), FlashAttention-2 style: no
 * seq_q x seq_k matrix in memory. One da_attention_backward call enqueues,
 * on the context's stream:
 *  1. (G > 1) the forward's hash kernel (cuda_hash.cu: the same
 *     permutations and fusion weights as the forward), then the expanded Q
 *     Qx[i][c] = Qs[i][g(c)] a_c (f32, or the plan's dtype on the
 *     tensor-core path), so that the logits are Qx K^T and dK = s dS^T Qx;
 *     (the projection strategy, SPEC 1c) Qx = Q M_h with the plan's
 *     M_h = A_h B_h^T, so that the logits s (Q A_h)(K B_h)^T are Qx K^T
 *     likewise and dK = s sum_h dS^T Q A_h B_h^T is dS^T Qx;
 *  2. D[i] = sum_c dO[i][c] O[i][c] (f32), and the f32 dQ accumulator set
 *     to zero (not under split, below);
 *  3. the main kernel, one block per (batch, kv head, key block), over the
 *     query heads of the kv head and the query blocks that see the keys:
 *     P from the forward's LSE, dV += P^T dO, dP = dO V^T,
 *     dS = P o (dP - D), dK += dS^T Q (dK, dV in registers or shared
 *     memory, written once at the end in the plan's dtype), and
 *     E += dS K into the f32 accumulator with atomics;
 *  4. dQ from E in the plan's dtype: s E (G = 1), or per hash tile
 *     dQ[i][c] = s / A_g(c) sum_{c' in g(c)} a_c' E[i][c'] (G > 1), or
 *     dQ = s E M_h^T (the projection strategy: SPEC 1c's dQ = dQ' A_h^T
 *     with dQ' = s dS (K B_h), i.e. s (dS K) B_h A_h^T).
 * Step 3 on tensor cores has a second arrangement, "split"
 * (DISTRATTN_CUDA_BWD_DQ=split; cuda_bwd_split.cuh), which trades the
 * atomics for a second recomputation of S and dP:
 *  3a. a dK/dV kernel, one block per (batch, kv head, key block) as above,
 *      computing dV += P^T dO and dK += dS^T Q only (no dS in shared
 *      memory, no barrier inside a step, no atomics);
 *  3b. a dQ kernel, one block per (batch, head, 128 query rows; 64 under
 *      DISTRATTN_CUDA_BWD_DQ_ROWS=64), looping over the key blocks the
 *      rows see (K and V double-buffered with cp.async): S, P from the
 *      LSE, dP = dO V^T, dS = P o (dP - D), dQ += dS K in registers,
 *      written once: s dQ in the plan's dtype straight to dQ (G = 1: no
 *      E, no step 2 zeroing, no step 4), or E (G > 1: every row written,
 *      so no zeroing; step 4 folds it back).
 * Why: the atomic kernel holds dK, dV, S^T, dP^T and E's fragments at once
 * (215-240 registers a thread on sm_90, 8 warps an SM) and its f32
 * atomics and mid-step barrier serialize; the split kernels need fewer
 * registers (dQ kernel: 128, 2 blocks of 8 warps an SM, each K/V tile
 * feeding 128 rows; 162-164 with 64 rows, 3 blocks of 4 warps; dK/dV
 * kernel at head_dim 64: 128 with 8 warps, 2 blocks an SM, or 159 with 4,
 * 3 blocks; at 128: 233, its 128 f32 accumulators a thread) and no
 * atomics, so dQ is the same bits from call to call, at the price of 7
 * products a tile pair instead of 5. Measured on an H200 (bench/bwd_race.py
 * --variants, bench/cuda-notes.md): within 3 % of the atomic kernel, which
 * stays the default. Both kernels' tile code is cuda_bwd_tile.cuh's.
 * The main kernel is the Hopper one (cuda_bwd_wgmma.cu: warpgroup MMA,
 * sm_90, the atomic arrangement with 128 keys and 64 query rows a step),
 * the tensor-core one (cuda_bwd_mma.cuh: mma.sync
 * m16n8k16, f16/bf16, head_dim 64 and 128, 16-byte aligned rows) or the
 * SIMT one (cuda_bwd_kern.cuh: every dtype, head_dim 1..256, any layout);
 * tests/cuda_emu runs both on the host.
 * Internal, not installed.
 */
#ifndef DA_CUDA_BWD_CUH
#define DA_CUDA_BWD_CUH

#include "cuda_internal.h"

typedef struct dac_bwd_args {
  /* at the call's offsets; element (b, h, r, c) at b st[0] + h st[1] + r st[2] + c */
  const void *q, *k, *v, *o, *dout;
  const float *lse;       /* [batch][heads][seq_q] */
  void *dq, *dk, *dv;     /* Q's, K's and V's strides (dout and o: O's) */
  long long qst[3], kst[3], vst[3], ost[3];
  /* the Q the logits use: q itself (qx NULL), or the expanded Q of G > 1,
   * dense [batch][heads][seq_q][d] in qx_dt */
  const void *qx;
  da_dtype qx_dt;
  float *dacc;            /* f32 [batch][heads][seq_q][d]: E = sum dS K, zeroed first */
  float *dsum;            /* f32 [batch][heads][seq_q]: D */
  const float *pm;        /* DA_STRATEGY_PROJECTION: M_h = A_h B_h^T, [heads][d][d] f32; else NULL */
  const int *perm;        /* G > 1: [batch][heads][n_tiles][d] */
  const float *wts;       /* G > 1: same shape, a_c of column c */
  int batch, heads, kv_heads, seq_q, seq_k, d;
  int G, hash_block, n_tiles;
  int wl, wr;             /* visible keys of row i: [i + off - wl, i + off + wr], -1 unbounded */
  float sc_log2;          /* da_log2_mul(scale): P = 2^(l sc_log2 - LSE log2 e) */
  float sc;               /* sc_log2 / log2 e: the gradients' scale */
  da_dtype dt;
  int bc;                 /* the tensor-core kernel's keys per block: 64 or 128 */
  int dq_rows;            /* split: the dQ kernel's query rows per block, 64 or 128 (0: 128) */
} dac_bwd_args;

#ifdef __cplusplus
extern "C" {
#endif

/* steps 1 (the expanded Q, after the hash kernel), 2 (D) and 4 (dQ) */
DAC_HIDDEN cudaError_t dac_launch_bwd_qx(const dac_bwd_args *a, void *qx, da_dtype qx_dt,
                                         cudaStream_t s);
DAC_HIDDEN cudaError_t dac_launch_bwd_dsum(const dac_bwd_args *a, cudaStream_t s);
DAC_HIDDEN cudaError_t dac_launch_bwd_dq(const dac_bwd_args *a, cudaStream_t s);
/* the projection strategy's steps 1 and 4 (a->pm set): qx = Q M_h in qx_dt
 * (dense [batch][heads][seq_q][d]), and dQ = s E M_h^T (dac_launch_bwd_dq
 * calls it) */
DAC_HIDDEN cudaError_t dac_launch_bwd_qproj(const dac_bwd_args *a, void *qx, da_dtype qx_dt,
                                            cudaStream_t s);
/* step 3, SIMT: head_dim 1..256 */
DAC_HIDDEN cudaError_t dac_launch_bwd_simt(const dac_bwd_args *a, cudaStream_t s);
/* step 3 on tensor cores: f16/bf16 (qx_dt the same), head_dim 64 or 128,
 * every row 16-byte aligned; cudaErrorInvalidValue for anything else */
DAC_HIDDEN int dac_bwd_mma_supported(da_dtype dt, int d);
DAC_HIDDEN cudaError_t dac_launch_bwd_mma_f16(const dac_bwd_args *a, cudaStream_t s);
DAC_HIDDEN cudaError_t dac_launch_bwd_mma_bf16(const dac_bwd_args *a, cudaStream_t s);
/* step 3 on Hopper (cuda_bwd_wgmma.cu: warpgroup MMA, the atomic
 * arrangement): sm_90 (a build with the sm_90a target), f16/bf16, head_dim
 * 64 or 128, every row 16-byte aligned */
DAC_HIDDEN int dac_bwd_wg_supported(int cc_major, int cc_minor, da_dtype dt, int d);
DAC_HIDDEN cudaError_t dac_launch_bwd_wg(const dac_bwd_args *a, cudaStream_t s);
/* step 3 split (cuda_bwd_split.cuh): the dK/dV kernel, then the dQ kernel
 * (s dQ straight into a->dq for G = 1, E into a->dacc for G > 1); the same
 * conditions as the tensor-core kernel */
DAC_HIDDEN cudaError_t dac_launch_bwd_split_f16(const dac_bwd_args *a, cudaStream_t s);
DAC_HIDDEN cudaError_t dac_launch_bwd_split_bf16(const dac_bwd_args *a, cudaStream_t s);

#ifdef __cplusplus
}
#endif

#endif /* DA_CUDA_BWD_CUH */
