# SPDX-License-Identifier: Apache-2.0
# lib/: the backend-agnostic core and the built-in CPU backend.
include_HEADERS = include/distrattn.h include/distrattn_opencl.h include/distrattn_cuda.h

# Everything, hidden by default, in one convenience library: the shared
# library exports the DA_API symbols of it; the tests link it directly to
# reach the internal reference functions.
noinst_LTLIBRARIES += lib/libdacore.la
lib_libdacore_la_SOURCES = lib/status.c lib/hash.c lib/registry.c lib/elfcheck.c lib/core.c \
	lib/cpu_backend.c lib/cpu_kern_generic.c lib/cpu_kern_avx2.c lib/cpu_kern_avx512.c \
	lib/cpu_bwd.c lib/proj.c
lib_libdacore_la_CFLAGS = $(AM_CFLAGS) $(VISIBILITY_CFLAGS) -pthread
noinst_HEADERS += lib/da_backend.h lib/da_internal.h lib/cpu_kernels.h lib/cpu_kern_tmpl.h \
	lib/cpu_bwd.h lib/cpu_bwd_tmpl.h

lib_LTLIBRARIES += lib/libdistrattn.la
lib_libdistrattn_la_SOURCES =
lib_libdistrattn_la_LIBADD = lib/libdacore.la
lib_libdistrattn_la_LDFLAGS = -version-info $(DA_LT_VERSION) -no-undefined -pthread
