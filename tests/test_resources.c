/* SPDX-License-Identifier: Apache-2.0 */
/* Resources: what the library asks of the machine is bounded by the shape,
 * and running out is a status with detail, never a crash.
 *  - threads: with the address space limited (RLIMIT_AS) so that the CPU
 *    backend's workers cannot all start, da_context_create returns
 *    DA_ERR_HOST_MEMORY and da_context_last_error(NULL) names pthread_create,
 *    the worker, the errno and DISTRATTN_CPU_THREADS;
 *  - memory: DA_ALGO_GEMM on the CPU with one query row and 2^21 keys
 *    (head_dim 1: 16 MiB of K and V) peaks below 1 GiB of resident memory
 *    (it took 2.6 GiB when the logits scratch was 128 rows per thread for
 *    every thread) and still matches a float64 reference (within 1e-6 of
 *    the terms' size: the result itself is a cancelling sum).
 * Each runs in a child process (fork), so limits and peak memory are its
 * own. Under AddressSanitizer (its shadow memory needs the address space)
 * and valgrind (its own memory) the two measurements mean nothing and are
 * skipped; the plain `make check` runs them. */
#define _GNU_SOURCE
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "testutil.h"

#if defined(__SANITIZE_ADDRESS__)
#define UNDER_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define UNDER_ASAN 1
#endif
#endif
#ifndef UNDER_ASAN
#define UNDER_ASAN 0
#endif

static int under_tool(void) {
  const char *pre = getenv("LD_PRELOAD");
  return UNDER_ASAN || (pre && strstr(pre, "vgpreload"));
}

/* A case's message, written by the child (tu_fork_call). */
typedef struct child_msg { char text[2048]; } child_msg;
typedef struct child_case { int (*fn)(char *msg, size_t len); } child_case;

static int run_case(void *arg, void *out) {
  child_msg *m = out;
  m->text[0] = '\0';
  return ((child_case *)arg)->fn(m->text, sizeof m->text);
}

/* Runs fn in a child; its exit status 0 is a pass, anything else fails
 * with what the child wrote to msg. */
static void in_child(int (*fn)(char *msg, size_t len), const char *what) {
  child_case c = {fn};
  static child_msg m;
  int st = 0;
  memset(&m, 0, sizeof m);
  tu_fork_call(run_case, &c, &m, sizeof m, &st);
  m.text[sizeof m.text - 1] = '\0';
  if (WIFSIGNALED(st)) fail_msg("%s: the child died of signal %d", what, WTERMSIG(st));
  if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) fail_msg("%s: %s", what, m.text);
  if (getenv("DA_TEST_VERBOSE")) fprintf(stderr, "%s: %s\n", what, m.text);
}

static size_t vm_bytes(void) {
  FILE *f = fopen("/proc/self/statm", "r");
  unsigned long pages = 0;
  if (f) {
    if (fscanf(f, "%lu", &pages) != 1) pages = 0;
    fclose(f);
  }
  return (size_t)pages * (size_t)sysconf(_SC_PAGESIZE);
}

static int threads_child(char *msg, size_t len) {
  setenv("DISTRATTN_CPU_THREADS", "512", 1);
  /* room for the library and a few thread stacks, not 511 of them */
  struct rlimit rl;
  size_t lim = vm_bytes() + ((size_t)96 << 20);
  rl.rlim_cur = rl.rlim_max = lim;
  if (setrlimit(RLIMIT_AS, &rl) != 0) {
    snprintf(msg, len, "setrlimit(RLIMIT_AS): %s", strerror(errno));
    return 1;
  }
  da_context *ctx = NULL;
  da_status s = da_context_create(&ctx, DA_BACKEND_CPU, -1);
  const char *why = da_context_last_error(NULL);
  snprintf(msg, len, "status %s, message \"%s\"", da_status_string(s), why);
  if (s == DA_SUCCESS) {
    da_context_destroy(ctx);
    return 2; /* 512 threads of 8 MiB stacks cannot fit in +96 MiB */
  }
  if (ctx) return 3;
  if (s != DA_ERR_HOST_MEMORY) return 4;
  if (!strstr(why, "pthread_create") || !strstr(why, "DISTRATTN_CPU_THREADS") ||
      !strstr(why, "of 511"))
    return 5;
  /* and a context of fewer threads still works in the same process */
  setenv("DISTRATTN_CPU_THREADS", "2", 1);
  s = da_context_create(&ctx, DA_BACKEND_CPU, -1);
  if (s != DA_SUCCESS) {
    snprintf(msg, len, "after the refusal, 2 threads: %s: %s", da_status_string(s),
             da_context_last_error(NULL));
    return 6;
  }
  da_context_destroy(ctx);
  return 0;
}

static void test_thread_limit(void **state) {
  if (under_tool()) skip();
  in_child(threads_child, "CPU backend with its threads limited");
}

static int gemm_child(char *msg, size_t len) {
  enum { SK = 1 << 21 };
  da_context *ctx = NULL;
  da_plan *p = NULL;
  da_attn_desc d;
  da_attn_desc_init(&d);
  d.batch = d.heads = 1;
  d.seq_q = 1;
  d.seq_k = SK;
  d.head_dim = 1;
  d.algo = DA_ALGO_GEMM;
  if (da_context_create(&ctx, DA_BACKEND_CPU, -1) != DA_SUCCESS) return 1;
  if (da_plan_create(ctx, &d, &p) != DA_SUCCESS) return 2;
  float q = 0.75f, o = NAN;
  float *k = malloc(sizeof(float) * SK), *v = malloc(sizeof(float) * SK);
  if (!k || !v) return 3;
  tu_rng r;
  tu_rng_init(&r, tu_seed());
  tu_fill(k, DA_F32, SK, &r, 1.0);
  tu_fill(v, DA_F32, SK, &r, 1.0);
  double mx = -INFINITY, num = 0, den = 0, mag = 0;
  for (size_t j = 0; j < SK; j++) mx = fmax(mx, (double)q * k[j]);
  for (size_t j = 0; j < SK; j++) {
    double w = exp((double)q * k[j] - mx);
    num += w * v[j];
    mag += w * fabs(v[j]);
    den += w;
  }
  struct rusage r0, r1;
  getrusage(RUSAGE_SELF, &r0);
  da_status s = da_attention_host(p, &q, k, v, &o);
  getrusage(RUSAGE_SELF, &r1);
  long grew_mib = (r1.ru_maxrss - r0.ru_maxrss) / 1024;
  /* the error relative to the size of the terms (sum w |v| / sum w), not
   * to the result: v is centred, so the result is a cancelling sum of 2^21
   * terms (often ~1e-6) and its own relative error means nothing */
  double ref = num / den, err = fabs(o - ref) / (mag / den);
  snprintf(msg, len, "status %s, o %g (reference %g, error %.2g of the terms' size), resident peak grew %ld MiB",
           da_status_string(s), (double)o, ref, err, grew_mib);
  da_plan_destroy(p);
  da_context_destroy(ctx);
  free(k);
  free(v);
  if (s != DA_SUCCESS) return 4;
  if (!(err <= 1e-6)) return 5;
  return grew_mib < 1024 ? 0 : 6;
}

static void test_gemm_memory(void **state) {
  if (under_tool()) skip();
  in_child(gemm_child, "CPU GEMM, seq_q 1, seq_k 2^21, head_dim 1");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_thread_limit),
      cmocka_unit_test(test_gemm_memory),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
