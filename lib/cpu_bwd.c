/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The CPU backend's backward pass: dQ, dK, dV of exact attention and
 * DistrAttention (SPEC section 1b), FlashAttention-2 style. Nothing of
 * seq_q x seq_k size is kept: the probabilities are recomputed per block
 * of BKB keys x QB query rows from Q, K and the forward's LSE.
 *
 * One call runs as passes over lib/cpu_backend.c's thread pool:
 *  1. (G > 1) groups: per hash tile, the forward's permutation and fusion
 *     weights (lib/hash.c, bit-identical to the forward's kernels), kept as
 *     each column's group g(c), 1/A_g(c) and a_c;
 *  2. D: per (batch, head), D_i = sum_c dO[i][c] O[i][c] (in double);
 *  3. dK, dV: per (batch, kv head, key block), over the query heads of the
 *     kv head and their query blocks; each item owns its rows of dK, dV;
 *  4. dQ: per (batch, head, query block) over the key blocks it sees; each
 *     item owns its rows of dQ.
 * The projection strategy (SPEC 1c) runs the same passes over the R logit
 * columns Q A_h, K B_h: dQ = s dQ' A_h^T, dK = s sum_h dK'_h B_h^T.
 * Passes 3 and 4 both recompute P and dS (no atomics, no per-thread
 * copies of dQ): 7 block products per block pair against the forward's 2,
 * each register-blocked (BW(gemm) in lib/cpu_bwd_tmpl.h).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cpu_bwd.h"

#define BKB 64    /* keys per block */
#define BQB 64    /* query rows per block at most (divides hash_block: a power of two >= 16) */
#define CACHE_ALIGN 64

typedef struct bwd_job {
  const da_plan *p;
  const da_bwd_call *c;
  da_dtype t;
  size_t es;             /* element size */
  int B, H, KH, hpk, Sq, Sk, d, G, ng;
  int dp;                /* head_dim padded to 16 (an AVX-512 vector) */
  int np;                /* logit columns (head_dim, or ng) padded to 16 */
  int QB, nqb, nkb, hb, nt;
  long off;              /* seq_k - seq_q */
  int wl, wr;            /* window (-1: unbounded); causal: wr = 0 */
  float qmul;            /* scale * log2(e), as the forward (da_log2_mul) */
  float sc;              /* the scale the softmax used: qmul / log2(e) */
  long long qst[3], kst[3], vst[3], ost[3];
  int *gidx;             /* G > 1: [B][H][nt][d]: the group of column c */
  float *qco, *kco;      /* G > 1: 1 / A_g(c) and a_c, same layout */
  float *Dv;             /* [B][H][Sq] */
  float *const *scratch;
  int R;                 /* DA_STRATEGY_PROJECTION: the rank (ng = R), else 0 */
  const float *pj;       /* its [H][2][d][R] projections (SPEC 1c) */
  /* the projections' products, of the ISA the items run (BW(proj_fwd) and
   * BW(proj_bwd) in lib/cpu_bwd_tmpl.h: hardware FMA, independent sums) */
  void (*proj_fwd)(const float *x, size_t xs, int n, const float *M, int d, int R, float *out,
                   size_t os, size_t ogs);
  void (*proj_bwd)(const float *a, int n, size_t as, const float *M, int d, int R, float s,
                   int add, float *out, size_t os);
  size_t o_kx, o_kft, o_kf, o_vt, o_qs, o_do, o_s, o_dp, o_acc, o_dva, o_dkf, o_row, o_lse,
      o_dd, scratch_floats;
} bwd_job;

static inline size_t rup(size_t x, size_t m) { return (x + m - 1) / m * m; }

/* The keys row i sees: [bwd_jlo, bwd_jhi] (empty when lo > hi). */
static inline long bwd_jlo(const bwd_job *J, long i) {
  if (J->wl < 0) return 0;
  long v = i + J->off - J->wl;
  return v < 0 ? 0 : v;
}
static inline long bwd_jhi(const bwd_job *J, long i) {
  long hi = (long)J->Sk - 1;
  if (J->wr < 0) return hi;
  long v = i + J->off + J->wr;
  return v < hi ? v : hi;
}

static inline size_t at(const long long st[3], size_t off, int b, int h, long r) {
  return off + (size_t)((long long)b * st[0] + (long long)h * st[1] + (long long)r * st[2]);
}

static void load_row(const void *base, da_dtype t, size_t idx, int n, float *dst) {
  switch (t) {
  case DA_F16: {
    const uint16_t *s = (const uint16_t *)base + idx;
    for (int i = 0; i < n; i++) dst[i] = da_half_to_float(s[i]);
    break;
  }
  case DA_BF16: {
    const uint16_t *s = (const uint16_t *)base + idx;
    for (int i = 0; i < n; i++) dst[i] = da_bf16_to_float(s[i]);
    break;
  }
  default: memcpy(dst, (const float *)base + idx, (size_t)n * sizeof(float)); break;
  }
}

static void store_row(void *base, da_dtype t, size_t idx, int n, const float *src) {
  switch (t) {
  case DA_F16: {
    uint16_t *s = (uint16_t *)base + idx;
    for (int i = 0; i < n; i++) s[i] = da_float_to_half(src[i]);
    break;
  }
  case DA_BF16: {
    uint16_t *s = (uint16_t *)base + idx;
    for (int i = 0; i < n; i++) s[i] = da_float_to_bf16(src[i]);
    break;
  }
  default: memcpy((float *)base + idx, src, (size_t)n * sizeof(float)); break;
  }
}

/* K block rows kx [BKB][dp] and V^T vt [dp][BKB], zero past nk keys and
 * head_dim columns. */
static void bwd_load_kv(const bwd_job *J, int b, int kh, long j0, int nk, float *kx, float *vt,
                        float *row) {
  const int dp = J->dp, d = J->d;
  memset(kx, 0, (size_t)BKB * dp * sizeof(float));
  memset(vt, 0, (size_t)dp * BKB * sizeof(float));
  for (int j = 0; j < nk; j++) {
    load_row(J->c->k, J->t, at(J->kst, J->c->k_off, b, kh, j0 + j), d, kx + (size_t)j * dp);
    load_row(J->c->v, J->t, at(J->vst, J->c->v_off, b, kh, j0 + j), d, row);
    for (int c = 0; c < d; c++) vt[(size_t)c * BKB + j] = row[c];
  }
}

/* The logit columns of a K block: kft [np][BKB] (and, when kf is given,
 * kf [BKB][np]): K^T itself for G = 1, else Kf[j][g] = sum_{c in g} a_c K[j][c]. */
static void bwd_fuse_k(const bwd_job *J, const float *kx, const int *gi, const float *kco,
                       float *kft, float *kf) {
  const int dp = J->dp, np = J->np, d = J->d;
  memset(kft, 0, (size_t)np * BKB * sizeof(float));
  if (kf) memset(kf, 0, (size_t)BKB * np * sizeof(float));
  for (int j = 0; j < BKB; j++) {
    const float *k = kx + (size_t)j * dp;
    if (!gi) {
      for (int c = 0; c < d; c++) kft[(size_t)c * BKB + j] = k[c];
      continue;
    }
    for (int c = 0; c < d; c++) {
      float x = kco[c] * k[c];
      kft[(size_t)gi[c] * BKB + j] += x;
      if (kf) kf[(size_t)j * np + gi[c]] += x;
    }
  }
}

/* The projection strategy (SPEC 1c): the logit columns of a K block for
 * query head h, K B_h: kft [np][BKB] (and kf [BKB][np] when given). */
static void bwd_proj_k(const bwd_job *J, int h, const float *kx, float *kft, float *kf) {
  const int dp = J->dp, np = J->np, d = J->d, R = J->R;
  const float *Bm = J->pj + ((size_t)h * 2 + 1) * (size_t)d * R;
  memset(kft, 0, (size_t)np * BKB * sizeof(float));
  J->proj_fwd(kx, (size_t)dp, BKB, Bm, d, R, kft, 1, BKB);
  if (kf) {
    memset(kf, 0, (size_t)BKB * np * sizeof(float));
    for (int j = 0; j < BKB; j++)
      for (int g = 0; g < R; g++) kf[(size_t)j * np + g] = kft[(size_t)g * BKB + j];
  }
}

/* Rows i0.. of a query block: qs [QB][np] (Q, or Qs[r][g] = sum_{c in g}
 * Q[r][c] / A_g), dob [QB][dp], lse2 = LSE log2(e) (-inf past nr), Dr. */
static void bwd_load_rows(const bwd_job *J, int b, int h, long i0, int nr, const int *gi,
                          const float *qco, float *qs, float *dob, float *lse2, float *Dr,
                          float *row) {
  const int dp = J->dp, np = J->np, d = J->d;
  const size_t bh = (size_t)b * J->H + (size_t)h;
  const float *lse = (const float *)J->c->lse + J->c->lse_off + bh * (size_t)J->Sq;
  memset(qs, 0, (size_t)J->QB * np * sizeof(float));
  memset(dob, 0, (size_t)J->QB * dp * sizeof(float));
  for (int r = 0; r < J->QB; r++) {
    if (r >= nr) {
      lse2[r] = -INFINITY;
      Dr[r] = 0.0f;
      continue;
    }
    const long i = i0 + r;
    float *q = qs + (size_t)r * np;
    if (J->R) { /* Q A_h */
      const float *A = J->pj + (size_t)h * 2 * (size_t)d * J->R;
      load_row(J->c->q, J->t, at(J->qst, J->c->q_off, b, h, i), d, row);
      J->proj_fwd(row, 0, 1, A, d, J->R, q, 0, 1);
    } else if (!gi) {
      load_row(J->c->q, J->t, at(J->qst, J->c->q_off, b, h, i), d, q);
    } else {
      load_row(J->c->q, J->t, at(J->qst, J->c->q_off, b, h, i), d, row);
      for (int c = 0; c < d; c++) q[gi[c]] += row[c] * qco[c];
    }
    load_row(J->c->dout, J->t, at(J->ost, J->c->dout_off, b, h, i), d, dob + (size_t)r * dp);
    lse2[r] = (float)((double)lse[i] * DA_LOG2E);
    Dr[r] = J->Dv[bh * (size_t)J->Sq + (size_t)i];
  }
}

static void bwd_store_kv(const bwd_job *J, int b, int kh, long j0, int nk, const float *dka,
                         const float *dva, float *row) {
  const int dp = J->dp, d = J->d;
  for (int j = 0; j < nk; j++) {
    const float *a = dka + (size_t)j * dp;
    for (int c = 0; c < d; c++) row[c] = J->sc * a[c];
    store_row(J->c->dk, J->t, at(J->kst, J->c->dk_off, b, kh, j0 + j), d, row);
    store_row(J->c->dv, J->t, at(J->vst, J->c->dv_off, b, kh, j0 + j), d, dva + (size_t)j * dp);
  }
}

static void bwd_store_q(const bwd_job *J, int b, int h, long i0, int nr, const int *gi,
                        const float *qco, const float *dqs, float *row) {
  const int np = J->np, d = J->d;
  for (int r = 0; r < nr; r++) {
    const float *a = dqs + (size_t)r * np;
    if (J->R) { /* dQ = s dQ' A_h^T */
      const float *A = J->pj + (size_t)h * 2 * (size_t)d * J->R;
      J->proj_bwd(a, 1, 0, A, d, J->R, J->sc, 0, row, 0);
    } else if (!gi)
      for (int c = 0; c < d; c++) row[c] = J->sc * a[c];
    else
      for (int c = 0; c < d; c++) row[c] = J->sc * (a[gi[c]] * qco[c]);
    store_row(J->c->dq, J->t, at(J->qst, J->c->dq_off, b, h, i0 + r), d, row);
  }
}

/* ---- the compute items: portable, and on x86 AVX2+FMA and AVX-512 ---- */

#define BW(x) x##_generic
#define BWL 4
#define BWNV 8
#define BWRO 1
#include "cpu_bwd_tmpl.h"
#undef BW
#undef BWL
#undef BWNV
#undef BWRO

#ifdef DA_CPU_X86
#  if defined(__clang__)
#    pragma clang attribute push(__attribute__((target("avx2,fma"))), apply_to = function)
#  else
#    pragma GCC push_options
#    pragma GCC target("avx2,fma")
#  endif
#  define BW(x) x##_avx2
#  define BWL 8
#  define BWNV 8
#  define BWRO 1
#  include "cpu_bwd_tmpl.h"
#  undef BW
#  undef BWL
#  undef BWNV
#  undef BWRO
#  if defined(__clang__)
#    pragma clang attribute pop
#    pragma clang attribute push(__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma"))), \
                                 apply_to = function)
#  else
#    pragma GCC pop_options
#    pragma GCC push_options
#    pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,fma")
#  endif
#  define BW(x) x##_avx512
#  define BWL 16
#  define BWNV 4
#  define BWRO 4
#  include "cpu_bwd_tmpl.h"
#  undef BW
#  undef BWL
#  undef BWNV
#  undef BWRO
#  if defined(__clang__)
#    pragma clang attribute pop
#  else
#    pragma GCC pop_options
#  endif
#endif

/* ---- passes 1 and 2 ---- */

/* item = (b*H + h)*nt + tile: the forward's grouping of the tile. */
static void groups_item(void *arg, int tid, long item) {
  const bwd_job *J = arg;
  const da_plan *p = J->p;
  const da_attn_desc *d = &p->d;
  const int hd = J->d, G = J->G;
  const long bh = item / J->nt;
  const int tile = (int)(item % J->nt), b = (int)(bh / J->H), h = (int)(bh % J->H);
  const long r0 = (long)tile * J->hb;
  const int rows = J->Sq - r0 < J->hb ? (int)(J->Sq - r0) : J->hb;
  const char *qt = (const char *)J->c->q + at(J->qst, J->c->q_off, b, h, r0) * J->es;
  uint32_t codes[256];
  int perm[256];
  float a[256];
  da_hash_tile(qt, J->t, (size_t)J->qst[2], rows, hd, p->proj, d->hash_bits, d->hash_block,
               codes);
  da_group_tile(codes, hd, perm);
  da_fusion_weights(qt, J->t, (size_t)J->qst[2], rows, hd, perm, G, d->fusion, a);
  const size_t go = (size_t)item * (size_t)hd;
  for (int g0 = 0; g0 < hd; g0 += G) {
    const int g1 = g0 + G < hd ? g0 + G : hd;
    float s = 0.0f;
    for (int x = g0; x < g1; x++) s += a[perm[x]];
    for (int x = g0; x < g1; x++) {
      const int c = perm[x];
      J->gidx[go + c] = g0 / G;
      J->qco[go + c] = 1.0f / s;
      J->kco[go + c] = a[c];
    }
  }
}

/* item = b*H + h: D_i = sum_c dO[i][c] O[i][c]. */
static void dsum_item(void *arg, int tid, long item) {
  const bwd_job *J = arg;
  const int b = (int)(item / J->H), h = (int)(item % J->H), d = J->d;
  float *x = J->scratch[tid] + J->o_row, *y = x + J->dp;
  for (long i = 0; i < J->Sq; i++) {
    load_row(J->c->dout, J->t, at(J->ost, J->c->dout_off, b, h, i), d, x);
    load_row(J->c->o, J->t, at(J->ost, J->c->o_off, b, h, i), d, y);
    double s = 0.0;
    for (int c = 0; c < d; c++) s += (double)x[c] * (double)y[c];
    J->Dv[(size_t)item * (size_t)J->Sq + (size_t)i] = (float)s;
  }
}

da_status da_cpu_backward(const da_plan *p, const da_bwd_call *c, const cpu_bwd_pool *pool) {
  da_context *ctx = p->ctx;
  const da_attn_desc *d = &p->d;
  bwd_job J;
  memset(&J, 0, sizeof J);
  J.p = p;
  J.c = c;
  J.t = d->dtype;
  J.es = p->elem_size;
  J.B = d->batch, J.H = d->heads, J.KH = d->kv_heads, J.hpk = d->heads / d->kv_heads;
  J.Sq = d->seq_q, J.Sk = d->seq_k, J.d = d->head_dim;
  J.G = d->group_size > 1 ? d->group_size : 1;
  J.ng = J.G == 1 ? J.d : (J.d + J.G - 1) / J.G;
  if (p->x.strategy == DA_STRATEGY_PROJECTION) { /* SPEC 1c: R logit columns */
    J.R = p->x.rank;
    J.pj = p->sproj;
    J.ng = J.R;
  }
  J.dp = (int)rup((size_t)J.d, 16);
  J.np = (int)rup((size_t)J.ng, 16);
  J.hb = d->hash_block;
  J.nt = p->n_tiles;
  J.QB = J.hb < BQB ? J.hb : BQB;
  J.nqb = (int)((J.Sq + J.QB - 1) / J.QB);
  J.nkb = (int)((J.Sk + BKB - 1) / BKB);
  J.off = (long)J.Sk - (long)J.Sq;
  J.wl = p->x.window_left;
  J.wr = p->x.window_right;
  J.qmul = da_log2_mul(d->scale);
  J.sc = (float)((double)J.qmul / DA_LOG2E);
  memcpy(J.qst, p->x.q_stride, sizeof J.qst);
  memcpy(J.kst, p->x.k_stride, sizeof J.kst);
  memcpy(J.vst, p->x.v_stride, sizeof J.vst);
  memcpy(J.ost, p->x.o_stride, sizeof J.ost);
  if (J.G > 1 && J.d > 256)
    return da_set_error(ctx, DA_ERR_UNSUPPORTED,
                        "cpu backend: the backward pass of group_size %d needs head_dim <= 256",
                        J.G);

  /* scratch layout, every region a multiple of 16 floats */
  const size_t dp = (size_t)J.dp, np = (size_t)J.np, QB = (size_t)J.QB;
  size_t o = 0;
#define REGION(field, n) (J.field = o, o += rup((n), 16))
  REGION(o_kx, BKB * dp);
  REGION(o_kft, np * BKB);
  REGION(o_kf, BKB * np);
  REGION(o_vt, dp * BKB);
  REGION(o_qs, QB * np);
  REGION(o_do, QB * dp);
  REGION(o_s, QB * BKB);
  REGION(o_dp, QB * BKB);
  REGION(o_acc, (BKB * dp > QB * np ? BKB * dp : QB * np));
  REGION(o_dva, BKB * dp);
  REGION(o_dkf, BKB * np);
  REGION(o_row, 2 * dp);
  REGION(o_lse, QB);
  REGION(o_dd, QB);
#undef REGION
  J.scratch_floats = o;

  const size_t BH = (size_t)J.B * J.H;
  const long n_groups = J.G > 1 ? (long)(BH * (size_t)J.nt) : 0;
  const long n_kv = (long)J.B * J.KH * J.nkb, n_q = (long)(BH * (size_t)J.nqb);
  long most = n_kv > n_q ? n_kv : n_q;
  if (n_groups > most) most = n_groups;
  if ((long)BH > most) most = (long)BH;
  da_status s = pool->scratch(pool->pool, ctx, J.scratch_floats * sizeof(float), most, &J.scratch);
  if (s != DA_SUCCESS) return s;
  J.Dv = malloc(BH * (size_t)J.Sq * sizeof(float));
  if (J.G > 1) {
    size_t n = BH * (size_t)J.nt * (size_t)J.d;
    J.gidx = malloc(n * sizeof *J.gidx);
    J.qco = malloc(n * sizeof *J.qco);
    J.kco = malloc(n * sizeof *J.kco);
  }
  if (!J.Dv || (J.G > 1 && (!J.gidx || !J.qco || !J.kco))) {
    s = da_set_error(ctx, DA_ERR_HOST_MEMORY,
                     "cpu backend: cannot allocate the backward pass's row sums and groupings");
  } else {
    cpu_item_fn dkv = dkv_item_generic, dq = dq_item_generic;
    J.proj_fwd = proj_fwd_generic, J.proj_bwd = proj_bwd_generic;
#ifdef DA_CPU_X86
    if (pool->vector == 1) {
      dkv = dkv_item_avx2, dq = dq_item_avx2;
      J.proj_fwd = proj_fwd_avx2, J.proj_bwd = proj_bwd_avx2;
    }
    if (pool->vector == 2) {
      dkv = dkv_item_avx512, dq = dq_item_avx512;
      J.proj_fwd = proj_fwd_avx512, J.proj_bwd = proj_bwd_avx512;
    }
#endif
    if (n_groups) pool->run(pool->pool, groups_item, &J, n_groups);
    pool->run(pool->pool, dsum_item, &J, (long)BH);
    pool->run(pool->pool, dkv, &J, n_kv);
    pool->run(pool->pool, dq, &J, n_q);
  }
  free(J.Dv);
  free(J.gidx);
  free(J.qco);
  free(J.kco);
  return s;
}
