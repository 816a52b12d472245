/* SPDX-License-Identifier: Apache-2.0 */
/* Tensor-core fused attention (cuda_mma.cuh): which shapes it has, and the
 * launch for a dtype, whose kernels cuda_mma_f16.cu and cuda_mma_bf16.cu
 * build. */
#include "cuda_internal.h"

extern "C" int dac_mma_supported(da_dtype dt, int d, int G, int hash_block) {
  if (dt != DA_F16 && dt != DA_BF16) return 0;
  if (d != 64 && d != 128) return 0;
  if (G != 1 && G != 2 && G != 4 && G != 8) return 0;
  return G == 1 || hash_block >= 64;
}

/* br: query rows per block, 64 (4 warps of 16 rows) or 128 (4 warps of 32
 * rows); it must divide hash_block when G > 1. */
extern "C" cudaError_t dac_launch_mma(const dac_args *a, int br, cudaStream_t s) {
  if (a->dt == DA_F16) return dac_launch_mma_f16(a, br, s);
  if (a->dt == DA_BF16) return dac_launch_mma_bf16(a, br, s);
  return cudaErrorInvalidValue;
}

/* The same for the da_attn_ext kernels (cuda_mma_f16_ext.cu, cuda_mma_bf16_ext.cu). */
extern "C" cudaError_t dac_launch_mma_ext(const dac_args *a, int br, cudaStream_t s) {
  if (a->dt == DA_F16) return dac_launch_mma_f16_ext(a, br, s);
  if (a->dt == DA_BF16) return dac_launch_mma_bf16_ext(a, br, s);
  return cudaErrorInvalidValue;
}
