/*
 * The built-in CPU backend: exact attention and DistrAttention (SPEC section 1)
 * on host memory, f32 arithmetic, a persistent pthread pool per context.
 *
 * Layout of the work:
 *  - work items are (batch, head, query block of QB rows); QB divides
 *    hash_block, so a query block never straddles two hash tiles;
 *  - for G > 1 a first parallel pass computes every tile's permutation and
 *    fusion weights (da_plan_tile_groups, lib/hash.c), the attention pass
 *    then builds Qs per query block and Kf per key block;
 *  - FUSED: a query block against streamed key blocks of KB keys with an
 *    online softmax (FlashAttention-2 style), scratch O(QB * head_dim);
 *  - GEMM: the logits of a query block against all keys are materialised
 *    ([QB][seq_k] f32), then a full softmax and P V.
 * Logits are kept in the log2 domain: Q is pre-multiplied by scale*log2(e)
 * and the softmax uses 2^x.
 */
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "da_internal.h"

/* ---------------------------------------------------------------------- */
/* Vector types (GCC/Clang vector extensions; no -march needed).          */

#if defined(__AVX512F__)
#  define VL 16
#elif defined(__AVX__)
#  define VL 8
#else
#  define VL 4
#endif

typedef float vf __attribute__((vector_size(VL * 4), may_alias));
typedef int32_t vi __attribute__((vector_size(VL * 4), may_alias));

#define NR 4           /* rows of a micro tile */
#define NV 2           /* vectors per micro tile row */
#define NC (NV * VL)   /* columns of a micro tile */
#define KB 64          /* keys per key block (multiple of NC) */
#ifndef QB_EXACT
#define QB_EXACT 64    /* query rows per work item, exact attention */
#endif
#ifndef QB_GROUPED
#define QB_GROUPED 128 /* and DistrAttention (at most, divides hash_block) */
#endif
#define CACHE_ALIGN 64

static inline size_t round_up(size_t x, size_t m) { return (x + m - 1) / m * m; }

static inline vf vsplat(float x) { return (vf){0} + x; }

static inline vf vmax(vf a, vf b) {
  vi m = a > b;
  return (vf)(((vi)a & m) | ((vi)b & ~m));
}

static inline float hmax(vf a) {
  float m = a[0];
  for (int i = 1; i < VL; i++) m = a[i] > m ? a[i] : m;
  return m;
}

static inline float hsum(vf a) {
  float s = 0.0f;
  for (int i = 0; i < VL; i++) s += a[i];
  return s;
}

/* 2^x for x <= 0 (any x below -126, -inf included, gives 0). Degree-7
 * Taylor polynomial of 2^r on r in [-0.5, 0.5]: relative error < 1e-8 plus
 * rounding. */
static inline vf vexp2(vf x) {
  vi keep = x >= -126.0f;
  x = vmax(x, vsplat(-126.0f));
  vf t = x + 12582912.0f; /* 1.5 * 2^23: round to nearest integer */
  vf n = t - 12582912.0f;
  vf r = x - n;
  const float c1 = 0.6931471805599453f, c2 = 0.2402265069591007f, c3 = 0.0555041086648216f,
              c4 = 0.0096181291076285f, c5 = 0.0013333558146428f, c6 = 0.0001540353039338f,
              c7 = 0.0000152527338040f;
  vf p = vsplat(c7);
  p = p * r + c6;
  p = p * r + c5;
  p = p * r + c4;
  p = p * r + c3;
  p = p * r + c2;
  p = p * r + c1;
  p = p * r + 1.0f;
  vi e = ((vi)t - 0x4B400000 + 127) << 23;
  vf s = p * (vf)e;
  return (vf)((vi)s & keep);
}

/* ---------------------------------------------------------------------- */
/* Micro kernels                                                          */

/* Packed panels: a key block's KT is stored as KB/NC panels of [D][NC]
 * (element (c, j) at (j / NC) * D * NC + c * NC + j % NC) and a value block
 * as Dp/NC panels of [KB][NC] (element (j, c) at (c / NC) * KB * NC +
 * j * NC + c % NC), so the micro kernels read both contiguously. */
static inline size_t kt_index(int D, int c, int j) {
  return (size_t)(j / NC) * (size_t)D * NC + (size_t)c * NC + (size_t)(j % NC);
}

/* S[NR][ncols] = Q[NR][D] * KT[D][ncols] for columns 0..ncols-1 (ncols a
 * multiple of NC). Q row stride ldq, S row stride lds (a multiple of VL,
 * S 64-byte aligned), KT packed. */
static void qk_rows(const float *restrict Q, size_t ldq, const float *restrict KT, int D,
                    int ncols, float *restrict S, size_t lds) {
  const float *q0 = Q, *q1 = Q + ldq, *q2 = Q + 2 * ldq, *q3 = Q + 3 * ldq;
  for (int j = 0; j < ncols; j += NC) {
    vf a00 = {0}, a01 = {0}, a10 = {0}, a11 = {0}, a20 = {0}, a21 = {0}, a30 = {0}, a31 = {0};
    const float *k = KT + (size_t)(j / NC) * (size_t)D * NC;
    for (int c = 0; c < D; c++, k += NC) {
      vf k0 = *(const vf *)k, k1 = *(const vf *)(k + VL);
      float x0 = q0[c], x1 = q1[c], x2 = q2[c], x3 = q3[c];
      a00 += k0 * x0; a01 += k1 * x0;
      a10 += k0 * x1; a11 += k1 * x1;
      a20 += k0 * x2; a21 += k1 * x2;
      a30 += k0 * x3; a31 += k1 * x3;
    }
    float *s = S + j;
    *(vf *)s = a00; *(vf *)(s + VL) = a01; s += lds;
    *(vf *)s = a10; *(vf *)(s + VL) = a11; s += lds;
    *(vf *)s = a20; *(vf *)(s + VL) = a21; s += lds;
    *(vf *)s = a30; *(vf *)(s + VL) = a31;
  }
}

/* acc[NR][Dp] += P[NR][0..kn-1] * V[kn][Dp]. P row stride ldp, V packed
 * (panels of [KB][NC]), acc aligned with stride ldacc; Dp a multiple of NC. */
static void pv_rows(const float *restrict P, size_t ldp, const float *restrict V, int kn,
                    float *restrict acc, size_t ldacc, int Dp) {
  const float *p0 = P, *p1 = P + ldp, *p2 = P + 2 * ldp, *p3 = P + 3 * ldp;
  for (int d = 0; d < Dp; d += NC) {
    /* sum this block from zero, then add: keeps f32 error growth per block */
    float *a = acc + d;
    vf a00 = {0}, a01 = {0}, a10 = {0}, a11 = {0}, a20 = {0}, a21 = {0}, a30 = {0}, a31 = {0};
    const float *v = V + (size_t)(d / NC) * KB * NC;
    for (int j = 0; j < kn; j++, v += NC) {
      vf v0 = *(const vf *)v, v1 = *(const vf *)(v + VL);
      float x0 = p0[j], x1 = p1[j], x2 = p2[j], x3 = p3[j];
      a00 += v0 * x0; a01 += v1 * x0;
      a10 += v0 * x1; a11 += v1 * x1;
      a20 += v0 * x2; a21 += v1 * x2;
      a30 += v0 * x3; a31 += v1 * x3;
    }
    *(vf *)a += a00; *(vf *)(a + VL) += a01;
    *(vf *)(a + ldacc) += a10; *(vf *)(a + ldacc + VL) += a11;
    *(vf *)(a + 2 * ldacc) += a20; *(vf *)(a + 2 * ldacc + VL) += a21;
    *(vf *)(a + 3 * ldacc) += a30; *(vf *)(a + 3 * ldacc + VL) += a31;
  }
}

/* ---------------------------------------------------------------------- */
/* Element conversion                                                     */

static void load_row(const void *src, da_dtype t, size_t off, int n, float *restrict dst) {
  switch (t) {
  case DA_F16: {
    const uint16_t *s = (const uint16_t *)src + off;
    for (int i = 0; i < n; i++) dst[i] = da_half_to_float(s[i]);
    break;
  }
  case DA_BF16: {
    const uint16_t *s = (const uint16_t *)src + off;
    for (int i = 0; i < n; i++) dst[i] = da_bf16_to_float(s[i]);
    break;
  }
  default:
    memcpy(dst, (const float *)src + off, (size_t)n * sizeof(float));
    break;
  }
}

static void store_row(void *dst, da_dtype t, size_t off, int n, const float *restrict src) {
  switch (t) {
  case DA_F16: {
    uint16_t *d = (uint16_t *)dst + off;
    for (int i = 0; i < n; i++) d[i] = da_float_to_half(src[i]);
    break;
  }
  case DA_BF16: {
    uint16_t *d = (uint16_t *)dst + off;
    for (int i = 0; i < n; i++) d[i] = da_float_to_bf16(src[i]);
    break;
  }
  default:
    memcpy((float *)dst + off, src, (size_t)n * sizeof(float));
    break;
  }
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
  /* per-thread scratch, grown on demand by the submitting thread */
  float **scratch;
  size_t *cap; /* bytes */
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

/* Runs fn over items 0..nitems-1 on every thread; the caller holds submit. */
static void pool_run(cpu_pool *pl, cpu_job_fn fn, void *arg, long nitems) {
  if (nitems <= 0) return;
  atomic_store(&pl->next, 0);
  if (pl->nworkers == 0 || nitems == 1) {
    run_items(pl, fn, arg, nitems, 0);
    return;
  }
  pthread_mutex_lock(&pl->mu);
  pl->fn = fn;
  pl->arg = arg;
  pl->nitems = nitems;
  pl->pending = pl->nworkers;
  pl->gen++;
  pthread_cond_broadcast(&pl->cv_work);
  pthread_mutex_unlock(&pl->mu);
  run_items(pl, fn, arg, nitems, 0);
  pthread_mutex_lock(&pl->mu);
  while (pl->pending > 0) pthread_cond_wait(&pl->cv_done, &pl->mu);
  pthread_mutex_unlock(&pl->mu);
}

/* Make every thread's scratch at least `bytes` (64-byte aligned). */
static da_status pool_scratch(cpu_pool *pl, da_context *ctx, size_t bytes) {
  bytes = round_up(bytes ? bytes : 1, CACHE_ALIGN);
  for (int t = 0; t < pl->nthreads; t++) {
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
  free(pl->th);
  pthread_cond_destroy(&pl->cv_work);
  pthread_cond_destroy(&pl->cv_done);
  pthread_mutex_destroy(&pl->mu);
  pthread_mutex_destroy(&pl->submit);
  free(pl);
}

static int cpu_thread_count(void) {
  const char *e = getenv("DISTRATTN_CPU_THREADS");
  if (e && *e) {
    char *end = NULL;
    long v = strtol(e, &end, 10);
    if (end && *end == '\0' && v >= 1) return v > 1024 ? 1024 : (int)v;
  }
  long n = sysconf(_SC_NPROCESSORS_ONLN);
  if (n < 1) n = 1;
  return n > 1024 ? 1024 : (int)n;
}

static da_status pool_create(da_context *ctx, cpu_pool **out) {
  *out = NULL;
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
  pl->nthreads = cpu_thread_count();
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
      return da_set_error(ctx, DA_ERR_BACKEND, "cpu backend: pthread_create of worker %d failed: %s",
                          t, strerror(e));
    }
    pl->nworkers++;
  }
  *out = pl;
  return DA_SUCCESS;
}

/* ---------------------------------------------------------------------- */
/* Attention                                                              */

typedef struct attn_job {
  const da_plan *p;
  const void *q, *k, *v;
  void *o;
  cpu_pool *pool;
  int G, D;      /* group size; logit columns (head_dim or ng) */
  int d, Dp;     /* head_dim; padded to NC */
  int QB, nqb;   /* query rows per item; items per (batch, head) */
  int hpk;       /* heads per kv head */
  long off;      /* seq_k - seq_q */
  size_t lds;    /* S row stride */
  float qmul;    /* scale * log2(e) */
  const int *perm_all; /* G > 1: [batch][heads][n_tiles][head_dim] */
  const float *a_all;
  /* scratch layout, in floats from the thread's base */
  size_t o_qf, o_kt, o_kf, o_row, o_vf, o_s, o_acc, o_m, o_l;
} attn_job;

/* Qf[nr][D] (rows up to nrp zero) for query rows i0.. of (bi, hi). */
static void build_q(const attn_job *J, int bi, int hi, int i0, int nr, int nrp, float *restrict qf,
                    float *restrict row) {
  const da_attn_desc *d = &J->p->d;
  const int hd = J->d, D = J->D;
  size_t base = (((size_t)bi * (size_t)d->heads + (size_t)hi) * (size_t)d->seq_q + (size_t)i0) *
                (size_t)hd;
  if (J->G == 1) {
    for (int r = 0; r < nr; r++) {
      float *dst = qf + (size_t)r * D;
      load_row(J->q, d->dtype, base + (size_t)r * hd, hd, dst);
      for (int c = 0; c < hd; c++) dst[c] *= J->qmul;
    }
  } else {
    int tile = i0 / d->hash_block;
    size_t t = (((size_t)bi * (size_t)d->heads + (size_t)hi) * (size_t)J->p->n_tiles + (size_t)tile) *
               (size_t)hd;
    const int *perm = J->perm_all + t;
    const float *a = J->a_all + t;
    const int G = J->G;
    float inv[256];
    for (int g = 0; g < D; g++) {
      int c0 = g * G, c1 = c0 + G < hd ? c0 + G : hd;
      float s = 0.0f;
      for (int c = c0; c < c1; c++) s += a[perm[c]];
      inv[g] = J->qmul / s;
    }
    for (int r = 0; r < nr; r++) {
      load_row(J->q, d->dtype, base + (size_t)r * hd, hd, row);
      float *dst = qf + (size_t)r * D;
      for (int g = 0; g < D; g++) {
        int c0 = g * G, c1 = c0 + G < hd ? c0 + G : hd;
        float s = 0.0f;
        for (int c = c0; c < c1; c++) s += row[perm[c]];
        dst[g] = s * inv[g];
      }
    }
  }
  for (int r = nr; r < nrp; r++) memset(qf + (size_t)r * D, 0, (size_t)D * sizeof(float));
}

/* KT[D][KB] for keys ks..ks+kn-1 of kv head (bi, kh); the tile of query
 * rows i0 gives the grouping when G > 1. */
static void build_k(const attn_job *J, int bi, int hi, int kh, int i0, int ks, int kn,
                    float *restrict kt, float *restrict kfull, float *restrict row) {
  const da_attn_desc *d = &J->p->d;
  const int hd = J->d, D = J->D;
  size_t base = (((size_t)bi * (size_t)d->kv_heads + (size_t)kh) * (size_t)d->seq_k + (size_t)ks) *
                (size_t)hd;
  if (J->G == 1) {
    if (d->dtype == DA_F32) {
      const float *src = (const float *)J->k + base;
      for (int j = 0; j < kn; j++, src += hd)
        for (int c = 0; c < hd; c++) kt[kt_index(D, c, j)] = src[c];
    } else {
      for (int j = 0; j < kn; j++) {
        load_row(J->k, d->dtype, base + (size_t)j * hd, hd, row);
        for (int c = 0; c < hd; c++) kt[kt_index(D, c, j)] = row[c];
      }
    }
  } else {
    /* transpose into kfull[head_dim][KB], then Kf[g][j] = sum_c a_c K[j][c]
     * along contiguous keys */
    int tile = i0 / d->hash_block;
    size_t t = (((size_t)bi * (size_t)d->heads + (size_t)hi) * (size_t)J->p->n_tiles + (size_t)tile) *
               (size_t)hd;
    const int *perm = J->perm_all + t;
    const float *a = J->a_all + t;
    const int G = J->G;
    int w = (int)round_up((size_t)kn, VL);
    if (d->dtype == DA_F32) {
      const float *src = (const float *)J->k + base;
      for (int j = 0; j < kn; j++, src += hd)
        for (int c = 0; c < hd; c++) kfull[(size_t)c * KB + j] = src[c];
    } else {
      for (int j = 0; j < kn; j++) {
        load_row(J->k, d->dtype, base + (size_t)j * hd, hd, row);
        for (int c = 0; c < hd; c++) kfull[(size_t)c * KB + j] = row[c];
      }
    }
    for (int g = 0; g < D; g++) {
      int c0 = g * G, c1 = c0 + G < hd ? c0 + G : hd;
      const float *s0 = kfull + (size_t)perm[c0] * KB;
      float a0 = a[perm[c0]];
      for (int j = 0; j < w; j += VL) {
        vf acc = *(const vf *)(s0 + j) * a0;
        for (int c = c0 + 1; c < c1; c++)
          acc += *(const vf *)(kfull + (size_t)perm[c] * KB + j) * a[perm[c]];
        *(vf *)(kt + kt_index(D, g, j)) = acc;
      }
    }
  }
}

/* V rows ks..ks+kn-1 as f32 packed panels vp[Dp / NC][KB][NC]. */
static void build_v(const attn_job *J, int bi, int kh, int ks, int kn, float *restrict vp,
                    float *restrict row) {
  const da_attn_desc *d = &J->p->d;
  const int hd = J->d;
  size_t base = (((size_t)bi * (size_t)d->kv_heads + (size_t)kh) * (size_t)d->seq_k + (size_t)ks) *
                (size_t)hd;
  for (int j = 0; j < kn; j++) {
    const float *src;
    if (d->dtype == DA_F32) {
      src = (const float *)J->v + base + (size_t)j * hd;
    } else {
      load_row(J->v, d->dtype, base + (size_t)j * hd, hd, row);
      src = row;
    }
    int c = 0;
    for (; c + NC <= hd; c += NC) memcpy(vp + (size_t)(c / NC) * KB * NC + (size_t)j * NC, src + c, NC * sizeof(float));
    if (c < hd) {
      float *dst = vp + (size_t)(c / NC) * KB * NC + (size_t)j * NC;
      int n = hd - c;
      for (int i = 0; i < n; i++) dst[i] = src[c + i];
      for (int i = n; i < NC; i++) dst[i] = 0.0f;
    }
  }
}

/* Softmax of one row of logits s[0..w-1] (log2 domain) whose first lim
 * entries are visible, against running max *m and sum *l: s becomes P,
 * the return value is the factor for the previous accumulator. */
static float softmax_row(float *restrict s, int lim, int w, float *m, float *l) {
  for (int j = lim; j < w; j++) s[j] = -INFINITY;
  vf mx = vsplat(-INFINITY);
  vi nan = {0};
  for (int j = 0; j < w; j += VL) {
    vf x = *(vf *)(s + j);
    mx = vmax(mx, x);
    nan |= x != x;
  }
  float mnew = hmax(mx);
  if (*m > mnew) mnew = *m;
  float alpha = *m == -INFINITY ? 0.0f : exp2f(*m - mnew);
  float total = 0.0f;
  for (int j0 = 0; j0 < w; j0 += KB) { /* partial sums per KB keys */
    int j1 = j0 + KB < w ? j0 + KB : w;
    vf sum = {0};
    for (int j = j0; j < j1; j += VL) {
      vf e = vexp2(*(vf *)(s + j) - mnew);
      *(vf *)(s + j) = e;
      sum += e;
    }
    total += hsum(sum);
  }
  *l = *l * alpha + total;
  for (int i = 0; i < VL; i++)
    if (nan[i]) *l = NAN; /* a NaN logit makes the row NaN, as the reference */
  *m = mnew;
  return alpha;
}

static void write_out(const attn_job *J, int bi, int hi, int i0, int nr, const float *acc,
                      const float *l, float *row) {
  const da_attn_desc *d = &J->p->d;
  const int hd = J->d;
  size_t base = (((size_t)bi * (size_t)d->heads + (size_t)hi) * (size_t)d->seq_q + (size_t)i0) *
                (size_t)hd;
  for (int r = 0; r < nr; r++) {
    const float *a = acc + (size_t)r * J->Dp;
    if (l[r] > 0.0f || l[r] != l[r]) {
      float lr = l[r];
      for (int c = 0; c < hd; c++) row[c] = a[c] / lr;
    } else {
      memset(row, 0, (size_t)hd * sizeof(float));
    }
    store_row(J->o, d->dtype, base + (size_t)r * hd, hd, row);
  }
}

/* Number of keys of [ks, ks+kn) visible to query row i (causal). */
static inline int visible(const attn_job *J, long i, int ks, int kn) {
  if (!J->p->d.causal) return kn;
  long lim = i + J->off - ks + 1;
  return lim < 0 ? 0 : lim > kn ? kn : (int)lim;
}

static void attn_item(void *arg, int tid, long item) {
  const attn_job *J = arg;
  const da_attn_desc *d = &J->p->d;
  long bh = item / J->nqb;
  int qb = J->nqb - 1 - (int)(item % J->nqb); /* heaviest (causal) first */
  int bi = (int)(bh / d->heads), hi = (int)(bh % d->heads);
  int kh = hi / J->hpk;
  int i0 = qb * J->QB;
  int nr = d->seq_q - i0 < J->QB ? d->seq_q - i0 : J->QB;
  int nrp = (int)round_up((size_t)nr, NR);
  float *base = J->pool->scratch[tid];
  float *qf = base + J->o_qf, *kt = base + J->o_kt, *kf = base + J->o_kf, *row = base + J->o_row, *vfb = base + J->o_vf;
  float *S = base + J->o_s, *acc = base + J->o_acc, *m = base + J->o_m, *l = base + J->o_l;
  const int Dp = J->Dp;

  /* keys visible to some row of the block: [0, kend) */
  long kend_l = d->seq_k;
  if (d->causal) {
    long last = (long)i0 + nr - 1 + J->off + 1;
    if (last < kend_l) kend_l = last;
  }
  for (int r = 0; r < nrp; r++) {
    m[r] = -INFINITY;
    l[r] = 0.0f;
  }
  memset(acc, 0, (size_t)nrp * Dp * sizeof(float));
  if (kend_l <= 0) {
    write_out(J, bi, hi, i0, nr, acc, l, row);
    return;
  }
  int kend = (int)kend_l;
  build_q(J, bi, hi, i0, nr, nrp, qf, row);

  if (d->algo == DA_ALGO_GEMM) {
    int wall = (int)round_up((size_t)kend, NC);
    for (int ks = 0; ks < kend; ks += KB) {
      int kn = kend - ks < KB ? kend - ks : KB;
      build_k(J, bi, hi, kh, i0, ks, kn, kt, kf, row);
      int w = (int)round_up((size_t)kn, NC);
      for (int r = 0; r < nrp; r += NR)
        qk_rows(qf + (size_t)r * J->D, (size_t)J->D, kt, J->D, w, S + (size_t)r * J->lds + ks,
                J->lds);
    }
    for (int r = 0; r < nrp; r++) {
      float *s = S + (size_t)r * J->lds;
      int lim = r < nr ? visible(J, (long)i0 + r, 0, kend) : 0;
      if (lim == 0) {
        memset(s, 0, (size_t)wall * sizeof(float));
        continue;
      }
      softmax_row(s, lim, wall, &m[r], &l[r]);
    }
    for (int ks = 0; ks < kend; ks += KB) {
      int kn = kend - ks < KB ? kend - ks : KB;
      build_v(J, bi, kh, ks, kn, vfb, row);
      for (int r = 0; r < nrp; r += NR)
        pv_rows(S + (size_t)r * J->lds + ks, J->lds, vfb, kn, acc + (size_t)r * Dp, (size_t)Dp, Dp);
    }
  } else {
    for (int r = nr; r < nrp; r++) memset(S + (size_t)r * KB, 0, KB * sizeof(float));
    for (int ks = 0; ks < kend; ks += KB) {
      int kn = kend - ks < KB ? kend - ks : KB;
      int w = (int)round_up((size_t)kn, NC);
      build_k(J, bi, hi, kh, i0, ks, kn, kt, kf, row);
      for (int r = 0; r < nrp; r += NR)
        qk_rows(qf + (size_t)r * J->D, (size_t)J->D, kt, J->D, w, S + (size_t)r * KB, KB);
      for (int r = 0; r < nr; r++) {
        float *s = S + (size_t)r * KB;
        int lim = visible(J, (long)i0 + r, ks, kn);
        if (lim == 0) {
          memset(s, 0, (size_t)w * sizeof(float));
          continue;
        }
        float alpha = softmax_row(s, lim, w, &m[r], &l[r]);
        if (alpha != 1.0f) {
          vf av = vsplat(alpha);
          float *a = acc + (size_t)r * Dp;
          for (int c = 0; c < Dp; c += VL) *(vf *)(a + c) *= av;
        }
      }
      build_v(J, bi, kh, ks, kn, vfb, row);
      for (int r = 0; r < nrp; r += NR)
        pv_rows(S + (size_t)r * KB, KB, vfb, kn, acc + (size_t)r * Dp, (size_t)Dp, Dp);
    }
  }
  write_out(J, bi, hi, i0, nr, acc, l, row);
}

typedef struct groups_job {
  const da_plan *p;
  const void *q;
  int *perm;
  float *a;
} groups_job;

static void groups_item(void *arg, int tid, long item) {
  const groups_job *J = arg;
  const da_attn_desc *d = &J->p->d;
  int nt = J->p->n_tiles;
  long bh = item / nt;
  int tile = (int)(item % nt);
  size_t off = (size_t)item * (size_t)d->head_dim;
  da_plan_tile_groups(J->p, J->q, (int)(bh / d->heads), (int)(bh % d->heads), tile, J->perm + off,
                      J->a ? J->a + off : NULL);
}

static da_status cpu_attention(da_plan *p, void *q, void *k, void *v, void *o) {
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

  attn_job J;
  memset(&J, 0, sizeof J);
  J.p = p;
  J.q = q;
  J.k = k;
  J.v = v;
  J.o = o;
  J.pool = pl;
  J.G = d->group_size > 1 ? d->group_size : 1;
  J.d = d->head_dim;
  J.D = J.G == 1 ? d->head_dim : (d->head_dim + J.G - 1) / J.G;
  J.Dp = (int)round_up((size_t)d->head_dim, NC);
  J.QB = J.G > 1 ? QB_GROUPED : QB_EXACT;
  if (J.G > 1 && d->hash_block < J.QB) J.QB = d->hash_block;
  J.nqb = (d->seq_q + J.QB - 1) / J.QB;
  J.hpk = d->heads / d->kv_heads;
  J.off = (long)d->seq_k - (long)d->seq_q;
  J.qmul = d->scale * 1.4426950408889634f;
  size_t QBp = round_up((size_t)J.QB, NR);
  size_t seqk_p = round_up(d->seq_k > 0 ? (size_t)d->seq_k : 1, KB);
  J.lds = d->algo == DA_ALGO_GEMM ? seqk_p : KB;

  /* per-thread scratch layout (floats, each part 64-byte aligned) */
  size_t off = 0;
#define PART(field, n) do { J.field = off; off += round_up((size_t)(n), CACHE_ALIGN / sizeof(float)); } while (0)
  PART(o_qf, QBp * (size_t)J.D);
  PART(o_kt, (size_t)J.D * KB);
  PART(o_kf, J.G > 1 ? (size_t)J.d * KB : 0);
  PART(o_row, (size_t)J.d + NC);
  PART(o_vf, (size_t)KB * J.Dp);
  PART(o_s, QBp * J.lds);
  PART(o_acc, QBp * (size_t)J.Dp);
  PART(o_m, QBp);
  PART(o_l, QBp);
#undef PART

  int e = pthread_mutex_lock(&pl->submit);
  if (e != 0)
    return da_set_error(ctx, DA_ERR_BACKEND, "cpu backend: pthread_mutex_lock failed: %s", strerror(e));
  da_status s = pool_scratch(pl, ctx, off * sizeof(float));
  int *perm_all = NULL;
  float *a_all = NULL;
  if (s == DA_SUCCESS && J.G > 1) {
    size_t n = (size_t)d->batch * d->heads * p->n_tiles * d->head_dim;
    perm_all = malloc(n * sizeof *perm_all);
    a_all = malloc(n * sizeof *a_all);
    if (!perm_all || !a_all) {
      s = da_set_error(ctx, DA_ERR_HOST_MEMORY,
                       "cpu backend: cannot allocate %zu column permutations and weights", n);
    } else {
      groups_job gj = {p, q, perm_all, a_all};
      pool_run(pl, groups_item, &gj, (long)d->batch * d->heads * p->n_tiles);
      J.perm_all = perm_all;
      J.a_all = a_all;
    }
  }
  if (s == DA_SUCCESS) pool_run(pl, attn_item, &J, (long)d->batch * d->heads * J.nqb);
  if (off * sizeof(float) > SCRATCH_KEEP) pool_release_scratch(pl);
  pthread_mutex_unlock(&pl->submit);
  free(perm_all);
  free(a_all);
  return s;
}

static da_status cpu_groups(da_plan *p, void *q, void *perm) {
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
  groups_job gj = {p, q, perm, NULL};
  pool_run(pl, groups_item, &gj, (long)d->batch * d->heads * p->n_tiles);
  pthread_mutex_unlock(&pl->submit);
  return DA_SUCCESS;
}

/* ---------------------------------------------------------------------- */
/* Devices, contexts, buffers                                             */

static int g_threads;
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
  g_threads = cpu_thread_count();
  read_cpu_model(g_vendor, sizeof g_vendor);
  return 1;
}

static da_status cpu_device_info(int index, da_device_info *out, int *rank) {
  if (index != 0 || !out) return DA_ERR_INVALID_ARG;
  memset(out, 0, sizeof *out);
  out->backend = DA_BACKEND_CPU;
  out->index = 0;
  int n = g_threads > 0 ? g_threads : cpu_thread_count();
  snprintf(out->name, sizeof out->name, "CPU backend (%d thread%s)", n, n == 1 ? "" : "s");
  if (g_vendor[0])
    snprintf(out->vendor, sizeof out->vendor, "%s", g_vendor);
  else
    read_cpu_model(out->vendor, sizeof out->vendor);
  long pages = sysconf(_SC_PHYS_PAGES), psz = sysconf(_SC_PAGESIZE);
  out->global_mem = pages > 0 && psz > 0 ? (unsigned long long)pages * (unsigned long long)psz : 0;
  out->has_fp16 = 1;
  out->has_bf16 = 1;
  if (rank) *rank = DA_RANK_CPU_BACKEND;
  return DA_SUCCESS;
}

static da_status cpu_ctx_create(da_context *ctx, int index) {
  if (index != 0)
    return da_set_error(ctx, DA_ERR_NO_DEVICE, "cpu backend: no device %d (only 0)", index);
  cpu_pool *pl = NULL;
  da_status s = pool_create(ctx, &pl);
  if (s != DA_SUCCESS) return s;
  ctx->bctx = pl;
  return DA_SUCCESS;
}

static void cpu_ctx_destroy(da_context *ctx) {
  pool_destroy(ctx->bctx);
  ctx->bctx = NULL;
}

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

static size_t buf_size(const void *handle) {
  size_t n;
  memcpy(&n, (const char *)handle - BUF_HDR, sizeof n);
  return n;
}

static da_status cpu_buf_write(da_context *ctx, void *handle, size_t off, const void *src, size_t n) {
  if (!handle || (n && !src))
    return da_set_error(ctx, DA_ERR_INVALID_ARG, "cpu backend: NULL buffer or source");
  size_t sz = buf_size(handle);
  if (off > sz || n > sz - off)
    return da_set_error(ctx, DA_ERR_INVALID_ARG,
                        "cpu backend: write of %zu bytes at offset %zu past a buffer of %zu", n, off,
                        sz);
  if (n) memcpy((char *)handle + off, src, n);
  return DA_SUCCESS;
}

static da_status cpu_buf_read(da_context *ctx, void *handle, size_t off, void *dst, size_t n) {
  if (!handle || (n && !dst))
    return da_set_error(ctx, DA_ERR_INVALID_ARG, "cpu backend: NULL buffer or destination");
  size_t sz = buf_size(handle);
  if (off > sz || n > sz - off)
    return da_set_error(ctx, DA_ERR_INVALID_ARG,
                        "cpu backend: read of %zu bytes at offset %zu past a buffer of %zu", n, off,
                        sz);
  if (n) memcpy(dst, (const char *)handle + off, n);
  return DA_SUCCESS;
}

static da_status cpu_synchronize(da_context *ctx) { return DA_SUCCESS; }

static da_status cpu_plan_prepare(da_plan *p) {
  if (p->d.group_size > 1 && p->d.head_dim > 256)
    return da_set_error(p->ctx, DA_ERR_UNSUPPORTED,
                        "cpu backend: group_size %d needs head_dim <= 256, got %d", p->d.group_size,
                        p->d.head_dim);
  if (p->d.algo != DA_ALGO_FUSED && p->d.algo != DA_ALGO_GEMM)
    return da_set_error(p->ctx, DA_ERR_UNSUPPORTED, "cpu backend: unknown algo %d", (int)p->d.algo);
  p->bplan = NULL;
  return DA_SUCCESS;
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
    .buf_wrap = NULL,
    .plan_prepare = cpu_plan_prepare,
    .plan_release = NULL,
    .attention = cpu_attention,
    .groups = cpu_groups,
};
