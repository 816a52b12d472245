/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The CPU backend's backward pass (SPEC section 1b), lib/cpu_bwd.c, run on
 * lib/cpu_backend.c's thread pool through the few entries below. Internal.
 */
#ifndef DA_CPU_BWD_H
#define DA_CPU_BWD_H

#include "cpu_kernels.h"

typedef struct cpu_bwd_pool {
  void *pool;
  /* runs fn(arg, tid, item) for items 0..nitems-1 on the threads whose
   * scratch the last scratch() call made ready */
  void (*run)(void *pool, cpu_item_fn fn, void *arg, long nitems);
  /* per-thread scratch of at least `bytes` (64-byte aligned) for the first
   * min(nthr, threads) threads; *out the array of their pointers */
  da_status (*scratch)(void *pool, da_context *ctx, size_t bytes, long nthr, float *const **out);
  int vector; /* the context's kernels: 0 portable, 1 AVX2, 2 AVX-512 (the items to use) */
} cpu_bwd_pool;

/* dQ, dK, dV of one da_attention_backward call; the caller holds the
 * pool's submit lock. */
DA_HIDDEN da_status da_cpu_backward(const da_plan *p, const da_bwd_call *c, const cpu_bwd_pool *pool);

#endif /* DA_CPU_BWD_H */
