/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Split-KV decode (flash-decoding) for exact attention with few query rows
 * per kv head (README, "Decode"; SPEC 1, "Layouts and lengths").
 *
 * Pass 1, dac_dec_kernel: grid (row groups x chunks, kv heads, batch). A
 * block takes one (batch, kv head), RB of the R = heads/kv_heads x seq_q
 * query rows that share it (head-major: row rr is query head rr / seq_q of
 * the kv head's group, query i = rr % seq_q) and one chunk of C keys, and
 * reads that chunk of K and V once for all RB rows. Each key is handled by
 * LPK = D/16 lanes, each holding 16 of its elements (32 bytes of f16/bf16,
 * 64 of f32) loaded with 16-byte vector loads, so a warp reads 32/LPK whole
 * consecutive rows per instruction; the dot product is finished with
 * log2(LPK) shuffles. Every group of LPK lanes keeps its own online-softmax
 * state (max, sum, 16 output elements per row) over the keys it saw,
 * rescaled once per KB keys; at the end the block merges its groups in
 * shared memory and writes the chunk's partial result: the unnormalised
 * output row, its max and its sum (log2 domain, f32).
 *
 * The tensor-core variants (f16/bf16, D 64 or 128) take the rows in
 * groups of 8 (dac_decn_kernel, transposed MMAs: up to 8 rows per kv head)
 * or 16 (dac_decm_kernel) instead; both are below.
 *
 * Pass 2, dac_dec_combine: one block per output row merges the chunks by
 * their maxima and sums, writes O (in the dtype, at the caller's strides)
 * and, where asked, the log-sum-exp.
 *
 * Both passes read lengths from device memory and clamp them as the other
 * kernels do (cuda_dev.cuh: dac_seq_of, dac_win), so no row outside the
 * sequence is read or written.
 */
#ifndef DA_CUDA_DECODE_CUH
#define DA_CUDA_DECODE_CUH

#include <limits.h>
#include <math.h>

#include "cuda_dev.cuh"
#include "cuda_mma.cuh"
#include "cuda_softmax.cuh"

#define DEC_THREADS 128
#define DEC_WARPS (DEC_THREADS / 32)

/* elements per lane and loads */
template <typename T> struct dec_io;
template <> struct dec_io<float> {
  static constexpr int U4 = 4; /* 16 floats = 4 x 16 bytes */
  static __device__ __forceinline__ void to_f32(const uint4 *u, float *f) {
#pragma unroll
    for (int i = 0; i < 4; i++) {
      f[4 * i + 0] = __uint_as_float(u[i].x);
      f[4 * i + 1] = __uint_as_float(u[i].y);
      f[4 * i + 2] = __uint_as_float(u[i].z);
      f[4 * i + 3] = __uint_as_float(u[i].w);
    }
  }
  static __device__ __forceinline__ float ld1(const float *p) { return *p; }
  static __device__ __forceinline__ void st1(float *p, float v) { *p = v; }
};
template <typename H> struct dec_io16 {
  static constexpr int U4 = 2; /* 16 halves = 2 x 16 bytes */
  static __device__ __forceinline__ void to_f32(const uint4 *u, float *f) {
#pragma unroll
    for (int i = 0; i < 2; i++) {
      const uint32_t w[4] = {u[i].x, u[i].y, u[i].z, u[i].w};
#pragma unroll
      for (int j = 0; j < 4; j++) {
        const float2 t = dac_cvt<H>::unpack(w[j]);
        f[8 * i + 2 * j] = t.x;
        f[8 * i + 2 * j + 1] = t.y;
      }
    }
  }
};
template <> struct dec_io<__half> : dec_io16<__half> {
  static __device__ __forceinline__ float ld1(const __half *p) { return __half2float(*p); }
  static __device__ __forceinline__ void st1(__half *p, float v) { *p = __float2half_rn(v); }
};
template <> struct dec_io<__nv_bfloat16> : dec_io16<__nv_bfloat16> {
  static __device__ __forceinline__ float ld1(const __nv_bfloat16 *p) {
    return __bfloat162float(*p);
  }
  static __device__ __forceinline__ void st1(__nv_bfloat16 *p, float v) {
    *p = __float2bfloat16_rn(v);
  }
};

/* what the host worked out for a call: the partial results and the chunking */
struct dac_dec_part {
  float *acc;   /* [row][nch][D]: row = (b * heads + h) * seq_q + i */
  float2 *ml;   /* [row][nch]: (max, sum), log2 domain */
  int nch, C, RB, nrg;
};

/* A pass-1 block: ROWS of the R = heads/kv_heads x seq_q query rows of kv
 * head hk of sequence b (row group rg; row rr is query head rr / seq_q of
 * the kv head's group, query rr % seq_q), one chunk of P.C keys. */
template <int ROWS> struct dec_blk {
  int rg, chunk, hk, b, hpk, R, lq, lk;
  dac_seq sq;
  size_t prow0; /* the partials' row of the kv head's first query row */
  __device__ __forceinline__ dec_blk(const dac_args &a, const dac_dec_part &P) {
    rg = blockIdx.x % P.nrg, chunk = blockIdx.x / P.nrg;
    hk = blockIdx.y, b = blockIdx.z;
    hpk = a.heads / a.kv_heads;
    R = hpk * a.seq_q;
    sq = dac_seq_of(a, b);
    lq = sq.lq, lk = sq.lk;
    prow0 = ((size_t)b * a.heads + (size_t)hk * hpk) * a.seq_q;
  }
  /* row r of the block is a query row of the sequence */
  __device__ __forceinline__ bool row_ok(const dac_args &a, int r) const {
    const int rr = rg * ROWS + r;
    return rr < R && rr % a.seq_q < lq;
  }
  /* the keys [klo, khi] some row of the block sees (klo > khi: none) */
  __device__ __forceinline__ void window(const dac_args &a, int &klo, int &khi) const {
    klo = INT_MAX, khi = -1;
    for (int r = 0; r < ROWS; r++) {
      if (!row_ok(a, r)) continue;
      int lo, hi;
      dac_win(a, (rg * ROWS + r) % a.seq_q, lq, lk, lo, hi);
      if (lo <= hi) {
        klo = min(klo, lo);
        khi = max(khi, hi);
      }
    }
  }
  /* nothing visible in this chunk: an empty partial (the combine skips it) */
  __device__ __forceinline__ void write_empty(const dac_args &a, const dac_dec_part &P) const {
    const int r = threadIdx.x;
    if (r < ROWS && row_ok(a, r)) P.ml[(prow0 + rg * ROWS + r) * P.nch + chunk] = make_float2(-INFINITY, 0.0f);
  }
  /* The block's partial of the chunk from the NP partials of its lane
   * groups or warps in shared memory (g_m, g_l [NP][ROWS], g_acc
   * [NP][ROWS][D]; after a barrier). */
  template <int D>
  __device__ __forceinline__ void merge(const dac_args &a, const dac_dec_part &P, int np, const float *g_m,
                                        const float *g_l, const float *g_acc) const {
    for (int x = threadIdx.x; x < ROWS * D; x += DEC_THREADS) {
      const int r = x / D, e = x % D;
      if (!row_ok(a, r)) continue;
      float L, o;
      const float M = dac_sm_merge<false>(
          np, [&](int g) { return g_m[g * ROWS + r]; }, [&](int g) { return g_l[g * ROWS + r]; },
          [&](int g) { return g_acc[((size_t)g * ROWS + r) * D + e]; }, L, o);
      const size_t pr = (prow0 + rg * ROWS + r) * P.nch + chunk;
      P.acc[pr * D + e] = o;
      if (e == 0) P.ml[pr] = make_float2(M, L);
    }
  }
};

/* Merge the chunks of one output row (b, h, i) for element e: O (in the
 * dtype, at the caller's strides) and, for e == 0, the log-sum-exp. */
template <typename T, int D>
__device__ __forceinline__ void dac_dec_merge_row(const dac_args &a, const dac_dec_part &P,
                                                  const dac_seq &sq, int b, int h, int i, int e) {
  const size_t pr = (((size_t)b * a.heads + h) * a.seq_q + i) * P.nch;
  float L, o;
  const float M = dac_sm_merge<true>(
      P.nch, [&](int c) { return P.ml[pr + c].x; }, [&](int c) { return P.ml[pr + c].y; },
      [&](int c) { return P.acc[(pr + c) * D + e]; }, L, o);
  int lo, hi;
  dac_win(a, i, sq.lq, sq.lk, lo, hi);
  const bool seen = lo <= hi;
  const size_t oi = (size_t)(b * a.ost[0] + h * a.ost[1] + (sq.q0 + i) * a.ost[2]) + e;
  dec_io<T>::st1((T *)a.o + oi, o * dac_inv_sum(L, seen));
  if (a.lse && e == 0) a.lse[dac_lse_at(a, b, h, sq, i)] = dac_lse_val(seen, M, L);
}

template <typename T, int D, int RB>
__global__ void __launch_bounds__(DEC_THREADS, 3)
    dac_dec_kernel(dac_args a, dac_dec_part P) {
  constexpr int LPK = D / 16;          /* lanes per key */
  constexpr int KPW = 32 / LPK;        /* keys a warp reads per load */
  /* keys per lane and round (their K and V loads are in flight together) */
  constexpr int KB = (sizeof(T) == 4 || RB == 4) ? 2 : 4;
  constexpr int NG = DEC_WARPS * KPW;  /* lane groups per block */
  constexpr int U4 = dec_io<T>::U4;
  extern __shared__ float dsm[];
  float *q_s = dsm;                    /* [RB][D], times scale_log2 */
  float *g_m = q_s + RB * D;           /* [NG][RB] */
  float *g_l = g_m + NG * RB;          /* [NG][RB] */
  float *g_acc = g_l + NG * RB;        /* [NG][RB][D] */

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int gi = lane / LPK, li = lane % LPK, grp = warp * KPW + gi;
  const dec_blk<RB> B(a, P);
  const int rg = B.rg, hk = B.hk, b = B.b, hpk = B.hpk, R = B.R, lq = B.lq, lk = B.lk;
  const dac_seq sq = B.sq;

  /* this block's rows: their heads, query indices and windows */
  int lo[RB], hi[RB];
  int klo = INT_MAX, khi = -1;
#pragma unroll
  for (int r = 0; r < RB; r++) {
    const int rr = rg * RB + r, i = rr % a.seq_q;
    lo[r] = 1;
    hi[r] = 0;
    if (rr < R && i < lq) dac_win(a, i, lq, lk, lo[r], hi[r]);
    if (lo[r] <= hi[r]) {
      klo = min(klo, lo[r]);
      khi = max(khi, hi[r]);
    }
  }
  const int c0 = B.chunk * P.C;
  const int kbeg = max(c0, klo), kend = min(c0 + P.C, khi + 1);
  if (kbeg >= kend) {
    B.write_empty(a, P);
    return;
  }

  for (int x = tid; x < RB * D; x += DEC_THREADS) {
    const int r = x / D, e = x % D, rr = rg * RB + r;
    float v = 0.0f;
    if (rr < R && rr % a.seq_q < lq) {
      const long long h = (long long)hk * hpk + rr / a.seq_q, i = rr % a.seq_q;
      const size_t qi = (size_t)(b * a.qst[0] + h * a.qst[1] + (sq.q0 + i) * a.qst[2]) + e;
      v = dec_io<T>::ld1((const T *)a.q + qi) * a.scale_log2;
    }
    q_s[x] = v;
  }
  __syncthreads();

  const T *kp = (const T *)a.k + (size_t)(b * a.kst[0] + hk * a.kst[1] + sq.k0 * a.kst[2]) + li * 16;
  const T *vp = (const T *)a.v + (size_t)(b * a.vst[0] + hk * a.vst[1] + sq.k0 * a.vst[2]) + li * 16;
  float m[RB], l[RB], acc[RB][16];
#pragma unroll
  for (int r = 0; r < RB; r++) {
    m[r] = -INFINITY;
    l[r] = 0.0f;
#pragma unroll
    for (int e = 0; e < 16; e++) acc[r][e] = 0.0f;
  }

  constexpr int STEP = KPW * KB;       /* keys of one round of a warp */
  for (int base = kbeg + warp * STEP; base < kend; base += DEC_WARPS * STEP) {
    uint4 ku[KB][U4], vu[KB][U4];
#pragma unroll
    for (int t = 0; t < KB; t++) {
      const int j = base + t * KPW + gi;
      if (j < kend) {
        const uint4 *ks = (const uint4 *)(kp + (long long)j * a.kst[2]);
        const uint4 *vs = (const uint4 *)(vp + (long long)j * a.vst[2]);
#pragma unroll
        for (int u = 0; u < U4; u++) ku[t][u] = __ldg(ks + u);
#pragma unroll
        for (int u = 0; u < U4; u++) vu[t][u] = __ldg(vs + u);
      } else {
#pragma unroll
        for (int u = 0; u < U4; u++) ku[t][u] = vu[t][u] = make_uint4(0, 0, 0, 0);
      }
    }
    float s[KB][RB];
#pragma unroll
    for (int t = 0; t < KB; t++) {
      float kf[16];
      dec_io<T>::to_f32(ku[t], kf);
#pragma unroll
      for (int r = 0; r < RB; r++) {
        const float4 *qv = (const float4 *)(q_s + r * D + li * 16);
        float x = 0.0f;
#pragma unroll
        for (int u = 0; u < 4; u++) {
          const float4 q4 = qv[u];
          x = fmaf(q4.x, kf[4 * u], x);
          x = fmaf(q4.y, kf[4 * u + 1], x);
          x = fmaf(q4.z, kf[4 * u + 2], x);
          x = fmaf(q4.w, kf[4 * u + 3], x);
        }
        s[t][r] = x;
      }
    }
#pragma unroll
    for (int o = LPK / 2; o >= 1; o >>= 1)
#pragma unroll
      for (int t = 0; t < KB; t++)
#pragma unroll
        for (int r = 0; r < RB; r++) s[t][r] += __shfl_xor_sync(0xffffffffu, s[t][r], o);
#pragma unroll
    for (int r = 0; r < RB; r++) {
      float mx = -INFINITY;
#pragma unroll
      for (int t = 0; t < KB; t++) {
        const int j = base + t * KPW + gi;
        if (j < lo[r] || j > hi[r] || j >= kend) s[t][r] = -INFINITY;
        mx = fmaxf(mx, s[t][r]);
      }
      /* the logits are in the log2 domain already (Q times scale_log2) */
      float mu;
      const float alpha = dac_sm_advance(m[r], fmaxf(m[r], mx), 1.0f, mu);
      float ps = 0.0f;
#pragma unroll
      for (int t = 0; t < KB; t++) {
        s[t][r] = dac_sm_p(s[t][r], 1.0f, mu);
        ps += s[t][r];
      }
      l[r] = l[r] * alpha + ps;
#pragma unroll
      for (int e = 0; e < 16; e++) acc[r][e] *= alpha;
    }
#pragma unroll
    for (int t = 0; t < KB; t++) {
      float vf[16];
      dec_io<T>::to_f32(vu[t], vf);
#pragma unroll
      for (int r = 0; r < RB; r++)
#pragma unroll
        for (int e = 0; e < 16; e++) acc[r][e] = fmaf(s[t][r], vf[e], acc[r][e]);
    }
  }

  /* merge the block's lane groups */
#pragma unroll
  for (int r = 0; r < RB; r++) {
    if (li == 0) {
      g_m[grp * RB + r] = m[r];
      g_l[grp * RB + r] = l[r];
    }
    float4 *dst = (float4 *)(g_acc + ((size_t)grp * RB + r) * D + li * 16);
#pragma unroll
    for (int u = 0; u < 4; u++)
      dst[u] = make_float4(acc[r][4 * u], acc[r][4 * u + 1], acc[r][4 * u + 2], acc[r][4 * u + 3]);
  }
  __syncthreads();
  B.template merge<D>(a, P, NG, g_m, g_l, g_acc);
}


/* The tensor-core variants' K and V of a step of 16 keys from base,
 * straight from global memory into the MMAs' registers (zeros past kend;
 * thread (g, c) = (lane / 4, lane % 4)): K's keys base + 8 t + g into
 * kr[t], their 16-byte pieces c, c + 4, ...; V's keys base + 2c + (q & 1) +
 * 8 (q >> 1) into vr[q], their elements D/8 g ... D/8 g + D/8 - 1. */
template <typename T, int D>
__device__ __forceinline__ void dec_mma_load_k(uint4 (&kr)[2][D / 32], const T *kbase, long long kst,
                                               int base, int kend, int g, int c) {
#pragma unroll
  for (int t = 0; t < 2; t++) {
    const int j = base + 8 * t + g;
    if (j < kend) {
      const uint4 *src = (const uint4 *)(kbase + (long long)j * kst);
#pragma unroll
      for (int u = 0; u < D / 32; u++) kr[t][u] = __ldg(src + c + 4 * u);
    } else {
#pragma unroll
      for (int u = 0; u < D / 32; u++) kr[t][u] = make_uint4(0, 0, 0, 0);
    }
  }
}
template <typename T, int D>
__device__ __forceinline__ void dec_mma_load_v(uint4 (&vr)[4][D / 64], const T *vbase, long long vst,
                                               int base, int kend, int g, int c) {
#pragma unroll
  for (int q4 = 0; q4 < 4; q4++) {
    const int j = base + 2 * c + (q4 & 1) + 8 * (q4 >> 1);
    if (j < kend) {
      const uint4 *src = (const uint4 *)(vbase + (long long)j * vst + D / 8 * g);
#pragma unroll
      for (int u = 0; u < D / 64; u++) vr[q4][u] = __ldg(src + u);
    } else {
#pragma unroll
      for (int u = 0; u < D / 64; u++) vr[q4][u] = make_uint4(0, 0, 0, 0);
    }
  }
}

/* The tensor-core variant (f16/bf16, D 64 or 128): 16 query rows per
 * block (MMA_ROWS; a kv head's R rows in groups of 16, padded with zeros),
 * each of its 4 warps takes 16 keys a step (steps interleaved over the
 * warps) and keeps its own online softmax of all 16 rows; m16n8k16 MMAs for
 * Q K^T and P V. K and V go from global memory straight into the MMAs'
 * fragments: Q K^T sums over the head dimension, so any order of it works
 * when Q's fragments use the same one, and the thread with lane (g, c)
 * (g = lane / 4, c = lane % 4) loads, for key g of each 8-key tile, the
 * 16-byte pieces c, c + 4, ... of the row (the 4 threads of a key read a
 * contiguous 64 bytes per load); for P V, thread (g, c) loads the rows
 * 2c, 2c + 1, 2c + 8, 2c + 9 of the step at elements D/8 g ... D/8 g +
 * D/8 - 1, so that output column n of n-tile j is element D/8 n + j, and
 * byte permutes pair two rows' halves into a B fragment. */
#define DECM_ROWS 16

template <typename T, int D>
__global__ void __launch_bounds__(DEC_THREADS, 2)
    dac_decm_kernel(dac_args a, dac_dec_part P) {
  using op = dac_mma_op<T>;
  constexpr int KS = D / 16;  /* k-steps of Q K^T */
  constexpr int PC = D / 32;  /* 16-byte pieces of a K row per thread */
  constexpr int NT = D / 8;   /* n-tiles of P V; also elements per thread of a V row */
  constexpr int VU = NT / 8;  /* 16-byte pieces of those */
  __shared__ float g_m[DEC_WARPS][DECM_ROWS], g_l[DEC_WARPS][DECM_ROWS];
  extern __shared__ float g_acc[]; /* [DEC_WARPS][DECM_ROWS][D] */

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int g = lane >> 2, c = lane & 3;
  const dec_blk<DECM_ROWS> B(a, P);
  const int rg = B.rg, hk = B.hk, b = B.b, hpk = B.hpk, R = B.R, lq = B.lq, lk = B.lk;
  const dac_seq sq = B.sq;

  /* the block's window of keys (every row's), and this thread's two rows */
  int klo, khi;
  B.window(a, klo, khi);
  int lo[2], hi[2];
  bool rv[2];
#pragma unroll
  for (int h2 = 0; h2 < 2; h2++) {
    const int rr = rg * DECM_ROWS + g + 8 * h2, i = rr % a.seq_q;
    rv[h2] = rr < R && i < lq;
    lo[h2] = 1, hi[h2] = 0;
    if (rv[h2]) dac_win(a, i, lq, lk, lo[h2], hi[h2]);
  }
  const int c0 = B.chunk * P.C;
  const int kbeg = max(c0, klo), kend = min(c0 + P.C, khi + 1);
  if (kbeg >= kend) {
    B.write_empty(a, P);
    return;
  }

  /* Q's A fragments, in the K pieces' order (see above) */
  uint32_t qa[KS][4];
  {
    const T *qr[2];
#pragma unroll
    for (int h2 = 0; h2 < 2; h2++) {
      const int rr = rg * DECM_ROWS + g + 8 * h2;
      const long long h = (long long)hk * hpk + rr / a.seq_q, i = rr % a.seq_q;
      qr[h2] = rv[h2] ? (const T *)a.q + (b * a.qst[0] + h * a.qst[1] + (sq.q0 + i) * a.qst[2])
                      : NULL;
    }
#pragma unroll
    for (int u = 0; u < PC; u++)
#pragma unroll
      for (int w = 0; w < 2; w++) {
        const int e = 8 * (c + 4 * u) + 4 * w;
        float x[2][4];
#pragma unroll
        for (int h2 = 0; h2 < 2; h2++)
#pragma unroll
          for (int t = 0; t < 4; t++) x[h2][t] = qr[h2] ? dec_io<T>::ld1(qr[h2] + e + t) : 0.0f;
        uint32_t *f = qa[2 * u + w];
        f[0] = op::pack(x[0][0], x[0][1]);
        f[1] = op::pack(x[1][0], x[1][1]);
        f[2] = op::pack(x[0][2], x[0][3]);
        f[3] = op::pack(x[1][2], x[1][3]);
      }
  }

  const T *kbase = (const T *)a.k + (size_t)(b * a.kst[0] + hk * a.kst[1] + sq.k0 * a.kst[2]);
  const T *vbase = (const T *)a.v + (size_t)(b * a.vst[0] + hk * a.vst[1] + sq.k0 * a.vst[2]);
  float acc[NT][4];
#pragma unroll
  for (int j = 0; j < NT; j++) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.0f;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
  const float sl2 = a.scale_log2;

  /* K: key g of tiles 0 and 1; V: rows 2c, 2c+1, 2c+8, 2c+9 of a step.
   * Software pipelined: the next step's K is loaded as soon as this step's
   * S is computed, its V as soon as this step's P V is, so the loads are in
   * flight during the softmax and the MMAs. */
  uint4 kr[2][PC], vr[4][VU];
  auto load_k = [&](int base) { dec_mma_load_k<T, D>(kr, kbase, a.kst[2], base, kend, g, c); };
  auto load_v = [&](int base) { dec_mma_load_v<T, D>(vr, vbase, a.vst[2], base, kend, g, c); };
  if (kbeg + warp * 16 < kend) {
    load_k(kbeg + warp * 16);
    load_v(kbeg + warp * 16);
  }
  for (int base = kbeg + warp * 16; base < kend; base += DEC_WARPS * 16) {
    const int next = base + DEC_WARPS * 16;
    /* S = Q K^T for the two 8-key tiles */
    float sc[2][4];
#pragma unroll
    for (int t = 0; t < 2; t++) {
      sc[t][0] = sc[t][1] = sc[t][2] = sc[t][3] = 0.0f;
#pragma unroll
      for (int u = 0; u < PC; u++) {
        op::mma(sc[t], qa[2 * u], kr[t][u].x, kr[t][u].y);
        op::mma(sc[t], qa[2 * u + 1], kr[t][u].z, kr[t][u].w);
      }
    }
    if (next < kend) load_k(next);
    /* online softmax of rows g (h2 0) and g + 8 (h2 1), log2 domain */
    float alpha[2];
#pragma unroll
    for (int h2 = 0; h2 < 2; h2++) {
      float mx = -INFINITY;
#pragma unroll
      for (int t = 0; t < 2; t++)
#pragma unroll
        for (int e = 0; e < 2; e++) {
          const int j = base + 8 * t + 2 * c + e;
          float x = sc[t][2 * h2 + e] * sl2;
          if (j < lo[h2] || j > hi[h2] || j >= kend) x = -INFINITY;
          sc[t][2 * h2 + e] = x;
          mx = fmaxf(mx, x);
        }
      float mu;
      alpha[h2] = dac_sm_advance(m[h2], fmaxf(m[h2], dac_lanes_max<1, 2>(mx)), 1.0f, mu);
      float ps = 0.0f;
#pragma unroll
      for (int t = 0; t < 2; t++)
#pragma unroll
        for (int e = 0; e < 2; e++) {
          const float p = dac_sm_p(sc[t][2 * h2 + e], 1.0f, mu);
          sc[t][2 * h2 + e] = p;
          ps += p;
        }
      l[h2] = l[h2] * alpha[h2] + ps; /* this thread's keys; summed at the end */
    }
#pragma unroll
    for (int j = 0; j < NT; j++) {
      acc[j][0] *= alpha[0];
      acc[j][1] *= alpha[0];
      acc[j][2] *= alpha[1];
      acc[j][3] *= alpha[1];
    }
    /* O += P V: P's A fragment from the two tiles' C fragments */
    uint32_t pa[4];
    pa[0] = op::pack(sc[0][0], sc[0][1]);
    pa[1] = op::pack(sc[0][2], sc[0][3]);
    pa[2] = op::pack(sc[1][0], sc[1][1]);
    pa[3] = op::pack(sc[1][2], sc[1][3]);
    const uint32_t *w0 = (const uint32_t *)vr[0], *w1 = (const uint32_t *)vr[1];
    const uint32_t *w2 = (const uint32_t *)vr[2], *w3 = (const uint32_t *)vr[3];
#pragma unroll
    for (int j = 0; j < NT; j++) {
      const unsigned sel = (j & 1) ? 0x7632u : 0x5410u;
      const uint32_t b0 = __byte_perm(w0[j >> 1], w1[j >> 1], sel);
      const uint32_t b1 = __byte_perm(w2[j >> 1], w3[j >> 1], sel);
      op::mma(acc[j], pa, b0, b1);
    }
    if (next < kend) load_v(next);
  }

  /* row sums over the 4 threads of a row; then merge the warps */
#pragma unroll
  for (int h2 = 0; h2 < 2; h2++) {
    l[h2] = dac_lanes_sum<1, 2>(l[h2]);
  }
  if (c == 0) {
    g_m[warp][g] = m[0], g_m[warp][g + 8] = m[1];
    g_l[warp][g] = l[0], g_l[warp][g + 8] = l[1];
  }
#pragma unroll
  for (int j = 0; j < NT; j++)
#pragma unroll
    for (int e = 0; e < 2; e++) {
      const int col = NT * (2 * c + e) + j;
      g_acc[((size_t)warp * DECM_ROWS + g) * D + col] = acc[j][e];
      g_acc[((size_t)warp * DECM_ROWS + g + 8) * D + col] = acc[j][2 + e];
    }
  __syncthreads();
  B.template merge<D>(a, P, DEC_WARPS, &g_m[0][0], &g_l[0][0], g_acc);
}

/* The narrow tensor-core variant (f16/bf16, D 64 or 128) for at most 8
 * query rows per kv head (GQA decode: 4 or 8 rows), transposed: S^T = K Q^T
 * with 16 keys as the MMA's rows and the 8 query rows as its columns, and
 * O^T += V^T P^T with 16 head dimensions as rows, so no MMA row is padding
 * and each warp holds half the accumulators of the 16-row kernel (more
 * blocks fit, more loads are in flight). K and V are loaded exactly as
 * there (thread (g, c): keys g and g + 8 of the step, pieces c, c + 4, ... of
 * K; keys 2c, 2c + 1, 2c + 8, 2c + 9 of V at elements E g ... E g + E - 1,
 * E = D/8). K's pieces are the A fragments as loaded (Q's B fragments use
 * the same order of the head dimension); V's are paired by byte permutes
 * into A fragments where row g / g + 8 of m-tile j is element E g + 2j /
 * E g + 2j + 1; P^T's B fragments come from S^T's C fragments by two 8x8
 * transposes in registers (movmatrix). */
#define DECN_ROWS 8

__device__ __forceinline__ uint32_t dac_movmatrix_t(uint32_t x) {
  uint32_t y;
  asm volatile("movmatrix.sync.aligned.m8n8.trans.b16 %0, %1;\n" : "=r"(y) : "r"(x));
  return y;
}

template <typename T, int D>
__global__ void __launch_bounds__(DEC_THREADS, 3)
    dac_decn_kernel(dac_args a, dac_dec_part P) {
  using op = dac_mma_op<T>;
  constexpr int PC = D / 32;  /* 16-byte pieces of a K row per thread */
  constexpr int KS = D / 16;  /* k-steps of S^T */
  constexpr int E = D / 8;    /* elements of a V row per thread */
  constexpr int VU = E / 8;   /* 16-byte pieces of those */
  constexpr int MT = D / 16;  /* m-tiles of O^T */
  __shared__ float g_m[DEC_WARPS][DECN_ROWS], g_l[DEC_WARPS][DECN_ROWS];
  extern __shared__ float g_acc[]; /* [DEC_WARPS][DECN_ROWS][D] */

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int g = lane >> 2, c = lane & 3;
  const dec_blk<DECN_ROWS> B(a, P);
  const int rg = B.rg, hk = B.hk, b = B.b, hpk = B.hpk, R = B.R, lq = B.lq, lk = B.lk;
  const dac_seq sq = B.sq;

  int klo, khi;
  B.window(a, klo, khi);
  /* this thread's two rows of S^T's columns: 2c and 2c + 1 */
  int lo[2], hi[2];
#pragma unroll
  for (int e = 0; e < 2; e++) {
    const int rr = rg * DECN_ROWS + 2 * c + e, i = rr % a.seq_q;
    lo[e] = 1, hi[e] = 0;
    if (rr < R && i < lq) dac_win(a, i, lq, lk, lo[e], hi[e]);
  }
  const int c0 = B.chunk * P.C;
  const int kbeg = max(c0, klo), kend = min(c0 + P.C, khi + 1);
  if (kbeg >= kend) {
    B.write_empty(a, P);
    return;
  }

  /* Q's B fragments (row g), in the K pieces' order */
  uint32_t qb[KS][2];
  {
    const int rr = rg * DECN_ROWS + g, i = rr % a.seq_q;
    const long long h = (long long)hk * hpk + rr / a.seq_q;
    const T *qr = rr < R && i < lq ? (const T *)a.q + (b * a.qst[0] + h * a.qst[1] + (sq.q0 + i) * a.qst[2])
                                   : NULL;
#pragma unroll
    for (int u = 0; u < PC; u++)
#pragma unroll
      for (int w = 0; w < 2; w++) {
        const int e0 = 8 * (c + 4 * u) + 4 * w;
        float x[4];
#pragma unroll
        for (int t = 0; t < 4; t++) x[t] = qr ? dec_io<T>::ld1(qr + e0 + t) : 0.0f;
        qb[2 * u + w][0] = op::pack(x[0], x[1]);
        qb[2 * u + w][1] = op::pack(x[2], x[3]);
      }
  }

  const T *kbase = (const T *)a.k + (size_t)(b * a.kst[0] + hk * a.kst[1] + sq.k0 * a.kst[2]);
  const T *vbase = (const T *)a.v + (size_t)(b * a.vst[0] + hk * a.vst[1] + sq.k0 * a.vst[2]);
  float acc[MT][4];
#pragma unroll
  for (int j = 0; j < MT; j++) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.0f;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
  const float sl2 = a.scale_log2;

  uint4 kr[2][PC], vr[4][VU];
  auto load_k = [&](int base) { dec_mma_load_k<T, D>(kr, kbase, a.kst[2], base, kend, g, c); };
  auto load_v = [&](int base) { dec_mma_load_v<T, D>(vr, vbase, a.vst[2], base, kend, g, c); };
  if (kbeg + warp * 16 < kend) {
    load_k(kbeg + warp * 16);
    load_v(kbeg + warp * 16);
  }
  for (int base = kbeg + warp * 16; base < kend; base += DEC_WARPS * 16) {
    const int next = base + DEC_WARPS * 16;
    /* S^T: keys g (sc 0, 1) and g + 8 (sc 2, 3) x rows 2c, 2c + 1 */
    float sc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
    for (int u = 0; u < PC; u++) {
      const uint32_t a0[4] = {kr[0][u].x, kr[1][u].x, kr[0][u].y, kr[1][u].y};
      const uint32_t a1[4] = {kr[0][u].z, kr[1][u].z, kr[0][u].w, kr[1][u].w};
      op::mma(sc, a0, qb[2 * u][0], qb[2 * u][1]);
      op::mma(sc, a1, qb[2 * u + 1][0], qb[2 * u + 1][1]);
    }
    if (next < kend) load_k(next);
    /* online softmax of rows 2c (e 0) and 2c + 1 (e 1), log2 domain; the
     * keys of a row are spread over g: lanes xor 4, 8, 16 */
    float alpha[2];
#pragma unroll
    for (int e = 0; e < 2; e++) {
      float mx = -INFINITY;
#pragma unroll
      for (int t = 0; t < 2; t++) {
        const int j = base + g + 8 * t;
        float x = sc[2 * t + e] * sl2;
        if (j < lo[e] || j > hi[e] || j >= kend) x = -INFINITY;
        sc[2 * t + e] = x;
        mx = fmaxf(mx, x);
      }
      float mu;
      alpha[e] = dac_sm_advance(m[e], fmaxf(m[e], dac_lanes_max<4, 16>(mx)), 1.0f, mu);
      float ps = 0.0f;
#pragma unroll
      for (int t = 0; t < 2; t++) {
        const float pv = dac_sm_p(sc[2 * t + e], 1.0f, mu);
        sc[2 * t + e] = pv;
        ps += pv;
      }
      l[e] = l[e] * alpha[e] + ps; /* this thread's keys; summed at the end */
    }
#pragma unroll
    for (int j = 0; j < MT; j++) {
      acc[j][0] *= alpha[0];
      acc[j][1] *= alpha[1];
      acc[j][2] *= alpha[0];
      acc[j][3] *= alpha[1];
    }
    /* P^T's B fragment: the 8x8 blocks (keys 0-7, 8-15) x rows, transposed */
    const uint32_t pb0 = dac_movmatrix_t(op::pack(sc[0], sc[1]));
    const uint32_t pb1 = dac_movmatrix_t(op::pack(sc[2], sc[3]));
    const uint32_t *w0 = (const uint32_t *)vr[0], *w1 = (const uint32_t *)vr[1];
    const uint32_t *w2 = (const uint32_t *)vr[2], *w3 = (const uint32_t *)vr[3];
#pragma unroll
    for (int j = 0; j < MT; j++) {
      const uint32_t av[4] = {__byte_perm(w0[j], w1[j], 0x5410), __byte_perm(w0[j], w1[j], 0x7632),
                              __byte_perm(w2[j], w3[j], 0x5410), __byte_perm(w2[j], w3[j], 0x7632)};
      op::mma(acc[j], av, pb0, pb1);
    }
    if (next < kend) load_v(next);
  }

  /* row sums over the 8 threads of a row (lanes xor 4, 8, 16); merge warps */
#pragma unroll
  for (int e = 0; e < 2; e++) {
    l[e] = dac_lanes_sum<4, 16>(l[e]);
  }
  if (g == 0) {
    g_m[warp][2 * c] = m[0], g_m[warp][2 * c + 1] = m[1];
    g_l[warp][2 * c] = l[0], g_l[warp][2 * c + 1] = l[1];
  }
#pragma unroll
  for (int j = 0; j < MT; j++) {
    float *w0r = g_acc + ((size_t)warp * DECN_ROWS + 2 * c) * D + E * g + 2 * j;
    float *w1r = w0r + D;
    w0r[0] = acc[j][0];
    w1r[0] = acc[j][1];
    w0r[1] = acc[j][2];
    w1r[1] = acc[j][3];
  }
  __syncthreads();
  B.template merge<D>(a, P, DEC_WARPS, &g_m[0][0], &g_l[0][0], g_acc);
}

/* Pass 2: block (row i, head h, batch b) of D threads */
template <typename T, int D>
__global__ void __launch_bounds__(D) dac_dec_combine(dac_args a, dac_dec_part P) {
  const int i = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
  const dac_seq sq = dac_seq_of(a, b);
  if (i < sq.lq) dac_dec_merge_row<T, D>(a, P, sq, b, h, i, threadIdx.x);
}

template <typename T, int D, int RB>
static cudaError_t dac_dec_launch_rb(const dac_args *a, const dac_dec_part *P, cudaStream_t s) {
  constexpr int NG = DEC_WARPS * (32 / (D / 16));
  const size_t bytes = ((size_t)RB * D + 2 * (size_t)NG * RB + (size_t)NG * RB * D) * sizeof(float);
  cudaError_t e;
  if (bytes > 48 * 1024) {
    e = cudaFuncSetAttribute(dac_dec_kernel<T, D, RB>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             (int)bytes);
    if (e != cudaSuccess) return e;
  }
  dim3 grid((unsigned)(P->nrg * P->nch), (unsigned)a->kv_heads, (unsigned)a->batch);
  dac_dec_kernel<T, D, RB><<<grid, DEC_THREADS, bytes, s>>>(*a, *P);
  if ((e = cudaGetLastError()) != cudaSuccess) return e;
  dim3 g2((unsigned)a->seq_q, (unsigned)a->heads, (unsigned)a->batch);
  dac_dec_combine<T, D><<<g2, D, 0, s>>>(*a, *P);
  return cudaGetLastError();
}

template <typename T, int D>
static cudaError_t dac_decm_launch(const dac_args *a, const dac_dec_part *P, cudaStream_t s) {
  const size_t bytes = (size_t)DEC_WARPS * DECM_ROWS * D * sizeof(float);
  cudaError_t e;
  if (bytes > 48 * 1024) {
    e = cudaFuncSetAttribute(dac_decm_kernel<T, D>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             (int)bytes);
    if (e != cudaSuccess) return e;
  }
  dim3 grid((unsigned)(P->nrg * P->nch), (unsigned)a->kv_heads, (unsigned)a->batch);
  dac_decm_kernel<T, D><<<grid, DEC_THREADS, bytes, s>>>(*a, *P);
  if ((e = cudaGetLastError()) != cudaSuccess) return e;
  dim3 g2((unsigned)a->seq_q, (unsigned)a->heads, (unsigned)a->batch);
  dac_dec_combine<T, D><<<g2, D, 0, s>>>(*a, *P);
  return cudaGetLastError();
}

template <typename T, int D>
static cudaError_t dac_decn_launch(const dac_args *a, const dac_dec_part *P, cudaStream_t s) {
  const size_t bytes = (size_t)DEC_WARPS * DECN_ROWS * D * sizeof(float);
  dim3 grid((unsigned)(P->nrg * P->nch), (unsigned)a->kv_heads, (unsigned)a->batch);
  dac_decn_kernel<T, D><<<grid, DEC_THREADS, bytes, s>>>(*a, *P);
  cudaError_t e;
  if ((e = cudaGetLastError()) != cudaSuccess) return e;
  dim3 g2((unsigned)a->seq_q, (unsigned)a->heads, (unsigned)a->batch);
  dac_dec_combine<T, D><<<g2, D, 0, s>>>(*a, *P);
  return cudaGetLastError();
}

/* RB: rows per block, as the host picked (DECM_ROWS: the tensor-core
 * kernel, f16/bf16 and D 64 or 128 only) */
template <typename T, int D>
static cudaError_t dac_dec_launch_d(const dac_args *a, const dac_dec_part *P, cudaStream_t s) {
  switch (P->RB) {
  case 1: return dac_dec_launch_rb<T, D, 1>(a, P, s);
  case 2: return dac_dec_launch_rb<T, D, 2>(a, P, s);
  case 4: return dac_dec_launch_rb<T, D, 4>(a, P, s);
  case DECN_ROWS:
    if constexpr (sizeof(T) == 2 && D <= 128) return dac_decn_launch<T, D>(a, P, s);
    return cudaErrorInvalidValue;
  case DECM_ROWS:
    if constexpr (sizeof(T) == 2 && D <= 128)
      return dac_decm_launch<T, D>(a, P, s);
    return cudaErrorInvalidValue;
  default: return cudaErrorInvalidValue;
  }
}

template <typename T>
static cudaError_t dac_dec_launch_t(const dac_args *a, const dac_dec_part *P, cudaStream_t s) {
  switch (a->d) {
  case 64: return dac_dec_launch_d<T, 64>(a, P, s);
  case 128: return dac_dec_launch_d<T, 128>(a, P, s);
  case 256: return dac_dec_launch_d<T, 256>(a, P, s);
  default: return cudaErrorInvalidValue;
  }
}

/* Blocks of the pass-1 kernel the launcher picks for (D, RB) that fit
 * on one multiprocessor at once (the host sizes the chunks from it). */
template <typename K>
static cudaError_t dac_occ_of(K kernel, size_t bytes, int *blocks) {
  if (bytes > 48 * 1024) {
    const cudaError_t e =
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes);
    if (e != cudaSuccess) return e;
  }
  return cudaOccupancyMaxActiveBlocksPerMultiprocessor(blocks, kernel, DEC_THREADS, bytes);
}

template <typename T, int D>
static cudaError_t dac_dec_occupancy_d(int RB, int *blocks) {
  constexpr int NG = DEC_WARPS * (32 / (D / 16));
  const size_t rb_bytes = ((size_t)RB * D + 2 * (size_t)NG * RB + (size_t)NG * RB * D) * 4;
  switch (RB) {
  case 1: return dac_occ_of(dac_dec_kernel<T, D, 1>, rb_bytes, blocks);
  case 2: return dac_occ_of(dac_dec_kernel<T, D, 2>, rb_bytes, blocks);
  case 4: return dac_occ_of(dac_dec_kernel<T, D, 4>, rb_bytes, blocks);
  default: break;
  }
  if constexpr (sizeof(T) == 2 && D <= 128)
    if (RB == DECN_ROWS)
      return dac_occ_of(dac_decn_kernel<T, D>, (size_t)DEC_WARPS * DECN_ROWS * D * 4, blocks);
  if constexpr (sizeof(T) == 2 && D <= 128)
    if (RB == DECM_ROWS) {
      const size_t mbytes = (size_t)DEC_WARPS * DECM_ROWS * D * 4;
      return dac_occ_of(dac_decm_kernel<T, D>, mbytes, blocks);
    }
  return cudaErrorInvalidValue;
}

template <typename T>
static cudaError_t dac_dec_occupancy(int D, int RB, int *blocks) {
  *blocks = 0;
  switch (D) {
  case 64: return dac_dec_occupancy_d<T, 64>(RB, blocks);
  case 128: return dac_dec_occupancy_d<T, 128>(RB, blocks);
  case 256: return dac_dec_occupancy_d<T, 256>(RB, blocks);
  default: return cudaErrorInvalidValue;
  }
}

/* The launchers' body (cuda_decode_<dtype>.cu): part as dac_plan.dec_part,
 * [rows][nch][D] partial outputs then [rows][nch] (max, sum). */
template <typename T>
static cudaError_t dac_dec_run(const dac_args *a, float *part, int nch, int C, int RB, int nrg,
                               cudaStream_t s) {
  dac_dec_part P;
  P.acc = part;
  P.ml = (float2 *)(part + (size_t)a->batch * a->heads * a->seq_q * nch * a->d);
  P.nch = nch;
  P.C = C;
  P.RB = RB;
  P.nrg = nrg;
  return dac_dec_launch_t<T>(a, &P, s);
}

#endif /* DA_CUDA_DECODE_CUH */
