/* SPDX-License-Identifier: Apache-2.0 */
/* OpenCL backend module: plans, the fused attention, the hash/groups kernel
 * and DA_ALGO_GEMM through CLBlast. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cl_internal.h"

typedef struct {
  cl_kernel k_hash, k_attn, k_prep;
  cl_kernel k_to32, k_fq, k_fk, k_soft, k_store;
  cl_mem proj, perm, wts;
  cl_mem kb, vb;               /* K and V per key tile in f32 (fused algorithm) */
  size_t bn, dp;               /* key tile, head_dim padded to the vector width */
  /* DA_ALGO_GEMM temporaries */
  cl_mem q32, k32, v32, qs, kfz, s, of;
  size_t hash_ls, bm, sl, upc; /* upc: (batch, kv head) units per GEMM chunk */
  int rp;                      /* logits rows per head (padded to whole hash tiles for G > 1) */
  int tiled;                   /* the fused kernel's GPU shape (TILED=1, bm rows, 2*bm items) */
  /* split-KV decode (decode.cl), when dec is set: the partial results of
   * nch chunks of C keys per row, RB rows per work-group (nrg row groups
   * per kv head), dec_wg work-items per work-group, dec_nv column vectors
   * per row in the combine */
  cl_kernel k_dec, k_comb;
  cl_mem pacc, pml;
  int dec, dec_nrg, dec_nch, dec_c;
  size_t dec_wg, dec_nv;
  int dec_tiled, dec_rb, dec_kb; /* for da_plan_get_kernel: shape, rows and keys of a tile */
  /* DA_STRATEGY_PROJECTION (SPEC 1c): da_proj, the plan's projections
   * [heads][2][head_dim][rank] on the device, Qp [batch][heads][seq_q][rank]
   * and (tiled shape) Kp [batch][heads][seq_k][rank], f32; the rows shape
   * writes the projected key tiles into kb. */
  cl_kernel k_proj;
  cl_mem pj, pq, pk;
  /* ... and for the backward pass (cl_bwd.c): M_h = A_h B_h^T then M_h^T
   * per query head, [heads][2][head_dim][head_dim] f32 */
  cl_mem pm;
} da_cl_plan;

#define CK(call, what)                                                                            \
  do {                                                                                            \
    cl_int e_ = (call);                                                                           \
    if (e_ != CL_SUCCESS) return da_cl_fail(ctx, e_, what);                                       \
  } while (0)

#define ARG(k, i, v) CK(clSetKernelArg((k), (i), sizeof(v), &(v)), "clSetKernelArg(" #k ", " #i ")")

static size_t round_up(size_t x, size_t m) { return (x + m - 1) / m * m; }

/* da_checked_size over a list of factors */
#define SIZE_OF(what, out, ...)                                                                   \
  da_checked_size(ctx, "OpenCL", "the " what, out,                                                \
                  (int)(sizeof((size_t[]){__VA_ARGS__}) / sizeof(size_t)), (size_t[]){__VA_ARGS__})

static void release_plan(da_cl_plan *bp) {
  cl_kernel ks[] = {bp->k_hash, bp->k_attn, bp->k_prep, bp->k_to32, bp->k_fq,
                    bp->k_fk,   bp->k_soft, bp->k_store, bp->k_dec, bp->k_comb, bp->k_proj};
  for (size_t i = 0; i < sizeof ks / sizeof ks[0]; i++)
    if (ks[i]) clReleaseKernel(ks[i]);
  cl_mem ms[] = {bp->proj, bp->perm, bp->wts, bp->kb, bp->vb,   bp->q32, bp->k32,
                 bp->v32,  bp->qs,   bp->kfz, bp->s,  bp->of, bp->pacc, bp->pml,
                 bp->pj,   bp->pq,   bp->pk, bp->pm};
  for (size_t i = 0; i < sizeof ms / sizeof ms[0]; i++)
    if (ms[i]) clReleaseMemObject(ms[i]);
  free(bp);
}

void da_cl_plan_release(const da_plan *p) {
  if (p->bplan) release_plan(p->bplan);
}

static da_status new_buffer(da_context *ctx, size_t bytes, cl_mem *out, const char *what) {
  da_cl_ctx *bc = ctx->bctx;
  if (bytes == 0) bytes = 4;
  if ((cl_ulong)bytes > bc->max_alloc)
    return da_set_error(ctx, DA_ERR_DEVICE_MEMORY,
                        "OpenCL: %s needs %zu bytes, more than CL_DEVICE_MAX_MEM_ALLOC_SIZE (%llu)",
                        what, bytes, (unsigned long long)bc->max_alloc);
  cl_int e;
  *out = clCreateBuffer(bc->cx, CL_MEM_READ_WRITE, bytes, NULL, &e);
  if (e != CL_SUCCESS || !*out) {
    *out = NULL;
    if (e == CL_OUT_OF_RESOURCES || e == CL_MEM_OBJECT_ALLOCATION_FAILURE)
      return da_set_error(ctx, DA_ERR_DEVICE_MEMORY, "OpenCL: clCreateBuffer(%s, %zu bytes): %s (%d)",
                          what, bytes, da_cl_errname(e), (int)e);
    return da_cl_fail(ctx, e, "clCreateBuffer");
  }
  return DA_SUCCESS;
}

static da_status make_kernel(da_context *ctx, int src, const char *opts, const char *name,
                             cl_kernel *out) {
  cl_program prog;
  da_status s = da_cl_program(ctx, src, opts, &prog);
  if (s != DA_SUCCESS) return s;
  cl_int e;
  *out = clCreateKernel(prog, name, &e);
  if (e != CL_SUCCESS || !*out) {
    *out = NULL;
    return da_set_error(ctx, DA_ERR_BUILD, "OpenCL: clCreateKernel(%s) failed: %s (%d)", name,
                        da_cl_errname(e), (int)e);
  }
  return DA_SUCCESS;
}

static const char *fp_opts(const da_cl_ctx *bc) {
  return bc->crsqrt ? " -cl-fp32-correctly-rounded-divide-sqrt" : "";
}

/* The hash kernel and the per-plan perm/weights it writes. */
static da_status ensure_hash(const da_plan *p, da_cl_plan *bp) {
  da_context *ctx = p->ctx;
  da_cl_ctx *bc = ctx->bctx;
  const da_attn_desc *d = &p->d;
  da_status s;
  if (bp->k_hash) return DA_SUCCESS;
  size_t pbytes = p->perm_count * 4;
  if (!bp->perm && (s = new_buffer(ctx, pbytes, &bp->perm, "permutations")) != DA_SUCCESS) return s;
  if (!bp->wts && (s = new_buffer(ctx, pbytes, &bp->wts, "fusion weights")) != DA_SUCCESS) return s;
  if (!bp->proj) {
    size_t rbytes = (size_t)d->hash_bits * (size_t)d->hash_block * sizeof(float);
    if ((s = new_buffer(ctx, rbytes, &bp->proj, "projections")) != DA_SUCCESS) return s;
    CK(clEnqueueWriteBuffer(bc->q, bp->proj, CL_TRUE, 0, rbytes, p->proj, 0, NULL, NULL),
       "clEnqueueWriteBuffer(projections)");
  }
  const size_t hv = (size_t)bc->vw;
  size_t ls = round_up(((size_t)d->head_dim + hv - 1) / hv, 8);
  if (ls > bc->max_wg) ls = bc->max_wg;
  char opts[512];
  snprintf(opts, sizeof opts,
           "-DDTYPE=%d -DD=%d -DHASH_BITS=%d -DHB=%d -DG=%d -DFUSION=%d -DLS=%zu -DHV=%zu%s",
           (int)d->dtype, d->head_dim, d->hash_bits, d->hash_block, d->group_size,
           (int)d->fusion, ls, hv, fp_opts(bc));
  bp->hash_ls = ls;
  if ((s = make_kernel(ctx, DA_CL_SRC_HASH, opts, "da_hash", &bp->k_hash)) != DA_SUCCESS) return s;
  return DA_SUCCESS;
}

/* The groups of Q (element (b, h, r, c) at qoff + b*st[0] + h*st[1] +
 * r*st[2] + c, rows from each sequence's first: cu_q with DA_SEQLENS_PACKED,
 * NULL otherwise) into perm_out and bp->wts. */
static da_status enqueue_hash(const da_plan *p, cl_mem q, cl_mem perm_out, const long long st[3],
                              size_t qoff, cl_mem cu_q, size_t rows_q) {
  da_context *ctx = p->ctx;
  da_cl_ctx *bc = ctx->bctx;
  da_cl_plan *bp = p->bplan;
  const da_attn_desc *d = &p->d;
  cl_int seq_q = d->seq_q, n_tiles = p->n_tiles, heads = d->heads, lens = cu_q ? 2 : 0;
  cl_mem cu = cu_q ? cu_q : perm_out; /* not read without lengths */
  cl_long rq = (cl_long)rows_q, s0 = st[0], s1 = st[1], s2 = st[2];
  cl_ulong off = qoff;
  ARG(bp->k_hash, 0, q);
  ARG(bp->k_hash, 1, bp->proj);
  ARG(bp->k_hash, 2, perm_out);
  ARG(bp->k_hash, 3, bp->wts);
  ARG(bp->k_hash, 4, seq_q);
  ARG(bp->k_hash, 5, n_tiles);
  ARG(bp->k_hash, 6, heads);
  ARG(bp->k_hash, 7, lens);
  ARG(bp->k_hash, 8, cu);
  ARG(bp->k_hash, 9, rq);
  ARG(bp->k_hash, 10, s0);
  ARG(bp->k_hash, 11, s1);
  ARG(bp->k_hash, 12, s2);
  ARG(bp->k_hash, 13, off);
  size_t gws[2] = {(size_t)p->n_tiles * bp->hash_ls, (size_t)d->batch * (size_t)d->heads};
  size_t lws[2] = {bp->hash_ls, 1};
  CK(clEnqueueNDRangeKernel(bc->q, bp->k_hash, 2, NULL, gws, lws, 0, NULL, NULL),
     "clEnqueueNDRangeKernel(da_hash)");
  return da_cl_order(ctx);
}

/* The backward pass's groupings (cl_bwd.c): the forward's hash kernel over
 * Q at the call's layout into the plan's permutation and weight buffers. */
da_status da_cl_bwd_groups(const da_plan *p, cl_mem q, size_t qoff, cl_mem *perm, cl_mem *wts) {
  da_status s = ensure_hash(p, p->bplan);
  if (s != DA_SUCCESS) return s;
  da_cl_plan *bp = p->bplan;
  if ((s = enqueue_hash(p, q, bp->perm, p->x.q_stride, qoff, NULL, 0)) != DA_SUCCESS) return s;
  *perm = bp->perm;
  *wts = bp->wts;
  return DA_SUCCESS;
}

/* The fused kernels' options of the plan's da_attn_ext: the window (causal
 * is WR 0), the lengths' kind and the LSE output. */
typedef struct {
  char s[128];
} ext_opt_str;
static ext_opt_str ext_opts(const da_plan *p) {
  ext_opt_str o;
  int n = snprintf(o.s, sizeof o.s, "-DWL=%d -DWR=%d -DLENS=%d -DLSE=%d", p->x.window_left,
                   p->x.window_right, (int)p->x.seqlens, p->x.lse ? 1 : 0);
  if (p->x.strategy == DA_STRATEGY_PROJECTION && n > 0 && (size_t)n < sizeof o.s)
    snprintf(o.s + n, sizeof o.s - (size_t)n, " -DPROJ=1 -DRK=%d", p->x.rank);
  return o;
}

/* DA_STRATEGY_PROJECTION (SPEC 1c), once the fused kernel of either shape
 * is chosen (opts: its build options): da_proj, the projections on the
 * device and the f32 workspace of the projected Q (and, tiled shape, K;
 * the rows shape projects K into its key tiles, kb). */
static da_status prepare_proj(const da_plan *p, da_cl_plan *bp, const char *opts) {
  da_context *ctx = p->ctx;
  da_cl_ctx *bc = ctx->bctx;
  const da_attn_desc *d = &p->d;
  const size_t R = (size_t)p->x.rank, RP = round_up(R, 16); /* attn.cl's RKP */
  size_t pjb = 0, qb = 0, kb = 0;
  da_status s;
  if ((s = SIZE_OF("projections", &pjb, (size_t)d->heads, 2, (size_t)d->head_dim, RP, 4)) ||
      (s = SIZE_OF("projected Q", &qb, (size_t)d->batch, (size_t)d->heads, (size_t)d->seq_q, R,
                   4)) ||
      (bp->tiled && (s = SIZE_OF("projected K", &kb, (size_t)d->batch, (size_t)d->heads,
                                 (size_t)d->seq_k, R, 4))))
    return s;
  if ((s = make_kernel(ctx, DA_CL_SRC_ATTN, opts, "da_proj", &bp->k_proj)) != DA_SUCCESS ||
      (s = new_buffer(ctx, pjb, &bp->pj, "projections")) != DA_SUCCESS ||
      (s = new_buffer(ctx, qb, &bp->pq, "projected Q")) != DA_SUCCESS ||
      (bp->tiled && (s = new_buffer(ctx, kb, &bp->pk, "projected K")) != DA_SUCCESS))
    return s;
  /* rows of RP columns, zero past the rank (da_proj reads whole groups of 16) */
  float *pad = calloc(pjb / 4, sizeof *pad);
  if (!pad)
    return da_set_error(ctx, DA_ERR_HOST_MEMORY, "OpenCL: no host memory for %zu bytes of "
                        "padded projections", pjb);
  const size_t rows = (size_t)d->heads * 2 * (size_t)d->head_dim;
  for (size_t i = 0; i < rows; i++) memcpy(pad + i * RP, p->sproj + i * R, R * sizeof *pad);
  cl_int e = clEnqueueWriteBuffer(bc->q, bp->pj, CL_TRUE, 0, pjb, pad, 0, NULL, NULL);
  free(pad);
  CK(e, "clEnqueueWriteBuffer(projections)");
  return DA_SUCCESS;
}

/* da_proj over one tensor: x (Q, is_k 0, or K) into xp, n rows per (batch,
 * head), bnt: key tiles of bnt (the rows shape's kb) or 0 ([rows][rank]). */
static da_status enqueue_proj(const da_plan *p, cl_mem x, cl_mem xp, cl_int is_k, cl_int n, cl_mem lens,
                              size_t rows, const long long st[3], size_t off, cl_int bnt) {
  da_context *ctx = p->ctx;
  da_cl_ctx *bc = ctx->bctx;
  da_cl_plan *bp = p->bplan;
  const da_attn_desc *d = &p->d;
  cl_kernel kk = bp->k_proj;
  const cl_int seq = is_k ? d->seq_k : d->seq_q, heads = d->heads, kvh = d->kv_heads;
  const cl_long r = (cl_long)rows, s0 = st[0], s1 = st[1], s2 = st[2];
  const cl_ulong o = off;
  ARG(kk, 0, x);
  ARG(kk, 1, xp);
  ARG(kk, 2, bp->pj);
  ARG(kk, 3, is_k);
  ARG(kk, 4, n);
  ARG(kk, 5, seq);
  ARG(kk, 6, heads);
  ARG(kk, 7, kvh);
  ARG(kk, 8, lens);
  ARG(kk, 9, r);
  ARG(kk, 10, s0);
  ARG(kk, 11, s1);
  ARG(kk, 12, s2);
  ARG(kk, 13, o);
  ARG(kk, 14, bnt);
  size_t gws[3] = {((size_t)p->x.rank + 15) / 16, (size_t)n, (size_t)d->batch * (size_t)d->heads};
  CK(clEnqueueNDRangeKernel(bc->q, kk, 3, NULL, gws, NULL, 0, NULL, NULL),
     "clEnqueueNDRangeKernel(da_proj)");
  return da_cl_order(ctx);
}

/* The tiles of the tiled kernel, in order of speed on an H200 (f16, seq
 * 1024 and 8192, head_dim 64 and 128): 64 rows beat 32 even with half the
 * keys per tile (head_dim 128 exact: 64x16 1.3-1.65x faster than 32x32),
 * and 16 rows are the slowest. The 8-key tiles of 64 and 32 rows come last:
 * they need more local memory than 16x8, so the automatic choice (the
 * first that fits) never reaches them; DISTRATTN_CL_TILE can ask for them. */
static const size_t cl_tiles[][2] = {{64, 32}, {64, 16}, {32, 32}, {32, 16}, {16, 32},
                                     {16, 16}, {16, 8},  {64, 8},  {32, 8}};

/* What the environment asks of the fused kernel (the plan's overrides,
 * p->ov, parsed by the core when the plan was made).
 * DISTRATTN_CL_KERNEL: "tiled" (the GPU-shaped fused kernel), "rows" (one
 * work-item per query row, the CPU shape) or unset (tiled on GPUs and
 * accelerators, rows on CPU devices; tiled when DISTRATTN_CL_TILE is set).
 * DISTRATTN_CL_TILE=ROWSxKEYS: one of cl_tiles. */
typedef struct cl_choice {
  int kind;              /* 1 tiled, 0 rows, -1 unset */
  size_t tile_m, tile_n; /* the tile asked for; 0 when none */
} cl_choice;

static da_status kernel_choice(const da_plan *p, cl_choice *c) {
  const da_overrides *ov = &p->ov;
  memset(c, 0, sizeof *c);
  if (ov->cl_tile_rows) {
    const size_t a = (size_t)ov->cl_tile_rows, b = (size_t)ov->cl_tile_cols;
    int known = 0;
    for (size_t t = 0; t < sizeof cl_tiles / sizeof cl_tiles[0]; t++)
      known |= cl_tiles[t][0] == a && cl_tiles[t][1] == b;
    if (!known)
      return da_set_error(p->ctx, DA_ERR_INVALID_ARG,
                          "DISTRATTN_CL_TILE=\"%zux%zu\" is not a tile of the tiled kernel: "
                          "ROWSxKEYS with ROWS 16, 32 or 64 and KEYS 8, 16 or 32",
                          a, b);
    c->tile_m = a;
    c->tile_n = b;
  }
  /* a tile asked for is the tiled kernel's (the core refuses it with "rows") */
  c->kind = ov->cl_kernel >= 0 ? ov->cl_kernel : ov->cl_tile_rows ? 1 : -1;
  return DA_SUCCESS;
}

/* The tiled fused kernel (attn.cl, TILED=1): the largest (BM, BN) of
 * cl_tiles whose local memory fits the device, no more rows than hash_block
 * (G > 1) nor than seq_q needs, or the tile c asks for. When none fits: an
 * error if the kernel or tile was asked for (forced; DA_ERR_INVALID_ARG, so
 * DA_ALGO_AUTO does not fall back to GEMM), else success with bp->tiled
 * still 0, and the caller takes the rows kernel. */
static da_status prepare_tiled(const da_plan *p, da_cl_plan *bp, int forced, const cl_choice *c) {
  da_context *ctx = p->ctx;
  da_cl_ctx *bc = ctx->bctx;
  const da_attn_desc *d = &p->d;
  const size_t D = (size_t)d->head_dim, G = (size_t)d->group_size, ng = (size_t)p->ng;
  const size_t dq = p->x.strategy == DA_STRATEGY_PROJECTION ? (size_t)p->x.rank : G > 1 ? ng : D;
  const size_t sq = round_up(dq, 8) + 4, dv = round_up(D, 32);
  size_t bmax = 64;
  while (bmax > 16 && bmax / 2 >= (size_t)d->seq_q) bmax /= 2;
  size_t bm = 0, bn = 0;
  const size_t want_m = c->tile_m, want_n = c->tile_n;
  const int want = want_m != 0;
  for (size_t t = 0; t < sizeof cl_tiles / sizeof cl_tiles[0] && !bm; t++) {
    const size_t m = cl_tiles[t][0], n = cl_tiles[t][1];
    if (want_m ? m != want_m || n != want_n : m > bmax) continue;
    if (G > 1 && m > (size_t)d->hash_block) continue; /* a work-group stays in one hash tile */
    if (2 * m > bc->max_wg) continue;
    const size_t need = 4 * (m * sq + n * (sq > dv ? sq : dv) + n * m + m * 8) +
                        (G > 1 ? D * 8 + ng * 4 : 0) + 256;
    if (need <= bc->local_mem) {
      bm = m;
      bn = n;
    }
  }
  if (!bm && !forced) return DA_SUCCESS;
  /* asked for and cannot run: refused, never replaced by another kernel or
   * algorithm (so not DA_ERR_UNSUPPORTED, which DA_ALGO_AUTO falls back on) */
  if (!bm && want)
    return da_set_error(ctx, DA_ERR_INVALID_ARG,
                        "DISTRATTN_CL_TILE=\"%zux%zu\" cannot run this plan: the tile needs more than "
                        "the device's %llu bytes of local memory or %zu work-items per "
                        "work-group%s (head_dim %d, G %d, hash_block %d)",
                        want_m, want_n, (unsigned long long)bc->local_mem, bc->max_wg,
                        d->group_size > 1 && want_m > (size_t)d->hash_block
                            ? ", or has more rows than hash_block"
                            : "",
                        d->head_dim, d->group_size, d->hash_block);
  if (!bm)
    return da_set_error(ctx, DA_ERR_INVALID_ARG,
                        "DISTRATTN_CL_KERNEL=\"tiled\" cannot run this plan: no tile fits "
                        "head_dim %d, G %d, hash_block %d in the device's %llu bytes of local "
                        "memory and %zu work-items per work-group (\"rows\" is the other kernel)",
                        d->head_dim, d->group_size, d->hash_block,
                        (unsigned long long)bc->local_mem, bc->max_wg);
  char opts[512];
  snprintf(opts, sizeof opts,
           "-DTILED=1 -DDTYPE=%d -DD=%zu -DDV=%zu -DG=%zu -DNG=%zu -DHB=%d -DBM=%zu -DBN=%zu "
           "%s%s",
           (int)d->dtype, D, dv, G, ng, d->hash_block, bm, bn, ext_opts(p).s, fp_opts(bc));
  bp->tiled = 1;
  bp->bm = bm;
  bp->bn = bn;
  da_status s = make_kernel(ctx, DA_CL_SRC_ATTN, opts, "da_attn", &bp->k_attn);
  if (s == DA_SUCCESS && p->x.strategy == DA_STRATEGY_PROJECTION) s = prepare_proj(p, bp, opts);
  return s;
}

static da_status prepare_fused(const da_plan *p, da_cl_plan *bp) {
  da_context *ctx = p->ctx;
  da_cl_ctx *bc = ctx->bctx;
  const da_attn_desc *d = &p->d;
  const size_t D = (size_t)d->head_dim, G = (size_t)d->group_size, ng = (size_t)p->ng;
  if (d->head_dim > 256)
    return da_set_error(ctx, DA_ERR_UNSUPPORTED,
                        "OpenCL: the fused kernel takes head_dim 1..256, not %d (use DA_ALGO_GEMM)",
                        d->head_dim);
  da_status s;
  cl_choice choice;
  if ((s = kernel_choice(p, &choice)) != DA_SUCCESS) return s;
  int tiled = choice.kind;
  const int rows_forced = tiled == 0;
  if (tiled < 0) tiled = bc->is_cpu ? 0 : -1; /* -1: tiled where it fits, else rows */
  if (tiled && ((s = prepare_tiled(p, bp, tiled > 0, &choice)) != DA_SUCCESS || bp->tiled)) return s;
  const size_t vw = (size_t)bc->vw, dp = round_up(D, vw);
  /* Rows per work-group: as many as a hash tile allows (they share each K/V
   * tile), at most 128 (CPU) or 64. */
  size_t bm = (size_t)d->hash_block < (bc->is_cpu ? 128u : 64u) ? (size_t)d->hash_block
                                                                 : (bc->is_cpu ? 128u : 64u);
  while (bm > bc->max_wg && bm > 1) bm /= 2;
  /* The widest key tile that fits in local memory; with none, fewer rows
   * (halving keeps bm a power of two, so it still divides hash_block). */
  size_t bn = 0;
  for (;;) {
    for (size_t t = bc->is_cpu ? 128 : 32; t >= 16 && !bn; t /= 2) {
      size_t need = (G > 1 ? ng * t * sizeof(float) + D * 8 + ng * 4 : 0) + 256 +
                    (bc->is_cpu ? bm * dp * sizeof(float) : 0);
      if (need <= bc->local_mem) bn = t;
    }
    if (bn || bm == 1) break;
    bm /= 2;
  }
  if (!bn)
    return da_set_error(ctx, rows_forced ? DA_ERR_INVALID_ARG : DA_ERR_UNSUPPORTED,
                        "OpenCL: %shead_dim %d needs more local memory than the device's %llu "
                        "bytes",
                        rows_forced ? "DISTRATTN_CL_KERNEL=\"rows\" cannot run this plan: " : "",
                        d->head_dim, (unsigned long long)bc->local_mem);
  char opts[512];
  snprintf(opts, sizeof opts,
           "-DDTYPE=%d -DD=%zu -DDP=%zu -DG=%zu -DNG=%zu -DHB=%d -DBM=%zu -DBN=%zu -DVW=%zu "
           "%s -DACC_LOCAL=%d%s",
           (int)d->dtype, D, dp, G, ng, d->hash_block, bm, bn, vw, ext_opts(p).s, bc->is_cpu,
           fp_opts(bc));
  bp->bm = bm;
  bp->bn = bn;
  bp->dp = dp;
  const size_t nkt = ((size_t)d->seq_k + bn - 1) / bn;
  const int proj = p->x.strategy == DA_STRATEGY_PROJECTION;
  /* the projection strategy: key tiles of rank rows per query head */
  const size_t kh = proj ? (size_t)d->heads : (size_t)d->kv_heads,
               kw = proj ? (size_t)p->x.rank : D;
  size_t kbytes = 0, vbytes = 0;
  if ((s = SIZE_OF("key tiles", &kbytes, (size_t)d->batch, kh, nkt, bn, kw, 4)) ||
      (s = SIZE_OF("value tiles", &vbytes, (size_t)d->batch, (size_t)d->kv_heads, nkt, bn, dp, 4)))
    return s;
  if ((s = make_kernel(ctx, DA_CL_SRC_ATTN, opts, "da_attn", &bp->k_attn)) != DA_SUCCESS ||
      (s = make_kernel(ctx, DA_CL_SRC_ATTN, opts, "da_kv_prep", &bp->k_prep)) != DA_SUCCESS ||
      (s = new_buffer(ctx, kbytes, &bp->kb, "key tiles")) != DA_SUCCESS ||
      (s = new_buffer(ctx, vbytes, &bp->vb, "value tiles")) != DA_SUCCESS)
    return s;
  return proj ? prepare_proj(p, bp, opts) : DA_SUCCESS;
}

/* ---------------- split-KV decode (decode.cl) ---------------- */

/* The decode kernels run by default where a kv head has at most
 * DEC_ROWS_AUTO query rows (heads / kv_heads x seq_q), as on CUDA;
 * DISTRATTN_CL_DECODE=1 takes them up to DEC_ROWS_MAX rows (as the CPU
 * backend; and refuses a plan they cannot run), 0 never. A work-group takes
 * at most DEC_RB_MAX of a kv head's rows. On PoCL (2 cores, batch 8, 32/8
 * heads, seq_k 4096, head_dim 128, f16, CPU time) they beat the fused rows
 * kernel, which lays all of K and V out again per call, at every row count
 * measured: 32x at 16 rows, 7x at 64, 1.75x at 512. */
#define DEC_ROWS_AUTO 16
#define DEC_ROWS_MAX 256
#define DEC_RB_MAX 16
/* Chunking: about DEC_WG_PER_CU work-groups per compute unit (CPU devices:
 * each work-group is one task of a thread; GPUs: several resident blocks
 * per multiprocessor), chunks of DEC_CHUNK_MIN..DEC_CHUNK_MAX keys, a
 * multiple of 64. DISTRATTN_CL_DECODE_CHUNK=N fixes the keys per chunk (a
 * multiple of 64) for measurements. */
#define DEC_WG_PER_CU_CPU 4
#define DEC_WG_PER_CU_GPU 8
#define DEC_CHUNK_MIN 256
#define DEC_CHUNK_MAX 8192
/* The tiled (GPU) shape's work-items per work-group. */
#define DEC_NT 128

/* Why the decode kernels cannot run a plan, or NULL. */
static const char *dec_refusal(const da_plan *p) {
  const da_attn_desc *d = &p->d;
  if (p->x.strategy == DA_STRATEGY_PROJECTION) return "the projection strategy";
  if (d->group_size > 1) return "group_size > 1 (DistrAttention's hash tiles)";
  if (d->head_dim > 256) return "head_dim > 256";
  if ((long)(d->heads / d->kv_heads) * d->seq_q > DEC_ROWS_MAX)
    return "more than 256 query rows per kv head (heads / kv_heads x seq_q)";
  if (d->algo == DA_ALGO_GEMM) return "algo GEMM";
  return NULL;
}

/* DISTRATTN_CL_DECODE ("0" never, "1" always, unset: by shape) and
 * DISTRATTN_CL_DECODE_CHUNK; where the decode kernels take the plan, they
 * are built, the partial results allocated and bp->dec set. The shape
 * follows DISTRATTN_CL_KERNEL (tiled: the GPU shape, rows: the CPU one),
 * else the device's kind. */
static da_status prepare_decode(const da_plan *p, da_cl_plan *bp) {
  da_context *ctx = p->ctx;
  da_cl_ctx *bc = ctx->bctx;
  const da_attn_desc *d = &p->d;
  /* the plan's overrides (the core checked the chunk's range and that it
   * is a multiple of 64) */
  const int env = p->ov.cl_decode, fixed_set = p->ov.cl_decode_chunk > 0;
  const unsigned long fixed = (unsigned long)p->ov.cl_decode_chunk;
  da_status s;
  const char *why = dec_refusal(p);
  if (env == 1 && why)
    return da_set_error(ctx, DA_ERR_UNSUPPORTED,
                        "DISTRATTN_CL_DECODE=1: the split-KV decode kernels cannot run this plan: "
                        "%s",
                        why);
  const long R = (long)(d->heads / d->kv_heads) * d->seq_q;
  if (why || env == 0 || (env != 1 && R > DEC_ROWS_AUTO)) return DA_SUCCESS;
  cl_choice kc;
  if ((s = kernel_choice(p, &kc)) != DA_SUCCESS) return s;
  const int tiled = kc.kind >= 0 ? kc.kind : !bc->is_cpu;
  const size_t D = (size_t)d->head_dim, vw = (size_t)bc->vw, dp = round_up(D, vw);
  /* rows per work-group: R in as few groups of at most DEC_RB_MAX as
   * possible, padded to whole register tiles of RT rows (rows shape) */
  const long nrg = (R + DEC_RB_MAX - 1) / DEC_RB_MAX;
  long rb = (R + nrg - 1) / nrg;
  const long rt = rb < 4 ? rb : 4;
  rb = (rb + rt - 1) / rt * rt;
  const size_t nv = dp / vw;
  const size_t ut = nv % 4 == 0 ? 4 : nv % 3 == 0 ? 3 : nv % 2 == 0 ? 2 : 1;
  size_t kb = vw, nt = 1;
  /* rows shape: lanes are keys (a tree of adds sums each row's products)
   * up to 8 rows, rows beyond (when they fit a vector) */
  const int lanes = !tiled && rb > 8 && (size_t)rb <= vw;
  if (lanes) kb = 16;
  if (tiled) {
    nt = DEC_NT < bc->max_wg ? DEC_NT : bc->max_wg;
    kb = 0;
    for (size_t t = 32; t >= 8 && !kb && nt >= (size_t)rb; t /= 2) /* a work-item per row */
      if (4 * ((size_t)rb * D + t * (D + 1) + (size_t)rb * t + 6 * (size_t)rb) + 256 <=
          bc->local_mem)
        kb = t;
    if (!kb) {
      if (env != 1) return DA_SUCCESS;
      return da_set_error(ctx, DA_ERR_UNSUPPORTED,
                          "DISTRATTN_CL_DECODE=1: the split-KV decode kernel (tiled shape) needs "
                          "more than the device's %llu bytes of local memory for head_dim %d, or "
                          "more than its %zu work-items per work-group",
                          (unsigned long long)bc->local_mem, d->head_dim, bc->max_wg);
    }
  }
  /* chunks */
  const double units = (double)d->batch * d->kv_heads * nrg;
  const double target =
      (double)bc->cus * (bc->is_cpu && !tiled ? DEC_WG_PER_CU_CPU : DEC_WG_PER_CU_GPU);
  long C;
  if (fixed_set) {
    C = (long)fixed;
  } else {
    double c = (double)d->seq_k * units / target;
    if (c < DEC_CHUNK_MIN) c = DEC_CHUNK_MIN;
    if (c > DEC_CHUNK_MAX) c = DEC_CHUNK_MAX;
    C = ((long)c + 63) / 64 * 64;
  }
  const long nch = d->seq_k > 0 ? (d->seq_k + C - 1) / C : 1;
  if ((double)nrg * nch * nt > 2147483647.0) {
    if (env != 1) return DA_SUCCESS;
    return da_set_error(ctx, DA_ERR_UNSUPPORTED,
                        "DISTRATTN_CL_DECODE=1: %ld chunks of %ld keys are too many for the "
                        "decode kernel's work-groups",
                        nch, C);
  }
  size_t acc_bytes = 0, ml_bytes = 0;
  if ((s = SIZE_OF("decode partial results", &acc_bytes, (size_t)d->batch, (size_t)d->heads,
                   (size_t)d->seq_q, (size_t)nch, dp, 4)) ||
      (s = SIZE_OF("decode partial sums", &ml_bytes, (size_t)d->batch, (size_t)d->heads,
                   (size_t)d->seq_q, (size_t)nch, 8)))
    return s;
  char opts[512];
  snprintf(opts, sizeof opts,
           "-DDEC_TILED=%d -DDTYPE=%d -DD=%zu -DDP=%zu -DVW=%zu -DRB=%ld -DRT=%ld -DUT=%zu "
           "-DVDIRECT=%d -DDEC_LANES=%d -DKB=%zu -DNT=%zu %s%s",
           tiled, (int)d->dtype, D, dp, vw, rb, rt, ut, rb == rt && dp == D, lanes, kb, nt,
           ext_opts(p).s, fp_opts(bc));
  if ((s = make_kernel(ctx, DA_CL_SRC_DEC, opts, "da_dec", &bp->k_dec)) != DA_SUCCESS ||
      (s = make_kernel(ctx, DA_CL_SRC_DEC, opts, "da_dec_combine", &bp->k_comb)) != DA_SUCCESS ||
      (s = new_buffer(ctx, acc_bytes, &bp->pacc, "decode partial results")) != DA_SUCCESS ||
      (s = new_buffer(ctx, ml_bytes, &bp->pml, "decode partial sums")) != DA_SUCCESS)
    return s;
  bp->dec = 1;
  bp->dec_nrg = (int)nrg;
  bp->dec_nch = (int)nch;
  bp->dec_c = (int)C;
  bp->dec_wg = nt;
  bp->dec_nv = nv;
  bp->dec_tiled = tiled;
  bp->dec_rb = (int)rb;
  bp->dec_kb = (int)kb;
  return DA_SUCCESS;
}

static da_status prepare_gemm(const da_plan *p, da_cl_plan *bp) {
  da_context *ctx = p->ctx;
#ifdef DA_CL_NO_CLBLAST
  (void)p;
  return da_set_error(ctx, DA_ERR_UNSUPPORTED,
                      "OpenCL: DA_ALGO_GEMM needs CLBlast, and this module was configured --without-clblast");
#else
  if (!da_cl_blast(ctx)) return DA_ERR_UNSUPPORTED; /* loads CLBlast; the reason is set */
  da_cl_ctx *bc = ctx->bctx;
  const da_attn_desc *d = &p->d;
  const size_t D = (size_t)d->head_dim, G = (size_t)d->group_size, ng = (size_t)p->ng;
  const size_t rep = (size_t)(d->heads / d->kv_heads), units = (size_t)d->batch * d->kv_heads;
  const size_t seq_k = (size_t)d->seq_k, nt = (size_t)p->n_tiles;
  da_status s;
  size_t sl = 64;
  while (sl > bc->max_wg && sl > 1) sl /= 2;
  bp->sl = sl;
  if (G > 1 && nt * (size_t)d->hash_block > (size_t)INT32_MAX)
    return da_set_error(ctx, DA_ERR_UNSUPPORTED,
                        "OpenCL: DA_ALGO_GEMM pads seq_q = %d to whole hash tiles, past 2^31 rows",
                        d->seq_q);
  bp->rp = G > 1 ? (int)(nt * (size_t)d->hash_block) : d->seq_q;
  char opts[512];
  snprintf(opts, sizeof opts, "-DDTYPE=%d -DD=%zu -DG=%zu -DNG=%zu -DHB=%d -DCAUSAL=%d -DSL=%zu%s",
           (int)d->dtype, D, G, ng, d->hash_block, d->causal ? 1 : 0, sl, fp_opts(bc));
  if ((s = make_kernel(ctx, DA_CL_SRC_AUX, opts, "da_softmax", &bp->k_soft)) != DA_SUCCESS ||
      (s = make_kernel(ctx, DA_CL_SRC_AUX, opts, "da_store_out", &bp->k_store)) != DA_SUCCESS)
    return s;
  if (d->dtype != DA_F32 &&
      (s = make_kernel(ctx, DA_CL_SRC_AUX, opts, "da_to_f32", &bp->k_to32)) != DA_SUCCESS)
    return s;
  if (G > 1 &&
      ((s = make_kernel(ctx, DA_CL_SRC_AUX, opts, "da_fuse_q", &bp->k_fq)) != DA_SUCCESS ||
       (s = make_kernel(ctx, DA_CL_SRC_AUX, opts, "da_fuse_k", &bp->k_fk)) != DA_SUCCESS))
    return s;
  /* Chunks of (batch, kv head) units bound the logits to a few hundred MiB. */
  const size_t rp = (size_t)bp->rp;
  size_t s_u = 0, k_u = 0, of_bytes = 0, qs_bytes = 0;
  if ((s = SIZE_OF("GEMM logits", &s_u, rep, rp, seq_k, 4)) ||
      (G > 1 && (s = SIZE_OF("fused K", &k_u, rep, nt, seq_k, ng, 4))) ||
      (s = SIZE_OF("GEMM output", &of_bytes, (size_t)d->batch, (size_t)d->heads, rp, D, 4)) ||
      (G > 1 && (s = SIZE_OF("fused Q", &qs_bytes, (size_t)d->batch, (size_t)d->heads, rp, ng, 4))))
    return s;
  size_t per = s_u > k_u ? s_u : k_u;
  cl_ulong cap = bc->max_alloc < ((cl_ulong)512 << 20) ? bc->max_alloc : ((cl_ulong)512 << 20);
  if ((cl_ulong)per > bc->max_alloc)
    return da_set_error(ctx, DA_ERR_DEVICE_MEMORY,
                        "OpenCL: the GEMM logits of one kv head need %zu bytes, more than "
                        "CL_DEVICE_MAX_MEM_ALLOC_SIZE (%llu)",
                        per, (unsigned long long)bc->max_alloc);
  size_t upc = (size_t)(cap / per);
  if (upc < 1) upc = 1;
  if (upc > units) upc = units;
  bp->upc = upc;
  if ((s = new_buffer(ctx, upc * s_u, &bp->s, "GEMM logits")) != DA_SUCCESS) return s;
  if ((s = new_buffer(ctx, of_bytes, &bp->of, "GEMM output")) != DA_SUCCESS)
    return s;
  if (d->dtype != DA_F32) {
    size_t q32 = 0, kv32 = 0;
    if ((s = SIZE_OF("f32 Q", &q32, p->q_elems, 4)) || (s = SIZE_OF("f32 K", &kv32, p->kv_elems, 4)))
      return s;
    if (G == 1 && ((s = new_buffer(ctx, q32, &bp->q32, "f32 Q")) != DA_SUCCESS ||
                   (s = new_buffer(ctx, kv32, &bp->k32, "f32 K")) != DA_SUCCESS))
      return s;
    if ((s = new_buffer(ctx, kv32, &bp->v32, "f32 V")) != DA_SUCCESS) return s;
  }
  if (G > 1) {
    if ((s = new_buffer(ctx, qs_bytes, &bp->qs, "fused Q")) != DA_SUCCESS ||
        (s = new_buffer(ctx, upc * k_u, &bp->kfz, "fused K")) != DA_SUCCESS)
      return s;
  }
  return DA_SUCCESS;
#endif
}

/* DA_STRATEGY_PROJECTION (SPEC 1c), for the backward pass: M_h = A_h
 * B_h^T and its transpose per query head (da_proj_products: double sums,
 * rounded once), on the device for the plan's life. */
static da_status prepare_proj_bwd(const da_plan *p, da_cl_plan *bp) {
  da_context *ctx = p->ctx;
  da_cl_ctx *bc = ctx->bctx;
  const da_attn_desc *d = &p->d;
  const size_t D = (size_t)d->head_dim, per = D * D;
  size_t bytes = 0;
  da_status s;
  if ((s = SIZE_OF("projections' products A_h B_h^T", &bytes, (size_t)d->heads, 2, D, D, 4)))
    return s;
  if ((s = new_buffer(ctx, bytes, &bp->pm, "the projections' products A_h B_h^T")) != DA_SUCCESS)
    return s;
  float *m = malloc(bytes);
  if (!m)
    return da_set_error(ctx, DA_ERR_HOST_MEMORY,
                        "OpenCL: no host memory for %zu bytes of the projections' products", bytes);
  const size_t R = (size_t)p->x.rank;
  for (size_t h = 0; h < (size_t)d->heads; h++) /* [h][0] = M_h, [h][1] = M_h^T */
    da_proj_products(p->sproj + h * 2 * D * R, 1, d->head_dim, p->x.rank, m + 2 * h * per,
                     m + (2 * h + 1) * per);
  cl_int e = clEnqueueWriteBuffer(bc->q, bp->pm, CL_TRUE, 0, bytes, m, 0, NULL, NULL);
  free(m);
  CK(e, "clEnqueueWriteBuffer(the projections' products)");
  return DA_SUCCESS;
}

cl_mem da_cl_bwd_proj(const da_plan *p) {
  const da_cl_plan *bp = p->bplan;
  return bp ? bp->pm : NULL;
}

da_status da_cl_plan_prepare(const da_plan *p, void **bplan) {
  da_context *ctx = p->ctx;
  if (p->d.algo == DA_ALGO_GEMM && p->x.strategy == DA_STRATEGY_PROJECTION)
    return da_set_error(ctx, DA_ERR_UNSUPPORTED,
                        "OpenCL: ext.strategy = DA_STRATEGY_PROJECTION runs on the fused kernels "
                        "(DA_ALGO_FUSED), not DA_ALGO_GEMM");
  if (p->d.algo == DA_ALGO_GEMM && p->ext_used) return da_refuse_gemm_ext(p, "OpenCL");
  da_cl_plan *bp = calloc(1, sizeof *bp);
  if (!bp) return da_set_error(ctx, DA_ERR_HOST_MEMORY, "OpenCL: out of host memory");
  da_status s = DA_SUCCESS;
  if (p->d.group_size > 1) s = ensure_hash(p, bp);
  if (s == DA_SUCCESS) s = prepare_decode(p, bp);
  if (s == DA_SUCCESS && !bp->dec)
    s = p->d.algo == DA_ALGO_GEMM ? prepare_gemm(p, bp) : prepare_fused(p, bp);
  if (s == DA_SUCCESS && p->x.strategy == DA_STRATEGY_PROJECTION) s = prepare_proj_bwd(p, bp);
  if (s != DA_SUCCESS) {
    release_plan(bp);
    return s;
  }
  *bplan = bp;
  return DA_SUCCESS;
}

/* What a plan runs (da_plan_get_kernel): the decode kernels, GEMM, or the
 * fused kernel of either shape, as plan_prepare chose them. */
void da_cl_plan_kernel(const da_plan *p, da_kernel_info *out) {
  const da_cl_plan *bp = p->bplan;
  if (!bp) return;
  if (bp->dec) {
    snprintf(out->name, sizeof out->name, "split-kv decode");
    snprintf(out->variant, sizeof out->variant, "%s", bp->dec_tiled ? "tiled" : "rows");
    out->tile_rows = bp->dec_rb;
    out->tile_cols = bp->dec_kb;
    out->threads = (int)bp->dec_wg;
    out->chunk = bp->dec_c;
    return;
  }
  if (p->d.algo == DA_ALGO_GEMM) {
    snprintf(out->name, sizeof out->name, "gemm");
    return;
  }
  snprintf(out->name, sizeof out->name, "%s", bp->tiled ? "tiled" : "rows");
  out->tile_rows = (int)bp->bm;
  out->tile_cols = (int)bp->bn;
  out->threads = (int)(bp->tiled ? 2 * bp->bm : bp->bm); /* as attention_fused's work-groups */
}

/* The groups of a dense Q (da_plan_groups_host's layout, whatever the
 * plan's strides). */
da_status da_cl_groups(const da_plan *p, void *q, void *perm) {
  da_status s = ensure_hash(p, p->bplan);
  if (s != DA_SUCCESS) return s;
  const da_attn_desc *d = &p->d;
  const long long st[3] = {(long long)d->heads * d->seq_q * d->head_dim,
                           (long long)d->seq_q * d->head_dim, d->head_dim};
  return enqueue_hash(p, (cl_mem)q, (cl_mem)perm, st, 0, NULL, 0);
}

/* The kernel arguments of one call that the fused and the decode kernels
 * share: the length and LSE buffers (O where a kernel is given one it
 * does not read: no lengths, no LSE), the rows, strides and offsets. */
typedef struct {
  cl_mem lens_q, lens_k, lse;
  cl_long rows_q, rows_k, qs0, qs1, qs2, ks0, ks1, ks2, vs0, vs1, vs2, os0, os1, os2;
  cl_ulong qoff, koff, voff, ooff, loff;
} call_args;

static call_args call_args_of(const da_plan *p, const da_call *c) {
  const da_attn_ext *x = &p->x;
  cl_mem o = c->o;
  call_args a;
  a.lens_q = x->seqlens == DA_SEQLENS_PACKED ? (cl_mem)c->cu_q : o;
  a.lens_k = x->seqlens == DA_SEQLENS_PACKED ? (cl_mem)c->cu_k
             : x->seqlens == DA_SEQLENS_KV   ? (cl_mem)c->seqlens_k
                                             : o;
  a.lse = x->lse ? (cl_mem)c->lse : o;
  a.rows_q = (cl_long)c->rows_q, a.rows_k = (cl_long)c->rows_k;
  a.qs0 = x->q_stride[0], a.qs1 = x->q_stride[1], a.qs2 = x->q_stride[2];
  a.ks0 = x->k_stride[0], a.ks1 = x->k_stride[1], a.ks2 = x->k_stride[2];
  a.vs0 = x->v_stride[0], a.vs1 = x->v_stride[1], a.vs2 = x->v_stride[2];
  a.os0 = x->o_stride[0], a.os1 = x->o_stride[1], a.os2 = x->o_stride[2];
  a.qoff = c->q_off, a.koff = c->k_off, a.voff = c->v_off, a.ooff = c->o_off;
  a.loff = c->lse_off;
  return a;
}

/* The fused attention of one call: the plan's layout (dense strides for a
 * plain plan) and the call's offsets, lengths and LSE buffer. */
static da_status attention_fused(const da_plan *p, const da_call *c) {
  da_context *ctx = p->ctx;
  da_cl_ctx *bc = ctx->bctx;
  da_cl_plan *bp = p->bplan;
  const da_attn_desc *d = &p->d;
  const da_attn_ext *x = &p->x;
  cl_mem q = c->q, k = c->k, v = c->v, o = c->o;
  const call_args a = call_args_of(p, c);
  da_status s;
  if (d->group_size > 1 &&
      (s = enqueue_hash(p, q, bp->perm, x->q_stride, c->q_off,
                        x->seqlens == DA_SEQLENS_PACKED ? a.lens_q : NULL, c->rows_q)) !=
          DA_SUCCESS)
    return s;
  cl_mem perm = d->group_size > 1 ? bp->perm : o, wts = d->group_size > 1 ? bp->wts : o;
  cl_int nkt = (cl_int)(((size_t)d->seq_k + bp->bn - 1) / bp->bn);
  cl_int seq_q = d->seq_q, seq_k = d->seq_k, heads = d->heads, kvh = d->kv_heads,
         nt = p->n_tiles;
  /* The projection strategy: Q A_h into Qp and K B_h into Kp (tiled) or
   * the key tiles (rows); the attention kernel reads those (f32, dense,
   * rows from each sequence's first, per query head) in place of Q and K. */
  cl_mem qin = q, kpin = k;
  cl_long aqs0 = a.qs0, aqs1 = a.qs1, aqs2 = a.qs2, aks0 = a.ks0, aks1 = a.ks1, aks2 = a.ks2;
  cl_ulong aqoff = a.qoff, akoff = a.koff;
  if (x->strategy == DA_STRATEGY_PROJECTION) {
    const cl_long R = x->rank;
    if ((s = enqueue_proj(p, q, bp->pq, 0, seq_q, a.lens_q, c->rows_q, x->q_stride, c->q_off, 0)) !=
        DA_SUCCESS)
      return s;
    if (bp->tiled)
      s = enqueue_proj(p, k, bp->pk, 1, seq_k, a.lens_k, c->rows_k, x->k_stride, c->k_off, 0);
    else
      s = enqueue_proj(p, k, bp->kb, 1, nkt * (cl_int)bp->bn, a.lens_k, c->rows_k, x->k_stride,
                       c->k_off, (cl_int)bp->bn);
    if (s != DA_SUCCESS) return s;
    qin = bp->pq, kpin = bp->pk;
    aqs2 = R, aqs1 = (cl_long)seq_q * R, aqs0 = (cl_long)heads * aqs1, aqoff = 0;
    aks2 = R, aks1 = (cl_long)seq_k * R, aks0 = (cl_long)heads * aks1, akoff = 0;
  }
  if (!bp->tiled) {
    cl_kernel kp = bp->k_prep;
    ARG(kp, 0, k);
    ARG(kp, 1, v);
    ARG(kp, 2, bp->kb);
    ARG(kp, 3, bp->vb);
    ARG(kp, 4, seq_k);
    ARG(kp, 5, nkt);
    ARG(kp, 6, kvh);
    ARG(kp, 7, a.lens_k);
    ARG(kp, 8, a.rows_k);
    ARG(kp, 9, a.ks0);
    ARG(kp, 10, a.ks1);
    ARG(kp, 11, a.ks2);
    ARG(kp, 12, a.koff);
    ARG(kp, 13, a.vs0);
    ARG(kp, 14, a.vs1);
    ARG(kp, 15, a.vs2);
    ARG(kp, 16, a.voff);
    size_t gws[3] = {bp->dp, (size_t)nkt * bp->bn, (size_t)d->batch * (size_t)d->kv_heads};
    CK(clEnqueueNDRangeKernel(bc->q, kp, 3, NULL, gws, NULL, 0, NULL, NULL),
       "clEnqueueNDRangeKernel(da_kv_prep)");
    if ((s = da_cl_order(ctx)) != DA_SUCCESS) return s;
  }
  cl_float qscale = da_log2_mul(d->scale); /* capped: SPEC 1, "Scale" */
  cl_kernel kr = bp->k_attn;
  ARG(kr, 0, qin);
  cl_mem kin = bp->tiled ? kpin : bp->kb, vin = bp->tiled ? v : bp->vb;
  ARG(kr, 1, kin);
  ARG(kr, 2, vin);
  ARG(kr, 3, o);
  ARG(kr, 4, perm);
  ARG(kr, 5, wts);
  ARG(kr, 6, a.lse);
  ARG(kr, 7, a.lens_q);
  ARG(kr, 8, a.lens_k);
  ARG(kr, 9, seq_q);
  ARG(kr, 10, seq_k);
  ARG(kr, 11, heads);
  ARG(kr, 12, kvh);
  ARG(kr, 13, nt);
  ARG(kr, 14, nkt);
  ARG(kr, 15, qscale);
  ARG(kr, 16, aqs0);
  ARG(kr, 17, aqs1);
  ARG(kr, 18, aqs2);
  ARG(kr, 19, aqoff);
  ARG(kr, 20, aks0);
  ARG(kr, 21, aks1);
  ARG(kr, 22, aks2);
  ARG(kr, 23, akoff);
  ARG(kr, 24, a.vs0);
  ARG(kr, 25, a.vs1);
  ARG(kr, 26, a.vs2);
  ARG(kr, 27, a.voff);
  ARG(kr, 28, a.os0);
  ARG(kr, 29, a.os1);
  ARG(kr, 30, a.os2);
  ARG(kr, 31, a.ooff);
  ARG(kr, 32, a.loff);
  ARG(kr, 33, a.rows_q);
  ARG(kr, 34, a.rows_k);
  const size_t items = bp->tiled ? 2 * bp->bm : bp->bm; /* work-items per work-group */
  size_t gws[3] = {((size_t)d->seq_q + bp->bm - 1) / bp->bm * items, (size_t)d->heads,
                   (size_t)d->batch};
  size_t lws[3] = {items, 1, 1};
  CK(clEnqueueNDRangeKernel(bc->q, kr, 3, NULL, gws, lws, 0, NULL, NULL),
     "clEnqueueNDRangeKernel(da_attn)");
  return da_cl_order(ctx);
}

/* The split-KV decode of one call (prepare_decode): the chunks' partial
 * results, then their merge into O and LSE. */
static da_status attention_decode(const da_plan *p, const da_call *c) {
  da_context *ctx = p->ctx;
  da_cl_ctx *bc = ctx->bctx;
  da_cl_plan *bp = p->bplan;
  const da_attn_desc *d = &p->d;
  cl_mem q = c->q, k = c->k, v = c->v, o = c->o;
  const call_args a = call_args_of(p, c);
  const cl_int seq_q = d->seq_q, seq_k = d->seq_k, heads = d->heads, kvh = d->kv_heads,
               nrg = bp->dec_nrg, nch = bp->dec_nch, C = bp->dec_c;
  const cl_float qscale = da_log2_mul(d->scale); /* capped: SPEC 1, "Scale" */
  cl_kernel kd = bp->k_dec;
  ARG(kd, 0, q);
  ARG(kd, 1, k);
  ARG(kd, 2, v);
  ARG(kd, 3, bp->pacc);
  ARG(kd, 4, bp->pml);
  ARG(kd, 5, a.lens_q);
  ARG(kd, 6, a.lens_k);
  ARG(kd, 7, seq_q);
  ARG(kd, 8, seq_k);
  ARG(kd, 9, heads);
  ARG(kd, 10, kvh);
  ARG(kd, 11, nrg);
  ARG(kd, 12, nch);
  ARG(kd, 13, C);
  ARG(kd, 14, qscale);
  ARG(kd, 15, a.qs0);
  ARG(kd, 16, a.qs1);
  ARG(kd, 17, a.qs2);
  ARG(kd, 18, a.qoff);
  ARG(kd, 19, a.ks0);
  ARG(kd, 20, a.ks1);
  ARG(kd, 21, a.ks2);
  ARG(kd, 22, a.koff);
  ARG(kd, 23, a.vs0);
  ARG(kd, 24, a.vs1);
  ARG(kd, 25, a.vs2);
  ARG(kd, 26, a.voff);
  ARG(kd, 27, a.rows_q);
  ARG(kd, 28, a.rows_k);
  size_t gws[3] = {(size_t)nrg * (size_t)nch * bp->dec_wg, (size_t)kvh, (size_t)d->batch};
  size_t lws[3] = {bp->dec_wg, 1, 1};
  CK(clEnqueueNDRangeKernel(bc->q, kd, 3, NULL, gws, lws, 0, NULL, NULL),
     "clEnqueueNDRangeKernel(da_dec)");
  da_status s = da_cl_order(ctx);
  if (s != DA_SUCCESS) return s;
  cl_kernel kc = bp->k_comb;
  ARG(kc, 0, bp->pacc);
  ARG(kc, 1, bp->pml);
  ARG(kc, 2, o);
  ARG(kc, 3, a.lse);
  ARG(kc, 4, a.lens_q);
  ARG(kc, 5, a.lens_k);
  ARG(kc, 6, seq_q);
  ARG(kc, 7, seq_k);
  ARG(kc, 8, heads);
  ARG(kc, 9, nch);
  ARG(kc, 10, a.os0);
  ARG(kc, 11, a.os1);
  ARG(kc, 12, a.os2);
  ARG(kc, 13, a.ooff);
  ARG(kc, 14, a.loff);
  ARG(kc, 15, a.rows_q);
  ARG(kc, 16, a.rows_k);
  size_t gws2[3] = {bp->dec_nv, (size_t)d->seq_q, (size_t)d->batch * (size_t)d->heads};
  CK(clEnqueueNDRangeKernel(bc->q, kc, 3, NULL, gws2, NULL, 0, NULL, NULL),
     "clEnqueueNDRangeKernel(da_dec_combine)");
  return da_cl_order(ctx);
}

#ifndef DA_CL_NO_CLBLAST
static da_status blast_fail(da_context *ctx, int c, const char *what) {
  da_status s = ((int)c == CL_OUT_OF_RESOURCES || (int)c == CL_MEM_OBJECT_ALLOCATION_FAILURE)
                    ? DA_ERR_DEVICE_MEMORY
                    : DA_ERR_BACKEND;
  if ((int)c <= 0 && (int)c > -100)
    return da_set_error(ctx, s, "CLBlast: %s failed: %s (%d)", what, da_cl_errname((cl_int)c),
                        (int)c);
  return da_set_error(ctx, s, "CLBlast: %s failed: CLBlast status %d", what, (int)c);
}

/* C[b] = A[b] op(B[b]), row-major, for b < batch. */
static da_status sgemm(da_context *ctx, int tb, size_t m, size_t n, size_t kk, cl_mem a,
                       size_t aoff, size_t lda, size_t as, cl_mem b, size_t boff, size_t ldb,
                       size_t bs, cl_mem c, size_t coff, size_t ldc, size_t cs, size_t batch) {
  da_cl_ctx *bc = ctx->bctx;
  cl_event ev = NULL;
  da_blast_sgemm_sb_fn gemm = da_cl_blast(ctx); /* loaded by the plan's preparation */
  if (!gemm) return DA_ERR_UNSUPPORTED;
  int r = gemm(DA_BLAST_ROW_MAJOR, DA_BLAST_TRANS_NO, tb ? DA_BLAST_TRANS_YES : DA_BLAST_TRANS_NO, m,
               n, kk, 1.0f, a, aoff, lda, as, b, boff, ldb, bs, 0.0f, c, coff, ldc, cs, batch, &bc->q,
               &ev);
  if (ev) {
    cl_int e = clReleaseEvent(ev);
    if (r == DA_BLAST_SUCCESS && e != CL_SUCCESS) return da_cl_fail(ctx, e, "clReleaseEvent(CLBlast)");
  }
  if (r != DA_BLAST_SUCCESS) return blast_fail(ctx, r, "CLBlastSgemmStridedBatched");
  return da_cl_order(ctx);
}

static da_status to_f32(const da_plan *p, cl_mem src, cl_mem dst, size_t n) {
  da_context *ctx = p->ctx;
  da_cl_ctx *bc = ctx->bctx;
  da_cl_plan *bp = p->bplan;
  cl_ulong nn = n;
  ARG(bp->k_to32, 0, src);
  ARG(bp->k_to32, 1, dst);
  ARG(bp->k_to32, 2, nn);
  size_t gws = round_up(n, 64);
  CK(clEnqueueNDRangeKernel(bc->q, bp->k_to32, 1, NULL, &gws, NULL, 0, NULL, NULL),
     "clEnqueueNDRangeKernel(da_to_f32)");
  return da_cl_order(ctx);
}

static da_status attention_gemm(const da_plan *p, cl_mem q, cl_mem k, cl_mem v, cl_mem o) {
  da_context *ctx = p->ctx;
  da_cl_ctx *bc = ctx->bctx;
  da_cl_plan *bp = p->bplan;
  const da_attn_desc *d = &p->d;
  const size_t D = (size_t)d->head_dim, G = (size_t)d->group_size, ng = (size_t)p->ng;
  const size_t rep = (size_t)(d->heads / d->kv_heads), units = (size_t)d->batch * d->kv_heads;
  const size_t seq_q = (size_t)d->seq_q, seq_k = (size_t)d->seq_k, nt = (size_t)p->n_tiles;
  const size_t hb = (size_t)d->hash_block, rp = (size_t)bp->rp;
  cl_int iseq_q = d->seq_q, iseq_k = d->seq_k, irp = bp->rp, heads = d->heads,
         kvh = d->kv_heads, int_nt = p->n_tiles;
  da_status s;
  cl_mem qa = q, ka = k, va = v;
  if (d->dtype != DA_F32) {
    if (G == 1) {
      if ((s = to_f32(p, q, bp->q32, p->q_elems)) != DA_SUCCESS) return s;
      if ((s = to_f32(p, k, bp->k32, p->kv_elems)) != DA_SUCCESS) return s;
      qa = bp->q32;
      ka = bp->k32;
    }
    if ((s = to_f32(p, v, bp->v32, p->kv_elems)) != DA_SUCCESS) return s;
    va = bp->v32;
  }
  if (G > 1) {
    if ((s = enqueue_hash(p, q, bp->perm, p->x.q_stride, 0, NULL, 0)) != DA_SUCCESS) return s;
    ARG(bp->k_fq, 0, q);
    ARG(bp->k_fq, 1, bp->perm);
    ARG(bp->k_fq, 2, bp->wts);
    ARG(bp->k_fq, 3, bp->qs);
    ARG(bp->k_fq, 4, iseq_q);
    ARG(bp->k_fq, 5, irp);
    ARG(bp->k_fq, 6, int_nt);
    size_t gws[3] = {round_up(ng, 8), round_up(rp, 8), (size_t)d->batch * d->heads};
    size_t lws[3] = {8, 8, 1};
    CK(clEnqueueNDRangeKernel(bc->q, bp->k_fq, 3, NULL, gws, lws, 0, NULL, NULL),
       "clEnqueueNDRangeKernel(da_fuse_q)");
    if ((s = da_cl_order(ctx)) != DA_SUCCESS) return s;
  }
  const cl_float scale = da_scale_eff(d->scale); /* capped: SPEC 1, "Scale" */
  for (size_t u0 = 0; u0 < units; u0 += bp->upc) {
    const size_t nu = units - u0 < bp->upc ? units - u0 : bp->upc;
    if (G == 1) {
      s = sgemm(ctx, 1, rep * seq_q, seq_k, D, qa, u0 * rep * seq_q * D, D, rep * seq_q * D, ka,
                u0 * seq_k * D, D, seq_k * D, bp->s, 0, seq_k, rep * seq_q * seq_k, nu);
      if (s != DA_SUCCESS) return s;
    } else {
      cl_int bh0 = (cl_int)(u0 * rep);
      ARG(bp->k_fk, 0, k);
      ARG(bp->k_fk, 1, bp->perm);
      ARG(bp->k_fk, 2, bp->wts);
      ARG(bp->k_fk, 3, bp->kfz);
      ARG(bp->k_fk, 4, iseq_k);
      ARG(bp->k_fk, 5, heads);
      ARG(bp->k_fk, 6, kvh);
      ARG(bp->k_fk, 7, int_nt);
      ARG(bp->k_fk, 8, bh0);
      size_t gws[3] = {round_up(ng, 8), round_up(seq_k, 8), nu * rep * nt};
      size_t lws[3] = {8, 8, 1};
      CK(clEnqueueNDRangeKernel(bc->q, bp->k_fk, 3, NULL, gws, lws, 0, NULL, NULL),
         "clEnqueueNDRangeKernel(da_fuse_k)");
      if ((s = da_cl_order(ctx)) != DA_SUCCESS) return s;
      s = sgemm(ctx, 1, hb, seq_k, ng, bp->qs, u0 * rep * rp * ng, ng, hb * ng, bp->kfz, 0, ng,
                seq_k * ng, bp->s, 0, seq_k, hb * seq_k, nu * rep * nt);
      if (s != DA_SUCCESS) return s;
    }
    ARG(bp->k_soft, 0, bp->s);
    ARG(bp->k_soft, 1, irp);
    ARG(bp->k_soft, 2, iseq_q);
    ARG(bp->k_soft, 3, iseq_k);
    ARG(bp->k_soft, 4, scale);
    size_t gws = nu * rep * rp * bp->sl, lws = bp->sl;
    CK(clEnqueueNDRangeKernel(bc->q, bp->k_soft, 1, NULL, &gws, &lws, 0, NULL, NULL),
       "clEnqueueNDRangeKernel(da_softmax)");
    if ((s = da_cl_order(ctx)) != DA_SUCCESS) return s;
    s = sgemm(ctx, 0, rep * rp, D, seq_k, bp->s, 0, seq_k, rep * rp * seq_k, va, u0 * seq_k * D, D,
              seq_k * D, bp->of, u0 * rep * rp * D, D, rep * rp * D, nu);
    if (s != DA_SUCCESS) return s;
  }
  ARG(bp->k_store, 0, bp->of);
  ARG(bp->k_store, 1, o);
  ARG(bp->k_store, 2, irp);
  ARG(bp->k_store, 3, iseq_q);
  size_t gws[3] = {round_up(D, 8), round_up(seq_q, 8), (size_t)d->batch * d->heads};
  size_t lws[3] = {8, 8, 1};
  CK(clEnqueueNDRangeKernel(bc->q, bp->k_store, 3, NULL, gws, lws, 0, NULL, NULL),
     "clEnqueueNDRangeKernel(da_store_out)");
  return da_cl_order(ctx);
}
#endif

da_status da_cl_attention(const da_plan *p, void *q, void *k, void *v, void *o) {
  da_call c;
  memset(&c, 0, sizeof c);
  c.q = q, c.k = k, c.v = v, c.o = o;
  return da_cl_attention_ext(p, &c);
}

/* Every option of da_attn_ext runs in the fused kernels; the GEMM
 * algorithm (plans without options only: prepare_gemm refuses the rest)
 * takes no offsets. Lengths in device buffers are never read here: the
 * kernels clamp them (common.cl, da_seq_q). */
da_status da_cl_attention_ext(const da_plan *p, const da_call *c) {
  if (!p->bplan)
    return da_set_error(p->ctx, DA_ERR_INVALID_ARG, "OpenCL: the plan was not prepared");
  if (p->d.algo == DA_ALGO_GEMM) {
#ifndef DA_CL_NO_CLBLAST
    if (c->q_off || c->k_off || c->v_off || c->o_off)
      return da_set_error(p->ctx, DA_ERR_UNSUPPORTED,
                          "OpenCL: DA_ALGO_GEMM takes no element offsets (q %zu, k %zu, v %zu, "
                          "o %zu); DA_ALGO_FUSED does",
                          c->q_off, c->k_off, c->v_off, c->o_off);
    return attention_gemm(p, (cl_mem)c->q, (cl_mem)c->k, (cl_mem)c->v, (cl_mem)c->o);
#else
    return da_set_error(p->ctx, DA_ERR_UNSUPPORTED, "OpenCL: DA_ALGO_GEMM needs CLBlast");
#endif
  }
  if (((da_cl_plan *)p->bplan)->dec) return attention_decode(p, c);
  return attention_fused(p, c);
}
