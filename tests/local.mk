# tests/: cmocka suites, run by `make check`. They link the convenience
# library lib/libdacore.la, which reaches the hidden reference functions of
# lib/da_internal.h, and find the backend modules built in this tree through
# DISTRATTN_BACKEND_PATH. DA_TEST_SEED=<n> repeats a run's random inputs;
# DISTRATTN_REQUIRE_BACKENDS=cpu,opencl makes an absent backend a failure.
EXTRA_DIST += tests/testutil.h tests/ref.h tests/cases.h

if HAVE_CMOCKA
da_test_programs = tests/test_status tests/test_desc tests/test_hash \
	tests/test_attention tests/test_invariants tests/test_consistency
check_PROGRAMS += $(da_test_programs)
TESTS += $(da_test_programs)

AM_TESTS_ENVIRONMENT = \
	DISTRATTN_BACKEND_PATH='$(abs_top_builddir)/cl/.libs:$(abs_top_builddir)/cuda/.libs'; \
	export DISTRATTN_BACKEND_PATH;

da_test_cflags = $(AM_CFLAGS) $(CMOCKA_CFLAGS)
da_test_ldadd = lib/libdacore.la $(CMOCKA_LIBS)
da_test_common = tests/testutil.c tests/testutil.h
da_test_ref = tests/ref.c tests/ref.h tests/cases.c tests/cases.h

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

tests_test_consistency_SOURCES = tests/test_consistency.c $(da_test_common) $(da_test_ref)
tests_test_consistency_CFLAGS = $(da_test_cflags)
tests_test_consistency_LDADD = $(da_test_ldadd)
endif
