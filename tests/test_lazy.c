/* SPDX-License-Identifier: Apache-2.0 */
/* A backend's runtime is loaded only when that backend is asked for.
 *
 * A program that only uses the CPU backend must not get the OpenCL module,
 * libOpenCL and PoCL (whose initialisation installs handlers for SIGSEGV,
 * SIGBUS, SIGILL, SIGFPE, SIGABRT, SIGINT and SIGTERM and an alternate
 * signal stack), nor the CUDA module and its runtime. Each case runs in a
 * child made by fork() of this process, which never calls the library
 * itself, so the child starts with an untouched registry; the child first
 * sets those signals to SIG_DFL and disables any alternate signal stack
 * (cmocka, and ASan when present, install their own), then calls the
 * library and reports what it finds through a pipe.
 *
 * Cases: a CPU context and attention (checked against float64), then
 * da_backend_available(OPENCL) loads the OpenCL module (required when
 * DISTRATTN_REQUIRE_BACKENDS names opencl) and not CUDA's; the same through
 * DA_BACKEND_AUTO steered by DISTRATTN_BACKEND=cpu; da_device_count loads
 * every backend; the CPU run as the first call on a worker thread; threads
 * racing to initialise the CPU and OpenCL backends first; CLBlast loaded
 * by the first OpenCL GEMM plan, not by the OpenCL backend or a fused
 * plan. */
#define _GNU_SOURCE
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "testutil.h"

typedef struct report {
  int skip;         /* 1: nothing to check (e.g. OpenCL absent, not required) */
  char fail[2048];  /* empty when the case passed */
} report;

static const int watched[] = {SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT, SIGINT, SIGTERM};
static const char *const watched_names[] = {"SIGSEGV", "SIGBUS",  "SIGILL", "SIGFPE",
                                            "SIGABRT", "SIGINT", "SIGTERM"};

/* Objects a CPU-only program must not have mapped. */
static const char *const runtimes[] = {"libOpenCL", "libpocl", "libclblast", "libcuda",
                                       "libcudart", "distrattn_opencl", "distrattn_cuda"};

#define FAIL(rep, ...)                                                                   \
  do {                                                                                   \
    size_t l_ = strlen((rep)->fail);                                                     \
    snprintf((rep)->fail + l_, sizeof (rep)->fail - l_, __VA_ARGS__);                   \
  } while (0)

/* Whether /proc/self/maps names a file containing s; -1 when it cannot be
 * read. */
static int mapped(const char *s) {
  FILE *f = fopen("/proc/self/maps", "r");
  if (!f) return -1;
  char line[4096];
  int found = 0;
  while (!found && fgets(line, sizeof line, f)) {
    const char *file = strchr(line, '/');
    if (file && strstr(file, s)) found = 1;
  }
  fclose(f);
  return found;
}

/* Each of the runtimes[] not mapped; except names one that may be. */
static void check_no_runtime(report *rep, const char *when, const char *except) {
  for (size_t i = 0; i < sizeof runtimes / sizeof runtimes[0]; i++) {
    if (except && strstr(except, runtimes[i])) continue;
    int m = mapped(runtimes[i]);
    if (m < 0) FAIL(rep, "cannot read /proc/self/maps; ");
    else if (m) FAIL(rep, "%s: %s is mapped (/proc/self/maps); ", when, runtimes[i]);
  }
}

static void reset_signals(void) {
  for (size_t i = 0; i < sizeof watched / sizeof watched[0]; i++) signal(watched[i], SIG_DFL);
  stack_t ss;
  memset(&ss, 0, sizeof ss);
  ss.ss_flags = SS_DISABLE;
  sigaltstack(&ss, NULL);
}

static void check_signals(report *rep, const char *when) {
  for (size_t i = 0; i < sizeof watched / sizeof watched[0]; i++) {
    struct sigaction sa;
    if (sigaction(watched[i], NULL, &sa) != 0) {
      FAIL(rep, "sigaction(%s): %s; ", watched_names[i], strerror(errno));
      continue;
    }
    if (!(sa.sa_flags & SA_SIGINFO) && sa.sa_handler == SIG_DFL) continue;
    FAIL(rep, "%s: a handler for %s is installed; ", when, watched_names[i]);
  }
  stack_t ss;
  if (sigaltstack(NULL, &ss) != 0) FAIL(rep, "sigaltstack: %s; ", strerror(errno));
  else if (!(ss.ss_flags & SS_DISABLE))
    FAIL(rep, "%s: an alternate signal stack is installed (%zu bytes); ", when, ss.ss_size);
}

/* Exact attention on a CPU context from random inputs, one output row
 * checked against float64. ctx_backend: what da_context_create is asked
 * for (CPU, or AUTO steered by DISTRATTN_BACKEND=cpu). */
static void cpu_attention(report *rep, da_backend ctx_backend) {
  enum { H = 2, S = 24, D = 32 };
  static float q[H * S * D], k[H * S * D], v[H * S * D], o[H * S * D];
  da_attn_desc d;
  da_attn_desc_init(&d);
  d.batch = 1;
  d.heads = H;
  d.seq_q = d.seq_k = S;
  d.head_dim = D;
  d.dtype = DA_F32;
  tu_rng r;
  tu_rng_init(&r, tu_seed());
  tu_fill(q, DA_F32, H * S * D, &r, 1.0);
  tu_fill(k, DA_F32, H * S * D, &r, 1.0);
  tu_fill(v, DA_F32, H * S * D, &r, 1.0);
  tu_poison(o, sizeof o);
  da_context *ctx = NULL;
  da_plan *p = NULL;
  da_status s = da_context_create(&ctx, ctx_backend, -1);
  if (s == DA_SUCCESS && da_context_backend(ctx) != DA_BACKEND_CPU) {
    FAIL(rep, "the context is on backend %s, not cpu; ", da_backend_name(da_context_backend(ctx)));
    da_context_destroy(ctx);
    return;
  }
  if (s == DA_SUCCESS) s = da_plan_create(ctx, &d, &p);
  if (s == DA_SUCCESS) s = da_attention_host(p, q, k, v, o);
  if (s != DA_SUCCESS)
    FAIL(rep, "CPU attention: %s (%s); ", da_status_string(s), ctx ? da_context_last_error(ctx) : "");
  da_plan_destroy(p);
  da_context_destroy(ctx);
  if (s != DA_SUCCESS) return;

  /* Row i of head h, in float64: softmax(q_i . k_j / sqrt(D)) v. */
  const int h = H - 1, i = S / 3;
  const float *qi = q + ((size_t)h * S + i) * D;
  double logit[S], ref[D], mx = -INFINITY, sum = 0.0;
  for (int j = 0; j < S; j++) {
    const float *kj = k + ((size_t)h * S + j) * D;
    double dot = 0.0;
    for (int c = 0; c < D; c++) dot += (double)qi[c] * kj[c];
    logit[j] = dot / sqrt((double)D);
    if (logit[j] > mx) mx = logit[j];
  }
  for (int c = 0; c < D; c++) ref[c] = 0.0;
  for (int j = 0; j < S; j++) {
    double w = exp(logit[j] - mx);
    sum += w;
    for (int c = 0; c < D; c++) ref[c] += w * v[((size_t)h * S + j) * D + c];
  }
  for (int c = 0; c < D; c++) ref[c] /= sum;
  double err = tu_rel_err(o + ((size_t)h * S + i) * D, DA_F32, ref, D);
  if (!(err <= tu_bound(DA_F32)))
    FAIL(rep, "CPU attention row %d of head %d: relative error %g > %g [seed %llu]; ", i, h, err,
         tu_bound(DA_F32), (unsigned long long)tu_seed());
}

typedef void (*case_fn)(report *rep);

/* The child's side of in_child: a clean process (signals as at start, no
 * runtime loaded), then the case. */
static int child_case(void *arg, void *out) {
  report *rep = out;
  reset_signals();
  memset(rep, 0, sizeof *rep);
  check_signals(rep, "before the library was called");
  check_no_runtime(rep, "before the library was called", NULL);
  if (!rep->fail[0]) (*(case_fn *)arg)(rep);
  return 0;
}

/* Runs fn in a child; fails, skips or passes as the child reports. */
static void in_child(case_fn fn) {
  static report a;
  char trouble[128];
  int st = 0;
  memset(&a, 0, sizeof a);
  size_t got = tu_fork_call(child_case, &fn, &a, sizeof a, &st);
  if (tu_child_trouble(st, got, sizeof a, trouble, sizeof trouble))
    fail_msg("the child %s", trouble);
  if (a.fail[0]) fail_msg("%s", a.fail);
  if (a.skip) skip();
}

/* Asks for the OpenCL backend: it must be loaded now (or be absent and not
 * required), and CUDA still not. */
static void then_opencl(report *rep) {
  const char *why = NULL;
  if (!da_backend_available(DA_BACKEND_OPENCL, &why)) {
    if (tu_backend_required(DA_BACKEND_OPENCL))
      FAIL(rep, "backend opencl is required (DISTRATTN_REQUIRE_BACKENDS) but absent: %s; ",
           why ? why : "(no reason)");
    else
      rep->skip = 1;
    return;
  }
  int m = mapped("distrattn_opencl");
  if (m <= 0) FAIL(rep, "OpenCL is available but distrattn_opencl is not in /proc/self/maps; ");
  m = mapped("libOpenCL");
  if (m <= 0) FAIL(rep, "OpenCL is available but libOpenCL is not in /proc/self/maps; ");
  if (mapped("distrattn_cuda") > 0 || mapped("libcudart") > 0)
    FAIL(rep, "asking for OpenCL loaded the CUDA module; ");
}

/* A CPU context and a real attention run load no other backend, install no
 * signal handler and no alternate signal stack; asking for OpenCL then
 * loads its module. */
static void case_cpu_then_opencl(report *rep) {
  cpu_attention(rep, DA_BACKEND_CPU);
  if (rep->fail[0]) return;
  const char *why = NULL;
  if (!da_backend_available(DA_BACKEND_CPU, &why)) FAIL(rep, "CPU backend absent: %s; ", why);
  check_no_runtime(rep, "after a CPU context and attention", NULL);
  check_signals(rep, "after a CPU context and attention");
  if (rep->fail[0]) return;
  then_opencl(rep);
}

/* DA_BACKEND_AUTO with DISTRATTN_BACKEND=cpu names one backend: the same. */
static void case_auto_steered_to_cpu(report *rep) {
  setenv("DISTRATTN_BACKEND", "cpu", 1);
  unsetenv("DISTRATTN_DEVICE");
  cpu_attention(rep, DA_BACKEND_AUTO);
  if (rep->fail[0]) return;
  check_no_runtime(rep, "after an AUTO context with DISTRATTN_BACKEND=cpu", NULL);
  check_signals(rep, "after an AUTO context with DISTRATTN_BACKEND=cpu");
  if (rep->fail[0]) return;
  then_opencl(rep);
}

/* da_device_count needs every backend: OpenCL's module is loaded by it. */
static void case_device_count_loads_all(report *rep) {
  int n = da_device_count();
  if (n < 1) FAIL(rep, "da_device_count() = %d; ", n);
  if (mapped("distrattn_opencl") > 0) return;
  const char *why = NULL;
  if (da_backend_available(DA_BACKEND_OPENCL, &why))
    FAIL(rep, "OpenCL is available but da_device_count did not load its module; ");
  else if (tu_backend_required(DA_BACKEND_OPENCL))
    FAIL(rep, "backend opencl is required but absent: %s; ", why ? why : "(no reason)");
  else
    rep->skip = 1;
}

/* CLBlast is loaded with the first DA_ALGO_GEMM plan on OpenCL: an OpenCL
 * context and a fused plan and run leave it unmapped. */
static void case_clblast_on_gemm(report *rep) {
  const char *why = NULL;
  if (!da_backend_available(DA_BACKEND_OPENCL, &why)) {
    if (tu_backend_required(DA_BACKEND_OPENCL))
      FAIL(rep, "backend opencl is required but absent: %s; ", why ? why : "(no reason)");
    else
      rep->skip = 1;
    return;
  }
  da_context *ctx = NULL;
  da_plan *p = NULL;
  da_attn_desc d = tu_small_desc();
  d.algo = DA_ALGO_FUSED;
  da_status s = da_context_create(&ctx, DA_BACKEND_OPENCL, -1);
  if (s == DA_SUCCESS) s = da_plan_create(ctx, &d, &p);
  static float q[4 * 8 * 16], kv[2 * 8 * 16], o[4 * 8 * 16];
  if (s == DA_SUCCESS) s = da_attention_host(p, q, kv, kv, o);
  da_plan_destroy(p);
  p = NULL;
  if (s != DA_SUCCESS) {
    FAIL(rep, "OpenCL fused plan: %s (%s); ", da_status_string(s), da_context_last_error(ctx));
  } else {
    if (mapped("libclblast") > 0) FAIL(rep, "libclblast is mapped after an OpenCL fused plan; ");
    d.algo = DA_ALGO_GEMM;
    s = da_plan_create(ctx, &d, &p);
    if (s == DA_SUCCESS && mapped("libclblast") <= 0)
      FAIL(rep, "an OpenCL GEMM plan was made but libclblast is not mapped; ");
    if (s != DA_SUCCESS && (s != DA_ERR_UNSUPPORTED || !strstr(da_context_last_error(ctx), "CLBlast")))
      FAIL(rep, "OpenCL GEMM plan: %s (%s); ", da_status_string(s), da_context_last_error(ctx));
#ifdef HAVE_CLBLAST
    if (s != DA_SUCCESS) FAIL(rep, "OpenCL GEMM plan with CLBlast present: %s; ", da_context_last_error(ctx));
#endif
    da_plan_destroy(p);
  }
  da_context_destroy(ctx);
}

/* The reported case: the first library call is on a worker thread. */
typedef struct worker_arg {
  report *rep;
} worker_arg;

static void *cpu_worker(void *p) {
  worker_arg *w = p;
  stack_t ss;
  memset(&ss, 0, sizeof ss);
  ss.ss_flags = SS_DISABLE;
  sigaltstack(&ss, NULL); /* ASan gives each new thread one */
  cpu_attention(w->rep, DA_BACKEND_CPU);
  if (sigaltstack(NULL, &ss) == 0 && !(ss.ss_flags & SS_DISABLE))
    FAIL(w->rep, "the worker thread got an alternate signal stack; ");
  return NULL;
}

static void case_cpu_on_worker_thread(report *rep) {
  pthread_t th;
  worker_arg w = {rep};
  if (pthread_create(&th, NULL, cpu_worker, &w) != 0) {
    FAIL(rep, "pthread_create failed; ");
    return;
  }
  pthread_join(th, NULL);
  if (rep->fail[0]) return;
  check_no_runtime(rep, "after a CPU attention on a worker thread", NULL);
  check_signals(rep, "after a CPU attention on a worker thread");
}

/* Threads race to initialise different backends first: half ask for a CPU
 * context then OpenCL, half the other way round; all must agree. */
enum { NRACE = 8 };
typedef struct race_arg {
  int id, cpu_status, cl_avail, count;
} race_arg;

static void *racer(void *p) {
  race_arg *a = p;
  da_context *ctx = NULL;
  if (a->id % 2) a->cl_avail = da_backend_available(DA_BACKEND_OPENCL, NULL);
  a->cpu_status = da_context_create(&ctx, DA_BACKEND_CPU, -1);
  da_context_destroy(ctx);
  if (!(a->id % 2)) a->cl_avail = da_backend_available(DA_BACKEND_OPENCL, NULL);
  a->count = da_device_count();
  return NULL;
}

static void case_threads_race_backends(report *rep) {
  pthread_t th[NRACE];
  race_arg a[NRACE];
  int started = 0;
  for (int i = 0; i < NRACE; i++) {
    memset(&a[i], 0, sizeof a[i]);
    a[i].id = i;
    if (pthread_create(&th[i], NULL, racer, &a[i]) != 0) break;
    started++;
  }
  for (int i = 0; i < started; i++) pthread_join(th[i], NULL);
  if (started != NRACE) FAIL(rep, "pthread_create failed; ");
  for (int i = 0; i < started; i++) {
    if (a[i].cpu_status != DA_SUCCESS)
      FAIL(rep, "thread %d: CPU context: %s; ", i, da_status_string((da_status)a[i].cpu_status));
    if (a[i].cl_avail != a[0].cl_avail || a[i].count != a[0].count)
      FAIL(rep, "thread %d saw OpenCL %d and %d devices, thread 0 %d and %d; ", i, a[i].cl_avail,
           a[i].count, a[0].cl_avail, a[0].count);
  }
  if (!a[0].cl_avail && tu_backend_required(DA_BACKEND_OPENCL))
    FAIL(rep, "backend opencl is required but absent; ");
}

static void test_cpu_then_opencl(void **state) { in_child(case_cpu_then_opencl); }
static void test_cpu_on_worker_thread(void **state) { in_child(case_cpu_on_worker_thread); }
static void test_threads_race_backends(void **state) { in_child(case_threads_race_backends); }
static void test_auto_steered_to_cpu(void **state) { in_child(case_auto_steered_to_cpu); }
static void test_device_count_loads_all(void **state) { in_child(case_device_count_loads_all); }
static void test_clblast_on_gemm(void **state) { in_child(case_clblast_on_gemm); }

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_cpu_then_opencl),
      cmocka_unit_test(test_auto_steered_to_cpu),
      cmocka_unit_test(test_device_count_loads_all),
      cmocka_unit_test(test_clblast_on_gemm),
      cmocka_unit_test(test_cpu_on_worker_thread),
      cmocka_unit_test(test_threads_race_backends),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
