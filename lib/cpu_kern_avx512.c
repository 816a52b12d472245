/* SPDX-License-Identifier: Apache-2.0 */
/* The CPU kernels for x86 with AVX512F, AVX512BW, AVX512VL, AVX512DQ, AVX2, FMA, F16C, chosen at run
 * time (lib/cpu_backend.c); the target is set here, so the rest of the
 * library needs no -m flag. */
#include "cpu_kernels.h"

#ifdef DA_CPU_X86
#  include <immintrin.h>
#  if defined(__clang__)
#    pragma clang attribute push(__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c"))), apply_to = function)
#  else
#    pragma GCC push_options
#    pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")
#  endif
#  define KISA 2
#  define KNAME da_cpu_kernels_avx512
#  define KISA_NAME "avx512"
#  include "cpu_kern_tmpl.h"
#  if defined(__clang__)
#    pragma clang attribute pop
#  else
#    pragma GCC pop_options
#  endif
#else
typedef int da_cpu_kern_avx512_unused; /* not x86: nothing to build */
#endif
