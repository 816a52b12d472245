/* SPDX-License-Identifier: Apache-2.0 */
/* Descriptor validation and NULL / bad arguments of every API function.
 * Bad input is answered with DA_ERR_INVALID_ARG, never crashed on, and
 * da_context_last_error names the rejected field and its value. */
#define _GNU_SOURCE /* strcasestr */
#include <limits.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"


typedef struct bad_case {
  const char *what;  /* description of the mutation */
  const char *field; /* must appear in the message (NULL: only non-empty) */
  const char *value; /* must appear in the message, case-insensitively */
  void (*mutate)(da_attn_desc *d);
} bad_case;

#define MUT(name, stmt)                                                                        \
  static void name(da_attn_desc *d) { stmt; }
MUT(m_batch0, d->batch = 0)
MUT(m_batchm1, d->batch = -1)
MUT(m_heads0, d->heads = 0)
MUT(m_headsm3, d->heads = -3)
MUT(m_kvm1, d->kv_heads = -1)
MUT(m_kv3, d->kv_heads = 3)
MUT(m_kv8, d->kv_heads = 8)
MUT(m_sq0, d->seq_q = 0)
MUT(m_sqm5, d->seq_q = -5)
MUT(m_sk0, d->seq_k = 0)
MUT(m_skm7, d->seq_k = -7)
MUT(m_hd0, d->head_dim = 0)
MUT(m_hd257, d->head_dim = 257)
MUT(m_hdm1, d->head_dim = -1)
MUT(m_dtype7, d->dtype = (da_dtype)7)
MUT(m_dtypem1, d->dtype = (da_dtype)-1)
MUT(m_fusion5, d->fusion = (da_fusion)5)
MUT(m_algo9, d->algo = (da_algo)9)
MUT(m_algom1, d->algo = (da_algo)-1)
MUT(m_g0, d->group_size = 0)
MUT(m_g3, d->group_size = 3)
MUT(m_g16, d->group_size = 16)
MUT(m_gm2, d->group_size = -2)
MUT(m_g8_hd4, { d->head_dim = 4; d->group_size = 8; })
MUT(m_g4_hd3, { d->head_dim = 3; d->group_size = 4; })
MUT(m_hb33, d->hash_bits = 33)
MUT(m_hbm1, d->hash_bits = -1)
MUT(m_blk3, d->hash_block = 3)
MUT(m_blk100, d->hash_block = 100)
MUT(m_blk2048, d->hash_block = 2048)
MUT(m_blk8, d->hash_block = 8)
MUT(m_blkm16, d->hash_block = -16)
MUT(m_scalem1, d->scale = -1.0f)
MUT(m_scalenan, d->scale = NAN)
MUT(m_scaleinf, d->scale = INFINITY)
MUT(m_scaleminf, d->scale = -INFINITY)
MUT(m_causal2, d->causal = 2)
MUT(m_causalm1, d->causal = -1)
MUT(m_ovf_q, { d->batch = INT_MAX; d->heads = INT_MAX; d->kv_heads = 0; d->seq_q = INT_MAX;
               d->head_dim = 256; })
MUT(m_ovf_k, { d->batch = 65536; d->heads = 65536; d->kv_heads = 0; d->seq_q = 1;
               d->seq_k = INT_MAX; d->head_dim = 256; })
/* elements fit in size_t, bytes do not */
MUT(m_ovf_bytes, { d->batch = INT_MAX; d->heads = INT_MAX; d->kv_heads = 0; d->seq_q = 1;
                   d->seq_k = 1; d->head_dim = 2; })

static const bad_case bad_cases[] = {
    {"batch 0", "batch", "0", m_batch0},
    {"batch -1", "batch", "-1", m_batchm1},
    {"heads 0", "heads", "0", m_heads0},
    {"heads -3", "heads", "-3", m_headsm3},
    {"kv_heads -1", "kv_heads", "-1", m_kvm1},
    {"kv_heads 3 does not divide heads 4", "kv_heads", "3", m_kv3},
    {"kv_heads 8 > heads 4", "kv_heads", "8", m_kv8},
    {"seq_q 0", "seq_q", "0", m_sq0},
    {"seq_q -5", "seq_q", "-5", m_sqm5},
    {"seq_k 0", "seq_k", "0", m_sk0},
    {"seq_k -7", "seq_k", "-7", m_skm7},
    {"head_dim 0", "head_dim", "0", m_hd0},
    {"head_dim 257", "head_dim", "257", m_hd257},
    {"head_dim -1", "head_dim", "-1", m_hdm1},
    {"dtype 7", "dtype", "7", m_dtype7},
    {"dtype -1", "dtype", "-1", m_dtypem1},
    {"fusion 5", "fusion", "5", m_fusion5},
    {"algo 9", "algo", "9", m_algo9},
    {"algo -1", "algo", "-1", m_algom1},
    {"group_size 0", "group_size", "0", m_g0},
    {"group_size 3", "group_size", "3", m_g3},
    {"group_size 16", "group_size", "16", m_g16},
    {"group_size -2", "group_size", "-2", m_gm2},
    {"group_size 8 > head_dim 4", "group_size", "8", m_g8_hd4},
    {"group_size 4 > head_dim 3", "group_size", "4", m_g4_hd3},
    {"hash_bits 33", "hash_bits", "33", m_hb33},
    {"hash_bits -1", "hash_bits", "-1", m_hbm1},
    {"hash_block 3", "hash_block", "3", m_blk3},
    {"hash_block 100 (not a power of two)", "hash_block", "100", m_blk100},
    {"hash_block 2048", "hash_block", "2048", m_blk2048},
    {"hash_block 8 (< 16)", "hash_block", "8", m_blk8},
    {"hash_block -16", "hash_block", "-16", m_blkm16},
    {"scale -1", "scale", "-1", m_scalem1},
    {"scale NaN", "scale", "nan", m_scalenan},
    {"scale +Inf", "scale", "inf", m_scaleinf},
    {"scale -Inf", "scale", "inf", m_scaleminf},
    {"causal 2", "causal", "2", m_causal2},
    {"causal -1", "causal", "-1", m_causalm1},
    {"Q elements overflow size_t", NULL, NULL, m_ovf_q},
    {"K elements overflow size_t", NULL, NULL, m_ovf_k},
    {"Q bytes overflow size_t", NULL, NULL, m_ovf_bytes},
};

static int setup_ctx(void **state) {
  da_context *ctx = NULL;
  if (da_context_create(&ctx, DA_BACKEND_CPU, -1) != DA_SUCCESS) return -1;
  *state = ctx;
  return 0;
}

static int teardown_ctx(void **state) {
  da_context_destroy(*state);
  return 0;
}

static void test_valid_desc_accepted(void **state) {
  da_context *ctx = *state;
  da_attn_desc d = tu_small_desc();
  da_plan *p = NULL;
  TU_CHECK(ctx, da_plan_create(ctx, &d, &p));
  assert_non_null(p);
  da_plan_destroy(p);
}

static void test_bad_descriptors(void **state) {
  da_context *ctx = *state;
  for (size_t i = 0; i < sizeof bad_cases / sizeof bad_cases[0]; i++) {
    const bad_case *c = &bad_cases[i];
    da_attn_desc d = tu_small_desc();
    c->mutate(&d);
    da_plan *p = (da_plan *)&d; /* must be overwritten with NULL or left alone, never used */
    da_status s = da_plan_create(ctx, &d, &p);
    if (s != DA_ERR_INVALID_ARG) {
      if (s == DA_SUCCESS) da_plan_destroy(p);
      fail_msg("%s: da_plan_create returned %d (%s), expected DA_ERR_INVALID_ARG", c->what, (int)s,
               da_status_string(s));
    }
    if (p != NULL && p != (da_plan *)&d)
      fail_msg("%s: rejected, but *plan was set to a non-NULL plan", c->what);
    const char *msg = da_context_last_error(ctx);
    if (!msg || !*msg) fail_msg("%s: da_context_last_error is empty", c->what);
    if (c->field && !strstr(msg, c->field))
      fail_msg("%s: the message \"%s\" does not name the field %s", c->what, msg, c->field);
    if (c->value && !strcasestr(msg, c->value))
      fail_msg("%s: the message \"%s\" does not show the value %s", c->what, msg, c->value);
  }
}

/* 0 means "default" for kv_heads, scale, hash_bits, hash_block; the plan
 * resolves them, and AUTO becomes a concrete algorithm. */
static void test_defaults_resolved(void **state) {
  da_context *ctx = *state;
  da_attn_desc d = tu_small_desc(), r;
  d.kv_heads = 0;
  d.scale = 0.0f;
  d.hash_bits = 0;
  d.hash_block = 0;
  d.group_size = 2;
  d.algo = DA_ALGO_AUTO;
  da_plan *p = NULL;
  TU_CHECK(ctx, da_plan_create(ctx, &d, &p));
  TU_CHECK(ctx, da_plan_get_desc(p, &r));
  assert_int_equal(r.kv_heads, d.heads);
  assert_int_equal(r.hash_bits, 16);
  assert_int_equal(r.hash_block, 128);
  assert_true(r.algo == DA_ALGO_FUSED || r.algo == DA_ALGO_GEMM);
  assert_true(fabsf(r.scale - 1.0f / sqrtf((float)d.head_dim)) <= 1e-7f);
  assert_int_equal(r.group_size, 2);
  assert_int_equal(p->ng, 8);
  assert_int_equal(p->n_tiles, 1);
  da_plan_destroy(p);
  /* boundary values that are valid */
  const int blocks[] = {16, 1024};
  for (int i = 0; i < 2; i++) {
    d = tu_small_desc();
    d.hash_block = blocks[i];
    d.hash_bits = i ? 32 : 1;
    d.head_dim = i ? 256 : 1;
    d.group_size = i ? 8 : 1;
    d.kv_heads = 1;
    d.causal = 1;
    d.scale = 1e-3f;
    TU_CHECK(ctx, da_plan_create(ctx, &d, &p));
    da_plan_destroy(p);
  }
}

static void test_desc_init_defaults(void **state) {
  (void)state;
  da_attn_desc d;
  memset(&d, 0x5a, sizeof d);
  da_attn_desc_init(&d);
  assert_int_equal(d.group_size, 1);
  assert_int_equal(d.hash_bits, 16);
  assert_int_equal(d.hash_block, 128);
  assert_true(d.fusion == DA_FUSE_MEAN || d.fusion == DA_FUSE_NORM);
  assert_int_equal(d.batch, 0);
  assert_int_equal(d.heads, 0);
  assert_int_equal(d.kv_heads, 0);
  assert_int_equal(d.seq_q, 0);
  assert_int_equal(d.seq_k, 0);
  assert_int_equal(d.head_dim, 0);
  assert_int_equal(d.causal, 0);
  assert_true(d.scale == 0.0f);
  assert_true(d.seed == 0);
  assert_int_equal(d.algo, DA_ALGO_AUTO);
  assert_int_equal(d.dtype, DA_F32);
}

/* The _init macros pass the caller's sizeof: an older caller's smaller
 * struct (here: da_attn_ext up to its window fields, before strategy) gets
 * only those bytes written, and a plan accepts it with the defaults for
 * the rest; the exported plain functions still work. */
static void test_init_caller_size(void **state) {
  (void)state;
  unsigned char buf[sizeof(da_attn_ext) + 64];
  const size_t old = offsetof(da_attn_ext, strategy);
  memset(buf, 0xab, sizeof buf);
  da_attn_ext *x = (da_attn_ext *)(void *)buf;
  da_attn_ext_init_size(x, old);
  assert_int_equal(x->struct_size, old);
  assert_int_equal(x->window_left, -1);
  assert_int_equal(x->window_right, -1);
  assert_int_equal(x->seqlens, DA_SEQLENS_NONE);
  for (size_t i = old; i < sizeof buf; i++) assert_int_equal(buf[i], 0xab);
  da_context *ctx = NULL;
  assert_int_equal(da_context_create(&ctx, DA_BACKEND_CPU, 0), DA_SUCCESS);
  da_attn_desc d = tu_small_desc();
  da_plan *p = NULL;
  assert_int_equal(da_plan_create_ext(ctx, &d, x, &p), DA_SUCCESS);
  da_plan_destroy(p);
  /* too small for struct_size itself: nothing written */
  memset(buf, 0xab, sizeof buf);
  da_attn_ext_init_size(x, 4);
  for (size_t i = 0; i < sizeof buf; i++) assert_int_equal(buf[i], 0xab);
  /* the macros and the exported functions */
  da_attn_ext e;
  memset(&e, 0x5a, sizeof e);
  da_attn_ext_init(&e);
  assert_int_equal(e.struct_size, sizeof e);
  assert_int_equal(e.strategy, 0);
  memset(&e, 0x5a, sizeof e);
  (da_attn_ext_init)(&e);
  assert_int_equal(e.struct_size, sizeof e);
  assert_null(e.proj);
  da_attn_args a;
  memset(&a, 0x5a, sizeof a);
  (da_attn_args_init)(&a);
  assert_int_equal(a.struct_size, sizeof a);
  assert_null(a.lse);
  da_bwd_args ba;
  memset(&ba, 0x5a, sizeof ba);
  da_bwd_args_init(&ba);
  assert_int_equal(ba.struct_size, sizeof ba);
  da_bwd_args_init_size(&ba, offsetof(da_bwd_args, struct_size) + sizeof(size_t));
  assert_int_equal(ba.struct_size, sizeof(size_t));
  da_context_destroy(ctx);
}

static void test_null_context_calls(void **state) {
  (void)state;
  da_attn_desc d = tu_small_desc();
  da_plan *p = NULL;
  da_buffer *b = NULL;
  da_device_info info;
  assert_int_equal(da_context_create(NULL, DA_BACKEND_CPU, -1), DA_ERR_INVALID_ARG);
  da_context *c = NULL;
  assert_int_not_equal(da_context_create(&c, (da_backend)42, -1), DA_SUCCESS);
  assert_null(c);
  assert_int_not_equal(da_context_create(&c, DA_BACKEND_CPU, 1000), DA_SUCCESS);
  assert_null(c);
  assert_int_not_equal(da_context_create(&c, DA_BACKEND_CPU, -2), DA_SUCCESS);
  assert_null(c);
  da_context_destroy(NULL);
  da_plan_destroy(NULL);
  da_buffer_destroy(NULL);
  (void)da_context_backend(NULL);
  assert_non_null(da_context_last_error(NULL));
  assert_int_equal(da_context_synchronize(NULL), DA_ERR_INVALID_ARG);
  assert_int_equal(da_context_get_device_info(NULL, &info), DA_ERR_INVALID_ARG);
  assert_int_equal(da_plan_create(NULL, &d, &p), DA_ERR_INVALID_ARG);
  assert_int_equal(da_plan_get_desc(NULL, &d), DA_ERR_INVALID_ARG);
  assert_int_equal(da_buffer_create(NULL, 64, &b), DA_ERR_INVALID_ARG);
  assert_int_equal(da_buffer_size(NULL), 0);
  assert_null(da_buffer_native(NULL));
  char tmp[8];
  assert_int_equal(da_buffer_write(NULL, 0, tmp, 4), DA_ERR_INVALID_ARG);
  assert_int_equal(da_buffer_read(NULL, 0, tmp, 4), DA_ERR_INVALID_ARG);
  assert_int_equal(da_attention_host(NULL, tmp, tmp, tmp, tmp), DA_ERR_INVALID_ARG);
  assert_int_equal(da_plan_groups_host(NULL, tmp, (int *)tmp), DA_ERR_INVALID_ARG);
  assert_int_equal(da_attention(NULL, NULL, NULL, NULL, NULL), DA_ERR_INVALID_ARG);
  assert_int_equal(da_device_get_info(-1, &info), DA_ERR_INVALID_ARG);
  assert_int_equal(da_device_get_info(0, NULL), DA_ERR_INVALID_ARG);
  assert_int_not_equal(da_device_get_info(da_device_count(), &info), DA_SUCCESS);
  assert_int_equal(da_context_wrap(NULL, DA_BACKEND_OPENCL, tmp), DA_ERR_INVALID_ARG);
  assert_int_equal(da_buffer_wrap(NULL, tmp, 8, &b), DA_ERR_INVALID_ARG);
  assert_int_equal(da_backend_add_path(NULL), DA_ERR_INVALID_ARG);
  assert_int_equal(da_backend_add_path(""), DA_ERR_INVALID_ARG);
}

static void test_null_args_with_context(void **state) {
  da_context *ctx = *state;
  da_attn_desc d = tu_small_desc();
  da_plan *p = NULL;
  da_device_info info;
  assert_int_equal(da_context_backend(ctx), DA_BACKEND_CPU);
  assert_int_equal(da_context_get_device_info(ctx, NULL), DA_ERR_INVALID_ARG);
  TU_CHECK(ctx, da_context_get_device_info(ctx, &info));
  assert_int_equal(info.backend, DA_BACKEND_CPU);
  assert_int_equal(da_plan_create(ctx, NULL, &p), DA_ERR_INVALID_ARG);
  assert_true(*da_context_last_error(ctx) != '\0');
  assert_int_equal(da_plan_create(ctx, &d, NULL), DA_ERR_INVALID_ARG);
  assert_true(*da_context_last_error(ctx) != '\0');
  da_buffer *b = NULL;
  assert_int_equal(da_buffer_create(ctx, 64, NULL), DA_ERR_INVALID_ARG);
  assert_int_equal(da_buffer_wrap(ctx, NULL, 64, &b), DA_ERR_INVALID_ARG);

  TU_CHECK(ctx, da_plan_create(ctx, &d, &p));
  da_attn_desc r;
  assert_int_equal(da_plan_get_desc(p, NULL), DA_ERR_INVALID_ARG);
  TU_CHECK(ctx, da_plan_get_desc(p, &r));
  size_t qn = tu_q_elems(&d), kn = tu_kv_elems(&d);
  float *q = calloc(qn, 4), *k = calloc(kn, 4), *v = calloc(kn, 4), *o = calloc(qn, 4);
  int *perm = calloc((size_t)p->perm_count, sizeof(int));
  assert_non_null(q);
  assert_non_null(k);
  assert_non_null(v);
  assert_non_null(o);
  assert_non_null(perm);
  assert_int_equal(da_attention_host(p, NULL, k, v, o), DA_ERR_INVALID_ARG);
  assert_int_equal(da_attention_host(p, q, NULL, v, o), DA_ERR_INVALID_ARG);
  assert_int_equal(da_attention_host(p, q, k, NULL, o), DA_ERR_INVALID_ARG);
  assert_int_equal(da_attention_host(p, q, k, v, NULL), DA_ERR_INVALID_ARG);
  assert_true(*da_context_last_error(ctx) != '\0');
  assert_int_equal(da_plan_groups_host(p, NULL, perm), DA_ERR_INVALID_ARG);
  assert_int_equal(da_plan_groups_host(p, q, NULL), DA_ERR_INVALID_ARG);
  TU_CHECK(ctx, da_attention_host(p, q, k, v, o));
  TU_CHECK(ctx, da_plan_groups_host(p, q, perm));

  /* device buffers: NULLs, too small, another context's, ranges */
  size_t qb = qn * 4, kb = kn * 4;
  da_buffer *bq = NULL, *bk = NULL, *bv = NULL, *bo = NULL, *small = NULL, *foreign = NULL;
  TU_CHECK(ctx, da_buffer_create(ctx, qb, &bq));
  TU_CHECK(ctx, da_buffer_create(ctx, kb, &bk));
  TU_CHECK(ctx, da_buffer_create(ctx, kb, &bv));
  TU_CHECK(ctx, da_buffer_create(ctx, qb, &bo));
  TU_CHECK(ctx, da_buffer_create(ctx, (qb < kb ? qb : kb) - 1, &small));
  assert_int_equal(da_buffer_size(bq), qb);
  da_context *ctx2 = NULL;
  TU_CHECK(ctx2, da_context_create(&ctx2, DA_BACKEND_CPU, -1));
  TU_CHECK(ctx2, da_buffer_create(ctx2, qb, &foreign));

  assert_int_equal(da_buffer_write(bq, 0, NULL, 4), DA_ERR_INVALID_ARG);
  assert_int_equal(da_buffer_read(bq, 0, NULL, 4), DA_ERR_INVALID_ARG);
  assert_int_equal(da_buffer_write(bq, 1, q, qb), DA_ERR_INVALID_ARG);
  assert_int_equal(da_buffer_read(bq, qb, o, 1), DA_ERR_INVALID_ARG);
  assert_int_equal(da_buffer_write(bq, SIZE_MAX, q, 2), DA_ERR_INVALID_ARG);
  assert_int_equal(da_buffer_read(bq, 2, o, SIZE_MAX), DA_ERR_INVALID_ARG);
  TU_CHECK(ctx, da_buffer_write(bq, 0, q, qb));
  TU_CHECK(ctx, da_buffer_write(bk, 0, k, kb));
  TU_CHECK(ctx, da_buffer_write(bv, 0, v, kb));

  const struct {
    const char *what;
    da_buffer *q, *k, *v, *o;
  } bad[] = {
      {"q NULL", NULL, bk, bv, bo},       {"k NULL", bq, NULL, bv, bo},
      {"v NULL", bq, bk, NULL, bo},       {"o NULL", bq, bk, bv, NULL},
      {"q too small", small, bk, bv, bo}, {"o too small", bq, bk, bv, small},
      {"k too small", bq, small, bv, bo}, {"q of another context", foreign, bk, bv, bo},
      {"o of another context", bq, bk, bv, foreign}, {"o is q", bq, bk, bv, bq},
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    da_status s = da_attention(p, bad[i].q, bad[i].k, bad[i].v, bad[i].o);
    if (s != DA_ERR_INVALID_ARG)
      fail_msg("da_attention with %s returned %d (%s), expected DA_ERR_INVALID_ARG", bad[i].what,
               (int)s, da_status_string(s));
    if (!*da_context_last_error(ctx))
      fail_msg("da_attention with %s: da_context_last_error is empty", bad[i].what);
  }
  TU_CHECK(ctx, da_attention(p, bq, bk, bv, bo));
  TU_CHECK(ctx, da_context_synchronize(ctx));

  /* a plan of the second context refuses this context's buffers */
  da_plan *p2 = NULL;
  TU_CHECK(ctx2, da_plan_create(ctx2, &d, &p2));
  assert_int_equal(da_attention(p2, bq, bk, bv, foreign), DA_ERR_INVALID_ARG);
  da_plan_destroy(p2);

  da_buffer_destroy(bq);
  da_buffer_destroy(bk);
  da_buffer_destroy(bv);
  da_buffer_destroy(bo);
  da_buffer_destroy(small);
  da_buffer_destroy(foreign);
  da_context_destroy(ctx2);
  da_plan_destroy(p);
  free(q);
  free(k);
  free(v);
  free(o);
  free(perm);
}

/* Plans and buffers keep their context alive after da_context_destroy. */
static void test_context_lifetime(void **state) {
  (void)state;
  da_context *ctx = NULL;
  TU_CHECK(ctx, da_context_create(&ctx, DA_BACKEND_CPU, -1));
  da_attn_desc d = tu_small_desc();
  da_plan *p = NULL;
  TU_CHECK(ctx, da_plan_create(ctx, &d, &p));
  size_t qn = tu_q_elems(&d), kn = tu_kv_elems(&d);
  float *q = calloc(qn, 4), *k = calloc(kn, 4), *v = calloc(kn, 4), *o = calloc(qn, 4);
  assert_non_null(q);
  assert_non_null(k);
  assert_non_null(v);
  assert_non_null(o);
  for (size_t i = 0; i < qn; i++) q[i] = (float)(i % 7) - 3.0f;
  for (size_t i = 0; i < kn; i++) k[i] = v[i] = (float)(i % 5) - 2.0f;
  da_context_destroy(ctx);
  TU_CHECK(NULL, da_attention_host(p, q, k, v, o));
  da_plan_destroy(p);
  free(q);
  free(k);
  free(v);
  free(o);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_desc_init_defaults),
      cmocka_unit_test(test_init_caller_size),
      cmocka_unit_test_setup_teardown(test_valid_desc_accepted, setup_ctx, teardown_ctx),
      cmocka_unit_test_setup_teardown(test_bad_descriptors, setup_ctx, teardown_ctx),
      cmocka_unit_test_setup_teardown(test_defaults_resolved, setup_ctx, teardown_ctx),
      cmocka_unit_test(test_null_context_calls),
      cmocka_unit_test_setup_teardown(test_null_args_with_context, setup_ctx, teardown_ctx),
      cmocka_unit_test(test_context_lifetime),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
