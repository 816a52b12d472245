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
 * VW (4, 8 or 16), CAUSAL, DTYPE, ACC_LOCAL. */

#define DA_CAT_(a, b) a##b
#define DA_CAT(a, b) DA_CAT_(a, b)
#define floatV DA_CAT(float, VW)
#define intV DA_CAT(int, VW)
#define vloadV DA_CAT(vload, VW)
#define vstoreV DA_CAT(vstore, VW)
#define NV (DP / VW)
#define NB (BN / VW)
#if G == 1
#define DQ D
#else
#define DQ NG
#endif

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

/* Kb[bk][jt][c][jj] = K[bk][jt*BN+jj][c], Vb[bk][jt][jj][c] = V[bk][jt*BN+jj][c],
 * zero past seq_k and past D. Global size (DP, nkt*BN, batch*kv_heads). */
__kernel void da_kv_prep(__global const elem_t *K, __global const elem_t *V,
                         __global float *Kb, __global float *Vb, int seq_k, int nkt) {
  const int c = get_global_id(0), j = get_global_id(1), bk = get_global_id(2);
  if (c >= DP || j >= nkt * BN) return;
  const int jt = j / BN, jj = j - jt * BN;
  const int in = c < D && j < seq_k;
  const size_t src = ((size_t)bk * seq_k + j) * D + c;
  const size_t tile = (size_t)bk * nkt + jt;
  if (c < D) Kb[(tile * D + c) * BN + jj] = in ? LOAD_ELEM(K, src) : 0.0f;
  Vb[(tile * BN + jj) * DP + c] = in ? LOAD_ELEM(V, src) : 0.0f;
}

__kernel __attribute__((reqd_work_group_size(BM, 1, 1)))
void da_attn(__global const elem_t *Q, __global const float *Kb, __global const float *Vb,
             __global elem_t *O, __global const int *perm, __global const float *wts,
             int seq_q, int seq_k, int heads, int kv_heads, int n_tiles, int nkt, float qscale) {
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
  const int off = seq_k - seq_q;
  const size_t qbase = ((size_t)b * heads + h) * (size_t)seq_q * D;
  const size_t ktile0 = ((size_t)b * kv_heads + kvh) * (size_t)nkt;
  const int live = i < seq_q;

  float q[DQ];
#if G == 1
  for (int k = 0; k < D; k++)
    q[k] = live ? LOAD_ELEM(Q, qbase + (size_t)i * D + k) * qscale : 0.0f;
#else
  {
    const size_t pbase = (((size_t)b * heads + h) * n_tiles + r0 / HB) * D;
    for (int e = lid; e < D; e += BM) {
      lp[e] = perm[pbase + e];
      lw[e] = wts[pbase + e];
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int g = lid; g < NG; g += BM) {
      float s = 0.0f;
      for (int t = g * G; t < min(g * G + G, D); t++) s += lw[t];
      linv[g] = 1.0f / s;
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int g = 0; g < NG; g++) {
      float s = 0.0f;
      if (live)
        for (int t = g * G; t < min(g * G + G, D); t++)
          s += LOAD_ELEM(Q, qbase + (size_t)i * D + lp[t]);
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

#if CAUSAL
  const int kend = min(seq_k, r0 + BM + off);
#else
  const int kend = seq_k;
#endif
  for (int j0 = 0; j0 < kend; j0 += BN) {
    const int nj = min(BN, seq_k - j0);
    barrier(CLK_LOCAL_MEM_FENCE);
    __global const float *Kt = Kb + (ktile0 + j0 / BN) * (size_t)(D * BN);
    __global const float *Vs = Vb + (ktile0 + j0 / BN) * (size_t)(BN * DP);
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
#if CAUSAL
    const int lim = min(nj, i + off + 1 - j0);
#else
    const int lim = nj;
#endif
    float mx = -INFINITY;
#pragma unroll
    for (int v = 0; v < NB; v++) {
      s[v] = select(s[v], (floatV)(-INFINITY), (IOTA + v * VW) >= (intV)(lim));
      mx = fmax(mx, hmaxV(s[v]));
    }
    const float mn = fmax(m, mx);
    if (mn > -INFINITY) {
      const float corr = exp2(m - mn);
      float p[BN];
      float ps = 0.0f;
#pragma unroll
      for (int v = 0; v < NB; v++) {
        const floatV pv = exp2(s[v] - (floatV)(mn));
        ps += hsumV(pv);
        vstoreV(pv, v, p);
      }
      l = l * corr + ps;
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
    /* A row that sees no key is zero; one that does divides by l even when
     * l is 0 or NaN (all logits -Inf or NaN), so the result is NaN as in
     * the float64 reference. */
#if CAUSAL
    const int nvis = min(seq_k, i + off + 1);
#else
    const int nvis = seq_k;
#endif
    const float inv = nvis > 0 ? 1.0f / l : 0.0f;
    float o[DP];
    for (int u = 0; u < NV; u++) vstoreV(ACC_GET(u) * (floatV)(inv), u, o);
    for (int k = 0; k < D; k++) STORE_ELEM(O, qbase + (size_t)i * D + k, o[k]);
  }
}
