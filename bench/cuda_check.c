/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Standalone check and timing driver of the CUDA backend module: fills
 * da_context / da_plan by hand (as the core does) and calls the module's
 * interface directly, so it needs only lib/hash.c and the module's objects.
 *   cuda_check check            correctness against a float64 reference
 *   cuda_check bench DT B H S D CAUSAL G ITERS [BR [ALGO]]
 *       ms of one call: median over 5 rounds of ITERS calls enqueued back
 *       to back, then a synchronize
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "da_internal.h"
#include "cuda_internal.h"

const da_backend_iface *distrattn_backend_entry(void);

static const da_backend_iface *IF;
static da_context CTX;
static int n_fail, n_pass;

static double urand(unsigned long long *s) {
  *s = *s * 6364136223846793005ULL + 1442695040888963407ULL;
  return (double)(*s >> 11) * 0x1.0p-53;
}

static void fill(void *p, da_dtype t, size_t n, unsigned long long *s, int pairs, int d) {
  for (size_t i = 0; i < n; i++) {
    size_t src = i;
    if (pairs && (i % d) % 2 == 1) src = i - 1; /* equal column pairs */
    float x;
    if (src != i)
      x = da_load_elem(p, t, src);
    else
      x = (float)(urand(s) * 2.0 - 1.0);
    da_store_elem(p, t, i, x);
  }
}

static void make_plan(da_plan *p, const da_attn_desc *d0) {
  memset(p, 0, sizeof *p);
  p->ctx = &CTX;
  p->d = *d0;
  da_attn_desc *d = &p->d;
  if (!d->kv_heads) d->kv_heads = d->heads;
  if (d->scale == 0.0f) d->scale = 1.0f / sqrtf((float)d->head_dim);
  if (!d->hash_bits) d->hash_bits = 16;
  if (!d->hash_block) d->hash_block = 128;
  if (!d->group_size) d->group_size = 1;
  if (d->algo == DA_ALGO_AUTO) d->algo = DA_ALGO_FUSED;
  p->ng = (d->head_dim + d->group_size - 1) / d->group_size;
  p->n_tiles = (d->seq_q + d->hash_block - 1) / d->hash_block;
  p->elem_size = da_dtype_size(d->dtype);
  p->q_elems = (size_t)d->batch * d->heads * d->seq_q * d->head_dim;
  p->kv_elems = (size_t)d->batch * d->kv_heads * d->seq_k * d->head_dim;
  p->perm_count = (size_t)d->batch * d->heads * p->n_tiles * d->head_dim;
  p->proj = malloc((size_t)d->hash_bits * d->hash_block * sizeof(float));
  da_make_projections(d->seed, d->hash_bits, d->hash_block, p->proj);
}

/* float64 reference of SPEC section 1 */
static void reference(const da_plan *p, const void *q, const void *k, const void *v, double *out) {
  const da_attn_desc *d = &p->d;
  const int D = d->head_dim, G = d->group_size, ng = p->ng;
  const int rep = d->heads / d->kv_heads, off = d->seq_k - d->seq_q;
  double *qs = malloc(sizeof(double) * ng), *kf = malloc(sizeof(double) * (size_t)d->seq_k * ng);
  double *sl = malloc(sizeof(double) * d->seq_k);
  int perm[256];
  float a[256];
  for (int b = 0; b < d->batch; b++)
    for (int h = 0; h < d->heads; h++) {
      size_t qo = ((size_t)b * d->heads + h) * d->seq_q * D;
      size_t ko = ((size_t)b * d->kv_heads + h / rep) * d->seq_k * D;
      for (int t = 0; t < p->n_tiles; t++) {
        if (G > 1) da_plan_tile_groups(p, q, b, h, t, perm, a);
        else
          for (int c = 0; c < D; c++) perm[c] = c, a[c] = 1.0f;
        for (int j = 0; j < d->seq_k; j++)
          for (int g = 0; g < ng; g++) {
            double s = 0;
            for (int i = g * G; i < (g + 1) * G && i < D; i++)
              s += (double)a[perm[i]] * da_load_elem(k, d->dtype, ko + (size_t)j * D + perm[i]);
            kf[(size_t)j * ng + g] = s;
          }
        int r1 = (t + 1) * d->hash_block < d->seq_q ? (t + 1) * d->hash_block : d->seq_q;
        for (int r = t * d->hash_block; r < r1; r++) {
          for (int g = 0; g < ng; g++) {
            double num = 0, den = 0;
            for (int i = g * G; i < (g + 1) * G && i < D; i++) {
              num += da_load_elem(q, d->dtype, qo + (size_t)r * D + perm[i]);
              den += a[perm[i]];
            }
            qs[g] = num / den;
          }
          double m = -INFINITY;
          int nv = 0;
          for (int j = 0; j < d->seq_k; j++) {
            if (d->causal && j > r + off) { sl[j] = -INFINITY; continue; }
            double s = 0;
            for (int g = 0; g < ng; g++) s += qs[g] * kf[(size_t)j * ng + g];
            sl[j] = s * d->scale;
            if (sl[j] > m) m = sl[j];
            nv++;
          }
          double sum = 0;
          for (int j = 0; j < d->seq_k; j++) {
            sl[j] = sl[j] == -INFINITY ? 0.0 : exp(sl[j] - m);
            sum += sl[j];
          }
          for (int c = 0; c < D; c++) {
            double o = 0;
            for (int j = 0; j < d->seq_k; j++)
              if (sl[j] != 0.0) o += sl[j] * da_load_elem(v, d->dtype, ko + (size_t)j * D + c);
            out[qo + (size_t)r * D + c] = nv ? o / sum : 0.0;
          }
        }
      }
    }
  free(qs);
  free(kf);
  free(sl);
}

static void *dev_upload(const void *h, size_t bytes) {
  void *dp;
  if (IF->buf_alloc(&CTX, bytes, &dp) || IF->buf_write(&CTX, dp, 0, h, bytes)) {
    fprintf(stderr, "upload: %s\n", CTX.last_error);
    exit(2);
  }
  return dp;
}

static void run_case(const char *name, da_attn_desc d0, double tol, int pairs) {
  da_plan p;
  make_plan(&p, &d0);
  const da_attn_desc *d = &p.d;
  unsigned long long seed = 12345 + d->seq_q * 7 + d->head_dim;
  size_t qb = p.q_elems * p.elem_size, kb = p.kv_elems * p.elem_size;
  void *q = malloc(qb), *k = malloc(kb), *v = malloc(kb), *o = malloc(qb);
  fill(q, d->dtype, p.q_elems, &seed, pairs, d->head_dim);
  fill(k, d->dtype, p.kv_elems, &seed, 0, d->head_dim);
  fill(v, d->dtype, p.kv_elems, &seed, 0, d->head_dim);
  memset(o, 0xff, qb);
  da_status st = IF->plan_prepare(&p);
  if (st) {
    printf("FAIL %-44s plan_prepare %d: %s\n", name, st, CTX.last_error);
    n_fail++;
    return;
  }
  void *dq = dev_upload(q, qb), *dk = dev_upload(k, kb), *dv = dev_upload(v, kb), *dout = dev_upload(o, qb);
  st = IF->attention(&p, dq, dk, dv, dout);
  if (!st) st = IF->synchronize(&CTX);
  if (!st) st = IF->buf_read(&CTX, dout, 0, o, qb);
  if (st) {
    printf("FAIL %-44s attention %d: %s\n", name, st, CTX.last_error);
    n_fail++;
    return;
  }
  double *ref = malloc(sizeof(double) * p.q_elems);
  reference(&p, q, k, v, ref);
  double num = 0, den = 0;
  int nan = 0;
  for (size_t i = 0; i < p.q_elems; i++) {
    double x = da_load_elem(o, d->dtype, i);
    if (x != x) nan++;
    num += (x - ref[i]) * (x - ref[i]);
    den += ref[i] * ref[i];
  }
  double rel = den > 0 ? sqrt(num / den) : sqrt(num);
  /* permutations vs lib/hash.c */
  int perm_bad = 0;
  if (d->group_size > 1) {
    void *dperm;
    IF->buf_alloc(&CTX, p.perm_count * 4, &dperm);
    int *gp = malloc(p.perm_count * 4), cp[256];
    st = IF->groups(&p, dq, dperm);
    if (!st) st = IF->buf_read(&CTX, dperm, 0, gp, p.perm_count * 4);
    if (st) perm_bad = -1;
    for (int b = 0; b < d->batch && !st; b++)
      for (int h = 0; h < d->heads; h++)
        for (int t = 0; t < p.n_tiles; t++) {
          da_plan_tile_groups(&p, q, b, h, t, cp, NULL);
          const int *g = gp + (((size_t)b * d->heads + h) * p.n_tiles + t) * d->head_dim;
          for (int c = 0; c < d->head_dim; c++) perm_bad += g[c] != cp[c];
        }
    IF->buf_free(&CTX, dperm);
    free(gp);
  }
  int ok = !nan && rel <= tol && perm_bad == 0;
  printf("%s %-44s rel %.3e (tol %.1e) nan %d perm_mismatch %d\n", ok ? "ok  " : "FAIL", name, rel,
         tol, nan, perm_bad);
  ok ? n_pass++ : n_fail++;
  IF->buf_free(&CTX, dq);
  IF->buf_free(&CTX, dk);
  IF->buf_free(&CTX, dv);
  IF->buf_free(&CTX, dout);
  IF->plan_release(&p);
  free(p.proj);
  free(q), free(k), free(v), free(o), free(ref);
}

static da_attn_desc desc(da_dtype t, int b, int h, int kvh, int sq, int sk, int dd, int causal, int G) {
  da_attn_desc d;
  memset(&d, 0, sizeof d);
  d.batch = b, d.heads = h, d.kv_heads = kvh, d.seq_q = sq, d.seq_k = sk, d.head_dim = dd;
  d.dtype = t, d.causal = causal, d.group_size = G, d.seed = 42, d.fusion = DA_FUSE_MEAN;
  return d;
}

static const char *tn(da_dtype t) { return t == DA_F32 ? "f32" : t == DA_F16 ? "f16" : "bf16"; }

static void checks(void) {
  char nm[128];
  const double tol[3] = {1e-5, 2e-3, 1.6e-2};
  /* exact: SIMT (f32, odd dims) and tensor cores (f16/bf16 d 64/128) */
  int dims[] = {1, 3, 32, 64, 80, 128, 200, 256};
  for (int ti = 0; ti < 3; ti++)
    for (size_t di = 0; di < sizeof dims / sizeof dims[0]; di++)
      for (int causal = 0; causal < 2; causal++) {
        da_dtype t = (da_dtype)ti;
        int dd = dims[di];
        snprintf(nm, sizeof nm, "exact %s d%d causal%d sq150 sk200 gqa", tn(t), dd, causal);
        run_case(nm, desc(t, 2, 4, 2, 150, 200, dd, causal, 1), tol[ti], 0);
      }
  for (int ti = 0; ti < 3; ti++) {
    da_dtype t = (da_dtype)ti;
    snprintf(nm, sizeof nm, "exact %s d128 causal sq300 sk130 (empty rows)", tn(t));
    run_case(nm, desc(t, 1, 2, 1, 300, 130, 128, 1, 1), tol[ti], 0);
    snprintf(nm, sizeof nm, "exact %s d64 sq1 sk1000 mqa", tn(t));
    run_case(nm, desc(t, 2, 4, 1, 1, 1000, 64, 0, 1), tol[ti], 0);
  }
  /* grouped */
  int gs[] = {2, 4, 8};
  int hbs[] = {16, 32, 64, 128, 256};
  for (int ti = 0; ti < 3; ti++)
    for (int gi = 0; gi < 3; gi++)
      for (int dd = 64; dd <= 128; dd += 64)
        for (int hi = 0; hi < 5; hi++)
          for (int f = 0; f < 2; f++) {
            da_dtype t = (da_dtype)ti;
            da_attn_desc d = desc(t, 2, 2, 1, 300, 260, dd, (hi + f) & 1, gs[gi]);
            d.hash_block = hbs[hi];
            d.fusion = (da_fusion)f;
            snprintf(nm, sizeof nm, "G%d %s d%d hb%d %s causal%d", gs[gi], tn(t), dd, hbs[hi],
                     f ? "NORM" : "MEAN", d.causal);
            run_case(nm, d, tol[ti] * (t == DA_F32 ? 1 : 2), 0);
          }
  /* the Hopper kernel's rings: 8-10 key tiles, so every stage is reused and
   * the barrier phases wrap */
  for (int ti = 1; ti < 3; ti++)
    for (int gi = 0; gi < 3; gi++)
      for (int dd = 64; dd <= 128; dd += 64) {
        da_dtype t = (da_dtype)ti;
        da_attn_desc d = desc(t, 1, 2, 1, 300, 1100 - 100 * gi, dd, (gi + dd / 64) & 1, gs[gi]);
        d.fusion = (da_fusion)(gi & 1);
        snprintf(nm, sizeof nm, "G%d %s d%d hb128 sk%d causal%d (long)", gs[gi], tn(t), dd,
                 d.seq_k, d.causal);
        run_case(nm, d, tol[ti] * 2, 0);
      }
  for (int ti = 1; ti < 3; ti++) {
    da_dtype t = (da_dtype)ti;
    snprintf(nm, sizeof nm, "exact %s d128 causal sq300 sk1100 (long)", tn(t));
    run_case(nm, desc(t, 1, 2, 1, 300, 1100, 128, 1, 1), tol[ti], 0);
  }
  int odd[] = {5, 37, 100, 256};
  for (int i = 0; i < 4; i++) {
    da_attn_desc d = desc(DA_F32, 1, 2, 2, 200, 170, odd[i], 1, odd[i] >= 8 ? 8 : 2);
    d.fusion = DA_FUSE_NORM;
    d.hash_bits = 32;
    snprintf(nm, sizeof nm, "G%d f32 d%d NORM bits32", d.group_size, odd[i]);
    run_case(nm, d, 1e-5, 0);
  }
  /* equal pairs: G=2 must equal exact attention */
  for (int ti = 0; ti < 3; ti++) {
    da_dtype t = (da_dtype)ti;
    da_attn_desc d = desc(t, 1, 2, 2, 256, 256, 128, 0, 2);
    snprintf(nm, sizeof nm, "G2 pairs %s d128 (vs grouped ref)", tn(t));
    run_case(nm, d, tol[ti], 1);
  }
  /* GEMM algorithm */
  for (int ti = 0; ti < 3; ti++)
    for (int G = 1; G <= 4; G *= 2)
      for (int causal = 0; causal < 2; causal++) {
        da_dtype t = (da_dtype)ti;
        da_attn_desc d = desc(t, 2, 4, 2, 150, 200, 64, causal, G);
        d.algo = DA_ALGO_GEMM;
        snprintf(nm, sizeof nm, "GEMM %s G%d causal%d gqa", tn(t), G, causal);
        run_case(nm, d, tol[ti] * (G > 1 && t != DA_F32 ? 2 : 1), 0);
      }
  printf("checks: %d passed, %d failed\n", n_pass, n_fail);
}

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int cmpd(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

int main(int argc, char **argv) {
  IF = distrattn_backend_entry();
  char why[512] = "";
  int n = IF->init(why, sizeof why);
  if (n <= 0) {
    printf("cuda backend: init returned %d: %s\n", n, why);
    return argc > 1 && !strcmp(argv[1], "init") ? 0 : 3;
  }
  CTX.iface = IF;
  if (IF->ctx_create(&CTX, 0)) {
    printf("ctx_create: %s\n", CTX.last_error);
    return 3;
  }
  if (argc > 1 && !strcmp(argv[1], "init")) {
    printf("cuda backend: %d device(s), %s\n", n, CTX.info.name);
    return 0;
  }
  if (argc > 1 && !strcmp(argv[1], "bench")) {
    if (argc < 10) return 2;
    da_dtype t = (da_dtype)atoi(argv[2]);
    da_attn_desc d0 = desc(t, atoi(argv[3]), atoi(argv[4]), atoi(argv[4]), atoi(argv[5]),
                           atoi(argv[5]), atoi(argv[6]), atoi(argv[7]), atoi(argv[8]));
    if (argc > 11) d0.algo = (da_algo)atoi(argv[11]);
    const char *fu = getenv("DA_BENCH_FUSION");
    if (fu && !strcmp(fu, "norm")) d0.fusion = DA_FUSE_NORM;
    int iters = atoi(argv[9]);
    da_plan p;
    make_plan(&p, &d0);
    if (IF->plan_prepare(&p)) {
      printf("plan: %s\n", CTX.last_error);
      return 1;
    }
    if (argc > 10 && atoi(argv[10]) > 0) ((dac_plan *)p.bplan)->br = atoi(argv[10]);
    size_t qb = p.q_elems * p.elem_size, kb = p.kv_elems * p.elem_size;
    unsigned long long seed = 7;
    void *hq = malloc(qb > kb ? qb : kb);
    fill(hq, t, (qb > kb ? qb : kb) / p.elem_size, &seed, 0, d0.head_dim);
    void *dq = dev_upload(hq, qb), *dk = dev_upload(hq, kb), *dv = dev_upload(hq, kb), *dout = dev_upload(hq, qb);
    enum { REPS = 5 };
    double ts[REPS];
    for (int i = 0; i < 3; i++) IF->attention(&p, dq, dk, dv, dout);
    if (IF->synchronize(&CTX)) {
      printf("attention: %s\n", CTX.last_error);
      return 1;
    }
    for (int r = 0; r < REPS; r++) {
      double t0 = now();
      da_status st = DA_SUCCESS;
      for (int i = 0; i < iters && !st; i++) st = IF->attention(&p, dq, dk, dv, dout);
      if (!st) st = IF->synchronize(&CTX);
      if (st) {
        printf("attention: %s\n", CTX.last_error);
        return 1;
      }
      ts[r] = (now() - t0) / iters;
    }
    qsort(ts, REPS, sizeof *ts, cmpd);
    printf("ms %.4f\n", ts[REPS / 2] * 1e3);
    return 0;
  }
  if (argc > 1 && !strcmp(argv[1], "quick")) {
    da_attn_desc d = desc(DA_F16, 1, 2, 1, 100, 130, 128, 1, 1);
    run_case("quick exact f16 d128 causal", d, 2e-3, 0);
    d = desc(DA_BF16, 1, 2, 2, 130, 100, 64, 0, 2);
    d.fusion = DA_FUSE_NORM;
    run_case("quick G2 bf16 d64 NORM", d, 3.2e-2, 0);
    d = desc(DA_F32, 1, 2, 2, 40, 50, 80, 1, 4);
    d.hash_block = 16;
    run_case("quick G4 f32 d80 hb16 (SIMT)", d, 1e-5, 0);
    d = desc(DA_F16, 1, 2, 2, 70, 60, 64, 1, 2);
    d.algo = DA_ALGO_GEMM;
    run_case("quick GEMM f16 G2", d, 4e-3, 0);
    printf("quick: %d passed, %d failed\n", n_pass, n_fail);
  } else {
    checks();
  }
  IF->ctx_destroy(&CTX);
  return n_fail ? 1 : 0;
}
