/* SPDX-License-Identifier: Apache-2.0 */
/* Calibration of the projection strategy and the DATTNPRJ writer: see
 * tools/calib.h for what is computed and tools/PROJ_FORMAT.md for the file. */
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "calib.h"

/* ------------------------------------------------------- linear algebra */

/* Sort w descending, permuting the columns of the n x n matrices m1 (and
 * m2 when given) alike. */
static void sort_desc(int n, double *w, double *m1, double *m2) {
  for (int i = 0; i < n; i++) {
    int best = i;
    for (int j = i + 1; j < n; j++)
      if (w[j] > w[best]) best = j;
    if (best == i) continue;
    double t = w[i];
    w[i] = w[best], w[best] = t;
    for (int k = 0; k < n; k++) {
      t = m1[k * n + i], m1[k * n + i] = m1[k * n + best], m1[k * n + best] = t;
      if (m2) t = m2[k * n + i], m2[k * n + i] = m2[k * n + best], m2[k * n + best] = t;
    }
  }
}

void calib_eig_sym(int n, double *a, double *w, double *v) {
  for (int i = 0; i < n * n; i++) v[i] = 0.0;
  for (int i = 0; i < n; i++) v[i * n + i] = 1.0;
  double total = 0.0;
  for (int i = 0; i < n * n; i++) total += a[i] * a[i];
  for (int sweep = 0; sweep < 100; sweep++) {
    double off = 0.0;
    for (int p = 0; p < n; p++)
      for (int q = p + 1; q < n; q++) off += a[p * n + q] * a[p * n + q];
    if (off <= 1e-30 * total || off == 0.0) break;
    for (int p = 0; p < n; p++)
      for (int q = p + 1; q < n; q++) {
        const double apq = a[p * n + q];
        if (fabs(apq) <= 1e-300) continue;
        const double th = (a[q * n + q] - a[p * n + p]) / (2.0 * apq);
        const double t = (th >= 0 ? 1.0 : -1.0) / (fabs(th) + sqrt(th * th + 1.0));
        const double c = 1.0 / sqrt(t * t + 1.0), s = t * c;
        for (int k = 0; k < n; k++) { /* columns p, q */
          const double akp = a[k * n + p], akq = a[k * n + q];
          a[k * n + p] = c * akp - s * akq;
          a[k * n + q] = s * akp + c * akq;
        }
        for (int k = 0; k < n; k++) { /* rows p, q */
          const double apk = a[p * n + k], aqk = a[q * n + k];
          a[p * n + k] = c * apk - s * aqk;
          a[q * n + k] = s * apk + c * aqk;
        }
        for (int k = 0; k < n; k++) {
          const double vkp = v[k * n + p], vkq = v[k * n + q];
          v[k * n + p] = c * vkp - s * vkq;
          v[k * n + q] = s * vkp + c * vkq;
        }
      }
  }
  for (int i = 0; i < n; i++) w[i] = a[i * n + i];
  sort_desc(n, w, v, NULL);
}

void calib_svd(int n, double *t, double *u, double *s, double *v) {
  memcpy(u, t, sizeof(double) * (size_t)n * n);
  for (int i = 0; i < n * n; i++) v[i] = 0.0;
  for (int i = 0; i < n; i++) v[i * n + i] = 1.0;
  for (int sweep = 0; sweep < 100; sweep++) {
    int rotated = 0;
    for (int i = 0; i < n; i++)
      for (int j = i + 1; j < n; j++) {
        double al = 0, be = 0, ga = 0;
        for (int k = 0; k < n; k++) {
          const double ui = u[k * n + i], uj = u[k * n + j];
          al += ui * ui, be += uj * uj, ga += ui * uj;
        }
        if (fabs(ga) <= 1e-15 * sqrt(al * be) || ga == 0.0) continue;
        rotated = 1;
        const double ze = (be - al) / (2.0 * ga);
        const double tt = (ze >= 0 ? 1.0 : -1.0) / (fabs(ze) + sqrt(1.0 + ze * ze));
        const double c = 1.0 / sqrt(1.0 + tt * tt), sn = c * tt;
        for (int k = 0; k < n; k++) {
          const double ui = u[k * n + i], uj = u[k * n + j];
          u[k * n + i] = c * ui - sn * uj;
          u[k * n + j] = sn * ui + c * uj;
          const double vi = v[k * n + i], vj = v[k * n + j];
          v[k * n + i] = c * vi - sn * vj;
          v[k * n + j] = sn * vi + c * vj;
        }
      }
    if (!rotated) break;
  }
  for (int i = 0; i < n; i++) {
    double nn = 0;
    for (int k = 0; k < n; k++) nn += u[k * n + i] * u[k * n + i];
    s[i] = sqrt(nn);
    if (s[i] > 0)
      for (int k = 0; k < n; k++) u[k * n + i] /= s[i];
  }
  sort_desc(n, s, u, v);
}

/* c = a b (n x n) */
static void matmul(int n, const double *a, const double *b, double *c) {
  for (int i = 0; i < n; i++)
    for (int j = 0; j < n; j++) {
      double x = 0;
      for (int k = 0; k < n; k++) x += a[i * n + k] * b[k * n + j];
      c[i * n + j] = x;
    }
}

/* half = C^(1/2), ihalf = C^(+1/2) of the symmetric PSD matrix c (copied). */
static void sqrt_psd(int n, const double *c, double *half, double *ihalf, double *work) {
  double *a = work, *v = work + n * n, *w = work + 2 * n * n;
  memcpy(a, c, sizeof(double) * (size_t)n * n);
  calib_eig_sym(n, a, w, v);
  const double thr = w[0] > 0 ? w[0] * 1e-9 : 0.0;
  for (int i = 0; i < n; i++)
    for (int j = 0; j < n; j++) {
      double h = 0, ih = 0;
      for (int k = 0; k < n; k++) {
        if (!(w[k] > thr)) continue;
        const double p = v[i * n + k] * v[j * n + k];
        h += p * sqrt(w[k]);
        ih += p / sqrt(w[k]);
      }
      half[i * n + j] = h, ihalf[i * n + j] = ih;
    }
}

int calib_head(int d, int r, calib_method m, const double *Sq, double nq, const double *Sk,
               double nk, float *A, float *B) {
  if (!(nq > 0) || !(nk > 0) || r < 1 || r > d) return -1;
  const size_t dd = (size_t)d * d;
  double *buf = malloc(sizeof(double) * (12 * dd + 4 * (size_t)d));
  if (!buf) return -1;
  double *cq = buf, *ck = cq + dd, *hq = ck + dd, *iq = hq + dd, *hk = iq + dd, *ik = hk + dd;
  double *t = ik + dd, *u = t + dd, *v = u + dd, *work = v + dd; /* work: 2 dd + d */
  double *s = work + 3 * dd;
  if (m == CALIB_PCA) {
    double trq = 0, trk = 0;
    for (int i = 0; i < d; i++) trq += Sq[i * d + i], trk += Sk[i * d + i];
    for (size_t i = 0; i < dd; i++)
      t[i] = (trq > 0 ? Sq[i] / trq : 0.0) + (trk > 0 ? Sk[i] / trk : 0.0);
    calib_eig_sym(d, t, s, u);
    for (int i = 0; i < d; i++)
      for (int c = 0; c < r; c++) A[i * r + c] = B[i * r + c] = (float)u[i * d + c];
  } else {
    for (size_t i = 0; i < dd; i++) cq[i] = Sq[i] / nq, ck[i] = Sk[i] / nk;
    sqrt_psd(d, cq, hq, iq, work);
    sqrt_psd(d, ck, hk, ik, work);
    matmul(d, hq, hk, t); /* T = Cq^(1/2) Ck^(1/2) */
    calib_svd(d, t, u, s, v);
    for (int i = 0; i < d; i++)
      for (int c = 0; c < r; c++) {
        double a = 0, b = 0;
        for (int k = 0; k < d; k++) a += iq[i * d + k] * u[k * d + c], b += ik[i * d + k] * v[k * d + c];
        const double sc = sqrt(s[c] > 0 ? s[c] : 0.0);
        A[i * r + c] = (float)(a * sc);
        B[i * r + c] = (float)(b * sc);
      }
  }
  free(buf);
  return 0;
}

double calib_objective(int d, int r, const double *Sq, const double *Sk, const float *A,
                       const float *B) {
  const size_t dd = (size_t)d * d;
  double *e = malloc(sizeof(double) * 3 * dd);
  if (!e) return NAN;
  double *p = e + dd, *q = p + dd;
  for (int i = 0; i < d; i++)
    for (int j = 0; j < d; j++) {
      double x = 0;
      for (int c = 0; c < r; c++) x += (double)A[i * r + c] * (double)B[j * r + c];
      e[i * d + j] = x - (i == j ? 1.0 : 0.0);
    }
  matmul(d, Sq, e, p);
  matmul(d, e, Sk, q);
  double num = 0, den = 0;
  for (size_t i = 0; i < dd; i++) num += p[i] * q[i], den += Sq[i] * Sk[i];
  free(e);
  return den > 0 ? sqrt(num > 0 ? num / den : 0.0) : NAN;
}

void calib_moments(const capture *c, unsigned n_sent, unsigned l, unsigned h, double *Sq,
                   double *nq, double *Sk, double *nk) {
  const unsigned d = c->head_dim, g = h / (c->heads / c->kv_heads);
  memset(Sq, 0, sizeof(double) * d * d);
  memset(Sk, 0, sizeof(double) * d * d);
  *nq = *nk = 0;
  for (unsigned s = 0; s < n_sent && s < c->n_sent; s++) {
    const float *q, *k, *v;
    capture_qkv(c, s, l, &q, &k, &v);
    const float *qh = q + (size_t)h * c->seq_q[s] * d, *kg = k + (size_t)g * c->seq_k[s] * d;
    for (unsigned i = 0; i < c->seq_q[s]; i++) {
      const float *x = qh + (size_t)i * d;
      for (unsigned a = 0; a < d; a++)
        for (unsigned b = 0; b < d; b++) Sq[a * d + b] += (double)x[a] * x[b];
    }
    for (unsigned j = 0; j < c->seq_k[s]; j++) {
      const float *x = kg + (size_t)j * d;
      for (unsigned a = 0; a < d; a++)
        for (unsigned b = 0; b < d; b++) Sk[a * d + b] += (double)x[a] * x[b];
    }
    *nq += c->seq_q[s], *nk += c->seq_k[s];
  }
}

/* ----------------------------------------------------------------- file */

static void put_u32(unsigned char *b, uint32_t v) {
  b[0] = (unsigned char)v, b[1] = (unsigned char)(v >> 8), b[2] = (unsigned char)(v >> 16),
  b[3] = (unsigned char)(v >> 24);
}

int proj_write(const char *path, unsigned layers, unsigned heads, unsigned d, unsigned r,
               calib_method method, const char *model, const float *data, char *why,
               size_t why_len) {
  unsigned char h[PROJ_HEADER_BYTES];
  memset(h, 0, sizeof h);
  memcpy(h, PROJ_MAGIC, 8);
  put_u32(h + 8, PROJ_VERSION);
  put_u32(h + 12, layers);
  put_u32(h + 16, heads);
  put_u32(h + 20, d);
  put_u32(h + 24, r);
  put_u32(h + 28, (uint32_t)method);
  for (unsigned i = 0; model && model[i] && i < PROJ_MODEL_BYTES; i++)
    h[32 + i] = model[i] >= 0x20 && model[i] <= 0x7e ? (unsigned char)model[i] : '?';
  FILE *f = fopen(path, "wb");
  if (!f) {
    snprintf(why, why_len, "cannot create %s: %s", path, strerror(errno));
    return -1;
  }
  int ok = fwrite(h, 1, sizeof h, f) == sizeof h;
  const size_t n = (size_t)layers * heads * 2 * d * r;
  unsigned char buf[4096];
  for (size_t i = 0; ok && i < n;) {
    size_t m = n - i < sizeof buf / 4 ? n - i : sizeof buf / 4;
    for (size_t j = 0; j < m; j++) {
      uint32_t u;
      memcpy(&u, &data[i + j], 4);
      put_u32(buf + 4 * j, u);
    }
    ok = fwrite(buf, 4, m, f) == m;
    i += m;
  }
  if (fclose(f) != 0) ok = 0;
  if (!ok) {
    snprintf(why, why_len, "cannot write %s: %s", path, strerror(errno));
    remove(path);
    return -1;
  }
  return 0;
}
