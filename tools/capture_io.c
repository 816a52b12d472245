/* SPDX-License-Identifier: Apache-2.0 */
/* distrattn command-line program: the DATTNCAP capture reader (see
 * capture_io.h and tools/CAPTURE_FORMAT.md, "Reader's checks").
 *
 * Both entries run the same three steps, for version 1 and version 2:
 *  1. check_fixed: magic, version, the header fields' ranges (version 2:
 *     kv_heads, causal, scale and model too), and that the sequence table
 *     fits in the input;
 *  2. check_sizes: every seq[s] (version 2: seq_q[s], seq_k[s]), and the
 *     data size the header claims,
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
  unsigned version, layers, heads, kv_heads, head_dim, n_sent, dtype, causal;
  float scale;
  char model[CAPTURE_MODEL_BYTES + 1];
  size_t esz;       /* bytes per element in the file */
  size_t hdr_bytes; /* 32 (version 1) or 108 (version 2) */
  size_t per_entry; /* bytes per entry in the table: 4 (seq) or 8 (seq_q, seq_k) */
  size_t table_end; /* byte offset of the data: hdr_bytes + per_entry * n_sent */
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

/* Version 2's kv_heads (against heads, already checked). */
static int check_kv_heads(const cap_header *h, char *why, size_t why_len) {
  if (check_range("kv_heads", h->kv_heads, 1, h->heads, why, why_len)) return -1;
  if (h->heads % h->kv_heads != 0) {
    say(why, why_len,
        "header field kv_heads = %u does not divide heads = %u (query head h reads kv head "
        "h / (heads / kv_heads))",
        h->kv_heads, h->heads);
    return -1;
  }
  return 0;
}

/* Version 2's fields after dtype (b holds the 108-byte header): causal,
 * scale and model. */
static int check_v2_fields(const unsigned char *b, cap_header *h, char *why, size_t why_len) {
  h->causal = le32(b + 36);
  if (h->causal > 1) {
    say(why, why_len, "header field causal = %u is not 0 (no mask) or 1 (causal)", h->causal);
    return -1;
  }
  uint32_t sbits = le32(b + 40);
  memcpy(&h->scale, &sbits, sizeof sbits);
  if (sbits != 0 && !(isfinite(h->scale) && h->scale > 0.0f)) {
    say(why, why_len,
        "header field scale = %.9g (bits 0x%08lx) is neither finite and positive nor 0 "
        "(= 1/sqrt(head_dim))",
        (double)h->scale, (unsigned long)sbits);
    return -1;
  }
  const unsigned char *m = b + 44;
  unsigned end = CAPTURE_MODEL_BYTES;
  for (unsigned i = 0; i < CAPTURE_MODEL_BYTES; i++) {
    if (i >= end) {
      if (m[i] != 0) {
        say(why, why_len,
            "header field model: byte %u is 0x%02x after the NUL padding that begins at byte %u "
            "(the name is NUL-padded ASCII)",
            i, m[i], end);
        return -1;
      }
    } else if (m[i] == 0) {
      end = i;
    } else if (m[i] < 0x20 || m[i] > 0x7e) {
      say(why, why_len,
          "header field model: byte %u is 0x%02x, not printable ASCII (0x20..0x7e) nor NUL "
          "padding",
          i, m[i]);
      return -1;
    }
  }
  memcpy(h->model, m, end);
  h->model[end] = '\0';
  return 0;
}

/* Step 1. b holds the first min(len, 108) bytes of an input of len bytes. */
static int check_fixed(const unsigned char *b, size_t len, cap_header *h, char *why,
                       size_t why_len) {
  memset(h, 0, sizeof *h);
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
  if (version != 1 && version != 2) {
    say(why, why_len, "format version %lu is not supported (this reader knows versions 1 and 2)",
        (unsigned long)version);
    return -1;
  }
  h->version = version;
  h->hdr_bytes = version == 1 ? CAPTURE_HEADER_BYTES : CAPTURE_HEADER_BYTES_V2;
  h->per_entry = version == 1 ? 4 : 8;
  if (len < h->hdr_bytes) {
    say(why, why_len,
        "truncated inside the header: the file has %zu bytes, the version %u header is %zu", len,
        h->version, h->hdr_bytes);
    return -1;
  }
  const char *n_name = version == 1 ? "n_sentences" : "n_entries";
  if (version == 1) {
    h->layers = le32(b + 12), h->heads = le32(b + 16), h->head_dim = le32(b + 20);
    h->n_sent = le32(b + 24), h->dtype = le32(b + 28);
    h->kv_heads = h->heads;
  } else {
    h->layers = le32(b + 12), h->heads = le32(b + 16), h->kv_heads = le32(b + 20);
    h->head_dim = le32(b + 24), h->n_sent = le32(b + 28), h->dtype = le32(b + 32);
  }
  if (check_range("layers", h->layers, 1, CAPTURE_MAX_LAYERS, why, why_len) ||
      check_range("heads", h->heads, 1, CAPTURE_MAX_HEADS, why, why_len) ||
      (version == 2 && check_kv_heads(h, why, why_len)) ||
      check_range("head_dim", h->head_dim, 1, CAPTURE_MAX_HEAD_DIM, why, why_len) ||
      check_range(n_name, h->n_sent, 1, CAPTURE_MAX_SENTENCES, why, why_len))
    return -1;
  if (h->dtype != (unsigned)DA_F32 && h->dtype != (unsigned)DA_F16) {
    say(why, why_len, "header field dtype = %u is not a known dtype code (0 = f32, 1 = f16)",
        h->dtype);
    return -1;
  }
  if (version == 2 && check_v2_fields(b, h, why, why_len)) return -1;
  h->esz = h->dtype == (unsigned)DA_F32 ? 4 : 2;
  size_t table;
  if (!mul_sz(h->n_sent, h->per_entry, &table) || !add_sz(h->hdr_bytes, table, &h->table_end)) {
    say(why, why_len, "%s = %u: the sequence table's size overflows size_t", n_name, h->n_sent);
    return -1;
  }
  if (len < h->table_end) {
    say(why, why_len,
        "truncated inside the sequence table: %s = %u needs %zu bytes of header and "
        "table, the file has %zu",
        n_name, h->n_sent, h->table_end, len);
    return -1;
  }
  return 0;
}

/* Elements of one entry: layers x (heads x seq_q + 2 x kv_heads x seq_k) x
 * head_dim (version 1: seq_q = seq_k, kv_heads = heads). 0 on overflow. */
static int entry_elems(const cap_header *h, uint32_t sq, uint32_t sk, size_t *n) {
  size_t q, kv, per_layer;
  return mul_sz(h->heads, sq, &q) && mul_sz(h->kv_heads, sk, &kv) && mul_sz(kv, 2, &kv) &&
         add_sz(q, kv, &per_layer) && mul_sz(per_layer, h->head_dim, &per_layer) &&
         mul_sz(per_layer, h->layers, n);
}

static int check_seq(const char *name, unsigned s, uint32_t v, char *why, size_t why_len) {
  if (v >= 1 && v <= CAPTURE_MAX_SEQ) return 0;
  say(why, why_len, "%s[%u] = %lu is out of range (1..%u)", name, s, (unsigned long)v,
      CAPTURE_MAX_SEQ);
  return -1;
}

/* Step 2. t: the table (per_entry * n_sent bytes); len: the input's size.
 * *total gets the data's element count. Allocates nothing. */
static int check_sizes(const cap_header *h, const unsigned char *t, size_t len, size_t *total,
                       char *why, size_t why_len) {
  size_t per_token; /* version 1: elements per token: layers * 3 * heads * head_dim */
  if (h->version == 1 &&
      (!mul_sz(h->layers, 3, &per_token) || !mul_sz(per_token, h->heads, &per_token) ||
       !mul_sz(per_token, h->head_dim, &per_token))) {
    say(why, why_len,
        "size overflow: layers %u x 3 x heads %u x head_dim %u does not fit in size_t",
        h->layers, h->heads, h->head_dim);
    return -1;
  }
  size_t elems = 0;
  for (unsigned s = 0; s < h->n_sent; s++) {
    size_t n;
    if (h->version == 1) {
      uint32_t seq = le32(t + 4 * (size_t)s);
      if (check_seq("seq", s, seq, why, why_len)) return -1;
      if (!mul_sz(per_token, seq, &n) || !add_sz(elems, n, &elems)) {
        say(why, why_len,
            "size overflow: the data the header claims (layers %u x 3 x heads %u x head_dim %u "
            "x seq[s], summed over the sentences) passes SIZE_MAX elements at seq[%u] = %lu; the "
            "file has %zu bytes",
            h->layers, h->heads, h->head_dim, s, (unsigned long)seq, len);
        return -1;
      }
    } else {
      uint32_t sq = le32(t + 8 * (size_t)s), sk = le32(t + 8 * (size_t)s + 4);
      if (check_seq("seq_q", s, sq, why, why_len) || check_seq("seq_k", s, sk, why, why_len))
        return -1;
      if (!entry_elems(h, sq, sk, &n) || !add_sz(elems, n, &elems)) {
        say(why, why_len,
            "size overflow: the data the header claims (layers %u x head_dim %u x (heads %u x "
            "seq_q + 2 x kv_heads %u x seq_k), summed over the entries) passes SIZE_MAX "
            "elements at entry %u (seq_q %lu, seq_k %lu); the file has %zu bytes",
            h->layers, h->head_dim, h->heads, h->kv_heads, s, (unsigned long)sq,
            (unsigned long)sk, len);
        return -1;
      }
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
  free(c->seq_q), free(c->seq_k), free(c->off), free(c->data);
  memset(c, 0, sizeof *c);
}

/* Step 3a: every size here has passed check_sizes, so it is bounded by the
 * input's size (total * 4 <= 2 * len, n_sent * 8 <= 2 * len). */
static int capture_alloc(const cap_header *h, const unsigned char *t, size_t total, capture *c,
                         char *why, size_t why_len) {
  size_t seq_bytes, off_bytes, data_bytes;
  if (!mul_sz(h->n_sent, sizeof *c->seq_q, &seq_bytes) ||
      !mul_sz(h->n_sent, sizeof *c->off, &off_bytes) ||
      !mul_sz(total, sizeof *c->data, &data_bytes)) {
    say(why, why_len, "size overflow: %zu elements as f32 do not fit in size_t", total);
    return -1;
  }
  c->version = h->version;
  c->layers = h->layers, c->heads = h->heads, c->kv_heads = h->kv_heads;
  c->head_dim = h->head_dim, c->n_sent = h->n_sent, c->dtype = h->dtype;
  c->causal = h->causal, c->scale = h->scale, c->total = total;
  memcpy(c->model, h->model, sizeof c->model);
  c->seq_q = malloc(seq_bytes);
  c->seq_k = malloc(seq_bytes);
  c->off = malloc(off_bytes);
  c->data = malloc(data_bytes);
  if (!c->seq_q || !c->seq_k || !c->off || !c->data) {
    say(why, why_len, "out of memory for %zu elements (%zu bytes as f32)", total, data_bytes);
    capture_free(c);
    return -1;
  }
  c->seq = c->seq_q;
  size_t off = 0;
  for (unsigned s = 0; s < h->n_sent; s++) {
    if (h->version == 1) {
      c->seq_q[s] = c->seq_k[s] = le32(t + 4 * (size_t)s);
    } else {
      c->seq_q[s] = le32(t + 8 * (size_t)s);
      c->seq_k[s] = le32(t + 8 * (size_t)s + 4);
    }
    c->off[s] = off;
    size_t n;
    entry_elems(h, c->seq_q[s], c->seq_k[s], &n); /* checked in step 2 */
    off += n;
  }
  return 0;
}

void capture_qkv(const capture *c, unsigned s, unsigned l, const float **q, const float **k,
                 const float **v) {
  size_t nq = (size_t)c->heads * c->seq_q[s] * c->head_dim;
  size_t nk = (size_t)c->kv_heads * c->seq_k[s] * c->head_dim;
  const float *p = c->data + c->off[s] + (size_t)l * (nq + 2 * nk);
  if (q) *q = p;
  if (k) *k = p + nq;
  if (v) *v = p + nq + nk;
}

void capture_desc(const capture *c, unsigned s, da_attn_desc *d) {
  d->batch = 1;
  d->heads = (int)c->heads;
  d->kv_heads = (int)c->kv_heads;
  d->seq_q = (int)c->seq_q[s];
  d->seq_k = (int)c->seq_k[s];
  d->head_dim = (int)c->head_dim;
  d->causal = (int)c->causal;
  d->scale = c->scale;
}

/* Where element i lies, for the non-finite message. */
static void locate(const capture *c, size_t i, char *buf, size_t len) {
  unsigned lo = 0, hi = c->n_sent - 1;
  while (lo < hi) { /* the last entry s with off[s] <= i */
    unsigned mid = lo + (hi - lo + 1) / 2;
    if (c->off[mid] <= i) lo = mid;
    else hi = mid - 1;
  }
  size_t r = i - c->off[lo];
  size_t nq = (size_t)c->heads * c->seq_q[lo] * c->head_dim;
  size_t nk = (size_t)c->kv_heads * c->seq_k[lo] * c->head_dim;
  size_t l = r / (nq + 2 * nk);
  r %= nq + 2 * nk;
  size_t which = 0, seq = c->seq_q[lo];
  if (r >= nq) {
    r -= nq;
    which = 1 + r / nk;
    r %= nk;
    seq = c->seq_k[lo];
  }
  size_t per_head = seq * c->head_dim;
  size_t head = r / per_head;
  r %= per_head;
  if (c->version == 1)
    snprintf(buf, len, "sentence %u, layer %zu, %c, head %zu, token %zu, dim %zu", lo, l,
             "QKV"[which], head, r / c->head_dim, r % c->head_dim);
  else
    snprintf(buf, len, "entry %u, layer %zu, %c, %shead %zu, token %zu, dim %zu", lo, l,
             "QKV"[which], which ? "kv " : "", head, r / c->head_dim, r % c->head_dim);
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
      check_sizes(&h, buf + h.hdr_bytes, len, &total, why, why_len) ||
      capture_alloc(&h, buf + h.hdr_bytes, total, out, why, why_len))
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

  unsigned char head[CAPTURE_HEADER_BYTES_V2];
  size_t nh = len < sizeof head ? len : sizeof head;
  if (read_exact(f, head, nh, 0, "header", why, why_len) ||
      check_fixed(head, len, &h, why, why_len))
    goto bad;
  /* the table follows the header (version 1: inside the bytes read above) */
  if (fseek(f, (long)h.hdr_bytes, SEEK_SET) != 0) {
    say(why, why_len, "cannot seek to the sequence table: %s", strerror(errno));
    goto bad;
  }
  /* the table's size is n_sent * per_entry <= len (checked against the real size) */
  size_t tbytes = h.table_end - h.hdr_bytes;
  table = malloc(tbytes);
  if (!table) {
    say(why, why_len, "out of memory for the sequence table (%zu bytes)", tbytes);
    goto bad;
  }
  if (read_exact(f, table, tbytes, h.hdr_bytes, "sequence table", why, why_len) ||
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
