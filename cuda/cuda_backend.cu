/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The CUDA backend module (distrattn_cuda.so): the backend interface over
 * the CUDA runtime (linked statically, so only the driver is needed) and,
 * for DA_ALGO_GEMM, cuBLAS loaded with dlopen on first use.
 */
#include <dlfcn.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cublas_api.h>

#include "cuda_bwd.cuh"
#include "cuda_dev.cuh"

/* ---------------- errors ---------------- */

static da_status dac_status_of(cudaError_t e) {
  switch (e) {
  case cudaErrorMemoryAllocation: return DA_ERR_DEVICE_MEMORY;
  case cudaErrorNoDevice:
  case cudaErrorInsufficientDriver:
  case cudaErrorInvalidDevice: return DA_ERR_NO_DEVICE;
  default: return DA_ERR_BACKEND;
  }
}

static da_status dac_fail(da_context *ctx, cudaError_t e, const char *what) {
  (void)cudaGetLastError(); /* clear a non-sticky error */
  return da_set_error(ctx, dac_status_of(e), "CUDA: %s failed: %s (%s, %d)", what,
                      cudaGetErrorString(e), cudaGetErrorName(e), (int)e);
}

#define DAC_CHECK(ctx, call)                                                                       \
  do {                                                                                             \
    cudaError_t dac_e_ = (call);                                                                   \
    if (dac_e_ != cudaSuccess) return dac_fail((ctx), dac_e_, #call);                              \
  } while (0)

/* ---------------- cuBLAS, loaded on first use ---------------- */

typedef cublasStatus_t (*pf_create)(cublasHandle_t *);
typedef cublasStatus_t (*pf_destroy)(cublasHandle_t);
typedef cublasStatus_t (*pf_set_stream)(cublasHandle_t, cudaStream_t);
typedef cublasStatus_t (*pf_sgemm_sb)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int,
                                      int, const float *, const float *, int, long long int,
                                      const float *, int, long long int, const float *, float *, int,
                                      long long int, int);
typedef cublasStatus_t (*pf_gemm_sb_ex)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int,
                                        int, int, const void *, const void *, cudaDataType,
                                        int, long long int, const void *, cudaDataType, int,
                                        long long int, const void *, void *, cudaDataType, int,
                                        long long int, int, cublasComputeType_t,
                                        cublasGemmAlgo_t);
typedef const char *(*pf_status_string)(cublasStatus_t);

static struct {
  pthread_once_t once;
  void *dl;
  char why[512];
  pf_create create;
  pf_destroy destroy;
  pf_set_stream set_stream;
  pf_sgemm_sb sgemm_sb;
  pf_gemm_sb_ex gemm_sb_ex;
  pf_status_string status_string;
} blas = {PTHREAD_ONCE_INIT, NULL, "", NULL, NULL, NULL, NULL, NULL, NULL};

static void blas_load(void) {
  static const char *names[] = {"libcublas.so.13", "libcublas.so.12", "libcublas.so"};
  for (size_t i = 0; i < sizeof names / sizeof names[0] && !blas.dl; i++) {
    blas.dl = dlopen(names[i], RTLD_NOW | RTLD_LOCAL);
    if (!blas.dl) {
      const char *e = dlerror();
      snprintf(blas.why, sizeof blas.why, "dlopen(%s) failed: %s", names[i], e ? e : "?");
    }
  }
  if (!blas.dl) return;
  blas.create = (pf_create)dlsym(blas.dl, "cublasCreate_v2");
  blas.destroy = (pf_destroy)dlsym(blas.dl, "cublasDestroy_v2");
  blas.set_stream = (pf_set_stream)dlsym(blas.dl, "cublasSetStream_v2");
  blas.sgemm_sb = (pf_sgemm_sb)dlsym(blas.dl, "cublasSgemmStridedBatched");
  blas.gemm_sb_ex = (pf_gemm_sb_ex)dlsym(blas.dl, "cublasGemmStridedBatchedEx");
  blas.status_string = (pf_status_string)dlsym(blas.dl, "cublasGetStatusString");
  if (!blas.create || !blas.destroy || !blas.set_stream || !blas.sgemm_sb || !blas.gemm_sb_ex) {
    snprintf(blas.why, sizeof blas.why, "cuBLAS lacks the GEMM entry points");
    dlclose(blas.dl);
    blas.dl = NULL;
  }
}

static da_status blas_fail(da_context *ctx, cublasStatus_t st, const char *what) {
  return da_set_error(ctx, st == CUBLAS_STATUS_ALLOC_FAILED ? DA_ERR_DEVICE_MEMORY : DA_ERR_BACKEND,
                      "cuBLAS: %s failed: %s (%d)", what,
                      blas.status_string ? blas.status_string(st) : "cublasStatus", (int)st);
}

#define DAC_BLAS(ctx, call)                                                                        \
  do {                                                                                             \
    cublasStatus_t dac_s_ = (call);                                                                \
    if (dac_s_ != CUBLAS_STATUS_SUCCESS) return blas_fail((ctx), dac_s_, #call);                   \
  } while (0)

/* ---------------- devices ---------------- */

static int dac_init(char *why, size_t why_len) {
  int n = 0;
  cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    snprintf(why, why_len, "no CUDA driver: cudaGetDeviceCount returned %d (%s: %s)", (int)e,
             cudaGetErrorName(e), cudaGetErrorString(e));
    (void)cudaGetLastError();
    return e == cudaErrorInsufficientDriver || e == cudaErrorNoDevice ? DA_ERR_NO_DEVICE
                                                                       : DA_ERR_BACKEND;
  }
  if (n == 0) snprintf(why, why_len, "no CUDA device: cudaGetDeviceCount found none");
  return n;
}

static da_status dac_fill_info(da_context *ctx, int index, da_device_info *out, int *rank) {
  cudaDeviceProp p;
  DAC_CHECK(ctx, cudaGetDeviceProperties(&p, index));
  memset(out, 0, sizeof *out);
  out->backend = DA_BACKEND_CUDA;
  out->index = index;
  snprintf(out->name, sizeof out->name, "%.100s (sm_%d%d)", p.name, p.major, p.minor);
  snprintf(out->vendor, sizeof out->vendor, "NVIDIA");
  out->global_mem = (unsigned long long)p.totalGlobalMem;
  out->has_fp16 = 1;
  out->has_bf16 = 1; /* tensor cores from sm_80; SIMT arithmetic elsewhere */
  if (rank) *rank = DA_RANK_GPU;
  return DA_SUCCESS;
}

static da_status dac_device_info(int index, da_device_info *out, int *rank) {
  return dac_fill_info(NULL, index, out, rank);
}

static da_status dac_ctx_setup(da_context *ctx, dac_ctx *bc, int dev, da_device_info *info) {
  cudaDeviceProp p;
  DAC_CHECK(ctx, cudaGetDeviceProperties(&p, dev));
  bc->dev = dev;
  bc->cc_major = p.major;
  bc->cc_minor = p.minor;
  bc->sm_count = p.multiProcessorCount;
  bc->smem_optin = p.sharedMemPerBlockOptin;
  return dac_fill_info(ctx, dev, info, NULL);
}

static da_status dac_ctx_create(da_context *ctx, int index, const da_overrides *ov, void **bctx,
                                da_device_info *info) {
  (void)ov; /* CUDA's overrides are the plans' */
  dac_ctx *bc = (dac_ctx *)calloc(1, sizeof *bc);
  if (!bc) return da_set_error(ctx, DA_ERR_HOST_MEMORY, "CUDA: out of host memory for a context");
  cudaError_t e = cudaSetDevice(index);
  if (e != cudaSuccess) {
    free(bc);
    return dac_fail(ctx, e, "cudaSetDevice");
  }
  da_status st = dac_ctx_setup(ctx, bc, index, info);
  if (st != DA_SUCCESS) {
    free(bc);
    return st;
  }
  e = cudaStreamCreateWithFlags(&bc->stream, cudaStreamNonBlocking);
  if (e != cudaSuccess) {
    free(bc);
    return dac_fail(ctx, e, "cudaStreamCreateWithFlags");
  }
  bc->own_stream = 1;
  *bctx = bc;
  return DA_SUCCESS;
}

static da_status dac_ctx_wrap(da_context *ctx, void *native, const da_overrides *ov, void **bctx,
                              int *index, da_device_info *info) {
  (void)ov;
  dac_ctx *bc = (dac_ctx *)calloc(1, sizeof *bc);
  if (!bc) return da_set_error(ctx, DA_ERR_HOST_MEMORY, "CUDA: out of host memory for a context");
  cudaStream_t s = (cudaStream_t)native;
  int dev = 0;
  /* A stream being captured into a CUDA graph refuses cudaStreamGetDevice
   * (and the refusal invalidates the capture): then the current device is
   * the stream's, as with every framework that captures (PyTorch sets it
   * around its capture). cudaStreamIsCapturing itself is allowed. */
  cudaStreamCaptureStatus cap = cudaStreamCaptureStatusNone;
  cudaError_t e = s ? cudaStreamIsCapturing(s, &cap) : cudaSuccess;
  if (e != cudaSuccess) {
    free(bc);
    return dac_fail(ctx, e, "cudaStreamIsCapturing on the wrapped stream");
  }
  const bool by_stream = s && cap == cudaStreamCaptureStatusNone;
  e = by_stream ? cudaStreamGetDevice(s, &dev) : cudaGetDevice(&dev);
  if (e != cudaSuccess) {
    free(bc);
    return dac_fail(ctx, e, by_stream ? "cudaStreamGetDevice on the wrapped stream" : "cudaGetDevice");
  }
  e = cudaSetDevice(dev);
  if (e != cudaSuccess) {
    free(bc);
    return dac_fail(ctx, e, "cudaSetDevice");
  }
  da_status st = dac_ctx_setup(ctx, bc, dev, info);
  if (st != DA_SUCCESS) {
    free(bc);
    return st;
  }
  bc->stream = s;
  bc->own_stream = 0;
  *bctx = bc;
  *index = dev;
  return DA_SUCCESS;
}

static void dac_ctx_destroy(void *bctx) {
  dac_ctx *bc = (dac_ctx *)bctx;
  if (!bc) return;
  if (cudaSetDevice(bc->dev) == cudaSuccess) {
    (void)cudaStreamSynchronize(bc->stream);
    if (bc->blas) blas.destroy((cublasHandle_t)bc->blas);
    if (bc->own_stream) (void)cudaStreamDestroy(bc->stream);
  }
  (void)cudaGetLastError();
  free(bc);
}

#define DAC_BC(ctx) ((dac_ctx *)(ctx)->bctx)
#define DAC_SETDEV(ctx) DAC_CHECK(ctx, cudaSetDevice(DAC_BC(ctx)->dev))

static da_status dac_synchronize(da_context *ctx) {
  DAC_SETDEV(ctx);
  DAC_CHECK(ctx, cudaStreamSynchronize(DAC_BC(ctx)->stream));
  return DA_SUCCESS;
}

/* ---------------- buffers ---------------- */

static da_status dac_buf_alloc(da_context *ctx, size_t bytes, void **handle) {
  DAC_SETDEV(ctx);
  void *p = NULL;
  DAC_CHECK(ctx, cudaMalloc(&p, bytes ? bytes : 1));
  *handle = p;
  return DA_SUCCESS;
}

static void dac_buf_free(da_context *ctx, void *handle) {
  if (cudaSetDevice(DAC_BC(ctx)->dev) == cudaSuccess) (void)cudaFree(handle);
  (void)cudaGetLastError();
}

static da_status dac_buf_write(da_context *ctx, void *handle, size_t off, const void *src, size_t n) {
  DAC_SETDEV(ctx);
  cudaStream_t s = DAC_BC(ctx)->stream;
  DAC_CHECK(ctx, cudaMemcpyAsync((char *)handle + off, src, n, cudaMemcpyHostToDevice, s));
  DAC_CHECK(ctx, cudaStreamSynchronize(s));
  return DA_SUCCESS;
}

static da_status dac_buf_read(da_context *ctx, void *handle, size_t off, void *dst, size_t n) {
  DAC_SETDEV(ctx);
  cudaStream_t s = DAC_BC(ctx)->stream;
  DAC_CHECK(ctx, cudaMemcpyAsync(dst, (const char *)handle + off, n, cudaMemcpyDeviceToHost, s));
  DAC_CHECK(ctx, cudaStreamSynchronize(s));
  return DA_SUCCESS;
}

/* cuMemGetAddressRange from the driver, reached through the runtime (the
 * module links no libcuda), looked up once. */
typedef int (*dac_range_fn)(unsigned long long *base, size_t *size, unsigned long long ptr);
static dac_range_fn dac_range_lookup(void) {
  static void *fn;
  static int looked;
  if (__atomic_load_n(&looked, __ATOMIC_ACQUIRE)) return (dac_range_fn)__atomic_load_n(&fn, __ATOMIC_RELAXED);
  void *p = NULL;
  cudaDriverEntryPointQueryResult q = cudaDriverEntryPointSymbolNotFound;
#if CUDART_VERSION >= 12050
  if (cudaGetDriverEntryPointByVersion("cuMemGetAddressRange", &p, 12000, cudaEnableDefault, &q) !=
          cudaSuccess ||
      q != cudaDriverEntryPointSuccess)
    p = NULL;
#else
  if (cudaGetDriverEntryPoint("cuMemGetAddressRange", &p, cudaEnableDefault, &q) != cudaSuccess ||
      q != cudaDriverEntryPointSuccess)
    p = NULL;
#endif
  (void)cudaGetLastError();
  __atomic_store_n(&fn, p, __ATOMIC_RELAXED);
  __atomic_store_n(&looked, 1, __ATOMIC_RELEASE);
  return (dac_range_fn)p;
}

/* The caller's device memory: nothing taken, so nothing to give back (no
 * buf_unwrap); the core never hands a wrapped pointer to dac_buf_free. The
 * wrap is refused when [native, native + bytes) runs past the end of the
 * allocation native points into (cuMemGetAddressRange). */
static da_status dac_buf_wrap(da_context *ctx, void *native, size_t bytes, void **handle,
                              da_mem_range *range) {
  if (!native) return da_set_error(ctx, DA_ERR_INVALID_ARG, "CUDA: buffer wrap: device pointer is NULL");
  DAC_SETDEV(ctx);
  cudaPointerAttributes at;
  DAC_CHECK(ctx, cudaPointerGetAttributes(&at, native));
  if (at.type != cudaMemoryTypeDevice && at.type != cudaMemoryTypeManaged)
    return da_set_error(ctx, DA_ERR_INVALID_ARG,
                        "CUDA: buffer wrap: %p is not device memory (cudaPointerGetAttributes type %d)",
                        native, (int)at.type);
  if (at.device != DAC_BC(ctx)->dev)
    return da_set_error(ctx, DA_ERR_INVALID_ARG,
                        "CUDA: buffer wrap: %p lives on device %d, the context is on device %d",
                        native, at.device, DAC_BC(ctx)->dev);
  dac_range_fn range_of = dac_range_lookup();
  if (!range_of)
    return da_set_error(ctx, DA_ERR_BACKEND,
                        "CUDA: buffer wrap: the driver has no cuMemGetAddressRange, so the size "
                        "of the allocation behind %p cannot be checked",
                        native);
  unsigned long long base = 0;
  size_t size = 0;
  const unsigned long long ptr = (unsigned long long)(uintptr_t)native;
  int r = range_of(&base, &size, ptr);
  if (r != 0)
    return da_set_error(ctx, DA_ERR_INVALID_ARG,
                        "CUDA: buffer wrap: cuMemGetAddressRange(%p) failed (CUresult %d): not the "
                        "address of a live allocation",
                        native, r);
  const unsigned long long end = base + size, avail = end - ptr;
  if (ptr < base || ptr >= end || bytes > avail)
    return da_set_error(ctx, DA_ERR_INVALID_ARG,
                        "CUDA: buffer wrap: %zu bytes at %p run past the end of its allocation "
                        "(%zu bytes at 0x%llx: %llu bytes left from %p)",
                        bytes, native, size, base, ptr < end ? avail : 0ULL, native);
  *handle = native;
  range->base = NULL; /* one address space per device: overlap is address overlap */
  range->offset = (uintptr_t)native;
  return DA_SUCCESS;
}

static void dac_buf_range(da_context *ctx, void *handle, da_mem_range *range) {
  range->base = NULL;
  range->offset = (uintptr_t)handle;
}

static da_status dac_size(da_context *ctx, const char *what, size_t *out, int n, const size_t *f) {
  return da_checked_size(ctx, "CUDA", what, out, n, f);
}

/* ---------------- plans ---------------- */

static void dac_plan_free(dac_plan *bp) {
  if (!bp) return;
  if (bp->proj) (void)cudaFree(bp->proj);
  if (bp->perm) (void)cudaFree(bp->perm);
  if (bp->wts) (void)cudaFree(bp->wts);
  if (bp->qs) (void)cudaFree(bp->qs);
  if (bp->kt) (void)cudaFree(bp->kt);
  if (bp->gemm_s) (void)cudaFree(bp->gemm_s);
  if (bp->gemm_p) (void)cudaFree(bp->gemm_p);
  if (bp->gemm_q) (void)cudaFree(bp->gemm_q);
  if (bp->dec_part) (void)cudaFree(bp->dec_part);
  if (bp->pj) (void)cudaFree(bp->pj);
  if (bp->pq) (void)cudaFree(bp->pq);
  if (bp->pk) (void)cudaFree(bp->pk);
  if (bp->pm) (void)cudaFree(bp->pm);
  (void)cudaGetLastError();
  free(bp);
}

static void dac_plan_release(const da_plan *p) {
  if (!p->bplan) return;
  dac_ctx *bc = DAC_BC(p->ctx);
  if (cudaSetDevice(bc->dev) == cudaSuccess) (void)cudaStreamSynchronize(bc->stream);
  dac_plan_free((dac_plan *)p->bplan);
}

static da_status dac_alloc(da_context *ctx, void **ptr, size_t bytes, const char *what) {
  cudaError_t e = cudaMalloc(ptr, bytes ? bytes : 1);
  if (e != cudaSuccess) {
    *ptr = NULL;
    (void)cudaGetLastError();
    return da_set_error(ctx, dac_status_of(e), "CUDA: cudaMalloc of %zu bytes for %s failed: %s",
                        bytes, what, cudaGetErrorString(e));
  }
  return DA_SUCCESS;
}

static int dac_round16(int x) { return (x + 15) / 16 * 16; }

/* ---------------- split-KV decode (cuda_decode.cuh) ---------------- */

/* The decode kernels run by default where a kv head has at most
 * DEC_ROWS_AUTO query rows (heads / kv_heads x seq_q; DEC_ROWS_AUTO_SIMT
 * where only the SIMT variant runs: f32, head_dim 256);
 * DISTRATTN_CUDA_DECODE=1 takes them up to DEC_ROWS_MAX rows (and refuses a
 * plan they cannot run), 0 never. */
#define DEC_ROWS_AUTO 16
#define DEC_ROWS_AUTO_SIMT 4
#define DEC_ROWS_MAX 64

/* Why the decode kernels cannot run a plan, or NULL. */
static const char *dac_dec_refusal(const da_plan *p) {
  const da_attn_desc *d = &p->d;
  if (p->x.strategy == DA_STRATEGY_PROJECTION) return "the projection strategy";
  if (d->group_size > 1) return "group_size > 1 (DistrAttention's hash tiles)";
  if (d->algo == DA_ALGO_GEMM) return "algo GEMM";
  if (d->head_dim != 64 && d->head_dim != 128 && d->head_dim != 256)
    return "a head_dim other than 64, 128 or 256";
  if ((long)(d->heads / d->kv_heads) * d->seq_q > DEC_ROWS_MAX)
    return "more than 64 query rows per kv head (heads / kv_heads x seq_q)";
  return NULL;
}

/* Chunking: one wave. The pass-1 blocks that fit on the GPU at once
 * (occupancy x multiprocessors) are shared among the units (batch x kv heads
 * x row groups): each unit's keys are cut into as many chunks as it gets
 * blocks (at least 1), a multiple of what a block reads per round. More
 * chunks than that only add merges and a second, partial wave (measured on
 * an H200: bench/cuda-notes.md, decode). DISTRATTN_CUDA_DECODE_CHUNK=N fixes
 * the keys per chunk (a multiple of 64) for measurements. */

static da_status dac_dec_plan(const da_plan *p, dac_plan *bp, const dac_ctx *bc) {
  da_context *ctx = p->ctx;
  const da_attn_desc *d = &p->d;
  /* the plan's overrides (the core checked the chunk: a multiple of 64) */
  const int env = p->ov.cuda_decode, fixed_set = p->ov.cuda_decode_chunk > 0;
  const unsigned long fixed = (unsigned long)p->ov.cuda_decode_chunk;
  da_status st;
  const char *why = dac_dec_refusal(p);
  if (env == 1 && why)
    return da_set_error(ctx, DA_ERR_UNSUPPORTED,
                        "DISTRATTN_CUDA_DECODE=1: the split-KV decode kernels cannot run this "
                        "plan: %s",
                        why);
  const long R = (long)(d->heads / d->kv_heads) * d->seq_q;
  /* the tensor-core kernels (f16/bf16, head_dim 64 or 128) take 8 rows a
   * block (the transposed one, up to 8 rows per kv head) or 16, the SIMT
   * one 1, 2 or 4 */
  const int tc = d->dtype != DA_F32 && d->head_dim <= 128;
  if (why || env == 0 || (env != 1 && R > (tc ? DEC_ROWS_AUTO : DEC_ROWS_AUTO_SIMT)))
    return DA_SUCCESS;
  bp->dec_rb = tc ? (R <= 8 ? 8 : 16) : R <= 1 ? 1 : R <= 2 ? 2 : 4;
  bp->dec_nrg = (int)((R + bp->dec_rb - 1) / bp->dec_rb);
  /* keys a block reads per round: 4 warps x keys per warp and round */
  const long step = tc ? 64 : 4L * (32 / (d->head_dim / 16)) * (d->dtype == DA_F32 || R > 2 ? 2 : 4);
  const double units = (double)d->batch * d->kv_heads * bp->dec_nrg;
  long C;
  if (fixed_set)
    C = (long)fixed;
  else {
    int per_sm = 0;
    const cudaError_t oe =
        d->dtype == DA_F16    ? dac_occupancy_decode_f16(d->head_dim, bp->dec_rb, &per_sm)
        : d->dtype == DA_BF16 ? dac_occupancy_decode_bf16(d->head_dim, bp->dec_rb, &per_sm)
                              : dac_occupancy_decode_f32(d->head_dim, bp->dec_rb, &per_sm);
    if (oe != cudaSuccess) return dac_fail(ctx, oe, "cudaOccupancyMaxActiveBlocksPerMultiprocessor");
    const double slots = (double)(per_sm > 0 ? per_sm : 1) * (bc->sm_count > 0 ? bc->sm_count : 1);
    const double per_unit = slots / units >= 1.0 ? slots / units : 1.0;
    const long n = per_unit < (double)d->seq_k ? (long)per_unit : (d->seq_k > 0 ? d->seq_k : 1);
    const long c = (d->seq_k + n - 1) / n;
    C = c > 0 ? (c + step - 1) / step * step : step;
  }
  const long nch = d->seq_k > 0 ? (d->seq_k + C - 1) / C : 1;
  if (units / d->batch * nch > 2147483647.0) /* grid.x: row groups x chunks */
    return env == 1 ? da_set_error(ctx, DA_ERR_UNSUPPORTED,
                                   "DISTRATTN_CUDA_DECODE=1: %ld chunks of %ld keys are too many "
                                   "for the decode grid",
                                   nch, C)
                    : DA_SUCCESS;
  bp->dec_C = (int)C;
  bp->dec_nch = (int)nch;
  size_t bytes;
  {
    const size_t f[] = {(size_t)d->batch, (size_t)d->heads, (size_t)d->seq_q, (size_t)nch,
                        (size_t)d->head_dim + 2, sizeof(float)};
    if ((st = dac_size(ctx, "the decode partial results", &bytes, 6, f))) return st;
  }
  st = dac_alloc(ctx, (void **)&bp->dec_part, bytes, "the decode partial results");
  if (st) return st;
  bp->dec = 1;
  return DA_SUCCESS;
}

/* Whether the decode kernels can take this call's K and V: every row a
 * 16-byte aligned address (their vector loads). */
static int dac_dec_aligned(const da_plan *p, const void *k, const void *v) {
  const da_attn_ext *x = &p->x;
  const size_t es = p->elem_size;
  if (((uintptr_t)k | (uintptr_t)v) & 15u) return 0;
  for (int i = 0; i < 3; i++)
    if ((unsigned long long)x->k_stride[i] * es % 16 || (unsigned long long)x->v_stride[i] * es % 16)
      return 0;
  return 1;
}

static cudaError_t dac_dec_launch(const da_plan *p, const dac_plan *bp, const dac_args *a,
                                  cudaStream_t s) {
  switch (p->d.dtype) {
  case DA_F16: return dac_launch_decode_f16(a, bp->dec_part, bp->dec_nch, bp->dec_C, bp->dec_rb, bp->dec_nrg, s);
  case DA_BF16: return dac_launch_decode_bf16(a, bp->dec_part, bp->dec_nch, bp->dec_C, bp->dec_rb, bp->dec_nrg, s);
  default: return dac_launch_decode_f32(a, bp->dec_part, bp->dec_nch, bp->dec_C, bp->dec_rb, bp->dec_nrg, s);
  }
}

/* Host memory to a new device allocation, on a private non-blocking stream
 * (see the projections' upload in dac_plan_prepare_inner). */
static da_status dac_upload(da_context *ctx, void **dst, const void *src, size_t bytes,
                            const char *what) {
  da_status st = dac_alloc(ctx, dst, bytes, what);
  if (st) return st;
  cudaStream_t up;
  DAC_CHECK(ctx, cudaStreamCreateWithFlags(&up, cudaStreamNonBlocking));
  cudaError_t e = cudaMemcpyAsync(*dst, src, bytes, cudaMemcpyHostToDevice, up);
  if (e == cudaSuccess) e = cudaStreamSynchronize(up);
  cudaError_t e2 = cudaStreamDestroy(up);
  if (e != cudaSuccess) return dac_fail(ctx, e, "cudaMemcpyAsync of the plan's projections");
  if (e2 != cudaSuccess) return dac_fail(ctx, e2, "cudaStreamDestroy");
  return DA_SUCCESS;
}

/* Whether plan p's da_attn_ext options leave its tensors dense
 * ([batch][heads][rows][head_dim]) with no per-sequence lengths and no
 * window beyond causal's, so that the warpgroup-MMA kernel (TMA maps of
 * dense tensors) runs it; the LSE output (ext.lse) it writes too. Q and K
 * are checked only with check_qk (the projection strategy reads them
 * through its projection kernels). */
static int dac_dense_lse_only(const da_plan *p, int check_qk) {
  const da_attn_desc *d = &p->d;
  const da_attn_ext *x = &p->x;
  int dense = x->seqlens == DA_SEQLENS_NONE && x->window_left < 0 &&
              (x->window_right < 0 || (d->causal && x->window_right == 0));
  const long long S = d->seq_k, Sq = d->seq_q, D = d->head_dim;
  const long long ks[3] = {(long long)d->kv_heads * S * D, S * D, D};
  const long long qs[3] = {(long long)d->heads * Sq * D, Sq * D, D};
  for (int i = 0; i < 3; i++) {
    dense = dense && x->v_stride[i] == ks[i] && x->o_stride[i] == qs[i];
    if (check_qk) dense = dense && x->k_stride[i] == ks[i] && x->q_stride[i] == qs[i];
  }
  return dense;
}

/* DA_STRATEGY_PROJECTION (SPEC 1c): the projections on the device and the
 * projected Q and K, sized for f32 (the SIMT kernel's; the tensor-core
 * kernel stores them in the dtype, half that). The tensor-core kernel
 * takes f16/bf16 with (head_dim, rank) in dac_mma_proj_supported on sm_80
 * and later; every other plan runs on the SIMT kernel. On sm_90a the
 * warpgroup-MMA kernel's pre-projected mode takes f16/bf16 plans of rank 32
 * or 64 (head_dim 64 or 128) or 128 (head_dim 128) whose V and O are dense, with
 * no window or per-sequence lengths (proj_wg; it writes the LSE too;
 * DISTRATTN_CUDA_WGMMA=0 turns it off, =1 demands it). The decode kernels never take these plans. */
static da_status dac_proj_plan(const da_plan *p, dac_plan *bp, const dac_ctx *bc) {
  da_context *ctx = p->ctx;
  const da_attn_desc *d = &p->d;
  const size_t r = (size_t)p->x.rank;
  da_status st;
  const int dense = dac_dense_lse_only(p, 0);
  bp->proj_wg = dense && p->ov.cuda_wgmma != 0 &&
                dac_wg_proj_supported(bc->cc_major, bc->cc_minor, d->dtype, d->head_dim, (int)r);
  if (p->ov.cuda_wgmma == 1 && !bp->proj_wg) /* the plan's overrides, parsed by the core */
    return da_set_error(ctx, DA_ERR_INVALID_ARG,
                        "DISTRATTN_CUDA_WGMMA=\"1\" asks for the warpgroup-MMA kernel, whose "
                        "pre-projected mode does not run this ext.strategy = "
                        "DA_STRATEGY_PROJECTION plan (it takes sm_90a, f16/bf16, rank 32 or 64 "
                        "with head_dim 64 or 128, or rank 128 with head_dim 128, dense V and O, no "
                        "window or per-sequence lengths; the LSE it writes); unset DISTRATTN_CUDA_WGMMA or set it to "
                        "\"0\"");
  bp->proj_mma = bc->cc_major >= 8 && dac_mma_proj_supported(d->dtype, d->head_dim, (int)r);
  size_t pj_bytes, q_bytes, k_bytes;
  {
    const size_t fj[] = {(size_t)d->heads, 2, (size_t)d->head_dim, r, 4};
    const size_t fq[] = {(size_t)d->batch, (size_t)d->heads, (size_t)d->seq_q, r, 4};
    const size_t fk[] = {(size_t)d->batch, (size_t)d->heads, (size_t)d->seq_k, r, 4};
    if ((st = dac_size(ctx, "the projections", &pj_bytes, 5, fj)) ||
        (st = dac_size(ctx, "the projected Q", &q_bytes, 5, fq)) ||
        (st = dac_size(ctx, "the projected K", &k_bytes, 5, fk)))
      return st;
  }
  if ((st = dac_upload(ctx, (void **)&bp->pj, p->sproj, pj_bytes, "the plan's projections")) ||
      (st = dac_alloc(ctx, &bp->pq, q_bytes, "the projected Q")) ||
      (st = dac_alloc(ctx, &bp->pk, k_bytes, "the projected K")))
    return st;
  return DA_SUCCESS;
}

/* DA_STRATEGY_PROJECTION (SPEC 1c), what the backward pass needs: M_h =
 * A_h B_h^T per query head ([heads][head_dim][head_dim] f32, computed on
 * the host in double, da_proj_products), on the device for the plan's
 * life. */
static da_status dac_proj_bwd_plan(const da_plan *p, dac_plan *bp) {
  da_context *ctx = p->ctx;
  const da_attn_desc *d = &p->d;
  size_t bytes;
  const size_t f[] = {(size_t)d->heads, (size_t)d->head_dim, (size_t)d->head_dim, sizeof(float)};
  da_status st = dac_size(ctx, "the projections' products A_h B_h^T", &bytes, 4, f);
  if (st) return st;
  float *m = (float *)malloc(bytes);
  if (!m)
    return da_set_error(ctx, DA_ERR_HOST_MEMORY,
                        "CUDA: out of host memory for %zu bytes of the projections' products "
                        "A_h B_h^T",
                        bytes);
  da_proj_products(p->sproj, d->heads, d->head_dim, p->x.rank, m, NULL);
  st = dac_upload(ctx, (void **)&bp->pm, m, bytes, "the projections' products A_h B_h^T");
  free(m);
  return st;
}

static da_status dac_plan_prepare_inner(const da_plan *p, dac_plan *bp) {
  da_context *ctx = p->ctx;
  dac_ctx *bc = DAC_BC(ctx);
  const da_attn_desc *d = &p->d;
  const int G = d->group_size;
  const size_t bh = (size_t)d->batch * d->heads;
  da_status st = dac_dec_plan(p, bp, bc); /* refuses the projection strategy */
  if (st) return st;
  /* the projection strategy: the forward's projections and workspaces, and
   * the backward's M_h */
  if (p->x.strategy == DA_STRATEGY_PROJECTION) {
    da_status st = dac_proj_plan(p, bp, bc);
    return st ? st : dac_proj_bwd_plan(p, bp);
  }
  bp->use_mma = bc->cc_major >= 8 && dac_mma_supported(d->dtype, d->head_dim, G, d->hash_block);
  bp->br = (G == 1 || d->hash_block >= 128) ? 128 : 64;
  /* DISTRATTN_CUDA_WGMMA: "0" keeps Hopper on the mma.sync kernel (for
   * comparisons), "1" demands the warpgroup-MMA one; unset: it where it runs */
  const int wg_env = p->ov.cuda_wgmma; /* the plan's overrides, parsed by the core */
  /* The warpgroup-MMA kernel runs dense plans only (its TMA descriptors
   * assume dense tensors), with or without the LSE output: a plan with
   * other da_attn_ext options (strides, per-sequence lengths, windows)
   * runs on the mma.sync kernel on Hopper too, or on the SIMT one where
   * that cannot (SPEC 1, "Layouts and lengths"). */
  const int dense = !p->ext_used || dac_dense_lse_only(p, 1);
  if (wg_env == 1 && !dense && d->algo != DA_ALGO_GEMM)
    return da_set_error(ctx, DA_ERR_INVALID_ARG,
                        "DISTRATTN_CUDA_WGMMA=\"1\" asks for the warpgroup-MMA kernel, which runs "
                        "dense plans only: this plan uses da_attn_ext options (strides, "
                        "per-sequence lengths or a window), which the mma.sync kernel runs "
                        "(unset DISTRATTN_CUDA_WGMMA or set it to \"0\")");
  const bool wg_ok = dense && d->algo != DA_ALGO_GEMM && bp->use_mma &&
                     dac_wg_supported(bc->cc_major, bc->cc_minor, d->dtype, d->head_dim, G,
                                      d->hash_block);
  if (wg_env == 1 && !wg_ok && d->algo != DA_ALGO_GEMM)
    return da_set_error(ctx, DA_ERR_INVALID_ARG,
                        "DISTRATTN_CUDA_WGMMA=\"1\" asks for the warpgroup-MMA kernel, which cannot "
                        "run this plan (it needs an sm_90 GPU, f16 or bf16, head_dim 64 or 128; "
                        "this is sm_%d%d, dtype %d, head_dim %d, G %d, hash_block %d)",
                        bc->cc_major, bc->cc_minor, (int)d->dtype, d->head_dim, G, d->hash_block);
  bp->use_wg = wg_ok && wg_env != 0;
  const size_t proj_bytes = (size_t)d->hash_bits * d->hash_block * sizeof(float);
  st = dac_alloc(ctx, (void **)&bp->proj, proj_bytes, "the projections");
  if (st) return st;
  {
    /* On a private non-blocking stream, not cudaMemcpy's legacy stream: a
     * plan may be made while the caller's stream is being captured into a
     * CUDA graph (relaxed mode), and the legacy stream's implicit
     * synchronisation with it would invalidate the capture. */
    cudaStream_t up;
    DAC_CHECK(ctx, cudaStreamCreateWithFlags(&up, cudaStreamNonBlocking));
    cudaError_t e = cudaMemcpyAsync(bp->proj, p->proj, proj_bytes, cudaMemcpyHostToDevice, up);
    if (e == cudaSuccess) e = cudaStreamSynchronize(up);
    cudaError_t e2 = cudaStreamDestroy(up);
    if (e != cudaSuccess) return dac_fail(ctx, e, "cudaMemcpyAsync of the projections");
    if (e2 != cudaSuccess) return dac_fail(ctx, e2, "cudaStreamDestroy");
  }
  if (G > 1) {
    st = dac_alloc(ctx, (void **)&bp->perm, p->perm_count * sizeof(int), "the permutations");
    if (st) return st;
    st = dac_alloc(ctx, (void **)&bp->wts, p->perm_count * sizeof(float), "the fusion weights");
    if (st) return st;
  }
  if (d->algo == DA_ALGO_GEMM) {
    pthread_once(&blas.once, blas_load);
    if (!blas.dl)
      return da_set_error(ctx, DA_ERR_UNSUPPORTED, "CUDA: DA_ALGO_GEMM needs cuBLAS: %s", blas.why);
    if (!bc->blas) {
      cublasHandle_t hdl;
      DAC_BLAS(ctx, blas.create(&hdl));
      bc->blas = hdl;
    }
    const int rep = d->heads / d->kv_heads;
    const size_t pair_rows = (size_t)rep * d->seq_q;
    if (pair_rows > (size_t)INT32_MAX)
      return da_set_error(ctx, DA_ERR_UNSUPPORTED,
                          "CUDA: DA_ALGO_GEMM takes at most 2^31-1 rows of logits per kv head "
                          "(cuBLAS's int sizes), heads/kv_heads x seq_q = %zu",
                          pair_rows);
    size_t per_pair, s_bytes, p_bytes;
    {
      const size_t f[] = {pair_rows, (size_t)d->seq_k, 4 + p->elem_size};
      if ((st = dac_size(ctx, "the GEMM logits", &per_pair, 3, f))) return st;
    }
    const size_t budget = (size_t)512 << 20;
    size_t chunk = per_pair ? budget / per_pair : 1;
    const size_t pairs = (size_t)d->batch * d->kv_heads;
    if (chunk < 1) chunk = 1;
    if (chunk > pairs) chunk = pairs;
    bp->gemm_chunk = chunk;
    {
      const size_t fs[] = {chunk, pair_rows, (size_t)d->seq_k, 4};
      const size_t fp[] = {chunk, pair_rows, (size_t)d->seq_k, p->elem_size};
      if ((st = dac_size(ctx, "the GEMM logits", &s_bytes, 4, fs)) ||
          (st = dac_size(ctx, "the GEMM probabilities", &p_bytes, 4, fp)))
        return st;
    }
    st = dac_alloc(ctx, &bp->gemm_s, s_bytes, "the GEMM logits");
    if (st) return st;
    st = dac_alloc(ctx, &bp->gemm_p, p_bytes, "the GEMM probabilities");
    if (st) return st;
    if (G > 1) {
      st = dac_alloc(ctx, &bp->gemm_q, p->q_elems * p->elem_size, "the expanded Q");
      if (st) return st;
    }
    return DA_SUCCESS;
  }
  if (G > 1) {
    const int ng = p->ng;
    bp->qs_ld = bp->use_mma ? dac_round16(ng) : ng;
    bp->qs_dtype = bp->use_mma ? d->dtype : DA_F32;
    /* big enough for the SIMT layout too (f32, ng wide): the fallback for
     * device pointers that are not 16-byte aligned */
    size_t mma_bytes, simt_bytes;
    {
      const size_t fm[] = {bh, (size_t)d->seq_q, (size_t)dac_round16(ng), p->elem_size};
      const size_t fs[] = {bh, (size_t)d->seq_q, (size_t)ng, 4};
      if ((st = dac_size(ctx, "the fused Q", &mma_bytes, 4, fm)) ||
          (st = dac_size(ctx, "the fused Q", &simt_bytes, 4, fs)))
        return st;
    }
    st = dac_alloc(ctx, &bp->qs, mma_bytes > simt_bytes ? mma_bytes : simt_bytes, "the fused Q");
    if (st) return st;
    if (bp->use_wg) {
      bp->kt_ld = (int)dac_wg_kt_ld(d->seq_k);
      size_t kt_bytes;
      const size_t fk[] = {(size_t)d->batch, (size_t)d->kv_heads, (size_t)d->head_dim,
                           (size_t)bp->kt_ld, p->elem_size};
      if ((st = dac_size(ctx, "the transposed K", &kt_bytes, 5, fk))) return st;
      st = dac_alloc(ctx, &bp->kt, kt_bytes, "the transposed K");
      if (st) return st;
    }
  }
  return DA_SUCCESS;
}

static da_status dac_plan_prepare(const da_plan *p, void **bplan) {
  da_context *ctx = p->ctx;
  if (p->x.strategy == DA_STRATEGY_PROJECTION && p->d.algo == DA_ALGO_GEMM)
    return da_set_error(ctx, DA_ERR_UNSUPPORTED,
                        "CUDA: ext.strategy = DA_STRATEGY_PROJECTION runs on the fused kernels "
                        "(DA_ALGO_FUSED), not DA_ALGO_GEMM");
  if (p->d.algo == DA_ALGO_GEMM && p->ext_used) return da_refuse_gemm_ext(p, "CUDA");
  if (p->d.head_dim > 256 && p->d.algo != DA_ALGO_GEMM)
    return da_set_error(ctx, DA_ERR_UNSUPPORTED,
                        "CUDA: head_dim %d: the fused kernels take 1..256 (use DA_ALGO_GEMM)",
                        p->d.head_dim);
  DAC_SETDEV(ctx);
  dac_plan *bp = (dac_plan *)calloc(1, sizeof *bp);
  if (!bp) return da_set_error(ctx, DA_ERR_HOST_MEMORY, "CUDA: out of host memory for a plan");
  da_status st = dac_plan_prepare_inner(p, bp);
  if (st != DA_SUCCESS) {
    dac_plan_free(bp);
    return st;
  }
  *bplan = bp;
  return DA_SUCCESS;
}

/* What a plan runs (da_plan_get_kernel), for calls whose tensors are
 * 16-byte aligned (the others take the SIMT kernel). */
static void dac_plan_kernel(const da_plan *p, da_kernel_info *out) {
  const dac_plan *bp = (const dac_plan *)p->bplan;
  if (!bp) return;
  if (bp->dec) {
    const int tc = p->d.dtype != DA_F32 && p->d.head_dim <= 128;
    snprintf(out->name, sizeof out->name, "split-kv decode");
    snprintf(out->variant, sizeof out->variant, "%s", tc ? "mma" : "simt");
    out->tile_rows = bp->dec_rb;
    out->chunk = bp->dec_C;
    return;
  }
  if (p->d.algo == DA_ALGO_GEMM) {
    snprintf(out->name, sizeof out->name, "gemm");
    return;
  }
  if (p->x.strategy == DA_STRATEGY_PROJECTION) { /* for 16-byte aligned V and O */
    snprintf(out->name, sizeof out->name, "%s",
             bp->proj_wg ? "wgmma" : bp->proj_mma ? "mma" : "simt");
    snprintf(out->variant, sizeof out->variant, "pre-projected");
    if (bp->proj_wg) out->tile_rows = 128;
    return;
  }
  snprintf(out->name, sizeof out->name, "%s",
           bp->use_wg ? "wgmma" : bp->use_mma ? "mma" : "simt");
  if (bp->use_wg || bp->use_mma) out->tile_rows = bp->br;
}

/* ---------------- attention ---------------- */

static void dac_fill_args(const da_plan *p, dac_args *a, const void *q, const void *k, const void *v,
                          void *o) {
  const da_attn_desc *d = &p->d;
  const dac_plan *bp = (const dac_plan *)p->bplan;
  memset(a, 0, sizeof *a);
  a->q = q;
  a->k = k;
  a->v = v;
  a->o = o;
  a->qs = bp->qs;
  a->perm = bp->perm;
  a->wts = bp->wts;
  a->batch = d->batch;
  a->heads = d->heads;
  a->kv_heads = d->kv_heads;
  a->seq_q = d->seq_q;
  a->seq_k = d->seq_k;
  a->d = d->head_dim;
  a->G = d->group_size;
  a->ng = p->ng;
  a->qs_ld = bp->qs_ld;
  a->hash_block = d->hash_block;
  a->n_tiles = p->n_tiles;
  a->causal = d->causal;
  a->scale = da_scale_eff(d->scale); /* SPEC 1, "Scale" */
  a->scale_log2 = da_log2_mul(d->scale);
  a->dt = d->dtype;
}

static da_status dac_gemm(const da_plan *p, dac_args *a) {
  da_context *ctx = p->ctx;
  dac_ctx *bc = DAC_BC(ctx);
  dac_plan *bp = (dac_plan *)p->bplan;
  const da_attn_desc *d = &p->d;
  cublasHandle_t hdl = (cublasHandle_t)bc->blas;
  DAC_BLAS(ctx, blas.set_stream(hdl, bc->stream));
  const void *q = a->q;
  if (d->group_size > 1) {
    DAC_CHECK(ctx, dac_launch_expand_q(a, bp->gemm_q, bc->stream));
    q = bp->gemm_q;
  }
  const int rep = d->heads / d->kv_heads;
  const int rows = rep * d->seq_q, sk = d->seq_k, hd = d->head_dim;
  const size_t es = p->elem_size;
  const size_t pairs = (size_t)d->batch * d->kv_heads;
  const float one = 1.0f, zero = 0.0f;
  const cudaDataType dtc = d->dtype == DA_F16 ? CUDA_R_16F : CUDA_R_16BF;
  for (size_t p0 = 0; p0 < pairs; p0 += bp->gemm_chunk) {
    const int n = (int)(pairs - p0 < bp->gemm_chunk ? pairs - p0 : bp->gemm_chunk);
    const char *qp = (const char *)q + p0 * (size_t)rows * hd * es;
    const char *kp = (const char *)a->k + p0 * (size_t)sk * hd * es;
    const char *vp = (const char *)a->v + p0 * (size_t)sk * hd * es;
    char *op = (char *)a->o + p0 * (size_t)rows * hd * es;
    const long long sq_stride = (long long)rows * hd, kv_stride = (long long)sk * hd;
    const long long s_stride = (long long)rows * sk, o_stride = (long long)rows * hd;
    /* S^T (sk x rows, column-major) = K^T(op T on d x sk) * Q^T (d x rows) */
    if (d->dtype == DA_F32) {
      DAC_BLAS(ctx, blas.sgemm_sb(hdl, CUBLAS_OP_T, CUBLAS_OP_N, sk, rows, hd, &one,
                                  (const float *)kp, hd, kv_stride, (const float *)qp, hd,
                                  sq_stride, &zero, (float *)bp->gemm_s, sk, s_stride, n));
    } else {
      DAC_BLAS(ctx, blas.gemm_sb_ex(hdl, CUBLAS_OP_T, CUBLAS_OP_N, sk, rows, hd, &one, kp, dtc, hd,
                                    kv_stride, qp, dtc, hd, sq_stride, &zero, bp->gemm_s,
                                    CUDA_R_32F, sk, s_stride, n, CUBLAS_COMPUTE_32F,
                                    CUBLAS_GEMM_DEFAULT));
    }
    DAC_CHECK(ctx, dac_launch_softmax((const float *)bp->gemm_s, bp->gemm_p, d->dtype,
                                      (long long)n * rows, d->seq_q, sk, d->causal, a->scale,
                                      bc->stream));
    /* O^T (d x rows) = V^T (d x sk) * P^T (sk x rows) */
    if (d->dtype == DA_F32) {
      DAC_BLAS(ctx, blas.sgemm_sb(hdl, CUBLAS_OP_N, CUBLAS_OP_N, hd, rows, sk, &one,
                                  (const float *)vp, hd, kv_stride, (const float *)bp->gemm_p, sk,
                                  s_stride, &zero, (float *)op, hd, o_stride, n));
    } else {
      DAC_BLAS(ctx, blas.gemm_sb_ex(hdl, CUBLAS_OP_N, CUBLAS_OP_N, hd, rows, sk, &one, vp, dtc, hd,
                                    kv_stride, bp->gemm_p, dtc, sk, s_stride, &zero, op, dtc, hd,
                                    o_stride, n, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    }
  }
  return DA_SUCCESS;
}

static int dac_aligned16(const void *x) { return ((uintptr_t)x & 15u) == 0; }

static void dac_ext_args(const da_plan *p, const da_call *c, dac_args *a);

/* DA_STRATEGY_PROJECTION (SPEC 1c), forward: Q and K projected into the
 * plan's pq and pk (dac_launch_proj_mma on tensor cores where the
 * projections are stored in the dtype, f16/bf16 head_dim 64/128 with rank
 * 16, 32, 64 or 128; else dac_launch_proj, SIMT), then the EXT attention kernel with
 * the logits over the rank: the tensor-core one where the plan allows it
 * (proj_mma) and V's and O's rows are 16-byte aligned (pointers and
 * strides), the projections then stored in the dtype; else SIMT, f32. On
 * sm_90a plans with proj_wg run the warpgroup-MMA kernel's pre-projected
 * mode instead when V and O start 16-byte aligned (TMA's rule). */
static da_status dac_attention_proj(const da_plan *p, const da_call *c) {
  da_context *ctx = p->ctx;
  dac_ctx *bc = DAC_BC(ctx);
  dac_plan *bp = (dac_plan *)p->bplan;
  const da_attn_desc *d = &p->d;
  const da_attn_ext *x = &p->x;
  const size_t es = p->elem_size;
  DAC_SETDEV(ctx);
  dac_args a;
  dac_ext_args(p, c, &a);
  const int wg = bp->proj_wg && dac_aligned16(a.v) && dac_aligned16(a.o);
  int mma = bp->proj_mma && dac_aligned16(a.v) && dac_aligned16(a.o);
  for (int i = 0; i < 3 && mma; i++)
    mma = (unsigned long long)x->v_stride[i] * es % 16 == 0 &&
          (unsigned long long)x->o_stride[i] * es % 16 == 0;
  const da_dtype pdt = wg || mma ? d->dtype : DA_F32;
  a.pr = x->rank;
  a.qs = bp->pq;
  a.qs_ld = x->rank;
  a.kp = bp->pk;
  if (pdt != DA_F32 && dac_mma_proj_supported(pdt, d->head_dim, x->rank)) {
    DAC_CHECK(ctx, dac_launch_proj_mma(&a, bp->pj, 0, bp->pq, bc->stream));
    DAC_CHECK(ctx, dac_launch_proj_mma(&a, bp->pj, 1, bp->pk, bc->stream));
  } else {
    DAC_CHECK(ctx, dac_launch_proj(&a, bp->pj, 0, bp->pq, pdt, bc->stream));
    DAC_CHECK(ctx, dac_launch_proj(&a, bp->pj, 1, bp->pk, pdt, bc->stream));
  }
  if (wg)
    DAC_CHECK(ctx, dac_launch_wg_proj(&a, bc->stream));
  else if (mma)
    DAC_CHECK(ctx, dac_launch_mma_proj(&a, bc->stream));
  else
    DAC_CHECK(ctx, dac_launch_simt_ext(&a, bc->stream));
  return DA_SUCCESS;
}

/* A dense call (or one whose only da_attn_ext option is the LSE, into lse,
 * which only the warpgroup-MMA kernel is handed: dac_attention_ext sends
 * such calls here only where that kernel runs them) */
static da_status dac_attention(const da_plan *p, void *q, void *k, void *v, void *o, float *lse) {
  da_context *ctx = p->ctx;
  dac_ctx *bc = DAC_BC(ctx);
  dac_plan *bp = (dac_plan *)p->bplan;
  const da_attn_desc *d = &p->d;
  if (!bp) return da_set_error(ctx, DA_ERR_INVALID_ARG, "CUDA: plan was not prepared");
  if (p->x.strategy == DA_STRATEGY_PROJECTION) {
    da_call c;
    memset(&c, 0, sizeof c);
    c.q = q, c.k = k, c.v = v, c.o = o;
    return dac_attention_proj(p, &c);
  }
  DAC_SETDEV(ctx);
  dac_args a;
  dac_fill_args(p, &a, q, k, v, o);
  if (bp->dec && dac_dec_aligned(p, k, v)) {
    /* the decode kernels read through strides: the plan's dense ones */
    const da_attn_ext *x = &p->x;
    memcpy(a.qst, x->q_stride, sizeof a.qst);
    memcpy(a.kst, x->k_stride, sizeof a.kst);
    memcpy(a.vst, x->v_stride, sizeof a.vst);
    memcpy(a.ost, x->o_stride, sizeof a.ost);
    a.wl = x->window_left;
    a.wr = x->window_right;
    DAC_CHECK(ctx, dac_dec_launch(p, bp, &a, bc->stream));
    return DA_SUCCESS;
  }
  const int G = d->group_size;
  const int mma = bp->use_mma && dac_aligned16(q) && dac_aligned16(k) && dac_aligned16(v) &&
                  dac_aligned16(o);
  if (G > 1) {
    const int gemm = d->algo == DA_ALGO_GEMM;
    /* the fused Q: f32 rows of ng on the SIMT path, dtype rows padded to 16
     * on the tensor-core path, none for GEMM (which expands Q instead) */
    a.qs_ld = mma ? bp->qs_ld : p->ng;
    DAC_CHECK(ctx, dac_launch_hash(q, d->dtype, d->batch, d->heads, d->seq_q, d->head_dim,
                                   bp->proj, d->hash_bits, d->hash_block, G, d->fusion, bp->perm,
                                   bp->wts, gemm ? NULL : bp->qs, mma ? bp->qs_dtype : DA_F32,
                                   a.qs_ld, p->ng, bc->stream));
  }
  if (d->algo == DA_ALGO_GEMM) return dac_gemm(p, &a);
  if (mma && bp->use_wg) {
    a.kt = bp->kt;
    a.kt_ld = bp->kt_ld;
    a.lse = lse;
    DAC_CHECK(ctx, dac_launch_wg(&a, bc->stream));
  } else if (mma)
    DAC_CHECK(ctx, dac_launch_mma(&a, bp->br, bc->stream));
  else
    DAC_CHECK(ctx, dac_launch_simt(&a, bc->stream));
  return DA_SUCCESS;
}

static da_status dac_attention_dense(const da_plan *p, void *q, void *k, void *v, void *o) {
  return dac_attention(p, q, k, v, o, NULL);
}

/* Whether every stride of the four tensors, in bytes, is a multiple of 16
 * (the mma.sync kernel moves 16-byte row pieces with cp.async). */
static int dac_strides16(const da_attn_ext *x, size_t es) {
  const long long *st[4] = {x->q_stride, x->k_stride, x->v_stride, x->o_stride};
  for (int t = 0; t < 4; t++)
    for (int i = 0; i < 3; i++)
      if ((unsigned long long)st[t][i] * es % 16 != 0) return 0;
  return 1;
}

/* attention_ext: a plan with da_attn_ext options runs the EXT
 * instantiations of the fused kernels (mma.sync where its dtype, head_dim,
 * G and the 16-byte alignment of every row allow, else SIMT), which read
 * the lengths from device memory and clamp them (SPEC 1, "Layouts and
 * lengths"); a plan without them, the dense path at the given offsets. */
static da_status dac_attention_ext(const da_plan *p, const da_call *c) {
  da_context *ctx = p->ctx;
  dac_ctx *bc = DAC_BC(ctx);
  dac_plan *bp = (dac_plan *)p->bplan;
  const da_attn_desc *d = &p->d;
  const da_attn_ext *x = &p->x;
  const size_t es = p->elem_size;
  if (!bp) return da_set_error(ctx, DA_ERR_INVALID_ARG, "CUDA: plan was not prepared");
  if (x->strategy == DA_STRATEGY_PROJECTION) return dac_attention_proj(p, c);
  char *q = (char *)c->q + c->q_off * es, *k = (char *)c->k + c->k_off * es;
  char *v = (char *)c->v + c->v_off * es, *o = (char *)c->o + c->o_off * es;
  if (!p->ext_used) return dac_attention(p, q, k, v, o, NULL);
  /* a plan whose only option is the LSE (use_wg says so), on the
   * warpgroup-MMA kernel where it runs the call: not a decode call, every
   * pointer 16-byte aligned */
  if (bp->use_wg && !(bp->dec && dac_dec_aligned(p, k, v)) && dac_aligned16(q) && dac_aligned16(k) &&
      dac_aligned16(v) && dac_aligned16(o))
    return dac_attention(p, q, k, v, o, x->lse && c->lse ? (float *)c->lse + c->lse_off : NULL);
  if (d->algo == DA_ALGO_GEMM) /* plan_prepare refused these */
    return da_set_error(ctx, DA_ERR_UNSUPPORTED, "CUDA: DA_ALGO_GEMM has no da_attn_ext options");
  DAC_SETDEV(ctx);
  dac_args a;
  dac_ext_args(p, c, &a);
  if (bp->dec && dac_dec_aligned(p, k, v)) {
    DAC_CHECK(ctx, dac_dec_launch(p, bp, &a, bc->stream));
    return DA_SUCCESS;
  }
  const int G = d->group_size;
  const int mma = bp->use_mma && dac_aligned16(q) && dac_aligned16(k) && dac_aligned16(v) &&
                  dac_aligned16(o) && dac_strides16(x, es);
  if (G > 1) {
    /* the hash reads Q through its strides, tiles per sequence (packed:
     * from each sequence's first row); the fused Q it writes is dense,
     * [batch][heads][seq_q], each sequence's rows from 0 */
    dac_qlayout ql;
    ql.sb = x->q_stride[0];
    ql.sh = x->q_stride[1];
    ql.sr = x->q_stride[2];
    ql.cu_q = a.cu_q;
    ql.rows_q = a.rows_q;
    a.qs_ld = mma ? bp->qs_ld : p->ng;
    DAC_CHECK(ctx, dac_launch_hash_ext(q, &ql, d->dtype, d->batch, d->heads, d->seq_q,
                                       d->head_dim, bp->proj, d->hash_bits, d->hash_block, G,
                                       d->fusion, bp->perm, bp->wts, bp->qs,
                                       mma ? bp->qs_dtype : DA_F32, a.qs_ld, p->ng, bc->stream));
  }
  if (mma)
    DAC_CHECK(ctx, dac_launch_mma_ext(&a, bp->br, bc->stream));
  else
    DAC_CHECK(ctx, dac_launch_simt_ext(&a, bc->stream));
  return DA_SUCCESS;
}

/* The kernel arguments of an attention_ext call: the call's pointers at
 * their offsets, the plan's strides and window, the call's lengths and
 * LSE. */
static void dac_ext_args(const da_plan *p, const da_call *c, dac_args *ap) {
  const da_attn_ext *x = &p->x;
  const size_t es = p->elem_size;
  char *q = (char *)c->q + c->q_off * es, *k = (char *)c->k + c->k_off * es;
  char *v = (char *)c->v + c->v_off * es, *o = (char *)c->o + c->o_off * es;
  dac_args &a = *ap;
  dac_fill_args(p, &a, q, k, v, o);
  memcpy(a.qst, x->q_stride, sizeof a.qst);
  memcpy(a.kst, x->k_stride, sizeof a.kst);
  memcpy(a.vst, x->v_stride, sizeof a.vst);
  memcpy(a.ost, x->o_stride, sizeof a.ost);
  a.lens = (int)x->seqlens;
  a.seqlens_k = x->seqlens == DA_SEQLENS_KV ? (const int *)c->seqlens_k : NULL;
  if (x->seqlens == DA_SEQLENS_PACKED) {
    a.cu_q = (const int *)c->cu_q;
    a.cu_k = (const int *)c->cu_k;
    a.rows_q = c->rows_q > (size_t)INT64_MAX ? INT64_MAX : (long long)c->rows_q;
    a.rows_k = c->rows_k > (size_t)INT64_MAX ? INT64_MAX : (long long)c->rows_k;
  }
  a.wl = x->window_left;
  a.wr = x->window_right;
  a.lse = x->lse && c->lse ? (float *)c->lse + c->lse_off : NULL;
}

/* ---------------- backward (SPEC 1b; cuda_bwd.cuh) ---------------- */

/* The main kernel: the tensor-core one where the dtype (f16/bf16), the
 * head_dim (64, 128), the GPU (sm_80 on) and the alignment of every row
 * (16 bytes: the call's pointers at their offsets and the strides) allow,
 * else SIMT; on sm_90 (built for sm_90a) the Hopper warpgroup-MMA kernel
 * (cuda_bwd_wgmma.cu) takes the tensor-core calls, unless one of the
 * mma.sync kernel's settings below is given. DISTRATTN_CUDA_BWD="simt"
 * forces the SIMT kernel, "mma" demands the mma.sync one and "wgmma" the
 * Hopper one (a call the kernel cannot run is refused);
 * DISTRATTN_CUDA_BWD_KEYS="64" gives the tensor-core kernel blocks of 64
 * keys (4 warps) instead of 128 (8 warps), for measurements.
 * DISTRATTN_CUDA_BWD_DQ picks the tensor-core arrangement: "atomic" (the
 * default: one kernel, dQ summed into E with f32 atomics) or "split" (a
 * dK/dV kernel and a dQ kernel, cuda_bwd_split.cuh: no atomics, no zeroed
 * E, and for G = 1 no E and no step 4 at all); the SIMT kernel ignores it.
 * DISTRATTN_CUDA_BWD_DQ_ROWS="64" gives split's dQ kernel blocks of 64
 * query rows (4 warps) instead of 128 (8 warps), for measurements. All
 * four are the plan's overrides, parsed by the core (p->ov). */
static da_status dac_attention_bwd(const da_plan *p, const da_bwd_call *c) {
  da_context *ctx = p->ctx;
  dac_ctx *bc = DAC_BC(ctx);
  dac_plan *bp = (dac_plan *)p->bplan;
  const da_attn_desc *d = &p->d;
  const da_attn_ext *x = &p->x;
  const size_t es = p->elem_size;
  if (!bp) return da_set_error(ctx, DA_ERR_INVALID_ARG, "CUDA: plan was not prepared");
  if (x->strategy == DA_STRATEGY_PROJECTION && !bp->pm) /* dac_proj_bwd_plan made it */
    return da_set_error(ctx, DA_ERR_INVALID_ARG,
                        "CUDA: the projection plan has no products A_h B_h^T on the device");
  if (x->seqlens != DA_SEQLENS_NONE) /* the core refuses these before */
    return da_set_error(ctx, DA_ERR_UNSUPPORTED,
                        "CUDA: the backward pass does not support ext.seqlens (per-sequence "
                        "lengths)");
  if (d->head_dim > 256)
    return da_set_error(ctx, DA_ERR_UNSUPPORTED,
                        "CUDA: the backward pass takes head_dim 1..256, not %d (the cpu backend "
                        "takes any)",
                        d->head_dim);
  /* the plan's overrides, parsed by the core: -1 unset, 0 simt, 1 mma; keys 0, 64, 128;
   * dq -1 unset, 0 atomic, 1 split; dq rows 0, 64, 128 (as env_word indices below) */
  const int env = p->ov.cuda_bwd;
  const int env_keys = p->ov.cuda_bwd_keys == 64 ? 0 : p->ov.cuda_bwd_keys == 128 ? 1 : -1;
  const int env_dq = p->ov.cuda_bwd_dq;
  const int env_rows = p->ov.cuda_bwd_dq_rows == 64 ? 0 : p->ov.cuda_bwd_dq_rows == 128 ? 1 : -1;
  da_status st;
  DAC_SETDEV(ctx);
  const int G = d->group_size > 1 ? d->group_size : 1;
  /* the projection strategy (SPEC 1c): the exact pass on Qx = Q M_h */
  const int proj = x->strategy == DA_STRATEGY_PROJECTION;
  dac_bwd_args a;
  memset(&a, 0, sizeof a);
  a.q = (const char *)c->q + c->q_off * es;
  a.k = (const char *)c->k + c->k_off * es;
  a.v = (const char *)c->v + c->v_off * es;
  a.o = (const char *)c->o + c->o_off * es;
  a.dout = (const char *)c->dout + c->dout_off * es;
  a.lse = (const float *)c->lse + c->lse_off;
  a.dq = (char *)c->dq + c->dq_off * es;
  a.dk = (char *)c->dk + c->dk_off * es;
  a.dv = (char *)c->dv + c->dv_off * es;
  memcpy(a.qst, x->q_stride, sizeof a.qst);
  memcpy(a.kst, x->k_stride, sizeof a.kst);
  memcpy(a.vst, x->v_stride, sizeof a.vst);
  memcpy(a.ost, x->o_stride, sizeof a.ost);
  a.batch = d->batch, a.heads = d->heads, a.kv_heads = d->kv_heads;
  a.seq_q = d->seq_q, a.seq_k = d->seq_k, a.d = d->head_dim;
  a.G = G, a.hash_block = d->hash_block, a.n_tiles = p->n_tiles;
  a.wl = x->window_left, a.wr = x->window_right;
  a.sc_log2 = da_log2_mul(d->scale); /* SPEC 1, "Scale"; as lib/cpu_bwd.c */
  a.sc = (float)((double)a.sc_log2 / DA_LOG2E);
  a.dt = d->dtype;
  a.bc = env_keys == 0 ? 64 : 128; /* the tensor-core kernel: 8 warps of 16 keys unless asked */
  a.dq_rows = env_rows == 0 ? 64 : 128; /* split's dQ kernel: 8 warps of 16 rows unless asked */
  if (d->batch <= 0 || d->heads <= 0 || d->seq_q <= 0 || d->seq_k <= 0) return DA_SUCCESS;

  /* 16-byte rows: the tensor-core kernel moves 16-byte pieces (cp.async)
   * and writes dK, dV in 4-byte pairs (split: dQ too, else the atomic
   * arrangement runs) */
  const void *ptrs[6] = {a.q, a.k, a.v, a.dout, a.dk, a.dv};
  int aligned = dac_strides16(x, es);
  for (int i = 0; i < 6; i++) aligned = aligned && dac_aligned16(ptrs[i]);
  const int mma_ok = bc->cc_major >= 8 && dac_bwd_mma_supported(d->dtype, d->head_dim);
  const int wg_ok = mma_ok && dac_bwd_wg_supported(bc->cc_major, bc->cc_minor, d->dtype, d->head_dim);
  if ((env == 1 && !(mma_ok && aligned)) || (env == 2 && !(wg_ok && aligned)))
    return da_set_error(ctx, DA_ERR_UNSUPPORTED,
                        "DISTRATTN_CUDA_BWD=\"%s\": the %s backward kernel cannot run this call (it "
                        "needs %s, f16 or bf16, head_dim 64 or 128 and 16-byte aligned rows; this is "
                        "sm_%d%d, dtype %d, head_dim %d, rows %s)",
                        env == 1 ? "mma" : "wgmma", env == 1 ? "tensor-core (mma.sync)" : "Hopper",
                        env == 1 ? "sm_80 or later" : "sm_90 and a build for sm_90a", bc->cc_major,
                        bc->cc_minor, (int)d->dtype, d->head_dim, aligned ? "aligned" : "not aligned");
  const int mma = mma_ok && aligned && env != 0;
  /* the Hopper kernel where it runs, unless the mma.sync kernel (or one of
   * its arrangements or block sizes) is asked for */
  const int wg = mma && wg_ok &&
                 (env == 2 || (env < 0 && env_dq != 1 && env_keys < 0 && env_rows < 0));
  const int split = mma && !wg && env_dq == 1 && dac_aligned16(a.dq);

  /* the call's workspace, stream-ordered: E [bh][seq_q][d] f32 (not for
   * split with G = 1 and exact logits), D [bh][seq_q] f32 and, for G > 1 and
   * the projection strategy, the expanded Q [bh][seq_q][d] (the dtype on
   * the tensor-core path, else f32) */
  const int need_e = !(split && G == 1 && !proj);
  size_t n_rows, n_e, e_bytes, d_bytes, x_bytes = 0, total;
  {
    const size_t f[] = {(size_t)d->batch, (size_t)d->heads, (size_t)d->seq_q};
    if ((st = dac_size(ctx, "the backward pass's row sums", &n_rows, 3, f))) return st;
    const size_t f2[] = {n_rows, (size_t)d->head_dim};
    if ((st = dac_size(ctx, "the backward pass's dQ accumulator", &n_e, 2, f2))) return st;
  }
  if (!da_mul_size(need_e ? n_e : 0, sizeof(float), &e_bytes) || !da_mul_size(n_rows, sizeof(float), &d_bytes) ||
      ((G > 1 || proj) && !da_mul_size(n_e, mma ? es : sizeof(float), &x_bytes)) ||
      !da_add_size(e_bytes, (d_bytes + 255) / 256 * 256, &total) || !da_add_size(total, x_bytes, &total))
    return da_set_error(ctx, DA_ERR_DEVICE_MEMORY,
                        "CUDA: the size of the backward pass's workspace overflows size_t");
  cudaStream_t s = bc->stream;
  char *ws = NULL;
  cudaError_t e = cudaMallocAsync((void **)&ws, total, s);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    return da_set_error(ctx, dac_status_of(e),
                        "CUDA: cudaMallocAsync of %zu bytes for the backward pass's workspace "
                        "failed: %s",
                        total, cudaGetErrorString(e));
  }
  a.dacc = (float *)ws;
  a.dsum = (float *)(ws + e_bytes);
  void *qx = G > 1 || proj ? ws + e_bytes + (d_bytes + 255) / 256 * 256 : NULL;
  const char *what = "";
#define DAC_BWD_STEP(call, name)                                                                   \
  do {                                                                                             \
    if (e == cudaSuccess) {                                                                        \
      e = (call);                                                                                  \
      what = (name);                                                                               \
    }                                                                                              \
  } while (0)
  if (G > 1) {
    /* the forward's groupings (its hash kernel, Q read through its
     * strides), then the expanded Q */
    dac_qlayout ql;
    memset(&ql, 0, sizeof ql);
    ql.sb = x->q_stride[0];
    ql.sh = x->q_stride[1];
    ql.sr = x->q_stride[2];
    DAC_BWD_STEP(dac_launch_hash_ext(a.q, &ql, d->dtype, d->batch, d->heads, d->seq_q,
                                     d->head_dim, bp->proj, d->hash_bits, d->hash_block, G,
                                     d->fusion, bp->perm, bp->wts, NULL, DA_F32, 0, p->ng, s),
                 "the hash kernel (the forward's groupings)");
    a.perm = bp->perm;
    a.wts = bp->wts;
    const da_dtype qx_dt = mma ? d->dtype : DA_F32;
    DAC_BWD_STEP(dac_launch_bwd_qx(&a, qx, qx_dt, s), "the expanded Q kernel");
    a.qx = qx;
    a.qx_dt = qx_dt;
  } else if (proj) {
    /* Qx = Q M_h; step 4 then gives dQ = s E M_h^T */
    a.pm = bp->pm;
    const da_dtype qx_dt = mma ? d->dtype : DA_F32;
    DAC_BWD_STEP(dac_launch_bwd_qproj(&a, qx, qx_dt, s), "the projected Q kernel (Q A_h B_h^T)");
    a.qx = qx;
    a.qx_dt = qx_dt;
  }
  if (!split) /* split writes every row of E once */
    DAC_BWD_STEP(cudaMemsetAsync(a.dacc, 0, e_bytes, s), "cudaMemsetAsync of the dQ accumulator");
  else if (!need_e)
    a.dacc = NULL;
  DAC_BWD_STEP(dac_launch_bwd_dsum(&a, s), "the row-sum kernel (D = rowsum(dO o O))");
  if (split)
    DAC_BWD_STEP(d->dtype == DA_F16 ? dac_launch_bwd_split_f16(&a, s) : dac_launch_bwd_split_bf16(&a, s),
                 "the split tensor-core backward kernels (dK/dV, dQ)");
  else if (wg)
    DAC_BWD_STEP(dac_launch_bwd_wg(&a, s), "the Hopper (warpgroup-MMA) backward kernel");
  else if (mma)
    DAC_BWD_STEP(d->dtype == DA_F16 ? dac_launch_bwd_mma_f16(&a, s) : dac_launch_bwd_mma_bf16(&a, s),
                 "the tensor-core backward kernel");
  else
    DAC_BWD_STEP(dac_launch_bwd_simt(&a, s), "the SIMT backward kernel");
  if (need_e) DAC_BWD_STEP(dac_launch_bwd_dq(&a, s), "the dQ kernel");
#undef DAC_BWD_STEP
  const cudaError_t ef = cudaFreeAsync(ws, s);
  if (e != cudaSuccess) return dac_fail(ctx, e, what);
  if (ef != cudaSuccess) return dac_fail(ctx, ef, "cudaFreeAsync of the backward pass's workspace");
  return DA_SUCCESS;
}

static da_status dac_groups(const da_plan *p, void *q, void *perm) {
  da_context *ctx = p->ctx;
  dac_ctx *bc = DAC_BC(ctx);
  dac_plan *bp = (dac_plan *)p->bplan;
  const da_attn_desc *d = &p->d;
  if (!bp) return da_set_error(ctx, DA_ERR_INVALID_ARG, "CUDA: plan was not prepared");
  DAC_SETDEV(ctx);
  DAC_CHECK(ctx, dac_launch_hash(q, d->dtype, d->batch, d->heads, d->seq_q, d->head_dim, bp->proj,
                                 d->hash_bits, d->hash_block, d->group_size, d->fusion,
                                 (int *)perm, NULL, NULL, DA_F32, 0, p->ng, bc->stream));
  return DA_SUCCESS;
}

static const da_backend_iface dac_iface = {
    DA_BACKEND_IFACE_VERSION,
    DA_BACKEND_CUDA,
    "cuda",
    dac_init,
    NULL,
    dac_device_info,
    dac_ctx_create,
    dac_ctx_destroy,
    dac_synchronize,
    dac_ctx_wrap,
    dac_buf_alloc,
    dac_buf_free,
    dac_buf_write,
    dac_buf_read,
    dac_buf_wrap,
    NULL, /* buf_unwrap: a wrap takes nothing */
    dac_buf_range,
    dac_plan_prepare,
    dac_plan_release,
    dac_attention_dense,
    dac_groups,
    dac_attention_ext,
    dac_attention_bwd,
    dac_plan_kernel,
};

extern "C" __attribute__((visibility("default"))) const da_backend_iface *
distrattn_backend_entry(void) {
  return &dac_iface;
}
