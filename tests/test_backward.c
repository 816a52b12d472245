/* SPDX-License-Identifier: Apache-2.0 */
/* da_attention_backward (SPEC section 1b): dQ, dK, dV against a float64
 * reference gradient written here from the definitions (forward in float64,
 * analytic gradient through the fused columns for G > 1 with the forward's
 * groupings as constants), which is itself checked against central finite
 * differences on tiny cases. The library's forward (da_attention_ext with
 * ext.lse) gives O and the LSE; the gradient buffers are poisoned first.
 * Shapes as flash-attn's tests use them: seq_q != seq_k, head_dim 32, 59,
 * 64, 128, causal or not, GQA and MQA, f32/f16/bf16, exact and G = 2, 4
 * under both fusions; windows, a strided (B,S,H,D) layout, and the
 * refusals (per-sequence lengths, overlapping and short buffers). The
 * 'cuda: ...' and 'opencl: ...' tests run the same checks on those
 * backends (device buffers; CUDA's both kernels) and against the cpu
 * backend's backward. DA_TEST_VERBOSE=1 prints every
 * measured error. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

/* ------------------------------------------------------------ reference */

typedef struct {
  int B, H, KVH, Sq, Sk, hd, G, hb, wl, wr;
  double scale;
} rshape;

/* One query row i of either strategy, from its reduced query qr (n
 * entries) and the head's reduced keys Kr ([Sk][n]): the window's limits,
 * the logits scale qr . Kr_j, the softmax into P, and (when oi) the
 * output row O_i = P V. With gi (the row of dO): dP_j = dO_i . V_j, D,
 * dS, dV += P^T dO_i, dqr = scale dS Kr (set) and dKr += scale dS^T qr.
 * V and dV: the head's [Sk][hd]; P and dP: Sk scratch entries. */
static void ref_row(const rshape *s, int i, int n, const double *qr, const double *Kr,
                    const double *V, const double *gi, double *oi, double *P, double *dP,
                    double *dqr, double *dKr, double *dV) {
  const int hd = s->hd, Sk = s->Sk;
  long diag = i + (long)Sk - s->Sq, lo = 0, hi = Sk - 1;
  if (s->wr >= 0 && diag + s->wr < hi) hi = diag + s->wr;
  if (s->wl >= 0 && diag - s->wl > lo) lo = diag - s->wl;
  double mx = -INFINITY, sum = 0;
  for (long j = lo; j <= hi; j++) {
    double acc = 0;
    for (int g = 0; g < n; g++) acc += qr[g] * Kr[(size_t)j * n + g];
    P[j] = s->scale * acc;
    if (P[j] > mx) mx = P[j];
  }
  for (long j = lo; j <= hi; j++) sum += (P[j] = exp(P[j] - mx));
  for (long j = lo; j <= hi; j++) P[j] /= sum;
  if (oi)
    for (int c = 0; c < hd; c++) {
      double acc = 0;
      for (long j = lo; j <= hi; j++) acc += P[j] * V[(size_t)j * hd + c];
      oi[c] = acc;
    }
  if (!gi) return;
  double D = 0;
  for (long j = lo; j <= hi; j++) {
    double acc = 0;
    for (int c = 0; c < hd; c++) acc += gi[c] * V[(size_t)j * hd + c];
    dP[j] = acc;
    D += P[j] * acc;
  }
  for (int g = 0; g < n; g++) dqr[g] = 0;
  for (long j = lo; j <= hi; j++) {
    const double dS = P[j] * (dP[j] - D);
    for (int c = 0; c < hd; c++) dV[(size_t)j * hd + c] += P[j] * gi[c];
    for (int g = 0; g < n; g++) {
      dqr[g] += s->scale * dS * Kr[(size_t)j * n + g];
      dKr[(size_t)j * n + g] += s->scale * dS * qr[g];
    }
  }
}

/* Everything dense [B][H|KVH][S][hd] in double. perm/aw: per (b, h, tile)
 * hd entries (the permutation and the fusion weight of each column), NULL
 * for exact attention. Writes O (when o) and, when dO is given, dQ, dK, dV. */
static void ref_fwd_bwd(const rshape *s, const int *perm, const double *aw, const double *Q,
                        const double *K, const double *V, const double *dO, double *O,
                        double *dQ, double *dK, double *dV) {
  const int hd = s->hd, G = perm ? s->G : 1, ng = (hd + G - 1) / G, Sk = s->Sk;
  const int nt = (s->Sq + s->hb - 1) / s->hb;
  double *Qs = malloc(sizeof(double) * (size_t)ng), *Kf = malloc(sizeof(double) * Sk * ng);
  double *dKf = malloc(sizeof(double) * Sk * ng), *P = malloc(sizeof(double) * Sk);
  double *dP = malloc(sizeof(double) * Sk), *A = malloc(sizeof(double) * ng);
  double *a = malloc(sizeof(double) * hd), *dQs = malloc(sizeof(double) * ng);
  int *gof = malloc(sizeof(int) * hd);
  assert_true(Qs && Kf && dKf && P && dP && A && a && dQs && gof);
  if (dO) {
    memset(dK, 0, sizeof(double) * s->B * s->KVH * Sk * hd);
    memset(dV, 0, sizeof(double) * s->B * s->KVH * Sk * hd);
  }
  for (int b = 0; b < s->B; b++)
    for (int h = 0; h < s->H; h++) {
      const int kh = h / (s->H / s->KVH);
      const size_t qb = ((size_t)b * s->H + h) * s->Sq * hd, kb = ((size_t)b * s->KVH + kh) * Sk * hd;
      for (int t = 0; t < nt; t++) {
        const int r0 = t * s->hb, r1 = r0 + s->hb < s->Sq ? r0 + s->hb : s->Sq;
        /* the grouping: column c in group gof[c], weight a[c]; A_g the sum */
        for (int x = 0; x < hd; x++) {
          size_t o = (((size_t)b * s->H + h) * nt + t) * hd;
          int c = perm ? perm[o + x] : x;
          gof[c] = x / G;
          a[c] = perm ? aw[o + c] : 1.0;
        }
        for (int g = 0; g < ng; g++) A[g] = 0;
        for (int c = 0; c < hd; c++) A[gof[c]] += a[c];
        for (int j = 0; j < Sk; j++) {
          for (int g = 0; g < ng; g++) Kf[(size_t)j * ng + g] = dKf[(size_t)j * ng + g] = 0;
          for (int c = 0; c < hd; c++) Kf[(size_t)j * ng + gof[c]] += a[c] * K[kb + (size_t)j * hd + c];
        }
        for (int i = r0; i < r1; i++) {
          const double *qi = Q + qb + (size_t)i * hd;
          for (int g = 0; g < ng; g++) Qs[g] = 0;
          for (int c = 0; c < hd; c++) Qs[gof[c]] += qi[c];
          for (int g = 0; g < ng; g++) Qs[g] /= A[g];
          ref_row(s, i, ng, Qs, Kf, V + kb, dO ? dO + qb + (size_t)i * hd : NULL,
                  O ? O + qb + (size_t)i * hd : NULL, P, dP, dQs, dKf, dO ? dV + kb : NULL);
          if (!dO) continue;
          for (int c = 0; c < hd; c++) dQ[qb + (size_t)i * hd + c] = dQs[gof[c]] / A[gof[c]];
        }
        if (dO)
          for (int j = 0; j < Sk; j++)
            for (int c = 0; c < hd; c++)
              dK[kb + (size_t)j * hd + c] += a[c] * dKf[(size_t)j * ng + gof[c]];
      }
    }
  free(Qs), free(Kf), free(dKf), free(P), free(dP), free(A), free(a), free(dQs), free(gof);
}

/* The projection strategy (SPEC 1c), from its definition, in double:
 * per (b, h), Q' = Q A_h and K' = K_g(h) B_h ([S][rank]), logits
 * scale Q'_i . K'_j under the mask, exact softmax, O = P V; with dO,
 * dV += P^T dO, dS = P o (dP - D), dQ' = scale dS K', dQ = dQ' A_h^T,
 * dK' = scale dS^T Q', dK_g += dK' B_h^T. proj: [H][2][hd][rank] (A_h then
 * B_h). s->G and s->hb are not used. */
static void ref_proj_fwd_bwd(const rshape *s, int rank, const float *proj, const double *Q,
                             const double *K, const double *V, const double *dO, double *O,
                             double *dQ, double *dK, double *dV) {
  const int hd = s->hd, Sk = s->Sk, R = rank;
  double *Qp = malloc(sizeof(double) * R), *Kp = malloc(sizeof(double) * Sk * R);
  double *dKp = malloc(sizeof(double) * Sk * R), *dQp = malloc(sizeof(double) * R);
  double *P = malloc(sizeof(double) * Sk), *dP = malloc(sizeof(double) * Sk);
  assert_true(Qp && Kp && dKp && dQp && P && dP);
  if (dO) {
    memset(dK, 0, sizeof(double) * s->B * s->KVH * Sk * hd);
    memset(dV, 0, sizeof(double) * s->B * s->KVH * Sk * hd);
  }
  for (int b = 0; b < s->B; b++)
    for (int h = 0; h < s->H; h++) {
      const int kh = h / (s->H / s->KVH);
      const size_t qb = ((size_t)b * s->H + h) * s->Sq * hd, kb = ((size_t)b * s->KVH + kh) * Sk * hd;
      const float *A = proj + (size_t)h * 2 * hd * R, *Bm = A + (size_t)hd * R;
      for (int j = 0; j < Sk; j++)
        for (int g = 0; g < R; g++) {
          double acc = 0;
          for (int c = 0; c < hd; c++) acc += K[kb + (size_t)j * hd + c] * Bm[(size_t)c * R + g];
          Kp[(size_t)j * R + g] = acc;
          dKp[(size_t)j * R + g] = 0;
        }
      for (int i = 0; i < s->Sq; i++) {
        const double *qi = Q + qb + (size_t)i * hd;
        for (int g = 0; g < R; g++) {
          double acc = 0;
          for (int c = 0; c < hd; c++) acc += qi[c] * A[(size_t)c * R + g];
          Qp[g] = acc;
        }
        ref_row(s, i, R, Qp, Kp, V + kb, dO ? dO + qb + (size_t)i * hd : NULL,
                O ? O + qb + (size_t)i * hd : NULL, P, dP, dQp, dKp, dO ? dV + kb : NULL);
        if (!dO) continue;
        for (int c = 0; c < hd; c++) {
          double acc = 0;
          for (int g = 0; g < R; g++) acc += dQp[g] * A[(size_t)c * R + g];
          dQ[qb + (size_t)i * hd + c] = acc;
        }
      }
      if (dO)
        for (int j = 0; j < Sk; j++)
          for (int c = 0; c < hd; c++) {
            double acc = 0;
            for (int g = 0; g < R; g++) acc += dKp[(size_t)j * R + g] * Bm[(size_t)c * R + g];
            dK[kb + (size_t)j * hd + c] += acc;
          }
    }
  free(Qp), free(Kp), free(dKp), free(dQp), free(P), free(dP);
}

static double *dvec(size_t n) {
  double *x = calloc(n ? n : 1, sizeof(double));
  assert_non_null(x);
  return x;
}

/* The reference's gradient against central differences of
 * L = sum(dO o O) on a tiny case, every element of Q, K and V; rank > 0:
 * the projection strategy's reference (random A_h, B_h of that rank). */
static void fd_check_r(int G, int causal, int wl, int rank) {
  rshape s = {1, 4, 2, 5, 7, 6, G, 16, wl, causal ? 0 : -1, 0.45};
  const size_t nq = (size_t)s.B * s.H * s.Sq * s.hd, nk = (size_t)s.B * s.KVH * s.Sk * s.hd;
  tu_rng r;
  tu_rng_init(&r, tu_seed() ^ 0xfd);
  double *Q = dvec(nq), *K = dvec(nk), *V = dvec(nk), *dO = dvec(nq), *O = dvec(nq);
  double *dQ = dvec(nq), *dK = dvec(nk), *dV = dvec(nk);
  for (size_t i = 0; i < nq; i++) Q[i] = tu_normal(&r), dO[i] = tu_normal(&r);
  for (size_t i = 0; i < nk; i++) K[i] = tu_normal(&r), V[i] = tu_normal(&r);
  int perm[4 * 6];
  double aw[4 * 6];
  for (int h = 0; h < 4; h++) /* a fixed shuffled grouping and positive weights */
    for (int x = 0; x < 6; x++) {
      perm[h * 6 + x] = (x * 5 + h) % 6;
      aw[h * 6 + x] = 0.5 + tu_uniform(&r);
    }
  const int *pp = G > 1 ? perm : NULL;
  float proj[4 * 2 * 6 * 6];
  for (int i = 0; i < 4 * 2 * 6 * 6; i++) proj[i] = (float)(0.6 * tu_normal(&r));
#define REF(dO_, dQ_, dK_, dV_)                                                                    \
  (rank ? ref_proj_fwd_bwd(&s, rank, proj, Q, K, V, dO_, O, dQ_, dK_, dV_)                        \
        : ref_fwd_bwd(&s, pp, aw, Q, K, V, dO_, O, dQ_, dK_, dV_))
  REF(dO, dQ, dK, dV);
  double *arrs[3] = {Q, K, V}, *grads[3] = {dQ, dK, dV};
  size_t ns[3] = {nq, nk, nk};
  for (int t = 0; t < 3; t++) {
    double worst = 0, gmax = 0;
    for (size_t i = 0; i < ns[t]; i++) {
      const double h = 1e-5, x0 = arrs[t][i];
      double L[2];
      for (int sgn = 0; sgn < 2; sgn++) {
        arrs[t][i] = x0 + (sgn ? -h : h);
        REF(NULL, NULL, NULL, NULL);
        L[sgn] = 0;
        for (size_t e = 0; e < nq; e++) L[sgn] += dO[e] * O[e];
      }
      arrs[t][i] = x0;
      double fd = (L[0] - L[1]) / (2 * h);
      if (fabs(fd - grads[t][i]) > worst) worst = fabs(fd - grads[t][i]);
      if (fabs(grads[t][i]) > gmax) gmax = fabs(grads[t][i]);
    }
    if (getenv("DA_TEST_VERBOSE"))
      fprintf(stderr, "  fd G=%d causal=%d wl=%d rank=%d d%c: max |fd - analytic| = %.3g (max |grad| %.3g)\n",
              G, causal, wl, rank, "QKV"[t], worst, gmax);
    assert_true(gmax > 0.01);
    if (!(worst <= 1e-7 * (1 + gmax)))
      fail_msg("reference gradient d%c disagrees with finite differences: %g (G=%d causal=%d "
               "rank=%d)", "QKV"[t], worst, G, causal, rank);
  }
#undef REF
  free(Q), free(K), free(V), free(dO), free(O), free(dQ), free(dK), free(dV);
}
static void fd_check(int G, int causal, int wl) { fd_check_r(G, causal, wl, 0); }

static void test_reference_fd(void **st) {
  (void)st;
  fd_check(1, 0, -1);
  fd_check(1, 1, -1);
  fd_check(2, 0, -1);
  fd_check(4, 1, -1);
  fd_check(2, 1, 2);
  fd_check_r(1, 0, -1, 1); /* the projection strategy: rank 1, 4, head_dim */
  fd_check_r(1, 1, -1, 4);
  fd_check_r(1, 1, 2, 6);
}

/* ------------------------------------------------------------ library */

typedef struct {
  int B, H, KVH, Sq, Sk, hd;
  int causal;
  da_dtype t;
  int G;
  da_fusion f;
  int hb;            /* 0: default */
  int wl, wr;        /* window (0, 0 here means none: set both -1 for none) */
  int bshd;          /* 1: (B,S,H,D) strides for every tensor */
  da_backend be;     /* 0 (DA_BACKEND_AUTO here): the cpu backend */
  int rank;          /* > 0: the projection strategy (SPEC 1c) of this rank, G 1 */
} bcase;

typedef struct {
  double err[3];     /* dq, dk, dv relative errors against the reference */
} bresult;

static da_context *cpu_ctx(void) {
  da_context *ctx = NULL;
  TU_CHECK(NULL, da_context_create(&ctx, DA_BACKEND_CPU, 0));
  return ctx;
}

static da_buffer *wrap(da_context *ctx, void *p, size_t bytes) {
  da_buffer *b = NULL;
  TU_CHECK(ctx, da_buffer_wrap(ctx, p, bytes, &b));
  return b;
}

static da_context *be_ctx(da_backend be) {
  if (be == DA_BACKEND_AUTO || be == DA_BACKEND_CPU) return cpu_ctx();
  da_context *ctx = NULL;
  TU_CHECK(NULL, da_context_create(&ctx, be, -1));
  return ctx;
}

/* The host array p as a buffer of ctx: wrapped on the cpu backend, else a
 * device buffer holding a copy (read back with buf_back). */
static da_buffer *mkbuf(da_context *ctx, void *p, size_t bytes) {
  if (da_context_backend(ctx) == DA_BACKEND_CPU) return wrap(ctx, p, bytes);
  da_buffer *b = NULL;
  TU_CHECK(ctx, da_buffer_create(ctx, bytes, &b));
  TU_CHECK(ctx, da_buffer_write(b, 0, p, bytes));
  return b;
}
static void buf_back(da_context *ctx, da_buffer *b, void *p, size_t bytes) {
  if (da_context_backend(ctx) != DA_BACKEND_CPU) TU_CHECK(ctx, da_buffer_read(b, 0, p, bytes));
}

/* Strides of a (B,S,H,D) tensor with nh heads and S rows. */
static void bshd(long long st[3], int nh, int S, int hd) {
  st[2] = (long long)nh * hd;
  st[1] = hd;
  st[0] = (long long)S * nh * hd;
  (void)S;
}

/* Element (b, h, r, c) of a tensor in the case's layout, as a dense index. */
static size_t lidx(const bcase *k, int nh, int S, int b, int h, int r, int c) {
  if (k->bshd) return (((size_t)b * S + r) * nh + h) * k->hd + c;
  return (((size_t)b * nh + h) * S + r) * k->hd + c;
}

/* The descriptor of case k (seed: the hashing's) and what both runners'
 * extensions hold: the LSE and the case's window. */
static void case_desc(const bcase *k, uint64_t seed, da_attn_desc *d, da_attn_ext *x) {
  da_attn_desc_init(d);
  d->batch = k->B, d->heads = k->H, d->kv_heads = k->KVH, d->seq_q = k->Sq, d->seq_k = k->Sk;
  d->head_dim = k->hd, d->dtype = k->t, d->causal = k->causal, d->group_size = k->G;
  d->fusion = k->f, d->seed = seed;
  if (k->hb) d->hash_block = k->hb;
  da_attn_ext_init(x);
  x->lse = 1;
  x->window_left = k->wl, x->window_right = k->wr;
}

/* Runs forward (LSE) and backward of case k on fresh inputs; fills the
 * errors; the raw gradients go to out[3] when given (dtype arrays, malloc). */
static void run_case(const bcase *k, bresult *res, void **out, uint64_t seed) {
  da_context *ctx = be_ctx(k->be);
  da_attn_desc d;
  da_attn_ext x;
  case_desc(k, seed, &d, &x);
  if (k->bshd) {
    bshd(x.q_stride, k->H, k->Sq, k->hd);
    bshd(x.o_stride, k->H, k->Sq, k->hd);
    bshd(x.k_stride, k->KVH, k->Sk, k->hd);
    bshd(x.v_stride, k->KVH, k->Sk, k->hd);
  }
  float *proj = NULL;
  if (k->rank) { /* random A_h, B_h: N(0, 1.5^2 / hd), so logits of order 1..4 */
    const size_t np = (size_t)k->H * 2 * k->hd * k->rank;
    proj = malloc(np * sizeof *proj);
    assert_non_null(proj);
    tu_rng rp;
    tu_rng_init(&rp, seed ^ 0x9e3779b97f4a7c15ull);
    for (size_t i = 0; i < np; i++) proj[i] = (float)(1.5 * tu_normal(&rp) / sqrt((double)k->hd));
    x.strategy = DA_STRATEGY_PROJECTION, x.rank = k->rank, x.proj = proj;
  }
  da_plan *p = NULL;
  TU_CHECK(ctx, da_plan_create_ext(ctx, &d, &x, &p));
  TU_CHECK(ctx, da_plan_get_desc(p, &d));
  const size_t es = da_dtype_size(k->t);
  const size_t nq = (size_t)k->B * k->H * k->Sq * k->hd, nk = (size_t)k->B * k->KVH * k->Sk * k->hd;
  const size_t nl = (size_t)k->B * k->H * k->Sq;
  void *q = malloc(nq * es), *kk = malloc(nk * es), *v = malloc(nk * es), *o = malloc(nq * es);
  void *dout = malloc(nq * es), *dq = malloc(nq * es), *dk = malloc(nk * es), *dv = malloc(nk * es);
  float *lse = malloc(nl * sizeof(float));
  assert_true(q && kk && v && o && dout && dq && dk && dv && lse);
  tu_rng r;
  tu_rng_init(&r, seed);
  /* the same logical tensors in either layout: filled dense, then placed */
  void *tmp = malloc((nq > nk ? nq : nk) * es);
  assert_non_null(tmp);
  void *const dst[4] = {q, kk, v, dout};
  for (int x = 0; x < 4; x++) {
    const int qo = x == 0 || x == 3, nh = qo ? k->H : k->KVH, S = qo ? k->Sq : k->Sk;
    tu_fill(tmp, k->t, qo ? nq : nk, &r, 1.0);
    for (int b = 0; b < k->B; b++)
      for (int h = 0; h < nh; h++)
        for (int i = 0; i < S; i++)
          memcpy((char *)dst[x] + lidx(k, nh, S, b, h, i, 0) * es,
                 (char *)tmp + ((((size_t)b * nh + h) * S + i) * k->hd) * es, k->hd * es);
  }
  free(tmp);
  tu_poison(o, nq * es);
  tu_poison(dq, nq * es);
  tu_poison(dk, nk * es);
  tu_poison(dv, nk * es);
  tu_poison(lse, nl * sizeof(float));
  da_buffer *bq = mkbuf(ctx, q, nq * es), *bk = mkbuf(ctx, kk, nk * es), *bv = mkbuf(ctx, v, nk * es);
  da_buffer *bo = mkbuf(ctx, o, nq * es), *bl = mkbuf(ctx, lse, nl * sizeof(float));
  da_buffer *bdo = mkbuf(ctx, dout, nq * es), *bdq = mkbuf(ctx, dq, nq * es);
  da_buffer *bdk = mkbuf(ctx, dk, nk * es), *bdv = mkbuf(ctx, dv, nk * es);
  da_attn_args fa;
  da_attn_args_init(&fa);
  fa.q = bq, fa.k = bk, fa.v = bv, fa.o = bo, fa.lse = bl;
  const da_status fs = da_attention_ext(p, &fa);
  if (fs != DA_SUCCESS)
    fail_msg("da_attention_ext: %s: %s", da_status_string(fs), da_context_last_error(ctx));
  da_bwd_args ba;
  da_bwd_args_init(&ba);
  ba.dout = bdo, ba.q = bq, ba.k = bk, ba.v = bv, ba.o = bo, ba.lse = bl;
  ba.dq = bdq, ba.dk = bdk, ba.dv = bdv;
  TU_CHECK(ctx, da_attention_backward(p, &ba));
  TU_CHECK(ctx, da_context_synchronize(ctx));
  buf_back(ctx, bdq, dq, nq * es);
  buf_back(ctx, bdk, dk, nk * es);
  buf_back(ctx, bdv, dv, nk * es);
  size_t first;
  if (tu_count_nonfinite(dq, k->t, nq, &first) || tu_count_nonfinite(dk, k->t, nk, &first) ||
      tu_count_nonfinite(dv, k->t, nk, &first))
    fail_msg("a gradient holds a NaN or Inf (poison left, or computed) [seed %llu]",
             (unsigned long long)seed);

  /* the reference, dense, in double */
  rshape s = {k->B, k->H, k->KVH, k->Sq, k->Sk, k->hd, k->G, d.hash_block, k->wl,
              k->causal ? 0 : k->wr, (double)d.scale};
  double *Q = dvec(nq), *K = dvec(nk), *V = dvec(nk), *dO = dvec(nq), *O = dvec(nq);
  double *rdQ = dvec(nq), *rdK = dvec(nk), *rdV = dvec(nk);
  for (int b = 0; b < k->B; b++)
    for (int h = 0; h < k->H; h++)
      for (int i = 0; i < k->Sq; i++)
        for (int c = 0; c < k->hd; c++) {
          size_t dn = (((size_t)b * k->H + h) * k->Sq + i) * k->hd + c;
          size_t li = lidx(k, k->H, k->Sq, b, h, i, c);
          Q[dn] = da_load_elem(q, k->t, li);
          dO[dn] = da_load_elem(dout, k->t, li);
        }
  for (int b = 0; b < k->B; b++)
    for (int h = 0; h < k->KVH; h++)
      for (int j = 0; j < k->Sk; j++)
        for (int c = 0; c < k->hd; c++) {
          size_t dn = (((size_t)b * k->KVH + h) * k->Sk + j) * k->hd + c;
          size_t li = lidx(k, k->KVH, k->Sk, b, h, j, c);
          K[dn] = da_load_elem(kk, k->t, li);
          V[dn] = da_load_elem(v, k->t, li);
        }
  int *perm = NULL;
  double *aw = NULL;
  if (k->G > 1) {
    /* the forward's permutations (da_plan_groups_host: the CPU kernels),
     * the weights from their definition (SPEC 1 step 6), in double */
    da_attn_desc dd = d;
    da_plan *pd = NULL;
    dd.dtype = k->t;
    TU_CHECK(ctx, da_plan_create(ctx, &dd, &pd));
    const int nt = (k->Sq + d.hash_block - 1) / d.hash_block;
    const size_t np = (size_t)k->B * k->H * nt * k->hd;
    perm = malloc(np * sizeof(int));
    aw = dvec(np);
    void *qd = malloc(nq * es); /* Q dense for the groups call */
    assert_true(perm && qd);
    for (int b = 0; b < k->B; b++)
      for (int h = 0; h < k->H; h++)
        for (int i = 0; i < k->Sq; i++)
          memcpy((char *)qd + ((((size_t)b * k->H + h) * k->Sq + i) * k->hd) * es,
                 (char *)q + lidx(k, k->H, k->Sq, b, h, i, 0) * es, k->hd * es);
    TU_CHECK(ctx, da_plan_groups_host(pd, qd, perm));
    for (int b = 0; b < k->B; b++)
      for (int h = 0; h < k->H; h++)
        for (int t = 0; t < nt; t++) {
          size_t o0 = (((size_t)b * k->H + h) * nt + t) * k->hd;
          int r0 = t * d.hash_block, r1 = r0 + d.hash_block < k->Sq ? r0 + d.hash_block : k->Sq;
          for (int c = 0; c < k->hd; c++) {
            double ss = 0;
            for (int i = r0; i < r1; i++) {
              double e = Q[(((size_t)b * k->H + h) * k->Sq + i) * k->hd + c];
              ss += e * e;
            }
            aw[o0 + c] = k->f == DA_FUSE_NORM ? sqrt(ss) : 1.0;
          }
        }
    free(qd);
    da_plan_destroy(pd);
  }
  if (k->rank)
    ref_proj_fwd_bwd(&s, k->rank, proj, Q, K, V, dO, O, rdQ, rdK, rdV);
  else
    ref_fwd_bwd(&s, perm, aw, Q, K, V, dO, O, rdQ, rdK, rdV);
  /* the library's gradients, dense */
  void *gd[3] = {malloc(nq * es), malloc(nk * es), malloc(nk * es)};
  for (int b = 0; b < k->B; b++)
    for (int h = 0; h < k->H; h++)
      for (int i = 0; i < k->Sq; i++)
        memcpy((char *)gd[0] + ((((size_t)b * k->H + h) * k->Sq + i) * k->hd) * es,
               (char *)dq + lidx(k, k->H, k->Sq, b, h, i, 0) * es, k->hd * es);
  for (int b = 0; b < k->B; b++)
    for (int h = 0; h < k->KVH; h++)
      for (int j = 0; j < k->Sk; j++) {
        size_t dn = ((((size_t)b * k->KVH + h) * k->Sk + j) * k->hd) * es;
        size_t li = lidx(k, k->KVH, k->Sk, b, h, j, 0) * es;
        memcpy((char *)gd[1] + dn, (char *)dk + li, k->hd * es);
        memcpy((char *)gd[2] + dn, (char *)dv + li, k->hd * es);
      }
  res->err[0] = tu_rel_err(gd[0], k->t, rdQ, nq);
  res->err[1] = tu_rel_err(gd[1], k->t, rdK, nk);
  res->err[2] = tu_rel_err(gd[2], k->t, rdV, nk);
  if (out)
    for (int i = 0; i < 3; i++) out[i] = gd[i];
  else
    for (int i = 0; i < 3; i++) free(gd[i]);
  free(perm), free(aw), free(proj);
  free(Q), free(K), free(V), free(dO), free(O), free(rdQ), free(rdK), free(rdV);
  da_buffer *all[] = {bq, bk, bv, bo, bl, bdo, bdq, bdk, bdv};
  for (size_t i = 0; i < sizeof all / sizeof *all; i++) da_buffer_destroy(all[i]);
  free(q), free(kk), free(v), free(o), free(dout), free(dq), free(dk), free(dv), free(lse);
  da_plan_destroy(p);
  da_context_destroy(ctx);
}

/* Relative-error bounds on each gradient (SPEC section 2). Measured with
 * DA_TEST_VERBOSE=1, the largest over three runs of these cases: f32
 * 5.6e-7 (the bound is 35x that), f16 2.7e-4, bf16 2.1e-3 (bounds about
 * 15x those). */
static double bwd_bound(da_dtype t) {
  return t == DA_F32 ? 2e-5 : t == DA_F16 ? 4e-3 : 3e-2;
}

static const char *be_prefix(da_backend be) {
  return be == DA_BACKEND_CUDA ? "cuda " : be == DA_BACKEND_OPENCL ? "opencl " : "";
}

static void check_case(const bcase *k) {
  uint64_t seed = tu_seed() ^ (uint64_t)(k->Sq * 131 + k->Sk * 7 + k->hd + k->G * 1000 +
                                         k->rank * 100003);
  bresult res;
  run_case(k, &res, NULL, seed);
  const double bound = bwd_bound(k->t);
  for (int i = 0; i < 3; i++) {
    if (getenv("DA_TEST_VERBOSE"))
      fprintf(stderr,
              "  %s%s B%d H%d/%d %dx%d d%d causal %d G%d %s hb %d win %d/%d%s rank %d: d%c err %.3g (bound %.3g)\n",
              be_prefix(k->be), tu_dtype_name(k->t), k->B, k->H, k->KVH, k->Sq, k->Sk, k->hd, k->causal, k->G,
              k->G > 1 ? tu_fusion_name(k->f) : "-", k->hb, k->wl, k->wr, k->bshd ? " bshd" : "",
              k->rank, "QKV"[i], res.err[i], bound);
    if (!(res.err[i] <= bound))
      fail_msg("%s%s B%d H%d/%d %dx%d d%d causal %d G%d rank %d: d%c relative error %g > %g [seed %llu]",
               be_prefix(k->be), tu_dtype_name(k->t), k->B, k->H, k->KVH, k->Sq, k->Sk, k->hd, k->causal, k->G,
               k->rank, "QKV"[i], res.err[i], bound, (unsigned long long)seed);
  }
}

/* The gradients of backend be against the cpu backend's on the same inputs
 * (seed tu_seed() ^ salt ^ the case's index; the cases' own backend is
 * replaced by be), each also against the reference. f32: both within 2e-5
 * of the reference, 1e-5 of each other; f16 and bf16: the dtype's bound
 * (the two round differently). */
static void check_vs_cpu(const bcase *cs, size_t ncs, da_backend be, uint64_t salt) {
  for (size_t i = 0; i < ncs; i++) {
    bcase k = cs[i];
    k.be = be;
    uint64_t seed = tu_seed() ^ salt ^ i;
    void *a[3], *b[3];
    bresult ra, rb;
    run_case(&k, &ra, a, seed);
    k.be = DA_BACKEND_CPU;
    run_case(&k, &rb, b, seed);
    const size_t n[3] = {(size_t)k.B * k.H * k.Sq * k.hd, (size_t)k.B * k.KVH * k.Sk * k.hd,
                         (size_t)k.B * k.KVH * k.Sk * k.hd};
    const double bound = k.t == DA_F32 ? 1e-5 : bwd_bound(k.t);
    const char *what = k.rank ? "projection " : "";
    char rank[32] = "";
    if (k.rank) snprintf(rank, sizeof rank, " (rank %d)", k.rank);
    for (int t = 0; t < 3; t++) {
      const double e = tu_rel_err_arrays(a[t], b[t], k.t, n[t]);
      if (getenv("DA_TEST_VERBOSE"))
        fprintf(stderr, "  %s%svs cpu case %zu%s d%c: %.3g (bound %.3g)\n", be_prefix(be), what, i,
                rank, "QKV"[t], e, bound);
      if (!(ra.err[t] <= bwd_bound(k.t) && rb.err[t] <= bwd_bound(k.t) && e <= bound))
        fail_msg("%scase %zu: d%c %s%g, cpu %g against the reference, %g between them", what, i,
                 "QKV"[t], be_prefix(be), ra.err[t], rb.err[t], e);
      free(a[t]), free(b[t]);
    }
  }
}

#define NOWIN -1, -1

static const bcase exact_cases[] = {
    {2, 4, 2, 100, 130, 64, 0, DA_F32, 1, DA_FUSE_NORM, 0, NOWIN, 0, DA_BACKEND_CPU, 0},
    {1, 3, 1, 77, 77, 59, 1, DA_F32, 1, DA_FUSE_NORM, 0, NOWIN, 0, DA_BACKEND_CPU, 0},   /* MQA, causal */
    {1, 2, 2, 128, 300, 32, 1, DA_F32, 1, DA_FUSE_NORM, 0, NOWIN, 0, DA_BACKEND_CPU, 0},
    {1, 4, 2, 150, 70, 128, 1, DA_F32, 1, DA_FUSE_NORM, 0, NOWIN, 0, DA_BACKEND_CPU, 0}, /* rows with no key */
    {1, 2, 1, 1, 257, 64, 0, DA_F32, 1, DA_FUSE_NORM, 0, NOWIN, 0, DA_BACKEND_CPU, 0},   /* one query row */
    {1, 2, 2, 256, 3, 32, 0, DA_F32, 1, DA_FUSE_NORM, 0, NOWIN, 0, DA_BACKEND_CPU, 0},   /* three keys */
};

static const da_dtype half_types[] = {DA_F16, DA_BF16};

static void test_exact_f32(void **st) {
  (void)st;
  for (size_t i = 0; i < sizeof exact_cases / sizeof *exact_cases; i++) check_case(&exact_cases[i]);
}

static void test_exact_half(void **st) {
  (void)st;
  for (int t = 0; t < 2; t++)
    for (size_t i = 0; i < 4; i++) {
      bcase k = exact_cases[i];
      k.t = half_types[t];
      check_case(&k);
    }
}

static void test_distr(void **st) {
  (void)st;
  static const bcase base[] = {
      {1, 4, 2, 200, 150, 64, 1, DA_F32, 2, DA_FUSE_NORM, 64, NOWIN, 0, DA_BACKEND_CPU, 0},
      {2, 2, 1, 130, 190, 59, 0, DA_F32, 2, DA_FUSE_NORM, 0, NOWIN, 0, DA_BACKEND_CPU, 0},
      {1, 2, 2, 96, 96, 32, 1, DA_F32, 2, DA_FUSE_NORM, 16, NOWIN, 0, DA_BACKEND_CPU, 0},
      {1, 2, 1, 140, 100, 128, 0, DA_F32, 2, DA_FUSE_NORM, 128, NOWIN, 0, DA_BACKEND_CPU, 0},
  };
  static const int gs[] = {2, 4};
  static const da_fusion fs[] = {DA_FUSE_MEAN, DA_FUSE_NORM};
  for (size_t i = 0; i < sizeof base / sizeof *base; i++)
    for (int g = 0; g < 2; g++)
      for (int f = 0; f < 2; f++) {
        bcase k = base[i];
        k.G = gs[g], k.f = fs[f];
        check_case(&k);
      }
  for (int t = 0; t < 2; t++) { /* f16, bf16 */
    bcase k = base[0];
    k.t = half_types[t];
    check_case(&k);
    k = base[1];
    k.t = half_types[t], k.G = 4, k.f = DA_FUSE_MEAN;
    check_case(&k);
  }
}

static void test_window(void **st) {
  (void)st;
  bcase k = {1, 4, 2, 120, 160, 32, 0, DA_F32, 1, DA_FUSE_NORM, 0, 20, 5, 0, DA_BACKEND_CPU, 0};
  check_case(&k);
  k.wr = -1, k.wl = 0; /* only keys up to the diagonal's left, none after */
  check_case(&k);
  k = (bcase){1, 2, 1, 100, 80, 64, 1, DA_F32, 2, DA_FUSE_NORM, 32, 17, -1, 0, DA_BACKEND_CPU, 0};
  check_case(&k);
}

/* The (B,S,H,D) layout gives, bit for bit, what the dense one gives. */
static void test_strided(void **st) {
  (void)st;
  static const bcase cs[] = {
      {2, 4, 2, 70, 90, 48, 1, DA_F32, 1, DA_FUSE_NORM, 0, NOWIN, 0, DA_BACKEND_CPU, 0},
      {2, 4, 2, 70, 90, 48, 0, DA_BF16, 2, DA_FUSE_NORM, 32, NOWIN, 0, DA_BACKEND_CPU, 0},
  };
  for (int i = 0; i < 2; i++) {
    bcase k = cs[i];
    uint64_t seed = tu_seed() ^ 0x5eed;
    void *a[3], *b[3];
    bresult ra, rb;
    run_case(&k, &ra, a, seed);
    k.bshd = 1;
    run_case(&k, &rb, b, seed);
    const size_t es = da_dtype_size(k.t);
    const size_t n[3] = {(size_t)k.B * k.H * k.Sq * k.hd, (size_t)k.B * k.KVH * k.Sk * k.hd,
                         (size_t)k.B * k.KVH * k.Sk * k.hd};
    for (int t = 0; t < 3; t++) {
      assert_true(ra.err[t] <= bwd_bound(k.t) && rb.err[t] <= bwd_bound(k.t));
      if (memcmp(a[t], b[t], n[t] * es) != 0)
        fail_msg("case %d: d%c under (B,S,H,D) strides differs from the dense call (relative %g)",
                 i, "QKV"[t], tu_rel_err_arrays(a[t], b[t], k.t, n[t]));
      free(a[t]), free(b[t]);
    }
  }
}

/* ------------------------------------------------------------ refusals */

static void expect(da_context *ctx, da_status got, da_status want, const char *needle) {
  if (got != want)
    fail_msg("got %s, expected %s (%s)", da_status_string(got), da_status_string(want),
             da_context_last_error(ctx));
  if (needle && !strstr(da_context_last_error(ctx), needle))
    fail_msg("message \"%s\" does not name \"%s\"", da_context_last_error(ctx), needle);
}

/* The refusal tests' buffers for tu_small_desc() d (f32): b[0..n) zeroed
 * (n 9 or 10: dout, q, k, v, o, lse, dq, dk, dv, then one of four Q's), a
 * the backward's arguments on the first nine. */
static void zeroed_args(da_context *ctx, const da_attn_desc *d, da_buffer **b, int n,
                        da_bwd_args *a) {
  const size_t qb = tu_q_elems(d) * 4, kb = tu_kv_elems(d) * 4, lb = 4 * 8 * 4;
  const size_t sizes[10] = {qb, qb, kb, kb, qb, lb, qb, kb, kb, 4 * qb};
  for (int i = 0; i < n; i++) {
    TU_CHECK(ctx, da_buffer_create(ctx, sizes[i], &b[i]));
    float *z = calloc(sizes[i], 1);
    TU_CHECK(ctx, da_buffer_write(b[i], 0, z, sizes[i]));
    free(z);
  }
  da_bwd_args_init(a);
  a->dout = b[0], a->q = b[1], a->k = b[2], a->v = b[3], a->o = b[4], a->lse = b[5];
  a->dq = b[6], a->dk = b[7], a->dv = b[8];
}

/* A projection plan's extension for tu_small_desc() (4 heads, head_dim
 * 16), rank 4, its A_h, B_h in proj. */
#define SMALL_PROJ (4 * 2 * 16 * 4)
static void small_proj_ext(da_attn_ext *e, float proj[SMALL_PROJ]) {
  for (size_t i = 0; i < SMALL_PROJ; i++) proj[i] = (float)(i % 7) * 0.1f;
  da_attn_ext_init(e);
  e->strategy = DA_STRATEGY_PROJECTION, e->rank = 4, e->proj = proj;
}

static void test_refusals(void **st) {
  (void)st;
  da_context *ctx = cpu_ctx();
  da_attn_desc d = tu_small_desc(); /* 1 x 4 heads / 2 kv, 8 x 8, d 16, f32 */
  da_plan *p = NULL;
  TU_CHECK(ctx, da_plan_create(ctx, &d, &p));
  const size_t qb = tu_q_elems(&d) * 4;
  da_buffer *b[10];
  da_bwd_args a;
  zeroed_args(ctx, &d, b, 10, &a);
  assert_int_equal(a.struct_size, sizeof a);
  TU_CHECK(ctx, da_attention_backward(p, &a));
  assert_string_equal(da_context_last_error(ctx), "");

  da_bwd_args x = a;
  x.struct_size = 0;
  expect(ctx, da_attention_backward(p, &x), DA_ERR_INVALID_ARG, "struct_size");
  expect(ctx, da_attention_backward(p, NULL), DA_ERR_INVALID_ARG, "args");
  assert_int_equal(da_attention_backward(NULL, &a), DA_ERR_INVALID_ARG);
  x = a, x.lse = NULL;
  expect(ctx, da_attention_backward(p, &x), DA_ERR_INVALID_ARG, "lse is NULL");
  x = a, x.dv = NULL;
  expect(ctx, da_attention_backward(p, &x), DA_ERR_INVALID_ARG, "dv is NULL");
  x = a, x.dk = b[2]; /* dk = k */
  expect(ctx, da_attention_backward(p, &x), DA_ERR_INVALID_ARG, "dk overlaps k");
  x = a, x.dq = b[1];
  expect(ctx, da_attention_backward(p, &x), DA_ERR_INVALID_ARG, "dq overlaps");
  x = a, x.dv = b[7]; /* dv = dk */
  expect(ctx, da_attention_backward(p, &x), DA_ERR_INVALID_ARG, "overlaps");
  x = a, x.dq = b[9], x.dk = b[9], x.dk_offset = tu_q_elems(&d) - 1; /* one float shared */
  expect(ctx, da_attention_backward(p, &x), DA_ERR_INVALID_ARG, "overlaps");
  x.dk_offset = tu_q_elems(&d); /* adjacent: fine */
  TU_CHECK(ctx, da_attention_backward(p, &x));
  x = a, x.dq = b[9], x.lse = b[9], x.lse_offset = tu_q_elems(&d) - 1;
  expect(ctx, da_attention_backward(p, &x), DA_ERR_INVALID_ARG, "overlaps");
  x = a, x.dout = b[9], x.dout_offset = 0, x.dq = b[9], x.dq_offset = tu_q_elems(&d) / 2;
  expect(ctx, da_attention_backward(p, &x), DA_ERR_INVALID_ARG, "overlaps");
  x = a, x.dk_offset = 1; /* past the end */
  expect(ctx, da_attention_backward(p, &x), DA_ERR_INVALID_ARG, "dk holds");
  x = a, x.lse = b[2]; /* too small for [1][4][8]? kb = 2*8*16*4 bytes: large enough */
  TU_CHECK(ctx, da_attention_backward(p, &x));
  x = a, x.lse_offset = 1;
  expect(ctx, da_attention_backward(p, &x), DA_ERR_INVALID_ARG, "lse holds");

  /* per-sequence lengths: refused by name */
  da_attn_ext e;
  da_attn_ext_init(&e);
  e.seqlens = DA_SEQLENS_KV;
  da_plan *pk = NULL;
  TU_CHECK(ctx, da_plan_create_ext(ctx, &d, &e, &pk));
  expect(ctx, da_attention_backward(pk, &a), DA_ERR_UNSUPPORTED, "seqlens");
  da_plan_destroy(pk);
  /* a row stride of 0 for Q: dq would write one row for all */
  da_attn_ext_init(&e);
  e.q_stride[0] = (long long)d.heads * d.seq_q * d.head_dim, e.q_stride[1] = d.head_dim * d.seq_q;
  e.q_stride[2] = 0;
  TU_CHECK(ctx, da_plan_create_ext(ctx, &d, &e, &pk));
  expect(ctx, da_attention_backward(pk, &a), DA_ERR_INVALID_ARG, "share an address");
  da_plan_destroy(pk);
  /* a buffer of another context */
  da_context *c2 = cpu_ctx();
  da_buffer *o2 = NULL;
  TU_CHECK(c2, da_buffer_create(c2, qb, &o2));
  x = a, x.dq = o2;
  expect(ctx, da_attention_backward(p, &x), DA_ERR_INVALID_ARG, "another context");
  da_buffer_destroy(o2);
  da_context_destroy(c2);
  for (int i = 0; i < 10; i++) da_buffer_destroy(b[i]);
  da_plan_destroy(p);
  da_context_destroy(ctx);
}

/* ------------------------------------------------------------ projection */
/* The projection strategy (SPEC 1c): rank 1, below head_dim and equal to
 * it, GQA and MQA, causal (with rows that see no key) or not, seq_q !=
 * seq_k, the odd head_dim 59, a window with (B,S,H,D) strides; against
 * ref_proj_fwd_bwd (the cases' dtype and backend set by the caller). */
static const bcase proj_cases[] = {
    {1, 6, 2, 77, 130, 64, 1, DA_F32, 1, DA_FUSE_NORM, 0, NOWIN, 0, DA_BACKEND_CPU, 1},
    {2, 4, 2, 100, 90, 64, 0, DA_F32, 1, DA_FUSE_NORM, 0, NOWIN, 0, DA_BACKEND_CPU, 16},
    {1, 4, 1, 70, 70, 32, 1, DA_F32, 1, DA_FUSE_NORM, 0, NOWIN, 0, DA_BACKEND_CPU, 32},
    {1, 4, 2, 65, 129, 59, 0, DA_F32, 1, DA_FUSE_NORM, 0, NOWIN, 0, DA_BACKEND_CPU, 7},
    {1, 2, 2, 50, 80, 128, 1, DA_F32, 1, DA_FUSE_NORM, 0, NOWIN, 0, DA_BACKEND_CPU, 128},
    {1, 4, 2, 150, 70, 128, 1, DA_F32, 1, DA_FUSE_NORM, 0, NOWIN, 0, DA_BACKEND_CPU, 32},
    {1, 4, 2, 90, 120, 64, 0, DA_F32, 1, DA_FUSE_NORM, 0, 20, 5, 1, DA_BACKEND_CPU, 8},
};
#define N_PROJ (sizeof proj_cases / sizeof *proj_cases)
static const da_dtype proj_types[] = {DA_F32, DA_F16, DA_BF16};

static void check_proj_cases(da_backend be, int every) {
  for (int t = 0; t < 3; t++)
    for (size_t i = 0; i < N_PROJ; i++) {
      if (t > 0 && !every && i % 2) continue; /* f16, bf16: the even cases (PoCL's time) */
      bcase k = proj_cases[i];
      k.t = proj_types[t], k.be = be;
      check_case(&k);
    }
}

/* The backend's gradients against the cpu backend's (check_vs_cpu). */
static void check_proj_vs_cpu(da_backend be) {
  static const bcase cs[] = {
      {2, 4, 2, 130, 100, 64, 1, DA_F32, 1, DA_FUSE_NORM, 0, NOWIN, 0, DA_BACKEND_CPU, 16},
      {1, 6, 2, 90, 150, 59, 0, DA_F32, 1, DA_FUSE_NORM, 0, NOWIN, 0, DA_BACKEND_CPU, 59},
      {1, 4, 2, 120, 110, 128, 1, DA_BF16, 1, DA_FUSE_NORM, 0, NOWIN, 0, DA_BACKEND_CPU, 1},
      {1, 4, 2, 100, 180, 64, 0, DA_F16, 1, DA_FUSE_NORM, 0, 40, 3, 1, DA_BACKEND_CPU, 32},
  };
  check_vs_cpu(cs, sizeof cs / sizeof *cs, be, 0x9c0);
}

static void test_projection(void **st) {
  (void)st;
  check_proj_cases(DA_BACKEND_CPU, 1);
}

/* ------------------------------------------------------------ OpenCL */
/* The OpenCL backward (cl/cl_bwd.c, cl/bwd.cl: plain kernels, two passes,
 * no atomics) against the float64 reference on fresh inputs with poisoned
 * outputs, as the cpu and cuda cases, and against the cpu backend's
 * backward; shapes small enough for PoCL. Skipped without an OpenCL
 * device, failed then under DISTRATTN_REQUIRE_BACKENDS=...,opencl. */

static const bcase cl_exact[] = {
    {2, 4, 2, 100, 130, 64, 0, DA_F32, 1, DA_FUSE_NORM, 0, NOWIN, 0, DA_BACKEND_OPENCL, 0},
    {1, 6, 2, 77, 77, 128, 1, DA_F32, 1, DA_FUSE_NORM, 0, NOWIN, 0, DA_BACKEND_OPENCL, 0},
    {1, 4, 4, 1, 257, 64, 1, DA_F32, 1, DA_FUSE_NORM, 0, NOWIN, 0, DA_BACKEND_OPENCL, 0},
    {1, 4, 2, 150, 70, 128, 1, DA_F32, 1, DA_FUSE_NORM, 0, NOWIN, 0, DA_BACKEND_OPENCL, 0}, /* rows with no key */
    {1, 2, 2, 3, 1, 64, 0, DA_F32, 1, DA_FUSE_NORM, 0, NOWIN, 0, DA_BACKEND_OPENCL, 0},
    {1, 4, 1, 139, 17, 128, 0, DA_F32, 1, DA_FUSE_NORM, 0, NOWIN, 0, DA_BACKEND_OPENCL, 0},
    {1, 6, 2, 90, 150, 59, 1, DA_F32, 1, DA_FUSE_NORM, 0, NOWIN, 0, DA_BACKEND_OPENCL, 0},
    {1, 4, 2, 113, 203, 40, 1, DA_F32, 1, DA_FUSE_NORM, 0, NOWIN, 0, DA_BACKEND_OPENCL, 0},
    {1, 2, 1, 33, 47, 256, 1, DA_F32, 1, DA_FUSE_NORM, 0, NOWIN, 0, DA_BACKEND_OPENCL, 0},  /* the largest */
    {1, 2, 2, 40, 29, 3, 0, DA_F32, 1, DA_FUSE_NORM, 0, NOWIN, 0, DA_BACKEND_OPENCL, 0},    /* under a vector */
};
#define N_CL_EXACT (sizeof cl_exact / sizeof *cl_exact)

static const da_dtype cl_types[] = {DA_F32, DA_F16, DA_BF16};

static void test_opencl_exact(void **st) {
  (void)st;
  TU_NEED_BACKEND(DA_BACKEND_OPENCL);
  for (int t = 0; t < 3; t++)
    for (size_t i = 0; i < N_CL_EXACT; i++) {
      bcase k = cl_exact[i];
      k.t = cl_types[t];
      check_case(&k);
    }
}

/* G = 2 and 4 under both fusions (the forward's hash kernel gives the
 * groupings), hash tiles of 16..128 rows, GQA 4/2 and 6/2, causal or not,
 * the odd head_dim 59; f16 and bf16 on two of the shapes. */
static void test_opencl_distr(void **st) {
  (void)st;
  TU_NEED_BACKEND(DA_BACKEND_OPENCL);
  static const bcase base[] = {
      {1, 4, 2, 200, 150, 64, 1, DA_F32, 2, DA_FUSE_NORM, 64, NOWIN, 0, DA_BACKEND_OPENCL, 0},
      {2, 2, 1, 130, 190, 128, 0, DA_F32, 2, DA_FUSE_NORM, 0, NOWIN, 0, DA_BACKEND_OPENCL, 0},
      {1, 6, 2, 96, 96, 59, 1, DA_F32, 2, DA_FUSE_NORM, 16, NOWIN, 0, DA_BACKEND_OPENCL, 0},
      {1, 2, 1, 140, 100, 128, 1, DA_F32, 2, DA_FUSE_NORM, 128, NOWIN, 0, DA_BACKEND_OPENCL, 0},
  };
  static const int gs[] = {2, 4};
  static const da_fusion fs[] = {DA_FUSE_MEAN, DA_FUSE_NORM};
  for (size_t i = 0; i < sizeof base / sizeof *base; i++)
    for (int t = 0; t < 3; t++)
      for (int g = 0; g < 2; g++)
        for (int f = 0; f < 2; f++) {
          if (t > 0 && (i > 1 || g != f)) continue; /* f16, bf16: G=2 MEAN, G=4 NORM */
          bcase k = base[i];
          k.t = cl_types[t], k.G = gs[g], k.f = fs[f];
          check_case(&k);
        }
}

static void test_opencl_window_strided(void **st) {
  (void)st;
  TU_NEED_BACKEND(DA_BACKEND_OPENCL);
  static const bcase cs[] = {
      {1, 4, 2, 120, 160, 64, 0, DA_F16, 1, DA_FUSE_NORM, 0, 20, 5, 0, DA_BACKEND_OPENCL, 0},
      {1, 4, 2, 120, 160, 128, 0, DA_BF16, 1, DA_FUSE_NORM, 0, 0, -1, 0, DA_BACKEND_OPENCL, 0},
      {1, 4, 2, 120, 160, 32, 0, DA_F32, 1, DA_FUSE_NORM, 0, 20, 5, 0, DA_BACKEND_OPENCL, 0},
      {1, 2, 1, 100, 80, 64, 1, DA_F16, 2, DA_FUSE_NORM, 32, 17, -1, 0, DA_BACKEND_OPENCL, 0},
      {1, 2, 1, 100, 80, 48, 1, DA_F32, 4, DA_FUSE_MEAN, 32, 17, -1, 0, DA_BACKEND_OPENCL, 0},
      {2, 4, 2, 70, 90, 64, 1, DA_BF16, 1, DA_FUSE_NORM, 0, NOWIN, 1, DA_BACKEND_OPENCL, 0},
      {2, 4, 2, 70, 90, 128, 0, DA_F16, 2, DA_FUSE_NORM, 32, NOWIN, 1, DA_BACKEND_OPENCL, 0},
      {2, 4, 2, 70, 90, 48, 1, DA_F32, 1, DA_FUSE_NORM, 0, NOWIN, 1, DA_BACKEND_OPENCL, 0},
      {2, 6, 2, 70, 90, 40, 0, DA_BF16, 2, DA_FUSE_MEAN, 16, 9, 30, 1, DA_BACKEND_OPENCL, 0},
  };
  for (size_t i = 0; i < sizeof cs / sizeof *cs; i++) check_case(&cs[i]);
}

/* OpenCL's gradients against the cpu backend's on the same inputs
 * (check_vs_cpu). */
static void test_opencl_vs_cpu(void **st) {
  (void)st;
  TU_NEED_BACKEND(DA_BACKEND_OPENCL);
  static const bcase cs[] = {
      {2, 4, 2, 130, 100, 64, 1, DA_F32, 1, DA_FUSE_NORM, 0, NOWIN, 0, DA_BACKEND_OPENCL, 0},
      {1, 6, 2, 150, 150, 59, 0, DA_F32, 2, DA_FUSE_NORM, 32, NOWIN, 0, DA_BACKEND_OPENCL, 0},
      {1, 4, 2, 200, 180, 128, 1, DA_F32, 4, DA_FUSE_MEAN, 64, NOWIN, 0, DA_BACKEND_OPENCL, 0},
      {1, 4, 2, 200, 180, 128, 1, DA_BF16, 1, DA_FUSE_NORM, 0, NOWIN, 0, DA_BACKEND_OPENCL, 0},
      {1, 4, 2, 200, 180, 64, 0, DA_F16, 2, DA_FUSE_NORM, 64, 40, 3, 1, DA_BACKEND_OPENCL, 0},
  };
  check_vs_cpu(cs, sizeof cs / sizeof *cs, DA_BACKEND_OPENCL, 0x0c1);
}

static void test_opencl_projection(void **st) {
  (void)st;
  TU_NEED_BACKEND(DA_BACKEND_OPENCL);
  check_proj_cases(DA_BACKEND_OPENCL, 0);
}

static void test_opencl_projection_vs_cpu(void **st) {
  (void)st;
  TU_NEED_BACKEND(DA_BACKEND_OPENCL);
  check_proj_vs_cpu(DA_BACKEND_OPENCL);
}

/* Forward and backward of case k (dense layout) with tensor t at element
 * offset off + t of a buffer of its own (0: every offset 0; the LSE's in
 * floats); the gradients read back into g[3] (dtype arrays, malloc). */
static void run_offsets(const bcase *k, size_t off, uint64_t seed, void *g[3]) {
  da_context *ctx = be_ctx(k->be);
  da_attn_desc d;
  da_attn_ext x;
  case_desc(k, seed, &d, &x);
  da_plan *p = NULL;
  TU_CHECK(ctx, da_plan_create_ext(ctx, &d, &x, &p));
  const size_t es = da_dtype_size(k->t);
  const size_t nq = (size_t)k->B * k->H * k->Sq * k->hd, nk = (size_t)k->B * k->KVH * k->Sk * k->hd;
  const size_t nl = (size_t)k->B * k->H * k->Sq;
  /* 0 q, 1 k, 2 v, 3 o, 4 lse, 5 dout, 6 dq, 7 dk, 8 dv */
  const size_t n[9] = {nq, nk, nk, nq, nl, nq, nq, nk, nk};
  size_t o[9];
  da_buffer *b[9];
  tu_rng r;
  tu_rng_init(&r, seed);
  for (int t = 0; t < 9; t++) {
    const size_t ts = t == 4 ? sizeof(float) : es;
    o[t] = off ? off + (size_t)t : 0;
    unsigned char *h = malloc((n[t] + o[t]) * ts);
    assert_non_null(h);
    tu_poison(h, (n[t] + o[t]) * ts);
    if (t == 0 || t == 1 || t == 2 || t == 5) tu_fill(h + o[t] * ts, k->t, n[t], &r, 1.0);
    TU_CHECK(ctx, da_buffer_create(ctx, (n[t] + o[t]) * ts, &b[t]));
    TU_CHECK(ctx, da_buffer_write(b[t], 0, h, (n[t] + o[t]) * ts));
    free(h);
  }
  da_attn_args fa;
  da_attn_args_init(&fa);
  fa.q = b[0], fa.k = b[1], fa.v = b[2], fa.o = b[3], fa.lse = b[4];
  fa.q_offset = o[0], fa.k_offset = o[1], fa.v_offset = o[2], fa.o_offset = o[3];
  fa.lse_offset = o[4];
  TU_CHECK(ctx, da_attention_ext(p, &fa));
  da_bwd_args ba;
  da_bwd_args_init(&ba);
  ba.q = b[0], ba.k = b[1], ba.v = b[2], ba.o = b[3], ba.lse = b[4], ba.dout = b[5];
  ba.dq = b[6], ba.dk = b[7], ba.dv = b[8];
  ba.q_offset = o[0], ba.k_offset = o[1], ba.v_offset = o[2], ba.o_offset = o[3];
  ba.lse_offset = o[4], ba.dout_offset = o[5];
  ba.dq_offset = o[6], ba.dk_offset = o[7], ba.dv_offset = o[8];
  TU_CHECK(ctx, da_attention_backward(p, &ba));
  for (int t = 0; t < 3; t++) {
    g[t] = malloc(n[6 + t] * es);
    assert_non_null(g[t]);
    TU_CHECK(ctx, da_buffer_read(b[6 + t], o[6 + t] * es, g[t], n[6 + t] * es));
  }
  for (int t = 0; t < 9; t++) da_buffer_destroy(b[t]);
  da_plan_destroy(p);
  da_context_destroy(ctx);
}

/* The call's element offsets (every tensor at another one, odd ones
 * included) give, bit for bit, what offsets 0 give; and both are finite
 * (the poison in the gradient buffers overwritten). */
static void test_opencl_offsets(void **st) {
  (void)st;
  TU_NEED_BACKEND(DA_BACKEND_OPENCL);
  static const bcase cs[] = {
      {2, 4, 2, 70, 90, 48, 1, DA_F32, 1, DA_FUSE_NORM, 0, NOWIN, 0, DA_BACKEND_OPENCL, 0},
      {1, 6, 2, 70, 90, 59, 0, DA_BF16, 2, DA_FUSE_NORM, 32, 20, 5, 0, DA_BACKEND_OPENCL, 0},
      {1, 4, 2, 50, 40, 64, 1, DA_F16, 4, DA_FUSE_MEAN, 16, NOWIN, 0, DA_BACKEND_OPENCL, 0},
  };
  for (size_t i = 0; i < sizeof cs / sizeof *cs; i++) {
    const bcase *k = &cs[i];
    const uint64_t seed = tu_seed() ^ 0x0ff5 ^ i;
    void *a[3], *b[3];
    run_offsets(k, 0, seed, a);
    run_offsets(k, 13, seed, b);
    const size_t es = da_dtype_size(k->t);
    const size_t n[3] = {(size_t)k->B * k->H * k->Sq * k->hd, (size_t)k->B * k->KVH * k->Sk * k->hd,
                         (size_t)k->B * k->KVH * k->Sk * k->hd};
    for (int t = 0; t < 3; t++) {
      size_t first;
      if (tu_count_nonfinite(a[t], k->t, n[t], &first) || tu_count_nonfinite(b[t], k->t, n[t], &first))
        fail_msg("case %zu: d%c holds a NaN or Inf (poison left?) [seed %llu]", i, "QKV"[t],
                 (unsigned long long)seed);
      if (memcmp(a[t], b[t], n[t] * es) != 0)
        fail_msg("case %zu: d%c at element offsets differs from the call at 0 (relative %g)", i,
                 "QKV"[t], tu_rel_err_arrays(a[t], b[t], k->t, n[t]));
      free(a[t]), free(b[t]);
    }
  }
}

#if defined(__SANITIZE_ADDRESS__)
#define UNDER_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define UNDER_ASAN 1
#endif
#endif
#ifndef UNDER_ASAN
#define UNDER_ASAN 0
#endif

/* Under AddressSanitizer (freed memory kept in quarantine) or valgrind,
 * resident memory says nothing about what the library keeps. */
static int under_tool(void) {
  const char *pre = getenv("LD_PRELOAD");
  return UNDER_ASAN || (pre && strstr(pre, "vgpreload"));
}

/* Resident memory in KiB (/proc/self/statm), or -1 where unreadable. */
static long rss_kib(void) {
  FILE *f = fopen("/proc/self/statm", "r");
  long pages = -1, rss = -1;
  if (!f) return -1;
  if (fscanf(f, "%ld %ld", &pages, &rss) != 2) rss = -1;
  fclose(f);
  return rss < 0 ? -1 : rss * 4; /* 4 KiB pages */
}

/* The per-call workspace (D, the expanded Q of G > 1) and kernels are
 * released: 300 calls with 1 MiB of workspace each leave resident memory
 * within 24 MiB of where 20 calls left it (keeping them grew it by 280
 * MiB). Skipped under AddressSanitizer and valgrind. */
static void test_opencl_repeated(void **st) {
  (void)st;
  TU_NEED_BACKEND(DA_BACKEND_OPENCL);
  if (rss_kib() < 0 || under_tool()) skip();
  da_context *ctx = be_ctx(DA_BACKEND_OPENCL);
  da_attn_desc d;
  da_attn_desc_init(&d);
  d.batch = 1, d.heads = 4, d.kv_heads = 2, d.seq_q = 1024, d.seq_k = 8, d.head_dim = 64;
  d.group_size = 2, d.hash_block = 128;
  da_attn_ext x;
  da_attn_ext_init(&x);
  x.lse = 1;
  da_plan *p = NULL;
  TU_CHECK(ctx, da_plan_create_ext(ctx, &d, &x, &p));
  const size_t nq = tu_q_elems(&d), nk = tu_kv_elems(&d), nl = 4 * 1024;
  const size_t n[9] = {nq, nq, nk, nk, nq, nl, nq, nk, nk};
  da_buffer *b[9];
  tu_rng r;
  tu_rng_init(&r, tu_seed() ^ 0x4e);
  for (int i = 0; i < 9; i++) {
    float *h = malloc(n[i] * 4);
    assert_non_null(h);
    tu_fill(h, DA_F32, n[i], &r, 1.0);
    TU_CHECK(ctx, da_buffer_create(ctx, n[i] * 4, &b[i]));
    TU_CHECK(ctx, da_buffer_write(b[i], 0, h, n[i] * 4));
    free(h);
  }
  da_attn_args fa;
  da_attn_args_init(&fa);
  fa.q = b[1], fa.k = b[2], fa.v = b[3], fa.o = b[4], fa.lse = b[5];
  TU_CHECK(ctx, da_attention_ext(p, &fa));
  da_bwd_args a;
  da_bwd_args_init(&a);
  a.dout = b[0], a.q = b[1], a.k = b[2], a.v = b[3], a.o = b[4], a.lse = b[5];
  a.dq = b[6], a.dk = b[7], a.dv = b[8];
  long base = 0;
  for (int it = 0; it < 300; it++) {
    TU_CHECK(ctx, da_attention_backward(p, &a));
    if (it % 20 == 19) TU_CHECK(ctx, da_context_synchronize(ctx));
    if (it == 19) base = rss_kib();
  }
  const long grew = rss_kib() - base;
  if (getenv("DA_TEST_VERBOSE")) fprintf(stderr, "  opencl: 280 backward calls: +%ld KiB\n", grew);
  if (grew > 24 * 1024)
    fail_msg("280 backward calls grew resident memory by %ld KiB (a workspace kept?)", grew);
  for (int i = 0; i < 9; i++) da_buffer_destroy(b[i]);
  da_plan_destroy(p);
  da_context_destroy(ctx);
}

/* What the OpenCL backward refuses (per-sequence lengths, through the
 * core; overlapping gradients, for a projection plan too), and a
 * failure of its own program's build reported, not printed: DA_ERR_BUILD
 * naming bwd.cl; the next call without it succeeds. */
static void test_opencl_refusals(void **st) {
  (void)st;
  TU_NEED_BACKEND(DA_BACKEND_OPENCL);
  da_context *ctx = be_ctx(DA_BACKEND_OPENCL);
  da_attn_desc d = tu_small_desc(); /* f32, d 16 */
  da_plan *p = NULL;
  TU_CHECK(ctx, da_plan_create(ctx, &d, &p));
  da_buffer *b[9];
  da_bwd_args a;
  zeroed_args(ctx, &d, b, 9, &a);
  setenv("DISTRATTN_CL_EXTRA_BUILD_OPTIONS", "-cl-no-such-option", 1);
  expect(ctx, da_attention_backward(p, &a), DA_ERR_BUILD, "bwd.cl");
  unsetenv("DISTRATTN_CL_EXTRA_BUILD_OPTIONS");
  TU_CHECK(ctx, da_attention_backward(p, &a));
  assert_string_equal(da_context_last_error(ctx), "");
  da_bwd_args x = a;
  x.dk = b[2]; /* dk = k */
  expect(ctx, da_attention_backward(p, &x), DA_ERR_INVALID_ARG, "dk overlaps k");
  da_attn_ext e;
  da_attn_ext_init(&e);
  e.seqlens = DA_SEQLENS_KV;
  da_plan *pk = NULL;
  TU_CHECK(ctx, da_plan_create_ext(ctx, &d, &e, &pk));
  expect(ctx, da_attention_backward(pk, &a), DA_ERR_UNSUPPORTED, "seqlens");
  da_plan_destroy(pk);
  pk = NULL;
  /* the projection strategy: OpenCL runs its backward too (the projection
   * tests check its values), with the same checks on the buffers */
  float proj[SMALL_PROJ];
  small_proj_ext(&e, proj);
  TU_CHECK(ctx, da_plan_create_ext(ctx, &d, &e, &pk));
  TU_CHECK(ctx, da_attention_backward(pk, &a));
  assert_string_equal(da_context_last_error(ctx), "");
  expect(ctx, da_attention_backward(pk, &x), DA_ERR_INVALID_ARG, "dk overlaps k");
  da_plan_destroy(pk);
  for (int i = 0; i < 9; i++) da_buffer_destroy(b[i]);
  da_plan_destroy(p);
  da_context_destroy(ctx);
}

/* ------------------------------------------------------------ CUDA */
/* The CUDA backward (cuda/cuda_bwd.cuh): the tensor-core kernel (f16/bf16,
 * head_dim 64 and 128, aligned rows) and the SIMT one (f32, other
 * head_dims, DISTRATTN_CUDA_BWD=simt) against the float64 reference on
 * fresh inputs with poisoned outputs, as the cpu cases; and against the
 * cpu backend's backward. Skipped without a CUDA device, failed then under
 * DISTRATTN_REQUIRE_BACKENDS=...,cuda. */

static const bcase cu_exact[] = {
    {2, 4, 2, 100, 130, 64, 0, DA_F16, 1, DA_FUSE_NORM, 0, NOWIN, 0, DA_BACKEND_CUDA, 0},
    {1, 6, 2, 77, 77, 128, 1, DA_F16, 1, DA_FUSE_NORM, 0, NOWIN, 0, DA_BACKEND_CUDA, 0},
    {1, 4, 4, 1, 257, 64, 1, DA_F16, 1, DA_FUSE_NORM, 0, NOWIN, 0, DA_BACKEND_CUDA, 0},
    {1, 2, 1, 300, 64, 128, 0, DA_F16, 1, DA_FUSE_NORM, 0, NOWIN, 0, DA_BACKEND_CUDA, 0},
    {2, 4, 2, 256, 256, 64, 1, DA_F16, 1, DA_FUSE_NORM, 0, NOWIN, 0, DA_BACKEND_CUDA, 0},
    {1, 4, 2, 150, 70, 128, 1, DA_F16, 1, DA_FUSE_NORM, 0, NOWIN, 0, DA_BACKEND_CUDA, 0},
    {1, 2, 2, 3, 1, 64, 0, DA_F16, 1, DA_FUSE_NORM, 0, NOWIN, 0, DA_BACKEND_CUDA, 0},
    {1, 4, 1, 239, 17, 128, 0, DA_F16, 1, DA_FUSE_NORM, 0, NOWIN, 0, DA_BACKEND_CUDA, 0},
    {1, 6, 2, 190, 310, 64, 1, DA_F16, 1, DA_FUSE_NORM, 0, NOWIN, 0, DA_BACKEND_CUDA, 0},
    {1, 4, 2, 113, 203, 40, 1, DA_F16, 1, DA_FUSE_NORM, 0, NOWIN, 0, DA_BACKEND_CUDA, 0},
    {1, 6, 2, 65, 129, 96, 0, DA_F16, 1, DA_FUSE_NORM, 0, NOWIN, 0, DA_BACKEND_CUDA, 0},
};
#define N_CU_EXACT (sizeof cu_exact / sizeof *cu_exact)

/* A copy of the caller's value of the variable name (NULL: unset), which
 * env_restore puts back (and frees), so that a variable the caller set
 * for the whole suite holds for the tests after the one changing it. */
static char *env_save(const char *name) {
  const char *was = getenv(name);
  return was ? strdup(was) : NULL;
}
static void env_restore(const char *name, char *saved) {
  if (saved)
    setenv(name, saved, 1);
  else
    unsetenv(name);
  free(saved);
}

static const da_dtype all_types[] = {DA_F32, DA_F16, DA_BF16};

static void test_cuda_exact(void **st) {
  (void)st;
  TU_NEED_BACKEND(DA_BACKEND_CUDA);
  for (int t = 0; t < 3; t++)
    for (size_t i = 0; i < N_CU_EXACT; i++) {
      bcase k = cu_exact[i];
      k.t = all_types[t];
      check_case(&k);
    }
}

static void test_cuda_distr(void **st) {
  (void)st;
  TU_NEED_BACKEND(DA_BACKEND_CUDA);
  static const bcase base[] = {
      {1, 4, 2, 200, 150, 64, 1, DA_F32, 2, DA_FUSE_NORM, 64, NOWIN, 0, DA_BACKEND_CUDA, 0},
      {2, 2, 1, 130, 190, 128, 0, DA_F32, 2, DA_FUSE_NORM, 0, NOWIN, 0, DA_BACKEND_CUDA, 0},
      {1, 6, 2, 96, 96, 59, 1, DA_F32, 2, DA_FUSE_NORM, 16, NOWIN, 0, DA_BACKEND_CUDA, 0},
      {1, 2, 1, 140, 100, 128, 1, DA_F32, 2, DA_FUSE_NORM, 128, NOWIN, 0, DA_BACKEND_CUDA, 0},
  };
  static const int gs[] = {2, 4};
  static const da_fusion fs[] = {DA_FUSE_MEAN, DA_FUSE_NORM};
  for (size_t i = 0; i < sizeof base / sizeof *base; i++)
    for (int t = 0; t < 3; t++)
      for (int g = 0; g < 2; g++)
        for (int f = 0; f < 2; f++) {
          bcase k = base[i];
          k.t = all_types[t], k.G = gs[g], k.f = fs[f];
          check_case(&k);
        }
}

static void test_cuda_window_strided(void **st) {
  (void)st;
  TU_NEED_BACKEND(DA_BACKEND_CUDA);
  static const bcase cs[] = {
      {1, 4, 2, 120, 160, 64, 0, DA_F16, 1, DA_FUSE_NORM, 0, 20, 5, 0, DA_BACKEND_CUDA, 0},
      {1, 4, 2, 120, 160, 128, 0, DA_BF16, 1, DA_FUSE_NORM, 0, 0, -1, 0, DA_BACKEND_CUDA, 0},
      {1, 4, 2, 120, 160, 32, 0, DA_F32, 1, DA_FUSE_NORM, 0, 20, 5, 0, DA_BACKEND_CUDA, 0},
      {1, 2, 1, 100, 80, 64, 1, DA_F16, 2, DA_FUSE_NORM, 32, 17, -1, 0, DA_BACKEND_CUDA, 0},
      {1, 2, 1, 100, 80, 48, 1, DA_F32, 4, DA_FUSE_MEAN, 32, 17, -1, 0, DA_BACKEND_CUDA, 0},
      {2, 4, 2, 70, 90, 64, 1, DA_BF16, 1, DA_FUSE_NORM, 0, NOWIN, 1, DA_BACKEND_CUDA, 0},
      {2, 4, 2, 70, 90, 128, 0, DA_F16, 2, DA_FUSE_NORM, 32, NOWIN, 1, DA_BACKEND_CUDA, 0},
      {2, 4, 2, 70, 90, 48, 1, DA_F32, 1, DA_FUSE_NORM, 0, NOWIN, 1, DA_BACKEND_CUDA, 0},
      {2, 6, 2, 70, 90, 40, 0, DA_BF16, 2, DA_FUSE_MEAN, 16, 9, 30, 1, DA_BACKEND_CUDA, 0},
  };
  for (size_t i = 0; i < sizeof cs / sizeof *cs; i++) check_case(&cs[i]);
}

/* Whether the CUDA device runs the Hopper (sm_90a) kernels: the forward of
 * a dense f16 plan at head_dim 64, seq 256, reports "wgmma" there, and the backward's
 * warpgroup-MMA kernel has the same conditions (sm_90, a build for sm_90a). */
static int cuda_hopper(void) {
  static int known = -1;
  if (known >= 0) return known;
  da_context *ctx = be_ctx(DA_BACKEND_CUDA);
  da_attn_desc d = tu_small_desc();
  d.dtype = DA_F16, d.head_dim = 64;
  d.seq_q = d.seq_k = 256; /* not a decode plan (few query rows: the split-KV kernels) */
  da_plan *p = NULL;
  TU_CHECK(ctx, da_plan_create(ctx, &d, &p));
  da_kernel_info ki;
  da_kernel_info_init(&ki);
  TU_CHECK(ctx, da_plan_get_kernel(p, &ki));
  known = !strcmp(ki.name, "wgmma");
  da_plan_destroy(p);
  da_context_destroy(ctx);
  return known;
}

/* DISTRATTN_CUDA_BWD=simt runs the tensor-core shapes on the SIMT kernel;
 * =mma demands the mma.sync one, with blocks of 128 keys (the default)
 * and of 64 (DISTRATTN_CUDA_BWD_KEYS=64). */
static void test_cuda_forced(void **st) {
  (void)st;
  TU_NEED_BACKEND(DA_BACKEND_CUDA);
  static const char *const modes[] = {"simt", "mma", "mma"};
  for (int m = 0; m < 3; m++) {
    setenv("DISTRATTN_CUDA_BWD", modes[m], 1);
    if (m == 2) setenv("DISTRATTN_CUDA_BWD_KEYS", "64", 1);
    for (int t = 1; t < 3; t++)
      for (size_t i = 0; i < 6; i++) {
        bcase k = cu_exact[i];
        k.t = all_types[t];
        check_case(&k);
        k.G = 2, k.f = DA_FUSE_MEAN;
        check_case(&k);
      }
  }
  unsetenv("DISTRATTN_CUDA_BWD");
  unsetenv("DISTRATTN_CUDA_BWD_KEYS");
}

/* The tensor-core shapes with windows, strides (BSHD) and G > 1, for the
 * kernels the environment picks (test_cuda_wgmma, test_cuda_split) */
static const bcase cu_win[] = {
    {1, 4, 2, 120, 160, 64, 0, DA_F16, 1, DA_FUSE_NORM, 0, 20, 5, 0, DA_BACKEND_CUDA, 0},
    {1, 4, 2, 120, 160, 128, 0, DA_BF16, 1, DA_FUSE_NORM, 0, 0, -1, 0, DA_BACKEND_CUDA, 0},
    {1, 2, 1, 100, 80, 64, 1, DA_F16, 2, DA_FUSE_NORM, 32, 17, -1, 0, DA_BACKEND_CUDA, 0},
    {2, 4, 2, 70, 90, 64, 1, DA_BF16, 1, DA_FUSE_NORM, 0, NOWIN, 1, DA_BACKEND_CUDA, 0},
    {2, 4, 2, 70, 90, 128, 0, DA_F16, 2, DA_FUSE_NORM, 32, NOWIN, 1, DA_BACKEND_CUDA, 0},
    {1, 2, 1, 130, 90, 128, 0, DA_BF16, 4, DA_FUSE_MEAN, 64, 30, 0, 1, DA_BACKEND_CUDA, 0},
};

/* DISTRATTN_CUDA_BWD=wgmma demands the Hopper kernel (cuda/cuda_bwd_wgmma.cu,
 * the default on sm_90): on a device that runs it, the exact shapes in
 * f16 and bf16 (the float64 reference), G = 2 and 4, windows, strides and
 * the BSHD layout; elsewhere the refusal of an f16 call at head_dim 64
 * (DA_ERR_UNSUPPORTED naming the variable). */
static void test_cuda_wgmma(void **st) {
  (void)st;
  TU_NEED_BACKEND(DA_BACKEND_CUDA);
  static const bcase big[] = {
      {1, 2, 2, 700, 650, 128, 1, DA_F16, 1, DA_FUSE_NORM, 0, NOWIN, 0, DA_BACKEND_CUDA, 0},
      {1, 4, 1, 333, 520, 64, 0, DA_BF16, 1, DA_FUSE_NORM, 0, NOWIN, 0, DA_BACKEND_CUDA, 0},
  };
  char *saved = env_save("DISTRATTN_CUDA_BWD");
  setenv("DISTRATTN_CUDA_BWD", "wgmma", 1);
  if (!cuda_hopper()) {
    da_context *ctx = be_ctx(DA_BACKEND_CUDA);
    da_attn_desc d = tu_small_desc();
    d.dtype = DA_F16, d.head_dim = 64;
    da_plan *p = NULL;
    const da_status sp = da_plan_create(ctx, &d, &p);
    da_buffer *b[9];
    da_bwd_args a;
    da_status sb = sp;
    if (sp == DA_SUCCESS) {
      zeroed_args(ctx, &d, b, 9, &a);
      sb = da_attention_backward(p, &a);
    }
    char msg[256];
    snprintf(msg, sizeof msg, "%s", da_context_last_error(ctx));
    env_restore("DISTRATTN_CUDA_BWD", saved);
    if (sp == DA_SUCCESS)
      for (int i = 0; i < 9; i++) da_buffer_destroy(b[i]);
    da_plan_destroy(p);
    da_context_destroy(ctx);
    if (sb != DA_ERR_UNSUPPORTED || !strstr(msg, "DISTRATTN_CUDA_BWD=\"wgmma\""))
      fail_msg("DISTRATTN_CUDA_BWD=wgmma off Hopper: expected DA_ERR_UNSUPPORTED naming it, got "
               "%s: \"%s\"", da_status_string(sb), msg);
    return;
  }
  for (int t = 1; t < 3; t++)
    for (size_t i = 0; i < N_CU_EXACT; i++) {
      bcase k = cu_exact[i];
      if (k.hd != 64 && k.hd != 128) continue;
      k.t = all_types[t];
      check_case(&k);
      k.G = 2 + 2 * (i % 2), k.f = i % 3 ? DA_FUSE_NORM : DA_FUSE_MEAN;
      check_case(&k);
    }
  for (size_t i = 0; i < sizeof cu_win / sizeof *cu_win; i++) check_case(&cu_win[i]);
  for (size_t i = 0; i < sizeof big / sizeof *big; i++) check_case(&big[i]);
  env_restore("DISTRATTN_CUDA_BWD", saved);
}

/* DISTRATTN_CUDA_BWD_DQ=split (cuda/cuda_bwd_split.cuh: a dK/dV kernel and
 * a dQ kernel, no atomics) on the exact shapes in every dtype (f32 and the
 * other head_dims run the SIMT kernel, which ignores it), G = 2 and 4,
 * windows and strides: with the default blocks (128 keys, 128 query rows),
 * then with DISTRATTN_CUDA_BWD_KEYS=64 and DISTRATTN_CUDA_BWD_DQ_ROWS=64. */
static void test_cuda_split(void **st) {
  (void)st;
  TU_NEED_BACKEND(DA_BACKEND_CUDA);
  /* a DISTRATTN_CUDA_BWD_DQ of the caller's (the whole suite run split)
   * is put back for the tests after this one */
  char *saved = env_save("DISTRATTN_CUDA_BWD_DQ");
  setenv("DISTRATTN_CUDA_BWD_DQ", "split", 1);
  for (int kb = 0; kb < 2; kb++) {
    if (kb) {
      setenv("DISTRATTN_CUDA_BWD_KEYS", "64", 1);
      setenv("DISTRATTN_CUDA_BWD_DQ_ROWS", "64", 1);
    }
    for (int t = 0; t < 3; t++)
      for (size_t i = 0; i < N_CU_EXACT; i++) {
        bcase k = cu_exact[i];
        k.t = all_types[t];
        check_case(&k);
        if (t && i < 6) {
          k.G = 2 + 2 * (i % 2), k.f = i % 3 ? DA_FUSE_NORM : DA_FUSE_MEAN;
          check_case(&k);
        }
      }
    for (size_t i = 0; i < sizeof cu_win / sizeof *cu_win; i++) check_case(&cu_win[i]);
  }
  env_restore("DISTRATTN_CUDA_BWD_DQ", saved);
  unsetenv("DISTRATTN_CUDA_BWD_KEYS");
  unsetenv("DISTRATTN_CUDA_BWD_DQ_ROWS");
}

/* CUDA's gradients against the cpu backend's on the same inputs
 * (check_vs_cpu). */
static void test_cuda_vs_cpu(void **st) {
  (void)st;
  TU_NEED_BACKEND(DA_BACKEND_CUDA);
  static const bcase cs[] = {
      {2, 4, 2, 130, 100, 64, 1, DA_F32, 1, DA_FUSE_NORM, 0, NOWIN, 0, DA_BACKEND_CUDA, 0},
      {1, 6, 2, 150, 150, 59, 0, DA_F32, 2, DA_FUSE_NORM, 32, NOWIN, 0, DA_BACKEND_CUDA, 0},
      {1, 4, 2, 200, 180, 128, 1, DA_F32, 4, DA_FUSE_MEAN, 64, NOWIN, 0, DA_BACKEND_CUDA, 0},
      {1, 4, 2, 200, 180, 128, 1, DA_BF16, 1, DA_FUSE_NORM, 0, NOWIN, 0, DA_BACKEND_CUDA, 0},
      {1, 4, 2, 200, 180, 64, 0, DA_F16, 2, DA_FUSE_NORM, 64, NOWIN, 0, DA_BACKEND_CUDA, 0},
  };
  check_vs_cpu(cs, sizeof cs / sizeof *cs, DA_BACKEND_CUDA, 0xc0da);
}

/* The projection strategy: every case on the kernel the call picks (the
 * tensor-core one for f16/bf16 at head_dim 64 and 128), then forced to
 * SIMT, then the tensor-core shapes forced onto it with 128 and 64 keys a
 * block. O and the LSE come from CUDA's own forward (run_case). */
static void test_cuda_projection(void **st) {
  (void)st;
  TU_NEED_BACKEND(DA_BACKEND_CUDA);
  check_proj_cases(DA_BACKEND_CUDA, 1);
  setenv("DISTRATTN_CUDA_BWD", "simt", 1);
  check_proj_cases(DA_BACKEND_CUDA, 1);
  for (int m = 0; m < 3; m++) {
    if (m == 2 && !cuda_hopper()) break;
    setenv("DISTRATTN_CUDA_BWD", m == 2 ? "wgmma" : "mma", 1);
    if (m == 1) setenv("DISTRATTN_CUDA_BWD_KEYS", "64", 1);
    if (m == 2) unsetenv("DISTRATTN_CUDA_BWD_KEYS");
    for (int t = 1; t < 3; t++)
      for (size_t i = 0; i < N_PROJ; i++) {
        bcase k = proj_cases[i];
        if (k.hd != 64 && k.hd != 128) continue;
        k.t = proj_types[t], k.be = DA_BACKEND_CUDA;
        check_case(&k);
      }
  }
  unsetenv("DISTRATTN_CUDA_BWD");
  unsetenv("DISTRATTN_CUDA_BWD_KEYS");
  /* the split arrangement (its dQ kernel writes E, which step 4 maps
   * through M_h^T) */
  char *saved = env_save("DISTRATTN_CUDA_BWD_DQ");
  setenv("DISTRATTN_CUDA_BWD_DQ", "split", 1);
  check_proj_cases(DA_BACKEND_CUDA, 1);
  env_restore("DISTRATTN_CUDA_BWD_DQ", saved);
}

static void test_cuda_projection_vs_cpu(void **st) {
  (void)st;
  TU_NEED_BACKEND(DA_BACKEND_CUDA);
  check_proj_vs_cpu(DA_BACKEND_CUDA);
}

/* What the CUDA backward refuses: what the cpu one refuses (per-sequence
 * lengths, through the core), a DISTRATTN_CUDA_BWD it cannot honour or
 * parse; a projection plan is made and its backward runs, while its
 * forward (both entry points) and DA_ALGO_GEMM projection plans are
 * refused. */
static void test_cuda_refusals(void **st) {
  (void)st;
  TU_NEED_BACKEND(DA_BACKEND_CUDA);
  da_context *ctx = be_ctx(DA_BACKEND_CUDA);
  da_attn_desc d = tu_small_desc(); /* f32, d 16 */
  da_plan *p = NULL;
  TU_CHECK(ctx, da_plan_create(ctx, &d, &p));
  da_buffer *b[9];
  da_bwd_args a;
  zeroed_args(ctx, &d, b, 9, &a);
  TU_CHECK(ctx, da_attention_backward(p, &a));
  assert_string_equal(da_context_last_error(ctx), "");
  /* the variables are the plan's: the core parses them when it is made */
  da_plan *pe = NULL;
  setenv("DISTRATTN_CUDA_BWD", "mma", 1); /* f32, head_dim 16: no tensor-core kernel */
  TU_CHECK(ctx, da_plan_create(ctx, &d, &pe));
  expect(ctx, da_attention_backward(pe, &a), DA_ERR_UNSUPPORTED, "DISTRATTN_CUDA_BWD");
  da_plan_destroy(pe);
  pe = NULL;
  setenv("DISTRATTN_CUDA_BWD", "wgmma", 1); /* nor the Hopper one, on any device */
  TU_CHECK(ctx, da_plan_create(ctx, &d, &pe));
  expect(ctx, da_attention_backward(pe, &a), DA_ERR_UNSUPPORTED, "DISTRATTN_CUDA_BWD=\"wgmma\"");
  da_plan_destroy(pe);
  pe = NULL;
  setenv("DISTRATTN_CUDA_BWD", "tensor", 1);
  expect(ctx, da_plan_create(ctx, &d, &pe), DA_ERR_INVALID_ARG, "DISTRATTN_CUDA_BWD");
  setenv("DISTRATTN_CUDA_BWD", "simt", 1);
  TU_CHECK(ctx, da_plan_create(ctx, &d, &pe));
  TU_CHECK(ctx, da_attention_backward(pe, &a));
  da_plan_destroy(pe);
  pe = NULL;
  unsetenv("DISTRATTN_CUDA_BWD");
  setenv("DISTRATTN_CUDA_BWD_KEYS", "32", 1);
  expect(ctx, da_plan_create(ctx, &d, &pe), DA_ERR_INVALID_ARG, "DISTRATTN_CUDA_BWD_KEYS");
  unsetenv("DISTRATTN_CUDA_BWD_KEYS");
  /* a bad value is refused when the plan is made, naming the variable; the
   * variable is restored before anything can fail, so a failure here does
   * not leave it set for the tests that follow */
  char *saved = env_save("DISTRATTN_CUDA_BWD_DQ");
  setenv("DISTRATTN_CUDA_BWD_DQ", "atomics", 1);
  const da_status sdq = da_plan_create(ctx, &d, &pe);
  char dq_msg[256];
  snprintf(dq_msg, sizeof dq_msg, "%s", da_context_last_error(ctx));
  setenv("DISTRATTN_CUDA_BWD_DQ", "split", 1); /* f32: the SIMT kernel, which ignores it */
  da_plan *ps = NULL;
  const da_status ss = da_plan_create(ctx, &d, &ps);
  const da_status sb = ss == DA_SUCCESS ? da_attention_backward(ps, &a) : ss;
  da_plan_destroy(ps);
  env_restore("DISTRATTN_CUDA_BWD_DQ", saved);
  setenv("DISTRATTN_CUDA_BWD_DQ_ROWS", "256", 1);
  da_plan *pr = NULL;
  const da_status srows = da_plan_create(ctx, &d, &pr);
  char rows_msg[256];
  snprintf(rows_msg, sizeof rows_msg, "%s", da_context_last_error(ctx));
  unsetenv("DISTRATTN_CUDA_BWD_DQ_ROWS");
  da_plan_destroy(pr);
  if (sdq != DA_ERR_INVALID_ARG || !strstr(dq_msg, "DISTRATTN_CUDA_BWD_DQ"))
    fail_msg("DISTRATTN_CUDA_BWD_DQ=atomics: expected DA_ERR_INVALID_ARG naming it, got %s: "
             "\"%s\"", da_status_string(sdq), dq_msg);
  if (sb != DA_SUCCESS) fail_msg("DISTRATTN_CUDA_BWD_DQ=split, f32: %s", da_status_string(sb));
  if (srows != DA_ERR_INVALID_ARG || !strstr(rows_msg, "DISTRATTN_CUDA_BWD_DQ_ROWS"))
    fail_msg("DISTRATTN_CUDA_BWD_DQ_ROWS=256: expected DA_ERR_INVALID_ARG naming it, got %s: "
             "\"%s\"", da_status_string(srows), rows_msg);
  da_attn_ext e;
  da_attn_ext_init(&e);
  e.seqlens = DA_SEQLENS_KV;
  da_plan *pk = NULL;
  TU_CHECK(ctx, da_plan_create_ext(ctx, &d, &e, &pk));
  expect(ctx, da_attention_backward(pk, &a), DA_ERR_UNSUPPORTED, "seqlens");
  da_plan_destroy(pk);
  /* the projection strategy: the plan is made, its backward and its
   * forward run (both entry points, with and without the LSE); DA_ALGO_GEMM
   * is refused */
  float proj[SMALL_PROJ];
  small_proj_ext(&e, proj);
  pk = NULL;
  TU_CHECK(ctx, da_plan_create_ext(ctx, &d, &e, &pk));
  TU_CHECK(ctx, da_attention_backward(pk, &a));
  assert_string_equal(da_context_last_error(ctx), "");
  TU_CHECK(ctx, da_attention(pk, b[1], b[2], b[3], b[6]));
  da_attn_args fa;
  da_attn_args_init(&fa);
  fa.q = b[1], fa.k = b[2], fa.v = b[3], fa.o = b[6];
  TU_CHECK(ctx, da_attention_ext(pk, &fa));
  da_plan_destroy(pk);
  pk = NULL;
  e.lse = 1;
  TU_CHECK(ctx, da_plan_create_ext(ctx, &d, &e, &pk));
  fa.lse = b[5];
  TU_CHECK(ctx, da_attention_ext(pk, &fa));
  da_plan_destroy(pk);
  pk = NULL;
  da_attn_desc dg = d;
  dg.algo = DA_ALGO_GEMM;
  e.lse = 0;
  const da_status sg = da_plan_create_ext(ctx, &dg, &e, &pk);
  if (sg != DA_ERR_UNSUPPORTED || !strstr(da_context_last_error(ctx), "DA_ALGO_GEMM"))
    fail_msg("a GEMM projection plan: expected DA_ERR_UNSUPPORTED naming DA_ALGO_GEMM, got %s: "
             "\"%s\"", da_status_string(sg), da_context_last_error(ctx));
  for (int i = 0; i < 9; i++) da_buffer_destroy(b[i]);
  da_plan_destroy(p);
  da_context_destroy(ctx);
}

int main(void) {
  tu_filter_from_env();
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_reference_fd),  cmocka_unit_test(test_exact_f32),
      cmocka_unit_test(test_exact_half),    cmocka_unit_test(test_distr),
      cmocka_unit_test(test_window),        cmocka_unit_test(test_strided),
      cmocka_unit_test(test_refusals),      cmocka_unit_test(test_projection),
      {"opencl: exact vs float64", test_opencl_exact, NULL, NULL, NULL},
      {"opencl: DistrAttention vs float64", test_opencl_distr, NULL, NULL, NULL},
      {"opencl: windows and strides", test_opencl_window_strided, NULL, NULL, NULL},
      {"opencl: vs cpu backward", test_opencl_vs_cpu, NULL, NULL, NULL},
      {"opencl: element offsets", test_opencl_offsets, NULL, NULL, NULL},
      {"opencl: workspace released", test_opencl_repeated, NULL, NULL, NULL},
      {"opencl: refusals", test_opencl_refusals, NULL, NULL, NULL},
      {"opencl: projection backward", test_opencl_projection, NULL, NULL, NULL},
      {"opencl: projection vs cpu backward", test_opencl_projection_vs_cpu, NULL, NULL, NULL},
      {"cuda: exact vs float64", test_cuda_exact, NULL, NULL, NULL},
      {"cuda: DistrAttention vs float64", test_cuda_distr, NULL, NULL, NULL},
      {"cuda: windows and strides", test_cuda_window_strided, NULL, NULL, NULL},
      {"cuda: DISTRATTN_CUDA_BWD simt and mma, 64 and 128 keys", test_cuda_forced, NULL, NULL, NULL},
      {"cuda: DISTRATTN_CUDA_BWD=wgmma (the Hopper kernel)", test_cuda_wgmma, NULL, NULL, NULL},
      {"cuda: DISTRATTN_CUDA_BWD_DQ=split, 64 and 128 keys and rows", test_cuda_split, NULL, NULL, NULL},
      {"cuda: vs cpu backward", test_cuda_vs_cpu, NULL, NULL, NULL},
      {"cuda: refusals", test_cuda_refusals, NULL, NULL, NULL},
      {"cuda: projection backward", test_cuda_projection, NULL, NULL, NULL},
      {"cuda: projection vs cpu backward", test_cuda_projection_vs_cpu, NULL, NULL, NULL},
  };
  return cmocka_run_group_tests_name("backward", tests, NULL, NULL);
}
