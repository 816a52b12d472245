/* SPDX-License-Identifier: Apache-2.0 */
/* The pieces of the backward pass's tensor-core kernels, written once for
 * the atomic arrangement (cuda_bwd_mma.cuh: dac_bwd_mma_kernel) and the
 * split one (cuda_bwd_split.cuh: the dK/dV and the dQ kernels): the query
 * rows a key block sees and the keys a row block sees, a key block's
 * steps, the cp.async loads of K, V and of Q, dO, LSE, D, the mask of a
 * tile, a warp's fragment products over 16 rows (mma.sync m16n8k16 with
 * f32 accumulation, fed by ldmatrix with the forward's fragment patterns,
 * cuda_mma.cuh), P and dS, and the dK, dV store. Everything is inlined,
 * with compile-time trip counts; register arrays pass by reference and are
 * indexed by unrolled loops' counters only. Where two spellings of the
 * same code gave ptxas different allocations (registers, spills), the one
 * kept and why is said at the function; check a change with ptxas -v. */
#ifndef DA_CUDA_BWD_TILE_CUH
#define DA_CUDA_BWD_TILE_CUH

#include "cuda_bwd.cuh"
#include "cuda_mma.cuh"

template <typename T> __device__ __forceinline__ T bwd_to(float x);
template <> __device__ __forceinline__ __half bwd_to<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 bwd_to<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

/* The mask of a tile whose pairs are (key j0 + kl, query row i0 + rl) with
 * small kl, rl >= 0 (SPEC 1: the sequences and the window around the
 * diagonal i + seq_k - seq_q): the pair is visible when kl < kmax, rl <
 * rmax and dlo <= kl - rl <= dhi. Computed once a tile in 64 bits and
 * clamped into +-2^30 (kl - rl is far inside), so that the per-pair test
 * is four 32-bit comparisons. */
struct bwd_mask {
  int kmax, rmax, dlo, dhi;
};
__device__ __forceinline__ int bwd_clamp30(long long x) {
  return x < -(1LL << 30) ? -(1 << 30) : x > (1LL << 30) ? (1 << 30) : (int)x;
}
__device__ __forceinline__ bwd_mask bwd_mask_of(const dac_bwd_args &a, long long j0, long long i0) {
  const long long base = j0 - i0 - ((long long)a.seq_k - a.seq_q); /* key - diagonal at kl = rl = 0 */
  bwd_mask m;
  m.kmax = bwd_clamp30((long long)a.seq_k - j0);
  m.rmax = bwd_clamp30((long long)a.seq_q - i0);
  m.dlo = a.wl < 0 ? -(1 << 30) : bwd_clamp30(-(long long)a.wl - base);
  m.dhi = a.wr < 0 ? (1 << 30) : bwd_clamp30((long long)a.wr - base);
  return m;
}
__device__ __forceinline__ bool bwd_vis(const bwd_mask &m, int kl, int rl) {
  const int dd = kl - rl;
  return kl < m.kmax && rl < m.rmax && dd >= m.dlo && dd <= m.dhi;
}

/* A span of positions [lo, hi] (lo > hi: none) and the nb blocks of a
 * kernel's step that cover it from lo on */
struct bwd_span {
  int lo, hi, nb;
};
template <int B> __device__ __forceinline__ bwd_span bwd_span_of(long long lo, long long hi, int n) {
  bwd_span r;
  r.lo = (int)min(lo, (long long)n);
  r.hi = (int)max(hi, -1LL);
  r.nb = r.lo <= r.hi ? (r.hi - r.lo) / B + 1 : 0;
  return r;
}
/* The query rows that see a key of [j0, jl] (row i sees the keys
 * i + seq_k - seq_q - wl .. i + seq_k - seq_q + wr, a bound -1 unbounded),
 * in blocks of BR */
template <int BR> __device__ __forceinline__ bwd_span bwd_rows_of(const dac_bwd_args &a, int j0, int jl) {
  const long long off = (long long)a.seq_k - a.seq_q;
  long long lo = 0, hi = (long long)a.seq_q - 1;
  if (a.wr >= 0 && (long long)j0 - off - a.wr > lo) lo = (long long)j0 - off - a.wr;
  if (a.wl >= 0 && (long long)jl - off + a.wl < hi) hi = (long long)jl - off + a.wl;
  return bwd_span_of<BR>(lo, hi, a.seq_q);
}
/* The keys that a query row of [i0, il] sees, in blocks of BC. (The
 * window read into locals first: in bwd_rows_of's form ptxas spilled 16
 * bytes in the 8-warp dQ kernel at D = 128; each form is the one that
 * measured best with ptxas -v where it is used.) */
template <int BC> __device__ __forceinline__ bwd_span bwd_keys_of(const dac_bwd_args &a, int i0, int il) {
  const long long off = (long long)a.seq_k - a.seq_q;
  const int wl = a.wl, wr = a.wr, n = a.seq_k;
  long long lo = 0, hi = (long long)n - 1;
  if (wl >= 0 && i0 + off - wl > lo) lo = i0 + off - wl;
  if (wr >= 0 && il + off + wr < hi) hi = il + off + wr;
  return bwd_span_of<BC>(lo, hi, n);
}

/* K and V of kv head kh of batch b, keys j0..j0 + BC - 1, into Ks, Vs
 * [BC][LD] with cp.async (zeros past seq_k) */
template <typename T, int BC, int D, int LD, int NT>
__device__ __forceinline__ void bwd_load_keys(const dac_bwd_args &a, int b, int kh, int j0, T *Ks, T *Vs) {
  const T *ksrc = (const T *)a.k + ((long long)b * a.kst[0] + (long long)kh * a.kst[1]);
  const T *vsrc = (const T *)a.v + ((long long)b * a.vst[0] + (long long)kh * a.vst[1]);
  load_tile_s<T, BC, D, LD, NT>(Ks, ksrc, j0, a.seq_k, a.kst[2]);
  load_tile_s<T, BC, D, LD, NT>(Vs, vsrc, j0, a.seq_k, a.vst[2]);
}

/* The Q the logits use of head h of batch b: Q itself, or the expanded Qx
 * (G > 1, the projection strategy: dense [batch][heads][seq_q][D]); rs
 * its row stride */
template <typename T, int D>
__device__ __forceinline__ const T *bwd_q_src(const dac_bwd_args &a, int b, int h, long long &rs) {
  if (a.qx) {
    rs = D;
    return (const T *)a.qx + ((long long)b * a.heads + h) * a.seq_q * D;
  }
  rs = a.qst[2];
  return (const T *)a.q + ((long long)b * a.qst[0] + (long long)h * a.qst[1]);
}

/* Q (bwd_q_src), dO, LSE and D of head h of batch b, query rows i0..i0 +
 * BR - 1, into Qs, Gs [BR][LD] and Ls, Ds [BR], all with cp.async (zeros
 * past seq_q, whose pairs are masked), so that no thread waits on a
 * global load */
template <typename T, int BR, int D, int LD, int NT>
__device__ __forceinline__ void bwd_load_rows(const dac_bwd_args &a, int b, int h, int i0, T *Qs, T *Gs,
                                              float *Ls, float *Ds) {
  const long long bh = (long long)b * a.heads + h;
  long long qrs;
  const T *qsrc = bwd_q_src<T, D>(a, b, h, qrs);
  const T *gsrc = (const T *)a.dout + ((long long)b * a.ost[0] + (long long)h * a.ost[1]);
  load_tile_s<T, BR, D, LD, NT>(Qs, qsrc, i0, a.seq_q, qrs);
  load_tile_s<T, BR, D, LD, NT>(Gs, gsrc, i0, a.seq_q, a.ost[2]);
  for (int r = threadIdx.x; r < BR; r += NT) {
    const bool ok = i0 + r < a.seq_q;
    const long long at = ok ? bh * a.seq_q + i0 + r : 0;
    dac_cp_async<4>(Ls + r, a.lse + at, ok);
    dac_cp_async<4>(Ds + r, a.dsum + at, ok);
  }
}

/* The steps of a key block's kernel (the atomic one, the split dK/dV
 * one): the query heads of kv head kh in turn, h0 = kh hpk on, each over
 * the blocks of BR query rows from imin on that see a key of the block
 * (bwd_rows_of, up to imax); step it has head(it) and rows from row0(it),
 * n steps in all */
template <int BR> struct bwd_steps {
  int imin, imax, nsteps, n, h0;
  __device__ __forceinline__ int head(int it) const { return h0 + it / nsteps; }
  __device__ __forceinline__ int row0(int it) const { return imin + (it % nsteps) * BR; }
};
/* step it's rows (bwd_load_rows) into slot sl of Qs, Gs [2][BR][LD] and
 * Ls, Ds [2][BR] */
template <typename T, int BR, int D, int LD, int NT>
__device__ __forceinline__ void bwd_load_step(const dac_bwd_args &a, int b, const bwd_steps<BR> &st, int it,
                                              int sl, T *Qs, T *Gs, float *Ls, float *Ds) {
  bwd_load_rows<T, BR, D, LD, NT>(a, b, st.head(it), st.row0(it), Qs + sl * BR * LD, Gs + sl * BR * LD,
                                  Ls + sl * BR, Ds + sl * BR);
}
/* A key block's start: its steps, and K, V of keys j0..j0 + BC - 1 and
 * step 0 in shared memory (slot 0), landed and visible to the block */
template <typename T, int BC, int BR, int D, int LD, int NT>
__device__ __forceinline__ bwd_steps<BR> bwd_kblock_begin(const dac_bwd_args &a, int b, int kh, int j0, T *Ks,
                                                          T *Vs, T *Qs, T *Gs, float *Ls, float *Ds) {
  const bwd_span rows = bwd_rows_of<BR>(a, j0, min(j0 + BC, a.seq_k) - 1);
  bwd_steps<BR> st;
  st.imin = rows.lo, st.imax = rows.hi, st.nsteps = rows.nb;
  st.h0 = kh * (a.heads / a.kv_heads);
  st.n = st.nsteps * (a.heads / a.kv_heads);
  bwd_load_keys<T, BC, D, LD, NT>(a, b, kh, j0, Ks, Vs);
  if (st.n > 0) bwd_load_step<T, BR, D, LD, NT>(a, b, st, 0, 0, Qs, Gs, Ls, Ds);
  dac_cp_commit();
  dac_cp_wait<0>();
  __syncthreads();
  return st;
}

/* P and dS of a pair in place: s (its logit) becomes P = 2^(s sc_log2 -
 * l2), l2 its row's LSE log2 e, and dp (its dP) dS = P (dP - Dv), Dv its
 * row's D; both 0 unless vis (visible under the mask, and the row sees a
 * key: its LSE is not -inf). Dv by reference, read only for a visible
 * pair, as the kernels' own ?: did (a value read first changed ptxas's
 * allocation). */
__device__ __forceinline__ void bwd_pds(float &s, float &dp, bool vis, float sc_log2, float l2,
                                        const float &Dv) {
  const float p = vis ? dac_ex2(fmaf(s, sc_log2, -l2)) : 0.0f;
  dp = vis ? p * (dp - Dv) : 0.0f;
  s = p;
}

template <int N> __device__ __forceinline__ void bwd_zero(float (&x)[N][4]) {
#pragma unroll
  for (int i = 0; i < N; i++)
#pragma unroll
    for (int e = 0; e < 4; e++) x[i][e] = 0.0f;
}

/* C[0] = A0 B0^T and C[1] = A1 B1^T, in a warp: A0, A1 the warp's 16 rows
 * [16][K] from row r0 of a tile, B0, B1 N rows [N][K], all in shared
 * memory at row stride LD (through ldmatrix, B as the [n][k] operand);
 * C[p] [N/8][4], m16n8 accumulators. S^T = K Q^T, dP^T = V dO^T (the key
 * blocks' kernels) and S = Q K^T, dP = dO V^T (the dQ kernel). */
template <typename T, int K, int N, int LD>
__device__ __forceinline__ void bwd_mma_abt(float (&c)[2][N / 8][4], const T *A0, const T *A1, int r0,
                                            const T *B0, const T *B1, int lane) {
  typedef dac_mma_op<T> op;
  bwd_zero(c[0]);
  bwd_zero(c[1]);
#pragma unroll
  for (int kk = 0; kk < K / 16; kk++) {
    uint32_t a0[4], a1[4];
    ldsm_x4(a0, A0 + (r0 + lane % 16) * LD + kk * 16 + (lane / 16) * 8);
    ldsm_x4(a1, A1 + (r0 + lane % 16) * LD + kk * 16 + (lane / 16) * 8);
#pragma unroll
    for (int np = 0; np < N / 16; np++) {
      const int boff = (np * 16 + lane % 8 + (lane / 16) * 8) * LD + kk * 16 + ((lane / 8) % 2) * 8;
      uint32_t b0[4], b1[4];
      ldsm_x4(b0, B0 + boff);
      ldsm_x4(b1, B1 + boff);
      op::mma(c[0][2 * np], a0, b0[0], b0[1]);
      op::mma(c[0][2 * np + 1], a0, b0[2], b0[3]);
      op::mma(c[1][2 * np], a1, b1[0], b1[1]);
      op::mma(c[1][2 * np + 1], a1, b1[2], b1[3]);
    }
  }
}

/* P^T and dS^T in place of a warp's S^T (sp[0]) and dP^T (sp[1]) from
 * bwd_mma_abt, [16 keys][BR = 8 M rows]: keys kw0..kw0 + 15 and rows
 * 0..BR - 1 of the tile under mask mk, the rows' LSE (-inf: the row sees
 * no key) and D in Lc, Dc [BR]. With LDS > 0, dS also goes to dSs
 * [BR][LDS] as [row][key] (the atomic kernel's E = dS K reads it there).
 * FULL: the caller knows every pair of the tile visible (mk not read). */
template <int LDS, typename T, int M, bool FULL = false>
__device__ __forceinline__ void bwd_pds_t(float (&sp)[2][M][4], const bwd_mask &mk, const float *Lc,
                                          const float *Dc, float sc_log2, int kw0, int lane, T *dSs) {
  const int g4 = lane / 4, t4 = lane % 4;
#pragma unroll
  for (int nt = 0; nt < M; nt++)
#pragma unroll
    for (int e = 0; e < 4; e++) {
      const int kl = kw0 + g4 + 8 * (e >> 1), rl = nt * 8 + 2 * t4 + (e & 1);
      const float L = Lc[rl];
      bwd_pds(sp[0][nt][e], sp[1][nt][e], (FULL || bwd_vis(mk, kl, rl)) && L != -INFINITY, sc_log2,
              L * 1.4426950408889634f, Dc[rl]);
      if constexpr (LDS > 0) dSs[rl * LDS + kl] = bwd_to<T>(sp[1][nt][e]);
    }
}

/* The A fragment of k-slice kk of a warp's [16][K] f32 accumulators x
 * ([K/8][4]; the forward turns P into A likewise) */
template <typename T, int M>
__device__ __forceinline__ void bwd_afrag(uint32_t (&a)[4], const float (&x)[M][4], int kk) {
  typedef dac_mma_op<T> op;
  a[0] = op::pack(x[2 * kk][0], x[2 * kk][1]);
  a[1] = op::pack(x[2 * kk][2], x[2 * kk][3]);
  a[2] = op::pack(x[2 * kk + 1][0], x[2 * kk + 1][1]);
  a[3] = op::pack(x[2 * kk + 1][2], x[2 * kk + 1][3]);
}

/* acc[p] += X[p] B_p for p < NP (1 or 2), in a warp: X the last NP of x
 * ({P, dS}: both, or dS alone), the warp's [16][K] f32 accumulators as A
 * fragments (bwd_afrag), B_p [K][N] in shared memory at row stride LD
 * through ldmatrix .trans; acc[p] [N/8][4]. dV += P^T dO, dK += dS^T Q
 * (the key blocks' kernels) and dQ += dS K (the dQ kernel; B1 unused).
 * Written out for the two products rather than looped over p: the loop,
 * unrolled later, gave ptxas other addresses and the 8-warp dK/dV kernel
 * at D = 64 more spill loads. */
template <typename T, int NP, int K, int N, int LD, int NX>
__device__ __forceinline__ void bwd_mma_xb(float (&acc)[NP][N / 8][4], const float (&x)[NX][K / 8][4],
                                           const T *B0, const T *B1, int lane) {
  static_assert((NP == 1 || NP == 2) && NX >= NP, "bwd_mma_xb: 1 or 2 products, their A the last of x");
  typedef dac_mma_op<T> op;
#pragma unroll
  for (int kk = 0; kk < K / 16; kk++) {
    uint32_t af[NP][4];
    bwd_afrag<T>(af[0], x[NX - NP], kk);
    if constexpr (NP == 2) bwd_afrag<T>(af[1], x[NX - 1], kk);
#pragma unroll
    for (int dn = 0; dn < N / 16; dn++) {
      const int boff = (kk * 16 + lane % 8 + ((lane / 8) % 2) * 8) * LD + dn * 16 + (lane / 16) * 8;
      uint32_t bf[NP][4];
      ldsm_x4_t(bf[0], B0 + boff);
      if constexpr (NP == 2) ldsm_x4_t(bf[1], B1 + boff);
      op::mma(acc[0][2 * dn], af[0], bf[0][0], bf[0][1]);
      op::mma(acc[0][2 * dn + 1], af[0], bf[0][2], bf[0][3]);
      if constexpr (NP == 2) {
        op::mma(acc[1][2 * dn], af[1], bf[1][0], bf[1][1]);
        op::mma(acc[1][2 * dn + 1], af[1], bf[1][2], bf[1][3]);
      }
    }
  }
}

/* dK (scaled by sc) and dV of a warp's keys key0..key0 + 15 from its
 * accumulators dvk (dV, dK: bwd_mma_xb's), in the plan's dtype at K's and
 * V's strides; keys past seq_k are left alone */
template <typename T, int D>
__device__ __forceinline__ void bwd_store_dkv(const dac_bwd_args &a, int b, int kh, int key0,
                                              const float (&dvk)[2][D / 8][4], int lane) {
  typedef dac_mma_op<T> op;
  const int g4 = lane / 4, t4 = lane % 4;
  T *dkd = (T *)a.dk + ((long long)b * a.kst[0] + (long long)kh * a.kst[1]);
  T *dvd = (T *)a.dv + ((long long)b * a.vst[0] + (long long)kh * a.vst[1]);
#pragma unroll
  for (int hf = 0; hf < 2; hf++) {
    const int key = key0 + g4 + 8 * hf;
    if (key >= a.seq_k) continue;
#pragma unroll
    for (int nt = 0; nt < D / 8; nt++) {
      const int c = nt * 8 + 2 * t4;
      *reinterpret_cast<uint32_t *>(dkd + (long long)key * a.kst[2] + c) =
          op::pack(a.sc * dvk[1][nt][2 * hf], a.sc * dvk[1][nt][2 * hf + 1]);
      *reinterpret_cast<uint32_t *>(dvd + (long long)key * a.vst[2] + c) =
          op::pack(dvk[0][nt][2 * hf], dvk[0][nt][2 * hf + 1]);
    }
  }
}

#endif /* DA_CUDA_BWD_TILE_CUH */
