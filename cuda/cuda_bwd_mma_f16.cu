/* SPDX-License-Identifier: Apache-2.0 */
/* The backward pass's tensor-core kernel (cuda_bwd_mma.cuh) for f16,
 * head_dim 64 and 128; cuda_bwd_mma_bf16.cu the same for bf16, apart so
 * that make builds the two in parallel. */
#include "cuda_bwd_mma.cuh"

extern "C" cudaError_t dac_launch_bwd_mma_f16(const dac_bwd_args *a, cudaStream_t s) {
  return launch_bwd_mma<__half>(a, s);
}
