/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The machine's read bandwidth, as the CPU decode numbers compare against
 * it: T threads (default 2) each sum its own array of MiB mebibytes
 * (default 512) of floats, in AVX-512/AVX2 where the compiler targets them,
 * repeatedly; the best pass of R (default 10) gives GB/s (10^9 bytes/s) of
 * all threads together.
 *
 *   cc -O2 -march=native -pthread bench/membw.c -o membw && ./membw [T [MiB [R]]]
 *
 * (or `make bench/membw` in the build folder; not installed). The arrays are written
 * once first, so every page is mapped before timing.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct {
  const float *a;
  size_t n;
  double sum;
  pthread_barrier_t *bar;
  int rounds;
  double *t0, *t1; /* per round: start and end, from thread 0 */
} warg;

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static double sum_array(const float *a, size_t n) {
  float s[16] = {0};
  for (size_t i = 0; i + 16 <= n; i += 16)
    for (int l = 0; l < 16; l++) s[l] += a[i + l]; /* vectorised at -O2 -march=native */
  double t = 0;
  for (int l = 0; l < 16; l++) t += s[l];
  return t;
}

static void *worker(void *p) {
  warg *w = p;
  for (int r = 0; r < w->rounds; r++) {
    pthread_barrier_wait(w->bar);
    if (w->t0) w->t0[r] = now();
    w->sum += sum_array(w->a, w->n);
    pthread_barrier_wait(w->bar);
    if (w->t1) w->t1[r] = now();
  }
  return NULL;
}

int main(int argc, char **argv) {
  int T = argc > 1 ? atoi(argv[1]) : 2;
  size_t mib = argc > 2 ? (size_t)atol(argv[2]) : 512;
  int R = argc > 3 ? atoi(argv[3]) : 10;
  if (T < 1 || T > 256 || mib < 1 || R < 1) {
    fprintf(stderr, "usage: membw [threads [MiB per thread [rounds]]]\n");
    return 2;
  }
  size_t n = mib << 18; /* floats */
  pthread_barrier_t bar;
  pthread_barrier_init(&bar, NULL, (unsigned)T);
  warg *w = calloc((size_t)T, sizeof *w);
  pthread_t *th = calloc((size_t)T, sizeof *th);
  double *t0 = calloc((size_t)R, sizeof *t0), *t1 = calloc((size_t)R, sizeof *t1);
  if (!w || !th || !t0 || !t1) return 1;
  for (int t = 0; t < T; t++) {
    float *a = NULL;
    if (posix_memalign((void **)&a, 64, n * sizeof(float)) != 0) {
      fprintf(stderr, "membw: cannot allocate %zu MiB\n", mib);
      return 1;
    }
    for (size_t i = 0; i < n; i++) a[i] = (float)(i & 7);
    w[t] = (warg){a, n, 0, &bar, R, t == 0 ? t0 : NULL, t == 0 ? t1 : NULL};
  }
  for (int t = 1; t < T; t++) pthread_create(&th[t], NULL, worker, &w[t]);
  worker(&w[0]);
  for (int t = 1; t < T; t++) pthread_join(th[t], NULL);
  double best = 1e30, tot = 0;
  for (int r = 0; r < R; r++) {
    double dt = t1[r] - t0[r];
    if (dt < best) best = dt;
    tot += dt;
  }
  double bytes = (double)T * (double)n * sizeof(float), chk = 0;
  for (int t = 0; t < T; t++) chk += w[t].sum;
  printf("membw: %d threads x %zu MiB, %d rounds: best %.1f GB/s, mean %.1f GB/s (checksum %g)\n",
         T, mib, R, bytes / best * 1e-9, bytes / (tot / R) * 1e-9, chk);
  return 0;
}
