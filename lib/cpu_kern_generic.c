/* SPDX-License-Identifier: Apache-2.0 */
/* The portable CPU kernels: GCC/Clang vector extensions at the compiler's
 * default width, or plain scalar C for any other compiler. */
#include "cpu_kernels.h"

#define KISA 0
#define KNAME da_cpu_kernels_generic
#define KISA_NAME "generic"
#include "cpu_kern_tmpl.h"
