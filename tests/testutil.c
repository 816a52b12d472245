/* SPDX-License-Identifier: Apache-2.0 */
/* Helpers shared by the test programs. */
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <sys/wait.h>
#include <unistd.h>

#include "testutil.h"

void tu_filter_from_env(void) {
  const char *e = getenv("DA_TEST_FILTER");
  if (e && *e) cmocka_set_test_filter(e);
}

uint64_t tu_seed(void) {
  static int done;
  static uint64_t seed;
  if (!done) {
    const char *e = getenv("DA_TEST_SEED");
    if (e && *e)
      seed = strtoull(e, NULL, 0);
    else
      seed = ((uint64_t)time(NULL) << 20) ^ (uint64_t)getpid();
    done = 1;
  }
  return seed;
}

void tu_rng_init(tu_rng *r, uint64_t seed) {
  r->s = seed;
  r->n = 0;
}

uint64_t tu_next(tu_rng *r) {
  /* splitmix64 stream, written out here so the tests do not lean on the
   * library's own generator for their inputs */
  uint64_t z = (r->s += UINT64_C(0x9E3779B97F4A7C15));
  z = (z ^ (z >> 30)) * UINT64_C(0xBF58476D1CE4E5B9);
  z = (z ^ (z >> 27)) * UINT64_C(0x94D049BB133111EB);
  r->n++;
  return z ^ (z >> 31);
}

double tu_uniform(tu_rng *r) { return (double)(tu_next(r) >> 11) * 0x1.0p-53; }

double tu_normal(tu_rng *r) {
  double u1 = ((double)(tu_next(r) >> 11) + 1.0) * 0x1.0p-53;
  double u2 = tu_uniform(r);
  return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

int tu_randint(tu_rng *r, int lo, int hi) {
  return lo + (int)(tu_next(r) % (uint64_t)(hi - lo + 1));
}

static void store_nonzero(void *buf, da_dtype t, size_t i, double x) {
  da_store_elem(buf, t, i, (float)x);
  if (da_load_elem(buf, t, i) == 0.0f) da_store_elem(buf, t, i, x < 0 ? -0.0625f : 0.0625f);
}

void tu_fill(void *buf, da_dtype t, size_t n, tu_rng *r, double sd) {
  for (size_t i = 0; i < n; i++) store_nonzero(buf, t, i, sd * tu_normal(r));
}

void tu_fill_wide(void *buf, da_dtype t, size_t n, tu_rng *r, int spread) {
  for (size_t i = 0; i < n; i++)
    store_nonzero(buf, t, i, ldexp(tu_normal(r), tu_randint(r, -spread, spread)));
}

void tu_poison(void *buf, size_t bytes) { memset(buf, 0xFF, bytes); }

size_t tu_count_nonfinite(const void *buf, da_dtype t, size_t n, size_t *first) {
  size_t bad = 0;
  for (size_t i = 0; i < n; i++) {
    float x = da_load_elem(buf, t, i);
    if (!isfinite(x)) {
      if (!bad && first) *first = i;
      bad++;
    }
  }
  return bad;
}

double tu_rel_err(const void *out, da_dtype t, const double *ref, size_t n) {
  double num = 0.0, den = 0.0;
  for (size_t i = 0; i < n; i++) {
    double o = (double)da_load_elem(out, t, i);
    if (isnan(o) || isinf(o)) return NAN;
    num += (o - ref[i]) * (o - ref[i]);
    den += ref[i] * ref[i];
  }
  if (den == 0.0) return sqrt(num); /* all-zero reference: absolute */
  return sqrt(num / den);
}

double tu_rel_err_arrays(const void *out, const void *ref, da_dtype t, size_t n) {
  double num = 0.0, den = 0.0;
  for (size_t i = 0; i < n; i++) {
    double o = (double)da_load_elem(out, t, i), x = (double)da_load_elem(ref, t, i);
    if (isnan(o) || isinf(o) || isnan(x) || isinf(x)) return NAN;
    num += (o - x) * (o - x);
    den += x * x;
  }
  if (den == 0.0) return sqrt(num);
  return sqrt(num / den);
}

double tu_bound(da_dtype t) {
  switch (t) {
  case DA_F16: return 2e-3;
  case DA_BF16: return 1.6e-2;
  default: return 1e-5;
  }
}

const char *tu_dtype_name(da_dtype t) {
  switch (t) {
  case DA_F32: return "f32";
  case DA_F16: return "f16";
  case DA_BF16: return "bf16";
  }
  return "?";
}

const char *tu_algo_name(da_algo a) {
  switch (a) {
  case DA_ALGO_AUTO: return "auto";
  case DA_ALGO_FUSED: return "fused";
  case DA_ALGO_GEMM: return "gemm";
  }
  return "?";
}

const char *tu_fusion_name(da_fusion f) { return f == DA_FUSE_NORM ? "norm" : "mean"; }

size_t tu_q_elems(const da_attn_desc *d) {
  return (size_t)d->batch * (size_t)d->heads * (size_t)d->seq_q * (size_t)d->head_dim;
}

size_t tu_kv_elems(const da_attn_desc *d) {
  int kvh = d->kv_heads ? d->kv_heads : d->heads;
  return (size_t)d->batch * (size_t)kvh * (size_t)d->seq_k * (size_t)d->head_dim;
}

int tu_backend_required(da_backend b) {
  const char *e = getenv("DISTRATTN_REQUIRE_BACKENDS");
  const char *name = da_backend_name(b);
  size_t len = strlen(name);
  if (!e) return 0;
  while (*e) {
    while (*e == ',' || *e == ' ') e++;
    const char *end = e;
    while (*end && *end != ',' && *end != ' ') end++;
    if ((size_t)(end - e) == len && strncmp(e, name, len) == 0) return 1;
    if ((size_t)(end - e) == 3 && strncmp(e, "all", 3) == 0) return 1;
    e = end;
  }
  return 0;
}

const char *tu_desc_str(const da_attn_desc *d, char *buf, size_t len) {
  snprintf(buf, len,
           "batch %d heads %d kv_heads %d seq_q %d seq_k %d head_dim %d %s causal %d scale %g "
           "G %d hash_bits %d hash_block %d %s seed %llu algo %s",
           d->batch, d->heads, d->kv_heads, d->seq_q, d->seq_k, d->head_dim,
           tu_dtype_name(d->dtype), d->causal, (double)d->scale, d->group_size, d->hash_bits,
           d->hash_block, tu_fusion_name(d->fusion), d->seed, tu_algo_name(d->algo));
  return buf;
}

void tu_note(const char *what, const da_attn_desc *d, double err, double bound) {
  static int verbose = -1;
  if (verbose < 0) verbose = getenv("DA_TEST_VERBOSE") && *getenv("DA_TEST_VERBOSE");
  if (!verbose) return;
  char buf[512];
  fprintf(stderr, "  %-12s err %.3g (bound %.3g)  %s\n", what, err, bound,
          d ? tu_desc_str(d, buf, sizeof buf) : "");
}

da_attn_desc tu_small_desc(void) {
  da_attn_desc d;
  da_attn_desc_init(&d);
  d.batch = 1;
  d.heads = 4;
  d.kv_heads = 2;
  d.seq_q = 8;
  d.seq_k = 8;
  d.head_dim = 16;
  d.dtype = DA_F32;
  return d;
}

size_t tu_fork_call(int (*fn)(void *arg, void *out), void *arg, void *out, size_t len,
                    int *status) {
  int fd[2];
  if (pipe(fd) != 0) fail_msg("pipe: %s", strerror(errno));
  fflush(NULL);
  pid_t pid = fork();
  if (pid < 0) fail_msg("fork: %s", strerror(errno));
  if (pid == 0) {
    close(fd[0]);
    static const int crash[] = {SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT};
    for (size_t i = 0; i < sizeof crash / sizeof crash[0]; i++) signal(crash[i], SIG_DFL);
    int rc = fn(arg, out);
    ssize_t w = write(fd[1], out, len);
    _exit(w == (ssize_t)len ? rc : 3);
  }
  close(fd[1]);
  size_t got = 0;
  while (got < len) {
    ssize_t n = read(fd[0], (char *)out + got, len - got);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    got += (size_t)n;
  }
  close(fd[0]);
  int st = 0;
  while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
  }
  *status = st;
  return got;
}

const char *tu_child_trouble(int status, size_t got, size_t len, char *buf, size_t n) {
  if (WIFSIGNALED(status)) {
    snprintf(buf, n, "killed by signal %d (%s)", WTERMSIG(status), strsignal(WTERMSIG(status)));
    return buf;
  }
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0 || got != len) {
    snprintf(buf, n, "died (status 0x%x, %zu bytes)", status, got);
    return buf;
  }
  return NULL;
}
