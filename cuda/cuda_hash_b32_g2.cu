/* SPDX-License-Identifier: Apache-2.0 */
/* The hash kernel at NB = 32 hash bits (rounded up), G = 2, each TB. */
#include "cuda_hash_kernel.cuh"

DAC_HASH_INSTANTIATE(32, 2)
