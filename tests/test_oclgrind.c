/* SPDX-License-Identifier: Apache-2.0 */
/* The OpenCL kernels on the Oclgrind simulator, at shapes small enough for an
 * interpreter yet covering every kernel path: exact and G = 2/4/8, MEAN and
 * NORM fusion, causal with seq_q < seq_k and seq_q > seq_k (rows that see no
 * key), GQA, head_dim 1, 59, 64, 128 and 256, f32/f16/bf16, partial hash,
 * row and key tiles, more than one key tile (the online softmax rescale),
 * the fused and the GEMM (CLBlast) algorithms, the device-buffer path.
 * Outputs are compared with the float64 reference (SPEC bounds), f32 outputs
 * with the CPU backend (1e-5) and the permutations with the CPU backend and
 * the reference (exactly).
 *
 * This program is meant to run under the Oclgrind launcher, which checks
 * every kernel for out-of-bounds accesses, data races, uses of uninitialised
 * values and OpenCL API misuse:
 *   oclgrind --data-races --uninitialized --check-api tests/test_oclgrind
 * tests/oclgrind-check.sh does that and fails on any report. The device is
 * the OpenCL device whose name or vendor contains "Oclgrind"; its absence is
 * a failure, never a skip. */
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "cases.h"

static int ocl_index = -1; /* the Oclgrind device's index within the OpenCL backend */

static int find_oclgrind(void) {
  if (ocl_index >= 0) return ocl_index;
  const char *why = NULL;
  if (!da_backend_available(DA_BACKEND_OPENCL, &why)) return -1;
  int n = da_device_count();
  for (int i = 0; i < n; i++) {
    da_device_info info;
    if (da_device_get_info(i, &info) != DA_SUCCESS || info.backend != DA_BACKEND_OPENCL) continue;
    if (strstr(info.name, "Oclgrind") || strstr(info.vendor, "Oclgrind")) {
      ocl_index = info.index;
      break;
    }
  }
  return ocl_index;
}

static da_context *open_oclgrind(void) {
  if (find_oclgrind() < 0) {
    const char *why = NULL;
    int avail = da_backend_available(DA_BACKEND_OPENCL, &why);
    fail_msg("no OpenCL device named Oclgrind (OpenCL backend %s%s%s); run this program under "
             "`oclgrind` (tests/oclgrind-check.sh) with the OpenCL module on "
             "DISTRATTN_BACKEND_PATH",
             avail ? "available" : "absent", why ? ": " : "", why ? why : "");
  }
  da_context *ctx = NULL;
  TU_CHECK(ctx, da_context_create(&ctx, DA_BACKEND_OPENCL, ocl_index));
  return ctx;
}

static da_context *open_cpu(void) {
  da_context *ctx = NULL;
  TU_CHECK(ctx, da_context_create(&ctx, DA_BACKEND_CPU, 0));
  return ctx;
}

/* On the Oclgrind device (CPU type, vector width 4, 32 KiB local memory):
 * hash_block 16 makes 16-row work-groups and partial hash tiles at these
 * lengths; the key tile is 128 (64 for head_dim 256 with G = 8, 16 for
 * head_dim 256 with G = 2), so seq_k 150 and 70 run two key tiles with a
 * partial last one. head_dim 59 and 1 take the hash kernel's scalar tail. */
static const tcase cases[] = {
    /* b h kvh  sq   sk  hd  dtype  causal algo G  fusion  bits block scale */
    /* exact, GQA, causal seq_q < seq_k, two key tiles */
    {1, 2, 1, 17, 150, 64, DA_F32, 1, 0, 1, DA_FUSE_MEAN, 0, 16, 0},
    /* exact, head_dim 1, causal seq_q > seq_k: rows 0..6 see no key */
    {1, 2, 0, 19, 12, 1, DA_BF16, 1, 0, 1, DA_FUSE_MEAN, 0, 16, 0},
    /* exact, head_dim 256, f16, MQA */
    {1, 2, 1, 18, 21, 256, DA_F16, 0, 0, 1, DA_FUSE_MEAN, 0, 16, 0},
    /* G = 2 MEAN, head_dim 59 (scalar tail), causal seq_q > seq_k */
    {1, 1, 0, 24, 9, 59, DA_F16, 1, 0, 2, DA_FUSE_MEAN, 7, 16, 0},
    /* G = 2 NORM, head_dim 256 (key tile 16): several key tiles */
    {1, 1, 0, 20, 37, 256, DA_F32, 1, 0, 2, DA_FUSE_NORM, 16, 16, 0},
    /* G = 4 NORM, head_dim 128, bf16, GQA, 32 hash bits, two key tiles */
    {1, 2, 1, 17, 150, 128, DA_BF16, 0, 0, 4, DA_FUSE_NORM, 32, 16, 0},
    /* G = 8 MEAN, head_dim 256, causal seq_q < seq_k, key tile 64 */
    {1, 1, 0, 17, 70, 256, DA_F32, 1, 0, 8, DA_FUSE_MEAN, 16, 16, 0},
    /* G = 8 NORM, head_dim 59 (last group shorter), hash_block 32 */
    {1, 2, 1, 35, 13, 59, DA_F32, 0, 0, 8, DA_FUSE_NORM, 12, 32, 0.3f},
    /* G = 4 MEAN, head_dim 64, f16, one row in the last hash tile */
    {1, 1, 0, 33, 18, 64, DA_F16, 1, 0, 4, DA_FUSE_MEAN, 1, 16, 0},
};

enum { N_CASES = sizeof cases / sizeof cases[0] };

/* One case, one algorithm: reference, CPU backend and permutations. */
static void run_case(da_context *ocl, da_context *cpu, const tcase *c, da_algo algo, size_t ci) {
  char buf[512];
  da_attn_desc d;
  tcase_desc(c, tu_seed() + 7 * ci, &d);
  d.algo = algo;
  tu_rng rng;
  tu_rng_init(&rng, tu_seed() ^ (0x0C19 + 131 * ci));
  tdata t;
  tdata_init(&t, &d, &rng);
  da_plan *p = NULL, *pc = NULL;
  da_status s = tcase_plan(ocl, &d, &p);
  if (s == DA_ERR_UNSUPPORTED) {
#ifdef HAVE_CLBLAST
    fail_msg("oclgrind: DA_ALGO_GEMM refused although the module is built with CLBlast: %s; %s",
             da_context_last_error(ocl), tu_desc_str(&d, buf, sizeof buf));
#else
    tdata_free(&t); /* a module without CLBlast answers DA_ERR_UNSUPPORTED: right */
    return;
#endif
  }
  TU_CHECK(cpu, da_plan_create(cpu, &d, &pc));
  tdata_reference(&t, p);
  double err = tcase_run_host(ocl, p, &t, "oclgrind");
  double bound = tu_bound(d.dtype);
  tu_note("vs ref", &p->d, err, bound);
  if (!(err <= bound))
    fail_msg("oclgrind: %s: rel. error vs float64 %s reference %.3g > %.3g [seed %llu]",
             tu_desc_str(&p->d, buf, sizeof buf), d.group_size > 1 ? "DistrAttention" : "exact",
             err, bound, (unsigned long long)tu_seed());
  if (d.dtype == DA_F32) {
    size_t bytes = t.nq * sizeof(float);
    float *oc = malloc(bytes);
    assert_non_null(oc);
    tu_poison(oc, bytes);
    TU_CHECK(cpu, da_attention_host(pc, t.q, t.k, t.v, oc));
    double e2 = tu_rel_err_arrays(t.o, oc, DA_F32, t.nq);
    tu_note("vs cpu", &p->d, e2, 1e-5);
    if (!(e2 <= 1e-5))
      fail_msg("oclgrind vs cpu: rel. difference %.3g > 1e-5; %s [seed %llu]", e2,
               tu_desc_str(&p->d, buf, sizeof buf), (unsigned long long)tu_seed());
    free(oc);
  }
  if (d.group_size > 1 && algo == DA_ALGO_FUSED) {
    size_t n = p->perm_count;
    int *perm = malloc(n * sizeof(int)), *cperm = malloc(n * sizeof(int)),
        *ref = malloc(n * sizeof(int));
    assert_non_null(perm);
    assert_non_null(cperm);
    assert_non_null(ref);
    memset(perm, 0xFF, n * sizeof(int));
    TU_CHECK(ocl, da_plan_groups_host(p, t.q, perm));
    TU_CHECK(cpu, da_plan_groups_host(pc, t.q, cperm));
    ref_groups(p, t.q, ref);
    for (size_t i = 0; i < n; i++)
      if (perm[i] != ref[i] || perm[i] != cperm[i])
        fail_msg("oclgrind: perm[%zu] = %d, reference %d, CPU backend %d; %s [seed %llu]", i,
                 perm[i], ref[i], cperm[i], tu_desc_str(&p->d, buf, sizeof buf),
                 (unsigned long long)tu_seed());
    free(perm);
    free(cperm);
    free(ref);
  }
  da_plan_destroy(p);
  da_plan_destroy(pc);
  tdata_free(&t);
}

static void test_device(void **state) {
  (void)state;
  da_context *ctx = open_oclgrind();
  assert_int_equal(da_context_backend(ctx), DA_BACKEND_OPENCL);
  da_context_destroy(ctx);
}

static void test_fused(void **state) {
  (void)state;
  da_context *ocl = open_oclgrind(), *cpu = open_cpu();
  for (size_t i = 0; i < N_CASES; i++) run_case(ocl, cpu, &cases[i], DA_ALGO_FUSED, i);
  da_context_destroy(cpu);
  da_context_destroy(ocl);
}

/* CLBlast's kernels are slow in the simulator: a subset that still covers
 * exact and fused-logits GEMMs, f16/bf16 conversion, causal both ways, GQA,
 * head_dim 1, 59 and 256, padded logits rows (G > 1, partial hash tile). */
static void test_gemm(void **state) {
  (void)state;
  static const size_t pick[] = {1, 2, 3, 6, 7};
  da_context *ocl = open_oclgrind(), *cpu = open_cpu();
  for (size_t i = 0; i < sizeof pick / sizeof pick[0]; i++)
    run_case(ocl, cpu, &cases[pick[i]], DA_ALGO_GEMM, pick[i]);
  da_context_destroy(cpu);
  da_context_destroy(ocl);
}

/* The fused kernel takes head_dim 1..256 (SPEC section 1) at the default
 * hash_block 128 on this device too (128-row work-groups would keep a
 * 128 x head_dim accumulator in 32 KiB of local memory). */
static void test_default_block(void **state) {
  (void)state;
  static const tcase dcases[] = {
      {1, 1, 0, 40, 9, 64, DA_F32, 1, 0, 1, DA_FUSE_MEAN, 0, 0, 0},
      {1, 1, 0, 33, 5, 256, DA_F32, 0, 0, 1, DA_FUSE_MEAN, 0, 0, 0},
      {1, 1, 0, 20, 7, 128, DA_F16, 1, 0, 2, DA_FUSE_NORM, 0, 0, 0},
  };
  da_context *ocl = open_oclgrind(), *cpu = open_cpu();
  for (size_t i = 0; i < sizeof dcases / sizeof dcases[0]; i++)
    run_case(ocl, cpu, &dcases[i], DA_ALGO_FUSED, 100 + i);
  da_context_destroy(cpu);
  da_context_destroy(ocl);
}

/* da_attention on device buffers equals da_attention_host bit for bit, a
 * plan run twice gives the same bits, the inputs stay untouched. */
static void test_buffers(void **state) {
  (void)state;
  const tcase c = {1, 2, 1, 21, 19, 59, DA_BF16, 1, DA_ALGO_FUSED, 2, DA_FUSE_NORM, 9, 16, 0};
  da_context *ctx = open_oclgrind();
  da_attn_desc d;
  tcase_desc(&c, tu_seed() + 999, &d);
  tu_rng rng;
  tu_rng_init(&rng, tu_seed() ^ 0xB0FF);
  tdata t;
  tdata_init(&t, &d, &rng);
  da_plan *p = NULL;
  TU_CHECK(ctx, da_plan_create(ctx, &d, &p));
  size_t es = p->elem_size, qb = t.nq * es;
  void *o1 = malloc(qb), *o2 = malloc(qb), *q2 = malloc(qb);
  assert_non_null(o1);
  assert_non_null(o2);
  assert_non_null(q2);
  tu_poison(o1, qb);
  TU_CHECK(ctx, da_attention_host(p, t.q, t.k, t.v, o1));
  da_buffer *bq = NULL, *bk = NULL, *bv = NULL, *bo = NULL;
  tdata_upload(&t, ctx, &bq, &bk, &bv, &bo);
  tu_poison(o2, qb);
  TU_CHECK(ctx, da_buffer_write(bo, 0, o2, qb));
  for (int rep = 0; rep < 2; rep++) {
    TU_CHECK(ctx, da_attention(p, bq, bk, bv, bo));
    TU_CHECK(ctx, da_context_synchronize(ctx));
    size_t half = (qb / 2) & ~(size_t)3;
    tu_poison(o2, qb);
    TU_CHECK(ctx, da_buffer_read(bo, 0, o2, half));
    TU_CHECK(ctx, da_buffer_read(bo, half, (char *)o2 + half, qb - half));
    if (memcmp(o1, o2, qb) != 0)
      fail_msg("oclgrind: da_attention on buffers (run %d) differs from da_attention_host",
               rep + 1);
  }
  TU_CHECK(ctx, da_buffer_read(bq, 0, q2, qb));
  if (memcmp(q2, t.q, qb) != 0) fail_msg("oclgrind: da_attention changed the q buffer");
  da_buffer_destroy(bq);
  da_buffer_destroy(bk);
  da_buffer_destroy(bv);
  da_buffer_destroy(bo);
  free(o1);
  free(o2);
  free(q2);
  da_plan_destroy(p);
  tdata_free(&t);
  da_context_destroy(ctx);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_device),
      cmocka_unit_test(test_fused),
      cmocka_unit_test(test_gemm),
      cmocka_unit_test(test_default_block),
      cmocka_unit_test(test_buffers),
  };
  return cmocka_run_group_tests_name("oclgrind", tests, NULL, NULL);
}
