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
