/* SPDX-License-Identifier: Apache-2.0 */
/* The backward pass (SPEC 1b), plain kernels: correct, not tuned. No
 * seq_q x seq_k matrix is kept; P and dS are recomputed from Q (or the
 * expanded Qx of G > 1), K and the forward's LSE in each of two passes, so
 * that every work-item owns the rows it writes (no atomics):
 *  - da_bwd_dsum: D[i] = sum_c dO[i][c] O[i][c], a work-item per row;
 *  - da_bwd_qx (G > 1): Qx[i][c] = a_c Qs[i][g(c)] (f32, dense), from the
 *    forward's permutation and weights (hash.cl, a_c per column), so
 *    that the logits are Qx K^T;
 *  - da_bwd_dkv: a work-item per (key, kv head, batch), over the query
 *    heads of the kv head and the rows that see the key:
 *    dV += P dO, dK += dS Qx (times the scale at the end);
 *  - da_bwd_qproj (PROJ, the projection strategy of SPEC 1c): Qx = Q M_h
 *    (f32, dense) with the plan's M_h = A_h B_h^T, so that the logits
 *    s (Q A_h)(K B_h)^T are Qx K^T as for G > 1 and dK = s sum dS Qx;
 *  - da_bwd_dq: a work-item per (row, head, batch) over the keys it sees:
 *    E = s sum_j dS K_j, then dQ = E (G = 1), or E folded back through the
 *    row's hash tile: dQ[c] = (1/A_g(c)) sum_{c' in g(c)} a_c' E[c'], or
 *    (PROJ) dQ = E M_h^T: dQ[c] = sum_c' E[c'] M_h[c][c'].
 * Defines: DTYPE, D (head_dim, 1..256), G (group size), VW (vector width
 * of the rows: 4, 8 or 16), PROJ (0 or 1). f32 arithmetic.
 * Element (b, h, r, c) of a tensor: off + b*s0 + h*s1 + r*s2 + c. */

#ifndef PROJ
#define PROJ 0
#endif

inline ulong bwd_at(ulong off, long s0, long s1, long s2, int b, int h, long r) {
  return off + (ulong)((long)b * s0 + (long)h * s1 + r * s2);
}

/* global size (rows rounded up, batch * heads); D = rowsum(dO o O) */
__kernel void da_bwd_dsum(__global const elem_t *dO, __global const elem_t *O,
                          __global float *Dv, int seq_q, int heads, long os0, long os1, long os2,
                          ulong dooff, ulong ooff) {
  const int i = get_global_id(0);
  if (i >= seq_q) return;
  const int bh = get_global_id(1), b = bh / heads, h = bh - b * heads;
  const ulong g = bwd_at(dooff, os0, os1, os2, b, h, i), o = bwd_at(ooff, os0, os1, os2, b, h, i);
  float s = 0.0f;
  for (int c = 0; c < D; c++) s = fma(LOAD_ELEM(dO, g + c), LOAD_ELEM(O, o + c), s);
  Dv[(ulong)bh * seq_q + i] = s;
}

#if G > 1
/* global size (rows rounded up, batch * heads). Row i's hash tile is
 * i / hb; perm and wts hold D entries per (b, h, tile): perm the columns in
 * group order, wts the weight a_c of each original column c. */
__kernel void da_bwd_qx(__global const elem_t *Q, __global const int *perm,
                        __global const float *wts, __global float *Qx, int seq_q, int heads,
                        int n_tiles, int hb, long qs0, long qs1, long qs2, ulong qoff) {
  const int i = get_global_id(0);
  if (i >= seq_q) return;
  const int bh = get_global_id(1), b = bh / heads, h = bh - b * heads;
  const ulong q = bwd_at(qoff, qs0, qs1, qs2, b, h, i);
  const ulong pb = ((ulong)bh * n_tiles + (ulong)(i / hb)) * D;
  __global float *x = Qx + ((ulong)bh * seq_q + i) * D;
  for (int g0 = 0; g0 < D; g0 += G) {
    const int g1 = min(g0 + G, D);
    float a = 0.0f, s = 0.0f;
    for (int t = g0; t < g1; t++) {
      const int c = perm[pb + t];
      a += wts[pb + c];
      s += LOAD_ELEM(Q, q + c);
    }
    const float qs = s * (1.0f / a);
    for (int t = g0; t < g1; t++) {
      const int c = perm[pb + t];
      x[c] = qs * wts[pb + c];
    }
  }
}
#endif

/* Rows as NV vectors of VW floats (VW: the device's vector width, as the
 * rows kernel's), zero past D. */
#define NV ((D + VW - 1) / VW)
#if DTYPE == 0
#define LOADV(p, i) vloadV(0, (p) + (i))
#elif DTYPE == 1
#define LOADV(p, i) vload_halfV(0, (__global const half *)(p) + (i))
#else
#define LOADV(p, i) as_floatV(convert_uintV(vloadV(0, (p) + (i))) << 16)
#endif
inline void bwd_row(__global const elem_t *p, ulong at, floatV *r) {
  for (int v = 0; v < NV; v++) {
    if (v * VW + VW <= D) {
      r[v] = LOADV(p, at + v * VW);
    } else {
      float t[VW];
      for (int x = 0; x < VW; x++) t[x] = v * VW + x < D ? LOAD_ELEM(p, at + v * VW + x) : 0.0f;
      r[v] = vloadV(0, t);
    }
  }
}
inline void bwd_row32(__global const float *p, ulong at, floatV *r) {
  for (int v = 0; v < NV; v++) {
    if (v * VW + VW <= D) {
      r[v] = vloadV(0, p + at + v * VW);
    } else {
      float t[VW];
      for (int x = 0; x < VW; x++) t[x] = v * VW + x < D ? p[at + v * VW + x] : 0.0f;
      r[v] = vloadV(0, t);
    }
  }
}
inline void bwd_store(__global elem_t *p, ulong at, const floatV *r, float mul) {
  for (int v = 0; v < NV; v++) {
    float t[VW];
    vstoreV(mul * r[v], 0, t);
    for (int x = 0; x < VW && v * VW + x < D; x++) STORE_ELEM(p, at + v * VW + x, t[x]);
  }
}
#if PROJ
/* global size (rows rounded up, batch * heads). Pm: [heads][2][D][D], M_h
 * then M_h^T; Qx[i][c] = sum_k Q[i][k] M_h[k][c] = Q_i . (M_h^T)[c]. */
__kernel void da_bwd_qproj(__global const elem_t *Q, __global const float *Pm,
                           __global float *Qx, int seq_q, int heads, long qs0, long qs1, long qs2,
                           ulong qoff) {
  const int i = get_global_id(0);
  if (i >= seq_q) return;
  const int bh = get_global_id(1), b = bh / heads, h = bh - b * heads;
  floatV qr[NV], mr[NV];
  bwd_row(Q, bwd_at(qoff, qs0, qs1, qs2, b, h, i), qr);
  __global float *x = Qx + ((ulong)bh * seq_q + i) * D;
  for (int c = 0; c < D; c++) {
    bwd_row32(Pm, (((ulong)h * 2 + 1) * D + c) * D, mr);
    floatV sv = (floatV)(0.0f);
    for (int v = 0; v < NV; v++) sv = fma(qr[v], mr[v], sv);
    x[c] = hsumV(sv);
  }
}
#endif

#if G > 1 || PROJ
#define LOAD_QROW(i, r) bwd_row32(Qx, ((ulong)bh * seq_q + (i)) * D, r)
#else
#define LOAD_QROW(i, r) bwd_row(Q, bwd_at(qoff, qs0, qs1, qs2, b, h, (i)), r)
#endif

/* global size (keys rounded up, kv heads, batch). The rows that see key j
 * (visible keys of row i: [i + off - wl, i + off + wr], -1 unbounded). */
__kernel void da_bwd_dkv(__global const elem_t *Q, __global const float *Qx,
                         __global const elem_t *K, __global const elem_t *V,
                         __global const elem_t *dO, __global const float *lse,
                         __global const float *Dv, __global elem_t *dK, __global elem_t *dV,
                         int seq_q, int seq_k, int heads, int kvh, int wl, int wr, float c2,
                         float sc, long qs0, long qs1, long qs2, ulong qoff, long ks0, long ks1,
                         long ks2, ulong koff, long vs0, long vs1, long vs2, ulong voff, long os0,
                         long os1, long os2, ulong dooff, ulong lseoff, ulong dkoff,
                         ulong dvoff) {
  const int j = get_global_id(0);
  if (j >= seq_k) return;
  const int kh = get_global_id(1), b = get_global_id(2);
  floatV kr[NV], vr[NV], qr[NV], gr[NV], dk[NV], dv[NV];
  bwd_row(K, bwd_at(koff, ks0, ks1, ks2, b, kh, j), kr);
  bwd_row(V, bwd_at(voff, vs0, vs1, vs2, b, kh, j), vr);
  for (int v = 0; v < NV; v++) dk[v] = dv[v] = (floatV)(0.0f);
  const long off = (long)seq_k - seq_q;
  long ilo = 0, ihi = (long)seq_q - 1;
  if (wr >= 0) ilo = max(ilo, (long)j - off - wr);
  if (wl >= 0) ihi = min(ihi, (long)j - off + wl);
  const int hpk = heads / kvh;
  for (int hh = 0; hh < hpk; hh++) {
    const int h = kh * hpk + hh, bh = b * heads + h;
    for (long i = ilo; i <= ihi; i++) {
      const float L = lse[lseoff + (ulong)bh * seq_q + i];
      if (L == -INFINITY) continue; /* a row that sees no key */
      LOAD_QROW(i, qr);
      bwd_row(dO, bwd_at(dooff, os0, os1, os2, b, h, i), gr);
      floatV sv = (floatV)(0.0f), pv = (floatV)(0.0f);
      for (int v = 0; v < NV; v++) {
        sv = fma(qr[v], kr[v], sv);
        pv = fma(gr[v], vr[v], pv);
      }
      const float p = exp2(fma(hsumV(sv), c2, -L * M_LOG2E_F));
      const float ds = p * (hsumV(pv) - Dv[(ulong)bh * seq_q + i]);
      for (int v = 0; v < NV; v++) {
        dv[v] = fma((floatV)(p), gr[v], dv[v]);
        dk[v] = fma((floatV)(ds), qr[v], dk[v]);
      }
    }
  }
  bwd_store(dK, bwd_at(dkoff, ks0, ks1, ks2, b, kh, j), dk, sc);
  bwd_store(dV, bwd_at(dvoff, vs0, vs1, vs2, b, kh, j), dv, 1.0f);
}

/* global size (rows rounded up, heads, batch) */
__kernel void da_bwd_dq(__global const elem_t *Q, __global const float *Qx,
                        __global const elem_t *K, __global const elem_t *V,
                        __global const elem_t *dO, __global const float *lse,
                        __global const float *Dv, __global elem_t *dQ,
                        __global const int *perm, __global const float *wts, int seq_q,
                        int seq_k, int heads, int kvh, int wl, int wr, float c2, float sc,
                        int n_tiles, int hb, long qs0, long qs1, long qs2, ulong qoff, long ks0,
                        long ks1, long ks2, ulong koff, long vs0, long vs1, long vs2, ulong voff,
                        long os0, long os1, long os2, ulong dooff, ulong lseoff, ulong dqoff,
                        __global const float *Pm) {
  const int i = get_global_id(0);
  if (i >= seq_q) return;
  const int h = get_global_id(1), b = get_global_id(2), bh = b * heads + h;
  const int kh = h / (heads / kvh);
  floatV qr[NV], gr[NV], kr[NV], vr[NV], e[NV];
  for (int v = 0; v < NV; v++) e[v] = (floatV)(0.0f);
  const float L = lse[lseoff + (ulong)bh * seq_q + i];
  if (L != -INFINITY) { /* else a row that sees no key: a zero row */
    LOAD_QROW(i, qr);
    bwd_row(dO, bwd_at(dooff, os0, os1, os2, b, h, i), gr);
    const float Dr = Dv[(ulong)bh * seq_q + i], l2 = L * M_LOG2E_F;
    const long diag = (long)i + seq_k - seq_q;
    long lo = 0, hi = (long)seq_k - 1;
    if (wl >= 0) lo = max(lo, diag - wl);
    if (wr >= 0) hi = min(hi, diag + wr);
    for (long j = lo; j <= hi; j++) {
      bwd_row(K, bwd_at(koff, ks0, ks1, ks2, b, kh, j), kr);
      bwd_row(V, bwd_at(voff, vs0, vs1, vs2, b, kh, j), vr);
      floatV sv = (floatV)(0.0f), pv = (floatV)(0.0f);
      for (int v = 0; v < NV; v++) {
        sv = fma(qr[v], kr[v], sv);
        pv = fma(gr[v], vr[v], pv);
      }
      const float ds = exp2(fma(hsumV(sv), c2, -l2)) * (hsumV(pv) - Dr);
      for (int v = 0; v < NV; v++) e[v] = fma((floatV)(ds), kr[v], e[v]);
    }
  }
  const ulong qa = bwd_at(dqoff, qs0, qs1, qs2, b, h, i);
#if PROJ
  for (int c = 0; c < D; c++) { /* dQ[c] = s E . M_h[c] */
    bwd_row32(Pm, ((ulong)h * 2 * D + c) * D, qr); /* qr is free here */
    floatV sv = (floatV)(0.0f);
    for (int v = 0; v < NV; v++) sv = fma(e[v], qr[v], sv);
    STORE_ELEM(dQ, qa + c, sc * hsumV(sv));
  }
#elif G > 1
  __private const float *ef = (__private const float *)e;
  const ulong pb = ((ulong)bh * n_tiles + (ulong)(i / hb)) * D;
  for (int g0 = 0; g0 < D; g0 += G) {
    const int g1 = min(g0 + G, D);
    float a = 0.0f, t = 0.0f;
    for (int x = g0; x < g1; x++) {
      const int c = perm[pb + x];
      const float w = wts[pb + c]; /* a_c, by column */
      a += w;
      t = fma(w, ef[c], t);
    }
    const float v = sc * (t * (1.0f / a));
    for (int x = g0; x < g1; x++) STORE_ELEM(dQ, qa + perm[pb + x], v);
  }
#else
  bwd_store(dQ, qa, e, sc);
#endif
}
