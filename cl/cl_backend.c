/* SPDX-License-Identifier: Apache-2.0 */
/* OpenCL backend module: devices, contexts, buffers, the program cache and
 * the interface the core loads with dlopen. */
#include <stdlib.h>
#include <string.h>

#include "cl_internal.h"
#include "common_cl.h"
#include "hash_cl.h"
#include "attn_cl.h"
#include "aux_cl.h"
#include "decode_cl.h"
#include "bwd_cl.h"

typedef struct {
  cl_platform_id plat;
  cl_device_id dev;
  da_device_info info;
  int rank;
} da_cl_dev;

static da_cl_dev *g_devs;
static int g_ndev;

/* A string property of a device, truncated to fit; 0 when unavailable. */
static int info_string(cl_device_id dev, cl_device_info what, char *out, size_t len) {
  size_t n = 0;
  out[0] = 0;
  if (clGetDeviceInfo(dev, what, 0, NULL, &n) != CL_SUCCESS || n == 0) return 0;
  char *tmp = malloc(n + 1);
  if (!tmp) return 0;
  int ok = clGetDeviceInfo(dev, what, n, tmp, NULL) == CL_SUCCESS;
  if (ok) {
    tmp[n] = 0;
    snprintf(out, len, "%s", tmp);
  }
  free(tmp);
  return ok;
}

static void fill_info(cl_device_id dev, int index, da_device_info *info, int *rank) {
  memset(info, 0, sizeof *info);
  info->backend = DA_BACKEND_OPENCL;
  info->index = index;
  if (!info_string(dev, CL_DEVICE_NAME, info->name, sizeof info->name))
    snprintf(info->name, sizeof info->name, "OpenCL device %d", index);
  info_string(dev, CL_DEVICE_VENDOR, info->vendor, sizeof info->vendor);
  cl_ulong mem = 0;
  if (clGetDeviceInfo(dev, CL_DEVICE_GLOBAL_MEM_SIZE, sizeof mem, &mem, NULL) == CL_SUCCESS)
    info->global_mem = (unsigned long long)mem;
  size_t n = 0;
  if (clGetDeviceInfo(dev, CL_DEVICE_EXTENSIONS, 0, NULL, &n) == CL_SUCCESS && n > 0) {
    char *ext = malloc(n + 1);
    if (ext) {
      if (clGetDeviceInfo(dev, CL_DEVICE_EXTENSIONS, n, ext, NULL) == CL_SUCCESS) {
        ext[n] = 0;
        info->has_fp16 = strstr(ext, "cl_khr_fp16") != NULL;
      }
      free(ext);
    }
  }
  info->has_bf16 = 1; /* stored as bits, converted to f32 in the kernels */
  cl_device_type type = 0;
  clGetDeviceInfo(dev, CL_DEVICE_TYPE, sizeof type, &type, NULL);
  if (rank) {
    /* A device that says it is a CPU (PoCL; Oclgrind says CPU|GPU|ACCELERATOR)
     * is not ranked as a GPU; a simulator comes after the CPU backend. */
    if (strstr(info->name, "Oclgrind") || strstr(info->vendor, "Oclgrind"))
      *rank = DA_RANK_SIMULATOR;
    else if ((type & (CL_DEVICE_TYPE_GPU | CL_DEVICE_TYPE_ACCELERATOR)) &&
             !(type & CL_DEVICE_TYPE_CPU))
      *rank = DA_RANK_GPU;
    else
      *rank = DA_RANK_CPU_OPENCL;
  }
}

static void cl_shutdown(void) {
  free(g_devs);
  g_devs = NULL;
  g_ndev = 0;
}

static int cl_init(char *why, size_t why_len) {
  cl_shutdown();
  cl_uint np = 0;
  cl_int e = clGetPlatformIDs(0, NULL, &np);
  if (e != CL_SUCCESS || np == 0) {
    snprintf(why, why_len, "no OpenCL platform (clGetPlatformIDs: %s (%d)); is an ICD installed?",
             da_cl_errname(e), (int)e);
    return DA_ERR_NO_DEVICE;
  }
  cl_platform_id *plats = malloc(np * sizeof *plats);
  if (!plats) {
    snprintf(why, why_len, "out of host memory");
    return DA_ERR_HOST_MEMORY;
  }
  e = clGetPlatformIDs(np, plats, NULL);
  if (e != CL_SUCCESS) {
    free(plats);
    snprintf(why, why_len, "clGetPlatformIDs failed: %s (%d)", da_cl_errname(e), (int)e);
    return DA_ERR_BACKEND;
  }
  int total = 0, cap = 0;
  for (cl_uint pi = 0; pi < np; pi++) {
    cl_uint nd = 0;
    if (clGetDeviceIDs(plats[pi], CL_DEVICE_TYPE_ALL, 0, NULL, &nd) != CL_SUCCESS || nd == 0)
      continue;
    cl_device_id *devs = malloc(nd * sizeof *devs);
    if (!devs) continue;
    if (clGetDeviceIDs(plats[pi], CL_DEVICE_TYPE_ALL, nd, devs, NULL) == CL_SUCCESS) {
      if (total + (int)nd > cap) {
        int ncap = total + (int)nd;
        da_cl_dev *nv = realloc(g_devs, (size_t)ncap * sizeof *nv);
        if (!nv) {
          free(devs);
          continue;
        }
        g_devs = nv;
        cap = ncap;
      }
      for (cl_uint di = 0; di < nd; di++) {
        da_cl_dev *d = &g_devs[total];
        d->plat = plats[pi];
        d->dev = devs[di];
        fill_info(devs[di], total, &d->info, &d->rank);
        total++;
      }
    }
    free(devs);
  }
  free(plats);
  g_ndev = total;
  if (total == 0) snprintf(why, why_len, "OpenCL platforms found, but no device");
  return total;
}

static da_status cl_dev_info(int index, da_device_info *out, int *rank) {
  if (index < 0 || index >= g_ndev) return DA_ERR_INVALID_ARG;
  *out = g_devs[index].info;
  if (rank) *rank = g_devs[index].rank;
  return DA_SUCCESS;
}

/* Device limits the kernels are sized by. */
static da_status query_caps(da_context *ctx, da_cl_ctx *bc) {
  cl_int e = clGetDeviceInfo(bc->dev, CL_DEVICE_MAX_MEM_ALLOC_SIZE, sizeof bc->max_alloc,
                             &bc->max_alloc, NULL);
  if (e != CL_SUCCESS) return da_cl_fail(ctx, e, "clGetDeviceInfo(CL_DEVICE_MAX_MEM_ALLOC_SIZE)");
  e = clGetDeviceInfo(bc->dev, CL_DEVICE_LOCAL_MEM_SIZE, sizeof bc->local_mem, &bc->local_mem,
                      NULL);
  if (e != CL_SUCCESS) return da_cl_fail(ctx, e, "clGetDeviceInfo(CL_DEVICE_LOCAL_MEM_SIZE)");
  e = clGetDeviceInfo(bc->dev, CL_DEVICE_MAX_WORK_GROUP_SIZE, sizeof bc->max_wg, &bc->max_wg,
                      NULL);
  if (e != CL_SUCCESS) return da_cl_fail(ctx, e, "clGetDeviceInfo(CL_DEVICE_MAX_WORK_GROUP_SIZE)");
  e = clGetDeviceInfo(bc->dev, CL_DEVICE_MAX_COMPUTE_UNITS, sizeof bc->cus, &bc->cus, NULL);
  if (e != CL_SUCCESS) return da_cl_fail(ctx, e, "clGetDeviceInfo(CL_DEVICE_MAX_COMPUTE_UNITS)");
  if (bc->cus < 1) bc->cus = 1;
  cl_device_type type = 0;
  e = clGetDeviceInfo(bc->dev, CL_DEVICE_TYPE, sizeof type, &type, NULL);
  if (e != CL_SUCCESS) return da_cl_fail(ctx, e, "clGetDeviceInfo(CL_DEVICE_TYPE)");
  cl_uint pw = 0;
  e = clGetDeviceInfo(bc->dev, CL_DEVICE_PREFERRED_VECTOR_WIDTH_FLOAT, sizeof pw, &pw, NULL);
  if (e != CL_SUCCESS)
    return da_cl_fail(ctx, e, "clGetDeviceInfo(CL_DEVICE_PREFERRED_VECTOR_WIDTH_FLOAT)");
  /* CPUs: the native SIMD width; GPUs vectorise across work-items, 4 keeps
   * the private arrays small. */
  bc->is_cpu = (type & CL_DEVICE_TYPE_CPU) != 0;
  bc->vw = (type & CL_DEVICE_TYPE_CPU) ? (pw >= 16 ? 16 : pw >= 8 ? 8 : 4) : 4;
  cl_device_fp_config fp = 0;
  e = clGetDeviceInfo(bc->dev, CL_DEVICE_SINGLE_FP_CONFIG, sizeof fp, &fp, NULL);
  if (e != CL_SUCCESS) return da_cl_fail(ctx, e, "clGetDeviceInfo(CL_DEVICE_SINGLE_FP_CONFIG)");
  bc->crsqrt = (fp & CL_FP_CORRECTLY_ROUNDED_DIVIDE_SQRT) != 0;
  return DA_SUCCESS;
}

static void bctx_free(da_cl_ctx *bc) {
  if (!bc) return;
  if (bc->q) clFinish(bc->q);
  while (bc->progs) {
    da_cl_prog *n = bc->progs->next;
    clReleaseProgram(bc->progs->prog);
    free(bc->progs->opts);
    free(bc->progs);
    bc->progs = n;
  }
  if (bc->q) clReleaseCommandQueue(bc->q);
  if (bc->cx) clReleaseContext(bc->cx);
  free(bc);
}

static da_status cl_ctx_create(da_context *ctx, int index, const da_overrides *ov, void **bctx,
                               da_device_info *info) {
  (void)ov; /* OpenCL's overrides are the plans' */
  if (index < 0 || index >= g_ndev)
    return da_set_error(ctx, DA_ERR_INVALID_ARG, "OpenCL: no device %d (%d devices)", index,
                        g_ndev);
  da_cl_ctx *bc = calloc(1, sizeof *bc);
  if (!bc) return da_set_error(ctx, DA_ERR_HOST_MEMORY, "OpenCL: out of host memory");
  bc->dev = g_devs[index].dev;
  cl_context_properties props[] = {CL_CONTEXT_PLATFORM, (cl_context_properties)g_devs[index].plat,
                                   0};
  cl_int e;
  bc->cx = clCreateContext(props, 1, &bc->dev, NULL, NULL, &e);
  if (e != CL_SUCCESS || !bc->cx) {
    bc->cx = NULL;
    bctx_free(bc);
    return da_cl_fail(ctx, e, "clCreateContext");
  }
  bc->q = clCreateCommandQueue(bc->cx, bc->dev, 0, &e);
  if (e != CL_SUCCESS || !bc->q) {
    bc->q = NULL;
    bctx_free(bc);
    return da_cl_fail(ctx, e, "clCreateCommandQueue");
  }
  da_status s = query_caps(ctx, bc);
  if (s != DA_SUCCESS) {
    bctx_free(bc);
    return s;
  }
  *bctx = bc;
  *info = g_devs[index].info;
  return DA_SUCCESS;
}

static da_status cl_ctx_wrap(da_context *ctx, void *native_queue, const da_overrides *ov,
                             void **bctx, int *index_out, da_device_info *info) {
  (void)ov;
  cl_command_queue q = (cl_command_queue)native_queue;
  if (!q) return da_set_error(ctx, DA_ERR_INVALID_ARG, "OpenCL: the queue to wrap is NULL");
  da_cl_ctx *bc = calloc(1, sizeof *bc);
  if (!bc) return da_set_error(ctx, DA_ERR_HOST_MEMORY, "OpenCL: out of host memory");
  cl_int e = clGetCommandQueueInfo(q, CL_QUEUE_CONTEXT, sizeof bc->cx, &bc->cx, NULL);
  if (e != CL_SUCCESS) {
    free(bc);
    return da_cl_fail(ctx, e, "clGetCommandQueueInfo(CL_QUEUE_CONTEXT)");
  }
  e = clGetCommandQueueInfo(q, CL_QUEUE_DEVICE, sizeof bc->dev, &bc->dev, NULL);
  if (e != CL_SUCCESS) {
    free(bc);
    return da_cl_fail(ctx, e, "clGetCommandQueueInfo(CL_QUEUE_DEVICE)");
  }
  cl_command_queue_properties qp = 0;
  e = clGetCommandQueueInfo(q, CL_QUEUE_PROPERTIES, sizeof qp, &qp, NULL);
  if (e != CL_SUCCESS) {
    free(bc);
    return da_cl_fail(ctx, e, "clGetCommandQueueInfo(CL_QUEUE_PROPERTIES)");
  }
  bc->ooo = (qp & CL_QUEUE_OUT_OF_ORDER_EXEC_MODE_ENABLE) != 0;
  e = clRetainContext(bc->cx);
  if (e != CL_SUCCESS) {
    free(bc);
    return da_cl_fail(ctx, e, "clRetainContext");
  }
  e = clRetainCommandQueue(q);
  if (e != CL_SUCCESS) {
    clReleaseContext(bc->cx);
    free(bc);
    return da_cl_fail(ctx, e, "clRetainCommandQueue");
  }
  bc->q = q;
  da_status s = query_caps(ctx, bc);
  if (s != DA_SUCCESS) {
    bctx_free(bc);
    return s;
  }
  int index = -1;
  for (int i = 0; i < g_ndev; i++)
    if (g_devs[i].dev == bc->dev) index = i;
  if (index >= 0) {
    *info = g_devs[index].info;
  } else {
    fill_info(bc->dev, index, info, NULL);
  }
  *bctx = bc;
  *index_out = index;
  return DA_SUCCESS;
}

static void cl_ctx_destroy(void *bctx) { bctx_free(bctx); }

static da_status cl_synchronize(da_context *ctx) {
  da_cl_ctx *bc = ctx->bctx;
  cl_int e = clFinish(bc->q);
  return e == CL_SUCCESS ? DA_SUCCESS : da_cl_fail(ctx, e, "clFinish");
}

da_status da_cl_order(da_context *ctx) {
  da_cl_ctx *bc = ctx->bctx;
  if (!bc->ooo) return DA_SUCCESS;
  cl_int e = clEnqueueBarrierWithWaitList(bc->q, 0, NULL, NULL);
  return e == CL_SUCCESS ? DA_SUCCESS : da_cl_fail(ctx, e, "clEnqueueBarrierWithWaitList");
}

static da_status cl_buf_alloc(da_context *ctx, size_t bytes, void **handle) {
  da_cl_ctx *bc = ctx->bctx;
  if (bytes == 0)
    return da_set_error(ctx, DA_ERR_INVALID_ARG, "OpenCL: a buffer of 0 bytes");
  if ((cl_ulong)bytes > bc->max_alloc)
    return da_set_error(ctx, DA_ERR_DEVICE_MEMORY,
                        "OpenCL: %zu bytes exceed the device's CL_DEVICE_MAX_MEM_ALLOC_SIZE (%llu)",
                        bytes, (unsigned long long)bc->max_alloc);
  cl_int e;
  cl_mem m = clCreateBuffer(bc->cx, CL_MEM_READ_WRITE, bytes, NULL, &e);
  if (e != CL_SUCCESS || !m) {
    if (e == CL_OUT_OF_RESOURCES || e == CL_MEM_OBJECT_ALLOCATION_FAILURE ||
        e == CL_INVALID_BUFFER_SIZE)
      return da_set_error(ctx, DA_ERR_DEVICE_MEMORY, "OpenCL: clCreateBuffer(%zu bytes) failed: %s (%d)",
                          bytes, da_cl_errname(e), (int)e);
    return da_cl_fail(ctx, e, "clCreateBuffer");
  }
  *handle = m;
  return DA_SUCCESS;
}

static void cl_buf_free(da_context *ctx, void *handle) {
  if (handle) clReleaseMemObject((cl_mem)handle);
}

static da_status cl_buf_write(da_context *ctx, void *handle, size_t off, const void *src, size_t n) {
  da_cl_ctx *bc = ctx->bctx;
  da_status s = da_cl_order(ctx);
  if (s != DA_SUCCESS) return s;
  cl_int e = clEnqueueWriteBuffer(bc->q, (cl_mem)handle, CL_TRUE, off, n, src, 0, NULL, NULL);
  return e == CL_SUCCESS ? DA_SUCCESS : da_cl_fail(ctx, e, "clEnqueueWriteBuffer");
}

static da_status cl_buf_read(da_context *ctx, void *handle, size_t off, void *dst, size_t n) {
  da_cl_ctx *bc = ctx->bctx;
  da_status s = da_cl_order(ctx);
  if (s != DA_SUCCESS) return s;
  cl_int e = clEnqueueReadBuffer(bc->q, (cl_mem)handle, CL_TRUE, off, n, dst, 0, NULL, NULL);
  return e == CL_SUCCESS ? DA_SUCCESS : da_cl_fail(ctx, e, "clEnqueueReadBuffer");
}

/* Where a cl_mem's bytes lie: memory made with CL_MEM_USE_HOST_PTR (or a
 * sub-buffer of such) is the caller's host memory, so two of them overlap
 * where their host ranges do (base NULL, offset = host address); any other
 * is a range of its root buffer (a sub-buffer's parent) at CL_MEM_OFFSET. */
static da_status mem_range(da_context *ctx, cl_mem m, da_mem_range *r) {
  cl_mem parent = NULL;
  size_t off = 0;
  cl_mem_flags fl = 0;
  void *host = NULL;
  cl_int e = clGetMemObjectInfo(m, CL_MEM_ASSOCIATED_MEMOBJECT, sizeof parent, &parent, NULL);
  if (e != CL_SUCCESS) return da_cl_fail(ctx, e, "clGetMemObjectInfo(CL_MEM_ASSOCIATED_MEMOBJECT)");
  e = clGetMemObjectInfo(m, CL_MEM_OFFSET, sizeof off, &off, NULL);
  if (e != CL_SUCCESS) return da_cl_fail(ctx, e, "clGetMemObjectInfo(CL_MEM_OFFSET)");
  e = clGetMemObjectInfo(parent ? parent : m, CL_MEM_FLAGS, sizeof fl, &fl, NULL);
  if (e != CL_SUCCESS) return da_cl_fail(ctx, e, "clGetMemObjectInfo(CL_MEM_FLAGS)");
  if (fl & CL_MEM_USE_HOST_PTR) {
    e = clGetMemObjectInfo(m, CL_MEM_HOST_PTR, sizeof host, &host, NULL);
    if (e != CL_SUCCESS) return da_cl_fail(ctx, e, "clGetMemObjectInfo(CL_MEM_HOST_PTR)");
  }
  if (host) {
    r->base = NULL;
    r->offset = (uintptr_t)host;
  } else {
    r->base = parent ? parent : m;
    r->offset = parent ? off : 0;
  }
  return DA_SUCCESS;
}

/* The caller's cl_mem: one reference of ours, given back by cl_buf_unwrap. */
static da_status cl_buf_wrap(da_context *ctx, void *native, size_t bytes, void **handle,
                             da_mem_range *range) {
  da_cl_ctx *bc = ctx->bctx;
  cl_mem m = (cl_mem)native;
  if (!m) return da_set_error(ctx, DA_ERR_INVALID_ARG, "OpenCL: the cl_mem to wrap is NULL");
  size_t size = 0;
  cl_int e = clGetMemObjectInfo(m, CL_MEM_SIZE, sizeof size, &size, NULL);
  if (e != CL_SUCCESS) return da_cl_fail(ctx, e, "clGetMemObjectInfo(CL_MEM_SIZE)");
  if (size < bytes)
    return da_set_error(ctx, DA_ERR_INVALID_ARG,
                        "OpenCL: the cl_mem holds %zu bytes, fewer than the %zu asked for", size,
                        bytes);
  cl_context mc = NULL;
  e = clGetMemObjectInfo(m, CL_MEM_CONTEXT, sizeof mc, &mc, NULL);
  if (e != CL_SUCCESS) return da_cl_fail(ctx, e, "clGetMemObjectInfo(CL_MEM_CONTEXT)");
  if (mc != bc->cx)
    return da_set_error(ctx, DA_ERR_INVALID_ARG,
                        "OpenCL: the cl_mem belongs to another cl_context than the queue's");
  da_status s = mem_range(ctx, m, range);
  if (s != DA_SUCCESS) return s;
  e = clRetainMemObject(m);
  if (e != CL_SUCCESS) return da_cl_fail(ctx, e, "clRetainMemObject");
  *handle = m;
  return DA_SUCCESS;
}

static void cl_buf_unwrap(da_context *ctx, void *handle) {
  if (handle) clReleaseMemObject((cl_mem)handle); /* the reference cl_buf_wrap took */
}

static const char *const src_names[] = {"hash.cl", "attn.cl", "aux.cl", "decode.cl", "bwd.cl"};

/* DISTRATTN_CL_EXTRA_BUILD_OPTIONS: compiler options (-cl-*, -w, ...) for
 * one device. Options that change the kernels' source are refused: -D and
 * -U (the kernels' macros are the plan's: -DCAUSAL=1 would make a
 * non-causal plan causal) and -I (another header could replace ours). */
static da_status check_extra_options(da_context *ctx, const char *extra) {
  for (const char *p = extra; *p;) {
    while (*p == ' ' || *p == '\t' || *p == '\n') p++;
    const char *t = p;
    while (*p && *p != ' ' && *p != '\t' && *p != '\n') p++;
    if (p - t >= 2 && t[0] == '-' && (t[1] == 'D' || t[1] == 'U' || t[1] == 'I'))
      return da_set_error(ctx, DA_ERR_INVALID_ARG,
                          "DISTRATTN_CL_EXTRA_BUILD_OPTIONS=\"%.200s\": \"%.*s\" is refused: "
                          "-D, -U and -I would change the kernels' own macros or headers, which "
                          "the plan sets",
                          extra, (int)(p - t > 64 ? 64 : p - t), t);
  }
  return DA_SUCCESS;
}

/* DISTRATTN_CL_EXTRA_BUILD_OPTIONS is appended to every program's build
 * options (check_extra_options; the tests use it to provoke a build
 * failure). The combined string is the cache key. */
da_status da_cl_program(da_context *ctx, int src, const char *base_opts, cl_program *out) {
  da_cl_ctx *bc = ctx->bctx;
  const char *extra = getenv("DISTRATTN_CL_EXTRA_BUILD_OPTIONS");
  if (extra && *extra) {
    da_status s = check_extra_options(ctx, extra);
    if (s != DA_SUCCESS) return s;
  }
  char opts[1024];
  if (snprintf(opts, sizeof opts, "%s%s%s", base_opts, extra && *extra ? " " : "",
               extra ? extra : "") >= (int)sizeof opts)
    return da_set_error(ctx, DA_ERR_INVALID_ARG,
                        "OpenCL: build options with DISTRATTN_CL_EXTRA_BUILD_OPTIONS exceed %zu "
                        "bytes",
                        sizeof opts - 1);
  for (da_cl_prog *p = bc->progs; p; p = p->next)
    if (p->src == src && strcmp(p->opts, opts) == 0) {
      *out = p->prog;
      return DA_SUCCESS;
    }
  const char *body = src == DA_CL_SRC_HASH   ? da_cl_hash_src
                     : src == DA_CL_SRC_ATTN ? da_cl_attn_src
                     : src == DA_CL_SRC_DEC  ? da_cl_decode_src
                     : src == DA_CL_SRC_BWD  ? da_cl_bwd_src
                                             : da_cl_aux_src;
  const char *srcs[2] = {da_cl_common_src, body};
  da_cl_prog *entry = calloc(1, sizeof *entry);
  char *o = malloc(strlen(opts) + 1);
  if (!entry || !o) {
    free(entry);
    free(o);
    return da_set_error(ctx, DA_ERR_HOST_MEMORY, "OpenCL: out of host memory");
  }
  memcpy(o, opts, strlen(opts) + 1);
  cl_int e;
  cl_program prog = clCreateProgramWithSource(bc->cx, 2, srcs, NULL, &e);
  if (e != CL_SUCCESS || !prog) {
    free(entry);
    free(o);
    return da_cl_fail(ctx, e, "clCreateProgramWithSource");
  }
  e = clBuildProgram(prog, 1, &bc->dev, opts, NULL, NULL);
  if (e != CL_SUCCESS) {
    size_t n = 0;
    char log[DA_ERRMSG_LEN - 512];
    log[0] = 0;
    if (clGetProgramBuildInfo(prog, bc->dev, CL_PROGRAM_BUILD_LOG, 0, NULL, &n) == CL_SUCCESS &&
        n > 0) {
      char *full = malloc(n + 1);
      if (full) {
        if (clGetProgramBuildInfo(prog, bc->dev, CL_PROGRAM_BUILD_LOG, n, full, NULL) ==
            CL_SUCCESS) {
          full[n] = 0;
          snprintf(log, sizeof log, "%s", full);
        }
        free(full);
      }
    }
    clReleaseProgram(prog);
    free(entry);
    free(o);
    return da_set_error(ctx, DA_ERR_BUILD, "OpenCL: clBuildProgram(%s, \"%s\") failed: %s (%d)\n%s",
                        src_names[src], opts, da_cl_errname(e), (int)e, log);
  }
  entry->src = src;
  entry->opts = o;
  entry->prog = prog;
  entry->next = bc->progs;
  bc->progs = entry;
  *out = prog;
  return DA_SUCCESS;
}

static const da_backend_iface cl_iface = {
    .iface_version = DA_BACKEND_IFACE_VERSION,
    .id = DA_BACKEND_OPENCL,
    .name = "opencl",
    .init = cl_init,
    .shutdown = cl_shutdown,
    .device_info = cl_dev_info,
    .ctx_create = cl_ctx_create,
    .ctx_destroy = cl_ctx_destroy,
    .synchronize = cl_synchronize,
    .ctx_wrap = cl_ctx_wrap,
    .buf_alloc = cl_buf_alloc,
    .buf_free = cl_buf_free,
    .buf_write = cl_buf_write,
    .buf_read = cl_buf_read,
    .buf_wrap = cl_buf_wrap,
    .buf_unwrap = cl_buf_unwrap,
    .plan_prepare = da_cl_plan_prepare,
    .plan_release = da_cl_plan_release,
    .plan_kernel = da_cl_plan_kernel,
    .attention = da_cl_attention,
    .attention_ext = da_cl_attention_ext,
    .groups = da_cl_groups,
    .attention_bwd = da_cl_attention_bwd,
};

__attribute__((visibility("default"))) const da_backend_iface *distrattn_backend_entry(void);
__attribute__((visibility("default"))) const da_backend_iface *distrattn_backend_entry(void) {
  return &cl_iface;
}
