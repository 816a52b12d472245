/* SPDX-License-Identifier: Apache-2.0 */
/* The mma.sync kernel (cuda_mma.cuh) for bf16 inputs over pre-projected Q
 * and K (DA_STRATEGY_PROJECTION, SPEC 1c; GS = 0, EXT): head_dim 64 with
 * rank 16, 32, 64 and head_dim 128 with rank 16, 32, 64, 128, 128 query rows
 * per block. Apart from the other instantiations so that make builds them
 * in parallel. */
#include "cuda_mma.cuh"

extern "C" cudaError_t dac_launch_mma_bf16_proj(const dac_args *a, cudaStream_t s) {
  return launch_mma_proj<__nv_bfloat16>(a, s);
}
