/* SPDX-License-Identifier: Apache-2.0 */
/* The backward pass's tensor-core main step in its "split" arrangement
 * (cuda_bwd.cuh step 3 under DISTRATTN_CUDA_BWD_DQ=split): f16 or bf16,
 * head_dim D = 64 or 128, mma.sync m16n8k16 with f32 accumulation, fed by
 * ldmatrix with the fragment patterns of cuda_bwd_tile.cuh. Two kernels, no
 * atomics:
 *
 * dac_bwd_dkv_kernel: block (key block of BC = 16 WARPS keys, kv head,
 * batch), warp w owning keys 16w..16w+15 and their dK, dV accumulators
 * (registers). K and V stay in shared memory; the query heads of the kv
 * head and their blocks of BR query rows stream through two slots of Q
 * (or the expanded Q) and dO, brought in with cp.async one step ahead.
 * Per step, in each warp: S^T = K Q^T, dP^T = V dO^T, P^T from the LSE,
 * dS^T = P^T o (dP^T - D), dV += P^T dO, dK += dS^T Q. It is
 * dac_bwd_mma_kernel without the dQ part (no dS in shared memory, no
 * barrier inside a step).
 *
 * dac_bwd_dq_mma_kernel: block (query block of BR = 16 WARPS rows, 128 or
 * 64, head, batch), warp w owning rows 16w..16w+15 and their dQ accumulator
 * (registers, [D/8][4]). Q (or Qx) and dO stay in shared memory; the key
 * blocks of BC keys the rows see stream through two slots of K and V,
 * brought in with cp.async one step ahead. Per step, in each warp:
 * S = Q K^T, dP = dO V^T (A: Q, dO rows, B: K, V as [n][k]), P from the
 * LSE, dS = P o (dP - D), dQ += dS K (A: dS from the accumulators, B: K
 * through ldmatrix .trans). At the end, s dQ in the plan's dtype at Q's
 * strides (G = 1), or the unscaled f32 E that step 4 folds back (G > 1,
 * and the projection strategy, whose step 4 is dQ = s E M_h^T):
 * every row written once, so E needs no zeroing and dQ no atomics. Causal
 * grids run the last query blocks (the most keys) first. */
#ifndef DA_CUDA_BWD_SPLIT_CUH
#define DA_CUDA_BWD_SPLIT_CUH

#include "cuda_bwd_tile.cuh"

/* The dK/dV kernel: BC = 16 WARPS keys, BR query rows a step. */
template <int D, int WARPS, int BR> struct dac_bwd_dkv_cfg {
  static constexpr int BC = 16 * WARPS, NT = 32 * WARPS, LD = D + 8;
  template <typename T> static constexpr size_t smem() {
    return sizeof(T) * (2 * (size_t)BC * LD + 4 * (size_t)BR * LD) + sizeof(float) * 4 * BR;
  }
};
/* The dQ kernel: BR = 16 WARPS rows, BC keys a step. */
template <int D, int WARPS, int BC> struct dac_bwd_dqk_cfg {
  static constexpr int BR = 16 * WARPS, NT = 32 * WARPS, LD = D + 8;
  template <typename T> static constexpr size_t smem() {
    return sizeof(T) * (2 * (size_t)BR * LD + 4 * (size_t)BC * LD) + sizeof(float) * 2 * BR;
  }
};

template <typename T, int D, int WARPS, int BR, int MINB>
__global__ void __launch_bounds__(32 * WARPS, MINB) dac_bwd_dkv_kernel(dac_bwd_args a) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  typedef dac_bwd_dkv_cfg<D, WARPS, BR> cfg;
  constexpr int BC = cfg::BC, NT = cfg::NT, LD = cfg::LD;
  extern __shared__ __align__(16) unsigned char smraw[];
  T *Ks = (T *)smraw;                    /* [BC][LD] */
  T *Vs = Ks + BC * LD;                  /* [BC][LD] */
  T *Qs = Vs + BC * LD;                  /* [2][BR][LD] */
  T *Gs = Qs + 2 * BR * LD;              /* [2][BR][LD]: dO */
  float *Ls = (float *)(Gs + 2 * BR * LD); /* [2][BR]: LSE (-inf: no key) */
  float *Ds = Ls + 2 * BR;                 /* [2][BR] */

  const int j0 = blockIdx.x * BC, kh = blockIdx.y, b = blockIdx.z;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int kw0 = warp * 16;

  /* the query rows that see a key of the block, step by step (bwd_steps);
   * K, V and the first step in shared memory */
  const bwd_steps<BR> st = bwd_kblock_begin<T, BC, BR, D, LD, NT>(a, b, kh, j0, Ks, Vs, Qs, Gs, Ls, Ds);

  float dvk[2][D / 8][4]; /* dV, dK */
  bwd_zero(dvk[0]);
  bwd_zero(dvk[1]);

  for (int it = 0; it < st.n; it++) {
    const int cur = it & 1;
    if (it + 1 < st.n) bwd_load_step<T, BR, D, LD, NT>(a, b, st, it + 1, cur ^ 1, Qs, Gs, Ls, Ds);
    dac_cp_commit();
    const int i0 = st.row0(it);
    const T *Qc = Qs + cur * BR * LD, *Gc = Gs + cur * BR * LD;
    const float *Lc = Ls + cur * BR, *Dc = Ds + cur * BR;

    /* S^T = K Q^T and dP^T = V dO^T: [16 keys][BR rows] per warp */
    float sp[2][BR / 8][4];
    bwd_mma_abt<T, D, BR, LD>(sp, Ks, Vs, kw0, Qc, Gc, lane);
    /* P^T into sp[0], dS^T into sp[1] */
    bwd_pds_t<0>(sp, bwd_mask_of(a, j0, i0), Lc, Dc, a.sc_log2, kw0, lane, (T *)nullptr);
    /* dV += P^T dO, dK += dS^T Q: k over the BR rows, n over D */
    bwd_mma_xb<T, 2, BR, D, LD>(dvk, sp, Gc, Qc, lane);
    dac_cp_wait<0>();
    __syncthreads(); /* the next step's slot is in; this slot free */
  }

  /* dK (scaled) and dV of this warp's keys */
  bwd_store_dkv<T, D>(a, b, kh, j0 + kw0, dvk, lane);
#endif
}

template <typename T, int D, int WARPS, int BC, int MINB>
__global__ void __launch_bounds__(32 * WARPS, MINB) dac_bwd_dq_mma_kernel(dac_bwd_args a) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  typedef dac_mma_op<T> op;
  typedef dac_bwd_dqk_cfg<D, WARPS, BC> cfg;
  constexpr int BR = cfg::BR, NT = cfg::NT, LD = cfg::LD;
  extern __shared__ __align__(16) unsigned char smraw[];
  T *Qs = (T *)smraw;                    /* [BR][LD] */
  T *Gs = Qs + BR * LD;                  /* [BR][LD]: dO */
  T *Ks = Gs + BR * LD;                  /* [2][BC][LD] */
  T *Vs = Ks + 2 * BC * LD;              /* [2][BC][LD] */
  float *Ls = (float *)(Vs + 2 * BC * LD); /* [BR]: LSE (-inf: no key) */
  float *Ds = Ls + BR;                     /* [BR] */

  /* causal-like masks (a right window, none on the left): the last query
   * blocks see the most keys, and go first */
  const bool rev = a.wr >= 0 && a.wl < 0;
  const int qb = rev ? (int)gridDim.x - 1 - (int)blockIdx.x : (int)blockIdx.x;
  const int i0 = qb * BR, h = blockIdx.y, b = blockIdx.z;
  const int kh = h / (a.heads / a.kv_heads);
  const long long bh = (long long)b * a.heads + h;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g4 = lane / 4, t4 = lane % 4;
  const int qw0 = warp * 16; /* this warp's rows in the block */

  /* the keys a row of the block sees, in blocks of BC */
  const bwd_span keys = bwd_keys_of<BC>(a, i0, min(i0 + BR, a.seq_q) - 1);
  const int jmin = keys.lo, nsteps = keys.nb;

  bwd_load_rows<T, BR, D, LD, NT>(a, b, h, i0, Qs, Gs, Ls, Ds);
  if (nsteps > 0) bwd_load_keys<T, BC, D, LD, NT>(a, b, kh, jmin, Ks, Vs);
  dac_cp_commit();
  dac_cp_wait<0>();
  __syncthreads();

  /* this thread's two rows: their LSE log2 e (-inf: no key) and D stay in
   * registers */
  float l2r[2], Dr[2];
  long long ir[2];
#pragma unroll
  for (int hf = 0; hf < 2; hf++) {
    const int rl = qw0 + g4 + 8 * hf;
    l2r[hf] = Ls[rl] * 1.4426950408889634f;
    Dr[hf] = Ds[rl];
    ir[hf] = (long long)i0 + rl;
  }

  float dq[1][D / 8][4];
  bwd_zero(dq[0]);

  for (int st = 0; st < nsteps; st++) {
    const int cur = st & 1;
    if (st + 1 < nsteps)
      bwd_load_keys<T, BC, D, LD, NT>(a, b, kh, jmin + (st + 1) * BC, Ks + (cur ^ 1) * BC * LD,
                                      Vs + (cur ^ 1) * BC * LD);
    dac_cp_commit();
    const int j0 = jmin + st * BC;
    const T *Kc = Ks + cur * BC * LD, *Vc = Vs + cur * BC * LD;

    /* S = Q K^T and dP = dO V^T: [16 rows][BC keys] per warp */
    float sp[2][BC / 8][4];
    bwd_mma_abt<T, D, BC, LD>(sp, Qs, Gs, qw0, Kc, Vc, lane);
    /* P into sp[0], dS into sp[1] */
    const bwd_mask mk = bwd_mask_of(a, j0, i0);
#pragma unroll
    for (int nt = 0; nt < BC / 8; nt++)
#pragma unroll
      for (int e = 0; e < 4; e++) {
        const int hf = e >> 1;
        bwd_pds(sp[0][nt][e], sp[1][nt][e],
                bwd_vis(mk, nt * 8 + 2 * t4 + (e & 1), qw0 + g4 + 8 * hf) && l2r[hf] != -INFINITY, a.sc_log2,
                l2r[hf], Dr[hf]);
      }
    /* dQ += dS K: k over the BC keys, n over D */
    bwd_mma_xb<T, 1, BC, D, LD>(dq, sp, Kc, nullptr, lane);
    dac_cp_wait<0>();
    __syncthreads(); /* the next step's slot is in; this slot free */
  }

  /* every row of the block, once: s dQ (G = 1, exact logits) or E (G > 1,
   * or the projection strategy's Qx = Q M_h: step 4 maps it back) */
  const bool to_e = a.G > 1 || a.pm != nullptr;
#pragma unroll
  for (int hf = 0; hf < 2; hf++) {
    const long long i = ir[hf];
    if (i >= a.seq_q) continue;
    if (to_e) {
      float *er = a.dacc + (bh * a.seq_q + i) * D + 2 * t4;
#pragma unroll
      for (int nt = 0; nt < D / 8; nt++)
        *reinterpret_cast<float2 *>(er + nt * 8) = make_float2(dq[0][nt][2 * hf], dq[0][nt][2 * hf + 1]);
    } else {
      T *dqd = (T *)a.dq + ((long long)b * a.qst[0] + (long long)h * a.qst[1] + i * a.qst[2]) + 2 * t4;
#pragma unroll
      for (int nt = 0; nt < D / 8; nt++)
        *reinterpret_cast<uint32_t *>(dqd + nt * 8) =
            op::pack(a.sc * dq[0][nt][2 * hf], a.sc * dq[0][nt][2 * hf + 1]);
    }
  }
#endif
}

/* The configurations, sized by ptxas's register counts (sm_90, f16):
 * the dK/dV kernel with a->bc keys a block (64: 4 warps, 128: 8) and 32
 * query rows a step, at D = 64 capped for 2 blocks of 8 warps (128
 * registers, 4 bytes spilled) or 3 of 4 (159); at D = 128 its 128 f32
 * accumulators a thread leave 1 block of 8 warps or 2 of 4 (233
 * registers). The dQ kernel with a->dq_rows rows a block: 128 (the
 * default; 8 warps, 32 keys a step, 2 blocks an SM: 128 registers, no
 * spills), whose K/V tiles feed twice the rows of 64 (4 warps, 64 keys a
 * step at D = 64, 32 at D = 128, 3 blocks an SM: 164 and 162 registers,
 * no spills; 64 keys at D = 128 take 240). */
template <int D, int WARPS> struct dac_bwd_split_sel {
  static constexpr int DKV_BR = 32;
  static constexpr int DKV_MINB = D == 64 ? (WARPS == 8 ? 2 : 3) : (WARPS == 8 ? 1 : 2);
};
template <int D, int ROWS> struct dac_bwd_dq_sel {
  static constexpr int WARPS = ROWS / 16, BC = ROWS == 64 && D == 64 ? 64 : 32;
  static constexpr int MINB = ROWS == 64 ? 3 : 2;
};

#ifdef __CUDACC__ /* the launches (tests/cuda_emu runs the kernels on the host) */
template <typename T, int D, int WARPS>
static cudaError_t launch_bwd_dkv_d(const dac_bwd_args *a, cudaStream_t s) {
  typedef dac_bwd_split_sel<D, WARPS> sel;
  typedef dac_bwd_dkv_cfg<D, WARPS, sel::DKV_BR> cfg;
  const size_t smem = cfg::template smem<T>();
  auto kern = dac_bwd_dkv_kernel<T, D, WARPS, sel::DKV_BR, sel::DKV_MINB>;
  cudaError_t e = cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
  if (e != cudaSuccess) return e;
  const dim3 grid((a->seq_k + cfg::BC - 1) / cfg::BC, a->kv_heads, a->batch);
  kern<<<grid, cfg::NT, smem, s>>>(*a);
  return cudaGetLastError();
}
template <typename T, int D, int ROWS>
static cudaError_t launch_bwd_dqk_d(const dac_bwd_args *a, cudaStream_t s) {
  typedef dac_bwd_dq_sel<D, ROWS> sel;
  typedef dac_bwd_dqk_cfg<D, sel::WARPS, sel::BC> cfg;
  const size_t smem = cfg::template smem<T>();
  auto kern = dac_bwd_dq_mma_kernel<T, D, sel::WARPS, sel::BC, sel::MINB>;
  cudaError_t e = cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
  if (e != cudaSuccess) return e;
  const dim3 grid((a->seq_q + cfg::BR - 1) / cfg::BR, a->heads, a->batch);
  kern<<<grid, cfg::NT, smem, s>>>(*a);
  return cudaGetLastError();
}
/* both kernels, the dK/dV one first (they share nothing but the inputs) */
template <typename T> static cudaError_t launch_bwd_split(const dac_bwd_args *a, cudaStream_t s) {
  if (a->bc != 64 && a->bc != 128) return cudaErrorInvalidValue;
  if (a->dq_rows != 0 && a->dq_rows != 64 && a->dq_rows != 128) return cudaErrorInvalidValue;
  const bool r64 = a->dq_rows == 64;
  cudaError_t e;
  if (a->d == 64) {
    e = a->bc == 128 ? launch_bwd_dkv_d<T, 64, 8>(a, s) : launch_bwd_dkv_d<T, 64, 4>(a, s);
    if (e != cudaSuccess) return e;
    return r64 ? launch_bwd_dqk_d<T, 64, 64>(a, s) : launch_bwd_dqk_d<T, 64, 128>(a, s);
  }
  if (a->d == 128) {
    e = a->bc == 128 ? launch_bwd_dkv_d<T, 128, 8>(a, s) : launch_bwd_dkv_d<T, 128, 4>(a, s);
    if (e != cudaSuccess) return e;
    return r64 ? launch_bwd_dqk_d<T, 128, 64>(a, s) : launch_bwd_dqk_d<T, 128, 128>(a, s);
  }
  return cudaErrorInvalidValue;
}
#endif

#endif /* DA_CUDA_BWD_SPLIT_CUH */
