/* SPDX-License-Identifier: Apache-2.0 */
/* Helpers shared by the distrattn test programs: a seeded random source,
 * input filling, output poisoning, error measures, backend selection. */
#ifndef DA_TESTUTIL_H
#define DA_TESTUTIL_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "da_internal.h"

/* The run's seed: DA_TEST_SEED when set, otherwise time ^ pid, chosen once. */
uint64_t tu_seed(void);

typedef struct tu_rng { uint64_t s, n; } tu_rng;
void tu_rng_init(tu_rng *r, uint64_t seed);
uint64_t tu_next(tu_rng *r);
double tu_uniform(tu_rng *r);              /* [0, 1) */
double tu_normal(tu_rng *r);               /* standard normal */
int tu_randint(tu_rng *r, int lo, int hi); /* lo..hi inclusive */

/* n elements of dtype t, normal(0, sd), never exactly 0. */
void tu_fill(void *buf, da_dtype t, size_t n, tu_rng *r, double sd);
/* Like tu_fill, but each element scaled by 2^k, k uniform in -spread..spread. */
void tu_fill_wide(void *buf, da_dtype t, size_t n, tu_rng *r, int spread);
/* 0xFF bytes: a NaN in f32, f16 and bf16 alike. */
void tu_poison(void *buf, size_t bytes);
/* Number of NaN (and Inf) elements; *first gets the index of the first. */
size_t tu_count_nonfinite(const void *buf, da_dtype t, size_t n, size_t *first);

/* ||out - ref|| / ||ref||; NaN when out holds a NaN (so !(err <= bound)). */
double tu_rel_err(const void *out, da_dtype t, const double *ref, size_t n);
/* The same against another output array of the same dtype. */
double tu_rel_err_arrays(const void *out, const void *ref, da_dtype t, size_t n);

double tu_bound(da_dtype t); /* SPEC section 2 bound for exact attention */
const char *tu_dtype_name(da_dtype t);
const char *tu_algo_name(da_algo a);
const char *tu_fusion_name(da_fusion f);

/* A small valid descriptor (batch 1, 4 heads over 2 kv heads, 8x8, head_dim
 * 16, f32, exact) for the tests to mutate. */
da_attn_desc tu_small_desc(void);
size_t tu_q_elems(const da_attn_desc *d);  /* with kv_heads 0 meaning heads */
size_t tu_kv_elems(const da_attn_desc *d);

/* DA_TEST_FILTER, when set, is handed to cmocka_set_test_filter (a pattern
 * with * and ?, e.g. "opencl:*"): a program then runs only the tests whose
 * names match. Called first in main by the programs that honour it. */
void tu_filter_from_env(void);

/* Runs fn(arg, out) in a child made by fork(). In the child the crash
 * signals (SEGV, BUS, ILL, FPE, ABRT) are back at SIG_DFL, so a crash ends
 * the child instead of cmocka's handler running the rest of the suite
 * there; out[0..len) goes back through a pipe and the child exits with
 * fn's value. The parent gets out and returns the bytes that came back;
 * *status is the wait status. A pipe or fork failure fails the test. */
size_t tu_fork_call(int (*fn)(void *arg, void *out), void *arg, void *out, size_t len,
                    int *status);
/* NULL when a tu_fork_call child exited 0 having sent all len bytes; else
 * "killed by signal N (name)" or "died (status 0x.., N bytes)" in buf. */
const char *tu_child_trouble(int status, size_t got, size_t len, char *buf, size_t n);

/* 1 when backend b's name is listed in DISTRATTN_REQUIRE_BACKENDS. */
int tu_backend_required(da_backend b);

/* Inside a test: skip when backend b is absent, fail when it is required. */
#define TU_NEED_BACKEND(b)                                                                  \
  do {                                                                                      \
    const char *tu_why_ = NULL;                                                             \
    if (!da_backend_available((b), &tu_why_)) {                                             \
      if (tu_backend_required(b))                                                           \
        fail_msg("backend %s is required (DISTRATTN_REQUIRE_BACKENDS) but absent: %s",      \
                 da_backend_name(b), tu_why_ ? tu_why_ : "(no reason)");                    \
      skip();                                                                               \
    }                                                                                       \
  } while (0)

/* Fail with the status string, the context's last error and the seed. */
#define TU_CHECK(ctx, call)                                                                 \
  do {                                                                                      \
    da_status tu_s_ = (call);                                                               \
    if (tu_s_ != DA_SUCCESS)                                                                \
      fail_msg("%s -> %s: %s [seed %llu]", #call, da_status_string(tu_s_),                 \
               (ctx) ? da_context_last_error(ctx) : "", (unsigned long long)tu_seed());    \
  } while (0)

/* With DA_TEST_VERBOSE set: prints a measured error to stderr (silent
 * otherwise, so that a passing run shows only cmocka's lines). */
void tu_note(const char *what, const da_attn_desc *d, double err, double bound);

/* A one-line description of a descriptor, for failure messages. */
const char *tu_desc_str(const da_attn_desc *d, char *buf, size_t len);

#endif /* DA_TESTUTIL_H */
