/* SPDX-License-Identifier: Apache-2.0 */
/* The thread-safety rule of include/distrattn.h, exercised:
 *  - device enumeration from many threads at once, as the process's first
 *    library calls (the registry initialises each backend once);
 *  - 8 threads, each with its own context (CPU and OpenCL alternating),
 *    running plans of varied shapes and checking every result against the
 *    float64 reference;
 *  - 8 threads sharing two contexts (4 on a CPU one, 4 on an OpenCL one),
 *    each call on a shared context under that context's mutex, as the rule
 *    asks of the caller.
 * Failures are recorded per thread and reported by the main thread (cmocka's
 * assertions are not thread-safe). Run under helgrind/TSan to look for races
 * in the library itself. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cases.h"

#define NTHREADS 8
#define ITERS 3

typedef struct shared {
  da_context *ctx;
  pthread_mutex_t mu;
} shared;

typedef struct worker {
  int id;
  da_backend be;
  shared *sh;          /* NULL: the worker makes its own context */
  uint64_t seed;
  int runs;
  char err[1024];
} worker;

static void lock(worker *w) {
  if (w->sh) pthread_mutex_lock(&w->sh->mu);
}
static void unlock(worker *w) {
  if (w->sh) pthread_mutex_unlock(&w->sh->mu);
}

#define WFAIL(...)                                                                               \
  do {                                                                                           \
    if (!w->err[0]) snprintf(w->err, sizeof w->err, __VA_ARGS__);                               \
    goto done;                                                                                   \
  } while (0)

static void *work(void *arg) {
  worker *w = arg;
  da_context *own = NULL, *ctx;
  if (w->sh) {
    ctx = w->sh->ctx;
  } else {
    da_status s = da_context_create(&own, w->be, -1);
    if (s != DA_SUCCESS) {
      snprintf(w->err, sizeof w->err, "thread %d: da_context_create(%s): %s", w->id,
               da_backend_name(w->be), da_status_string(s));
      return NULL;
    }
    ctx = own;
  }
  tu_rng rng;
  tu_rng_init(&rng, w->seed);
  for (int it = 0; it < ITERS; it++) {
    da_attn_desc d;
    da_attn_desc_init(&d);
    d.batch = tu_randint(&rng, 1, 2);
    d.kv_heads = tu_randint(&rng, 1, 2);
    d.heads = d.kv_heads * tu_randint(&rng, 1, 2);
    d.seq_q = tu_randint(&rng, 1, 40);
    d.seq_k = tu_randint(&rng, 1, 40);
    /* few distinct kernels: OpenCL builds one per shape class (slow on PoCL) */
    d.head_dim = 32;
    d.causal = tu_randint(&rng, 0, 1);
    d.dtype = (da_dtype)tu_randint(&rng, 0, 1);
    d.group_size = 1 << tu_randint(&rng, 0, 1);
    d.hash_block = 16;
    d.fusion = (da_fusion)tu_randint(&rng, 0, 1);
    d.seed = tu_next(&rng);
    da_plan *p = NULL;
    tdata t;
    memset(&t, 0, sizeof t);
    char dbuf[256];
    lock(w);
    da_status s = da_plan_create(ctx, &d, &p);
    if (s != DA_SUCCESS) {
      snprintf(w->err, sizeof w->err, "thread %d: da_plan_create(%s): %s: %s", w->id,
               tu_desc_str(&d, dbuf, sizeof dbuf), da_status_string(s), da_context_last_error(ctx));
      unlock(w);
      goto done;
    }
    tdata_init(&t, &d, &rng);
    tdata_reference(&t, p); /* reads the plan: under the lock too */
    s = da_attention_host(p, t.q, t.k, t.v, t.o);
    if (s != DA_SUCCESS)
      snprintf(w->err, sizeof w->err, "thread %d: da_attention_host(%s): %s: %s", w->id,
               tu_desc_str(&d, dbuf, sizeof dbuf), da_status_string(s), da_context_last_error(ctx));
    /* the device path: buffers, enqueue, read back */
    size_t es = da_dtype_size(d.dtype), qb = t.nq * es, kb = t.nk * es;
    void *o2 = malloc(qb);
    da_buffer *bq = NULL, *bk = NULL, *bv = NULL, *bo = NULL;
    if (s == DA_SUCCESS && o2) {
      if ((s = da_buffer_create(ctx, qb, &bq)) || (s = da_buffer_create(ctx, kb, &bk)) ||
          (s = da_buffer_create(ctx, kb, &bv)) || (s = da_buffer_create(ctx, qb, &bo)) ||
          (s = da_buffer_write(bq, 0, t.q, qb)) || (s = da_buffer_write(bk, 0, t.k, kb)) ||
          (s = da_buffer_write(bv, 0, t.v, kb)) || (s = da_attention(p, bq, bk, bv, bo)) ||
          (s = da_buffer_read(bo, 0, o2, qb)) || (s = da_context_synchronize(ctx)))
        snprintf(w->err, sizeof w->err, "thread %d: device path (%s): %s: %s", w->id,
                 tu_desc_str(&d, dbuf, sizeof dbuf), da_status_string(s),
                 da_context_last_error(ctx));
    }
    da_buffer_destroy(bq);
    da_buffer_destroy(bk);
    da_buffer_destroy(bv);
    da_buffer_destroy(bo);
    da_plan_destroy(p);
    unlock(w);
    if (!w->err[0]) {
      double bound = tu_bound(d.dtype);
      double e1 = tu_rel_err(t.o, d.dtype, t.ref, t.nq);
      double e2 = o2 ? tu_rel_err(o2, d.dtype, t.ref, t.nq) : 0.0;
      if (!(e1 <= bound) || !(e2 <= bound))
        snprintf(w->err, sizeof w->err,
                 "thread %d on %s: %s: error %g (host) / %g (buffers) > %g [seed %llu]", w->id,
                 da_backend_name(w->be), tu_desc_str(&d, dbuf, sizeof dbuf), e1, e2, bound,
                 (unsigned long long)tu_seed());
    }
    free(o2);
    tdata_free(&t);
    if (w->err[0]) goto done;
    w->runs++;
  }
done:
  if (own) da_context_destroy(own);
  return NULL;
}

static void run_workers(worker *ws, int n) {
  pthread_t th[NTHREADS];
  for (int i = 0; i < n; i++)
    if (pthread_create(&th[i], NULL, work, &ws[i]) != 0) fail_msg("pthread_create");
  for (int i = 0; i < n; i++) pthread_join(th[i], NULL);
  for (int i = 0; i < n; i++)
    if (ws[i].err[0]) fail_msg("%s", ws[i].err);
  for (int i = 0; i < n; i++) assert_int_equal(ws[i].runs, ITERS);
}

static int have_cl(void) {
  if (da_backend_available(DA_BACKEND_OPENCL, NULL)) return 1;
  if (tu_backend_required(DA_BACKEND_OPENCL)) fail_msg("OpenCL is required but absent");
  return 0;
}

typedef struct enum_arg {
  int count;
  int bad;
} enum_arg;

static void *enumerate(void *arg) {
  enum_arg *a = arg;
  for (int r = 0; r < 20; r++) {
    int n = da_device_count();
    if (r == 0) a->count = n;
    else if (n != a->count) a->bad = 1;
    for (int i = 0; i < n; i++) {
      da_device_info info;
      if (da_device_get_info(i, &info) != DA_SUCCESS) a->bad = 1;
    }
    const char *why = NULL;
    (void)da_backend_available(DA_BACKEND_OPENCL, &why);
    if (!why) a->bad = 1;
    if (!da_backend_available(DA_BACKEND_CPU, NULL)) a->bad = 1;
  }
  return NULL;
}

/* First in the program: the threads race to initialise the registry. */
static void test_enumerate_concurrently(void **state) {
  pthread_t th[NTHREADS];
  enum_arg a[NTHREADS];
  memset(a, 0, sizeof a);
  for (int i = 0; i < NTHREADS; i++)
    if (pthread_create(&th[i], NULL, enumerate, &a[i]) != 0) fail_msg("pthread_create");
  for (int i = 0; i < NTHREADS; i++) pthread_join(th[i], NULL);
  for (int i = 0; i < NTHREADS; i++) {
    assert_int_equal(a[i].bad, 0);
    assert_int_equal(a[i].count, a[0].count);
  }
  assert_true(a[0].count >= 1);
}

static void test_own_contexts(void **state) {
  int cl = have_cl();
  worker ws[NTHREADS];
  memset(ws, 0, sizeof ws);
  for (int i = 0; i < NTHREADS; i++) {
    ws[i].id = i;
    ws[i].be = (cl && (i & 1)) ? DA_BACKEND_OPENCL : DA_BACKEND_CPU;
    ws[i].seed = tu_seed() + 1000u * (unsigned)i;
  }
  run_workers(ws, NTHREADS);
}

static void test_shared_contexts(void **state) {
  int cl = have_cl();
  shared sh[2];
  memset(sh, 0, sizeof sh);
  da_backend bes[2] = {DA_BACKEND_CPU, cl ? DA_BACKEND_OPENCL : DA_BACKEND_CPU};
  for (int j = 0; j < 2; j++) {
    TU_CHECK(sh[j].ctx, da_context_create(&sh[j].ctx, bes[j], -1));
    pthread_mutex_init(&sh[j].mu, NULL);
  }
  worker ws[NTHREADS];
  memset(ws, 0, sizeof ws);
  for (int i = 0; i < NTHREADS; i++) {
    ws[i].id = i;
    ws[i].sh = &sh[i & 1];
    ws[i].be = bes[i & 1];
    ws[i].seed = tu_seed() + 7777u * (unsigned)i;
  }
  run_workers(ws, NTHREADS);
  for (int j = 0; j < 2; j++) {
    da_context_destroy(sh[j].ctx);
    pthread_mutex_destroy(&sh[j].mu);
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_enumerate_concurrently),
      cmocka_unit_test(test_own_contexts),
      cmocka_unit_test(test_shared_contexts),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
