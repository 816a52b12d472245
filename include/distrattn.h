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
 * ctx NULL: the reason of this thread's last failed da_context_create,
 * da_context_wrap or da_projections_load (which have no context to keep it
 * in). Never NULL. */
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

/* ---- Strides, variable lengths, log-sum-exp, sliding window ----
 * For inference engines: a plan made with da_plan_create_ext and a
 * da_attn_ext reads and writes tensors laid out by element strides (so
 * B,S,H,D and B,H,S,D both work without copies, and a KV cache of fixed
 * capacity is used in place), takes per-sequence lengths at each call, can
 * write the log-sum-exp of every query row and can limit each query to a
 * window of keys. da_attention_ext runs it with a da_attn_args.
 *
 * ABI: both structs begin with struct_size, set by their _init function to
 * the size the caller was compiled with; later versions only append fields,
 * and a field the caller's struct lacks takes its default. */
typedef enum {
  DA_SEQLENS_NONE = 0,   /* every sequence is seq_q queries over seq_k keys */
  DA_SEQLENS_KV = 1,     /* padded batch: sequence b has args.seqlens_k[b] keys
                            (0..seq_k; desc.seq_k is the capacity) and seq_q queries */
  DA_SEQLENS_PACKED = 2  /* packed batch: sequence b's queries are the rows
                            cu_seqlens_q[b] .. cu_seqlens_q[b+1]-1 of Q and O, its keys
                            the rows cu_seqlens_k[b] .. cu_seqlens_k[b+1]-1 of K and V;
                            desc.seq_q, desc.seq_k are the longest lengths */
} da_seqlens;

typedef struct da_attn_ext {
  size_t struct_size;         /* sizeof(da_attn_ext): da_attn_ext_init sets it */
  /* Element strides (not bytes) of each tensor: [0] from one sequence
   * (batch index) to the next, [1] from one head to the next, [2] from one
   * row (token) to the next. The head_dim elements of a row are contiguous.
   * All three 0: dense, [batch][heads][seq][head_dim]. With
   * DA_SEQLENS_PACKED, [0] must be 0 (rows are counted from the tensor's
   * start). O's strides must not make two written elements coincide. */
  long long q_stride[3], k_stride[3], v_stride[3], o_stride[3];
  da_seqlens seqlens;
  int lse;                    /* 1: the call writes the log-sum-exp (args.lse) */
  int window_left;            /* keys before the query's diagonal it sees; -1 = all */
  int window_right;           /* keys after the diagonal it sees; -1 = all (causal: 0) */
  /* ---- appended: grouping strategies (SPEC 1c) ----
   * DA_STRATEGY_TILE_LSH (0, the default): group_size > 1 is the paper's
   * per-tile LSH grouping of section 1. DA_STRATEGY_PROJECTION: logits
   * scale * (Q_h A_h) . (K_kv(h) B_h) with caller-given A_h, B_h
   * (head_dim x rank f32, per query head); V and the softmax exact.
   * group_size must then be 1 (the rank takes its place: rank head_dim/G
   * is the G equivalent). proj: [heads][2][head_dim][rank] (A_h then B_h,
   * row-major), host memory, every element finite; copied into the plan
   * at creation (da_plan_get_ext then points at the plan's copy, valid
   * while the plan lives). The CPU and OpenCL backends run it forward and
   * backward (OpenCL: its fused kernel; DA_ALGO_GEMM is refused with
   * DA_ERR_UNSUPPORTED); CUDA too (its fused kernels forward; DA_ALGO_GEMM
   * is refused with DA_ERR_UNSUPPORTED).
   * da_projections_load reads them from a calibration file (`distrattn
   * calibrate`). */
  int strategy;               /* da_strategy */
  int rank;                   /* DA_STRATEGY_PROJECTION: 1..head_dim; else 0 */
  const float *proj;          /* DA_STRATEGY_PROJECTION: the projections; else NULL */
} da_attn_ext;

typedef enum {
  DA_STRATEGY_TILE_LSH = 0,   /* section 1: per-tile LSH column groups (group_size G) */
  DA_STRATEGY_PROJECTION = 1  /* section 1c: per-head projections to `rank` columns */
} da_strategy;

typedef struct da_attn_args {
  size_t struct_size;         /* sizeof(da_attn_args): da_attn_args_init sets it */
  const da_buffer *q, *k, *v; /* read; each may start at an offset */
  da_buffer *o;               /* written */
  size_t q_offset, k_offset, v_offset, o_offset; /* in elements of the plan's dtype */
  const da_buffer *seqlens_k; /* DA_SEQLENS_KV: int32 [batch] */
  const da_buffer *cu_seqlens_q, *cu_seqlens_k; /* DA_SEQLENS_PACKED: int32 [batch + 1],
                                 starting at 0, non-decreasing */
  size_t rows_q, rows_k;      /* DA_SEQLENS_PACKED: rows Q/O and K/V hold (the last
                                 cu_seqlens value may not exceed them) */
  da_buffer *lse;             /* ext.lse: f32, [batch][heads][seq_q]; with
                                 DA_SEQLENS_PACKED [heads][rows_q] */
  size_t lse_offset;          /* in f32 elements */
} da_attn_args;

/* Zero *x or *a, then set struct_size and the defaults (dense strides, no
 * per-sequence lengths, no LSE, window -1/-1).
 *
 * These are macros that pass the size of the struct the caller was
 * compiled with (the _size functions write at most that many bytes and set
 * struct_size to it), so a program built against this header keeps working,
 * unrecompiled, with a later library whose structs have grown. The plain
 * functions of the same names stay exported for callers that cannot use
 * macros (foreign-function interfaces): they write this version's sizeof.
 * Sizes below a struct's first field's end set nothing. */
DA_API void da_attn_ext_init_size(da_attn_ext *x, size_t size);
DA_API void da_attn_args_init_size(da_attn_args *a, size_t size);
DA_API void da_attn_ext_init(da_attn_ext *x);
DA_API void da_attn_args_init(da_attn_args *a);
#define da_attn_ext_init(x) da_attn_ext_init_size((x), sizeof(da_attn_ext))
#define da_attn_args_init(a) da_attn_args_init_size((a), sizeof(da_attn_args))
/* da_plan_create with the options of *x (NULL: as da_plan_create). A
 * backend that lacks an option asked for refuses the plan with
 * DA_ERR_UNSUPPORTED naming it (OpenCL's and CUDA's DA_ALGO_GEMM, while
 * DA_ALGO_AUTO takes their fused kernels). */
DA_API da_status da_plan_create_ext(da_context *ctx, const da_attn_desc *d, const da_attn_ext *x,
                                    da_plan **plan);
/* The options as the plan resolved them (dense strides filled in). */
DA_API da_status da_plan_get_ext(const da_plan *plan, da_attn_ext *out);
/* ---- What a plan runs ----
 * da_plan_get_kernel fills *out with the kernel the plan's forward calls
 * (da_attention, da_attention_ext, da_attention_host) run, as the backend
 * chose it when the plan was made, after the environment's overrides
 * (README "Environment": the core parses them once per plan, at
 * da_plan_create). For logs and benchmarks: the names below are stable,
 * which kernel a shape gets may change between versions.
 *
 * ABI: struct_size first, set by da_kernel_info_init (a macro passing the
 * caller's sizeof, as da_attn_ext_init); later versions only append
 * fields, and a call fills at most struct_size bytes. Zero means "none" or
 * "not reported" in every number. */
typedef struct da_kernel_info {
  size_t struct_size;   /* sizeof(da_kernel_info): da_kernel_info_init sets it */
  da_backend backend;   /* the plan's context's backend */
  /* NUL-terminated, one of:
   *  cpu:    "fused" (blocked online softmax), "gemm", "split-kv decode"
   *  opencl: "tiled" (the GPU-shaped fused kernel), "rows" (one work-item
   *          per query row, the CPU shape), "gemm", "split-kv decode"
   *  cuda:   "wgmma" (Hopper's warpgroup MMA), "mma" (mma.sync tensor
   *          cores), "simt", "gemm" (cuBLAS), "split-kv decode"
   *  any:    "default" where the backend does not say (a module without
   *          the query). */
  char name[32];
  /* NUL-terminated detail, "" when none: cpu: the ISA of its kernels
   * ("generic", "avx2", "avx512"); opencl "split-kv decode": its shape
   * ("tiled" or "rows"); cuda "split-kv decode": "mma" or "simt"; cuda
   * plans of the projection strategy (SPEC 1c): "pre-projected". */
  char variant[32];
  int tile_rows;        /* query rows of a tile (work-group, block); 0 none */
  int tile_cols;        /* keys of a tile; 0 none */
  int threads;          /* cpu: threads of the context's pool; opencl: work-items of a
                           work-group; cuda: threads of a block; 0 not reported */
  long long chunk;      /* "split-kv decode": keys per chunk; 0 otherwise */
} da_kernel_info;

DA_API void da_kernel_info_init_size(da_kernel_info *k, size_t size);
DA_API void da_kernel_info_init(da_kernel_info *k);
#define da_kernel_info_init(k) da_kernel_info_init_size((k), sizeof(da_kernel_info))
/* DA_ERR_INVALID_ARG for a NULL plan or out, or an out whose struct_size
 * is not that of an initialised da_kernel_info. CUDA reports the kernel of
 * calls whose tensors are 16-byte aligned (device pointers and strides);
 * a call whose are not runs "simt". */
DA_API da_status da_plan_get_kernel(const da_plan *plan, da_kernel_info *out);

/* Enqueues attention with the plan's layout. Every tensor's elements (by
 * its strides, offset and the plan's shape; with DA_SEQLENS_PACKED by
 * rows_q, rows_k) must lie inside its buffer; O must share no byte with Q,
 * K, V or LSE. With DA_SEQLENS_KV and DA_SEQLENS_PACKED, causal masks are
 * bottom-right aligned per sequence, a sequence with no keys or no queries
 * gives zero rows (LSE -inf), and a length out of range is
 * DA_ERR_INVALID_ARG where the backend can see it (the CPU backend checks
 * every value). Device backends (OpenCL, CUDA) read the lengths only in their
 * kernels and clamp them there: seqlens_k[b] to 0..seq_k, cu_seqlens[b] to
 * 0..rows, cu_seqlens[b+1] to cu_seqlens[b]..rows, a length to at most
 * seq_q (seq_k); the result is then unspecified, but nothing outside the
 * tensors' rows is read or written (SPEC 1, "Layouts and lengths"). */
DA_API da_status da_attention_ext(da_plan *plan, const da_attn_args *args);

/* ---- Projection files (SPEC 1c, tools/PROJ_FORMAT.md) ----
 * Reads layer `layer` (0-based, among the file's layers) of a DATTNPRJ
 * file written by `distrattn calibrate`: *proj gets a malloc'd
 * [heads][2][head_dim][rank] f32 array (A_h then B_h per query head, the
 * layout of da_attn_ext.proj), freed with da_projections_free. layers,
 * heads, head_dim, rank (each may be NULL) get the file's. The file is
 * trusted in nothing: magic, version, every header field's range, the
 * exact size and every value (finite) are checked before anything is
 * returned. On failure: DA_ERR_INVALID_ARG (a bad file or argument),
 * DA_ERR_HOST_MEMORY, *proj NULL, and da_context_last_error(NULL) says
 * why (the field and value; for a non-finite value its layer, head,
 * matrix, row and column). Safe from any thread. */
DA_API da_status da_projections_load(const char *path, int layer, float **proj, int *layers,
                                     int *heads, int *head_dim, int *rank);
DA_API void da_projections_free(float *proj);

/* ---- Backward pass (training) ----
 * The gradients of attention with respect to Q, K and V (SPEC section 1b),
 * FlashAttention-2 style: from the forward's output O and its log-sum-exp
 * (da_attention_ext with ext.lse = 1, same plan or one of the same desc),
 * recomputing the probabilities block by block (no seq_q x seq_k matrix in
 * memory). For group_size > 1 the groupings and fusion weights of the
 * forward (recomputed from Q as the forward does) are constants: gradients
 * flow through the fused columns and back to Q's and K's own columns.
 * Inputs are read in the plan's dtype, arithmetic is f32, gradients are
 * written in the plan's dtype. dO has O's layout, dQ Q's, dK K's, dV V's
 * (the plan's strides; dense by default); the LSE is f32
 * [batch][heads][seq_q]. GQA: dK and dV of a kv head are summed over the
 * query heads that read it. Every gradient element is written.
 *
 * ABI: struct_size first, set by da_bwd_args_init; later versions only
 * append fields. Supported today: the CPU, CUDA and OpenCL backends, dense
 * or strided layouts, causal and windows; a plan with per-sequence lengths
 * (ext.seqlens) is refused with DA_ERR_UNSUPPORTED, as is a backend without
 * a backward pass (a loadable module that leaves it out). dq, dk and dv may not share a
 * byte with each other or with any input (DA_ERR_INVALID_ARG). */
typedef struct da_bwd_args {
  size_t struct_size;          /* sizeof(da_bwd_args): da_bwd_args_init sets it */
  const da_buffer *dout;       /* dL/dO, O's shape and layout */
  const da_buffer *q, *k, *v;  /* the forward's inputs */
  const da_buffer *o;          /* the forward's output */
  const da_buffer *lse;        /* the forward's log-sum-exp, f32 [batch][heads][seq_q] */
  da_buffer *dq, *dk, *dv;     /* written: Q's, K's and V's shapes and layouts */
  size_t dout_offset, q_offset, k_offset, v_offset, o_offset; /* in elements of the dtype */
  size_t lse_offset;           /* in f32 elements */
  size_t dq_offset, dk_offset, dv_offset; /* in elements of the dtype */
} da_bwd_args;

/* Zero *a, then set struct_size (a macro passing the caller's sizeof, as
 * da_attn_ext_init). */
DA_API void da_bwd_args_init_size(da_bwd_args *a, size_t size);
DA_API void da_bwd_args_init(da_bwd_args *a);
#define da_bwd_args_init(a) da_bwd_args_init_size((a), sizeof(da_bwd_args))
/* Enqueues the backward pass of plan's attention (synchronous on the CPU
 * backend). */
DA_API da_status da_attention_backward(da_plan *plan, const da_bwd_args *args);

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
