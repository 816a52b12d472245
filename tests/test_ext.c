/* SPDX-License-Identifier: Apache-2.0 */
/* da_attn_ext and da_attention_ext (inference engines): element strides
 * (B,S,H,D and B,H,S,D and padded rows, without copies), a KV cache of fixed
 * capacity used in place with per-sequence lengths, packed variable-length
 * batches (cu_seqlens), the log-sum-exp output (two halves of the keys merge
 * into the one-call answer), sliding windows. Every result is checked
 * against a float64 reference written here from the definitions (SPEC
 * section 1, "Layouts and lengths"), on fresh random inputs, with the output
 * buffers poisoned: an element the library must not write (padding, rows past
 * a sequence) must still hold the poison afterwards. DistrAttention (G > 1)
 * under strides and lengths must give exactly what the dense call on the same
 * rows gives. Every check runs on the CPU backend, on OpenCL and on CUDA
 * (device buffers, written and read back; each device backend is skipped
 * where absent, unless DISTRATTN_REQUIRE_BACKENDS names it), and the device
 * backends' results are compared with the CPU backend's on the same inputs
 * (f32: 1e-5; G > 1 too, as all use the same permutations). The "mma" cases
 * (f16/bf16, head_dim 64 or 128, 16-byte aligned strides and offsets) are
 * the ones CUDA runs on its tensor-core kernel, the others on its SIMT one.
 * DA_ALGO_GEMM refuses the options by name (OpenCL, CUDA). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

/* ------------------------------------------------------------ reference */

typedef struct {
  long long st[3]; /* batch, head, row */
  size_t off;      /* elements */
} tview;

static size_t at(const tview *v, int b, int h, long r) {
  return v->off + (size_t)(b * v->st[0] + h * v->st[1] + r * v->st[2]);
}

/* Per sequence b: Q/O rows q0[b].., lq[b] of them; K/V rows k0[b].., lk[b]. */
typedef struct {
  int *q0, *lq, *k0, *lk;
} tlens;

/* O (dense [B][H][seq_q][d], rows < lq[b]) and LSE ([B][H][seq_q]) in float64. */
static void ref_ext(const da_attn_desc *d, int wl, int wr, const void *q, const tview *qv,
                    const void *k, const tview *kv, const void *v, const tview *vv,
                    const tlens *L, double *o, double *lse) {
  const int H = d->heads, KVH = d->kv_heads ? d->kv_heads : d->heads, hd = d->head_dim;
  const double scale = d->scale > 0 ? d->scale : 1.0 / sqrt((double)hd);
  if (d->causal) wr = 0;
  double *s = malloc(sizeof(double) * (size_t)(d->seq_k + 1));
  assert_non_null(s);
  for (int b = 0; b < d->batch; b++)
    for (int h = 0; h < H; h++) {
      int kh = h / (H / KVH);
      long off = (long)L->lk[b] - L->lq[b];
      for (int i = 0; i < L->lq[b]; i++) {
        double *orow = o + (((size_t)b * H + h) * d->seq_q + i) * hd;
        long diag = i + off, lo = 0, hi = L->lk[b] - 1;
        if (wr >= 0 && diag + wr < hi) hi = diag + wr;
        if (wl >= 0 && diag - wl > lo) lo = diag - wl;
        double mx = -INFINITY;
        for (long j = lo; j <= hi; j++) {
          double acc = 0;
          for (int c = 0; c < hd; c++)
            acc += (double)da_load_elem(q, d->dtype, at(qv, b, h, L->q0[b] + i) + c) *
                   (double)da_load_elem(k, d->dtype, at(kv, b, kh, L->k0[b] + j) + c);
          s[j - lo] = acc * scale;
          if (s[j - lo] > mx) mx = s[j - lo];
        }
        for (int c = 0; c < hd; c++) orow[c] = 0.0;
        if (hi < lo) {
          lse[((size_t)b * H + h) * d->seq_q + i] = -INFINITY;
          continue;
        }
        double sum = 0;
        for (long j = lo; j <= hi; j++) {
          double p = exp(s[j - lo] - mx);
          sum += p;
          for (int c = 0; c < hd; c++)
            orow[c] += p * (double)da_load_elem(v, d->dtype, at(vv, b, kh, L->k0[b] + j) + c);
        }
        for (int c = 0; c < hd; c++) orow[c] /= sum;
        lse[((size_t)b * H + h) * d->seq_q + i] = mx + log(sum);
      }
    }
  free(s);
}

/* The relative error of the library's strided O against the reference, over
 * the rows each sequence has; and the count of elements of the O buffer
 * outside those rows that no longer hold the poison. */
static double o_error(const da_attn_desc *d, const void *obuf, size_t obytes, const tview *ov,
                      const tlens *L, const double *ref, size_t *touched) {
  const int H = d->heads, hd = d->head_dim;
  const size_t es = da_dtype_size(d->dtype), n = obytes / es;
  unsigned char *mine = calloc(n, 1);
  assert_non_null(mine);
  double num = 0, den = 0;
  for (int b = 0; b < d->batch; b++)
    for (int h = 0; h < H; h++)
      for (int i = 0; i < L->lq[b]; i++)
        for (int c = 0; c < hd; c++) {
          size_t e = at(ov, b, h, L->q0[b] + i) + c;
          assert_true(e < n);
          mine[e] = 1;
          double x = da_load_elem(obuf, d->dtype, e);
          double y = ref[(((size_t)b * H + h) * d->seq_q + i) * hd + c];
          if (!isfinite(x)) num = INFINITY;
          num += (x - y) * (x - y);
          den += y * y;
        }
  *touched = 0;
  for (size_t e = 0; e < n; e++) {
    if (mine[e]) continue;
    const unsigned char *p = (const unsigned char *)obuf + e * es;
    for (size_t j = 0; j < es; j++)
      if (p[j] != 0xFF) {
        (*touched)++;
        break;
      }
  }
  free(mine);
  return den > 0 ? sqrt(num / den) : sqrt(num);
}

/* ------------------------------------------------------------ plumbing */

/* A buffer of the backend and the host memory that holds its contents: on
 * the CPU backend the buffer wraps that memory; elsewhere (device memory)
 * hb_push writes it to the buffer and hb_pull reads the buffer back. */
typedef struct {
  da_buffer *b;
  void *h;
  size_t bytes;
  int wrapped;
} hbuf;

static void *hb_new(da_context *ctx, hbuf *x, size_t bytes) {
  x->h = malloc(bytes ? bytes : 1);
  assert_non_null(x->h);
  x->bytes = bytes;
  x->wrapped = da_context_backend(ctx) == DA_BACKEND_CPU;
  if (x->wrapped) TU_CHECK(ctx, da_buffer_wrap(ctx, x->h, bytes, &x->b));
  else TU_CHECK(ctx, da_buffer_create(ctx, bytes, &x->b));
  return x->h;
}

static void hb_push(da_context *ctx, hbuf *x) {
  if (!x->wrapped) TU_CHECK(ctx, da_buffer_write(x->b, 0, x->h, x->bytes));
}

static void hb_pull(da_context *ctx, hbuf *x) {
  if (!x->wrapped) TU_CHECK(ctx, da_buffer_read(x->b, 0, x->h, x->bytes));
}

static void hb_free(hbuf *x) {
  da_buffer_destroy(x->b);
  free(x->h);
  memset(x, 0, sizeof *x);
}

typedef struct {
  da_context *ctx;
  hbuf q, k, v, o, lse, lens, cuq, cuk;
} tbufs;

static void tbufs_free(tbufs *t) {
  hbuf *bs[8] = {&t->q, &t->k, &t->v, &t->o, &t->lse, &t->lens, &t->cuq, &t->cuk};
  for (int i = 0; i < 8; i++)
    if (bs[i]->b) hb_free(bs[i]);
}

/* The extent in elements of a view over (nb, nh, nr) rows of d. */
static size_t view_elems(const tview *v, int nb, int nh, long nr, int d) {
  return v->off + (size_t)((nb - 1) * v->st[0] + (nh - 1) * v->st[1] + (nr - 1) * v->st[2]) +
         (size_t)d;
}

/* One whole check: data in the given views, lengths L (NULL: dense), the
 * plan's window and options; O and LSE against ref_ext (G = 1), the
 * elements outside the output rows untouched. */
typedef struct {
  const char *name;
  int b, h, kvh, sq, sk, hd;
  da_dtype t;
  int causal;
  int layout;      /* 0 B,H,S,D dense defaults; 1 B,S,H,D; 2 padded rows and heads;
                      3 B,S,H,D with offsets that keep rows 16-byte aligned */
  da_seqlens lens; /* NONE, KV (random lengths 0..sk), PACKED */
  int wl, wr;
  int lse;
  int g;           /* group_size (0: 1); G > 1 is compared across backends only */
} ecase;

/* What a run gave, for the comparison across backends: the whole O and
 * LSE buffers as read back, and which of their elements the call writes. */
typedef struct {
  void *o;
  float *lse;
  size_t no, nlse; /* elements */
  unsigned char *omine, *lmine;
} eresult;

static void eresult_free(eresult *r) {
  free(r->o), free(r->lse), free(r->omine), free(r->lmine);
  memset(r, 0, sizeof *r);
}

static void make_view(int layout, int nb, int nh, int nr, int hd, tview *v, size_t off) {
  v->off = off;
  if (layout == 1 || layout == 3) { /* B,S,H,D */
    v->st[2] = (long long)nh * hd;
    v->st[1] = hd;
    v->st[0] = (long long)nr * nh * hd;
  } else if (layout == 2) { /* padded rows (hd + 3) and heads (+5), batches (+7) */
    v->st[2] = hd + 3;
    v->st[1] = (long long)nr * (hd + 3) + 5;
    v->st[0] = (long long)nh * v->st[1] + 7;
  } else {
    v->st[2] = hd;
    v->st[1] = (long long)nr * hd;
    v->st[0] = (long long)nh * nr * hd;
  }
}

/* >= 0: the number of split-KV decode calls the CPU context of run_ecase
 * must have made (0 or 1); -1: not checked. */
static long g_expect_decode = -1;

/* Runs case c on backend be with inputs drawn from salt; checks it (see
 * above) and, with out, hands back what it wrote. */
static void run_ecase(da_backend be, const ecase *c, uint64_t salt, eresult *out) {
  tbufs t;
  memset(&t, 0, sizeof t);
  TU_CHECK(t.ctx, da_context_create(&t.ctx, be, -1));
  tu_rng rng;
  tu_rng_init(&rng, tu_seed() ^ salt);
  da_attn_desc d;
  da_attn_desc_init(&d);
  d.batch = c->b, d.heads = c->h, d.kv_heads = c->kvh, d.seq_q = c->sq, d.seq_k = c->sk;
  d.head_dim = c->hd, d.dtype = c->t, d.causal = c->causal;
  d.group_size = c->g > 1 ? c->g : 1;
  if (d.group_size > 1) /* several hash tiles per sequence (64: CUDA's mma kernel's least) */
    d.hash_block = c->t != DA_F32 && (c->hd == 64 || c->hd == 128) ? 64 : 32;
  const int KVH = c->kvh ? c->kvh : c->h, B = c->b;
  const int packed = c->lens == DA_SEQLENS_PACKED;
  da_attn_ext x;
  da_attn_ext_init(&x);
  x.seqlens = c->lens, x.lse = c->lse, x.window_left = c->wl, x.window_right = c->wr;

  /* lengths */
  tlens L;
  int *lens_mem = malloc(sizeof(int) * 4 * (size_t)B);
  assert_non_null(lens_mem);
  L.q0 = lens_mem, L.lq = lens_mem + B, L.k0 = lens_mem + 2 * B, L.lk = lens_mem + 3 * B;
  long rows_q = 0, rows_k = 0;
  for (int b = 0; b < B; b++) {
    L.q0[b] = packed ? (int)rows_q : 0;
    L.k0[b] = packed ? (int)rows_k : 0;
    L.lq[b] = packed ? tu_randint(&rng, 0, c->sq) : c->sq;
    L.lk[b] = c->lens != DA_SEQLENS_NONE ? tu_randint(&rng, 0, c->sk) : c->sk;
    if (c->lens != DA_SEQLENS_NONE && b == 0) L.lk[b] = c->sk; /* the full capacity */
    if (c->lens != DA_SEQLENS_NONE && b == 1) L.lk[b] = 0;     /* an empty one */
    if (packed && b == 0) L.lq[b] = c->sq;
    rows_q += L.lq[b], rows_k += L.lk[b];
  }
  if (rows_q < 1) rows_q = 1;
  if (rows_k < 1) rows_k = 1;

  /* views: Q and O differ in layout from K and V where the case allows */
  tview qv, kv, vv, ov;
  const int nbv = packed ? 1 : B;
  const int rq = packed ? (int)rows_q : c->sq, rk = packed ? (int)rows_k : c->sk;
  make_view(c->layout, nbv, c->h, rq, c->hd, &qv, 3);
  make_view(c->layout == 1 ? 2 : c->layout, nbv, KVH, rk, c->hd, &kv, 0);
  make_view(c->layout, nbv, KVH, rk, c->hd, &vv, 11);
  make_view(c->layout == 0 ? 0 : 3 - c->layout, nbv, c->h, rq, c->hd, &ov, 2);
  if (packed) qv.st[0] = kv.st[0] = vv.st[0] = ov.st[0] = 0;
  if (c->layout == 3) qv.off = 8, kv.off = 0, vv.off = 16, ov.off = 24;
  if (c->layout == 0) { /* the default strides, asked for with zeros */
    memset(x.q_stride, 0, sizeof x.q_stride);
    qv.off = kv.off = vv.off = ov.off = 0;
    if (packed) { /* packed defaults: [rows][heads][head_dim] */
      make_view(1, 1, c->h, rq, c->hd, &qv, 0);
      make_view(1, 1, KVH, rk, c->hd, &kv, 0);
      vv = kv;
      ov = qv;
      qv.st[0] = kv.st[0] = vv.st[0] = ov.st[0] = 0;
    } else {
      make_view(0, nbv, c->h, rq, c->hd, &qv, 0);
      make_view(0, nbv, KVH, rk, c->hd, &kv, 0);
      vv = kv;
      ov = qv;
    }
  } else {
    memcpy(x.q_stride, qv.st, sizeof qv.st);
    memcpy(x.k_stride, kv.st, sizeof kv.st);
    memcpy(x.v_stride, vv.st, sizeof vv.st);
    memcpy(x.o_stride, ov.st, sizeof ov.st);
  }
  const size_t es = da_dtype_size(c->t);
  size_t nq = view_elems(&qv, nbv, c->h, rq, c->hd), nk = view_elems(&kv, nbv, KVH, rk, c->hd);
  size_t nv = view_elems(&vv, nbv, KVH, rk, c->hd), no = view_elems(&ov, nbv, c->h, rq, c->hd);
  void *hq = hb_new(t.ctx, &t.q, nq * es), *hk = hb_new(t.ctx, &t.k, nk * es);
  void *hv = hb_new(t.ctx, &t.v, nv * es), *ho = hb_new(t.ctx, &t.o, no * es);
  tu_fill(hq, c->t, nq, &rng, 1.0);
  tu_fill(hk, c->t, nk, &rng, 1.0);
  tu_fill(hv, c->t, nv, &rng, 1.0);
  tu_poison(ho, no * es);
  hb_push(t.ctx, &t.q), hb_push(t.ctx, &t.k), hb_push(t.ctx, &t.v), hb_push(t.ctx, &t.o);
  size_t nlse = packed ? (size_t)c->h * (size_t)rows_q : (size_t)B * c->h * c->sq;
  float *hlse = NULL;
  if (c->lse) {
    hlse = hb_new(t.ctx, &t.lse, nlse * sizeof(float));
    tu_poison(hlse, nlse * sizeof(float));
    hb_push(t.ctx, &t.lse);
  }

  da_plan *p = NULL;
  TU_CHECK(t.ctx, da_plan_create_ext(t.ctx, &d, &x, &p));
  da_attn_args a;
  da_attn_args_init(&a);
  a.q = t.q.b, a.k = t.k.b, a.v = t.v.b, a.o = t.o.b, a.lse = t.lse.b;
  a.q_offset = qv.off, a.k_offset = kv.off, a.v_offset = vv.off, a.o_offset = ov.off;
  if (c->lens == DA_SEQLENS_KV) {
    int *hl = hb_new(t.ctx, &t.lens, sizeof(int) * (size_t)B);
    memcpy(hl, L.lk, sizeof(int) * (size_t)B);
    hb_push(t.ctx, &t.lens);
    a.seqlens_k = t.lens.b;
  } else if (packed) {
    int *hcq = hb_new(t.ctx, &t.cuq, sizeof(int) * (size_t)(B + 1));
    int *hck = hb_new(t.ctx, &t.cuk, sizeof(int) * (size_t)(B + 1));
    for (int b = 0; b <= B; b++) {
      hcq[b] = b < B ? L.q0[b] : L.q0[B - 1] + L.lq[B - 1];
      hck[b] = b < B ? L.k0[b] : L.k0[B - 1] + L.lk[B - 1];
    }
    hb_push(t.ctx, &t.cuq), hb_push(t.ctx, &t.cuk);
    a.cu_seqlens_q = t.cuq.b, a.cu_seqlens_k = t.cuk.b;
    a.rows_q = (size_t)rows_q, a.rows_k = (size_t)rows_k;
  }
  TU_CHECK(t.ctx, da_attention_ext(p, &a));
  TU_CHECK(t.ctx, da_context_synchronize(t.ctx));
  if (be == DA_BACKEND_CPU && g_expect_decode >= 0 &&
      da_cpu_decode_calls(t.ctx) != g_expect_decode)
    fail_msg("%s: the CPU backend ran %s path, not the one meant", c->name,
             da_cpu_decode_calls(t.ctx) ? "the split-KV decode" : "the blocked");
  hb_pull(t.ctx, &t.o);
  if (c->lse) hb_pull(t.ctx, &t.lse);

  double *ref = malloc(sizeof(double) * (size_t)B * c->h * c->sq * c->hd);
  double *rlse = malloc(sizeof(double) * (size_t)B * c->h * c->sq);
  assert_non_null(ref);
  assert_non_null(rlse);
  ref_ext(&d, c->wl, c->wr, hq, &qv, hk, &kv, hv, &vv, &L, ref, rlse);
  size_t touched = 0;
  double err = o_error(&d, ho, no * es, &ov, &L, ref, &touched);
  double bound = tu_bound(c->t);
  if (d.group_size > 1) err = 0; /* an approximation: compared across backends instead */
  if (!(err <= bound) || touched)
    fail_msg("%s on %s: error %.3e (bound %.1e), %zu elements outside the output rows written "
             "[seed %llu]",
             c->name, da_backend_name(be), err, bound, touched, (unsigned long long)tu_seed());
  unsigned char *lmine = NULL;
  if (c->lse) { /* LSE: absolute error; -inf where a row sees no key; the rest untouched */
    double worst = 0;
    size_t bad = 0;
    lmine = calloc(nlse, 1);
    assert_non_null(lmine);
    for (int b = 0; b < B; b++)
      for (int h = 0; h < c->h; h++)
        for (int i = 0; i < L.lq[b]; i++) {
          size_t e = packed ? (size_t)h * (size_t)rows_q + (size_t)(L.q0[b] + i)
                            : ((size_t)b * c->h + h) * c->sq + i;
          lmine[e] = 1;
          double y = rlse[((size_t)b * c->h + h) * c->sq + i], xx = hlse[e];
          if (isinf(y)) {
            if (!(isinf(xx) && xx < 0)) bad++;
          } else if (d.group_size > 1) {
            if (!isfinite(xx)) bad++; /* the value: compared across backends */
          } else if (!(fabs(xx - y) <= worst)) {
            worst = fabs(xx - y);
          }
        }
    for (size_t e = 0; e < nlse; e++) {
      uint32_t u;
      memcpy(&u, &hlse[e], 4);
      if (!lmine[e] && u != 0xFFFFFFFFu) bad++;
    }
    if (bad || !(worst <= (c->t == DA_F32 ? 1e-5 : 2e-2)))
      fail_msg("%s on %s: LSE off by %.3e, %zu wrong or stray values [seed %llu]", c->name,
               da_backend_name(be), worst, bad, (unsigned long long)tu_seed());
  }
  if (out) {
    memset(out, 0, sizeof *out);
    out->no = no, out->nlse = c->lse ? nlse : 0;
    out->o = malloc(no * es);
    out->omine = calloc(no, 1);
    assert_non_null(out->o), assert_non_null(out->omine);
    memcpy(out->o, ho, no * es);
    for (int b = 0; b < B; b++)
      for (int h = 0; h < c->h; h++)
        for (int i = 0; i < L.lq[b]; i++)
          memset(out->omine + at(&ov, b, h, L.q0[b] + i), 1, (size_t)c->hd);
    if (c->lse) {
      out->lse = malloc(nlse * sizeof(float));
      assert_non_null(out->lse);
      memcpy(out->lse, hlse, nlse * sizeof(float));
      out->lmine = lmine;
      lmine = NULL;
    }
  }
  free(lmine);
  free(ref), free(rlse), free(lens_mem);
  da_plan_destroy(p);
  da_context *ctx = t.ctx;
  tbufs_free(&t); /* zeroes t, t.ctx included */
  da_context_destroy(ctx);
}

static const ecase ecases[] = {
    /* name                     b  h kvh  sq   sk  hd  dtype  causal layout lens            wl  wr lse g */
    {"bhsd-default", 2, 4, 2, 77, 130, 64, DA_F32, 1, 0, DA_SEQLENS_NONE, -1, -1, 1, 1},
    {"bshd", 2, 4, 2, 77, 130, 64, DA_F32, 0, 1, DA_SEQLENS_NONE, -1, -1, 0, 1},
    {"bshd-f16-causal", 2, 6, 2, 130, 77, 32, DA_F16, 1, 1, DA_SEQLENS_NONE, -1, -1, 1, 1},
    {"padded-bf16", 3, 2, 1, 65, 300, 48, DA_BF16, 1, 2, DA_SEQLENS_NONE, -1, -1, 1, 1},
    {"kvcache-decode", 4, 8, 2, 1, 517, 64, DA_F32, 1, 2, DA_SEQLENS_KV, -1, -1, 1, 1},
    {"kvcache-chunk", 3, 4, 4, 16, 300, 128, DA_F16, 1, 0, DA_SEQLENS_KV, -1, -1, 1, 1},
    {"kvcache-bshd", 3, 4, 1, 5, 260, 64, DA_F32, 0, 1, DA_SEQLENS_KV, -1, -1, 0, 1},
    {"packed-default", 4, 4, 2, 150, 170, 64, DA_F32, 1, 0, DA_SEQLENS_PACKED, -1, -1, 1, 1},
    {"packed-padded-f16", 5, 2, 2, 90, 90, 40, DA_F16, 0, 2, DA_SEQLENS_PACKED, -1, -1, 1, 1},
    {"window-left", 2, 2, 1, 200, 260, 64, DA_F32, 0, 0, DA_SEQLENS_NONE, 37, 5, 1, 1},
    {"window-causal", 2, 2, 2, 300, 300, 32, DA_F32, 1, 1, DA_SEQLENS_NONE, 130, -1, 1, 1},
    {"window-kvcache", 3, 4, 2, 4, 400, 64, DA_BF16, 1, 2, DA_SEQLENS_KV, 150, -1, 1, 1},
    {"window-right-only", 1, 2, 2, 64, 64, 16, DA_F32, 0, 0, DA_SEQLENS_NONE, -1, 3, 0, 1},
    {"mma-f16-bshd-causal", 2, 4, 2, 150, 200, 64, DA_F16, 1, 3, DA_SEQLENS_NONE, -1, -1, 1, 1},
    {"mma-bf16-packed", 4, 4, 2, 150, 170, 128, DA_BF16, 1, 3, DA_SEQLENS_PACKED, -1, -1, 1, 1},
    {"mma-f16-kvcache-window", 3, 8, 2, 70, 400, 128, DA_F16, 1, 3, DA_SEQLENS_KV, 100, -1, 1, 1},
    {"mma-bf16-window-lr", 2, 2, 1, 200, 260, 64, DA_BF16, 0, 0, DA_SEQLENS_NONE, 37, 5, 1, 1},
    /* dense with the LSE alone: on Hopper the warpgroup-MMA kernel writes it */
    {"dense-lse-f16-d64", 2, 4, 2, 300, 260, 64, DA_F16, 0, 0, DA_SEQLENS_NONE, -1, -1, 1, 1},
    {"dense-lse-bf16-d128-causal", 2, 4, 4, 200, 333, 128, DA_BF16, 1, 0, DA_SEQLENS_NONE, -1, -1, 1, 1},
    {"dense-lse-f16-d128-causal-sq>sk", 1, 4, 2, 190, 130, 128, DA_F16, 1, 0, DA_SEQLENS_NONE, -1, -1, 1, 1},
    {"dense-lse-bf16-d64-causal", 1, 2, 1, 257, 257, 64, DA_BF16, 1, 0, DA_SEQLENS_NONE, -1, -1, 1, 1},
};

static void test_ext_cases(void **state) {
  da_backend be = (da_backend)(intptr_t)*state;
  TU_NEED_BACKEND(be);
  for (size_t i = 0; i < sizeof ecases / sizeof ecases[0]; i++)
    run_ecase(be, &ecases[i], 0x5eed0000u + i, NULL);
}

/* DistrAttention (hash_block 32: several tiles per sequence) under every
 * option, f32: run on each backend, compared between them. */
static const ecase gcases[] = {
    /* name                b  h kvh  sq   sk  hd  dtype  causal layout lens            wl  wr lse g */
    {"g2-bshd", 2, 4, 2, 77, 130, 64, DA_F32, 1, 1, DA_SEQLENS_NONE, -1, -1, 1, 2},
    {"g2-kvcache-window", 3, 4, 2, 40, 300, 64, DA_F32, 1, 2, DA_SEQLENS_KV, 100, -1, 1, 2},
    {"g4-packed", 4, 4, 2, 150, 170, 64, DA_F32, 1, 0, DA_SEQLENS_PACKED, -1, -1, 1, 4},
    {"g8-packed-padded", 5, 2, 2, 90, 90, 40, DA_F32, 0, 2, DA_SEQLENS_PACKED, 20, 7, 1, 8},
    {"g4-window-right", 2, 2, 1, 70, 64, 32, DA_F32, 0, 0, DA_SEQLENS_NONE, -1, 3, 0, 4},
    {"g2-mma-f16-bshd", 2, 4, 2, 150, 200, 64, DA_F16, 1, 3, DA_SEQLENS_NONE, -1, -1, 1, 2},
    {"g4-mma-bf16-packed", 4, 4, 2, 150, 170, 128, DA_BF16, 1, 3, DA_SEQLENS_PACKED, 60, -1, 1, 4},
    {"g8-mma-f16-kvcache", 3, 4, 2, 130, 300, 64, DA_F16, 0, 0, DA_SEQLENS_KV, -1, -1, 1, 8},
};

static void test_g_cases(void **state) {
  da_backend be = (da_backend)(intptr_t)*state;
  TU_NEED_BACKEND(be);
  for (size_t i = 0; i < sizeof gcases / sizeof gcases[0]; i++)
    run_ecase(be, &gcases[i], 0x9eed0000u + i, NULL);
}

/* ------------------------------- device backends against the CPU backend */

/* Every f32 case (exact and G > 1) on a device backend and on the CPU
 * backend, same inputs: O within 1e-5 (relative Frobenius over the rows
 * written; G > 1 only gets this close with the same permutations), LSE
 * within 1e-5 (relative, -inf and NaN alike), the same elements written. */
static void cross_one(da_backend be, const ecase *c, uint64_t salt) {
  eresult r[2];
  run_ecase(DA_BACKEND_CPU, c, salt, &r[0]);
  run_ecase(be, c, salt, &r[1]);
  assert_int_equal(r[0].no, r[1].no);
  double num = 0, den = 0;
  for (size_t e = 0; e < r[0].no; e++) {
    if (!r[0].omine[e]) continue;
    double x = ((const float *)r[1].o)[e], y = ((const float *)r[0].o)[e];
    if (!isfinite(x) || !isfinite(y)) num = INFINITY;
    num += (x - y) * (x - y);
    den += y * y;
  }
  double err = den > 0 ? sqrt(num / den) : sqrt(num);
  size_t lbad = 0;
  double lworst = 0;
  for (size_t e = 0; e < r[0].nlse; e++) {
    if (!r[0].lmine[e]) continue;
    double x = r[1].lse[e], y = r[0].lse[e];
    if (isnan(y) || isinf(y)) {
      if (!(isnan(y) ? isnan(x) : x == y)) lbad++;
      continue;
    }
    double rel = fabs(x - y) / (fabs(y) > 1 ? fabs(y) : 1);
    if (!(rel <= lworst)) lworst = rel;
  }
  if (!(err <= 1e-5) || lbad || !(lworst <= 1e-5))
    fail_msg("%s: %s vs cpu: O %.3e, LSE %.3e, %zu LSE values differ in kind [seed %llu]",
             c->name, da_backend_name(be), err, lworst, lbad, (unsigned long long)tu_seed());
  eresult_free(&r[0]), eresult_free(&r[1]);
}

static void test_cross_backend(void **state) {
  da_backend be = (da_backend)(intptr_t)*state;
  TU_NEED_BACKEND(be);
  for (size_t i = 0; i < sizeof ecases / sizeof ecases[0]; i++)
    if (ecases[i].t == DA_F32) cross_one(be, &ecases[i], 0x5eed0000u + i);
  for (size_t i = 0; i < sizeof gcases / sizeof gcases[0]; i++)
    if (gcases[i].t == DA_F32) cross_one(be, &gcases[i], 0x9eed0000u + i);
}

/* ------------------------------------------------------------- decode */

/* Decode shapes (few query rows per kv head, long KV caches), which the CPU
 * backend runs on its split-KV path: seq_q 1..16, GQA 32/8 and MQA 4/1,
 * head_dim 64, 128 and 59, every dtype, causal or not, KV lengths (the
 * full capacity, 0 and random ones), packed batches, windows, LSE, strided
 * layouts; seq_k long enough for many chunks. */
static const ecase dcases[] = {
    /* name                     b  h kvh  sq   sk  hd  dtype  causal layout lens            wl  wr lse g */
    {"dec-q1-32/8-f16", 2, 32, 8, 1, 1100, 128, DA_F16, 1, 0, DA_SEQLENS_KV, -1, -1, 1, 0},
    {"dec-q2-32/8-bf16-bshd", 2, 32, 8, 2, 700, 128, DA_BF16, 1, 1, DA_SEQLENS_KV, -1, -1, 1, 0},
    {"dec-q5-4/1-f32-padded", 3, 4, 1, 5, 900, 64, DA_F32, 1, 2, DA_SEQLENS_KV, -1, -1, 1, 0},
    {"dec-q16-4/1-f16", 2, 4, 1, 16, 600, 64, DA_F16, 1, 0, DA_SEQLENS_KV, -1, -1, 1, 0},
    {"dec-q1-hd59-f32", 3, 8, 2, 1, 3000, 59, DA_F32, 0, 0, DA_SEQLENS_NONE, -1, -1, 1, 0},
    {"dec-q2-hd59-bf16", 2, 4, 1, 2, 333, 59, DA_BF16, 0, 2, DA_SEQLENS_KV, -1, -1, 0, 0},
    {"dec-q1-f32-128", 1, 32, 8, 1, 2500, 128, DA_F32, 0, 0, DA_SEQLENS_NONE, -1, -1, 1, 0},
    {"dec-q5-window", 2, 8, 2, 5, 800, 64, DA_F16, 1, 0, DA_SEQLENS_KV, 100, -1, 1, 0},
    {"dec-q4-window-lr", 2, 4, 1, 4, 500, 128, DA_F32, 0, 1, DA_SEQLENS_NONE, 60, 2, 1, 0},
    {"dec-q16-window-causal", 1, 4, 4, 16, 1000, 64, DA_BF16, 1, 2, DA_SEQLENS_KV, 33, -1, 1, 0},
    {"dec-packed", 4, 8, 2, 3, 400, 64, DA_F16, 1, 0, DA_SEQLENS_PACKED, -1, -1, 1, 0},
    {"dec-packed-bshd-hd59", 3, 4, 1, 2, 300, 59, DA_F32, 0, 1, DA_SEQLENS_PACKED, 50, -1, 1, 0},
    {"dec-q2-mha", 2, 4, 4, 2, 256, 128, DA_F32, 1, 0, DA_SEQLENS_KV, -1, -1, 1, 0},
    {"dec-few-keys", 2, 8, 2, 1, 7, 64, DA_F32, 1, 0, DA_SEQLENS_KV, -1, -1, 1, 0},
    {"dec-q16-short-kv", 3, 4, 2, 16, 10, 64, DA_F32, 1, 0, DA_SEQLENS_KV, -1, -1, 1, 0},
};

/* The rows per kv head up to which the CPU backend picks the decode path
 * itself (DEC_ROWS_AUTO in lib/cpu_backend.c). */
#define DEC_ROWS_AUTO 64

/* Every decode case three ways: DISTRATTN_CPU_DECODE unset (the backend's
 * choice, checked against the shape), 0 (the blocked path) and 1 (the
 * decode path): each against the float64 reference. */
static void test_decode_cases(void **state) {
  (void)state;
  static const char *const modes[3] = {NULL, "0", "1"};
  for (int m = 0; m < 3; m++) {
    if (modes[m])
      setenv("DISTRATTN_CPU_DECODE", modes[m], 1);
    else
      unsetenv("DISTRATTN_CPU_DECODE");
    for (size_t i = 0; i < sizeof dcases / sizeof dcases[0]; i++) {
      const ecase *c = &dcases[i];
      int rows = c->h / c->kvh * c->sq;
      g_expect_decode = m == 1 ? 0 : m == 2 ? 1 : rows <= DEC_ROWS_AUTO;
      run_ecase(DA_BACKEND_CPU, c, 0xdec0000u + i, NULL);
    }
  }
  g_expect_decode = -1;
  unsetenv("DISTRATTN_CPU_DECODE");
}

/* DISTRATTN_CPU_DECODE: a bad value fails the context; 1 refuses, by name,
 * a plan the decode path cannot run (DistrAttention, GEMM, too many rows)
 * instead of running another path. */
static void test_decode_env(void **state) {
  (void)state;
  da_context *ctx = NULL;
  setenv("DISTRATTN_CPU_DECODE", "2", 1);
  assert_int_equal(da_context_create(&ctx, DA_BACKEND_CPU, -1), DA_ERR_INVALID_ARG);
  assert_non_null(strstr(da_context_last_error(NULL), "DISTRATTN_CPU_DECODE"));
  setenv("DISTRATTN_CPU_DECODE", "1", 1);
  TU_CHECK(ctx, da_context_create(&ctx, DA_BACKEND_CPU, -1));
  da_attn_desc d;
  da_attn_desc_init(&d);
  d.batch = 1, d.heads = 8, d.kv_heads = 2, d.seq_q = 1, d.seq_k = 64, d.head_dim = 64;
  da_plan *p = NULL;
  d.group_size = 2;
  assert_int_equal(da_plan_create(ctx, &d, &p), DA_ERR_UNSUPPORTED);
  assert_non_null(strstr(da_context_last_error(ctx), "DISTRATTN_CPU_DECODE=1"));
  d.group_size = 1, d.algo = DA_ALGO_GEMM;
  assert_int_equal(da_plan_create(ctx, &d, &p), DA_ERR_UNSUPPORTED);
  d.algo = DA_ALGO_AUTO, d.seq_q = 65; /* 4 x 65 rows per kv head */
  assert_int_equal(da_plan_create(ctx, &d, &p), DA_ERR_UNSUPPORTED);
  assert_non_null(strstr(da_context_last_error(ctx), "query rows per kv head"));
  d.seq_q = 64;
  TU_CHECK(ctx, da_plan_create(ctx, &d, &p));
  da_plan_destroy(p);
  da_context_destroy(ctx);
  unsetenv("DISTRATTN_CPU_DECODE");
}

/* -------------------------------------------------- LSE: merging halves */

/* Two calls over the keys [0, n1) and [n1, sk) of one K and V (the second
 * through offsets into the same buffers), merged with their LSE, equal the
 * one call over all keys; so do their LSEs. */
static void test_lse_merge(void **state) {
  da_backend be = (da_backend)(intptr_t)*state;
  TU_NEED_BACKEND(be);
  da_context *ctx = NULL;
  TU_CHECK(ctx, da_context_create(&ctx, be, -1));
  tu_rng rng;
  tu_rng_init(&rng, tu_seed() ^ 0x15e);
  const int B = 2, H = 4, KVH = 2, SQ = 50, SK = 333, HD = 64, N1 = 140;
  da_attn_desc d;
  da_attn_desc_init(&d);
  d.batch = B, d.heads = H, d.kv_heads = KVH, d.seq_q = SQ, d.head_dim = HD;
  size_t nq = (size_t)B * H * SQ * HD, nk = (size_t)B * KVH * SK * HD, nl = (size_t)B * H * SQ;
  hbuf bq, bk, bv, bo[3], bl[3];
  float *q = hb_new(ctx, &bq, nq * 4), *k = hb_new(ctx, &bk, nk * 4), *v = hb_new(ctx, &bv, nk * 4);
  float *o[3], *l[3];
  tu_fill(q, DA_F32, nq, &rng, 1.0);
  tu_fill(k, DA_F32, nk, &rng, 1.0);
  tu_fill(v, DA_F32, nk, &rng, 1.0);
  hb_push(ctx, &bq), hb_push(ctx, &bk), hb_push(ctx, &bv);
  const int part[3][2] = {{0, SK}, {0, N1}, {N1, SK}};
  for (int c = 0; c < 3; c++) {
    o[c] = hb_new(ctx, &bo[c], nq * 4), l[c] = hb_new(ctx, &bl[c], nl * 4);
    tu_poison(o[c], nq * 4), tu_poison(l[c], nl * 4);
    hb_push(ctx, &bo[c]), hb_push(ctx, &bl[c]);
    da_attn_ext x;
    da_attn_ext_init(&x);
    x.lse = 1;
    /* K and V keep the full tensor's strides: a window of its rows */
    x.k_stride[0] = x.v_stride[0] = (long long)KVH * SK * HD;
    x.k_stride[1] = x.v_stride[1] = (long long)SK * HD;
    x.k_stride[2] = x.v_stride[2] = HD;
    x.q_stride[0] = x.o_stride[0] = (long long)H * SQ * HD;
    x.q_stride[1] = x.o_stride[1] = (long long)SQ * HD;
    x.q_stride[2] = x.o_stride[2] = HD;
    d.seq_k = part[c][1] - part[c][0];
    da_plan *p = NULL;
    TU_CHECK(ctx, da_plan_create_ext(ctx, &d, &x, &p));
    da_attn_args a;
    da_attn_args_init(&a);
    a.q = bq.b, a.k = bk.b, a.v = bv.b, a.o = bo[c].b, a.lse = bl[c].b;
    a.k_offset = a.v_offset = (size_t)part[c][0] * HD;
    TU_CHECK(ctx, da_attention_ext(p, &a));
    da_plan_destroy(p);
  }
  TU_CHECK(ctx, da_context_synchronize(ctx));
  for (int c = 0; c < 3; c++) hb_pull(ctx, &bo[c]), hb_pull(ctx, &bl[c]);
  double num = 0, den = 0, lworst = 0;
  for (size_t r = 0; r < nl; r++) {
    double l1 = l[1][r], l2 = l[2][r], m = l1 > l2 ? l1 : l2;
    double w1 = exp(l1 - m), w2 = exp(l2 - m), lm = m + log(w1 + w2);
    if (!(fabs(lm - l[0][r]) <= lworst)) lworst = fabs(lm - l[0][r]);
    for (int c = 0; c < HD; c++) {
      size_t e = r * HD + c;
      double y = (w1 * o[1][e] + w2 * o[2][e]) / (w1 + w2), z = o[0][e];
      num += (y - z) * (y - z);
      den += z * z;
    }
  }
  double err = sqrt(num / den);
  if (!(err < 2e-6) || !(lworst < 2e-5))
    fail_msg("%s: merged halves differ from one call: O %.3e, LSE %.3e [seed %llu]",
             da_backend_name(be), err, lworst, (unsigned long long)tu_seed());
  for (int c = 0; c < 3; c++) hb_free(&bo[c]), hb_free(&bl[c]);
  hb_free(&bq), hb_free(&bk), hb_free(&bv);
  da_context_destroy(ctx);
}

/* ----------------------------------- DistrAttention under strides, lengths */

/* G = 2 and 4 with B,S,H,D strides, and a packed batch, give exactly what
 * dense calls on the same rows give (hash tiles follow each sequence's
 * rows). */
static void test_groups_equal_dense(void **state) {
  da_backend be = (da_backend)(intptr_t)*state;
  TU_NEED_BACKEND(be);
  da_context *ctx = NULL;
  TU_CHECK(ctx, da_context_create(&ctx, be, -1));
  tu_rng rng;
  tu_rng_init(&rng, tu_seed() ^ 0x96);
  enum { NS = 3 };
  const int H = 4, HD = 64;
  const int lq[NS] = {200, 0, 77}, lk[NS] = {230, 40, 77};
  int cq[NS + 1] = {0}, ck[NS + 1] = {0};
  for (int s = 0; s < NS; s++) cq[s + 1] = cq[s] + lq[s], ck[s + 1] = ck[s] + lk[s];
  for (int G = 2; G <= 4; G *= 2) {
    /* packed [rows][heads][dim] Q, K, V */
    size_t nq = (size_t)cq[NS] * H * HD, nk = (size_t)ck[NS] * H * HD;
    hbuf bq, bk, bv, bo, bcq, bck;
    float *q = hb_new(ctx, &bq, nq * 4), *k = hb_new(ctx, &bk, nk * 4);
    float *v = hb_new(ctx, &bv, nk * 4), *o = hb_new(ctx, &bo, nq * 4);
    tu_fill(q, DA_F32, nq, &rng, 1.0);
    tu_fill(k, DA_F32, nk, &rng, 1.0);
    tu_fill(v, DA_F32, nk, &rng, 1.0);
    tu_poison(o, nq * 4);
    memcpy(hb_new(ctx, &bcq, sizeof cq), cq, sizeof cq);
    memcpy(hb_new(ctx, &bck, sizeof ck), ck, sizeof ck);
    hbuf *up[6] = {&bq, &bk, &bv, &bo, &bcq, &bck};
    for (int i = 0; i < 6; i++) hb_push(ctx, up[i]);
    da_attn_desc d;
    da_attn_desc_init(&d);
    d.batch = NS, d.heads = H, d.seq_q = 200, d.seq_k = 230, d.head_dim = HD, d.causal = 1;
    d.group_size = G, d.hash_block = 64;
    da_attn_ext x;
    da_attn_ext_init(&x);
    x.seqlens = DA_SEQLENS_PACKED;
    da_plan *p = NULL;
    TU_CHECK(ctx, da_plan_create_ext(ctx, &d, &x, &p));
    da_attn_args a;
    da_attn_args_init(&a);
    a.q = bq.b, a.k = bk.b, a.v = bv.b, a.o = bo.b, a.cu_seqlens_q = bcq.b, a.cu_seqlens_k = bck.b;
    a.rows_q = (size_t)cq[NS], a.rows_k = (size_t)ck[NS];
    TU_CHECK(ctx, da_attention_ext(p, &a));
    TU_CHECK(ctx, da_context_synchronize(ctx));
    hb_pull(ctx, &bo);
    da_plan_destroy(p);
    for (int s = 0; s < NS; s++) {
      if (lq[s] == 0) continue;
      /* the dense call: this sequence's rows, re-laid to [heads][rows][dim] */
      da_attn_desc ds = d;
      ds.batch = 1, ds.seq_q = lq[s], ds.seq_k = lk[s];
      size_t sq = (size_t)H * lq[s] * HD, sk = (size_t)H * lk[s] * HD;
      float *dq = malloc(sq * 4), *dk = malloc(sk * 4), *dv = malloc(sk * 4), *dout = malloc(sq * 4);
      assert_non_null(dq), assert_non_null(dk), assert_non_null(dv), assert_non_null(dout);
      for (int h = 0; h < H; h++) {
        for (int i = 0; i < lq[s]; i++)
          memcpy(dq + ((size_t)h * lq[s] + i) * HD, q + ((size_t)(cq[s] + i) * H + h) * HD, HD * 4);
        for (int j = 0; j < lk[s]; j++) {
          memcpy(dk + ((size_t)h * lk[s] + j) * HD, k + ((size_t)(ck[s] + j) * H + h) * HD, HD * 4);
          memcpy(dv + ((size_t)h * lk[s] + j) * HD, v + ((size_t)(ck[s] + j) * H + h) * HD, HD * 4);
        }
      }
      da_plan *pd = NULL;
      TU_CHECK(ctx, da_plan_create(ctx, &ds, &pd));
      TU_CHECK(ctx, da_attention_host(pd, dq, dk, dv, dout));
      da_plan_destroy(pd);
      size_t diff = 0;
      for (int h = 0; h < H; h++)
        for (int i = 0; i < lq[s]; i++)
          if (memcmp(dout + ((size_t)h * lq[s] + i) * HD, o + ((size_t)(cq[s] + i) * H + h) * HD,
                     HD * 4) != 0)
            diff++;
      if (diff)
        fail_msg("%s: G=%d, sequence %d (%d x %d): %zu rows differ from the dense call [seed %llu]",
                 da_backend_name(be), G, s, lq[s], lk[s], diff, (unsigned long long)tu_seed());
      free(dq), free(dk), free(dv), free(dout);
    }
    for (int i = 0; i < 6; i++) hb_free(up[i]);
  }
  da_context_destroy(ctx);
}

/* ------------------------------------------ a NaN alone in a key tile */

/* A NaN logit makes its row NaN (SPEC 2, non-finite inputs), also where it
 * is the only key of a key tile that the row sees and no logit before it
 * rose above -inf. Query row 0 of head 0 sees the keys [127, 256) (a left
 * window of 125 with 4 queries and 256 keys) and K[127] holds a NaN: the
 * row's first key tile of any power-of-two width up to 128 (the fused
 * kernels' BN, checked where reported) ends at key 127, so it holds one
 * visible logit, NaN. That row's O and LSE must be NaN, as the float64
 * reference's; every other row (the later queries, which do not see key
 * 127, and head 1, whose kv head is finite) must match the reference. Each
 * kernel that can take the shape runs it: on the CPU the blocked path and
 * the split-KV decode, on OpenCL the rows and tiled kernels and the decode
 * kernels in both shapes, with chunks of 128 keys (environment overrides,
 * checked through da_plan_get_kernel). */
enum { NT_H = 2, NT_SQ = 4, NT_SK = 256, NT_HD = 64, NT_WL = 125, NT_KEY = 127 };

/* Sets the variables of env (name, value pairs; NULL ends) and keeps their
 * old values in old (strdup'd; NULL: unset); nt_env_pop puts them back. */
static void nt_env_push(const char *const *env, char **old) {
  for (int i = 0; env[i]; i += 2) {
    const char *o = getenv(env[i]);
    old[i / 2] = o ? strdup(o) : NULL;
    setenv(env[i], env[i + 1], 1);
  }
}
static void nt_env_pop(const char *const *env, char **old) {
  for (int i = 0; env[i]; i += 2) {
    if (old[i / 2]) setenv(env[i], old[i / 2], 1);
    else unsetenv(env[i]);
    free(old[i / 2]);
  }
}

/* One run on backend be with the variables of env set from the context's
 * creation to the plan's; the plan must report the kernel name (and, where
 * not NULL, variant; where not 0, chunk). Returns 1 (having printed why) when the results are
 * wrong, so that every kernel is tried before the test fails. */
static int nan_tile_run(da_backend be, const char *const *env, const char *name,
                        const char *variant, long long chunk) {
  char *old[8] = {NULL};
  nt_env_push(env, old);
  tbufs t;
  memset(&t, 0, sizeof t);
  TU_CHECK(t.ctx, da_context_create(&t.ctx, be, -1));
  da_attn_desc d;
  da_attn_desc_init(&d);
  d.batch = 1, d.heads = NT_H, d.kv_heads = NT_H, d.seq_q = NT_SQ, d.seq_k = NT_SK;
  d.head_dim = NT_HD;
  da_attn_ext x;
  da_attn_ext_init(&x);
  x.lse = 1, x.window_left = NT_WL;
  da_plan *p = NULL;
  TU_CHECK(t.ctx, da_plan_create_ext(t.ctx, &d, &x, &p));
  nt_env_pop(env, old);
  da_kernel_info k;
  da_kernel_info_init(&k);
  TU_CHECK(t.ctx, da_plan_get_kernel(p, &k));
  if (strcmp(k.name, name) || (variant && strcmp(k.variant, variant)) ||
      (chunk && k.chunk != chunk))
    fail_msg("%s: the plan runs %s/%s (chunk %lld), not %s/%s (chunk %lld)", da_backend_name(be),
             k.name, k.variant, k.chunk, name, variant ? variant : "*", chunk);
  if ((!strcmp(name, "rows") || !strcmp(name, "tiled")) && k.tile_cols &&
      (NT_KEY + 1) % k.tile_cols)
    fail_msg("%s/%s: key tiles of %d keys: key %d does not end one", k.name, k.variant,
             k.tile_cols, NT_KEY);

  tu_rng rng;
  tu_rng_init(&rng, tu_seed() ^ 0x7a7u);
  const size_t nq = (size_t)NT_H * NT_SQ * NT_HD, nk = (size_t)NT_H * NT_SK * NT_HD;
  const size_t nl = (size_t)NT_H * NT_SQ;
  float *hq = hb_new(t.ctx, &t.q, nq * 4), *hk = hb_new(t.ctx, &t.k, nk * 4);
  float *hv = hb_new(t.ctx, &t.v, nk * 4), *ho = hb_new(t.ctx, &t.o, nq * 4);
  float *hl = hb_new(t.ctx, &t.lse, nl * 4);
  tu_fill(hq, DA_F32, nq, &rng, 1.0);
  tu_fill(hk, DA_F32, nk, &rng, 1.0);
  tu_fill(hv, DA_F32, nk, &rng, 1.0);
  hk[(size_t)NT_KEY * NT_HD + 5] = NAN; /* kv head 0, key 127, column 5 */
  tu_poison(ho, nq * 4);
  tu_poison(hl, nl * 4);
  hb_push(t.ctx, &t.q), hb_push(t.ctx, &t.k), hb_push(t.ctx, &t.v);
  hb_push(t.ctx, &t.o), hb_push(t.ctx, &t.lse);
  da_attn_args a;
  da_attn_args_init(&a);
  a.q = t.q.b, a.k = t.k.b, a.v = t.v.b, a.o = t.o.b, a.lse = t.lse.b;
  TU_CHECK(t.ctx, da_attention_ext(p, &a));
  TU_CHECK(t.ctx, da_context_synchronize(t.ctx));
  hb_pull(t.ctx, &t.o), hb_pull(t.ctx, &t.lse);

  double *ref = malloc(sizeof(double) * nq), *rlse = malloc(sizeof(double) * nl);
  assert_non_null(ref);
  assert_non_null(rlse);
  int q0 = 0, lq = NT_SQ, k0 = 0, lk = NT_SK;
  tlens L = {&q0, &lq, &k0, &lk};
  tview qv, kv;
  make_view(0, 1, NT_H, NT_SQ, NT_HD, &qv, 0);
  make_view(0, 1, NT_H, NT_SK, NT_HD, &kv, 0);
  ref_ext(&d, NT_WL, -1, hq, &qv, hk, &kv, hv, &kv, &L, ref, rlse);
  double num = 0, den = 0, lworst = 0;
  int bad = 0;
  for (size_t r = 0; r < nl; r++) {
    const float *o = ho + r * NT_HD;
    if (r == 0) { /* head 0, query 0: the row that sees the NaN */
      for (int c = 0; c < NT_HD; c++)
        if (!isnan(ref[c])) fail_msg("the reference's row 0 is not NaN at %d", c);
      size_t fin = 0;
      for (int c = 0; c < NT_HD; c++) fin += !isnan(o[c]);
      if (fin || !isnan(hl[0]))
        bad = 1, print_error("%s %s/%s (key tiles of %d): row 0 sees one key of its first key "
                             "tile (key %d), a NaN logit, yet %zu of its %d outputs are not "
                             "NaN (O[0] = %g) and its LSE is %g; the reference gives NaN "
                             "[seed %llu]\n",
                             da_backend_name(be), k.name, k.variant, k.tile_cols, NT_KEY, fin,
                             NT_HD, (double)o[0], (double)hl[0], (unsigned long long)tu_seed());
      continue;
    }
    for (int c = 0; c < NT_HD; c++) {
      const double xo = o[c], y = ref[r * NT_HD + c];
      if (!isfinite(xo) || !isfinite(y)) num = INFINITY;
      num += (xo - y) * (xo - y);
      den += y * y;
    }
    const double dl = fabs((double)hl[r] - rlse[r]);
    if (!(dl <= lworst)) lworst = dl;
  }
  const double err = sqrt(num / den);
  if (!(err <= tu_bound(DA_F32)) || !(lworst <= 1e-5))
    bad = 1, print_error("%s %s/%s: the rows that do not see the NaN: O error %.3e, LSE %.3e "
                         "[seed %llu]\n",
                         da_backend_name(be), k.name, k.variant, err, lworst,
                         (unsigned long long)tu_seed());
  free(ref), free(rlse);
  da_plan_destroy(p);
  da_context *ctx = t.ctx;
  tbufs_free(&t);
  da_context_destroy(ctx);
  return bad;
}

static void test_nan_tile_cpu(void **state) {
  (void)state;
  TU_NEED_BACKEND(DA_BACKEND_CPU);
  static const char *const blocked[] = {"DISTRATTN_CPU_DECODE", "0", NULL};
  static const char *const decode[] = {"DISTRATTN_CPU_DECODE", "1", NULL};
  int bad = nan_tile_run(DA_BACKEND_CPU, blocked, "fused", NULL, 0);
  bad += nan_tile_run(DA_BACKEND_CPU, decode, "split-kv decode", NULL, 0);
  if (bad) fail_msg("%d of 2 CPU kernels wrong on a NaN alone in a key tile", bad);
}

static void test_nan_tile_opencl(void **state) {
  (void)state;
  TU_NEED_BACKEND(DA_BACKEND_OPENCL);
  static const char *const rows[] = {"DISTRATTN_CL_DECODE", "0", "DISTRATTN_CL_KERNEL", "rows",
                                     NULL};
  static const char *const tiled[] = {"DISTRATTN_CL_DECODE", "0", "DISTRATTN_CL_KERNEL", "tiled",
                                      NULL};
  /* chunks of 128 keys: the NaN is alone in its chunk too */
  static const char *const dec_rows[] = {"DISTRATTN_CL_DECODE", "1", "DISTRATTN_CL_KERNEL",
                                         "rows", "DISTRATTN_CL_DECODE_CHUNK", "128", NULL};
  static const char *const dec_tiled[] = {"DISTRATTN_CL_DECODE", "1", "DISTRATTN_CL_KERNEL",
                                          "tiled", "DISTRATTN_CL_DECODE_CHUNK", "128", NULL};
  int bad = nan_tile_run(DA_BACKEND_OPENCL, rows, "rows", NULL, 0);
  bad += nan_tile_run(DA_BACKEND_OPENCL, tiled, "tiled", NULL, 0);
  bad += nan_tile_run(DA_BACKEND_OPENCL, dec_rows, "split-kv decode", "rows", 128);
  bad += nan_tile_run(DA_BACKEND_OPENCL, dec_tiled, "split-kv decode", "tiled", 128);
  if (bad) fail_msg("%d of 4 OpenCL kernels wrong on a NaN alone in a key tile", bad);
}

/* ----------------------------------------------------------- refusals */

#define EXPECT(call, status, needle)                                                         \
  do {                                                                                       \
    da_status s_ = (call);                                                                   \
    const char *m_ = da_context_last_error(ctx);                                             \
    if (s_ != (status) || !strstr(m_, (needle)))                                             \
      fail_msg("%s: got %s \"%s\", wanted %s naming \"%s\"", #call, da_status_string(s_), m_, \
               da_status_string(status), (needle));                                          \
  } while (0)

static void test_refusals(void **state) {
  (void)state;
  da_context *ctx = NULL;
  TU_CHECK(ctx, da_context_create(&ctx, DA_BACKEND_CPU, -1));
  da_attn_desc d;
  da_attn_desc_init(&d);
  d.batch = 2, d.heads = 2, d.seq_q = 8, d.seq_k = 16, d.head_dim = 16;
  da_attn_ext x;
  da_plan *p = NULL;

  da_attn_ext_init(&x);
  x.struct_size = 0;
  EXPECT(da_plan_create_ext(ctx, &d, &x, &p), DA_ERR_INVALID_ARG, "struct_size");
  da_attn_ext_init(&x);
  x.q_stride[2] = -16, x.q_stride[1] = 128, x.q_stride[0] = 256;
  EXPECT(da_plan_create_ext(ctx, &d, &x, &p), DA_ERR_INVALID_ARG, "q_stride[2]");
  da_attn_ext_init(&x);
  x.o_stride[0] = 256, x.o_stride[1] = 16, x.o_stride[2] = 16; /* heads and rows collide */
  EXPECT(da_plan_create_ext(ctx, &d, &x, &p), DA_ERR_INVALID_ARG, "share an address");
  da_attn_ext_init(&x);
  x.seqlens = DA_SEQLENS_PACKED;
  x.k_stride[0] = 1, x.k_stride[1] = 16, x.k_stride[2] = 32;
  EXPECT(da_plan_create_ext(ctx, &d, &x, &p), DA_ERR_INVALID_ARG, "batch stride must be 0");
  da_attn_ext_init(&x);
  x.seqlens = (da_seqlens)7;
  EXPECT(da_plan_create_ext(ctx, &d, &x, &p), DA_ERR_INVALID_ARG, "ext.seqlens");
  da_attn_ext_init(&x);
  x.window_left = -2;
  EXPECT(da_plan_create_ext(ctx, &d, &x, &p), DA_ERR_INVALID_ARG, "window_left");
  da_attn_ext_init(&x);
  x.lse = 2;
  EXPECT(da_plan_create_ext(ctx, &d, &x, &p), DA_ERR_INVALID_ARG, "ext.lse");

  /* a KV-length plan: calls that lack or misuse their arguments */
  da_attn_ext_init(&x);
  x.seqlens = DA_SEQLENS_KV, x.lse = 1;
  TU_CHECK(ctx, da_plan_create_ext(ctx, &d, &x, &p));
  size_t nq = 2 * 2 * 8 * 16, nk = 2 * 2 * 16 * 16;
  float *q = calloc(nq, 4), *k = calloc(nk, 4), *v = calloc(nk, 4), *o = calloc(nq, 4);
  float *l = calloc(2 * 2 * 8, 4);
  int lens[2] = {16, 17};
  da_buffer *bq, *bk, *bv, *bo, *bl, *bn;
  TU_CHECK(ctx, da_buffer_wrap(ctx, q, nq * 4, &bq));
  TU_CHECK(ctx, da_buffer_wrap(ctx, k, nk * 4, &bk));
  TU_CHECK(ctx, da_buffer_wrap(ctx, v, nk * 4, &bv));
  TU_CHECK(ctx, da_buffer_wrap(ctx, o, nq * 4, &bo));
  TU_CHECK(ctx, da_buffer_wrap(ctx, l, 2 * 2 * 8 * 4, &bl));
  TU_CHECK(ctx, da_buffer_wrap(ctx, lens, sizeof lens, &bn));
  da_attn_args a;
  da_attn_args_init(&a);
  a.q = bq, a.k = bk, a.v = bv, a.o = bo, a.lse = bl;
  EXPECT(da_attention_ext(p, &a), DA_ERR_INVALID_ARG, "seqlens_k is NULL");
  a.seqlens_k = bn;
  EXPECT(da_attention_ext(p, &a), DA_ERR_INVALID_ARG, "seqlens_k[1] = 17");
  lens[1] = 5;
  a.k_offset = 1;
  EXPECT(da_attention_ext(p, &a), DA_ERR_INVALID_ARG, "k holds");
  a.k_offset = 0;
  a.lse = bo;
  EXPECT(da_attention_ext(p, &a), DA_ERR_INVALID_ARG, "overlaps");
  a.lse = bl;
  TU_CHECK(ctx, da_attention_ext(p, &a));
  EXPECT(da_attention(p, bq, bk, bv, bo), DA_ERR_INVALID_ARG, "da_attention_ext");
  EXPECT(da_attention_host(p, q, k, v, o), DA_ERR_INVALID_ARG, "da_attn_ext");
  a.struct_size = 3;
  EXPECT(da_attention_ext(p, &a), DA_ERR_INVALID_ARG, "struct_size");
  da_plan_destroy(p);

  /* a plain plan given LSE or lengths */
  TU_CHECK(ctx, da_plan_create(ctx, &d, &p));
  da_attn_args_init(&a);
  a.q = bq, a.k = bk, a.v = bv, a.o = bo, a.lse = bl;
  EXPECT(da_attention_ext(p, &a), DA_ERR_INVALID_ARG, "without ext.lse");
  a.lse = NULL, a.seqlens_k = bn;
  EXPECT(da_attention_ext(p, &a), DA_ERR_INVALID_ARG, "not DA_SEQLENS_KV");
  a.seqlens_k = NULL;
  TU_CHECK(ctx, da_attention_ext(p, &a)); /* the plain plan through the ext call */
  da_attn_ext g;
  da_attn_ext_init(&g);
  TU_CHECK(ctx, da_plan_get_ext(p, &g));
  assert_int_equal(g.q_stride[2], 16);
  assert_int_equal(g.q_stride[1], 8 * 16);
  assert_int_equal(g.k_stride[1], 16 * 16);
  assert_int_equal(g.window_left, -1);
  da_plan_destroy(p);
  da_buffer *bs[6] = {bq, bk, bv, bo, bl, bn};
  for (int i = 0; i < 6; i++) da_buffer_destroy(bs[i]);
  free(q), free(k), free(v), free(o), free(l);
  da_context_destroy(ctx);
}

/* A GPU backend's GEMM plans refuse the options by name and DA_ALGO_AUTO
 * takes the fused kernel: the small descriptor with LSE asked for (*d, *x
 * left so for further checks). */
static void gemm_refuses_auto_fuses(da_context *ctx, da_attn_desc *d, da_attn_ext *x) {
  *d = tu_small_desc();
  da_attn_ext_init(x);
  x->lse = 1;
  da_plan *p = NULL;
  d->algo = DA_ALGO_GEMM;
  EXPECT(da_plan_create_ext(ctx, d, x, &p), DA_ERR_UNSUPPORTED, "DA_ALGO_GEMM does not support");
  assert_null(p);
  d->algo = DA_ALGO_AUTO; /* the fused kernel */
  TU_CHECK(ctx, da_plan_create_ext(ctx, d, x, &p));
  da_attn_desc got;
  TU_CHECK(ctx, da_plan_get_desc(p, &got));
  assert_int_equal(got.algo, DA_ALGO_FUSED);
  da_plan_destroy(p);
}

/* The decode cases on the CUDA backend with DISTRATTN_CUDA_DECODE unset
 * (its own choice: the split-KV kernels up to 16 rows per kv head, 4 for f32 and head_dim 256), 0 (the
 * attention kernels) and 1 (the split-KV kernels for every case they take:
 * head_dim 64, 128 or 256; K and V rows 16-byte aligned, else the
 * attention kernels), each against the float64 reference; plus a long KV
 * cache of mixed lengths. With 1 a plan they cannot run is refused. */
static void test_decode_cuda(void **state) {
  (void)state;
  TU_NEED_BACKEND(DA_BACKEND_CUDA);
  static const char *const modes[3] = {NULL, "0", "1"};
  static const ecase longc[] = {
      {"dec-long-q1-32/8-f16", 2, 32, 8, 1, 9000, 128, DA_F16, 1, 0, DA_SEQLENS_KV, -1, -1, 1, 0},
      {"dec-long-q3-16/2-bf16-bshd", 2, 16, 2, 3, 5000, 256, DA_BF16, 1, 3, DA_SEQLENS_NONE, -1, -1, 1, 0},
      {"dec-long-q1-8/8-f32", 1, 8, 8, 1, 4099, 64, DA_F32, 0, 0, DA_SEQLENS_NONE, 700, -1, 1, 0},
  };
  for (int m = 0; m < 3; m++) {
    if (modes[m])
      setenv("DISTRATTN_CUDA_DECODE", modes[m], 1);
    else
      unsetenv("DISTRATTN_CUDA_DECODE");
    for (size_t i = 0; i < sizeof dcases / sizeof dcases[0]; i++) {
      const ecase *c = &dcases[i];
      if (m == 2 && c->hd != 64 && c->hd != 128 && c->hd != 256) continue;
      run_ecase(DA_BACKEND_CUDA, c, 0xdec0000u + i, NULL);
    }
    for (size_t i = 0; i < sizeof longc / sizeof longc[0]; i++)
      run_ecase(DA_BACKEND_CUDA, &longc[i], 0xdec1000u + i, NULL);
  }
  setenv("DISTRATTN_CUDA_DECODE", "1", 1);
  da_context *ctx = NULL;
  TU_CHECK(ctx, da_context_create(&ctx, DA_BACKEND_CUDA, -1));
  da_attn_desc d;
  da_attn_desc_init(&d);
  d.batch = 1, d.heads = 8, d.kv_heads = 2, d.seq_q = 1, d.seq_k = 64, d.head_dim = 59;
  da_plan *p = NULL;
  EXPECT(da_plan_create(ctx, &d, &p), DA_ERR_UNSUPPORTED, "DISTRATTN_CUDA_DECODE=1");
  d.head_dim = 64, d.group_size = 2;
  EXPECT(da_plan_create(ctx, &d, &p), DA_ERR_UNSUPPORTED, "group_size");
  d.group_size = 1, d.seq_q = 17, d.algo = DA_ALGO_FUSED; /* 4 x 17 rows per kv head */
  EXPECT(da_plan_create(ctx, &d, &p), DA_ERR_UNSUPPORTED, "query rows per kv head");
  d.seq_q = 16;
  TU_CHECK(ctx, da_plan_create(ctx, &d, &p));
  da_plan_destroy(p);
  setenv("DISTRATTN_CUDA_DECODE", "2", 1);
  EXPECT(da_plan_create(ctx, &d, &p), DA_ERR_INVALID_ARG, "DISTRATTN_CUDA_DECODE");
  unsetenv("DISTRATTN_CUDA_DECODE");
  da_context_destroy(ctx);
}

/* The rows per kv head up to which the OpenCL backend picks its split-KV
 * decode kernels itself (DEC_ROWS_AUTO in cl/cl_plan.c). */
#define CL_DEC_ROWS_AUTO 16

/* The decode cases on the OpenCL backend with DISTRATTN_CL_DECODE unset
 * (its own choice: the split-KV kernels up to 16 rows per kv head), 0 (the
 * fused kernel: only a few cases, that kernel has its own tests) and 1 (the
 * split-KV kernels for the cases unset leaves to the fused kernel), each
 * against the float64 reference,
 * plus a KV cache cut into many chunks (DISTRATTN_CL_DECODE_CHUNK). Which
 * kernels ran is seen in the results: the same inputs give bit for bit the
 * same O and LSE under unset and 1, and another O under 0. With 1 a plan the
 * decode kernels cannot run is refused by name, and bad values of both
 * variables fail the plan. Under tests/cl-tiled-check.sh
 * (DISTRATTN_CL_KERNEL=tiled) this runs the decode kernel's GPU shape. */
static void test_decode_opencl(void **state) {
  (void)state;
  TU_NEED_BACKEND(DA_BACKEND_OPENCL);
  static const char *const modes[3] = {NULL, "0", "1"};
  static const ecase chunked[] = {
      {"dec-chunks-q1-32/8-f16", 2, 32, 8, 1, 1500, 128, DA_F16, 1, 0, DA_SEQLENS_KV, -1, -1, 1, 0},
      {"dec-chunks-q3-4/2-bf16-window", 3, 4, 2, 3, 1000, 64, DA_BF16, 1, 1, DA_SEQLENS_KV, 300, -1, 1, 0},
      {"dec-chunks-q2-8/2-f32-packed-hd59", 3, 8, 2, 2, 700, 59, DA_F32, 0, 2, DA_SEQLENS_PACKED, -1, -1, 1, 0},
      {"dec-chunks-q4-8/1-f32-lr", 2, 8, 1, 4, 800, 128, DA_F32, 0, 0, DA_SEQLENS_NONE, 200, 3, 1, 0},
  };
  /* which kernels ran: unset and 1 agree bit for bit, 0 does not (on
   * dec-q1-f32-128: f32, 4 rows per kv head) */
  const size_t cmp = 6;
  assert_int_equal(dcases[cmp].t, DA_F32);
  eresult r[3];
  for (int m = 0; m < 3; m++) {
    if (modes[m])
      setenv("DISTRATTN_CL_DECODE", modes[m], 1);
    else
      unsetenv("DISTRATTN_CL_DECODE");
    for (size_t i = 0; i < sizeof dcases / sizeof dcases[0]; i++) {
      const ecase *c = &dcases[i];
      const int mine = c->h / c->kvh * c->sq <= CL_DEC_ROWS_AUTO;
      /* 0: a few cases; unset: those it takes (the rest as 0); 1: the
       * rest (those it shares with unset run the same kernels) */
      if (i != cmp && (m == 1 ? i % 4 != 0 : m == 0 ? !mine : mine)) continue;
      run_ecase(DA_BACKEND_OPENCL, c, 0xdec0000u + i, i == cmp ? &r[m] : NULL);
    }
  }
  assert_int_equal(r[0].no, r[2].no);
  assert_int_equal(memcmp(r[0].o, r[2].o, r[0].no * 4), 0);
  assert_int_equal(memcmp(r[0].lse, r[2].lse, r[0].nlse * 4), 0);
  assert_int_not_equal(memcmp(r[1].o, r[2].o, r[0].no * 4), 0);
  for (int m = 0; m < 3; m++) eresult_free(&r[m]);
  setenv("DISTRATTN_CL_DECODE", "1", 1);
  setenv("DISTRATTN_CL_DECODE_CHUNK", "128", 1);
  for (size_t i = 0; i < sizeof chunked / sizeof chunked[0]; i++)
    run_ecase(DA_BACKEND_OPENCL, &chunked[i], 0xdec2000u + i, NULL);
  unsetenv("DISTRATTN_CL_DECODE_CHUNK");

  /* refusals and bad values */
  setenv("DISTRATTN_CL_DECODE", "1", 1);
  da_context *ctx = NULL;
  TU_CHECK(ctx, da_context_create(&ctx, DA_BACKEND_OPENCL, -1));
  da_attn_desc d;
  da_attn_desc_init(&d);
  d.batch = 1, d.heads = 8, d.kv_heads = 2, d.seq_q = 1, d.seq_k = 64, d.head_dim = 64;
  da_plan *p = NULL;
  d.group_size = 2;
  EXPECT(da_plan_create(ctx, &d, &p), DA_ERR_UNSUPPORTED, "DISTRATTN_CL_DECODE=1");
  EXPECT(da_plan_create(ctx, &d, &p), DA_ERR_UNSUPPORTED, "group_size");
  d.group_size = 1, d.seq_q = 65; /* 4 x 65 rows per kv head */
  EXPECT(da_plan_create(ctx, &d, &p), DA_ERR_UNSUPPORTED, "query rows per kv head");
  d.seq_q = 64;
  TU_CHECK(ctx, da_plan_create(ctx, &d, &p));
  da_plan_destroy(p);
  p = NULL;
  d.algo = DA_ALGO_GEMM, d.seq_q = 1;
  EXPECT(da_plan_create(ctx, &d, &p), DA_ERR_UNSUPPORTED, "algo GEMM");
  d.algo = DA_ALGO_AUTO;
  setenv("DISTRATTN_CL_DECODE", "2", 1);
  EXPECT(da_plan_create(ctx, &d, &p), DA_ERR_INVALID_ARG, "DISTRATTN_CL_DECODE");
  setenv("DISTRATTN_CL_DECODE", "1", 1);
  setenv("DISTRATTN_CL_DECODE_CHUNK", "100", 1);
  EXPECT(da_plan_create(ctx, &d, &p), DA_ERR_INVALID_ARG, "DISTRATTN_CL_DECODE_CHUNK");
  setenv("DISTRATTN_CL_DECODE_CHUNK", "64x", 1);
  EXPECT(da_plan_create(ctx, &d, &p), DA_ERR_INVALID_ARG, "DISTRATTN_CL_DECODE_CHUNK");
  unsetenv("DISTRATTN_CL_DECODE_CHUNK");
  unsetenv("DISTRATTN_CL_DECODE");
  assert_null(p);
  da_context_destroy(ctx);
}

/* CUDA: DA_ALGO_GEMM refuses the options by name, DA_ALGO_AUTO takes the
 * fused kernels; the Hopper warpgroup-MMA kernel runs dense plans only
 * (the LSE output allowed), so DISTRATTN_CUDA_WGMMA=1 refuses an ext plan
 * with a window (whatever the GPU) and leaves a dense one, with or without
 * the LSE, to its own checks. */
static void test_refusals_cuda(void **state) {
  (void)state;
  TU_NEED_BACKEND(DA_BACKEND_CUDA);
  da_context *ctx = NULL;
  TU_CHECK(ctx, da_context_create(&ctx, DA_BACKEND_CUDA, -1));
  da_attn_desc d;
  da_attn_ext x;
  gemm_refuses_auto_fuses(ctx, &d, &x);
  da_plan *p = NULL;
  const char *old = getenv("DISTRATTN_CUDA_WGMMA");
  char *saved = old ? strdup(old) : NULL;
  setenv("DISTRATTN_CUDA_WGMMA", "1", 1);
  x.window_left = 2;
  EXPECT(da_plan_create_ext(ctx, &d, &x, &p), DA_ERR_INVALID_ARG, "dense plans only");
  assert_null(p);
  /* the LSE alone keeps a plan dense: refused here for f32 (head_dim 16) on any GPU */
  x.window_left = -1;
  EXPECT(da_plan_create_ext(ctx, &d, &x, &p), DA_ERR_INVALID_ARG, "cannot run this plan");
  assert_null(p);
  if (saved) setenv("DISTRATTN_CUDA_WGMMA", saved, 1);
  else unsetenv("DISTRATTN_CUDA_WGMMA");
  free(saved);
  da_context_destroy(ctx);
}

/* CUDA: a dense plan whose only da_attn_ext option is the LSE runs the
 * kernel the same plan without it runs (on Hopper the warpgroup-MMA one,
 * which writes the LSE; elsewhere the mma.sync one), for f16 and bf16 at
 * head_dim 64 and 128, causal and not; "cuda: ext cases" checks its O and
 * LSE against the float64 reference ("dense-lse-..."). */
static void test_lse_kernel_cuda(void **state) {
  (void)state;
  TU_NEED_BACKEND(DA_BACKEND_CUDA);
  da_context *ctx = NULL;
  TU_CHECK(ctx, da_context_create(&ctx, DA_BACKEND_CUDA, -1));
  for (int i = 0; i < 8; i++) {
    da_attn_desc d = tu_small_desc();
    d.seq_q = d.seq_k = 300; /* not a decode plan */
    d.dtype = i & 1 ? DA_BF16 : DA_F16, d.head_dim = i & 2 ? 128 : 64, d.causal = i >> 2;
    da_attn_ext x;
    da_attn_ext_init(&x);
    da_plan *pd = NULL, *pl = NULL;
    TU_CHECK(ctx, da_plan_create_ext(ctx, &d, &x, &pd));
    x.lse = 1;
    TU_CHECK(ctx, da_plan_create_ext(ctx, &d, &x, &pl));
    da_kernel_info kd, kl;
    da_kernel_info_init(&kd);
    da_kernel_info_init(&kl);
    TU_CHECK(ctx, da_plan_get_kernel(pd, &kd));
    TU_CHECK(ctx, da_plan_get_kernel(pl, &kl));
    da_plan_destroy(pd);
    da_plan_destroy(pl);
    if (strcmp(kd.name, kl.name) || strcmp(kd.name, "simt") == 0)
      fail_msg("%s head_dim %d causal %d: the dense plan runs \"%s\", with the LSE \"%s\"",
               tu_dtype_name(d.dtype), d.head_dim, d.causal, kd.name, kl.name);
  }
  da_context_destroy(ctx);
}

/* OpenCL: with DISTRATTN_CL_KERNEL=tiled (tests/cl-tiled-check.sh runs the
 * "opencl:" tests so) the fused kernel's GPU shape, else the device's own
 * (the rows kernel on CPU devices). Refusing the options on GEMM plans:
 * test_refusals_opencl. */
static void test_refusals_opencl(void **state) {
  (void)state;
  TU_NEED_BACKEND(DA_BACKEND_OPENCL);
  da_context *ctx = NULL;
  TU_CHECK(ctx, da_context_create(&ctx, DA_BACKEND_OPENCL, -1));
  da_attn_desc d;
  da_attn_ext x;
  gemm_refuses_auto_fuses(ctx, &d, &x);
  da_context_destroy(ctx);
}

int main(void) {
  tu_filter_from_env();
  static const da_backend cpu = DA_BACKEND_CPU, cl = DA_BACKEND_OPENCL, cu = DA_BACKEND_CUDA;
  void *const st_cpu = (void *)(intptr_t)cpu, *const st_cl = (void *)(intptr_t)cl;
  void *const st_cu = (void *)(intptr_t)cu;
  const struct CMUnitTest tests[] = {
      {"cpu: ext cases", test_ext_cases, NULL, NULL, st_cpu},
      {"cpu: decode cases", test_decode_cases, NULL, NULL, NULL},
      {"cpu: decode env", test_decode_env, NULL, NULL, NULL},
      {"cpu: G > 1 cases", test_g_cases, NULL, NULL, st_cpu},
      {"cpu: LSE merge", test_lse_merge, NULL, NULL, st_cpu},
      {"cpu: G > 1 equals dense", test_groups_equal_dense, NULL, NULL, st_cpu},
      {"cpu: NaN alone in a key tile", test_nan_tile_cpu, NULL, NULL, NULL},
      {"opencl: ext cases", test_ext_cases, NULL, NULL, st_cl},
      {"opencl: G > 1 cases", test_g_cases, NULL, NULL, st_cl},
      {"opencl: LSE merge", test_lse_merge, NULL, NULL, st_cl},
      {"opencl: G > 1 equals dense", test_groups_equal_dense, NULL, NULL, st_cl},
      {"opencl: ext vs cpu", test_cross_backend, NULL, NULL, st_cl},
      {"opencl: refusals", test_refusals_opencl, NULL, NULL, NULL},
      {"opencl: decode cases", test_decode_opencl, NULL, NULL, NULL},
      {"opencl: NaN alone in a key tile", test_nan_tile_opencl, NULL, NULL, NULL},
      {"cuda: ext cases", test_ext_cases, NULL, NULL, st_cu},
      {"cuda: G > 1 cases", test_g_cases, NULL, NULL, st_cu},
      {"cuda: LSE merge", test_lse_merge, NULL, NULL, st_cu},
      {"cuda: G > 1 equals dense", test_groups_equal_dense, NULL, NULL, st_cu},
      {"cuda: ext vs cpu", test_cross_backend, NULL, NULL, st_cu},
      {"cuda: refusals", test_refusals_cuda, NULL, NULL, NULL},
      {"cuda: dense LSE plans run the dense kernel", test_lse_kernel_cuda, NULL, NULL, NULL},
      {"cuda: decode cases", test_decode_cuda, NULL, NULL, NULL},
      cmocka_unit_test(test_refusals),
  };
  return cmocka_run_group_tests_name("ext", tests, NULL, NULL);
}
