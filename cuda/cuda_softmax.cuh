/* SPDX-License-Identifier: Apache-2.0 */
/* The masked online softmax and its epilogue, once for every CUDA forward
 * kernel (mma.sync, Hopper warpgroup MMA, SIMT, the decode kernels and
 * their combines); the kernels differ only in which lanes hold a row and
 * how they mask.
 *
 * Log2 domain (SPEC 1, "Scale"): with s a raw logit and sc the log2
 * multiplier (scale_log2; 1 where the kernel has already multiplied), a
 * row keeps m, the largest logit it has seen, and l, the sum of
 * 2^(s sc - m sc) over its keys; its output accumulator holds the same
 * weights' sum of V rows. A key tile moves m to mn and multiplies l and
 * the accumulator by alpha = 2^(m sc - mn sc) before adding the tile's
 * p = 2^(s sc - mn sc) (dac_base2; the SIMT kernel uses e instead,
 * dac_basee). Masked logits are -inf (p = 0). While a row has
 * seen no visible key mn is -inf; the offset is then 0 instead of -inf, so
 * that every exponent is -inf - 0 (p = 0, alpha = 0 on the empty sums)
 * and never -inf + inf (NaN). The epilogue divides by l (dac_inv_sum) and
 * gives the natural-log LSE (m sc + log2 l) ln 2 (dac_lse_val). Partial
 * results of one row (decode's chunks and lane groups) merge by their
 * maxima (dac_sm_merge). */
#ifndef DA_CUDA_SOFTMAX_CUH
#define DA_CUDA_SOFTMAX_CUH

#include <math.h>

#include "cuda_dev.cuh"

/* x combined over the lanes lane ^ LO, lane ^ 2 LO, ..., lane ^ HI (the
 * lanes that hold the other parts of a row) */
template <int LO, int HI> __device__ __forceinline__ float dac_lanes_max(float x) {
#pragma unroll
  for (int o = LO; o <= HI; o *= 2) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
  return x;
}
template <int LO, int HI> __device__ __forceinline__ float dac_lanes_sum(float x) {
#pragma unroll
  for (int o = LO; o <= HI; o *= 2) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

/* the exponent offset of a row whose maximum is mn: mn sc, 0 while -inf */
__device__ __forceinline__ float dac_sm_offset(float mn, float sc) {
  return mn == -INFINITY ? 0.0f : mn * sc;
}

/* The exponential's base. The kernels work in the log2 domain on the
 * special-function unit (dac_ex2); the SIMT kernel, which serves f32 and
 * every odd shape, works with e (expf, logf, a natural-log multiplier),
 * whose LSE stays within f32's bound where logits are large. lse(ms, l):
 * the natural-log LSE of a row with offset ms and sum l. */
struct dac_base2 {
  static __device__ __forceinline__ float exp(float x) { return dac_ex2(x); }
  static __device__ __forceinline__ float lse(float ms, float l) {
    return (ms + log2f(l)) * 0.69314718055994531f;
  }
};
struct dac_basee {
  static __device__ __forceinline__ float exp(float x) { return expf(x); }
  static __device__ __forceinline__ float lse(float ms, float l) { return ms + logf(l); }
};

/* p = B^(s sc - ms) */
template <typename B = dac_base2> __device__ __forceinline__ float dac_sm_p(float s, float sc, float ms) {
  return B::exp(fmaf(s, sc, -ms));
}

/* A row's step from maximum m to mn (mn >= m, already over all of the
 * row's lanes): m becomes mn, ms the offset of the step's p, and the
 * result is alpha, the factor of the row's sum and output so far. */
template <typename B = dac_base2>
__device__ __forceinline__ float dac_sm_advance(float &m, float mn, float sc, float &ms) {
  ms = dac_sm_offset(mn, sc);
  const float al = dac_sm_p<B>(m, sc, ms);
  m = mn;
  return al;
}

/* The log-sum-exp of a row (SPEC 1): ms its maximum logit times the
 * multiplier, l its sum of B^(s sc - ms); -inf where it sees no key, NaN
 * where l is 0 or NaN (O is NaN there). */
template <typename B = dac_base2> __device__ __forceinline__ float dac_lse_val(bool seen, float ms, float l) {
  if (!seen) return -INFINITY;
  return l > 0.0f ? B::lse(ms, l) : __int_as_float(0x7fc00000);
}

/* Merge n partial results of one row, each a maximum m_i, a sum l_i and
 * an output element o_i (log2 domain, multiplier applied): returns M =
 * max m_i and sets L = sum 2^(m_i - M) l_i, O = sum 2^(m_i - M) o_i.
 * mf(i), lf(i), of(i) read part i. A part with m_i = -inf saw no visible
 * key: with SKIP_EMPTY it is not read (a chunk's may be unwritten),
 * otherwise it weighs 0 like any other part (so a NaN its sum or output
 * caught from a NaN logit, which the maximum ignores, still propagates). */
template <bool SKIP_EMPTY, typename MF, typename LF, typename OF>
__device__ __forceinline__ float dac_sm_merge(int n, MF mf, LF lf, OF of, float &L, float &O) {
  float M = -INFINITY;
  for (int i = 0; i < n; i++) M = fmaxf(M, mf(i));
  const float Mu = dac_sm_offset(M, 1.0f);
  float o = 0.0f, l = 0.0f;
  for (int i = 0; i < n; i++) {
    const float mi = mf(i);
    if (SKIP_EMPTY && mi == -INFINITY) continue;
    const float w = dac_ex2(mi - Mu);
    o = fmaf(w, of(i), o);
    l = fmaf(w, lf(i), l);
  }
  L = l;
  O = o;
  return M;
}

/* One key tile in the m16n8 accumulator layout of mma.sync (a warpgroup
 * MMA's accumulators repeat it every 8 columns): s[nb][e] is the logit of
 * row r = e / 2 of the thread (lane / 4 and lane / 4 + 8 of the m-tile)
 * and key 8 nb + 2 (lane % 4) + (e & 1), so the 4 lanes of a quad hold a
 * row. Where need_mask, the pairs masked(nb, e) names become -inf. Then
 * the online step for both rows: m[r] and this thread's share l[r] move
 * on, s becomes p, al[r] is the factor for the row's output so far
 * (dac_sm_rescale). */
template <int NB, typename Masked>
__device__ __forceinline__ void dac_sm_tile(float (&s)[NB][4], bool need_mask, Masked masked,
                                            float (&m)[2], float (&l)[2], float sc, float (&al)[2]) {
  if (need_mask) {
#pragma unroll
    for (int nb = 0; nb < NB; nb++)
#pragma unroll
      for (int e = 0; e < 4; e++)
        if (masked(nb, e)) s[nb][e] = -INFINITY;
  }
  float mx0 = m[0], mx1 = m[1];
#pragma unroll
  for (int nb = 0; nb < NB; nb++) {
    mx0 = fmaxf(mx0, fmaxf(s[nb][0], s[nb][1]));
    mx1 = fmaxf(mx1, fmaxf(s[nb][2], s[nb][3]));
  }
  float ms0, ms1;
  al[0] = dac_sm_advance(m[0], dac_lanes_max<1, 2>(mx0), sc, ms0);
  al[1] = dac_sm_advance(m[1], dac_lanes_max<1, 2>(mx1), sc, ms1);
  float rs0 = 0.0f, rs1 = 0.0f;
#pragma unroll
  for (int nb = 0; nb < NB; nb++) {
    s[nb][0] = dac_sm_p(s[nb][0], sc, ms0);
    s[nb][1] = dac_sm_p(s[nb][1], sc, ms0);
    s[nb][2] = dac_sm_p(s[nb][2], sc, ms1);
    s[nb][3] = dac_sm_p(s[nb][3], sc, ms1);
    rs0 += s[nb][0] + s[nb][1];
    rs1 += s[nb][2] + s[nb][3];
  }
  l[0] = l[0] * al[0] + rs0;
  l[1] = l[1] * al[1] + rs1;
}

/* The output accumulator of a dac_sm_tile row pair, N groups of 4 in the
 * same layout (elements 0, 1 row 0; 2, 3 row 1), times al. */
template <int N> __device__ __forceinline__ void dac_sm_rescale(float *o, const float (&al)[2]) {
#pragma unroll
  for (int i = 0; i < N; i++) {
    o[4 * i + 0] *= al[0];
    o[4 * i + 1] *= al[0];
    o[4 * i + 2] *= al[1];
    o[4 * i + 3] *= al[1];
  }
}

#endif /* DA_CUDA_SOFTMAX_CUH */
