/* SPDX-License-Identifier: Apache-2.0 */
/* The backward pass's tensor-core main kernel (cuda_bwd.cuh step 3): f16 or
 * bf16, head_dim D = 64 or 128, mma.sync m16n8k16 with f32 accumulation,
 * fed by ldmatrix with the forward's fragment patterns (cuda_mma.cuh).
 *
 * Block (key block of BC = 16 WARPS keys, kv head, batch), WARPS warps (4
 * or 8: dac_bwd_args.bc 64 or 128 keys); warp w owns keys 16w..16w+15 of
 * the block and their dK, dV accumulators (registers, [D/8][4] each). K and V stay in shared memory; the query heads of the kv
 * head and their blocks of BR query rows (64 at D = 64, 32 at D = 128, for
 * the registers) stream through two slots of Q and dO, brought in with
 * cp.async one step ahead. Per step, in each warp:
 *   S^T = K Q^T (A: K rows, B: Q as [n][k]), dP^T = V dO^T likewise;
 *   P^T = 2^(S^T sc - LSE log2 e) on visible (row, key) pairs, else 0;
 *   dS^T = P^T o (dP^T - D);
 *   dV += P^T dO, dK += dS^T Q (A: P^T, dS^T from the accumulators as the
 *   forward turns P into A fragments; B: dO, Q through ldmatrix .trans);
 * dS^T goes to shared memory as dS [BR][BC]; after a barrier the warps
 * compute E = dS K (A: dS rows, B: K through .trans) over [BR][D], split
 * into m-tiles and column halves, and add it to the f32 accumulator with
 * atomics. The logits' Q is Q itself or the expanded Q of G > 1 (dense, in
 * the same dtype); dK then is dS^T Qx, as cuda_bwd.cuh says. */
#ifndef DA_CUDA_BWD_MMA_CUH
#define DA_CUDA_BWD_MMA_CUH

#include "cuda_bwd_tile.cuh"

template <int D, int WARPS> struct dac_bwd_mma_cfg {
  static constexpr int BC = 16 * WARPS, BR = D == 64 ? 64 : 32, NT = 32 * WARPS;
  static constexpr int LD = D + 8, LDS = BC + 8;
  template <typename T> static constexpr size_t smem() {
    return sizeof(T) * (2 * (size_t)BC * LD + 4 * (size_t)BR * LD + (size_t)BR * LDS) +
           sizeof(float) * 4 * BR;
  }
};

template <typename T, int D, int WARPS>
__global__ void __launch_bounds__(32 * WARPS) dac_bwd_mma_kernel(dac_bwd_args a) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  typedef dac_mma_op<T> op;
  typedef dac_bwd_mma_cfg<D, WARPS> cfg;
  constexpr int BC = cfg::BC, BR = cfg::BR, NT = cfg::NT, LD = cfg::LD, LDS = cfg::LDS;
  extern __shared__ __align__(16) unsigned char smraw[];
  T *Ks = (T *)smraw;               /* [BC][LD] */
  T *Vs = Ks + BC * LD;             /* [BC][LD] */
  T *Qs = Vs + BC * LD;             /* [2][BR][LD] */
  T *Gs = Qs + 2 * BR * LD;         /* [2][BR][LD]: dO */
  T *dSs = Gs + 2 * BR * LD;        /* [BR][LDS]: dS, rows = query rows */
  float *Ls = (float *)(dSs + BR * LDS); /* [2][BR]: LSE (-inf: no key) */
  float *Ds = Ls + 2 * BR;               /* [2][BR] */

  const int j0 = blockIdx.x * BC, kh = blockIdx.y, b = blockIdx.z;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g4 = lane / 4, t4 = lane % 4;
  const int kw0 = warp * 16; /* this warp's keys in the block */

  /* the query rows that see a key of the block, step by step (bwd_steps);
   * K, V and the first step in shared memory */
  const bwd_steps<BR> st = bwd_kblock_begin<T, BC, BR, D, LD, NT>(a, b, kh, j0, Ks, Vs, Qs, Gs, Ls, Ds);

  float dvk[2][D / 8][4]; /* dV, dK */
  bwd_zero(dvk[0]);
  bwd_zero(dvk[1]);

  /* E = dS K: warp w takes m-tile w % MQ and columns [n0, n0 + NQ) */
  constexpr int MQ = BR / 16, NQ = D * MQ / WARPS;
  static_assert(WARPS % MQ == 0 && NQ % 16 == 0, "dQ split");
  const int mq = warp % MQ, n0 = (warp / MQ) * NQ;

  for (int it = 0; it < st.n; it++) {
    const int cur = it & 1;
    if (it + 1 < st.n) bwd_load_step<T, BR, D, LD, NT>(a, b, st, it + 1, cur ^ 1, Qs, Gs, Ls, Ds);
    dac_cp_commit();
    const int i0 = st.row0(it);
    const long long bh = (long long)b * a.heads + st.head(it);
    const T *Qc = Qs + cur * BR * LD, *Gc = Gs + cur * BR * LD;
    const float *Lc = Ls + cur * BR, *Dc = Ds + cur * BR;

    /* S^T = K Q^T and dP^T = V dO^T: [16 keys][BR rows] per warp */
    float sp[2][BR / 8][4];
    bwd_mma_abt<T, D, BR, LD>(sp, Ks, Vs, kw0, Qc, Gc, lane);
    /* P^T into sp[0], dS^T into sp[1]; dS also to shared memory as [row][key] */
    bwd_pds_t<LDS>(sp, bwd_mask_of(a, j0, i0), Lc, Dc, a.sc_log2, kw0, lane, dSs);
    /* dV += P^T dO, dK += dS^T Q: k over the BR rows, n over D */
    bwd_mma_xb<T, 2, BR, D, LD>(dvk, sp, Gc, Qc, lane);
    __syncthreads(); /* dS complete */
    {
      float eq[NQ / 8][4];
      bwd_zero(eq);
#pragma unroll
      for (int kk = 0; kk < BC / 16; kk++) {
        uint32_t af[4];
        ldsm_x4(af, dSs + (mq * 16 + lane % 16) * LDS + kk * 16 + (lane / 16) * 8);
#pragma unroll
        for (int dp = 0; dp < NQ / 16; dp++) {
          uint32_t kb[4];
          ldsm_x4_t(kb, Ks + (kk * 16 + lane % 8 + ((lane / 8) % 2) * 8) * LD + n0 + dp * 16 + (lane / 16) * 8);
          op::mma(eq[2 * dp], af, kb[0], kb[1]);
          op::mma(eq[2 * dp + 1], af, kb[2], kb[3]);
        }
      }
#pragma unroll
      for (int hf = 0; hf < 2; hf++) {
        const int i = i0 + mq * 16 + g4 + 8 * hf;
        if (i >= st.imin && i <= st.imax) {
          float *er = a.dacc + (bh * a.seq_q + i) * D + n0 + 2 * t4;
#pragma unroll
          for (int nt = 0; nt < NQ / 8; nt++) {
#if __CUDA_ARCH__ >= 900 /* one 8-byte atomic for the pair (the column is even) */
            atomicAdd(reinterpret_cast<float2 *>(er + nt * 8),
                      make_float2(eq[nt][2 * hf], eq[nt][2 * hf + 1]));
#else
            atomicAdd(er + nt * 8, eq[nt][2 * hf]);
            atomicAdd(er + nt * 8 + 1, eq[nt][2 * hf + 1]);
#endif
          }
        }
      }
    }
    dac_cp_wait<0>();
    __syncthreads(); /* the next step's slot is in; dS and this slot free */
  }

  /* dK (scaled) and dV of this warp's keys */
  bwd_store_dkv<T, D>(a, b, kh, j0 + kw0, dvk, lane);
#endif
}

#ifdef __CUDACC__ /* the launches (tools/cuda_emu runs the kernel on the host) */
template <typename T, int D, int WARPS>
static cudaError_t launch_bwd_mma_d(const dac_bwd_args *a, cudaStream_t s) {
  typedef dac_bwd_mma_cfg<D, WARPS> cfg;
  const size_t smem = cfg::template smem<T>();
  cudaError_t e = cudaFuncSetAttribute(dac_bwd_mma_kernel<T, D, WARPS>,
                                       cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
  if (e != cudaSuccess) return e;
  const dim3 grid((a->seq_k + cfg::BC - 1) / cfg::BC, a->kv_heads, a->batch);
  dac_bwd_mma_kernel<T, D, WARPS><<<grid, cfg::NT, smem, s>>>(*a);
  return cudaGetLastError();
}

/* a->bc keys per block: 64 (4 warps) or 128 (8 warps) */
template <typename T> static cudaError_t launch_bwd_mma(const dac_bwd_args *a, cudaStream_t s) {
  if (a->bc != 64 && a->bc != 128) return cudaErrorInvalidValue;
  if (a->d == 64)
    return a->bc == 128 ? launch_bwd_mma_d<T, 64, 8>(a, s) : launch_bwd_mma_d<T, 64, 4>(a, s);
  if (a->d == 128)
    return a->bc == 128 ? launch_bwd_mma_d<T, 128, 8>(a, s) : launch_bwd_mma_d<T, 128, 4>(a, s);
  return cudaErrorInvalidValue;
}
#endif

#endif /* DA_CUDA_BWD_MMA_CUH */
