/* SPDX-License-Identifier: Apache-2.0 */
/* Accuracy on a real model's attention inputs: the committed capture
 * tests/data/minilm-l6-small.dattncap (all-MiniLM-L6-v2, 6 layers x 12 heads x
 * head_dim 32, 8 texts, f16; tools/CAPTURE_FORMAT.md, made by
 * tools/capture.py --small). Against a float64 exact reference:
 *  - exact attention (G=1) meets the f32 bound;
 *  - DistrAttention G=2 with the library's defaults (da_attn_desc_init:
 *    fusion, 16 hash bits, block 128; seed 0) stays below REALDATA_G2_BOUND,
 *    set from the measured 0.466 (NORM; MEAN gives 0.503, seeds 1-5 of NORM
 *    0.450-0.478), so a regression of the hashing, the grouping or the
 *    default fusion fails;
 *  - the default fusion is not worse than the other one at G=2, 4 and 8.
 * The file is DA_REALDATA_FILE (the environment overrides the compiled-in
 * path), read by tools/capture_io.c, the reader `distrattn eval` uses. Every
 * backend present runs the G=2 bound; the CPU one runs all. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "capture_io.h"
#include "ref.h"
#include "testutil.h"

#ifndef DA_REALDATA_FILE
#define DA_REALDATA_FILE "tests/data/minilm-l6-small.dattncap"
#endif

#define REALDATA_G2_BOUND 0.50
#define REALDATA_EXACT_BOUND 1e-5

typedef struct {
  capture cap; /* tools/capture_io.c: per sentence, per layer: Q, K, V, f32 */
  double *ref; /* per sentence, per layer: exact O, float64 */
} realdata;

static realdata g_rd;
static int g_loaded;

static const char *realdata_path(void) {
  const char *p = getenv("DA_REALDATA_FILE");
  return p && *p ? p : DA_REALDATA_FILE;
}

/* Loads the capture (through the one DATTNCAP reader, the one `distrattn
 * eval` uses) and its float64 exact reference once. */
static void load_realdata(void) {
  if (g_loaded) return;
  const char *path = realdata_path();
  char why[512];
  const capture *c = &g_rd.cap;
  if (capture_load_file(path, &g_rd.cap, why, sizeof why))
    fail_msg("%s (DA_REALDATA_FILE): %s", path, why);
  g_rd.ref = malloc(sizeof(double) * (c->total / 3));
  assert_non_null(g_rd.ref);
  size_t ro = 0;
  for (unsigned s = 0; s < c->n_sent; s++) {
    da_attn_desc d;
    da_attn_desc_init(&d);
    d.batch = 1, d.heads = (int)c->heads, d.seq_q = d.seq_k = (int)c->seq[s];
    d.head_dim = (int)c->head_dim;
    size_t n = (size_t)c->heads * c->seq[s] * c->head_dim;
    for (unsigned l = 0; l < c->layers; l++, ro += n) {
      const float *q = c->data + c->off[s] + (size_t)l * 3 * n;
      ref_attention(&d, q, q + n, q + 2 * n, g_rd.ref + ro);
    }
  }
  g_loaded = 1;
}

/* ||O - ref|| / ||ref|| over every sentence, layer and head of the capture. */
static double realdata_error(da_backend be, int G, int override_fusion, da_fusion fusion) {
  load_realdata();
  const capture *r = &g_rd.cap;
  const double *ref = g_rd.ref;
  da_context *ctx = NULL;
  TU_CHECK(ctx, da_context_create(&ctx, be, -1));
  size_t max_n = 0;
  for (unsigned s = 0; s < r->n_sent; s++)
    if ((size_t)r->heads * r->seq[s] * r->head_dim > max_n)
      max_n = (size_t)r->heads * r->seq[s] * r->head_dim;
  float *o = malloc(sizeof(float) * max_n);
  assert_non_null(o);
  double e2 = 0.0, r2 = 0.0;
  size_t off = 0, ro = 0;
  for (unsigned s = 0; s < r->n_sent; s++) {
    da_attn_desc d;
    da_attn_desc_init(&d);
    d.batch = 1, d.heads = (int)r->heads, d.seq_q = d.seq_k = (int)r->seq[s];
    d.head_dim = (int)r->head_dim, d.group_size = G, d.seed = 0;
    if (override_fusion) d.fusion = fusion;
    da_plan *p = NULL;
    TU_CHECK(ctx, da_plan_create(ctx, &d, &p));
    size_t n = (size_t)r->heads * r->seq[s] * r->head_dim;
    for (unsigned l = 0; l < r->layers; l++, off += 3 * n, ro += n) {
      TU_CHECK(ctx, da_attention_host(p, r->data + off, r->data + off + n, r->data + off + 2 * n, o));
      for (size_t i = 0; i < n; i++) {
        if (!isfinite(o[i])) fail_msg("non-finite output, sentence %u layer %u", s, l);
        double df = (double)o[i] - ref[ro + i];
        e2 += df * df;
        r2 += ref[ro + i] * ref[ro + i];
      }
    }
    da_plan_destroy(p);
  }
  free(o);
  da_context_destroy(ctx);
  return sqrt(e2 / r2);
}

#define BE(state) (*(da_backend *)*(state))

static void test_exact(void **state) {
  TU_NEED_BACKEND(BE(state));
  double e = realdata_error(BE(state), 1, 0, DA_FUSE_MEAN);
  if (getenv("DA_TEST_VERBOSE")) fprintf(stderr, "realdata exact: %.3e\n", e);
  if (!(e <= REALDATA_EXACT_BOUND))
    fail_msg("exact attention on the real capture: error %.3e > %.1e", e, REALDATA_EXACT_BOUND);
}

static void test_g2_default(void **state) {
  TU_NEED_BACKEND(BE(state));
  double e = realdata_error(BE(state), 2, 0, DA_FUSE_MEAN);
  if (getenv("DA_TEST_VERBOSE")) fprintf(stderr, "realdata G=2 default: %.4f\n", e);
  if (!(e <= REALDATA_G2_BOUND))
    fail_msg("G=2 with the defaults on the real capture: error %.4f > %.2f (measured 0.466)", e,
             REALDATA_G2_BOUND);
}

static void test_default_fusion_best(void **state) {
  (void)state;
  da_attn_desc d;
  da_attn_desc_init(&d);
  da_fusion other = d.fusion == DA_FUSE_NORM ? DA_FUSE_MEAN : DA_FUSE_NORM;
  static const int gs[] = {2, 4, 8};
  for (int i = 0; i < 3; i++) {
    double ed = realdata_error(DA_BACKEND_CPU, gs[i], 0, DA_FUSE_MEAN);
    double eo = realdata_error(DA_BACKEND_CPU, gs[i], 1, other);
    if (getenv("DA_TEST_VERBOSE"))
      fprintf(stderr, "realdata G=%d: default %s %.4f, %s %.4f\n", gs[i], tu_fusion_name(d.fusion),
              ed, tu_fusion_name(other), eo);
    if (!(ed <= eo))
      fail_msg("G=%d: the default fusion %s (%.4f) is worse than %s (%.4f) on the real capture",
               gs[i], tu_fusion_name(d.fusion), ed, tu_fusion_name(other), eo);
  }
}

static da_backend be_cpu = DA_BACKEND_CPU, be_cl = DA_BACKEND_OPENCL, be_cuda = DA_BACKEND_CUDA;

int main(void) {
  const struct CMUnitTest tests[] = {
      {"cpu: exact on the real capture", test_exact, NULL, NULL, &be_cpu},
      {"cpu: G=2 default settings on the real capture", test_g2_default, NULL, NULL, &be_cpu},
      {"cpu: the default fusion is the better one", test_default_fusion_best, NULL, NULL, &be_cpu},
      {"opencl: G=2 default settings on the real capture", test_g2_default, NULL, NULL, &be_cl},
      {"cuda: G=2 default settings on the real capture", test_g2_default, NULL, NULL, &be_cuda},
  };
  int rc = cmocka_run_group_tests(tests, NULL, NULL);
  capture_free(&g_rd.cap);
  free(g_rd.ref);
  return rc;
}
