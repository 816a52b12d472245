# SPDX-License-Identifier: Apache-2.0
# tests/: cmocka suites, run by `make check`. They link the convenience
# library lib/libdacore.la, which reaches the hidden reference functions of
# lib/da_internal.h, and find the backend modules built in this tree through
# DISTRATTN_BACKEND_PATH. DA_TEST_SEED=<n> repeats a run's random inputs;
# DISTRATTN_REQUIRE_BACKENDS=cpu,opencl makes an absent backend a failure.
EXTRA_DIST += tests/testutil.h tests/ref.h tests/cases.h tests/torch_wrap.py

# Without cmocka there are no test programs: unless configure was given
# --disable-tests-required, `make check` then fails saying why (configure
# only warns, so that the library itself still builds).
check-local:
	@if test "$(DA_CMOCKA_MISSING)" = fatal; then \
	  echo "make check: FAILED: cmocka >= 1.1 was not found when configure ran" >&2; \
	  echo "  (pkg-config cmocka; Debian: apt-get install libcmocka-dev), so none of the" >&2; \
	  echo "  test programs was built or run. Install it and re-run configure, or" >&2; \
	  echo "  configure with --disable-tests-required to let make check pass without them." >&2; \
	  exit 1; \
	fi

if HAVE_CMOCKA
da_test_programs = tests/test_status tests/test_desc tests/test_hash \
	tests/test_attention tests/test_invariants tests/test_consistency tests/test_ext \
	tests/test_backward tests/test_proj tests/test_kernel
check_PROGRAMS += $(da_test_programs)
TESTS += $(da_test_programs)

AM_TESTS_ENVIRONMENT = \
	DISTRATTN_BACKEND_PATH='$(abs_top_builddir)/cl/.libs:$(abs_top_builddir)/cuda/.libs'; \
	export DISTRATTN_BACKEND_PATH; \
	DA_SRCDIR='$(abs_top_srcdir)'; DA_CUDA_HOME='$(CUDA_HOME)'; export DA_SRCDIR DA_CUDA_HOME;

da_test_cflags = $(AM_CFLAGS) $(CMOCKA_CFLAGS)
da_test_ldadd = lib/libdacore.la $(CMOCKA_LIBS)
da_test_common = tests/testutil.c tests/testutil.h
da_test_ref = tests/ref.c tests/ref.h tests/cases.c tests/cases.h
# The one DATTNCAP reader (tools/capture_io.c), shared with `distrattn eval`;
# it widens f16 with tools/util.c's conversion.
da_capture_reader = tools/capture_io.c tools/capture_io.h tools/util.c tools/util.h

tests_test_status_SOURCES = tests/test_status.c $(da_test_common)
tests_test_status_CFLAGS = $(da_test_cflags)
tests_test_status_LDADD = $(da_test_ldadd)

tests_test_desc_SOURCES = tests/test_desc.c $(da_test_common)
tests_test_desc_CFLAGS = $(da_test_cflags)
tests_test_desc_LDADD = $(da_test_ldadd)

tests_test_hash_SOURCES = tests/test_hash.c $(da_test_common)
tests_test_hash_CFLAGS = $(da_test_cflags)
tests_test_hash_LDADD = $(da_test_ldadd)

tests_test_attention_SOURCES = tests/test_attention.c $(da_test_common) $(da_test_ref)
tests_test_attention_CFLAGS = $(da_test_cflags)
tests_test_attention_LDADD = $(da_test_ldadd)

tests_test_invariants_SOURCES = tests/test_invariants.c $(da_test_common) $(da_test_ref)
tests_test_invariants_CFLAGS = $(da_test_cflags)
tests_test_invariants_LDADD = $(da_test_ldadd)

tests_test_ext_SOURCES = tests/test_ext.c $(da_test_common)
tests_test_ext_CFLAGS = $(da_test_cflags)
tests_test_ext_LDADD = $(da_test_ldadd)

tests_test_backward_SOURCES = tests/test_backward.c $(da_test_common)
tests_test_backward_CFLAGS = $(da_test_cflags)
tests_test_backward_LDADD = $(da_test_ldadd)

tests_test_proj_SOURCES = tests/test_proj.c $(da_test_common)
tests_test_proj_CFLAGS = $(da_test_cflags)
tests_test_proj_LDADD = $(da_test_ldadd)

tests_test_kernel_SOURCES = tests/test_kernel.c $(da_test_common)
tests_test_kernel_CFLAGS = $(da_test_cflags)
tests_test_kernel_LDADD = $(da_test_ldadd)

tests_test_consistency_SOURCES = tests/test_consistency.c $(da_test_common) $(da_test_ref)
tests_test_consistency_CFLAGS = $(da_test_cflags)
tests_test_consistency_LDADD = $(da_test_ldadd)
endif

# Reliability (issue 6): the bad-input table and faults (test_faults), the
# thread-safety rule (test_threads), unusable backend modules and
# DISTRATTN_BACKEND_PATH (test_modules, one child process per case, with the
# fake module tests/.libs/distrattn_opencl.so built here, never installed),
# and backends loaded only when asked for (test_lazy: a CPU-only program maps
# no OpenCL/CUDA module or runtime and keeps its signal handlers).
# tests/bad_inputs.md is `tests/test_faults --table`; tests/valgrind.supp is
# used by scripts/ci-sanitize.sh.
EXTRA_DIST += tests/bad_inputs.md tests/valgrind.supp
if HAVE_CMOCKA
da_fault_programs = tests/test_faults tests/test_threads tests/test_modules \
	tests/test_lazy
check_PROGRAMS += $(da_fault_programs)
TESTS += $(da_fault_programs)

check_LTLIBRARIES = tests/distrattn_opencl.la
tests_distrattn_opencl_la_SOURCES = tests/fake_module.c
tests_distrattn_opencl_la_CFLAGS = $(AM_CFLAGS) $(VISIBILITY_CFLAGS)
tests_distrattn_opencl_la_LDFLAGS = -module -avoid-version -shared -rpath /nowhere

# The real OpenCL module built to load a CLBlast no machine has
# (tests/noblast/.libs/distrattn_opencl.so): test_modules checks that a GEMM
# plan is then DA_ERR_UNSUPPORTED naming dlopen's reason, and that the fused
# algorithm still works.
if HAVE_OPENCL
check_LTLIBRARIES += tests/noblast/distrattn_opencl.la
tests_noblast_distrattn_opencl_la_SOURCES = $(cl_distrattn_opencl_la_SOURCES)
nodist_tests_noblast_distrattn_opencl_la_SOURCES = $(DA_CL_GENERATED)
tests_noblast_distrattn_opencl_la_CPPFLAGS = $(cl_distrattn_opencl_la_CPPFLAGS) \
	-DDA_CLBLAST_LIB='"libda-no-such-clblast.so.1"'
tests_noblast_distrattn_opencl_la_CFLAGS = $(cl_distrattn_opencl_la_CFLAGS)
tests_noblast_distrattn_opencl_la_LIBADD = $(cl_distrattn_opencl_la_LIBADD)
tests_noblast_distrattn_opencl_la_LDFLAGS = $(cl_distrattn_opencl_la_LDFLAGS) -rpath /nowhere
endif

tests_test_faults_SOURCES = tests/test_faults.c $(da_test_common) $(da_test_ref)
tests_test_faults_CFLAGS = $(da_test_cflags)
tests_test_faults_LDADD = $(da_test_ldadd)

tests_test_threads_SOURCES = tests/test_threads.c $(da_test_common) $(da_test_ref)
tests_test_threads_CFLAGS = $(da_test_cflags) -pthread
tests_test_threads_LDFLAGS = -pthread
tests_test_threads_LDADD = $(da_test_ldadd)

tests_test_modules_SOURCES = tests/test_modules.c $(da_test_common)
tests_test_modules_CPPFLAGS = $(AM_CPPFLAGS) -DDA_TEST_BUILDDIR='"$(abs_top_builddir)"'
tests_test_modules_CFLAGS = $(da_test_cflags)
tests_test_modules_LDADD = $(da_test_ldadd)

tests_test_lazy_SOURCES = tests/test_lazy.c $(da_test_common)
tests_test_lazy_CFLAGS = $(da_test_cflags) -pthread
tests_test_lazy_LDFLAGS = -pthread
tests_test_lazy_LDADD = $(da_test_ldadd)
endif

# The tiled (GPU-shaped) fused OpenCL kernel: tests/cl-tiled-check.sh runs
# the OpenCL tests of test_attention, test_consistency, test_invariants,
# test_ext, test_faults (non-finite inputs) and test_proj (the projection
# strategy) again with DISTRATTN_CL_KERNEL=tiled,
# picked by DA_TEST_FILTER, so CPU OpenCL devices such as PoCL check it too.
EXTRA_DIST += tests/cl-tiled-check.sh
if HAVE_CMOCKA
TESTS += tests/cl-tiled-check.sh
endif

# The CUDA backward's kernels on the host (tests/cuda_emu/emu.h emulates
# the CUDA they use): tests/cuda-emu-check.sh builds tests/cuda_emu/bwd_emu.cc
# with the host C++ compiler and runs it against the cpu backend's backward;
# a SKIP without the CUDA headers or a C++ compiler.
EXTRA_DIST += tests/cuda-emu-check.sh tests/cuda_emu/emu.h tests/cuda_emu/bwd_emu.cc
if HAVE_CUDA
TESTS += tests/cuda-emu-check.sh
endif
CLEANFILES += tests/cuda_emu_bwd

# Oclgrind (issue 8): tests/test_oclgrind runs the OpenCL kernels, at small
# shapes covering every kernel path, on the Oclgrind simulator;
# tests/oclgrind-check.sh runs it under `oclgrind --data-races
# --uninitialized --check-api` and fails on any report, on a skipped test and
# on a missing prerequisite. In plain `make check` the script is a SKIP unless
# DISTRATTN_OCLGRIND=1; `make check-oclgrind` runs it alone, required.
EXTRA_DIST += tests/oclgrind-check.sh
if HAVE_CMOCKA
check_PROGRAMS += tests/test_oclgrind
TESTS += tests/oclgrind-check.sh
tests_test_oclgrind_SOURCES = tests/test_oclgrind.c $(da_test_common) $(da_test_ref)
tests_test_oclgrind_CFLAGS = $(da_test_cflags)
tests_test_oclgrind_LDADD = $(da_test_ldadd)
endif

check-oclgrind:
	$(MAKE) $(AM_MAKEFLAGS) check TESTS=tests/oclgrind-check.sh DISTRATTN_OCLGRIND=1
.PHONY: check-oclgrind

# Real-model accuracy (issue 5): tests/test_realdata pins DistrAttention's
# error on committed captures of real models' attention inputs: an encoder,
# all-MiniLM-L6-v2 (tools/capture.py --small), and a GQA causal decoder,
# SmolLM2-135M (tools/capture.py --model smollm2 --small); format in
# tools/CAPTURE_FORMAT.md.
EXTRA_DIST += tests/data/minilm-l6-small.dattncap tests/data/smollm2-small.dattncap \
	tests/data/minilm-optimal-r16.prj tests/data/minilm-optimal-r8.prj \
	tests/data/smollm2-optimal-r32.prj tests/data/smollm2-optimal-r16.prj
if HAVE_CMOCKA
check_PROGRAMS += tests/test_realdata
TESTS += tests/test_realdata
tests_test_realdata_SOURCES = tests/test_realdata.c $(da_test_common) $(da_test_ref) \
	$(da_capture_reader) tools/calib.c tools/calib.h
tests_test_realdata_CPPFLAGS = $(AM_CPPFLAGS) -I$(top_srcdir)/tools \
	-DDA_REALDATA_FILE='"$(abs_top_srcdir)/tests/data/minilm-l6-small.dattncap"' \
	-DDA_REALDATA_SMOLLM2_FILE='"$(abs_top_srcdir)/tests/data/smollm2-small.dattncap"' \
	-DDA_REALDATA_DEMO_FILE='"$(abs_top_srcdir)/data/smollm2-demo.dattncap"' \
	-DDA_REALDATA_PRJ_DIR='"$(abs_top_srcdir)/tests/data"'
tests_test_realdata_CFLAGS = $(da_test_cflags)
tests_test_realdata_LDADD = $(da_test_ldadd)
endif

# The projection strategy's calibration (tools/calib.c, `distrattn
# calibrate`): eigen-solver and SVD, a synthetic case with a known answer,
# optimal <= pca, the DATTNPRJ writer read back by da_projections_load.
if HAVE_CMOCKA
check_PROGRAMS += tests/test_calib
TESTS += tests/test_calib
tests_test_calib_SOURCES = tests/test_calib.c $(da_test_common) $(da_capture_reader) \
	tools/calib.c tools/calib.h
tests_test_calib_CPPFLAGS = $(AM_CPPFLAGS) -I$(top_srcdir)/tools \
	-DDA_REALDATA_SMOLLM2_FILE='"$(abs_top_srcdir)/tests/data/smollm2-small.dattncap"'
tests_test_calib_CFLAGS = $(da_test_cflags)
tests_test_calib_LDADD = $(da_test_ldadd)
endif

# Crafted captures (security): tests/test_capture feeds the one DATTNCAP
# reader, tools/capture_io.c, wrapped sizes, counts past their limits,
# truncation at every byte, trailing bytes, bad magic, version and dtype, and
# non-finite values, through memory and through files, and runs the built
# tools/distrattn eval on crafted files (it must refuse them, not crash).
if HAVE_CMOCKA
check_PROGRAMS += tests/test_capture
TESTS += tests/test_capture
tests_test_capture_SOURCES = tests/test_capture.c $(da_capture_reader)
tests_test_capture_CPPFLAGS = $(AM_CPPFLAGS) -I$(top_srcdir)/tools \
	-DDA_TEST_BUILDDIR='"$(abs_top_builddir)"'
tests_test_capture_CFLAGS = $(da_test_cflags)
tests_test_capture_LDADD = $(da_test_ldadd)
endif

# A client that owns its memory (issue 15): tests/test_wrap wraps sub-ranges
# of its own OpenCL buffers (and, on a GPU machine, its own cuMemAlloc) 1,000
# times and checks every byte comes back intact and still its own, and that
# aliasing is refused. Public API only, linked with the shared library as a
# user links it; scripts/install-check.sh also builds it against the
# installed library.
if HAVE_CMOCKA
check_PROGRAMS += tests/test_wrap
TESTS += tests/test_wrap
tests_test_wrap_SOURCES = tests/test_wrap.c
tests_test_wrap_CPPFLAGS = -I$(top_srcdir)/include
tests_test_wrap_CFLAGS = $(AM_CFLAGS) $(CMOCKA_CFLAGS)
tests_test_wrap_LDADD = lib/libdistrattn.la $(CMOCKA_LIBS) -ldl -lm
if HAVE_OPENCL
tests_test_wrap_CPPFLAGS += -DDA_TEST_HAVE_OPENCL
tests_test_wrap_CFLAGS += $(OPENCL_CFLAGS)
tests_test_wrap_LDADD += $(OPENCL_LIBS)
endif
endif

# Resources (issue 15): failing to start the CPU backend's threads is
# DA_ERR_HOST_MEMORY with detail, and the GEMM algorithm's memory follows
# the shape (tests/test_resources, one child process per case).
if HAVE_CMOCKA
check_PROGRAMS += tests/test_resources
TESTS += tests/test_resources
tests_test_resources_SOURCES = tests/test_resources.c $(da_test_common)
tests_test_resources_CFLAGS = $(da_test_cflags)
tests_test_resources_LDADD = $(da_test_ldadd) -lm
endif

# License (issue "A library people can adopt"): tests/spdx-check.sh fails
# listing any source file of ours without `SPDX-License-Identifier:
# Apache-2.0` near its top (git ls-files in a checkout, the files of the
# source tree in a tarball, as under `make distcheck`). Needs no cmocka.
EXTRA_DIST += tests/spdx-check.sh
TESTS += tests/spdx-check.sh

# The main job and the command-line program as the README runs them
# (tests/cli-check.sh): the demo on the shipped capture, fixed seeds, usage
# errors. Needs no cmocka.
EXTRA_DIST += tests/cli-check.sh
TESTS += tests/cli-check.sh
