/* SPDX-License-Identifier: Apache-2.0 */
/* The backward pass's helper kernels (the expanded Q of G > 1, the
 * projection strategy's products with M_h, D, dQ) and its SIMT main
 * kernel (cuda_bwd.cuh describes the whole pass); their launches are in
 * cuda_bwd.cu. Only dynamic shared memory (extern __shared__), so that
 * tools/cuda_emu can run them on the host too. */
#ifndef DA_CUDA_BWD_KERN_CUH
#define DA_CUDA_BWD_KERN_CUH

#include <math.h>

#include "cuda_bwd.cuh"
#include "cuda_dev.cuh"

__device__ __forceinline__ float bwd_ld(const void *p, da_dtype t, long long i) {
  if (t == DA_F16) return __half2float(((const __half *)p)[i]);
  if (t == DA_BF16) return __bfloat162float(((const __nv_bfloat16 *)p)[i]);
  return ((const float *)p)[i];
}
__device__ __forceinline__ void bwd_st(void *p, da_dtype t, long long i, float v) {
  if (t == DA_F16)
    ((__half *)p)[i] = __float2half_rn(v);
  else if (t == DA_BF16)
    ((__nv_bfloat16 *)p)[i] = __float2bfloat16_rn(v);
  else
    ((float *)p)[i] = v;
}
__device__ __forceinline__ long long bwd_at(const long long st[3], int b, int h, long long r) {
  return (long long)b * st[0] + (long long)h * st[1] + r * st[2];
}

/* ---------------- G > 1: the grouping of a hash tile ----------------
 * Block (tile, head, batch): pos[c] the position of column c in the
 * permutation, ainv[c] = 1 / A_g(c) (A_g summed over the group in
 * permutation order, as lib/cpu_bwd.c does), a[c] its weight. */
#define BWD_GT 128
struct bwd_tile {
  int pos[256];
  int perm[256];
  float ainv[256];
  float a[256];
};
__device__ void bwd_tile_load(const dac_bwd_args &a, size_t poff, bwd_tile &t) {
  const int d = a.d, G = a.G;
  for (int p = threadIdx.x; p < d; p += blockDim.x) {
    const int c = a.perm[poff + p];
    t.perm[p] = c;
    t.pos[c] = p;
    t.a[c] = a.wts[poff + c];
  }
  __syncthreads();
  for (int g0 = threadIdx.x * G; g0 < d; g0 += blockDim.x * G) {
    const int g1 = min(g0 + G, d);
    float s = 0.0f;
    for (int x = g0; x < g1; x++) s += t.a[t.perm[x]];
    for (int x = g0; x < g1; x++) t.ainv[t.perm[x]] = 1.0f / s;
  }
  __syncthreads();
}

/* qx[bh][r][c] = a_c / A_g(c) sum_{c' in g(c)} Q[r][c'] */
__global__ void __launch_bounds__(BWD_GT) dac_bwd_qx_kernel(dac_bwd_args a, void *qx,
                                                             da_dtype qx_dt) {
  extern __shared__ float sm[];
  bwd_tile &t = *reinterpret_cast<bwd_tile *>(sm);
  const int tile = blockIdx.x, h = blockIdx.y, b = blockIdx.z, d = a.d, G = a.G;
  const size_t bh = (size_t)b * a.heads + h;
  bwd_tile_load(a, (bh * a.n_tiles + tile) * (size_t)d, t);
  const int r0 = tile * a.hash_block, r1 = min(r0 + a.hash_block, a.seq_q);
  for (long long e = threadIdx.x; e < (long long)(r1 - r0) * d; e += blockDim.x) {
    const int r = r0 + (int)(e / d), c = (int)(e % d);
    const int g0 = t.pos[c] / G * G, g1 = min(g0 + G, d);
    const long long qrow = bwd_at(a.qst, b, h, r);
    float s = 0.0f;
    for (int x = g0; x < g1; x++) s += bwd_ld(a.q, a.dt, qrow + t.perm[x]);
    bwd_st(qx, qx_dt, (long long)(bh * a.seq_q + r) * d + c, s * t.ainv[c] * t.a[c]);
  }
}

/* ---------------- D = rowsum(dO o O): a warp per row ---------------- */
__global__ void __launch_bounds__(256) dac_bwd_dsum_kernel(dac_bwd_args a) {
  const long long rows = (long long)a.batch * a.heads * a.seq_q;
  const int lane = threadIdx.x % 32;
  for (long long row = (blockIdx.x * (long long)blockDim.x + threadIdx.x) / 32; row < rows;
       row += (long long)gridDim.x * blockDim.x / 32) {
    const int i = (int)(row % a.seq_q);
    const long long bh = row / a.seq_q;
    const int h = (int)(bh % a.heads), b = (int)(bh / a.heads);
    const long long base = bwd_at(a.ost, b, h, i);
    float s = 0.0f;
    for (int c = lane; c < a.d; c += 32)
      s = fmaf(bwd_ld(a.dout, a.dt, base + c), bwd_ld(a.o, a.dt, base + c), s);
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    if (lane == 0) a.dsum[row] = s;
  }
}

/* ---------------- dQ from the f32 accumulator ---------------- */
/* G = 1: dQ = s E, a thread per element */
__global__ void __launch_bounds__(256) dac_bwd_dq_kernel(dac_bwd_args a) {
  const long long n = (long long)a.batch * a.heads * a.seq_q * a.d;
  for (long long e = blockIdx.x * (long long)blockDim.x + threadIdx.x; e < n;
       e += (long long)gridDim.x * blockDim.x) {
    const int c = (int)(e % a.d);
    const long long row = e / a.d;
    const int i = (int)(row % a.seq_q);
    const long long bh = row / a.seq_q;
    const int h = (int)(bh % a.heads), b = (int)(bh / a.heads);
    bwd_st(a.dq, a.dt, bwd_at(a.qst, b, h, i) + c, a.sc * a.dacc[e]);
  }
}
/* G > 1, block (tile, head, batch): dQ[r][c] = s / A_g(c) sum_{c' in g(c)} a_c' E[r][c'] */
__global__ void __launch_bounds__(BWD_GT) dac_bwd_dq_grouped_kernel(dac_bwd_args a) {
  extern __shared__ float sm[];
  bwd_tile &t = *reinterpret_cast<bwd_tile *>(sm);
  const int tile = blockIdx.x, h = blockIdx.y, b = blockIdx.z, d = a.d, G = a.G;
  const size_t bh = (size_t)b * a.heads + h;
  bwd_tile_load(a, (bh * a.n_tiles + tile) * (size_t)d, t);
  const int r0 = tile * a.hash_block, r1 = min(r0 + a.hash_block, a.seq_q);
  for (long long e = threadIdx.x; e < (long long)(r1 - r0) * d; e += blockDim.x) {
    const int r = r0 + (int)(e / d), c = (int)(e % d);
    const int g0 = t.pos[c] / G * G, g1 = min(g0 + G, d);
    const float *er = a.dacc + (long long)(bh * a.seq_q + r) * d;
    float s = 0.0f;
    for (int x = g0; x < g1; x++) s = fmaf(t.a[t.perm[x]], er[t.perm[x]], s);
    bwd_st(a.dq, a.dt, bwd_at(a.qst, b, h, r) + c, a.sc * (s * t.ainv[c]));
  }
}

/* ---------------- the projection strategy: products with M_h ----------------
 * A batched f32 GEMM per (batch, query head), d x d on the right, tiles of
 * BWD_PM x BWD_PM outputs, BWD_PK of the inner dimension at a time through
 * shared memory, 256 threads of 4 x 4 outputs each (rows ty + 16 u,
 * columns tx + 16 v: conflict-free reads). Every output is an f32 sum over
 * k = 0..d-1 in order (fmaf), so the result does not depend on the tiling.
 *   dq 0: qx[bh][i][c] = sum_k Q[i][k] M_h[k][c]  (Q through its strides,
 *         qx dense in qx_dt);
 *   dq 1: dQ[i][c] = s sum_k E[bh][i][k] M_h[c][k] (E = a.dacc, dQ through
 *         Q's strides in the plan's dtype).
 * Grid: (row tiles x column tiles, heads, batch). */
#define BWD_PM 64
#define BWD_PK 16
#define BWD_PT 256
static const size_t dac_bwd_proj_smem = sizeof(float) * 2 * BWD_PK * (BWD_PM + 4);

__global__ void __launch_bounds__(BWD_PT) dac_bwd_proj_kernel(dac_bwd_args a, int dq, void *qx,
                                                              da_dtype qx_dt) {
  extern __shared__ float sm[];
  float *Xs = sm, *Ws = sm + BWD_PK * (BWD_PM + 4); /* [BWD_PK][BWD_PM + 4], k-major */
  const int d = a.d, nct = (d + BWD_PM - 1) / BWD_PM;
  const int i0 = (int)(blockIdx.x / nct) * BWD_PM, c0 = (int)(blockIdx.x % nct) * BWD_PM;
  const int h = blockIdx.y, b = blockIdx.z, tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
  const long long bh = (long long)b * a.heads + h;
  const float *M = a.pm + (size_t)h * d * d;
  float acc[4][4];
#pragma unroll
  for (int u = 0; u < 4; u++)
#pragma unroll
    for (int v = 0; v < 4; v++) acc[u][v] = 0.0f;
  for (int k0 = 0; k0 < d; k0 += BWD_PK) {
    /* X: BWD_PM rows x BWD_PK columns, consecutive threads along k */
    for (int e = tid; e < BWD_PM * BWD_PK; e += BWD_PT) {
      const int r = e / BWD_PK, kk = e % BWD_PK, i = i0 + r, k = k0 + kk;
      float x = 0.0f;
      if (i < a.seq_q && k < d)
        x = dq ? a.dacc[(bh * a.seq_q + i) * d + k] : bwd_ld(a.q, a.dt, bwd_at(a.qst, b, h, i) + k);
      Xs[kk * (BWD_PM + 4) + r] = x;
    }
    /* W(k, c): M[k][c] (consecutive threads along c) or M[c][k] (along k) */
    for (int e = tid; e < BWD_PM * BWD_PK; e += BWD_PT) {
      int kk, cc;
      if (dq)
        cc = e / BWD_PK, kk = e % BWD_PK;
      else
        kk = e / BWD_PM, cc = e % BWD_PM;
      const int k = k0 + kk, c = c0 + cc;
      float w = 0.0f;
      if (k < d && c < d) w = dq ? M[(size_t)c * d + k] : M[(size_t)k * d + c];
      Ws[kk * (BWD_PM + 4) + cc] = w;
    }
    __syncthreads();
    const int kn = min(BWD_PK, d - k0);
    for (int kk = 0; kk < kn; kk++) {
      float xr[4], wr[4];
#pragma unroll
      for (int u = 0; u < 4; u++) xr[u] = Xs[kk * (BWD_PM + 4) + ty + 16 * u];
#pragma unroll
      for (int v = 0; v < 4; v++) wr[v] = Ws[kk * (BWD_PM + 4) + tx + 16 * v];
#pragma unroll
      for (int u = 0; u < 4; u++)
#pragma unroll
        for (int v = 0; v < 4; v++) acc[u][v] = fmaf(xr[u], wr[v], acc[u][v]);
    }
    __syncthreads();
  }
#pragma unroll
  for (int u = 0; u < 4; u++) {
    const int i = i0 + ty + 16 * u;
    if (i >= a.seq_q) continue;
#pragma unroll
    for (int v = 0; v < 4; v++) {
      const int c = c0 + tx + 16 * v;
      if (c >= d) continue;
      if (dq)
        bwd_st(a.dq, a.dt, bwd_at(a.qst, b, h, i) + c, a.sc * acc[u][v]);
      else
        bwd_st(qx, qx_dt, (bh * a.seq_q + i) * d + c, acc[u][v]);
    }
  }
}

/* ---------------- the SIMT main kernel ----------------
 * Block (key block, kv head, batch): BWD_SK keys, their K and V rows and
 * their dK, dV accumulators in shared memory (f32, rows padded by one
 * float against bank conflicts). Per query head of the kv head and per
 * BWD_SQ query rows that see a key of the block: the rows of Q (or Qx),
 * dO, their LSE and D; each thread one (row, key) pair of P and dS; then
 * each thread its elements of dK, dV, and of the rows' E (atomics). */
#define BWD_SK 16
#define BWD_SQ 16
#define BWD_ST 256

/* The keys row i sees: [lo, hi] (empty when lo > hi), clamped into int. */
__device__ __forceinline__ void bwd_win(const dac_bwd_args &a, long long i, int &lo, int &hi) {
  const long long diag = i + (long long)a.seq_k - a.seq_q;
  long long l = 0, h = (long long)a.seq_k - 1;
  if (a.wl >= 0 && diag - a.wl > l) l = diag - a.wl;
  if (a.wr >= 0 && diag + a.wr < h) h = diag + a.wr;
  if (l > a.seq_k) l = a.seq_k;
  if (h < -1) h = -1;
  lo = (int)l;
  hi = (int)h;
}
/* The query rows that see a key of [j0, j1]: [imin, imax] (empty when
 * imin > imax). Rows see keys i + off - wl .. i + off + wr. */
__device__ __forceinline__ void bwd_rows(const dac_bwd_args &a, int j0, int j1, int &imin,
                                         int &imax) {
  const long long off = (long long)a.seq_k - a.seq_q;
  long long lo = 0, hi = (long long)a.seq_q - 1;
  if (a.wr >= 0 && (long long)j0 - off - a.wr > lo) lo = (long long)j0 - off - a.wr;
  if (a.wl >= 0 && (long long)j1 - off + a.wl < hi) hi = (long long)j1 - off + a.wl;
  if (lo > a.seq_q) lo = a.seq_q;
  if (hi < -1) hi = -1;
  imin = (int)lo;
  imax = (int)hi;
}

static size_t dac_bwd_simt_smem(int d) {
  const size_t ld = (size_t)d + 1;
  return sizeof(float) * (4 * BWD_SK * ld + 2 * BWD_SQ * ld + 2 * BWD_SQ * BWD_SK + 2 * BWD_SQ) +
         sizeof(int) * 2 * BWD_SQ;
}

__global__ void __launch_bounds__(BWD_ST) dac_bwd_simt_kernel(dac_bwd_args a) {
  extern __shared__ float sm[];
  const int d = a.d, ld = d + 1, tid = threadIdx.x;
  float *Ks = sm, *Vs = Ks + BWD_SK * ld, *dKa = Vs + BWD_SK * ld, *dVa = dKa + BWD_SK * ld;
  float *Qr = dVa + BWD_SK * ld, *dOr = Qr + BWD_SQ * ld;
  float *Ps = dOr + BWD_SQ * ld, *dSs = Ps + BWD_SQ * BWD_SK; /* [BWD_SQ][BWD_SK] */
  float *l2 = dSs + BWD_SQ * BWD_SK, *Dr = l2 + BWD_SQ;
  int *rlo = (int *)(Dr + BWD_SQ), *rhi = rlo + BWD_SQ;
  const int j0 = blockIdx.x * BWD_SK, kh = blockIdx.y, b = blockIdx.z;
  const int nk = min(BWD_SK, a.seq_k - j0);
  const int hpk = a.heads / a.kv_heads;
  for (int e = tid; e < BWD_SK * d; e += BWD_ST) {
    const int j = e / d, c = e % d;
    float kv = 0.0f, vv = 0.0f;
    if (j < nk) {
      kv = bwd_ld(a.k, a.dt, bwd_at(a.kst, b, kh, j0 + j) + c);
      vv = bwd_ld(a.v, a.dt, bwd_at(a.vst, b, kh, j0 + j) + c);
    }
    Ks[j * ld + c] = kv;
    Vs[j * ld + c] = vv;
    dKa[j * ld + c] = 0.0f;
    dVa[j * ld + c] = 0.0f;
  }
  int imin, imax;
  bwd_rows(a, j0, j0 + nk - 1, imin, imax);
  __syncthreads();
  for (int hh = 0; hh < hpk && imin <= imax; hh++) {
    const int h = kh * hpk + hh;
    const long long bh = (long long)b * a.heads + h;
    for (int i0 = imin / BWD_SQ * BWD_SQ; i0 <= imax; i0 += BWD_SQ) {
      for (int e = tid; e < BWD_SQ * d; e += BWD_ST) {
        const int r = e / d, c = e % d, i = i0 + r;
        float qv = 0.0f, gv = 0.0f;
        if (i < a.seq_q) {
          qv = a.qx ? bwd_ld(a.qx, a.qx_dt, (bh * a.seq_q + i) * d + c)
                    : bwd_ld(a.q, a.dt, bwd_at(a.qst, b, h, i) + c);
          gv = bwd_ld(a.dout, a.dt, bwd_at(a.ost, b, h, i) + c);
        }
        Qr[r * ld + c] = qv;
        dOr[r * ld + c] = gv;
      }
      if (tid < BWD_SQ) {
        const int i = i0 + tid;
        float L = -INFINITY, D = 0.0f;
        int lo = 1, hi = 0;
        if (i < a.seq_q) {
          L = a.lse[bh * a.seq_q + i];
          D = a.dsum[bh * a.seq_q + i];
          bwd_win(a, i, lo, hi);
        }
        l2[tid] = L == -INFINITY ? -INFINITY : L * 1.4426950408889634f;
        Dr[tid] = D;
        rlo[tid] = lo;
        rhi[tid] = hi;
      }
      __syncthreads();
      for (int e = tid; e < BWD_SQ * BWD_SK; e += BWD_ST) {
        const int r = e / BWD_SK, j = e % BWD_SK, key = j0 + j;
        float p = 0.0f, ds = 0.0f;
        if (j < nk && key >= rlo[r] && key <= rhi[r] && l2[r] != -INFINITY) {
          const float *q = Qr + r * ld, *kr = Ks + j * ld, *g = dOr + r * ld, *vr = Vs + j * ld;
          float s = 0.0f, dp = 0.0f;
          for (int c = 0; c < d; c++) {
            s = fmaf(q[c], kr[c], s);
            dp = fmaf(g[c], vr[c], dp);
          }
          p = exp2f(fmaf(s, a.sc_log2, -l2[r]));
          ds = p * (dp - Dr[r]);
        }
        Ps[e] = p;
        dSs[e] = ds;
      }
      __syncthreads();
      for (int e = tid; e < BWD_SK * d; e += BWD_ST) {
        const int j = e / d, c = e % d;
        float av = 0.0f, ak = 0.0f;
#pragma unroll 4
        for (int r = 0; r < BWD_SQ; r++) {
          av = fmaf(Ps[r * BWD_SK + j], dOr[r * ld + c], av);
          ak = fmaf(dSs[r * BWD_SK + j], Qr[r * ld + c], ak);
        }
        dVa[j * ld + c] += av;
        dKa[j * ld + c] += ak;
      }
      for (int e = tid; e < BWD_SQ * d; e += BWD_ST) {
        const int r = e / d, c = e % d, i = i0 + r;
        if (i < imin || i > imax) continue;
        float acc = 0.0f;
        for (int j = 0; j < nk; j++) acc = fmaf(dSs[r * BWD_SK + j], Ks[j * ld + c], acc);
        if (acc != 0.0f) atomicAdd(a.dacc + (bh * a.seq_q + i) * d + c, acc);
      }
      __syncthreads();
    }
  }
  for (int e = tid; e < nk * d; e += BWD_ST) {
    const int j = e / d, c = e % d;
    bwd_st(a.dk, a.dt, bwd_at(a.kst, b, kh, j0 + j) + c, a.sc * dKa[j * ld + c]);
    bwd_st(a.dv, a.dt, bwd_at(a.vst, b, kh, j0 + j) + c, dVa[j * ld + c]);
  }
}

#endif /* DA_CUDA_BWD_KERN_CUH */
