/* SPDX-License-Identifier: Apache-2.0 */
/* The hash kernel at G = 8: each NB (8, 16, 32 hash bits) at each TB. */
#include "cuda_hash_kernel.cuh"

DAC_HASH_INSTANTIATE(8)
