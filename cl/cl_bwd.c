/* SPDX-License-Identifier: Apache-2.0 */
/* OpenCL backend module: the backward pass (SPEC 1b) with the plain
 * kernels of bwd.cl (correct, not tuned). One call enqueues, on the
 * context's queue:
 *  1. (G > 1) the forward's hash kernel (the same permutations and fusion
 *     weights as the forward), then the expanded Q, Qx[i][c] = a_c
 *     Qs[i][g(c)] (f32), whose product with K is the fused logits; for the
 *     projection strategy (SPEC 1c) Qx = Q M_h with the plan's M_h =
 *     A_h B_h^T (made at plan time), whose product with K is the projected
 *     logits (Q A_h)(K B_h)^T;
 *  2. D = rowsum(dO o O);
 *  3. dK, dV: a work-item per key, over the query heads of its kv head;
 *  4. dQ: a work-item per query row, folded back through the row's hash
 *     tile for G > 1, times M_h^T for the projection strategy (dQ =
 *     (s dS K B_h) A_h^T).
 * Passes 3 and 4 both recompute P and dS, so nothing is summed with
 * atomics and the results do not change from call to call. The workspace
 * (D, and Qx for G > 1 and the projection strategy) and the kernels are
 * made per call and released before it returns, on every path (OpenCL
 * keeps them alive until the commands that use them have run). */
#include <stdlib.h>
#include <string.h>

#include "cl_internal.h"

#define BWD_LS 16 /* work-items per work-group (fewer where the device allows fewer) */

typedef struct {
  da_context *ctx;
  cl_kernel k[4]; /* dsum, qx (G > 1) or qproj (projection), dkv, dq */
  cl_mem ws[2];   /* D, Qx */
} bwd_res;

static void bwd_release(bwd_res *r) {
  for (int i = 0; i < 4; i++)
    if (r->k[i]) clReleaseKernel(r->k[i]);
  for (int i = 0; i < 2; i++)
    if (r->ws[i]) clReleaseMemObject(r->ws[i]);
}

static da_status bwd_kernel(da_context *ctx, cl_program prog, const char *name, cl_kernel *out) {
  cl_int e;
  *out = clCreateKernel(prog, name, &e);
  if (e != CL_SUCCESS || !*out) {
    *out = NULL;
    return da_set_error(ctx, DA_ERR_BUILD, "OpenCL: clCreateKernel(%s) failed: %s (%d)", name,
                        da_cl_errname(e), (int)e);
  }
  return DA_SUCCESS;
}

static da_status bwd_buffer(da_context *ctx, size_t n_floats, const char *what, cl_mem *out) {
  da_cl_ctx *bc = ctx->bctx;
  size_t bytes;
  if (!da_mul_size(n_floats ? n_floats : 1, sizeof(float), &bytes))
    return da_set_error(ctx, DA_ERR_DEVICE_MEMORY,
                        "OpenCL: the size of the backward pass's %s overflows size_t", what);
  if ((cl_ulong)bytes > bc->max_alloc)
    return da_set_error(ctx, DA_ERR_DEVICE_MEMORY,
                        "OpenCL: the backward pass's %s needs %zu bytes, more than "
                        "CL_DEVICE_MAX_MEM_ALLOC_SIZE (%llu)",
                        what, bytes, (unsigned long long)bc->max_alloc);
  cl_int e;
  *out = clCreateBuffer(bc->cx, CL_MEM_READ_WRITE, bytes, NULL, &e);
  if (e != CL_SUCCESS || !*out) {
    *out = NULL;
    if (e == CL_OUT_OF_RESOURCES || e == CL_MEM_OBJECT_ALLOCATION_FAILURE)
      return da_set_error(ctx, DA_ERR_DEVICE_MEMORY,
                          "OpenCL: clCreateBuffer(the backward pass's %s, %zu bytes): %s (%d)",
                          what, bytes, da_cl_errname(e), (int)e);
    return da_cl_fail(ctx, e, "clCreateBuffer (the backward pass's workspace)");
  }
  return DA_SUCCESS;
}

/* Kernel arguments in order: ai counts them; a failure names the kernel
 * and the argument. */
typedef struct {
  da_context *ctx;
  cl_kernel k;
  const char *name;
  cl_uint ai;
  da_status s;
} argset;

static void arg(argset *a, size_t size, const void *v) {
  if (a->s != DA_SUCCESS) return;
  cl_int e = clSetKernelArg(a->k, a->ai, size, v);
  if (e != CL_SUCCESS) {
    char what[96];
    snprintf(what, sizeof what, "clSetKernelArg(%s, %u)", a->name, (unsigned)a->ai);
    a->s = da_cl_fail(a->ctx, e, what);
  }
  a->ai++;
}
#define A(v) arg(&as, sizeof(v), &(v))

static da_status bwd_run(da_context *ctx, cl_kernel k, const char *name, cl_uint dims,
                         const size_t *gws, const size_t *lws) {
  da_cl_ctx *bc = ctx->bctx;
  for (cl_uint i = 0; i < dims; i++)
    if (gws[i] == 0) return DA_SUCCESS;
  cl_int e = clEnqueueNDRangeKernel(bc->q, k, dims, NULL, gws, lws, 0, NULL, NULL);
  if (e != CL_SUCCESS) {
    char what[96];
    snprintf(what, sizeof what, "clEnqueueNDRangeKernel(%s)", name);
    return da_cl_fail(ctx, e, what);
  }
  return da_cl_order(ctx);
}

static size_t rup(size_t x, size_t m) { return (x + m - 1) / m * m; }

static da_status bwd_enqueue(const da_plan *p, const da_bwd_call *c, bwd_res *r) {
  da_context *ctx = p->ctx;
  da_cl_ctx *bc = ctx->bctx;
  const da_attn_desc *d = &p->d;
  const da_attn_ext *x = &p->x;
  const int G = d->group_size > 1 ? d->group_size : 1;
  const int proj = x->strategy == DA_STRATEGY_PROJECTION;
  da_status s;
  char opts[256];
  snprintf(opts, sizeof opts, "-DDTYPE=%d -DD=%d -DG=%d -DVW=%d -DPROJ=%d%s", (int)d->dtype,
           d->head_dim, G, bc->vw, proj, bc->crsqrt ? " -cl-fp32-correctly-rounded-divide-sqrt" : "");
  cl_program prog;
  if ((s = da_cl_program(ctx, DA_CL_SRC_BWD, opts, &prog)) != DA_SUCCESS) return s;
  if ((s = bwd_kernel(ctx, prog, "da_bwd_dsum", &r->k[0])) != DA_SUCCESS ||
      (G > 1 && (s = bwd_kernel(ctx, prog, "da_bwd_qx", &r->k[1])) != DA_SUCCESS) ||
      (proj && (s = bwd_kernel(ctx, prog, "da_bwd_qproj", &r->k[1])) != DA_SUCCESS) ||
      (s = bwd_kernel(ctx, prog, "da_bwd_dkv", &r->k[2])) != DA_SUCCESS ||
      (s = bwd_kernel(ctx, prog, "da_bwd_dq", &r->k[3])) != DA_SUCCESS)
    return s;
  size_t rows = 0, xe = 0;
  const size_t f[3] = {(size_t)d->batch, (size_t)d->heads, (size_t)d->seq_q};
  if ((s = da_checked_size(ctx, "OpenCL", "the backward pass's row sums", &rows, 3, f)) !=
      DA_SUCCESS)
    return s;
  if ((s = bwd_buffer(ctx, rows, "row sums", &r->ws[0])) != DA_SUCCESS) return s;
  /* not read for G = 1 (perm, wts, qx) or other strategies (pm) */
  cl_mem perm = r->ws[0], wts = r->ws[0], qx = r->ws[0], pm = r->ws[0];
  if (proj) {
    pm = da_cl_bwd_proj(p);
    if (!pm)
      return da_set_error(ctx, DA_ERR_INVALID_ARG,
                          "OpenCL: the projection plan has no products A_h B_h^T on the device");
  }
  if (G > 1 || proj) {
    const size_t f2[2] = {rows, (size_t)d->head_dim};
    if ((s = da_checked_size(ctx, "OpenCL", "the backward pass's expanded Q", &xe, 2, f2)) !=
            DA_SUCCESS ||
        (s = bwd_buffer(ctx, xe, "expanded Q", &r->ws[1])) != DA_SUCCESS)
      return s;
    qx = r->ws[1];
    if (G > 1 && (s = da_cl_bwd_groups(p, (cl_mem)c->q, c->q_off, &perm, &wts)) != DA_SUCCESS)
      return s;
  }
  size_t ls = BWD_LS < bc->max_wg ? BWD_LS : bc->max_wg;
  if (ls < 1) ls = 1;
  cl_mem q = c->q, k = c->k, v = c->v, o = c->o, dout = c->dout, lse = c->lse, dq = c->dq,
         dk = c->dk, dv = c->dv, Dv = r->ws[0];
  const cl_int seq_q = d->seq_q, seq_k = d->seq_k, heads = d->heads, kvh = d->kv_heads,
               wl = x->window_left, wr = x->window_right, nt = p->n_tiles, hb = d->hash_block;
  const cl_float c2 = da_log2_mul(d->scale); /* SPEC 1, "Scale"; as lib/cpu_bwd.c */
  const cl_float sc = (float)((double)c2 / DA_LOG2E);
  const cl_long qs0 = x->q_stride[0], qs1 = x->q_stride[1], qs2 = x->q_stride[2];
  const cl_long ks0 = x->k_stride[0], ks1 = x->k_stride[1], ks2 = x->k_stride[2];
  const cl_long vs0 = x->v_stride[0], vs1 = x->v_stride[1], vs2 = x->v_stride[2];
  const cl_long os0 = x->o_stride[0], os1 = x->o_stride[1], os2 = x->o_stride[2];
  const cl_ulong qoff = c->q_off, koff = c->k_off, voff = c->v_off, ooff = c->o_off,
                 dooff = c->dout_off, lseoff = c->lse_off, dqoff = c->dq_off,
                 dkoff = c->dk_off, dvoff = c->dv_off;
  const size_t bh = (size_t)d->batch * (size_t)d->heads;
  argset as = {ctx, r->k[0], "da_bwd_dsum", 0, DA_SUCCESS};
  A(dout), A(o), A(Dv), A(seq_q), A(heads), A(os0), A(os1), A(os2), A(dooff), A(ooff);
  if (as.s != DA_SUCCESS) return as.s;
  const size_t g_rows[2] = {rup((size_t)d->seq_q, ls), bh}, l_rows[2] = {ls, 1};
  if ((s = bwd_run(ctx, r->k[0], "da_bwd_dsum", 2, g_rows, l_rows)) != DA_SUCCESS) return s;
  if (G > 1) {
    as = (argset){ctx, r->k[1], "da_bwd_qx", 0, DA_SUCCESS};
    A(q), A(perm), A(wts), A(qx), A(seq_q), A(heads), A(nt), A(hb), A(qs0), A(qs1), A(qs2),
        A(qoff);
    if (as.s != DA_SUCCESS) return as.s;
    if ((s = bwd_run(ctx, r->k[1], "da_bwd_qx", 2, g_rows, l_rows)) != DA_SUCCESS) return s;
  } else if (proj) {
    as = (argset){ctx, r->k[1], "da_bwd_qproj", 0, DA_SUCCESS};
    A(q), A(pm), A(qx), A(seq_q), A(heads), A(qs0), A(qs1), A(qs2), A(qoff);
    if (as.s != DA_SUCCESS) return as.s;
    if ((s = bwd_run(ctx, r->k[1], "da_bwd_qproj", 2, g_rows, l_rows)) != DA_SUCCESS) return s;
  }
  as = (argset){ctx, r->k[2], "da_bwd_dkv", 0, DA_SUCCESS};
  A(q), A(qx), A(k), A(v), A(dout), A(lse), A(Dv), A(dk), A(dv), A(seq_q), A(seq_k), A(heads),
      A(kvh), A(wl), A(wr), A(c2), A(sc), A(qs0), A(qs1), A(qs2), A(qoff), A(ks0), A(ks1),
      A(ks2), A(koff), A(vs0), A(vs1), A(vs2), A(voff), A(os0), A(os1), A(os2), A(dooff),
      A(lseoff), A(dkoff), A(dvoff);
  if (as.s != DA_SUCCESS) return as.s;
  const size_t g_kv[3] = {rup((size_t)d->seq_k, ls), (size_t)d->kv_heads, (size_t)d->batch};
  const size_t l3[3] = {ls, 1, 1};
  if ((s = bwd_run(ctx, r->k[2], "da_bwd_dkv", 3, g_kv, l3)) != DA_SUCCESS) return s;
  as = (argset){ctx, r->k[3], "da_bwd_dq", 0, DA_SUCCESS};
  A(q), A(qx), A(k), A(v), A(dout), A(lse), A(Dv), A(dq), A(perm), A(wts), A(seq_q), A(seq_k),
      A(heads), A(kvh), A(wl), A(wr), A(c2), A(sc), A(nt), A(hb), A(qs0), A(qs1), A(qs2),
      A(qoff), A(ks0), A(ks1), A(ks2), A(koff), A(vs0), A(vs1), A(vs2), A(voff), A(os0),
      A(os1), A(os2), A(dooff), A(lseoff), A(dqoff), A(pm);
  if (as.s != DA_SUCCESS) return as.s;
  const size_t g_q[3] = {rup((size_t)d->seq_q, ls), (size_t)d->heads, (size_t)d->batch};
  return bwd_run(ctx, r->k[3], "da_bwd_dq", 3, g_q, l3);
}
#undef A

/* The options the cpu backward takes (the projection strategy too),
 * except head_dim above 256 (the kernels keep rows in private arrays; the
 * fused forward takes no more either). */
da_status da_cl_attention_bwd(const da_plan *p, const da_bwd_call *c) {
  da_context *ctx = p->ctx;
  const da_attn_desc *d = &p->d;
  if (!p->bplan) return da_set_error(ctx, DA_ERR_INVALID_ARG, "OpenCL: the plan was not prepared");
  if (p->x.seqlens != DA_SEQLENS_NONE) /* the core refuses these before */
    return da_set_error(ctx, DA_ERR_UNSUPPORTED,
                        "OpenCL: the backward pass does not support ext.seqlens (per-sequence "
                        "lengths)");
  if (d->head_dim > 256)
    return da_set_error(ctx, DA_ERR_UNSUPPORTED,
                        "OpenCL: the backward pass takes head_dim 1..256, not %d (the cpu backend "
                        "takes any)",
                        d->head_dim);
  if (d->batch <= 0 || d->heads <= 0 || d->seq_q <= 0) return DA_SUCCESS;
  bwd_res r;
  memset(&r, 0, sizeof r);
  r.ctx = ctx;
  da_status s = bwd_enqueue(p, c, &r);
  bwd_release(&r);
  return s;
}
