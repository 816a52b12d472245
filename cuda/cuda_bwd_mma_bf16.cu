/* SPDX-License-Identifier: Apache-2.0 */
/* The backward pass's tensor-core kernel (cuda_bwd_mma.cuh) for bf16,
 * head_dim 64 and 128. */
#include "cuda_bwd_mma.cuh"

extern "C" cudaError_t dac_launch_bwd_mma_bf16(const dac_bwd_args *a, cudaStream_t s) {
  return launch_bwd_mma<__nv_bfloat16>(a, s);
}
