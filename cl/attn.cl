/* SPDX-License-Identifier: Apache-2.0 */
/* Fused attention in the FlashAttention-2 manner. A work-group owns BM
 * consecutive query rows of one (batch, head), one work-item per row: the
 * row's (fused) query and its output accumulator stay in private memory while
 * tiles of BN keys and values stream past with an online softmax. Nothing of
 * size seq_q x seq_k exists anywhere. da_kv_prep first lays K and V out per
 * key tile in f32 (K transposed: [D][BN], V: [BN][DP], zero padded), so a
 * tile is one contiguous block that all rows of the work-group read while it
 * is in cache (a barrier per tile keeps the work-items in step).
 * G > 1 (DistrAttention): the query row is fused once with the permutation
 * and weights of its hash tile (BM divides HB), each key tile is fused as it
 * is loaded, and the logits run over NG = ceil(D / G) columns.
 * Defines: D, DP (D rounded up to VW), G, NG, HB, BM, BN (multiple of VW),
 * VW (4, 8 or 16), WL, WR (the window, -1 unbounded; causal: WR 0), LENS
 * (0, 1, 2: DA_SEQLENS_*), LSE (0, 1), DTYPE, ACC_LOCAL.
 *
 * With TILED=1 the program holds da_attn in its GPU shape instead (below):
 * micro-tiles of S and O per work-item, Q and K/V tiles in local memory,
 * read straight from Q, K and V (no da_kv_prep).
 *
 * PROJ=1 (DA_STRATEGY_PROJECTION, SPEC 1c; G is then 1): both shapes run
 * the logits over RK (the rank) columns of pre-projected f32 inputs that
 * da_proj (below) writes per call: Q is Qp [batch][heads][seq_q][RK] (Q_h
 * A_h, rows counted from each sequence's first, so no q0 in its address)
 * and K is Kp, per QUERY head (B_h differs per query head even under GQA):
 * [batch][heads][seq_k][RK] for the tiled shape, for the rows shape the
 * key tiles Kb [batch*heads][nkt][RK][BN] da_kv_prep otherwise writes (it
 * then lays out V only). V, O and the LSE are as in exact attention. */

#ifndef PROJ
#define PROJ 0
#endif
#ifndef RK
#define RK D
#endif
#if PROJ
/* the pre-projected Q and K are f32 */
typedef float qk_t;
#define LOAD_QK(p, i) ((p)[i])
#else
typedef elem_t qk_t;
#define LOAD_QK(p, i) LOAD_ELEM(p, i)
#endif


/* The call's layout (da_attn_ext), the same arguments for both shapes:
 * element (b, h, r, c) of a tensor is at off + b*s0 + h*s1 + r*s2 + c, r
 * counted from the sequence's first row (da_seq_q, da_seq_k in common.cl;
 * LENS is the plan's DA_SEQLENS_*). LSE 1: the natural log of each row's
 * softmax sum goes to Lse ([batch][heads][seq_q], or [heads][rows_q] with
 * LENS 2), -inf for a row that sees no key. Dense plans pass their dense
 * strides, so they run these same kernels. */
#define DA_ATTN_ARGS                                                                              \
  __global const int *perm, __global const float *wts, __global float *Lse,                       \
      __global const int *lens_q, __global const int *lens_k, int seq_q, int seq_k, int heads,    \
      int kv_heads, int n_tiles, int nkt, float qscale, long qs0, long qs1, long qs2, ulong qoff, \
      long ks0, long ks1, long ks2, ulong koff, long vs0, long vs1, long vs2, ulong voff,         \
      long os0, long os1, long os2, ulong ooff, ulong loff, long rows_q, long rows_k

/* The keys a work-group of the rows r0..r0+BM-1 visits: [da_grp_lo, da_grp_hi),
 * the start rounded down to whole key tiles of BN. */
inline int da_grp_hi(int r0, int off, int lk) { return da_win_hi(r0 + BM - 1, off, lk); }
inline int da_grp_lo(int r0, int off, int lk) { return da_win_lo(r0, off, lk) / BN * BN; }

#if G > 1
/* The hash tile's permutation and weights (from pbase) and the inverse of
 * each group's weight sum, into local memory, by n work-items; every
 * work-item of the group calls it (it ends with a barrier). wts holds a_c
 * per original column c (hash.cl); lw holds them by sorted position,
 * lw[e] = a_{lp[e]}, so the loops over a group read lp[t] and lw[t]. */
inline void da_load_groups(__global const int *perm, __global const float *wts, size_t pbase,
                           int lid, int n, __local int *lp, __local float *lw,
                           __local float *linv) {
  for (int e = lid; e < D; e += n) {
    const int c = perm[pbase + e];
    lp[e] = c;
    lw[e] = wts[pbase + c];
  }
  barrier(CLK_LOCAL_MEM_FENCE);
  for (int g = lid; g < NG; g += n) {
    float s = 0.0f;
    for (int t = g * G; t < min(g * G + G, D); t++) s += lw[t];
    linv[g] = 1.0f / s;
  }
  barrier(CLK_LOCAL_MEM_FENCE);
}
#endif

#if PROJ
/* Columns per work-item of da_proj; the device copy of the projections
 * has rows of RKP (RK rounded up to PKC, zero padded) */
#define PKC 16
#define RKP ((RK + PKC - 1) / PKC * PKC)
/* Xp = X_h A_h (is_k 0: X = Q, head h) or X_kv(h) B_h (is_k 1: X = K), f32
 * accumulated over the D columns in order, one work-item per PKC output
 * columns of a row (X's element read once for all of them): global size
 * (RKP / PKC, n, batch*heads). Rows are counted from each sequence's
 * first (da_seq_q / da_seq_k through lens and rows); rows j >= the
 * sequence's length (up to n: seq_q, seq_k, or whole key tiles) are 0.
 * bnt 0: Xp[bh][j][k] (n rows per (batch, head)); bnt = BN: the rows
 * kernel's key tiles Xp[bh][j / BN][k][j % BN] (n a multiple of BN). */
__kernel void da_proj(__global const elem_t *X, __global float *Xp, __global const float *Pj,
                      int is_k, int n, int seq, int heads, int kv_heads,
                      __global const int *lens, long rows, long s0, long s1, long s2, ulong off,
                      int bnt) {
  const int k0 = get_global_id(0) * PKC, j = get_global_id(1), bh = get_global_id(2);
  if (k0 >= RK || j >= n) return;
  const int b = bh / heads, h = bh - b * heads;
  const int xh = is_k ? h / (heads / kv_heads) : h;
  long x0;
  int lx;
  if (is_k)
    da_seq_k(LENS, b, lens, seq, rows, &x0, &lx);
  else
    da_seq_q(LENS, b, lens, seq, rows, &x0, &lx);
  float4 a[PKC / 4];
#pragma unroll
  for (int u = 0; u < PKC / 4; u++) a[u] = (float4)(0.0f);
  if (j < lx) {
    const ulong row = off + (ulong)(b * s0 + xh * s1 + (x0 + j) * s2);
    __global const float *P = Pj + ((size_t)h * 2 + is_k) * (size_t)(D * RKP) + k0;
    for (int c = 0; c < D; c++) {
      const float4 x = (float4)(LOAD_ELEM(X, row + c));
#pragma unroll
      for (int u = 0; u < PKC / 4; u++) a[u] = fma(x, vload4(u, P + (size_t)c * RKP), a[u]);
    }
  }
  float o[PKC];
#pragma unroll
  for (int u = 0; u < PKC / 4; u++) vstore4(a[u], u, o);
  const int jt = bnt ? j / bnt : 0;
  for (int kk = 0; kk < PKC && k0 + kk < RK; kk++) {
    const int k = k0 + kk;
    const size_t at =
        bnt ? (((size_t)bh * (size_t)(n / bnt) + jt) * RK + k) * (size_t)bnt + (j - jt * bnt)
            : ((size_t)bh * n + j) * RK + k;
    Xp[at] = o[kk];
  }
}
#endif

#if TILED
/* The fused attention for GPUs. A work-group of NT = (BM/4)*8 work-items
 * owns BM query rows of one (batch, head); work-item (ty, tx) = (lid / 8,
 * lid % 8) owns the rows ty + TY*r (r < 4, TY = BM/4), of each key tile the
 * keys tx + 8c (c < KN = BN/8) for S = Q K^T, and the output columns
 * 4tx + 32u.. (u < DV/32) for O += P V, so each local-memory read feeds 4*KN
 * or 16 multiply-adds. Local memory: Qs[BM][SQ] (the scaled, for G > 1
 * fused, queries), one buffer that holds the key tile Ks[BN][SQ] and then
 * the value tile Vs[BN][DV] (V is loaded once S is computed), Ps[BN][TY][4]
 * the probabilities, red[BM][8] the row-max partials. The row stride SQ is
 * an odd multiple of 4 floats, so the 8 rows a warp reads at once fall in
 * different banks. G > 1 fuses the key tile as it is loaded, with the
 * permutation and weights of the work-group's hash tile (BM divides HB).
 * Arithmetic, fusion order and masking follow the rows kernel below.
 * Defines: D, DV (D rounded up to 32), G, NG, HB, BM (16, 32 or 64), BN (8,
 * 16 or 32), WL, WR, LENS, LSE, DTYPE. */
#define NT ((BM / 4) * 8)
#define TY (BM / 4)
#define KN (BN / 8)
#define NU (DV / 32)
#if PROJ
#define DQ RK
#elif G == 1
#define DQ D
#else
#define DQ NG
#endif
#define DQ4 ((DQ + 3) / 4 * 4)
#define SQ ((DQ + 7) / 8 * 8 + 4)
#define KVN (SQ > DV ? BN * SQ : BN * DV)

__kernel __attribute__((reqd_work_group_size(NT, 1, 1)))
void da_attn(__global const qk_t *Q, __global const qk_t *K, __global const elem_t *V,
             __global elem_t *O, DA_ATTN_ARGS) {
  __local float4 Qs4[BM * SQ / 4];
  __local float4 KV4[KVN / 4];
  __local float4 Ps4[BN * TY];
  __local float red[BM * 8];
  __local float *Qs = (__local float *)Qs4;
  __local float *KV = (__local float *)KV4;
  __local float *Ps = (__local float *)Ps4;
#if G > 1
  __local int lp[D];
  __local float lw[D];
  __local float linv[NG];
#endif
  (void)nkt;
  const int lid = get_local_id(0), tx = lid % 8, ty = lid / 8;
  const int r0 = get_group_id(0) * BM;
  const int h = get_group_id(1), b = get_group_id(2);
  const int kvh = h / (heads / kv_heads);
  long q0, k0;
  int lq, lk;
  da_seq_q(LENS, b, lens_q, seq_q, rows_q, &q0, &lq);
  da_seq_k(LENS, b, lens_k, seq_k, rows_k, &k0, &lk);
  const int off = lk - lq;
  /* row r of the sequence: Q at qbase + r * qs2, K and V at kbase, vbase
   * (PROJ: Qp and Kp, per query head, rows from the sequence's first) */
#if PROJ
  const ulong qbase = qoff + (ulong)(b * qs0 + h * qs1);
  const ulong kbase = koff + (ulong)(b * ks0 + h * ks1);
#else
  const ulong qbase = qoff + (ulong)(b * qs0 + h * qs1 + q0 * qs2);
  const ulong kbase = koff + (ulong)(b * ks0 + kvh * ks1 + k0 * ks2);
#endif
  const ulong vbase = voff + (ulong)(b * vs0 + kvh * vs1 + k0 * vs2);

#if G == 1
  for (int e = lid; e < BM * DQ4; e += NT) {
    const int r = e / DQ4, k = e - r * DQ4;
    Qs[r * SQ + k] = r0 + r < lq && k < DQ
                         ? LOAD_QK(Q, qbase + (ulong)((r0 + r) * qs2) + k) * qscale
                         : 0.0f;
  }
#else
  {
    da_load_groups(perm, wts, (((size_t)b * heads + h) * n_tiles + r0 / HB) * D, lid, NT, lp,
                   lw, linv);
    for (int e = lid; e < BM * DQ4; e += NT) {
      const int r = e / DQ4, g = e - r * DQ4;
      float s = 0.0f;
      if (r0 + r < lq && g < NG) {
        for (int t = g * G; t < min(g * G + G, D); t++)
          s += LOAD_ELEM(Q, qbase + (ulong)((r0 + r) * qs2) + lp[t]);
        s = s * linv[g] * qscale;
      }
      Qs[r * SQ + g] = s;
    }
  }
#endif

  float4 acc[4][NU];
#pragma unroll
  for (int r = 0; r < 4; r++) {
#pragma unroll
    for (int u = 0; u < NU; u++) acc[r][u] = (float4)(0.0f);
  }
  float m[4] = {-INFINITY, -INFINITY, -INFINITY, -INFINITY};
  float l[4] = {0.0f, 0.0f, 0.0f, 0.0f};

  /* A work-group past its sequence's queries visits no key and stores
   * nothing; it does not return early (PoCL 3.1 corrupted the heap with
   * an early return before the tiled kernel's barriers). */
  const int kend = r0 < lq ? da_grp_hi(r0, off, lk) : 0;
  for (int j0 = da_grp_lo(r0, off, lk); j0 < kend; j0 += BN) {
    const int nj = min(BN, lk - j0);
    barrier(CLK_LOCAL_MEM_FENCE); /* the last tile's P V (and Qs) done */
    for (int e = lid; e < BN * DQ4; e += NT) {
      const int jj = e / DQ4, k = e - jj * DQ4;
      float x = 0.0f;
      if (jj < nj && k < DQ) {
        const ulong row = kbase + (ulong)((j0 + jj) * ks2);
#if G == 1
        x = LOAD_QK(K, row + k);
#else
        for (int t = k * G; t < min(k * G + G, D); t++)
          x = fma(lw[t], LOAD_ELEM(K, row + lp[t]), x);
#endif
      }
      KV[jj * SQ + k] = x;
    }
    barrier(CLK_LOCAL_MEM_FENCE);

    float sc[4][KN];
#pragma unroll
    for (int r = 0; r < 4; r++) {
#pragma unroll
      for (int c = 0; c < KN; c++) sc[r][c] = 0.0f;
    }
    for (int k4 = 0; k4 < DQ4 / 4; k4++) {
      float4 qv[4], kv[KN];
#pragma unroll
      for (int r = 0; r < 4; r++) qv[r] = Qs4[(ty + TY * r) * (SQ / 4) + k4];
#pragma unroll
      for (int c = 0; c < KN; c++) kv[c] = KV4[(tx + 8 * c) * (SQ / 4) + k4];
#pragma unroll
      for (int r = 0; r < 4; r++) {
#pragma unroll
        for (int c = 0; c < KN; c++) {
          float a = sc[r][c];
          a = fma(qv[r].x, kv[c].x, a);
          a = fma(qv[r].y, kv[c].y, a);
          a = fma(qv[r].z, kv[c].z, a);
          sc[r][c] = fma(qv[r].w, kv[c].w, a);
        }
      }
    }
#pragma unroll
    for (int r = 0; r < 4; r++) {
      const int i = r0 + ty + TY * r;
      const int lim = min(nj, da_win_hi(i, off, lk) - j0);
      const int first = da_win_lo(i, off, lk) - j0;
      float mx = -INFINITY;
#pragma unroll
      for (int c = 0; c < KN; c++) {
        if (tx + 8 * c >= lim || tx + 8 * c < first) sc[r][c] = -INFINITY;
        mx = fmax(mx, sc[r][c]);
      }
      red[(ty + TY * r) * 8 + tx] = mx;
    }
    barrier(CLK_LOCAL_MEM_FENCE); /* red complete; the key tile is no longer read */

#pragma unroll
    for (int r = 0; r < 4; r++) {
      float mx = -INFINITY;
#pragma unroll
      for (int t = 0; t < 8; t++) mx = fmax(mx, red[(ty + TY * r) * 8 + t]);
      /* the online softmax (common.cl). While the row's max stays -inf
       * (no logit so far above -inf: its sum and accumulator are still 0,
       * or NaN) corr is 1 and mu 0, so that a -inf logit gives P 0 and a
       * NaN one, which fmax passes over, a NaN P that makes the row NaN */
      const float mn = fmax(m[r], mx), mu = DA_SM_MU(mn);
      const float corr = mn > -INFINITY ? DA_SM_CORR(m[r], mu) : 1.0f;
#pragma unroll
      for (int c = 0; c < KN; c++) Ps[((tx + 8 * c) * TY + ty) * 4 + r] = DA_SM_P(sc[r][c], mu);
      m[r] = mn;
      l[r] *= corr;
#pragma unroll
      for (int u = 0; u < NU; u++) acc[r][u] *= (float4)(corr);
    }
    for (int e = lid; e < BN * DV; e += NT) {
      const int jj = e / DV, c = e - jj * DV;
      KV[e] = jj < nj && c < D ? LOAD_ELEM(V, vbase + (ulong)((j0 + jj) * vs2) + c) : 0.0f;
    }
    barrier(CLK_LOCAL_MEM_FENCE);

    float4 ls = (float4)(0.0f);
    for (int jj = 0; jj < BN; jj++) {
      const float4 pv = Ps4[jj * TY + ty];
      ls += pv;
#pragma unroll
      for (int u = 0; u < NU; u++) {
        const float4 vv = KV4[jj * (DV / 4) + 8 * u + tx];
        acc[0][u] = fma((float4)(pv.x), vv, acc[0][u]);
        acc[1][u] = fma((float4)(pv.y), vv, acc[1][u]);
        acc[2][u] = fma((float4)(pv.z), vv, acc[2][u]);
        acc[3][u] = fma((float4)(pv.w), vv, acc[3][u]);
      }
    }
    l[0] += ls.x;
    l[1] += ls.y;
    l[2] += ls.z;
    l[3] += ls.w;
  }

#pragma unroll
  for (int r = 0; r < 4; r++) {
    const int i = r0 + ty + TY * r;
    if (i >= lq) continue;
    const int seen = da_win_hi(i, off, lk) > da_win_lo(i, off, lk);
    const float inv = DA_SM_INV(seen, l[r]);
    const ulong ob = ooff + (ulong)(b * os0 + h * os1 + (q0 + i) * os2);
#if LSE
    if (tx == 0) Lse[loff + da_lse_at(b, h, i, q0, seq_q, heads, rows_q)] = da_lse(seen, m[r], l[r]);
#endif
#pragma unroll
    for (int u = 0; u < NU; u++) {
      const float4 o = acc[r][u] * (float4)(inv);
      const int c = 32 * u + 4 * tx;
      if (c < D) STORE_ELEM(O, ob + c, o.x);
      if (c + 1 < D) STORE_ELEM(O, ob + c + 1, o.y);
      if (c + 2 < D) STORE_ELEM(O, ob + c + 2, o.z);
      if (c + 3 < D) STORE_ELEM(O, ob + c + 3, o.w);
    }
  }
}
#else /* !TILED */
#define NV (DP / VW)
#define NB (BN / VW)
#if PROJ
#define DQ RK
#elif G == 1
#define DQ D
#else
#define DQ NG
#endif
#define KW (PROJ ? RK : D) /* rows of a key tile of Kb */

/* Kb[bk][jt][c][jj] = K[b][kh][jt*BN+jj][c], Vb[bk][jt][jj][c] = V[b][kh][jt*BN+jj][c]
 * (bk = b * kv_heads + kh; key j of sequence b's own keys, through K's and
 * V's strides and offsets), zero past its length and past D. Global size
 * (DP, nkt*BN, batch*kv_heads). */
__kernel void da_kv_prep(__global const elem_t *K, __global const elem_t *V,
                         __global float *Kb, __global float *Vb, int seq_k, int nkt,
                         int kv_heads, __global const int *lens_k, long rows_k, long ks0,
                         long ks1, long ks2, ulong koff, long vs0, long vs1, long vs2,
                         ulong voff) {
  const int c = get_global_id(0), j = get_global_id(1), bk = get_global_id(2);
  if (c >= DP || j >= nkt * BN) return;
  const int b = bk / kv_heads, kh = bk - b * kv_heads;
  long k0;
  int lk;
  da_seq_k(LENS, b, lens_k, seq_k, rows_k, &k0, &lk);
  const int jt = j / BN, jj = j - jt * BN;
  const int in = c < D && j < lk;
  const size_t tile = (size_t)bk * nkt + jt;
#if PROJ
  (void)Kb;
  (void)ks0;
  (void)ks1;
  (void)ks2;
  (void)koff;
#else
  if (c < D)
    Kb[(tile * D + c) * BN + jj] =
        in ? LOAD_ELEM(K, koff + (ulong)(b * ks0 + kh * ks1 + (k0 + j) * ks2) + c) : 0.0f;
#endif
  Vb[(tile * BN + jj) * DP + c] =
      in ? LOAD_ELEM(V, voff + (ulong)(b * vs0 + kh * vs1 + (k0 + j) * vs2) + c) : 0.0f;
}

__kernel __attribute__((reqd_work_group_size(BM, 1, 1)))
void da_attn(__global const qk_t *Q, __global const float *Kb, __global const float *Vb,
             __global elem_t *O, DA_ATTN_ARGS) {
#if G > 1
  __local float Kf[NG * BN]; /* the key tile fused with this hash tile's groups */
  __local int lp[D];
  __local float lw[D];
  __local float linv[NG];
#endif
  const int lid = get_local_id(0);
  const int r0 = get_group_id(0) * BM;
  const int h = get_group_id(1);
  const int b = get_group_id(2);
  const int i = r0 + lid;
  const int kvh = h / (heads / kv_heads);
  long q0, k0;
  int lq, lk;
  da_seq_q(LENS, b, lens_q, seq_q, rows_q, &q0, &lq);
  da_seq_k(LENS, b, lens_k, seq_k, rows_k, &k0, &lk); /* k0: da_kv_prep used it */
  const int off = lk - lq;
#if PROJ /* Qp rows and Kp tiles per query head (the header) */
  const ulong qrow = qoff + (ulong)(b * qs0 + h * qs1 + i * qs2); /* when live */
  const size_t ktile0 = ((size_t)b * heads + h) * (size_t)nkt;
#else
  const ulong qrow = qoff + (ulong)(b * qs0 + h * qs1 + (q0 + i) * qs2); /* when live */
  const size_t ktile0 = ((size_t)b * kv_heads + kvh) * (size_t)nkt;
#endif
  const size_t vtile0 = ((size_t)b * kv_heads + kvh) * (size_t)nkt;
  const int live = i < lq;
  /* the keys this row sees: [lo, hi) */
  const int hi = da_win_hi(i, off, lk), lo = da_win_lo(i, off, lk);

  float q[DQ];
#if G == 1
  for (int k = 0; k < DQ; k++)
    q[k] = live ? LOAD_QK(Q, qrow + k) * qscale : 0.0f;
#else
  {
    da_load_groups(perm, wts, (((size_t)b * heads + h) * n_tiles + r0 / HB) * D, lid, BM, lp,
                   lw, linv);
    for (int g = 0; g < NG; g++) {
      float s = 0.0f;
      if (live)
        for (int t = g * G; t < min(g * G + G, D); t++)
          s += LOAD_ELEM(Q, qrow + lp[t]);
      q[g] = s * linv[g] * qscale;
    }
  }
#endif

  /* The output accumulator between key tiles. ACC_LOCAL (CPU devices) keeps
   * it in local memory, one row per work-item, so that compilers which turn
   * work-groups into loops do not copy it at every barrier. */
#if ACC_LOCAL
  __local float accl[BM * DP];
  __local float *accp = accl + lid * DP;
#define ACC_GET(u) vloadV((u), accp)
#define ACC_SET(u, x) vstoreV((x), (u), accp)
#else
  floatV acc[NV];
#define ACC_GET(u) acc[u]
#define ACC_SET(u, x) (acc[u] = (x))
#endif
  for (int u = 0; u < NV; u++) ACC_SET(u, (floatV)(0.0f));
  float m = -INFINITY, l = 0.0f;

  /* A work-group past its sequence's queries visits no key and stores
   * nothing; it does not return early (PoCL 3.1 corrupted the heap with
   * an early return before the tiled kernel's barriers). */
  const int kend = r0 < lq ? da_grp_hi(r0, off, lk) : 0;
  for (int j0 = da_grp_lo(r0, off, lk); j0 < kend; j0 += BN) {
    const int nj = min(BN, lk - j0);
    barrier(CLK_LOCAL_MEM_FENCE);
    __global const float *Kt = Kb + (ktile0 + j0 / BN) * (size_t)(KW * BN);
    __global const float *Vs = Vb + (vtile0 + j0 / BN) * (size_t)(BN * DP);
#if G > 1
    for (int g = lid; g < NG; g += BM) {
      floatV f[NB];
#pragma unroll
      for (int v = 0; v < NB; v++) f[v] = (floatV)(0.0f);
      for (int t = g * G; t < min(g * G + G, D); t++) {
        const floatV w = (floatV)(lw[t]);
        __global const float *kr = Kt + lp[t] * BN;
#pragma unroll
        for (int v = 0; v < NB; v++) f[v] = fma(w, vloadV(v, kr), f[v]);
      }
#pragma unroll
      for (int v = 0; v < NB; v++) vstoreV(f[v], v, Kf + g * BN);
    }
    barrier(CLK_LOCAL_MEM_FENCE);
#define KROW(k) (Kf + (k) * BN)
#else
#define KROW(k) (Kt + (k) * BN)
#endif

    /* Scores of this row against the tile: NB vectors kept in registers. */
    floatV s[NB];
#pragma unroll
    for (int v = 0; v < NB; v++) s[v] = (floatV)(0.0f);
    for (int k = 0; k < DQ; k++) {
      const floatV qk = (floatV)(q[k]);
#pragma unroll
      for (int v = 0; v < NB; v++) s[v] = fma(qk, vloadV(v, KROW(k)), s[v]);
    }
    const int lim = min(nj, hi - j0);
#if WL >= 0
    const int first = lo - j0;
#endif
    float mx = -INFINITY;
#pragma unroll
    for (int v = 0; v < NB; v++) {
#if WL >= 0
      s[v] = select(s[v], (floatV)(-INFINITY),
                    ((IOTA + v * VW) >= (intV)(lim)) | ((IOTA + v * VW) < (intV)(first)));
#else
      s[v] = select(s[v], (floatV)(-INFINITY), (IOTA + v * VW) >= (intV)(lim));
#endif
      mx = fmax(mx, hmaxV(s[v]));
    }
    /* the online softmax (common.cl). While the row's max stays -inf (no
     * logit so far above -inf) a tile adds nothing and is skipped (its V
     * is not read), unless it holds a NaN logit, which fmax passes over:
     * then mu is 0 and the NaN's P makes the row NaN, as in the decode
     * kernels and the CPU backend */
    const float mn = fmax(m, mx);
    int nan = 0;
    if (mn == -INFINITY)
#pragma unroll
      for (int v = 0; v < NB; v++) nan |= any(isnan(s[v]));
    if (mn > -INFINITY || nan) {
      const float mu = DA_SM_MU(mn);
      const float corr = DA_SM_CORR(m, mu);
      float p[BN];
      float ps = 0.0f;
#pragma unroll
      for (int v = 0; v < NB; v++) {
        const floatV pv = DA_SM_P(s[v], (floatV)(mu));
        ps += hsumV(pv);
        vstoreV(pv, v, p);
      }
      l = DA_SM_SUM(l, corr, ps);
      /* The accumulator lives in registers for the tile. */
      floatV a[NV];
#pragma unroll
      for (int u = 0; u < NV; u++) a[u] = ACC_GET(u) * (floatV)(corr);
      for (int jj = 0; jj < BN; jj++) {
        const floatV pj = (floatV)(p[jj]);
        __global const float *vr = Vs + jj * DP;
#pragma unroll
        for (int u = 0; u < NV; u++) a[u] = fma(pj, vloadV(u, vr), a[u]);
      }
#pragma unroll
      for (int u = 0; u < NV; u++) ACC_SET(u, a[u]);
      m = mn;
    }
  }

  if (live) {
    const int seen = hi > lo;
    const float inv = DA_SM_INV(seen, l);
    float o[DP];
    for (int u = 0; u < NV; u++) vstoreV(ACC_GET(u) * (floatV)(inv), u, o);
    const ulong orow = ooff + (ulong)(b * os0 + h * os1 + (q0 + i) * os2);
    for (int k = 0; k < D; k++) STORE_ELEM(O, orow + k, o[k]);
#if LSE
    Lse[loff + da_lse_at(b, h, i, q0, seq_q, heads, rows_q)] = da_lse(seen, m, l);
#endif
  }
}
#endif /* TILED */
