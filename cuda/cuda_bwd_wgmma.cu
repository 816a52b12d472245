/* SPDX-License-Identifier: Apache-2.0 */
/* The backward pass's Hopper main kernel (cuda_bwd.cuh step 3, the atomic
 * arrangement): f16 or bf16, head_dim D = 64 or 128, warpgroup MMA
 * (wgmma) with f32 accumulation, operands read by descriptor from
 * 128-byte swizzled shared memory, so that no warp re-reads a tile through
 * ldmatrix (the mma.sync kernel's bound, bench/cuda-notes.md).
 *
 * Block (key block of BC = 128 keys, kv head, batch), two warpgroups;
 * warpgroup w owns keys 64w..64w+63 of the block and their dK, dV
 * accumulators (registers, [64][D] each, the m64nD accumulator layout).
 * K and V stay in shared memory; the query heads of the kv head and their
 * blocks of BR query rows (64 at D = 128, 128 at D = 64) stream through
 * two slots of Q and dO (cp.async, one step ahead). Per step, in each
 * warpgroup:
 *   S^T = K_w Q^T and dP^T = V_w dO^T (wgmma m64nBR, A = K_w or V_w and
 *   B = Q or dO, both K-major: rows of D elements);
 *   P^T = 2^(S^T sc - LSE log2 e) on visible (row, key) pairs, else 0,
 *   dS^T = P^T o (dP^T - D) (cuda_bwd_tile.cuh's bwd_pds_t, as the
 *   mma.sync kernels);
 *   dV += P^T dO, dK += dS^T Q (wgmma m64nD, A = P^T, dS^T from registers
 *   as the forward passes P, B = dO, Q MN-major);
 *   dS^T into shared memory ([BC keys][BR rows], swizzled);
 * then, both warpgroups' dS^T in place, warpgroup w computes a 64 x 64
 * part of E = dS K (D = 128: columns 64w on; D = 64: rows 64w on) by
 * wgmma m64n64 over the block's 128 keys, A = dS^T and B = K both MN-major,
 * and adds it to the f32 accumulator with 8-byte atomics. dK and dV are
 * written once at the end in the plan's dtype (dK scaled by the softmax
 * scale). The logits' Q is Q itself or the expanded Q (G > 1, the
 * projection strategy: dense, in the same dtype), as for the mma.sync
 * kernel. sm_90a alone, like cuda_wgmma.cu; elsewhere dac_bwd_wg_supported
 * says no and the mma.sync kernel runs. */
#include "cuda_bwd_tile.cuh"

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define DAC_BWG_DEVICE 1
#include "cuda_wg.cuh"
#include "cuda_wgmma_ops.cuh"
#else
#define DAC_BWG_DEVICE 0
#endif

namespace {

constexpr int BWG_BC = 128, BWG_NT = 256;

/* The query rows of a step, BR (64 at head_dim 128; 128 at 64, where the
 * registers allow it and the MMAs of a step are half as many FLOPs a row),
 * and the shared memory plan (bytes; the tiles 1024-aligned for the
 * swizzle) */
template <int D> struct bwg_smem {
  static constexpr int BR = D == 64 ? 128 : 64;
  static constexpr int KB = BWG_BC * D * 2;  /* K or V: [D/64][BC keys][128 B] */
  static constexpr int RB = BR * D * 2;      /* Q or dO, one slot: [D/64][BR rows][128 B] */
  static constexpr int SB = BWG_BC * BR * 2; /* dS^T: [BR/64][BC keys][128 B] */
  static constexpr int K = 0, V = KB, Q = 2 * KB, G = Q + 2 * RB, S = G + 2 * RB, L = S + SB;
  static constexpr int DS = L + 2 * BR * 4; /* LSE [2][BR] then D [2][BR], f32 */
  static constexpr size_t bytes = 1024 /* alignment slack */ + DS + 2 * BR * 4;
};

#if DAC_BWG_DEVICE
/* rows row0 .. row0 + ROWS - 1 of a [nrows][D] matrix at row stride rs into
 * the swizzled tile at dst ([D/64][ROWS][128 B]) with cp.async, zeros past
 * nrows */
template <typename T, int ROWS, int D>
__device__ __forceinline__ void bwg_load(unsigned char *dst, const T *src, int row0, int nrows, long long rs) {
  constexpr int CPR = D / 8;
#pragma unroll
  for (int i = threadIdx.x; i < ROWS * CPR; i += BWG_NT) {
    const int r = i / CPR, c = i % CPR;
    const bool ok = row0 + r < nrows;
    const T *g = ok ? src + (long long)(row0 + r) * rs + c * 8 : src;
    dac_cp_async<16>(dst + swz(r, c, ROWS), g, ok);
  }
}

/* step it's rows: Q (bwd_q_src), dO, LSE and D of head st.head(it), rows
 * st.row0(it) on, into slot sl */
template <typename T, int D>
__device__ __forceinline__ void bwg_load_step(const dac_bwd_args &a, int b, const bwd_steps<bwg_smem<D>::BR> &st,
                                              int it, int sl, unsigned char *sm) {
  typedef bwg_smem<D> L;
  constexpr int BR = L::BR;
  const int h = st.head(it), i0 = st.row0(it);
  const long long bh = (long long)b * a.heads + h;
  long long qrs;
  const T *qsrc = bwd_q_src<T, D>(a, b, h, qrs);
  const T *gsrc = (const T *)a.dout + ((long long)b * a.ost[0] + (long long)h * a.ost[1]);
  bwg_load<T, BR, D>(sm + L::Q + sl * L::RB, qsrc, i0, a.seq_q, qrs);
  bwg_load<T, BR, D>(sm + L::G + sl * L::RB, gsrc, i0, a.seq_q, a.ost[2]);
  float *Ls = (float *)(sm + L::L) + sl * BR, *Ds = (float *)(sm + L::DS) + sl * BR;
  for (int r = threadIdx.x; r < BR; r += BWG_NT) {
    const bool ok = i0 + r < a.seq_q;
    const long long at = ok ? bh * a.seq_q + i0 + r : 0;
    dac_cp_async<4>(Ls + r, a.lse + at, ok);
    dac_cp_async<4>(Ds + r, a.dsum + at, ok);
  }
}
#endif

template <typename T, int D>
__global__ void __launch_bounds__(BWG_NT, 1) dac_bwd_wg_kernel(const __grid_constant__ dac_bwd_args a) {
#if DAC_BWG_DEVICE
  typedef bwg_smem<D> L;
  typedef dac_mma_op<T> op;
  constexpr int BC = BWG_BC, BR = L::BR;
  extern __shared__ unsigned char smraw[];
  const uint32_t s0 = dac_smem_u32(smraw);
  const uint32_t pad = (1024u - (s0 & 1023u)) & 1023u;
  unsigned char *sm = smraw + pad;
  const uint32_t sb = s0 + pad;

  const int j0 = blockIdx.x * BC, kh = blockIdx.y, b = blockIdx.z;
  const int wg = threadIdx.x / 128, t = threadIdx.x % 128, warp = t / 32, lane = t % 32;
  const int g4 = lane / 4, t4 = lane % 4;
  const int kw0 = 64 * wg + 16 * warp; /* this warp's 16 keys in the block */

  /* the steps (bwd_kblock_begin's), K, V and step 0 in shared memory */
  bwd_steps<BR> st;
  {
    const bwd_span rows = bwd_rows_of<BR>(a, j0, min(j0 + BC, a.seq_k) - 1);
    st.imin = rows.lo, st.imax = rows.hi, st.nsteps = rows.nb;
    st.h0 = kh * (a.heads / a.kv_heads);
    st.n = st.nsteps * (a.heads / a.kv_heads);
  }
  {
    const T *ksrc = (const T *)a.k + ((long long)b * a.kst[0] + (long long)kh * a.kst[1]);
    const T *vsrc = (const T *)a.v + ((long long)b * a.vst[0] + (long long)kh * a.vst[1]);
    bwg_load<T, BC, D>(sm + L::K, ksrc, j0, a.seq_k, a.kst[2]);
    bwg_load<T, BC, D>(sm + L::V, vsrc, j0, a.seq_k, a.vst[2]);
    if (st.n > 0) bwg_load_step<T, D>(a, b, st, 0, 0, sm);
    dac_cp_commit();
    dac_cp_wait<0>();
    fence_proxy();
    __syncthreads();
  }

  float dvk[2][D / 8][4]; /* dV, dK of this warpgroup's 64 keys (m64nD layout) */
  bwd_zero(dvk[0]);
  bwd_zero(dvk[1]);
  const uint32_t sK = sb + L::K, sV = sb + L::V, sS = sb + L::S;

  for (int it = 0; it < st.n; it++) {
    const int cur = it & 1;
    /* the other slot was last read by step it - 1, whose MMAs completed */
    if (it + 1 < st.n) bwg_load_step<T, D>(a, b, st, it + 1, cur ^ 1, sm);
    dac_cp_commit();
    const int i0 = st.row0(it);
    const long long bh = (long long)b * a.heads + st.head(it);
    const uint32_t sQ = sb + L::Q + cur * L::RB, sG = sb + L::G + cur * L::RB;
    const float *Lc = (const float *)(sm + L::L) + cur * BR, *Dc = (const float *)(sm + L::DS) + cur * BR;

    /* S^T = K_w Q^T, dP^T = V_w dO^T: [64 keys][BR rows] */
    float sacc[BR / 2], pacc[BR / 2];
    wg_fence();
#pragma unroll
    for (int kk = 0; kk < D / 16; kk++) {
      const uint32_t ko = (kk >> 2) * (BC * 128) + wg * (64 * 128) + (kk & 3) * 32;
      const uint32_t ro = (kk >> 2) * (BR * 128) + (kk & 3) * 32;
      dac_wg_ss<T, BR, 0>(sacc, wg_desc(sK + ko, 16, 1024), wg_desc(sQ + ro, 16, 1024), kk > 0);
      dac_wg_ss<T, BR, 0>(pacc, wg_desc(sV + ko, 16, 1024), wg_desc(sG + ro, 16, 1024), kk > 0);
    }
    wg_commit();
    wg_wait<0>();

    /* P^T, dS^T (copies: registers the MMAs write are written by nothing else) */
    float sp[2][BR / 8][4];
#pragma unroll
    for (int i = 0; i < BR / 2; i++) {
      sp[0][i / 4][i % 4] = sacc[i];
      sp[1][i / 4][i % 4] = pacc[i];
    }
    {
      /* a tile whose every (key, row) pair is visible skips the mask */
      const bwd_mask mk = bwd_mask_of(a, j0, i0);
      if (mk.kmax >= BC && mk.rmax >= BR && mk.dlo <= -(BR - 1) && mk.dhi >= BC - 1)
        bwd_pds_t<0, T, BR / 8, true>(sp, mk, Lc, Dc, a.sc_log2, kw0, lane, (T *)nullptr);
      else
        bwd_pds_t<0, T>(sp, mk, Lc, Dc, a.sc_log2, kw0, lane, (T *)nullptr);
    }

    /* dS^T into shared memory: key row kl, rows 8nt + 2t4, + 1 as one word
     * (panel nt / 8) */
#pragma unroll
    for (int nt = 0; nt < BR / 8; nt++)
#pragma unroll
      for (int hf = 0; hf < 2; hf++)
        *reinterpret_cast<uint32_t *>(sm + L::S + swz(kw0 + g4 + 8 * hf, nt, BC) + 4 * t4) =
            op::pack(sp[1][nt][2 * hf], sp[1][nt][2 * hf + 1]);

    /* dV += P^T dO, dK += dS^T Q: k over the BR rows, A from registers */
    uint32_t pa[BR / 16][4], da[BR / 16][4];
#pragma unroll
    for (int kk = 0; kk < BR / 16; kk++) {
      bwd_afrag<T>(pa[kk], sp[0], kk);
      bwd_afrag<T>(da[kk], sp[1], kk);
    }
    wg_fence();
#pragma unroll
    for (int kk = 0; kk < BR / 16; kk++)
      dac_wg_rs<T, D>(&dvk[0][0][0], pa[kk], wg_desc(sG + kk * 2048, BR * 128, 1024));
#pragma unroll
    for (int kk = 0; kk < BR / 16; kk++)
      dac_wg_rs<T, D>(&dvk[1][0][0], da[kk], wg_desc(sQ + kk * 2048, BR * 128, 1024));
    wg_commit();

    fence_proxy();
    __syncthreads(); /* dS^T of both warpgroups in place */

    /* E = dS K over the block's keys, a [64 rows][64 columns] part a
     * warpgroup (D = 128: all 64 rows, columns 64 wg on; D = 64: rows 64 wg
     * on, all columns): A = dS^T [keys][rows], B = K [keys][D], both
     * MN-major, each part one 64-wide panel of its tile */
    float eacc[32];
    const int er0 = D == 64 ? 64 * wg : 0, ec0 = D == 64 ? 0 : 64 * wg;
    {
      const uint32_t sa = sS + (er0 / 64) * (BC * 128), kn = sK + (ec0 / 64) * (BC * 128);
      wg_fence();
#pragma unroll
      for (int kk = 0; kk < BC / 16; kk++)
        dac_wg_sstt<T, 64>(eacc, wg_desc(sa + kk * 2048, BC * 128, 1024), wg_desc(kn + kk * 2048, BC * 128, 1024),
                           kk > 0);
      wg_commit();
      wg_wait<0>(); /* also dV, dK's */
    }
#pragma unroll
    for (int hf = 0; hf < 2; hf++) {
      const int i = i0 + er0 + 16 * warp + g4 + 8 * hf;
      if (i >= st.imin && i <= st.imax) {
        float *er = a.dacc + (bh * a.seq_q + i) * D + ec0 + 2 * t4;
#pragma unroll
        for (int nt = 0; nt < 8; nt++)
          atomicAdd(reinterpret_cast<float2 *>(er + nt * 8),
                    make_float2(eacc[4 * nt + 2 * hf], eacc[4 * nt + 2 * hf + 1]));
      }
    }
    dac_cp_wait<0>();
    fence_proxy();
    __syncthreads(); /* the next slot is in; dS^T and this slot free */
  }

  /* dK (scaled) and dV of this warp's 16 keys */
  bwd_store_dkv<T, D>(a, b, kh, j0 + kw0, dvk, lane);
#endif
}

#ifndef DAC_HAVE_SM90A
template <typename T, int D> static cudaError_t launch_bwg(const dac_bwd_args *, cudaStream_t) {
  return cudaErrorInvalidDeviceFunction;
}
#else
template <typename T, int D> static cudaError_t launch_bwg(const dac_bwd_args *a, cudaStream_t s) {
  const size_t smem = bwg_smem<D>::bytes;
  cudaError_t e = cudaFuncSetAttribute(dac_bwd_wg_kernel<T, D>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       (int)smem);
  if (e != cudaSuccess) return e;
  const dim3 grid((a->seq_k + BWG_BC - 1) / BWG_BC, a->kv_heads, a->batch);
  dac_bwd_wg_kernel<T, D><<<grid, BWG_NT, smem, s>>>(*a);
  return cudaGetLastError();
}
#endif

template <typename T> static cudaError_t launch_bwg_t(const dac_bwd_args *a, cudaStream_t s) {
  if (a->d == 64) return launch_bwg<T, 64>(a, s);
  if (a->d == 128) return launch_bwg<T, 128>(a, s);
  return cudaErrorInvalidValue;
}

} /* namespace */

extern "C" int dac_bwd_wg_supported(int cc_major, int cc_minor, da_dtype dt, int d) {
#ifndef DAC_HAVE_SM90A
  (void)cc_major, (void)cc_minor, (void)dt, (void)d;
  return 0; /* built without the sm_90a target */
#else
  return cc_major == 9 && cc_minor == 0 && (dt == DA_F16 || dt == DA_BF16) && (d == 64 || d == 128);
#endif
}

extern "C" cudaError_t dac_launch_bwd_wg(const dac_bwd_args *a, cudaStream_t s) {
  if (a->dt == DA_F16) return launch_bwg_t<__half>(a, s);
  if (a->dt == DA_BF16) return launch_bwg_t<__nv_bfloat16>(a, s);
  return cudaErrorInvalidValue;
}
