/* SPDX-License-Identifier: Apache-2.0 */
/* Split-KV decode (flash-decoding) for exact attention with few query rows
 * per kv head (README, "Decode"; SPEC 1, "Layouts and lengths"), as the CPU
 * backend (lib/cpu_kern_tmpl.h, dec_item) and CUDA (cuda/cuda_decode.cuh)
 * do it.
 *
 * Pass 1, da_dec: work-group (row group x chunk, kv head, batch). It takes
 * RB of the R = heads/kv_heads x seq_q query rows that read one kv head
 * (head-major: row rr is query head rr / seq_q of the kv head's group, query
 * i = rr % seq_q) and one chunk of C keys of its sequence, reads that chunk
 * of K and V once for all RB rows, in place (strides, offsets, lengths), and
 * writes per row the chunk's partial result: the unnormalised output row
 * (Pacc, DP floats) and its running max and sum (Pml, log2 domain). A row
 * that sees no key of the chunk gets (max, sum) = (-inf, -1) and no output
 * row: the combine skips it.
 *
 * Pass 2, da_dec_combine: one work-item per (row, VW columns) merges the
 * chunks by their maxima (the log-sum-exp rule of SPEC 1) and writes O in
 * the dtype at O's strides and, with LSE, the natural log of the sum. A
 * chunk whose sum is 0 (it saw only -inf logits) adds 0 x its output, so a
 * NaN there stays, as in one pass; a NaN sum makes the row NaN.
 *
 * Pass 1 comes in three forms (the arithmetic is the same; results differ
 * only in the order of additions):
 *  - DEC_TILED 0, for CPU devices (PoCL): one work-item per work-group
 *    holding every row's accumulator, head_dim in vectors of VW floats, K
 *    (and V) of KB keys at a time converted to f32 into private memory.
 *    DEC_LANES 0 (up to 8 rows): lanes are keys. KB = VW; a row's VW dot
 *    products are summed at once by a transposing tree of adds, so its
 *    scores are one vector of VW keys; P V in register tiles of RT rows x
 *    UT vectors (VDIRECT: V converted as the tiles load it, where one tile
 *    holds every row and D is a multiple of VW).
 *    DEC_LANES 1 (9 to VW rows): lanes are rows. Q and the accumulators are
 *    kept transposed, a key's scores for every row are one vector (D
 *    multiply-adds with the key's elements broadcast) and the online
 *    softmax runs on whole vectors.
 *    Measured on PoCL (AVX-512, 2 cores, f16, head_dim 64/128): the tree is
 *    the faster at 4 and 8 rows, lanes at 16 (1.3-1.5x).
 *  - DEC_TILED 1, for GPUs: NT work-items share Q (local memory), each
 *    block of KB keys of K and then V is loaded into local memory by all of
 *    them (consecutive work-items, consecutive elements), the RB x KB scores
 *    are one dot product per work-item, one work-item per row runs the
 *    online softmax, and every work-item keeps RB * D / NT elements of the
 *    accumulators. (Checked on PoCL with DISTRATTN_CL_KERNEL=tiled; not
 *    measured on a GPU yet.)
 * Lengths are read from device memory and clamped as in the other kernels
 * (common.cl, da_seq_q), so no row outside the tensors is read or written.
 * Defines: D, DP (D rounded up to VW), VW, RB, KB, DEC_TILED, NT (tiled),
 * DEC_LANES, RT, UT, VDIRECT (rows), WL, WR, LENS, LSE, DTYPE. */

#define DA_DEC_ARGS                                                                              \
  __global float *Pacc, __global float2 *Pml, __global const int *lens_q,                        \
      __global const int *lens_k, int seq_q, int seq_k, int heads, int kv_heads, int nrg,        \
      int nch, int C, float qscale, long qs0, long qs1, long qs2, ulong qoff, long ks0,          \
      long ks1, long ks2, ulong koff, long vs0, long vs1, long vs2, ulong voff, long rows_q,     \
      long rows_k

#define NV (DP / VW)

/* The row of a work-group's row r: live (a query of its sequence), its
 * head, query index and the keys [lo, hi) of the chunk [c0, c1) it sees. */
inline int da_dec_row(int rg, int r, int R, int seq_q, int lq, int lk, int hpk, int kh, long c0,
                      long c1, int *h, int *i, int *lo, int *hi) {
  const int rr = rg * RB + r;
  *i = rr % seq_q;
  *h = kh * hpk + rr / seq_q;
  *lo = 0;
  *hi = 0;
  if (rr >= R || *i >= lq) return 0;
  const int off = lk - lq;
  *lo = (int)max((long)da_win_lo(*i, off, lk), c0);
  *hi = (int)min((long)da_win_hi(*i, off, lk), c1);
  return 1;
}

/* A row's partial result of its chunk in Pml, (max, sum): sum -1 where the
 * row sees no key of the chunk (it writes no output row; the combine skips
 * it). */
inline float2 da_dec_ml(float m, float l, int seen) { return (float2)(m, seen ? l : -1.0f); }

#if !DEC_TILED
/* VW elements of p from element i, as floats. */
#if DTYPE == 0
#define DEC_LOADV(p, i) vloadV(0, (p) + (i))
#elif DTYPE == 1
#define DEC_LOADV(p, i) vload_halfV(0, (__global const half *)((p) + (i)))
#else
#define DEC_LOADV(p, i) as_floatV(convert_uintV(vloadV(0, (p) + (i))) << 16)
#endif

/* One row of D elements of p from element base into dst (DP floats, zero
 * past D). */
inline void da_dec_load_row(__global const elem_t *p, ulong base, float *dst) {
  for (int u = 0; u < D / VW; u++) vstoreV(DEC_LOADV(p, base + (ulong)(u * VW)), u, dst);
#if D % VW
  for (int c = D / VW * VW; c < DP; c++) dst[c] = c < D ? LOAD_ELEM(p, base + c) : 0.0f;
#endif
}

/* a[0..VW-1] -> lane j of the result = the sum of a[j]'s lanes, by a tree
 * of adds whose shuffles move whole halves first, then 128-bit blocks,
 * then pairs within them (cheap on x86); a is overwritten. shuffle2, not
 * swizzles that build a vector of two halves: Oclgrind 21.10's
 * --uninitialized checker crashes on those. */
#define DA_SH(x, y, ...) shuffle2((x), (y), (uintV)(__VA_ARGS__))
#if VW == 16
inline float16 da_tree(float16 *a) {
#pragma unroll
  for (int i = 0; i < 8; i++)
    a[i] = DA_SH(a[i], a[i + 8], 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23) +
           DA_SH(a[i], a[i + 8], 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31);
#pragma unroll
  for (int i = 0; i < 4; i++)
    a[i] = DA_SH(a[i], a[i + 4], 0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27) +
           DA_SH(a[i], a[i + 4], 4, 5, 6, 7, 20, 21, 22, 23, 12, 13, 14, 15, 28, 29, 30, 31);
#pragma unroll
  for (int i = 0; i < 2; i++)
    a[i] = DA_SH(a[i], a[i + 2], 0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29) +
           DA_SH(a[i], a[i + 2], 2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31);
  return DA_SH(a[0], a[1], 0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30) +
         DA_SH(a[0], a[1], 1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29, 15, 31);
}
#elif VW == 8
inline float8 da_tree(float8 *a) {
#pragma unroll
  for (int i = 0; i < 4; i++)
    a[i] = DA_SH(a[i], a[i + 4], 0, 1, 2, 3, 8, 9, 10, 11) +
           DA_SH(a[i], a[i + 4], 4, 5, 6, 7, 12, 13, 14, 15);
#pragma unroll
  for (int i = 0; i < 2; i++)
    a[i] = DA_SH(a[i], a[i + 2], 0, 1, 8, 9, 4, 5, 12, 13) +
           DA_SH(a[i], a[i + 2], 2, 3, 10, 11, 6, 7, 14, 15);
  return DA_SH(a[0], a[1], 0, 8, 2, 10, 4, 12, 6, 14) + DA_SH(a[0], a[1], 1, 9, 3, 11, 5, 13, 7, 15);
}
#else
inline float4 da_tree(float4 *a) {
#pragma unroll
  for (int i = 0; i < 2; i++)
    a[i] = DA_SH(a[i], a[i + 2], 0, 1, 4, 5) + DA_SH(a[i], a[i + 2], 2, 3, 6, 7);
  return DA_SH(a[0], a[1], 0, 4, 2, 6) + DA_SH(a[0], a[1], 1, 5, 3, 7);
}
#endif

#if DEC_LANES
/* Lanes are rows (RB <= VW): lane r of every vector is row r, so the
 * scores of a key for all rows are one vector, D multiply-adds with the
 * key's elements broadcast, and the online softmax runs on whole vectors;
 * no sums across lanes. K and V of a block of KB keys are converted into
 * private memory; Q and the accumulators are kept transposed ([c][r]). */
__kernel __attribute__((reqd_work_group_size(1, 1, 1)))
void da_dec(__global const elem_t *Q, __global const elem_t *K, __global const elem_t *V,
            DA_DEC_ARGS) {
  const int grp = get_group_id(0), rg = grp % nrg, chunk = grp / nrg;
  const int kh = get_group_id(1), b = get_group_id(2);
  const int hpk = heads / kv_heads, R = hpk * seq_q;
  long q0, k0;
  int lq, lk;
  da_seq_q(LENS, b, lens_q, seq_q, rows_q, &q0, &lq);
  da_seq_k(LENS, b, lens_k, seq_k, rows_k, &k0, &lk);
  const long c0 = (long)chunk * C, c1 = min(c0 + C, (long)lk);

  float qt[DP * VW];  /* qt[c][r]: the rows' queries times qscale */
  float kf[KB * DP];  /* the block's keys and values in f32 */
  float vf[KB * DP];
  float acc[DP * VW]; /* acc[c][r] */
  float row[DP];
  int loa[VW], hia[VW];
  int kbeg = INT_MAX, kend = 0;
  for (int r = 0; r < VW; r++) {
    int h, i, lo = 0, hi = 0;
    const int live = r < RB && da_dec_row(rg, r, R, seq_q, lq, lk, hpk, kh, c0, c1, &h, &i, &lo, &hi);
    if (live) {
      da_dec_load_row(Q, qoff + (ulong)(b * qs0 + h * qs1 + (q0 + i) * qs2), row);
      if (lo < hi) {
        kbeg = min(kbeg, lo);
        kend = max(kend, hi);
      }
    }
    for (int c = 0; c < DP; c++) qt[c * VW + r] = live ? row[c] * qscale : 0.0f;
    loa[r] = lo;
    hia[r] = hi;
  }
  const intV lo = vloadV(0, loa), hi = vloadV(0, hia);
  for (int c = 0; c < DP; c++) vstoreV((floatV)(0.0f), c, acc);
  floatV m = (floatV)(-INFINITY), l = (floatV)(0.0f);
  const ulong kbase = koff + (ulong)(b * ks0 + kh * ks1 + k0 * ks2);
  const ulong vbase = voff + (ulong)(b * vs0 + kh * vs1 + k0 * vs2);

  for (int j0 = kbeg; j0 < kend; j0 += KB) {
    const int nj = min(KB, kend - j0);
    for (int jj = 0; jj < KB; jj++) {
      if (jj < nj) {
        da_dec_load_row(K, kbase + (ulong)((j0 + jj) * ks2), kf + jj * DP);
        da_dec_load_row(V, vbase + (ulong)((j0 + jj) * vs2), vf + jj * DP);
      } else {
        for (int u = 0; u < NV; u++) {
          vstoreV((floatV)(0.0f), u, kf + jj * DP);
          vstoreV((floatV)(0.0f), u, vf + jj * DP);
        }
      }
    }
    floatV s[KB];
#pragma unroll
    for (int jj = 0; jj < KB; jj++) s[jj] = (floatV)(0.0f);
    for (int c = 0; c < D; c++) {
      const floatV qv = vloadV(c, qt);
#pragma unroll
      for (int jj = 0; jj < KB; jj++) s[jj] = fma(qv, (floatV)(kf[jj * DP + c]), s[jj]);
    }
    floatV mx = (floatV)(-INFINITY);
#pragma unroll
    for (int jj = 0; jj < KB; jj++) {
      const intV j = (intV)(j0 + jj);
      s[jj] = select(s[jj], (floatV)(-INFINITY), (j < lo) | (j >= hi));
      mx = fmax(mx, s[jj]);
    }
    /* the online softmax (common.cl) of every row at once; the factor's
     * exponentials only where some row's max moved */
    const floatV mn = fmax(m, mx);
    const floatV mu = DA_SM_MU(mn);
    const intV same = mn == m;
    floatV corr = (floatV)(1.0f);
    if (!all(same)) corr = select(DA_SM_CORR(m, mu), (floatV)(1.0f), same);
    floatV ps = (floatV)(0.0f);
#pragma unroll
    for (int jj = 0; jj < KB; jj++) {
      s[jj] = DA_SM_P(s[jj], mu);
      ps += s[jj];
    }
    l = DA_SM_SUM(l, corr, ps);
    m = mn;
    for (int c = 0; c < D; c++) {
      floatV a = vloadV(c, acc) * corr;
#pragma unroll
      for (int jj = 0; jj < KB; jj++) a = fma(s[jj], (floatV)(vf[jj * DP + c]), a);
      vstoreV(a, c, acc);
    }
  }

  float ma[VW], la[VW];
  vstoreV(m, 0, ma);
  vstoreV(l, 0, la);
  for (int r = 0; r < RB; r++) {
    int h, i, lo1, hi1;
    if (!da_dec_row(rg, r, R, seq_q, lq, lk, hpk, kh, c0, c1, &h, &i, &lo1, &hi1)) continue;
    const size_t slot = (((size_t)b * heads + h) * seq_q + i) * nch + chunk;
    const int seen = lo1 < hi1;
    Pml[slot] = da_dec_ml(ma[r], la[r], seen);
    if (seen)
      for (int c = 0; c < DP; c++) Pacc[slot * DP + c] = acc[c * VW + r];
  }
}

#else /* !DEC_LANES */
__kernel __attribute__((reqd_work_group_size(1, 1, 1)))
void da_dec(__global const elem_t *Q, __global const elem_t *K, __global const elem_t *V,
            DA_DEC_ARGS) {
  const int grp = get_group_id(0), rg = grp % nrg, chunk = grp / nrg;
  const int kh = get_group_id(1), b = get_group_id(2);
  const int hpk = heads / kv_heads, R = hpk * seq_q;
  long q0, k0;
  int lq, lk;
  da_seq_q(LENS, b, lens_q, seq_q, rows_q, &q0, &lq);
  da_seq_k(LENS, b, lens_k, seq_k, rows_k, &k0, &lk);
  const long c0 = (long)chunk * C, c1 = min(c0 + C, (long)lk);

  float qb[RB * DP];    /* the rows' queries times qscale */
  float kf[KB * DP];    /* the block's keys and values in f32 */
#if !VDIRECT
  float vf[KB * DP];
#endif
  float acc[RB * DP];
  float pb[RB * KB];    /* the block's probabilities */
  float m[RB], l[RB], cr[RB];
  int lo[RB], hi[RB], live[RB];
  int kbeg = INT_MAX, kend = 0;
  for (int r = 0; r < RB; r++) {
    int h, i;
    live[r] = da_dec_row(rg, r, R, seq_q, lq, lk, hpk, kh, c0, c1, &h, &i, &lo[r], &hi[r]);
    if (live[r]) {
      da_dec_load_row(Q, qoff + (ulong)(b * qs0 + h * qs1 + (q0 + i) * qs2), qb + r * DP);
      for (int u = 0; u < NV; u++) vstoreV(vloadV(u, qb + r * DP) * (floatV)(qscale), u, qb + r * DP);
      if (lo[r] < hi[r]) {
        kbeg = min(kbeg, lo[r]);
        kend = max(kend, hi[r]);
      }
    } else {
      for (int u = 0; u < NV; u++) vstoreV((floatV)(0.0f), u, qb + r * DP);
    }
    m[r] = -INFINITY;
    l[r] = 0.0f;
    for (int u = 0; u < NV; u++) vstoreV((floatV)(0.0f), u, acc + r * DP);
  }
  const ulong kbase = koff + (ulong)(b * ks0 + kh * ks1 + k0 * ks2);
  const ulong vbase = voff + (ulong)(b * vs0 + kh * vs1 + k0 * vs2);

  for (int j0 = kbeg; j0 < kend; j0 += KB) {
    const int nj = min(KB, kend - j0);
    for (int jj = 0; jj < KB; jj++) {
      if (jj < nj) {
        da_dec_load_row(K, kbase + (ulong)((j0 + jj) * ks2), kf + jj * DP);
#if !VDIRECT
        da_dec_load_row(V, vbase + (ulong)((j0 + jj) * vs2), vf + jj * DP);
#endif
      } else {
        for (int u = 0; u < NV; u++) {
          vstoreV((floatV)(0.0f), u, kf + jj * DP);
#if !VDIRECT
          vstoreV((floatV)(0.0f), u, vf + jj * DP);
#endif
        }
      }
    }
    const intV jv = IOTA + (intV)(j0);
    for (int r = 0; r < RB; r++) {
      /* the VW scores of row r: a[jj] holds key jj's products, summed by
       * the tree into lane jj */
      floatV a[KB];
#pragma unroll
      for (int jj = 0; jj < KB; jj++) a[jj] = (floatV)(0.0f);
      for (int u = 0; u < NV; u++) {
        const floatV qv = vloadV(u, qb + r * DP);
#pragma unroll
        for (int jj = 0; jj < KB; jj++) a[jj] = fma(qv, vloadV(u, kf + jj * DP), a[jj]);
      }
      floatV s = select(da_tree(a), (floatV)(-INFINITY), (jv < (intV)(lo[r])) | (jv >= (intV)(hi[r])));
      /* the online softmax (common.cl) */
      const float mn = fmax(m[r], hmaxV(s));
      const float mu = DA_SM_MU(mn);
      const float corr = mn == m[r] ? 1.0f : DA_SM_CORR(m[r], mu); /* exp2(0) is 1 */
      const floatV p = DA_SM_P(s, (floatV)(mu));
      l[r] = DA_SM_SUM(l[r], corr, hsumV(p));
      m[r] = mn;
      cr[r] = corr;
      vstoreV(p, 0, pb + r * KB);
    }
    /* acc[r] = acc[r] * corr[r] + P[r] V, RT rows x UT vectors at a time */
    for (int r0 = 0; r0 < RB; r0 += RT)
      for (int u0 = 0; u0 < NV; u0 += UT) {
        floatV o[RT][UT];
#pragma unroll
        for (int r = 0; r < RT; r++)
#pragma unroll
          for (int t = 0; t < UT; t++)
            o[r][t] = vloadV(u0 + t, acc + (r0 + r) * DP) * (floatV)(cr[r0 + r]);
#if VDIRECT
        for (int jj = 0; jj < nj; jj++) { /* the rest have P 0 */
          const ulong vr = vbase + (ulong)((j0 + jj) * vs2) + (ulong)(u0 * VW);
          floatV vv[UT];
#pragma unroll
          for (int t = 0; t < UT; t++) vv[t] = DEC_LOADV(V, vr + (ulong)(t * VW));
#else
        for (int jj = 0; jj < KB; jj++) {
          floatV vv[UT];
#pragma unroll
          for (int t = 0; t < UT; t++) vv[t] = vloadV(u0 + t, vf + jj * DP);
#endif
#pragma unroll
          for (int r = 0; r < RT; r++) {
            const floatV pj = (floatV)(pb[(r0 + r) * KB + jj]);
#pragma unroll
            for (int t = 0; t < UT; t++) o[r][t] = fma(pj, vv[t], o[r][t]);
          }
        }
#pragma unroll
        for (int r = 0; r < RT; r++)
#pragma unroll
          for (int t = 0; t < UT; t++) vstoreV(o[r][t], u0 + t, acc + (r0 + r) * DP);
      }
  }

  for (int r = 0; r < RB; r++) {
    if (!live[r]) continue;
    const int rr = rg * RB + r;
    const int h = kh * hpk + rr / seq_q, i = rr % seq_q;
    const size_t slot = (((size_t)b * heads + h) * seq_q + i) * nch + chunk;
    const int seen = lo[r] < hi[r];
    Pml[slot] = da_dec_ml(m[r], l[r], seen);
    if (seen)
      for (int u = 0; u < NV; u++) vstoreV(vloadV(u, acc + r * DP), u, Pacc + slot * DP);
  }
}

#endif /* DEC_LANES */

#else /* DEC_TILED */
#define DS (D + 1) /* local row stride of K and V: odd, so a column read spreads over banks */
#define NO ((RB * D + NT - 1) / NT)

__kernel __attribute__((reqd_work_group_size(NT, 1, 1)))
void da_dec(__global const elem_t *Q, __global const elem_t *K, __global const elem_t *V,
            DA_DEC_ARGS) {
  __local float Qs[RB * D];
  __local float KV[KB * DS];
  __local float Ps[RB * KB];
  __local float lm[RB], ll[RB], lc[RB];
  __local int llo[RB], lhi[RB], llive[RB];
  const int tid = get_local_id(0);
  const int grp = get_group_id(0), rg = grp % nrg, chunk = grp / nrg;
  const int kh = get_group_id(1), b = get_group_id(2);
  const int hpk = heads / kv_heads, R = hpk * seq_q;
  long q0, k0;
  int lq, lk;
  da_seq_q(LENS, b, lens_q, seq_q, rows_q, &q0, &lq);
  da_seq_k(LENS, b, lens_k, seq_k, rows_k, &k0, &lk);
  const long c0 = (long)chunk * C, c1 = min(c0 + C, (long)lk);

  for (int e = tid; e < RB * D; e += NT) {
    const int r = e / D, c = e - r * D;
    int h, i, lo, hi;
    const int lv = da_dec_row(rg, r, R, seq_q, lq, lk, hpk, kh, c0, c1, &h, &i, &lo, &hi);
    Qs[e] = lv ? LOAD_ELEM(Q, qoff + (ulong)(b * qs0 + h * qs1 + (q0 + i) * qs2) + c) * qscale
               : 0.0f;
  }
  if (tid < RB) {
    int h, i, lo, hi;
    llive[tid] = da_dec_row(rg, tid, R, seq_q, lq, lk, hpk, kh, c0, c1, &h, &i, &lo, &hi);
    llo[tid] = lo;
    lhi[tid] = hi;
    lm[tid] = -INFINITY;
    ll[tid] = 0.0f;
  }
  barrier(CLK_LOCAL_MEM_FENCE);
  int kbeg = INT_MAX, kend = 0;
  for (int r = 0; r < RB; r++)
    if (llive[r] && llo[r] < lhi[r]) {
      kbeg = min(kbeg, llo[r]);
      kend = max(kend, lhi[r]);
    }
  const ulong kbase = koff + (ulong)(b * ks0 + kh * ks1 + k0 * ks2);
  const ulong vbase = voff + (ulong)(b * vs0 + kh * vs1 + k0 * vs2);
  float acc[NO];
  for (int k = 0; k < NO; k++) acc[k] = 0.0f;

  for (int j0 = kbeg; j0 < kend; j0 += KB) {
    const int nj = min(KB, kend - j0);
    barrier(CLK_LOCAL_MEM_FENCE); /* the last block's P V done */
    for (int e = tid; e < KB * D; e += NT) {
      const int jj = e / D, c = e - jj * D;
      KV[jj * DS + c] = jj < nj ? LOAD_ELEM(K, kbase + (ulong)((j0 + jj) * ks2) + c) : 0.0f;
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int e = tid; e < RB * KB; e += NT) {
      const int r = e / KB, jj = e - r * KB, j = j0 + jj;
      float s = 0.0f;
      for (int c = 0; c < D; c++) s = fma(Qs[r * D + c], KV[jj * DS + c], s);
      Ps[e] = j < llo[r] || j >= lhi[r] ? -INFINITY : s;
    }
    barrier(CLK_LOCAL_MEM_FENCE); /* the keys are no longer read */
    for (int e = tid; e < KB * D; e += NT) {
      const int jj = e / D, c = e - jj * D;
      KV[jj * DS + c] = jj < nj ? LOAD_ELEM(V, vbase + (ulong)((j0 + jj) * vs2) + c) : 0.0f;
    }
    if (tid < RB) { /* the online softmax (common.cl) of row tid */
      __local float *ps = Ps + tid * KB;
      float mx = -INFINITY;
      for (int jj = 0; jj < KB; jj++) mx = fmax(mx, ps[jj]);
      const float mo = lm[tid], mn = fmax(mo, mx);
      const float mu = DA_SM_MU(mn);
      const float corr = DA_SM_CORR(mo, mu);
      float sum = 0.0f;
      for (int jj = 0; jj < KB; jj++) {
        const float p = DA_SM_P(ps[jj], mu);
        ps[jj] = p;
        sum += p;
      }
      ll[tid] = DA_SM_SUM(ll[tid], corr, sum);
      lm[tid] = mn;
      lc[tid] = corr;
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int k = 0; k < NO; k++) {
      const int o = tid + k * NT;
      if (o < RB * D) {
        const int r = o / D, c = o - r * D;
        float a = acc[k] * lc[r];
        for (int jj = 0; jj < KB; jj++) a = fma(Ps[r * KB + jj], KV[jj * DS + c], a);
        acc[k] = a;
      }
    }
  }

  barrier(CLK_LOCAL_MEM_FENCE);
  for (int k = 0; k < NO; k++) {
    const int o = tid + k * NT;
    if (o >= RB * D) continue;
    const int r = o / D, c = o - r * D, rr = rg * RB + r;
    if (!llive[r] || llo[r] >= lhi[r]) continue;
    const int h = kh * hpk + rr / seq_q, i = rr % seq_q;
    const size_t slot = (((size_t)b * heads + h) * seq_q + i) * nch + chunk;
    Pacc[slot * DP + c] = acc[k];
  }
#if DP > D
  for (int e = tid; e < RB * (DP - D); e += NT) { /* the combine reads whole vectors */
    const int r = e / (DP - D), c = D + e - r * (DP - D), rr = rg * RB + r;
    if (!llive[r] || llo[r] >= lhi[r]) continue;
    const int h = kh * hpk + rr / seq_q, i = rr % seq_q;
    Pacc[((((size_t)b * heads + h) * seq_q + i) * nch + chunk) * DP + c] = 0.0f;
  }
#endif
  if (tid < RB && llive[tid]) {
    const int rr = rg * RB + tid;
    const int h = kh * hpk + rr / seq_q, i = rr % seq_q;
    const size_t slot = (((size_t)b * heads + h) * seq_q + i) * nch + chunk;
    Pml[slot] = da_dec_ml(lm[tid], ll[tid], llo[tid] < lhi[tid]);
  }
}
#endif /* DEC_TILED */

/* Pass 2: work-item (u, i, b * heads + h): columns u*VW.. of row i. */
__kernel void da_dec_combine(__global const float *Pacc, __global const float2 *Pml,
                             __global elem_t *O, __global float *Lse, __global const int *lens_q,
                             __global const int *lens_k, int seq_q, int seq_k, int heads,
                             int nch, long os0, long os1, long os2, ulong ooff, ulong loff,
                             long rows_q, long rows_k) {
  const int u = get_global_id(0), i = get_global_id(1), bh = get_global_id(2);
  if (u >= NV || i >= seq_q) return;
  const int b = bh / heads, h = bh - b * heads;
  long q0, k0;
  int lq, lk;
  da_seq_q(LENS, b, lens_q, seq_q, rows_q, &q0, &lq);
  da_seq_k(LENS, b, lens_k, seq_k, rows_k, &k0, &lk);
  if (i >= lq) return;
  const size_t pr = ((size_t)bh * seq_q + i) * nch;
  float M = -INFINITY;
  int nan = 0;
  for (int c = 0; c < nch; c++) {
    const float2 ml = Pml[pr + c];
    if (isnan(ml.y)) nan = 1;
    else if (ml.y > 0.0f) M = fmax(M, ml.x);
  }
  floatV o = (floatV)(0.0f);
  float L = 0.0f;
  for (int c = 0; c < nch && !nan && M != -INFINITY; c++) {
    const float2 ml = Pml[pr + c];
    if (ml.y < 0.0f) continue; /* saw no key: no output row written */
    /* the chunk's weight: the factor from its max to M (finite: its own mu) */
    const float w = ml.y > 0.0f ? DA_SM_CORR(ml.x, M) : 0.0f;
    L += ml.y * w;
    o = fma(vloadV(u, Pacc + (pr + c) * DP), (floatV)(w), o);
  }
  const int off = lk - lq;
  const int seen = da_win_hi(i, off, lk) > da_win_lo(i, off, lk);
  const float l = nan ? NAN : L;
  float ov[VW];
  vstoreV(o * (floatV)(DA_SM_INV(seen, l)), 0, ov);
  const ulong ob = ooff + (ulong)(b * os0 + h * os1 + (q0 + i) * os2) + (ulong)(u * VW);
  for (int t = 0; t < VW && u * VW + t < D; t++) STORE_ELEM(O, ob + t, ov[t]);
#if LSE
  if (u == 0) Lse[loff + da_lse_at(b, h, i, q0, seq_q, heads, rows_q)] = da_lse(seen, M, l);
#endif
}
