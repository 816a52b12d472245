/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Template of the CPU kernels, included once per instruction set by
 * lib/cpu_kern_{generic,avx2,avx512}.c with
 *   KISA      0 generic, 1 AVX2+FMA+F16C, 2 AVX-512 (F, BW, VL, DQ)+FMA+F16C
 *   KNAME     the name of the exported cpu_kernels table
 *   KISA_NAME its isa string.
 * Everything else here is static, so each inclusion is self-contained.
 *
 * Layouts (floats, 64-byte aligned):
 *  - packed K^T of one key block: KB/NC panels of [head_dim][NC] (key j of
 *    the block, column c at (j / NC) * head_dim * NC + c * NC + j % NC);
 *  - packed V of one key block: Dp/NCV panels of [KB][NCV] (key j, column c
 *    at (c / NCV) * KB * NCV + j * NCV + c % NCV), columns past head_dim zero;
 *  - fused K^T (G > 1): as packed K^T with ng rows instead of head_dim.
 * Logits are in the log2 domain: Q is pre-multiplied by scale*log2(e) and
 * the softmax uses 2^x.
 */

#if KISA == 2
#  define VL 16
#  define NR 8
#  define NV 2
#  define NRV 4 /* P V: 4 rows x 64 columns (fewer broadcasts of P per FMA) */
#  define NVV 4
#elif KISA == 1
#  define VL 8
#  define NR 4
#  define NV 2
#elif defined(__GNUC__) && !defined(DA_CPU_SCALAR) /* DA_CPU_SCALAR: test the plain C path */
#  define VL 4
#  define NR 4
#  define NV 2
#else
#  define VL 1
#  define NR 4
#  define NV 4
#endif
#ifndef NRV
#  define NRV NR
#  define NVV NV
#endif
#define NC (NV * VL)    /* columns (keys) of a Q K^T micro tile */
#define NCV (NVV * VL)  /* columns (of V) of a P V micro tile */
/* keys per key block: 128 (measured against 64: the P V micro tiles' set-up
 * and the softmax's per-row work amortised over twice the keys) */
#define KB CPU_KB
#ifndef QB_MAX
#define QB_MAX 128   /* query rows per work item (divides hash_block when G > 1) */
#endif

#if defined(__GNUC__)
#  define UNROLL _Pragma("GCC unroll 16")
#else
#  define UNROLL
#endif

#if VL > 1
typedef float vf __attribute__((vector_size(VL * 4), may_alias));
typedef int32_t vi __attribute__((vector_size(VL * 4), may_alias));
#else
typedef float vf;
typedef int32_t vi;
#endif

static inline size_t round_up(size_t x, size_t m) { return (x + m - 1) / m * m; }

static inline vf vsplat(float x) {
#if KISA == 2
  return (vf)_mm512_set1_ps(x);
#elif KISA == 1
  return (vf)_mm256_set1_ps(x);
#else
  return (vf){0} + x; /* the compiler keeps the sum: -0.0 + x would differ for x = -0 */
#endif
}

static inline vf vfma(vf a, vf b, vf c) {
#if KISA == 2
  return (vf)_mm512_fmadd_ps((__m512)a, (__m512)b, (__m512)c);
#elif KISA == 1
  return (vf)_mm256_fmadd_ps((__m256)a, (__m256)b, (__m256)c);
#else
  return a * b + c;
#endif
}

/* unaligned load */
static inline vf vload(const float *p) {
  vf x;
  memcpy(&x, p, sizeof x);
  return x;
}

#if VL > 1
/* a > b ? a : b (so b when either is NaN), as vmaxps computes it */
static inline vf vmax(vf a, vf b) {
#if KISA == 2
  return (vf)_mm512_max_ps((__m512)a, (__m512)b);
#elif KISA == 1
  return (vf)_mm256_max_ps((__m256)a, (__m256)b);
#else
  vi m = a > b;
  return (vf)(((vi)a & m) | ((vi)b & ~m));
#endif
}
static inline float hmax(vf a) {
#if KISA == 2
  return _mm512_reduce_max_ps((__m512)a);
#elif KISA == 1
  __m128 m = _mm_max_ps(_mm256_castps256_ps128((__m256)a), _mm256_extractf128_ps((__m256)a, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_shuffle_ps(m, m, 1));
  return _mm_cvtss_f32(m);
#else
  float m = a[0];
  for (int i = 1; i < VL; i++) m = a[i] > m ? a[i] : m;
  return m;
#endif
}
static inline float hsum(vf a) {
#if KISA == 2
  return _mm512_reduce_add_ps((__m512)a);
#elif KISA == 1
  __m128 m = _mm_add_ps(_mm256_castps256_ps128((__m256)a), _mm256_extractf128_ps((__m256)a, 1));
  m = _mm_add_ps(m, _mm_movehl_ps(m, m));
  m = _mm_add_ss(m, _mm_shuffle_ps(m, m, 1));
  return _mm_cvtss_f32(m);
#else
  float s = 0.0f;
  for (int i = 0; i < VL; i++) s += a[i];
  return s;
#endif
}
static inline vi visnan(vf a) { return a != a; }
static inline int vany(vi m) {
#if KISA == 2
  return _mm512_test_epi32_mask((__m512i)m, (__m512i)m) != 0;
#elif KISA == 1
  return _mm256_movemask_ps((__m256)m) != 0;
#else
  for (int i = 0; i < VL; i++)
    if (m[i]) return 1;
  return 0;
#endif
}
/* 2^x for x <= 0 or NaN (a NaN stays NaN, so that a NaN logit makes its
 * row NaN; -inf gives 0). x = n + r, n an integer, r in [-0.5, 0.5]; 2^r by
 * a degree-5 polynomial fitted for the least maximum relative error on that
 * interval (< 1e-7, plus rounding: far inside every accuracy bound),
 * constant term exactly 1. AVX-512 scales by 2^n with vscalefps (x clamped
 * to -151, below which the result rounds to +0); the others build 2^n in
 * the exponent bits (x clamped to -127, whose n gives the biased exponent
 * 0: the bit pattern is then +0 and so is the product). The clamp keeps a
 * NaN: vmax(c, x) is x when x is NaN. */
static inline vf vpoly2(vf r) {
  vf p = vsplat(1.3264507262e-03f);
  p = vfma(p, r, vsplat(9.6714903692e-03f));
  p = vfma(p, r, vsplat(5.5507340863e-02f));
  p = vfma(p, r, vsplat(2.4022242477e-01f));
  p = vfma(p, r, vsplat(6.9314697764e-01f));
  return vfma(p, r, vsplat(1.0f));
}
static inline vf vexp2(vf x) {
#if KISA == 2
  __m512 xc = _mm512_max_ps(_mm512_set1_ps(-151.0f), (__m512)x);
  __m512 n = _mm512_roundscale_ps(xc, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  vf p = vpoly2((vf)_mm512_sub_ps(xc, n));
  return (vf)_mm512_scalef_ps((__m512)p, n);
#else
  x = vmax(vsplat(-127.0f), x);
  vf t = x + 12582912.0f; /* 1.5 * 2^23: round to nearest integer */
  vf n = t - 12582912.0f;
  vf p = vpoly2(x - n);
  vi e = ((vi)t - 0x4B400000 + 127) << 23;
  return p * (vf)e;
#endif
}
#else
static inline vf vmax(vf a, vf b) { return a > b ? a : b; }
static inline float hmax(vf a) { return a; }
static inline float hsum(vf a) { return a; }
static inline vi visnan(vf a) { return a != a; }
static inline int vany(vi m) { return m != 0; }
static inline vf vexp2(vf x) { return x < -126.0f ? 0.0f : exp2f(x); }
#endif

/* ---------------------------------------------------------------------- */
/* Element conversion, in bulk                                            */

static void cvt_in(const void *src, da_dtype t, size_t off, int n, float *restrict dst) {
  if (t == DA_F32) {
    memcpy(dst, (const float *)src + off, (size_t)n * sizeof(float));
    return;
  }
  const uint16_t *s = (const uint16_t *)src + off;
  int i = 0;
#if KISA == 2
  if (t == DA_F16) {
    for (; i + 16 <= n; i += 16)
      _mm512_storeu_ps(dst + i, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(s + i))));
  } else {
    for (; i + 16 <= n; i += 16)
      _mm512_storeu_ps(dst + i, _mm512_castsi512_ps(_mm512_slli_epi32(
                                    _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(s + i))), 16)));
  }
#elif KISA == 1
  if (t == DA_F16) {
    for (; i + 8 <= n; i += 8)
      _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(s + i))));
  } else {
    for (; i + 8 <= n; i += 8)
      _mm256_storeu_ps(dst + i, _mm256_castsi256_ps(_mm256_slli_epi32(
                                    _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(s + i))), 16)));
  }
#endif
  if (t == DA_F16)
    for (; i < n; i++) dst[i] = da_half_to_float(s[i]);
  else
    for (; i < n; i++) dst[i] = da_bf16_to_float(s[i]);
}

static void cvt_out(void *dst, da_dtype t, size_t off, int n, const float *restrict src) {
  if (t == DA_F32) {
    memcpy((float *)dst + off, src, (size_t)n * sizeof(float));
    return;
  }
  uint16_t *d = (uint16_t *)dst + off;
  int i = 0;
  if (t == DA_F16) {
    /* the hardware rounds to nearest even like da_float_to_half; NaNs take
     * the scalar path so that they come out as that function makes them */
#if KISA == 2
    for (; i + 16 <= n; i += 16) {
      __m512 x = _mm512_loadu_ps(src + i);
      if (_mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q)) break;
      _mm256_storeu_si256((__m256i *)(d + i),
                          _mm512_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    }
#elif KISA == 1
    for (; i + 8 <= n; i += 8) {
      __m256 x = _mm256_loadu_ps(src + i);
      if (_mm256_movemask_ps(_mm256_cmp_ps(x, x, _CMP_UNORD_Q))) break;
      _mm_storeu_si128((__m128i *)(d + i), _mm256_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT));
    }
#endif
    for (; i < n; i++) d[i] = da_float_to_half(src[i]);
  } else {
    for (; i < n; i++) d[i] = da_float_to_bf16(src[i]);
  }
}

/* ---------------------------------------------------------------------- */
/* Hashing and grouping (SPEC steps 2-6)                                  */

/* codes of the d columns of a tile held as f32 qt[rows][ldt] (ldt a
 * multiple of VL, columns past d zero). Each lane is one column: p_b is a
 * sequential FMA over r = 0..rows-1 from 0, exactly as lib/hash.c. */
static void hash_tile(const float *restrict qt, int ldt, int rows, int d, const float *R,
                      int bits, int hb, uint32_t *codes) {
  for (int c = 0; c < d; c++) codes[c] = 0;
#if KISA >= 1
  /* CH vectors of columns times BB bits per pass, the sums in registers:
   * every (bit, column) its own sequential FMA chain over the rows */
  enum { CH = 4, BB = KISA == 2 ? 4 : 2 };
  for (int c0 = 0; c0 < d; c0 += CH * VL) {
    int nv = (int)((round_up((size_t)(d - c0), VL)) / VL);
    if (nv > CH) nv = CH;
    vi cc[CH]; /* the codes of these columns, built bit by bit without branches */
    UNROLL for (int v = 0; v < CH; v++) cc[v] = (vi)vsplat(0.0f);
    for (int b0 = 0; b0 < bits; b0 += BB) {
      int nb = bits - b0 < BB ? bits - b0 : BB;
      const float *rb = R + (size_t)b0 * (size_t)hb;
      vf acc[BB][CH];
      UNROLL for (int b = 0; b < BB; b++) UNROLL for (int v = 0; v < CH; v++) acc[b][v] = vsplat(0.0f);
      if (nv == CH && nb == BB) {
        for (int r = 0; r < rows; r++) {
          const float *qr = qt + (size_t)r * ldt + c0;
          vf q[CH];
          UNROLL for (int v = 0; v < CH; v++) q[v] = *(const vf *)(qr + v * VL);
          UNROLL for (int b = 0; b < BB; b++) {
            vf x = vsplat(rb[(size_t)b * (size_t)hb + r]);
            UNROLL for (int v = 0; v < CH; v++) acc[b][v] = vfma(x, q[v], acc[b][v]);
          }
        }
      } else {
        for (int r = 0; r < rows; r++) {
          const float *qr = qt + (size_t)r * ldt + c0;
          for (int b = 0; b < nb; b++) {
            vf x = vsplat(rb[(size_t)b * (size_t)hb + r]);
            for (int v = 0; v < nv; v++) acc[b][v] = vfma(x, *(const vf *)(qr + v * VL), acc[b][v]);
          }
        }
      }
      for (int b = 0; b < nb; b++) {
        vi bit = (vi)vsplat(0.0f) + (int32_t)((uint32_t)1 << (b0 + b));
        for (int v = 0; v < nv; v++) cc[v] |= (acc[b][v] > vsplat(0.0f)) & bit;
      }
    }
    for (int v = 0; v < nv; v++)
      for (int l = 0; l < VL && c0 + v * VL + l < d; l++) codes[c0 + v * VL + l] = (uint32_t)cc[v][l];
  }
#else
  for (int b = 0; b < bits; b++) {
    const float *rb = R + (size_t)b * (size_t)hb;
    for (int c = 0; c < d; c++) {
      float acc = 0.0f;
      for (int r = 0; r < rows; r++) acc = fmaf(rb[r], qt[(size_t)r * ldt + c], acc);
      if (acc > 0.0f) codes[c] |= (uint32_t)1 << b;
    }
  }
#endif
}

/* The order of da_group_tile, (inverse_gray(code), c) ascending, by a
 * stable LSD radix sort of the keys (bits wide) in 8-bit digits, the
 * columns entering in c order; d <= 256. */
static void group_tile(const uint32_t *codes, int d, int bits, int *perm) {
  uint32_t k0[256], k1[256];
  int p0[256], p1[256];
  for (int c = 0; c < d; c++) {
    k0[c] = da_inverse_gray(codes[c]);
    p0[c] = c;
  }
  uint32_t *ks = k0, *kd = k1;
  int *ps = p0, *pd = p1;
  for (int sh = 0; sh < bits; sh += 8) {
    int cnt[256];
    memset(cnt, 0, sizeof cnt);
    for (int i = 0; i < d; i++) cnt[(ks[i] >> sh) & 255]++;
    for (int b = 0, sum = 0; b < 256; b++) {
      int t = cnt[b];
      cnt[b] = sum;
      sum += t;
    }
    for (int i = 0; i < d; i++) {
      int o = cnt[(ks[i] >> sh) & 255]++;
      kd[o] = ks[i];
      pd[o] = ps[i];
    }
    uint32_t *tk = ks;
    ks = kd;
    kd = tk;
    int *tp = ps;
    ps = pd;
    pd = tp;
  }
  memcpy(perm, ps, (size_t)d * sizeof *perm);
}

/* Per-sequence geometry (da_attn_ext): rows and element addresses. */
static inline int seq_lq(const cpu_attn_job *J, int b) { return J->lq ? J->lq[b] : J->p->d.seq_q; }
static inline int seq_lk(const cpu_attn_job *J, int b) { return J->lk ? J->lk[b] : J->p->d.seq_k; }
static inline size_t q_at(const cpu_attn_job *J, int b, int h, long i) {
  long r = (J->q0 ? J->q0[b] : 0) + i;
  return J->q_off + (size_t)(b * J->qst[0] + h * J->qst[1] + r * J->qst[2]);
}
static inline size_t o_at(const cpu_attn_job *J, int b, int h, long i) {
  long r = (J->q0 ? J->q0[b] : 0) + i;
  return J->o_off + (size_t)(b * J->ost[0] + h * J->ost[1] + r * J->ost[2]);
}
static inline size_t k_at(const cpu_attn_job *J, const long long *st, size_t off, int b, int h,
                          long j) {
  long r = (J->k0 ? J->k0[b] : 0) + j;
  return off + (size_t)(b * st[0] + h * st[1] + r * st[2]);
}

static void groups_item(void *arg, int tid, long item) {
  cpu_attn_job *J = arg;
  const da_plan *p = J->p;
  const da_attn_desc *d = &p->d;
  const int hd = d->head_dim, nt = p->n_tiles;
  long bh = item / nt;
  int tile = (int)(item % nt);
  int bi = (int)(bh / d->heads), hi = (int)(bh % d->heads);
  int r0 = tile * d->hash_block;
  int lq = seq_lq(J, bi);
  int rows = lq - r0 < d->hash_block ? lq - r0 : d->hash_block;
  int ldt = (int)round_up((size_t)hd, VL);
  float *qt = J->scratch[tid] + J->o_qt;
  int *perm = J->perm_all + (size_t)item * hd;
  if (rows <= 0) { /* a tile past this sequence's queries: never read */
    for (int c = 0; c < hd; c++) perm[c] = c;
    if (J->a_all)
      for (int c = 0; c < hd; c++) J->a_all[(size_t)item * hd + c] = 1.0f;
    return;
  }
  size_t base = q_at(J, bi, hi, r0);
  const size_t rs = (size_t)J->qst[2];
  for (int r = 0; r < rows; r++) {
    float *dst = qt + (size_t)r * ldt;
    cvt_in(J->q, d->dtype, base + (size_t)r * rs, hd, dst);
    for (int c = hd; c < ldt; c++) dst[c] = 0.0f;
  }
  uint32_t codes[256];
  hash_tile(qt, ldt, rows, hd, p->proj, d->hash_bits, d->hash_block, codes);
  group_tile(codes, hd, d->hash_bits, perm);
  if (!J->a_all) return;
  float *a = J->a_all + (size_t)item * hd;
  if (d->fusion != DA_FUSE_NORM) {
    for (int c = 0; c < hd; c++) a[c] = 1.0f;
    return;
  }
  /* a_c = sqrt(sum_r Q[r][c]^2), lanes across columns */
  for (int c0 = 0; c0 < ldt; c0 += VL) {
    vf s = vsplat(0.0f);
    for (int r = 0; r < rows; r++) {
      vf x = *(const vf *)(qt + (size_t)r * ldt + c0);
      s = vfma(x, x, s);
    }
    float sv[VL];
    memcpy(sv, &s, sizeof sv);
    for (int l = 0; l < VL && c0 + l < hd; l++) a[c0 + l] = sqrtf(sv[l]);
  }
  const int G = d->group_size;
  for (int g0 = 0; g0 < hd; g0 += G) {
    int g1 = g0 + G < hd ? g0 + G : hd;
    float s = 0.0f;
    for (int i = g0; i < g1; i++) s += a[perm[i]];
    if (!(s > 0.0f && s <= FLT_MAX)) /* 0, NaN or Inf: 1s (SPEC 1 step 6) */
      for (int i = g0; i < g1; i++) a[perm[i]] = 1.0f;
  }
}

/* ---------------------------------------------------------------------- */
/* The projection strategy (SPEC 1c)                                      */

/* The R-row K^T blocks of one key block: for each query head hh of kv head
 * kh, dst + hh*R*KB (panels of [R][NC]) = B_h^T K^T, from K^T kt (panels of
 * [head_dim][NC]); f32 sums over c = 0..head_dim-1 in order. */
static void proj_k(const cpu_attn_job *J, const float *restrict kt, int kh, float *restrict dst) {
  const int hd = J->d, R = J->R;
  for (int hh = 0; hh < J->hpk; hh++) {
    const int h = kh * J->hpk + hh;
    const float *Bm = J->pj + ((size_t)h * 2 + 1) * (size_t)hd * R;
    float *out = dst + (size_t)hh * R * KB;
    for (int pnl = 0; pnl < KB / NC; pnl++) {
      const float *src = kt + (size_t)pnl * hd * NC;
      float *o = out + (size_t)pnl * R * NC;
      int g = 0;
      for (; g + 4 <= R; g += 4) {
        vf acc[4][NV];
        UNROLL for (int u = 0; u < 4; u++) UNROLL for (int v = 0; v < NV; v++) acc[u][v] = vsplat(0.0f);
        for (int c = 0; c < hd; c++) {
          vf kv[NV];
          UNROLL for (int v = 0; v < NV; v++) kv[v] = *(const vf *)(src + (size_t)c * NC + v * VL);
          const float *b = Bm + (size_t)c * R + g;
          UNROLL for (int u = 0; u < 4; u++) {
            vf x = vsplat(b[u]);
            UNROLL for (int v = 0; v < NV; v++) acc[u][v] = vfma(kv[v], x, acc[u][v]);
          }
        }
        UNROLL for (int u = 0; u < 4; u++) UNROLL for (int v = 0; v < NV; v++)
          *(vf *)(o + (size_t)(g + u) * NC + v * VL) = acc[u][v];
      }
      for (; g < R; g++) {
        vf acc[NV];
        UNROLL for (int v = 0; v < NV; v++) acc[v] = vsplat(0.0f);
        for (int c = 0; c < hd; c++) {
          vf x = vsplat(Bm[(size_t)c * R + g]);
          UNROLL for (int v = 0; v < NV; v++)
            acc[v] = vfma(*(const vf *)(src + (size_t)c * NC + v * VL), x, acc[v]);
        }
        UNROLL for (int v = 0; v < NV; v++) *(vf *)(o + (size_t)g * NC + v * VL) = acc[v];
      }
    }
  }
}

/* Qf[nr][R] = qmul * Q A_h (rows up to nrp zero): Q converted row by row
 * into row, f32 sums over c = 0..head_dim-1 in order. */
static void build_q_proj(const cpu_attn_job *J, size_t base, int nr, int nrp, const float *A,
                         float *restrict qf, float *restrict row) {
  const da_attn_desc *d = &J->p->d;
  const int hd = J->d, R = J->R;
  const vf qm = vsplat(J->qmul);
  for (int r = 0; r < nr; r++) {
    cvt_in(J->q, d->dtype, base + (size_t)r * (size_t)J->qst[2], hd, row);
    float *dst = qf + (size_t)r * R;
    int g = 0;
    for (; g + VL <= R; g += VL) {
      vf acc = vsplat(0.0f);
      for (int c = 0; c < hd; c++) acc = vfma(vsplat(row[c]), vload(A + (size_t)c * R + g), acc);
      acc = acc * qm;
      memcpy(dst + g, &acc, sizeof acc);
    }
    for (; g < R; g++) {
      float acc = 0.0f;
      for (int c = 0; c < hd; c++) acc = fmaf(row[c], A[(size_t)c * R + g], acc);
      dst[g] = acc * J->qmul;
    }
  }
  for (int r = nr; r < nrp; r++) memset(qf + (size_t)r * R, 0, (size_t)R * sizeof(float));
}

/* ---------------------------------------------------------------------- */
/* Packing K and V once per call                                          */

static void pack_item(void *arg, int tid, long item) {
  cpu_attn_job *J = arg;
  const da_attn_desc *d = &J->p->d;
  const int hd = J->d, Dp = J->Dp;
  long pr = item / J->nkb;
  int kb = (int)(item % J->nkb);
  long pair = J->pair0 + pr;
  int bi = (int)(pair / d->kv_heads), kh = (int)(pair % d->kv_heads);
  int ks = kb * KB;
  int lk = seq_lk(J, bi);
  int kn = lk - ks < KB ? lk - ks : KB;
  if (kn <= 0) return; /* past this sequence's keys: never read */
  size_t kbase = k_at(J, J->kst, J->k_off, bi, kh, ks), vbase = k_at(J, J->vst, J->v_off, bi, kh, ks);
  const size_t krs = (size_t)J->kst[2], vrs = (size_t)J->vst[2];
  float *kt = J->kpack + ((size_t)pr * J->nkb + kb) * J->kblk;
  float *vp = J->vpack + ((size_t)pr * J->nkb + kb) * J->vblk;
  float *row = J->scratch[tid] + J->o_row;
  float *kdst = kt; /* the projection strategy: K^T in scratch, projected below */
  if (J->R) kt = J->scratch[tid] + J->o_kt;
  for (int j = 0; j < KB; j++) {
    float *pp = kt + (size_t)(j / NC) * hd * NC + (j % NC);
    if (j < kn) {
      cvt_in(J->k, d->dtype, kbase + (size_t)j * krs, hd, row);
      for (int c = 0; c < hd; c++) pp[(size_t)c * NC] = row[c];
    } else {
      for (int c = 0; c < hd; c++) pp[(size_t)c * NC] = 0.0f;
    }
  }
  if (J->R) proj_k(J, kt, kh, kdst);
  for (int j = 0; j < KB; j++) {
    if (j < kn) {
      cvt_in(J->v, d->dtype, vbase + (size_t)j * vrs, hd, row);
      for (int c = hd; c < Dp; c++) row[c] = 0.0f;
    } else {
      for (int c = 0; c < Dp; c++) row[c] = 0.0f;
    }
    for (int c0 = 0; c0 < Dp; c0 += NCV)
      memcpy(vp + (size_t)(c0 / NCV) * KB * NCV + (size_t)j * NCV, row + c0, NCV * sizeof(float));
  }
}

/* ---------------------------------------------------------------------- */
/* Micro kernels                                                          */

/* S[NR][ncols] = Q[NR][D] * KT (packed panels of [D][NC]), ncols a
 * multiple of NC; S rows aligned, stride lds; smax[r] the max of row r
 * (of all ncols columns: the softmax uses it where all are visible). */
static inline void qk_tile(const float *restrict Q, size_t ldq, const float *restrict KT, int D,
                           int ncols, float *restrict S, size_t lds, float *restrict smax) {
  vf mx[NR];
  UNROLL for (int r = 0; r < NR; r++) mx[r] = vsplat(-INFINITY);
  for (int j = 0; j < ncols; j += NC) {
    vf acc[NR][NV];
    const float *k = KT + (size_t)(j / NC) * (size_t)D * NC;
    { /* c = 0: a product (an FMA onto +0 but for the sign of a zero) */
      vf kv[NV];
      UNROLL for (int v = 0; v < NV; v++) kv[v] = *(const vf *)(k + v * VL);
      UNROLL for (int r = 0; r < NR; r++) {
        vf x = vsplat(Q[(size_t)r * ldq]);
        UNROLL for (int v = 0; v < NV; v++) acc[r][v] = kv[v] * x;
      }
      k += NC;
    }
    for (int c = 1; c < D; c++, k += NC) {
      vf kv[NV];
      UNROLL for (int v = 0; v < NV; v++) kv[v] = *(const vf *)(k + v * VL);
      UNROLL for (int r = 0; r < NR; r++) {
        vf x = vsplat(Q[(size_t)r * ldq + c]);
        UNROLL for (int v = 0; v < NV; v++) acc[r][v] = vfma(kv[v], x, acc[r][v]);
      }
    }
    UNROLL for (int r = 0; r < NR; r++) UNROLL for (int v = 0; v < NV; v++) {
      *(vf *)(S + (size_t)r * lds + j + v * VL) = acc[r][v];
      mx[r] = vmax(mx[r], acc[r][v]);
    }
  }
  UNROLL for (int r = 0; r < NR; r++) smax[r] = hmax(mx[r]);
}

/* acc[NRV][NCV] += P[NRV][0..kn-1] * V (one packed panel of [KB][NCV]):
 * the block is summed from zero first, then added. */
static inline void pv_tile(const float *restrict P, size_t ldp, const float *restrict V, int kn,
                           float *restrict acc, size_t ldacc) {
  vf a[NRV][NVV];
  UNROLL for (int r = 0; r < NRV; r++) UNROLL for (int v = 0; v < NVV; v++) a[r][v] = vsplat(0.0f);
  const float *vv = V;
  for (int j = 0; j < kn; j++, vv += NCV) {
    vf x[NVV];
    UNROLL for (int v = 0; v < NVV; v++) x[v] = *(const vf *)(vv + v * VL);
    UNROLL for (int r = 0; r < NRV; r++) {
      vf pr = vsplat(P[(size_t)r * ldp + j]);
      UNROLL for (int v = 0; v < NVV; v++) a[r][v] = vfma(x[v], pr, a[r][v]);
    }
  }
  UNROLL for (int r = 0; r < NRV; r++) UNROLL for (int v = 0; v < NVV; v++)
    *(vf *)(acc + (size_t)r * ldacc + v * VL) += a[r][v];
}

/* Fused K^T for G > 1: KF[g][j] = sum_{c in group g} a_c KT[c][j] over the
 * w (a multiple of NC) keys of a packed block; the sums in registers. */
static void fuse_k(const float *restrict kt, int hd, int ng, int G, const int *perm,
                   const float *a, int w, float *restrict kf) {
  for (int pnl = 0; pnl < w / NC; pnl++) {
    const float *src = kt + (size_t)pnl * hd * NC;
    float *dst = kf + (size_t)pnl * ng * NC;
    for (int g = 0; g < ng; g++) {
      int c0 = g * G, c1 = c0 + G < hd ? c0 + G : hd;
      vf x[NV];
      vf w0 = vsplat(a[perm[c0]]);
      const float *s0 = src + (size_t)perm[c0] * NC;
      UNROLL for (int v = 0; v < NV; v++) x[v] = *(const vf *)(s0 + v * VL) * w0;
      for (int c = c0 + 1; c < c1; c++) {
        vf wc = vsplat(a[perm[c]]);
        const float *sc = src + (size_t)perm[c] * NC;
        UNROLL for (int v = 0; v < NV; v++) x[v] = vfma(*(const vf *)(sc + v * VL), wc, x[v]);
      }
      UNROLL for (int v = 0; v < NV; v++) *(vf *)(dst + (size_t)g * NC + v * VL) = x[v];
    }
  }
}

/* acc[nrp][Dp] += P[nrp][0..kn-1] * V (packed panels of [KB][NCV]); panel
 * by panel, so that one panel of V stays in L1 for all the rows. pf (or
 * NULL): pfn bytes to fetch into the cache meanwhile, spread over the
 * tiles (prefetches, unlike loads, never hold the FMAs up). */
static void pv_block(const float *restrict P, size_t ldp, const float *restrict V, int kn,
                     float *restrict acc, int nrp, int Dp, const char *pf, size_t pfn) {
  size_t tiles = (size_t)(Dp / NCV) * (size_t)((nrp + NRV - 1) / NRV);
  size_t per = pf ? (pfn / 64 + tiles - 1) / tiles * 64 : 0, at = 0;
  for (int c0 = 0; c0 < Dp; c0 += NCV) {
    const float *vpn = V + (size_t)(c0 / NCV) * KB * NCV;
    for (int r = 0; r < nrp; r += NRV) {
#if defined(__GNUC__)
      for (size_t e = at + per < pfn ? at + per : pfn; at < e; at += 64)
        __builtin_prefetch(pf + at, 0, 3);
#endif
      pv_tile(P + (size_t)r * ldp, ldp, vpn, kn, acc + (size_t)r * Dp + c0, (size_t)Dp);
    }
  }
}

/* ---------------------------------------------------------------------- */
/* Attention                                                              */

/* Qf[nr][D] (rows up to nrp zero), scaled by qmul, fused for G > 1. */
static void build_q(const cpu_attn_job *J, size_t base, int nr, int nrp, const int *perm,
                    const float *a, float *restrict qf, float *restrict row) {
  const da_attn_desc *d = &J->p->d;
  const int hd = J->d, D = J->D, G = J->G;
  if (G == 1) {
    for (int r = 0; r < nr; r++) {
      float *dst = qf + (size_t)r * D;
      cvt_in(J->q, d->dtype, base + (size_t)r * (size_t)J->qst[2], hd, dst);
      for (int c = 0; c < hd; c++) dst[c] *= J->qmul;
    }
  } else {
    float inv[256];
    for (int g = 0; g < D; g++) {
      int c0 = g * G, c1 = c0 + G < hd ? c0 + G : hd;
      float s = 0.0f;
      for (int c = c0; c < c1; c++) s += a[perm[c]];
      inv[g] = J->qmul / s;
    }
    for (int r = 0; r < nr; r++) {
      cvt_in(J->q, d->dtype, base + (size_t)r * (size_t)J->qst[2], hd, row);
      float *dst = qf + (size_t)r * D;
      for (int g = 0; g < D; g++) {
        int c0 = g * G, c1 = c0 + G < hd ? c0 + G : hd;
        float s = 0.0f;
        for (int c = c0; c < c1; c++) s += row[perm[c]];
        dst[g] = s * inv[g];
      }
    }
  }
  for (int r = nr; r < nrp; r++) memset(qf + (size_t)r * D, 0, (size_t)D * sizeof(float));
}

/* The offset of a row's exponentials: its running max, or 0 while that is
 * -inf (every logit so far -inf: every P 0, where -inf - -inf would be
 * NaN). */
static inline float sm_mu(float m) { return m == -INFINITY ? 0.0f : m; }

/* A row's accumulator ar[0..Dp-1] times a, the factor of the online
 * softmax; nothing where a is 1 (the row's max did not move). A macro: as
 * an inline function GCC 12 lays softmax_block's row loop out otherwise,
 * and the NaNs of a row with a +Inf and a NaN logit then meet in another
 * order (another NaN sign in O); expanded in place the code is the same. */
#define SM_RESCALE(ar, Dp, a)                                              \
  do {                                                                     \
    if ((a) != 1.0f) {                                                     \
      vf av_ = vsplat(a);                                                  \
      float *ar_ = (ar);                                                   \
      for (int c_ = 0; c_ < (Dp); c_ += VL) *(vf *)(ar_ + c_) *= av_;      \
    }                                                                      \
  } while (0)

/* Softmax of one row of logits s[0..w-1] (log2 domain; w a multiple of
 * VL) whose first lim entries are visible, against the running max *m and
 * the running sum *lv (a vector of partial sums, reduced once at the end):
 * s becomes P; returns the factor for the previous accumulator. A NaN
 * logit, or a +Inf one (Inf - Inf), makes *nan 1: the row is NaN, as the
 * reference. */
static inline float softmax_row(float *restrict s, int lim, int w, float *m, vf *lv, float *l) {
  for (int j = lim; j < w; j++) s[j] = -INFINITY;
  vf mx = vsplat(-INFINITY);
  vi nan = visnan(vsplat(0.0f));
  for (int j = 0; j < w; j += VL) {
    vf x = *(const vf *)(s + j);
    mx = vmax(mx, x);
    nan |= visnan(x);
  }
  float mnew = hmax(mx);
  if (*m > mnew) mnew = *m;
  float alpha = *m == -INFINITY ? 0.0f : *m == mnew ? 1.0f : exp2f(*m - mnew);
  vf mv = vsplat(sm_mu(mnew));
  vf sum = *lv * vsplat(alpha);
  for (int j = 0; j < w; j += VL) {
    vf e = vexp2(*(const vf *)(s + j) - mv);
    *(vf *)(s + j) = e;
    sum += e;
  }
  *lv = sum;
  if (vany(nan) || mnew == INFINITY) *l = NAN;
  *m = mnew;
  return alpha;
}

/* The keys of [ks, ks+kn) visible to query row i are ks + [first, lim):
 * visible() gives lim, vfirst() first (0 without a left window). The
 * diagonal of row i is key i + off; causal is a right window of 0. */
static inline int visible(const cpu_attn_job *J, long i, int ks, int kn) {
  if (J->wr < 0) return kn;
  long lim = i + J->off + J->wr - ks + 1;
  return lim < 0 ? 0 : lim > kn ? kn : (int)lim;
}
static inline int vfirst(const cpu_attn_job *J, long i, int ks, int kn) {
  if (J->wl < 0) return 0;
  long f = i + J->off - J->wl - ks;
  return f < 0 ? 0 : f > kn ? kn : (int)f;
}

#if VL > 1
static inline vf vsel(vi m, vf a, vf b) { return (vf)(((vi)a & m) | ((vi)b & ~m)); }
#else
static inline vf vsel(vi m, vf a, vf b) { return m ? a : b; }
#endif

#define SMC 16 /* rows per softmax chunk (a multiple of VL and of NR) */

/* The online softmax of one key block (FUSED): logits S[r][0..w-1] (log2
 * domain, row stride KB) of the rows 0..nr-1, against the running max m[r]
 * and the running sums lv[r]; S becomes P and acc is rescaled. In chunks
 * of SMC rows and three passes, so that the rows' dependency chains
 * (max, its horizontal reduction, the exponentials) overlap and the only
 * branch taken per row is the rare rescale: the block max of each row;
 * the new max and the factor of the old sums, SMC rows in vectors; the
 * exponentials and sums. A NaN logit, or a +Inf one (Inf - Inf), gives a
 * NaN P: the row's sum and output are NaN, as the reference's. smax: the
 * rows' max from qk_tile, used where a row sees all w columns; mb and al
 * are scratch of SMC-rounded rows; m must be -inf past nr. */
static void softmax_block(const cpu_attn_job *J, float *restrict S, const float *smax, int nr,
                          long i0, int ks,
                          int kn, int w, float *restrict m, vf *restrict lv, float *restrict mb,
                          float *restrict al, float *restrict acc, int Dp) {
  for (int c0 = 0; c0 < nr; c0 += SMC) {
    int c1 = c0 + SMC < nr ? c0 + SMC : nr;
    for (int r = c0; r < c0 + SMC; r++) {
      float bm = -INFINITY;
      int lim = r < c1 ? visible(J, i0 + r, ks, kn) : 0;
      int first = r < c1 ? vfirst(J, i0 + r, ks, kn) : 0;
      if (lim == w && first == 0) {
        bm = smax[r];
      } else if (lim > first) {
        float *s = S + (size_t)r * KB;
        for (int j = 0; j < first; j++) s[j] = -INFINITY;
        for (int j = lim; j < w; j++) s[j] = -INFINITY;
        vf mx = *(const vf *)s;
        for (int j = VL; j < w; j += VL) mx = vmax(mx, *(const vf *)(s + j));
        bm = hmax(mx);
      }
      mb[r] = bm;
    }
    for (int r = c0; r < c0 + SMC; r += VL) {
      vf mo = *(const vf *)(m + r);
      vf mn = vmax(mo, *(const vf *)(mb + r));
      /* equal maxima (-inf or +inf included): 1; from -inf: 0 */
      *(vf *)(al + r) = vsel(mo == mn, vsplat(1.0f), vexp2(mo - mn));
      *(vf *)(m + r) = mn;
    }
    for (int r = c0; r < c1; r++) {
      float *s = S + (size_t)r * KB;
      if (mb[r] == -INFINITY && visible(J, i0 + r, ks, kn) <= vfirst(J, i0 + r, ks, kn)) {
        memset(s, 0, (size_t)w * sizeof(float));
        continue;
      }
      vf mv = vsplat(sm_mu(m[r]));
      vf s0 = vsplat(0.0f), s1 = vsplat(0.0f);
      int j = 0;
      for (; j + 2 * VL <= w; j += 2 * VL) {
        vf e0 = vexp2(*(const vf *)(s + j) - mv);
        vf e1 = vexp2(*(const vf *)(s + j + VL) - mv);
        *(vf *)(s + j) = e0;
        *(vf *)(s + j + VL) = e1;
        s0 += e0;
        s1 += e1;
      }
      for (; j < w; j += VL) {
        vf e0 = vexp2(*(const vf *)(s + j) - mv);
        *(vf *)(s + j) = e0;
        s0 += e0;
      }
      float a = al[r];
      lv[r] = vfma(lv[r], vsplat(a), s0 + s1);
      SM_RESCALE(acc + (size_t)r * Dp, Dp, a);
    }
  }
}

/* l[r] = the row's sum (kept NaN where a NaN was met). */
static void finish_l(int nr, const vf *lv, float *l) {
  for (int r = 0; r < nr; r++)
    if (l[r] == l[r]) l[r] = hsum(lv[r]);
}

/* Rows 0..nr-1 of the block at query i0. A sum of 0 means every P was 0:
 * a row that sees no key (zeros, SPEC 1), or one whose visible logits are
 * all -inf (an infinite Q or K element): NaN, as the reference's
 * softmax(-inf, ..., -inf) and the other backends give. */
static void write_out(const cpu_attn_job *J, int bi, int hi, long i0, int nr, const float *acc,
                      const float *m, const float *l, float *row) {
  const int hd = J->d, lk = seq_lk(J, bi);
  const size_t base = o_at(J, bi, hi, i0), rs = (size_t)J->ost[2];
  float *lse = NULL;
  if (J->lse)
    lse = J->lse + (J->lse_packed
                        ? (size_t)hi * J->lse_rows + (size_t)(J->q0 ? J->q0[bi] : 0) + (size_t)i0
                        : ((size_t)bi * J->p->d.heads + (size_t)hi) * (size_t)J->p->d.seq_q +
                              (size_t)i0);
  for (int r = 0; r < nr; r++) {
    const float *a = acc + (size_t)r * J->Dp;
    float e = -INFINITY; /* ln of the row's softmax sum: -inf where it sees no key */
    if (l[r] > 0.0f || l[r] != l[r]) {
      float inv = 1.0f / l[r];
      for (int c = 0; c < hd; c++) row[c] = a[c] * inv;
      e = l[r] != l[r] ? NAN : (float)(((double)m[r] + log2((double)l[r])) * 0.69314718055994531);
    } else if (visible(J, i0 + r, 0, lk) > vfirst(J, i0 + r, 0, lk)) {
      for (int c = 0; c < hd; c++) row[c] = NAN;
      e = NAN;
    } else {
      memset(row, 0, (size_t)hd * sizeof(float));
    }
    cvt_out(J->o, J->p->d.dtype, base + (size_t)r * rs, hd, row);
    if (lse) lse[r] = e;
  }
}

static void attn_item(void *arg, int tid, long item) {
  const cpu_attn_job *Jg = arg;
  const da_attn_desc *d = &Jg->p->d;
  /* this sequence's diagonal offset, in a per-thread copy of the job: not
   * on the stack, where the AVX-512 copies of a large struct are 64-byte
   * aligned moves and ASan's fake stack (detect_stack_use_after_return)
   * does not keep that alignment */
  static _Thread_local cpu_attn_job Jl;
  Jl = *Jg;
  const cpu_attn_job *J = &Jl;
  /* head by head, so that the threads share one head's packed K and V in
   * the cache; within a head the heaviest (causal) query block first */
  int qb = J->nqb - 1 - (int)(item % J->nqb);
  long rest = item / J->nqb;
  long pr = rest / J->hpk;
  long pair = J->pair0 + pr;
  int bi = (int)(pair / d->kv_heads), kh = (int)(pair % d->kv_heads);
  int hi = kh * J->hpk + (int)(rest % J->hpk);
  int i0 = qb * J->QB;
  const int lq = seq_lq(J, bi), lk = seq_lk(J, bi);
  int nr = lq - i0 < J->QB ? lq - i0 : J->QB;
  if (nr <= 0) return; /* past this sequence's queries */
  Jl.off = (long)lk - (long)lq;
  int nrp = (int)round_up((size_t)nr, NR);
  int nrs = (int)round_up((size_t)nr, SMC); /* >= nrp */
  float *sb = J->scratch[tid];
  float *qf = sb + J->o_qf, *kf = sb + J->o_kf, *row = sb + J->o_row;
  float *S = sb + J->o_s, *acc = sb + J->o_acc, *m = sb + J->o_m, *l = sb + J->o_l;
  vf *lv = (vf *)(sb + J->o_lv);
  const size_t QBs = round_up(round_up((size_t)J->QB, NR), SMC);
  float *mb = (float *)(lv + QBs), *al = mb + QBs, *qmx = al + QBs;
  const int Dp = J->Dp, hd = J->d, D = J->D;
  const float *kp = J->kpack + (size_t)pr * J->nkb * J->kblk;
  if (J->R) kp += (size_t)(hi - kh * J->hpk) * J->R * KB; /* this head's K B_h blocks */
  const float *vp = J->vpack + (size_t)pr * J->nkb * J->vblk;
  size_t qbase = q_at(J, bi, hi, i0);

  long kend_l = lk; /* keys visible to some row of the block: [kbeg, kend) */
  if (J->wr >= 0) {
    long last = (long)i0 + nr - 1 + J->off + J->wr + 1;
    if (last < kend_l) kend_l = last;
  }
  long kbeg_l = 0;
  if (J->wl >= 0) {
    kbeg_l = (long)i0 + J->off - J->wl;
    if (kbeg_l < 0) kbeg_l = 0;
    kbeg_l = kbeg_l / KB * KB; /* whole key blocks */
  }
  for (int r = 0; r < nrs; r++) {
    m[r] = -INFINITY;
    l[r] = 0.0f;
    lv[r] = vsplat(0.0f);
  }
  memset(acc, 0, (size_t)nrp * Dp * sizeof(float));
  if (kend_l <= kbeg_l) {
    write_out(J, bi, hi, i0, nr, acc, m, l, row);
    return;
  }
  int kend = (int)kend_l, kbeg = (int)kbeg_l;
  const int *perm = NULL;
  const float *a = NULL;
  if (J->G > 1) {
#if defined(__GNUC__)
    /* the first key block's K, for its fused K^T, fetched meanwhile */
    for (size_t at = 0; at < J->kblk * sizeof(float); at += 64)
      __builtin_prefetch((const char *)kp + at, 0, 2);
#endif
    size_t t = ((size_t)bi * (size_t)d->heads + (size_t)hi) * (size_t)J->p->n_tiles +
               (size_t)(i0 / d->hash_block);
    /* a hash tile that is one work item is grouped here (Q read once for
     * both, no pass of its own: lib/cpu_backend.c skips it then) */
    if (d->hash_block == J->QB) groups_item((void *)J, tid, (long)t);
    perm = J->perm_all + t * (size_t)hd;
    a = J->a_all + t * (size_t)hd;
  }
  if (J->R)
    build_q_proj(J, qbase, nr, nrp, J->pj + (size_t)hi * 2 * hd * J->R, qf, row);
  else
    build_q(J, qbase, nr, nrp, perm, a, qf, row);

  if (d->algo == DA_ALGO_GEMM) {
    const size_t lds = J->lds;
    int wall = (int)round_up((size_t)kend, NC);
    for (int ks = kbeg, kb = kbeg / KB; ks < kend; ks += KB, kb++) {
      int kn = kend - ks < KB ? kend - ks : KB;
      int w = (int)round_up((size_t)kn, NC);
      const float *kt = kp + (size_t)kb * J->kblk;
      if (J->G > 1) {
        fuse_k(kt, hd, D, J->G, perm, a, w, kf);
        kt = kf;
      }
      for (int r = 0; r < nrp; r += NR)
        qk_tile(qf + (size_t)r * D, (size_t)D, kt, D, w, S + (size_t)r * lds + ks, lds, qmx + r);
    }
    for (int r = 0; r < nrp; r++) {
      float *s = S + (size_t)r * lds;
      int lim = r < nr ? visible(J, (long)i0 + r, 0, kend) : 0;
      int first = r < nr ? vfirst(J, (long)i0 + r, 0, kend) : 0;
      if (first < kbeg) first = kbeg; /* nothing before kbeg was computed */
      if (lim <= first) {
        memset(s, 0, (size_t)wall * sizeof(float));
        continue;
      }
      for (int j = 0; j < first; j++) s[j] = -INFINITY;
      softmax_row(s, lim, wall, &m[r], &lv[r], &l[r]);
    }
    for (int ks = kbeg, kb = kbeg / KB; ks < kend; ks += KB, kb++) {
      int kn = kend - ks < KB ? kend - ks : KB;
      pv_block(S + ks, lds, vp + (size_t)kb * J->vblk, kn, acc, nrp, Dp, NULL, 0);
    }
  } else {
    for (int ks = kbeg, kb = kbeg / KB; ks < kend; ks += KB, kb++) {
      int kn = kend - ks < KB ? kend - ks : KB;
      int w = (int)round_up((size_t)kn, NC);
      const float *kt = kp + (size_t)kb * J->kblk;
      if (J->G > 1) {
        fuse_k(kt, hd, D, J->G, perm, a, w, kf);
        kt = kf;
      }
      for (int r = 0; r < nrp; r += NR)
        qk_tile(qf + (size_t)r * D, (size_t)D, kt, D, w, S + (size_t)r * KB, KB, qmx + r);
      softmax_block(J, S, qmx, nr, (long)i0, ks, kn, w, m, lv, mb, al, acc, Dp);
      /* G > 1: the next key block's K is fetched into the cache meanwhile,
       * so that its fused K^T (much data, little arithmetic) does not wait
       * for memory */
      int more = J->G > 1 && ks + KB < kend;
      pv_block(S, KB, vp + (size_t)kb * J->vblk, kn, acc, nrp, Dp,
               more ? (const char *)(kp + (size_t)(kb + 1) * J->kblk) : NULL,
               more ? J->kblk * sizeof(float) : 0);
    }
  }
  finish_l(nr, lv, l);
  write_out(J, bi, hi, i0, nr, acc, m, l, row);
}

/* ---------------------------------------------------------------------- */
/* Split-KV decode (few query rows per kv head)                           */

/* Work item (batch b, kv head kh, chunk of dec_C keys): the R = hpk * lq
 * query rows that read kv head kh (row r = head kh*hpk + r / lq, query
 * r % lq), K and V read straight from the caller's layout DKB keys at a
 * time (converted to f32 in L1 where needed), logits by dot products, an
 * online softmax per row, P V; the chunk's partial (max, sum, acc) per row
 * goes to J->part. dec_combine merges a (batch, head)'s chunks by their
 * maxima (the log-sum-exp rule of SPEC 1) and writes O and LSE. */
#define DKB 32 /* keys per sub-block: K and V of 32 keys of head_dim 128 stay in L1 */

/* S[0..w-1] = q . K[j] (q: Dq floats, K rows of Dq at stride ldk, w a
 * multiple of VL), VL keys at a time: one accumulator vector per key, then
 * their VL horizontal sums at once by a transposing tree of adds. */
static inline void dec_dots(const float *restrict q, int Dq, const float *restrict K, size_t ldk,
                            int w, float *restrict S) {
  for (int j0 = 0; j0 < w; j0 += VL) {
    const float *kr = K + (size_t)j0 * ldk;
    vf a[VL];
    UNROLL for (int j = 0; j < VL; j++) a[j] = vsplat(0.0f);
    for (int c = 0; c < Dq; c += VL) {
      vf qv = *(const vf *)(q + c);
      UNROLL for (int j = 0; j < VL; j++) a[j] = vfma(qv, vload(kr + (size_t)j * ldk + c), a[j]);
    }
#if KISA == 2
    __m512 u[4];
    UNROLL for (int g = 0; g < 4; g++) {
      __m512 a0 = (__m512)a[4 * g], a1 = (__m512)a[4 * g + 1], a2 = (__m512)a[4 * g + 2],
             a3 = (__m512)a[4 * g + 3];
      __m512 t01 = _mm512_add_ps(_mm512_unpacklo_ps(a0, a1), _mm512_unpackhi_ps(a0, a1));
      __m512 t23 = _mm512_add_ps(_mm512_unpacklo_ps(a2, a3), _mm512_unpackhi_ps(a2, a3));
      u[g] = _mm512_add_ps(
          _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t01), _mm512_castps_pd(t23))),
          _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t01), _mm512_castps_pd(t23))));
    }
    /* u[g], 128-bit block k: keys 4g..4g+3 summed over block k's lanes */
    __m512 v01 = _mm512_add_ps(_mm512_shuffle_f32x4(u[0], u[1], 0x88), _mm512_shuffle_f32x4(u[0], u[1], 0xDD));
    __m512 v23 = _mm512_add_ps(_mm512_shuffle_f32x4(u[2], u[3], 0x88), _mm512_shuffle_f32x4(u[2], u[3], 0xDD));
    _mm512_storeu_ps(S + j0, _mm512_add_ps(_mm512_shuffle_f32x4(v01, v23, 0x88),
                                           _mm512_shuffle_f32x4(v01, v23, 0xDD)));
#elif KISA == 1
    __m256 u[2];
    UNROLL for (int g = 0; g < 2; g++) {
      __m256 a0 = (__m256)a[4 * g], a1 = (__m256)a[4 * g + 1], a2 = (__m256)a[4 * g + 2],
             a3 = (__m256)a[4 * g + 3];
      __m256 t01 = _mm256_add_ps(_mm256_unpacklo_ps(a0, a1), _mm256_unpackhi_ps(a0, a1));
      __m256 t23 = _mm256_add_ps(_mm256_unpacklo_ps(a2, a3), _mm256_unpackhi_ps(a2, a3));
      u[g] = _mm256_add_ps(
          _mm256_castpd_ps(_mm256_unpacklo_pd(_mm256_castps_pd(t01), _mm256_castps_pd(t23))),
          _mm256_castpd_ps(_mm256_unpackhi_pd(_mm256_castps_pd(t01), _mm256_castps_pd(t23))));
    }
    _mm256_storeu_ps(S + j0, _mm256_add_ps(_mm256_permute2f128_ps(u[0], u[1], 0x20),
                                           _mm256_permute2f128_ps(u[0], u[1], 0x31)));
#else
    UNROLL for (int j = 0; j < VL; j++) S[j0 + j] = hsum(a[j]);
#endif
  }
}

#if defined(__GNUC__)
#  define DEC_INLINE __attribute__((always_inline)) inline
#else
#  define DEC_INLINE inline
#endif

/* VL elements of type t at element i of b, as f32 (the ISA's conversion). */
static DEC_INLINE vf vld_t(const void *b, size_t i, da_dtype t) {
  if (t == DA_F32) return vload((const float *)b + i);
  const uint16_t *s = (const uint16_t *)b + i;
#if KISA == 2
  const __m256i h = _mm256_loadu_si256((const __m256i *)s);
  if (t == DA_F16) return (vf)_mm512_cvtph_ps(h);
  return (vf)_mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
#elif KISA == 1
  const __m128i h = _mm_loadu_si128((const __m128i *)s);
  if (t == DA_F16) return (vf)_mm256_cvtph_ps(h);
  return (vf)_mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
#else
  float x[VL];
  for (int l = 0; l < VL; l++) x[l] = t == DA_F16 ? da_half_to_float(s[l]) : da_bf16_to_float(s[l]);
  vf r;
  memcpy(&r, x, sizeof r);
  return r;
#endif
}

/* n rows of hd elements (row stride rs from element base) as f32 rows of
 * ld floats, zero past hd up to ld. */
static DEC_INLINE void dec_rows_t(const void *src, size_t base, size_t rs, int n, int hd, int ld,
                                  float *restrict dst, da_dtype t) {
  if (hd % VL == 0) {
    for (int j = 0; j < n; j++) {
      float *dr = dst + (size_t)j * ld;
      for (int c = 0; c < hd; c += VL) *(vf *)(dr + c) = vld_t(src, base + (size_t)j * rs + c, t);
      for (int c = hd; c < ld; c++) dr[c] = 0.0f;
    }
    return;
  }
  for (int j = 0; j < n; j++) {
    float *dr = dst + (size_t)j * ld;
    cvt_in(src, t, base + (size_t)j * rs, hd, dr);
    for (int c = hd; c < ld; c++) dr[c] = 0.0f;
  }
}
static void dec_rows(const void *src, size_t base, size_t rs, int n, int hd, int ld,
                     float *restrict dst, da_dtype t) {
  if (t == DA_F16) dec_rows_t(src, base, rs, n, hd, ld, dst, DA_F16);
  else if (t == DA_BF16) dec_rows_t(src, base, rs, n, hd, ld, dst, DA_BF16);
  else dec_rows_t(src, base, rs, n, hd, ld, dst, DA_F32);
}

/* dec_dots for two rows at once (S0 and S1): each K vector loaded once for
 * both. AVX-512: 8 keys per pass (16 accumulators), their sums by the tree
 * above cut to 8 lanes. */
static inline void dec_dots2(const float *restrict q0, const float *restrict q1, int Dq,
                             const float *restrict K, size_t ldk, int w, float *restrict S0,
                             float *restrict S1) {
#if KISA == 2
  for (int j0 = 0; j0 < w; j0 += 8) {
    const float *kr = K + (size_t)j0 * ldk;
    __m512 a[2][8];
    UNROLL for (int j = 0; j < 8; j++) a[0][j] = a[1][j] = _mm512_setzero_ps();
    for (int c = 0; c < Dq; c += VL) {
      __m512 x0 = _mm512_loadu_ps(q0 + c), x1 = _mm512_loadu_ps(q1 + c);
      UNROLL for (int j = 0; j < 8; j++) {
        __m512 k = _mm512_loadu_ps(kr + (size_t)j * ldk + c);
        a[0][j] = _mm512_fmadd_ps(x0, k, a[0][j]);
        a[1][j] = _mm512_fmadd_ps(x1, k, a[1][j]);
      }
    }
    UNROLL for (int r = 0; r < 2; r++) {
      __m512 u[2];
      UNROLL for (int g = 0; g < 2; g++) {
        __m512 b0 = a[r][4 * g], b1 = a[r][4 * g + 1], b2 = a[r][4 * g + 2], b3 = a[r][4 * g + 3];
        __m512 t01 = _mm512_add_ps(_mm512_unpacklo_ps(b0, b1), _mm512_unpackhi_ps(b0, b1));
        __m512 t23 = _mm512_add_ps(_mm512_unpacklo_ps(b2, b3), _mm512_unpackhi_ps(b2, b3));
        u[g] = _mm512_add_ps(
            _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t01), _mm512_castps_pd(t23))),
            _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t01), _mm512_castps_pd(t23))));
      }
      __m512 v = _mm512_add_ps(_mm512_shuffle_f32x4(u[0], u[1], 0x88),
                               _mm512_shuffle_f32x4(u[0], u[1], 0xDD));
      v = _mm512_add_ps(v, _mm512_shuffle_f32x4(v, v, 0xB1)); /* blocks 0 and 2: the sums */
      _mm256_storeu_ps((r ? S1 : S0) + j0,
                       _mm512_castps512_ps256(_mm512_shuffle_f32x4(v, v, 0x08)));
    }
  }
#else
  dec_dots(q0, Dq, K, ldk, w, S0);
  dec_dots(q1, Dq, K, ldk, w, S1);
#endif
}

/* acc[Rp][Dp] += P[Rp][0..kn-1] (row stride ldp) * V[kn][Dp] (elements of
 * type t from vbase, row stride ldv: converted as they are loaded), in
 * tiles of NRV rows x NCV columns; Rp a multiple of NRV, Dp of NCV. */
static DEC_INLINE void dec_pv_t(const float *restrict P, size_t ldp, const void *V, size_t vbase,
                                size_t ldv, int kn, float *restrict acc, int Rp, int Dp,
                                da_dtype t) {
  for (int c0 = 0; c0 < Dp; c0 += NCV)
    for (int r0 = 0; r0 < Rp; r0 += NRV) {
      vf a[NRV][NVV];
      UNROLL for (int r = 0; r < NRV; r++) UNROLL for (int v = 0; v < NVV; v++) a[r][v] = vsplat(0.0f);
      size_t vv = vbase + (size_t)c0;
      const float *pr = P + (size_t)r0 * ldp;
      for (int j = 0; j < kn; j++, vv += ldv) {
        vf x[NVV];
        UNROLL for (int v = 0; v < NVV; v++) x[v] = vld_t(V, vv + v * VL, t);
        UNROLL for (int r = 0; r < NRV; r++) {
          vf p = vsplat(pr[(size_t)r * ldp + j]);
          UNROLL for (int v = 0; v < NVV; v++) a[r][v] = vfma(x[v], p, a[r][v]);
        }
      }
      UNROLL for (int r = 0; r < NRV; r++) UNROLL for (int v = 0; v < NVV; v++)
        *(vf *)(acc + (size_t)(r0 + r) * Dp + c0 + v * VL) += a[r][v];
    }
}
static void dec_pv(const float *restrict P, size_t ldp, const void *V, size_t vbase, size_t ldv,
                   int kn, float *restrict acc, int Rp, int Dp, da_dtype t) {
  if (t == DA_F16) dec_pv_t(P, ldp, V, vbase, ldv, kn, acc, Rp, Dp, DA_F16);
  else if (t == DA_BF16) dec_pv_t(P, ldp, V, vbase, ldv, kn, acc, Rp, Dp, DA_BF16);
  else dec_pv_t(P, ldp, V, vbase, ldv, kn, acc, Rp, Dp, DA_F32);
}

static inline int dec_rows_padded(int R) { return (int)round_up((size_t)(R > 0 ? R : 1), NRV); }

static void dec_item(void *arg, int tid, long item) {
  const cpu_attn_job *Jg = arg;
  const da_attn_desc *d = &Jg->p->d;
  /* this sequence's diagonal offset, in a per-thread copy of the job: not
   * on the stack, where the AVX-512 copies of a large struct are 64-byte
   * aligned moves and ASan's fake stack (detect_stack_use_after_return)
   * does not keep that alignment */
  static _Thread_local cpu_attn_job Jl;
  Jl = *Jg;
  const cpu_attn_job *J = &Jl;
  const int ch = (int)(item % J->dec_nch);
  const long pair = item / J->dec_nch;
  const int bi = (int)(pair / d->kv_heads), kh = (int)(pair % d->kv_heads);
  const int Rp = J->dec_Rp, Dp = J->Dp, Dq = J->dec_Dq, hd = J->d, hpk = J->hpk;
  float *pm = J->part + (size_t)item * J->dec_part, *pl = pm + Rp, *pacc = pl + Rp;
  const int lq = seq_lq(J, bi), lk = seq_lk(J, bi), R = hpk * lq;
  Jl.off = (long)lk - (long)lq;
  long ks0 = (long)ch * J->dec_C, ke0 = ks0 + J->dec_C < lk ? ks0 + J->dec_C : lk;
  if (J->wl >= 0 && ks0 < Jl.off - J->wl) ks0 = Jl.off - J->wl; /* before every row's window */
  if (R == 0 || ke0 <= ks0) { /* no key of this chunk is seen: the combine skips it */
    for (int r = 0; r < Rp; r++) pm[r] = -INFINITY, pl[r] = -1.0f;
    return;
  }
  float *sb = J->scratch[tid];
  float *qf = sb + J->o_qf, *kb = sb + J->o_kf, *vb = sb + J->o_qt, *S = sb + J->o_s;
  float *acc = sb + J->o_acc, *m = sb + J->o_m, *l = sb + J->o_l;
  vf *lv = (vf *)(sb + J->o_lv);
  for (int r = 0; r < R; r++) {
    float *dst = qf + (size_t)r * Dq;
    cvt_in(J->q, d->dtype, q_at(J, bi, kh * hpk + r / lq, r % lq), hd, dst);
    for (int c = 0; c < hd; c++) dst[c] *= J->qmul;
    for (int c = hd; c < Dq; c++) dst[c] = 0.0f;
  }
  for (int r = 0; r < Rp; r++) {
    m[r] = -INFINITY;
    l[r] = 0.0f;
    lv[r] = vsplat(0.0f);
  }
  memset(acc, 0, (size_t)Rp * Dp * sizeof(float));
  memset(S + (size_t)R * DKB, 0, (size_t)(Rp - R) * DKB * sizeof(float)); /* padding rows: P 0 */
  const size_t krs = (size_t)J->kst[2], vrs = (size_t)J->vst[2];
  /* f32 K with whole vectors is read in place; V whose rows are whole
   * P V tiles is converted as the tiles load it */
  const int kdirect = d->dtype == DA_F32 && hd == Dq, vdirect = hd == Dp;
  for (long ks = ks0; ks < ke0; ks += DKB) {
    const int kn = ke0 - ks < DKB ? (int)(ke0 - ks) : DKB, w = (int)round_up((size_t)kn, VL);
    const size_t kbase = k_at(J, J->kst, J->k_off, bi, kh, ks);
    const size_t vbase = k_at(J, J->vst, J->v_off, bi, kh, ks);
    const float *kp = kb;
    const void *vp = vb;
    size_t ldk = (size_t)Dq, ldv = (size_t)Dp, vb0 = 0;
    da_dtype vt = DA_F32;
    if (kdirect && kn == DKB) {
      kp = (const float *)J->k + kbase, ldk = krs;
    } else {
      dec_rows(J->k, kbase, krs, kn, hd, Dq, kb, d->dtype);
      if (w > kn) memset(kb + (size_t)kn * Dq, 0, (size_t)(w - kn) * Dq * sizeof(float));
    }
    if (vdirect)
      vp = J->v, vb0 = vbase, ldv = vrs, vt = d->dtype;
    else
      dec_rows(J->v, vbase, vrs, kn, hd, Dp, vb, d->dtype);
    int r2 = 0;
    for (; r2 + 2 <= R; r2 += 2)
      dec_dots2(qf + (size_t)r2 * Dq, qf + (size_t)(r2 + 1) * Dq, Dq, kp, ldk, w,
                S + (size_t)r2 * DKB, S + (size_t)(r2 + 1) * DKB);
    if (r2 < R) dec_dots(qf + (size_t)r2 * Dq, Dq, kp, ldk, w, S + (size_t)r2 * DKB);
    for (int r = 0; r < R; r++) {
      float *s = S + (size_t)r * DKB;
      const long i = r % lq;
      const int lim = visible(J, i, (int)ks, kn), first = vfirst(J, i, (int)ks, kn);
      if (lim <= first) { /* this row sees none of these keys */
        memset(s, 0, (size_t)w * sizeof(float));
        continue;
      }
      for (int j = 0; j < first; j++) s[j] = -INFINITY;
      float alpha = softmax_row(s, lim, w, &m[r], &lv[r], &l[r]);
      SM_RESCALE(acc + (size_t)r * Dp, Dp, alpha);
    }
    dec_pv(S, DKB, vp, vb0, ldv, kn, acc, Rp, Dp, vt);
  }
  finish_l(R, lv, l);
  memcpy(pm, m, (size_t)R * sizeof(float));
  memcpy(pl, l, (size_t)R * sizeof(float));
  memcpy(pacc, acc, (size_t)R * Dp * sizeof(float));
}

/* Item (batch b, head h): its lq rows merged over the chunks. A chunk's
 * weight is 2^(m_c - M), M the largest m of the chunks that have a
 * positive sum; one whose sum is 0 (it saw only -inf logits) adds 0 x its
 * acc, so that a NaN there stays, as in one pass; a NaN sum makes the row
 * NaN. */
static void dec_combine(void *arg, int tid, long item) {
  const cpu_attn_job *Jg = arg;
  const da_attn_desc *d = &Jg->p->d;
  /* this sequence's diagonal offset, in a per-thread copy of the job: not
   * on the stack, where the AVX-512 copies of a large struct are 64-byte
   * aligned moves and ASan's fake stack (detect_stack_use_after_return)
   * does not keep that alignment */
  static _Thread_local cpu_attn_job Jl;
  Jl = *Jg;
  const cpu_attn_job *J = &Jl;
  const int bi = (int)(item / d->heads), hi = (int)(item % d->heads);
  const int kh = hi / J->hpk, hh = hi % J->hpk;
  const int lq = seq_lq(J, bi), lk = seq_lk(J, bi);
  if (lq <= 0) return;
  Jl.off = (long)lk - (long)lq;
  const int Rp = J->dec_Rp, Dp = J->Dp, nch = J->dec_nch;
  float *sb = J->scratch[tid];
  float *acc = sb + J->o_acc, *m = sb + J->o_m, *l = sb + J->o_l, *row = sb + J->o_row;
  const float *part0 = J->part + ((size_t)bi * d->kv_heads + kh) * nch * J->dec_part;
  for (int i = 0; i < lq; i++) {
    const int r = hh * lq + i;
    float M = -INFINITY;
    int nan = 0;
    for (int c = 0; c < nch; c++) {
      const float *pt = part0 + (size_t)c * J->dec_part;
      float lc = pt[Rp + r], mc = pt[r];
      if (lc != lc) nan = 1;
      else if (lc > 0.0f && mc > M) M = mc;
    }
    float *a = acc + (size_t)i * Dp;
    memset(a, 0, (size_t)Dp * sizeof(float));
    float L = 0.0f;
    for (int c = 0; c < nch && !nan && M != -INFINITY; c++) {
      const float *pt = part0 + (size_t)c * J->dec_part;
      float lc = pt[Rp + r];
      if (lc < 0.0f) continue; /* saw no key */
      float wc = lc > 0.0f ? exp2f(pt[r] - M) : 0.0f;
      L += lc * wc;
      const float *pa = pt + 2 * (size_t)Rp + (size_t)r * Dp;
      vf wv = vsplat(wc);
      for (int cc = 0; cc < Dp; cc += VL) *(vf *)(a + cc) = vfma(vload(pa + cc), wv, *(vf *)(a + cc));
    }
    m[i] = M;
    l[i] = nan ? NAN : L;
  }
  write_out(J, bi, hi, 0, lq, acc, m, l, row);
}

static void dec_setup(cpu_attn_job *J) {
  const da_attn_desc *d = &J->p->d;
  J->Dp = (int)round_up((size_t)J->d, NCV > NC ? NCV : NC);
  J->dec_Dq = (int)round_up((size_t)J->d, VL);
  J->dec_rows = J->hpk * d->seq_q;
  J->dec_Rp = dec_rows_padded(J->dec_rows);
  const size_t Rp = (size_t)J->dec_Rp, Dp = (size_t)J->Dp;
  J->dec_part = round_up(Rp * (2 + Dp), 16);
  size_t off = 0;
#define PART(field, n) do { J->field = off; off += round_up((size_t)(n), 16); } while (0)
  PART(o_qf, Rp * (size_t)J->dec_Dq);
  PART(o_kf, (size_t)DKB * (size_t)J->dec_Dq);
  PART(o_qt, (size_t)DKB * Dp); /* V of a sub-block */
  PART(o_row, Dp + NC);
  PART(o_s, Rp * DKB);
  PART(o_acc, Rp * Dp);
  PART(o_m, Rp);
  PART(o_l, Rp);
  PART(o_lv, Rp * VL);
#undef PART
  J->scratch_floats = off;
}
#undef DKB
#undef DEC_INLINE

/* ---------------------------------------------------------------------- */
/* Layout                                                                 */

static void setup(cpu_attn_job *J) {
  const da_attn_desc *d = &J->p->d;
  J->Dp = (int)round_up((size_t)J->d, NCV > NC ? NCV : NC);
  J->QB = QB_MAX;
  if (J->G > 1 && d->hash_block < J->QB) J->QB = d->hash_block;
  /* fewer rows than a block: one block of just those (rounded to the
   * softmax's chunk), so scratch, above all GEMM's QB x seq_k logits,
   * follows seq_q instead of QB_MAX */
  if (d->seq_q < J->QB) J->QB = (int)round_up((size_t)d->seq_q, SMC);
  J->nqb = (d->seq_q + J->QB - 1) / J->QB;
  J->nkb = (d->seq_k + KB - 1) / KB;
  J->kblk = J->R ? (size_t)J->hpk * J->R * KB : (size_t)J->d * KB;
  J->vblk = (size_t)KB * (size_t)J->Dp;
  J->lds = d->algo == DA_ALGO_GEMM ? round_up(d->seq_k > 0 ? (size_t)d->seq_k : 1, KB) : KB;
  size_t QBp = round_up((size_t)J->QB, NR);
  size_t QBs = round_up(QBp, SMC);
  size_t ng = (size_t)(J->d + (J->G > 1 ? J->G : 1) - 1) / (size_t)(J->G > 1 ? J->G : 1);
  size_t off = 0;
#define PART(field, n) do { J->field = off; off += round_up((size_t)(n), 16); } while (0)
  PART(o_qf, QBp * (size_t)J->D);
  PART(o_kf, J->G > 1 ? ng * KB : 0);
  PART(o_row, (size_t)J->Dp + NC);
  PART(o_s, QBp * J->lds);
  PART(o_acc, QBp * (size_t)J->Dp);
  PART(o_m, QBs);
  PART(o_l, QBs);
  PART(o_lv, QBs * VL + 3 * QBs); /* then the softmax's mb, al and the logits' row max */
  PART(o_qt, J->d <= 256 ? (size_t)d->hash_block * round_up((size_t)J->d, VL) : 0);
  PART(o_kt, J->R ? (size_t)J->d * KB : 0);
#undef PART
  J->scratch_floats = off;
}

const cpu_kernels KNAME = {
    .isa = KISA_NAME,
    .setup = setup,
    .groups_item = groups_item,
    .pack_item = pack_item,
    .attn_item = attn_item,
    .dec_setup = dec_setup,
    .dec_item = dec_item,
    .dec_combine = dec_combine,
};

#undef VL
#undef NR
#undef NV
#undef NC
#undef NRV
#undef NVV
#undef NCV
#undef KB
#undef QB_MAX
#undef SMC
#undef UNROLL
