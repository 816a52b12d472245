/* SPDX-License-Identifier: Apache-2.0 */
/* The backward pass's split tensor-core kernels (cuda_bwd_split.cuh) for
 * f16, head_dim 64 and 128; a file per dtype so that make builds them in
 * parallel. */
#include "cuda_bwd_split.cuh"

extern "C" cudaError_t dac_launch_bwd_split_f16(const dac_bwd_args *a, cudaStream_t s) {
  return launch_bwd_split<__half>(a, s);
}
