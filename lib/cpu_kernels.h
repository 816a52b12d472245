/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The CPU backend's compute kernels, built once per instruction set
 * (lib/cpu_kern_generic.c, lib/cpu_kern_avx2.c, lib/cpu_kern_avx512.c, each
 * including the template lib/cpu_kern_tmpl.h) and chosen at run time by
 * lib/cpu_backend.c. Internal.
 *
 * One attention call runs as parallel passes over a persistent thread pool:
 *  1. (G > 1) groups: per hash tile, Q converted to f32, hashed (vectorised
 *     across columns, sequential FMA over rows: bit-identical to lib/hash.c),
 *     sorted, fusion weights (skipped when a hash tile is exactly one block
 *     of QB query rows: the attention item then groups its own tile);
 *  2. pack: for a chunk of (batch, kv head) pairs, K converted once to f32
 *     K^T panels and V to f32 V panels, per block of KB keys;
 *  3. attention: per (head, block of QB query rows), Q converted and scaled
 *     once, then for every key block: (G > 1: fused K^T, ceil(d/G) rows, made
 *     once per query tile and key block) logits, online softmax, P V.
 * The projection strategy (SPEC 1c) projects K in pass 2 (per kv head, one
 * R-row K^T per query head reading it) and Q in pass 3 (per row, in
 * build_q_proj): the logits have R columns, P V stays over head_dim.
 * Decode (exact, few query rows per kv head: lib/cpu_backend.c decides)
 * runs instead as split-KV (flash-decoding) passes with no packing:
 *  1. per (batch, kv head, chunk of keys), every query row of the heads
 *     that read the kv head against K and V read in place (converted in L1),
 *     a partial (max, sum, acc) per row;
 *  2. per (batch, head), the chunks' partials merged; O and LSE written.
 */
#ifndef DA_CPU_KERNELS_H
#define DA_CPU_KERNELS_H

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "da_internal.h"

#define CPU_KB 128 /* keys per key block, every instruction set */

typedef struct cpu_attn_job {
  const da_plan *p;
  const void *q, *k, *v;
  void *o;
  float *const *scratch; /* per-thread scratch, 64-byte aligned */
  int G;                 /* group size (1: exact) */
  int d;                 /* head_dim */
  int D;                 /* logit columns: head_dim, or ceil(head_dim / G) */
  int hpk;               /* query heads per kv head */
  long off;              /* seq_k - seq_q (per sequence: set by attn_item) */
  float qmul;            /* scale * log2(e) */
  /* layout (da_attn_ext): element strides [batch, head, row] and offsets */
  long long qst[3], kst[3], vst[3], ost[3];
  size_t q_off, k_off, v_off, o_off;
  /* per sequence b: its first row in Q/O and in K/V, its lengths; NULL:
   * every sequence is rows 0.. of its batch index, seq_q x seq_k */
  const int *q0, *lq, *k0, *lk;
  int wl, wr;            /* window (-1: unbounded); causal: wr = 0 */
  float *lse;            /* f32 log-sum-exp output, or NULL */
  int lse_packed;        /* lse is [heads][rows_q] (else [batch][heads][seq_q]) */
  size_t lse_rows;       /* rows_q when lse_packed */
  /* layout, filled by setup() */
  int QB, nqb;           /* query rows per work item; items per head */
  int nkb;               /* key blocks per kv head */
  int Dp;                /* head_dim padded to the kernel's column width */
  size_t kblk, vblk;     /* floats of one packed key block of K^T, of V */
  size_t lds;            /* logit row stride (KB, or all keys for GEMM) */
  size_t scratch_floats; /* per thread, for every pass */
  size_t o_qf, o_kf, o_row, o_s, o_acc, o_m, o_l, o_lv, o_qt;
  /* the packed chunk: pairs pair0 .. pair0+npairs-1 (pair = bi*kv_heads+kh) */
  long pair0, npairs;
  float *kpack, *vpack;
  /* G > 1: [batch][heads][n_tiles][head_dim] permutations and weights */
  int *perm_all;
  float *a_all;
  /* DA_STRATEGY_PROJECTION (SPEC 1c): R = rank (0: not this strategy), pj
   * the plan's [heads][2][head_dim][R]. D = R; a packed key block then
   * holds hpk K^T blocks of R rows, K_kv B_h for each query head h of the
   * kv head (kblk = hpk * R * KB); o_kt: pack's scratch for K^T itself. */
  int R;
  const float *pj;
  size_t o_kt;
  /* split-KV decode (dec_setup; dec_C and dec_nch set by the caller):
   * rows per (batch, kv head) hpk * seq_q, padded; head_dim rounded to the
   * vector width; keys per chunk and chunks per (batch, kv head); the
   * floats of one chunk's partial (max[Rp], sum[Rp], acc[Rp][Dp]) and the
   * partials, [batch * kv_heads][dec_nch] */
  int dec_rows, dec_Rp, dec_Dq;
  int dec_C, dec_nch;
  size_t dec_part;
  float *part;
} cpu_attn_job;

typedef void (*cpu_item_fn)(void *job, int tid, long item);

typedef struct cpu_kernels {
  const char *isa;                  /* "avx512", "avx2", "generic" */
  void (*setup)(cpu_attn_job *J);   /* fills the layout fields */
  cpu_item_fn groups_item;          /* item = (bi*heads + hi)*n_tiles + tile */
  cpu_item_fn pack_item;            /* item = (pair - pair0)*nkb + kb */
  cpu_item_fn attn_item;            /* npairs*hpk*nqb items */
  void (*dec_setup)(cpu_attn_job *J); /* the decode path's layout, instead of setup's */
  cpu_item_fn dec_item;             /* item = (bi*kv_heads + kh)*dec_nch + chunk */
  cpu_item_fn dec_combine;          /* item = bi*heads + hi */
} cpu_kernels;

DA_HIDDEN extern const cpu_kernels da_cpu_kernels_generic;
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#  define DA_CPU_X86 1
DA_HIDDEN extern const cpu_kernels da_cpu_kernels_avx2;
DA_HIDDEN extern const cpu_kernels da_cpu_kernels_avx512;
#endif

#endif /* DA_CPU_KERNELS_H */
