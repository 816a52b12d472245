/* SPDX-License-Identifier: Apache-2.0 */
/* The projection strategy (SPEC section 1c) on the CPU backend: the
 * forward against the core's float64 reference da_ref_projection (fresh
 * random inputs and random projections; f32, f16, bf16; causal or not;
 * GQA; seq_q != seq_k; rank 1, 7, 32 and head_dim; FUSED and GEMM),
 * identity projections = exact attention, the backward pass (an orthogonal
 * full-rank projection gives exact attention's gradients; a random
 * low-rank one against central differences of the float64 reference), the
 * plan's refusals, and da_projections_load on crafted files. The forward
 * on OpenCL and CUDA ("opencl: ...", "cuda: ...": skipped without the
 * backend, failed when DISTRATTN_REQUIRE_BACKENDS names it) against the
 * same float64 reference and against the CPU backend with every
 * da_attn_ext option, and their refusal of DA_ALGO_GEMM (their backward
 * passes are tests/test_backward.c's).
 * DA_TEST_VERBOSE=1 prints every measured error. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "testutil.h"

static da_context *cpu_ctx(void) {
  da_context *ctx = NULL;
  TU_CHECK(NULL, da_context_create(&ctx, DA_BACKEND_CPU, 0));
  return ctx;
}

/* [heads][2][hd][r] normal(0, 1/sqrt(hd)) projections */
static float *random_proj(tu_rng *r, int heads, int hd, int rank) {
  size_t n = (size_t)heads * 2 * hd * rank;
  float *p = malloc(n * sizeof *p);
  assert_non_null(p);
  for (size_t i = 0; i < n; i++) p[i] = (float)(tu_normal(r) / sqrt((double)hd));
  return p;
}

/* A = B = a random orthogonal hd x hd matrix per head (Gram-Schmidt). */
static float *orthogonal_proj(tu_rng *r, int heads, int hd) {
  float *p = malloc((size_t)heads * 2 * hd * hd * sizeof *p);
  double *m = malloc((size_t)hd * hd * sizeof *m);
  assert_true(p && m);
  for (int h = 0; h < heads; h++) {
    for (int i = 0; i < hd * hd; i++) m[i] = tu_normal(r);
    for (int c = 0; c < hd; c++) { /* columns orthonormal */
      for (int e = 0; e < c; e++) {
        double dot = 0;
        for (int i = 0; i < hd; i++) dot += m[i * hd + c] * m[i * hd + e];
        for (int i = 0; i < hd; i++) m[i * hd + c] -= dot * m[i * hd + e];
      }
      double n = 0;
      for (int i = 0; i < hd; i++) n += m[i * hd + c] * m[i * hd + c];
      for (int i = 0; i < hd; i++) m[i * hd + c] /= sqrt(n);
    }
    for (int w = 0; w < 2; w++)
      for (int i = 0; i < hd * hd; i++) p[((size_t)h * 2 + w) * hd * hd + i] = (float)m[i];
  }
  free(m);
  return p;
}

static da_status make_plan(da_context *ctx, const da_attn_desc *d, int rank, const float *proj,
                           int lse, da_plan **p) {
  da_attn_ext x;
  da_attn_ext_init(&x);
  x.strategy = DA_STRATEGY_PROJECTION;
  x.rank = rank;
  x.proj = proj;
  x.lse = lse;
  return da_plan_create_ext(ctx, d, &x, p);
}

/* the kernel check_forward's last plan reported (da_plan_get_kernel) */
static char check_kernel[32];

/* ------------------------------------------------------------- forward */

static void check_forward(da_context *ctx, tu_rng *r, da_dtype t, int causal, int heads,
                          int kvh, int sq, int sk, int hd, int rank, da_algo algo) {
  da_attn_desc d;
  da_attn_desc_init(&d);
  d.batch = 2, d.heads = heads, d.kv_heads = kvh, d.seq_q = sq, d.seq_k = sk, d.head_dim = hd;
  d.dtype = t, d.causal = causal, d.algo = algo;
  const size_t nq = tu_q_elems(&d), nkv = tu_kv_elems(&d), es = da_dtype_size(t);
  void *q = malloc(nq * es), *k = malloc(nkv * es), *v = malloc(nkv * es), *o = malloc(nq * es);
  double *ref = malloc(nq * sizeof *ref);
  float *proj = random_proj(r, heads, hd, rank);
  assert_true(q && k && v && o && ref);
  tu_fill(q, t, nq, r, 1.0);
  tu_fill(k, t, nkv, r, 1.0);
  tu_fill(v, t, nkv, r, 1.0);
  tu_poison(o, nq * es);
  da_plan *p = NULL;
  TU_CHECK(ctx, make_plan(ctx, &d, rank, proj, 0, &p));
  memset(proj, 0xff, (size_t)heads * 2 * hd * rank * sizeof *proj); /* the plan keeps a copy */
  free(proj);
  proj = random_proj(r, 1, 1, 1); /* (reused below for nothing) */
  TU_CHECK(ctx, da_attention_host(p, q, k, v, o));
  da_attn_ext x;
  da_attn_ext_init(&x);
  TU_CHECK(ctx, da_plan_get_ext(p, &x));
  assert_int_equal(x.strategy, DA_STRATEGY_PROJECTION);
  assert_int_equal(x.rank, rank);
  assert_int_equal(da_ref_projection(&d, rank, x.proj, q, k, v, ref), 0);
  double err = tu_rel_err(o, t, ref, nq), bound = tu_bound(t);
  char buf[256], name[96];
  da_kernel_info ki;
  da_kernel_info_init(&ki);
  TU_CHECK(ctx, da_plan_get_kernel(p, &ki));
  snprintf(name, sizeof name, "proj r=%d %s%s%s", rank, ki.name, ki.variant[0] ? " " : "",
           ki.variant);
  snprintf(check_kernel, sizeof check_kernel, "%s", ki.name);
  tu_note(name, &d, err, bound);
  if (!(err <= bound))
    fail_msg("projection rank %d: error %.3g > %.3g: %s [seed %llu]", rank, err, bound,
             tu_desc_str(&d, buf, sizeof buf), (unsigned long long)tu_seed());
  da_plan_destroy(p);
  free(q), free(k), free(v), free(o), free(ref), free(proj);
}

static void test_forward(void **state) {
  (void)state;
  tu_rng r;
  tu_rng_init(&r, tu_seed() ^ 0x9e1);
  da_context *ctx = cpu_ctx();
  static const int ranks[] = {1, 7, 32, 64};
  static const da_dtype ts[] = {DA_F32, DA_F16, DA_BF16};
  for (int ti = 0; ti < 3; ti++)
    for (int ri = 0; ri < 4; ri++)
      for (int causal = 0; causal < 2; causal++) {
        /* GQA 6/2, seq_q != seq_k (bottom-right causal) and equal */
        check_forward(ctx, &r, ts[ti], causal, 6, 2, 77, 203, 64, ranks[ri], DA_ALGO_FUSED);
        check_forward(ctx, &r, ts[ti], causal, 3, 3, 130, 130, 64, ranks[ri], DA_ALGO_FUSED);
      }
  /* the GEMM algorithm, MQA, odd head_dim, a one-row decode step */
  check_forward(ctx, &r, DA_F32, 1, 4, 1, 150, 150, 64, 16, DA_ALGO_GEMM);
  check_forward(ctx, &r, DA_F16, 0, 4, 2, 33, 90, 59, 7, DA_ALGO_GEMM);
  check_forward(ctx, &r, DA_F32, 1, 4, 2, 40, 70, 59, 59, DA_ALGO_FUSED);
  check_forward(ctx, &r, DA_F32, 1, 8, 2, 1, 300, 128, 32, DA_ALGO_FUSED);
  check_forward(ctx, &r, DA_BF16, 1, 2, 1, 129, 257, 256, 64, DA_ALGO_FUSED);
  da_context_destroy(ctx);
}

/* Identity projections (rank head_dim) give exact attention to f32
 * rounding, against the library's own exact plan. */
static void test_identity(void **state) {
  (void)state;
  tu_rng r;
  tu_rng_init(&r, tu_seed() ^ 0x1d);
  da_context *ctx = cpu_ctx();
  for (int causal = 0; causal < 2; causal++) {
    da_attn_desc d;
    da_attn_desc_init(&d);
    d.batch = 1, d.heads = 6, d.kv_heads = 3, d.seq_q = 200, d.seq_k = 260, d.head_dim = 64;
    d.causal = causal;
    const int hd = d.head_dim;
    size_t nq = tu_q_elems(&d), nkv = tu_kv_elems(&d);
    float *q = malloc(nq * 4), *k = malloc(nkv * 4), *v = malloc(nkv * 4);
    float *o1 = malloc(nq * 4), *o2 = malloc(nq * 4);
    float *proj = calloc((size_t)d.heads * 2 * hd * hd, sizeof *proj);
    assert_true(q && k && v && o1 && o2 && proj);
    for (int i = 0; i < d.heads * 2; i++)
      for (int c = 0; c < hd; c++) proj[(size_t)i * hd * hd + (size_t)c * hd + c] = 1.0f;
    tu_fill(q, DA_F32, nq, &r, 1.0);
    tu_fill(k, DA_F32, nkv, &r, 1.0);
    tu_fill(v, DA_F32, nkv, &r, 1.0);
    da_plan *pe = NULL, *pp = NULL;
    TU_CHECK(ctx, da_plan_create(ctx, &d, &pe));
    TU_CHECK(ctx, make_plan(ctx, &d, hd, proj, 0, &pp));
    TU_CHECK(ctx, da_attention_host(pe, q, k, v, o1));
    TU_CHECK(ctx, da_attention_host(pp, q, k, v, o2));
    double err = tu_rel_err_arrays(o2, o1, DA_F32, nq);
    tu_note("identity", &d, err, 1e-6);
    assert_true(err <= 1e-6);
    da_plan_destroy(pe), da_plan_destroy(pp);
    free(q), free(k), free(v), free(o1), free(o2), free(proj);
  }
  da_context_destroy(ctx);
}

/* ------------------------------------------------------------ backward */

/* Forward (with LSE) and backward of a dense f32 case; grads out. */
static void run_fwd_bwd(da_context *ctx, const da_attn_desc *d, int rank, const float *proj,
                        const float *q, const float *k, const float *v, const float *dout,
                        float *dq, float *dk, float *dv) {
  const size_t nq = tu_q_elems(d), nkv = tu_kv_elems(d);
  const size_t nl = (size_t)d->batch * d->heads * d->seq_q;
  da_plan *p = NULL;
  if (proj)
    TU_CHECK(ctx, make_plan(ctx, d, rank, proj, 1, &p));
  else {
    da_attn_ext x;
    da_attn_ext_init(&x);
    x.lse = 1;
    TU_CHECK(ctx, da_plan_create_ext(ctx, d, &x, &p));
  }
  da_buffer *bq, *bk, *bv, *bo, *bl, *bdo, *bdq, *bdk, *bdv;
  TU_CHECK(ctx, da_buffer_create(ctx, nq * 4, &bq));
  TU_CHECK(ctx, da_buffer_create(ctx, nkv * 4, &bk));
  TU_CHECK(ctx, da_buffer_create(ctx, nkv * 4, &bv));
  TU_CHECK(ctx, da_buffer_create(ctx, nq * 4, &bo));
  TU_CHECK(ctx, da_buffer_create(ctx, nl * 4, &bl));
  TU_CHECK(ctx, da_buffer_create(ctx, nq * 4, &bdo));
  TU_CHECK(ctx, da_buffer_create(ctx, nq * 4, &bdq));
  TU_CHECK(ctx, da_buffer_create(ctx, nkv * 4, &bdk));
  TU_CHECK(ctx, da_buffer_create(ctx, nkv * 4, &bdv));
  TU_CHECK(ctx, da_buffer_write(bq, 0, q, nq * 4));
  TU_CHECK(ctx, da_buffer_write(bk, 0, k, nkv * 4));
  TU_CHECK(ctx, da_buffer_write(bv, 0, v, nkv * 4));
  TU_CHECK(ctx, da_buffer_write(bdo, 0, dout, nq * 4));
  da_attn_args a;
  da_attn_args_init(&a);
  a.q = bq, a.k = bk, a.v = bv, a.o = bo, a.lse = bl;
  TU_CHECK(ctx, da_attention_ext(p, &a));
  da_bwd_args b;
  da_bwd_args_init(&b);
  b.dout = bdo, b.q = bq, b.k = bk, b.v = bv, b.o = bo, b.lse = bl;
  b.dq = bdq, b.dk = bdk, b.dv = bdv;
  TU_CHECK(ctx, da_attention_backward(p, &b));
  TU_CHECK(ctx, da_buffer_read(bdq, 0, dq, nq * 4));
  TU_CHECK(ctx, da_buffer_read(bdk, 0, dk, nkv * 4));
  TU_CHECK(ctx, da_buffer_read(bdv, 0, dv, nkv * 4));
  da_buffer *all[] = {bq, bk, bv, bo, bl, bdo, bdq, bdk, bdv};
  for (int i = 0; i < 9; i++) da_buffer_destroy(all[i]);
  da_plan_destroy(p);
}

/* An orthogonal full-rank projection: A B^T = U U^T = I, so every gradient
 * equals exact attention's (and a transposed A or B would not). */
static void test_backward_orthogonal(void **state) {
  (void)state;
  tu_rng r;
  tu_rng_init(&r, tu_seed() ^ 0xb0);
  da_context *ctx = cpu_ctx();
  da_attn_desc d;
  da_attn_desc_init(&d);
  d.batch = 1, d.heads = 4, d.kv_heads = 2, d.seq_q = 70, d.seq_k = 90, d.head_dim = 32;
  d.causal = 1;
  const size_t nq = tu_q_elems(&d), nkv = tu_kv_elems(&d);
  float *in = malloc((nq * 2 + nkv * 2) * 4), *g1 = malloc((nq + 2 * nkv) * 4),
        *g2 = malloc((nq + 2 * nkv) * 4);
  assert_true(in && g1 && g2);
  float *q = in, *k = q + nq, *v = k + nkv, *dout = v + nkv;
  tu_fill(in, DA_F32, nq * 2 + nkv * 2, &r, 1.0);
  float *proj = orthogonal_proj(&r, d.heads, d.head_dim);
  run_fwd_bwd(ctx, &d, 0, NULL, q, k, v, dout, g1, g1 + nq, g1 + nq + nkv);
  run_fwd_bwd(ctx, &d, d.head_dim, proj, q, k, v, dout, g2, g2 + nq, g2 + nq + nkv);
  static const char *names[3] = {"dQ", "dK", "dV"};
  const size_t off[3] = {0, nq, nq + nkv}, n[3] = {nq, nkv, nkv};
  for (int i = 0; i < 3; i++) {
    double e = tu_rel_err_arrays(g2 + off[i], g1 + off[i], DA_F32, n[i]);
    tu_note(names[i], &d, e, 2e-5);
    if (!(e <= 2e-5)) fail_msg("%s: orthogonal projection vs exact: %.3g", names[i], e);
  }
  free(in), free(g1), free(g2), free(proj);
  da_context_destroy(ctx);
}

/* L = sum dO . O in float64 through da_ref_projection. */
static double loss_f64(const da_attn_desc *d, int rank, const float *proj, const float *q,
                       const float *k, const float *v, const float *dout, double *o) {
  assert_int_equal(da_ref_projection(d, rank, proj, q, k, v, o), 0);
  double s = 0;
  for (size_t i = 0; i < tu_q_elems(d); i++) s += o[i] * dout[i];
  return s;
}

/* A random rank-3 projection on a tiny GQA case against central
 * differences (step 1e-2 on f32 inputs: the float64 loss is smooth, its
 * third derivative small at this scale). */
static void test_backward_fd(void **state) {
  (void)state;
  tu_rng r;
  tu_rng_init(&r, tu_seed() ^ 0xfd);
  da_context *ctx = cpu_ctx();
  for (int causal = 0; causal < 2; causal++) {
    da_attn_desc d;
    da_attn_desc_init(&d);
    d.batch = 1, d.heads = 2, d.kv_heads = 1, d.seq_q = 5, d.seq_k = 7, d.head_dim = 8;
    d.causal = causal;
    const int rank = 3;
    const size_t nq = tu_q_elems(&d), nkv = tu_kv_elems(&d);
    float *in = malloc((nq * 2 + nkv * 2) * 4), *g = malloc((nq + 2 * nkv) * 4);
    double *o = malloc(nq * sizeof *o), *num = malloc((nq + 2 * nkv) * sizeof *num);
    assert_true(in && g && o && num);
    float *q = in, *k = q + nq, *v = k + nkv, *dout = v + nkv;
    tu_fill(in, DA_F32, nq * 2 + nkv * 2, &r, 1.0);
    float *proj = random_proj(&r, d.heads, d.head_dim, rank);
    for (size_t i = 0; i < (size_t)d.heads * 2 * d.head_dim * rank; i++) proj[i] *= 2.0f;
    run_fwd_bwd(ctx, &d, rank, proj, q, k, v, dout, g, g + nq, g + nq + nkv);
    float *x[3] = {q, k, v};
    const size_t n[3] = {nq, nkv, nkv}, off[3] = {0, nq, nq + nkv};
    for (int t = 0; t < 3; t++)
      for (size_t i = 0; i < n[t]; i++) {
        const float keep = x[t][i], h = 1e-2f;
        x[t][i] = keep + h;
        double lp = loss_f64(&d, rank, proj, q, k, v, dout, o);
        x[t][i] = keep - h;
        double lm = loss_f64(&d, rank, proj, q, k, v, dout, o);
        x[t][i] = keep;
        num[off[t] + i] = (lp - lm) / (double)((keep + h) - (keep - h));
      }
    static const char *names[3] = {"dQ fd", "dK fd", "dV fd"};
    for (int t = 0; t < 3; t++) {
      double e2 = 0, r2 = 0;
      for (size_t i = 0; i < n[t]; i++) {
        double df = (double)g[off[t] + i] - num[off[t] + i];
        e2 += df * df, r2 += num[off[t] + i] * num[off[t] + i];
      }
      double e = sqrt(e2 / r2);
      tu_note(names[t], &d, e, 1e-3);
      if (!(e <= 1e-3)) fail_msg("%s: backward vs central differences: %.3g", names[t], e);
    }
    free(in), free(g), free(o), free(num), free(proj);
  }
  da_context_destroy(ctx);
}

/* ------------------------------------------------------------ refusals */

static void expect_refusal(da_context *ctx, const da_attn_desc *d, const da_attn_ext *x,
                           da_status want, const char *needle) {
  da_plan *p = NULL;
  da_status s = da_plan_create_ext(ctx, d, x, &p);
  if (s != want || !strstr(da_context_last_error(ctx), needle))
    fail_msg("expected %s with \"%s\", got %s: \"%s\"", da_status_string(want), needle,
             da_status_string(s), da_context_last_error(ctx));
  assert_null(p);
}

static void test_refusals(void **state) {
  (void)state;
  da_context *ctx = cpu_ctx();
  da_attn_desc d = tu_small_desc(); /* 4 heads / 2 kv, head_dim 16 */
  const int hd = d.head_dim;
  float *proj = calloc((size_t)d.heads * 2 * hd * hd, sizeof *proj);
  assert_non_null(proj);
  da_attn_ext x;
  da_attn_ext_init(&x);
  assert_int_equal(x.strategy, DA_STRATEGY_TILE_LSH);
  assert_int_equal(x.rank, 0);
  assert_null(x.proj);
  x.strategy = DA_STRATEGY_PROJECTION, x.rank = 4, x.proj = proj;
  d.group_size = 2;
  expect_refusal(ctx, &d, &x, DA_ERR_INVALID_ARG, "group_size = 2 with ext.strategy");
  d.group_size = 1;
  x.rank = 0;
  expect_refusal(ctx, &d, &x, DA_ERR_INVALID_ARG, "ext.rank = 0 is out of range (1..head_dim = 16)");
  x.rank = 17;
  expect_refusal(ctx, &d, &x, DA_ERR_INVALID_ARG, "ext.rank = 17 is out of range");
  x.rank = 4, x.proj = NULL;
  expect_refusal(ctx, &d, &x, DA_ERR_INVALID_ARG, "ext.proj is NULL");
  x.proj = proj;
  x.strategy = 7;
  expect_refusal(ctx, &d, &x, DA_ERR_INVALID_ARG, "ext.strategy = 7 is not a da_strategy");
  x.strategy = DA_STRATEGY_TILE_LSH;
  expect_refusal(ctx, &d, &x, DA_ERR_INVALID_ARG, "ext.rank = 4: a rank is for");
  x.rank = 0;
  expect_refusal(ctx, &d, &x, DA_ERR_INVALID_ARG, "ext.proj given");
  /* non-finite values, named by head, matrix, row and column */
  x.strategy = DA_STRATEGY_PROJECTION, x.rank = 4;
  proj[(size_t)2 * 2 * hd * 4 + (size_t)hd * 4 + 5 * 4 + 3] = NAN; /* head 2, B, row 5, col 3 */
  expect_refusal(ctx, &d, &x, DA_ERR_INVALID_ARG, "ext.proj: head 2, B, row 5, col 3 is NaN");
  proj[(size_t)2 * 2 * hd * 4 + (size_t)hd * 4 + 5 * 4 + 3] = 0.0f;
  proj[(size_t)3 * 2 * hd * 4 + 1 * 4 + 0] = -INFINITY; /* head 3, A, row 1, col 0 */
  expect_refusal(ctx, &d, &x, DA_ERR_INVALID_ARG, "ext.proj: head 3, A, row 1, col 0 is -Inf");
  proj[(size_t)3 * 2 * hd * 4 + 1 * 4 + 0] = 0.0f;
  /* a valid plan has no column groups */
  da_plan *p = NULL;
  TU_CHECK(ctx, da_plan_create_ext(ctx, &d, &x, &p));
  float q[4 * 8 * 16];
  int perm[4 * 16];
  memset(q, 0, sizeof q);
  assert_int_equal(da_plan_groups_host(p, q, perm), DA_ERR_INVALID_ARG);
  assert_non_null(strstr(da_context_last_error(ctx), "DA_STRATEGY_PROJECTION"));
  da_plan_destroy(p);
  da_context_destroy(ctx);
  free(proj);
}

/* ------------------------------------------------ OpenCL and CUDA */

/* The device backends (OpenCL, CUDA; forward only): the float64 reference
 * on dense plans, and the CPU backend's result on plans with every
 * da_attn_ext option (strides (B,S,H,D) with element offsets, per-sequence
 * KV lengths, packed sequences, LSE, windows), over ranks 1, 8, 16, 32 and
 * head_dim, f32/f16/bf16, GQA, causal, rows not a multiple of any tile.
 * OpenCL runs the fused kernel of its device's shape (the rows kernel on
 * PoCL); tests/cl-tiled-check.sh reruns the "opencl:" tests with
 * DISTRATTN_CL_KERNEL=tiled. */

static da_context *backend_ctx(void **state) {
  const da_backend b = (da_backend)(intptr_t)*state;
  TU_NEED_BACKEND(b);
  da_context *ctx = NULL;
  TU_CHECK(NULL, da_context_create(&ctx, b, -1));
  return ctx;
}

static void test_dev_forward(void **state) {
  da_context *ctx = backend_ctx(state);
  tu_rng r;
  tu_rng_init(&r, tu_seed() ^ 0xdef);
  static const da_dtype ts[] = {DA_F32, DA_F16, DA_BF16};
  static const int ranks[] = {1, 8, 16, 32, 64};
  for (int ti = 0; ti < 3; ti++)
    for (int ri = 0; ri < 5; ri++) {
      const int causal = (ti + ri) & 1;
      /* GQA 6/2, seq_q != seq_k (bottom-right causal), 77 rows */
      check_forward(ctx, &r, ts[ti], causal, 6, 2, 77, 203, 64, ranks[ri], DA_ALGO_FUSED);
    }
  /* MHA, equal lengths, the other mask; odd head_dim and rank; decode-like
   * (one row: the decode kernels never take a projection plan); head_dim 128 */
  check_forward(ctx, &r, DA_F32, 1, 3, 3, 130, 130, 64, 16, DA_ALGO_FUSED);
  check_forward(ctx, &r, DA_F16, 1, 4, 2, 40, 70, 59, 7, DA_ALGO_FUSED);
  check_forward(ctx, &r, DA_F32, 1, 8, 2, 1, 300, 128, 32, DA_ALGO_FUSED);
  check_forward(ctx, &r, DA_BF16, 0, 4, 1, 65, 129, 128, 128, DA_ALGO_FUSED);
  check_forward(ctx, &r, DA_F16, 1, 4, 2, 200, 333, 128, 64, DA_ALGO_FUSED);
  check_forward(ctx, &r, DA_F16, 0, 4, 4, 150, 150, 128, 32, DA_ALGO_FUSED);
  da_context_destroy(ctx);
}

/* The shapes CUDA's warpgroup-MMA kernel takes in its pre-projected mode
 * on sm_90a (f16/bf16, rank 64 at head_dim 64 and 128, rank 128 at 128;
 * dense, no LSE): lengths that are not multiples of its 128-row tiles,
 * GQA, bottom-right causal with rows that see no key. On other devices the
 * mma.sync kernel runs them (DA_TEST_VERBOSE prints which). */
/* The warpgroup-MMA kernel's pre-projected shapes (head_dim, rank); where
 * the device runs that kernel (sm_90a: the first shape reports "wgmma"),
 * every shape must run on it. */
static void test_dev_forward_wg(void **state) {
  da_context *ctx = backend_ctx(state);
  tu_rng r;
  tu_rng_init(&r, tu_seed() ^ 0x4090);
  static const da_dtype ts[] = {DA_F16, DA_BF16};
  static const int dr[][2] = {{128, 64}, {128, 128}, {64, 64}, {128, 32}, {64, 32}};
  int hopper = -1;
  for (int ti = 0; ti < 2; ti++)
    for (int i = 0; i < 5; i++) {
      check_forward(ctx, &r, ts[ti], 0, 8, 2, 300, 257, dr[i][0], dr[i][1], DA_ALGO_FUSED);
      if (hopper < 0) hopper = !strcmp(check_kernel, "wgmma");
      if (hopper && strcmp(check_kernel, "wgmma"))
        fail_msg("head_dim %d rank %d ran %s, not the warpgroup-MMA kernel", dr[i][0], dr[i][1],
                 check_kernel);
      check_forward(ctx, &r, ts[ti], 1, 4, 4, 200, 130, dr[i][0], dr[i][1], DA_ALGO_FUSED);
      check_forward(ctx, &r, ts[ti], 1, 2, 1, 129, 385, dr[i][0], dr[i][1], DA_ALGO_AUTO);
    }
  da_context_destroy(ctx);
}

/* One projection call through buffers on ctx: the plan of (d, x), the
 * tensors at element offset off of buffers of qn (Q and O) and kn (K and V)
 * elements (Q and K at off + qk_off), O zeroed first and read back whole (on elements), the LSE (nl
 * floats) when x->lse. lens: DA_SEQLENS_KV's [batch]; cuq, cuk:
 * DA_SEQLENS_PACKED's [batch + 1] over rows_q, rows_k. */
static void run_ext(da_context *ctx, const da_attn_desc *d, const da_attn_ext *x, const void *q,
                    const void *k, const void *v, size_t qn, size_t kn, size_t off,
                    size_t qk_off, const int *lens, const int *cuq, const int *cuk, size_t rows_q,
                    size_t rows_k, void *o, float *lse, size_t nl) {
  const size_t es = da_dtype_size(d->dtype);
  da_plan *p = NULL;
  TU_CHECK(ctx, da_plan_create_ext(ctx, d, x, &p));
  da_buffer *bq, *bk, *bv, *bo, *bl = NULL, *bs = NULL, *bcq = NULL, *bck = NULL;
  TU_CHECK(ctx, da_buffer_create(ctx, qn * es, &bq));
  TU_CHECK(ctx, da_buffer_create(ctx, kn * es, &bk));
  TU_CHECK(ctx, da_buffer_create(ctx, kn * es, &bv));
  TU_CHECK(ctx, da_buffer_create(ctx, qn * es, &bo));
  TU_CHECK(ctx, da_buffer_write(bq, 0, q, qn * es));
  TU_CHECK(ctx, da_buffer_write(bk, 0, k, kn * es));
  TU_CHECK(ctx, da_buffer_write(bv, 0, v, kn * es));
  memset(o, 0, qn * es);
  TU_CHECK(ctx, da_buffer_write(bo, 0, o, qn * es));
  da_attn_args a;
  da_attn_args_init(&a);
  a.q = bq, a.k = bk, a.v = bv, a.o = bo;
  a.q_offset = a.k_offset = off + qk_off;
  a.v_offset = a.o_offset = off;
  if (x->lse) {
    TU_CHECK(ctx, da_buffer_create(ctx, nl * 4, &bl));
    memset(lse, 0, nl * 4); /* packed: rows past the last sequence stay 0 */
    TU_CHECK(ctx, da_buffer_write(bl, 0, lse, nl * 4));
    a.lse = bl;
  }
  if (x->seqlens == DA_SEQLENS_KV) {
    TU_CHECK(ctx, da_buffer_create(ctx, (size_t)d->batch * 4, &bs));
    TU_CHECK(ctx, da_buffer_write(bs, 0, lens, (size_t)d->batch * 4));
    a.seqlens_k = bs;
  } else if (x->seqlens == DA_SEQLENS_PACKED) {
    TU_CHECK(ctx, da_buffer_create(ctx, ((size_t)d->batch + 1) * 4, &bcq));
    TU_CHECK(ctx, da_buffer_create(ctx, ((size_t)d->batch + 1) * 4, &bck));
    TU_CHECK(ctx, da_buffer_write(bcq, 0, cuq, ((size_t)d->batch + 1) * 4));
    TU_CHECK(ctx, da_buffer_write(bck, 0, cuk, ((size_t)d->batch + 1) * 4));
    a.cu_seqlens_q = bcq, a.cu_seqlens_k = bck, a.rows_q = rows_q, a.rows_k = rows_k;
  }
  TU_CHECK(ctx, da_attention_ext(p, &a));
  TU_CHECK(ctx, da_buffer_read(bo, 0, o, qn * es));
  if (x->lse) TU_CHECK(ctx, da_buffer_read(bl, 0, lse, nl * 4));
  da_buffer *all[] = {bq, bk, bv, bo, bl, bs, bcq, bck};
  for (int i = 0; i < 8; i++)
    if (all[i]) da_buffer_destroy(all[i]);
  da_plan_destroy(p);
}

/* kind 0: (B,S,H,D) strides, element offset 5, LSE, window (20, 5) or
 * causal; 1: DA_SEQLENS_KV (lengths 0..seq_k, one 0); 2: DA_SEQLENS_PACKED
 * in (S,H,D) rows with LSE; 3: dense, Q and K at element offset 3 (not 16
 * bytes aligned: CUDA's tensor-core projection reads them element by
 * element) while V and O are aligned, LSE. Against the CPU backend with
 * the same plan. */
static void check_vs_cpu(da_context *ctx, da_context *cpu, tu_rng *r, da_dtype t, int kind,
                         int causal, int rank) {
  da_attn_desc d;
  da_attn_desc_init(&d);
  d.batch = 3, d.heads = 6, d.kv_heads = 2, d.seq_q = 45, d.seq_k = 97, d.head_dim = 64;
  d.dtype = t, d.causal = causal;
  const long long H = d.heads, KH = d.kv_heads, D = d.head_dim;
  float *proj = random_proj(r, d.heads, d.head_dim, rank);
  da_attn_ext x;
  da_attn_ext_init(&x);
  x.strategy = DA_STRATEGY_PROJECTION, x.rank = rank, x.proj = proj;
  size_t qn = tu_q_elems(&d), kn = tu_kv_elems(&d), off = 0, qk_off = 0, nl = 0, rows_q = 0,
         rows_k = 0;
  int lens[3] = {97, 0, 60}, cuq[4] = {0, 45, 45, 62}, cuk[4] = {0, 97, 130, 150};
  if (kind == 0) {
    off = 5;
    x.q_stride[0] = d.seq_q * H * D, x.q_stride[1] = D, x.q_stride[2] = H * D;
    x.o_stride[0] = x.q_stride[0], x.o_stride[1] = D, x.o_stride[2] = H * D;
    x.k_stride[0] = d.seq_k * KH * D, x.k_stride[1] = D, x.k_stride[2] = KH * D;
    memcpy(x.v_stride, x.k_stride, sizeof x.v_stride);
    x.lse = 1;
    if (!causal) x.window_left = 20, x.window_right = 5;
    qn += off, kn += off;
    nl = (size_t)d.batch * d.heads * d.seq_q;
  } else if (kind == 3) {
    qk_off = 3;
    x.lse = 1;
    qn += qk_off, kn += qk_off;
    nl = (size_t)d.batch * d.heads * d.seq_q;
  } else if (kind == 1) {
    x.seqlens = DA_SEQLENS_KV;
    if (!causal) x.window_left = 30;
  } else {
    x.seqlens = DA_SEQLENS_PACKED;
    x.lse = 1;
    rows_q = 64, rows_k = 160; /* beyond the last sequence's end */
    x.q_stride[1] = D, x.q_stride[2] = H * D;
    x.o_stride[1] = D, x.o_stride[2] = H * D;
    x.k_stride[1] = D, x.k_stride[2] = KH * D;
    memcpy(x.v_stride, x.k_stride, sizeof x.v_stride);
    qn = rows_q * H * D, kn = rows_k * KH * D;
    nl = (size_t)H * rows_q;
  }
  const size_t es = da_dtype_size(t);
  void *q = malloc(qn * es), *k = malloc(kn * es), *v = malloc(kn * es);
  void *o1 = malloc(qn * es), *o2 = malloc(qn * es);
  float *l1 = malloc((nl + 1) * 4), *l2 = malloc((nl + 1) * 4);
  assert_true(q && k && v && o1 && o2 && l1 && l2);
  tu_fill(q, t, qn, r, 1.0);
  tu_fill(k, t, kn, r, 1.0);
  tu_fill(v, t, kn, r, 1.0);
  run_ext(cpu, &d, &x, q, k, v, qn, kn, off, qk_off, lens, cuq, cuk, rows_q, rows_k, o1, l1, nl);
  run_ext(ctx, &d, &x, q, k, v, qn, kn, off, qk_off, lens, cuq, cuk, rows_q, rows_k, o2, l2, nl);
  const double err = tu_rel_err_arrays(o2, o1, t, qn), bound = tu_bound(t);
  char buf[256], name[64];
  snprintf(name, sizeof name, "vs cpu kind %d r=%d", kind, rank);
  tu_note(name, &d, err, bound);
  if (!(err <= bound))
    fail_msg("projection vs cpu, kind %d, rank %d: error %.3g > %.3g: %s [seed %llu]", kind, rank,
             err, bound, tu_desc_str(&d, buf, sizeof buf), (unsigned long long)tu_seed());
  /* the LSE: f32 rounding apart, more where a tensor-core kernel (CUDA)
   * stores the projected Q and K in the dtype */
  const float ltol = t == DA_F32 ? 1e-4f : t == DA_F16 ? 4e-3f : 3e-2f;
  for (size_t i = 0; i < nl; i++) {
    const float a = l1[i], b = l2[i];
    const int same = isinf(a) ? a == b : fabsf(a - b) <= ltol * (1.0f + fabsf(a));
    if (!same)
      fail_msg("projection vs cpu, kind %d, rank %d: LSE[%zu] %.8g, cpu %.8g [seed %llu]", kind,
               rank, i, (double)b, (double)a, (unsigned long long)tu_seed());
  }
  free(q), free(k), free(v), free(o1), free(o2), free(l1), free(l2), free(proj);
}

static void test_dev_vs_cpu(void **state) {
  da_context *ctx = backend_ctx(state);
  da_context *cpu = cpu_ctx();
  tu_rng r;
  tu_rng_init(&r, tu_seed() ^ 0xc9c);
  static const int ranks[] = {1, 8, 16, 32, 64};
  for (int kind = 0; kind < 3; kind++)
    for (int ri = 0; ri < 5; ri++)
      check_vs_cpu(ctx, cpu, &r, DA_F32, kind, (kind + ri) & 1, ranks[ri]);
  check_vs_cpu(ctx, cpu, &r, DA_F32, 3, 1, 32);
  static const da_dtype ts[] = {DA_F16, DA_BF16};
  for (int ti = 0; ti < 2; ti++) {
    for (int kind = 0; kind < 3; kind++)
      check_vs_cpu(ctx, cpu, &r, ts[ti], kind, (kind + ti) & 1, ranks[(kind + 2 * ti) % 5]);
    check_vs_cpu(ctx, cpu, &r, ts[ti], 3, ti, ti ? 64 : 16);
  }
  da_context_destroy(cpu);
  da_context_destroy(ctx);
}

/* What the device backends refuse: DA_ALGO_GEMM (OpenCL and CUDA run the
 * strategy on their fused kernels). Their backward passes run the strategy
 * (tests/test_backward.c, "opencl: projection backward" and "cuda: ..."). */
static void test_dev_refusals(void **state) {
  da_context *ctx = backend_ctx(state);
  da_attn_desc d = tu_small_desc();
  d.dtype = DA_F32;
  float *proj = calloc((size_t)d.heads * 2 * d.head_dim * 4, sizeof *proj);
  assert_non_null(proj);
  da_attn_ext x;
  da_attn_ext_init(&x);
  x.strategy = DA_STRATEGY_PROJECTION, x.rank = 4, x.proj = proj;
  d.algo = DA_ALGO_GEMM;
  expect_refusal(ctx, &d, &x, DA_ERR_UNSUPPORTED, "DA_STRATEGY_PROJECTION");
  d.algo = DA_ALGO_AUTO; /* the fused kernel */
  x.lse = 1;
  da_plan *p = NULL;
  TU_CHECK(ctx, da_plan_create_ext(ctx, &d, &x, &p));
  da_plan_destroy(p);
  free(proj);
  da_context_destroy(ctx);
}

/* ---------------------------------------------------------- the loader */

static void put_u32(unsigned char *b, uint32_t v) {
  b[0] = (unsigned char)v, b[1] = (unsigned char)(v >> 8), b[2] = (unsigned char)(v >> 16),
  b[3] = (unsigned char)(v >> 24);
}

/* A valid file: layers x heads x 2 x hd x rank floats, value i * 0.25. */
static size_t make_file(unsigned char **out, uint32_t layers, uint32_t heads, uint32_t hd,
                        uint32_t rank) {
  size_t nf = (size_t)layers * heads * 2 * hd * rank, n = 96 + 4 * nf;
  unsigned char *b = calloc(n, 1);
  assert_non_null(b);
  memcpy(b, "DATTNPRJ", 8);
  put_u32(b + 8, 1);
  put_u32(b + 12, layers);
  put_u32(b + 16, heads);
  put_u32(b + 20, hd);
  put_u32(b + 24, rank);
  put_u32(b + 28, 0);
  memcpy(b + 32, "test model", 10);
  for (size_t i = 0; i < nf; i++) {
    float f = (float)i * 0.25f;
    uint32_t u;
    memcpy(&u, &f, 4);
    put_u32(b + 96 + 4 * i, u);
  }
  *out = b;
  return n;
}

static char tmp_path[64];

static void write_file(const unsigned char *b, size_t n) {
  FILE *f = fopen(tmp_path, "wb");
  assert_non_null(f);
  assert_int_equal(fwrite(b, 1, n, f), n);
  fclose(f);
}

static void expect_load_fail(int layer, da_status want, const char *needle) {
  float *p = (float *)&p;
  da_status s = da_projections_load(tmp_path, layer, &p, NULL, NULL, NULL, NULL);
  if (s != want || !strstr(da_context_last_error(NULL), needle))
    fail_msg("load: expected %s with \"%s\", got %s: \"%s\"", da_status_string(want), needle,
             da_status_string(s), da_context_last_error(NULL));
  assert_null(p);
}

static void test_loader(void **state) {
  (void)state;
  snprintf(tmp_path, sizeof tmp_path, "/tmp/da-test-proj-%ld.bin", (long)getpid());
  unsigned char *b;
  size_t n = make_file(&b, 3, 2, 4, 3);
  write_file(b, n);
  /* valid: layer 1 comes back exactly */
  float *p = NULL;
  int L = 0, H = 0, D = 0, R = 0;
  assert_int_equal(da_projections_load(tmp_path, 1, &p, &L, &H, &D, &R), DA_SUCCESS);
  assert_true(L == 3 && H == 2 && D == 4 && R == 3);
  for (int i = 0; i < 2 * 2 * 4 * 3; i++) assert_true(p[i] == (float)(48 + i) * 0.25f);
  da_projections_free(p);
  expect_load_fail(3, DA_ERR_INVALID_ARG, "layer = 3, but the file holds layers 0..2");
  expect_load_fail(-1, DA_ERR_INVALID_ARG, "layer = -1 must be >= 0");
  /* each header field out of range */
  static const struct { int off; uint32_t v; const char *msg; } bad[] = {
      {8, 2, "version = 2: this reader knows version 1 only"},
      {12, 0, "layers = 0 is out of range (1..4096)"},
      {12, 4097, "layers = 4097 is out of range"},
      {16, 0, "heads = 0 is out of range (1..4096)"},
      {20, 257, "head_dim = 257 is out of range (1..256)"},
      {24, 0, "rank = 0 is out of range (1..4)"},
      {24, 5, "rank = 5 is out of range (1..4)"},
      {28, 3, "method = 3 is out of range (0..2)"},
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    unsigned char *c = malloc(n);
    memcpy(c, b, n);
    put_u32(c + bad[i].off, bad[i].v);
    write_file(c, n);
    expect_load_fail(0, DA_ERR_INVALID_ARG, bad[i].msg);
    free(c);
  }
  /* the size the header claims, exactly: header fields that disagree with
   * the data, truncation at every length up to the header and beyond,
   * trailing bytes */
  {
    unsigned char *c = malloc(n + 1);
    memcpy(c, b, n);
    put_u32(c + 24, 2); /* rank 2: the size no longer matches */
    write_file(c, n);
    expect_load_fail(0, DA_ERR_INVALID_ARG, "trailing bytes");
    memcpy(c, b, n);
    c[n] = 0;
    write_file(c, n + 1);
    expect_load_fail(0, DA_ERR_INVALID_ARG, "trailing bytes");
    write_file(c, n - 1);
    expect_load_fail(0, DA_ERR_INVALID_ARG, "truncated");
    for (size_t t = 0; t < 96; t += 7) {
      write_file(c, t);
      expect_load_fail(0, DA_ERR_INVALID_ARG, t < 8 ? "not a projection file" : "");
    }
    memcpy(c, "DATTNCAP", 8);
    write_file(c, n);
    expect_load_fail(0, DA_ERR_INVALID_ARG, "does not start with the magic DATTNPRJ");
    memcpy(c, b, n);
    c[32 + 12] = 'x'; /* after the NUL of "test model" */
    write_file(c, n);
    expect_load_fail(0, DA_ERR_INVALID_ARG, "model byte 12");
    memcpy(c, b, n);
    c[33] = 0x07;
    write_file(c, n);
    expect_load_fail(0, DA_ERR_INVALID_ARG, "model byte 1 = 0x07");
    /* a NaN in layer 2, head 1, B, row 2, col 1 */
    memcpy(c, b, n);
    size_t at = (size_t)2 * 2 * 2 * 4 * 3 + (size_t)1 * 2 * 4 * 3 + 4 * 3 + 2 * 3 + 1;
    put_u32(c + 96 + 4 * at, 0x7fc00000u);
    write_file(c, n);
    expect_load_fail(2, DA_ERR_INVALID_ARG, "layer 2, head 1, B, row 2, col 1 is NaN");
    put_u32(c + 96 + 4 * at, 0xff800000u);
    write_file(c, n);
    expect_load_fail(2, DA_ERR_INVALID_ARG, "layer 2, head 1, B, row 2, col 1 is -Inf");
    free(c);
  }
  unlink(tmp_path);
  expect_load_fail(0, DA_ERR_INVALID_ARG, "cannot open");
  assert_int_equal(da_projections_load(NULL, 0, &p, NULL, NULL, NULL, NULL), DA_ERR_INVALID_ARG);
  assert_int_equal(da_projections_load(tmp_path, 0, NULL, NULL, NULL, NULL, NULL),
                   DA_ERR_INVALID_ARG);
  free(b);
}

int main(void) {
  tu_filter_from_env();
  void *const st_cl = (void *)(intptr_t)DA_BACKEND_OPENCL;
  void *const st_cu = (void *)(intptr_t)DA_BACKEND_CUDA;
  const struct CMUnitTest tests[] = {
      {"opencl: projection forward", test_dev_forward, NULL, NULL, st_cl},
      {"opencl: projection vs cpu", test_dev_vs_cpu, NULL, NULL, st_cl},
      {"opencl: projection refusals", test_dev_refusals, NULL, NULL, st_cl},
      {"cuda: projection forward", test_dev_forward, NULL, NULL, st_cu},
      {"cuda: projection forward, Hopper kernel shapes", test_dev_forward_wg, NULL, NULL, st_cu},
      {"cuda: projection vs cpu", test_dev_vs_cpu, NULL, NULL, st_cu},
      {"cuda: projection refusals", test_dev_refusals, NULL, NULL, st_cu},
      cmocka_unit_test(test_forward),
      cmocka_unit_test(test_identity),
      cmocka_unit_test(test_backward_orthogonal),
      cmocka_unit_test(test_backward_fd),
      cmocka_unit_test(test_refusals),
      cmocka_unit_test(test_loader),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
