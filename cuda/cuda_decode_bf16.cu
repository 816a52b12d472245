/* SPDX-License-Identifier: Apache-2.0 */
/* The split-KV decode kernels (cuda_decode.cuh) for bf16. */
#include "cuda_decode.cuh"

extern "C" cudaError_t dac_launch_decode_bf16(const dac_args *a, float *part, int nch, int C,
                                            int RB, int nrg, cudaStream_t s) {
  return dac_dec_run<__nv_bfloat16>(a, part, nch, C, RB, nrg, s);
}

extern "C" cudaError_t dac_occupancy_decode_bf16(int d, int RB, int *blocks) {
  return dac_dec_occupancy<__nv_bfloat16>(d, RB, blocks);
}
