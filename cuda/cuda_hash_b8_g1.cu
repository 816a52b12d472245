/* SPDX-License-Identifier: Apache-2.0 */
/* The hash kernel at NB = 8 hash bits (rounded up), G = 1, each TB. */
#include "cuda_hash_kernel.cuh"

DAC_HASH_INSTANTIATE(8, 1)
