/* SPDX-License-Identifier: Apache-2.0 */
/* Tensor-core fused attention for f16/bf16 inputs, head_dim 64 and 128:
 * mma.sync m16n8k16 fed by ldmatrix, f32 accumulation, online softmax in
 * registers. Each warp owns 16 or 32 query rows; 64 keys per step, K and V
 * double-buffered in shared memory and brought in with cp.async one tile
 * ahead, so each key tile costs one barrier.
 * Grouped logits (G > 1): the fused Q tile (qs, width DQK = ng padded to 16)
 * is loaded like Q. Each warp builds its 16 keys of the next tile's Kf:
 * its raw K rows come in by cp.async, are transposed (ldmatrix .trans) into
 * K^T, and the rows of K^T named by the block's hash-tile permutation are
 * summed with their weights into Kf^T, with only __syncwarp between the
 * steps. The Q.K^T loop then runs over DQK columns instead of d, reading
 * Kf^T through ldmatrix .trans.
 *
 * The kernel and its launch templates; cuda_mma_f16.cu and cuda_mma_bf16.cu
 * instantiate them, one dtype each, so that make builds the two in
 * parallel, and cuda_mma.cu picks between them. */
#ifndef DA_CUDA_MMA_CUH
#define DA_CUDA_MMA_CUH

#include <math.h>

#include "cuda_dev.cuh"
#include "cuda_softmax.cuh"


template <typename T> struct dac_mma_op;
template <> struct dac_mma_op<__half> : dac_cvt<__half> {
  static __device__ __forceinline__ void mma(float *c, const uint32_t *a, uint32_t b0, uint32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, "
                 "{%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
};
template <> struct dac_mma_op<__nv_bfloat16> : dac_cvt<__nv_bfloat16> {
  static __device__ __forceinline__ void mma(float *c, const uint32_t *a, uint32_t b0, uint32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, "
                 "{%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
};

__device__ __forceinline__ void ldsm_x4(uint32_t *r, const void *p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(dac_smem_u32(p)));
}
__device__ __forceinline__ void ldsm_x4_t(uint32_t *r, const void *p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(dac_smem_u32(p)));
}
/* rows [row0, row0 + ROWS) of a [nrows][W] matrix into smem (row stride LD),
 * zero-filled past nrows. */
template <typename T, int ROWS, int W, int LD, int NT>
__device__ __forceinline__ void load_tile(T *dst, const T *src, int row0, int nrows) {
  constexpr int CPR = W / 8; /* 16-byte chunks per row */
#pragma unroll
  for (int i = threadIdx.x; i < ROWS * CPR; i += NT) {
    const int r = i / CPR, c = (i % CPR) * 8;
    const bool ok = row0 + r < nrows;
    const T *g = ok ? src + (size_t)(row0 + r) * W + c : src;
    dac_cp_async<16>(dst + r * LD + c, g, ok);
  }
}
/* load_tile for a strided tensor (da_attn_ext): row r at src + r * rs */
template <typename T, int ROWS, int W, int LD, int NT>
__device__ __forceinline__ void load_tile_s(T *dst, const T *src, int row0, int nrows, long long rs) {
  constexpr int CPR = W / 8;
#pragma unroll
  for (int i = threadIdx.x; i < ROWS * CPR; i += NT) {
    const int r = i / CPR, c = (i % CPR) * 8;
    const bool ok = row0 + r < nrows;
    const T *g = ok ? src + (long long)(row0 + r) * rs + c : src;
    dac_cp_async<16>(dst + r * LD + c, g, ok);
  }
}


/* EXT: the da_attn_ext instantiation (strides, per-sequence lengths read
 * and clamped on the device, windows, LSE; dac_args' ext fields). Dense
 * calls take EXT = false, whose code is the dense kernel's alone.
 * WARPS warps of MT m-tiles (16 rows) each: BR = 16 * WARPS * MT query rows
 * per block. With MT = 2 each K/V fragment feeds two mma and the Q
 * fragments are read from shared memory per k-step. */
/* keys per step */
template <int DV, int MT> struct dac_mma_bc { static constexpr int value = 64; };
/* blocks per SM the register budget is sized for */
template <int DQK, int DV, int GS, int MT> struct dac_mma_minb {
  static constexpr int value = MT == 2 ? 1 : ((DV == 64 && !(DQK == 16 && GS >= 4)) ? 3 : 2);
};

/* shared memory of one block: Q [BR][DQK+8]; V [2][BC][DV+8]; exact: K
 * [2][BC][DV+8]; grouped: Kf^T [2][DQK][BC+8], raw K [BC][DV+8], K^T
 * [DV][BC+8] and the gather table [DQK][GS] */
template <typename T, int DQK, int DV, int GS, int WARPS, int MT> struct dac_mma_smem {
  static constexpr int BR = WARPS * 16 * MT, BC = dac_mma_bc<DV, MT>::value;
  static constexpr size_t bytes =
      sizeof(T) * ((size_t)BR * (DQK + 8) + 2 * (size_t)BC * (DV + 8) +
                   (GS > 1 ? 2 * (size_t)DQK * (BC + 8) + (size_t)BC * (DV + 8) + (size_t)DV * (BC + 8)
                           : 2 * (size_t)BC * (DQK + 8))) +
      (GS > 1 ? sizeof(int2) * DQK * GS : 0);
};

template <typename T, int DQK, int DV, int GS, int WARPS, int MT, bool EXT>
__global__ void __launch_bounds__(WARPS * 32, (dac_mma_minb<DQK, DV, GS, MT>::value))
    dac_mma_kernel(dac_args a) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  typedef dac_mma_op<T> op;
  constexpr bool GROUPED = GS > 1;
  /* GS = 0: DA_STRATEGY_PROJECTION (SPEC 1c), EXT only: Q and K come
   * pre-projected (a.qs, a.kp: dense rows of DQK = the rank, per query
   * head, each sequence's rows from 0), the logits over DQK columns, P V
   * over DV; otherwise as exact attention (DQK = DV) */
  constexpr bool PROJ = GS == 0;
  constexpr int GSN = GS > 0 ? GS : 1; /* array extents and divisors */
  static_assert(!PROJ || EXT, "the projection strategy runs the EXT kernel");
  constexpr int NT = WARPS * 32, BR = WARPS * 16 * MT, BC = dac_mma_bc<DV, MT>::value;
  constexpr int LDQ = DQK + 8, LDV = DV + 8, LDT = BC + 8;
  /* Kf build, warp-local: warp w owns keys [KW*w, KW*w + KW) of each tile.
   * It brings its raw K rows in itself, transposes them into its columns
   * of K^T (ldmatrix .trans), and sums the rows of K^T named by the
   * permutation into its columns of Kf^T: only __syncwarp between steps. */
  constexpr int KW = BC / WARPS, NCH = GROUPED ? DQK * (KW / 8) / 32 : 0;
  static_assert(!GROUPED || (KW == 16 && NCH >= 1), "Kf build layout");
  extern __shared__ __align__(16) unsigned char smraw[];
  T *Qsm = (T *)smraw;            /* [BR][LDQ] */
  T *Vsm = Qsm + BR * LDQ;        /* [2][BC][LDV] */
  T *Ksm = Vsm + 2 * BC * LDV;    /* exact: [2][BC][LDQ] K; grouped: [2][DQK][LDT] Kf^T */
  constexpr int KSLOT = GROUPED ? DQK * LDT : BC * LDQ;
  T *Kraw = Ksm + 2 * KSLOT;      /* [BC][LDV] raw K (grouped) */
  T *KT = Kraw + (GROUPED ? BC * LDV : 0); /* [DV][LDT] K^T (grouped) */
  int2 *tab = (int2 *)(KT + (GROUPED ? DV * LDT : 0)); /* [DQK][GS]: column, weight */

  const dac_block blk = dac_block_of(a, BR);
  const int q0 = blk.q0;
  const size_t bh = blk.bh, bkv = blk.bkv;
  /* EXT: this sequence's lengths and first rows; a block past its
   * queries has nothing to do (all its threads leave before any barrier) */
  dac_seq sq{};
  if constexpr (EXT) {
    sq = dac_seq_of(a, blockIdx.z);
    if (q0 >= sq.lq) return;
  }
  const int lq = EXT ? sq.lq : a.seq_q, lk = EXT ? sq.lk : a.seq_k;
  const int off = EXT ? lk - lq : a.seq_k - a.seq_q;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g4 = lane / 4, t4 = lane % 4;

  const T *qsrc, *ksrc, *vsrc;
  long long qrs = 0, krs = 0, vrs = 0; /* EXT: row strides in elements */
  if constexpr (EXT) {
    const long long bb = blockIdx.z, hh = blockIdx.y, hk = hh / (a.heads / a.kv_heads);
    if (GROUPED || PROJ) { /* the fused (projected) Q: dense rows of DQK, the sequence's own from 0 */
      qsrc = (const T *)a.qs + bh * a.seq_q * DQK;
      qrs = DQK;
    } else {
      qsrc = (const T *)a.q + (bb * a.qst[0] + hh * a.qst[1] + sq.q0 * a.qst[2]);
      qrs = a.qst[2];
    }
    if (PROJ) { /* the projected K of this query head, rows from 0 */
      ksrc = (const T *)a.kp + bh * a.seq_k * DQK;
      krs = DQK;
    } else {
      ksrc = (const T *)a.k + (bb * a.kst[0] + hk * a.kst[1] + sq.k0 * a.kst[2]);
      krs = a.kst[2];
    }
    vsrc = (const T *)a.v + (bb * a.vst[0] + hk * a.vst[1] + sq.k0 * a.vst[2]);
    vrs = a.vst[2];
  } else {
    qsrc = GROUPED ? (const T *)a.qs + bh * a.seq_q * DQK : (const T *)a.q + bh * a.seq_q * DV;
    ksrc = (const T *)a.k + bkv * a.seq_k * DV;
    vsrc = (const T *)a.v + bkv * a.seq_k * DV;
  }

  /* key tiles kbeg, kbeg + BC, ... below kend; EXT: a tile needs no mask
   * when it lies in [mlo, mhi], inside every row's window */
  int kend = a.seq_k, kbeg = 0, mlo = 0, mhi = 0;
  if constexpr (EXT) {
    const int qlast = min(q0 + BR, lq) - 1;
    int lo0, hi0, lo1, hi1;
    dac_win(a, q0, lq, lk, lo0, hi0);
    dac_win(a, qlast, lq, lk, lo1, hi1);
    kbeg = lo0 / BC * BC;
    kend = hi1 + 1;
    mlo = lo1;
    mhi = hi0;
  } else {
    if (a.causal) kend = max(0, min(a.seq_k, q0 + BR + off));
  }
  const int nk = EXT ? (kend > kbeg ? (kend - kbeg + BC - 1) / BC : 0) : (kend + BC - 1) / BC;
  auto load_k = [&](T *dst, int k0) { /* DQK = DV unless PROJ */
    if constexpr (EXT)
      load_tile_s<T, BC, DQK, LDQ, NT>(dst, ksrc, k0, lk, krs);
    else
      load_tile<T, BC, DQK, LDQ, NT>(dst, ksrc, k0, a.seq_k);
  };
  auto load_v = [&](T *dst, int k0) {
    if constexpr (EXT)
      load_tile_s<T, BC, DV, LDV, NT>(dst, vsrc, k0, lk, vrs);
    else
      load_tile<T, BC, DV, LDV, NT>(dst, vsrc, k0, a.seq_k);
  };

  /* this warp's raw K rows of the tile at key k0 */
  const int kb = warp * KW;
  auto load_kraw = [&](int k0) {
#pragma unroll
    for (int i = lane; i < KW * (DV / 8); i += 32) {
      const int r = i / (DV / 8), c = (i % (DV / 8)) * 8, key = k0 + kb + r;
      const bool ok = key < lk;
      const T *src = ksrc;
      if (ok) {
        if constexpr (EXT)
          src = ksrc + (long long)key * krs + c;
        else
          src = ksrc + (size_t)key * DV + c;
      }
      dac_cp_async<16>(Kraw + (kb + r) * LDV + c, src, ok);
    }
  };
  /* this warp's columns of Kf^T from its raw K rows:
   * Kf^T[g][key] = sum_i w * K[key][pi[g*GS+i]] (f32, rounded once); rows past ng are zero */
  auto build = [&](T *kf) {
    int2 tv[NCH > 0 ? NCH : 1][GSN]; /* the gather's rows and weights, read ahead of the transpose */
#pragma unroll
    for (int n = 0; n < NCH; n++)
#pragma unroll
      for (int i = 0; i < GS; i++) tv[n][i] = tab[((lane + 32 * n) / 2) * GS + i];
#pragma unroll
    for (int cb = 0; cb < DV / 16; cb++) {
      uint32_t r[4];
      ldsm_x4_t(r, Kraw + (kb + (lane % 8) + ((lane / 8) % 2) * 8) * LDV + cb * 16 + (lane / 16) * 8);
#pragma unroll
      for (int m = 0; m < 4; m++)
        *reinterpret_cast<uint32_t *>(KT + (cb * 16 + (m >> 1) * 8 + g4) * LDT + kb + (m & 1) * 8 + 2 * t4) = r[m];
    }
    __syncwarp();
#pragma unroll
    for (int n = 0; n < NCH; n++) {
      const int ci = lane + 32 * n, g = ci / 2, c8 = kb + (ci % 2) * 8;
      float acc[8];
#pragma unroll
      for (int e = 0; e < 8; e++) acc[e] = 0.0f;
#pragma unroll
      for (int i = 0; i < GS; i++) {
        const int2 t = tv[n][i];
        const float w = __int_as_float(t.y);
        const uint4 v = *reinterpret_cast<const uint4 *>(KT + t.x * LDT + c8);
        const uint32_t wv[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
        for (int e = 0; e < 4; e++) {
          const float2 f = op::unpack(wv[e]);
          acc[2 * e] = fmaf(w, f.x, acc[2 * e]);
          acc[2 * e + 1] = fmaf(w, f.y, acc[2 * e + 1]);
        }
      }
      uint4 res = make_uint4(0u, 0u, 0u, 0u);
      if (g < a.ng) {
        res.x = op::pack(acc[0], acc[1]);
        res.y = op::pack(acc[2], acc[3]);
        res.z = op::pack(acc[4], acc[5]);
        res.w = op::pack(acc[6], acc[7]);
      }
      *reinterpret_cast<uint4 *>(kf + g * LDT + c8) = res;
    }
  };

  /* prologue: Q, K_0, V_0 */
  if constexpr (EXT)
    load_tile_s<T, BR, DQK, LDQ, NT>(Qsm, qsrc, q0, lq, qrs);
  else
    load_tile<T, BR, DQK, LDQ, NT>(Qsm, qsrc, q0, a.seq_q);
  if (nk > 0) {
    if (GROUPED)
      load_kraw(kbeg);
    else
      load_k(Ksm, kbeg);
    load_v(Vsm, kbeg);
  }
  dac_cp_commit();
  if (GROUPED) {
    const size_t poff = (bh * a.n_tiles + q0 / a.hash_block) * (size_t)a.d;
    for (int e = threadIdx.x; e < DQK * GS; e += NT) {
      const int g = e / GSN, p = e;
      int col = 0;
      float w = 0.0f;
      if (g < a.ng && p < DV) {
        col = a.perm[poff + p];
        w = a.wts[poff + col];
      }
      tab[e] = make_int2(col, __float_as_int(w));
    }
  }
  dac_cp_wait<0>();
  __syncthreads();
  if (GROUPED && nk > 0) {
    build(Ksm);
    __syncthreads();
  }

  /* Q fragments: in registers for MT == 1, else read per k-step */
  constexpr int QF = MT == 1 ? DQK / 16 : 1;
  uint32_t qf[QF][4];
  const T *qfrag = Qsm + (warp * 16 * MT + (lane % 16)) * LDQ + (lane / 16) * 8;
  if (MT == 1) {
#pragma unroll
    for (int kk = 0; kk < QF; kk++) ldsm_x4(qf[kk], qfrag + kk * 16);
  }

  float o[MT][DV / 8][4];
#pragma unroll
  for (int mt = 0; mt < MT; mt++)
#pragma unroll
    for (int i = 0; i < DV / 8; i++) o[mt][i][0] = o[mt][i][1] = o[mt][i][2] = o[mt][i][3] = 0.0f;
  float mrow[MT][2], lrow[MT][2];
#pragma unroll
  for (int mt = 0; mt < MT; mt++) {
    mrow[mt][0] = mrow[mt][1] = -INFINITY;
    lrow[mt][0] = lrow[mt][1] = 0.0f;
  }
  const float sc = a.scale_log2 /* SPEC 1, "Scale" */;
  const int rowb = q0 + warp * 16 * MT + g4;
  /* EXT: the keys rows rowb + 16 mt (+ 8) see */
  int wlo[MT][2], whi[MT][2];
  if constexpr (EXT) {
#pragma unroll
    for (int mt = 0; mt < MT; mt++)
#pragma unroll
      for (int hf = 0; hf < 2; hf++) dac_win(a, rowb + mt * 16 + hf * 8, lq, lk, wlo[mt][hf], whi[mt][hf]);
  }

  /* One barrier per key tile. Tile j reads K/Kf and V from slot j & 1;
   * meanwhile K_{j+1} (exact) or raw K_{j+2} (grouped) and V_{j+1} come in,
   * and (grouped) Kf_{j+1} is built from raw K_{j+1} into the other slot. */
  for (int j = 0; j < nk; j++) {
    const int k0 = kbeg + j * BC, cur = j & 1, nxt = cur ^ 1;
    if (j + 1 < nk) {
      if (GROUPED)
        load_kraw(k0 + BC);
      else
        load_k(Ksm + nxt * KSLOT, k0 + BC);
    }
    dac_cp_commit();
    if (j + 1 < nk) load_v(Vsm + nxt * BC * LDV, k0 + BC);
    dac_cp_commit();

    const T *Kc = Ksm + cur * KSLOT;
    float s[MT][BC / 8][4];
#pragma unroll
    for (int mt = 0; mt < MT; mt++)
#pragma unroll
      for (int i = 0; i < BC / 8; i++) s[mt][i][0] = s[mt][i][1] = s[mt][i][2] = s[mt][i][3] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < DQK / 16; kk++) {
      uint32_t af[MT][4];
      if (MT == 1) {
#pragma unroll
        for (int e = 0; e < 4; e++) af[0][e] = qf[MT == 1 ? kk : 0][e];
      } else {
#pragma unroll
        for (int mt = 0; mt < MT; mt++) ldsm_x4(af[mt], qfrag + mt * 16 * LDQ + kk * 16);
      }
#pragma unroll
      for (int np = 0; np < BC / 16; np++) {
        uint32_t bf[4];
        if (GROUPED)
          ldsm_x4_t(bf, Kc + (kk * 16 + (lane % 8) + ((lane / 8) % 2) * 8) * LDT + np * 16 + (lane / 16) * 8);
        else
          ldsm_x4(bf, Kc + (np * 16 + (lane % 8) + (lane / 16) * 8) * LDQ + kk * 16 + ((lane / 8) % 2) * 8);
#pragma unroll
        for (int mt = 0; mt < MT; mt++) {
          op::mma(s[mt][2 * np], af[mt], bf[0], bf[1]);
          op::mma(s[mt][2 * np + 1], af[mt], bf[2], bf[3]);
        }
      }
    }

    /* mask, online softmax (cuda_softmax.cuh) */
    const bool need_mask = EXT ? (k0 < mlo || k0 + BC - 1 > mhi)
                               : (k0 + BC > a.seq_k) || (a.causal && k0 + BC - 1 > q0 + off);
#pragma unroll
    for (int mt = 0; mt < MT; mt++) {
      float al[2];
      dac_sm_tile(s[mt], need_mask, [&](int nt, int e) {
        const int key = k0 + nt * 8 + 2 * t4 + (e & 1);
        if constexpr (EXT) {
          return key < wlo[mt][e >> 1] || key > whi[mt][e >> 1];
        } else {
          const int row = rowb + mt * 16 + (e < 2 ? 0 : 8);
          return key >= a.seq_k || (a.causal && key > row + off);
        }
      }, mrow[mt], lrow[mt], sc, al);
      dac_sm_rescale<DV / 8>(&o[mt][0][0], al);
    }

    const T *Vc = Vsm + cur * BC * LDV;
#pragma unroll
    for (int kk = 0; kk < BC / 16; kk++) {
      uint32_t pa[MT][4];
#pragma unroll
      for (int mt = 0; mt < MT; mt++) {
        pa[mt][0] = op::pack(s[mt][2 * kk][0], s[mt][2 * kk][1]);
        pa[mt][1] = op::pack(s[mt][2 * kk][2], s[mt][2 * kk][3]);
        pa[mt][2] = op::pack(s[mt][2 * kk + 1][0], s[mt][2 * kk + 1][1]);
        pa[mt][3] = op::pack(s[mt][2 * kk + 1][2], s[mt][2 * kk + 1][3]);
      }
#pragma unroll
      for (int dp = 0; dp < DV / 16; dp++) {
        uint32_t bf[4];
        ldsm_x4_t(bf, Vc + (kk * 16 + (lane % 8) + ((lane / 8) % 2) * 8) * LDV + dp * 16 + (lane / 16) * 8);
#pragma unroll
        for (int mt = 0; mt < MT; mt++) {
          op::mma(o[mt][2 * dp], pa[mt], bf[0], bf[1]);
          op::mma(o[mt][2 * dp + 1], pa[mt], bf[2], bf[3]);
        }
      }
    }
    if (GROUPED && j + 1 < nk) {
      dac_cp_wait<1>(); /* this warp's raw K rows of tile j+1 */
      __syncwarp();
      build(Ksm + nxt * KSLOT);
    }
    dac_cp_wait<0>();
    __syncthreads(); /* next K/Kf and V visible; this tile's slots free */
  }

  T *out;
  long long ors = DV;
  if constexpr (EXT) {
    out = (T *)a.o + ((long long)blockIdx.z * a.ost[0] + (long long)blockIdx.y * a.ost[1] +
                      sq.q0 * a.ost[2]);
    ors = a.ost[2];
  } else {
    out = (T *)a.o + bh * a.seq_q * DV;
  }
#pragma unroll
  for (int mt = 0; mt < MT; mt++) {
    const float l0 = dac_lanes_sum<1, 2>(lrow[mt][0]), l1 = dac_lanes_sum<1, 2>(lrow[mt][1]);
    const int row0 = rowb + mt * 16, row1 = row0 + 8;
    if constexpr (EXT) {
      const bool seen0 = wlo[mt][0] <= whi[mt][0], seen1 = wlo[mt][1] <= whi[mt][1];
      const float i0 = dac_inv_sum(l0, seen0), i1 = dac_inv_sum(l1, seen1);
#pragma unroll
      for (int i = 0; i < DV / 8; i++) {
        const int c = i * 8 + 2 * t4;
        if (row0 < lq)
          *reinterpret_cast<uint32_t *>(out + (long long)row0 * ors + c) =
              op::pack(o[mt][i][0] * i0, o[mt][i][1] * i0);
        if (row1 < lq)
          *reinterpret_cast<uint32_t *>(out + (long long)row1 * ors + c) =
              op::pack(o[mt][i][2] * i1, o[mt][i][3] * i1);
      }
      if (a.lse && t4 == 0) {
        if (row0 < lq)
          a.lse[dac_lse_at(a, blockIdx.z, blockIdx.y, sq, row0)] =
              dac_lse_val(seen0, mrow[mt][0] * sc, l0);
        if (row1 < lq)
          a.lse[dac_lse_at(a, blockIdx.z, blockIdx.y, sq, row1)] =
              dac_lse_val(seen1, mrow[mt][1] * sc, l1);
      }
    } else {
      const float i0 = dac_inv_sum(l0, !a.causal || row0 + off >= 0),
                  i1 = dac_inv_sum(l1, !a.causal || row1 + off >= 0);
#pragma unroll
      for (int i = 0; i < DV / 8; i++) {
        const int c = i * 8 + 2 * t4;
        if (row0 < a.seq_q)
          *reinterpret_cast<uint32_t *>(out + (size_t)row0 * DV + c) =
              op::pack(o[mt][i][0] * i0, o[mt][i][1] * i0);
        if (row1 < a.seq_q)
          *reinterpret_cast<uint32_t *>(out + (size_t)row1 * DV + c) =
              op::pack(o[mt][i][2] * i1, o[mt][i][3] * i1);
      }
    }
  }
#endif
}

template <typename T, int DQK, int DV, int GS, int WARPS, int MT, bool EXT>
static cudaError_t launch_mma(const dac_args *a, cudaStream_t s) {
  typedef dac_mma_smem<T, DQK, DV, GS, WARPS, MT> sm;
  cudaError_t e = cudaFuncSetAttribute(dac_mma_kernel<T, DQK, DV, GS, WARPS, MT, EXT>,
                                       cudaFuncAttributeMaxDynamicSharedMemorySize, (int)sm::bytes);
  if (e != cudaSuccess) return e;
  dim3 grid((a->seq_q + sm::BR - 1) / sm::BR, a->heads, a->batch);
  dac_mma_kernel<T, DQK, DV, GS, WARPS, MT, EXT><<<grid, WARPS * 32, sm::bytes, s>>>(*a);
  return cudaGetLastError();
}

template <typename T, int DV, int WARPS, int MT, bool EXT>
static cudaError_t launch_mma_g(const dac_args *a, cudaStream_t s) {
  switch (a->G) {
  case 1: return launch_mma<T, DV, DV, 1, WARPS, MT, EXT>(a, s);
  case 2: return launch_mma<T, DV / 2, DV, 2, WARPS, MT, EXT>(a, s);
  case 4: return launch_mma<T, (DV / 4 < 16 ? 16 : DV / 4), DV, 4, WARPS, MT, EXT>(a, s);
  case 8: return launch_mma<T, 16, DV, 8, WARPS, MT, EXT>(a, s);
  default: return cudaErrorInvalidValue;
  }
}

/* DA_STRATEGY_PROJECTION (dac_launch_mma_<dtype>_proj, their own files):
 * the EXT kernel with GS = 0 over the pre-projected a->qs and a->kp, rank
 * DQK = a->pr, 128 query rows per block */
template <typename T>
static cudaError_t launch_mma_proj(const dac_args *a, cudaStream_t s) {
  if (a->d == 64) {
    switch (a->pr) {
    case 16: return launch_mma<T, 16, 64, 0, 4, 2, true>(a, s);
    case 32: return launch_mma<T, 32, 64, 0, 4, 2, true>(a, s);
    case 64: return launch_mma<T, 64, 64, 0, 4, 2, true>(a, s);
    default: return cudaErrorInvalidValue;
    }
  }
  if (a->d == 128) {
    switch (a->pr) {
    case 16: return launch_mma<T, 16, 128, 0, 4, 2, true>(a, s);
    case 32: return launch_mma<T, 32, 128, 0, 4, 2, true>(a, s);
    case 64: return launch_mma<T, 64, 128, 0, 4, 2, true>(a, s);
    case 128: return launch_mma<T, 128, 128, 0, 4, 2, true>(a, s);
    default: return cudaErrorInvalidValue;
    }
  }
  return cudaErrorInvalidValue;
}

/* EXT = false: the dense kernels (dac_launch_mma_<dtype>); true: the
 * da_attn_ext ones (dac_launch_mma_<dtype>_ext, their own files) */
template <typename T, int WARPS, int MT, bool EXT = false>
static cudaError_t launch_mma_d(const dac_args *a, cudaStream_t s) {
  if (a->d == 64) return launch_mma_g<T, 64, WARPS, MT, EXT>(a, s);
  if (a->d == 128) return launch_mma_g<T, 128, WARPS, MT, EXT>(a, s);
  return cudaErrorInvalidValue;
}

#endif
