/* SPDX-License-Identifier: Apache-2.0 */
/* SPEC section 2 invariants of DistrAttention, on every backend present:
 *  - G on Q whose columns come in equal runs of G (MEAN and NORM) equals
 *    exact attention within the exact bound;
 *  - G = 2, NORM, on Q whose paired columns are positive multiples equals
 *    exact attention within the exact bound.
 * Why the runs stay together: columns of a run are equal (or exact power-of-
 * two multiples), so their hash codes and keys are equal; sorting by
 * (key, c) puts columns of equal key in column order, and a run is G
 * consecutive columns starting at a multiple of G, so every key bucket holds
 * whole runs, contiguous and in order. Bucket sizes are then multiples of G
 * and every run lands in one group. The test checks that on the
 * permutations before it checks the error. */
#include <stdlib.h>
#include <string.h>

#include "cases.h"

typedef enum { EQUAL_RUNS, POSITIVE_MULTIPLES } q_kind;

/* Q[b][h][r][c] = base[b][h][r][c / G] * m(c), m(c) = 1 for EQUAL_RUNS, a
 * power of two 2^k (k in -2..2) for POSITIVE_MULTIPLES. */
static void make_q(tdata *t, int G, q_kind kind, tu_rng *rng) {
  const da_attn_desc *d = &t->d;
  int hd = d->head_dim;
  int nrun = (hd + G - 1) / G;
  float *mult = malloc(sizeof(float) * (size_t)hd);
  assert_non_null(mult);
  for (int c = 0; c < hd; c++)
    mult[c] = kind == POSITIVE_MULTIPLES && c % G ? (float)(1 << tu_randint(rng, 0, 4)) / 4.0f
                                                 : 1.0f;
  size_t rows = (size_t)d->batch * d->heads * d->seq_q;
  for (size_t r = 0; r < rows; r++)
    for (int g = 0; g < nrun; g++) {
      float x = (float)tu_normal(rng), tmp;
      /* away from 0, so that x / 4 is no f16 subnormal and scales exactly */
      if (x > -1.0f / 64 && x < 1.0f / 64) x = x < 0 ? -0.5f : 0.5f;
      da_store_elem(&tmp, d->dtype, 0, x); /* quantise through the dtype */
      x = da_load_elem(&tmp, d->dtype, 0);
      for (int c = g * G; c < hd && c < g * G + G; c++)
        da_store_elem(t->q, d->dtype, r * hd + c, x * mult[c]);
    }
  free(mult);
}

static void run_invariant(da_backend be, int G, q_kind kind, da_fusion fusion) {
  TU_NEED_BACKEND(be);
  da_context *ctx = NULL;
  TU_CHECK(ctx, da_context_create(&ctx, be, -1));
  const int hds[2] = {64, 58};
  const da_dtype types[3] = {DA_F32, DA_F16, DA_BF16};
  for (int hi = 0; hi < 2; hi++)
    for (int ti = 0; ti < 3; ti++) {
      int hd = hds[hi];
      if (hd % G) continue;
      tcase c = {1, 2, 1, 200, 150, hd, types[ti], ti == 1, (ti & 1) ? DA_ALGO_GEMM : DA_ALGO_FUSED,
                 G, fusion, 32, 64, 0};
      da_attn_desc d;
      uint64_t s = tu_seed() + (uint64_t)(G * 100 + hi * 10 + ti) + (kind ? 7777 : 0);
      tcase_desc(&c, s, &d);
      tu_rng rng;
      tu_rng_init(&rng, s);
      tdata t;
      tdata_init(&t, &d, &rng);
      make_q(&t, G, kind, &rng);
      da_plan *p = NULL;
      if (tcase_plan(ctx, &d, &p) != DA_SUCCESS) {
        tdata_free(&t);
        continue;
      }
      char buf[512];
      /* every run in one group, on the backend and in the reference */
      int *perm = malloc(sizeof(int) * p->perm_count), *rperm = malloc(sizeof(int) * p->perm_count);
      assert_non_null(perm);
      assert_non_null(rperm);
      TU_CHECK(ctx, da_plan_groups_host(p, t.q, perm));
      ref_groups(p, t.q, rperm);
      for (size_t i = 0; i < p->perm_count; i++) {
        if (perm[i] != rperm[i])
          fail_msg("%s: permutation entry %zu = %d, reference %d; %s [seed %llu]",
                   da_backend_name(be), i, perm[i], rperm[i], tu_desc_str(&p->d, buf, sizeof buf),
                   (unsigned long long)tu_seed());
        size_t pos = i % (size_t)hd;
        if (perm[i] / G != perm[i - pos % G] / G)
          fail_msg("%s: run split across groups: perm entry %zu = %d but its group starts "
                   "with %d; %s [seed %llu]",
                   da_backend_name(be), i, perm[i], perm[i - pos % G],
                   tu_desc_str(&p->d, buf, sizeof buf), (unsigned long long)tu_seed());
      }
      free(perm);
      free(rperm);
      /* equal to exact attention */
      ref_attention(&t.d, t.q, t.k, t.v, t.ref = malloc(sizeof(double) * t.nq));
      double err = tcase_run_host(ctx, p, &t, kind == EQUAL_RUNS ? "equal runs" : "multiples");
      double bound = tu_bound(d.dtype);
      tu_note(da_backend_name(be), &p->d, err, bound);
      if (!(err <= bound))
        fail_msg("%s: %s with %s columns: rel. error vs exact %.3g > %.3g; %s [seed %llu]",
                 da_backend_name(be), tu_fusion_name(fusion),
                 kind == EQUAL_RUNS ? "equal" : "positively collinear", err, bound,
                 tu_desc_str(&p->d, buf, sizeof buf), (unsigned long long)tu_seed());
      da_plan_destroy(p);
      tdata_free(&t);
    }
  da_context_destroy(ctx);
}

#define BE(state) (*(da_backend *)*(state))
static void test_g2_equal_mean(void **state) { run_invariant(BE(state), 2, EQUAL_RUNS, DA_FUSE_MEAN); }
static void test_g2_equal_norm(void **state) { run_invariant(BE(state), 2, EQUAL_RUNS, DA_FUSE_NORM); }
static void test_g2_multiples_norm(void **state) {
  run_invariant(BE(state), 2, POSITIVE_MULTIPLES, DA_FUSE_NORM);
}
static void test_g4_equal_mean(void **state) { run_invariant(BE(state), 4, EQUAL_RUNS, DA_FUSE_MEAN); }
static void test_g8_multiples_norm(void **state) {
  run_invariant(BE(state), 8, POSITIVE_MULTIPLES, DA_FUSE_NORM);
}

static da_backend be_cpu = DA_BACKEND_CPU, be_cl = DA_BACKEND_OPENCL, be_cuda = DA_BACKEND_CUDA;

#define FOR_BACKEND(name, be)                                                                  \
  {name ": G=2 equal pairs, MEAN", test_g2_equal_mean, NULL, NULL, &be},                       \
      {name ": G=2 equal pairs, NORM", test_g2_equal_norm, NULL, NULL, &be},                   \
      {name ": G=2 positive multiples, NORM", test_g2_multiples_norm, NULL, NULL, &be},        \
      {name ": G=4 equal runs, MEAN", test_g4_equal_mean, NULL, NULL, &be},                    \
      {name ": G=8 positive multiples, NORM", test_g8_multiples_norm, NULL, NULL, &be}

int main(void) {
  tu_filter_from_env();
  const struct CMUnitTest tests[] = {
      FOR_BACKEND("cpu", be_cpu),
      FOR_BACKEND("opencl", be_cl),
      FOR_BACKEND("cuda", be_cuda),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
