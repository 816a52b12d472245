/* SPDX-License-Identifier: Apache-2.0 */
/* The CPU kernels for x86 with AVX2, FMA, F16C, chosen at run
 * time (lib/cpu_backend.c); the target is set here, so the rest of the
 * library needs no -m flag. */
#include "cpu_kernels.h"

#ifdef DA_CPU_X86
#  include <immintrin.h>
#  if defined(__clang__)
#    pragma clang attribute push(__attribute__((target("avx2,fma,f16c"))), apply_to = function)
#  else
#    pragma GCC push_options
#    pragma GCC target("avx2,fma,f16c")
#  endif
#  define KISA 1
#  define KNAME da_cpu_kernels_avx2
#  define KISA_NAME "avx2"
#  include "cpu_kern_tmpl.h"
#  if defined(__clang__)
#    pragma clang attribute pop
#  else
#    pragma GCC pop_options
#  endif
#else
typedef int da_cpu_kern_avx2_unused; /* not x86: nothing to build */
#endif
