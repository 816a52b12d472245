/* SPDX-License-Identifier: Apache-2.0 */
/* The launches of the backward pass's helper kernels (the expanded Q of
 * G > 1, the projection strategy's products with M_h, D, dQ) and of its
 * SIMT main kernel (cuda_bwd_kern.cuh). */
#include "cuda_bwd_kern.cuh"

extern "C" cudaError_t dac_launch_bwd_qx(const dac_bwd_args *a, void *qx, da_dtype qx_dt,
                                         cudaStream_t s) {
  if (a->d > 256) return cudaErrorInvalidValue;
  dac_bwd_qx_kernel<<<dim3(a->n_tiles, a->heads, a->batch), BWD_GT, sizeof(bwd_tile), s>>>(*a, qx, qx_dt);
  return cudaGetLastError();
}

extern "C" cudaError_t dac_launch_bwd_dsum(const dac_bwd_args *a, cudaStream_t s) {
  const long long rows = (long long)a->batch * a->heads * a->seq_q;
  long long blocks = (rows + 7) / 8;
  if (blocks > 65536) blocks = 65536;
  if (blocks < 1) return cudaSuccess;
  dac_bwd_dsum_kernel<<<(unsigned)blocks, 256, 0, s>>>(*a);
  return cudaGetLastError();
}

/* the projection strategy's products with M_h (dq 0: qx = Q M_h, 1: dQ = s E M_h^T) */
static cudaError_t launch_bwd_proj(const dac_bwd_args *a, int dq, void *qx, da_dtype qx_dt,
                                   cudaStream_t s) {
  if (a->d < 1 || a->d > 256 || !a->pm) return cudaErrorInvalidValue;
  const long long tiles = (long long)((a->seq_q + BWD_PM - 1) / BWD_PM) * ((a->d + BWD_PM - 1) / BWD_PM);
  if (tiles < 1) return cudaSuccess;
  if (tiles > 2147483647LL) return cudaErrorInvalidValue;
  dac_bwd_proj_kernel<<<dim3((unsigned)tiles, a->heads, a->batch), BWD_PT, dac_bwd_proj_smem, s>>>(
      *a, dq, qx, qx_dt);
  return cudaGetLastError();
}

extern "C" cudaError_t dac_launch_bwd_qproj(const dac_bwd_args *a, void *qx, da_dtype qx_dt,
                                            cudaStream_t s) {
  return launch_bwd_proj(a, 0, qx, qx_dt, s);
}

extern "C" cudaError_t dac_launch_bwd_dq(const dac_bwd_args *a, cudaStream_t s) {
  if (a->pm) return launch_bwd_proj(a, 1, NULL, DA_F32, s);
  if (a->G > 1) {
    if (a->d > 256) return cudaErrorInvalidValue;
    dac_bwd_dq_grouped_kernel<<<dim3(a->n_tiles, a->heads, a->batch), BWD_GT, sizeof(bwd_tile), s>>>(*a);
    return cudaGetLastError();
  }
  const long long n = (long long)a->batch * a->heads * a->seq_q * a->d;
  long long blocks = (n + 255) / 256;
  if (blocks > 65536) blocks = 65536;
  if (blocks < 1) return cudaSuccess;
  dac_bwd_dq_kernel<<<(unsigned)blocks, 256, 0, s>>>(*a);
  return cudaGetLastError();
}

extern "C" int dac_bwd_mma_supported(da_dtype dt, int d) {
  return (dt == DA_F16 || dt == DA_BF16) && (d == 64 || d == 128);
}

extern "C" cudaError_t dac_launch_bwd_simt(const dac_bwd_args *a, cudaStream_t s) {
  if (a->d < 1 || a->d > 256) return cudaErrorInvalidValue;
  const size_t smem = dac_bwd_simt_smem(a->d);
  cudaError_t e =
      cudaFuncSetAttribute(dac_bwd_simt_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
  if (e != cudaSuccess) return e;
  const dim3 grid((a->seq_k + BWD_SK - 1) / BWD_SK, a->kv_heads, a->batch);
  dac_bwd_simt_kernel<<<grid, BWD_ST, smem, s>>>(*a);
  return cudaGetLastError();
}
