/* SPDX-License-Identifier: Apache-2.0 */
/* DA_STRATEGY_PROJECTION (SPEC 1c) on CUDA: the per-call projection of Q
 * and K (Q_h A_h, K_kv(h) B_h, per query head), and which tensor-core
 * kernels run the logits over the rank (cuda_mma_f16_proj.cu,
 * cuda_mma_bf16_proj.cu); the SIMT kernel (cuda_simt.cu) runs the rest. */
#include "cuda_dev.cuh"

/* One thread per output element (row j, column k) of one (batch, head):
 * grid (ceil(rows * pr / 256), heads, batch). */
__global__ void __launch_bounds__(256)
    dac_proj_kernel(dac_args a, const float *pj, int is_k, void *out, da_dtype odt) {
  const int r = a.pr, b = blockIdx.z, h = blockIdx.y;
  const int n = is_k ? a.seq_k : a.seq_q;
  const long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (idx >= (long long)n * r) return;
  const int j = (int)(idx / r), k = (int)(idx % r);
  const dac_seq sq = dac_seq_of(a, b);
  const int len = is_k ? sq.lk : sq.lq;
  float acc = 0.0f;
  if (j < len) {
    const long long *st = is_k ? a.kst : a.qst;
    const long long xh = is_k ? h / (a.heads / a.kv_heads) : h;
    const long long row0 = is_k ? sq.k0 : sq.q0;
    const size_t row = (size_t)((long long)b * st[0] + xh * st[1] + (row0 + j) * st[2]);
    const void *x = is_k ? a.k : a.q;
    const float *P = pj + ((size_t)h * 2 + is_k) * (size_t)a.d * r + k;
    for (int c = 0; c < a.d; c++) acc = fmaf(dac_ld(x, a.dt, row + c), P[(size_t)c * r], acc);
  }
  dac_st(out, odt, (((size_t)b * a.heads + h) * n + j) * r + k, acc);
}

extern "C" cudaError_t dac_launch_proj(const dac_args *a, const float *pj, int is_k, void *out,
                                       da_dtype odt, cudaStream_t s) {
  const long long n = (long long)(is_k ? a->seq_k : a->seq_q) * a->pr;
  if (n <= 0 || a->heads <= 0 || a->batch <= 0) return cudaSuccess;
  const long long blocks = (n + 255) / 256;
  if (blocks > 2147483647LL) return cudaErrorInvalidValue;
  dim3 grid((unsigned)blocks, a->heads, a->batch);
  dac_proj_kernel<<<grid, 256, 0, s>>>(*a, pj, is_k, out, odt);
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
