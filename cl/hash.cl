/* SPDX-License-Identifier: Apache-2.0 */
/* SPEC steps 2-6 for one (batch, head, hash tile) per work-group:
 * codes by a sequential fma over the tile's rows (each lane of a vector is one
 * column, so the order per column is exactly the reference's), inverse Gray
 * keys, a rank sort of the D columns by (key, column), the permutation and
 * the fusion weights (stored per column, as the core's da_fusion_weights,
 * the CPU backend and CUDA store them: w[c] = a_c, the weight of original
 * column c, so a reader at sorted position i reads w[perm[i]]).
 * Defines: D, HASH_BITS, HB (hash_block), G, FUSION (0 mean, 1 norm),
 * LS (work-group size), HV (vector width: 4, 8 or 16).
 * Q is read through its strides and offset, each sequence's hash tiles from
 * its own first query row (da_seq_q; lens 2: packed, 0 or 1: from row 0). */

#define DA_CAT_(a, b) a##b
#define DA_CAT(a, b) DA_CAT_(a, b)
#define floatH DA_CAT(float, HV)
#define intH DA_CAT(int, HV)
#define uintH DA_CAT(uint, HV)
#define vloadH DA_CAT(vload, HV)
#define vstoreH DA_CAT(vstore, HV)
#define NCH ((D + HV - 1) / HV)
#define DPH (NCH * HV)

#if DTYPE == 0
#define LOADH(p, i) vloadH(0, (p) + (i))
#elif DTYPE == 1
#define LOADH(p, i) DA_CAT(vload_half, HV)(0, (__global const half *)(p) + (i))
#else
#define LOADH(p, i) as_floatH(DA_CAT(convert_uint, HV)(vloadH(0, (p) + (i))) << 16)
#endif
#define as_floatH DA_CAT(as_float, HV)

#if HV == 16
#define IOTAH ((intH)(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15))
#elif HV == 8
#define IOTAH ((intH)(0, 1, 2, 3, 4, 5, 6, 7))
#else
#define IOTAH ((intH)(0, 1, 2, 3))
#endif

inline uint da_key(uint code) {
  code ^= code >> 1;
  code ^= code >> 2;
  code ^= code >> 4;
  code ^= code >> 8;
  code ^= code >> 16;
  return code;
}

__kernel __attribute__((reqd_work_group_size(LS, 1, 1)))
void da_hash(__global const elem_t *Q, __global const float *R, __global int *perm_out,
             __global float *w_out, int seq_q, int n_tiles, int heads, int lens,
             __global const int *cu_q, long rows_q, long qs0, long qs1, long qs2, ulong qoff) {
  __local uint keys[DPH];
  __local float aw[DPH];
  __local int lperm[D];
  const int lid = get_local_id(0);
  const int tile = get_group_id(0);
  const int bh = get_group_id(1); /* batch * heads + head */
  const int b = bh / heads, h = bh - b * heads;
  long q0;
  int lq;
  da_seq_q(lens, b, cu_q, seq_q, rows_q, &q0, &lq);
  const int r0 = tile * HB;
  /* the tile's rows of this sequence; none past its queries (the codes are
   * then 0: the identity permutation, weights 1) */
  const int rows = max(0, min(lq - r0, HB));
  /* element (r, c) of the tile: qt + r * qs2 + c (Q's strides and offset) */
  const ulong qt = qoff + (ulong)(b * qs0 + h * qs1 + (q0 + r0) * qs2);
  const size_t pbase = ((size_t)bh * (size_t)n_tiles + (size_t)tile) * (size_t)D;

  for (int ch = lid; ch < NCH; ch += LS) {
    const int c0 = ch * HV;
    if (c0 + HV <= D) {
      floatH acc[HASH_BITS];
      for (int b = 0; b < HASH_BITS; b++) acc[b] = (floatH)(0.0f);
      floatH ss = (floatH)(0.0f);
      for (int r = 0; r < rows; r++) {
        const floatH x = LOADH(Q, qt + (ulong)(r * qs2) + c0);
#pragma unroll
        for (int b = 0; b < HASH_BITS; b++) acc[b] = fma((floatH)(R[b * HB + r]), x, acc[b]);
#if FUSION == 1
        ss = fma(x, x, ss);
#endif
      }
      uintH code = (uintH)(0u);
#pragma unroll
      for (int b = 0; b < HASH_BITS; b++)
        code |= DA_CAT(as_uint, HV)(acc[b] > (floatH)(0.0f)) & (uintH)(1u << b);
      code ^= code >> 1;
      code ^= code >> 2;
      code ^= code >> 4;
      code ^= code >> 8;
      code ^= code >> 16;
      vstoreH(code, 0, keys + c0);
#if FUSION == 1
      vstoreH(sqrt(ss), 0, aw + c0);
#else
      vstoreH((floatH)(1.0f), 0, aw + c0);
#endif
    } else {
      for (int c = c0; c < DPH; c++) {
        if (c >= D) {
          keys[c] = 0xffffffffu; /* padding: never ranks before a column */
          aw[c] = 0.0f;
          continue;
        }
        float acc[HASH_BITS];
        for (int b = 0; b < HASH_BITS; b++) acc[b] = 0.0f;
        float ss = 0.0f;
        for (int r = 0; r < rows; r++) {
          const float x = LOAD_ELEM(Q, qt + (ulong)(r * qs2) + c);
          for (int b = 0; b < HASH_BITS; b++) acc[b] = fma(R[b * HB + r], x, acc[b]);
#if FUSION == 1
          ss = fma(x, x, ss);
#endif
        }
        uint code = 0;
        for (int b = 0; b < HASH_BITS; b++)
          if (acc[b] > 0.0f) code |= 1u << b;
        keys[c] = da_key(code);
#if FUSION == 1
        aw[c] = sqrt(ss);
#else
        aw[c] = 1.0f;
#endif
      }
    }
  }
  barrier(CLK_LOCAL_MEM_FENCE);
  /* Rank sort: position of c = number of columns with (key, c') < (key, c). */
  for (int c = lid; c < D; c += LS) {
    const uint k = keys[c];
    const uintH kv = (uintH)(k);
    const intH cv = (intH)(c);
    intH cnt = (intH)(0);
    for (int ch = 0; ch < NCH; ch++) {
      const uintH k2 = vloadH(ch, keys);
      const intH c2 = IOTAH + ch * HV;
      cnt -= (k2 < kv) | ((k2 == kv) & (c2 < cv));
    }
    int pos = 0;
    for (int t = 0; t < HV; t++) pos += ((__private int *)&cnt)[t];
    lperm[pos] = c;
    perm_out[pbase + pos] = c;
  }
  barrier(CLK_LOCAL_MEM_FENCE);
  for (int g0 = lid * G; g0 < D; g0 += LS * G) {
    const int g1 = min(g0 + G, D);
    float s = 0.0f;
    for (int i = g0; i < g1; i++) s += aw[lperm[i]];
    const int ones = !(s > 0.0f && s <= FLT_MAX); /* 0, NaN or Inf: 1s (SPEC 1 step 6) */
    for (int i = g0; i < g1; i++) {
      const int c = lperm[i];
      w_out[pbase + c] = ones ? 1.0f : aw[c];
    }
  }
}
