/* SPDX-License-Identifier: Apache-2.0 */
/* What a plan runs (da_plan_get_kernel) and the environment's overrides
 * behind it: the core parses every DISTRATTN_* variable of the plan's
 * backend once, when the plan is made (da_overrides, p->ov); the backend
 * decides from those values only, and reports its decision. Checked on the
 * CPU backend and on OpenCL (PoCL in make check): the reported kernel
 * follows the overrides, the backend saw the values the core parsed, a
 * variable changed after the plan was made changes nothing, and a bad value
 * fails the plan with DA_ERR_INVALID_ARG naming the variable. */
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

static const char *const all_vars[] = {
    "DISTRATTN_CPU_DECODE",     "DISTRATTN_CPU_THREADS",       "DISTRATTN_CPU_ISA",
    "DISTRATTN_CL_KERNEL",      "DISTRATTN_CL_TILE",           "DISTRATTN_CL_DECODE",
    "DISTRATTN_CL_DECODE_CHUNK", "DISTRATTN_CUDA_WGMMA",       "DISTRATTN_CUDA_DECODE",
    "DISTRATTN_CUDA_DECODE_CHUNK", "DISTRATTN_CUDA_BWD",       "DISTRATTN_CUDA_BWD_KEYS",
    "DISTRATTN_CUDA_BWD_DQ",    "DISTRATTN_CUDA_BWD_DQ_ROWS"};

static void clear_env(void) {
  for (size_t i = 0; i < sizeof all_vars / sizeof *all_vars; i++) unsetenv(all_vars[i]);
}

/* A shape no backend takes the decode path for by itself (128 query rows
 * per kv head), and a decode shape (4 rows per kv head). */
static da_attn_desc prefill_desc(void) {
  da_attn_desc d = tu_small_desc();
  d.heads = 4, d.kv_heads = 4, d.seq_q = 128, d.seq_k = 96, d.head_dim = 32;
  return d;
}
static da_attn_desc decode_desc(void) {
  da_attn_desc d = tu_small_desc();
  d.heads = 8, d.kv_heads = 2, d.seq_q = 1, d.seq_k = 512, d.head_dim = 64;
  return d;
}

static da_kernel_info kernel_of(const da_plan *p) {
  da_kernel_info k;
  da_kernel_info_init(&k);
  assert_int_equal(da_plan_get_kernel(p, &k), DA_SUCCESS);
  assert_int_equal(k.struct_size, sizeof k);
  return k;
}

/* A plan of d made with the variables of env (name, value pairs; NULL ends)
 * set for its creation only; its kernel in *k. */
static da_plan *plan_env(da_context *ctx, const da_attn_desc *d, const char *const *env,
                         da_kernel_info *k) {
  for (int i = 0; env && env[i]; i += 2) setenv(env[i], env[i + 1], 1);
  da_plan *p = NULL;
  TU_CHECK(ctx, da_plan_create(ctx, d, &p));
  clear_env();
  *k = kernel_of(p);
  return p;
}

/* The expected status and a message naming the variable and its value. */
static void expect_bad(da_context *ctx, const da_attn_desc *d, const char *name, const char *val,
                       da_status want) {
  da_plan *p = NULL;
  setenv(name, val, 1);
  da_status s = da_plan_create(ctx, d, &p);
  clear_env();
  if (s != want || p)
    fail_msg("%s=\"%s\": %s (want %s)", name, val, da_status_string(s), da_status_string(want));
  const char *m = da_context_last_error(ctx);
  if (!strstr(m, name) || !strstr(m, val))
    fail_msg("%s=\"%s\": the message does not name it: \"%s\"", name, val, m);
}

/* ---------------------------------------------------------------- API */

static void test_info_init(void **state) {
  (void)state;
  da_kernel_info k;
  memset(&k, 0xab, sizeof k);
  da_kernel_info_init(&k);
  assert_int_equal(k.struct_size, sizeof k);
  assert_int_equal(k.backend, DA_BACKEND_AUTO);
  assert_string_equal(k.name, "");
  assert_string_equal(k.variant, "");
  assert_int_equal(k.tile_rows, 0);
  assert_int_equal(k.threads, 0);
  assert_true(k.chunk == 0);
  /* a caller built with a struct that ended after name: nothing past it */
  const size_t old = offsetof(da_kernel_info, name) + sizeof k.name;
  memset(&k, 0xab, sizeof k);
  da_kernel_info_init_size(&k, old);
  assert_int_equal(k.struct_size, old);
  assert_int_equal(((const unsigned char *)&k)[old], 0xab);

  da_context *ctx = NULL;
  TU_CHECK(ctx, da_context_create(&ctx, DA_BACKEND_CPU, -1));
  da_attn_desc d = prefill_desc();
  da_plan *p = NULL;
  TU_CHECK(ctx, da_plan_create(ctx, &d, &p));
  assert_int_equal(da_plan_get_kernel(NULL, &k), DA_ERR_INVALID_ARG);
  assert_int_equal(da_plan_get_kernel(p, NULL), DA_ERR_INVALID_ARG);
  da_kernel_info z;
  memset(&z, 0, sizeof z); /* never initialised */
  assert_int_equal(da_plan_get_kernel(p, &z), DA_ERR_INVALID_ARG);
  assert_non_null(strstr(da_context_last_error(ctx), "da_kernel_info_init"));
  /* the old caller's size: filled up to it, not a byte more */
  memset(&k, 0xab, sizeof k);
  da_kernel_info_init_size(&k, old);
  assert_int_equal(da_plan_get_kernel(p, &k), DA_SUCCESS);
  assert_int_equal(k.struct_size, old);
  assert_string_equal(k.name, "fused");
  assert_int_equal(((const unsigned char *)&k)[old], 0xab);
  da_plan_destroy(p);
  da_context_destroy(ctx);
}

/* ---------------------------------------------------------------- CPU */

static void test_cpu(void **state) {
  (void)state;
  clear_env();
  da_context *ctx = NULL;
  setenv("DISTRATTN_CPU_THREADS", "1", 1); /* the pool: a context's */
  setenv("DISTRATTN_CPU_ISA", "generic", 1);
  TU_CHECK(ctx, da_context_create(&ctx, DA_BACKEND_CPU, -1));
  clear_env();
  assert_int_equal(ctx->ov.cpu_threads, 1);
  assert_int_equal(ctx->ov.cpu_isa, 0);
  da_attn_desc pre = prefill_desc(), dec = decode_desc();
  da_kernel_info k;

  da_plan *p = plan_env(ctx, &pre, NULL, &k);
  assert_int_equal(k.backend, DA_BACKEND_CPU);
  assert_string_equal(k.name, "fused");
  assert_string_equal(k.variant, "generic");
  assert_int_equal(k.threads, 1);
  assert_int_equal(p->ov.cpu_decode, -1);
  da_plan_destroy(p);

  /* the decode shape by itself, then DISTRATTN_CPU_DECODE=0 and =1 */
  p = plan_env(ctx, &dec, NULL, &k);
  assert_string_equal(k.name, "split-kv decode");
  da_plan_destroy(p);
  static const char *const dec0[] = {"DISTRATTN_CPU_DECODE", "0", NULL};
  p = plan_env(ctx, &dec, dec0, &k);
  assert_string_equal(k.name, "fused");
  assert_int_equal(p->ov.cpu_decode, 0);
  da_plan_destroy(p);
  static const char *const dec1[] = {"DISTRATTN_CPU_DECODE", "1", NULL};
  da_attn_desc mid = pre;
  mid.seq_q = 80; /* 80 rows per kv head: blocked unless asked (auto: up to 64) */
  p = plan_env(ctx, &mid, NULL, &k);
  assert_string_equal(k.name, "fused");
  da_plan_destroy(p);
  p = plan_env(ctx, &mid, dec1, &k);
  assert_string_equal(k.name, "split-kv decode");
  assert_int_equal(p->ov.cpu_decode, 1);

  /* the backend runs what the plan reports, with the value parsed when
   * the plan was made: setting the variable now changes nothing */
  setenv("DISTRATTN_CPU_DECODE", "0", 1);
  const size_t nq = tu_q_elems(&mid), nkv = tu_kv_elems(&mid);
  float *q = calloc(nq, 4), *kv = calloc(nkv, 4), *o = calloc(nq, 4);
  assert_true(q && kv && o);
  long before = da_cpu_decode_calls(ctx);
  TU_CHECK(ctx, da_attention_host(p, q, kv, kv, o));
  assert_int_equal(da_cpu_decode_calls(ctx), before + 1);
  clear_env();
  da_plan_destroy(p);
  p = plan_env(ctx, &mid, dec0, &k);
  before = da_cpu_decode_calls(ctx);
  TU_CHECK(ctx, da_attention_host(p, q, kv, kv, o));
  assert_int_equal(da_cpu_decode_calls(ctx), before);
  da_plan_destroy(p);
  free(q), free(kv), free(o);

  mid.algo = DA_ALGO_GEMM;
  p = plan_env(ctx, &mid, NULL, &k);
  assert_string_equal(k.name, "gemm");
  da_plan_destroy(p);

  /* bad values fail the plan, naming the variable; another backend's
   * variables are not read */
  expect_bad(ctx, &pre, "DISTRATTN_CPU_DECODE", "2", DA_ERR_INVALID_ARG);
  expect_bad(ctx, &pre, "DISTRATTN_CPU_THREADS", "0", DA_ERR_INVALID_ARG);
  expect_bad(ctx, &pre, "DISTRATTN_CPU_ISA", "AVX2", DA_ERR_INVALID_ARG);
  static const char *const other[] = {"DISTRATTN_CL_KERNEL", "bogus", "DISTRATTN_CUDA_WGMMA", "2",
                                      NULL};
  p = plan_env(ctx, &pre, other, &k);
  assert_string_equal(k.name, "fused");
  da_plan_destroy(p);
  da_context_destroy(ctx);

  /* the pool's threads come from the context */
  setenv("DISTRATTN_CPU_THREADS", "3", 1);
  TU_CHECK(ctx, da_context_create(&ctx, DA_BACKEND_CPU, -1));
  clear_env();
  p = plan_env(ctx, &pre, NULL, &k);
  assert_int_equal(k.threads, 3);
  da_plan_destroy(p);
  da_context_destroy(ctx);
}

/* ------------------------------------------------------------- OpenCL */

static void test_opencl(void **state) {
  (void)state;
  TU_NEED_BACKEND(DA_BACKEND_OPENCL);
  clear_env();
  da_context *ctx = NULL;
  TU_CHECK(ctx, da_context_create(&ctx, DA_BACKEND_OPENCL, -1));
  da_device_info info;
  TU_CHECK(ctx, da_context_get_device_info(ctx, &info));
  const int is_cpu = strstr(info.name, "pthread") || strstr(info.name, "cpu") ||
                     strstr(info.name, "CPU");
  da_attn_desc pre = prefill_desc(), dec = decode_desc();
  da_kernel_info k;

  da_plan *p = plan_env(ctx, &pre, NULL, &k);
  assert_int_equal(k.backend, DA_BACKEND_OPENCL);
  if (is_cpu) assert_string_equal(k.name, "rows");
  assert_true(strcmp(k.name, "rows") == 0 || strcmp(k.name, "tiled") == 0);
  assert_true(k.tile_rows > 0 && k.tile_cols > 0 && k.threads > 0);
  assert_int_equal(p->ov.cl_kernel, -1);
  da_plan_destroy(p);

  static const char *const rows[] = {"DISTRATTN_CL_KERNEL", "rows", NULL};
  p = plan_env(ctx, &pre, rows, &k);
  assert_string_equal(k.name, "rows");
  assert_int_equal(k.threads, k.tile_rows); /* a work-item per row */
  assert_int_equal(p->ov.cl_kernel, 0);
  da_plan_destroy(p);

  static const char *const tiled[] = {"DISTRATTN_CL_KERNEL", "tiled", NULL};
  p = plan_env(ctx, &pre, tiled, &k);
  assert_string_equal(k.name, "tiled");
  assert_int_equal(k.threads, 2 * k.tile_rows);
  assert_int_equal(p->ov.cl_kernel, 1);
  da_plan_destroy(p);

  /* a tile alone asks for the tiled kernel */
  static const char *const tile[] = {"DISTRATTN_CL_TILE", "32x16", NULL};
  p = plan_env(ctx, &pre, tile, &k);
  assert_string_equal(k.name, "tiled");
  assert_int_equal(k.tile_rows, 32);
  assert_int_equal(k.tile_cols, 16);
  assert_int_equal(k.threads, 64);
  assert_int_equal(p->ov.cl_tile_rows, 32);
  assert_int_equal(p->ov.cl_tile_cols, 16);
  /* and it runs: the output against the CPU backend's */
  {
    const size_t nq = tu_q_elems(&pre), nkv = tu_kv_elems(&pre);
    float *q = malloc(nq * 4), *kk = malloc(nkv * 4), *v = malloc(nkv * 4);
    float *o = malloc(nq * 4), *oc = malloc(nq * 4);
    assert_true(q && kk && v && o && oc);
    tu_rng r;
    tu_rng_init(&r, tu_seed() ^ 0x6b65726eu);
    tu_fill(q, DA_F32, nq, &r, 1.0), tu_fill(kk, DA_F32, nkv, &r, 1.0);
    tu_fill(v, DA_F32, nkv, &r, 1.0);
    setenv("DISTRATTN_CL_TILE", "16x8", 1); /* after the plan: changes nothing */
    TU_CHECK(ctx, da_attention_host(p, q, kk, v, o));
    clear_env();
    da_context *cc = NULL;
    da_plan *pc = NULL;
    TU_CHECK(cc, da_context_create(&cc, DA_BACKEND_CPU, -1));
    TU_CHECK(cc, da_plan_create(cc, &pre, &pc));
    TU_CHECK(cc, da_attention_host(pc, q, kk, v, oc));
    double e = tu_rel_err_arrays(o, oc, DA_F32, nq);
    if (!(e <= 1e-5)) fail_msg("the 32x16 tiled plan differs from the CPU backend by %g", e);
    da_plan_destroy(pc);
    da_context_destroy(cc);
    free(q), free(kk), free(v), free(o), free(oc);
  }
  da_plan_destroy(p);

  /* the decode kernels, with a fixed chunk */
  static const char *const dec1[] = {"DISTRATTN_CL_DECODE", "1", "DISTRATTN_CL_DECODE_CHUNK", "128",
                                     NULL};
  p = plan_env(ctx, &dec, dec1, &k);
  assert_string_equal(k.name, "split-kv decode");
  assert_true(k.chunk == 128);
  assert_true(strcmp(k.variant, "rows") == 0 || strcmp(k.variant, "tiled") == 0);
  assert_int_equal(p->ov.cl_decode, 1);
  assert_true(p->ov.cl_decode_chunk == 128);
  da_plan_destroy(p);
  static const char *const dec0[] = {"DISTRATTN_CL_DECODE", "0", NULL};
  p = plan_env(ctx, &dec, dec0, &k);
  assert_true(strcmp(k.name, "rows") == 0 || strcmp(k.name, "tiled") == 0);
  da_plan_destroy(p);

  da_attn_desc g = pre;
  g.algo = DA_ALGO_GEMM;
  da_status s = da_plan_create(ctx, &g, &p); /* CLBlast may be absent */
  if (s == DA_SUCCESS) {
    assert_string_equal(kernel_of(p).name, "gemm");
    da_plan_destroy(p);
  }

  /* bad values: refused by name, never ignored or clamped */
  expect_bad(ctx, &pre, "DISTRATTN_CL_KERNEL", "Tiled", DA_ERR_INVALID_ARG);
  expect_bad(ctx, &pre, "DISTRATTN_CL_TILE", "32x16x", DA_ERR_INVALID_ARG);
  expect_bad(ctx, &pre, "DISTRATTN_CL_TILE", "8x8", DA_ERR_INVALID_ARG); /* not a tile */
  expect_bad(ctx, &pre, "DISTRATTN_CL_DECODE", "yes", DA_ERR_INVALID_ARG);
  expect_bad(ctx, &dec, "DISTRATTN_CL_DECODE_CHUNK", "100", DA_ERR_INVALID_ARG);
  {
    da_plan *q = NULL;
    setenv("DISTRATTN_CL_KERNEL", "rows", 1);
    setenv("DISTRATTN_CL_TILE", "32x16", 1);
    assert_int_equal(da_plan_create(ctx, &pre, &q), DA_ERR_INVALID_ARG);
    clear_env();
    assert_non_null(strstr(da_context_last_error(ctx), "DISTRATTN_CL_TILE"));
    assert_non_null(strstr(da_context_last_error(ctx), "DISTRATTN_CL_KERNEL"));
  }
  /* the CPU backend's variables are not OpenCL's */
  static const char *const other[] = {"DISTRATTN_CPU_DECODE", "bogus", NULL};
  p = plan_env(ctx, &pre, other, &k);
  da_plan_destroy(p);
  da_context_destroy(ctx);
}

int main(void) {
  tu_filter_from_env();
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_info_init),
      cmocka_unit_test(test_cpu),
      cmocka_unit_test(test_opencl),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
