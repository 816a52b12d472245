/* SPDX-License-Identifier: Apache-2.0 */
/* DA_STRATEGY_PROJECTION (SPEC 1c) on CUDA: the per-call projection of Q
 * and K (Q_h A_h, K_kv(h) B_h, per query head), and which tensor-core
 * kernels run the logits over the rank (cuda_mma_f16_proj.cu,
 * cuda_mma_bf16_proj.cu); the SIMT kernel (cuda_simt.cu) runs the rest. */
#include "cuda_dev.cuh"

/* Tiled: a block makes R rows x 32 columns of one (batch, head)'s output
 * (grid: ceil(rows / R) * ceil(rank / 32) blocks, heads, batch). The
 * block's R source rows ([R][D4] f32, D4 = head_dim rounded up to 4, zero
 * padded) and the 32 columns of the projection ([D4][32]) go to shared
 * memory; each thread then makes RPT rows x 2 columns, reading 4 source
 * columns at a time (float4) against 4 x 2 projection entries: 4
 * multiply-adds per shared-memory load. Rows past the sequence's length
 * (packed sequences) are written as zeros. R = 16 RPT: 64 rows for
 * head_dim <= 128 (48 KiB), 16 above (48 KiB at head_dim 256). */
template <int RPT>
__global__ void __launch_bounds__(256)
    dac_proj_kernel(dac_args a, const float *pj, int is_k, void *out, da_dtype odt) {
  constexpr int R = 16 * RPT;
  extern __shared__ float psm[];
  const int r = a.pr, b = blockIdx.z, h = blockIdx.y, D = a.d, D4 = (D + 3) & ~3;
  const int n = is_k ? a.seq_k : a.seq_q;
  const int nrt = (n + R - 1) / R;
  const int j0 = (int)(blockIdx.x % (unsigned)nrt) * R, k0 = (int)(blockIdx.x / (unsigned)nrt) * 32;
  float *xs = psm, *ps = psm + (size_t)R * D4;
  const dac_seq sq = dac_seq_of(a, b);
  const int len = is_k ? sq.lk : sq.lq;
  const long long *st = is_k ? a.kst : a.qst;
  const long long xh = is_k ? h / (a.heads / a.kv_heads) : h;
  const long long row0 = is_k ? sq.k0 : sq.q0;
  const void *x = is_k ? a.k : a.q;
  for (int e = threadIdx.x; e < R * D4; e += 256) {
    const int jj = e / D4, c = e % D4, j = j0 + jj;
    float v = 0.0f;
    if (c < D && j < n && j < len)
      v = dac_ld(x, a.dt, (size_t)((long long)b * st[0] + xh * st[1] + (row0 + j) * st[2]) + c);
    xs[e] = v;
  }
  const float *P = pj + ((size_t)h * 2 + is_k) * (size_t)D * r;
  for (int e = threadIdx.x; e < D4 * 32; e += 256) {
    const int c = e / 32, kk = e % 32;
    ps[e] = (c < D && k0 + kk < r) ? P[(size_t)c * r + k0 + kk] : 0.0f;
  }
  __syncthreads();
  const int cp = threadIdx.x % 16, rg = threadIdx.x / 16; /* columns 2cp, 2cp+1; rows rg + 16 i */
  float acc[RPT][2];
#pragma unroll
  for (int i = 0; i < RPT; i++) acc[i][0] = acc[i][1] = 0.0f;
  for (int c = 0; c < D4; c += 4) {
    float2 pv[4];
#pragma unroll
    for (int u = 0; u < 4; u++) pv[u] = *reinterpret_cast<const float2 *>(ps + (c + u) * 32 + 2 * cp);
#pragma unroll
    for (int i = 0; i < RPT; i++) {
      const float4 xv = *reinterpret_cast<const float4 *>(xs + (size_t)(rg + 16 * i) * D4 + c);
      acc[i][0] = fmaf(xv.x, pv[0].x, fmaf(xv.y, pv[1].x, fmaf(xv.z, pv[2].x, fmaf(xv.w, pv[3].x, acc[i][0]))));
      acc[i][1] = fmaf(xv.x, pv[0].y, fmaf(xv.y, pv[1].y, fmaf(xv.z, pv[2].y, fmaf(xv.w, pv[3].y, acc[i][1]))));
    }
  }
#pragma unroll
  for (int i = 0; i < RPT; i++) {
    const int j = j0 + rg + 16 * i;
    if (j >= n) continue;
    const size_t o = (((size_t)b * a.heads + h) * n + j) * r;
#pragma unroll
    for (int u = 0; u < 2; u++) {
      const int k = k0 + 2 * cp + u;
      if (k < r) dac_st(out, odt, o + k, acc[i][u]);
    }
  }
}

extern "C" cudaError_t dac_launch_proj(const dac_args *a, const float *pj, int is_k, void *out,
                                       da_dtype odt, cudaStream_t s) {
  const long long n = is_k ? a->seq_k : a->seq_q;
  if (n <= 0 || a->pr <= 0 || a->heads <= 0 || a->batch <= 0) return cudaSuccess;
  const int rpt = a->d <= 128 ? 4 : 1, R = 16 * rpt, D4 = (a->d + 3) & ~3;
  const long long blocks = (n + R - 1) / R * ((a->pr + 31) / 32);
  if (blocks > 2147483647LL) return cudaErrorInvalidValue;
  const size_t smem = ((size_t)R * D4 + (size_t)D4 * 32) * sizeof(float); /* <= 48 KiB */
  dim3 grid((unsigned)blocks, a->heads, a->batch);
  if (rpt == 4)
    dac_proj_kernel<4><<<grid, 256, smem, s>>>(*a, pj, is_k, out, odt);
  else
    dac_proj_kernel<1><<<grid, 256, smem, s>>>(*a, pj, is_k, out, odt);
  return cudaGetLastError();
}

extern "C" int dac_mma_proj_supported(da_dtype dt, int d, int r) {
  if (dt != DA_F16 && dt != DA_BF16) return 0;
  if (d == 64) return r == 16 || r == 32 || r == 64;
  if (d == 128) return r == 16 || r == 32 || r == 64 || r == 128;
  return 0;
}

extern "C" cudaError_t dac_launch_mma_proj(const dac_args *a, cudaStream_t s) {
  if (a->dt == DA_F16) return dac_launch_mma_f16_proj(a, s);
  if (a->dt == DA_BF16) return dac_launch_mma_bf16_proj(a, s);
  return cudaErrorInvalidValue;
}
