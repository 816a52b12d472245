/* SPDX-License-Identifier: Apache-2.0 */
/* Crafted DATTNCAP captures against the one reader, tools/capture_io.c
 * (tools/CAPTURE_FORMAT.md, "Reader's checks"), and against `distrattn eval`.
 *
 * Every crafted input is built here in memory and given to both entries:
 * capture_parse over the bytes and capture_load_file over the same bytes
 * written to a temporary file (TMPDIR or /tmp); both must refuse it with the
 * same, specific message, leave the capture zeroed, and (under ASan) touch
 * nothing out of bounds. The cases: the 19 MB size wrap (header fields whose
 * sum and product wrapped the old readers' size_t to 16 MiB, in f32 and
 * f16), counts at and past their limits (0xFFFFFFFF among them), truncation
 * at every byte of a small file, trailing bytes, wrong magic, wrong version,
 * bad dtype codes, NaN and Inf in the data (with their location), and valid
 * f32 and f16 captures that must load with exactly the values written.
 * Format version 2 likewise: kv_heads out of range or not dividing heads,
 * causal not 0/1, a scale that is NaN, infinite, negative or -0, a model
 * name that is not NUL-padded printable ASCII, seq_q/seq_k out of range,
 * truncation at every byte, trailing bytes, size overflows, located NaN/Inf;
 * and valid GQA, MQA, causal, seq_q < seq_k and seq_q > seq_k files that
 * read back exactly (capture_qkv and capture_desc included).
 * Then the built tools/distrattn (DA_TEST_BUILDDIR) is run on crafted files:
 * it must exit 1 with the reader's message on stderr, never crash, and run
 * a valid one (version 2: naming the model, exact within 1e-5 of its
 * float64 reference). */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <spawn.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <setjmp.h>
#include <cmocka.h>

#include "capture_io.h"

#ifndef DA_TEST_BUILDDIR
#define DA_TEST_BUILDDIR "."
#endif

extern char **environ;

/* ------------------------------------------------------------ building */

typedef struct {
  unsigned char *p;
  size_t n, cap;
} bytes;

static void put(bytes *b, const void *src, size_t n) {
  if (b->n + n > b->cap) {
    size_t c = b->cap ? b->cap : 256;
    while (c < b->n + n) c *= 2;
    unsigned char *q = realloc(b->p, c);
    assert_non_null(q);
    b->p = q, b->cap = c;
  }
  memcpy(b->p + b->n, src, n);
  b->n += n;
}

static void put32(bytes *b, uint32_t v) {
  unsigned char x[4] = {(unsigned char)v, (unsigned char)(v >> 8), (unsigned char)(v >> 16),
                        (unsigned char)(v >> 24)};
  put(b, x, 4);
}

static void put16(bytes *b, uint16_t v) {
  unsigned char x[2] = {(unsigned char)v, (unsigned char)(v >> 8)};
  put(b, x, 2);
}

static void header(bytes *b, uint32_t version, uint32_t L, uint32_t H, uint32_t D, uint32_t N,
                   uint32_t dtype) {
  put(b, "DATTNCAP", 8);
  put32(b, version), put32(b, L), put32(b, H), put32(b, D), put32(b, N), put32(b, dtype);
}

/* The values written: f32 element i, and f16 element i as bits and as the
 * exact float they stand for (normal, subnormal, signed zero, the largest). */
static float f32_value(size_t i) {
  static const float special[5] = {-0.0f, 1e-40f, 3.0e38f, -1.5e-30f, 7.0f};
  if (i % 11 == 0) return special[(i / 11) % 5];
  return ((float)((i * 7919u) % 2001u) - 1000.0f) / 128.0f;
}

static const struct {
  uint16_t bits;
  float value;
} f16_table[12] = {
    {0x0000, 0.0f},   {0x8000, -0.0f},  {0x3C00, 1.0f},     {0xC000, -2.0f},
    {0x3800, 0.5f},   {0x0001, 0x1p-24f}, {0x83FF, -0x3FFp-24f}, {0x0400, 0x1p-14f},
    {0x7BFF, 65504.0f}, {0xFBFF, -65504.0f}, {0x3555, 0.333251953125f}, {0x4248, 3.140625f},
};

static size_t f16_index(size_t i) { return (i * 5 + i / 12) % 12; }

static void put_data(bytes *b, uint32_t dtype, size_t n) {
  for (size_t i = 0; i < n; i++) {
    if (dtype == 0) {
      float f = f32_value(i);
      uint32_t u;
      memcpy(&u, &f, 4);
      put32(b, u);
    } else {
      put16(b, f16_table[f16_index(i)].bits);
    }
  }
}

/* The small valid capture most cases start from. */
#define SL 2u
#define SH 3u
#define SD 4u
#define SN 3u
static const uint32_t small_seq[SN] = {1, 5, 2};
#define SMALL_ELEMS ((size_t)SL * 3 * SH * SD * (1 + 5 + 2)) /* 576 */
#define SMALL_TABLE_END (32u + 4u * SN)                      /* 44 */

static size_t small_off(unsigned s) {
  size_t o = 0;
  for (unsigned t = 0; t < s; t++) o += (size_t)SL * 3 * SH * small_seq[t] * SD;
  return o;
}

/* Element index of (sentence, layer, which = 0 Q / 1 K / 2 V, head, token, dim). */
static size_t small_index(unsigned s, unsigned l, unsigned w, unsigned h, unsigned t, unsigned d) {
  return small_off(s) + (((size_t)l * 3 + w) * SH + h) * small_seq[s] * SD + (size_t)t * SD + d;
}

static bytes small_capture(uint32_t dtype) {
  bytes b = {0};
  header(&b, 1, SL, SH, SD, SN, dtype);
  for (unsigned s = 0; s < SN; s++) put32(&b, small_seq[s]);
  put_data(&b, dtype, SMALL_ELEMS);
  return b;
}

/* ------------------------------------------------------------ checking */

static const char *tmp_dir(void) {
  const char *t = getenv("TMPDIR");
  return t && *t ? t : "/tmp";
}

/* Writes b[0..n) to a new temporary file; its path in path. */
static void write_temp(const unsigned char *b, size_t n, char *path, size_t len) {
  snprintf(path, len, "%s/da-test-capture-XXXXXX", tmp_dir());
  int fd = mkstemp(path);
  if (fd < 0) fail_msg("mkstemp %s: %s", path, strerror(errno));
  FILE *f = fdopen(fd, "wb");
  assert_non_null(f);
  if (n && fwrite(b, 1, n, f) != n) fail_msg("writing %s: %s", path, strerror(errno));
  assert_int_equal(fclose(f), 0);
}

static void assert_zeroed(const capture *c) {
  assert_null(c->seq);
  assert_null(c->off);
  assert_null(c->data);
  assert_int_equal(c->total, 0);
  assert_int_equal(c->n_sent, 0);
}

/* Both entries refuse buf[0..n) with a message containing want (and the
 * same message); with exact set, the message must be want itself. */
static void expect_refused_ex(const unsigned char *buf, size_t n, const char *want, int exact) {
  char why_mem[512], why_file[512], path[512];
  capture c;
  memset(&c, 0x5a, sizeof c);
  if (capture_parse(buf, n, &c, why_mem, sizeof why_mem) == 0) {
    capture_free(&c);
    fail_msg("capture_parse accepted a crafted input (%zu bytes) that must fail with \"%s\"", n,
             want);
  }
  assert_zeroed(&c);
  write_temp(buf, n, path, sizeof path);
  memset(&c, 0x5a, sizeof c);
  int rc = capture_load_file(path, &c, why_file, sizeof why_file);
  unlink(path);
  if (rc == 0) {
    capture_free(&c);
    fail_msg("capture_load_file accepted a crafted file (%zu bytes) that must fail with \"%s\"", n,
             want);
  }
  assert_zeroed(&c);
  if (exact ? strcmp(why_mem, want) != 0 : strstr(why_mem, want) == NULL)
    fail_msg("%zu bytes: refused with \"%s\", expected %s\"%s\"", n, why_mem,
             exact ? "" : "a message containing ", want);
  if (strcmp(why_mem, why_file) != 0)
    fail_msg("%zu bytes: the two entries disagree: memory \"%s\", file \"%s\"", n, why_mem,
             why_file);
  if (getenv("DA_TEST_VERBOSE")) fprintf(stderr, "  refused (%zu bytes): %s\n", n, why_mem);
}

static void expect_refused(const bytes *b, const char *want) {
  expect_refused_ex(b->p, b->n, want, 0);
}

static void expect_refused_fmt(const bytes *b, const char *fmt, ...) {
  char want[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(want, sizeof want, fmt, ap);
  va_end(ap);
  expect_refused_ex(b->p, b->n, want, 1);
}

/* Both entries load b; the file's copy is checked equal to the memory one. */
static void load_both(const bytes *b, capture *c) {
  char why[512], path[512];
  if (capture_parse(b->p, b->n, c, why, sizeof why)) fail_msg("capture_parse refused: %s", why);
  capture f;
  write_temp(b->p, b->n, path, sizeof path);
  int rc = capture_load_file(path, &f, why, sizeof why);
  unlink(path);
  if (rc) fail_msg("capture_load_file refused: %s", why);
  assert_int_equal(f.layers, c->layers);
  assert_int_equal(f.heads, c->heads);
  assert_int_equal(f.head_dim, c->head_dim);
  assert_int_equal(f.n_sent, c->n_sent);
  assert_int_equal(f.dtype, c->dtype);
  assert_int_equal(f.total, c->total);
  assert_memory_equal(f.seq, c->seq, sizeof *f.seq * f.n_sent);
  assert_memory_equal(f.off, c->off, sizeof *f.off * f.n_sent);
  assert_memory_equal(f.data, c->data, sizeof *f.data * f.total);
  capture_free(&f);
}

/* ------------------------------------------------------------ valid files */

static void check_small(const capture *c, uint32_t dtype) {
  assert_int_equal(c->layers, SL);
  assert_int_equal(c->heads, SH);
  assert_int_equal(c->head_dim, SD);
  assert_int_equal(c->n_sent, SN);
  assert_int_equal(c->dtype, dtype);
  assert_int_equal(c->total, SMALL_ELEMS);
  for (unsigned s = 0; s < SN; s++) {
    assert_int_equal(c->seq[s], small_seq[s]);
    assert_int_equal(c->off[s], small_off(s));
  }
  for (size_t i = 0; i < SMALL_ELEMS; i++) {
    float want = dtype == 0 ? f32_value(i) : f16_table[f16_index(i)].value;
    if (memcmp(&c->data[i], &want, 4) != 0)
      fail_msg("element %zu: read %a, written %a", i, (double)c->data[i], (double)want);
  }
  /* the layout: sentence 1, layer 1, K, head 2, token 4, dim 3 */
  size_t i = small_index(1, 1, 1, 2, 4, 3);
  const float *k = c->data + c->off[1] + (size_t)1 * 3 * SH * 5 * SD + (size_t)SH * 5 * SD;
  assert_true(k + (size_t)2 * 5 * SD + 4 * SD + 3 == c->data + i);
}

static void test_valid_f32(void **state) {
  (void)state;
  bytes b = small_capture(0);
  assert_int_equal(b.n, SMALL_TABLE_END + 4 * SMALL_ELEMS);
  capture c;
  load_both(&b, &c);
  check_small(&c, 0);
  capture_free(&c);
  assert_zeroed(&c);
  capture_free(&c); /* twice, and NULL, are harmless */
  capture_free(NULL);
  free(b.p);
}

static void test_valid_f16(void **state) {
  (void)state;
  bytes b = small_capture(1);
  assert_int_equal(b.n, SMALL_TABLE_END + 2 * SMALL_ELEMS);
  capture c;
  load_both(&b, &c);
  check_small(&c, 1);
  capture_free(&c);
  free(b.p);
}

/* Each count at its limit loads (layers, heads, head_dim, seq) or gets past
 * the range check to the next one (n_sentences: its table is not there). */
static void test_limits_accepted(void **state) {
  (void)state;
  static const struct {
    uint32_t L, H, D, seq;
  } at[] = {
      {CAPTURE_MAX_LAYERS, 1, 1, 1},
      {1, CAPTURE_MAX_HEADS, 1, 1},
      {1, 1, CAPTURE_MAX_HEAD_DIM, 1},
      {1, 1, 1, CAPTURE_MAX_SEQ},
  };
  for (size_t k = 0; k < sizeof at / sizeof at[0]; k++) {
    bytes b = {0};
    header(&b, 1, at[k].L, at[k].H, at[k].D, 1, 1);
    put32(&b, at[k].seq);
    size_t n = (size_t)at[k].L * 3 * at[k].H * at[k].D * at[k].seq;
    put_data(&b, 1, n);
    capture c;
    load_both(&b, &c);
    assert_int_equal(c.total, n);
    assert_int_equal(c.layers, at[k].L);
    assert_int_equal(c.heads, at[k].H);
    assert_int_equal(c.head_dim, at[k].D);
    assert_int_equal(c.seq[0], at[k].seq);
    for (size_t i = 0; i < n; i += 997) assert_true(c.data[i] == f16_table[f16_index(i)].value);
    capture_free(&c);
    free(b.p);
  }
  bytes b = {0};
  header(&b, 1, 1, 1, 1, CAPTURE_MAX_SENTENCES, 0);
  expect_refused_fmt(&b,
                     "truncated inside the sequence table: n_sentences = 16777216 needs 67108896 "
                     "bytes of header and table, the file has 32");
  free(b.p);
  /* everything at its limit at once: a claim of 3 * 2^52 * 4 bytes */
  b = (bytes){0};
  header(&b, 1, CAPTURE_MAX_LAYERS, CAPTURE_MAX_HEADS, CAPTURE_MAX_HEAD_DIM, 1, 0);
  put32(&b, CAPTURE_MAX_SEQ);
  put_data(&b, 0, 10);
  if (sizeof(size_t) >= 8)
    expect_refused_fmt(&b, "truncated: header claims %zu bytes of data, file has 40",
                       (size_t)3 << 54);
  else
    expect_refused(&b, "size overflow");
  free(b.p);
}

/* ------------------------------------------------------------ header fields */

static void test_counts_past_limits(void **state) {
  (void)state;
  static const struct {
    const char *field;
    int pos; /* header word: 0 layers, 1 heads, 2 head_dim, 3 n_sentences */
    uint32_t hi;
  } fields[] = {
      {"layers", 0, CAPTURE_MAX_LAYERS},
      {"heads", 1, CAPTURE_MAX_HEADS},
      {"head_dim", 2, CAPTURE_MAX_HEAD_DIM},
      {"n_sentences", 3, CAPTURE_MAX_SENTENCES},
  };
  for (size_t k = 0; k < 4; k++) {
    const uint32_t bad[] = {0, fields[k].hi + 1, 0x7FFFFFFFu, 0x80000000u, 0xFFFFFFFFu};
    for (size_t j = 0; j < sizeof bad / sizeof bad[0]; j++) {
      bytes b = small_capture(0);
      unsigned char *w = b.p + 12 + 4 * fields[k].pos;
      w[0] = (unsigned char)bad[j], w[1] = (unsigned char)(bad[j] >> 8);
      w[2] = (unsigned char)(bad[j] >> 16), w[3] = (unsigned char)(bad[j] >> 24);
      expect_refused_fmt(&b, "header field %s = %lu is out of range (1..%lu)", fields[k].field,
                         (unsigned long)bad[j], (unsigned long)fields[k].hi);
      free(b.p);
    }
  }
  /* seq[s], in the middle of the table */
  const uint32_t bad[] = {0, CAPTURE_MAX_SEQ + 1, 0x80000000u, 0xFFFFFFFFu};
  for (size_t j = 0; j < sizeof bad / sizeof bad[0]; j++) {
    bytes b = small_capture(0);
    unsigned char *w = b.p + 32 + 4;
    w[0] = (unsigned char)bad[j], w[1] = (unsigned char)(bad[j] >> 8);
    w[2] = (unsigned char)(bad[j] >> 16), w[3] = (unsigned char)(bad[j] >> 24);
    expect_refused_fmt(&b, "seq[1] = %lu is out of range (1..%lu)", (unsigned long)bad[j],
                       (unsigned long)CAPTURE_MAX_SEQ);
    free(b.p);
  }
}

static void test_wrong_magic(void **state) {
  (void)state;
  static const char *magics[] = {"DATTNCAQ", "dattncap", "CAPTURE1", "DATTNCA\0"};
  static const char *shown[] = {"DATTNCAQ", "dattncap", "CAPTURE1", "DATTNCA\\x00"};
  for (int k = 0; k < 4; k++) {
    bytes b = small_capture(0);
    memcpy(b.p, magics[k], 8);
    expect_refused_fmt(&b, "bad magic \"%s\": not a DATTNCAP capture (it starts with \"DATTNCAP\")",
                       shown[k]);
    free(b.p);
  }
  /* a short file that is not a prefix of the magic: bad magic, not truncated */
  expect_refused_ex((const unsigned char *)"XYZ", 3, "bad magic \"XYZ\"", 0);
  expect_refused_ex((const unsigned char *)"\x7f" "ELF\x02\x01\x01\x00\x00\x00", 10,
                    "bad magic \"\\x7fELF\\x02\\x01\\x01\\x00\"", 0);
}

static void test_wrong_version(void **state) {
  (void)state;
  const uint32_t versions[] = {0, 3, 0xFFFFFFFFu};
  for (int k = 0; k < 3; k++) {
    bytes b = small_capture(0);
    b.p[8] = (unsigned char)versions[k], b.p[9] = (unsigned char)(versions[k] >> 8);
    b.p[10] = (unsigned char)(versions[k] >> 16), b.p[11] = (unsigned char)(versions[k] >> 24);
    expect_refused_fmt(&b,
                       "format version %lu is not supported (this reader knows versions 1 and 2)",
                       (unsigned long)versions[k]);
    /* the version is checked before the rest of the header is needed */
    b.n = 12;
    expect_refused(&b, "format version");
    free(b.p);
  }
}

static void test_bad_dtype(void **state) {
  (void)state;
  const uint32_t codes[] = {2, 3, 0x100, 0xFFFFFFFFu};
  for (int k = 0; k < 4; k++) {
    bytes b = small_capture(0);
    b.p[28] = (unsigned char)codes[k], b.p[29] = (unsigned char)(codes[k] >> 8);
    b.p[30] = (unsigned char)(codes[k] >> 16), b.p[31] = (unsigned char)(codes[k] >> 24);
    expect_refused_fmt(&b, "header field dtype = %lu is not a known dtype code (0 = f32, 1 = f16)",
                       (unsigned long)codes[k]);
    free(b.p);
  }
}

/* ------------------------------------------------------------ sizes */

/* The 19 MB file: seq values whose claimed data size, multiplied and summed
 * in a wrapping 64-bit size_t as the old readers did, comes to 16 MiB, the
 * size of the data actually there. L * H * D = 2^k, so the per-token
 * element count is 3 * 2^k, and sum_s seq[s] = S with 3 * 2^k * S * esz =
 * 2^24 mod 2^64. The old reader then allocated 16 MiB and converted ~2^63
 * elements (f16: a heap-buffer-overflow write in from_dtype). */
static void wrap_case(uint32_t dtype, uint32_t L, uint32_t H, uint32_t D, uint64_t S,
                      const char *want) {
  uint64_t esz = dtype == 0 ? 4 : 2;
  uint64_t per = (uint64_t)L * 3 * H * D;
  uint32_t N = (uint32_t)((S + CAPTURE_MAX_SEQ - 1) / CAPTURE_MAX_SEQ);
  uint32_t last = (uint32_t)(S - (uint64_t)(N - 1) * CAPTURE_MAX_SEQ);
  assert_true(N <= CAPTURE_MAX_SENTENCES && last >= 1 && last <= CAPTURE_MAX_SEQ);
  /* the old arithmetic, wrapping mod 2^64 */
  uint64_t old_elems = 0;
  for (uint32_t s = 0; s < N; s++) old_elems += per * (s + 1 < N ? CAPTURE_MAX_SEQ : last);
  uint64_t old_bytes = esz * old_elems;
  assert_true(old_bytes == (uint64_t)1 << 24);
  assert_true(old_elems >= (uint64_t)1 << 63); /* what the old reader converted */

  size_t table_end = 32 + 4 * (size_t)N, n = table_end + ((size_t)1 << 24);
  bytes b = {0};
  b.p = calloc(1, n); /* the data: 16 MiB of zeros */
  assert_non_null(b.p);
  b.cap = n;
  header(&b, 1, L, H, D, N, dtype);
  for (uint32_t s = 0; s < N; s++) put32(&b, s + 1 < N ? CAPTURE_MAX_SEQ : last);
  assert_int_equal(b.n, table_end);
  b.n = n;
  if (getenv("DA_TEST_VERBOSE"))
    fprintf(stderr, "  wrap case: %zu bytes, N = %lu, claims 2^63 + %llu elements\n", n,
            (unsigned long)N, (unsigned long long)(old_elems - ((uint64_t)1 << 63)));
  expect_refused(&b, want);
  free(b.p);
}

static void test_size_wrap(void **state) {
  (void)state;
  /* f32: L*H*D = 2^22, S = (2^41 + 1) / 3: 2^63 + 2^22 elements, 4 bytes
   * each = 2^24 mod 2^64; the element count fits, the byte count does not */
  wrap_case(0, 4096, 4, 256, ((uint64_t)1 << 41 | 1) / 3,
            sizeof(size_t) >= 8 ? "size overflow: 9223372036858970112 elements of 4 bytes each"
                                : "size overflow");
  /* f16: L*H*D = 2^23, S = (5 * 2^40 + 1) / 3: 5 * 2^63 + 2^23 elements =
   * 2^63 + 2^23 mod 2^64, 2 bytes each = 2^24; the sum itself overflows */
  wrap_case(1, 4096, 128, 16, ((uint64_t)5 << 40 | 1) / 3,
            sizeof(size_t) >= 8 ? "size overflow: the data the header claims (layers 4096 x 3 x "
                                  "heads 128 x head_dim 16 x seq[s], summed over the sentences) "
                                  "passes SIZE_MAX elements at seq["
                                : "size overflow");
}

/* Every proper prefix of a valid file is refused with the message of the
 * region it ends in, and so is the empty file. */
static void test_truncated_everywhere(void **state) {
  (void)state;
  for (uint32_t dtype = 0; dtype < 2; dtype++) {
    bytes b = small_capture(dtype);
    size_t data = b.n - SMALL_TABLE_END;
    for (size_t n = 0; n < b.n; n++) {
      char want[256];
      int exact = 1;
      if (n == 0)
        snprintf(want, sizeof want, "empty file (0 bytes): not a DATTNCAP capture");
      else if (n < 8)
        snprintf(want, sizeof want,
                 "truncated inside the magic: the file has %zu bytes, the magic is 8", n);
      else if (n < 12)
        snprintf(want, sizeof want,
                 "truncated inside the header: the file has %zu bytes, the version field ends at "
                 "byte 12",
                 n);
      else if (n < 32)
        snprintf(want, sizeof want,
                 "truncated inside the header: the file has %zu bytes, the version 1 header is 32",
                 n);
      else if (n < SMALL_TABLE_END)
        snprintf(want, sizeof want,
                 "truncated inside the sequence table: n_sentences = 3 needs 44 bytes of header "
                 "and table, the file has %zu",
                 n);
      else
        snprintf(want, sizeof want, "truncated: header claims %zu bytes of data, file has %zu",
                 data, n - SMALL_TABLE_END);
      expect_refused_ex(b.p, n, want, exact);
    }
    free(b.p);
  }
}

static void test_trailing_bytes(void **state) {
  (void)state;
  const size_t extra[] = {1, 2, 3, 4, 100, 4096};
  for (int k = 0; k < 6; k++) {
    bytes b = small_capture(1);
    size_t data = b.n - SMALL_TABLE_END;
    for (size_t i = 0; i < extra[k]; i++) put(&b, "\0", 1);
    expect_refused_fmt(&b,
                       "trailing bytes: header claims %zu bytes of data, file has %zu (%zu bytes "
                       "after the data)",
                       data, data + extra[k], extra[k]);
    free(b.p);
  }
  /* a second capture appended to the first */
  bytes b = small_capture(0), c = small_capture(0);
  put(&b, c.p, c.n);
  expect_refused(&b, "trailing bytes: header claims 2304 bytes of data, file has 4652");
  free(b.p), free(c.p);
}

/* ------------------------------------------------------------ values */

static void test_nonfinite(void **state) {
  (void)state;
  static const struct {
    uint32_t dtype;
    uint32_t bits;
    const char *name;
  } bad[] = {
      {0, 0x7FC00000u, "NaN"}, {0, 0xFFFFFFFFu, "NaN"}, {0, 0x7F800001u, "NaN"},
      {0, 0x7F800000u, "+Inf"}, {0, 0xFF800000u, "-Inf"}, {1, 0x7E00, "NaN"},
      {1, 0x7C01, "NaN"},       {1, 0x7C00, "+Inf"},    {1, 0xFC00, "-Inf"},
  };
  /* sentence 1, layer 1, V, head 2, token 3, dim 1; and the very last element */
  const size_t first = small_index(1, 1, 2, 2, 3, 1), last = SMALL_ELEMS - 1;
  for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
    size_t esz = bad[k].dtype == 0 ? 4 : 2;
    for (int where = 0; where < 2; where++) {
      bytes b = small_capture(bad[k].dtype);
      size_t i = where ? last : first;
      unsigned char *p = b.p + SMALL_TABLE_END + i * esz;
      for (size_t j = 0; j < esz; j++) p[j] = (unsigned char)(bad[k].bits >> (8 * j));
      if (where)
        expect_refused_fmt(&b,
                           "non-finite value (%s) in the data: sentence 2, layer 1, V, head 2, "
                           "token 1, dim 3 (element %zu, byte %zu)",
                           bad[k].name, i, SMALL_TABLE_END + i * esz);
      else
        expect_refused_fmt(&b,
                           "non-finite value (%s) in the data: sentence 1, layer 1, V, head 2, "
                           "token 3, dim 1 (element %zu, byte %zu)",
                           bad[k].name, i, SMALL_TABLE_END + i * esz);
      free(b.p);
    }
  }
  /* past the file entry's first 64 KiB chunk: one sentence, 3 x 25600 f16
   * elements, a NaN at element 70000 = V, token 73, dim 112 */
  bytes b = {0};
  header(&b, 1, 1, 1, 256, 1, 1);
  put32(&b, 100);
  put_data(&b, 1, 3 * 25600);
  b.p[36 + 2 * 70000] = 0x00, b.p[36 + 2 * 70000 + 1] = 0x7E;
  expect_refused_fmt(&b,
                     "non-finite value (NaN) in the data: sentence 0, layer 0, V, head 0, token "
                     "73, dim 112 (element 70000, byte 140036)");
  free(b.p);
}

/* ------------------------------------------------------------ the file entry */

static void test_file_entry(void **state) {
  (void)state;
  char why[256];
  capture c;
  char path[512];
  snprintf(path, sizeof path, "%s/da-test-capture-does-not-exist.dattncap", tmp_dir());
  assert_int_equal(capture_load_file(path, &c, why, sizeof why), -1);
  assert_zeroed(&c);
  assert_non_null(strstr(why, "cannot open"));
  assert_int_equal(capture_load_file(tmp_dir(), &c, why, sizeof why), -1);
  assert_zeroed(&c);
  assert_non_null(strstr(why, "not a regular file"));
  /* a tiny or absent message buffer is fine */
  bytes b = small_capture(0);
  b.p[8] = 3;
  assert_int_equal(capture_parse(b.p, b.n, &c, NULL, 0), -1);
  why[0] = 'x';
  assert_int_equal(capture_parse(b.p, b.n, &c, why, 1), -1);
  assert_int_equal(why[0], '\0');
  assert_int_equal(capture_parse(b.p, b.n, &c, why, 8), -1);
  assert_string_equal(why, "format ");
  assert_int_equal(capture_parse(NULL, 0, &c, why, sizeof why), -1);
  free(b.p);
}

/* ------------------------------------------------------------ version 2 */

/* A version 2 header: GQA (kv_heads), causal, scale (as f32 bits) and the
 * 64-byte NUL-padded model name (model: up to 64 bytes, copied as is). */
static void header2(bytes *b, uint32_t L, uint32_t H, uint32_t KV, uint32_t D, uint32_t N,
                    uint32_t dtype, uint32_t causal, uint32_t scale_bits, const char *model,
                    size_t model_len) {
  put(b, "DATTNCAP", 8);
  put32(b, 2), put32(b, L), put32(b, H), put32(b, KV), put32(b, D), put32(b, N);
  put32(b, dtype), put32(b, causal), put32(b, scale_bits);
  unsigned char m[CAPTURE_MODEL_BYTES] = {0};
  memcpy(m, model, model_len);
  put(b, m, sizeof m);
}

static uint32_t f32_bits(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  return u;
}

/* The small valid version 2 capture: 2 layers, 6 query heads over 2 kv
 * heads, head_dim 4, causal, scale 0.125, three entries with seq_q = seq_k,
 * seq_q < seq_k (a chunk of queries against a longer key prefix) and
 * seq_q > seq_k. */
#define V2L 2u
#define V2H 6u
#define V2KV 2u
#define V2D 4u
#define V2N 3u
#define V2_MODEL "SmolLM2-135M-Instruct (test)"
static const uint32_t v2_sq[V2N] = {3, 2, 5}, v2_sk[V2N] = {3, 7, 1};
#define V2_TABLE_END (108u + 8u * V2N) /* 132 */

static size_t v2_entry_elems(unsigned s) {
  return (size_t)V2L * V2D * (V2H * v2_sq[s] + 2 * V2KV * v2_sk[s]);
}

static size_t v2_total(void) {
  size_t n = 0;
  for (unsigned s = 0; s < V2N; s++) n += v2_entry_elems(s);
  return n; /* 2 * 4 * (6 * 10 + 4 * 11) = 832 */
}

static size_t v2_off(unsigned s) {
  size_t o = 0;
  for (unsigned t = 0; t < s; t++) o += v2_entry_elems(t);
  return o;
}

/* Element index of (entry, layer, which = 0 Q / 1 K / 2 V, head, token, dim). */
static size_t v2_index(unsigned s, unsigned l, unsigned w, unsigned h, unsigned t, unsigned d) {
  size_t nq = (size_t)V2H * v2_sq[s] * V2D, nk = (size_t)V2KV * v2_sk[s] * V2D;
  size_t i = v2_off(s) + (size_t)l * (nq + 2 * nk);
  if (w == 0) return i + ((size_t)h * v2_sq[s] + t) * V2D + d;
  return i + nq + (w - 1) * nk + ((size_t)h * v2_sk[s] + t) * V2D + d;
}

static bytes v2_capture(uint32_t dtype) {
  bytes b = {0};
  header2(&b, V2L, V2H, V2KV, V2D, V2N, dtype, 1, f32_bits(0.125f), V2_MODEL,
          strlen(V2_MODEL));
  for (unsigned s = 0; s < V2N; s++) put32(&b, v2_sq[s]), put32(&b, v2_sk[s]);
  put_data(&b, dtype, v2_total());
  return b;
}

/* Writes v into the little-endian word at b->p + at. */
static void poke32(bytes *b, size_t at, uint32_t v) {
  b->p[at] = (unsigned char)v, b->p[at + 1] = (unsigned char)(v >> 8);
  b->p[at + 2] = (unsigned char)(v >> 16), b->p[at + 3] = (unsigned char)(v >> 24);
}

static void check_v2(const capture *c, uint32_t dtype) {
  assert_int_equal(c->version, 2);
  assert_int_equal(c->layers, V2L);
  assert_int_equal(c->heads, V2H);
  assert_int_equal(c->kv_heads, V2KV);
  assert_int_equal(c->head_dim, V2D);
  assert_int_equal(c->n_sent, V2N);
  assert_int_equal(c->dtype, dtype);
  assert_int_equal(c->causal, 1);
  assert_true(c->scale == 0.125f);
  assert_string_equal(c->model, V2_MODEL);
  assert_int_equal(c->total, v2_total());
  assert_true(c->seq == c->seq_q);
  for (unsigned s = 0; s < V2N; s++) {
    assert_int_equal(c->seq_q[s], v2_sq[s]);
    assert_int_equal(c->seq_k[s], v2_sk[s]);
    assert_int_equal(c->off[s], v2_off(s));
  }
  for (size_t i = 0; i < c->total; i++) {
    float want = dtype == 0 ? f32_value(i) : f16_table[f16_index(i)].value;
    if (memcmp(&c->data[i], &want, 4) != 0)
      fail_msg("element %zu: read %a, written %a", i, (double)c->data[i], (double)want);
  }
  /* capture_qkv: Q, K and V of every (entry, layer) where the layout says */
  for (unsigned s = 0; s < V2N; s++)
    for (unsigned l = 0; l < V2L; l++) {
      const float *q, *k, *v;
      capture_qkv(c, s, l, &q, &k, &v);
      assert_true(q == c->data + v2_index(s, l, 0, 0, 0, 0));
      assert_true(k == c->data + v2_index(s, l, 1, 0, 0, 0));
      assert_true(v == c->data + v2_index(s, l, 2, 0, 0, 0));
      assert_true(q + (size_t)5 * v2_sq[s] * V2D + 3 == c->data + v2_index(s, l, 0, 5, 0, 3));
      assert_true(v + ((size_t)1 * v2_sk[s] + v2_sk[s] - 1) * V2D ==
                  c->data + v2_index(s, l, 2, 1, v2_sk[s] - 1, 0));
    }
  /* capture_desc: the entry's shape, the DistrAttention settings untouched */
  da_attn_desc d;
  da_attn_desc_init(&d);
  d.group_size = 4;
  capture_desc(c, 1, &d);
  assert_int_equal(d.batch, 1);
  assert_int_equal(d.heads, V2H);
  assert_int_equal(d.kv_heads, V2KV);
  assert_int_equal(d.seq_q, 2);
  assert_int_equal(d.seq_k, 7);
  assert_int_equal(d.head_dim, V2D);
  assert_int_equal(d.causal, 1);
  assert_true(d.scale == 0.125f);
  assert_int_equal(d.group_size, 4);
}

static void test_v2_valid(void **state) {
  (void)state;
  for (uint32_t dtype = 0; dtype < 2; dtype++) {
    bytes b = v2_capture(dtype);
    assert_int_equal(b.n, V2_TABLE_END + (dtype ? 2 : 4) * v2_total());
    capture c;
    load_both(&b, &c);
    check_v2(&c, dtype);
    capture_free(&c);
    assert_zeroed(&c);
    free(b.p);
  }
}

/* A version 1 file reads as no GQA, no mask, the default scale, no name. */
static void test_v1_as_v2_fields(void **state) {
  (void)state;
  bytes b = small_capture(1);
  capture c;
  load_both(&b, &c);
  assert_int_equal(c.version, 1);
  assert_int_equal(c.kv_heads, SH);
  assert_int_equal(c.causal, 0);
  assert_true(c.scale == 0.0f);
  assert_string_equal(c.model, "");
  assert_true(c.seq == c.seq_q);
  for (unsigned s = 0; s < SN; s++) assert_int_equal(c.seq_k[s], small_seq[s]);
  const float *q, *k, *v;
  capture_qkv(&c, 1, 1, &q, &k, &v);
  assert_true(k == c.data + small_index(1, 1, 1, 0, 0, 0));
  assert_true(v == c.data + small_index(1, 1, 2, 0, 0, 0));
  (void)q;
  capture_free(&c);
  free(b.p);
}

/* Other valid version 2 shapes: MHA (kv_heads = heads), MQA (kv_heads 1),
 * no mask, scale 0 (the default), a 64-byte name with no NUL, an empty name,
 * and the counts at their limits. */
static void test_v2_shapes_accepted(void **state) {
  (void)state;
  static const char full[] = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde~";
  static const struct {
    uint32_t L, H, KV, D, causal, scale, sq, sk;
    const char *model;
    size_t model_len;
  } ok[] = {
      {1, 4, 4, 8, 0, 0, 3, 3, "mha", 3},
      {2, 8, 1, 2, 1, 0x3E000000u /* 0.125 */, 1, 9, "mqa", 3},
      {1, 2, 2, 1, 0, 0x00000001u /* the least subnormal */, 4, 2, "", 0},
      {1, 1, 1, 1, 1, 0, 1, 1, full, 64},
      {CAPTURE_MAX_LAYERS, 1, 1, 1, 0, 0, 1, 1, "L", 1},
      {1, CAPTURE_MAX_HEADS, CAPTURE_MAX_HEADS, 1, 0, 0, 1, 1, "H", 1},
      {1, CAPTURE_MAX_HEADS, 1, 1, 0, 0, 1, 1, "H/1", 3},
      {1, 1, 1, CAPTURE_MAX_HEAD_DIM, 0, 0, 1, 1, "D", 1},
      {1, 1, 1, 1, 1, 0, 1, CAPTURE_MAX_SEQ, "seq_k", 5},
      {1, 1, 1, 1, 1, 0, CAPTURE_MAX_SEQ, 1, "seq_q", 5},
  };
  for (size_t k = 0; k < sizeof ok / sizeof ok[0]; k++) {
    bytes b = {0};
    header2(&b, ok[k].L, ok[k].H, ok[k].KV, ok[k].D, 1, 1, ok[k].causal, ok[k].scale, ok[k].model,
            ok[k].model_len);
    put32(&b, ok[k].sq), put32(&b, ok[k].sk);
    size_t n = (size_t)ok[k].L * ok[k].D * (ok[k].H * ok[k].sq + 2 * ok[k].KV * ok[k].sk);
    put_data(&b, 1, n);
    capture c;
    load_both(&b, &c);
    assert_int_equal(c.total, n);
    assert_int_equal(c.kv_heads, ok[k].KV);
    assert_int_equal(c.causal, ok[k].causal);
    assert_int_equal(f32_bits(c.scale), ok[k].scale);
    assert_int_equal(strlen(c.model), ok[k].model_len);
    assert_memory_equal(c.model, ok[k].model, ok[k].model_len);
    assert_int_equal(c.seq_q[0], ok[k].sq);
    assert_int_equal(c.seq_k[0], ok[k].sk);
    for (size_t i = 0; i < n; i += 997) assert_true(c.data[i] == f16_table[f16_index(i)].value);
    capture_free(&c);
    free(b.p);
  }
}

/* Every version 2 field past its rule, with the message naming it. */
static void test_v2_fields_refused(void **state) {
  (void)state;
  /* header words: 12 layers, 16 heads, 20 kv_heads, 24 head_dim, 28 n_entries,
   * 32 dtype, 36 causal, 40 scale */
  static const struct {
    size_t at;
    uint32_t v;
    const char *want;
  } bad[] = {
      {12, 0, "header field layers = 0 is out of range (1..4096)"},
      {12, 0xFFFFFFFFu, "header field layers = 4294967295 is out of range (1..4096)"},
      {16, 4097, "header field heads = 4097 is out of range (1..4096)"},
      {20, 0, "header field kv_heads = 0 is out of range (1..6)"},
      {20, 7, "header field kv_heads = 7 is out of range (1..6)"},
      {20, 0xFFFFFFFFu, "header field kv_heads = 4294967295 is out of range (1..6)"},
      {20, 4,
       "header field kv_heads = 4 does not divide heads = 6 (query head h reads kv head "
       "h / (heads / kv_heads))"},
      {20, 5,
       "header field kv_heads = 5 does not divide heads = 6 (query head h reads kv head "
       "h / (heads / kv_heads))"},
      {24, 0, "header field head_dim = 0 is out of range (1..256)"},
      {24, 257, "header field head_dim = 257 is out of range (1..256)"},
      {28, 0, "header field n_entries = 0 is out of range (1..16777216)"},
      {28, 0xFFFFFFFFu, "header field n_entries = 4294967295 is out of range (1..16777216)"},
      {32, 2, "header field dtype = 2 is not a known dtype code (0 = f32, 1 = f16)"},
      {36, 2, "header field causal = 2 is not 0 (no mask) or 1 (causal)"},
      {36, 0xFFFFFFFFu, "header field causal = 4294967295 is not 0 (no mask) or 1 (causal)"},
      {40, 0x7FC00000u,
       "header field scale = nan (bits 0x7fc00000) is neither finite and positive nor 0 "
       "(= 1/sqrt(head_dim))"},
      {40, 0x7F800000u,
       "header field scale = inf (bits 0x7f800000) is neither finite and positive nor 0 "
       "(= 1/sqrt(head_dim))"},
      {40, 0xFF800000u,
       "header field scale = -inf (bits 0xff800000) is neither finite and positive nor 0 "
       "(= 1/sqrt(head_dim))"},
      {40, 0xBF800000u,
       "header field scale = -1 (bits 0xbf800000) is neither finite and positive nor 0 "
       "(= 1/sqrt(head_dim))"},
      {40, 0x80000000u,
       "header field scale = -0 (bits 0x80000000) is neither finite and positive nor 0 "
       "(= 1/sqrt(head_dim))"},
      /* seq_q[1] and seq_k[2] in the table */
      {108 + 8, 0, "seq_q[1] = 0 is out of range (1..1048576)"},
      {108 + 8, CAPTURE_MAX_SEQ + 1, "seq_q[1] = 1048577 is out of range (1..1048576)"},
      {108 + 20, 0, "seq_k[2] = 0 is out of range (1..1048576)"},
      {108 + 20, 0xFFFFFFFFu, "seq_k[2] = 4294967295 is out of range (1..1048576)"},
  };
  for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
    bytes b = v2_capture(k % 2);
    poke32(&b, bad[k].at, bad[k].v);
    expect_refused_ex(b.p, b.n, bad[k].want, 1);
    free(b.p);
  }
  /* the model name: printable ASCII, then NUL padding only */
  static const struct {
    size_t at;
    unsigned char v;
    const char *want;
  } name[] = {
      {3, 0x01, "header field model: byte 3 is 0x01, not printable ASCII (0x20..0x7e) nor NUL "
                "padding"},
      {0, 0x7f, "header field model: byte 0 is 0x7f, not printable ASCII (0x20..0x7e) nor NUL "
                "padding"},
      {10, 0xc3, "header field model: byte 10 is 0xc3, not printable ASCII (0x20..0x7e) nor NUL "
                 "padding"},
      {63, 'x', "header field model: byte 63 is 0x78 after the NUL padding that begins at byte "
                "28 (the name is NUL-padded ASCII)"},
      {40, ' ', "header field model: byte 40 is 0x20 after the NUL padding that begins at byte "
                "28 (the name is NUL-padded ASCII)"},
  };
  for (size_t k = 0; k < sizeof name / sizeof name[0]; k++) {
    bytes b = v2_capture(0);
    b.p[44 + name[k].at] = name[k].v;
    expect_refused_ex(b.p, b.n, name[k].want, 1);
    free(b.p);
  }
}

/* Truncation at every byte of a version 2 file, trailing bytes, a size
 * overflow, and non-finite values located in Q and in a kv head's K. */
static void test_v2_sizes_and_values(void **state) {
  (void)state;
  bytes b = v2_capture(1);
  size_t data = b.n - V2_TABLE_END;
  for (size_t n = 12; n < b.n; n++) {
    char want[256];
    if (n < 108)
      snprintf(want, sizeof want,
               "truncated inside the header: the file has %zu bytes, the version 2 header is 108",
               n);
    else if (n < V2_TABLE_END)
      snprintf(want, sizeof want,
               "truncated inside the sequence table: n_entries = 3 needs 132 bytes of header and "
               "table, the file has %zu",
               n);
    else
      snprintf(want, sizeof want, "truncated: header claims %zu bytes of data, file has %zu",
               data, n - V2_TABLE_END);
    expect_refused_ex(b.p, n, want, 1);
  }
  put(&b, "\0\0\0", 3);
  expect_refused_fmt(&b,
                     "trailing bytes: header claims %zu bytes of data, file has %zu (3 bytes "
                     "after the data)",
                     data, data + 3);
  free(b.p);

  /* everything at its limit, two entries: 4096 x 256 x (4096 x 2^20 + 2 x
   * 4096 x 2^20) elements each = 3 x 2^52; in bytes (f32) 3 x 2^55 per entry */
  b = (bytes){0};
  header2(&b, CAPTURE_MAX_LAYERS, CAPTURE_MAX_HEADS, CAPTURE_MAX_HEADS, CAPTURE_MAX_HEAD_DIM, 2,
          0, 1, 0, "big", 3);
  for (int s = 0; s < 2; s++) put32(&b, CAPTURE_MAX_SEQ), put32(&b, CAPTURE_MAX_SEQ);
  put_data(&b, 0, 4);
  if (sizeof(size_t) >= 8)
    expect_refused_fmt(&b, "truncated: header claims 108086391056891904 bytes of data, file has "
                           "16");
  else
    expect_refused(&b, "size overflow");
  free(b.p);
  /* 400 such entries: the element count fits, the byte count does not */
  if (sizeof(size_t) >= 8) {
    b = (bytes){0};
    header2(&b, CAPTURE_MAX_LAYERS, CAPTURE_MAX_HEADS, CAPTURE_MAX_HEADS, CAPTURE_MAX_HEAD_DIM,
            400, 0, 1, 0, "big", 3);
    for (int s = 0; s < 400; s++) put32(&b, CAPTURE_MAX_SEQ), put32(&b, CAPTURE_MAX_SEQ);
    put_data(&b, 0, 4);
    expect_refused_fmt(&b,
                       "size overflow: 5404319552844595200 elements of 4 bytes each (the data the "
                       "header claims) do not fit in size_t; the file has 3324 bytes");
    free(b.p);
  }
  /* the element count itself overflows: 4096 such entries */
  if (sizeof(size_t) >= 8) {
    size_t N = 1u << 12; /* 4096 x 3 x 2^52 passes 2^64 at entry 1365 */
    b = (bytes){0};
    header2(&b, CAPTURE_MAX_LAYERS, CAPTURE_MAX_HEADS, CAPTURE_MAX_HEADS, CAPTURE_MAX_HEAD_DIM,
            (uint32_t)N, 1, 0, 0, "big", 3);
    for (size_t s = 0; s < N; s++) put32(&b, CAPTURE_MAX_SEQ), put32(&b, CAPTURE_MAX_SEQ);
    expect_refused(&b,
                   "size overflow: the data the header claims (layers 4096 x head_dim 256 x "
                   "(heads 4096 x seq_q + 2 x kv_heads 4096 x seq_k), summed over the entries) "
                   "passes SIZE_MAX elements at entry 1365 (seq_q 1048576, seq_k 1048576)");
    free(b.p);
  }

  /* NaN in Q of entry 2, layer 1, head 5, token 4, dim 2; -Inf in K of
   * entry 1, layer 0, kv head 1, token 6, dim 0; +Inf in the last V */
  static const struct {
    unsigned s, l, w, h, t, d;
    uint32_t bits32;
    uint16_t bits16;
    const char *name, *where;
  } nf[] = {
      {2, 1, 0, 5, 4, 2, 0x7FC00000u, 0x7E00, "NaN",
       "entry 2, layer 1, Q, head 5, token 4, dim 2"},
      {1, 0, 1, 1, 6, 0, 0xFF800000u, 0xFC00, "-Inf",
       "entry 1, layer 0, K, kv head 1, token 6, dim 0"},
      {2, 1, 2, 1, 0, 3, 0x7F800000u, 0x7C00, "+Inf",
       "entry 2, layer 1, V, kv head 1, token 0, dim 3"},
  };
  for (size_t k = 0; k < sizeof nf / sizeof nf[0]; k++)
    for (uint32_t dtype = 0; dtype < 2; dtype++) {
      b = v2_capture(dtype);
      size_t esz = dtype ? 2 : 4, i = v2_index(nf[k].s, nf[k].l, nf[k].w, nf[k].h, nf[k].t,
                                                nf[k].d);
      if (k == 2) assert_int_equal(i, v2_total() - 1);
      unsigned char *p = b.p + V2_TABLE_END + i * esz;
      uint32_t bits = dtype ? nf[k].bits16 : nf[k].bits32;
      for (size_t j = 0; j < esz; j++) p[j] = (unsigned char)(bits >> (8 * j));
      expect_refused_fmt(&b, "non-finite value (%s) in the data: %s (element %zu, byte %zu)",
                         nf[k].name, nf[k].where, i, V2_TABLE_END + i * esz);
      free(b.p);
    }
}

/* ------------------------------------------------------------ distrattn eval */

static char *slurp(const char *path) {
  FILE *f = fopen(path, "rb");
  assert_non_null(f);
  size_t cap = 4096, n = 0;
  char *s = malloc(cap);
  assert_non_null(s);
  size_t got;
  while ((got = fread(s + n, 1, cap - n - 1, f)) > 0) {
    n += got;
    if (cap - n - 1 == 0) {
      char *t = realloc(s, cap *= 2);
      assert_non_null(t);
      s = t;
    }
  }
  fclose(f);
  s[n] = '\0';
  return s;
}

/* Runs DA_TEST_BUILDDIR/tools/distrattn eval on b with extra arguments;
 * returns the exit status (a crash fails the test) and its stderr (and its
 * stdout in *out, when out is not NULL). */
static int run_eval_out(const bytes *b, const char *const *extra, char **err, char **out) {
  char bin[1024], cap[512], errpath[512], outpath[512];
  snprintf(bin, sizeof bin, "%s/tools/distrattn", DA_TEST_BUILDDIR);
  if (access(bin, X_OK) != 0) fail_msg("%s: %s (build the program first)", bin, strerror(errno));
  write_temp(b->p, b->n, cap, sizeof cap);
  write_temp(NULL, 0, errpath, sizeof errpath);
  write_temp(NULL, 0, outpath, sizeof outpath);
  const char *argv[16] = {bin, "eval"};
  int argc = 2;
  for (int i = 0; extra && extra[i] && argc < 14; i++) argv[argc++] = extra[i];
  argv[argc++] = cap;
  argv[argc] = NULL;
  posix_spawn_file_actions_t fa;
  assert_int_equal(posix_spawn_file_actions_init(&fa), 0);
  assert_int_equal(posix_spawn_file_actions_addopen(&fa, 1, outpath, O_WRONLY | O_TRUNC, 0), 0);
  assert_int_equal(posix_spawn_file_actions_addopen(&fa, 2, errpath, O_WRONLY | O_TRUNC, 0), 0);
  pid_t pid;
  int rc = posix_spawn(&pid, bin, &fa, NULL, (char *const *)argv, environ);
  posix_spawn_file_actions_destroy(&fa);
  if (rc != 0) fail_msg("posix_spawn %s: %s", bin, strerror(rc));
  int st;
  while (waitpid(pid, &st, 0) < 0)
    if (errno != EINTR) fail_msg("waitpid: %s", strerror(errno));
  unlink(cap);
  *err = slurp(errpath);
  unlink(errpath);
  if (out) *out = slurp(outpath);
  unlink(outpath);
  if (WIFSIGNALED(st)) fail_msg("distrattn eval died of signal %d; stderr:\n%s", WTERMSIG(st), *err);
  assert_true(WIFEXITED(st));
  return WEXITSTATUS(st);
}

static int run_eval(const bytes *b, const char *const *extra, char **err) {
  return run_eval_out(b, extra, err, NULL);
}

static void expect_eval_refuses(const bytes *b, const char *want) {
  char *err = NULL;
  int rc = run_eval(b, NULL, &err);
  if (getenv("DA_TEST_VERBOSE")) fprintf(stderr, "  eval: exit %d, stderr: %s", rc, err);
  if (rc != 1 || !strstr(err, "distrattn eval: ") || !strstr(err, want) ||
      strstr(err, "Sanitizer") || strstr(err, "runtime error"))
    fail_msg("distrattn eval on a crafted file: exit %d (expected 1), stderr:\n%s\n(expected a "
             "message containing \"%s\")",
             rc, err, want);
  free(err);
}

static void test_eval_command(void **state) {
  (void)state;
  /* the f16 size wrap of test_size_wrap (23 MB: 7 MB of sequence table,
   * the 16 MiB of data the old arithmetic expected) */
  {
    uint32_t N = 1747627, last = (uint32_t)(((uint64_t)5 << 40 | 1) / 3 -
                                            (uint64_t)(N - 1) * CAPTURE_MAX_SEQ);
    bytes b = {0};
    header(&b, 1, 4096, 128, 16, N, 1);
    for (uint32_t s = 0; s < N; s++) put32(&b, s + 1 < N ? CAPTURE_MAX_SEQ : last);
    size_t want_len = b.n + ((size_t)1 << 24);
    unsigned char *p = realloc(b.p, want_len);
    assert_non_null(p);
    memset(p + b.n, 0, want_len - b.n);
    b.p = p, b.n = b.cap = want_len;
    expect_eval_refuses(&b, "size overflow");
    free(b.p);
  }
  bytes b = small_capture(1);
  b.n -= 3;
  expect_eval_refuses(&b, "truncated: header claims 1152 bytes of data, file has 1149");
  b.n += 3;
  b.p[8] = 0xFF, b.p[9] = 0xFF, b.p[10] = 0xFF, b.p[11] = 0xFF;
  expect_eval_refuses(&b, "format version 4294967295 is not supported");
  b.p[8] = 1, b.p[9] = b.p[10] = b.p[11] = 0;
  b.p[12] = 0xFF, b.p[13] = 0xFF, b.p[14] = 0xFF, b.p[15] = 0xFF;
  expect_eval_refuses(&b, "header field layers = 4294967295 is out of range (1..4096)");
  free(b.p);
  bytes e = {0};
  expect_eval_refuses(&e, "empty file (0 bytes)");
  /* and a valid one runs */
  b = small_capture(1);
  static const char *const args[] = {"--backend", "cpu", "--groups", "1,2", NULL};
  char *err = NULL;
  int rc = run_eval(&b, args, &err);
  if (rc != 0) fail_msg("distrattn eval on a valid capture: exit %d, stderr:\n%s", rc, err);
  free(err);
  free(b.p);
}

/* eval on version 2 files: refusals as the reader's, and a valid GQA causal
 * capture with seq_q != seq_k runs, names the model, and its exact row (G=1,
 * CSV) matches eval's float64 reference, which takes the same mask, GQA
 * mapping, seq_q x seq_k and scale. */
static void test_eval_v2(void **state) {
  (void)state;
  bytes b = v2_capture(1);
  poke32(&b, 20, 4);
  expect_eval_refuses(&b, "header field kv_heads = 4 does not divide heads = 6");
  poke32(&b, 20, V2KV);
  poke32(&b, 36, 7);
  expect_eval_refuses(&b, "header field causal = 7 is not 0 (no mask) or 1 (causal)");
  poke32(&b, 36, 1);
  poke32(&b, 40, 0x7FC00000u);
  expect_eval_refuses(&b, "header field scale = nan");
  free(b.p);

  b = v2_capture(1);
  static const char *const text[] = {"--backend", "cpu", "--groups", "1,2", NULL};
  char *err = NULL, *out = NULL;
  int rc = run_eval_out(&b, text, &err, &out);
  if (rc != 0) fail_msg("distrattn eval on a valid v2 capture: exit %d, stderr:\n%s", rc, err);
  if (!strstr(out, V2_MODEL) || !strstr(out, "6 heads / 2 kv heads") || !strstr(out, "causal") ||
      !strstr(out, "scale 0.125") || !strstr(out, "2 with seq_q != seq_k"))
    fail_msg("distrattn eval's header on a v2 capture:\n%s", out);
  free(err), free(out);
  static const char *const csv[] = {"--backend", "cpu", "--groups", "1", "--csv", NULL};
  rc = run_eval_out(&b, csv, &err, &out);
  if (rc != 0) fail_msg("distrattn eval --csv on a valid v2 capture: exit %d, stderr:\n%s", rc, err);
  /* the second line: cpu,"NAME",1,,16,128,3,10,TOTAL,WORST,... (3 entries,
   * 10 query rows) */
  const char *line = strchr(out, '\n'), *key = ",1,,16,128,3,10,";
  assert_non_null(line);
  const char *f = strstr(line, key);
  if (!f) fail_msg("no \"%s\" in eval's CSV:\n%s", key, out);
  double total = strtod(f + strlen(key), NULL);
  if (getenv("DA_TEST_VERBOSE")) fprintf(stderr, "  eval v2 exact: %s", line + 1);
  if (!(total >= 0.0 && total < 1e-5)) fail_msg("exact error %.3e on the v2 capture:\n%s", total, out);
  free(err), free(out);
  free(b.p);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_valid_f32),
      cmocka_unit_test(test_valid_f16),
      cmocka_unit_test(test_limits_accepted),
      cmocka_unit_test(test_counts_past_limits),
      cmocka_unit_test(test_wrong_magic),
      cmocka_unit_test(test_wrong_version),
      cmocka_unit_test(test_bad_dtype),
      cmocka_unit_test(test_size_wrap),
      cmocka_unit_test(test_truncated_everywhere),
      cmocka_unit_test(test_trailing_bytes),
      cmocka_unit_test(test_nonfinite),
      cmocka_unit_test(test_file_entry),
      cmocka_unit_test(test_v2_valid),
      cmocka_unit_test(test_v1_as_v2_fields),
      cmocka_unit_test(test_v2_shapes_accepted),
      cmocka_unit_test(test_v2_fields_refused),
      cmocka_unit_test(test_v2_sizes_and_values),
      cmocka_unit_test(test_eval_command),
      cmocka_unit_test(test_eval_v2),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
