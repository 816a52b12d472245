/* SPDX-License-Identifier: Apache-2.0 */
/* The projection strategy (SPEC section 1c): the DATTNPRJ file reader
 * (da_projections_load; format in tools/PROJ_FORMAT.md, written by
 * `distrattn calibrate`) and the float64 reference the tests compare the
 * backends with. */
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "da_internal.h"

/* ---------------------------------------------------------------- file */

#define PRJ_MAGIC "DATTNPRJ"
#define PRJ_VERSION 1u
#define PRJ_HEADER 96u
#define PRJ_MODEL 64u
#define PRJ_MAX_LAYERS 4096u
#define PRJ_MAX_HEADS 4096u
#define PRJ_MAX_HEAD_DIM 256u
#define PRJ_METHODS 3u /* 0 pca, 1 optimal, 2 other */

static uint32_t rd_u32(const unsigned char *b) {
  return (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
}

void da_projections_free(float *proj) { free(proj); }

da_status da_projections_load(const char *path, int layer, float **proj, int *layers_out,
                              int *heads_out, int *head_dim_out, int *rank_out) {
  da_clear_no_ctx_error();
  if (!proj) return da_fail_no_ctx(DA_ERR_INVALID_ARG, "da_projections_load: proj is NULL");
  *proj = NULL;
  if (!path || !*path)
    return da_fail_no_ctx(DA_ERR_INVALID_ARG, "da_projections_load: path is NULL or empty");
  if (layer < 0)
    return da_fail_no_ctx(DA_ERR_INVALID_ARG, "da_projections_load: layer = %d must be >= 0",
                          layer);
  FILE *f = fopen(path, "rb");
  if (!f)
    return da_fail_no_ctx(DA_ERR_INVALID_ARG, "%s: cannot open: %s", path, strerror(errno));
  da_status s = DA_ERR_INVALID_ARG;
  float *out = NULL;
  unsigned char h[PRJ_HEADER];
  struct stat st;
  if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
    da_fail_no_ctx(s, "%s: not a regular file", path);
    goto done;
  }
  const unsigned long long fsize = (unsigned long long)st.st_size;
  size_t got = fread(h, 1, PRJ_HEADER, f);
  if (got < 8 || memcmp(h, PRJ_MAGIC, 8) != 0) {
    da_fail_no_ctx(s, "%s: not a projection file (it does not start with the magic %s)", path,
                   PRJ_MAGIC);
    goto done;
  }
  if (got >= 12 && rd_u32(h + 8) != PRJ_VERSION) {
    da_fail_no_ctx(s, "%s: version = %u: this reader knows version %u only", path,
                   (unsigned)rd_u32(h + 8), PRJ_VERSION);
    goto done;
  }
  if (got < PRJ_HEADER) {
    da_fail_no_ctx(s, "%s: truncated: %zu bytes, the header alone is %u", path, got, PRJ_HEADER);
    goto done;
  }
  const uint32_t L = rd_u32(h + 12), H = rd_u32(h + 16), D = rd_u32(h + 20), R = rd_u32(h + 24),
                 method = rd_u32(h + 28);
  const char *bad = NULL;
  uint32_t val = 0, lo = 1, hi = 0;
  if (L < 1 || L > PRJ_MAX_LAYERS) bad = "layers", val = L, hi = PRJ_MAX_LAYERS;
  else if (H < 1 || H > PRJ_MAX_HEADS) bad = "heads", val = H, hi = PRJ_MAX_HEADS;
  else if (D < 1 || D > PRJ_MAX_HEAD_DIM) bad = "head_dim", val = D, hi = PRJ_MAX_HEAD_DIM;
  else if (R < 1 || R > D) bad = "rank", val = R, hi = D;
  else if (method >= PRJ_METHODS) bad = "method", val = method, lo = 0, hi = PRJ_METHODS - 1;
  if (bad) {
    da_fail_no_ctx(s, "%s: %s = %u is out of range (%u..%u)", path, bad, (unsigned)val,
                   (unsigned)lo, (unsigned)hi);
    goto done;
  }
  int nul = 0;
  for (unsigned i = 0; i < PRJ_MODEL; i++) {
    unsigned char c = h[32 + i];
    if (c == 0) nul = 1;
    else if (nul || c < 0x20 || c > 0x7e) {
      da_fail_no_ctx(s, "%s: model byte %u = 0x%02x is not printable ASCII (or follows a NUL)",
                     path, i, c);
      goto done;
    }
  }
  /* sizes: every factor bounded above, so 64-bit arithmetic cannot wrap */
  const unsigned long long per_layer = (unsigned long long)H * 2u * D * R; /* floats */
  const unsigned long long want = PRJ_HEADER + 4ull * per_layer * L;
  if (fsize != want) {
    da_fail_no_ctx(s, "%s: %llu bytes, but layers %u x heads %u x 2 x head_dim %u x rank %u f32 "
                   "after the %u-byte header make %llu (%s)",
                   path, fsize, (unsigned)L, (unsigned)H, (unsigned)D, (unsigned)R, PRJ_HEADER,
                   want, fsize < want ? "truncated" : "trailing bytes");
    goto done;
  }
  if ((unsigned)layer >= L) {
    da_fail_no_ctx(s, "%s: layer = %d, but the file holds layers 0..%u", path, layer,
                   (unsigned)L - 1);
    goto done;
  }
  if (per_layer * 4u > (unsigned long long)SIZE_MAX) {
    da_fail_no_ctx(DA_ERR_HOST_MEMORY, "%s: one layer's %llu floats do not fit in memory", path,
                   per_layer);
    s = DA_ERR_HOST_MEMORY;
    goto done;
  }
  out = malloc((size_t)per_layer * sizeof(float));
  if (!out) {
    s = da_fail_no_ctx(DA_ERR_HOST_MEMORY, "%s: out of memory for %llu floats", path, per_layer);
    goto done;
  }
  if (fseeko(f, (off_t)(PRJ_HEADER + 4ull * per_layer * (unsigned)layer), SEEK_SET) != 0) {
    da_fail_no_ctx(s, "%s: cannot seek to layer %d: %s", path, layer, strerror(errno));
    goto done;
  }
  {
    unsigned char buf[4096];
    unsigned long long i = 0;
    while (i < per_layer) {
      size_t n = per_layer - i < sizeof buf / 4 ? (size_t)(per_layer - i) : sizeof buf / 4;
      if (fread(buf, 4, n, f) != n) {
        da_fail_no_ctx(s, "%s: read error or file shrank while reading layer %d", path, layer);
        goto done;
      }
      for (size_t j = 0; j < n; j++, i++) {
        uint32_t u = rd_u32(buf + 4 * j);
        float v;
        memcpy(&v, &u, 4);
        if (!isfinite(v)) {
          const unsigned long long per = (unsigned long long)D * R, hh = i / (2 * per),
                                   rest = i % (2 * per);
          da_fail_no_ctx(s, "%s: layer %d, head %llu, %s, row %llu, col %llu is %s: "
                         "projections must be finite",
                         path, layer, hh, rest < per ? "A" : "B", rest % per / R, rest % R,
                         isnan(v) ? "NaN" : v > 0 ? "+Inf" : "-Inf");
          goto done;
        }
        out[i] = v;
      }
    }
  }
  s = DA_SUCCESS;
  if (layers_out) *layers_out = (int)L;
  if (heads_out) *heads_out = (int)H;
  if (head_dim_out) *head_dim_out = (int)D;
  if (rank_out) *rank_out = (int)R;
  *proj = out;
  out = NULL;
done:
  fclose(f);
  free(out);
  return s;
}

/* ----------------------------------------------------------- reference */

int da_ref_projection(const da_attn_desc *d, int rank, const float *proj, const void *q,
                      const void *k, const void *v, double *o) {
  const int B = d->batch, H = d->heads, KH = d->kv_heads ? d->kv_heads : d->heads;
  const int Sq = d->seq_q, Sk = d->seq_k, hd = d->head_dim, R = rank;
  const double scale = d->scale != 0.0f ? (double)d->scale : 1.0 / sqrt((double)hd);
  const da_dtype t = d->dtype;
  double *qp = malloc(sizeof(double) * (size_t)Sq * R);
  double *kp = malloc(sizeof(double) * (size_t)Sk * R);
  double *p = malloc(sizeof(double) * (size_t)Sk);
  if (!qp || !kp || !p) {
    free(qp), free(kp), free(p);
    return -1;
  }
  for (int b = 0; b < B; b++)
    for (int h = 0; h < H; h++) {
      const int g = h / (H / KH);
      const float *A = proj + (size_t)h * 2 * hd * R, *Bm = A + (size_t)hd * R;
      const size_t qb = ((size_t)b * H + h) * Sq * hd, kb = ((size_t)b * KH + g) * Sk * hd;
      for (int i = 0; i < Sq; i++)
        for (int c = 0; c < R; c++) {
          double s = 0.0;
          for (int e = 0; e < hd; e++)
            s += (double)da_load_elem(q, t, qb + (size_t)i * hd + e) * A[(size_t)e * R + c];
          qp[(size_t)i * R + c] = s;
        }
      for (int j = 0; j < Sk; j++)
        for (int c = 0; c < R; c++) {
          double s = 0.0;
          for (int e = 0; e < hd; e++)
            s += (double)da_load_elem(k, t, kb + (size_t)j * hd + e) * Bm[(size_t)e * R + c];
          kp[(size_t)j * R + c] = s;
        }
      for (int i = 0; i < Sq; i++) {
        double *orow = o + qb + (size_t)i * hd;
        long lim = d->causal ? (long)i + (Sk - Sq) + 1 : Sk; /* keys 0..lim-1 */
        if (lim > Sk) lim = Sk;
        for (int e = 0; e < hd; e++) orow[e] = 0.0;
        if (lim <= 0) continue;
        double m = -INFINITY;
        for (long j = 0; j < lim; j++) {
          double s = 0.0;
          for (int c = 0; c < R; c++) s += qp[(size_t)i * R + c] * kp[(size_t)j * R + c];
          p[j] = scale * s;
          if (p[j] > m) m = p[j];
        }
        double sum = 0.0;
        for (long j = 0; j < lim; j++) sum += (p[j] = exp(p[j] - m));
        for (long j = 0; j < lim; j++) {
          double w = p[j] / sum;
          for (int e = 0; e < hd; e++)
            orow[e] += w * (double)da_load_elem(v, t, kb + (size_t)j * hd + e);
        }
      }
    }
  free(qp), free(kp), free(p);
  return 0;
}
