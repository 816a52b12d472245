/* SPDX-License-Identifier: Apache-2.0 */
/* Hopper (sm_90a) fused attention for f16/bf16 inputs, head_dim 64 and 128.
 *
 * One block of three warpgroups per 128 query rows (one hash tile, so one
 * column permutation per block when G > 1):
 * - warpgroup 0, the producer: one of its threads brings each 128-key tile
 *   of K (or, for G > 1, of K^T, written by dac_kt_kernel) and V into
 *   shared memory with TMA (cp.async.bulk.tensor), in the 128-byte
 *   swizzled layouts the warpgroup MMA reads, a few stages deep; for G > 1
 *   all its threads build the tile's fused keys
 *   Kf^T[g][key] = sum_i a_c K[key][c] (c the i-th column of group g) from
 *   K^T with 16-byte row gathers, f32 sums rounded once;
 * - warpgroups 1 and 2 each own 64 query rows: S = Q K^T (or Qs Kf^T) by
 *   wgmma from shared memory into registers, the online softmax in
 *   registers, then O += P V by wgmma with P straight from registers. The
 *   next tile's S goes out right behind this tile's P V, and the two
 *   consumer warpgroups take turns to issue (named barriers), so the
 *   tensor cores work on one warpgroup's MMAs while the other computes its
 *   softmax.
 * Stage hand-off uses mbarriers: full[s] (the TMA's transaction count, or
 * for G > 1 the builders' 128 arrivals after a proxy fence) and empty[s]
 * (the 8 consumer warps, after their MMAs on the stage completed). For
 * G > 1, Kf^T and V have a pair each, since a consumer needs tile j's Kf^T
 * one step before tile j's V, and raw K^T has its own two slots.
 *
 * Pre-projected mode (GS = 0; the projection strategy of SPEC 1c): Q and K
 * arrive projected, dense [batch][heads][rows][DQK] in the dtype (DQK = the
 * rank, 32, 64 or 128, written by dac_launch_proj), K' per query head; the
 * block runs as the exact kernel with S over DQK columns and P V over D.
 *
 * The kernel needs wgmma, so this file is compiled for sm_90a alone; on any
 * other device the backend uses the mma.sync kernel (cuda_mma.cu). */
#include <cuda.h> /* CUtensorMap and its encoder's type; the driver is reached through the runtime */
#include <math.h>

#include "cuda_dev.cuh"
#include "cuda_softmax.cuh"

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define DAC_WG_DEVICE 1
#include "cuda_wg.cuh"
#include "cuda_wgmma_ops.cuh"
#else
#define DAC_WG_DEVICE 0
#endif

/* 0 lets the consumer warpgroups issue their MMAs unordered (measured on
 * an H200 at seq 8192: turn-taking 2 % faster at d128, 3 % slower at d64) */
#ifndef DAC_WG_PINGPONG
#define DAC_WG_PINGPONG 1
#endif
/* V stages of the grouped kernel (2 or 3; Kf^T gets the rest) */
#ifndef DAC_WG_VSTAGES
#define DAC_WG_VSTAGES 3
#endif

namespace {

constexpr int WG_BM = 128;  /* query rows per block */
constexpr int WG_BN = 128;  /* keys per tile */
constexpr int WG_THREADS = 384;
constexpr size_t WG_SMEM_MAX = 232448; /* the opt-in limit of sm_90 */
/* setmaxnreg: the producer gives registers back and the consumers take
 * them; both only move registers within the block's launch allocation
 * (384 threads x 168, the most __launch_bounds__(384, 1) allows), so the
 * consumers' increase must be covered by the producer's decrease or
 * setmaxnreg.inc waits forever. */
template <bool GR> struct wg_regs {
  /* the grouped producer builds Kf^T and keeps its gather offsets in registers */
  static constexpr int PROD = GR ? 88 : 56, CONS = GR ? 208 : 224;
  static_assert(128 * PROD + 256 * CONS <= 384 * 168, "setmaxnreg budget");
};

/* Shared memory plan of one block (bytes; every region 1024-aligned, as
 * the 128-byte swizzle repeats every 1024 bytes). */
template <int D, int DQK, int GS> struct wg_smem {
  static constexpr bool GR = GS > 1;
  /* Q or Qs: 128 rows of 128 B per 64 columns (64 B at DQK 32) */
  static constexpr int QB = GR ? 16384 : DQK * 256;
  static constexpr int KB = GR ? 2 * DQK * 128 : DQK * 256; /* K (K'), or Kf^T [2][DQK][64 keys] */
  static constexpr int VB = (D / 64) * 16384;                 /* V [D/64][128 keys][64] */
  static constexpr int RB = GR ? (D / 64) * 16384 : 0;        /* raw K^T [2][D][64 keys] */
  static constexpr int TABB = GR ? ((DQK * GS * 4 + 1023) / 1024) * 1024 : 0;
  static constexpr int BARB = 512; /* mbarriers: 5 sets of up to 8 */
  static constexpr size_t bytes_for(int nk, int nv) {
    return 1024 /* alignment slack */ + QB + (size_t)nk * KB + (size_t)nv * VB + 2 * (size_t)RB + TABB + BARB;
  }
  /* Stages: exact, K and V share NS = 3 stages (2 where 3 do not fit);
   * grouped, V has NSV (3 where they fit) and Kf^T, which is small, takes
   * what is left, up to 8 stages, so a late build has slack to catch up. */
  static constexpr int NSV = GR ? (bytes_for(2, DAC_WG_VSTAGES) <= WG_SMEM_MAX ? DAC_WG_VSTAGES : 2)
                                : (bytes_for(3, 3) <= WG_SMEM_MAX ? 3 : 2);
  static constexpr int kstages() {
    int n = NSV;
    while (GR && n < 8 && bytes_for(n + 1, NSV) <= WG_SMEM_MAX) n++;
    return n;
  }
  static constexpr int NSK = kstages();
  static constexpr size_t bytes = bytes_for(NSK, NSV);
  static_assert(NSV >= 2 && NSK >= NSV && NSK <= 8 && bytes <= WG_SMEM_MAX, "stages");
};

#if DAC_WG_DEVICE
__device__ __forceinline__ void mbar_init(uint32_t b, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(b), "r"(count) : "memory");
}
__device__ __forceinline__ void mbar_arrive(uint32_t b) {
  asm volatile("{\n.reg .b64 st;\nmbarrier.arrive.shared::cta.b64 st, [%0];\n}\n" ::"r"(b)
               : "memory");
}
__device__ __forceinline__ void mbar_wait(uint32_t b, uint32_t parity) {
  asm volatile("{\n.reg .pred p;\nDAC_WAIT_%=:\n"
               "mbarrier.try_wait.parity.shared::cta.b64 p, [%0], %1;\n"
               "@!p bra DAC_WAIT_%=;\n}\n" ::"r"(b),
               "r"(parity)
               : "memory");
}
__device__ __forceinline__ void named_sync(int id, int n) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(n) : "memory");
}
__device__ __forceinline__ void named_arrive(int id, int n) {
  asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(n) : "memory");
}
/* the transaction-count arrive of a TMA stage: one thread announces the
 * bytes, the copies' completion brings the phase home */
__device__ __forceinline__ void mbar_expect_tx(uint32_t b, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(b), "r"(bytes) : "memory");
}
/* a TMA box of a 3-d tensor map into shared memory (swizzled as the map
 * says), completing on mbarrier b; coordinates innermost first */
__device__ __forceinline__ void tma3(uint32_t dst, const CUtensorMap *m, int x, int y, int z, uint32_t b) {
  asm volatile("cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::bytes"
               " [%0], [%1, {%2, %3, %4}], [%5];\n" ::"r"(dst),
               "l"(reinterpret_cast<uint64_t>(m)), "r"(x), "r"(y), "r"(z), "r"(b)
               : "memory");
}
__device__ __forceinline__ void tma_prefetch(const CUtensorMap *m) {
  asm volatile("prefetch.tensormap [%0];\n" ::"l"(reinterpret_cast<uint64_t>(m)) : "memory");
}
#endif /* DAC_WG_DEVICE */

template <typename T, int D, int DQK, int GS>
__global__ void __launch_bounds__(WG_THREADS, 1)
    dac_wg_kernel(const __grid_constant__ dac_args a, const __grid_constant__ CUtensorMap tmk,
                  const __grid_constant__ CUtensorMap tmv) {
#if DAC_WG_DEVICE
  typedef wg_smem<D, DQK, GS> L;
  constexpr bool GR = GS > 1;
  /* pre-projected at rank 32: Q' and K' tiles of 64-byte rows, 64-byte swizzle */
  constexpr bool SW64 = GS == 0 && DQK == 32;
  constexpr int NSK = L::NSK, NSV = L::NSV; /* equal when exact: K and V share a stage */
  extern __shared__ unsigned char smraw[];
  const uint32_t sbase0 = dac_smem_u32(smraw);
  const uint32_t pad = (1024u - (sbase0 & 1023u)) & 1023u;
  unsigned char *sm = smraw + pad;
  const uint32_t sb = sbase0 + pad;
  const uint32_t sQ = sb, sK = sQ + L::QB, sV = sK + NSK * L::KB, sR = sV + NSV * L::VB;
  float *wtab = (float *)(sm + (L::QB + NSK * L::KB + NSV * L::VB + 2 * L::RB));
  const uint32_t sBar = sR + 2 * L::RB + L::TABB;
  /* full(s), empty(s): K (exact) or Kf^T (grouped) and, exact, V of stage
   * s; grouped, V has its own pair, vfull(s) and vempty(s) */
  auto full = [&](int s) { return sBar + 8 * s; };
  auto empty = [&](int s) { return sBar + 64 + 8 * s; };
  auto vfull = [&](int s) { return sBar + 128 + 8 * s; };
  auto vempty = [&](int s) { return sBar + 192 + 8 * s; };
  auto rawfull = [&](int x) { return sBar + 256 + 8 * x; }; /* grouped: raw K^T slot x */

  const dac_block blk = dac_block_of(a, WG_BM);
  const int q0 = blk.q0;
  const size_t bh = blk.bh, bkv = blk.bkv;
  const int off = a.seq_k - a.seq_q;
  int kend = a.seq_k;
  if (a.causal) kend = max(0, min(a.seq_k, q0 + WG_BM + off));
  const int nk = (kend + WG_BN - 1) / WG_BN;
  const int wgi = threadIdx.x / 128, t = threadIdx.x % 128;

  if (threadIdx.x == 0) {
    for (int s = 0; s < NSK; s++) {
      mbar_init(full(s), GR ? 128 : 1); /* the builders, or the TMA issuer */
      mbar_init(empty(s), 8);           /* the consumers' warps */
    }
    for (int s = 0; s < NSV; s++) {
      mbar_init(vfull(s), 1);
      mbar_init(vempty(s), 8);
    }
    for (int x = 0; x < 2; x++) mbar_init(rawfull(x), 1);
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  }
  __syncthreads();

  if (wgi == 0) {
    /* ---------------- producer ---------------- */
    asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(wg_regs<GR>::PROD));
    const bool lead = t == 0; /* issues every TMA copy */
    const int kvz = (int)bkv;
    /* V (and K, exact) tile j into a stage: D/64 boxes of 128 keys x 64
     * columns; keys past seq_k arrive as zeros (the map's bounds) */
    auto tma_rows = [&](uint32_t dst, const CUtensorMap *m, int j, uint32_t bar) {
#pragma unroll
      for (int h = 0; h < D / 64; h++) tma3(dst + h * (WG_BN * 128), m, h * 64, j * WG_BN, kvz, bar);
    };
    if (lead) {
      tma_prefetch(&tmk);
      tma_prefetch(&tmv);
    }
    if (!GR) {
      /* K (exact) or K' (pre-projected: one per query head) tile j: DQK/KW
       * boxes of 128 keys x KW columns (KW = 64; 32 at rank 32) */
      constexpr int KW = DQK < 64 ? DQK : 64;
      const int kz = GS == 0 ? (int)bh : kvz;
      if (lead) {
        for (int j = 0; j < nk; j++) {
          const int s = j % NSK;
          if (j >= NSK) mbar_wait(empty(s), (j / NSK - 1) & 1);
          mbar_expect_tx(full(s), L::KB + L::VB);
#pragma unroll
          for (int h = 0; h < DQK / KW; h++)
            tma3(sK + s * L::KB + h * (WG_BN * KW * 2), &tmk, h * KW, j * WG_BN, kz, full(s));
          tma_rows(sV + s * L::VB, &tmv, j, full(s));
        }
      }
    } else {
      /* raw K^T of tile j: rows d = 0..D-1 of keys [128j, 128j + 128), two
       * boxes of 64 keys; kt rows are zero-padded to kt_ld, a multiple of
       * 128, so always in bounds */
      auto tma_raw = [&](int j) {
        const uint32_t dst = sR + (j & 1) * L::RB;
        mbar_expect_tx(rawfull(j & 1), L::RB);
#pragma unroll
        for (int h = 0; h < 2; h++) tma3(dst + h * (D * 128), &tmk, j * WG_BN + h * 64, 0, kvz, rawfull(j & 1));
      };
      /* The build: thread t makes 8 keys (16-byte chunk c = t & 15 of the
       * tile's 128) of groups g = (t >> 4) + 8i, i < NIT, of Kf^T. Its
       * gather offsets into raw K^T are the same for every tile, so they
       * are worked out once and kept in registers, two 16-bit offsets a
       * register; the weights sit in shared memory (one broadcast load
       * each). With no load depending on another load, a tile's build is
       * one round trip to shared memory instead of two per item. */
      constexpr int NIT = DQK / 8, NOFF = NIT * (GS > 1 ? GS : 1); /* GS 0, 1: never run */
      const int cch = t & 15;
      const size_t poff = (bh * (size_t)a.n_tiles + (size_t)(q0 / a.hash_block)) * (size_t)a.d;
      uint32_t offp[(NOFF + 1) / 2];
#pragma unroll
      for (int x = 0; x < (NOFF + 1) / 2; x++) offp[x] = 0u;
#pragma unroll
      for (int i = 0; i < NIT; i++)
#pragma unroll
        for (int m = 0; m < GS; m++) {
          const int g = (t >> 4) + 8 * i, e = g * GS + m;
          const int col = (g < a.ng && e < D) ? a.perm[poff + e] : 0;
          const uint32_t o = swz(col, cch, D);
          offp[(i * GS + m) / 2] |= o << (16 * ((i * GS + m) & 1));
        }
      for (int e = t; e < DQK * GS; e += 128) {
        const int g = e / (GS > 1 ? GS : 1);
        wtab[e] = (g < a.ng && e < D) ? a.wts[poff + a.perm[poff + e]] : 0.0f;
      }
      const uint32_t kfo = swz(t >> 4, cch, DQK); /* item i: + 1024 i (8 rows on, same swizzle) */
      if (lead && nk > 0) tma_raw(0);
      /* Kf^T and V travel separately (a consumer needs tile j's Kf^T one
       * step before its V). Per tile j: raw K^T j+1 goes out (one thread,
       * TMA), raw K^T j is waited for, Kf^T j is built into the stage that
       * Kf^T j-NSK left, then V j goes out. */
      named_sync(1, 128); /* the table */
      for (int j = 0; j < nk; j++) {
        const int s = j % NSK, sv = j % NSV;
        /* everyone is done with tile j-1's raw slot, which raw j+1 takes */
        if (j > 0) named_sync(1, 128);
        if (lead && j + 1 < nk) tma_raw(j + 1);
        mbar_wait(rawfull(j & 1), (j >> 1) & 1);
        if (j >= NSK) mbar_wait(empty(s), (j / NSK - 1) & 1);
        /* Kf^T[g][key] for 8 keys per item: 16-byte row gathers of K^T */
        const uint32_t raw = sR + (j & 1) * L::RB, kf = sK + s * L::KB;
        const unsigned char *rawp = sm + (raw - sb);
        unsigned char *kfp = sm + (kf - sb);
#pragma unroll
        for (int i = 0; i < NIT; i++) {
          const int g = (t >> 4) + 8 * i;
          uint4 res = make_uint4(0u, 0u, 0u, 0u);
          if (g < a.ng) {
            float acc[8];
#pragma unroll
            for (int e = 0; e < 8; e++) acc[e] = 0.0f;
#pragma unroll
            for (int m = 0; m < GS; m++) {
              const uint32_t o = (offp[(i * GS + m) / 2] >> (16 * ((i * GS + m) & 1))) & 0xFFFFu;
              const float w = wtab[g * GS + m];
              const uint4 v = *reinterpret_cast<const uint4 *>(rawp + o);
              const uint32_t vv[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
              for (int e = 0; e < 4; e++) {
                const float2 f = dac_cvt<T>::unpack(vv[e]);
                acc[2 * e] = fmaf(w, f.x, acc[2 * e]);
                acc[2 * e + 1] = fmaf(w, f.y, acc[2 * e + 1]);
              }
            }
            res.x = dac_cvt<T>::pack(acc[0], acc[1]);
            res.y = dac_cvt<T>::pack(acc[2], acc[3]);
            res.z = dac_cvt<T>::pack(acc[4], acc[5]);
            res.w = dac_cvt<T>::pack(acc[6], acc[7]);
          }
          *reinterpret_cast<uint4 *>(kfp + kfo + i * 1024) = res;
        }
        fence_proxy();
        mbar_arrive(full(s));
        /* V j after the build: a consumer needs it only once it holds Kf^T
         * j+1 too, and waiting here for V's stage (P V of tile j-NSV) holds
         * back build j+1, not build j */
        if (lead) {
          if (j >= NSV) mbar_wait(vempty(sv), (j / NSV - 1) & 1);
          mbar_expect_tx(vfull(sv), L::VB);
          tma_rows(sV + sv * L::VB, &tmv, j, vfull(sv));
        }
      }
    }
  } else {
    /* ---------------- consumers ---------------- */
    asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(wg_regs<GR>::CONS));
    typedef dac_cvt<T> cv;
    const int c = wgi - 1;              /* rows [64c, 64c + 64) of the block */
    const int warp = t / 32, lane = t % 32;
    /* this warpgroup's Q (or Qs) rows into the K-major swizzled layout */
    {
      const T *qsrc = GS != 1 ? (const T *)a.qs + bh * (size_t)a.seq_q * DQK /* Qs or Q' */
                              : (const T *)a.q + bh * (size_t)a.seq_q * D;
      constexpr int CPR = DQK / 8; /* 16-byte chunks per row */
#pragma unroll
      for (int i = 0; i < 64 * CPR / 128; i++) {
        const int e = t + 128 * i, r = 64 * c + e / CPR, ch = e % CPR;
        const int row = q0 + r;
        uint4 v = make_uint4(0u, 0u, 0u, 0u);
        if (row < a.seq_q) v = *reinterpret_cast<const uint4 *>(qsrc + (size_t)row * DQK + ch * 8);
        *reinterpret_cast<uint4 *>(sm + (SW64 ? swz64(r, ch) : swz(r, ch, WG_BM))) = v;
      }
      fence_proxy();
      named_sync(2 + c, 128);
    }
    const uint32_t qa = sQ + 64 * c * (SW64 ? 64 : 128);
    float o[D / 2];
#pragma unroll
    for (int i = 0; i < D / 2; i++) o[i] = 0.0f;
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
    const float sc = a.scale_log2 /* SPEC 1, "Scale" */;
    const int r0 = q0 + 64 * c + 16 * warp + lane / 4, r1 = r0 + 8;
    const int t4 = lane % 4;
    float sacc[64];

    auto issue_s = [&](int s) {
      const uint32_t kb = sK + s * L::KB;
#pragma unroll
      for (int kk = 0; kk < DQK / 16; kk++) {
        if (SW64) { /* 64-byte rows: k-step kk 32 bytes on */
          dac_wg_ss<T, 128, 0>(sacc, wg_desc(qa + kk * 32, 16, 512, 2), wg_desc(kb + kk * 32, 16, 512, 2),
                               kk > 0);
          continue;
        }
        const uint64_t da = wg_desc(qa + (kk >> 2) * 16384 + (kk & 3) * 32, 16, 1024);
        if (GR) {
          const uint64_t db = wg_desc(kb + kk * 2048, DQK * 128, 1024);
          dac_wg_ss<T, 128, 1>(sacc, da, db, kk > 0);
        } else {
          const uint64_t db = wg_desc(kb + (kk >> 2) * 16384 + (kk & 3) * 32, 16, 1024);
          dac_wg_ss<T, 128, 0>(sacc, da, db, kk > 0);
        }
      }
      wg_commit();
    };

    /* The two consumer warpgroups take turns to issue their MMAs (named
     * barriers 4 and 5: a warpgroup waits for its turn, issues, then
     * hands the turn over), so one's softmax runs while the other's MMAs
     * do; warpgroup 0 starts. */
    auto turn_wait = [&]() {
      if (DAC_WG_PINGPONG) named_sync(4 + c, 256);
    };
    auto turn_pass = [&](bool last) {
      if (DAC_WG_PINGPONG && !(last && c == 1)) named_arrive(5 - c, 256);
    };
    if (DAC_WG_PINGPONG && nk > 0 && c == 1) named_arrive(4, 256);
    if (nk > 0) {
      mbar_wait(full(0), 0);
      turn_wait();
      wg_fence();
      issue_s(0);
      turn_pass(false);
      wg_wait<0>();
      if (GR) {
        __syncwarp();
        if (lane == 0) mbar_arrive(empty(0));
      }
    }
    for (int j = 0; j < nk; j++) {
      const int s = j % NSV; /* this tile's V stage (exact: its K and V stage) */
      const int k1 = (j + 1) % NSK; /* the next tile's K or Kf^T stage */
      const int k0 = j * WG_BN;
      /* mask, online softmax (cuda_softmax.cuh) */
      const bool need_mask = (k0 + WG_BN > a.seq_k) || (a.causal && k0 + WG_BN - 1 > q0 + 64 * c + off);
      /* masked copies: registers the MMA writes are never written by other
       * instructions (ptxas would then serialise the MMAs) */
      float sv[16][4];
#pragma unroll
      for (int i = 0; i < 64; i++) sv[i / 4][i % 4] = sacc[i];
      float al[2];
      dac_sm_tile(sv, need_mask, [&](int nb, int e) {
        const int key = k0 + nb * 8 + 2 * t4 + (e & 1);
        const int row = e < 2 ? r0 : r1;
        return key >= a.seq_k || (a.causal && key > row + off);
      }, m, l, sc, al);
      uint32_t pa[8][4];
#pragma unroll
      for (int nb = 0; nb < 16; nb++) {
        pa[nb >> 1][(nb & 1) * 2 + 0] = cv::pack(sv[nb][0], sv[nb][1]);
        pa[nb >> 1][(nb & 1) * 2 + 1] = cv::pack(sv[nb][2], sv[nb][3]);
      }
      dac_sm_rescale<D / 8>(o, al);
      /* O += P V, and the next tile's S behind it */
      if (GR) mbar_wait(vfull(s), (j / NSV) & 1);
      if (j + 1 < nk) mbar_wait(full(k1), ((j + 1) / NSK) & 1);
      turn_wait();
      wg_fence();
      const uint32_t vb = sV + s * L::VB;
#pragma unroll
      for (int kk = 0; kk < WG_BN / 16; kk++)
        dac_wg_rs<T, D>(o, pa[kk], wg_desc(vb + kk * 2048, WG_BN * 128, 1024));
      wg_commit();
      if (j + 1 < nk) issue_s(k1);
      turn_pass(j + 1 == nk);
      /* stage s's V (grouped) or K and V (exact) are free once P V is done;
       * grouped, the next stage's Kf^T once its S is */
      const uint32_t rel = GR ? vempty(s) : empty(s);
      if (j + 1 < nk) {
        wg_wait<1>();
        __syncwarp();
        if (lane == 0) mbar_arrive(rel);
        wg_wait<0>();
        if (GR) {
          __syncwarp();
          if (lane == 0) mbar_arrive(empty(k1));
        }
      } else {
        wg_wait<0>();
        __syncwarp();
        if (lane == 0) mbar_arrive(rel);
      }
    }

    /* O / l, and the LSE where asked for (a plan whose only da_attn_ext
     * option is ext.lse: dense, [batch][heads][seq_q]) */
    const float l0 = dac_lanes_sum<1, 2>(l[0]), l1 = dac_lanes_sum<1, 2>(l[1]);
    const bool seen0 = !a.causal || r0 + off >= 0, seen1 = !a.causal || r1 + off >= 0;
    const float i0 = dac_inv_sum(l0, seen0), i1 = dac_inv_sum(l1, seen1);
    if (a.lse && t4 == 0) {
      if (r0 < a.seq_q) a.lse[bh * (size_t)a.seq_q + r0] = dac_lse_val(seen0, m[0] * sc, l0);
      if (r1 < a.seq_q) a.lse[bh * (size_t)a.seq_q + r1] = dac_lse_val(seen1, m[1] * sc, l1);
    }
    T *out = (T *)a.o + bh * (size_t)a.seq_q * D;
#pragma unroll
    for (int i = 0; i < D / 8; i++) {
      const int col = i * 8 + 2 * t4;
      if (r0 < a.seq_q)
        *reinterpret_cast<uint32_t *>(out + (size_t)r0 * D + col) = cv::pack(o[4 * i] * i0, o[4 * i + 1] * i0);
      if (r1 < a.seq_q)
        *reinterpret_cast<uint32_t *>(out + (size_t)r1 * D + col) =
            cv::pack(o[4 * i + 2] * i1, o[4 * i + 3] * i1);
    }
  }
#endif
}

/* K [bkv][seq_k][D] -> K^T [bkv][D][ld], zero past seq_k: 64 keys x 64
 * columns per block through shared memory, 16-byte loads and stores. */
template <int D>
__global__ void __launch_bounds__(256) dac_kt_kernel(const uint16_t *__restrict__ k, uint16_t *__restrict__ kt,
                                                    int seq_k, int ld) {
  __shared__ uint16_t tile[64][64 + 2];
  const int k0 = blockIdx.x * 64, d0 = blockIdx.y * 64;
  const size_t bkv = blockIdx.z;
  const uint16_t *src = k + bkv * (size_t)seq_k * D;
  for (int e = threadIdx.x; e < 64 * 8; e += 256) {
    const int r = e / 8, ch = e % 8, key = k0 + r;
    uint4 v = make_uint4(0u, 0u, 0u, 0u);
    if (key < seq_k) v = *reinterpret_cast<const uint4 *>(src + (size_t)key * D + d0 + ch * 8);
    const uint16_t *h = reinterpret_cast<const uint16_t *>(&v);
#pragma unroll
    for (int x = 0; x < 8; x++) tile[r][ch * 8 + x] = h[x];
  }
  __syncthreads();
  uint16_t *dst = kt + bkv * (size_t)D * ld;
  for (int e = threadIdx.x; e < 64 * 8; e += 256) {
    const int r = e / 8, ch = e % 8; /* r: column d0 + r, keys k0 + 8ch .. */
    uint16_t h[8];
#pragma unroll
    for (int x = 0; x < 8; x++) h[x] = tile[ch * 8 + x][r];
    *reinterpret_cast<uint4 *>(dst + (size_t)(d0 + r) * ld + k0 + ch * 8) = *reinterpret_cast<const uint4 *>(h);
  }
}

/* cuTensorMapEncodeTiled, from the driver through the runtime (so the
 * module links against no libcuda); null when the driver lacks it */
typedef CUresult (*wg_encode_fn)(CUtensorMap *, CUtensorMapDataType, cuuint32_t, void *, const cuuint64_t *,
                                 const cuuint64_t *, const cuuint32_t *, const cuuint32_t *,
                                 CUtensorMapInterleave, CUtensorMapSwizzle, CUtensorMapL2promotion,
                                 CUtensorMapFloatOOBfill);
wg_encode_fn wg_encoder() {
  static void *fn;   /* looked up once; a repeated lookup finds the same */
  static int looked;
  if (__atomic_load_n(&looked, __ATOMIC_ACQUIRE)) return (wg_encode_fn)__atomic_load_n(&fn, __ATOMIC_RELAXED);
  void *p = nullptr;
  cudaDriverEntryPointQueryResult q = cudaDriverEntryPointSymbolNotFound;
#if CUDART_VERSION >= 12050
  if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &p, 12000, cudaEnableDefault, &q) != cudaSuccess ||
      q != cudaDriverEntryPointSuccess)
    p = nullptr;
#else
  if (cudaGetDriverEntryPoint("cuTensorMapEncodeTiled", &p, cudaEnableDefault, &q) != cudaSuccess ||
      q != cudaDriverEntryPointSuccess)
    p = nullptr;
#endif
  (void)cudaGetLastError(); /* a failed lookup must not linger as the sticky last error */
  __atomic_store_n(&fn, p, __ATOMIC_RELAXED);
  __atomic_store_n(&looked, 1, __ATOMIC_RELEASE);
  return (wg_encode_fn)p;
}

/* a 3-d map over 16-bit elements [n2][n1][n0], boxes of b0 x b1 x 1 in the
 * swizzle the kernel's tiles use (128-byte; 64-byte for boxes 32 elements
 * wide); reads past n1 give zeros */
bool wg_map3(CUtensorMap *m, const void *base, uint64_t n0, uint64_t n1, uint64_t n2, uint32_t b0, uint32_t b1) {
  const wg_encode_fn enc = wg_encoder();
  if (!enc) return false;
  const cuuint64_t dims[3] = {n0, n1, n2};
  const cuuint64_t strides[2] = {n0 * 2, n0 * n1 * 2};
  const cuuint32_t box[3] = {b0, b1, 1}, es[3] = {1, 1, 1};
  return enc(m, CU_TENSOR_MAP_DATA_TYPE_UINT16, 3, const_cast<void *>(base), dims, strides, box, es,
             CU_TENSOR_MAP_INTERLEAVE_NONE, b0 == 32 ? CU_TENSOR_MAP_SWIZZLE_64B : CU_TENSOR_MAP_SWIZZLE_128B,
             CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
             CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

template <typename T, int D, int DQK, int GS>
cudaError_t launch_wg(const dac_args *a, cudaStream_t s) {
  typedef wg_smem<D, DQK, GS> L;
  const uint64_t nkv = (uint64_t)a->batch * (uint64_t)a->kv_heads;
  CUtensorMap tmk, tmv;
  /* V [bkv][seq_k][D] (and K, exact): 128 keys x 64 columns a box; for
   * G > 1 the kernel reads K^T [bkv][D][kt_ld] instead: 64 keys x D rows */
  if (!wg_map3(&tmv, a->v, D, (uint64_t)a->seq_k, nkv, 64, WG_BN)) return cudaErrorNotSupported;
  if (GS > 1) {
    if (!wg_map3(&tmk, a->kt, (uint64_t)a->kt_ld, D, nkv, 64, D)) return cudaErrorNotSupported;
    dim3 g((unsigned)(a->kt_ld / 64), D / 64, (unsigned)nkv);
    dac_kt_kernel<D><<<g, 256, 0, s>>>((const uint16_t *)a->k, (uint16_t *)a->kt, a->seq_k, a->kt_ld);
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) return e;
  } else if (GS == 0) {
    /* K' [batch * heads][seq_k][DQK] */
    if (!wg_map3(&tmk, a->kp, DQK, (uint64_t)a->seq_k, (uint64_t)a->batch * (uint64_t)a->heads,
                 DQK < 64 ? DQK : 64, WG_BN))
      return cudaErrorNotSupported;
  } else if (!wg_map3(&tmk, a->k, D, (uint64_t)a->seq_k, nkv, 64, WG_BN)) {
    return cudaErrorNotSupported;
  }
  cudaError_t e = cudaFuncSetAttribute(dac_wg_kernel<T, D, DQK, GS>,
                                       cudaFuncAttributeMaxDynamicSharedMemorySize, (int)L::bytes);
  if (e != cudaSuccess) return e;
  dim3 grid((unsigned)((a->seq_q + WG_BM - 1) / WG_BM), (unsigned)a->heads, (unsigned)a->batch);
  dac_wg_kernel<T, D, DQK, GS><<<grid, WG_THREADS, L::bytes, s>>>(*a, tmk, tmv);
  return cudaGetLastError();
}

template <typename T, int D> cudaError_t launch_wg_g(const dac_args *a, cudaStream_t s) {
  switch (a->G) {
  case 1: return launch_wg<T, D, D, 1>(a, s);
  case 2: return launch_wg<T, D, D / 2, 2>(a, s);
  case 4: return launch_wg<T, D, (D / 4 < 16 ? 16 : D / 4), 4>(a, s);
  case 8: return launch_wg<T, D, 16, 8>(a, s);
  default: return cudaErrorInvalidValue;
  }
}

} /* namespace */

extern "C" int dac_wg_supported(int cc_major, int cc_minor, da_dtype dt, int d, int G, int hash_block) {
#ifndef DAC_HAVE_SM90A
  (void)cc_major, (void)cc_minor, (void)dt, (void)d, (void)G, (void)hash_block;
  return 0; /* built without the sm_90a target */
#else
  if (cc_major != 9 || cc_minor != 0) return 0;
  if (dt != DA_F16 && dt != DA_BF16) return 0;
  if (d != 64 && d != 128) return 0;
  if (G != 1 && G != 2 && G != 4 && G != 8) return 0;
  if (G > 1 && hash_block % WG_BM) return 0;
  return wg_encoder() != nullptr; /* the TMA maps need the driver's encoder */
#endif
}

extern "C" int dac_wg_proj_supported(int cc_major, int cc_minor, da_dtype dt, int d, int r) {
  if (!dac_wg_supported(cc_major, cc_minor, dt, d, 1, WG_BM)) return 0;
  return r == 32 || r == 64 || (d == 128 && r == 128);
}

extern "C" cudaError_t dac_launch_wg_proj(const dac_args *a, cudaStream_t s) {
  if (!a->qs || !a->kp) return cudaErrorInvalidValue;
  if (a->dt == DA_F16) {
    if (a->d == 64 && a->pr == 32) return launch_wg<__half, 64, 32, 0>(a, s);
    if (a->d == 128 && a->pr == 32) return launch_wg<__half, 128, 32, 0>(a, s);
    if (a->d == 64 && a->pr == 64) return launch_wg<__half, 64, 64, 0>(a, s);
    if (a->d == 128 && a->pr == 64) return launch_wg<__half, 128, 64, 0>(a, s);
    if (a->d == 128 && a->pr == 128) return launch_wg<__half, 128, 128, 0>(a, s);
  } else if (a->dt == DA_BF16) {
    if (a->d == 64 && a->pr == 32) return launch_wg<__nv_bfloat16, 64, 32, 0>(a, s);
    if (a->d == 128 && a->pr == 32) return launch_wg<__nv_bfloat16, 128, 32, 0>(a, s);
    if (a->d == 64 && a->pr == 64) return launch_wg<__nv_bfloat16, 64, 64, 0>(a, s);
    if (a->d == 128 && a->pr == 64) return launch_wg<__nv_bfloat16, 128, 64, 0>(a, s);
    if (a->d == 128 && a->pr == 128) return launch_wg<__nv_bfloat16, 128, 128, 0>(a, s);
  }
  return cudaErrorInvalidValue;
}

extern "C" size_t dac_wg_kt_ld(int seq_k) { return ((size_t)seq_k + WG_BN - 1) / WG_BN * WG_BN; }

extern "C" cudaError_t dac_launch_wg(const dac_args *a, cudaStream_t s) {
  if (a->G > 1 && (!a->kt || a->kt_ld % WG_BN)) return cudaErrorInvalidValue;
  if (a->dt == DA_F16) {
    if (a->d == 64) return launch_wg_g<__half, 64>(a, s);
    if (a->d == 128) return launch_wg_g<__half, 128>(a, s);
  } else if (a->dt == DA_BF16) {
    if (a->d == 64) return launch_wg_g<__nv_bfloat16, 64>(a, s);
    if (a->d == 128) return launch_wg_g<__nv_bfloat16, 128>(a, s);
  }
  return cudaErrorInvalidValue;
}
