/* SPDX-License-Identifier: Apache-2.0 */
/* libFuzzer target: descriptor validation and tiny attention runs on the CPU
 * backend. Built by scripts/ci-fuzz.sh with
 *   clang -fsanitize=fuzzer,address,undefined
 * together with the sources of lib/libdacore.la and tests/ref.c (the
 * float64 reference).
 *
 * Input layout (missing bytes read as 0):
 *   byte 0        mode: bit 0 = raw (every descriptor field taken as is, to
 *                 stress validation and the size arithmetic), otherwise the
 *                 sizes are clamped small and the plan is run;
 *                 bit 1 = inputs may hold NaN/Inf; bit 2 = also groups_host
 *   then          the descriptor fields, 4 bytes each (seed 8 bytes)
 *   the rest      the Q, K, V values (one byte each, cycled)
 *
 * Never crashing is the property. In addition, with finite inputs the
 * output must be finite and agree with the float64 reference within ten
 * times SPEC.md's bound (abort otherwise: a finding). */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../tests/ref.h"
#include "da_internal.h"

typedef struct reader {
  const uint8_t *p;
  size_t n, i;
} reader;

static uint32_t rd32(reader *r) {
  uint32_t v = 0;
  for (int k = 0; k < 4; k++) v |= (uint32_t)(r->i < r->n ? r->p[r->i++] : 0) << (8 * k);
  return v;
}

static uint8_t rd8(reader *r) { return r->i < r->n ? r->p[r->i++] : 0; }

static da_context *ctx;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  /* the CPU backend only: no module is looked for anywhere real */
  setenv("DISTRATTN_BACKEND_PATH", "/nonexistent-distrattn-fuzz", 1);
  if (da_context_create(&ctx, DA_BACKEND_CPU, -1) != DA_SUCCESS) abort();
  return 0;
}

static float value(uint8_t b, int nonfinite) {
  if (nonfinite && b >= 250) {
    static const float special[6] = {NAN, INFINITY, -INFINITY, 65504.0f, -3.0e38f, 1e-40f};
    return special[b - 250];
  }
  return ((float)b - 127.5f) / 32.0f; /* small, never 0 */
}

static size_t prod(const int *v, int n) {
  size_t r = 1;
  for (int i = 0; i < n; i++) r *= (size_t)v[i];
  return r;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  reader r = {data, size, 0};
  uint8_t mode = rd8(&r);
  da_attn_desc d;
  da_attn_desc_init(&d);
  d.batch = (int)rd32(&r);
  d.heads = (int)rd32(&r);
  d.kv_heads = (int)rd32(&r);
  d.seq_q = (int)rd32(&r);
  d.seq_k = (int)rd32(&r);
  d.head_dim = (int)rd32(&r);
  d.dtype = (da_dtype)(int)rd32(&r);
  d.causal = (int)rd32(&r);
  uint32_t sb = rd32(&r);
  memcpy(&d.scale, &sb, 4);
  d.group_size = (int)rd32(&r);
  d.hash_bits = (int)rd32(&r);
  d.hash_block = (int)rd32(&r);
  d.fusion = (da_fusion)(int)rd32(&r);
  d.seed = (unsigned long long)rd32(&r) | (unsigned long long)rd32(&r) << 32;
  d.algo = (da_algo)(int)rd32(&r);

  if (!(mode & 1)) { /* clamp into small, mostly valid shapes */
    d.batch = 1 + (int)((unsigned)d.batch % 2);
    d.kv_heads = 1 + (int)((unsigned)d.kv_heads % 2);
    d.heads = d.kv_heads * (1 + (int)((unsigned)d.heads % 3));
    d.seq_q = 1 + (int)((unsigned)d.seq_q % 40);
    d.seq_k = 1 + (int)((unsigned)d.seq_k % 40);
    d.head_dim = 1 + (int)((unsigned)d.head_dim % 72);
    d.dtype = (da_dtype)((unsigned)d.dtype % 4);         /* 3: invalid */
    d.causal = (int)((unsigned)d.causal % 3);            /* 2: invalid */
    if (!isfinite(d.scale) || fabsf(d.scale) > 4.0f) d.scale = 0.0f;
    d.group_size = (int)((unsigned)d.group_size % 10);   /* 0, 3, 5, 6, 7, 9 invalid */
    d.hash_bits = (int)((unsigned)d.hash_bits % 35);     /* 33, 34 invalid */
    static const int blocks[] = {0, 16, 32, 64, 128, 1024, 8, 48};
    d.hash_block = blocks[(unsigned)d.hash_block % 8];
    d.fusion = (da_fusion)((unsigned)d.fusion % 3);
    d.algo = (da_algo)((unsigned)d.algo % 4);
  }

  da_plan *p = NULL;
  da_status s = da_plan_create(ctx, &d, &p);
  const char *msg = da_context_last_error(ctx);
  if (s != DA_SUCCESS) {
    if (p != NULL || !msg || !*msg) abort(); /* refused: no plan, a message */
    return 0;
  }
  const da_attn_desc *rd = &p->d;
  int kvh = rd->kv_heads;
  int qd[4] = {rd->batch, rd->heads, rd->seq_q, rd->head_dim};
  int kd[4] = {rd->batch, kvh, rd->seq_k, rd->head_dim};
  /* raw mode may accept huge shapes: only tiny ones are run */
  if ((mode & 1) && (prod(qd, 4) > 65536 || prod(kd, 4) > 65536 ||
                     (size_t)rd->seq_q * (size_t)rd->seq_k > 65536)) {
    da_plan_destroy(p);
    return 0;
  }
  size_t nq = p->q_elems, nk = p->kv_elems, es = p->elem_size;
  if (nq != prod(qd, 4) || nk != prod(kd, 4)) abort();
  uint8_t *q = malloc(nq * es), *k = malloc(nk * es), *v = malloc(nk * es), *o = malloc(nq * es);
  int *perm = malloc(p->perm_count * sizeof(int));
  double *ref = malloc(nq * sizeof(double));
  if (!q || !k || !v || !o || !perm || !ref) abort();
  const uint8_t *vals = data + r.i;
  size_t nv = size > r.i ? size - r.i : 0, vi = 0;
  int nonfinite = (mode & 2) != 0, any_nonfinite = 0;
  void *arrs[3] = {q, k, v};
  size_t ns[3] = {nq, nk, nk};
  for (int a = 0; a < 3; a++)
    for (size_t i = 0; i < ns[a]; i++) {
      uint8_t b = nv ? vals[vi++ % nv] : (uint8_t)(i * 37 + (size_t)a * 11);
      da_store_elem(arrs[a], rd->dtype, i, value(b, nonfinite));
      /* NaN/Inf and the extreme finite values: no accuracy oracle (f32
       * arithmetic may overflow where the float64 reference does not) */
      if (nonfinite && b >= 250) any_nonfinite = 1;
    }
  memset(o, 0xff, nq * es);
  s = da_attention_host(p, q, k, v, o);
  if (s != DA_SUCCESS) abort(); /* a valid plan on valid memory must run */
  if (mode & 4) {
    if (da_plan_groups_host(p, q, perm) != DA_SUCCESS) abort();
    /* every tile's permutation is a permutation */
    for (size_t t = 0; t < p->perm_count / (size_t)rd->head_dim; t++) {
      uint8_t seen[256] = {0};
      for (int c = 0; c < rd->head_dim; c++) {
        int x = perm[t * (size_t)rd->head_dim + (size_t)c];
        if (x < 0 || x >= rd->head_dim || seen[x]++) abort();
      }
    }
  }
  if (!any_nonfinite) {
    if (rd->group_size > 1) ref_distr_attention(p, q, k, v, ref);
    else ref_attention(rd, q, k, v, ref);
    double num = 0, den = 0;
    for (size_t i = 0; i < nq; i++) {
      double y = (double)da_load_elem(o, rd->dtype, i);
      if (!isfinite(y) && isfinite(ref[i])) abort(); /* finite in, non-finite out */
      if (isfinite(ref[i])) {
        num += (y - ref[i]) * (y - ref[i]);
        den += ref[i] * ref[i];
      }
    }
    double bound = rd->dtype == DA_F32 ? 1e-5 : rd->dtype == DA_F16 ? 2e-3 : 1.6e-2;
    /* relative, with a floor for outputs that cancel to nearly 0 */
    if (sqrt(num) > 10.0 * bound * (sqrt(den) + 1e-3 * sqrt((double)nq))) abort();
  }
  free(q);
  free(k);
  free(v);
  free(o);
  free(perm);
  free(ref);
  da_plan_destroy(p);
  return 0;
}
