/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Times a backend's backward pass against its forward (with LSE):
 *   bench/bwd_time [seq [head_dim [heads [batch [reps [cpu|opencl|cuda
 *                  [rank [f32|f16|bf16]]]]]]]]
 * (defaults 2048 64 8 1 5 cpu 0 f32), non-causal and causal, exact and
 * G = 2 (NORM) and, with rank > 0, the projection strategy (SPEC 1c) of
 * that rank (random A_h, B_h); prints the median of reps calls of each
 * after one warm-up call (each call followed by da_context_synchronize).
 * Where the backend refuses the projection strategy's forward (CUDA until
 * bench/pending/cuda-projection.patch lands), its backward is timed on the
 * O and LSE of the G = 2 plan timed before it (the time, not the values,
 * is what counts here)
 * and the forward column shows "-". Inputs are random in [-1, 1] (f16 and
 * bf16: random values of that order). DISTRATTN_CPU_THREADS sets the
 * threads as for every call.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "distrattn.h"

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

static int cmp(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

#define CHECK(call)                                                                         \
  do {                                                                                      \
    da_status s_ = (call);                                                                  \
    if (s_ != DA_SUCCESS) {                                                                 \
      fprintf(stderr, "%s: %s (%s)\n", #call, da_status_string(s_), da_context_last_error(ctx)); \
      return 1;                                                                             \
    }                                                                                       \
  } while (0)

int main(int argc, char **argv) {
  int seq = argc > 1 ? atoi(argv[1]) : 2048, hd = argc > 2 ? atoi(argv[2]) : 64;
  int heads = argc > 3 ? atoi(argv[3]) : 8, batch = argc > 4 ? atoi(argv[4]) : 1;
  int reps = argc > 5 ? atoi(argv[5]) : 5;
  const char *bname = argc > 6 ? argv[6] : "cpu";
  const int rank = argc > 7 ? atoi(argv[7]) : 0;
  const char *tname = argc > 8 ? argv[8] : "f32";
  const int ocl = strcmp(bname, "opencl") == 0, cu = strcmp(bname, "cuda") == 0;
  const da_dtype dt = strcmp(tname, "f16") == 0 ? DA_F16 : strcmp(tname, "bf16") == 0 ? DA_BF16 : DA_F32;
  if (seq < 1 || hd < 1 || heads < 1 || batch < 1 || reps < 1 || reps > 100 || rank < 0 ||
      rank > hd || (!ocl && !cu && strcmp(bname, "cpu") != 0) ||
      (dt == DA_F32 && strcmp(tname, "f32") != 0)) {
    fprintf(stderr, "usage: bwd_time [seq [head_dim [heads [batch [reps [cpu|opencl|cuda [rank "
                    "[f32|f16|bf16]]]]]]]]\n");
    return 2;
  }
  da_context *ctx = NULL;
  CHECK(da_context_create(&ctx, ocl ? DA_BACKEND_OPENCL : cu ? DA_BACKEND_CUDA : DA_BACKEND_CPU,
                          ocl || cu ? -1 : 0));
  da_device_info info;
  da_context_get_device_info(ctx, &info);
  const size_t es = dt == DA_F32 ? 4 : 2;
  size_t n = (size_t)batch * heads * seq * hd, nl = (size_t)batch * heads * seq;
  float *host = malloc(n * sizeof(float));
  uint16_t *h16 = (uint16_t *)host;
  da_buffer *q, *k, *v, *o, *lse, *dout, *dq, *dk, *dv;
  CHECK(da_buffer_create(ctx, n * es, &q));
  CHECK(da_buffer_create(ctx, n * es, &k));
  CHECK(da_buffer_create(ctx, n * es, &v));
  CHECK(da_buffer_create(ctx, n * es, &o));
  CHECK(da_buffer_create(ctx, n * es, &dout));
  CHECK(da_buffer_create(ctx, n * es, &dq));
  CHECK(da_buffer_create(ctx, n * es, &dk));
  CHECK(da_buffer_create(ctx, n * es, &dv));
  CHECK(da_buffer_create(ctx, nl * 4, &lse));
  unsigned long long x = 88172645463325252ull;
  da_buffer *in[4] = {q, k, v, dout};
  for (int t = 0; t < 4; t++) {
    for (size_t i = 0; i < n; i++) {
      x ^= x << 13, x ^= x >> 7, x ^= x << 17;
      const float f = (float)((double)(x >> 11) * 0x1p-53 * 2.0 - 1.0);
      if (dt == DA_F32) {
        host[i] = f;
      } else if (dt == DA_BF16) {
        uint32_t u;
        memcpy(&u, &f, 4);
        h16[i] = (uint16_t)(u >> 16); /* truncated: random values of f's order */
      } else { /* f16: sign, exponent 2^-6..2^-1, random mantissa */
        h16[i] = (uint16_t)(((x >> 20) & 0x8000u) | ((9u + (unsigned)((x >> 40) % 6)) << 10) |
                            ((x >> 3) & 0x3ffu));
      }
    }
    CHECK(da_buffer_write(in[t], 0, host, n * es));
  }
  float *pj = NULL;
  if (rank) { /* A_h, B_h uniform in [-1, 1] * sqrt(3 / head_dim): Q A_h of Q's order */
    const size_t np = (size_t)heads * 2 * hd * rank;
    pj = malloc(np * sizeof *pj);
    for (size_t i = 0; i < np; i++) {
      x ^= x << 13, x ^= x >> 7, x ^= x << 17;
      pj[i] = (float)(((double)(x >> 11) * 0x1p-53 * 2.0 - 1.0) * sqrt(3.0 / hd));
    }
  }
  printf("%s backend: %s; batch %d, heads %d, seq %d, head_dim %d, %s; median of %d\n",
         ocl ? "OpenCL" : cu ? "CUDA" : "CPU", info.name, batch, heads, seq, hd, tname, reps);
  printf("%-8s %-6s %12s %12s %8s\n", "G", "causal", "forward ms", "backward ms", "bwd/fwd");
  for (int causal = 0; causal < 2; causal++)
    for (int g = 1; g <= (rank ? 3 : 2); g++) {
      const int proj = g == 3; /* the projection strategy of the given rank */
      da_attn_desc d;
      da_attn_desc_init(&d);
      d.batch = batch, d.heads = heads, d.seq_q = d.seq_k = seq, d.head_dim = hd;
      d.causal = causal, d.group_size = proj ? 1 : g, d.dtype = dt;
      da_attn_ext e;
      da_attn_ext_init(&e);
      e.lse = 1;
      if (proj) e.strategy = DA_STRATEGY_PROJECTION, e.rank = rank, e.proj = pj;
      da_plan *p = NULL;
      CHECK(da_plan_create_ext(ctx, &d, &e, &p));
      da_attn_args a;
      da_attn_args_init(&a);
      a.q = q, a.k = k, a.v = v, a.o = o, a.lse = lse;
      da_bwd_args b;
      da_bwd_args_init(&b);
      b.dout = dout, b.q = q, b.k = k, b.v = v, b.o = o, b.lse = lse, b.dq = dq, b.dk = dk, b.dv = dv;
      double tf[100], tb[100];
      /* a refused projection forward: the backward on the O and LSE of the
       * G = 2 plan before it (whose forward ran last) */
      int fwd = 1;
      if (proj) {
        const da_status fs = da_attention_ext(p, &a);
        if (fs == DA_ERR_UNSUPPORTED)
          fwd = 0;
        else
          CHECK(fs);
      }
      if (fwd) CHECK(da_attention_ext(p, &a));
      CHECK(da_attention_backward(p, &b));
      CHECK(da_context_synchronize(ctx));
      for (int r = 0; r < reps; r++) {
        double t0 = now();
        if (fwd) CHECK(da_attention_ext(p, &a));
        CHECK(da_context_synchronize(ctx));
        double t1 = now();
        CHECK(da_attention_backward(p, &b));
        CHECK(da_context_synchronize(ctx));
        double t2 = now();
        tf[r] = t1 - t0, tb[r] = t2 - t1;
      }
      qsort(tf, reps, sizeof *tf, cmp);
      qsort(tb, reps, sizeof *tb, cmp);
      char name[32];
      snprintf(name, sizeof name, "%s", g == 1 ? "exact" : g == 2 ? "G=2" : "proj");
      if (proj) snprintf(name, sizeof name, "proj r%d", rank);
      if (fwd)
        printf("%-8s %-6s %12.2f %12.2f %8.2f\n", name, causal ? "yes" : "no", tf[reps / 2] * 1e3,
               tb[reps / 2] * 1e3, tb[reps / 2] / tf[reps / 2]);
      else
        printf("%-8s %-6s %12s %12.2f %8s\n", name, causal ? "yes" : "no", "-", tb[reps / 2] * 1e3,
               "-");
      da_plan_destroy(p);
    }
  da_buffer *all[] = {q, k, v, o, lse, dout, dq, dk, dv};
  for (int i = 0; i < 9; i++) da_buffer_destroy(all[i]);
  free(host);
  free(pj);
  da_context_destroy(ctx);
  return 0;
}
