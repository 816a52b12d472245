/* SPDX-License-Identifier: Apache-2.0 */
/*
 * CUDA backend internals: the backend's context and plan state and the
 * kernel launchers shared by the module's translation units. Not installed.
 */
#ifndef DA_CUDA_INTERNAL_H
#define DA_CUDA_INTERNAL_H

#include <cuda_runtime.h>

#include "da_backend.h"

#define DAC_HIDDEN __attribute__((visibility("hidden")))

typedef struct dac_ctx {
  int dev;
  cudaStream_t stream;
  int own_stream;
  int cc_major, cc_minor;
  int sm_count;
  size_t smem_optin;      /* largest dynamic shared memory a block may opt in to */
  void *blas;             /* cuBLAS handle, made on first use */
} dac_ctx;

typedef struct dac_plan {
  float *proj;            /* the projections R on the device */
  int *perm;              /* [batch][heads][n_tiles][head_dim] */
  float *wts;             /* same shape: fusion weight a_c of column c */
  void *qs;               /* fused Q: [batch][heads][seq_q][qs_ld] in qs_dtype */
  int qs_ld;              /* row length of qs (ng, padded to 16 on the mma path) */
  da_dtype qs_dtype;      /* the element type of qs */
  int use_mma;            /* tensor-core kernel */
  int use_wg;             /* ... as the Hopper warpgroup-MMA kernel (cuda_wgmma.cu) */
  void *kt;               /* K^T for the Hopper kernel's G > 1 path */
  int kt_ld;              /* its row length: seq_k rounded up to 128 */
  int br;                 /* query rows per block on the chosen path */
  /* GEMM algorithm scratch */
  void *gemm_s;           /* logits, f32 */
  void *gemm_p;           /* probabilities, in the compute dtype */
  void *gemm_q;           /* expanded Q for G > 1 */
  size_t gemm_chunk;      /* (batch, kv head) pairs per GEMM round */
  /* split-KV decode (cuda_decode.cuh): used where dec is set and the
   * call's K and V rows are 16-byte aligned */
  int dec;                /* the plan runs on the decode kernels */
  int dec_rb, dec_nrg;    /* query rows per block, row groups per kv head */
  int dec_nch, dec_C;     /* chunks of keys and keys per chunk */
  float *dec_part;        /* partial results [rows][nch][d] f32, then (max, sum) [rows][nch] */
  /* DA_STRATEGY_PROJECTION (SPEC 1c): the plan's projections
   * [heads][2][head_dim][rank] f32 on the device; the projected Q
   * [batch][heads][seq_q][rank] and K (per query head)
   * [batch][heads][seq_k][rank], sized for f32 (the SIMT kernel's; the
   * tensor-core kernel's are in the dtype); proj_mma: the tensor-core
   * kernel has this (dtype, head_dim, rank); proj_wg: so has the
   * warpgroup-MMA kernel's pre-projected mode, and the plan's V and O are
   * dense, with no LSE, window or per-sequence lengths */
  float *pj;
  void *pq, *pk;
  int proj_mma, proj_wg;
  /* DA_STRATEGY_PROJECTION (SPEC 1c), for the backward pass: M_h = A_h
   * B_h^T per query head, [heads][head_dim][head_dim] f32 (da_proj_products),
   * made at plan time */
  float *pm;
} dac_plan;

/* Kernel launch parameters, filled from a plan. */
typedef struct dac_args {
  const void *q, *k, *v;
  void *o;
  const void *qs;         /* fused Q (G > 1) */
  const void *kt;         /* K^T scratch of the Hopper kernel (G > 1): [batch][kv_heads][d][kt_ld] */
  int kt_ld;
  const int *perm;
  const float *wts;
  int batch, heads, kv_heads, seq_q, seq_k, d;
  int G, ng, qs_ld, hash_block, n_tiles;
  int causal;
  float scale;       /* da_scale_eff: natural-log domain (the SIMT kernel, the GEMM softmax) */
  float scale_log2;  /* da_log2_mul: the log2-domain multiplier (the tensor-core kernels) */
  da_dtype dt;
  /* da_attn_ext options (attention_ext; read only by the kernels'
   * EXT instantiations, zero for dense calls). q, k, v, o then point at
   * the caller's offsets already; element (b, h, r, c) of a tensor is at
   * b * st[0] + h * st[1] + r * st[2] + c. */
  long long qst[3], kst[3], vst[3], ost[3];
  int lens;               /* DA_SEQLENS_* */
  const int *seqlens_k;   /* DA_SEQLENS_KV: [batch], clamped to 0..seq_k in the kernels */
  const int *cu_q, *cu_k; /* DA_SEQLENS_PACKED: [batch + 1], clamped to 0..rows_q/rows_k */
  long long rows_q, rows_k;
  int wl, wr;             /* window: -1 or >= 0 (causal: wr = 0) */
  float *lse;             /* f32 log-sum-exp output (NULL: none), at its offset */
  /* DA_STRATEGY_PROJECTION (SPEC 1c), pr > 0: the rank; qs holds the
   * projected Q [batch][heads][seq_q][pr] (qs_ld = pr) and kp the
   * projected K per query head [batch][heads][seq_k][pr], each sequence's
   * rows from 0 (dac_launch_proj writes them): f32 for the SIMT kernel,
   * the dtype for the tensor-core one. Only the EXT instantiations read
   * them (the plan's strides are filled in for dense calls). */
  int pr;
  const void *kp;
} dac_args;

/* Where the hash kernel reads Q: element strides (batch, head, row) and,
 * for DA_SEQLENS_PACKED, cu_seqlens_q (tiles then start at each
 * sequence's first row, its length clamped as the attention kernels do). */
typedef struct dac_qlayout {
  long long sb, sh, sr;
  const int *cu_q;        /* NULL: every sequence has seq_q rows from row 0 */
  long long rows_q;
} dac_qlayout;

#ifdef __cplusplus
extern "C" {
#endif

/* Hash + sort of every tile into perm; with wts, the fusion weights too;
 * with qs, the fused Q as well: qs[bh][r][g] in qs_dt, rows of qs_ld
 * elements (ng used, the rest zero). */
DAC_HIDDEN cudaError_t dac_launch_hash(const void *q, da_dtype dt, int batch, int heads, int seq_q,
                                       int d, const float *proj, int hash_bits, int hash_block,
                                       int G, da_fusion fusion, int *perm, float *wts, void *qs,
                                       da_dtype qs_dt, int qs_ld, int ng, cudaStream_t s);
/* The same with the hash bits per thread forced (2, 4 or 8; 0: the pick
 * dac_launch_hash makes), so that bench/hash_bench.cu can check and time
 * each variant. */
DAC_HIDDEN cudaError_t dac_launch_hash_tb(const void *q, da_dtype dt, int batch, int heads,
                                          int seq_q, int d, const float *proj, int hash_bits,
                                          int hash_block, int G, da_fusion fusion, int *perm,
                                          float *wts, void *qs, da_dtype qs_dt, int qs_ld, int ng,
                                          cudaStream_t s, int tb);
/* dac_launch_hash with Q read through ql (the da_attn_ext layouts). */
DAC_HIDDEN cudaError_t dac_launch_hash_ext(const void *q, const dac_qlayout *ql, da_dtype dt,
                                           int batch, int heads, int seq_q, int d,
                                           const float *proj, int hash_bits, int hash_block, int G,
                                           da_fusion fusion, int *perm, float *wts, void *qs,
                                           da_dtype qs_dt, int qs_ld, int ng, cudaStream_t s);
/* SIMT attention, every dtype and head_dim, 16-row tiles. */
DAC_HIDDEN cudaError_t dac_launch_simt(const dac_args *a, cudaStream_t s);
/* The same kernels' da_attn_ext instantiations (strides, lengths, windows,
 * LSE from a's ext fields); dense calls never take them. */
DAC_HIDDEN cudaError_t dac_launch_simt_ext(const dac_args *a, cudaStream_t s);
DAC_HIDDEN cudaError_t dac_launch_mma_ext(const dac_args *a, int br, cudaStream_t s);
DAC_HIDDEN cudaError_t dac_launch_mma_f16_ext(const dac_args *a, int br, cudaStream_t s);
DAC_HIDDEN cudaError_t dac_launch_mma_bf16_ext(const dac_args *a, int br, cudaStream_t s);
/* DA_STRATEGY_PROJECTION (cuda_proj.cu): out = Q_h A_h (is_k 0) or
 * K_kv(h) B_h (is_k 1), f32 accumulated over a->d columns in order, stored
 * in odt, [batch][heads][rows][a->pr] with each sequence's rows from 0 (Q
 * and K read through a's strides, lengths clamped as the attention
 * kernels do; rows past a sequence's length are 0). pj: the plan's
 * [heads][2][d][pr]. */
DAC_HIDDEN cudaError_t dac_launch_proj(const dac_args *a, const float *pj, int is_k, void *out,
                                       da_dtype odt, cudaStream_t s);
/* The same on tensor cores (cuda_proj_mma.cu), stored in a->dt, for the
 * shapes of dac_mma_proj_supported (the ranks the tensor-core attention
 * kernels take); cudaErrorInvalidValue otherwise. */
DAC_HIDDEN cudaError_t dac_launch_proj_mma(const dac_args *a, const float *pj, int is_k, void *out,
                                           cudaStream_t s);
/* The tensor-core kernel over pre-projected Q and K (cuda_mma.cuh with
 * GS = 0): f16/bf16, head_dim 64 with rank 16, 32, 64, head_dim 128 with
 * rank 16, 32, 64, 128; cudaErrorInvalidValue otherwise. */
DAC_HIDDEN int dac_mma_proj_supported(da_dtype dt, int d, int r);
DAC_HIDDEN cudaError_t dac_launch_mma_proj(const dac_args *a, cudaStream_t s);
DAC_HIDDEN cudaError_t dac_launch_mma_f16_proj(const dac_args *a, cudaStream_t s);
DAC_HIDDEN cudaError_t dac_launch_mma_bf16_proj(const dac_args *a, cudaStream_t s);
/* Split-KV decode of exact attention (cuda_decode.cuh), one launcher per
 * dtype: a's strides, lengths, window and LSE are used for dense calls too
 * (filled from the plan); part as dac_plan.dec_part. The occupancy
 * function gives the pass-1 blocks of (d, RB) one multiprocessor holds.
 * cudaErrorInvalidValue
 * for a head_dim or RB the kernels lack (64, 128, 256; 1, 2, 4). */
DAC_HIDDEN cudaError_t dac_launch_decode_f16(const dac_args *a, float *part, int nch, int C,
                                             int RB, int nrg, cudaStream_t s);
DAC_HIDDEN cudaError_t dac_occupancy_decode_f16(int d, int RB, int *blocks);
DAC_HIDDEN cudaError_t dac_launch_decode_bf16(const dac_args *a, float *part, int nch, int C,
                                             int RB, int nrg, cudaStream_t s);
DAC_HIDDEN cudaError_t dac_occupancy_decode_bf16(int d, int RB, int *blocks);
DAC_HIDDEN cudaError_t dac_launch_decode_f32(const dac_args *a, float *part, int nch, int C,
                                             int RB, int nrg, cudaStream_t s);
DAC_HIDDEN cudaError_t dac_occupancy_decode_f32(int d, int RB, int *blocks);
/* Tensor-core attention, f16/bf16, d in {64, 128}; returns
 * cudaErrorInvalidValue for a shape it lacks. */
DAC_HIDDEN cudaError_t dac_launch_mma(const dac_args *a, int br, cudaStream_t s);
DAC_HIDDEN int dac_mma_supported(da_dtype dt, int d, int G, int hash_block);
/* dac_launch_mma for one dtype (cuda_mma_f16.cu, cuda_mma_bf16.cu) */
DAC_HIDDEN cudaError_t dac_launch_mma_f16(const dac_args *a, int br, cudaStream_t s);
DAC_HIDDEN cudaError_t dac_launch_mma_bf16(const dac_args *a, int br, cudaStream_t s);
/* Hopper warpgroup-MMA attention (sm_90a), f16/bf16, d in {64, 128}, 128
 * query rows per block (hash_block a multiple of 128 when G > 1). For
 * G > 1 it first writes K^T into a->kt, rows of a->kt_ld = dac_wg_kt_ld(seq_k). */
DAC_HIDDEN int dac_wg_supported(int cc_major, int cc_minor, da_dtype dt, int d, int G,
                                int hash_block);
DAC_HIDDEN size_t dac_wg_kt_ld(int seq_k);
DAC_HIDDEN cudaError_t dac_launch_wg(const dac_args *a, cudaStream_t s);
/* Its pre-projected mode (DA_STRATEGY_PROJECTION): a->qs and a->kp hold Q'
 * and K' in the dtype, dense (dac_launch_proj), rank a->pr: 64 (head_dim
 * 64 or 128) or 128 (head_dim 128); V and O dense, no LSE, window or
 * per-sequence lengths (the caller checks). */
DAC_HIDDEN int dac_wg_proj_supported(int cc_major, int cc_minor, da_dtype dt, int d, int r);
DAC_HIDDEN cudaError_t dac_launch_wg_proj(const dac_args *a, cudaStream_t s);
/* GEMM helpers: expanded Q for G > 1 (qx[r][c] = Qs[r][g(c)] * a_c, in dt);
 * masked softmax of f32 logits rows into p (dtype pdt). */
DAC_HIDDEN cudaError_t dac_launch_expand_q(const dac_args *a, void *qx, cudaStream_t s);
DAC_HIDDEN cudaError_t dac_launch_softmax(const float *sl, void *p, da_dtype pdt, long long rows,
                                          int seq_q, int seq_k, int causal, float scale,
                                          cudaStream_t s);

#ifdef __cplusplus
}
#endif

#endif /* DA_CUDA_INTERNAL_H */
