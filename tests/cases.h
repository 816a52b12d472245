/* SPDX-License-Identifier: Apache-2.0 */
/* Running one attention case on a backend and measuring it against the
 * float64 reference. Shared by test_attention, test_invariants and
 * test_consistency. */
#ifndef DA_TEST_CASES_H
#define DA_TEST_CASES_H

#include "ref.h"
#include "testutil.h"

typedef struct tcase {
  int batch, heads, kv_heads, seq_q, seq_k, head_dim;
  da_dtype dtype;
  int causal;
  da_algo algo;
  int group_size;   /* 0 or 1: exact */
  da_fusion fusion;
  int hash_bits, hash_block; /* 0: defaults */
  float scale;      /* 0: default */
} tcase;

void tcase_desc(const tcase *c, uint64_t seed, da_attn_desc *d);
const char *tcase_str(const tcase *c, char *buf, size_t len);

/* Host arrays of one case. */
typedef struct tdata {
  da_attn_desc d;
  size_t nq, nk;          /* elements */
  void *q, *k, *v, *o;    /* o poisoned */
  double *ref;            /* nq, filled by tdata_reference */
} tdata;

/* Allocates and fills q, k, v with fresh normal values (rng), poisons o. */
void tdata_init(tdata *t, const da_attn_desc *d, tu_rng *rng);
/* Device buffers of the case on ctx: q, k, v created and written, o created
 * (not written). Fails the test on any error. */
void tdata_upload(const tdata *t, da_context *ctx, da_buffer **q, da_buffer **k, da_buffer **v,
                  da_buffer **o);
/* ref = float64 DistrAttention of plan p (exact when G = 1). */
void tdata_reference(tdata *t, const da_plan *p);
void tdata_free(tdata *t);

/* Creates the plan of c on ctx. Returns DA_ERR_UNSUPPORTED (and no plan) when
 * the backend refuses the GEMM algorithm and is not the CPU backend; fails the
 * test on any other error. */
da_status tcase_plan(da_context *ctx, const da_attn_desc *d, da_plan **p);

/* da_attention_host on poisoned o, then: no NaN/Inf in o (fails the test
 * otherwise). Returns the relative error against t->ref. */
double tcase_run_host(da_context *ctx, da_plan *p, tdata *t, const char *what);

/* Case c on ctx against the float64 reference within SPEC's bound
 * (tu_bound): its descriptor from desc_seed, fresh inputs from rng, then
 * the case's algorithm, or with DA_ALGO_AUTO both FUSED and GEMM on the
 * same inputs (a GEMM the backend refuses is skipped, as tcase_plan
 * says). Fails the test naming the backend, the shape and the seed. */
void tcase_check_reference(da_context *ctx, const tcase *c, tu_rng *rng, uint64_t desc_seed,
                           const char *what);

#endif /* DA_TEST_CASES_H */
