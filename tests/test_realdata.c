/* SPDX-License-Identifier: Apache-2.0 */
/* Accuracy on real models' attention inputs, two committed captures
 * (tools/CAPTURE_FORMAT.md, made by tools/capture.py):
 *  - tests/data/minilm-l6-small.dattncap: all-MiniLM-L6-v2, a BERT encoder
 *    (format version 1: 6 layers x 12 heads x head_dim 32, 8 texts, no mask,
 *    f16; tools/capture.py --small);
 *  - tests/data/smollm2-small.dattncap: SmolLM2-135M-Instruct, a Llama
 *    decoder (format version 2: GQA 9 query / 3 kv heads, head_dim 64,
 *    causal, a few layers, one entry whose queries are the last rows of a
 *    longer key prefix, seq_q < seq_k; tools/capture.py --model smollm2
 *    --small).
 * Against a float64 exact reference with the capture's own kv_heads, causal
 * mask, seq_q x seq_k and scale (tests/ref.c):
 *  - exact attention (G=1) meets the f32 bound on every backend present;
 *  - DistrAttention G=2 with the library's defaults (da_attn_desc_init:
 *    fusion, 16 hash bits, block 128; seed 0) stays below the capture's
 *    bound, set from its measured error, on every backend present, so a
 *    regression of the hashing, the grouping or the default fusion fails;
 *  - the default fusion is not worse than the other one at G=2, 4 and 8
 *    (CPU).
 * And the demo capture data/smollm2-demo.dattncap (installed in
 * $(pkgdatadir)) loads and is what tools/CAPTURE_FORMAT.md says: SmolLM2,
 * one causal GQA entry of 1024 tokens, 3 layers, f16; exact attention on
 * its last layer meets the f32 bound on the CPU.
 * The files are DA_REALDATA_FILE, DA_REALDATA_SMOLLM2_FILE and
 * DA_REALDATA_DEMO_FILE (the environment overrides the compiled-in paths),
 * read by tools/capture_io.c, the reader `distrattn eval` uses. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "calib.h"
#include "capture_io.h"
#include "ref.h"
#include "testutil.h"

#ifndef DA_REALDATA_FILE
#define DA_REALDATA_FILE "tests/data/minilm-l6-small.dattncap"
#endif
#ifndef DA_REALDATA_SMOLLM2_FILE
#define DA_REALDATA_SMOLLM2_FILE "tests/data/smollm2-small.dattncap"
#endif
#ifndef DA_REALDATA_DEMO_FILE
#define DA_REALDATA_DEMO_FILE "data/smollm2-demo.dattncap"
#endif

#define REALDATA_EXACT_BOUND 1e-5

typedef struct {
  const char *name;     /* for messages */
  const char *env;      /* the environment variable that overrides path */
  const char *path;     /* compiled-in path */
  double g2_bound;      /* G=2, defaults, seed 0 */
  double g2_measured;   /* what the bound was set from (messages) */
  capture cap;          /* tools/capture_io.c: per entry, per layer: Q, K, V, f32 */
  double *ref;          /* per entry, per layer: exact O, float64 */
  int loaded;
} realdata;

/* MiniLM: measured 0.466 (NORM; MEAN gives 0.503, seeds 1-5 of NORM
 * 0.450-0.478). SmolLM2: measured 0.437 (NORM; MEAN gives 0.598, seeds 1-5 of
 * NORM 0.411-0.458; per layer 0.175, 0.561, 0.420 for layers 0, 14, 29). */
static realdata g_rd[3] = {
    {"minilm-l6-small", "DA_REALDATA_FILE", DA_REALDATA_FILE, 0.50, 0.466, {0}, NULL, 0},
    {"smollm2-small", "DA_REALDATA_SMOLLM2_FILE", DA_REALDATA_SMOLLM2_FILE, 0.50, 0.437, {0},
     NULL, 0},
    /* the demo capture: only the projection strategy's cases use it whole */
    {"smollm2-demo", "DA_REALDATA_DEMO_FILE", DA_REALDATA_DEMO_FILE, 0.0, 0.0, {0}, NULL, 0},
};

static const char *realdata_path(const realdata *rd) {
  const char *p = getenv(rd->env);
  return p && *p ? p : rd->path;
}

/* Loads a capture (through the one DATTNCAP reader, the one `distrattn
 * eval` uses) and its float64 exact reference once. */
static realdata *load_realdata(int which) {
  realdata *rd = &g_rd[which];
  if (rd->loaded) return rd;
  const char *path = realdata_path(rd);
  char why[512];
  const capture *c = &rd->cap;
  if (capture_load_file(path, &rd->cap, why, sizeof why))
    fail_msg("%s (%s): %s", path, rd->env, why);
  size_t rows = 0;
  for (unsigned s = 0; s < c->n_sent; s++) rows += c->seq_q[s];
  rd->ref = malloc(sizeof(double) * rows * c->layers * c->heads * c->head_dim);
  assert_non_null(rd->ref);
  size_t ro = 0;
  for (unsigned s = 0; s < c->n_sent; s++) {
    da_attn_desc d;
    da_attn_desc_init(&d);
    capture_desc(c, s, &d);
    size_t n = (size_t)c->heads * c->seq_q[s] * c->head_dim;
    for (unsigned l = 0; l < c->layers; l++, ro += n) {
      const float *q, *k, *v;
      capture_qkv(c, s, l, &q, &k, &v);
      ref_attention(&d, q, k, v, rd->ref + ro);
    }
  }
  rd->loaded = 1;
  return rd;
}

/* ||O - ref|| / ||ref|| over every entry, layer and head of a capture; the
 * per-layer errors in layer_err (when not NULL, [layers]). */
static double realdata_error(int which, da_backend be, int G, int override_fusion,
                             da_fusion fusion, double *layer_err) {
  const realdata *rd = load_realdata(which);
  const capture *r = &rd->cap;
  const double *ref = rd->ref;
  da_context *ctx = NULL;
  TU_CHECK(ctx, da_context_create(&ctx, be, -1));
  size_t max_n = 0;
  for (unsigned s = 0; s < r->n_sent; s++)
    if ((size_t)r->heads * r->seq_q[s] * r->head_dim > max_n)
      max_n = (size_t)r->heads * r->seq_q[s] * r->head_dim;
  float *o = malloc(sizeof(float) * max_n);
  double *le2 = calloc(r->layers, sizeof(double)), *lr2 = calloc(r->layers, sizeof(double));
  assert_non_null(o);
  assert_non_null(le2);
  assert_non_null(lr2);
  double e2 = 0.0, r2 = 0.0;
  size_t ro = 0;
  for (unsigned s = 0; s < r->n_sent; s++) {
    da_attn_desc d;
    da_attn_desc_init(&d);
    capture_desc(r, s, &d);
    d.group_size = G, d.seed = 0;
    if (override_fusion) d.fusion = fusion;
    da_plan *p = NULL;
    TU_CHECK(ctx, da_plan_create(ctx, &d, &p));
    size_t n = (size_t)r->heads * r->seq_q[s] * r->head_dim;
    for (unsigned l = 0; l < r->layers; l++, ro += n) {
      const float *q, *k, *v;
      capture_qkv(r, s, l, &q, &k, &v);
      TU_CHECK(ctx, da_attention_host(p, q, k, v, o));
      for (size_t i = 0; i < n; i++) {
        if (!isfinite(o[i])) fail_msg("%s: non-finite output, entry %u layer %u", rd->name, s, l);
        double df = (double)o[i] - ref[ro + i];
        le2[l] += df * df;
        lr2[l] += ref[ro + i] * ref[ro + i];
      }
    }
    da_plan_destroy(p);
  }
  for (unsigned l = 0; l < r->layers; l++) {
    e2 += le2[l], r2 += lr2[l];
    if (layer_err) layer_err[l] = sqrt(le2[l] / lr2[l]);
  }
  free(o), free(le2), free(lr2);
  da_context_destroy(ctx);
  return sqrt(e2 / r2);
}

typedef struct {
  da_backend be;
  int which; /* index in g_rd */
} rd_case;

#define RC(state) ((const rd_case *)*(state))

static void test_exact(void **state) {
  const rd_case *rc = RC(state);
  TU_NEED_BACKEND(rc->be);
  double e = realdata_error(rc->which, rc->be, 1, 0, DA_FUSE_MEAN, NULL);
  if (getenv("DA_TEST_VERBOSE")) fprintf(stderr, "%s exact: %.3e\n", g_rd[rc->which].name, e);
  if (!(e <= REALDATA_EXACT_BOUND))
    fail_msg("exact attention on %s: error %.3e > %.1e", g_rd[rc->which].name, e,
             REALDATA_EXACT_BOUND);
}

static void test_g2_default(void **state) {
  const rd_case *rc = RC(state);
  TU_NEED_BACKEND(rc->be);
  const realdata *rd = load_realdata(rc->which);
  double *le = calloc(rd->cap.layers, sizeof(double));
  assert_non_null(le);
  double e = realdata_error(rc->which, rc->be, 2, 0, DA_FUSE_MEAN, le);
  if (getenv("DA_TEST_VERBOSE")) {
    fprintf(stderr, "%s G=2 default: %.4f (layers", rd->name, e);
    for (unsigned l = 0; l < rd->cap.layers; l++) fprintf(stderr, " %.4f", le[l]);
    fprintf(stderr, ")\n");
  }
  free(le);
  if (!(e <= rd->g2_bound))
    fail_msg("G=2 with the defaults on %s: error %.4f > %.2f (measured %.3f)", rd->name, e,
             rd->g2_bound, rd->g2_measured);
}

static void test_default_fusion_best(void **state) {
  const rd_case *rc = RC(state);
  da_attn_desc d;
  da_attn_desc_init(&d);
  da_fusion other = d.fusion == DA_FUSE_NORM ? DA_FUSE_MEAN : DA_FUSE_NORM;
  static const int gs[] = {2, 4, 8};
  for (int i = 0; i < 3; i++) {
    double ed = realdata_error(rc->which, DA_BACKEND_CPU, gs[i], 0, DA_FUSE_MEAN, NULL);
    double eo = realdata_error(rc->which, DA_BACKEND_CPU, gs[i], 1, other, NULL);
    if (getenv("DA_TEST_VERBOSE"))
      fprintf(stderr, "%s G=%d: default %s %.4f, %s %.4f\n", g_rd[rc->which].name, gs[i],
              tu_fusion_name(d.fusion), ed, tu_fusion_name(other), eo);
    if (!(ed <= eo))
      fail_msg("G=%d: the default fusion %s (%.4f) is worse than %s (%.4f) on %s", gs[i],
               tu_fusion_name(d.fusion), ed, tu_fusion_name(other), eo, g_rd[rc->which].name);
  }
}

/* The decoder capture is what it claims to be, so that the cases above run
 * GQA, the causal mask and seq_q != seq_k for real. */
static void test_smollm2_shape(void **state) {
  (void)state;
  const capture *c = &load_realdata(1)->cap;
  assert_int_equal(c->version, 2);
  assert_int_equal(c->heads, 9);
  assert_int_equal(c->kv_heads, 3);
  assert_int_equal(c->head_dim, 64);
  assert_int_equal(c->causal, 1);
  if (strstr(c->model, "SmolLM2") == NULL) fail_msg("model field \"%s\"", c->model);
  unsigned mixed = 0, same = 0;
  for (unsigned s = 0; s < c->n_sent; s++) {
    if (c->seq_q[s] < c->seq_k[s]) mixed++;
    if (c->seq_q[s] == c->seq_k[s]) same++;
  }
  if (!mixed || !same)
    fail_msg("%u entries with seq_q < seq_k, %u with seq_q = seq_k: want both", mixed, same);
}

/* The demo capture: its shape, and exact attention on its last layer. */
static void test_demo_capture(void **state) {
  (void)state;
  const char *path = getenv("DA_REALDATA_DEMO_FILE");
  if (!path || !*path) path = DA_REALDATA_DEMO_FILE;
  capture c;
  char why[512];
  if (capture_load_file(path, &c, why, sizeof why)) fail_msg("%s: %s", path, why);
  assert_int_equal(c.version, 2);
  assert_int_equal(c.dtype, 1);
  assert_int_equal(c.n_sent, 1);
  assert_int_equal(c.seq_q[0], 1024);
  assert_int_equal(c.seq_k[0], 1024);
  assert_int_equal(c.layers, 3);
  assert_int_equal(c.heads, 9);
  assert_int_equal(c.kv_heads, 3);
  assert_int_equal(c.head_dim, 64);
  assert_int_equal(c.causal, 1);
  if (strstr(c.model, "SmolLM2") == NULL) fail_msg("model field \"%s\"", c.model);
  da_attn_desc d;
  da_attn_desc_init(&d);
  capture_desc(&c, 0, &d);
  size_t n = (size_t)c.heads * c.seq_q[0] * c.head_dim;
  double *ref = malloc(sizeof(double) * n);
  float *o = malloc(sizeof(float) * n);
  assert_non_null(ref);
  assert_non_null(o);
  const float *q, *k, *v;
  capture_qkv(&c, 0, c.layers - 1, &q, &k, &v);
  ref_attention(&d, q, k, v, ref);
  da_context *ctx = NULL;
  TU_CHECK(ctx, da_context_create(&ctx, DA_BACKEND_CPU, -1));
  da_plan *p = NULL;
  TU_CHECK(ctx, da_plan_create(ctx, &d, &p));
  TU_CHECK(ctx, da_attention_host(p, q, k, v, o));
  double e2 = 0.0, r2 = 0.0;
  for (size_t i = 0; i < n; i++) {
    double df = (double)o[i] - ref[i];
    e2 += df * df, r2 += ref[i] * ref[i];
  }
  double e = sqrt(e2 / r2);
  if (getenv("DA_TEST_VERBOSE")) fprintf(stderr, "demo capture, last layer, exact: %.3e\n", e);
  if (!(e <= REALDATA_EXACT_BOUND))
    fail_msg("exact attention on the demo capture's last layer: error %.3e > %.1e", e,
             REALDATA_EXACT_BOUND);
  da_plan_destroy(p);
  da_context_destroy(ctx);
  free(ref), free(o);
  capture_free(&c);
}

/* The projection strategy (SPEC 1c) calibrated on one SmolLM2 capture
 * (tools/calib.c, as `distrattn calibrate`) and run on the other: the
 * error over every layer, entry and head of the evaluated capture, layer N
 * with layer N's projections (both files hold model layers 0, 14, 29). */
/* The error of the projection strategy with `proj` ([layers][heads][2]
 * [head_dim][rank], layer N for the capture's layer N) over every layer,
 * entry and head of capture `ev`, and per layer in layer_err. */
static double proj_error(int ev, const float *proj, int rank, double *layer_err) {
  const realdata *rd = load_realdata(ev);
  const capture *c = &rd->cap;
  const unsigned L = c->layers, H = c->heads, D = c->head_dim;
  const size_t per = (size_t)D * rank;
  da_context *ctx = NULL;
  TU_CHECK(ctx, da_context_create(&ctx, DA_BACKEND_CPU, -1));
  size_t max_n = 0;
  for (unsigned s = 0; s < c->n_sent; s++)
    if ((size_t)H * c->seq_q[s] * D > max_n) max_n = (size_t)H * c->seq_q[s] * D;
  float *o = malloc(sizeof(float) * max_n);
  double *le2 = calloc(L, sizeof(double)), *lr2 = calloc(L, sizeof(double));
  assert_true(o && le2 && lr2);
  size_t ro = 0;
  for (unsigned s = 0; s < c->n_sent; s++) {
    da_attn_desc d;
    da_attn_desc_init(&d);
    capture_desc(c, s, &d);
    size_t n = (size_t)H * c->seq_q[s] * D;
    for (unsigned l = 0; l < L; l++, ro += n) {
      da_attn_ext x;
      da_attn_ext_init(&x);
      x.strategy = DA_STRATEGY_PROJECTION, x.rank = rank;
      x.proj = proj + (size_t)l * H * 2 * per;
      da_plan *p = NULL;
      TU_CHECK(ctx, da_plan_create_ext(ctx, &d, &x, &p));
      const float *q, *k, *v;
      capture_qkv(c, s, l, &q, &k, &v);
      TU_CHECK(ctx, da_attention_host(p, q, k, v, o));
      for (size_t i = 0; i < n; i++) {
        if (!isfinite(o[i])) fail_msg("projection: non-finite output, entry %u layer %u", s, l);
        double df = (double)o[i] - rd->ref[ro + i];
        le2[l] += df * df, lr2[l] += rd->ref[ro + i] * rd->ref[ro + i];
      }
      da_plan_destroy(p);
    }
  }
  double e2 = 0, r2 = 0;
  for (unsigned l = 0; l < L; l++) {
    e2 += le2[l], r2 += lr2[l];
    if (layer_err) layer_err[l] = sqrt(le2[l] / lr2[l]);
  }
  free(o), free(le2), free(lr2);
  da_context_destroy(ctx);
  return sqrt(e2 / r2);
}

/* The projection strategy (SPEC 1c) calibrated on one SmolLM2 capture
 * (tools/calib.c, as `distrattn calibrate`) and run on the other: the
 * error over every layer, entry and head of the evaluated capture, layer N
 * with layer N's projections (both files hold model layers 0, 14, 29). */
static double proj_cross_error(int cal, int ev, calib_method m, int rank, double *layer_err) {
  const capture *cc = &load_realdata(cal)->cap;
  const capture *c = &load_realdata(ev)->cap;
  assert_int_equal(cc->layers, c->layers);
  assert_int_equal(cc->heads, c->heads);
  assert_int_equal(cc->head_dim, c->head_dim);
  const unsigned L = c->layers, H = c->heads, D = c->head_dim;
  const size_t per = (size_t)D * rank;
  float *proj = malloc(sizeof(float) * L * H * 2 * per);
  double *Sq = malloc(sizeof(double) * D * D), *Sk = malloc(sizeof(double) * D * D);
  assert_true(proj && Sq && Sk);
  for (unsigned l = 0; l < L; l++)
    for (unsigned h = 0; h < H; h++) {
      double nq, nk;
      calib_moments(cc, cc->n_sent, l, h, Sq, &nq, Sk, &nk);
      float *A = proj + ((size_t)l * H + h) * 2 * per;
      assert_int_equal(calib_head((int)D, rank, m, Sq, nq, Sk, nk, A, A + per), 0);
    }
  double e = proj_error(ev, proj, rank, layer_err);
  free(proj), free(Sq), free(Sk);
  return e;
}

/* Pinned (measured on x86-64, AVX-512 and portable kernels alike to 1e-4;
 * README "Grouping strategies"): calibrated on smollm2-small (5 short
 * texts, positions < 138), evaluated on the 1024-token demo; and the other
 * way round. A bound is the measured value + 0.01: the calibration is
 * deterministic double arithmetic, so a change beyond that is a change of
 * the strategy, the calibration or the kernels. */
typedef struct {
  int cal, ev;
  calib_method m;
  int rank;
  double measured;
} proj_pin;

static void test_proj_pinned(void **state) {
  (void)state;
  static const proj_pin pins[] = {
      {1, 2, CALIB_OPTIMAL, 32, 0.5982}, {1, 2, CALIB_PCA, 32, 0.7060},
      {1, 2, CALIB_OPTIMAL, 16, 0.7467}, {1, 2, CALIB_PCA, 16, 0.7892},
      {2, 1, CALIB_OPTIMAL, 32, 0.2416}, {2, 1, CALIB_OPTIMAL, 16, 0.4051},
  };
  for (size_t i = 0; i < sizeof pins / sizeof pins[0]; i++) {
    const proj_pin *pp = &pins[i];
    double le[8];
    double e = proj_cross_error(pp->cal, pp->ev, pp->m, pp->rank, le);
    if (getenv("DA_TEST_VERBOSE"))
      fprintf(stderr, "projection %s r=%d, calibrated on %s, on %s: %.4f (layers %.4f %.4f %.4f)\n",
              pp->m == CALIB_PCA ? "pca" : "optimal", pp->rank, g_rd[pp->cal].name,
              g_rd[pp->ev].name, e, le[0], le[1], le[2]);
    if (!(e <= pp->measured + 0.01))
      fail_msg("projection %s r=%d calibrated on %s, on %s: error %.4f > %.4f (measured %.4f)",
               pp->m == CALIB_PCA ? "pca" : "optimal", pp->rank, g_rd[pp->cal].name,
               g_rd[pp->ev].name, e, pp->measured + 0.01, pp->measured);
  }
}

/* Issue 16 item 5, zero-shot: the projections of the zero-shot runs
 * themselves, committed under DA_REALDATA_PRJ_DIR (tests/data), each
 * calibrated on text that is not the text evaluated here:
 *  - minilm-optimal-r16.prj, minilm-optimal-r8.prj: `tools/e2e.py --zeroshot
 *    --keep-prj DIR` (all 6 layers; calibrated on docstrings and prose that
 *    are not among tools/capture.py's texts), evaluated on
 *    minilm-l6-small (8 of those texts);
 *  - smollm2-optimal-r32.prj, smollm2-optimal-r16.prj: `tools/zeroshot.py
 *    --keep-prj DIR` (model layers 0, 14, 29 of the projections calibrated
 *    on 3072 tokens of Python docstrings), evaluated on smollm2-small and
 *    on the 1024-token demo (English sentences and prose).
 * And the paper's per-tile LSH, MEAN and NORM at G=2 and 4 (defaults
 * otherwise, seed 0) on the same captures. Each total and each layer's
 * error is pinned at its measured value + 0.01 (x86-64, AVX-512 kernels;
 * README "Accuracy on real models, zero-shot" has the end-to-end figures
 * these runs gave). */
#ifndef DA_REALDATA_PRJ_DIR
#define DA_REALDATA_PRJ_DIR "tests/data"
#endif

typedef struct {
  int which;        /* capture evaluated: index in g_rd */
  const char *prj;  /* file under DA_REALDATA_PRJ_DIR, or NULL: LSH */
  int G;            /* LSH: group size */
  da_fusion fusion; /* LSH: fusion */
  double total;     /* measured */
  double layer[6];  /* measured, per layer of the capture */
} zs_pin;

static float *load_prj_file(const char *name, const capture *c, int *rank) {
  const char *dir = getenv("DA_REALDATA_PRJ_DIR");
  if (!dir || !*dir) dir = DA_REALDATA_PRJ_DIR;
  char path[1024];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  float *all = NULL;
  size_t per = 0;
  for (unsigned l = 0; l < c->layers; l++) {
    float *pj = NULL;
    int layers, heads, hd;
    if (da_projections_load(path, (int)l, &pj, &layers, &heads, &hd, rank) != DA_SUCCESS)
      fail_msg("%s: %s", path, da_context_last_error(NULL));
    assert_int_equal(layers, c->layers);
    assert_int_equal(heads, c->heads);
    assert_int_equal(hd, c->head_dim);
    if (!all) {
      per = (size_t)heads * 2 * hd * *rank;
      all = malloc(sizeof(float) * per * c->layers);
      assert_non_null(all);
    }
    memcpy(all + l * per, pj, sizeof(float) * per);
    da_projections_free(pj);
  }
  return all;
}

static void test_zeroshot_pinned(void **state) {
  (void)state;
  static const zs_pin pins[] = {
      {0, NULL, 2, DA_FUSE_MEAN, 0.5034, {0.4157, 0.6526, 0.6043, 0.5095, 0.4592, 0.3900}}, /* minilm-l6-small */
      {0, NULL, 2, DA_FUSE_NORM, 0.4658, {0.4020, 0.6209, 0.5651, 0.4509, 0.4066, 0.3603}}, /* minilm-l6-small */
      {0, NULL, 4, DA_FUSE_MEAN, 0.6870, {0.5942, 0.8229, 0.8002, 0.6943, 0.6884, 0.5501}}, /* minilm-l6-small */
      {0, NULL, 4, DA_FUSE_NORM, 0.6434, {0.5821, 0.7917, 0.7610, 0.6273, 0.6216, 0.5113}}, /* minilm-l6-small */
      {0, "minilm-optimal-r16.prj", 0, DA_FUSE_MEAN, 0.2328, {0.2342, 0.3045, 0.2573, 0.2385, 0.2216, 0.1659}}, /* minilm-l6-small */
      {0, "minilm-optimal-r8.prj", 0, DA_FUSE_MEAN, 0.3897, {0.3613, 0.5446, 0.4643, 0.3774, 0.3472, 0.2640}}, /* minilm-l6-small */
      {1, NULL, 2, DA_FUSE_MEAN, 0.5980, {0.2151, 0.8922, 0.5515}}, /* smollm2-small */
      {1, NULL, 2, DA_FUSE_NORM, 0.4374, {0.1752, 0.5607, 0.4200}}, /* smollm2-small */
      {1, NULL, 4, DA_FUSE_MEAN, 0.6974, {0.3009, 1.0010, 0.6509}}, /* smollm2-small */
      {1, NULL, 4, DA_FUSE_NORM, 0.5738, {0.2770, 0.6991, 0.5568}}, /* smollm2-small */
      {1, "smollm2-optimal-r32.prj", 0, DA_FUSE_MEAN, 0.2412, {0.0446, 0.2825, 0.2358}}, /* smollm2-small */
      {1, "smollm2-optimal-r16.prj", 0, DA_FUSE_MEAN, 0.4088, {0.1709, 0.4868, 0.3984}}, /* smollm2-small */
      {2, NULL, 2, DA_FUSE_MEAN, 0.6434, {0.2478, 0.8765, 0.6027}}, /* smollm2-demo */
      {2, NULL, 2, DA_FUSE_NORM, 0.4902, {0.1997, 0.6156, 0.4695}}, /* smollm2-demo */
      {2, NULL, 4, DA_FUSE_MEAN, 0.7594, {0.3274, 0.9490, 0.7283}}, /* smollm2-demo */
      {2, NULL, 4, DA_FUSE_NORM, 0.6362, {0.3008, 0.7736, 0.6141}}, /* smollm2-demo */
      {2, "smollm2-optimal-r32.prj", 0, DA_FUSE_MEAN, 0.4635, {0.1028, 0.6114, 0.4382}}, /* smollm2-demo */
      {2, "smollm2-optimal-r16.prj", 0, DA_FUSE_MEAN, 0.6290, {0.1953, 0.7862, 0.6032}}, /* smollm2-demo */
  };
  unsigned bad = 0;
  for (size_t i = 0; i < sizeof pins / sizeof pins[0]; i++) {
    const zs_pin *pp = &pins[i];
    const capture *c = &load_realdata(pp->which)->cap;
    double le[8];
    double e;
    char what[128];
    if (pp->prj) {
      int rank = 0;
      float *proj = load_prj_file(pp->prj, c, &rank);
      e = proj_error(pp->which, proj, rank, le);
      free(proj);
      snprintf(what, sizeof what, "projection %s", pp->prj);
    } else {
      e = realdata_error(pp->which, DA_BACKEND_CPU, pp->G, 1, pp->fusion, le);
      snprintf(what, sizeof what, "LSH %s G=%d", tu_fusion_name(pp->fusion), pp->G);
    }
    if (getenv("DA_TEST_VERBOSE")) {
      fprintf(stderr, "{%d, %s%s%s, %d, %s, %.4f, {", pp->which, pp->prj ? "\"" : "",
              pp->prj ? pp->prj : "NULL", pp->prj ? "\"" : "", pp->G,
              pp->fusion == DA_FUSE_NORM ? "DA_FUSE_NORM" : "DA_FUSE_MEAN", e);
      for (unsigned l = 0; l < c->layers; l++) fprintf(stderr, "%s%.4f", l ? ", " : "", le[l]);
      fprintf(stderr, "}}, /* %s */\n", g_rd[pp->which].name);
    }
    if (!(e <= pp->total + 0.01)) {
      fprintf(stderr, "%s on %s: error %.4f > %.4f (measured %.4f)\n", what,
              g_rd[pp->which].name, e, pp->total + 0.01, pp->total);
      bad++;
    }
    for (unsigned l = 0; l < c->layers; l++)
      if (!(le[l] <= pp->layer[l] + 0.01)) {
        fprintf(stderr, "%s on %s, layer %u: error %.4f > %.4f (measured %.4f)\n", what,
                g_rd[pp->which].name, l, le[l], pp->layer[l] + 0.01, pp->layer[l]);
        bad++;
      }
  }
  if (bad) fail_msg("%u zero-shot pins exceeded (above)", bad);
}

static const rd_case mini_cpu = {DA_BACKEND_CPU, 0}, mini_cl = {DA_BACKEND_OPENCL, 0},
                     mini_cuda = {DA_BACKEND_CUDA, 0}, smol_cpu = {DA_BACKEND_CPU, 1},
                     smol_cl = {DA_BACKEND_OPENCL, 1}, smol_cuda = {DA_BACKEND_CUDA, 1};

#define CASE(name, fn, c) {name, fn, NULL, NULL, (void *)&(c)}

int main(void) {
  const struct CMUnitTest tests[] = {
      CASE("cpu: exact on minilm", test_exact, mini_cpu),
      CASE("cpu: G=2 default settings on minilm", test_g2_default, mini_cpu),
      CASE("cpu: the default fusion is the better one on minilm", test_default_fusion_best,
           mini_cpu),
      CASE("opencl: exact on minilm", test_exact, mini_cl),
      CASE("opencl: G=2 default settings on minilm", test_g2_default, mini_cl),
      CASE("cuda: exact on minilm", test_exact, mini_cuda),
      CASE("cuda: G=2 default settings on minilm", test_g2_default, mini_cuda),
      {"smollm2: GQA 9/3, causal, seq_q < seq_k", test_smollm2_shape, NULL, NULL, NULL},
      CASE("cpu: exact on smollm2", test_exact, smol_cpu),
      CASE("cpu: G=2 default settings on smollm2", test_g2_default, smol_cpu),
      CASE("cpu: the default fusion is the better one on smollm2", test_default_fusion_best,
           smol_cpu),
      CASE("opencl: exact on smollm2", test_exact, smol_cl),
      CASE("opencl: G=2 default settings on smollm2", test_g2_default, smol_cl),
      CASE("cuda: exact on smollm2", test_exact, smol_cuda),
      CASE("cuda: G=2 default settings on smollm2", test_g2_default, smol_cuda),
      {"the demo capture: SmolLM2, 1024 tokens, causal, GQA; exact on the CPU", test_demo_capture,
       NULL, NULL, NULL},
      {"cpu: projection strategy, calibrated on one SmolLM2 capture, on the other (pinned)",
       test_proj_pinned, NULL, NULL, NULL},
      {"cpu: zero-shot settings (LSH MEAN/NORM G=2,4; the zero-shot runs' projections), pinned",
       test_zeroshot_pinned, NULL, NULL, NULL},
  };
  int rc = cmocka_run_group_tests(tests, NULL, NULL);
  for (int i = 0; i < 3; i++) {
    capture_free(&g_rd[i].cap);
    free(g_rd[i].ref);
  }
  return rc;
}
