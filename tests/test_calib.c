/* SPDX-License-Identifier: Apache-2.0 */
/* `distrattn calibrate`'s mathematics (tools/calib.c): the Jacobi eigen-
 * solver and SVD against their definitions; on a synthetic case whose
 * answer is known (Q and K living in an r-dimensional subspace) both
 * methods give projections under which the CPU backend's projection
 * strategy reproduces exact attention (to f32 rounding); the optimal
 * method's logit objective never exceeds pca's (random anisotropic data
 * and every head of the committed SmolLM2 capture); and the DATTNPRJ
 * writer's file reads back exactly through da_projections_load. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "calib.h"
#include "testutil.h"

#ifndef DA_REALDATA_SMOLLM2_FILE
#define DA_REALDATA_SMOLLM2_FILE "tests/data/smollm2-small.dattncap"
#endif

static void test_eig(void **state) {
  (void)state;
  tu_rng r;
  tu_rng_init(&r, tu_seed() ^ 0xe1);
  const int n = 40;
  double *a = malloc(sizeof(double) * n * n), *a0 = malloc(sizeof(double) * n * n);
  double *w = malloc(sizeof(double) * n), *v = malloc(sizeof(double) * n * n);
  for (int i = 0; i < n; i++)
    for (int j = 0; j <= i; j++) a0[i * n + j] = a0[j * n + i] = tu_normal(&r);
  memcpy(a, a0, sizeof(double) * n * n);
  calib_eig_sym(n, a, w, v);
  for (int c = 0; c < n; c++) {
    if (c) assert_true(w[c] <= w[c - 1]);
    for (int i = 0; i < n; i++) { /* a0 v_c = w_c v_c */
      double x = 0;
      for (int k = 0; k < n; k++) x += a0[i * n + k] * v[k * n + c];
      assert_true(fabs(x - w[c] * v[i * n + c]) < 1e-10);
    }
    for (int e = 0; e <= c; e++) {
      double x = 0;
      for (int k = 0; k < n; k++) x += v[k * n + c] * v[k * n + e];
      assert_true(fabs(x - (c == e)) < 1e-12);
    }
  }
  free(a), free(a0), free(w), free(v);
}

static void test_svd(void **state) {
  (void)state;
  tu_rng r;
  tu_rng_init(&r, tu_seed() ^ 0x5d);
  const int n = 30;
  double *t = malloc(sizeof(double) * n * n), *t0 = malloc(sizeof(double) * n * n);
  double *u = malloc(sizeof(double) * n * n), *s = malloc(sizeof(double) * n),
         *v = malloc(sizeof(double) * n * n);
  for (int i = 0; i < n * n; i++) t0[i] = tu_normal(&r);
  memcpy(t, t0, sizeof(double) * n * n);
  calib_svd(n, t, u, s, v);
  for (int i = 0; i < n; i++) {
    if (i) assert_true(s[i] <= s[i - 1]);
    for (int j = 0; j < n; j++) {
      double x = 0, uu = 0, vv = 0;
      for (int k = 0; k < n; k++) {
        x += u[i * n + k] * s[k] * v[j * n + k];
        uu += u[k * n + i] * u[k * n + j];
        vv += v[k * n + i] * v[k * n + j];
      }
      assert_true(fabs(x - t0[i * n + j]) < 1e-10);
      assert_true(fabs(uu - (i == j)) < 1e-10);
      assert_true(fabs(vv - (i == j)) < 1e-10);
    }
  }
  free(t), free(t0), free(u), free(s), free(v);
}

/* rows x d matrix whose rows lie in the span of the r orthonormal columns
 * of basis [d][r], with per-direction scales (anisotropic) */
static void subspace_rows(tu_rng *rg, int rows, int d, int r, const double *basis, float *out) {
  for (int i = 0; i < rows; i++) {
    double z[256];
    for (int c = 0; c < r; c++) z[c] = tu_normal(rg) * (1.0 + 2.0 * c / r);
    for (int e = 0; e < d; e++) {
      double x = 0;
      for (int c = 0; c < r; c++) x += basis[e * r + c] * z[c];
      out[(size_t)i * d + e] = (float)x;
    }
  }
}

static void moments(const float *x, int rows, int d, double *S) {
  memset(S, 0, sizeof(double) * d * d);
  for (int i = 0; i < rows; i++)
    for (int a = 0; a < d; a++)
      for (int b = 0; b < d; b++) S[a * d + b] += (double)x[(size_t)i * d + a] * x[(size_t)i * d + b];
}

/* Q, K in one r-dim subspace: q^T A B^T k = q^T k for both methods, so the
 * projection strategy's output is exact attention's. */
static void test_synthetic_subspace(void **state) {
  (void)state;
  tu_rng rg;
  tu_rng_init(&rg, tu_seed() ^ 0x5b);
  da_context *ctx = NULL;
  TU_CHECK(NULL, da_context_create(&ctx, DA_BACKEND_CPU, 0));
  const int d = 64, H = 4, KH = 2, S = 300;
  static const int ranks[] = {8, 16, 32};
  for (int ri = 0; ri < 3; ri++)
    for (int m = 0; m < 2; m++) {
      const int r = ranks[ri];
      /* one subspace per kv head, shared by its query heads */
      float *q = malloc(sizeof(float) * H * S * d), *k = malloc(sizeof(float) * KH * S * d);
      float *v = malloc(sizeof(float) * KH * S * d), *o1 = malloc(sizeof(float) * H * S * d),
            *o2 = malloc(sizeof(float) * H * S * d);
      float *proj = malloc(sizeof(float) * H * 2 * d * r);
      double *basis = malloc(sizeof(double) * KH * d * r), *Sq = malloc(sizeof(double) * d * d),
             *Sk = malloc(sizeof(double) * d * d);
      for (int g = 0; g < KH; g++) { /* Gram-Schmidt of random columns */
        double *b = basis + (size_t)g * d * r;
        for (int i = 0; i < d * r; i++) b[i] = tu_normal(&rg);
        for (int c = 0; c < r; c++) {
          for (int e = 0; e < c; e++) {
            double dot = 0;
            for (int i = 0; i < d; i++) dot += b[i * r + c] * b[i * r + e];
            for (int i = 0; i < d; i++) b[i * r + c] -= dot * b[i * r + e];
          }
          double nn = 0;
          for (int i = 0; i < d; i++) nn += b[i * r + c] * b[i * r + c];
          for (int i = 0; i < d; i++) b[i * r + c] /= sqrt(nn);
        }
        subspace_rows(&rg, S, d, r, b, k + (size_t)g * S * d);
      }
      for (int h = 0; h < H; h++)
        subspace_rows(&rg, S, d, r, basis + (size_t)(h / (H / KH)) * d * r, q + (size_t)h * S * d);
      tu_fill(v, DA_F32, (size_t)KH * S * d, &rg, 1.0);
      for (int h = 0; h < H; h++) {
        float *A = proj + (size_t)h * 2 * d * r, *B = A + (size_t)d * r;
        moments(q + (size_t)h * S * d, S, d, Sq);
        moments(k + (size_t)(h / (H / KH)) * S * d, S, d, Sk);
        assert_int_equal(calib_head(d, r, (calib_method)m, Sq, S, Sk, S, A, B), 0);
        double obj = calib_objective(d, r, Sq, Sk, A, B);
        if (!(obj <= 1e-5))
          fail_msg("rank %d, %s, head %d: logit objective %.3g on Q, K in a %d-dim subspace", r,
                   m ? "optimal" : "pca", h, obj, r);
      }
      da_attn_desc dsc;
      da_attn_desc_init(&dsc);
      dsc.batch = 1, dsc.heads = H, dsc.kv_heads = KH, dsc.seq_q = S, dsc.seq_k = S;
      dsc.head_dim = d, dsc.causal = 1;
      da_attn_ext x;
      da_attn_ext_init(&x);
      x.strategy = DA_STRATEGY_PROJECTION, x.rank = r, x.proj = proj;
      da_plan *pe = NULL, *pp = NULL;
      TU_CHECK(ctx, da_plan_create(ctx, &dsc, &pe));
      TU_CHECK(ctx, da_plan_create_ext(ctx, &dsc, &x, &pp));
      TU_CHECK(ctx, da_attention_host(pe, q, k, v, o1));
      TU_CHECK(ctx, da_attention_host(pp, q, k, v, o2));
      double e = tu_rel_err_arrays(o2, o1, DA_F32, (size_t)H * S * d);
      tu_note(m ? "synth opt" : "synth pca", &dsc, e, 1e-5);
      if (!(e <= 1e-5))
        fail_msg("rank %d, %s: projection strategy vs exact %.3g on Q, K in a %d-dim subspace", r,
                 m ? "optimal" : "pca", e, r);
      da_plan_destroy(pe), da_plan_destroy(pp);
      free(q), free(k), free(v), free(o1), free(o2), free(proj), free(basis), free(Sq), free(Sk);
    }
  da_context_destroy(ctx);
}

/* optimal's objective <= pca's: random anisotropic full-rank data, and
 * every (layer, head) of the SmolLM2 capture at ranks 8, 16, 32. */
static void test_optimal_beats_pca(void **state) {
  (void)state;
  tu_rng rg;
  tu_rng_init(&rg, tu_seed() ^ 0x0b);
  const int d = 32;
  double *Sq = malloc(sizeof(double) * 64 * 64), *Sk = malloc(sizeof(double) * 64 * 64);
  float *A = malloc(sizeof(float) * 2 * 64 * 64), *P = malloc(sizeof(float) * 2 * 64 * 64);
  float *x = malloc(sizeof(float) * 500 * d);
  for (int trial = 0; trial < 4; trial++) {
    for (int i = 0; i < 500; i++)
      for (int e = 0; e < d; e++) x[i * d + e] = (float)(tu_normal(&rg) * exp(-0.1 * e));
    moments(x, 500, d, Sq);
    for (int i = 0; i < 500; i++)
      for (int e = 0; e < d; e++)
        x[i * d + e] = (float)(tu_normal(&rg) * exp(-0.1 * (d - 1 - e)) + 0.3 * x[i * d + e]);
    moments(x, 500, d, Sk);
    for (int r = 1; r <= d; r += 5) {
      calib_head(d, r, CALIB_OPTIMAL, Sq, 500, Sk, 500, A, A + d * r);
      calib_head(d, r, CALIB_PCA, Sq, 500, Sk, 500, P, P + d * r);
      double eo = calib_objective(d, r, Sq, Sk, A, A + d * r);
      double ep = calib_objective(d, r, Sq, Sk, P, P + d * r);
      if (!(eo <= ep + 1e-9)) fail_msg("rank %d: optimal %.6f > pca %.6f", r, eo, ep);
    }
  }
  const char *path = getenv("DA_REALDATA_SMOLLM2_FILE");
  if (!path || !*path) path = DA_REALDATA_SMOLLM2_FILE;
  capture c;
  char why[512];
  if (capture_load_file(path, &c, why, sizeof why)) fail_msg("%s: %s", path, why);
  const int D = (int)c.head_dim;
  for (unsigned l = 0; l < c.layers; l++)
    for (unsigned h = 0; h < c.heads; h++) {
      double nq, nk;
      calib_moments(&c, c.n_sent, l, h, Sq, &nq, Sk, &nk);
      for (int r = 8; r <= 32; r *= 2) {
        assert_int_equal(calib_head(D, r, CALIB_OPTIMAL, Sq, nq, Sk, nk, A, A + D * r), 0);
        assert_int_equal(calib_head(D, r, CALIB_PCA, Sq, nq, Sk, nk, P, P + D * r), 0);
        double eo = calib_objective(D, r, Sq, Sk, A, A + D * r);
        double ep = calib_objective(D, r, Sq, Sk, P, P + D * r);
        if (!(eo <= ep + 1e-9))
          fail_msg("smollm2 layer %u head %u rank %d: optimal %.6f > pca %.6f", l, h, r, eo, ep);
      }
    }
  capture_free(&c);
  free(Sq), free(Sk), free(A), free(P), free(x);
}

static void test_write_load(void **state) {
  (void)state;
  char path[64];
  snprintf(path, sizeof path, "/tmp/da-test-calib-%ld.prj", (long)getpid());
  const unsigned L = 2, H = 3, D = 5, R = 2;
  float data[2 * 3 * 2 * 5 * 2];
  for (unsigned i = 0; i < sizeof data / sizeof data[0]; i++) data[i] = (float)i - 7.5f;
  char why[256];
  assert_int_equal(proj_write(path, L, H, D, R, CALIB_OPTIMAL, "some model; layers 3,4", data,
                              why, sizeof why),
                   0);
  FILE *f = fopen(path, "rb");
  assert_non_null(f);
  fseek(f, 0, SEEK_END);
  assert_int_equal(ftell(f), 96 + 4 * (long)(sizeof data / sizeof data[0]));
  fclose(f);
  for (unsigned l = 0; l < L; l++) {
    float *p = NULL;
    int fl, fh, fd, fr;
    TU_CHECK(NULL, da_projections_load(path, (int)l, &p, &fl, &fh, &fd, &fr));
    assert_true(fl == (int)L && fh == (int)H && fd == (int)D && fr == (int)R);
    assert_memory_equal(p, data + (size_t)l * H * 2 * D * R, sizeof(float) * H * 2 * D * R);
    da_projections_free(p);
  }
  unlink(path);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_eig),
      cmocka_unit_test(test_svd),
      cmocka_unit_test(test_synthetic_subspace),
      cmocka_unit_test(test_optimal_beats_pca),
      cmocka_unit_test(test_write_load),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
