/* SPDX-License-Identifier: Apache-2.0 */
/* The split-KV decode kernels (cuda_decode.cuh) for f32. */
#include "cuda_decode.cuh"

extern "C" cudaError_t dac_launch_decode_f32(const dac_args *a, float *part, int nch, int C,
                                            int RB, int nrg, cudaStream_t s) {
  return dac_dec_run<float>(a, part, nch, C, RB, nrg, s);
}

extern "C" cudaError_t dac_occupancy_decode_f32(int d, int RB, int *blocks) {
  return dac_dec_occupancy<float>(d, RB, blocks);
}
