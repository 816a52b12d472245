/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Times a backend's backward pass against its forward (with LSE):
 *   bench/bwd_time [seq [head_dim [heads [batch [reps [cpu|opencl]]]]]]
 * (defaults 2048 64 8 1 5 cpu), f32, non-causal and causal, exact and G = 2
 * (NORM); prints the median of reps calls of each after one warm-up call
 * (each call followed by da_context_synchronize). DISTRATTN_CPU_THREADS
 * sets the threads as for every call.
 */
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
  const int ocl = strcmp(bname, "opencl") == 0;
  if (seq < 1 || hd < 1 || heads < 1 || batch < 1 || reps < 1 || reps > 100 ||
      (!ocl && strcmp(bname, "cpu") != 0)) {
    fprintf(stderr, "usage: bwd_time [seq [head_dim [heads [batch [reps [cpu|opencl]]]]]]\n");
    return 2;
  }
  da_context *ctx = NULL;
  CHECK(da_context_create(&ctx, ocl ? DA_BACKEND_OPENCL : DA_BACKEND_CPU, ocl ? -1 : 0));
  da_device_info info;
  da_context_get_device_info(ctx, &info);
  size_t n = (size_t)batch * heads * seq * hd, nl = (size_t)batch * heads * seq;
  float *host = malloc(n * sizeof(float));
  da_buffer *q, *k, *v, *o, *lse, *dout, *dq, *dk, *dv;
  CHECK(da_buffer_create(ctx, n * 4, &q));
  CHECK(da_buffer_create(ctx, n * 4, &k));
  CHECK(da_buffer_create(ctx, n * 4, &v));
  CHECK(da_buffer_create(ctx, n * 4, &o));
  CHECK(da_buffer_create(ctx, n * 4, &dout));
  CHECK(da_buffer_create(ctx, n * 4, &dq));
  CHECK(da_buffer_create(ctx, n * 4, &dk));
  CHECK(da_buffer_create(ctx, n * 4, &dv));
  CHECK(da_buffer_create(ctx, nl * 4, &lse));
  unsigned long long x = 88172645463325252ull;
  da_buffer *in[4] = {q, k, v, dout};
  for (int t = 0; t < 4; t++) {
    for (size_t i = 0; i < n; i++) {
      x ^= x << 13, x ^= x >> 7, x ^= x << 17;
      host[i] = (float)((double)(x >> 11) * 0x1p-53 * 2.0 - 1.0);
    }
    CHECK(da_buffer_write(in[t], 0, host, n * 4));
  }
  printf("%s backend: %s; batch %d, heads %d, seq %d, head_dim %d, f32; median of %d\n",
         ocl ? "OpenCL" : "CPU", info.name, batch, heads, seq, hd, reps);
  printf("%-8s %-6s %12s %12s %8s\n", "G", "causal", "forward ms", "backward ms", "bwd/fwd");
  for (int causal = 0; causal < 2; causal++)
    for (int g = 1; g <= 2; g++) {
      da_attn_desc d;
      da_attn_desc_init(&d);
      d.batch = batch, d.heads = heads, d.seq_q = d.seq_k = seq, d.head_dim = hd;
      d.causal = causal, d.group_size = g;
      da_attn_ext e;
      da_attn_ext_init(&e);
      e.lse = 1;
      da_plan *p = NULL;
      CHECK(da_plan_create_ext(ctx, &d, &e, &p));
      da_attn_args a;
      da_attn_args_init(&a);
      a.q = q, a.k = k, a.v = v, a.o = o, a.lse = lse;
      da_bwd_args b;
      da_bwd_args_init(&b);
      b.dout = dout, b.q = q, b.k = k, b.v = v, b.o = o, b.lse = lse, b.dq = dq, b.dk = dk, b.dv = dv;
      double tf[100], tb[100];
      CHECK(da_attention_ext(p, &a));
      CHECK(da_attention_backward(p, &b));
      CHECK(da_context_synchronize(ctx));
      for (int r = 0; r < reps; r++) {
        double t0 = now();
        CHECK(da_attention_ext(p, &a));
        CHECK(da_context_synchronize(ctx));
        double t1 = now();
        CHECK(da_attention_backward(p, &b));
        CHECK(da_context_synchronize(ctx));
        double t2 = now();
        tf[r] = t1 - t0, tb[r] = t2 - t1;
      }
      qsort(tf, reps, sizeof *tf, cmp);
      qsort(tb, reps, sizeof *tb, cmp);
      printf("%-8s %-6s %12.1f %12.1f %8.2f\n", g == 1 ? "exact" : "G=2", causal ? "yes" : "no",
             tf[reps / 2] * 1e3, tb[reps / 2] * 1e3, tb[reps / 2] / tf[reps / 2]);
      da_plan_destroy(p);
    }
  da_buffer *all[] = {q, k, v, o, lse, dout, dq, dk, dv};
  for (int i = 0; i < 9; i++) da_buffer_destroy(all[i]);
  free(host);
  da_context_destroy(ctx);
  return 0;
}
