/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The backend interface: what a backend (built in, or a loadable module)
 * implements, and the core's objects it sees. Internal, not installed.
 *
 * A module is a shared object named distrattn_<name>.so exporting
 *   const da_backend_iface *distrattn_backend_entry(void);
 * The core refuses an iface whose iface_version differs from
 * DA_BACKEND_IFACE_VERSION (the struct layouts below are part of that
 * version). A module must not link against libdistrattn: everything it needs
 * from the core is in this header (static inline).
 *
 * The seam (interface version 6): a backend fills one da_backend_iface and
 * owns only its own objects, the context state it returns through ctx_create
 * or ctx_wrap (*bctx) and the plan state it returns through plan_prepare
 * (*bplan). It never writes da_context, da_plan or da_buffer: the core
 * (lib/core.c, lib/registry.c) stores what the backend returns, and hands
 * plans over as const. The one thing a backend writes through a core object
 * is its failure's message, with da_set_error (below), which keeps it in the
 * context's last_error. Nor does a backend read the environment: the core
 * parses every DISTRATTN_* variable (da_overrides) and hands the result over
 * read-only.
 */
#ifndef DA_BACKEND_H
#define DA_BACKEND_H

#include <float.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>

#include "distrattn.h"

#define DA_BACKEND_IFACE_VERSION 6
#define DA_BACKEND_ENTRY "distrattn_backend_entry"
#define DA_ERRMSG_LEN 16384

/* Device rank for DA_BACKEND_AUTO: the highest rank wins. */
enum {
  DA_RANK_SIMULATOR = 5,          /* Oclgrind: after everything real */
  DA_RANK_CPU_BACKEND = 10,       /* the CPU backend, portable kernels only */
  DA_RANK_CPU_OPENCL = 20,        /* an OpenCL CPU device (PoCL) */
  DA_RANK_CPU_BACKEND_VECTOR = 25, /* the CPU backend with AVX2/AVX-512: measured faster than PoCL */
  DA_RANK_GPU = 30
};

typedef struct da_backend_iface da_backend_iface;

/* The environment's overrides of a backend's choices (interface version 6),
 * parsed by the core (lib/core.c, da_overrides_parse), strictly (the
 * da_env_* rules below: a bad value fails the call with DA_ERR_INVALID_ARG
 * naming the variable). Only the variables of the object's own backend are
 * read. -1 (choices) or 0 (numbers) mean automatic: the backend decides.
 * The core checks each value's form and range; a backend still refuses a
 * value it cannot honour for a plan (a tile that does not fit, "1" for a
 * kernel that cannot run the shape), naming the variable.
 * A context's are parsed once, at da_context_create / da_context_wrap
 * (ctx->ov, handed to ctx_create / ctx_wrap: the CPU backend's thread pool
 * and kernels are made then); a plan's once, at plan creation (p->ov, read
 * by plan_prepare and by every later call of the plan). */
typedef struct da_overrides {
  /* cpu */
  int cpu_threads;        /* DISTRATTN_CPU_THREADS 1..DA_CPU_MAX_THREADS; 0 one per processor */
  int cpu_isa;            /* DISTRATTN_CPU_ISA: 0 generic, 1 avx2, 2 avx512; -1 the best */
  int cpu_decode;         /* DISTRATTN_CPU_DECODE: 0 never, 1 always the split-KV path; -1 by shape */
  /* opencl */
  int cl_kernel;          /* DISTRATTN_CL_KERNEL: 0 rows, 1 tiled; -1 by device (tiled when
                             cl_tile_rows is set) */
  int cl_tile_rows, cl_tile_cols; /* DISTRATTN_CL_TILE=ROWSxKEYS, each 1..4096; 0 the backend's */
  int cl_decode;          /* DISTRATTN_CL_DECODE: 0 never, 1 always; -1 by shape */
  long cl_decode_chunk;   /* DISTRATTN_CL_DECODE_CHUNK: keys per chunk, a multiple of 64 in
                             64..2^30; 0 the backend's */
  /* cuda */
  int cuda_wgmma;         /* DISTRATTN_CUDA_WGMMA: 0 never, 1 demanded; -1 where it runs */
  int cuda_decode;        /* DISTRATTN_CUDA_DECODE: as cl_decode */
  long cuda_decode_chunk; /* DISTRATTN_CUDA_DECODE_CHUNK: as cl_decode_chunk */
  int cuda_bwd;           /* DISTRATTN_CUDA_BWD: 0 simt, 1 mma, 2 wgmma (demanded); -1 the best */
  int cuda_bwd_keys;      /* DISTRATTN_CUDA_BWD_KEYS: 64 or 128; 0 the backend's (128) */
  int cuda_bwd_dq;        /* DISTRATTN_CUDA_BWD_DQ: 0 atomic, 1 split; -1 the backend's (atomic) */
  int cuda_bwd_dq_rows;   /* DISTRATTN_CUDA_BWD_DQ_ROWS: 64 or 128; 0 the backend's (128) */
} da_overrides;

#define DA_CPU_MAX_THREADS 1024

struct da_context {
  const da_backend_iface *iface;
  void *bctx;             /* the backend's own context (ctx_create's *bctx) */
  int device_index;       /* within the backend */
  da_device_info info;
  da_overrides ov;        /* the environment at creation (interface version 6) */
  int refs;               /* the caller's handle + each live plan and buffer */
  int destroyed;          /* da_context_destroy was called */
  char last_error[DA_ERRMSG_LEN];
};

/* Where a buffer's bytes lie, for the core's aliasing check: two buffers
 * overlap when their bases are equal and their byte ranges intersect. base
 * names the allocation (the root cl_mem of a sub-buffer, a host allocation
 * of CL_MEM_USE_HOST_PTR), or is NULL for one flat address space (device
 * pointers of one CUDA device, host pointers), where offset is the address. */
typedef struct da_mem_range {
  const void *base;
  uintptr_t offset;
} da_mem_range;

struct da_buffer {
  da_context *ctx;
  void *handle;           /* the backend's: host pointer (cpu), cl_mem, device pointer */
  size_t bytes;
  int wrapped;            /* the caller owns the native object: never passed to buf_free */
  da_mem_range range;     /* where its bytes lie (see da_mem_range) */
};

struct da_plan {
  da_context *ctx;
  da_attn_desc d;         /* resolved: kv_heads, scale, hash_bits, hash_block, algo set */
  int ng;                 /* ceil(head_dim / group_size) */
  int n_tiles;            /* ceil(seq_q / hash_block): hash tiles per (batch, head) */
  size_t elem_size;       /* bytes of one element of dtype */
  size_t q_elems, kv_elems; /* element counts of Q (= O) and of K (= V) */
  size_t perm_count;      /* batch * heads * n_tiles * head_dim */
  float *proj;            /* hash_bits x hash_block, row-major: R[b][r] */
  void *bplan;            /* the backend's per-plan state */
  /* interface version 3: the da_attn_ext options, resolved: strides always
   * filled in (dense ones where the caller gave none), window -1 or >= 0
   * (causal: window_right 0). ext_used: any option beyond da_attn_desc
   * (strides other than dense, seqlens, lse, a window); such a plan runs
   * only through attention_ext. */
  da_attn_ext x;
  int ext_used;
  /* interface version 5: da_attn_ext gained strategy, rank and proj (SPEC
   * 1c); with DA_STRATEGY_PROJECTION x.proj points at sproj, the plan's own
   * copy of [heads][2][head_dim][rank] f32 (A_h then B_h). */
  float *sproj;
  /* interface version 6: the environment's overrides, parsed at creation */
  da_overrides ov;
};

/* One call of attention_ext: buffer handles of this backend, element
 * offsets into them (of the plan's dtype; lse_offset in floats), and the
 * per-call lengths. The core has checked every tensor's extent against its
 * buffer (by the strides; for DA_SEQLENS_PACKED by rows_q and rows_k) and
 * the aliasing rules; the backend checks the length values it reads, or,
 * where it cannot read them (device memory), never reads or writes past
 * rows_q, rows_k and seq_k. */
typedef struct da_call {
  void *q, *k, *v, *o;
  size_t q_off, k_off, v_off, o_off;
  void *seqlens_k;              /* DA_SEQLENS_KV: int32 [batch] */
  void *cu_q, *cu_k;            /* DA_SEQLENS_PACKED: int32 [batch + 1] */
  size_t rows_q, rows_k;        /* DA_SEQLENS_PACKED */
  void *lse;                    /* x.lse: f32 */
  size_t lse_off;
} da_call;

/* One call of attention_bwd (interface version 4): buffer handles and
 * element offsets (of the plan's dtype; lse_off in floats). dout has O's
 * strides, dq Q's, dk K's, dv V's; lse is f32 [batch][heads][seq_q]. The
 * core has checked every extent against its buffer, that dq, dk and dv
 * share no byte with each other or with an input, and that the plan has no
 * per-sequence lengths. */
typedef struct da_bwd_call {
  void *dout, *q, *k, *v, *o, *lse, *dq, *dk, *dv;
  size_t dout_off, q_off, k_off, v_off, o_off, lse_off, dq_off, dk_off, dv_off;
} da_bwd_call;

/* Every entry may be NULL where marked optional; the core supplies defaults. */
struct da_backend_iface {
  int iface_version;      /* DA_BACKEND_IFACE_VERSION */
  da_backend id;
  const char *name;       /* "cpu", "opencl", "cuda" */

  /* Enumerate devices once. Returns the number of devices (>= 0), or a
   * negative da_status with why filled (runtime missing, no platform...). */
  int (*init)(char *why, size_t why_len);
  void (*shutdown)(void);                               /* optional */
  da_status (*device_info)(int index, da_device_info *out, int *rank);

  /* Contexts (interface version 6): the backend returns what it makes and
   * writes nothing of *ctx (ctx is there for da_set_error's message only).
   * ctx_create: *bctx its context of device index; *info arrives filled by
   * device_info(index) and the backend may refine it (the core sets its
   * backend and index). ov: the context's overrides (ctx->ov). */
  da_status (*ctx_create)(da_context *ctx, int index, const da_overrides *ov, void **bctx,
                          da_device_info *info);
  void (*ctx_destroy)(void *bctx);
  da_status (*synchronize)(da_context *ctx);            /* optional */
  /* optional: wrap a caller's queue/stream: *bctx, *index (the device's
   * index within the backend, -1 when it is none of init's devices) and
   * *info (zeroed by the core; the core sets its backend) */
  da_status (*ctx_wrap)(da_context *ctx, void *native_queue, const da_overrides *ov, void **bctx,
                        int *index, da_device_info *info);

  /* Buffers and who owns them (interface version 2):
   *  - buf_alloc makes memory the library owns; the core hands that handle,
   *    and only that kind, to buf_free, once.
   *  - buf_wrap takes a native object the CALLER owns. The core never passes
   *    a wrapped handle to buf_free: when the wrapper is destroyed it calls
   *    buf_unwrap, which gives back only what buf_wrap itself took (OpenCL:
   *    the reference clRetainMemObject added) and must leave the caller's
   *    memory allocated and intact. A backend whose wraps take nothing
   *    leaves buf_unwrap NULL. buf_wrap must refuse a `bytes` that runs past
   *    the end of the native allocation, and fill *range (da_mem_range),
   *    as buf_range does for buf_alloc's handles. */
  da_status (*buf_alloc)(da_context *ctx, size_t bytes, void **handle);
  void (*buf_free)(da_context *ctx, void *handle);
  da_status (*buf_write)(da_context *ctx, void *handle, size_t off, const void *src, size_t n);
  da_status (*buf_read)(da_context *ctx, void *handle, size_t off, void *dst, size_t n);
  /* optional: check a caller's native memory object, return the handle */
  da_status (*buf_wrap)(da_context *ctx, void *native, size_t bytes, void **handle,
                        da_mem_range *range);
  void (*buf_unwrap)(da_context *ctx, void *handle);    /* optional */
  /* optional: the range of a buf_alloc handle; without it {handle, 0} */
  void (*buf_range)(da_context *ctx, void *handle, da_mem_range *range);

  /* Plans: called after the core validated the descriptor, made proj and
   * parsed p->ov. plan_prepare returns its state through *bplan (the core
   * stores it in p->bplan; NULL on entry) and may refuse (DA_ERR_UNSUPPORTED
   * for an algo it lacks), then holding nothing. plan_release frees
   * p->bplan. Every plan entry gets the plan read-only. */
  da_status (*plan_prepare)(const da_plan *p, void **bplan); /* optional */
  void (*plan_release)(const da_plan *p);               /* optional */
  /* Enqueue attention over buffer handles of this backend. */
  da_status (*attention)(const da_plan *p, void *q, void *k, void *v, void *o);
  /* Column permutations into a buffer handle of perm_count int32. */
  da_status (*groups)(const da_plan *p, void *q, void *perm);
  /* optional (interface version 3): attention with the plan's da_attn_ext
   * options. A backend without it gets no plan that uses them (the core
   * refuses with DA_ERR_UNSUPPORTED); one with it may still refuse an option
   * in plan_prepare. */
  da_status (*attention_ext)(const da_plan *p, const da_call *c);
  /* optional (interface version 4), appended last: the backward pass
   * (da_attention_backward, SPEC 1b). NULL: the core refuses with
   * DA_ERR_UNSUPPORTED. */
  da_status (*attention_bwd)(const da_plan *p, const da_bwd_call *c);
  /* optional (interface version 6), appended last: what the plan's forward
   * calls run (da_plan_get_kernel). *out arrives initialised by the core
   * (da_kernel_info_init, backend set, name "default"); the backend fills
   * what it knows. NULL: the plan reports "default". */
  void (*plan_kernel)(const da_plan *p, da_kernel_info *out);
};

/* ---- helpers shared by the core and all backends (inline: modules too) ---- */

static inline da_status da_set_error(da_context *ctx, da_status s, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;
static inline da_status da_set_error(da_context *ctx, da_status s, const char *fmt, ...) {
  if (ctx) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(ctx->last_error, sizeof ctx->last_error, fmt, ap);
    va_end(ap);
  }
  return s;
}

/* A backend whose GEMM algorithm lacks the da_attn_ext options refuses such
 * a plan with this message (who: "OpenCL", "CUDA"). DA_ALGO_AUTO reaches
 * GEMM only when the fused kernel refused the plan: that reason is still in
 * last_error (plan creation clears it first) and is added. */
static inline da_status da_refuse_gemm_ext(const da_plan *p, const char *who) {
  da_context *ctx = p->ctx;
  char why[512];
  snprintf(why, sizeof why, "%.500s", ctx->last_error);
  return da_set_error(ctx, DA_ERR_UNSUPPORTED,
                      "%s: DA_ALGO_GEMM does not support the da_attn_ext options (strides, "
                      "per-sequence lengths, LSE, windows); DA_ALGO_FUSED does%s%s",
                      who, why[0] ? ", and refused this plan: " : "", why);
}

/* ---- the library's environment variables: one strict parser ----
 * Every variable the library reads (DISTRATTN_*) goes through these, in the
 * core (the backends get the result, da_overrides). Unset or empty: not set. Any other value
 * must be exactly of the form asked for, or the call fails with
 * DA_ERR_INVALID_ARG and a message naming the variable and the value: no
 * blanks, no sign, no trailing text, nothing out of range (nothing is
 * clamped, ignored or half-read). ctx may be NULL (no message kept). */

/* Decimal digits only, value in [lo, hi]; *end (optional) gets the first
 * character after the digits, and then trailing text is the caller's. */
static inline int da_parse_uint(const char *s, unsigned long lo, unsigned long hi,
                                unsigned long *out, const char **end) {
  unsigned long v = 0;
  const char *p = s;
  if (*p < '0' || *p > '9') return 0;
  for (; *p >= '0' && *p <= '9'; p++) {
    unsigned long dgt = (unsigned long)(*p - '0');
    if (v > (hi - dgt) / 10) return 0; /* above hi, before it can wrap */
    v = v * 10 + dgt;
  }
  if (end) *end = p;
  else if (*p) return 0;
  if (v < lo || v > hi) return 0;
  *out = v;
  return 1;
}

/* An integer in [lo, hi]. *set: 1 when the variable was given. */
static inline da_status da_env_uint(da_context *ctx, const char *name, unsigned long lo,
                                    unsigned long hi, unsigned long *out, int *set) {
  const char *e = getenv(name);
  *set = 0;
  if (!e || !*e) return DA_SUCCESS;
  if (!da_parse_uint(e, lo, hi, out, NULL))
    return da_set_error(ctx, DA_ERR_INVALID_ARG,
                        "%s=\"%.200s\" is not a whole number in %lu..%lu (digits only)", name, e,
                        lo, hi);
  *set = 1;
  return DA_SUCCESS;
}

/* One of n words, compared exactly: *out = its index, or -1 when unset.
 * allowed: the words as the message lists them ("\"tiled\" or \"rows\""). */
static inline da_status da_env_word(da_context *ctx, const char *name, const char *const *words,
                                    int n, const char *allowed, int *out) {
  const char *e = getenv(name);
  *out = -1;
  if (!e || !*e) return DA_SUCCESS;
  for (int i = 0; i < n; i++)
    if (strcmp(e, words[i]) == 0) {
      *out = i;
      return DA_SUCCESS;
    }
  return da_set_error(ctx, DA_ERR_INVALID_ARG, "%s=\"%.200s\" is not one of %s", name, e,
                      allowed);
}

/* Two integers "AxB", each in [lo, hi]; the caller checks the pair. */
static inline da_status da_env_uint_pair(da_context *ctx, const char *name, unsigned long lo,
                                         unsigned long hi, unsigned long *a, unsigned long *b,
                                         int *set) {
  const char *e = getenv(name), *p = NULL;
  *set = 0;
  if (!e || !*e) return DA_SUCCESS;
  if (!da_parse_uint(e, lo, hi, a, &p) || *p != 'x' || !da_parse_uint(p + 1, lo, hi, b, NULL))
    return da_set_error(ctx, DA_ERR_INVALID_ARG,
                        "%s=\"%.200s\" is not NxM with whole numbers in %lu..%lu (digits only, no "
                        "blanks)",
                        name, e, lo, hi);
  *set = 1;
  return DA_SUCCESS;
}

/* Checked size arithmetic: *acc = a * b (or a + b); 0 on overflow. */
static inline int da_mul_size(size_t a, size_t b, size_t *acc) {
  if (a != 0 && b > SIZE_MAX / a) return 0;
  *acc = a * b;
  return 1;
}
static inline int da_add_size(size_t a, size_t b, size_t *acc) {
  if (b > SIZE_MAX - a) return 0;
  *acc = a + b;
  return 1;
}

/* *out = the product of the n factors f[]; a product past SIZE_MAX is
 * refused with DA_ERR_DEVICE_MEMORY (no device holds it), never wrapped:
 * "<who>: the size of <what> overflows size_t ...". For the backends' plan
 * sizes. */
static inline da_status da_checked_size(da_context *ctx, const char *who, const char *what,
                                        size_t *out, int n, const size_t *f) {
  size_t acc = 1;
  for (int i = 0; i < n; i++)
    if (!da_mul_size(acc, f[i], &acc))
      return da_set_error(ctx, DA_ERR_DEVICE_MEMORY,
                          "%s: the size of %s overflows size_t (batch, heads and sequence "
                          "lengths too large together)",
                          who, what);
  *out = acc;
  return DA_SUCCESS;
}

/* The softmax's multiplier in the log2 domain, c = scale * log2(e), as
 * every kernel uses it (SPEC 1, "Scale"): above 2^24 it is rounded down to
 * a power of two, at most 2^64. There every gap between two logits that
 * f32 dot products resolve already weighs less than 2^-150 against the
 * larger, as at the true scale; a power of two keeps c * m exact, so the
 * kernels' fma(s, c, -c * m) is exactly 0 at a row's maximum; and the cap
 * keeps c * (q.k) finite for any |q.k| below 2^64. da_scale_eff is c in
 * the natural-log domain (c / log2(e)), for kernels that use exp. */
#define DA_LOG2E 1.4426950408889634
static inline float da_log2_mul(float scale) {
  double c = (double)scale * DA_LOG2E;
  if (!(c > 0x1p24)) return (float)c;
  if (c >= 0x1p64) return 0x1p64f;
  double p = 0x1p24;
  while (p * 2.0 <= c) p *= 2.0;
  return (float)p;
}
static inline float da_scale_eff(float scale) {
  double c = (double)scale * DA_LOG2E;
  return c > 0x1p24 ? (float)((double)da_log2_mul(scale) / DA_LOG2E) : scale;
}

static inline float da_half_to_float(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu, man = h & 0x3ffu, bits;
  if (exp == 0) {
    if (man == 0) {
      bits = sign;
    } else { /* subnormal: normalise */
      int e = -1;
      do { man <<= 1; e++; } while (!(man & 0x400u));
      bits = sign | ((uint32_t)(127 - 15 - e) << 23) | ((man & 0x3ffu) << 13);
    }
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | (man << 13);
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
  }
  float f;
  memcpy(&f, &bits, 4);
  return f;
}

/* Round to nearest even; overflow to Inf; NaN stays NaN. */
static inline uint16_t da_float_to_half(float f) {
  uint32_t x;
  memcpy(&x, &f, 4);
  uint32_t sign = (x >> 16) & 0x8000u;
  uint32_t ax = x & 0x7fffffffu;
  if (ax >= 0x7f800000u) /* Inf or NaN */
    return (uint16_t)(sign | 0x7c00u | (ax > 0x7f800000u ? 0x200u : 0));
  if (ax >= 0x477ff000u) /* rounds to >= 65520: Inf */
    return (uint16_t)(sign | 0x7c00u);
  if (ax < 0x38800000u) { /* below the smallest normal half: subnormal or 0 */
    if (ax < 0x33000000u) return (uint16_t)sign; /* < 2^-25 rounds to 0 */
    uint32_t e = ax >> 23, m = (ax & 0x7fffffu) | 0x800000u;
    uint32_t shift = 126 - e; /* 14 - (e - 127) + 13 - 1 ... */
    uint32_t hm = m >> (shift);
    uint32_t rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (hm & 1u))) hm++;
    return (uint16_t)(sign | hm);
  }
  uint32_t h = ((ax >> 13) - ((127 - 15) << 10));
  uint32_t rem = ax & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) h++;
  return (uint16_t)(sign | h);
}

static inline float da_bf16_to_float(uint16_t b) {
  uint32_t bits = (uint32_t)b << 16;
  float f;
  memcpy(&f, &bits, 4);
  return f;
}

static inline uint16_t da_float_to_bf16(float f) {
  uint32_t x;
  memcpy(&x, &f, 4);
  if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 0x40u); /* quiet NaN */
  x += 0x7fffu + ((x >> 16) & 1u);
  return (uint16_t)(x >> 16);
}

/* Element i of a dtype array as float. */
static inline float da_load_elem(const void *p, da_dtype t, size_t i) {
  switch (t) {
  case DA_F16: return da_half_to_float(((const uint16_t *)p)[i]);
  case DA_BF16: return da_bf16_to_float(((const uint16_t *)p)[i]);
  default: return ((const float *)p)[i];
  }
}

static inline void da_store_elem(void *p, da_dtype t, size_t i, float v) {
  switch (t) {
  case DA_F16: ((uint16_t *)p)[i] = da_float_to_half(v); break;
  case DA_BF16: ((uint16_t *)p)[i] = da_float_to_bf16(v); break;
  default: ((float *)p)[i] = v; break;
  }
}

/* DA_STRATEGY_PROJECTION (SPEC 1c): the products M_h = A_h B_h^T of a
 * plan's projections sproj ([heads][2][hd][r], A_h then B_h), into
 * m[h][c][c'] = sum_k A_h[c][k] B_h[c'][k] ([heads][hd][hd]), summed in
 * double and rounded once to f32; when mt is not NULL, M_h^T into it too.
 * The logits of the strategy are scale (Q M_h) K^T, which is how the
 * OpenCL and CUDA backward passes run it (the exact backward on Q M_h;
 * dQ = dQ' M_h^T). m (and mt) hold heads * hd * hd floats. */
static inline void da_proj_products(const float *sproj, int heads, int hd, int r, float *m,
                                    float *mt) {
  const size_t n = (size_t)hd, R = (size_t)r;
  for (size_t h = 0; h < (size_t)heads; h++) {
    const float *A = sproj + h * 2 * n * R, *B = A + n * R;
    float *mh = m + h * n * n, *th = mt ? mt + h * n * n : NULL;
    for (size_t c = 0; c < n; c++)
      for (size_t e = 0; e < n; e++) {
        const float *a = A + c * R, *b = B + e * R;
        double s0 = 0, s1 = 0, s2 = 0, s3 = 0; /* independent sums: no latency chain */
        size_t k = 0;
        for (; k + 4 <= R; k += 4) {
          s0 += (double)a[k] * b[k];
          s1 += (double)a[k + 1] * b[k + 1];
          s2 += (double)a[k + 2] * b[k + 2];
          s3 += (double)a[k + 3] * b[k + 3];
        }
        for (; k < R; k++) s0 += (double)a[k] * b[k];
        const float v = (float)((s0 + s1) + (s2 + s3));
        mh[c * n + e] = v;
        if (th) th[e * n + c] = v;
      }
  }
}

#endif /* DA_BACKEND_H */
