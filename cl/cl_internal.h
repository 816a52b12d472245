/* SPDX-License-Identifier: Apache-2.0 */
/* OpenCL backend module: shared declarations (hidden; only
 * distrattn_backend_entry is exported). */
#ifndef DA_CL_INTERNAL_H
#define DA_CL_INTERNAL_H

#ifdef HAVE_CONFIG_H
#include "config.h"
#endif
#ifndef CL_TARGET_OPENCL_VERSION
#define CL_TARGET_OPENCL_VERSION 120
#endif
#ifdef __APPLE__
#include <OpenCL/opencl.h>
#else
#include <CL/cl.h>
#endif

#include "da_backend.h"

#if defined(__GNUC__) && __GNUC__ >= 4
#define DA_CL_HIDDEN __attribute__((visibility("hidden")))
#else
#define DA_CL_HIDDEN
#endif

/* CLBlast for DA_ALGO_GEMM (cl/cl_blast.c), loaded with dlopen when a GEMM
 * plan is first made: its one call and the values it takes, spelled out
 * here (checked against clblast_c.h where that header is present). */
enum { DA_BLAST_SUCCESS = 0, DA_BLAST_ROW_MAJOR = 101, DA_BLAST_TRANS_NO = 111,
       DA_BLAST_TRANS_YES = 112 };
typedef int (*da_blast_sgemm_sb_fn)(int layout, int a_trans, int b_trans, size_t m, size_t n,
                                    size_t k, float alpha, cl_mem a, size_t a_off, size_t a_ld,
                                    size_t a_stride, cl_mem b, size_t b_off, size_t b_ld,
                                    size_t b_stride, float beta, cl_mem c, size_t c_off,
                                    size_t c_ld, size_t c_stride, size_t batch,
                                    cl_command_queue *queue, cl_event *event);
/* CLBlastSgemmStridedBatched, loading CLBlast on the first call; NULL, with
 * DA_ERR_UNSUPPORTED and dlopen's reason set on ctx, where it cannot be. */
DA_CL_HIDDEN da_blast_sgemm_sb_fn da_cl_blast(da_context *ctx);

/* Programs built for a context, keyed by source and build options. */
enum { DA_CL_SRC_HASH = 0, DA_CL_SRC_ATTN = 1, DA_CL_SRC_AUX = 2, DA_CL_SRC_DEC = 3,
       DA_CL_SRC_BWD = 4 };

typedef struct da_cl_prog {
  struct da_cl_prog *next;
  int src;
  char *opts;
  cl_program prog;
} da_cl_prog;

typedef struct da_cl_ctx {
  cl_context cx;
  cl_command_queue q;
  cl_device_id dev;
  int ooo;               /* out-of-order queue (wrapped): barriers between commands */
  cl_ulong max_alloc;
  cl_ulong local_mem;
  size_t max_wg;
  cl_uint cus;            /* CL_DEVICE_MAX_COMPUTE_UNITS (at least 1) */
  int is_cpu;            /* CL_DEVICE_TYPE_CPU: larger tiles */
  int vw;                /* vector width of the fused kernel: 4, 8 or 16 */
  int crsqrt;            /* -cl-fp32-correctly-rounded-divide-sqrt is accepted */
  da_cl_prog *progs;
} da_cl_ctx;

DA_CL_HIDDEN const char *da_cl_errname(cl_int e);
/* da_set_error with the call that failed and the OpenCL error's name. */
DA_CL_HIDDEN da_status da_cl_fail(da_context *ctx, cl_int e, const char *what);
/* The program of source src built with opts for the context (cached). */
DA_CL_HIDDEN da_status da_cl_program(da_context *ctx, int src, const char *opts, cl_program *out);
/* A barrier after an enqueue when the queue is out of order. */
DA_CL_HIDDEN da_status da_cl_order(da_context *ctx);

DA_CL_HIDDEN da_status da_cl_plan_prepare(const da_plan *p, void **bplan);
DA_CL_HIDDEN void da_cl_plan_release(const da_plan *p);
DA_CL_HIDDEN void da_cl_plan_kernel(const da_plan *p, da_kernel_info *out);
DA_CL_HIDDEN da_status da_cl_attention(const da_plan *p, void *q, void *k, void *v, void *o);
DA_CL_HIDDEN da_status da_cl_attention_ext(const da_plan *p, const da_call *c);
DA_CL_HIDDEN da_status da_cl_groups(const da_plan *p, void *q, void *perm);
/* The backward pass (cl_bwd.c, bwd.cl; SPEC 1b). */
DA_CL_HIDDEN da_status da_cl_attention_bwd(const da_plan *p, const da_bwd_call *c);
/* The forward's groupings of Q (the call's layout: the plan's strides,
 * element offset qoff) into the plan's buffers, returned in perm and wts
 * (D entries per (batch, head, hash tile): the permutation in group order,
 * the weights a_c per original column c, as the CPU backend and CUDA). */
DA_CL_HIDDEN da_status da_cl_bwd_groups(const da_plan *p, cl_mem q, size_t qoff, cl_mem *perm,
                                        cl_mem *wts);
/* DA_STRATEGY_PROJECTION: the plan's M_h = A_h B_h^T and M_h^T,
 * [heads][2][head_dim][head_dim] f32, made at plan time (NULL otherwise). */
DA_CL_HIDDEN cl_mem da_cl_bwd_proj(const da_plan *p);

#endif /* DA_CL_INTERNAL_H */
