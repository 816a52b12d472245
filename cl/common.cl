/* SPDX-License-Identifier: Apache-2.0 */
/* distrattn OpenCL kernels: element access shared by every program.
 * DTYPE: 0 f32, 1 f16 (stored as half bits), 2 bf16 (stored as bf16 bits).
 * Arithmetic is f32 everywhere; no fast-math options are ever passed. */
#if DTYPE == 0
typedef float elem_t;
#define LOAD_ELEM(p, i) ((p)[i])
#define STORE_ELEM(p, i, v) ((p)[i] = (v))
#elif DTYPE == 1
typedef ushort elem_t;
#define LOAD_ELEM(p, i) vload_half((i), (__global const half *)(p))
#define STORE_ELEM(p, i, v) vstore_half_rte((v), (i), (__global half *)(p))
#else
typedef ushort elem_t;
#define LOAD_ELEM(p, i) as_float((uint)(p)[i] << 16)
#define STORE_ELEM(p, i, v) ((p)[i] = da_f32_to_bf16(v))
#endif

inline ushort da_f32_to_bf16(float f) {
  uint x = as_uint(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return (ushort)((x >> 16) | 0x40u);
  x += 0x7fffu + ((x >> 16) & 1u);
  return (ushort)(x >> 16);
}

/* Per-sequence geometry of a call (da_attn_ext): sequence b's first row in
 * Q/O (K/V) and its number of queries (keys). LENS: 0 every sequence is
 * seq_q x seq_k from row 0 of its batch index; 1 (DA_SEQLENS_KV) lens_k[b]
 * keys; 2 (DA_SEQLENS_PACKED) rows cu[b] .. cu[b+1]-1. The lengths come
 * from device memory the host never sees, so they are clamped to the
 * plan's limits instead of checked: a start to 0..rows, an end to
 * start..rows, a length to at most seq_q (seq_k), KV lengths to 0..seq_k.
 * A bad value gives wrong rows, never an access outside the tensors. */
inline void da_seq_q(int lens, int b, __global const int *cu_q, int seq_q, long rows_q,
                     long *q0, int *lq) {
  if (lens == 2) {
    const long a0 = clamp((long)cu_q[b], 0L, rows_q);
    const long a1 = clamp((long)cu_q[b + 1], a0, rows_q);
    *q0 = a0;
    *lq = (int)min(a1 - a0, (long)seq_q);
  } else {
    *q0 = 0;
    *lq = seq_q;
  }
}
inline void da_seq_k(int lens, int b, __global const int *lens_k, int seq_k, long rows_k,
                     long *k0, int *lk) {
  if (lens == 2) {
    const long a0 = clamp((long)lens_k[b], 0L, rows_k);
    const long a1 = clamp((long)lens_k[b + 1], a0, rows_k);
    *k0 = a0;
    *lk = (int)min(a1 - a0, (long)seq_k);
  } else {
    *k0 = 0;
    *lk = lens == 1 ? clamp(lens_k[b], 0, seq_k) : seq_k;
  }
}

/* The epilogue of a softmax row (attn.cl, decode.cl, aux.cl): the factor
 * that normalises its output (O; P in aux.cl), 1 / l, l its sum: 0 where
 * the row sees no key (a zero row, SPEC 1); a row that does divides by l
 * even when l is 0 or NaN (all its logits -inf or NaN), so that it is NaN
 * as in the float64 reference. A macro: clang keeps the division's
 * OpenCL precision (!fpmath, 2.5 ulp) in place, not inside an inline
 * function that it turns into a select. */
#define DA_SM_INV(seen, l) ((seen) ? 1.0f / (l) : 0.0f)

#ifdef LENS
/* Windows, the online softmax and the log-sum-exp of the programs that take
 * the da_attn_ext options (WL, WR, LENS, LSE: attn.cl, decode.cl). */
/* The window (WL, WR: keys before / after the diagonal a query sees, -1
 * unbounded; causal is WR 0) of query i of a sequence whose diagonal is
 * off = lk - lq: it sees the keys [da_win_lo, da_win_hi). */
inline int da_win_hi(int i, int off, int lk) {
#if WR >= 0
  return (int)clamp((long)i + off + WR + 1, 0L, (long)lk);
#else
  (void)i;
  (void)off;
  return lk;
#endif
}
inline int da_win_lo(int i, int off, int lk) {
#if WL >= 0
  return (int)clamp((long)i + off - WL, 0L, (long)lk);
#else
  (void)i;
  (void)off;
  (void)lk;
  return 0;
#endif
}
/* The online softmax of a row, log2 domain, as every fused and decode
 * kernel runs it: m and l are the running max and sum of the keys seen so
 * far. A block of logits s whose max is mx moves the max to mn = fmax(m,
 * mx), whose offset is mu = DA_SM_MU(mn); the sum and the output
 * accumulator are multiplied by DA_SM_CORR(m, mu), and each key adds p =
 * DA_SM_P(s, mu) to the sum and p V to the accumulator. Macros, so that
 * they serve a float and the vectors of decode.cl's lanes kernel (a lane
 * per row) alike: a vector condition of ?: selects per lane. */
/* The offset of the exponentials: the running max, or 0 while that is -inf
 * (every logit so far -inf or NaN: fmax passes over a NaN), so that exp2
 * sees -inf - 0, not -inf - -inf: a -inf logit gives P 0 and a NaN one
 * still a NaN P. (While mn is -inf attn.cl's rows kernel skips a block
 * that holds no NaN logit, and its tiled kernel takes corr 1, as it always
 * has: its sum and accumulator are 0 there, or NaN from 0 x Inf in P V.) */
#define DA_SM_MU(mn) ((mn) == -INFINITY ? 0.0f : (mn))
/* The probability of logit s. */
#define DA_SM_P(s, mu) exp2((s) - (mu))
/* The factor of the old sum and accumulator: the old max's own
 * probability, 2^(m - mu), 0 from -inf. Where the max did not move it is
 * exp2(0) = 1, or NaN at +inf (the row is NaN already); the decode
 * kernels take 1 there without the exponential. */
#define DA_SM_CORR(m, mu) DA_SM_P(m, mu)
/* The running sum after a block whose probabilities sum to ps: one
 * expression, which the compiler may contract to an fma. */
#define DA_SM_SUM(l, corr, ps) ((l) * (corr) + (ps))
/* The log-sum-exp of a row (m, l: its running max in the log2 domain and its
 * sum): -inf where it sees no key, NaN where its sum is NaN or 0 (all logits
 * -inf or NaN: O is NaN there). */
inline float da_lse(int seen, float m, float l) {
  if (!seen) return -INFINITY;
  return l > 0.0f ? (m + log2(l)) * M_LN2_F : NAN;
}
inline ulong da_lse_at(int b, int h, int i, long q0, int seq_q, int heads, long rows_q) {
#if LENS == 2
  (void)b;
  (void)seq_q;
  (void)heads;
  return (ulong)(h * rows_q + q0 + i);
#else
  (void)q0;
  (void)rows_q;
  return ((ulong)b * heads + h) * (ulong)seq_q + i;
#endif
}
#endif /* LENS */

#ifdef VW
/* Vectors of VW floats (the CPU-shaped kernels: attn.cl's rows kernel,
 * decode.cl's). */
#define DA_CAT_(a, b) a##b
#define DA_CAT(a, b) DA_CAT_(a, b)
#define floatV DA_CAT(float, VW)
#define intV DA_CAT(int, VW)
#define vloadV DA_CAT(vload, VW)
#define vstoreV DA_CAT(vstore, VW)
#define ushortV DA_CAT(ushort, VW)
#define uintV DA_CAT(uint, VW)
#define as_floatV DA_CAT(as_float, VW)
#define convert_uintV DA_CAT(convert_uint, VW)
#define vload_halfV DA_CAT(vload_half, VW)
#if VW == 16
#define IOTA ((intV)(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15))
inline float hmaxV(float16 v) {
  float8 a = fmax(v.lo, v.hi);
  float4 b = fmax(a.lo, a.hi);
  float2 c = fmax(b.lo, b.hi);
  return fmax(c.x, c.y);
}
inline float hsumV(float16 v) {
  float8 a = v.lo + v.hi;
  float4 b = a.lo + a.hi;
  float2 c = b.lo + b.hi;
  return c.x + c.y;
}
#elif VW == 8
#define IOTA ((intV)(0, 1, 2, 3, 4, 5, 6, 7))
inline float hmaxV(float8 v) {
  float4 b = fmax(v.lo, v.hi);
  float2 c = fmax(b.lo, b.hi);
  return fmax(c.x, c.y);
}
inline float hsumV(float8 v) {
  float4 b = v.lo + v.hi;
  float2 c = b.lo + b.hi;
  return c.x + c.y;
}
#else
#define IOTA ((intV)(0, 1, 2, 3))
inline float hmaxV(float4 v) {
  float2 c = fmax(v.lo, v.hi);
  return fmax(c.x, c.y);
}
inline float hsumV(float4 v) {
  float2 c = v.lo + v.hi;
  return c.x + c.y;
}
#endif
#endif /* VW */
