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
static inline vf vmax(vf a, vf b) {
  vi m = a > b;
  return (vf)(((vi)a & m) | ((vi)b & ~m));
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
/* 2^x for x <= 0 (below -126.5, -inf and NaN included: 0). Degree-7
 * Taylor polynomial of 2^r on r in [-0.5, 0.5]: relative error < 1e-8 plus
 * rounding. x is clamped to -127, whose power n = -127 has the biased
 * exponent 0: the bit pattern below is then +0 and so is the product. */
static inline vf vexp2(vf x) {
  x = vmax(x, vsplat(-127.0f));
  vf t = x + 12582912.0f; /* 1.5 * 2^23: round to nearest integer */
  vf n = t - 12582912.0f;
  vf r = x - n;
  vf p = vsplat(0.0000152527338040f);
  p = vfma(p, r, vsplat(0.0001540353039338f));
  p = vfma(p, r, vsplat(0.0013333558146428f));
  p = vfma(p, r, vsplat(0.0096181291076285f));
  p = vfma(p, r, vsplat(0.0555041086648216f));
  p = vfma(p, r, vsplat(0.2402265069591007f));
  p = vfma(p, r, vsplat(0.6931471805599453f));
  p = vfma(p, r, vsplat(1.0f));
  vi e = ((vi)t - 0x4B400000 + 127) << 23;
  return p * (vf)e;
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
  enum { CH = 4 }; /* vectors of columns per pass, kept in registers */
  for (int c0 = 0; c0 < d; c0 += CH * VL) {
    int nv = (int)((round_up((size_t)(d - c0), VL)) / VL);
    if (nv > CH) nv = CH;
    for (int b = 0; b < bits; b++) {
      const float *rb = R + (size_t)b * (size_t)hb;
      vf acc[CH];
      UNROLL for (int v = 0; v < CH; v++) acc[v] = vsplat(0.0f);
      if (nv == CH) {
        for (int r = 0; r < rows; r++) {
          vf x = vsplat(rb[r]);
          const float *qr = qt + (size_t)r * ldt + c0;
          UNROLL for (int v = 0; v < CH; v++) acc[v] = vfma(x, *(const vf *)(qr + v * VL), acc[v]);
        }
      } else {
        for (int r = 0; r < rows; r++) {
          vf x = vsplat(rb[r]);
          const float *qr = qt + (size_t)r * ldt + c0;
          for (int v = 0; v < nv; v++) acc[v] = vfma(x, *(const vf *)(qr + v * VL), acc[v]);
        }
      }
      for (int v = 0; v < nv; v++)
        for (int l = 0; l < VL; l++) {
          int c = c0 + v * VL + l;
          if (c < d && acc[v][l] > 0.0f) codes[c] |= (uint32_t)1 << b;
        }
    }
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

static void groups_item(void *arg, int tid, long item) {
  cpu_attn_job *J = arg;
  const da_plan *p = J->p;
  const da_attn_desc *d = &p->d;
  const int hd = d->head_dim, nt = p->n_tiles;
  long bh = item / nt;
  int tile = (int)(item % nt);
  int r0 = tile * d->hash_block;
  int rows = d->seq_q - r0 < d->hash_block ? d->seq_q - r0 : d->hash_block;
  int ldt = (int)round_up((size_t)hd, VL);
  float *qt = J->scratch[tid] + J->o_qt;
  size_t base = ((size_t)bh * (size_t)d->seq_q + (size_t)r0) * (size_t)hd;
  for (int r = 0; r < rows; r++) {
    float *dst = qt + (size_t)r * ldt;
    cvt_in(J->q, d->dtype, base + (size_t)r * hd, hd, dst);
    for (int c = hd; c < ldt; c++) dst[c] = 0.0f;
  }
  uint32_t codes[256];
  int *perm = J->perm_all + (size_t)item * hd;
  hash_tile(qt, ldt, rows, hd, p->proj, d->hash_bits, d->hash_block, codes);
  da_group_tile(codes, hd, perm);
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
    if (!(s > 0.0f))
      for (int i = g0; i < g1; i++) a[perm[i]] = 1.0f;
  }
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
  int ks = kb * KB;
  int kn = d->seq_k - ks < KB ? d->seq_k - ks : KB;
  size_t base = ((size_t)pair * (size_t)d->seq_k + (size_t)ks) * (size_t)hd;
  float *kt = J->kpack + ((size_t)pr * J->nkb + kb) * J->kblk;
  float *vp = J->vpack + ((size_t)pr * J->nkb + kb) * J->vblk;
  float *row = J->scratch[tid] + J->o_row;
  for (int j = 0; j < KB; j++) {
    float *pp = kt + (size_t)(j / NC) * hd * NC + (j % NC);
    if (j < kn) {
      cvt_in(J->k, d->dtype, base + (size_t)j * hd, hd, row);
      for (int c = 0; c < hd; c++) pp[(size_t)c * NC] = row[c];
    } else {
      for (int c = 0; c < hd; c++) pp[(size_t)c * NC] = 0.0f;
    }
  }
  for (int j = 0; j < KB; j++) {
    if (j < kn) {
      cvt_in(J->v, d->dtype, base + (size_t)j * hd, hd, row);
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
 * multiple of NC; S rows aligned, stride lds. */
static inline void qk_tile(const float *restrict Q, size_t ldq, const float *restrict KT, int D,
                           int ncols, float *restrict S, size_t lds) {
  for (int j = 0; j < ncols; j += NC) {
    vf acc[NR][NV];
    UNROLL for (int r = 0; r < NR; r++) UNROLL for (int v = 0; v < NV; v++) acc[r][v] = vsplat(0.0f);
    const float *k = KT + (size_t)(j / NC) * (size_t)D * NC;
    for (int c = 0; c < D; c++, k += NC) {
      vf kv[NV];
      UNROLL for (int v = 0; v < NV; v++) kv[v] = *(const vf *)(k + v * VL);
      UNROLL for (int r = 0; r < NR; r++) {
        vf x = vsplat(Q[(size_t)r * ldq + c]);
        UNROLL for (int v = 0; v < NV; v++) acc[r][v] = vfma(kv[v], x, acc[r][v]);
      }
    }
    UNROLL for (int r = 0; r < NR; r++) UNROLL for (int v = 0; v < NV; v++)
      *(vf *)(S + (size_t)r * lds + j + v * VL) = acc[r][v];
  }
}

/* acc[NRV][Dp] += P[NRV][0..kn-1] * V (packed panels of [KB][NCV]); each
 * panel's block is summed from zero first, then added. */
static inline void pv_tile(const float *restrict P, size_t ldp, const float *restrict V, int kn,
                           float *restrict acc, size_t ldacc, int Dp) {
  for (int c0 = 0; c0 < Dp; c0 += NCV) {
    vf a[NRV][NVV];
    UNROLL for (int r = 0; r < NRV; r++) UNROLL for (int v = 0; v < NVV; v++) a[r][v] = vsplat(0.0f);
    const float *vv = V + (size_t)(c0 / NCV) * KB * NCV;
    for (int j = 0; j < kn; j++, vv += NCV) {
      vf x[NVV];
      UNROLL for (int v = 0; v < NVV; v++) x[v] = *(const vf *)(vv + v * VL);
      UNROLL for (int r = 0; r < NRV; r++) {
        vf pr = vsplat(P[(size_t)r * ldp + j]);
        UNROLL for (int v = 0; v < NVV; v++) a[r][v] = vfma(x[v], pr, a[r][v]);
      }
    }
    UNROLL for (int r = 0; r < NRV; r++) UNROLL for (int v = 0; v < NVV; v++)
      *(vf *)(acc + (size_t)r * ldacc + c0 + v * VL) += a[r][v];
  }
}

/* Fused K^T for G > 1: KF[g][j] = sum_{c in group g} a_c KT[c][j] over the
 * w (a multiple of NC) keys of a packed block. */
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
      cvt_in(J->q, d->dtype, base + (size_t)r * hd, hd, dst);
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
      cvt_in(J->q, d->dtype, base + (size_t)r * hd, hd, row);
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
  vf mv = vsplat(mnew);
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

/* l[r] = the row's sum (kept NaN where a NaN was met). */
static void finish_l(int nr, const vf *lv, float *l) {
  for (int r = 0; r < nr; r++)
    if (l[r] == l[r]) l[r] = hsum(lv[r]);
}

static void write_out(const cpu_attn_job *J, size_t base, int nr, const float *acc,
                      const float *l, float *row) {
  const int hd = J->d;
  for (int r = 0; r < nr; r++) {
    const float *a = acc + (size_t)r * J->Dp;
    if (l[r] > 0.0f || l[r] != l[r]) {
      float inv = 1.0f / l[r];
      for (int c = 0; c < hd; c++) row[c] = a[c] * inv;
    } else {
      memset(row, 0, (size_t)hd * sizeof(float));
    }
    cvt_out(J->o, J->p->d.dtype, base + (size_t)r * hd, hd, row);
  }
}

/* Number of keys of [ks, ks+kn) visible to query row i. */
static inline int visible(const cpu_attn_job *J, long i, int ks, int kn) {
  if (!J->p->d.causal) return kn;
  long lim = i + J->off - ks + 1;
  return lim < 0 ? 0 : lim > kn ? kn : (int)lim;
}

static void attn_item(void *arg, int tid, long item) {
  const cpu_attn_job *J = arg;
  const da_attn_desc *d = &J->p->d;
  long per = J->npairs * J->hpk;
  int qb = J->nqb - 1 - (int)(item / per); /* heaviest (causal) first */
  long rest = item % per;
  long pr = rest / J->hpk;
  long pair = J->pair0 + pr;
  int bi = (int)(pair / d->kv_heads), kh = (int)(pair % d->kv_heads);
  int hi = kh * J->hpk + (int)(rest % J->hpk);
  int i0 = qb * J->QB;
  int nr = d->seq_q - i0 < J->QB ? d->seq_q - i0 : J->QB;
  int nrp = (int)round_up((size_t)nr, NR);
  float *sb = J->scratch[tid];
  float *qf = sb + J->o_qf, *kf = sb + J->o_kf, *row = sb + J->o_row;
  float *S = sb + J->o_s, *acc = sb + J->o_acc, *m = sb + J->o_m, *l = sb + J->o_l;
  vf *lv = (vf *)(sb + J->o_lv);
  const int Dp = J->Dp, hd = J->d, D = J->D;
  const float *kp = J->kpack + (size_t)pr * J->nkb * J->kblk;
  const float *vp = J->vpack + (size_t)pr * J->nkb * J->vblk;
  size_t qbase = (((size_t)bi * (size_t)d->heads + (size_t)hi) * (size_t)d->seq_q + (size_t)i0) *
                 (size_t)hd;

  long kend_l = d->seq_k; /* keys visible to some row of the block: [0, kend) */
  if (d->causal) {
    long last = (long)i0 + nr - 1 + J->off + 1;
    if (last < kend_l) kend_l = last;
  }
  for (int r = 0; r < nrp; r++) {
    m[r] = -INFINITY;
    l[r] = 0.0f;
    lv[r] = vsplat(0.0f);
  }
  memset(acc, 0, (size_t)nrp * Dp * sizeof(float));
  if (kend_l <= 0) {
    write_out(J, qbase, nr, acc, l, row);
    return;
  }
  int kend = (int)kend_l;
  const int *perm = NULL;
  const float *a = NULL;
  if (J->G > 1) {
    size_t t = (((size_t)bi * (size_t)d->heads + (size_t)hi) * (size_t)J->p->n_tiles +
                (size_t)(i0 / d->hash_block)) * (size_t)hd;
    perm = J->perm_all + t;
    a = J->a_all + t;
  }
  build_q(J, qbase, nr, nrp, perm, a, qf, row);

  if (d->algo == DA_ALGO_GEMM) {
    const size_t lds = J->lds;
    int wall = (int)round_up((size_t)kend, NC);
    for (int ks = 0, kb = 0; ks < kend; ks += KB, kb++) {
      int kn = kend - ks < KB ? kend - ks : KB;
      int w = (int)round_up((size_t)kn, NC);
      const float *kt = kp + (size_t)kb * J->kblk;
      if (J->G > 1) {
        fuse_k(kt, hd, D, J->G, perm, a, w, kf);
        kt = kf;
      }
      for (int r = 0; r < nrp; r += NR)
        qk_tile(qf + (size_t)r * D, (size_t)D, kt, D, w, S + (size_t)r * lds + ks, lds);
    }
    for (int r = 0; r < nrp; r++) {
      float *s = S + (size_t)r * lds;
      int lim = r < nr ? visible(J, (long)i0 + r, 0, kend) : 0;
      if (lim == 0) {
        memset(s, 0, (size_t)wall * sizeof(float));
        continue;
      }
      softmax_row(s, lim, wall, &m[r], &lv[r], &l[r]);
    }
    for (int ks = 0, kb = 0; ks < kend; ks += KB, kb++) {
      int kn = kend - ks < KB ? kend - ks : KB;
      for (int r = 0; r < nrp; r += NRV)
        pv_tile(S + (size_t)r * lds + ks, lds, vp + (size_t)kb * J->vblk, kn, acc + (size_t)r * Dp,
                (size_t)Dp, Dp);
    }
  } else {
    for (int ks = 0, kb = 0; ks < kend; ks += KB, kb++) {
      int kn = kend - ks < KB ? kend - ks : KB;
      int w = (int)round_up((size_t)kn, NC);
      const float *kt = kp + (size_t)kb * J->kblk;
      if (J->G > 1) {
        fuse_k(kt, hd, D, J->G, perm, a, w, kf);
        kt = kf;
      }
      for (int r = 0; r < nrp; r += NR)
        qk_tile(qf + (size_t)r * D, (size_t)D, kt, D, w, S + (size_t)r * KB, KB);
      /* G > 1: the next key block's K is fetched into the cache while this
       * one is computed (spread over the rows' softmax), so that the fused
       * K^T, which reads K in permuted row order with little arithmetic,
       * does not wait for it */
      const char *pk = (const char *)(kp + (size_t)(kb + 1) * J->kblk);
      size_t klines = J->kblk * sizeof(float) / 64;
      size_t kper = (klines + nr - 1) / nr;
      int more = J->G > 1 && ks + KB < kend;
      for (int r = 0; r < nr; r++) {
        float *s = S + (size_t)r * KB;
#if defined(__GNUC__)
        if (more)
          for (size_t i = (size_t)r * kper; i < (size_t)(r + 1) * kper && i < klines; i++)
            __builtin_prefetch(pk + i * 64, 0, 2);
#endif
        int lim = visible(J, (long)i0 + r, ks, kn);
        if (lim == 0) {
          memset(s, 0, (size_t)w * sizeof(float));
          continue;
        }
        float alpha = softmax_row(s, lim, w, &m[r], &lv[r], &l[r]);
        if (alpha != 1.0f) {
          vf av = vsplat(alpha);
          float *ar = acc + (size_t)r * Dp;
          for (int c = 0; c < Dp; c += VL) *(vf *)(ar + c) *= av;
        }
      }
      const float *vb = vp + (size_t)kb * J->vblk;
      for (int r = 0; r < nrp; r += NRV)
        pv_tile(S + (size_t)r * KB, KB, vb, kn, acc + (size_t)r * Dp, (size_t)Dp, Dp);
    }
  }
  finish_l(nr, lv, l);
  write_out(J, qbase, nr, acc, l, row);
}

/* ---------------------------------------------------------------------- */
/* Layout                                                                 */

static void setup(cpu_attn_job *J) {
  const da_attn_desc *d = &J->p->d;
  J->Dp = (int)round_up((size_t)J->d, NCV > NC ? NCV : NC);
  J->QB = QB_MAX;
  if (J->G > 1 && d->hash_block < J->QB) J->QB = d->hash_block;
  J->nqb = (d->seq_q + J->QB - 1) / J->QB;
  J->nkb = (d->seq_k + KB - 1) / KB;
  J->kblk = (size_t)J->d * KB;
  J->vblk = (size_t)KB * (size_t)J->Dp;
  J->lds = d->algo == DA_ALGO_GEMM ? round_up(d->seq_k > 0 ? (size_t)d->seq_k : 1, KB) : KB;
  size_t QBp = round_up((size_t)J->QB, NR);
  size_t ng = (size_t)(J->d + (J->G > 1 ? J->G : 1) - 1) / (size_t)(J->G > 1 ? J->G : 1);
  size_t off = 0;
#define PART(field, n) do { J->field = off; off += round_up((size_t)(n), 16); } while (0)
  PART(o_qf, QBp * (size_t)J->D);
  PART(o_kf, J->G > 1 ? ng * KB : 0);
  PART(o_row, (size_t)J->Dp + NC);
  PART(o_s, QBp * J->lds);
  PART(o_acc, QBp * (size_t)J->Dp);
  PART(o_m, QBp);
  PART(o_l, QBp);
  PART(o_lv, QBp * VL);
  PART(o_qt, J->d <= 256 ? (size_t)d->hash_block * round_up((size_t)J->d, VL) : 0);
#undef PART
  J->scratch_floats = off;
}

const cpu_kernels KNAME = {
    .isa = KISA_NAME,
    .setup = setup,
    .groups_item = groups_item,
    .pack_item = pack_item,
    .attn_item = attn_item,
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
#undef UNROLL
