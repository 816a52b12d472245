/* SPDX-License-Identifier: Apache-2.0 */
/* OpenCL backend module: CLBlast, the BLAS of DA_ALGO_GEMM, loaded with
 * dlopen when a GEMM plan is first made, so that the module neither links
 * it nor needs its headers, and a machine without CLBlast keeps the fused
 * algorithm (a GEMM plan there is DA_ERR_UNSUPPORTED with dlopen's reason).
 * Loaded once per process and kept. */
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "cl_internal.h"

#ifdef HAVE_CLBLAST_C_H
/* The values this file spells out must be CLBlast's. */
#include <clblast_c.h>
_Static_assert((int)CLBlastLayoutRowMajor == (int)DA_BLAST_ROW_MAJOR, "CLBlastLayoutRowMajor");
_Static_assert((int)CLBlastTransposeNo == (int)DA_BLAST_TRANS_NO, "CLBlastTransposeNo");
_Static_assert((int)CLBlastTransposeYes == (int)DA_BLAST_TRANS_YES, "CLBlastTransposeYes");
_Static_assert((int)CLBlastSuccess == (int)DA_BLAST_SUCCESS, "CLBlastSuccess");
_Static_assert(sizeof(CLBlastStatusCode) == sizeof(int), "CLBlastStatusCode is an int");
#endif

/* CLBlast's soname (its library version 1.x); tests build a module that
 * names a library no machine has (tests/local.mk). */
#ifndef DA_CLBLAST_LIB
#define DA_CLBLAST_LIB "libclblast.so.1"
#endif

static pthread_once_t blast_once = PTHREAD_ONCE_INIT;
static da_blast_sgemm_sb_fn blast_sgemm_sb;
static char blast_why[512];

static void blast_load(void) {
  dlerror();
  void *dl = dlopen(DA_CLBLAST_LIB, RTLD_NOW | RTLD_LOCAL);
  if (!dl) {
    const char *e = dlerror();
    snprintf(blast_why, sizeof blast_why, "%s", e ? e : "dlopen(" DA_CLBLAST_LIB ") failed");
    return;
  }
  void *sym = dlsym(dl, "CLBlastSgemmStridedBatched");
  if (!sym) {
    const char *e = dlerror();
    snprintf(blast_why, sizeof blast_why, "%s", e ? e : DA_CLBLAST_LIB " lacks CLBlastSgemmStridedBatched");
    dlclose(dl);
    return;
  }
  memcpy(&blast_sgemm_sb, &sym, sizeof blast_sgemm_sb);
}

da_blast_sgemm_sb_fn da_cl_blast(da_context *ctx) {
  pthread_once(&blast_once, blast_load);
  if (!blast_sgemm_sb)
    da_set_error(ctx, DA_ERR_UNSUPPORTED, "OpenCL: DA_ALGO_GEMM needs CLBlast, which cannot be loaded: %s",
                 blast_why);
  return blast_sgemm_sb;
}
