/* SPDX-License-Identifier: Apache-2.0 */
/* The split-KV decode kernels (cuda_decode.cuh) for bf16. */
#include "cuda_decode.cuh"

extern "C" cudaError_t dac_launch_decode_bf16(const dac_args *a, float *part, int nch, int C, int RB,
                                            int nrg, cudaStream_t s) {
  dac_dec_part P;
  P.acc = part;
  P.ml = (float2 *)(part + (size_t)a->batch * a->heads * a->seq_q * nch * a->d);
  P.nch = nch;
  P.C = C;
  P.RB = RB;
  P.nrg = nrg;
  return dac_dec_launch_t<__nv_bfloat16>(a, &P, s);
}
