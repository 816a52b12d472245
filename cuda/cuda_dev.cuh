/* SPDX-License-Identifier: Apache-2.0 */
/* Device helpers shared by the CUDA backend's kernels. */
#ifndef DA_CUDA_DEV_CUH
#define DA_CUDA_DEV_CUH

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#include "cuda_internal.h"

__device__ __forceinline__ float dac_ld(const void *p, da_dtype t, size_t i) {
  if (t == DA_F16) return __half2float(((const __half *)p)[i]);
  if (t == DA_BF16) return __bfloat162float(((const __nv_bfloat16 *)p)[i]);
  return ((const float *)p)[i];
}

__device__ __forceinline__ void dac_st(void *p, da_dtype t, size_t i, float v) {
  if (t == DA_F16)
    ((__half *)p)[i] = __float2half_rn(v);
  else if (t == DA_BF16)
    ((__nv_bfloat16 *)p)[i] = __float2bfloat16_rn(v);
  else
    ((float *)p)[i] = v;
}

/* What an attention block works on: grid (query tiles, heads, batch); its
 * first query row (causal grids run the longest tiles first) and the
 * (batch, head) and (batch, kv head) indices of its Q/O and K/V. */
struct dac_block {
  int q0;
  size_t bh, bkv;
};
__device__ __forceinline__ dac_block dac_block_of(const dac_args &a, int rows) {
  const int qt = a.causal ? (int)gridDim.x - 1 - (int)blockIdx.x : (int)blockIdx.x;
  const int h = blockIdx.y, b = blockIdx.z;
  dac_block k;
  k.q0 = qt * rows;
  k.bh = (size_t)b * a.heads + h;
  k.bkv = (size_t)b * a.kv_heads + h / (a.heads / a.kv_heads);
  return k;
}

/* One sequence of an attention_ext call (SPEC 1, "Layouts and lengths"):
 * its query and key counts and first rows, the lengths read from device
 * memory and clamped as the SPEC says, so that no row outside
 * 0..rows_q-1 (0..seq_q-1) of Q, O, LSE or 0..rows_k-1 (0..seq_k-1) of K,
 * V is ever touched: seqlens_k[b] to 0..seq_k; cu[b] to 0..rows,
 * cu[b+1] to cu[b]..rows, the length to at most seq_q (seq_k). */
struct dac_seq {
  int lq, lk;
  long long q0, k0; /* first row of Q/O and of K/V */
};
__device__ __forceinline__ long long dac_clampll(long long x, long long lo, long long hi) {
  return x < lo ? lo : x > hi ? hi : x;
}
__device__ __forceinline__ dac_seq dac_seq_of(const dac_args &a, int b) {
  dac_seq s;
  s.lq = a.seq_q;
  s.lk = a.seq_k;
  s.q0 = s.k0 = 0;
  if (a.lens == DA_SEQLENS_KV) {
    s.lk = (int)dac_clampll(a.seqlens_k[b], 0, a.seq_k);
  } else if (a.lens == DA_SEQLENS_PACKED) {
    const long long q0 = dac_clampll(a.cu_q[b], 0, a.rows_q);
    const long long q1 = dac_clampll(a.cu_q[b + 1], q0, a.rows_q);
    const long long k0 = dac_clampll(a.cu_k[b], 0, a.rows_k);
    const long long k1 = dac_clampll(a.cu_k[b + 1], k0, a.rows_k);
    s.q0 = q0;
    s.k0 = k0;
    s.lq = (int)(q1 - q0 < a.seq_q ? q1 - q0 : a.seq_q);
    s.lk = (int)(k1 - k0 < a.seq_k ? k1 - k0 : a.seq_k);
  }
  return s;
}
/* The keys query row i of a sequence (lq, lk) sees: lo..hi (none when
 * lo > hi), from its window (diagonal i + lk - lq; causal is wr = 0). */
__device__ __forceinline__ void dac_win(const dac_args &a, int i, int lq, int lk, int &lo, int &hi) {
  const long long diag = (long long)i + lk - lq;
  long long l = 0, h = (long long)lk - 1;
  if (a.wl >= 0 && diag - a.wl > l) l = diag - a.wl;
  if (a.wr >= 0 && diag + a.wr < h) h = diag + a.wr;
  if (l > lk) l = lk;   /* keep both in int: lo in 0..lk, hi in -1..lk-1 */
  if (h < -1) h = -1;
  lo = (int)l;
  hi = (int)h;
}
/* Where row i of sequence b, head h of the LSE goes: [batch][heads][seq_q],
 * or [heads][rows_q] for DA_SEQLENS_PACKED. */
__device__ __forceinline__ size_t dac_lse_at(const dac_args &a, int b, int h, const dac_seq &s,
                                             int i) {
  return a.lens == DA_SEQLENS_PACKED ? (size_t)h * (size_t)a.rows_q + (size_t)(s.q0 + i)
                                     : ((size_t)b * a.heads + h) * (size_t)a.seq_q + i;
}

static inline size_t dac_dtype_size(da_dtype t) { return t == DA_F32 ? 4 : 2; }

/* two f32 values to/from a 32-bit pair of the 16-bit type T (round to nearest) */
template <typename T> struct dac_cvt;
template <> struct dac_cvt<__half> {
  static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
    __half2 h = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<uint32_t *>(&h);
  }
  static __device__ __forceinline__ float2 unpack(uint32_t x) {
    return __half22float2(*reinterpret_cast<__half2 *>(&x));
  }
  static __device__ __forceinline__ __half from(float f) { return __float2half_rn(f); }
};
template <> struct dac_cvt<__nv_bfloat16> {
  static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
    __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t *>(&h);
  }
  static __device__ __forceinline__ float2 unpack(uint32_t x) {
    return __bfloat1622float2(*reinterpret_cast<__nv_bfloat162 *>(&x));
  }
  static __device__ __forceinline__ __nv_bfloat16 from(float f) { return __float2bfloat16_rn(f); }
};

/* the shared-state-space address of a generic pointer into shared memory */
__device__ __forceinline__ uint32_t dac_smem_u32(const void *p) {
  return (uint32_t)__cvta_generic_to_shared(p);
}
/* cp.async of BYTES (4, 8 or 16) from src into shared dst, or of zeros when
 * !fill; committed as a group by dac_cp_commit, awaited by dac_cp_wait<N>
 * (all but the newest N groups of this thread) */
template <int BYTES>
__device__ __forceinline__ void dac_cp_async(void *dst, const void *src, bool fill) {
  const uint32_t s = dac_smem_u32(dst);
  if constexpr (BYTES == 16)
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(src),
                 "r"(fill ? 16 : 0));
  else
    asm volatile("cp.async.ca.shared.global [%0], [%1], %2, %3;\n" ::"r"(s), "l"(src), "n"(BYTES),
                 "r"(fill ? BYTES : 0));
}
__device__ __forceinline__ void dac_cp_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N> __device__ __forceinline__ void dac_cp_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

/* 1 / l for the epilogue of a row whose softmax sum is l. l == 0 means
 * every P was 0: a row that sees no key gets zeros (SPEC 1); one that sees
 * keys whose logits are all -inf (an infinite Q or K element) gets NaN, as
 * the reference's softmax(-inf, ..., -inf) and the other backends. A NaN l
 * stays NaN. */
__device__ __forceinline__ float dac_inv_sum(float l, bool sees_keys) {
  return l > 0.0f ? 1.0f / l : (l == 0.0f && !sees_keys ? 0.0f : __int_as_float(0x7fc00000));
}

/* 2^x on the special-function unit (the softmax's exponent, log2 domain) */
__device__ __forceinline__ float dac_ex2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

#endif /* DA_CUDA_DEV_CUH */
