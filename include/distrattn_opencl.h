/* SPDX-License-Identifier: Apache-2.0 */
/*
 * distrattn OpenCL interop: run distrattn on the caller's cl_command_queue
 * and cl_mem objects. Include after <CL/cl.h> (or let this header include it).
 *
 * da_context_wrap_opencl wraps a queue: the context uses that queue's
 * device and cl_context and enqueues its work on it (an out-of-order queue
 * gets barriers between distrattn's commands). The queue is retained and
 * released when the context goes; the caller keeps its own reference.
 * da_buffer_wrap_opencl wraps a cl_mem of the same cl_context holding at least
 * `bytes` bytes; it is retained while the da_buffer lives.
 */
#ifndef DISTRATTN_OPENCL_H
#define DISTRATTN_OPENCL_H

#ifndef CL_TARGET_OPENCL_VERSION
#define CL_TARGET_OPENCL_VERSION 120
#endif
#ifdef __APPLE__
#include <OpenCL/opencl.h>
#else
#include <CL/cl.h>
#endif

#include "distrattn.h"

#ifdef __cplusplus
extern "C" {
#endif

/* A context working on the caller's queue. */
static inline da_status da_context_wrap_opencl(da_context **ctx, cl_command_queue queue) {
  return da_context_wrap(ctx, DA_BACKEND_OPENCL, (void *)queue);
}

/* A buffer over the caller's cl_mem (same cl_context as the context's queue). */
static inline da_status da_buffer_wrap_opencl(da_context *ctx, cl_mem mem, size_t bytes,
                                              da_buffer **buf) {
  return da_buffer_wrap(ctx, (void *)mem, bytes, buf);
}

/* The cl_mem behind a buffer of an OpenCL context (NULL for another backend's
 * buffer); distrattn keeps ownership of buffers it created. */
static inline cl_mem da_buffer_opencl_mem(const da_buffer *buf) {
  return (cl_mem)da_buffer_native(buf);
}

#ifdef __cplusplus
}
#endif
#endif /* DISTRATTN_OPENCL_H */
