/* SPDX-License-Identifier: Apache-2.0 */
/* A client that owns its memory, as an inference engine or PyTorch does:
 * it makes its own OpenCL context, queue and buffers (or CUDA allocations),
 * hands the library sub-ranges of them through da_buffer_wrap, and must get
 * every byte back intact and still its own after the wrappers are gone.
 *
 * Public API only (distrattn.h, distrattn_opencl.h; the CUDA driver is
 * reached with dlopen, so no CUDA header is needed): `make check` links it
 * with the built library, and scripts/install-check.sh builds it against the
 * installed one with pkg-config. Its float64 reference is its own.
 *
 * OpenCL (PoCL in CI): 1,000 wrap/destroy rounds over sub-buffers of one
 * cl_mem with attention runs checked against the reference; reference
 * counts back where they were; the caller's gaps, Q, K and V untouched;
 * aliasing (overlapping sub-buffers, one cl_mem twice, host memory shared
 * through CL_MEM_USE_HOST_PTR) refused, neighbours accepted; a wrap larger
 * than its cl_mem refused.
 * CUDA (a GPU machine; DISTRATTN_REQUIRE_BACKENDS=cuda makes its absence a
 * failure): the same over one cuMemAlloc of the caller's, f16 head_dim 64
 * (the tensor-core kernels), then cuMemFree by the caller must succeed; a
 * wrap running past the end of the allocation and an O overlapping Q are
 * refused. Run under compute-sanitizer memcheck by bench/gpu_check.sh. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#ifdef DA_TEST_HAVE_OPENCL
#include "distrattn_opencl.h"
#else
#include "distrattn.h"
#endif

#define ROUNDS 1000

/* ------------------------------------------------------------ helpers */

static uint64_t g_seed;

static uint64_t next_u64(uint64_t *s) {
  uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}
static float next_normal(uint64_t *s) {
  double u1 = ((next_u64(s) >> 11) + 1) * 0x1p-53, u2 = (next_u64(s) >> 11) * 0x1p-53;
  return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

static int required(const char *name) {
  const char *r = getenv("DISTRATTN_REQUIRE_BACKENDS");
  if (!r) return 0;
  size_t n = strlen(name);
  for (const char *p = r; (p = strstr(p, name)) != NULL; p += n)
    if ((p == r || p[-1] == ',') && (p[n] == ',' || p[n] == '\0')) return 1;
  return 0;
}

static void need(da_backend b) {
  const char *why = NULL;
  if (da_backend_available(b, &why)) return;
  if (required(da_backend_name(b)))
    fail_msg("backend %s is required (DISTRATTN_REQUIRE_BACKENDS) but absent: %s",
             da_backend_name(b), why ? why : "?");
  skip();
}

#define CHECK(ctx, call)                                                                        \
  do {                                                                                          \
    da_status s_ = (call);                                                                      \
    if (s_ != DA_SUCCESS)                                                                       \
      fail_msg("%s -> %s: %s", #call, da_status_string(s_), da_context_last_error(ctx));      \
  } while (0)

static uint16_t f32_to_f16(float f) { /* round to nearest even, finite inputs of modest size */
  uint32_t x;
  memcpy(&x, &f, 4);
  uint32_t sign = (x >> 16) & 0x8000u, ax = x & 0x7fffffffu;
  if (ax < 0x38800000u) return (uint16_t)sign; /* below the normal range: 0 (not produced here) */
  uint32_t h = (ax >> 13) - ((127 - 15) << 10), rem = ax & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) h++;
  return (uint16_t)(sign | h);
}
static float f16_to_f32(uint16_t h) {
  uint32_t e = (h >> 10) & 31u, m = h & 1023u;
  float v = e == 0 ? ldexpf((float)m, -24) : e == 31 ? (m ? NAN : INFINITY) : ldexpf((float)(m | 1024u), (int)e - 25);
  return (h & 0x8000u) ? -v : v;
}

/* The problem: batch 1, heads 2 (over 1 kv head), seq 96, head_dim hd,
 * not causal; inputs of dtype f32 or f16 as `bytes`. */
typedef struct problem {
  da_attn_desc d;
  size_t qn, kvn, es;            /* elements of Q (= O), of K (= V); element size */
  unsigned char *q, *k, *v;      /* in the dtype */
  double *ref;                   /* float64 O */
} problem;

static float elem(const problem *p, const unsigned char *x, size_t i) {
  if (p->d.dtype == DA_F16) {
    uint16_t h;
    memcpy(&h, x + 2 * i, 2);
    return f16_to_f32(h);
  }
  float f;
  memcpy(&f, x + 4 * i, 4);
  return f;
}

static void problem_make(problem *p, da_dtype t, int hd) {
  memset(p, 0, sizeof *p);
  da_attn_desc_init(&p->d);
  p->d.batch = 1;
  p->d.heads = 2;
  p->d.kv_heads = 1;
  p->d.seq_q = p->d.seq_k = 96;
  p->d.head_dim = hd;
  p->d.dtype = t;
  p->es = t == DA_F16 ? 2 : 4;
  p->qn = (size_t)2 * 96 * hd;
  p->kvn = (size_t)96 * hd;
  p->q = malloc(p->qn * p->es);
  p->k = malloc(p->kvn * p->es);
  p->v = malloc(p->kvn * p->es);
  p->ref = malloc(p->qn * sizeof(double));
  assert_non_null(p->q);
  assert_non_null(p->k);
  assert_non_null(p->v);
  assert_non_null(p->ref);
  uint64_t s = g_seed;
  unsigned char *arr[3] = {p->q, p->k, p->v};
  size_t cnt[3] = {p->qn, p->kvn, p->kvn};
  for (int a = 0; a < 3; a++)
    for (size_t i = 0; i < cnt[a]; i++) {
      float f = next_normal(&s);
      if (fabsf(f) < 1e-3f) f = 1e-3f; /* never 0 */
      if (t == DA_F16) {
        uint16_t h = f32_to_f16(f);
        memcpy(arr[a] + 2 * i, &h, 2);
      } else {
        memcpy(arr[a] + 4 * i, &f, 4);
      }
    }
  /* float64 reference: each query head reads the one kv head */
  const double scale = 1.0 / sqrt((double)hd);
  double *sc = malloc(96 * sizeof(double));
  assert_non_null(sc);
  for (int h = 0; h < 2; h++)
    for (int i = 0; i < 96; i++) {
      double mx = -INFINITY, sum = 0;
      for (int j = 0; j < 96; j++) {
        double dot = 0;
        for (int c = 0; c < hd; c++)
          dot += (double)elem(p, p->q, ((size_t)h * 96 + i) * hd + c) *
                 (double)elem(p, p->k, (size_t)j * hd + c);
        sc[j] = dot * scale;
        if (sc[j] > mx) mx = sc[j];
      }
      for (int j = 0; j < 96; j++) sum += sc[j] = exp(sc[j] - mx);
      for (int c = 0; c < hd; c++) {
        double acc = 0;
        for (int j = 0; j < 96; j++) acc += sc[j] * (double)elem(p, p->v, (size_t)j * hd + c);
        p->ref[((size_t)h * 96 + i) * hd + c] = acc / sum;
      }
    }
  free(sc);
}

static void problem_free(problem *p) {
  free(p->q);
  free(p->k);
  free(p->v);
  free(p->ref);
}

/* ||o - ref|| / ||ref|| of an output in the problem's dtype; NaN-aware. */
static double rel_err(const problem *p, const unsigned char *o) {
  double num = 0, den = 0;
  for (size_t i = 0; i < p->qn; i++) {
    double x = elem(p, o, i), r = p->ref[i];
    if (!isfinite(x)) return NAN;
    num += (x - r) * (x - r);
    den += r * r;
  }
  return sqrt(num / den);
}

static double bound(const problem *p) { return p->d.dtype == DA_F16 ? 2e-3 : 1e-5; }

/* The caller's own pattern for its bytes outside Q, K, V and O. */
static unsigned char pattern(size_t i) { return (unsigned char)(i * 167u + 29u); }

/* Region offsets inside the caller's allocation: gaps before, between and
 * after, each `align` bytes or more, every region aligned. */
typedef struct layout { size_t q, k, v, o, total; } layout;
static size_t align_up(size_t x, size_t a) { return (x + a - 1) / a * a; }
static layout make_layout(const problem *p, size_t align) {
  layout l;
  size_t qb = p->qn * p->es, kb = p->kvn * p->es;
  l.q = align;
  l.k = align_up(l.q + qb, align) + align;
  l.v = align_up(l.k + kb, align) + align;
  l.o = align_up(l.v + kb, align) + align;
  l.total = align_up(l.o + qb, align) + align;
  return l;
}

/* The whole allocation as the caller must find it: pattern in the gaps,
 * its Q, K, V where it put them; O checked separately. */
static void check_caller_bytes(const problem *p, const layout *l, const unsigned char *all,
                               const char *when) {
  size_t qb = p->qn * p->es, kb = p->kvn * p->es;
  for (size_t i = 0; i < l->total; i++) {
    int in_o = i >= l->o && i < l->o + qb;
    if (in_o) continue;
    unsigned char want = pattern(i);
    if (i >= l->q && i < l->q + qb) want = p->q[i - l->q];
    else if (i >= l->k && i < l->k + kb) want = p->k[i - l->k];
    else if (i >= l->v && i < l->v + kb) want = p->v[i - l->v];
    if (all[i] != want)
      fail_msg("%s: the caller's byte %zu (of %zu) changed: 0x%02x, was 0x%02x", when, i, l->total,
               all[i], want);
  }
  double err = rel_err(p, all + l->o);
  if (!(err <= bound(p))) fail_msg("%s: O has error %g (bound %g)", when, err, bound(p));
}

/* The caller's allocation as it fills it: its pattern, with Q, K and V at
 * their places in the layout (malloc'd; the caller frees it). */
static unsigned char *caller_image(const problem *p, const layout *l) {
  unsigned char *all = malloc(l->total);
  assert_non_null(all);
  for (size_t i = 0; i < l->total; i++) all[i] = pattern(i);
  memcpy(all + l->q, p->q, p->qn * p->es);
  memcpy(all + l->k, p->k, p->kvn * p->es);
  memcpy(all + l->v, p->v, p->kvn * p->es);
  return all;
}

/* Destroys the wrappers of one attention's four buffers. */
static void destroy4(da_buffer *q, da_buffer *k, da_buffer *v, da_buffer *o) {
  da_buffer_destroy(q);
  da_buffer_destroy(k);
  da_buffer_destroy(v);
  da_buffer_destroy(o);
}

#ifdef DA_TEST_HAVE_OPENCL
/* ------------------------------------------------------------ OpenCL */

typedef struct clenv {
  cl_context cx;
  cl_command_queue q;
  cl_device_id dev;
  size_t align; /* CL_DEVICE_MEM_BASE_ADDR_ALIGN in bytes */
} clenv;

#define CLK(call)                                                                              \
  do {                                                                                         \
    cl_int e_ = (call);                                                                        \
    if (e_ != CL_SUCCESS) fail_msg("%s -> OpenCL error %d", #call, (int)e_);                  \
  } while (0)

/* The device the library would pick for DA_BACKEND_OPENCL, by name. */
static void cl_open(clenv *c) {
  da_context *probe = NULL;
  CHECK(probe, da_context_create(&probe, DA_BACKEND_OPENCL, -1));
  da_device_info info;
  CHECK(probe, da_context_get_device_info(probe, &info));
  da_context_destroy(probe);
  cl_platform_id plats[16];
  cl_uint np = 0;
  CLK(clGetPlatformIDs(16, plats, &np));
  c->dev = NULL;
  for (cl_uint i = 0; i < np && !c->dev; i++) {
    cl_device_id devs[16];
    cl_uint nd = 0;
    if (clGetDeviceIDs(plats[i], CL_DEVICE_TYPE_ALL, 16, devs, &nd) != CL_SUCCESS) continue;
    for (cl_uint j = 0; j < nd && !c->dev; j++) {
      char name[256] = "";
      clGetDeviceInfo(devs[j], CL_DEVICE_NAME, sizeof name, name, NULL);
      if (strstr(info.name, name) || strstr(name, info.name)) c->dev = devs[j];
    }
    if (!c->dev && nd > 0 && i + 1 == np) c->dev = devs[0];
  }
  if (!c->dev) fail_msg("no OpenCL device matches \"%s\"", info.name);
  cl_int e;
  c->cx = clCreateContext(NULL, 1, &c->dev, NULL, NULL, &e);
  CLK(e);
  c->q = clCreateCommandQueue(c->cx, c->dev, 0, &e);
  CLK(e);
  cl_uint bits = 0;
  CLK(clGetDeviceInfo(c->dev, CL_DEVICE_MEM_BASE_ADDR_ALIGN, sizeof bits, &bits, NULL));
  c->align = bits / 8 < 64 ? 64 : bits / 8;
}

static void cl_close(clenv *c) {
  CLK(clReleaseCommandQueue(c->q));
  CLK(clReleaseContext(c->cx));
}

static cl_uint refcount(cl_mem m) {
  cl_uint n = 0;
  CLK(clGetMemObjectInfo(m, CL_MEM_REFERENCE_COUNT, sizeof n, &n, NULL));
  return n;
}

static cl_mem sub(cl_mem parent, size_t off, size_t bytes) {
  cl_buffer_region r = {off, bytes};
  cl_int e;
  cl_mem m = clCreateSubBuffer(parent, CL_MEM_READ_WRITE, CL_BUFFER_CREATE_TYPE_REGION, &r, &e);
  CLK(e);
  return m;
}

static void test_cl_lifetime(void **state) {
  need(DA_BACKEND_OPENCL);
  clenv c;
  cl_open(&c);
  for (int ti = 0; ti < 2; ti++) {
    problem p;
    problem_make(&p, ti ? DA_F16 : DA_F32, 64);
    layout l = make_layout(&p, c.align);
    size_t qb = p.qn * p.es, kb = p.kvn * p.es;
    unsigned char *all = caller_image(&p, &l);
    cl_int e;
    cl_mem parent = clCreateBuffer(c.cx, CL_MEM_READ_WRITE, l.total, NULL, &e);
    CLK(e);
    CLK(clEnqueueWriteBuffer(c.q, parent, CL_TRUE, 0, l.total, all, 0, NULL, NULL));
    cl_mem mq = sub(parent, l.q, qb), mk = sub(parent, l.k, kb), mv = sub(parent, l.v, kb),
           mo = sub(parent, l.o, qb);
    cl_mem all_m[5] = {parent, mq, mk, mv, mo};
    cl_uint before[5];
    for (int i = 0; i < 5; i++) before[i] = refcount(all_m[i]);

    da_context *ctx = NULL;
    CHECK(ctx, da_context_wrap_opencl(&ctx, c.q));
    da_plan *plan = NULL;
    CHECK(ctx, da_plan_create(ctx, &p.d, &plan));
    int runs = 0;
    for (int r = 0; r < ROUNDS; r++) {
      da_buffer *bq, *bk, *bv, *bo;
      CHECK(ctx, da_buffer_wrap_opencl(ctx, mq, qb, &bq));
      CHECK(ctx, da_buffer_wrap_opencl(ctx, mk, kb, &bk));
      CHECK(ctx, da_buffer_wrap_opencl(ctx, mv, kb, &bv));
      CHECK(ctx, da_buffer_wrap_opencl(ctx, mo, qb, &bo));
      if (da_buffer_opencl_mem(bq) != mq) fail_msg("da_buffer_native is not the caller's cl_mem");
      if (r % 250 == 0) {
        /* the caller poisons its O range, the library writes it */
        memset(all + l.o, 0xff, qb);
        CLK(clEnqueueWriteBuffer(c.q, mo, CL_TRUE, 0, qb, all + l.o, 0, NULL, NULL));
        CHECK(ctx, da_attention(plan, bq, bk, bv, bo));
        CHECK(ctx, da_context_synchronize(ctx));
        runs++;
      }
      destroy4(bq, bk, bv, bo);
    }
    da_plan_destroy(plan);
    da_context_destroy(ctx);
    /* The library's references are gone when the wrappers are; an OpenCL
     * runtime may drop its own (held by finished commands) a little later
     * (PoCL does, from its driver thread): wait up to 2 s for the counts to
     * settle, then they must be what they were. A reference the library
     * kept would never go. */
    CLK(clFinish(c.q));
    for (int tries = 0;; tries++) {
      int same = 1;
      for (int i = 0; i < 5; i++) same &= refcount(all_m[i]) == before[i];
      if (same) break;
      if (tries == 200)
        for (int i = 0; i < 5; i++)
          if (refcount(all_m[i]) != before[i])
            fail_msg("cl_mem %d: reference count %u after %d wraps and destroys, %u before", i,
                     refcount(all_m[i]), ROUNDS, before[i]);
      struct timespec ts = {0, 10 * 1000 * 1000};
      nanosleep(&ts, NULL);
    }
    /* still the caller's, intact and usable */
    memset(all, 0, l.total);
    CLK(clEnqueueReadBuffer(c.q, parent, CL_TRUE, 0, l.total, all, 0, NULL, NULL));
    check_caller_bytes(&p, &l, all, ti ? "OpenCL f16 after 1,000 wraps" : "OpenCL f32 after 1,000 wraps");
    unsigned char probe[64], back[64];
    for (int i = 0; i < 64; i++) probe[i] = (unsigned char)(255 - i);
    CLK(clEnqueueWriteBuffer(c.q, mk, CL_TRUE, 0, 64, probe, 0, NULL, NULL));
    CLK(clEnqueueReadBuffer(c.q, parent, CL_TRUE, l.k, 64, back, 0, NULL, NULL));
    assert_memory_equal(probe, back, 64);
    for (int i = 4; i >= 0; i--) CLK(clReleaseMemObject(all_m[i]));
    assert_true(runs == ROUNDS / 250);
    free(all);
    problem_free(&p);
  }
  cl_close(&c);
}

/* o overlapping q, k or v through any route is refused with a message;
 * neighbours are fine. */
static void test_cl_alias(void **state) {
  need(DA_BACKEND_OPENCL);
  clenv c;
  cl_open(&c);
  problem p;
  problem_make(&p, DA_F32, 16);
  size_t qb = p.qn * p.es, kb = p.kvn * p.es, a = c.align;
  size_t span = align_up(qb, a) * 4 + align_up(kb, a) * 4;
  cl_int e;
  cl_mem parent = clCreateBuffer(c.cx, CL_MEM_READ_WRITE, span, NULL, &e);
  CLK(e);
  size_t oq = 0, ok = align_up(qb, a), ov = ok + align_up(kb, a), oo = ov + align_up(kb, a);
  cl_mem mq = sub(parent, oq, qb), mk = sub(parent, ok, kb), mv = sub(parent, ov, kb);
  CLK(clEnqueueWriteBuffer(c.q, mq, CL_TRUE, 0, qb, p.q, 0, NULL, NULL));
  CLK(clEnqueueWriteBuffer(c.q, mk, CL_TRUE, 0, kb, p.k, 0, NULL, NULL));
  CLK(clEnqueueWriteBuffer(c.q, mv, CL_TRUE, 0, kb, p.v, 0, NULL, NULL));
  da_context *ctx = NULL;
  CHECK(ctx, da_context_wrap_opencl(&ctx, c.q));
  da_plan *plan = NULL;
  CHECK(ctx, da_plan_create(ctx, &p.d, &plan));
  da_buffer *bq, *bk, *bv;
  CHECK(ctx, da_buffer_wrap_opencl(ctx, mq, qb, &bq));
  CHECK(ctx, da_buffer_wrap_opencl(ctx, mk, kb, &bk));
  CHECK(ctx, da_buffer_wrap_opencl(ctx, mv, kb, &bv));
  struct { size_t off; const char *name; int bad; } cases[] = {
      {oq + a, "o starting inside q", 1},
      {ov - a, "o starting inside k, running into v", 1},
      {oo, "o right after v", 0},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    cl_mem mo = sub(parent, cases[i].off, qb);
    da_buffer *bo = NULL;
    CHECK(ctx, da_buffer_wrap_opencl(ctx, mo, qb, &bo));
    da_status s = da_attention(plan, bq, bk, bv, bo);
    if (cases[i].bad) {
      if (s != DA_ERR_INVALID_ARG)
        fail_msg("%s: da_attention returned %s, expected invalid argument", cases[i].name,
                 da_status_string(s));
      if (!strstr(da_context_last_error(ctx), "o overlaps"))
        fail_msg("%s: the message \"%s\" does not say o overlaps", cases[i].name,
                 da_context_last_error(ctx));
    } else {
      CHECK(ctx, s);
      CHECK(ctx, da_context_synchronize(ctx));
      unsigned char *o = malloc(qb);
      assert_non_null(o);
      CLK(clEnqueueReadBuffer(c.q, mo, CL_TRUE, 0, qb, o, 0, NULL, NULL));
      double err = rel_err(&p, o);
      if (!(err <= 1e-5)) fail_msg("%s: error %g", cases[i].name, err);
      free(o);
      if (da_context_last_error(ctx)[0]) fail_msg("a successful call left \"%s\"", da_context_last_error(ctx));
    }
    da_buffer_destroy(bo);
    CLK(clReleaseMemObject(mo));
  }
  /* one cl_mem wrapped twice: as k and as o */
  da_buffer *bk2 = NULL;
  CHECK(ctx, da_buffer_wrap_opencl(ctx, mk, kb, &bk2));
  if (da_attention(plan, bq, bk, bv, bk2) != DA_ERR_INVALID_ARG) fail_msg("o = k's cl_mem was not refused");
  da_buffer_destroy(bk2);
  /* host memory shared by two cl_mems made with CL_MEM_USE_HOST_PTR */
  size_t hb = align_up(qb, 4096) * 2;
  unsigned char *host = aligned_alloc(4096, hb);
  assert_non_null(host);
  memcpy(host, p.q, qb);
  cl_mem hq = clCreateBuffer(c.cx, CL_MEM_READ_WRITE | CL_MEM_USE_HOST_PTR, qb, host, &e);
  CLK(e);
  cl_mem ho = clCreateBuffer(c.cx, CL_MEM_READ_WRITE | CL_MEM_USE_HOST_PTR, qb, host + 256, &e);
  CLK(e);
  da_buffer *bhq = NULL, *bho = NULL;
  CHECK(ctx, da_buffer_wrap_opencl(ctx, hq, qb, &bhq));
  CHECK(ctx, da_buffer_wrap_opencl(ctx, ho, qb, &bho));
  if (da_attention(plan, bhq, bk, bv, bho) != DA_ERR_INVALID_ARG)
    fail_msg("o and q over shared host memory (CL_MEM_USE_HOST_PTR) were not refused");
  if (!strstr(da_context_last_error(ctx), "o overlaps q"))
    fail_msg("message \"%s\"", da_context_last_error(ctx));
  da_buffer_destroy(bhq);
  da_buffer_destroy(bho);
  CLK(clReleaseMemObject(hq));
  CLK(clReleaseMemObject(ho));
  free(host);
  /* a wrap claiming more bytes than the cl_mem holds */
  da_buffer *big = NULL;
  if (da_buffer_wrap_opencl(ctx, mq, qb + 1, &big) != DA_ERR_INVALID_ARG || big)
    fail_msg("a wrap of %zu bytes over a cl_mem of %zu was not refused", qb + 1, qb);
  da_buffer_destroy(bq);
  da_buffer_destroy(bk);
  da_buffer_destroy(bv);
  da_plan_destroy(plan);
  da_context_destroy(ctx);
  CLK(clReleaseMemObject(mq));
  CLK(clReleaseMemObject(mk));
  CLK(clReleaseMemObject(mv));
  CLK(clReleaseMemObject(parent));
  cl_close(&c);
  problem_free(&p);
}
#endif /* DA_TEST_HAVE_OPENCL */

/* -------------------------------------------------------------- CUDA */

/* The driver API, reached by dlopen as any client without the toolkit. */
typedef int (*cu_init_t)(unsigned);
typedef int (*cu_dev_get_t)(int *, int);
typedef int (*cu_ctx_retain_t)(void **, int);
typedef int (*cu_ctx_release_t)(int);
typedef int (*cu_ctx_set_t)(void *);
typedef int (*cu_alloc_t)(unsigned long long *, size_t);
typedef int (*cu_free_t)(unsigned long long);
typedef int (*cu_htod_t)(unsigned long long, const void *, size_t);
typedef int (*cu_dtoh_t)(void *, unsigned long long, size_t);
typedef int (*cu_sync_t)(void);

typedef struct cuenv {
  void *dl, *pctx;
  int dev;
  cu_ctx_release_t release;
  cu_alloc_t alloc;
  cu_free_t free_;
  cu_htod_t htod;
  cu_dtoh_t dtoh;
  cu_sync_t sync;
} cuenv;

#define CUK(call)                                                                              \
  do {                                                                                         \
    int r_ = (call);                                                                           \
    if (r_ != 0) fail_msg("%s -> CUresult %d", #call, r_);                                     \
  } while (0)

static void cu_open(cuenv *c) {
  memset(c, 0, sizeof *c);
  c->dl = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
  if (!c->dl) fail_msg("the CUDA backend is there but libcuda.so.1 is not: %s", dlerror());
#define SYM(T, name) T name##_ = (T)dlsym(c->dl, #name); if (!name##_) fail_msg("no %s", #name)
  SYM(cu_init_t, cuInit);
  SYM(cu_dev_get_t, cuDeviceGet);
  SYM(cu_ctx_retain_t, cuDevicePrimaryCtxRetain);
  SYM(cu_ctx_set_t, cuCtxSetCurrent);
#undef SYM
  c->release = (cu_ctx_release_t)dlsym(c->dl, "cuDevicePrimaryCtxRelease_v2");
  c->alloc = (cu_alloc_t)dlsym(c->dl, "cuMemAlloc_v2");
  c->free_ = (cu_free_t)dlsym(c->dl, "cuMemFree_v2");
  c->htod = (cu_htod_t)dlsym(c->dl, "cuMemcpyHtoD_v2");
  c->dtoh = (cu_dtoh_t)dlsym(c->dl, "cuMemcpyDtoH_v2");
  c->sync = (cu_sync_t)dlsym(c->dl, "cuCtxSynchronize");
  if (!c->release || !c->alloc || !c->free_ || !c->htod || !c->dtoh || !c->sync)
    fail_msg("libcuda.so.1 lacks a driver entry point");
  CUK(cuInit_(0));
  CUK(cuDeviceGet_(&c->dev, 0));
  CUK(cuDevicePrimaryCtxRetain_(&c->pctx, c->dev)); /* the context CUDA's runtime uses */
  CUK(cuCtxSetCurrent_(c->pctx));
}

static void cu_close(cuenv *c) {
  CUK(c->release(c->dev));
  dlclose(c->dl);
}

static void test_cuda_lifetime(void **state) {
  need(DA_BACKEND_CUDA);
  cuenv c;
  cu_open(&c);
  problem p;
  problem_make(&p, DA_F16, 64);
  layout l = make_layout(&p, 256);
  size_t qb = p.qn * p.es, kb = p.kvn * p.es;
  unsigned char *all = caller_image(&p, &l);
  unsigned long long base = 0;
  CUK(c.alloc(&base, l.total)); /* one allocation of the caller's */
  CUK(c.htod(base, all, l.total));
  char *dq = (char *)(uintptr_t)(base + l.q), *dk = (char *)(uintptr_t)(base + l.k),
       *dv = (char *)(uintptr_t)(base + l.v), *dout = (char *)(uintptr_t)(base + l.o);

  da_context *ctx = NULL;
  CHECK(ctx, da_context_wrap(&ctx, DA_BACKEND_CUDA, NULL)); /* the legacy default stream */
  da_plan *plan = NULL;
  CHECK(ctx, da_plan_create(ctx, &p.d, &plan));
  for (int r = 0; r < ROUNDS; r++) {
    da_buffer *bq, *bk, *bv, *bo;
    CHECK(ctx, da_buffer_wrap(ctx, dq, qb, &bq));
    CHECK(ctx, da_buffer_wrap(ctx, dk, kb, &bk));
    CHECK(ctx, da_buffer_wrap(ctx, dv, kb, &bv));
    CHECK(ctx, da_buffer_wrap(ctx, dout, qb, &bo));
    if (r % 100 == 0) {
      memset(all + l.o, 0xff, qb);
      CUK(c.htod(base + l.o, all + l.o, qb));
      CHECK(ctx, da_attention(plan, bq, bk, bv, bo));
      CHECK(ctx, da_context_synchronize(ctx));
      CUK(c.dtoh(all + l.o, base + l.o, qb));
      double err = rel_err(&p, all + l.o);
      if (!(err <= bound(&p))) fail_msg("round %d: O error %g", r, err);
    }
    destroy4(bq, bk, bv, bo);
  }
  /* refusals: past the end of the allocation, and o overlapping q */
  da_buffer *bad = NULL;
  char *end = (char *)(uintptr_t)(base + l.total);
  if (da_buffer_wrap(ctx, end - 64, 65, &bad) != DA_ERR_INVALID_ARG || bad)
    fail_msg("a wrap running one byte past the end of the allocation was accepted");
  if (!strstr(da_context_last_error(ctx), "past the end"))
    fail_msg("message \"%s\"", da_context_last_error(ctx));
  CHECK(ctx, da_buffer_wrap(ctx, end - 64, 64, &bad)); /* exactly to the end: fine */
  da_buffer_destroy(bad);
  da_buffer *bq, *bk, *bv, *bo;
  CHECK(ctx, da_buffer_wrap(ctx, dq, qb, &bq));
  CHECK(ctx, da_buffer_wrap(ctx, dk, kb, &bk));
  CHECK(ctx, da_buffer_wrap(ctx, dv, kb, &bv));
  CHECK(ctx, da_buffer_wrap(ctx, dq + 256, qb, &bo));
  if (da_attention(plan, bq, bk, bv, bo) != DA_ERR_INVALID_ARG)
    fail_msg("o overlapping q in one allocation was not refused");
  destroy4(bq, bk, bv, bo);
  da_plan_destroy(plan);
  da_context_destroy(ctx);
  CUK(c.sync());
  memset(all, 0, l.total);
  CUK(c.dtoh(all, base, l.total));
  check_caller_bytes(&p, &l, all, "CUDA f16 after 1,000 wraps");
  CUK(c.free_(base)); /* still the caller's to free: fails if the library freed it */
  unsigned long long again = 0; /* and the device still works */
  CUK(c.alloc(&again, 4096));
  CUK(c.htod(again, all, 4096));
  CUK(c.free_(again));
  cu_close(&c);
  free(all);
  problem_free(&p);
}

int main(void) {
  const char *s = getenv("DA_TEST_SEED");
  g_seed = s && *s ? strtoull(s, NULL, 10) : 0x5eed0f00d;
  const struct CMUnitTest tests[] = {
#ifdef DA_TEST_HAVE_OPENCL
      cmocka_unit_test(test_cl_lifetime),
      cmocka_unit_test(test_cl_alias),
#endif
      cmocka_unit_test(test_cuda_lifetime),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
