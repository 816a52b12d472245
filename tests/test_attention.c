/* SPDX-License-Identifier: Apache-2.0 */
/* Exact attention (group_size 1) against the float64 reference on
 * FlashAttention's test shapes, on every backend present: f32 / f16 / bf16,
 * causal and not, GQA and MQA, both algorithms. Fresh inputs every run (the
 * seed is printed on failure; DA_TEST_SEED=... repeats a run). */
#include <stdlib.h>
#include <string.h>

#include "cases.h"

/* algo AUTO in this table: run FUSED and GEMM on the same inputs */
static const tcase small_cases[] = {
    /* b  h kvh  sq   sk   hd  dtype   causal */
    {2, 2, 0, 113, 203, 32, DA_F32, 0, 0, 0, 0, 0, 0, 0},
    {1, 2, 1, 113, 203, 32, DA_F32, 1, 0, 0, 0, 0, 0, 0},
    {1, 4, 2, 128, 217, 59, DA_F32, 1, 0, 0, 0, 0, 0, 0},
    {1, 2, 0, 128, 217, 59, DA_BF16, 0, 0, 0, 0, 0, 0, 0},
    {2, 2, 0, 113, 211, 64, DA_F16, 1, 0, 0, 0, 0, 0, 0},
    {1, 3, 1, 113, 211, 64, DA_BF16, 1, 0, 0, 0, 0, 0, 0},
    {1, 2, 0, 108, 256, 128, DA_F32, 0, 0, 0, 0, 0, 0, 0},
    {1, 2, 0, 108, 256, 128, DA_F16, 1, 0, 0, 0, 0, 0, 0},
    {1, 2, 0, 113, 203, 256, DA_F16, 0, 0, 0, 0, 0, 0, 0},
    {1, 2, 0, 512, 256, 64, DA_F32, 1, 0, 0, 0, 0, 0, 0},
    {1, 2, 1, 512, 256, 32, DA_F16, 1, 0, 0, 0, 0, 0, 0},
    {1, 2, 0, 113, 203, 64, DA_F32, 1, 0, 0, 0, 0, 0, 0.3f},
    {1, 1, 0, 1, 1, 1, DA_F32, 0, 0, 0, 0, 0, 0, 0},
    {1, 1, 0, 3, 1, 5, DA_F32, 1, 0, 0, 0, 0, 0, 0},
    {1, 1, 0, 17, 33, 7, DA_BF16, 1, 0, 0, 0, 0, 0, 0},
};

static const tcase large_cases[] = {
    {1, 2, 0, 256, 512, 256, DA_F32, 1, 0, 0, 0, 0, 0, 0},
    {1, 1, 0, 256, 512, 256, DA_BF16, 0, 0, 0, 0, 0, 0, 0},
    {1, 2, 0, 1024, 1024, 128, DA_F32, 1, 0, 0, 0, 0, 0, 0},
    {1, 2, 0, 1023, 1024, 59, DA_F16, 1, 0, 0, 0, 0, 0, 0},
    {1, 2, 0, 1024, 1023, 32, DA_BF16, 1, 0, 0, 0, 0, 0, 0},
    {1, 1, 0, 1024, 1023, 64, DA_F32, 0, 0, 0, 0, 0, 0, 0},
    {1, 2, 0, 2048, 2048, 64, DA_F32, 1, 0, 0, 0, 0, 0, 0},
};

static void run_cases(da_backend be, const tcase *cases, size_t n, uint64_t salt) {
  TU_NEED_BACKEND(be);
  da_context *ctx = NULL;
  TU_CHECK(ctx, da_context_create(&ctx, be, -1));
  for (size_t i = 0; i < n; i++) {
    tu_rng rng;
    tu_rng_init(&rng, tu_seed() ^ (salt + i * UINT64_C(0x100000001b3)));
    tcase_check_reference(ctx, &cases[i], &rng, tu_seed(), "exact");
  }
  da_context_destroy(ctx);
}

static void test_small(void **state) {
  run_cases(*(da_backend *)*state, small_cases, sizeof small_cases / sizeof small_cases[0], 1);
}

static void test_large(void **state) {
  run_cases(*(da_backend *)*state, large_cases, sizeof large_cases / sizeof large_cases[0], 1000);
}

static da_backend be_cpu = DA_BACKEND_CPU, be_cl = DA_BACKEND_OPENCL, be_cuda = DA_BACKEND_CUDA;

int main(void) {
  tu_filter_from_env();
  const struct CMUnitTest tests[] = {
      {"cpu: exact, small shapes", test_small, NULL, NULL, &be_cpu},
      {"cpu: exact, large shapes", test_large, NULL, NULL, &be_cpu},
      {"opencl: exact, small shapes", test_small, NULL, NULL, &be_cl},
      {"opencl: exact, large shapes", test_large, NULL, NULL, &be_cl},
      {"cuda: exact, small shapes", test_small, NULL, NULL, &be_cuda},
      {"cuda: exact, large shapes", test_large, NULL, NULL, &be_cuda},
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
