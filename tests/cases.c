/* SPDX-License-Identifier: Apache-2.0 */
/* One attention case against the float64 reference. */
#include <stdlib.h>
#include <string.h>

#include "cases.h"

void tcase_desc(const tcase *c, uint64_t seed, da_attn_desc *d) {
  da_attn_desc_init(d);
  d->batch = c->batch;
  d->heads = c->heads;
  d->kv_heads = c->kv_heads;
  d->seq_q = c->seq_q;
  d->seq_k = c->seq_k;
  d->head_dim = c->head_dim;
  d->dtype = c->dtype;
  d->causal = c->causal;
  d->algo = c->algo;
  d->group_size = c->group_size > 1 ? c->group_size : 1;
  d->fusion = c->fusion;
  if (c->hash_bits) d->hash_bits = c->hash_bits;
  if (c->hash_block) d->hash_block = c->hash_block;
  d->scale = c->scale;
  d->seed = seed;
}

const char *tcase_str(const tcase *c, char *buf, size_t len) {
  da_attn_desc d;
  tcase_desc(c, 0, &d);
  return tu_desc_str(&d, buf, len);
}

static void *xmalloc(size_t n) {
  void *p = malloc(n ? n : 1);
  if (!p) fail_msg("out of host memory (%zu bytes)", n);
  return p;
}

void tdata_init(tdata *t, const da_attn_desc *d, tu_rng *rng) {
  memset(t, 0, sizeof *t);
  t->d = *d;
  t->nq = tu_q_elems(d);
  t->nk = tu_kv_elems(d);
  size_t es = da_dtype_size(d->dtype);
  t->q = xmalloc(t->nq * es);
  t->k = xmalloc(t->nk * es);
  t->v = xmalloc(t->nk * es);
  t->o = xmalloc(t->nq * es);
  tu_fill(t->q, d->dtype, t->nq, rng, 1.0);
  tu_fill(t->k, d->dtype, t->nk, rng, 1.0);
  tu_fill(t->v, d->dtype, t->nk, rng, 1.0);
  tu_poison(t->o, t->nq * es);
}

void tdata_reference(tdata *t, const da_plan *p) {
  if (!t->ref) t->ref = xmalloc(t->nq * sizeof(double));
  if (p->d.group_size > 1)
    ref_distr_attention(p, t->q, t->k, t->v, t->ref);
  else
    ref_attention(&t->d, t->q, t->k, t->v, t->ref);
}

void tdata_free(tdata *t) {
  free(t->q);
  free(t->k);
  free(t->v);
  free(t->o);
  free(t->ref);
  memset(t, 0, sizeof *t);
}

da_status tcase_plan(da_context *ctx, const da_attn_desc *d, da_plan **p) {
  *p = NULL;
  da_status s = da_plan_create(ctx, d, p);
  if (s == DA_SUCCESS) return s;
  if (s == DA_ERR_UNSUPPORTED && d->algo == DA_ALGO_GEMM &&
      da_context_backend(ctx) != DA_BACKEND_CPU)
    return s;
  char buf[512];
  fail_msg("da_plan_create(%s) on %s -> %s: %s [seed %llu]", tu_desc_str(d, buf, sizeof buf),
           da_backend_name(da_context_backend(ctx)), da_status_string(s),
           da_context_last_error(ctx), (unsigned long long)tu_seed());
  return s;
}

double tcase_run_host(da_context *ctx, da_plan *p, tdata *t, const char *what) {
  char buf[512];
  tu_poison(t->o, t->nq * da_dtype_size(t->d.dtype));
  da_status s = da_attention_host(p, t->q, t->k, t->v, t->o);
  if (s != DA_SUCCESS)
    fail_msg("%s: da_attention_host(%s) on %s -> %s: %s [seed %llu]", what,
             tu_desc_str(&p->d, buf, sizeof buf), da_backend_name(da_context_backend(ctx)),
             da_status_string(s), da_context_last_error(ctx), (unsigned long long)tu_seed());
  size_t first = 0, bad = tu_count_nonfinite(t->o, t->d.dtype, t->nq, &first);
  if (bad)
    fail_msg("%s: %zu non-finite outputs (first at %zu) from %s on %s [seed %llu]", what, bad,
             first, tu_desc_str(&p->d, buf, sizeof buf), da_backend_name(da_context_backend(ctx)),
             (unsigned long long)tu_seed());
  /* a query row that sees no key is all zeros */
  const da_attn_desc *d = &p->d;
  if (d->causal && d->seq_q > d->seq_k) {
    int blind = d->seq_q - d->seq_k; /* rows 0 .. blind-1 see nothing */
    for (int b = 0; b < d->batch; b++)
      for (int h = 0; h < d->heads; h++)
        for (int i = 0; i < blind; i++)
          for (int c = 0; c < d->head_dim; c++) {
            size_t e = (((size_t)b * d->heads + h) * d->seq_q + i) * d->head_dim + c;
            float x = da_load_elem(t->o, d->dtype, e);
            if (x != 0.0f)
              fail_msg("%s: row %d (b %d h %d) sees no key but o[%d] = %g; %s on %s [seed %llu]",
                       what, i, b, h, c, (double)x, tu_desc_str(d, buf, sizeof buf),
                       da_backend_name(da_context_backend(ctx)), (unsigned long long)tu_seed());
          }
  }
  return tu_rel_err(t->o, t->d.dtype, t->ref, t->nq);
}

void tdata_upload(const tdata *t, da_context *ctx, da_buffer **q, da_buffer **k, da_buffer **v,
                  da_buffer **o) {
  size_t es = t->d.dtype == DA_F32 ? 4 : 2, qb = t->nq * es, kb = t->nk * es;
  TU_CHECK(ctx, da_buffer_create(ctx, qb, q));
  TU_CHECK(ctx, da_buffer_create(ctx, kb, k));
  TU_CHECK(ctx, da_buffer_create(ctx, kb, v));
  TU_CHECK(ctx, da_buffer_create(ctx, qb, o));
  TU_CHECK(ctx, da_buffer_write(*q, 0, t->q, qb));
  TU_CHECK(ctx, da_buffer_write(*k, 0, t->k, kb));
  TU_CHECK(ctx, da_buffer_write(*v, 0, t->v, kb));
}

void tcase_check_reference(da_context *ctx, const tcase *c, tu_rng *rng, uint64_t desc_seed,
                           const char *what) {
  const da_backend be = da_context_backend(ctx);
  da_attn_desc d;
  tcase_desc(c, desc_seed, &d);
  tdata t;
  tdata_init(&t, &d, rng);
  int have_ref = 0;
  const da_algo both[2] = {DA_ALGO_FUSED, DA_ALGO_GEMM};
  const int na = c->algo == DA_ALGO_AUTO ? 2 : 1;
  for (int a = 0; a < na; a++) {
    d.algo = c->algo == DA_ALGO_AUTO ? both[a] : c->algo;
    da_plan *p = NULL;
    if (tcase_plan(ctx, &d, &p) != DA_SUCCESS) continue;
    if (!have_ref) { /* the reference does not depend on the algorithm */
      tdata_reference(&t, p);
      have_ref = 1;
    }
    const double err = tcase_run_host(ctx, p, &t, what);
    const double bound = tu_bound(d.dtype);
    char buf[512];
    tu_note(da_backend_name(be), &p->d, err, bound);
    if (!(err <= bound))
      fail_msg("%s: %s: rel. error vs float64 %s reference %.3g > %.3g [seed %llu]",
               da_backend_name(be), tu_desc_str(&p->d, buf, sizeof buf),
               d.group_size > 1 ? "DistrAttention" : "exact", err, bound,
               (unsigned long long)tu_seed());
    da_plan_destroy(p);
  }
  tdata_free(&t);
}
