/* SPDX-License-Identifier: Apache-2.0 */
/* SPEC section 1 steps 1-6 on hand-worked cases: the projections' generator,
 * hashing, inverse Gray keys, ordering, groups and fusion weights. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

/* ---------------------------------------------------------- projections */

static void test_splitmix64_known(void **state) {
  (void)state;
  /* the standard splitmix64 sequence from state 0 */
  const uint64_t want[4] = {UINT64_C(0xe220a8397b1dcdaf), UINT64_C(0x6e789e6aa1b965f4),
                            UINT64_C(0x06c45d188009454f), UINT64_C(0xf88bb8a8724c81ec)};
  for (int i = 0; i < 4; i++)
    if (da_splitmix64(0, (uint64_t)i) != want[i])
      fail_msg("da_splitmix64(0, %d) = 0x%016llx, want 0x%016llx", i,
               (unsigned long long)da_splitmix64(0, (uint64_t)i), (unsigned long long)want[i]);
}

/* The contract: these values are what every plan with seed 0 hashes with. */
static void test_projections_pinned(void **state) {
  (void)state;
  static const float seed0[16] = {
      -0x1.cf9fbap-2f, 0x1.53470ep+1f, -0x1.fa2a52p-1f, 0x1.028596p-2f,
      0x1.99992ep+0f,  0x1.81fae2p-4f, -0x1.11c126p+0f, -0x1.a66ed8p-1f,
      0x1.c96ab4p-4f,  0x1.fc93e8p-1f, -0x1.31ebcp-2f,  -0x1.75eb46p-3f,
      -0x1.e9ff86p-2f, -0x1.b7f93p-6f, 0x1.b99744p-1f,  0x1.22f928p-4f,
  };
  static const float seed_x[4] = {0x1.1e61f2p+0f, -0x1.344794p+0f, 0x1.6ca58p+1f,
                                  -0x1.92434p-1f};
  float R[16];
  /* element i = b * hash_block + r depends on i and the seed only */
  const int shapes[3][2] = {{2, 8}, {1, 16}, {4, 4}};
  for (int s = 0; s < 3; s++) {
    memset(R, 0, sizeof R);
    da_make_projections(0, shapes[s][0], shapes[s][1], R);
    for (int i = 0; i < 16; i++)
      if (memcmp(&R[i], &seed0[i], 4) != 0)
        fail_msg("seed 0, %dx%d: R[%d] = %a, want %a", shapes[s][0], shapes[s][1], i,
                 (double)R[i], (double)seed0[i]);
  }
  da_make_projections(UINT64_C(0x0123456789abcdef), 1, 4, R);
  for (int i = 0; i < 4; i++)
    if (memcmp(&R[i], &seed_x[i], 4) != 0)
      fail_msg("seed 0x0123456789abcdef: R[%d] = %a, want %a", i, (double)R[i],
               (double)seed_x[i]);
}

/* Box-Muller over splitmix64, as da_internal.h states it, over a longer run. */
static void test_projections_formula(void **state) {
  (void)state;
  const int bits = 32, block = 128;
  float *R = malloc(sizeof(float) * bits * block);
  assert_non_null(R);
  const uint64_t seed = UINT64_C(0xfeedface12345678);
  da_make_projections(seed, bits, block, R);
  for (int i = 0; i < bits * block; i++) {
    double u1 = (double)((da_splitmix64(seed, 2 * (uint64_t)i) >> 11) + 1) * 0x1.0p-53;
    double u2 = (double)(da_splitmix64(seed, 2 * (uint64_t)i + 1) >> 11) * 0x1.0p-53;
    float want = (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586476925286766559 * u2));
    if (memcmp(&R[i], &want, 4) != 0)
      fail_msg("R[%d] = %a, Box-Muller gives %a", i, (double)R[i], (double)want);
  }
  free(R);
}

static void test_projections_deterministic_and_seeded(void **state) {
  (void)state;
  const int bits = 16, block = 256, n = bits * block;
  float *a = malloc(sizeof(float) * n), *b = malloc(sizeof(float) * n),
        *c = malloc(sizeof(float) * n);
  assert_non_null(a);
  assert_non_null(b);
  assert_non_null(c);
  uint64_t seed = tu_seed();
  da_make_projections(seed, bits, block, a);
  da_make_projections(seed, bits, block, b);
  if (memcmp(a, b, sizeof(float) * n) != 0) fail_msg("two calls with seed %llu differ",
                                                     (unsigned long long)seed);
  da_make_projections(seed + 1, bits, block, c);
  int same = 0;
  for (int i = 0; i < n; i++) same += a[i] == c[i];
  if (same > n / 100)
    fail_msg("seeds %llu and %llu share %d of %d values", (unsigned long long)seed,
             (unsigned long long)seed + 1, same, n);
  free(a);
  free(b);
  free(c);
}

static void test_projections_statistics(void **state) {
  (void)state;
  const int bits = 32, block = 1024 * 32; /* 2^20 values */
  const size_t n = (size_t)bits * block;
  float *R = malloc(sizeof(float) * n);
  assert_non_null(R);
  uint64_t seed = tu_seed();
  da_make_projections(seed, bits, block, R);
  double s = 0.0, s2 = 0.0, mx = 0.0;
  for (size_t i = 0; i < n; i++) {
    if (!isfinite(R[i])) fail_msg("seed %llu: R[%zu] = %g", (unsigned long long)seed, i, (double)R[i]);
    s += R[i];
    s2 += (double)R[i] * R[i];
    if (fabs(R[i]) > mx) mx = fabs(R[i]);
  }
  double mean = s / (double)n, var = s2 / (double)n - mean * mean;
  /* standard errors: mean 1e-3, variance 1.4e-3; allow about 7 of them */
  if (!(fabs(mean) < 7e-3) || !(fabs(var - 1.0) < 1e-2) || !(mx < 7.0))
    fail_msg("seed %llu: mean %g, variance %g, max |R| %g over %zu draws",
             (unsigned long long)seed, mean, var, mx, n);
  free(R);
}

/* The plan carries exactly da_make_projections(seed, hash_bits, hash_block). */
static void test_plan_projections(void **state) {
  (void)state;
  da_context *ctx = NULL;
  TU_CHECK(ctx, da_context_create(&ctx, DA_BACKEND_CPU, -1));
  da_attn_desc d;
  da_attn_desc_init(&d);
  d.batch = 1;
  d.heads = 1;
  d.seq_q = d.seq_k = 4;
  d.head_dim = 8;
  d.group_size = 2;
  d.seed = tu_seed();
  const int cfg[3][2] = {{0, 0}, {7, 32}, {32, 1024}};
  for (int i = 0; i < 3; i++) {
    d.hash_bits = cfg[i][0];
    d.hash_block = cfg[i][1];
    da_plan *p = NULL;
    TU_CHECK(ctx, da_plan_create(ctx, &d, &p));
    int bits = d.hash_bits ? d.hash_bits : 16, block = d.hash_block ? d.hash_block : 128;
    assert_int_equal(p->d.hash_bits, bits);
    assert_int_equal(p->d.hash_block, block);
    float *R = malloc(sizeof(float) * bits * block);
    assert_non_null(R);
    da_make_projections(d.seed, bits, block, R);
    if (memcmp(R, p->proj, sizeof(float) * bits * block) != 0)
      fail_msg("plan projections differ from da_make_projections(%llu, %d, %d)",
               (unsigned long long)d.seed, bits, block);
    free(R);
    da_plan_destroy(p);
  }
  da_context_destroy(ctx);
}

/* ------------------------------------------------------------- hashing */

static void test_inverse_gray(void **state) {
  (void)state;
  const uint32_t in[] = {0, 1, 2, 3, 4, 5, 6, 7, 0x80000000u, 0xC0000000u, 0xFFFFFFFFu};
  const uint32_t out[] = {0, 1, 3, 2, 7, 6, 4, 5, 0xFFFFFFFFu, 0x80000000u, 0xAAAAAAAAu};
  for (size_t i = 0; i < sizeof in / sizeof in[0]; i++)
    if (da_inverse_gray(in[i]) != out[i])
      fail_msg("da_inverse_gray(0x%x) = 0x%x, want 0x%x", in[i], da_inverse_gray(in[i]), out[i]);
  /* it inverts the Gray code g(x) = x ^ (x >> 1) */
  tu_rng r;
  tu_rng_init(&r, tu_seed());
  for (int i = 0; i < 10000; i++) {
    uint32_t x = (uint32_t)tu_next(&r);
    if (da_inverse_gray(x ^ (x >> 1)) != x)
      fail_msg("da_inverse_gray(gray(0x%x)) = 0x%x", x, da_inverse_gray(x ^ (x >> 1)));
  }
}

static void check_perm(const int *got, const int *want, int d, const char *what) {
  for (int i = 0; i < d; i++)
    if (got[i] != want[i]) fail_msg("%s: perm[%d] = %d, want %d", what, i, got[i], want[i]);
}

static void test_group_tile(void **state) {
  (void)state;
  int perm[256], want[256];
  {
    const uint32_t codes[4] = {3, 0, 1, 2}; /* keys 2, 0, 1, 3 */
    const int w[4] = {1, 2, 0, 3};
    da_group_tile(codes, 4, perm);
    check_perm(perm, w, 4, "codes {3,0,1,2}");
  }
  {
    /* ties: keys 6, 3, 6, 0, 3 -> equal keys keep column order */
    const uint32_t codes[5] = {5, 2, 5, 0, 2};
    const int w[5] = {3, 1, 4, 0, 2};
    da_group_tile(codes, 5, perm);
    check_perm(perm, w, 5, "codes {5,2,5,0,2}");
  }
  {
    /* top bit: code 0x80000000 has key 0xFFFFFFFF, the largest */
    const uint32_t codes[3] = {0x80000000u, 0xC0000000u, 1};
    const int w[3] = {2, 1, 0};
    da_group_tile(codes, 3, perm);
    check_perm(perm, w, 3, "codes with the top bit");
  }
  {
    uint32_t codes[256];
    for (int c = 0; c < 256; c++) codes[c] = 0x1234u;
    for (int c = 0; c < 256; c++) want[c] = c;
    da_group_tile(codes, 256, perm);
    check_perm(perm, want, 256, "256 equal codes");
    for (int c = 0; c < 256; c++) {
      uint32_t key = 255u - (uint32_t)c;
      codes[c] = key ^ (key >> 1);
      want[c] = 255 - c;
    }
    da_group_tile(codes, 256, perm);
    check_perm(perm, want, 256, "256 descending keys");
  }
}

static void store_q(void *q, da_dtype t, const float *vals, int n) {
  for (int i = 0; i < n; i++) da_store_elem(q, t, (size_t)i, vals[i]);
}

static void test_hash_tile_hand(void **state) {
  (void)state;
  /* 2 rows in a tile, 3 columns, row stride 4; a third row follows that is
   * not part of the tile. R (2 x 4): p_0 = Q[0][c], p_1 = Q[1][c]; the R
   * entries past `rows` would flip every sign if they were used. */
  const float qv[12] = {1, -1, 2, 99, -3, 4, 5, 99, 1, 1, 1, 99};
  const float R[8] = {1, 0, -1e30f, -1e30f, 0, 1, -1e30f, -1e30f};
  const da_dtype types[3] = {DA_F32, DA_F16, DA_BF16};
  for (int ti = 0; ti < 3; ti++) {
    float qbuf[12];
    store_q(qbuf, types[ti], qv, 12);
    uint32_t codes[3] = {99, 99, 99};
    da_hash_tile(qbuf, types[ti], 4, 2, 3, R, 2, 4, codes);
    const uint32_t want[3] = {1, 2, 3};
    for (int c = 0; c < 3; c++)
      if (codes[c] != want[c])
        fail_msg("%s: code[%d] = %u, want %u", tu_dtype_name(types[ti]), c, codes[c], want[c]);
    int perm[3];
    const int wp[3] = {0, 2, 1}; /* keys 1, 3, 2 */
    da_group_tile(codes, 3, perm);
    check_perm(perm, wp, 3, "hand tile");
  }
  /* zero and negative-zero columns hash to 0 (p > 0 is strict) */
  {
    const float z[4] = {0.0f, -0.0f, 0.0f, -0.0f};
    const float Rz[8] = {1, 1, 0, 0, -1, 2, 0, 0};
    uint32_t codes[2] = {7, 7};
    da_hash_tile(z, DA_F32, 2, 2, 2, Rz, 2, 4, codes);
    assert_int_equal(codes[0], 0);
    assert_int_equal(codes[1], 0);
  }
  /* order: p = ((0 + 1) + 1e8) - 1e8 = 0 in f32 (1e8 + 1 rounds to 1e8), so
   * the bit is clear; the reverse order or a pairwise sum would give 1. */
  {
    const float col[3] = {1.0f, 1e8f, -1e8f};
    const float Ro[4] = {1, 1, 1, 0};
    uint32_t code = 5;
    da_hash_tile(col, DA_F32, 1, 3, 1, Ro, 1, 4, &code);
    if (code != 0) fail_msg("sequential order: code %u, want 0", code);
    const float col2[3] = {-1e8f, 1e8f, 1.0f}; /* ((0 - 1e8) + 1e8) + 1 = 1 */
    da_hash_tile(col2, DA_F32, 1, 3, 1, Ro, 1, 4, &code);
    if (code != 1) fail_msg("sequential order (2): code %u, want 1", code);
  }
  /* fused multiply-add: acc = -(1 + 2^-11); then fma(1 + 2^-12, 1 + 2^-12, acc)
   * = 2^-24 > 0 exactly, while a rounded product would give 0. */
  {
    const float col[2] = {1.0f + 0x1p-11f, 1.0f + 0x1p-12f};
    const float Rf[16] = {-1.0f, 1.0f + 0x1p-12f};
    uint32_t code = 7;
    da_hash_tile(col, DA_F32, 1, 2, 1, Rf, 1, 16, &code);
    if (code != 1) fail_msg("fma: code %u, want 1", code);
  }
  /* 32 bits: bit b set iff R[b] . q > 0; R[b][0] = (-1)^b, q = [1] */
  {
    float R32[32 * 16];
    memset(R32, 0, sizeof R32);
    for (int b = 0; b < 32; b++) R32[b * 16] = (b & 1) ? -1.0f : 1.0f;
    const float one = 1.0f;
    uint32_t code = 0;
    da_hash_tile(&one, DA_F32, 1, 1, 1, R32, 32, 16, &code);
    if (code != 0x55555555u) fail_msg("32 bits: code 0x%x, want 0x55555555", code);
  }
}

/* ------------------------------------------------------ groups, fusion */

static void test_fusion_weights(void **state) {
  (void)state;
  /* 3 rows, 7 columns, row stride 8. Column norms: c0 = 5, c2 = 3, the
   * rest 0. Groups of G = 2 under perm {4,2 | 0,1 | 5,6 | 3}: the last group
   * is short; {5,6} and {3} sum to 0 and get 1s; {4,2} and {0,1} keep their
   * norms, zeros included. */
  const float qv[24] = {3, 0, 1, 0, 0, 0, 0, 42, 4, 0, 2, 0, 0, 0, 0, 42, 0, 0, 2, 0, 0, 0, 0, 42};
  const int perm[7] = {4, 2, 0, 1, 5, 6, 3};
  const float want_norm[7] = {5, 0, 3, 1, 0, 1, 1};
  const da_dtype types[3] = {DA_F32, DA_F16, DA_BF16};
  for (int ti = 0; ti < 3; ti++) {
    float qbuf[24];
    store_q(qbuf, types[ti], qv, 24);
    float a[7];
    da_fusion_weights(qbuf, types[ti], 8, 3, 7, perm, 2, DA_FUSE_NORM, a);
    for (int c = 0; c < 7; c++)
      if (a[c] != want_norm[c])
        fail_msg("%s NORM: a[%d] = %g, want %g", tu_dtype_name(types[ti]), c, (double)a[c],
                 (double)want_norm[c]);
    da_fusion_weights(qbuf, types[ti], 8, 3, 7, perm, 2, DA_FUSE_MEAN, a);
    for (int c = 0; c < 7; c++)
      if (a[c] != 1.0f) fail_msg("MEAN: a[%d] = %g, want 1", c, (double)a[c]);
  }
  /* G = 4 on 7 columns: groups {4,2,0,1} and {5,6,3}; the second sums to 0 */
  {
    float a[7];
    const float want4[7] = {5, 0, 3, 1, 0, 1, 1};
    da_fusion_weights(qv, DA_F32, 8, 3, 7, perm, 4, DA_FUSE_NORM, a);
    for (int c = 0; c < 7; c++)
      if (a[c] != want4[c]) fail_msg("G=4 NORM: a[%d] = %g, want %g", c, (double)a[c],
                                     (double)want4[c]);
  }
}

/* head_dim 5, G = 2: 3 groups, the last of one column; a plan's tile groups
 * equal the step functions applied to that tile's rows. */
static void test_plan_tile_groups(void **state) {
  (void)state;
  da_context *ctx = NULL;
  TU_CHECK(ctx, da_context_create(&ctx, DA_BACKEND_CPU, -1));
  da_attn_desc d;
  da_attn_desc_init(&d);
  d.batch = 2;
  d.heads = 3;
  d.seq_q = 40; /* tiles of 16, 16, 8 rows */
  d.seq_k = 9;
  d.head_dim = 5;
  d.group_size = 2;
  d.hash_block = 16;
  d.hash_bits = 5;
  d.fusion = DA_FUSE_NORM;
  d.seed = tu_seed();
  da_plan *p = NULL;
  TU_CHECK(ctx, da_plan_create(ctx, &d, &p));
  assert_int_equal(p->ng, 3);
  assert_int_equal(p->n_tiles, 3);
  assert_int_equal(p->perm_count, 2 * 3 * 3 * 5);
  size_t n = tu_q_elems(&d);
  float *q = malloc(n * sizeof *q);
  int *all = malloc(p->perm_count * sizeof *all);
  assert_non_null(q);
  assert_non_null(all);
  tu_rng r;
  tu_rng_init(&r, tu_seed());
  tu_fill(q, DA_F32, n, &r, 1.0);
  TU_CHECK(ctx, da_plan_groups_host(p, q, all));
  for (int b = 0; b < 2; b++)
    for (int h = 0; h < 3; h++)
      for (int t = 0; t < 3; t++) {
        int rows = t < 2 ? 16 : 8;
        const float *qt = q + (((size_t)b * 3 + h) * 40 + (size_t)t * 16) * 5;
        uint32_t codes[5];
        int perm[5], perm2[5];
        float a[5], a2[5];
        da_hash_tile(qt, DA_F32, 5, rows, 5, p->proj, 5, 16, codes);
        da_group_tile(codes, 5, perm);
        da_fusion_weights(qt, DA_F32, 5, rows, 5, perm, 2, DA_FUSE_NORM, a);
        da_plan_tile_groups(p, q, b, h, t, perm2, a2);
        check_perm(perm2, perm, 5, "da_plan_tile_groups");
        check_perm(all + (((size_t)b * 3 + h) * 3 + t) * 5, perm, 5, "da_plan_groups_host");
        if (memcmp(a, a2, sizeof a) != 0) fail_msg("fusion weights differ (b %d h %d t %d)", b, h, t);
        int seen[5] = {0};
        for (int c = 0; c < 5; c++) {
          assert_true(perm[c] >= 0 && perm[c] < 5);
          seen[perm[c]]++;
        }
        for (int c = 0; c < 5; c++) assert_int_equal(seen[c], 1);
      }
  free(q);
  free(all);
  da_plan_destroy(p);
  da_context_destroy(ctx);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_splitmix64_known),
      cmocka_unit_test(test_projections_pinned),
      cmocka_unit_test(test_projections_formula),
      cmocka_unit_test(test_projections_deterministic_and_seeded),
      cmocka_unit_test(test_projections_statistics),
      cmocka_unit_test(test_plan_projections),
      cmocka_unit_test(test_inverse_gray),
      cmocka_unit_test(test_group_tile),
      cmocka_unit_test(test_hash_tile_hand),
      cmocka_unit_test(test_fusion_weights),
      cmocka_unit_test(test_plan_tile_groups),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
