/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The built-in CPU backend: exact attention and DistrAttention (SPEC section 1)
 * on host memory, f32 arithmetic, a persistent pthread pool per context.
 *
 * The compute kernels (lib/cpu_kern_tmpl.h) are built for AVX-512, for
 * AVX2+FMA+F16C and portably; the best one the processor supports is chosen
 * at run time (DISTRATTN_CPU_ISA=generic|avx2|avx512 narrows the choice).
 * One call runs as passes over the pool (lib/cpu_kernels.h): the column
 * groups of every hash tile (G > 1; when a hash tile is one query block,
 * its attention item groups it instead), then per chunk of kv heads K and
 * V packed once into f32 panels and the attention of every query block of
 * the heads that read them, head by head (FUSED: online softmax over key
 * blocks; GEMM: the logits of a query block against all keys
 * materialised). Decode (exact, fused, few query rows per kv head) takes
 * a split-KV path instead: no packing, per (batch, kv head, chunk of keys)
 * every query row of the kv head against K and V read in place, then the
 * chunks merged by their log-sum-exp (dec_run).
 */
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cpu_bwd.h"
#include "cpu_kernels.h"

#ifdef DA_CPU_X86
#  include <cpuid.h>
#endif

#define CACHE_ALIGN 64
#define CPU_MAX_THREADS DA_CPU_MAX_THREADS


static inline size_t round_up(size_t x, size_t m) { return (x + m - 1) / m * m; }

/* ---------------------------------------------------------------------- */
/* Kernel choice                                                          */

/* The kernels of an ISA, or NULL when this CPU cannot run them
 * (isa: 0 generic, 1 avx2, 2 avx512). */
static const cpu_kernels *kernels_for(int isa) {
  if (isa == 0) return &da_cpu_kernels_generic;
#ifdef DA_CPU_X86
  /* __builtin_cpu_supports checks that the OS saves the AVX/AVX-512 state;
   * F16C (CPUID.1:ECX bit 29), which not every compiler's builtin knows,
   * comes from cpuid */
  unsigned a = 0, b = 0, c = 0, d = 0;
  int f16c = __get_cpuid(1, &a, &b, &c, &d) && (c & (1u << 29));
  __builtin_cpu_init();
  int avx2 = f16c && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (isa == 2 && avx2 && __builtin_cpu_supports("avx512f") &&
      __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512dq"))
    return &da_cpu_kernels_avx512;
  if (isa == 1 && avx2) return &da_cpu_kernels_avx2;
#endif
  return NULL;
}

/* The best kernels this CPU runs. */
static const cpu_kernels *best_kernels(void) {
  const cpu_kernels *k = NULL;
  for (int isa = 2; !k; isa--) k = kernels_for(isa); /* isa 0 always runs */
  return k;
}

static int default_threads(void) {
  long n = sysconf(_SC_NPROCESSORS_ONLN);
  if (n < 1) n = 1;
  return n > CPU_MAX_THREADS ? CPU_MAX_THREADS : (int)n;
}

/* The threads and kernels of a context: DISTRATTN_CPU_THREADS and
 * DISTRATTN_CPU_ISA as the core parsed them (ov, da_overrides: the context's,
 * at da_context_create); an ISA this CPU lacks is refused by name. */
static da_status cpu_settings(da_context *ctx, const da_overrides *ov, int *threads,
                              const cpu_kernels **kern) {
  static const char *const isas[] = {"generic", "avx2", "avx512"};
  *threads = ov->cpu_threads > 0 ? ov->cpu_threads : default_threads();
  *kern = ov->cpu_isa < 0 ? best_kernels() : kernels_for(ov->cpu_isa);
  if (!*kern)
    return da_set_error(ctx, DA_ERR_UNSUPPORTED,
                        "DISTRATTN_CPU_ISA=\"%s\": this CPU cannot run those kernels (it runs "
                        "\"%s\")",
                        isas[ov->cpu_isa], best_kernels()->isa);
  return DA_SUCCESS;
}

/* ---------------------------------------------------------------------- */
/* Thread pool                                                            */

typedef void (*cpu_job_fn)(void *arg, int tid, long item);

typedef struct cpu_pool {
  pthread_mutex_t mu;
  pthread_cond_t cv_work, cv_done;
  pthread_mutex_t submit; /* one job at a time per context */
  int nthreads;           /* workers + the calling thread */
  int nworkers;           /* started workers */
  pthread_t *th;
  unsigned long gen;
  int quit;
  int pending;
  cpu_job_fn fn;
  void *arg;
  long nitems;
  atomic_long next;
  int active;              /* threads that take part in the current job */
  int ready;               /* threads whose scratch is sized for this call */
  const cpu_kernels *kern; /* chosen at context creation (cpu_settings) */
  /* per-thread scratch, grown on demand by the submitting thread */
  float **scratch;
  size_t *cap; /* bytes */
  float *pack;     /* packed K and V, kept between calls */
  size_t pack_cap; /* bytes */
  int *perm;       /* G > 1: the permutations and fusion weights of a call, kept */
  float *wts;
  size_t perm_cap; /* elements of each */
  long dec_calls;  /* calls that ran the split-KV decode path (tests) */
} cpu_pool;

typedef struct worker_arg {
  cpu_pool *pool;
  int tid;
} worker_arg;

static void run_items(cpu_pool *pl, cpu_job_fn fn, void *arg, long nitems, int tid) {
  for (;;) {
    long it = atomic_fetch_add_explicit(&pl->next, 1, memory_order_relaxed);
    if (it >= nitems) break;
    fn(arg, tid, it);
  }
}

static void *worker_main(void *p) {
  worker_arg *wa = p;
  cpu_pool *pl = wa->pool;
  int tid = wa->tid;
  free(wa);
  unsigned long seen = 0;
  pthread_mutex_lock(&pl->mu);
  for (;;) {
    while (!pl->quit && pl->gen == seen) pthread_cond_wait(&pl->cv_work, &pl->mu);
    if (pl->quit) break;
    seen = pl->gen;
    if (tid >= pl->active) continue; /* not part of this job (none of its count) */
    cpu_job_fn fn = pl->fn;
    void *arg = pl->arg;
    long n = pl->nitems;
    pthread_mutex_unlock(&pl->mu);
    run_items(pl, fn, arg, n, tid);
    pthread_mutex_lock(&pl->mu);
    if (--pl->pending == 0) pthread_cond_signal(&pl->cv_done);
  }
  pthread_mutex_unlock(&pl->mu);
  return NULL;
}

/* Runs fn over items 0..nitems-1 on the threads whose scratch is ready
 * (pool_scratch), no more than there are items; the caller holds submit. */
static void pool_run(cpu_pool *pl, cpu_job_fn fn, void *arg, long nitems) {
  if (nitems <= 0) return;
  atomic_store(&pl->next, 0);
  int active = pl->ready < pl->nworkers + 1 ? pl->ready : pl->nworkers + 1;
  if ((long)active > nitems) active = (int)nitems;
  if (active <= 1) {
    run_items(pl, fn, arg, nitems, 0);
    return;
  }
  pthread_mutex_lock(&pl->mu);
  pl->fn = fn;
  pl->arg = arg;
  pl->nitems = nitems;
  pl->active = active;
  pl->pending = active - 1;
  pl->gen++;
  pthread_cond_broadcast(&pl->cv_work);
  pthread_mutex_unlock(&pl->mu);
  run_items(pl, fn, arg, nitems, 0);
  pthread_mutex_lock(&pl->mu);
  while (pl->pending > 0) pthread_cond_wait(&pl->cv_done, &pl->mu);
  pthread_mutex_unlock(&pl->mu);
}

/* Make the scratch of the first nthr threads at least `bytes` (64-byte
 * aligned): the threads a call's jobs can use (no more than its items), so
 * a call with one item holds one thread's scratch, not every thread's. */
static da_status pool_scratch(cpu_pool *pl, da_context *ctx, size_t bytes, long nthr) {
  bytes = round_up(bytes ? bytes : 1, CACHE_ALIGN);
  if (nthr > pl->nthreads) nthr = pl->nthreads;
  if (nthr < 1) nthr = 1;
  pl->ready = 0;
  for (int t = 0; t < (int)nthr; t++) {
    if (pl->cap[t] >= bytes) continue;
    free(pl->scratch[t]);
    pl->scratch[t] = NULL;
    pl->cap[t] = 0;
    void *m = NULL;
    if (posix_memalign(&m, CACHE_ALIGN, bytes) != 0 || !m)
      return da_set_error(ctx, DA_ERR_HOST_MEMORY,
                          "cpu backend: cannot allocate %zu bytes of scratch for thread %d", bytes,
                          t);
    memset(m, 0, bytes);
    pl->scratch[t] = m;
    pl->cap[t] = bytes;
  }
  pl->ready = (int)nthr;
  return DA_SUCCESS;
}

/* Scratch above this many bytes per thread (GEMM on long keys) is given
 * back after the call instead of being kept for the next one. */
#define SCRATCH_KEEP ((size_t)16 << 20)

static void pool_release_scratch(cpu_pool *pl) {
  for (int t = 0; t < pl->nthreads; t++) {
    free(pl->scratch[t]);
    pl->scratch[t] = NULL;
    pl->cap[t] = 0;
  }
}

static void pool_destroy(cpu_pool *pl) {
  if (!pl) return;
  if (pl->th) {
    pthread_mutex_lock(&pl->mu);
    pl->quit = 1;
    pthread_cond_broadcast(&pl->cv_work);
    pthread_mutex_unlock(&pl->mu);
    for (int i = 0; i < pl->nworkers; i++) pthread_join(pl->th[i], NULL);
  }
  if (pl->scratch)
    for (int t = 0; t < pl->nthreads; t++) free(pl->scratch[t]);
  free(pl->scratch);
  free(pl->cap);
  free(pl->pack);
  free(pl->perm);
  free(pl->wts);
  free(pl->th);
  pthread_cond_destroy(&pl->cv_work);
  pthread_cond_destroy(&pl->cv_done);
  pthread_mutex_destroy(&pl->mu);
  pthread_mutex_destroy(&pl->submit);
  free(pl);
}

static da_status pool_create(da_context *ctx, const da_overrides *ov, cpu_pool **out) {
  *out = NULL;
  int nthreads;
  const cpu_kernels *kern;
  da_status s = cpu_settings(ctx, ov, &nthreads, &kern);
  if (s != DA_SUCCESS) return s;
  cpu_pool *pl = calloc(1, sizeof *pl);
  if (!pl) return da_set_error(ctx, DA_ERR_HOST_MEMORY, "cpu backend: cannot allocate the thread pool");
  int e;
  if ((e = pthread_mutex_init(&pl->mu, NULL)) != 0) {
    free(pl);
    return da_set_error(ctx, DA_ERR_BACKEND, "cpu backend: pthread_mutex_init failed: %s", strerror(e));
  }
  if ((e = pthread_mutex_init(&pl->submit, NULL)) != 0) {
    pthread_mutex_destroy(&pl->mu);
    free(pl);
    return da_set_error(ctx, DA_ERR_BACKEND, "cpu backend: pthread_mutex_init failed: %s", strerror(e));
  }
  if ((e = pthread_cond_init(&pl->cv_work, NULL)) != 0) {
    pthread_mutex_destroy(&pl->submit);
    pthread_mutex_destroy(&pl->mu);
    free(pl);
    return da_set_error(ctx, DA_ERR_BACKEND, "cpu backend: pthread_cond_init failed: %s", strerror(e));
  }
  if ((e = pthread_cond_init(&pl->cv_done, NULL)) != 0) {
    pthread_cond_destroy(&pl->cv_work);
    pthread_mutex_destroy(&pl->submit);
    pthread_mutex_destroy(&pl->mu);
    free(pl);
    return da_set_error(ctx, DA_ERR_BACKEND, "cpu backend: pthread_cond_init failed: %s", strerror(e));
  }
  pl->nthreads = nthreads;
  pl->kern = kern;
  atomic_init(&pl->next, 0);
  pl->scratch = calloc((size_t)pl->nthreads, sizeof *pl->scratch);
  pl->cap = calloc((size_t)pl->nthreads, sizeof *pl->cap);
  pl->th = calloc((size_t)pl->nthreads, sizeof *pl->th);
  if (!pl->scratch || !pl->cap || !pl->th) {
    pool_destroy(pl);
    return da_set_error(ctx, DA_ERR_HOST_MEMORY, "cpu backend: cannot allocate the thread pool");
  }
  for (int t = 1; t < pl->nthreads; t++) {
    worker_arg *wa = malloc(sizeof *wa);
    if (!wa) {
      pool_destroy(pl);
      return da_set_error(ctx, DA_ERR_HOST_MEMORY, "cpu backend: cannot allocate worker %d", t);
    }
    wa->pool = pl;
    wa->tid = t;
    if ((e = pthread_create(&pl->th[t - 1], NULL, worker_main, wa)) != 0) {
      free(wa);
      pool_destroy(pl);
      /* EAGAIN: the system's or the process's limit on threads or memory */
      return da_set_error(ctx, e == EAGAIN || e == ENOMEM ? DA_ERR_HOST_MEMORY : DA_ERR_BACKEND,
                          "cpu backend: cannot start worker thread %d of %d: pthread_create: %s "
                          "(%s); DISTRATTN_CPU_THREADS sets fewer",
                          t, nthreads - 1, strerror(e),
                          e == EAGAIN ? "EAGAIN" : e == ENOMEM ? "ENOMEM" : "error");
    }
    pl->nworkers++;
  }
  *out = pl;
  return DA_SUCCESS;
}

/* ---------------------------------------------------------------------- */
/* Attention                                                              */

/* Packed K and V of at most this many bytes per chunk of kv heads. */
#define PACK_LIMIT ((size_t)64 << 20)

static da_status pool_pack(cpu_pool *pl, da_context *ctx, size_t floats) {
  size_t bytes = round_up(floats ? floats * sizeof(float) : 1, CACHE_ALIGN);
  if (pl->pack_cap >= bytes) return DA_SUCCESS;
  free(pl->pack);
  pl->pack = NULL;
  pl->pack_cap = 0;
  void *m = NULL;
  if (posix_memalign(&m, CACHE_ALIGN, bytes) != 0 || !m)
    return da_set_error(ctx, DA_ERR_HOST_MEMORY,
                        "cpu backend: cannot allocate %zu bytes for packed K and V", bytes);
  pl->pack = m;
  pl->pack_cap = bytes;
  return DA_SUCCESS;
}

static void job_init(cpu_attn_job *J, const da_plan *p, void *q, void *k, void *v, void *o,
                     cpu_pool *pl) {
  const da_attn_desc *d = &p->d;
  memset(J, 0, sizeof *J);
  J->p = p;
  J->q = q;
  J->k = k;
  J->v = v;
  J->o = o;
  J->scratch = pl->scratch;
  J->G = d->group_size > 1 ? d->group_size : 1;
  J->d = d->head_dim;
  J->D = J->G == 1 ? d->head_dim : (d->head_dim + J->G - 1) / J->G;
  J->hpk = d->kv_heads > 0 ? d->heads / d->kv_heads : 1;
  J->off = (long)d->seq_k - (long)d->seq_q;
  J->qmul = da_log2_mul(d->scale); /* capped: SPEC 1, "Scale" */
  memcpy(J->qst, p->x.q_stride, sizeof J->qst);
  memcpy(J->kst, p->x.k_stride, sizeof J->kst);
  memcpy(J->vst, p->x.v_stride, sizeof J->vst);
  memcpy(J->ost, p->x.o_stride, sizeof J->ost);
  J->wl = p->x.window_left;
  J->wr = p->x.window_right;
  if (p->x.strategy == DA_STRATEGY_PROJECTION) { /* SPEC 1c: logits over R columns */
    J->R = p->x.rank;
    J->pj = p->sproj;
    J->D = J->R;
  }
  pl->kern->setup(J);
}

/* The per-sequence rows and lengths of a call (da_attn_ext), checked:
 * *seq holds q0, lq, k0, lk ([4][batch]); NULL when every sequence is
 * seq_q x seq_k at rows 0. */
static da_status call_lengths(const da_plan *p, const da_call *c, int **seq) {
  da_context *ctx = p->ctx;
  const da_attn_desc *d = &p->d;
  *seq = NULL;
  if (p->x.seqlens == DA_SEQLENS_NONE) return DA_SUCCESS;
  const size_t B = (size_t)d->batch;
  int *a = malloc(4 * B * sizeof(int));
  if (!a) return da_set_error(ctx, DA_ERR_HOST_MEMORY, "cpu backend: no memory for %zu lengths", B);
  int *q0 = a, *lq = a + B, *k0 = a + 2 * B, *lk = a + 3 * B;
  if (p->x.seqlens == DA_SEQLENS_KV) {
    const int *sl = c->seqlens_k;
    for (size_t b = 0; b < B; b++) {
      if (sl[b] < 0 || sl[b] > d->seq_k) {
        free(a);
        return da_set_error(ctx, DA_ERR_INVALID_ARG,
                            "seqlens_k[%zu] = %d is outside 0..seq_k = %d (the capacity)", b, sl[b],
                            d->seq_k);
      }
      q0[b] = 0, lq[b] = d->seq_q, k0[b] = 0, lk[b] = sl[b];
    }
  } else {
    const int *cq = c->cu_q, *ck = c->cu_k;
    if (cq[0] != 0 || ck[0] != 0) {
      free(a);
      return da_set_error(ctx, DA_ERR_INVALID_ARG, "cu_seqlens_q[0] = %d, cu_seqlens_k[0] = %d: "
                          "both must be 0", cq[0], ck[0]);
    }
    for (size_t b = 0; b < B; b++) {
      long nq = (long)cq[b + 1] - cq[b], nk = (long)ck[b + 1] - ck[b];
      const char *bad = NULL;
      if (nq < 0 || nq > d->seq_q) bad = "q";
      else if (nk < 0 || nk > d->seq_k) bad = "k";
      if (bad) {
        free(a);
        return da_set_error(ctx, DA_ERR_INVALID_ARG,
                            "cu_seqlens_%s[%zu..%zu] = %d..%d: sequence %zu's length must be in "
                            "0..seq_%s = %d",
                            bad, b, b + 1, bad[0] == 'q' ? cq[b] : ck[b],
                            bad[0] == 'q' ? cq[b + 1] : ck[b + 1], b, bad,
                            bad[0] == 'q' ? d->seq_q : d->seq_k);
      }
      q0[b] = cq[b], lq[b] = (int)nq, k0[b] = ck[b], lk[b] = (int)nk;
    }
    if ((size_t)cq[B] > c->rows_q || (size_t)ck[B] > c->rows_k) {
      free(a);
      return da_set_error(ctx, DA_ERR_INVALID_ARG,
                          "cu_seqlens_q[%zu] = %d, cu_seqlens_k[%zu] = %d: past rows_q = %zu or "
                          "rows_k = %zu",
                          B, cq[B], B, ck[B], c->rows_q, c->rows_k);
    }
  }
  *seq = a;
  return DA_SUCCESS;
}

/* ---------------------------------------------------------------------- */
/* Split-KV decode                                                        */

/* The decode path runs by default where a kv head's query rows (query
 * heads per kv head x seq_q) are at most DEC_ROWS_AUTO: there K and V are
 * read once for those rows with no packing pass (README, "CPU backend",
 * decode). Measured (one thread, seq_k 4096, head_dim 128, f16): 5.1x
 * faster than the blocked path at 4 rows, 2.8x at 16, 1.3x at 64, even at
 * 128 and 10 % slower at 256; with short keys (seq_k 256..512) the blocked
 * path is 20 % faster at 128 rows and the decode path 1.3x at 64.
 * DISTRATTN_CPU_DECODE=1 forces it up to DEC_ROWS_MAX rows (its scratch),
 * 0 never runs it. */
#define DEC_ROWS_AUTO 64
#define DEC_ROWS_MAX 256
/* keys per chunk: at least, at most; the chunks of a call aim at
 * DEC_ITEMS_PER_THREAD work items per thread */
#define DEC_CHUNK_MIN 64
#define DEC_CHUNK_MAX 2048
#define DEC_ITEMS_PER_THREAD 16

/* Why the decode path cannot run a plan, or NULL. */
static const char *dec_refusal(const da_plan *p) {
  const da_attn_desc *d = &p->d;
  if (p->x.strategy == DA_STRATEGY_PROJECTION)
    return "the projection strategy (its reduced-width K^T is made by the blocked path)";
  if (d->group_size > 1)
    return "group_size > 1 (DistrAttention's hash tiles stay on the blocked path)";
  if (d->head_dim > 256) return "head_dim > 256";
  long hpk = d->kv_heads > 0 ? d->heads / d->kv_heads : 1;
  if (hpk * d->seq_q > DEC_ROWS_MAX)
    return "more than 256 query rows per kv head (heads / kv_heads x seq_q)";
  if (d->algo != DA_ALGO_FUSED) return "algo GEMM";
  return NULL;
}

/* Whether a plan runs the decode path: DISTRATTN_CPU_DECODE (the plan's
 * p->ov.cpu_decode: -1 by shape, 0 never, 1 always), where it can. */
static int dec_use(const da_plan *p) {
  const da_attn_desc *d = &p->d;
  if (p->ov.cpu_decode == 0 || dec_refusal(p)) return 0;
  long hpk = d->kv_heads > 0 ? d->heads / d->kv_heads : 1;
  return p->ov.cpu_decode == 1 || hpk * d->seq_q <= DEC_ROWS_AUTO;
}

DA_HIDDEN long da_cpu_decode_calls(const da_context *ctx) {
  if (!ctx || ctx->iface != &da_cpu_backend_iface || !ctx->bctx) return -1;
  return ((const cpu_pool *)ctx->bctx)->dec_calls;
}

/* The decode passes of a call (pool's submit held, J set up by job_init). */
static da_status dec_run(cpu_pool *pl, const da_plan *p, cpu_attn_job *J) {
  da_context *ctx = p->ctx;
  const da_attn_desc *d = &p->d;
  const cpu_kernels *K = pl->kern;
  long maxlk = 0;
  for (int b = 0; b < d->batch; b++) {
    long lk = J->lk ? J->lk[b] : d->seq_k;
    if (lk > maxlk) maxlk = lk;
  }
  const long npairs = (long)d->batch * d->kv_heads;
  long long C = ((long long)maxlk * npairs + (long long)DEC_ITEMS_PER_THREAD * pl->nthreads - 1) /
                ((long long)DEC_ITEMS_PER_THREAD * pl->nthreads);
  C = (long long)round_up((size_t)(C > 0 ? C : 1), 32);
  if (C < DEC_CHUNK_MIN) C = DEC_CHUNK_MIN;
  if (C > DEC_CHUNK_MAX) C = DEC_CHUNK_MAX;
  J->dec_C = (int)C;
  J->dec_nch = maxlk > 0 ? (int)((maxlk + C - 1) / C) : 1;
  K->dec_setup(J);
  const long items = npairs * J->dec_nch, comb = (long)d->batch * d->heads;
  da_status s = pool_scratch(pl, ctx, J->scratch_floats * sizeof(float), items > comb ? items : comb);
  J->scratch = pl->scratch;
  if (s == DA_SUCCESS) s = pool_pack(pl, ctx, (size_t)items * J->dec_part);
  if (s != DA_SUCCESS) return s;
  J->part = pl->pack;
  pool_run(pl, K->dec_item, J, items);
  pool_run(pl, K->dec_combine, J, comb);
  pl->dec_calls++;
  if ((size_t)items * J->dec_part * sizeof(float) > SCRATCH_KEEP) {
    free(pl->pack);
    pl->pack = NULL;
    pl->pack_cap = 0;
  }
  return DA_SUCCESS;
}

static da_status cpu_run(const da_plan *p, const da_call *c);

static da_status cpu_attention(const da_plan *p, void *q, void *k, void *v, void *o) {
  da_call c;
  memset(&c, 0, sizeof c);
  c.q = q, c.k = k, c.v = v, c.o = o;
  return cpu_run(p, &c);
}

static da_status cpu_attention_ext(const da_plan *p, const da_call *c) { return cpu_run(p, c); }

static da_status cpu_run(const da_plan *p, const da_call *c) {
  void *q = c->q, *k = c->k, *v = c->v, *o = c->o;
  da_context *ctx = p->ctx;
  cpu_pool *pl = ctx->bctx;
  const da_attn_desc *d = &p->d;
  if (!pl) return da_set_error(ctx, DA_ERR_BACKEND, "cpu backend: context has no thread pool");
  if (!q || !k || !v || !o)
    return da_set_error(ctx, DA_ERR_INVALID_ARG, "cpu backend: NULL q, k, v or o");
  if (d->batch <= 0 || d->heads <= 0 || d->seq_q <= 0 || d->head_dim <= 0) return DA_SUCCESS;
  if (d->kv_heads <= 0 || d->heads % d->kv_heads != 0)
    return da_set_error(ctx, DA_ERR_INVALID_ARG, "cpu backend: heads %d not a multiple of kv_heads %d",
                        d->heads, d->kv_heads);
  if (d->group_size > 1 && d->head_dim > 256)
    return da_set_error(ctx, DA_ERR_UNSUPPORTED,
                        "cpu backend: group_size %d needs head_dim <= 256, got %d", d->group_size,
                        d->head_dim);

  int e = pthread_mutex_lock(&pl->submit);
  if (e != 0)
    return da_set_error(ctx, DA_ERR_BACKEND, "cpu backend: pthread_mutex_lock failed: %s", strerror(e));
  const cpu_kernels *K = pl->kern;
  int *seq = NULL;
  da_status sl = call_lengths(p, c, &seq);
  if (sl != DA_SUCCESS) {
    pthread_mutex_unlock(&pl->submit);
    return sl;
  }
  cpu_attn_job J;
  job_init(&J, p, q, k, v, o, pl);
  J.q_off = c->q_off, J.k_off = c->k_off, J.v_off = c->v_off, J.o_off = c->o_off;
  if (seq) {
    const size_t B = (size_t)d->batch;
    J.q0 = seq, J.lq = seq + B, J.k0 = seq + 2 * B, J.lk = seq + 3 * B;
  }
  if (c->lse) {
    J.lse = (float *)c->lse + c->lse_off;
    J.lse_packed = p->x.seqlens == DA_SEQLENS_PACKED;
    J.lse_rows = c->rows_q;
  }
  if (dec_use(p)) {
    da_status ds = dec_run(pl, p, &J);
    pthread_mutex_unlock(&pl->submit);
    free(seq);
    return ds;
  }
  const long attn_items = (long)d->batch * d->heads * J.nqb;
  const long group_items = (long)d->batch * d->heads * p->n_tiles;
  da_status s = pool_scratch(pl, ctx, J.scratch_floats * sizeof(float),
                             J.G > 1 && group_items > attn_items ? group_items : attn_items);
  J.scratch = pl->scratch;
  if (s == DA_SUCCESS && J.G > 1) {
    /* kept in the pool between calls: allocated per call, blocks this
     * large come fresh from the kernel each time (page faults) */
    size_t n = (size_t)d->batch * d->heads * p->n_tiles * d->head_dim;
    if (pl->perm_cap < n) {
      free(pl->perm);
      free(pl->wts);
      pl->perm = malloc(n * sizeof *pl->perm);
      pl->wts = malloc(n * sizeof *pl->wts);
      pl->perm_cap = pl->perm && pl->wts ? n : 0;
    }
    if (pl->perm_cap < n) {
      s = da_set_error(ctx, DA_ERR_HOST_MEMORY,
                       "cpu backend: cannot allocate %zu column permutations and weights", n);
    } else {
      J.perm_all = pl->perm;
      J.a_all = pl->wts;
      /* a hash tile that is one query block is grouped by its attention
       * item itself (lib/cpu_kern_tmpl.h) */
      if (d->hash_block != J.QB)
        pool_run(pl, K->groups_item, &J, (long)d->batch * d->heads * p->n_tiles);
    }
  }
  long npairs_all = (long)d->batch * d->kv_heads;
  size_t per_pair = (size_t)J.nkb * (J.kblk + J.vblk);
  long chunk = npairs_all;
  if (per_pair > 0 && (size_t)chunk * per_pair * sizeof(float) > PACK_LIMIT) {
    chunk = (long)(PACK_LIMIT / (per_pair * sizeof(float)));
    if (chunk < 1) chunk = 1;
  }
  if (s == DA_SUCCESS) s = pool_pack(pl, ctx, (size_t)chunk * per_pair);
  for (long p0 = 0; s == DA_SUCCESS && p0 < npairs_all; p0 += chunk) {
    J.pair0 = p0;
    J.npairs = npairs_all - p0 < chunk ? npairs_all - p0 : chunk;
    J.kpack = pl->pack;
    J.vpack = pl->pack + (size_t)J.npairs * J.nkb * J.kblk;
    pool_run(pl, K->pack_item, &J, J.npairs * J.nkb);
    pool_run(pl, K->attn_item, &J, J.npairs * J.hpk * J.nqb);
  }
  if (J.scratch_floats * sizeof(float) > SCRATCH_KEEP) pool_release_scratch(pl);
  if (pl->perm_cap * (sizeof *pl->perm + sizeof *pl->wts) > SCRATCH_KEEP) {
    free(pl->perm);
    free(pl->wts);
    pl->perm = NULL;
    pl->wts = NULL;
    pl->perm_cap = 0;
  }
  pthread_mutex_unlock(&pl->submit);
  free(seq);
  return s;
}

static da_status cpu_groups(const da_plan *p, void *q, void *perm) {
  da_context *ctx = p->ctx;
  cpu_pool *pl = ctx->bctx;
  const da_attn_desc *d = &p->d;
  if (!pl) return da_set_error(ctx, DA_ERR_BACKEND, "cpu backend: context has no thread pool");
  if (!q || !perm) return da_set_error(ctx, DA_ERR_INVALID_ARG, "cpu backend: NULL q or perm");
  if (d->head_dim > 256)
    return da_set_error(ctx, DA_ERR_UNSUPPORTED, "cpu backend: groups need head_dim <= 256, got %d",
                        d->head_dim);
  int e = pthread_mutex_lock(&pl->submit);
  if (e != 0)
    return da_set_error(ctx, DA_ERR_BACKEND, "cpu backend: pthread_mutex_lock failed: %s", strerror(e));
  cpu_attn_job J;
  job_init(&J, p, q, NULL, NULL, NULL, pl);
  da_status s = pool_scratch(pl, ctx, J.scratch_floats * sizeof(float),
                             (long)d->batch * d->heads * p->n_tiles);
  if (s == DA_SUCCESS) {
    J.scratch = pl->scratch;
    J.perm_all = perm;
    J.a_all = NULL;
    pool_run(pl, pl->kern->groups_item, &J, (long)d->batch * d->heads * p->n_tiles);
  }
  if (J.scratch_floats * sizeof(float) > SCRATCH_KEEP) pool_release_scratch(pl);
  pthread_mutex_unlock(&pl->submit);
  return s;
}

/* The backward pass (lib/cpu_bwd.c) on this context's pool. */
static void bwd_run(void *pool, cpu_item_fn fn, void *arg, long nitems) {
  pool_run(pool, fn, arg, nitems);
}

static da_status bwd_scratch(void *pool, da_context *ctx, size_t bytes, long nthr,
                             float *const **out) {
  cpu_pool *pl = pool;
  da_status s = pool_scratch(pl, ctx, bytes, nthr);
  *out = pl->scratch;
  return s;
}

static da_status cpu_attention_bwd(const da_plan *p, const da_bwd_call *c) {
  da_context *ctx = p->ctx;
  cpu_pool *pl = ctx->bctx;
  if (!pl) return da_set_error(ctx, DA_ERR_BACKEND, "cpu backend: context has no thread pool");
  int e = pthread_mutex_lock(&pl->submit);
  if (e != 0)
    return da_set_error(ctx, DA_ERR_BACKEND, "cpu backend: pthread_mutex_lock failed: %s", strerror(e));
  cpu_bwd_pool bp = {pl, bwd_run, bwd_scratch,
                     strcmp(pl->kern->isa, "avx512") == 0 ? 2
                     : strcmp(pl->kern->isa, "avx2") == 0 ? 1
                                                          : 0};
  da_status s = da_cpu_backward(p, c, &bp);
  for (int t = 0; t < pl->nthreads; t++)
    if (pl->cap[t] > SCRATCH_KEEP) {
      pool_release_scratch(pl);
      break;
    }
  pthread_mutex_unlock(&pl->submit);
  return s;
}

/* ---------------------------------------------------------------------- */
/* Devices, contexts, buffers                                             */

static int g_threads;
static const cpu_kernels *g_kern;
static char g_vendor[128];

static void read_cpu_model(char *out, size_t len) {
  snprintf(out, len, "unknown CPU");
  FILE *f = fopen("/proc/cpuinfo", "r");
  if (!f) return;
  char line[512];
  while (fgets(line, sizeof line, f)) {
    if (strncmp(line, "model name", 10) != 0) continue;
    char *c = strchr(line, ':');
    if (!c) continue;
    c++;
    while (*c == ' ' || *c == '\t') c++;
    size_t n = strlen(c);
    while (n > 0 && (c[n - 1] == '\n' || c[n - 1] == '\r' || c[n - 1] == ' ')) c[--n] = '\0';
    if (n > 0) snprintf(out, len, "%s", c);
    break;
  }
  fclose(f);
}

static int cpu_init(char *why, size_t why_len) {
  /* the device as a context made now would be; where a setting is bad,
   * context creation reports it and the defaults describe the device */
  da_overrides ov;
  if (da_overrides_parse(NULL, DA_BACKEND_CPU, &ov) != DA_SUCCESS ||
      cpu_settings(NULL, &ov, &g_threads, &g_kern) != DA_SUCCESS || !g_kern) {
    g_threads = default_threads();
    g_kern = best_kernels();
  }
  read_cpu_model(g_vendor, sizeof g_vendor);
  return 1;
}

static da_status cpu_device_info(int index, da_device_info *out, int *rank) {
  if (index != 0 || !out) return DA_ERR_INVALID_ARG;
  memset(out, 0, sizeof *out);
  out->backend = DA_BACKEND_CPU;
  out->index = 0;
  int n = g_threads > 0 ? g_threads : default_threads();
  const cpu_kernels *k = g_kern ? g_kern : best_kernels();
  snprintf(out->name, sizeof out->name, "CPU backend (%d thread%s, %s)", n, n == 1 ? "" : "s",
           strcmp(k->isa, "avx512") == 0 ? "AVX-512" : strcmp(k->isa, "avx2") == 0 ? "AVX2" : "portable");
  if (g_vendor[0])
    snprintf(out->vendor, sizeof out->vendor, "%s", g_vendor);
  else
    read_cpu_model(out->vendor, sizeof out->vendor);
  long pages = sysconf(_SC_PHYS_PAGES), psz = sysconf(_SC_PAGESIZE);
  out->global_mem = pages > 0 && psz > 0 ? (unsigned long long)pages * (unsigned long long)psz : 0;
  out->has_fp16 = 1;
  out->has_bf16 = 1;
  /* With vector kernels this backend is faster than an OpenCL CPU device
   * (PoCL) on the same processor, so DA_BACKEND_AUTO prefers it to one;
   * a GPU still comes first. The portable kernels rank below PoCL. */
  if (rank) *rank = strcmp(k->isa, "generic") != 0 ? DA_RANK_CPU_BACKEND_VECTOR : DA_RANK_CPU_BACKEND;
  return DA_SUCCESS;
}

static da_status cpu_ctx_create(da_context *ctx, int index, const da_overrides *ov, void **bctx,
                                da_device_info *info) {
  (void)info; /* device_info's answer stands */
  if (index != 0)
    return da_set_error(ctx, DA_ERR_NO_DEVICE, "cpu backend: no device %d (only 0)", index);
  cpu_pool *pl = NULL;
  da_status s = pool_create(ctx, ov, &pl);
  if (s != DA_SUCCESS) return s;
  *bctx = pl;
  return DA_SUCCESS;
}

static void cpu_ctx_destroy(void *bctx) { pool_destroy(bctx); }

/* A buffer is host memory preceded by a 64-byte header holding its size. */
#define BUF_HDR 64

static da_status cpu_buf_alloc(da_context *ctx, size_t bytes, void **handle) {
  void *m = NULL;
  if (bytes > (size_t)-1 - BUF_HDR)
    return da_set_error(ctx, DA_ERR_HOST_MEMORY, "cpu backend: buffer of %zu bytes too large", bytes);
  if (posix_memalign(&m, CACHE_ALIGN, BUF_HDR + (bytes ? bytes : 1)) != 0 || !m)
    return da_set_error(ctx, DA_ERR_HOST_MEMORY, "cpu backend: cannot allocate a buffer of %zu bytes",
                        bytes);
  memcpy(m, &bytes, sizeof bytes);
  *handle = (char *)m + BUF_HDR;
  return DA_SUCCESS;
}

static void cpu_buf_free(da_context *ctx, void *handle) {
  if (handle) free((char *)handle - BUF_HDR);
}

/* The core checked [off, off + n) against the buffer's size (its own
 * allocation, or a wrapped caller's host memory, which has no header). */
static da_status cpu_buf_write(da_context *ctx, void *handle, size_t off, const void *src, size_t n) {
  if (!handle || (n && !src))
    return da_set_error(ctx, DA_ERR_INVALID_ARG, "cpu backend: NULL buffer or source");
  if (n) memcpy((char *)handle + off, src, n);
  return DA_SUCCESS;
}

static da_status cpu_buf_read(da_context *ctx, void *handle, size_t off, void *dst, size_t n) {
  if (!handle || (n && !dst))
    return da_set_error(ctx, DA_ERR_INVALID_ARG, "cpu backend: NULL buffer or destination");
  if (n) memcpy(dst, (const char *)handle + off, n);
  return DA_SUCCESS;
}

/* Wrapping the caller's host memory: the handle is its pointer; nothing is
 * taken, so nothing is given back (no buf_unwrap). Host pointers are one
 * flat address space for the aliasing check. */
static da_status cpu_buf_wrap(da_context *ctx, void *native, size_t bytes, void **handle,
                              da_mem_range *range) {
  if ((uintptr_t)native > UINTPTR_MAX - bytes)
    return da_set_error(ctx, DA_ERR_INVALID_ARG,
                        "cpu backend: %zu bytes at %p run past the end of the address space", bytes,
                        native);
  *handle = native;
  range->base = NULL;
  range->offset = (uintptr_t)native;
  return DA_SUCCESS;
}

static void cpu_buf_range(da_context *ctx, void *handle, da_mem_range *range) {
  range->base = NULL;
  range->offset = (uintptr_t)handle;
}

static da_status cpu_synchronize(da_context *ctx) { return DA_SUCCESS; }

static da_status cpu_plan_prepare(const da_plan *p, void **bplan) {
  (void)bplan; /* no per-plan state */
  if (p->d.group_size > 1 && p->d.head_dim > 256)
    return da_set_error(p->ctx, DA_ERR_UNSUPPORTED,
                        "cpu backend: group_size %d needs head_dim <= 256, got %d", p->d.group_size,
                        p->d.head_dim);
  if (p->d.algo != DA_ALGO_FUSED && p->d.algo != DA_ALGO_GEMM)
    return da_set_error(p->ctx, DA_ERR_UNSUPPORTED, "cpu backend: unknown algo %d", (int)p->d.algo);
  const char *why = p->ov.cpu_decode == 1 ? dec_refusal(p) : NULL;
  if (why)
    return da_set_error(p->ctx, DA_ERR_UNSUPPORTED,
                        "DISTRATTN_CPU_DECODE=1: the split-KV decode path cannot run this plan: %s",
                        why);
  return DA_SUCCESS;
}

/* What a plan runs: the decode path, or the blocked one (FUSED: online
 * softmax over key blocks, GEMM: the logits materialised), on the context's
 * pool and kernels. */
static void cpu_plan_kernel(const da_plan *p, da_kernel_info *out) {
  const cpu_pool *pl = p->ctx->bctx;
  snprintf(out->name, sizeof out->name, "%s",
           dec_use(p) ? "split-kv decode" : p->d.algo == DA_ALGO_GEMM ? "gemm" : "fused");
  snprintf(out->variant, sizeof out->variant, "%s", pl->kern->isa);
  out->threads = pl->nthreads;
}

const da_backend_iface da_cpu_backend_iface = {
    .iface_version = DA_BACKEND_IFACE_VERSION,
    .id = DA_BACKEND_CPU,
    .name = "cpu",
    .init = cpu_init,
    .shutdown = NULL,
    .device_info = cpu_device_info,
    .ctx_create = cpu_ctx_create,
    .ctx_destroy = cpu_ctx_destroy,
    .synchronize = cpu_synchronize,
    .ctx_wrap = NULL,
    .buf_alloc = cpu_buf_alloc,
    .buf_free = cpu_buf_free,
    .buf_write = cpu_buf_write,
    .buf_read = cpu_buf_read,
    .buf_wrap = cpu_buf_wrap,
    .buf_unwrap = NULL,
    .buf_range = cpu_buf_range,
    .plan_prepare = cpu_plan_prepare,
    .plan_release = NULL,
    .attention = cpu_attention,
    .groups = cpu_groups,
    .attention_ext = cpu_attention_ext,
    .attention_bwd = cpu_attention_bwd,
    .plan_kernel = cpu_plan_kernel,
};
