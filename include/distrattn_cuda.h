/* SPDX-License-Identifier: Apache-2.0 */
/*
 * distrattn CUDA interop: run distrattn on a caller's CUDA stream and over a
 * caller's device memory. Typed wrappers over da_context_wrap,
 * da_buffer_wrap and da_buffer_native (distrattn.h); nothing here changes
 * their meaning. The caller keeps ownership of the stream and the memory:
 * destroying the wrappers frees neither.
 *
 * A wrapped context enqueues every da_attention on the given stream (NULL is
 * the legacy default stream) of the device the stream belongs to. Device
 * pointers must be device (or managed) memory of that device; 16-byte
 * aligned pointers take the tensor-core path.
 */
#ifndef DISTRATTN_CUDA_H
#define DISTRATTN_CUDA_H

#include <cuda_runtime_api.h>

#include "distrattn.h"

#ifdef __cplusplus
extern "C" {
#endif

/* A context of the CUDA backend enqueueing on `stream`. */
static inline da_status da_cuda_context_wrap(da_context **ctx, cudaStream_t stream) {
  return da_context_wrap(ctx, DA_BACKEND_CUDA, (void *)stream);
}

/* A buffer over `bytes` bytes of the caller's device memory at `devptr`. */
static inline da_status da_cuda_buffer_wrap(da_context *ctx, void *devptr, size_t bytes,
                                            da_buffer **buf) {
  return da_buffer_wrap(ctx, devptr, bytes, buf);
}

/* The device pointer of a buffer of the CUDA backend (made by
 * da_buffer_create or wrapped); NULL for NULL. */
static inline void *da_cuda_buffer_device_ptr(const da_buffer *buf) {
  return da_buffer_native(buf);
}

#ifdef __cplusplus
}
#endif
#endif /* DISTRATTN_CUDA_H */
