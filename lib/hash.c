/* SPDX-License-Identifier: Apache-2.0 */
/* SPEC section 1, steps 1-6: the reference projections, hashing, ordering,
 * grouping and fusion weights every backend must reproduce. */
#include <math.h>
#include <stdlib.h>

#include "da_internal.h"

uint64_t da_splitmix64(uint64_t seed, uint64_t n) {
  uint64_t z = seed + (n + 1) * UINT64_C(0x9E3779B97F4A7C15);
  z = (z ^ (z >> 30)) * UINT64_C(0xBF58476D1CE4E5B9);
  z = (z ^ (z >> 27)) * UINT64_C(0x94D049BB133111EB);
  return z ^ (z >> 31);
}

void da_make_projections(uint64_t seed, int hash_bits, int hash_block, float *R) {
  const double two_pi = 6.283185307179586476925286766559;
  size_t n = (size_t)hash_bits * (size_t)hash_block;
  for (size_t i = 0; i < n; i++) {
    double u1 = (double)((da_splitmix64(seed, 2 * (uint64_t)i) >> 11) + 1) * 0x1.0p-53;
    double u2 = (double)(da_splitmix64(seed, 2 * (uint64_t)i + 1) >> 11) * 0x1.0p-53;
    R[i] = (float)(sqrt(-2.0 * log(u1)) * cos(two_pi * u2));
  }
}

uint32_t da_inverse_gray(uint32_t code) {
  code ^= code >> 1;
  code ^= code >> 2;
  code ^= code >> 4;
  code ^= code >> 8;
  code ^= code >> 16;
  return code;
}

void da_hash_tile(const void *q, da_dtype t, size_t ld, int rows, int d, const float *R,
                  int hash_bits, int hash_block, uint32_t *codes) {
  for (int c = 0; c < d; c++) {
    uint32_t code = 0;
    for (int b = 0; b < hash_bits; b++) {
      const float *rb = R + (size_t)b * (size_t)hash_block;
      float acc = 0.0f;
      for (int r = 0; r < rows; r++)
        acc = fmaf(rb[r], da_load_elem(q, t, (size_t)r * ld + (size_t)c), acc);
      if (acc > 0.0f) code |= (uint32_t)1 << b;
    }
    codes[c] = code;
  }
}

typedef struct { uint32_t key; int c; } keyed_col;

static int keyed_cmp(const void *a, const void *b) {
  const keyed_col *x = a, *y = b;
  if (x->key != y->key) return x->key < y->key ? -1 : 1;
  return (x->c > y->c) - (x->c < y->c);
}

void da_group_tile(const uint32_t *codes, int d, int *perm) {
  keyed_col buf[256];
  keyed_col *k = d <= 256 ? buf : malloc((size_t)d * sizeof *k);
  if (!k) { /* cannot happen for head_dim <= 256; keep identity as a defined result */
    for (int c = 0; c < d; c++) perm[c] = c;
    return;
  }
  for (int c = 0; c < d; c++) {
    k[c].key = da_inverse_gray(codes[c]);
    k[c].c = c;
  }
  qsort(k, (size_t)d, sizeof *k, keyed_cmp);
  for (int c = 0; c < d; c++) perm[c] = k[c].c;
  if (k != buf) free(k);
}

void da_fusion_weights(const void *q, da_dtype t, size_t ld, int rows, int d, const int *perm,
                       int G, da_fusion f, float *a) {
  for (int c = 0; c < d; c++) {
    if (f == DA_FUSE_NORM) {
      float s = 0.0f;
      for (int r = 0; r < rows; r++) {
        float x = da_load_elem(q, t, (size_t)r * ld + (size_t)c);
        s = fmaf(x, x, s);
      }
      a[c] = sqrtf(s);
    } else {
      a[c] = 1.0f;
    }
  }
  if (f != DA_FUSE_NORM) return;
  for (int g0 = 0; g0 < d; g0 += G) {
    int g1 = g0 + G < d ? g0 + G : d;
    float s = 0.0f;
    for (int i = g0; i < g1; i++) s += a[perm[i]];
    /* a sum that is not a positive finite number (a column holding Inf or
     * NaN, or all zero) gives the group 1s: SPEC 1 step 6 */
    if (!(s > 0.0f && s <= FLT_MAX))
      for (int i = g0; i < g1; i++) a[perm[i]] = 1.0f;
  }
}

size_t da_dtype_size(da_dtype t) {
  switch (t) {
  case DA_F32: return 4;
  case DA_F16: case DA_BF16: return 2;
  default: return 0;
  }
}

void da_plan_tile_groups(const da_plan *p, const void *q, int bi, int hi, int tile, int *perm,
                         float *a) {
  const da_attn_desc *d = &p->d;
  int r0 = tile * d->hash_block;
  int rows = d->seq_q - r0 < d->hash_block ? d->seq_q - r0 : d->hash_block;
  size_t off = (((size_t)bi * (size_t)d->heads + (size_t)hi) * (size_t)d->seq_q + (size_t)r0) *
               (size_t)d->head_dim;
  const char *qt = (const char *)q + off * p->elem_size;
  uint32_t codes[256];
  da_hash_tile(qt, d->dtype, (size_t)d->head_dim, rows, d->head_dim, p->proj, d->hash_bits,
               d->hash_block, codes);
  da_group_tile(codes, d->head_dim, perm);
  if (a)
    da_fusion_weights(qt, d->dtype, (size_t)d->head_dim, rows, d->head_dim, perm,
                      d->group_size, d->fusion, a);
}
