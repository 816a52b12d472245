/* SPDX-License-Identifier: Apache-2.0 */
/* distrattn command-line program: shared helpers. */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "util.h"

/* ------------------------------------------------------------------ messages */

static void vmsg(const char *cmd, const char *fmt, va_list ap) {
  fprintf(stderr, "%s: ", cmd);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
}

void tool_msg(const char *cmd, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vmsg(cmd, fmt, ap);
  va_end(ap);
}

int tool_usage_error(const char *cmd, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vmsg(cmd, fmt, ap);
  va_end(ap);
  fprintf(stderr, "Try '%s --help'.\n", cmd);
  return EXIT_USAGE;
}

void tool_api_error(const char *cmd, const char *what, da_status s, const da_context *ctx) {
  const char *detail = ctx ? da_context_last_error(ctx) : "";
  if (detail && *detail)
    fprintf(stderr, "%s: %s: %s: %s\n", cmd, what, da_status_string(s), detail);
  else
    fprintf(stderr, "%s: %s: %s\n", cmd, what, da_status_string(s));
}

/* ------------------------------------------------------------- option values */

int parse_int(const char *cmd, const char *opt, const char *s, long lo, long hi, int *out) {
  char *end = NULL;
  errno = 0;
  long v = strtol(s, &end, 10);
  if (!*s || errno || !end || *end || v < lo || v > hi) {
    tool_usage_error(cmd, "invalid value '%s' for %s (an integer %ld..%ld)", s, opt, lo, hi);
    return -1;
  }
  *out = (int)v;
  return 0;
}

int parse_u64(const char *cmd, const char *opt, const char *s, unsigned long long *out) {
  char *end = NULL;
  errno = 0;
  if (!*s || *s == '-') goto bad;
  unsigned long long v = strtoull(s, &end, 0);
  if (errno || !end || *end) goto bad;
  *out = v;
  return 0;
bad:
  tool_usage_error(cmd, "invalid value '%s' for %s (an unsigned 64-bit integer)", s, opt);
  return -1;
}

int parse_backend(const char *cmd, const char *s, da_backend *out) {
  static const struct { const char *n; da_backend b; } t[] = {
      {"auto", DA_BACKEND_AUTO}, {"cpu", DA_BACKEND_CPU},
      {"opencl", DA_BACKEND_OPENCL}, {"cl", DA_BACKEND_OPENCL}, {"cuda", DA_BACKEND_CUDA}};
  for (size_t i = 0; i < sizeof t / sizeof t[0]; i++)
    if (strcmp(s, t[i].n) == 0) {
      *out = t[i].b;
      return 0;
    }
  tool_usage_error(cmd, "invalid backend '%s' (auto, cpu, opencl or cuda)", s);
  return -1;
}

int parse_dtype(const char *cmd, const char *s, da_dtype *out) {
  if (strcmp(s, "f32") == 0 || strcmp(s, "float") == 0 || strcmp(s, "fp32") == 0) *out = DA_F32;
  else if (strcmp(s, "f16") == 0 || strcmp(s, "half") == 0 || strcmp(s, "fp16") == 0) *out = DA_F16;
  else if (strcmp(s, "bf16") == 0) *out = DA_BF16;
  else {
    tool_usage_error(cmd, "invalid dtype '%s' (f32, f16 or bf16)", s);
    return -1;
  }
  return 0;
}

int parse_algo(const char *cmd, const char *s, da_algo *out) {
  if (strcmp(s, "auto") == 0) *out = DA_ALGO_AUTO;
  else if (strcmp(s, "fused") == 0) *out = DA_ALGO_FUSED;
  else if (strcmp(s, "gemm") == 0) *out = DA_ALGO_GEMM;
  else {
    tool_usage_error(cmd, "invalid algo '%s' (auto, fused or gemm)", s);
    return -1;
  }
  return 0;
}

int parse_fusion(const char *cmd, const char *s, da_fusion *out) {
  if (strcmp(s, "mean") == 0) *out = DA_FUSE_MEAN;
  else if (strcmp(s, "norm") == 0) *out = DA_FUSE_NORM;
  else {
    tool_usage_error(cmd, "invalid fusion '%s' (mean or norm)", s);
    return -1;
  }
  return 0;
}

int parse_group(const char *cmd, const char *s, int *out) {
  if (strcmp(s, "1") == 0 || strcmp(s, "2") == 0 || strcmp(s, "4") == 0 || strcmp(s, "8") == 0) {
    *out = atoi(s);
    return 0;
  }
  tool_usage_error(cmd, "invalid value '%s' for --group (1, 2, 4 or 8)", s);
  return -1;
}

int parse_int_list(const char *cmd, const char *opt, const char *s, int *vals, int max, int *n) {
  *n = 0;
  const char *p = s;
  if (!*p) goto bad;
  for (;;) {
    char *end = NULL;
    errno = 0;
    long v = strtol(p, &end, 10);
    if (end == p || errno || v < 1 || v > INT_MAX || (*end && *end != ',')) goto bad;
    if (*n >= max) {
      tool_usage_error(cmd, "too many values in %s (at most %d)", opt, max);
      return -1;
    }
    vals[(*n)++] = (int)v;
    if (!*end) break;
    p = end + 1;
  }
  return 0;
bad:
  tool_usage_error(cmd, "invalid list '%s' for %s (comma separated positive integers)", s, opt);
  return -1;
}

const char *dtype_name(da_dtype t) {
  switch (t) {
  case DA_F32: return "f32";
  case DA_F16: return "f16";
  case DA_BF16: return "bf16";
  }
  return "?";
}

const char *algo_name(da_algo a) {
  switch (a) {
  case DA_ALGO_AUTO: return "auto";
  case DA_ALGO_FUSED: return "fused";
  case DA_ALGO_GEMM: return "gemm";
  }
  return "?";
}

const char *fusion_name(da_fusion f) { return f == DA_FUSE_NORM ? "norm" : "mean"; }

const char *backend_label(da_backend b) {
  if (b == DA_BACKEND_AUTO) return "auto";
  const char *n = da_backend_name(b);
  return n && *n ? n : "?";
}

size_t dtype_size(da_dtype t) { return t == DA_F32 ? 4 : 2; }

/* ---------------------------------------------------------------- conversion */

uint16_t tool_f32_to_f16(float f) {
  uint32_t x;
  memcpy(&x, &f, sizeof x);
  uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
  uint32_t ax = x & 0x7fffffffu;
  if (ax > 0x7f800000u) return (uint16_t)(sign | 0x7e00u); /* NaN */
  int e = (int)(ax >> 23) - 127;                          /* unbiased exponent */
  if (e >= 16) return (uint16_t)(sign | 0x7c00u);         /* Inf, or too large */
  if (e < -25) return sign;                               /* below half of 2^-24 */
  uint32_t mant = (ax & 0x7fffffu) | 0x800000u;           /* 24 significant bits */
  int shift = e >= -14 ? 13 : 13 + (-14 - e);             /* to 11 bits, or subnormal */
  uint32_t q = mant >> shift;
  uint32_t rem = mant & ((1u << shift) - 1u), halfway = 1u << (shift - 1);
  if (rem > halfway || (rem == halfway && (q & 1u))) q++;
  /* For normals q holds the implicit bit (0x400): it lifts the exponent by
   * one, and a rounding carry moves on into the exponent (up to Inf). */
  uint32_t bits = e >= -14 ? ((uint32_t)(e + 14) << 10) + q : q;
  return (uint16_t)(sign | bits);
}

float tool_f16_to_f32(uint16_t h) {
  int e = (h >> 10) & 0x1f;
  int m = h & 0x3ff;
  float v;
  if (e == 0) v = ldexpf((float)m, -24);
  else if (e == 31) v = m ? NAN : INFINITY;
  else v = ldexpf((float)(m | 0x400), e - 25);
  return (h & 0x8000u) ? -v : v;
}

uint16_t tool_f32_to_bf16(float f) {
  uint32_t x;
  memcpy(&x, &f, sizeof x);
  if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 0x0040u);
  uint32_t lsb = (x >> 16) & 1u;
  x += 0x7fffu + lsb;
  return (uint16_t)(x >> 16);
}

float tool_bf16_to_f32(uint16_t b) {
  uint32_t x = (uint32_t)b << 16;
  float f;
  memcpy(&f, &x, sizeof f);
  return f;
}

void to_dtype(void *dst, da_dtype t, const float *src, size_t n) {
  uint16_t *d16 = dst;
  switch (t) {
  case DA_F16:
    for (size_t i = 0; i < n; i++) d16[i] = tool_f32_to_f16(src[i]);
    break;
  case DA_BF16:
    for (size_t i = 0; i < n; i++) d16[i] = tool_f32_to_bf16(src[i]);
    break;
  default:
    if (dst != (const void *)src) memcpy(dst, src, n * sizeof(float));
    break;
  }
}

void from_dtype(float *dst, da_dtype t, const void *src, size_t n) {
  const uint16_t *s16 = src;
  switch (t) {
  case DA_F16:
    for (size_t i = 0; i < n; i++) dst[i] = tool_f16_to_f32(s16[i]);
    break;
  case DA_BF16:
    for (size_t i = 0; i < n; i++) dst[i] = tool_bf16_to_f32(s16[i]);
    break;
  default:
    if ((const void *)dst != src) memcpy(dst, src, n * sizeof(float));
    break;
  }
}

/* -------------------------------------------------------------------- random */

static uint64_t splitmix_next(uint64_t *s) {
  uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

void rng_init(tool_rng *r, uint64_t seed) {
  r->state = seed;
  r->has_spare = 0;
  r->spare = 0.0;
}

/* Uniform in (0, 1]: never 0, so that log() is finite. */
static double rng_uniform(tool_rng *r) {
  return ((double)(splitmix_next(&r->state) >> 11) + 1.0) * (1.0 / 9007199254740992.0);
}

double rng_normal(tool_rng *r) {
  if (r->has_spare) {
    r->has_spare = 0;
    return r->spare;
  }
  double u1 = rng_uniform(r), u2 = rng_uniform(r);
  double rad = sqrt(-2.0 * log(u1)), th = 6.283185307179586 * u2;
  r->spare = rad * sin(th);
  r->has_spare = 1;
  return rad * cos(th);
}

void fill_normal(tool_rng *r, float *dst, size_t n, da_dtype t) {
  for (size_t i = 0; i < n; i++) {
    float f = (float)rng_normal(r);
    if (t == DA_F16) f = tool_f16_to_f32(tool_f32_to_f16(f));
    else if (t == DA_BF16) f = tool_bf16_to_f32(tool_f32_to_bf16(f));
    dst[i] = f;
  }
}

/* -------------------------------------------------------------------- timing */

double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec * 1e-6;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

double median(double *v, int n) {
  if (n <= 0) return NAN;
  qsort(v, (size_t)n, sizeof *v, cmp_double);
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* -------------------------------------------------------------------- errors */

double rel_error(const float *a, const float *b, size_t n) {
  double num = 0.0, den = 0.0;
  for (size_t i = 0; i < n; i++) {
    if (!isfinite(a[i]) || !isfinite(b[i])) return NAN;
    double d = (double)a[i] - (double)b[i];
    num += d * d;
    den += (double)b[i] * (double)b[i];
  }
  return den > 0.0 ? sqrt(num / den) : sqrt(num);
}

/* ----------------------------------------------------------------- reference */

double attn_madds(const da_attn_desc *d) {
  return 2.0 * d->batch * d->heads * (double)d->seq_q * d->seq_k * d->head_dim;
}

double attn_flops(const da_attn_desc *d) { return 2.0 * attn_madds(d); }

/* One (batch, head): softmax(scale * Qx Kx^T + mask) V over nf features,
 * rows r0..r1-1 of the query. Qx: [rows][nf] (row r - r0), Kx: [sk][nf]. */
static void ref_rows(const double *qx, const double *kx, const float *v, int r0, int r1,
                     int sq, int sk, int nf, int hd, int causal, double scale, double *srow,
                     double *acc, float *out) {
  for (int r = r0; r < r1; r++) {
    const double *qr = qx + (size_t)(r - r0) * nf;
    long last = causal ? (long)r + (sk - sq) : (long)sk - 1; /* last visible key */
    if (last > sk - 1) last = sk - 1;
    float *o = out + (size_t)r * hd;
    if (last < 0) {
      for (int c = 0; c < hd; c++) o[c] = 0.0f;
      continue;
    }
    double mx = -INFINITY;
    for (long j = 0; j <= last; j++) {
      const double *kj = kx + (size_t)j * nf;
      double s = 0.0;
      for (int f = 0; f < nf; f++) s += qr[f] * kj[f];
      s *= scale;
      srow[j] = s;
      if (s > mx) mx = s;
    }
    double sum = 0.0;
    for (int c = 0; c < hd; c++) acc[c] = 0.0;
    for (long j = 0; j <= last; j++) {
      double p = exp(srow[j] - mx);
      sum += p;
      const float *vj = v + (size_t)j * hd;
      for (int c = 0; c < hd; c++) acc[c] += p * vj[c];
    }
    for (int c = 0; c < hd; c++) o[c] = (float)(acc[c] / sum);
  }
}

static int reference_impl(const da_attn_desc *d, const float *q, const float *k,
                          const float *v, const int *perm, int row_step, float *out) {
  const int B = d->batch, H = d->heads, KVH = d->kv_heads > 0 ? d->kv_heads : d->heads;
  const int sq = d->seq_q, sk = d->seq_k, hd = d->head_dim;
  const int G = d->group_size > 1 ? d->group_size : 1;
  const int hb = d->hash_block > 0 ? d->hash_block : 128;
  const double scale = d->scale > 0.0f ? (double)d->scale : (double)(1.0f / sqrtf((float)hd));
  const int ng = (hd + G - 1) / G;
  const int n_tiles = (sq + hb - 1) / hb;
  const int rows_max = G > 1 ? (hb < sq ? hb : sq) : sq;
  const int nf = G > 1 ? ng : hd;

  double *qx = malloc(sizeof(double) * (size_t)rows_max * nf);
  double *kx = malloc(sizeof(double) * (size_t)sk * nf);
  double *srow = malloc(sizeof(double) * (size_t)(sk > 0 ? sk : 1));
  double *acc = malloc(sizeof(double) * (size_t)hd);
  double *w = malloc(sizeof(double) * (size_t)hd);
  if (!qx || !kx || !srow || !acc || !w) {
    free(qx), free(kx), free(srow), free(acc), free(w);
    return -1;
  }
  for (int b = 0; b < B; b++)
    for (int h = 0; h < H; h++) {
      int kvh = h / (H / KVH);
      const float *qh = q + ((size_t)b * H + h) * sq * hd;
      const float *kh = k + ((size_t)b * KVH + kvh) * sk * hd;
      const float *vh = v + ((size_t)b * KVH + kvh) * sk * hd;
      float *oh = out + ((size_t)b * H + h) * sq * hd;
      if (G == 1) {
        for (size_t i = 0; i < (size_t)sq * hd; i++) qx[i] = qh[i];
        for (size_t i = 0; i < (size_t)sk * hd; i++) kx[i] = kh[i];
        if (row_step <= 1) {
          ref_rows(qx, kx, vh, 0, sq, sq, sk, hd, hd, d->causal, scale, srow, acc, oh);
        } else {
          for (int r = 0; r < sq; r += row_step) /* ref_rows indexes qx from r0 */
            ref_rows(qx + (size_t)r * hd, kx, vh, r, r + 1, sq, sk, hd, hd, d->causal, scale,
                     srow, acc, oh);
        }
        continue;
      }
      for (int t = 0; t < n_tiles; t++) {
        int r0 = t * hb, r1 = r0 + hb < sq ? r0 + hb : sq;
        const int *pi = perm + (((size_t)b * H + h) * n_tiles + t) * hd;
        /* fusion weights a_c over the tile's rows */
        for (int c = 0; c < hd; c++) {
          if (d->fusion == DA_FUSE_NORM) {
            double s = 0.0;
            for (int r = r0; r < r1; r++) {
              double x = qh[(size_t)r * hd + c];
              s += x * x;
            }
            w[c] = sqrt(s);
          } else {
            w[c] = 1.0;
          }
        }
        for (int g = 0; g < ng; g++) {
          int c0 = g * G, c1 = c0 + G < hd ? c0 + G : hd;
          double wsum = 0.0;
          for (int i = c0; i < c1; i++) wsum += w[pi[i]];
          int ones = !(wsum > 0.0);
          if (ones) wsum = (double)(c1 - c0);
          for (int r = r0; r < r1; r++) {
            double s = 0.0;
            for (int i = c0; i < c1; i++) s += qh[(size_t)r * hd + pi[i]];
            qx[(size_t)(r - r0) * nf + g] = s / wsum;
          }
          for (int j = 0; j < sk; j++) {
            double s = 0.0;
            for (int i = c0; i < c1; i++)
              s += (ones ? 1.0 : w[pi[i]]) * (double)kh[(size_t)j * hd + pi[i]];
            kx[(size_t)j * nf + g] = s;
          }
        }
        ref_rows(qx, kx, vh, r0, r1, sq, sk, nf, hd, d->causal, scale, srow, acc, oh);
      }
    }
  free(qx), free(kx), free(srow), free(acc), free(w);
  return 0;
}

int reference_f64(const da_attn_desc *d, const float *q, const float *k, const float *v,
                  const int *perm, float *out) {
  return reference_impl(d, q, k, v, perm, 1, out);
}

int reference_f64_rows(const da_attn_desc *d, const float *q, const float *k, const float *v,
                       int row_step, float *out) {
  if (d->group_size > 1 || row_step < 1) return -1;
  return reference_impl(d, q, k, v, NULL, row_step, out);
}

double rel_error_rows(const float *a, const float *b, const da_attn_desc *d, int row_step) {
  const size_t hd = (size_t)d->head_dim, sq = (size_t)d->seq_q;
  const size_t mats = (size_t)d->batch * (size_t)d->heads;
  double num = 0.0, den = 0.0;
  for (size_t m = 0; m < mats; m++)
    for (size_t r = 0; r < sq; r += (size_t)row_step)
      for (size_t c = 0; c < hd; c++) {
        size_t i = (m * sq + r) * hd + c;
        double x = a[i], y = b[i];
        if (!isfinite(x) || !isfinite(y)) return NAN;
        num += (x - y) * (x - y);
        den += y * y;
      }
  return den > 0.0 ? sqrt(num / den) : sqrt(num);
}

/* ------------------------------------------------------------------ progress */

void progress_init(tool_progress *p) {
  p->on = isatty(2);
  p->width = 0;
}

void progress_show(tool_progress *p, const char *fmt, ...) {
  if (!p->on) return;
  char buf[256];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  int n = (int)strlen(buf);
  fprintf(stderr, "\r%s%*s", buf, p->width > n ? p->width - n : 0, "");
  if (p->width > n) fprintf(stderr, "\r%s", buf);
  p->width = n;
  fflush(stderr);
}

void progress_clear(tool_progress *p) {
  if (!p->on || p->width == 0) return;
  fprintf(stderr, "\r%*s\r", p->width, "");
  fflush(stderr);
  p->width = 0;
}

void csv_field(FILE *f, const char *s) {
  if (!strpbrk(s, ",\" \t\n")) {
    fputs(s, f);
    return;
  }
  fputc('"', f);
  for (; *s; s++) {
    if (*s == '"') fputc('"', f);
    fputc(*s, f);
  }
  fputc('"', f);
}

int tool_open_context(const char *cmd, da_backend backend, int device, da_context **ctx,
                      da_device_info *info) {
  *ctx = NULL;
  da_status s = da_context_create(ctx, backend, device);
  if (s != DA_SUCCESS) {
    tool_api_error(cmd, "da_context_create", s, NULL);
    const char *why = NULL;
    if (backend != DA_BACKEND_AUTO && !da_backend_available(backend, &why))
      tool_msg(cmd, "backend %s is not available: %s", backend_label(backend), why ? why : "");
    return 0;
  }
  memset(info, 0, sizeof *info);
  if ((s = da_context_get_device_info(*ctx, info)) != DA_SUCCESS) {
    tool_api_error(cmd, "da_context_get_device_info", s, *ctx);
    da_context_destroy(*ctx);
    *ctx = NULL;
    return 0;
  }
  return 1;
}

const char *kernel_label(const da_plan *p, int full, char *buf, size_t len) {
  da_kernel_info k;
  da_kernel_info_init(&k);
  if (!p || da_plan_get_kernel(p, &k) != DA_SUCCESS) {
    snprintf(buf, len, "?");
    return buf;
  }
  size_t n = 0;
#define KL_ADD(...)                                                                               \
  do {                                                                                            \
    if (n < len) {                                                                                \
      int w_ = snprintf(buf + n, len - n, __VA_ARGS__);                                           \
      n = w_ < 0 ? len : n + (size_t)w_;                                                          \
    }                                                                                             \
  } while (0)
  KL_ADD("%s", k.name);
  if (k.variant[0]) KL_ADD(" (%s)", k.variant);
  if (k.tile_rows > 0 && k.tile_cols > 0) KL_ADD(" %dx%d", k.tile_rows, k.tile_cols);
  else if (k.tile_rows > 0) KL_ADD(" %d rows", k.tile_rows);
  if (k.chunk > 0) KL_ADD(", chunk %lld", k.chunk);
  if (full && k.threads > 0) KL_ADD(", %d thread%s", k.threads, k.threads == 1 ? "" : "s");
#undef KL_ADD
  return buf;
}
