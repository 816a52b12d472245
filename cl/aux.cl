/* SPDX-License-Identifier: Apache-2.0 */
/* Helpers around the CLBlast GEMMs of DA_ALGO_GEMM: conversion to f32, the
 * fused Qs / Kf of DistrAttention, the masked softmax of the logits and the
 * final store in the input dtype.
 * Defines: D, G, NG, HB, CAUSAL, DTYPE, SL (softmax work-group size). */

__kernel void da_to_f32(__global const elem_t *src, __global float *dst, ulong n) {
  const size_t x = get_global_id(0);
  if (x < n) dst[x] = LOAD_ELEM(src, x);
}

/* Qs[bh][r][g], r < Rp (rows padded to whole hash tiles, padding zero).
 * Here and in da_fuse_k, perm holds the columns in group order and wts the
 * weight a_c of each original column c (hash.cl). */
__kernel void da_fuse_q(__global const elem_t *Q, __global const int *perm,
                        __global const float *wts, __global float *Qs, int seq_q, int Rp,
                        int n_tiles) {
  const int g = get_global_id(0), r = get_global_id(1), bh = get_global_id(2);
  if (g >= NG || r >= Rp) return;
  float out = 0.0f;
  if (r < seq_q) {
    const size_t pbase = ((size_t)bh * n_tiles + r / HB) * D;
    const size_t qrow = ((size_t)bh * seq_q + r) * D;
    float s = 0.0f, ws = 0.0f;
    for (int t = g * G; t < min(g * G + G, D); t++) {
      const int c = perm[pbase + t];
      s += LOAD_ELEM(Q, qrow + c);
      ws += wts[pbase + c];
    }
    out = s / ws;
  }
  Qs[((size_t)bh * Rp + r) * NG + g] = out;
}

/* Kf[z][j][g] for z = (bh - bh0) * n_tiles + tile: the keys fused with the
 * grouping of query head bh's hash tile. */
__kernel void da_fuse_k(__global const elem_t *K, __global const int *perm,
                        __global const float *wts, __global float *Kf, int seq_k, int heads,
                        int kv_heads, int n_tiles, int bh0) {
  const int g = get_global_id(0), j = get_global_id(1), z = get_global_id(2);
  if (g >= NG || j >= seq_k) return;
  const int bh = bh0 + z / n_tiles, tile = z % n_tiles;
  const int b = bh / heads, h = bh - b * heads;
  const int kvh = h / (heads / kv_heads);
  const size_t pbase = ((size_t)bh * n_tiles + tile) * D;
  const size_t krow = (((size_t)b * kv_heads + kvh) * seq_k + j) * D;
  float s = 0.0f;
  for (int t = g * G; t < min(g * G + G, D); t++) {
    const int c = perm[pbase + t];
    s = fma(wts[pbase + c], LOAD_ELEM(K, krow + c), s);
  }
  Kf[((size_t)z * seq_k + j) * NG + g] = s;
}

/* One work-group per logits row: P = softmax(scale * S + mask), in place.
 * Row `row` is query i = row % Rp of its head; rows past seq_q and rows that
 * see no key become zero. */
__kernel __attribute__((reqd_work_group_size(SL, 1, 1)))
void da_softmax(__global float *S, int Rp, int seq_q, int seq_k, float scale) {
  /* s * scale is rounded before "- mx", never contracted into an fma, so
   * the maximum's exponent is exactly 0 whatever the logits' size */
#pragma OPENCL FP_CONTRACT OFF
  __local float red[SL];
  const int lid = get_local_id(0);
  const size_t row = get_group_id(0);
  const int i = (int)(row % (size_t)Rp);
  __global float *s = S + row * (size_t)seq_k;
  int lim = i < seq_q ? seq_k : 0;
#if CAUSAL
  lim = min(lim, max(0, i + (seq_k - seq_q) + 1));
#endif
  float mx = -INFINITY;
  for (int j = lid; j < lim; j += SL) mx = fmax(mx, s[j] * scale);
  red[lid] = mx;
  barrier(CLK_LOCAL_MEM_FENCE);
  for (int w = SL / 2; w > 0; w >>= 1) {
    if (lid < w) red[lid] = fmax(red[lid], red[lid + w]);
    barrier(CLK_LOCAL_MEM_FENCE);
  }
  mx = red[0];
  barrier(CLK_LOCAL_MEM_FENCE);
  float sum = 0.0f;
  for (int j = lid; j < lim; j += SL) {
    const float e = exp(s[j] * scale - mx);
    s[j] = e;
    sum += e;
  }
  red[lid] = sum;
  barrier(CLK_LOCAL_MEM_FENCE);
  for (int w = SL / 2; w > 0; w >>= 1) {
    if (lid < w) red[lid] += red[lid + w];
    barrier(CLK_LOCAL_MEM_FENCE);
  }
  const float inv = DA_SM_INV(lim > 0, red[0]);
  for (int j = lid; j < seq_k; j += SL) s[j] = j < lim ? s[j] * inv : 0.0f;
}

/* O[bh][i][c] = Of[bh][i][c] for i < seq_q, in the output dtype. */
__kernel void da_store_out(__global const float *Of, __global elem_t *O, int Rp, int seq_q) {
  const int c = get_global_id(0), i = get_global_id(1), bh = get_global_id(2);
  if (c >= D || i >= seq_q) return;
  STORE_ELEM(O, ((size_t)bh * seq_q + i) * D + c, Of[((size_t)bh * Rp + i) * D + c]);
}
