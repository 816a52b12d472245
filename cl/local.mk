# SPDX-License-Identifier: Apache-2.0
# cl/: the OpenCL backend, a module loaded at run time (distrattn_opencl.so).
# The kernels in cl/*.cl are embedded as C strings into generated headers in
# the build tree (only $(SED) is needed).
DA_CL_KERNELS = cl/common.cl cl/hash.cl cl/attn.cl cl/aux.cl cl/decode.cl cl/bwd.cl
EXTRA_DIST += $(DA_CL_KERNELS)

if HAVE_OPENCL
DA_CL_GENERATED = cl/common_cl.h cl/hash_cl.h cl/attn_cl.h cl/aux_cl.h cl/decode_cl.h cl/bwd_cl.h
BUILT_SOURCES += $(DA_CL_GENERATED)
CLEANFILES += $(DA_CL_GENERATED)

backend_LTLIBRARIES += cl/distrattn_opencl.la
cl_distrattn_opencl_la_SOURCES = cl/cl_backend.c cl/cl_plan.c cl/cl_bwd.c cl/cl_util.c cl/cl_blast.c \
	cl/cl_internal.h
nodist_cl_distrattn_opencl_la_SOURCES = $(DA_CL_GENERATED)
cl_distrattn_opencl_la_CPPFLAGS = $(AM_CPPFLAGS) -I$(top_builddir)/cl \
	-DCL_TARGET_OPENCL_VERSION=120
cl_distrattn_opencl_la_CFLAGS = $(AM_CFLAGS) $(OPENCL_CFLAGS) $(CLBLAST_CFLAGS) \
	$(VISIBILITY_CFLAGS) -pthread
cl_distrattn_opencl_la_LIBADD = $(OPENCL_LIBS)
cl_distrattn_opencl_la_LDFLAGS = -module -avoid-version -shared -no-undefined -pthread \
	-export-symbols-regex '^distrattn_backend_entry$$'

# name.cl -> name_cl.h holding `static const char da_cl_<name>_src[]`.
DA_CL_EMBED = $(MKDIR_P) cl && { \
	echo "/* generated from $$src by cl/local.mk; do not edit */"; \
	echo "static const char $$var[] ="; \
	$(SED) -e 's/\\/\\\\/g' -e 's/"/\\"/g' -e 's/^/"/' -e 's/$$/\\n"/' "$$src"; \
	echo ";"; } > $@-t && mv -f $@-t $@

cl/common_cl.h: $(srcdir)/cl/common.cl
	$(AM_V_GEN)src=$(srcdir)/cl/common.cl; var=da_cl_common_src; $(DA_CL_EMBED)
cl/hash_cl.h: $(srcdir)/cl/hash.cl
	$(AM_V_GEN)src=$(srcdir)/cl/hash.cl; var=da_cl_hash_src; $(DA_CL_EMBED)
cl/attn_cl.h: $(srcdir)/cl/attn.cl
	$(AM_V_GEN)src=$(srcdir)/cl/attn.cl; var=da_cl_attn_src; $(DA_CL_EMBED)
cl/aux_cl.h: $(srcdir)/cl/aux.cl
	$(AM_V_GEN)src=$(srcdir)/cl/aux.cl; var=da_cl_aux_src; $(DA_CL_EMBED)
cl/decode_cl.h: $(srcdir)/cl/decode.cl
	$(AM_V_GEN)src=$(srcdir)/cl/decode.cl; var=da_cl_decode_src; $(DA_CL_EMBED)
cl/bwd_cl.h: $(srcdir)/cl/bwd.cl
	$(AM_V_GEN)src=$(srcdir)/cl/bwd.cl; var=da_cl_bwd_src; $(DA_CL_EMBED)
endif
