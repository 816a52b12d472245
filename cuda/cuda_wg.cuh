/* SPDX-License-Identifier: Apache-2.0 */
/* The warpgroup-MMA (sm_90a) helpers shared by the Hopper forward kernel
 * (cuda_wgmma.cu) and the Hopper backward kernel (cuda_bwd_wgmma.cu): the
 * wgmma fence, commit and wait, the proxy fence between generic stores to
 * shared memory and the async proxy's reads, the shared-memory matrix
 * descriptor and the byte offsets of the swizzled layouts it describes.
 * Included only where __CUDA_ARCH_FEAT_SM90_ALL is defined. Internal, not
 * installed. */
#ifndef DA_CUDA_WG_CUH
#define DA_CUDA_WG_CUH

#include <stdint.h>

/* generic-proxy writes to shared memory (st.shared, cp.async) before the
 * async proxy (wgmma) reads them */
__device__ __forceinline__ void fence_proxy() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}
__device__ __forceinline__ void wg_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wg_commit() {
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}
template <int N> __device__ __forceinline__ void wg_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}

/* shared-memory matrix descriptor, 128-byte swizzle (layout 1) or 64-byte
 * (layout 2: rows of 64 bytes, 8-row groups 512 bytes apart). K-major
 * operand (rows of K elements): lbo unused, sbo 1024 (8 rows), the k-step
 * 32 bytes on within the 128-byte row. MN-major operand (the K index runs
 * over rows, M or N along the row): lbo the distance between 64-element
 * panels of M or N, sbo 1024, the k-step 16 rows (2048 bytes) on. */
__device__ __forceinline__ uint64_t wg_desc(uint32_t saddr, uint32_t lbo, uint32_t sbo, uint64_t layout = 1) {
  return (uint64_t)((saddr & 0x3FFFFu) >> 4) | ((uint64_t)((lbo >> 4) & 0x3FFFu) << 16) |
         ((uint64_t)((sbo >> 4) & 0x3FFFu) << 32) | (layout << 62);
}
/* byte offset of 16-byte chunk c (8 elements) of row r in a tile of
 * 128-byte rows, 64 elements each, blocks of `rows` rows per 64 columns */
__device__ __forceinline__ uint32_t swz(int r, int c, int rows) {
  return (uint32_t)((c >> 3) * rows * 128 + r * 128 + (((c & 7) ^ (r & 7)) << 4));
}
/* the same for 64-byte rows (32 elements, the 64-byte swizzle: chunk c of
 * row r at chunk c ^ ((r / 2) % 4)), the pre-projected mode at rank 32 */
__device__ __forceinline__ uint32_t swz64(int r, int c) {
  return (uint32_t)(r * 64 + ((c ^ ((r >> 1) & 3)) << 4));
}

#endif /* DA_CUDA_WG_CUH */
