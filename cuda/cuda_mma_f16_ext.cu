/* SPDX-License-Identifier: Apache-2.0 */
/* The mma.sync kernel (cuda_mma.cuh) for f16 inputs, its da_attn_ext
 * instantiations (EXT = true: strides, per-sequence lengths, windows, LSE):
 * head_dim 64 and 128, each G, 64 and 128 query rows per block. Apart from
 * the dense ones (cuda_mma_f16.cu) so that make builds them in parallel. */
#include "cuda_mma.cuh"

extern "C" cudaError_t dac_launch_mma_f16_ext(const dac_args *a, int br, cudaStream_t s) {
  return br >= 128 ? launch_mma_d<__half, 4, 2, true>(a, s) : launch_mma_d<__half, 4, 1, true>(a, s);
}
