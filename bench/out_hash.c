/* SPDX-License-Identifier: Apache-2.0 */
/* bench/out_hash: a fingerprint of the library's outputs, for refactors
 * that must not change a bit. It runs a fixed sweep of calls through the
 * public API (f32/f16/bf16; head_dim 64, 128 and the odd 40, 96; decode,
 * GQA, short and long shapes; causal or not; G = 1, 2, 4; windows; Q/K/V
 * not 16-byte aligned; an infinite K element; the projection strategy at
 * ranks d/2 and d/4) on inputs from a fixed seed, and prints per call the
 * kernel the plan reports and FNV-1a hashes of O and LSE. Build it against
 * two versions of the library and diff the two outputs:
 *
 *   make bench/out_hash   (or: cc -O2 bench/out_hash.c -Iinclude -ldistrattn -lm)
 *   bench/out_hash cuda > new.txt ; (old build) bench/out_hash cuda > old.txt
 *   diff old.txt new.txt
 *
 * argv[1]: cpu, opencl or cuda (default cuda). argv[2] "dense": no
 * da_attn_ext option (no LSE, no window, aligned), so that CUDA's Hopper
 * kernel, which runs dense plans only, takes the calls it can. argv[2]
 * "inf": instead, a sweep of infinite inputs that make whole key tiles
 * -inf for a row before any logit above it (inf 2..5 below), with and
 * without windows, for changes to the online softmax's -inf handling;
 * the inputs are chosen so that no logit is NaN (an Inf times a 0 of an
 * f16/bf16 input that rounds to 0 could still make one). */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "distrattn.h"

static uint64_t rs = 88172645463325252ull;
static double urand(void) {
  rs ^= rs << 13, rs ^= rs >> 7, rs ^= rs << 17;
  return (double)(rs >> 11) / 9007199254740992.0;
}
static uint16_t f2h(float f) { /* round to nearest even, normals only */
  uint32_t x;
  memcpy(&x, &f, 4);
  uint32_t s = (x >> 16) & 0x8000u;
  int e = (int)((x >> 23) & 0xff) - 127 + 15;
  uint32_t m = x & 0x7fffffu;
  if ((x & 0x7fffffffu) == 0x7f800000u) return (uint16_t)(s | 0x7c00u);
  if (e <= 0) return (uint16_t)s;
  uint32_t r = (m >> 13) | ((uint32_t)e << 10);
  uint32_t rem = m & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (r & 1))) r++;
  return (uint16_t)(s | r);
}
static uint16_t f2b(float f) {
  uint32_t x;
  memcpy(&x, &f, 4);
  return (uint16_t)((x + 0x7fffu + ((x >> 16) & 1)) >> 16);
}
static uint64_t fnv(const void *p, size_t n, uint64_t h) {
  const unsigned char *c = p;
  for (size_t i = 0; i < n; i++) h = (h ^ c[i]) * 1099511628211ull;
  return h;
}

static da_context *ctx;
static int dense; /* no ext options: the Hopper kernel's plans */

/* The infinite inputs of run's inf (e: the element's index past the
 * offset; t: 0 Q, 1 K, 2 V): 1 one +Inf in K (element 5 d + 3); 2 Q's
 * column 3 made positive and K's column 3 -Inf for the keys j < 100, so
 * that every row's logits are -inf there; 3 as 2, with a +Inf and a -Inf
 * in V at keys 50 and 20 (where P is 0); 4 Q's column 3 positive, K's
 * column 3 -Inf for the last 100 keys, and a -Inf in Q (flat row 5,
 * column 3: that row's logits are all +-inf); 5 Q's column 3 positive in
 * even rows and negative in odd ones, K's column 3 -Inf at every third
 * key (j % 3 == 0). Column 3's finite elements are kept 0.25 or more in
 * size, so that no f16 or bf16 rounding makes one 0 (0 x Inf, a NaN). */
static float poke_inf(int inf, int t, size_t e, int d, int sq, int sk, float f) {
  const int c = (int)(e % (size_t)d);
  const long row = (long)(e / (size_t)d);
  const int i = (int)(row % sq), j = (int)(row % sk);
  if (inf == 1) return t == 1 && e == (size_t)(5 * d + 3) ? INFINITY : f;
  if (c == 3 && t < 2) f = copysignf(fabsf(f) + 0.25f, f);
  if (t == 0) {
    if (c != 3) return f;
    if (inf == 4 && row == 5) return -INFINITY;
    return inf == 5 && i % 2 ? -fabsf(f) : fabsf(f);
  }
  if (t == 1 && c == 3) {
    if ((inf == 2 || inf == 3) && j < 100) return -INFINITY;
    if (inf == 4 && j >= sk - 100) return -INFINITY;
    if (inf == 5 && j % 3 == 0) return -INFINITY;
  }
  if (t == 2 && inf == 3) {
    if (j == 50 && c == 7) return INFINITY;
    if (j == 20 && c == 9) return -INFINITY;
  }
  return f;
}

static void run(int dt, int d, int H, int KVH, int sq, int sk, int causal, int G, int wl, int wr,
                int rank, int qoff, int inf) {
  const size_t es = dt == DA_F32 ? 4 : 2;
  da_attn_desc ds;
  da_attn_desc_init(&ds);
  ds.batch = 2, ds.heads = H, ds.kv_heads = KVH, ds.seq_q = sq, ds.seq_k = sk, ds.head_dim = d;
  ds.dtype = dt, ds.causal = causal, ds.group_size = G, ds.seed = 7;
  da_attn_ext x;
  da_attn_ext_init(&x);
  x.lse = !dense, x.window_left = wl, x.window_right = wr;
  float *proj = NULL;
  if (rank) {
    proj = malloc(sizeof(float) * H * 2 * d * rank);
    for (int i = 0; i < H * 2 * d * rank; i++) proj[i] = (float)(urand() * 2 - 1) * 0.3f;
    x.strategy = DA_STRATEGY_PROJECTION, x.rank = rank, x.proj = proj;
  }
  printf("dt%d d%d h%d/%d sq%d sk%d c%d G%d w%d/%d r%d off%d inf%d: ", dt, d, H, KVH, sq, sk, causal,
         G, wl, wr, rank, qoff, inf);
  da_plan *p = NULL;
  da_status st = da_plan_create_ext(ctx, &ds, &x, &p);
  if (st != DA_SUCCESS) {
    printf("refused %d\n", (int)st);
    free(proj);
    return;
  }
  const size_t nq = (size_t)2 * H * sq * d + qoff, nk = (size_t)2 * KVH * sk * d + qoff;
  const size_t nl = (size_t)2 * H * sq;
  unsigned char *hq = malloc(nq * es), *hk = malloc(nk * es), *hv = malloc(nk * es);
  unsigned char *ho = malloc(nq * es);
  float *hl = malloc(nl * 4);
  for (int t = 0; t < 3; t++) {
    unsigned char *b = t == 0 ? hq : t == 1 ? hk : hv;
    size_t n = t == 0 ? nq : nk;
    for (size_t i = 0; i < n; i++) {
      float f = (float)(urand() * 4 - 2);
      if (inf && i >= (size_t)qoff) f = poke_inf(inf, t, i - (size_t)qoff, d, sq, sk, f);
      if (dt == DA_F32) memcpy(b + 4 * i, &f, 4);
      else {
        uint16_t h = dt == DA_F16 ? f2h(f) : f2b(f);
        memcpy(b + 2 * i, &h, 2);
      }
    }
  }
  memset(ho, 0x5a, nq * es);
  da_buffer *bq, *bk, *bv, *bo, *bl;
  da_buffer_create(ctx, nq * es, &bq);
  da_buffer_create(ctx, nk * es, &bk);
  da_buffer_create(ctx, nk * es, &bv);
  da_buffer_create(ctx, nq * es, &bo);
  da_buffer_create(ctx, nl * 4, &bl);
  da_buffer_write(bq, 0, hq, nq * es);
  da_buffer_write(bk, 0, hk, nk * es);
  da_buffer_write(bv, 0, hv, nk * es);
  da_buffer_write(bo, 0, ho, nq * es);
  da_attn_args a;
  da_attn_args_init(&a);
  a.q = bq, a.k = bk, a.v = bv, a.o = bo, a.lse = dense ? NULL : bl;
  a.q_offset = a.k_offset = a.v_offset = a.o_offset = (size_t)qoff;
  da_kernel_info ki;
  da_kernel_info_init(&ki);
  da_plan_get_kernel(p, &ki);
  st = da_attention_ext(p, &a);
  if (st == DA_SUCCESS) st = da_context_synchronize(ctx);
  if (st != DA_SUCCESS) {
    printf("[%s/%s] error %d %s\n", ki.name, ki.variant, (int)st, da_context_last_error(ctx));
  } else {
    da_buffer_read(bo, 0, ho, nq * es);
    da_buffer_read(bl, 0, hl, nl * 4);
    uint64_t h = fnv(ho, nq * es, 1469598103934665603ull);
    uint64_t h2 = dense ? 0 : fnv(hl, nl * 4, 1469598103934665603ull);
    printf("[%s/%s] O %016llx L %016llx\n", ki.name, ki.variant, (unsigned long long)h,
           (unsigned long long)h2);
  }
  da_buffer_destroy(bq), da_buffer_destroy(bk), da_buffer_destroy(bv), da_buffer_destroy(bo);
  da_buffer_destroy(bl);
  da_plan_destroy(p);
  free(hq), free(hk), free(hv), free(ho), free(hl), free(proj);
}

int main(int argc, char **argv) {
  da_backend be = DA_BACKEND_CUDA;
  if (argc > 1 && !strcmp(argv[1], "cpu")) be = DA_BACKEND_CPU;
  if (argc > 1 && !strcmp(argv[1], "opencl")) be = DA_BACKEND_OPENCL;
  dense = argc > 2 && !strcmp(argv[2], "dense");
  const int infs = argc > 2 && !strcmp(argv[2], "inf");
  if (da_context_create(&ctx, be, 0) != DA_SUCCESS) {
    fprintf(stderr, "no context\n");
    return 1;
  }
  static const int shapes[][4] = {{1, 300, 8, 8},   {1, 777, 8, 2},   {4, 1000, 8, 2},
                                  {8, 513, 8, 8},   {3, 257, 16, 2},  {16, 200, 8, 8},
                                  {200, 333, 4, 4}, {1024, 1024, 4, 4}, {130, 2000, 4, 2},
                                  {700, 300, 4, 4},   {2048, 2048, 16, 16}, {2048, 2048, 16, 4}};
  static const int dims[] = {64, 128, 40, 96};
  if (infs) {
    static const int ishapes[][4] = {{1, 300, 8, 2},  {8, 513, 8, 8},   {16, 200, 8, 8},
                                     {200, 333, 4, 4}, {130, 700, 4, 2}, {300, 300, 4, 4}};
    static const int wins[][2] = {{-1, -1}, {64, 0}, {150, -1}, {40, 32}};
    for (int dt = 0; dt < 3; dt++) /* G = 1 only: a fused Q column may cancel to 0 */
      for (int di = 0; di < 4; di += 2) /* 64, 40 */
        for (int s = 0; s < 6; s++)
          for (int c = 0; c < 2; c++)
            for (int w = 0; w < 4; w++)
              for (int inf = 2; inf <= 5; inf++) {
                const int *sh = ishapes[s];
                if (c && wins[w][1] > 0) continue; /* causal: no right window */
                run(dt, dims[di], sh[2], sh[3], sh[0], sh[1], c, 1, wins[w][0], wins[w][1], 0,
                    0, inf);
              }
    da_context_destroy(ctx);
    return 0;
  }
  for (int dt = 0; dt < 3; dt++)
    for (int di = 0; di < 4; di++)
      for (int s = 0; s < 12; s++)
        for (int c = 0; c < 2; c++) {
          const int *sh = shapes[s];
          run(dt, dims[di], sh[2], sh[3], sh[0], sh[1], c, 1, -1, -1, 0, 0, 0);
          if (dims[di] >= 64 && dims[di] % 32 == 0) {
            run(dt, dims[di], sh[2], sh[3], sh[0], sh[1], c, 2, -1, -1, 0, 0, 0);
            run(dt, dims[di], sh[2], sh[3], sh[0], sh[1], c, 4, -1, -1, 0, 0, 0);
          }
          if (s % 3 == 0 && !dense) {
            run(dt, dims[di], sh[2], sh[3], sh[0], sh[1], c, 1, 64, c ? 0 : 32, 0, 0, 0);
            run(dt, dims[di], sh[2], sh[3], sh[0], sh[1], c, 1, -1, -1, 0, 1, 0);
            run(dt, dims[di], sh[2], sh[3], sh[0], sh[1], c, 1, -1, -1, 0, 0, 1);
          }
          if (dims[di] == 64 || dims[di] == 128) {
            run(dt, dims[di], sh[2], sh[3], sh[0], sh[1], c, 1, -1, -1, dims[di] / 2, 0, 0);
            run(dt, dims[di], sh[2], sh[3], sh[0], sh[1], c, 1, -1, -1, dims[di] / 4, 0, 0);
          }
        }
  da_context_destroy(ctx);
  return 0;
}
