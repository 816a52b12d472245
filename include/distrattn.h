/* SPDX-License-Identifier: Apache-2.0 */
/*
 * distrattn — fast transformer self-attention (exact and DistrAttention)
 * on the CPU, OpenCL and CUDA, behind one plain C API.
 *
 * What is computed is fixed by SPEC.md (shipped with the sources). In short:
 * O = softmax(scale * Q K^T + mask) V, where for group_size G > 1 the logits
 * are computed over ceil(head_dim / G) LSH-grouped, fused columns.
 *
 * Thread-safety rule:
 *  - Different contexts may be used from different threads at the same time,
 *    with no restriction. Device enumeration (da_device_count,
 *    da_device_get_info, da_backend_available) is safe from any thread.
 *  - One context and everything made from it (plans, buffers) is used by one
 *    thread at a time: calls on the same context must be serialised by the
 *    caller. The exception is da_context_last_error's string, which belongs to
 *    the thread that made the failing call until its next call.
 *  - Plans and buffers keep their context alive: da_context_destroy only drops
 *    the caller's reference; the context is freed when its last plan and
 *    buffer are destroyed as well.
 */
#ifndef DISTRATTN_H
#define DISTRATTN_H

#include <stddef.h>

#if defined(_WIN32) && !defined(DISTRATTN_STATIC)
#  ifdef DISTRATTN_BUILDING
#    define DA_API __declspec(dllexport)
#  else
#    define DA_API __declspec(dllimport)
#  endif
#elif defined(__GNUC__) && __GNUC__ >= 4
#  define DA_API __attribute__((visibility("default")))
#else
#  define DA_API
#endif

#ifdef __cplusplus
extern "C" {
#endif

#define DISTRATTN_VERSION_MAJOR 0
#define DISTRATTN_VERSION_MINOR 1
#define DISTRATTN_VERSION_PATCH 0

typedef struct da_context da_context;
typedef struct da_plan da_plan;
typedef struct da_buffer da_buffer;

typedef enum {
  DA_SUCCESS = 0,
  DA_ERR_INVALID_ARG = -1,
  DA_ERR_HOST_MEMORY = -2,
  DA_ERR_DEVICE_MEMORY = -3,
  DA_ERR_NO_DEVICE = -4,
  DA_ERR_UNSUPPORTED = -5,
  DA_ERR_BUILD = -6,
  DA_ERR_BACKEND = -7
} da_status;

typedef enum {
  DA_BACKEND_AUTO = 0,
  DA_BACKEND_CPU = 1,
  DA_BACKEND_OPENCL = 2,
  DA_BACKEND_CUDA = 3
} da_backend;

typedef enum { DA_F32 = 0, DA_F16 = 1, DA_BF16 = 2 } da_dtype;
typedef enum { DA_FUSE_MEAN = 0, DA_FUSE_NORM = 1 } da_fusion;
typedef enum { DA_ALGO_AUTO = 0, DA_ALGO_FUSED = 1, DA_ALGO_GEMM = 2 } da_algo;

typedef struct da_attn_desc {
  int batch, heads, kv_heads, seq_q, seq_k, head_dim; /* kv_heads 0 = heads */
  da_dtype dtype;
  int causal;
  float scale;        /* 0 = 1/sqrt(head_dim) */
  int group_size;     /* 1 = exact; 2, 4, 8 = DistrAttention */
  int hash_bits;      /* 0 = 16 (1..32) */
  int hash_block;     /* 0 = 128 */
  da_fusion fusion;
  unsigned long long seed;
  da_algo algo;       /* FUSED: one kernel, no seq_q x seq_k matrix in memory;
                         GEMM: logits materialised through the backend's BLAS
                         (CLBlast, cuBLAS), a baseline and a fallback */
} da_attn_desc;

typedef struct da_device_info {
  da_backend backend;
  int index;          /* index within its backend */
  char name[128];
  char vendor[128];
  unsigned long long global_mem;
  int has_fp16;
  int has_bf16;
} da_device_info;

DA_API const char *da_version_string(void);
DA_API const char *da_status_string(da_status s);

/* Zeroes *d, then sets the defaults: group_size 1 (exact: no silent
 * approximation), hash_bits 16, hash_block 128, the measured best fusion. */
DA_API void da_attn_desc_init(da_attn_desc *d);

/* Devices of all backends, in one list ordered by backend then index. */
DA_API int da_device_count(void);
DA_API da_status da_device_get_info(int i, da_device_info *out);

/* index -1 = the best device of that backend (or of all, for AUTO). */
DA_API da_status da_context_create(da_context **ctx, da_backend b, int index);
DA_API void da_context_destroy(da_context *ctx);
DA_API da_backend da_context_backend(const da_context *ctx);
/* Detail of the last failure on this context: the field and value that were
 * rejected, a build log, a driver error; empty after a call that succeeded.
 * ctx NULL: the reason of this thread's last failed da_context_create or
 * da_context_wrap (which have no context to keep it in). Never NULL. */
DA_API const char *da_context_last_error(const da_context *ctx);
DA_API da_status da_context_synchronize(da_context *ctx);
DA_API da_status da_context_get_device_info(const da_context *ctx, da_device_info *out);

DA_API da_status da_plan_create(da_context *ctx, const da_attn_desc *d, da_plan **plan);
DA_API void da_plan_destroy(da_plan *plan);
/* The descriptor as the plan resolved it (defaults filled in, algo chosen). */
DA_API da_status da_plan_get_desc(const da_plan *plan, da_attn_desc *out);

/* Synchronous, host memory in and out. */
DA_API da_status da_attention_host(da_plan *p, const void *q, const void *k,
                                   const void *v, void *o);
/* The per-tile column permutations pi:
 * int32 [batch][heads][ceil(seq_q/hash_block)][head_dim]. */
DA_API da_status da_plan_groups_host(da_plan *p, const void *q, int *perm);

/* Device-resident data; da_attention only enqueues. */
DA_API da_status da_buffer_create(da_context *ctx, size_t bytes, da_buffer **buf);
DA_API da_status da_buffer_write(da_buffer *b, size_t offset, const void *src, size_t bytes);
DA_API da_status da_buffer_read(const da_buffer *b, size_t offset, void *dst, size_t bytes);
DA_API void da_buffer_destroy(da_buffer *b);
DA_API size_t da_buffer_size(const da_buffer *b);
DA_API da_status da_attention(da_plan *p, const da_buffer *q, const da_buffer *k,
                              const da_buffer *v, da_buffer *o);

/* Backends: whether one is loaded and has devices; when not, *why says why
 * (module not found, runtime missing, no device, ...). why may be NULL. */
DA_API int da_backend_available(da_backend b, const char **why);
DA_API const char *da_backend_name(da_backend b);

/* Backend modules (distrattn_opencl.so, distrattn_cuda.so) are looked for,
 * each folder once, in: the folders given to da_backend_add_path (in the
 * order given); DISTRATTN_BACKEND_PATH's colon-separated folders;
 * distrattn/backends beside the loaded libdistrattn shared library (so an
 * install moved with `make install prefix=...` or DESTDIR finds its own
 * modules); the module folder configured at build time.
 *
 * da_backend_add_path adds dir (resolved to an absolute path now, so a
 * later chdir does not change it) to that search, before every other
 * folder. A backend's module is looked for once per process, when the
 * first call needs that backend (a context for it, da_backend_available
 * for it; device enumeration and DA_BACKEND_AUTO need all of them), so call
 * this first: once the OpenCL or the CUDA module has been looked for,
 * it returns DA_ERR_UNSUPPORTED and adds nothing, for any backend (the CPU
 * backend is built in and does not count). dir NULL, empty, missing or not a
 * directory: DA_ERR_INVALID_ARG. Out of memory: DA_ERR_HOST_MEMORY. Nothing
 * is added on an error. Safe from any thread. */
DA_API da_status da_backend_add_path(const char *dir);

/* Interop, used through distrattn_opencl.h and distrattn_cuda.h: wrap a
 * native queue/stream or memory object of the caller's. The caller keeps
 * ownership of what it passes; destroying the wrapper never frees or
 * releases it. A wrap whose bytes run past the end of the native allocation
 * is DA_ERR_INVALID_ARG. da_attention refuses an o that shares memory with
 * q, k or v (the same object, overlapping sub-buffers, pointers into one
 * allocation). */
DA_API da_status da_context_wrap(da_context **ctx, da_backend b, void *native_queue);
DA_API da_status da_buffer_wrap(da_context *ctx, void *native_mem, size_t bytes,
                                da_buffer **buf);
DA_API void *da_buffer_native(const da_buffer *b);

#ifdef __cplusplus
}
#endif
#endif /* DISTRATTN_H */
