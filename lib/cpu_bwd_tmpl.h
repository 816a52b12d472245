/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Template of the backward pass's compute items (lib/cpu_bwd.c includes it
 * once portably and once under an AVX2+FMA target), with
 *   BW(name)  the name of this inclusion's copy of a function,
 *   BWL       floats per vector (4, 8 or 16),
 *   BWNV      vectors of columns a product keeps in registers per output row,
 *   BWRO      output rows a product computes at a time.
 * Everything here is static. Blocks: BKB keys x QB query rows, all arrays
 * f32 in the thread's scratch (offsets in bwd_job), rows padded to
 * multiples of 16 floats (64 bytes) with zeros, so the vector loops need
 * no tails.
 *
 * Per (query block, key block) pair (SPEC 1b): S = Qs Kf^T over the fused
 * columns (all head_dim columns when G = 1), P = 2^(qmul S - LSE log2 e) on
 * visible keys (0 elsewhere and on rows that see no key), dP = dO V^T,
 * dS = P o (dP - D).
 */

#ifndef BW_UNROLL
#  if defined(__clang__)
#    define BW_UNROLL _Pragma("clang loop unroll(full)")
#  elif defined(__GNUC__)
#    define BW_UNROLL _Pragma("GCC unroll 16")
#  else
#    define BW_UNROLL
#  endif
#endif

#if defined(__GNUC__)
/* BWL floats per vector: 8 under AVX2, 4 (SSE, NEON, ...) otherwise */
typedef float BW(vf) __attribute__((vector_size(BWL * 4), may_alias));
typedef int32_t BW(vi) __attribute__((vector_size(BWL * 4), may_alias));

static inline BW(vf) BW(splat)(float x) { return (BW(vf)){0} + x; }
static inline BW(vf) BW(sel)(BW(vi) m, BW(vf) a, BW(vf) b) {
  return (BW(vf))(((BW(vi))a & m) | ((BW(vi))b & ~m));
}

/* 2^x, x clamped to [-127, 127], NaN kept: x = n + r, r in [-0.5, 0.5], 2^r
 * by lib/cpu_kern_tmpl.h's degree-5 polynomial (relative error < 1e-7), 2^n
 * built in the exponent bits (n = -127 gives +0). */
static inline BW(vf) BW(exp2v)(BW(vf) x) {
  x = BW(sel)(x > 127.0f, BW(splat)(127.0f), x);
  x = BW(sel)(x < -127.0f, BW(splat)(-127.0f), x);
  BW(vf) t = x + 12582912.0f; /* 1.5 * 2^23: round to nearest integer */
  BW(vf) n = t - 12582912.0f;
  BW(vf) r = x - n;
  BW(vf) p = BW(splat)(1.3264507262e-03f);
  p = p * r + 9.6714903692e-03f;
  p = p * r + 5.5507340863e-02f;
  p = p * r + 2.4022242477e-01f;
  p = p * r + 6.9314697764e-01f;
  p = p * r + 1.0f;
  BW(vi) e = ((BW(vi))t - 0x4B400000 + 127) << 23;
  return p * (BW(vf))e;
}

/* row[0..BKB) = visible j in [lo, hi] ? 2^(qmul row[j] - l2) : 0 */
static inline void BW(softmax_row)(float *row, float qmul, float l2, long lo, long hi) {
  const BW(vf) qv = BW(splat)(qmul), lv = BW(splat)(l2);
  BW(vi) j;
  for (int l = 0; l < BWL; l++) j[l] = l;
  for (int u = 0; u < BKB / BWL; u++, j += BWL) {
    BW(vf) e = BW(exp2v)(qv * *(BW(vf) *)(row + BWL * u) - lv);
    BW(vi) m = (j >= (int)lo) & (j <= (int)hi);
    *(BW(vf) *)(row + BWL * u) = (BW(vf))((BW(vi))e & m);
  }
}

/* Register-blocked product over one chunk of nv vectors of columns:
 * C[o][..] (init: =, else +=) sum_{i < nin} A[o*ao + i*ai] B[i*ldb + ..],
 * for o < nout, RO output rows at a time sharing the loads of B. A zero
 * A element (a masked P or dS) is skipped. Inlined with nv constant, so
 * the accumulators stay in registers. */
static inline __attribute__((always_inline)) void BW(gemm_chunk)(
    const int nv, int nout, int nin, const float *restrict A, size_t ao, size_t ai,
    const float *restrict B, size_t ldb, float *restrict C, size_t ldc, int init) {
  int o = 0;
  for (; o + BWRO <= nout; o += BWRO) {
    BW(vf) acc[BWRO][8]; /* BWNV <= 8; the rest chunks up to 7 */
    BW_UNROLL for (int t = 0; t < BWRO; t++)
      BW_UNROLL for (int u = 0; u < nv; u++)
        acc[t][u] = init ? BW(splat)(0.0f) : *(const BW(vf) *)(C + (size_t)(o + t) * ldc + u * BWL);
    for (int i = 0; i < nin; i++) {
      float x[BWRO];
      int nz = 0;
      BW_UNROLL for (int t = 0; t < BWRO; t++) {
        x[t] = A[(size_t)(o + t) * ao + (size_t)i * ai];
        nz |= x[t] != 0.0f;
      }
      if (!nz) continue;
      const float *b = B + (size_t)i * ldb;
      BW_UNROLL for (int t = 0; t < BWRO; t++) {
        const BW(vf) xv = BW(splat)(x[t]);
        BW_UNROLL for (int u = 0; u < nv; u++) acc[t][u] += xv * *(const BW(vf) *)(b + u * BWL);
      }
    }
    BW_UNROLL for (int t = 0; t < BWRO; t++)
      BW_UNROLL for (int u = 0; u < nv; u++) *(BW(vf) *)(C + (size_t)(o + t) * ldc + u * BWL) = acc[t][u];
  }
  for (; o < nout; o++) {
    BW(vf) acc[8];
    BW_UNROLL for (int u = 0; u < nv; u++)
      acc[u] = init ? BW(splat)(0.0f) : *(const BW(vf) *)(C + (size_t)o * ldc + u * BWL);
    for (int i = 0; i < nin; i++) {
      const float x = A[(size_t)o * ao + (size_t)i * ai];
      if (x == 0.0f) continue;
      const BW(vf) xv = BW(splat)(x);
      const float *b = B + (size_t)i * ldb;
      BW_UNROLL for (int u = 0; u < nv; u++) acc[u] += xv * *(const BW(vf) *)(b + u * BWL);
    }
    BW_UNROLL for (int u = 0; u < nv; u++) *(BW(vf) *)(C + (size_t)o * ldc + u * BWL) = acc[u];
  }
}

/* The product over ncols columns (a multiple of 16): chunks of BWNV vectors,
 * then the rest with a constant vector count each. */
static void BW(gemm)(int nout, int nin, const float *A, size_t ao, size_t ai, const float *B,
                     size_t ldb, int ncols, float *C, size_t ldc, int init) {
  int c0 = 0;
  for (; c0 + BWNV * BWL <= ncols; c0 += BWNV * BWL)
    BW(gemm_chunk)(BWNV, nout, nin, A, ao, ai, B + c0, ldb, C + c0, ldc, init);
  switch ((ncols - c0) / BWL) {
#define BW_REST(n)                                                                          \
  case n: BW(gemm_chunk)(n, nout, nin, A, ao, ai, B + c0, ldb, C + c0, ldc, init); break;
    BW_REST(1) BW_REST(2) BW_REST(3) BW_REST(4) BW_REST(5) BW_REST(6) BW_REST(7)
#undef BW_REST
  default: break;
  }
}
#else
static void BW(gemm)(int nout, int nin, const float *A, size_t ao, size_t ai, const float *B,
                     size_t ldb, int ncols, float *C, size_t ldc, int init) {
  for (int o = 0; o < nout; o++) {
    float *c = C + (size_t)o * ldc;
    if (init)
      for (int j = 0; j < ncols; j++) c[j] = 0.0f;
    for (int i = 0; i < nin; i++) {
      const float x = A[(size_t)o * ao + (size_t)i * ai];
      if (x != 0.0f)
        for (int j = 0; j < ncols; j++) c[j] += x * B[(size_t)i * ldb + j];
    }
  }
}
static inline void BW(softmax_row)(float *row, float qmul, float l2, long lo, long hi) {
  for (int j = 0; j < BKB; j++)
    row[j] = j >= lo && j <= hi ? exp2f(qmul * row[j] - l2) : 0.0f;
}
#endif

/* P (in S) and dS (in dP) of rows 0..nr-1 of the query block at i0 against
 * the key block at j0 (nk keys): qs [QB][np], kft [np][BKB], dob [QB][dp],
 * vt [dp][BKB]. Rows whose LSE is -inf (no key) get P = dS = 0. Returns
 * whether any P may be nonzero. */
static int BW(block_grads)(const bwd_job *J, long i0, int nr, long j0, int nk, const float *qs,
                           const float *kft, const float *dob, const float *vt,
                           const float *lse2, const float *Dr, float *S, float *dP) {
  BW(gemm)(nr, J->ng, qs, (size_t)J->np, 1, kft, BKB, BKB, S, BKB, 1);
  BW(gemm)(nr, J->d, dob, (size_t)J->dp, 1, vt, BKB, BKB, dP, BKB, 1);
  int any = 0;
  for (int r = 0; r < nr; r++) {
    float *srow = S + (size_t)r * BKB, *drow = dP + (size_t)r * BKB;
    long lo = bwd_jlo(J, i0 + r) - j0, hi = bwd_jhi(J, i0 + r) - j0;
    if (hi > nk - 1) hi = nk - 1;
    if (lo < 0) lo = 0;
    if (lse2[r] == -INFINITY || lo > hi) {
      memset(srow, 0, BKB * sizeof(float));
      memset(drow, 0, BKB * sizeof(float));
      continue;
    }
    any = 1;
    BW(softmax_row)(srow, J->qmul, lse2[r], lo, hi);
    const float D = Dr[r];
    for (int j = 0; j < BKB; j++) drow[j] = srow[j] * (drow[j] - D);
  }
  return any;
}

/* The projection strategy's products (SPEC 1c), each output an f32 sum of
 * fused multiply-adds in a fixed order (the order of the scalar loops they
 * replace: the same bits on every ISA), kept as independent sums so that
 * they pipeline (and vectorize) instead of waiting on one chain.
 * proj_fwd: out[j*os + g*ogs] = sum_{c < d} x[j*xs + c] M[c][g] (c in
 * order), j < n, g < R: Q A_h, K B_h. GCC's -O2 does not vectorize a loop
 * whose count is unknown (R, d): these two ask for it (fmaf vectorizes to
 * vector FMAs where the ISA has them: the same values). */
#if defined(__GNUC__) && !defined(__clang__)
#  define BW_VECTORIZE __attribute__((optimize("tree-vectorize", "vect-cost-model=dynamic")))
#else
#  define BW_VECTORIZE
#endif
static BW_VECTORIZE void BW(proj_fwd)(const float *x, size_t xs, int n, const float *M, int d, int R,
                         float *out, size_t os, size_t ogs) {
  float acc[256]; /* R <= head_dim <= 256 */
  for (int j = 0; j < n; j++) {
    const float *xr = x + (size_t)j * xs;
    for (int g = 0; g < R; g++) acc[g] = 0.0f;
    for (int c = 0; c < d; c++) {
      const float xc = xr[c];
      const float *m = M + (size_t)c * R;
      for (int g = 0; g < R; g++) acc[g] = fmaf(xc, m[g], acc[g]);
    }
    for (int g = 0; g < R; g++) out[(size_t)j * os + (size_t)g * ogs] = acc[g];
  }
}

/* proj_bwd: y_c = sum_{g < R} a[j*as + g] M[c][g] (g in order), c < d, for
 * rows j < n: out[j*os + c] = s y_c, or += y_c (add): dQ = s dQ' A_h^T,
 * dK += dK'_h B_h^T. */
static BW_VECTORIZE void BW(proj_bwd)(const float *a, int n, size_t as, const float *M, int d, int R, float s,
                         int add, float *out, size_t os) {
  float acc[256]; /* d <= 256 */
  for (int j = 0; j < n; j++) {
    const float *ar = a + (size_t)j * as;
    float *o = out + (size_t)j * os;
    for (int c = 0; c < d; c++) acc[c] = 0.0f;
    for (int g = 0; g < R; g++) {
      const float ag = ar[g];
      for (int c = 0; c < d; c++) acc[c] = fmaf(ag, M[(size_t)c * R + g], acc[c]);
    }
    if (add)
      for (int c = 0; c < d; c++) o[c] += acc[c];
    else
      for (int c = 0; c < d; c++) o[c] = s * acc[c];
  }
}

#undef BW_VECTORIZE

/* dK and dV of key block kb of (batch, kv head): item = (b*KH + kh)*nkb + kb.
 * Over the hpk query heads of the kv head and every query block that sees a
 * key of the block: dV += P^T dO, dKf += dS^T Qs (scattered back to K's
 * columns through the tile's grouping: dK[j][c] += a_c dKf[j][g(c)]). */
static void BW(dkv_item)(void *arg, int tid, long item) {
  const bwd_job *J = arg;
  const int kb = (int)(item % J->nkb);
  const long bk = item / J->nkb;
  const int b = (int)(bk / J->KH), kh = (int)(bk % J->KH);
  const long j0 = (long)kb * BKB;
  const int nk = J->Sk - j0 < BKB ? (int)(J->Sk - j0) : BKB;
  float *sb = J->scratch[tid];
  float *kx = sb + J->o_kx, *kft = sb + J->o_kft, *kf = sb + J->o_kf, *vt = sb + J->o_vt;
  float *qs = sb + J->o_qs, *dob = sb + J->o_do, *S = sb + J->o_s, *dP = sb + J->o_dp;
  float *dka = sb + J->o_acc, *dva = sb + J->o_dva, *dkf = sb + J->o_dkf, *row = sb + J->o_row;
  float *lse2 = sb + J->o_lse, *Dr = sb + J->o_dd;
  const int dp = J->dp, np = J->np, d = J->d;
  bwd_load_kv(J, b, kh, j0, nk, kx, vt, row);
  if (J->G == 1 && !J->R) bwd_fuse_k(J, kx, NULL, NULL, kft, NULL);
  memset(dka, 0, (size_t)BKB * dp * sizeof(float));
  memset(dva, 0, (size_t)BKB * dp * sizeof(float));
  for (int hh = 0; hh < J->hpk; hh++) {
    const int h = kh * J->hpk + hh;
    const long bh = (long)b * J->H + h;
    const float *Bm = NULL; /* the projection strategy: this head's B */
    if (J->R) {
      Bm = J->pj + ((size_t)h * 2 + 1) * (size_t)d * J->R;
      bwd_proj_k(J, h, kx, kft, NULL);
      memset(dkf, 0, (size_t)BKB * np * sizeof(float));
    }
    int cur_tile = -1;
    const int *gi = NULL;
    const float *qco = NULL, *kco = NULL;
    for (int qb = 0; qb < J->nqb; qb++) {
      const long i0 = (long)qb * J->QB;
      const int nr = J->Sq - i0 < J->QB ? (int)(J->Sq - i0) : J->QB;
      /* rows see keys [jlo, jhi], both non-decreasing in the row */
      if (bwd_jhi(J, i0 + nr - 1) < j0 || bwd_jlo(J, i0) > j0 + nk - 1) continue;
      if (J->G > 1) {
        const int tile = (int)(i0 / J->hb);
        if (tile != cur_tile) {
          size_t go = ((size_t)bh * J->nt + (size_t)tile) * (size_t)d;
          gi = J->gidx + go, qco = J->qco + go, kco = J->kco + go;
          bwd_fuse_k(J, kx, gi, kco, kft, NULL);
          cur_tile = tile;
        }
      }
      bwd_load_rows(J, b, h, i0, nr, gi, qco, qs, dob, lse2, Dr, row);
      if (!BW(block_grads)(J, i0, nr, j0, nk, qs, kft, dob, vt, lse2, Dr, S, dP)) continue;
      /* dV += P^T dO; dK += dS^T Q (G = 1) or dKf = dS^T Qs */
      BW(gemm)(nk, nr, S, 1, BKB, dob, (size_t)dp, dp, dva, (size_t)dp, 0);
      if (J->R) { /* dK' = dS^T Q', over the head's query blocks */
        BW(gemm)(nk, nr, dP, 1, BKB, qs, (size_t)np, np, dkf, (size_t)np, 0);
      } else if (J->G == 1) {
        BW(gemm)(nk, nr, dP, 1, BKB, qs, (size_t)np, np, dka, (size_t)dp, 0);
      } else {
        BW(gemm)(nk, nr, dP, 1, BKB, qs, (size_t)np, np, dkf, (size_t)np, 1);
        for (int j = 0; j < nk; j++) {
          const float *f = dkf + (size_t)j * np;
          float *a = dka + (size_t)j * dp;
          for (int c = 0; c < d; c++) a[c] += kco[c] * f[gi[c]];
        }
      }
    }
    if (J->R) /* dK += dK'_h B_h^T */
      BW(proj_bwd)(dkf, nk, (size_t)np, Bm, d, J->R, 1.0f, 1, dka, (size_t)dp);
  }
  (void)kf;
  bwd_store_kv(J, b, kh, j0, nk, dka, dva, row);
}

/* dQ of query block qb of (batch, head): item = (b*H + h)*nqb + qb.
 * dQs = sum over key blocks of dS Kf, then dQ[r][c] = scale dQs[r][g(c)] / A_g. */
static void BW(dq_item)(void *arg, int tid, long item) {
  const bwd_job *J = arg;
  const int qb = (int)(item % J->nqb);
  const long bh = item / J->nqb;
  const int b = (int)(bh / J->H), h = (int)(bh % J->H), kh = h / J->hpk;
  const long i0 = (long)qb * J->QB;
  const int nr = J->Sq - i0 < J->QB ? (int)(J->Sq - i0) : J->QB;
  float *sb = J->scratch[tid];
  float *kx = sb + J->o_kx, *kft = sb + J->o_kft, *kf = sb + J->o_kf, *vt = sb + J->o_vt;
  float *qs = sb + J->o_qs, *dob = sb + J->o_do, *S = sb + J->o_s, *dP = sb + J->o_dp;
  float *dqs = sb + J->o_acc, *row = sb + J->o_row;
  float *lse2 = sb + J->o_lse, *Dr = sb + J->o_dd;
  const int np = J->np, d = J->d;
  const int *gi = NULL;
  const float *qco = NULL, *kco = NULL;
  if (J->G > 1) {
    size_t go = ((size_t)bh * J->nt + (size_t)(i0 / J->hb)) * (size_t)d;
    gi = J->gidx + go, qco = J->qco + go, kco = J->kco + go;
  }
  bwd_load_rows(J, b, h, i0, nr, gi, qco, qs, dob, lse2, Dr, row);
  memset(dqs, 0, (size_t)J->QB * np * sizeof(float));
  long kbeg = bwd_jlo(J, i0), kend = bwd_jhi(J, i0 + nr - 1); /* keys some row sees */
  for (long j0 = kbeg / BKB * BKB; j0 <= kend; j0 += BKB) {
    const int nk = J->Sk - j0 < BKB ? (int)(J->Sk - j0) : BKB;
    bwd_load_kv(J, b, kh, j0, nk, kx, vt, row);
    const float *kr = kx; /* Kf rows: K itself when G = 1 */
    if (J->R) {
      bwd_proj_k(J, h, kx, kft, kf);
      kr = kf;
    } else if (J->G == 1) {
      bwd_fuse_k(J, kx, NULL, NULL, kft, NULL);
    } else {
      bwd_fuse_k(J, kx, gi, kco, kft, kf);
      kr = kf;
    }
    if (!BW(block_grads)(J, i0, nr, j0, nk, qs, kft, dob, vt, lse2, Dr, S, dP)) continue;
    BW(gemm)(nr, nk, dP, BKB, 1, kr, (size_t)np, np, dqs, (size_t)np, 0); /* dQs += dS Kf */
  }
  bwd_store_q(J, b, h, i0, nr, gi, qco, dqs, row);
}
