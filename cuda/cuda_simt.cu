/* SPDX-License-Identifier: Apache-2.0 */
/* SIMT fused attention: every dtype, head_dim 1..256, every group size.
 * 16 query rows and 16 keys per step, 8 threads per query row; arithmetic
 * in f32 with an online softmax. 16 rows divide every hash_block. */
#include <math.h>

#include "cuda_dev.cuh"
#include "cuda_softmax.cuh"

#define SIMT_BR 16
#define SIMT_BC 16
#define SIMT_THREADS 128

/* EXT: the da_attn_ext instantiation (strides, per-sequence lengths read
 * and clamped on the device, windows, LSE); dense calls take EXT = false. */
template <int DMAX, bool EXT>
__global__ void __launch_bounds__(SIMT_THREADS)
    dac_simt_kernel(dac_args a) {
  extern __shared__ float sm[];
  const int d = a.d;
  const bool grouped = a.G > 1;
  /* DA_STRATEGY_PROJECTION (a.pr > 0, EXT only): Q and K pre-projected to
   * pr columns (f32: a.qs, a.kp, rows of pr per query head, each
   * sequence's from 0); the logits over pr columns, P V over d */
  const bool proj = EXT && a.pr > 0;
  const int dq = grouped ? a.ng : proj ? a.pr : d;
  const int ldq = dq + 1, ldk = d + 1, ldf = grouped ? a.ng + 1 : ldk;
  float *Qsm = sm;                         /* [16][ldq] */
  float *Kr = Qsm + SIMT_BR * ldq;         /* [16][ldk] */
  float *Kf = grouped ? Kr + SIMT_BC * ldk : Kr;
  float *Vs = Kr + SIMT_BC * ldk + (grouped ? SIMT_BC * ldf : 0); /* [16][d] */
  float *Ps = Vs + SIMT_BC * d;            /* [16][16] */
  float *a_s = Ps + SIMT_BR * SIMT_BC;     /* [d] */
  int *perm_s = (int *)(a_s + d);          /* [d] */

  const dac_block blk = dac_block_of(a, SIMT_BR);
  const int q0 = blk.q0;
  const size_t bh = blk.bh, bkv = blk.bkv;
  const int tid = threadIdx.x;
  /* EXT: this sequence's lengths and first rows; a block past its queries
   * has nothing to do (all its threads leave before any barrier) */
  dac_seq sq{};
  size_t qb = 0, kb = 0, vb = 0, ob = 0; /* EXT: element of row 0 of Q, K, V, O */
  if constexpr (EXT) {
    sq = dac_seq_of(a, blockIdx.z);
    if (q0 >= sq.lq) return;
    const long long bb = blockIdx.z, hh = blockIdx.y, hk = hh / (a.heads / a.kv_heads);
    qb = (size_t)(bb * a.qst[0] + hh * a.qst[1] + sq.q0 * a.qst[2]);
    kb = (size_t)(bb * a.kst[0] + hk * a.kst[1] + sq.k0 * a.kst[2]);
    vb = (size_t)(bb * a.vst[0] + hk * a.vst[1] + sq.k0 * a.vst[2]);
    ob = (size_t)(bb * a.ost[0] + hh * a.ost[1] + sq.q0 * a.ost[2]);
  }
  const int lq = EXT ? sq.lq : a.seq_q, lk = EXT ? sq.lk : a.seq_k;
  const int off = EXT ? lk - lq : a.seq_k - a.seq_q;

  for (int i = tid; i < SIMT_BR * dq; i += SIMT_THREADS) {
    const int r = i / dq, c = i % dq;
    float x = 0.0f;
    if (q0 + r < lq) {
      const size_t row = bh * a.seq_q + q0 + r;
      if (grouped || proj)
        x = ((const float *)a.qs)[row * a.qs_ld + c];
      else if (EXT)
        x = dac_ld(a.q, a.dt, qb + (size_t)((long long)(q0 + r) * a.qst[2]) + c);
      else
        x = dac_ld(a.q, a.dt, row * d + c);
    }
    Qsm[r * ldq + c] = x;
  }
  if (grouped) {
    const size_t poff = (bh * a.n_tiles + q0 / a.hash_block) * (size_t)d;
    for (int c = tid; c < d; c += SIMT_THREADS) {
      perm_s[c] = a.perm[poff + c];
      a_s[c] = a.wts[poff + c];
    }
  }

  const int r = tid / 8, l = tid % 8;
  const int qrow = q0 + r;
  float m_i = -INFINITY, l_i = 0.0f; /* logits times scale: base e, multiplier 1 */
  float oacc[DMAX / 8];
#pragma unroll
  for (int k = 0; k < DMAX / 8; k++) oacc[k] = 0.0f;

  int kend = a.seq_k, kbeg = 0;
  int wlo = 0, whi = 0; /* EXT: the keys this thread's row sees */
  if constexpr (EXT) {
    int lo0, hi0, lo1, hi1;
    dac_win(a, q0, lq, lk, lo0, hi0);
    dac_win(a, min(q0 + SIMT_BR, lq) - 1, lq, lk, lo1, hi1);
    kbeg = lo0 / SIMT_BC * SIMT_BC;
    kend = hi1 + 1;
    dac_win(a, qrow, lq, lk, wlo, whi);
  } else {
    if (a.causal) kend = max(0, min(a.seq_k, q0 + SIMT_BR + off));
  }
  for (int k0 = kbeg; k0 < kend; k0 += SIMT_BC) {
    __syncthreads();
    for (int i = tid; i < SIMT_BC * d; i += SIMT_THREADS) {
      const int j = i / d, c = i % d;
      float kx = 0.0f, vx = 0.0f;
      if (k0 + j < lk) {
        if constexpr (EXT) {
          kx = dac_ld(a.k, a.dt, kb + (size_t)((long long)(k0 + j) * a.kst[2]) + c);
          vx = dac_ld(a.v, a.dt, vb + (size_t)((long long)(k0 + j) * a.vst[2]) + c);
        } else {
          const size_t e = (bkv * a.seq_k + k0 + j) * (size_t)d + c;
          kx = dac_ld(a.k, a.dt, e);
          vx = dac_ld(a.v, a.dt, e);
        }
        if (proj) /* K's first pr columns: the projected K of this query head */
          kx = c < a.pr ? ((const float *)a.kp)[(bh * a.seq_k + k0 + j) * a.pr + c] : 0.0f;
      }
      Kr[j * ldk + c] = kx;
      Vs[j * d + c] = vx;
    }
    __syncthreads();
    if (grouped) {
      for (int i = tid; i < SIMT_BC * a.ng; i += SIMT_THREADS) {
        const int j = i / a.ng, g = i % a.ng;
        const int i0 = g * a.G, i1 = min(i0 + a.G, d);
        float s = 0.0f;
        for (int p = i0; p < i1; p++) {
          const int c = perm_s[p];
          s += a_s[c] * Kr[j * ldk + c];
        }
        Kf[j * ldf + g] = s;
      }
      __syncthreads();
    }
    float s0 = 0.0f, s1 = 0.0f;
    const float *qr = Qsm + r * ldq;
    const float *k0r = Kf + l * ldf, *k1r = Kf + (l + 8) * ldf;
    for (int c = 0; c < dq; c++) {
      s0 = fmaf(qr[c], k0r[c], s0);
      s1 = fmaf(qr[c], k1r[c], s1);
    }
    s0 *= a.scale;
    s1 *= a.scale;
    const int j0 = k0 + l, j1 = k0 + l + 8;
    if constexpr (EXT) {
      if (j0 < wlo || j0 > whi) s0 = -INFINITY;
      if (j1 < wlo || j1 > whi) s1 = -INFINITY;
    } else {
      if (j0 >= a.seq_k || (a.causal && j0 > qrow + off)) s0 = -INFINITY;
      if (j1 >= a.seq_k || (a.causal && j1 > qrow + off)) s1 = -INFINITY;
    }
    /* online softmax (cuda_softmax.cuh), base e: a row's 16 keys are on 8 lanes */
    float ms;
    const float alpha =
        dac_sm_advance<dac_basee>(m_i, fmaxf(m_i, dac_lanes_max<1, 4>(fmaxf(s0, s1))), 1.0f, ms);
    const float p0 = dac_sm_p<dac_basee>(s0, 1.0f, ms), p1 = dac_sm_p<dac_basee>(s1, 1.0f, ms);
    l_i = l_i * alpha + dac_lanes_sum<1, 4>(p0 + p1);
    Ps[r * SIMT_BC + l] = p0;
    Ps[r * SIMT_BC + l + 8] = p1;
    __syncwarp();
#pragma unroll
    for (int k = 0; k < DMAX / 8; k++) {
      const int c = l + 8 * k;
      if (c < d) {
        float acc = oacc[k] * alpha;
#pragma unroll
        for (int j = 0; j < SIMT_BC; j++) acc = fmaf(Ps[r * SIMT_BC + j], Vs[j * d + c], acc);
        oacc[k] = acc;
      }
    }
  }
  if constexpr (EXT) {
    if (qrow < lq) {
      const bool seen = wlo <= whi;
      const float inv = dac_inv_sum(l_i, seen);
      const size_t row = ob + (size_t)((long long)qrow * a.ost[2]);
#pragma unroll
      for (int k = 0; k < DMAX / 8; k++) {
        const int c = l + 8 * k;
        if (c < d) dac_st(a.o, a.dt, row + c, oacc[k] * inv);
      }
      if (a.lse && l == 0)
        a.lse[dac_lse_at(a, blockIdx.z, blockIdx.y, sq, qrow)] = dac_lse_val<dac_basee>(seen, m_i, l_i);
    }
  } else if (qrow < a.seq_q) {
    const float inv = dac_inv_sum(l_i, !a.causal || qrow + off >= 0);
    const size_t row = bh * a.seq_q + qrow;
#pragma unroll
    for (int k = 0; k < DMAX / 8; k++) {
      const int c = l + 8 * k;
      if (c < d) dac_st(a.o, a.dt, row * d + c, oacc[k] * inv);
    }
  }
}

template <int DMAX, bool EXT>
static cudaError_t launch_simt(const dac_args *a, cudaStream_t s) {
  const int dq = a->G > 1 ? a->ng : EXT && a->pr > 0 ? a->pr : a->d;
  size_t fl = (size_t)SIMT_BR * (dq + 1) + (size_t)SIMT_BC * (a->d + 1) +
              (a->G > 1 ? (size_t)SIMT_BC * (a->ng + 1) : 0) + (size_t)SIMT_BC * a->d +
              SIMT_BR * SIMT_BC + 2 * (size_t)a->d;
  const size_t bytes = fl * 4;
  cudaError_t e;
  if (bytes > 48 * 1024) {
    e = cudaFuncSetAttribute(dac_simt_kernel<DMAX, EXT>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             (int)bytes);
    if (e != cudaSuccess) return e;
  }
  dim3 grid((a->seq_q + SIMT_BR - 1) / SIMT_BR, a->heads, a->batch);
  dac_simt_kernel<DMAX, EXT><<<grid, SIMT_THREADS, bytes, s>>>(*a);
  return cudaGetLastError();
}

extern "C" cudaError_t dac_launch_simt(const dac_args *a, cudaStream_t s) {
  if (a->d <= 32) return launch_simt<32, false>(a, s);
  if (a->d <= 64) return launch_simt<64, false>(a, s);
  if (a->d <= 128) return launch_simt<128, false>(a, s);
  return launch_simt<256, false>(a, s);
}

extern "C" cudaError_t dac_launch_simt_ext(const dac_args *a, cudaStream_t s) {
  if (a->d <= 32) return launch_simt<32, true>(a, s);
  if (a->d <= 64) return launch_simt<64, true>(a, s);
  if (a->d <= 128) return launch_simt<128, true>(a, s);
  return launch_simt<256, true>(a, s);
}
