/* SPDX-License-Identifier: Apache-2.0 */
/* distrattn command-line program: the DATTNCAP capture reader (see
 * capture_io.h and tools/CAPTURE_FORMAT.md, "Reader's checks").
 *
 * Both entries run the same three steps:
 *  1. check_fixed: magic, version, the header fields' ranges, and that the
 *     sequence table fits in the input;
 *  2. check_sizes: every seq[s], and the data size the header claims,
 *     computed with checked arithmetic, against the real size: it must be
 *     exactly what is left after the table;
 *  3. only then capture_alloc (sizes now bounded by the input's size) and
 *     convert (little-endian bytes to f32, refusing non-finite values).
 * The file entry takes the file's real size with fstat before step 1 and
 * feeds step 3 from a fixed-size buffer, so its memory is the f32 data plus
 * the tables, never a second copy of the file. */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "capture_io.h"
#include "util.h"

_Static_assert(sizeof(float) == 4, "the f32 data is read as IEEE binary32");

static const char magic[8] = {'D', 'A', 'T', 'T', 'N', 'C', 'A', 'P'};

typedef struct {
  unsigned layers, heads, head_dim, n_sent, dtype;
  size_t esz;       /* bytes per element in the file */
  size_t table_end; /* byte offset of the data: 32 + 4 * n_sent */
} cap_header;

#if defined(__GNUC__)
__attribute__((format(printf, 3, 4)))
#endif
static void say(char *why, size_t why_len, const char *fmt, ...) {
  if (!why || why_len == 0) return;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(why, why_len, fmt, ap);
  va_end(ap);
}

/* Little-endian on any host: assembled from bytes, never type-punned. */
static uint32_t le32(const unsigned char *b) {
  return (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
}

static uint16_t le16(const unsigned char *b) { return (uint16_t)(b[0] | b[1] << 8); }

/* Checked size arithmetic: 0 on overflow, never a wrapped result. */
static int mul_sz(size_t a, size_t b, size_t *r) {
  if (b != 0 && a > SIZE_MAX / b) return 0;
  *r = a * b;
  return 1;
}

static int add_sz(size_t a, size_t b, size_t *r) {
  if (a > SIZE_MAX - b) return 0;
  *r = a + b;
  return 1;
}

static int check_range(const char *field, unsigned v, unsigned lo, unsigned hi, char *why,
                       size_t why_len) {
  if (v >= lo && v <= hi) return 0;
  say(why, why_len, "header field %s = %u is out of range (%u..%u)", field, v, lo, hi);
  return -1;
}

/* Step 1. b holds the first min(len, 32) bytes of an input of len bytes. */
static int check_fixed(const unsigned char *b, size_t len, cap_header *h, char *why,
                       size_t why_len) {
  if (len == 0) {
    say(why, why_len, "empty file (0 bytes): not a DATTNCAP capture");
    return -1;
  }
  size_t nm = len < 8 ? len : 8;
  if (memcmp(b, magic, nm) != 0) {
    char shown[8 * 4 + 1], *p = shown;
    for (size_t i = 0; i < nm; i++) {
      if (b[i] >= 0x20 && b[i] < 0x7f && b[i] != '"' && b[i] != '\\')
        *p++ = (char)b[i];
      else
        p += snprintf(p, 5, "\\x%02x", b[i]);
    }
    *p = '\0';
    say(why, why_len, "bad magic \"%s\": not a DATTNCAP capture (it starts with \"DATTNCAP\")",
        shown);
    return -1;
  }
  if (len < 8) {
    say(why, why_len, "truncated inside the magic: the file has %zu bytes, the magic is 8", len);
    return -1;
  }
  if (len < 12) {
    say(why, why_len,
        "truncated inside the header: the file has %zu bytes, the version field ends at byte 12",
        len);
    return -1;
  }
  uint32_t version = le32(b + 8);
  if (version != CAPTURE_VERSION) {
    say(why, why_len, "format version %lu is not supported (this reader knows version %u only)",
        (unsigned long)version, CAPTURE_VERSION);
    return -1;
  }
  if (len < CAPTURE_HEADER_BYTES) {
    say(why, why_len,
        "truncated inside the header: the file has %zu bytes, the version 1 header is %u", len,
        CAPTURE_HEADER_BYTES);
    return -1;
  }
  h->layers = le32(b + 12), h->heads = le32(b + 16), h->head_dim = le32(b + 20);
  h->n_sent = le32(b + 24), h->dtype = le32(b + 28);
  if (check_range("layers", h->layers, 1, CAPTURE_MAX_LAYERS, why, why_len) ||
      check_range("heads", h->heads, 1, CAPTURE_MAX_HEADS, why, why_len) ||
      check_range("head_dim", h->head_dim, 1, CAPTURE_MAX_HEAD_DIM, why, why_len) ||
      check_range("n_sentences", h->n_sent, 1, CAPTURE_MAX_SENTENCES, why, why_len))
    return -1;
  if (h->dtype != (unsigned)DA_F32 && h->dtype != (unsigned)DA_F16) {
    say(why, why_len, "header field dtype = %u is not a known dtype code (0 = f32, 1 = f16)",
        h->dtype);
    return -1;
  }
  h->esz = h->dtype == (unsigned)DA_F32 ? 4 : 2;
  size_t table;
  if (!mul_sz(h->n_sent, 4, &table) || !add_sz(CAPTURE_HEADER_BYTES, table, &h->table_end)) {
    say(why, why_len, "n_sentences = %u: the sequence table's size overflows size_t", h->n_sent);
    return -1;
  }
  if (len < h->table_end) {
    say(why, why_len,
        "truncated inside the sequence table: n_sentences = %u needs %zu bytes of header and "
        "table, the file has %zu",
        h->n_sent, h->table_end, len);
    return -1;
  }
  return 0;
}

/* Step 2. t: the 4 * n_sent bytes of the table; len: the input's size.
 * *total gets the data's element count. Allocates nothing. */
static int check_sizes(const cap_header *h, const unsigned char *t, size_t len, size_t *total,
                       char *why, size_t why_len) {
  size_t per_token; /* elements per token of one sentence: layers * 3 * heads * head_dim */
  if (!mul_sz(h->layers, 3, &per_token) || !mul_sz(per_token, h->heads, &per_token) ||
      !mul_sz(per_token, h->head_dim, &per_token)) {
    say(why, why_len,
        "size overflow: layers %u x 3 x heads %u x head_dim %u does not fit in size_t",
        h->layers, h->heads, h->head_dim);
    return -1;
  }
  size_t elems = 0;
  for (unsigned s = 0; s < h->n_sent; s++) {
    uint32_t seq = le32(t + 4 * (size_t)s);
    if (seq < 1 || seq > CAPTURE_MAX_SEQ) {
      say(why, why_len, "seq[%u] = %lu is out of range (1..%u)", s, (unsigned long)seq,
          CAPTURE_MAX_SEQ);
      return -1;
    }
    size_t n;
    if (!mul_sz(per_token, seq, &n) || !add_sz(elems, n, &elems)) {
      say(why, why_len,
          "size overflow: the data the header claims (layers %u x 3 x heads %u x head_dim %u "
          "x seq[s], summed over the sentences) passes SIZE_MAX elements at seq[%u] = %lu; the "
          "file has %zu bytes",
          h->layers, h->heads, h->head_dim, s, (unsigned long)seq, len);
      return -1;
    }
  }
  size_t bytes;
  if (!mul_sz(elems, h->esz, &bytes)) {
    say(why, why_len,
        "size overflow: %zu elements of %zu bytes each (the data the header claims) do not fit in "
        "size_t; the file has %zu bytes",
        elems, h->esz, len);
    return -1;
  }
  size_t have = len - h->table_end; /* check_fixed: len >= table_end */
  if (bytes > have) {
    say(why, why_len, "truncated: header claims %zu bytes of data, file has %zu", bytes, have);
    return -1;
  }
  if (bytes < have) {
    say(why, why_len,
        "trailing bytes: header claims %zu bytes of data, file has %zu (%zu bytes after the data)",
        bytes, have, have - bytes);
    return -1;
  }
  *total = elems;
  return 0;
}

void capture_free(capture *c) {
  if (!c) return;
  free(c->seq), free(c->off), free(c->data);
  memset(c, 0, sizeof *c);
}

/* Step 3a: every size here has passed check_sizes, so it is bounded by the
 * input's size (total * 4 <= 2 * len, n_sent * 8 <= 2 * len). */
static int capture_alloc(const cap_header *h, const unsigned char *t, size_t total, capture *c,
                         char *why, size_t why_len) {
  size_t seq_bytes, off_bytes, data_bytes;
  if (!mul_sz(h->n_sent, sizeof *c->seq, &seq_bytes) ||
      !mul_sz(h->n_sent, sizeof *c->off, &off_bytes) ||
      !mul_sz(total, sizeof *c->data, &data_bytes)) {
    say(why, why_len, "size overflow: %zu elements as f32 do not fit in size_t", total);
    return -1;
  }
  c->layers = h->layers, c->heads = h->heads, c->head_dim = h->head_dim;
  c->n_sent = h->n_sent, c->dtype = h->dtype, c->total = total;
  c->seq = malloc(seq_bytes);
  c->off = malloc(off_bytes);
  c->data = malloc(data_bytes);
  if (!c->seq || !c->off || !c->data) {
    say(why, why_len, "out of memory for %zu elements (%zu bytes as f32)", total, data_bytes);
    capture_free(c);
    return -1;
  }
  size_t off = 0;
  for (unsigned s = 0; s < h->n_sent; s++) {
    c->seq[s] = le32(t + 4 * (size_t)s);
    c->off[s] = off;
    off += (size_t)h->layers * 3 * h->heads * c->seq[s] * h->head_dim; /* checked in step 2 */
  }
  return 0;
}

/* Where element i lies, for the non-finite message. */
static void locate(const capture *c, size_t i, char *buf, size_t len) {
  unsigned lo = 0, hi = c->n_sent - 1;
  while (lo < hi) { /* the last sentence s with off[s] <= i */
    unsigned mid = lo + (hi - lo + 1) / 2;
    if (c->off[mid] <= i) lo = mid;
    else hi = mid - 1;
  }
  size_t r = i - c->off[lo];
  size_t n = (size_t)c->heads * c->seq[lo] * c->head_dim;
  size_t l = r / (3 * n);
  r %= 3 * n;
  size_t which = r / n;
  r %= n;
  size_t per_head = (size_t)c->seq[lo] * c->head_dim;
  size_t head = r / per_head;
  r %= per_head;
  snprintf(buf, len, "sentence %u, layer %zu, %c, head %zu, token %zu, dim %zu", lo, l,
           "QKV"[which], head, r / c->head_dim, r % c->head_dim);
}

/* Step 3b: n elements of the file's dtype at src become data[first..first+n). */
static int convert(capture *c, const unsigned char *src, size_t first, size_t n,
                   size_t table_end, char *why, size_t why_len) {
  float *dst = c->data + first;
  if (c->dtype == (unsigned)DA_F32) {
    for (size_t i = 0; i < n; i++) {
      uint32_t u = le32(src + 4 * i);
      memcpy(&dst[i], &u, sizeof u);
    }
  } else {
    for (size_t i = 0; i < n; i++) dst[i] = tool_f16_to_f32(le16(src + 2 * i));
  }
  for (size_t i = 0; i < n; i++)
    if (!isfinite(dst[i])) {
      char where[160];
      locate(c, first + i, where, sizeof where);
      size_t esz = c->dtype == (unsigned)DA_F32 ? 4 : 2;
      say(why, why_len, "non-finite value (%s) in the data: %s (element %zu, byte %zu)",
          isnan(dst[i]) ? "NaN" : dst[i] > 0 ? "+Inf" : "-Inf", where, first + i,
          table_end + (first + i) * esz);
      return -1;
    }
  return 0;
}

int capture_parse(const unsigned char *buf, size_t len, capture *out, char *why, size_t why_len) {
  cap_header h;
  size_t total;
  memset(out, 0, sizeof *out);
  if (why && why_len) why[0] = '\0';
  if (!buf && len) {
    say(why, why_len, "no buffer");
    return -1;
  }
  if (check_fixed(buf, len, &h, why, why_len) ||
      check_sizes(&h, buf + CAPTURE_HEADER_BYTES, len, &total, why, why_len) ||
      capture_alloc(&h, buf + CAPTURE_HEADER_BYTES, total, out, why, why_len))
    return -1;
  if (convert(out, buf + h.table_end, 0, total, h.table_end, why, why_len)) {
    capture_free(out);
    return -1;
  }
  return 0;
}

/* Reads exactly n bytes; -1 (with why) when the file ends early or fails. */
static int read_exact(FILE *f, void *dst, size_t n, size_t at, const char *what, char *why,
                      size_t why_len) {
  size_t got = fread(dst, 1, n, f);
  if (got == n) return 0;
  if (ferror(f))
    say(why, why_len, "read error in the %s at byte %zu: %s", what, at + got, strerror(errno));
  else
    say(why, why_len, "the file shrank while being read: it ends at byte %zu, in the %s",
        at + got, what);
  return -1;
}

#define CAPTURE_CHUNK ((size_t)1 << 16)

int capture_load_file(const char *path, capture *out, char *why, size_t why_len) {
  memset(out, 0, sizeof *out);
  if (why && why_len) why[0] = '\0';
  FILE *f = fopen(path, "rb");
  if (!f) {
    say(why, why_len, "cannot open: %s", strerror(errno));
    return -1;
  }
  unsigned char *table = NULL, *chunk = NULL;
  cap_header h;
  size_t total;
  struct stat st;
  if (fstat(fileno(f), &st) != 0) {
    say(why, why_len, "cannot take the file's size: %s", strerror(errno));
    goto bad;
  }
  if (!S_ISREG(st.st_mode)) {
    say(why, why_len, "not a regular file (the reader checks the header against the real size)");
    goto bad;
  }
  if (st.st_size < 0 || (uintmax_t)st.st_size > SIZE_MAX) {
    say(why, why_len, "the file's size %jd does not fit in size_t on this host",
        (intmax_t)st.st_size);
    goto bad;
  }
  size_t len = (size_t)st.st_size;

  unsigned char head[CAPTURE_HEADER_BYTES];
  size_t nh = len < sizeof head ? len : sizeof head;
  if (read_exact(f, head, nh, 0, "header", why, why_len) ||
      check_fixed(head, len, &h, why, why_len))
    goto bad;
  /* the table's size is n_sent * 4 <= len (checked against the real size) */
  size_t tbytes = h.table_end - CAPTURE_HEADER_BYTES;
  table = malloc(tbytes);
  if (!table) {
    say(why, why_len, "out of memory for the sequence table (%zu bytes)", tbytes);
    goto bad;
  }
  if (read_exact(f, table, tbytes, CAPTURE_HEADER_BYTES, "sequence table", why, why_len) ||
      check_sizes(&h, table, len, &total, why, why_len) ||
      capture_alloc(&h, table, total, out, why, why_len))
    goto bad;
  free(table);
  table = NULL;

  chunk = malloc(CAPTURE_CHUNK);
  if (!chunk) {
    say(why, why_len, "out of memory");
    goto bad;
  }
  size_t per = CAPTURE_CHUNK / h.esz;
  for (size_t done = 0; done < total;) {
    size_t n = total - done < per ? total - done : per;
    if (read_exact(f, chunk, n * h.esz, h.table_end + done * h.esz, "data", why, why_len) ||
        convert(out, chunk, done, n, h.table_end, why, why_len))
      goto bad;
    done += n;
  }
  if (fgetc(f) != EOF) {
    say(why, why_len, "the file grew while being read: trailing bytes after byte %zu", len);
    goto bad;
  }
  free(chunk);
  fclose(f);
  return 0;
bad:
  free(table), free(chunk);
  capture_free(out);
  fclose(f);
  return -1;
}
