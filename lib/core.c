/* SPDX-License-Identifier: Apache-2.0 */
/* Contexts, buffers and plans: the backend-agnostic half of every call.
 * Arguments are checked here, so that backends see only valid requests. */
#include <limits.h>
#include <math.h>
#include <stddef.h>
#include <stdarg.h>
#include <stdlib.h>

#include "da_internal.h"

/* ------------------------------------------------------------------ desc */

void da_attn_desc_init(da_attn_desc *d) {
  if (!d) return;
  memset(d, 0, sizeof *d);
  d->group_size = 1;
  d->hash_bits = 16;
  d->hash_block = 128;
  d->fusion = DA_FUSE_NORM;
  d->dtype = DA_F32;
  d->algo = DA_ALGO_AUTO;
}

/* The _init functions write min(size, sizeof) bytes: a caller compiled
 * with an older, smaller struct gets only the fields it has (SET sets a
 * default only where the field lies inside size). */
#define DA_INIT_PREFIX(p, size)                                                                   \
  do {                                                                                             \
    if (!(p) || (size) < sizeof(size_t)) return;                                                   \
    memset((p), 0, (size) < sizeof *(p) ? (size) : sizeof *(p));                                   \
    (p)->struct_size = (size);                                                                     \
  } while (0)
#define DA_INIT_SET(p, size, type, field, value)                                                   \
  do {                                                                                             \
    if (offsetof(type, field) + sizeof((p)->field) <= (size)) (p)->field = (value);                \
  } while (0)

void da_attn_ext_init_size(da_attn_ext *x, size_t size) {
  DA_INIT_PREFIX(x, size);
  DA_INIT_SET(x, size, da_attn_ext, seqlens, DA_SEQLENS_NONE);
  DA_INIT_SET(x, size, da_attn_ext, window_left, -1);
  DA_INIT_SET(x, size, da_attn_ext, window_right, -1);
}

void da_attn_args_init_size(da_attn_args *a, size_t size) { DA_INIT_PREFIX(a, size); }

void da_bwd_args_init_size(da_bwd_args *a, size_t size) { DA_INIT_PREFIX(a, size); }

/* The exported functions behind the header's macros, for callers without
 * them (parenthesised names: not the macros). */
void(da_attn_ext_init)(da_attn_ext *x) { da_attn_ext_init_size(x, sizeof *x); }
void(da_attn_args_init)(da_attn_args *a) { da_attn_args_init_size(a, sizeof *a); }
void(da_bwd_args_init)(da_bwd_args *a) { da_bwd_args_init_size(a, sizeof *a); }

/* ------------------------------------------------------------ overrides */

/* The environment's overrides of backend b's choices (da_backend.h,
 * da_overrides), parsed strictly with da_env_*: a bad value fails with
 * DA_ERR_INVALID_ARG and a message in ctx naming the variable. Only b's own
 * variables are read (a stray CUDA variable does not fail a CPU plan). */
da_status da_overrides_parse(da_context *ctx, da_backend b, da_overrides *ov) {
  static const char *const bits[] = {"0", "1"};
  unsigned long n = 0, m = 0;
  int set = 0;
  da_status s;
  memset(ov, 0, sizeof *ov);
  ov->cpu_isa = ov->cpu_decode = ov->cl_kernel = ov->cl_decode = -1;
  ov->cuda_wgmma = ov->cuda_decode = ov->cuda_bwd = ov->cuda_bwd_dq = -1;
  if (b == DA_BACKEND_CPU) {
    static const char *const isas[] = {"generic", "avx2", "avx512"};
    if ((s = da_env_word(ctx, "DISTRATTN_CPU_DECODE", bits, 2, "\"0\" or \"1\"",
                         &ov->cpu_decode)) ||
        (s = da_env_uint(ctx, "DISTRATTN_CPU_THREADS", 1, DA_CPU_MAX_THREADS, &n, &set)))
      return s;
    if (set) ov->cpu_threads = (int)n;
    return da_env_word(ctx, "DISTRATTN_CPU_ISA", isas, 3,
                       "\"generic\", \"avx2\" or \"avx512\"", &ov->cpu_isa);
  }
  if (b == DA_BACKEND_OPENCL) {
    static const char *const kinds[] = {"rows", "tiled"};
    if ((s = da_env_word(ctx, "DISTRATTN_CL_KERNEL", kinds, 2, "\"tiled\" or \"rows\"",
                         &ov->cl_kernel)) ||
        (s = da_env_uint_pair(ctx, "DISTRATTN_CL_TILE", 1, 4096, &n, &m, &set)))
      return s;
    if (set) {
      if (ov->cl_kernel == 0)
        return da_set_error(ctx, DA_ERR_INVALID_ARG,
                            "DISTRATTN_CL_TILE=\"%lux%lu\" is a tile of the tiled kernel, and "
                            "DISTRATTN_CL_KERNEL=\"rows\" asks for the other one",
                            n, m);
      ov->cl_tile_rows = (int)n;
      ov->cl_tile_cols = (int)m;
    }
    if ((s = da_env_word(ctx, "DISTRATTN_CL_DECODE", bits, 2, "\"0\" or \"1\"", &ov->cl_decode)) ||
        (s = da_env_uint(ctx, "DISTRATTN_CL_DECODE_CHUNK", 64, 1ul << 30, &n, &set)))
      return s;
    if (set && n % 64)
      return da_set_error(ctx, DA_ERR_INVALID_ARG,
                          "DISTRATTN_CL_DECODE_CHUNK=%lu is not a multiple of 64", n);
    if (set) ov->cl_decode_chunk = (long)n;
    return DA_SUCCESS;
  }
  if (b == DA_BACKEND_CUDA) {
    static const char *const bwd[] = {"simt", "mma", "wgmma"};
    static const char *const keys[] = {"64", "128"};
    static const char *const dq[] = {"atomic", "split"};
    int k = -1, rows = -1;
    if ((s = da_env_word(ctx, "DISTRATTN_CUDA_WGMMA", bits, 2, "\"0\" or \"1\"",
                         &ov->cuda_wgmma)) ||
        (s = da_env_word(ctx, "DISTRATTN_CUDA_DECODE", bits, 2, "\"0\" or \"1\"",
                         &ov->cuda_decode)) ||
        (s = da_env_uint(ctx, "DISTRATTN_CUDA_DECODE_CHUNK", 64, 1ul << 30, &n, &set)))
      return s;
    if (set && n % 64)
      return da_set_error(ctx, DA_ERR_INVALID_ARG,
                          "DISTRATTN_CUDA_DECODE_CHUNK=%lu is not a multiple of 64", n);
    if (set) ov->cuda_decode_chunk = (long)n;
    if ((s = da_env_word(ctx, "DISTRATTN_CUDA_BWD", bwd, 3, "\"simt\", \"mma\" or \"wgmma\"",
                         &ov->cuda_bwd)) ||
        (s = da_env_word(ctx, "DISTRATTN_CUDA_BWD_KEYS", keys, 2, "\"64\" or \"128\"", &k)) ||
        (s = da_env_word(ctx, "DISTRATTN_CUDA_BWD_DQ", dq, 2, "\"atomic\" or \"split\"",
                         &ov->cuda_bwd_dq)) ||
        (s = da_env_word(ctx, "DISTRATTN_CUDA_BWD_DQ_ROWS", keys, 2, "\"64\" or \"128\"",
                         &rows)))
      return s;
    ov->cuda_bwd_keys = k == 0 ? 64 : k == 1 ? 128 : 0;
    ov->cuda_bwd_dq_rows = rows == 0 ? 64 : rows == 1 ? 128 : 0;
  }
  return DA_SUCCESS;
}

/* ------------------------------------------------------------- contexts */

/* The reason of this thread's last failed call that had no context to keep
 * it in (da_context_create, da_context_wrap): da_context_last_error(NULL). */
static _Thread_local char no_ctx_error[2048];

static da_status fail_no_ctx(da_status s, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
static da_status fail_no_ctx(da_status s, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(no_ctx_error, sizeof no_ctx_error, fmt, ap);
  va_end(ap);
  return s;
}

da_status da_fail_no_ctx(da_status s, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(no_ctx_error, sizeof no_ctx_error, fmt, ap);
  va_end(ap);
  return s;
}

void da_clear_no_ctx_error(void) { no_ctx_error[0] = '\0'; }

/* A context that failed to come up: its message goes to the thread's. */
static da_status drop_new_context(da_context *ctx, da_status s) {
  const char *m = ctx->last_error[0] ? ctx->last_error : da_status_string(s);
  size_t n = strnlen(m, sizeof no_ctx_error - 1);
  memcpy(no_ctx_error, m, n);
  no_ctx_error[n] = '\0';
  free(ctx);
  return s;
}

/* The device of backend b with the highest rank (first on ties); -1 if none. */
static int best_device(da_backend b, int *rank_out) {
  const da_registered *r = da_registry_get(b);
  int best = -1, best_rank = -1;
  if (!r || !r->iface) return -1;
  for (int i = 0; i < r->ndev; i++) {
    da_device_info info;
    int rank = 0;
    if (r->iface->device_info(i, &info, &rank) != DA_SUCCESS) continue;
    if (rank > best_rank) {
      best = i;
      best_rank = rank;
    }
  }
  if (rank_out) *rank_out = best_rank;
  return best;
}

static da_context *context_new(const da_backend_iface *iface) {
  da_context *ctx = calloc(1, sizeof *ctx);
  if (!ctx) return NULL;
  ctx->iface = iface;
  ctx->refs = 1;
  return ctx;
}

static void context_unref(da_context *ctx) {
  if (--ctx->refs > 0) return;
  ctx->iface->ctx_destroy(ctx->bctx);
  free(ctx);
}

da_status da_context_create(da_context **out, da_backend b, int index) {
  no_ctx_error[0] = '\0';
  if (!out) return fail_no_ctx(DA_ERR_INVALID_ARG, "ctx is NULL");
  *out = NULL;
  if (b < DA_BACKEND_AUTO || b > DA_BACKEND_CUDA)
    return fail_no_ctx(DA_ERR_INVALID_ARG, "backend = %d is not a da_backend (0..3)", (int)b);
  if (index < -1)
    return fail_no_ctx(DA_ERR_INVALID_ARG, "device index = %d must be >= -1 (-1 = the best)",
                       index);
  if (b == DA_BACKEND_AUTO) {
    static const char *const names[] = {"auto", "cpu", "opencl", "cuda"};
    da_context tmp; /* only its message */
    int w;
    unsigned long dev = 0;
    int set = 0;
    tmp.last_error[0] = '\0';
    if (da_env_word(&tmp, "DISTRATTN_BACKEND", names, 4,
                    "\"auto\", \"cpu\", \"opencl\" or \"cuda\"", &w) != DA_SUCCESS ||
        da_env_uint(&tmp, "DISTRATTN_DEVICE", 0, 1u << 20, &dev, &set) != DA_SUCCESS)
      return fail_no_ctx(DA_ERR_INVALID_ARG, "%s", tmp.last_error);
    if (w >= 0) b = (da_backend)w;
    if (index == -1 && set) index = (int)dev;
  }
  if (b == DA_BACKEND_AUTO) {
    if (index >= 0) { /* an index into the global device list */
      da_device_info info;
      if (da_device_get_info(index, &info) != DA_SUCCESS)
        return fail_no_ctx(DA_ERR_NO_DEVICE, "device %d: there are %d devices", index,
                           da_device_count());
      b = info.backend;
      index = info.index;
    } else {
      int best_rank = -1;
      /* CUDA first: on an NVIDIA GPU, CUDA wins a tie with OpenCL. */
      for (int c = DA_BACKEND_CUDA; c >= DA_BACKEND_CPU; c--) {
        int rank, i = best_device((da_backend)c, &rank);
        if (i >= 0 && rank > best_rank) {
          best_rank = rank;
          b = (da_backend)c;
          index = i;
        }
      }
      if (b == DA_BACKEND_AUTO) return fail_no_ctx(DA_ERR_NO_DEVICE, "no device on any backend");
    }
  }
  const da_registered *r = da_registry_get(b);
  if (!r->iface || r->ndev == 0)
    return fail_no_ctx(DA_ERR_NO_DEVICE, "backend %s: %s", da_backend_name(b), r->why);
  if (index == -1) index = best_device(b, NULL);
  if (index < 0 || index >= r->ndev)
    return fail_no_ctx(DA_ERR_NO_DEVICE, "backend %s has %d devices, no device %d",
                       da_backend_name(b), r->ndev, index);

  da_context *ctx = context_new(r->iface);
  if (!ctx) return fail_no_ctx(DA_ERR_HOST_MEMORY, "out of host memory for a context");
  int rank;
  da_device_info info;
  void *bctx = NULL;
  memset(&info, 0, sizeof info);
  da_status s = da_overrides_parse(ctx, b, &ctx->ov);
  if (s == DA_SUCCESS) s = r->iface->device_info(index, &info, &rank);
  if (s == DA_SUCCESS) s = r->iface->ctx_create(ctx, index, &ctx->ov, &bctx, &info);
  if (s != DA_SUCCESS) return drop_new_context(ctx, s);
  ctx->bctx = bctx;
  ctx->info = info;
  ctx->info.backend = b;
  ctx->info.index = index;
  ctx->device_index = index;
  ctx->last_error[0] = '\0';
  *out = ctx;
  return DA_SUCCESS;
}

da_status da_context_wrap(da_context **out, da_backend b, void *native_queue) {
  no_ctx_error[0] = '\0';
  if (!out) return fail_no_ctx(DA_ERR_INVALID_ARG, "ctx is NULL");
  *out = NULL;
  if (b != DA_BACKEND_OPENCL && b != DA_BACKEND_CUDA)
    return fail_no_ctx(DA_ERR_INVALID_ARG, "backend = %d: only opencl (2) and cuda (3) wrap a "
                       "native queue", (int)b);
  const da_registered *r = da_registry_get(b);
  if (!r->iface)
    return fail_no_ctx(DA_ERR_NO_DEVICE, "backend %s: %s", da_backend_name(b), r->why);
  if (!r->iface->ctx_wrap)
    return fail_no_ctx(DA_ERR_UNSUPPORTED, "backend %s cannot wrap a native queue",
                       da_backend_name(b));
  if (!native_queue && b == DA_BACKEND_OPENCL)
    return fail_no_ctx(DA_ERR_INVALID_ARG, "the cl_command_queue to wrap is NULL");
  da_context *ctx = context_new(r->iface);
  if (!ctx) return fail_no_ctx(DA_ERR_HOST_MEMORY, "out of host memory for a context");
  da_device_info info;
  void *bctx = NULL;
  int index = -1;
  memset(&info, 0, sizeof info);
  da_status s = da_overrides_parse(ctx, b, &ctx->ov);
  if (s == DA_SUCCESS) s = r->iface->ctx_wrap(ctx, native_queue, &ctx->ov, &bctx, &index, &info);
  if (s != DA_SUCCESS) return drop_new_context(ctx, s);
  ctx->bctx = bctx;
  ctx->info = info;
  ctx->info.backend = b;
  ctx->device_index = index;
  ctx->last_error[0] = '\0';
  *out = ctx;
  return DA_SUCCESS;
}

void da_context_destroy(da_context *ctx) {
  if (!ctx || ctx->destroyed) return;
  ctx->destroyed = 1;
  context_unref(ctx);
}

da_backend da_context_backend(const da_context *ctx) {
  return ctx ? ctx->iface->id : DA_BACKEND_AUTO;
}

const char *da_context_last_error(const da_context *ctx) {
  if (!ctx) return no_ctx_error[0] ? no_ctx_error : "no context (NULL)";
  return ctx->last_error;
}

da_status da_context_get_device_info(const da_context *ctx, da_device_info *out) {
  if (!ctx || !out) return DA_ERR_INVALID_ARG;
  *out = ctx->info;
  return DA_SUCCESS;
}

/* Every call that succeeds leaves no message behind. */
static da_status finish(da_context *ctx, da_status s) {
  if (s == DA_SUCCESS) ctx->last_error[0] = '\0';
  return s;
}

static da_status check_ctx(da_context *ctx) {
  if (!ctx) return DA_ERR_INVALID_ARG;
  if (ctx->destroyed)
    return da_set_error(ctx, DA_ERR_INVALID_ARG, "context was destroyed (its plans and buffers "
                                                 "keep it alive, but it takes no new work)");
  ctx->last_error[0] = '\0';
  return DA_SUCCESS;
}

da_status da_context_synchronize(da_context *ctx) {
  if (!ctx) return DA_ERR_INVALID_ARG;
  ctx->last_error[0] = '\0';
  return finish(ctx, ctx->iface->synchronize ? ctx->iface->synchronize(ctx) : DA_SUCCESS);
}

/* -------------------------------------------------------------- buffers */

da_status da_buffer_create(da_context *ctx, size_t bytes, da_buffer **out) {
  da_status s = check_ctx(ctx);
  if (s != DA_SUCCESS) return s;
  if (!out) return da_set_error(ctx, DA_ERR_INVALID_ARG, "buf is NULL");
  *out = NULL;
  if (bytes == 0) return da_set_error(ctx, DA_ERR_INVALID_ARG, "bytes = 0: a buffer needs a size");
  da_buffer *b = calloc(1, sizeof *b);
  if (!b) return da_set_error(ctx, DA_ERR_HOST_MEMORY, "out of host memory for a buffer handle");
  s = ctx->iface->buf_alloc(ctx, bytes, &b->handle);
  if (s != DA_SUCCESS) {
    free(b);
    return s;
  }
  b->ctx = ctx;
  b->bytes = bytes;
  b->range.base = b->handle; /* its own allocation */
  b->range.offset = 0;
  if (ctx->iface->buf_range) ctx->iface->buf_range(ctx, b->handle, &b->range);
  ctx->refs++;
  *out = b;
  return DA_SUCCESS;
}

da_status da_buffer_wrap(da_context *ctx, void *native, size_t bytes, da_buffer **out) {
  da_status s = check_ctx(ctx);
  if (s != DA_SUCCESS) return s;
  if (!out) return da_set_error(ctx, DA_ERR_INVALID_ARG, "buf is NULL");
  *out = NULL;
  if (!native) return da_set_error(ctx, DA_ERR_INVALID_ARG, "native memory object is NULL");
  if (bytes == 0) return da_set_error(ctx, DA_ERR_INVALID_ARG, "bytes = 0: a buffer needs a size");
  if (!ctx->iface->buf_wrap)
    return da_set_error(ctx, DA_ERR_UNSUPPORTED, "backend %s cannot wrap native memory",
                        ctx->iface->name);
  da_buffer *b = calloc(1, sizeof *b);
  if (!b) return da_set_error(ctx, DA_ERR_HOST_MEMORY, "out of host memory for a buffer handle");
  s = ctx->iface->buf_wrap(ctx, native, bytes, &b->handle, &b->range);
  if (s != DA_SUCCESS) {
    free(b);
    return s;
  }
  b->ctx = ctx;
  b->bytes = bytes;
  b->wrapped = 1;
  ctx->refs++;
  *out = b;
  return DA_SUCCESS;
}

void *da_buffer_native(const da_buffer *b) { return b ? b->handle : NULL; }

size_t da_buffer_size(const da_buffer *b) { return b ? b->bytes : 0; }

static da_status check_range(const da_buffer *b, size_t off, const void *p, size_t n) {
  if (!b) return DA_ERR_INVALID_ARG;
  da_context *ctx = b->ctx;
  ctx->last_error[0] = '\0';
  if (!p) return da_set_error(ctx, DA_ERR_INVALID_ARG, "host pointer is NULL");
  if (off > b->bytes || n > b->bytes - off)
    return da_set_error(ctx, DA_ERR_INVALID_ARG,
                        "range [offset %zu, +%zu bytes) is outside the buffer of %zu bytes", off, n,
                        b->bytes);
  return DA_SUCCESS;
}

da_status da_buffer_write(da_buffer *b, size_t off, const void *src, size_t n) {
  da_status s = check_range(b, off, src, n);
  if (s != DA_SUCCESS || n == 0) return s;
  return finish(b->ctx, b->ctx->iface->buf_write(b->ctx, b->handle, off, src, n));
}

da_status da_buffer_read(const da_buffer *b, size_t off, void *dst, size_t n) {
  da_status s = check_range(b, off, dst, n);
  if (s != DA_SUCCESS || n == 0) return s;
  return finish(b->ctx, b->ctx->iface->buf_read(b->ctx, b->handle, off, dst, n));
}

void da_buffer_destroy(da_buffer *b) {
  if (!b) return;
  da_context *ctx = b->ctx;
  /* The caller's memory is never freed here (da_backend.h, "Buffers and who
   * owns them"): a wrapper gives back only what the wrap took. */
  if (!b->wrapped) ctx->iface->buf_free(ctx, b->handle);
  else if (ctx->iface->buf_unwrap) ctx->iface->buf_unwrap(ctx, b->handle);
  free(b);
  context_unref(ctx);
}

/* ---------------------------------------------------------------- plans */

static int mul_ok(size_t *acc, long long v) {
  if (v <= 0) return 0;
  if ((unsigned long long)v > SIZE_MAX / *acc) return 0;
  *acc *= (size_t)v;
  return 1;
}

#define BAD(fmt, ...) da_set_error(ctx, DA_ERR_INVALID_ARG, fmt, __VA_ARGS__)

static da_status validate(da_context *ctx, const da_attn_desc *in, da_attn_desc *d) {
  *d = *in;
  if (d->batch < 1) return BAD("batch = %d must be >= 1", d->batch);
  if (d->heads < 1) return BAD("heads = %d must be >= 1", d->heads);
  if (d->kv_heads < 0) return BAD("kv_heads = %d must be >= 0 (0 = heads)", d->kv_heads);
  if (d->kv_heads == 0) d->kv_heads = d->heads;
  if (d->heads % d->kv_heads != 0)
    return BAD("kv_heads = %d does not divide heads = %d", d->kv_heads, d->heads);
  if (d->seq_q < 1) return BAD("seq_q = %d must be >= 1", d->seq_q);
  if (d->seq_k < 1) return BAD("seq_k = %d must be >= 1", d->seq_k);
  if (d->head_dim < 1 || d->head_dim > 256)
    return BAD("head_dim = %d is out of range (1..256)", d->head_dim);
  if ((int)d->dtype < DA_F32 || (int)d->dtype > DA_BF16)
    return BAD("dtype = %d is not a da_dtype (0 f32, 1 f16, 2 bf16)", (int)d->dtype);
  if (d->causal != 0 && d->causal != 1) return BAD("causal = %d must be 0 or 1", d->causal);
  if (d->scale == 0.0f) d->scale = 1.0f / sqrtf((float)d->head_dim);
  else if (!(d->scale > 0.0f) || isinf(d->scale))
    return BAD("scale = %g must be finite and > 0 (0 = 1/sqrt(head_dim))", (double)d->scale);
  if (d->group_size != 1 && d->group_size != 2 && d->group_size != 4 && d->group_size != 8)
    return BAD("group_size = %d must be 1, 2, 4 or 8", d->group_size);
  if (d->group_size > d->head_dim)
    return BAD("group_size = %d is larger than head_dim = %d", d->group_size, d->head_dim);
  if (d->hash_bits == 0) d->hash_bits = 16;
  if (d->hash_bits < 1 || d->hash_bits > 32)
    return BAD("hash_bits = %d is out of range (1..32, 0 = 16)", d->hash_bits);
  if (d->hash_block == 0) d->hash_block = 128;
  if (d->hash_block < 16 || d->hash_block > 1024 || (d->hash_block & (d->hash_block - 1)))
    return BAD("hash_block = %d must be a power of two in 16..1024 (0 = 128)", d->hash_block);
  if ((int)d->fusion != DA_FUSE_MEAN && (int)d->fusion != DA_FUSE_NORM)
    return BAD("fusion = %d is not a da_fusion (0 mean, 1 norm)", (int)d->fusion);
  if ((int)d->algo < DA_ALGO_AUTO || (int)d->algo > DA_ALGO_GEMM)
    return BAD("algo = %d is not a da_algo (0 auto, 1 fused, 2 gemm)", (int)d->algo);
  return DA_SUCCESS;
}

da_status da_plan_create(da_context *ctx, const da_attn_desc *in, da_plan **out) {
  return da_plan_create_ext(ctx, in, NULL, out);
}

/* A copy of the caller's da_attn_ext of struct_size bytes; the fields it
 * lacks keep their defaults. */
static da_status read_ext(da_context *ctx, const da_attn_ext *in, da_attn_ext *x) {
  da_attn_ext_init(x);
  if (!in) return DA_SUCCESS;
  if (in->struct_size < offsetof(da_attn_ext, q_stride) || in->struct_size > (1u << 16))
    return da_set_error(ctx, DA_ERR_INVALID_ARG,
                        "ext->struct_size = %zu: call da_attn_ext_init first (sizeof is %zu)",
                        in->struct_size, sizeof *x);
  memcpy(x, in, in->struct_size < sizeof *x ? in->struct_size : sizeof *x);
  x->struct_size = sizeof *x;
  return DA_SUCCESS;
}

/* The extent in elements of a tensor of ext[0] x ext[1] x ext[2] rows of d
 * elements under strides st: one past its last element. 0 on overflow. */
static unsigned long long tensor_span(const long long st[3], const long long ext[3], int d) {
  unsigned long long end = (unsigned long long)d;
  for (int i = 0; i < 3; i++) {
    if (ext[i] <= 1 || st[i] == 0) continue;
    unsigned long long a = (unsigned long long)st[i], b = (unsigned long long)(ext[i] - 1);
    if (a > (ULLONG_MAX >> 2) / b) return 0;
    if (a * b > (ULLONG_MAX >> 2) - end) return 0;
    end += a * b;
  }
  return end;
}

/* Whether no two elements of the tensor coincide (O is written). */
static int tensor_injective(const long long st[3], const long long ext[3], int d) {
  int idx[3], n = 0;
  for (int i = 0; i < 3; i++)
    if (ext[i] > 1) idx[n++] = i;
  for (int a = 1; a < n; a++) /* by stride, ascending */
    for (int b = a; b > 0 && st[idx[b]] < st[idx[b - 1]]; b--) {
      int t = idx[b];
      idx[b] = idx[b - 1];
      idx[b - 1] = t;
    }
  unsigned long long inner = (unsigned long long)d;
  for (int a = 0; a < n; a++) {
    unsigned long long sv = (unsigned long long)st[idx[a]];
    if (sv < inner) return 0;
    if (sv > (ULLONG_MAX >> 2) / (unsigned long long)(ext[idx[a]] - 1)) return 0;
    inner = sv * (unsigned long long)(ext[idx[a]] - 1) + inner;
  }
  return 1;
}

static const char *const tensor_names[4] = {"q", "k", "v", "o"};

static long long *ext_stride(da_attn_ext *x, int t) {
  return t == 0 ? x->q_stride : t == 1 ? x->k_stride : t == 2 ? x->v_stride : x->o_stride;
}

static da_status validate_ext(da_context *ctx, const da_attn_desc *d, da_attn_ext *x, int *used) {
  *used = 0;
  if ((int)x->seqlens < DA_SEQLENS_NONE || (int)x->seqlens > DA_SEQLENS_PACKED)
    return BAD("ext.seqlens = %d is not a da_seqlens (0 none, 1 kv, 2 packed)", (int)x->seqlens);
  if (x->lse != 0 && x->lse != 1) return BAD("ext.lse = %d must be 0 or 1", x->lse);
  if (x->window_left < -1) return BAD("ext.window_left = %d must be >= -1 (-1 = all)", x->window_left);
  if (x->window_right < -1)
    return BAD("ext.window_right = %d must be >= -1 (-1 = all)", x->window_right);
  if (x->seqlens != DA_SEQLENS_NONE || x->lse || x->window_left >= 0 ||
      (!d->causal && x->window_right >= 0))
    *used = 1;
  if (x->strategy != DA_STRATEGY_TILE_LSH && x->strategy != DA_STRATEGY_PROJECTION)
    return BAD("ext.strategy = %d is not a da_strategy (0 tile_lsh, 1 projection)", x->strategy);
  if (x->strategy == DA_STRATEGY_TILE_LSH) {
    if (x->rank != 0)
      return BAD("ext.rank = %d: a rank is for ext.strategy = DA_STRATEGY_PROJECTION only "
                 "(0 otherwise)", x->rank);
    if (x->proj)
      return BAD("%s", "ext.proj given: projections are for ext.strategy = "
                 "DA_STRATEGY_PROJECTION only (NULL otherwise)");
  } else {
    if (d->group_size != 1)
      return BAD("group_size = %d with ext.strategy = DA_STRATEGY_PROJECTION: it must be 1 "
                 "(the rank takes its place; rank head_dim/G is the G equivalent)",
                 d->group_size);
    if (x->rank < 1 || x->rank > d->head_dim)
      return BAD("ext.rank = %d is out of range (1..head_dim = %d) for "
                 "DA_STRATEGY_PROJECTION", x->rank, d->head_dim);
    if (!x->proj)
      return BAD("%s", "ext.proj is NULL: DA_STRATEGY_PROJECTION needs the projections "
                 "[heads][2][head_dim][rank] (A then B per query head)");
  }
  if (d->causal) x->window_right = 0; /* as FlashAttention-2 */
  const int packed = x->seqlens == DA_SEQLENS_PACKED;
  for (int t = 0; t < 4; t++) {
    long long *st = ext_stride(x, t);
    const int hn = t == 0 || t == 3 ? d->heads : d->kv_heads;
    const int rows = t == 0 || t == 3 ? d->seq_q : d->seq_k;
    if (st[0] == 0 && st[1] == 0 && st[2] == 0) { /* dense */
      if (packed) { /* [rows][heads][head_dim], as FlashAttention's varlen */
        st[1] = d->head_dim;
        st[2] = (long long)hn * d->head_dim;
      } else {
        st[2] = d->head_dim;
        st[1] = (long long)rows * d->head_dim;
        st[0] = (long long)hn * st[1];
      }
      continue;
    }
    *used = 1;
    for (int i = 0; i < 3; i++)
      if (st[i] < 0 || (unsigned long long)st[i] > (1ull << 62))
        return BAD("ext.%s_stride[%d] = %lld must be in 0..2^62 (elements)", tensor_names[t], i,
                   st[i]);
    if (packed && st[0] != 0)
      return BAD("ext.%s_stride[0] = %lld: with DA_SEQLENS_PACKED rows are counted from the "
                 "tensor's start, so the batch stride must be 0",
                 tensor_names[t], st[0]);
  }
  /* the extents at the plan's own lengths (PACKED: rows checked per call) */
  for (int t = 0; t < 4; t++) {
    const long long *st = ext_stride(x, t);
    long long ext[3] = {packed ? 1 : d->batch, t == 0 || t == 3 ? d->heads : d->kv_heads,
                        t == 0 || t == 3 ? d->seq_q : d->seq_k};
    if (!tensor_span(st, ext, d->head_dim))
      return BAD("ext.%s_stride {%lld, %lld, %lld}: the tensor's extent overflows", tensor_names[t],
                 st[0], st[1], st[2]);
    if (t == 3 && !tensor_injective(st, ext, d->head_dim))
      return BAD("ext.o_stride {%lld, %lld, %lld}: two output elements would share an address "
                 "(batch %d, heads %d, seq_q %d, head_dim %d)",
                 st[0], st[1], st[2], d->batch, d->heads, d->seq_q, d->head_dim);
  }
  return DA_SUCCESS;
}

/* DA_STRATEGY_PROJECTION (SPEC 1c): the caller's [heads][2][head_dim][rank]
 * projections, checked finite and copied into the plan (x.proj then points
 * at the copy). Only the backends that implement the strategy get such a
 * plan: the CPU backend and OpenCL (forward and backward; their
 * plan_prepare refuses what their kernels cannot run) and CUDA (backward;
 * its forward calls refuse the strategy until its kernels have run on a
 * GPU). */
static da_status copy_projections(da_context *ctx, da_plan *p) {
  const da_attn_desc *d = &p->d;
  const int r = p->x.rank, hd = d->head_dim;
  if (ctx->iface->id != DA_BACKEND_CPU && ctx->iface->id != DA_BACKEND_OPENCL &&
      ctx->iface->id != DA_BACKEND_CUDA)
    return da_set_error(ctx, DA_ERR_UNSUPPORTED,
                        "the %s backend does not implement ext.strategy = "
                        "DA_STRATEGY_PROJECTION (the cpu, opencl and cuda backends do)",
                        ctx->iface->name);
  size_t n;
  if (!da_mul_size((size_t)d->heads, 2 * (size_t)hd * (size_t)r, &n) ||
      !da_mul_size(n, sizeof(float), &n))
    return da_set_error(ctx, DA_ERR_INVALID_ARG,
                        "ext.proj: heads = %d x 2 x head_dim = %d x rank = %d floats overflow "
                        "size_t", d->heads, hd, r);
  for (size_t i = 0; i < n / sizeof(float); i++) {
    float v = p->x.proj[i];
    if (isfinite(v)) continue;
    size_t per = (size_t)hd * (size_t)r;
    size_t h = i / (2 * per), rest = i % (2 * per);
    return da_set_error(ctx, DA_ERR_INVALID_ARG,
                        "ext.proj: head %zu, %s, row %zu, col %zu is %s: projections must be "
                        "finite",
                        h, rest < per ? "A" : "B", rest % per / (size_t)r, rest % (size_t)r,
                        isnan(v) ? "NaN" : v > 0 ? "+Inf" : "-Inf");
  }
  p->sproj = malloc(n);
  if (!p->sproj)
    return da_set_error(ctx, DA_ERR_HOST_MEMORY, "out of host memory for the plan's %zu bytes "
                        "of projections", n);
  memcpy(p->sproj, p->x.proj, n);
  p->x.proj = p->sproj;
  return DA_SUCCESS;
}

da_status da_plan_create_ext(da_context *ctx, const da_attn_desc *in, const da_attn_ext *xin,
                             da_plan **out) {
  da_status s = check_ctx(ctx);
  if (s != DA_SUCCESS) return s;
  if (!out) return da_set_error(ctx, DA_ERR_INVALID_ARG, "plan is NULL");
  *out = NULL;
  if (!in) return da_set_error(ctx, DA_ERR_INVALID_ARG, "desc is NULL");
  da_plan *p = calloc(1, sizeof *p);
  if (!p) return da_set_error(ctx, DA_ERR_HOST_MEMORY, "out of host memory for a plan");
  s = validate(ctx, in, &p->d);
  if (s != DA_SUCCESS) {
    free(p);
    return s;
  }
  const da_attn_desc *d = &p->d;
  p->ctx = ctx;
  p->elem_size = da_dtype_size(d->dtype);
  p->ng = (d->head_dim + d->group_size - 1) / d->group_size;
  p->n_tiles = d->seq_q / d->hash_block + (d->seq_q % d->hash_block != 0);
  size_t q = p->elem_size, kv = p->elem_size, perm = sizeof(int);
  if (!mul_ok(&q, d->batch) || !mul_ok(&q, d->heads) || !mul_ok(&q, d->seq_q) ||
      !mul_ok(&q, d->head_dim) || !mul_ok(&kv, d->batch) || !mul_ok(&kv, d->kv_heads) ||
      !mul_ok(&kv, d->seq_k) || !mul_ok(&kv, d->head_dim) || !mul_ok(&perm, d->batch) ||
      !mul_ok(&perm, d->heads) || !mul_ok(&perm, p->n_tiles) || !mul_ok(&perm, d->head_dim)) {
    da_set_error(ctx, DA_ERR_INVALID_ARG,
                 "sizes overflow: batch = %d, heads = %d, kv_heads = %d, seq_q = %d, "
                 "seq_k = %d, head_dim = %d give more than SIZE_MAX bytes",
                 d->batch, d->heads, d->kv_heads, d->seq_q, d->seq_k, d->head_dim);
    free(p);
    return DA_ERR_INVALID_ARG;
  }
  /* the options, once the sizes are known not to overflow */
  s = read_ext(ctx, xin, &p->x);
  if (s == DA_SUCCESS) s = validate_ext(ctx, &p->d, &p->x, &p->ext_used);
  if (s == DA_SUCCESS && p->ext_used && !ctx->iface->attention_ext)
    s = da_set_error(ctx, DA_ERR_UNSUPPORTED,
                     "the %s backend does not support the da_attn_ext options yet (strides, "
                     "per-sequence lengths, LSE, windows); the cpu, opencl and cuda backends do",
                     ctx->iface->name);
  if (s != DA_SUCCESS) {
    free(p);
    return s;
  }
  if (s == DA_SUCCESS && p->x.strategy == DA_STRATEGY_PROJECTION)
    s = copy_projections(ctx, p);
  if (s != DA_SUCCESS) {
    free(p);
    return s;
  }
  p->q_elems = q / p->elem_size;
  p->kv_elems = kv / p->elem_size;
  p->perm_count = perm / sizeof(int);
  p->proj = malloc((size_t)d->hash_bits * (size_t)d->hash_block * sizeof(float));
  if (!p->proj) {
    free(p->sproj);
    free(p);
    return da_set_error(ctx, DA_ERR_HOST_MEMORY, "out of host memory for the projections");
  }
  da_make_projections(d->seed, d->hash_bits, d->hash_block, p->proj);

  /* the environment's overrides, parsed once for the plan's life */
  s = da_overrides_parse(ctx, ctx->iface->id, &p->ov);
  int auto_algo = d->algo == DA_ALGO_AUTO;
  if (auto_algo) p->d.algo = DA_ALGO_FUSED;
  void *bplan = NULL;
  if (s == DA_SUCCESS && ctx->iface->plan_prepare) s = ctx->iface->plan_prepare(p, &bplan);
  if (s == DA_ERR_UNSUPPORTED && auto_algo) { /* the fused kernel cannot run: fall back */
    p->d.algo = DA_ALGO_GEMM;
    bplan = NULL;
    s = ctx->iface->plan_prepare(p, &bplan);
  }
  p->bplan = bplan;
  if (s != DA_SUCCESS) {
    free(p->proj);
    free(p->sproj);
    free(p);
    return s;
  }
  ctx->refs++;
  ctx->last_error[0] = '\0'; /* a fallback's first refusal is no failure */
  *out = p;
  return DA_SUCCESS;
}

void da_plan_destroy(da_plan *p) {
  if (!p) return;
  da_context *ctx = p->ctx;
  if (ctx->iface->plan_release) ctx->iface->plan_release(p);
  p->bplan = NULL;
  free(p->proj);
  free(p->sproj);
  free(p);
  context_unref(ctx);
}

da_status da_plan_get_desc(const da_plan *p, da_attn_desc *out) {
  if (!p || !out) return DA_ERR_INVALID_ARG;
  *out = p->d;
  return DA_SUCCESS;
}

da_status da_plan_get_ext(const da_plan *p, da_attn_ext *out) {
  if (!p || !out) return DA_ERR_INVALID_ARG;
  if (out->struct_size < sizeof(size_t) || out->struct_size > (1u << 16))
    return da_set_error(p->ctx, DA_ERR_INVALID_ARG,
                        "out->struct_size = %zu: call da_attn_ext_init first", out->struct_size);
  size_t n = out->struct_size < sizeof p->x ? out->struct_size : sizeof p->x;
  memcpy(out, &p->x, n);
  out->struct_size = n;
  return DA_SUCCESS;
}

void da_kernel_info_init_size(da_kernel_info *k, size_t size) {
  DA_INIT_PREFIX(k, size);
  DA_INIT_SET(k, size, da_kernel_info, backend, DA_BACKEND_AUTO);
}
void(da_kernel_info_init)(da_kernel_info *k) { da_kernel_info_init_size(k, sizeof *k); }

da_status da_plan_get_kernel(const da_plan *p, da_kernel_info *out) {
  if (!p || !out) return DA_ERR_INVALID_ARG;
  da_context *ctx = p->ctx;
  if (out->struct_size < offsetof(da_kernel_info, name) + sizeof out->name ||
      out->struct_size > (1u << 16))
    return da_set_error(ctx, DA_ERR_INVALID_ARG,
                        "out->struct_size = %zu: call da_kernel_info_init first (sizeof is %zu)",
                        out->struct_size, sizeof *out);
  da_kernel_info k;
  da_kernel_info_init(&k);
  k.backend = ctx->iface->id;
  snprintf(k.name, sizeof k.name, "default");
  if (ctx->iface->plan_kernel) ctx->iface->plan_kernel(p, &k);
  k.struct_size = sizeof k;
  k.backend = ctx->iface->id;
  k.name[sizeof k.name - 1] = '\0';
  k.variant[sizeof k.variant - 1] = '\0';
  size_t n = out->struct_size < sizeof k ? out->struct_size : sizeof k;
  memcpy(out, &k, n);
  out->struct_size = n;
  return DA_SUCCESS;
}

/* ------------------------------------------------------------ attention */

static da_status check_buf(da_plan *p, const da_buffer *b, const char *name, size_t need) {
  da_context *ctx = p->ctx;
  if (!b) return da_set_error(ctx, DA_ERR_INVALID_ARG, "%s is NULL", name);
  if (b->ctx != ctx)
    return da_set_error(ctx, DA_ERR_INVALID_ARG, "%s belongs to another context than the plan",
                        name);
  if (b->bytes < need)
    return da_set_error(ctx, DA_ERR_INVALID_ARG,
                        "%s holds %zu bytes, the plan needs %zu", name, b->bytes, need);
  return DA_SUCCESS;
}

/* Whether [a, a + an) and [b, b + bn) share a byte. */
static int ranges_overlap(uintptr_t a, size_t an, uintptr_t b, size_t bn) {
  return a < b ? b - a < an : a - b < bn;
}

/* O is written while Q, K and V are read: the bytes the plan writes in o
 * must not share a byte with those it reads in x (same handle, sub-buffers
 * of one cl_mem, pointers into one allocation). Q, K, V may share. */
static da_status check_alias(da_plan *p, const da_buffer *o, size_t ob, const da_buffer *x,
                             size_t xb, const char *name) {
  int same = o == x || o->handle == x->handle;
  if (!same && o->range.base == x->range.base)
    same = ranges_overlap(o->range.offset, ob, x->range.offset, xb);
  if (!same) return DA_SUCCESS;
  return da_set_error(p->ctx, DA_ERR_INVALID_ARG,
                      "o overlaps %s: the %zu bytes written in o and the %zu bytes read in %s share "
                      "memory (o at offset %ju, %s at %ju of one allocation); the output needs "
                      "memory of its own",
                      name, ob, xb, name, (uintmax_t)o->range.offset, name,
                      (uintmax_t)x->range.offset);
}

da_status da_attention(da_plan *p, const da_buffer *q, const da_buffer *k, const da_buffer *v,
                       da_buffer *o) {
  if (!p) return DA_ERR_INVALID_ARG;
  da_context *ctx = p->ctx;
  ctx->last_error[0] = '\0';
  if (p->ext_used) {
    if (p->x.seqlens != DA_SEQLENS_NONE || p->x.lse)
      return da_set_error(ctx, DA_ERR_INVALID_ARG,
                          "the plan takes per-sequence lengths or writes the LSE: call "
                          "da_attention_ext");
    da_attn_args a;
    da_attn_args_init(&a);
    a.q = q, a.k = k, a.v = v, a.o = o;
    return da_attention_ext(p, &a);
  }
  size_t qb = p->q_elems * p->elem_size, kvb = p->kv_elems * p->elem_size;
  da_status s;
  if ((s = check_buf(p, q, "q", qb)) || (s = check_buf(p, k, "k", kvb)) ||
      (s = check_buf(p, v, "v", kvb)) || (s = check_buf(p, o, "o", qb)))
    return s;
  if ((s = check_alias(p, o, qb, q, qb, "q")) || (s = check_alias(p, o, qb, k, kvb, "k")) ||
      (s = check_alias(p, o, qb, v, kvb, "v")))
    return s;
  return finish(ctx, ctx->iface->attention(p, q->handle, k->handle, v->handle, o->handle));
}

/* One tensor's bytes [lo, hi) in its buffer, for the alias checks. */
typedef struct {
  const da_buffer *b;
  size_t lo, hi;
  const char *name;
} span_ref;

static int spans_share(const span_ref *a, const span_ref *b) {
  if (a->b == b->b || a->b->handle == b->b->handle)
    return ranges_overlap(a->lo, a->hi - a->lo, b->lo, b->hi - b->lo);
  if (a->b->range.base != b->b->range.base) return 0;
  return ranges_overlap(a->b->range.offset + a->lo, a->hi - a->lo, b->b->range.offset + b->lo,
                        b->hi - b->lo);
}

static da_status check_lens_buf(da_plan *p, const da_buffer *b, const char *name, size_t n) {
  return check_buf(p, b, name, n * sizeof(int));
}

da_status da_attention_ext(da_plan *p, const da_attn_args *ain) {
  if (!p) return DA_ERR_INVALID_ARG;
  da_context *ctx = p->ctx;
  ctx->last_error[0] = '\0';
  if (!ain) return da_set_error(ctx, DA_ERR_INVALID_ARG, "args is NULL");
  if (ain->struct_size < offsetof(da_attn_args, seqlens_k) || ain->struct_size > (1u << 16))
    return da_set_error(ctx, DA_ERR_INVALID_ARG,
                        "args->struct_size = %zu: call da_attn_args_init first (sizeof is %zu)",
                        ain->struct_size, sizeof *ain);
  da_attn_args a;
  da_attn_args_init(&a);
  memcpy(&a, ain, ain->struct_size < sizeof a ? ain->struct_size : sizeof a);
  const da_attn_desc *d = &p->d;
  const da_attn_ext *x = &p->x;
  const int packed = x->seqlens == DA_SEQLENS_PACKED;
  const da_buffer *bufs[4] = {a.q, a.k, a.v, a.o};
  const size_t offs[4] = {a.q_offset, a.k_offset, a.v_offset, a.o_offset};
  span_ref sp[5];
  da_status s;
  if (packed) {
    if (a.rows_q < 1 || a.rows_k < 1 || a.rows_q > (size_t)1 << 40 || a.rows_k > (size_t)1 << 40)
      return da_set_error(ctx, DA_ERR_INVALID_ARG,
                          "rows_q = %zu, rows_k = %zu: DA_SEQLENS_PACKED needs the rows Q and K "
                          "hold (1..2^40)",
                          a.rows_q, a.rows_k);
  }
  for (int t = 0; t < 4; t++) {
    const long long *st = ext_stride((da_attn_ext *)x, t);
    const int qo = t == 0 || t == 3;
    long long ext[3] = {packed ? 1 : d->batch, qo ? d->heads : d->kv_heads,
                        packed ? (long long)(qo ? a.rows_q : a.rows_k) : qo ? d->seq_q : d->seq_k};
    unsigned long long span = tensor_span(st, ext, d->head_dim);
    if (!span || offs[t] > SIZE_MAX / p->elem_size - span)
      return da_set_error(ctx, DA_ERR_INVALID_ARG, "%s: offset %zu plus its extent overflows",
                          tensor_names[t], offs[t]);
    if (t == 3 && packed && !tensor_injective(st, ext, d->head_dim))
      return da_set_error(ctx, DA_ERR_INVALID_ARG,
                          "o: with rows_q = %zu the strides {%lld, %lld} make two output "
                          "elements share an address",
                          a.rows_q, st[1], st[2]);
    size_t lo = offs[t] * p->elem_size, hi = (offs[t] + (size_t)span) * p->elem_size;
    if ((s = check_buf(p, bufs[t], tensor_names[t], hi))) return s;
    sp[t] = (span_ref){bufs[t], lo, hi, tensor_names[t]};
  }
  int nspan = 4;
  if (x->lse) {
    size_t n = packed ? (size_t)d->heads * a.rows_q : (size_t)d->batch * d->heads * d->seq_q;
    if (a.lse_offset > SIZE_MAX / sizeof(float) - n)
      return da_set_error(ctx, DA_ERR_INVALID_ARG, "lse: offset %zu overflows", a.lse_offset);
    if ((s = check_buf(p, a.lse, "lse", (a.lse_offset + n) * sizeof(float)))) return s;
    sp[nspan++] = (span_ref){a.lse, a.lse_offset * sizeof(float), (a.lse_offset + n) * sizeof(float),
                             "lse"};
  } else if (a.lse) {
    return da_set_error(ctx, DA_ERR_INVALID_ARG, "lse given, but the plan was made without ext.lse");
  }
  /* what is written (o, lse) shares no byte with anything else */
  for (int w = 3; w < nspan; w++)
    for (int r = 0; r < nspan; r++)
      if (r != w && (r < w || r > 3) && spans_share(&sp[w], &sp[r]))
        return da_set_error(ctx, DA_ERR_INVALID_ARG,
                            "%s overlaps %s: the bytes written in %s need memory of their own",
                            sp[w].name, sp[r].name, sp[w].name);
  da_call c;
  memset(&c, 0, sizeof c);
  c.q = a.q->handle, c.k = a.k->handle, c.v = a.v->handle, c.o = a.o->handle;
  c.q_off = a.q_offset, c.k_off = a.k_offset, c.v_off = a.v_offset, c.o_off = a.o_offset;
  if (x->seqlens == DA_SEQLENS_KV) {
    if ((s = check_lens_buf(p, a.seqlens_k, "seqlens_k", (size_t)d->batch))) return s;
    c.seqlens_k = a.seqlens_k->handle;
  } else if (a.seqlens_k) {
    return da_set_error(ctx, DA_ERR_INVALID_ARG,
                        "seqlens_k given, but the plan's ext.seqlens is not DA_SEQLENS_KV");
  }
  if (packed) {
    if ((s = check_lens_buf(p, a.cu_seqlens_q, "cu_seqlens_q", (size_t)d->batch + 1)) ||
        (s = check_lens_buf(p, a.cu_seqlens_k, "cu_seqlens_k", (size_t)d->batch + 1)))
      return s;
    c.cu_q = a.cu_seqlens_q->handle, c.cu_k = a.cu_seqlens_k->handle;
    c.rows_q = a.rows_q, c.rows_k = a.rows_k;
  } else if (a.cu_seqlens_q || a.cu_seqlens_k) {
    return da_set_error(ctx, DA_ERR_INVALID_ARG,
                        "cu_seqlens given, but the plan's ext.seqlens is not DA_SEQLENS_PACKED");
  }
  if (x->lse) c.lse = a.lse->handle, c.lse_off = a.lse_offset;
  if (!ctx->iface->attention_ext)
    return da_set_error(ctx, DA_ERR_UNSUPPORTED, "the %s backend has no da_attention_ext",
                        ctx->iface->name);
  return finish(ctx, ctx->iface->attention_ext(p, &c));
}

/* ------------------------------------------------------------- backward */

da_status da_attention_backward(da_plan *p, const da_bwd_args *ain) {
  if (!p) return DA_ERR_INVALID_ARG;
  da_context *ctx = p->ctx;
  ctx->last_error[0] = '\0';
  if (!ain) return da_set_error(ctx, DA_ERR_INVALID_ARG, "args is NULL");
  if (ain->struct_size < offsetof(da_bwd_args, dout_offset) || ain->struct_size > (1u << 16))
    return da_set_error(ctx, DA_ERR_INVALID_ARG,
                        "args->struct_size = %zu: call da_bwd_args_init first (sizeof is %zu)",
                        ain->struct_size, sizeof *ain);
  da_bwd_args a;
  da_bwd_args_init(&a);
  memcpy(&a, ain, ain->struct_size < sizeof a ? ain->struct_size : sizeof a);
  const da_attn_desc *d = &p->d;
  da_attn_ext *x = &p->x;
  if (x->seqlens != DA_SEQLENS_NONE)
    return da_set_error(ctx, DA_ERR_UNSUPPORTED,
                        "da_attention_backward: the plan's ext.seqlens = %s (per-sequence lengths) "
                        "is not supported by the backward pass yet",
                        x->seqlens == DA_SEQLENS_KV ? "DA_SEQLENS_KV" : "DA_SEQLENS_PACKED");
  /* 0 dout, 1 q, 2 k, 3 v, 4 o, 5 lse (read); 6 dq, 7 dk, 8 dv (written) */
  static const char *const names[9] = {"dout", "q", "k", "v", "o", "lse", "dq", "dk", "dv"};
  const da_buffer *bufs[9] = {a.dout, a.q, a.k, a.v, a.o, a.lse, a.dq, a.dk, a.dv};
  const size_t offs[9] = {a.dout_offset, a.q_offset, a.k_offset, a.v_offset, a.o_offset,
                          a.lse_offset, a.dq_offset, a.dk_offset, a.dv_offset};
  /* the layout each tensor has: 0 q, 1 k, 2 v, 3 o (ext_stride's order) */
  static const int layout[9] = {3, 0, 1, 2, 3, -1, 0, 1, 2};
  span_ref sp[9];
  da_status s;
  for (int t = 0; t < 9; t++) {
    size_t lo, hi;
    if (t == 5) {
      size_t n = (size_t)d->batch * d->heads * d->seq_q;
      if (offs[t] > SIZE_MAX / sizeof(float) - n)
        return da_set_error(ctx, DA_ERR_INVALID_ARG, "lse: offset %zu overflows", offs[t]);
      lo = offs[t] * sizeof(float), hi = (offs[t] + n) * sizeof(float);
    } else {
      const long long *st = ext_stride(x, layout[t]);
      const int qo = layout[t] == 0 || layout[t] == 3;
      long long ext[3] = {d->batch, qo ? d->heads : d->kv_heads, qo ? d->seq_q : d->seq_k};
      unsigned long long span = tensor_span(st, ext, d->head_dim);
      if (!span || offs[t] > SIZE_MAX / p->elem_size - span)
        return da_set_error(ctx, DA_ERR_INVALID_ARG, "%s: offset %zu plus its extent overflows",
                            names[t], offs[t]);
      if (t >= 6 && !tensor_injective(st, ext, d->head_dim))
        return da_set_error(ctx, DA_ERR_INVALID_ARG,
                            "%s: the plan's %s strides {%lld, %lld, %lld} make two gradient "
                            "elements share an address",
                            names[t], tensor_names[layout[t]], st[0], st[1], st[2]);
      lo = offs[t] * p->elem_size, hi = (offs[t] + (size_t)span) * p->elem_size;
    }
    if ((s = check_buf(p, bufs[t], names[t], hi))) return s;
    sp[t] = (span_ref){bufs[t], lo, hi, names[t]};
  }
  /* what is written (dq, dk, dv) shares no byte with anything else */
  for (int w = 6; w < 9; w++)
    for (int r = 0; r < 9; r++)
      if (r != w && spans_share(&sp[w], &sp[r]))
        return da_set_error(ctx, DA_ERR_INVALID_ARG,
                            "%s overlaps %s: the bytes written in %s need memory of their own",
                            sp[w].name, sp[r].name, sp[w].name);
  if (!ctx->iface->attention_bwd)
    return da_set_error(ctx, DA_ERR_UNSUPPORTED,
                        "the %s backend has no backward pass yet (da_attention_backward runs on "
                        "the cpu, cuda and opencl backends)",
                        ctx->iface->name);
  da_bwd_call c;
  memset(&c, 0, sizeof c);
  c.dout = a.dout->handle, c.q = a.q->handle, c.k = a.k->handle, c.v = a.v->handle;
  c.o = a.o->handle, c.lse = a.lse->handle;
  c.dq = a.dq->handle, c.dk = a.dk->handle, c.dv = a.dv->handle;
  c.dout_off = a.dout_offset, c.q_off = a.q_offset, c.k_off = a.k_offset, c.v_off = a.v_offset;
  c.o_off = a.o_offset, c.lse_off = a.lse_offset;
  c.dq_off = a.dq_offset, c.dk_off = a.dk_offset, c.dv_off = a.dv_offset;
  return finish(ctx, ctx->iface->attention_bwd(p, &c));
}

/* Runs fn on device copies of host arrays: in[0..nin) are uploaded, out is
 * read back. Used for backends whose memory is not host memory. */
static da_status run_on_device(da_plan *p, int nin, const void *const *in, const size_t *in_bytes,
                               void *out, size_t out_bytes, int is_groups) {
  da_context *ctx = p->ctx;
  const da_backend_iface *f = ctx->iface;
  void *h[4] = {NULL, NULL, NULL, NULL}, *ho = NULL;
  da_status s = DA_SUCCESS;
  for (int i = 0; i < nin && s == DA_SUCCESS; i++) {
    s = f->buf_alloc(ctx, in_bytes[i], &h[i]);
    if (s == DA_SUCCESS) s = f->buf_write(ctx, h[i], 0, in[i], in_bytes[i]);
  }
  if (s == DA_SUCCESS) s = f->buf_alloc(ctx, out_bytes, &ho);
  if (s == DA_SUCCESS)
    s = is_groups ? f->groups(p, h[0], ho) : f->attention(p, h[0], h[1], h[2], ho);
  if (s == DA_SUCCESS) s = f->buf_read(ctx, ho, 0, out, out_bytes);
  if (s == DA_SUCCESS && f->synchronize) s = f->synchronize(ctx);
  for (int i = 0; i < nin; i++)
    if (h[i]) f->buf_free(ctx, h[i]);
  if (ho) f->buf_free(ctx, ho);
  return s;
}

da_status da_attention_host(da_plan *p, const void *q, const void *k, const void *v, void *o) {
  if (!p) return DA_ERR_INVALID_ARG;
  da_context *ctx = p->ctx;
  ctx->last_error[0] = '\0';
  if (!q) return da_set_error(ctx, DA_ERR_INVALID_ARG, "q is NULL");
  if (!k) return da_set_error(ctx, DA_ERR_INVALID_ARG, "k is NULL");
  if (!v) return da_set_error(ctx, DA_ERR_INVALID_ARG, "v is NULL");
  if (!o) return da_set_error(ctx, DA_ERR_INVALID_ARG, "o is NULL");
  if (p->ext_used)
    return da_set_error(ctx, DA_ERR_INVALID_ARG,
                        "the plan was made with da_attn_ext options: its tensors' extents come "
                        "from buffers (da_buffer_wrap host memory on the cpu backend) and "
                        "da_attention_ext");
  size_t qb = p->q_elems * p->elem_size, kvb = p->kv_elems * p->elem_size;
  if (ctx->iface->id == DA_BACKEND_CPU) {
    const uintptr_t oa = (uintptr_t)o;
    if (ranges_overlap(oa, qb, (uintptr_t)q, qb) || ranges_overlap(oa, qb, (uintptr_t)k, kvb) ||
        ranges_overlap(oa, qb, (uintptr_t)v, kvb))
      return da_set_error(ctx, DA_ERR_INVALID_ARG, "o overlaps q, k or v");
    return finish(ctx, ctx->iface->attention(p, (void *)q, (void *)k, (void *)v, o));
  }
  const void *in[3] = {q, k, v};
  size_t bytes[3] = {qb, kvb, kvb};
  return finish(ctx, run_on_device(p, 3, in, bytes, o, qb, 0));
}

da_status da_plan_groups_host(da_plan *p, const void *q, int *perm) {
  if (!p) return DA_ERR_INVALID_ARG;
  da_context *ctx = p->ctx;
  ctx->last_error[0] = '\0';
  if (!q) return da_set_error(ctx, DA_ERR_INVALID_ARG, "q is NULL");
  if (!perm) return da_set_error(ctx, DA_ERR_INVALID_ARG, "perm is NULL");
  if (p->x.strategy == DA_STRATEGY_PROJECTION)
    return da_set_error(ctx, DA_ERR_INVALID_ARG,
                        "the plan's ext.strategy is DA_STRATEGY_PROJECTION: it has no column "
                        "groups (da_plan_groups_host is for DA_STRATEGY_TILE_LSH)");
  size_t qb = p->q_elems * p->elem_size;
  if (ctx->iface->id == DA_BACKEND_CPU) return finish(ctx, ctx->iface->groups(p, (void *)q, perm));
  const void *in[1] = {q};
  size_t bytes[1] = {qb};
  return finish(ctx, run_on_device(p, 1, in, bytes, perm, p->perm_count * sizeof(int), 1));
}
