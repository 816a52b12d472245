/* SPDX-License-Identifier: Apache-2.0 */
/* float64 references (tests only). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ref.h"

static double *to_double(const void *x, da_dtype t, size_t n) {
  double *y = malloc((n ? n : 1) * sizeof *y);
  if (!y) abort();
  for (size_t i = 0; i < n; i++) y[i] = (double)da_load_elem(x, t, i);
  return y;
}

/* Last visible key of query row i (-1: none). */
static int last_key(int causal, int i, int seq_q, int seq_k) {
  if (!causal) return seq_k - 1;
  long lim = (long)i + (long)seq_k - (long)seq_q;
  if (lim > seq_k - 1) lim = seq_k - 1;
  return lim < 0 ? -1 : (int)lim;
}

/* o = softmax(s[0..n)) V[0..n) ; s is overwritten. */
static void softmax_pv(double *s, int n, const double *v, int hd, double *o) {
  for (int c = 0; c < hd; c++) o[c] = 0.0;
  if (n <= 0) return;
  double m = s[0];
  for (int j = 1; j < n; j++)
    if (s[j] > m) m = s[j];
  double sum = 0.0;
  for (int j = 0; j < n; j++) {
    s[j] = exp(s[j] - m);
    sum += s[j];
  }
  for (int j = 0; j < n; j++) {
    const double *vj = v + (size_t)j * (size_t)hd;
    double w = s[j] / sum;
    for (int c = 0; c < hd; c++) o[c] += w * vj[c];
  }
}

void ref_attention(const da_attn_desc *d, const void *q, const void *k, const void *v, double *o) {
  int kvh = d->kv_heads ? d->kv_heads : d->heads;
  int hd = d->head_dim, sq = d->seq_q, sk = d->seq_k;
  double scale = d->scale > 0.0f ? (double)d->scale : 1.0 / sqrt((double)hd);
  size_t nq = (size_t)d->batch * (size_t)d->heads * (size_t)sq * (size_t)hd;
  size_t nk = (size_t)d->batch * (size_t)kvh * (size_t)sk * (size_t)hd;
  double *Q = to_double(q, d->dtype, nq), *K = to_double(k, d->dtype, nk),
         *V = to_double(v, d->dtype, nk);
  double *s = malloc((size_t)sk * sizeof *s);
  if (!s) abort();
  for (int b = 0; b < d->batch; b++)
    for (int h = 0; h < d->heads; h++) {
      int g = h / (d->heads / kvh);
      const double *Qh = Q + ((size_t)b * d->heads + h) * (size_t)sq * hd;
      const double *Kh = K + ((size_t)b * kvh + g) * (size_t)sk * hd;
      const double *Vh = V + ((size_t)b * kvh + g) * (size_t)sk * hd;
      double *Oh = o + ((size_t)b * d->heads + h) * (size_t)sq * hd;
      for (int i = 0; i < sq; i++) {
        int n = last_key(d->causal, i, sq, sk) + 1;
        const double *qi = Qh + (size_t)i * hd;
        for (int j = 0; j < n; j++) {
          const double *kj = Kh + (size_t)j * hd;
          double acc = 0.0;
          for (int c = 0; c < hd; c++) acc += qi[c] * kj[c];
          s[j] = scale * acc;
        }
        softmax_pv(s, n, Vh, hd, Oh + (size_t)i * hd);
      }
    }
  free(s);
  free(Q);
  free(K);
  free(V);
}

void ref_groups(const da_plan *p, const void *q, int *perm) {
  const da_attn_desc *d = &p->d;
  for (int b = 0; b < d->batch; b++)
    for (int h = 0; h < d->heads; h++)
      for (int t = 0; t < p->n_tiles; t++)
        da_plan_tile_groups(p, q, b, h, t,
                            perm + (((size_t)b * d->heads + h) * p->n_tiles + t) * d->head_dim,
                            NULL);
}

void ref_distr_attention(const da_plan *p, const void *q, const void *k, const void *v,
                         double *o) {
  const da_attn_desc *d = &p->d;
  int kvh = d->kv_heads ? d->kv_heads : d->heads;
  int hd = d->head_dim, sq = d->seq_q, sk = d->seq_k, G = d->group_size;
  int ng = (hd + G - 1) / G, hb = d->hash_block;
  double scale = (double)d->scale;
  size_t nq = (size_t)d->batch * (size_t)d->heads * (size_t)sq * (size_t)hd;
  size_t nk = (size_t)d->batch * (size_t)kvh * (size_t)sk * (size_t)hd;
  double *Q = to_double(q, d->dtype, nq), *K = to_double(k, d->dtype, nk),
         *V = to_double(v, d->dtype, nk);
  double *s = malloc((size_t)sk * sizeof *s);
  double *Qs = malloc((size_t)hb * (size_t)ng * sizeof *Qs);
  double *Kf = malloc((size_t)sk * (size_t)ng * sizeof *Kf);
  int *perm = malloc((size_t)hd * sizeof *perm);
  float *a = malloc((size_t)hd * sizeof *a);
  if (!s || !Qs || !Kf || !perm || !a) abort();
  for (int b = 0; b < d->batch; b++)
    for (int h = 0; h < d->heads; h++) {
      int g = h / (d->heads / kvh);
      const double *Qh = Q + ((size_t)b * d->heads + h) * (size_t)sq * hd;
      const double *Kh = K + ((size_t)b * kvh + g) * (size_t)sk * hd;
      const double *Vh = V + ((size_t)b * kvh + g) * (size_t)sk * hd;
      double *Oh = o + ((size_t)b * d->heads + h) * (size_t)sq * hd;
      for (int t = 0; t * hb < sq; t++) {
        int r0 = t * hb, rows = sq - r0 < hb ? sq - r0 : hb;
        da_plan_tile_groups(p, q, b, h, t, perm, a);
        for (int gi = 0; gi < ng; gi++) {
          int c0 = gi * G, c1 = c0 + G < hd ? c0 + G : hd;
          double asum = 0.0;
          for (int x = c0; x < c1; x++) asum += (double)a[perm[x]];
          for (int r = 0; r < rows; r++) {
            double acc = 0.0;
            for (int x = c0; x < c1; x++) acc += Qh[(size_t)(r0 + r) * hd + perm[x]];
            Qs[(size_t)r * ng + gi] = acc / asum;
          }
          for (int j = 0; j < sk; j++) {
            double acc = 0.0;
            for (int x = c0; x < c1; x++) acc += (double)a[perm[x]] * Kh[(size_t)j * hd + perm[x]];
            Kf[(size_t)j * ng + gi] = acc;
          }
        }
        for (int r = 0; r < rows; r++) {
          int i = r0 + r;
          int n = last_key(d->causal, i, sq, sk) + 1;
          const double *qi = Qs + (size_t)r * ng;
          for (int j = 0; j < n; j++) {
            const double *kj = Kf + (size_t)j * ng;
            double acc = 0.0;
            for (int x = 0; x < ng; x++) acc += qi[x] * kj[x];
            s[j] = scale * acc;
          }
          softmax_pv(s, n, Vh, hd, Oh + (size_t)i * hd);
        }
      }
    }
  free(s);
  free(Qs);
  free(Kf);
  free(perm);
  free(a);
  free(Q);
  free(K);
  free(V);
}
