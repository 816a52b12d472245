/* SPDX-License-Identifier: Apache-2.0 */
/* libFuzzer target: the DATTNCAP capture reader (tools/capture_io.c) over
 * memory, the entry `distrattn eval` and tests/test_realdata reach through
 * capture_load_file. Built by scripts/ci-fuzz.sh with
 *   clang -fsanitize=fuzzer,address,undefined
 * together with tools/capture_io.c, tools/util.c (its f16 widening) and the
 * library sources util.c links against. Seeds: fuzz/corpus-capture/ (made by
 * fuzz/gen_capture_seeds.py).
 *
 * The input is the file's bytes as they are. Never crashing (nor reading or
 * writing out of bounds, nor overflowing) is the property. In addition
 * (abort otherwise: a finding):
 *  - a refusal leaves the capture zeroed with a non-empty, NUL-terminated
 *    message;
 *  - an accepted input is exactly header + table + elem_size * total bytes
 *    (version 1: 32 + 4 N; version 2: 108 + 8 N), every field, seq_q[s] and
 *    seq_k[s] is within the documented limits and equal to the bytes
 *    (version 2: kv_heads divides heads, causal 0 or 1, scale 0 or finite
 *    and positive, the model name printable ASCII then NUL padding), the
 *    offsets and capture_qkv follow the layout, and every value is finite and
 *    equal to the one decoded here independently from the little-endian
 *    bytes. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "capture_io.h"

static uint32_t le32(const uint8_t *b) {
  return (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
}

/* IEEE binary16 -> float, written apart from tools/util.c's on purpose. */
static float half(const uint8_t *b) {
  unsigned h = (unsigned)b[0] | (unsigned)b[1] << 8;
  unsigned e = (h >> 10) & 31u, m = h & 1023u;
  float v = e == 0 ? ldexpf((float)m, -24)
            : e == 31 ? (m ? NAN : INFINITY)
                      : ldexpf((float)(1024u + m), (int)e - 25);
  return (h & 0x8000u) ? -v : v;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  capture c;
  char why[256];
  memset(why, 'x', sizeof why);
  if (capture_parse(data, size, &c, why, sizeof why) != 0) {
    if (c.seq || c.seq_q || c.seq_k || c.off || c.data || c.total || c.n_sent || c.version)
      abort();
    if (!memchr(why, '\0', sizeof why) || why[0] == '\0') abort();
    return 0;
  }
  if (c.layers < 1 || c.layers > CAPTURE_MAX_LAYERS || c.heads < 1 ||
      c.heads > CAPTURE_MAX_HEADS || c.head_dim < 1 || c.head_dim > CAPTURE_MAX_HEAD_DIM ||
      c.n_sent < 1 || c.n_sent > CAPTURE_MAX_SENTENCES || c.dtype > 1 || c.kv_heads < 1 ||
      c.kv_heads > c.heads || c.heads % c.kv_heads != 0 || c.causal > 1 ||
      !(c.scale == 0.0f || (isfinite(c.scale) && c.scale > 0.0f)) || c.seq != c.seq_q)
    abort();
  if (size < 12 || memcmp(data, "DATTNCAP", 8) != 0 || le32(data + 8) != c.version) abort();
  size_t hdr, per;
  if (c.version == 1) {
    hdr = 32, per = 4;
    if (c.kv_heads != c.heads || c.causal || c.scale != 0.0f || c.model[0]) abort();
  } else if (c.version == 2) {
    hdr = 108, per = 8;
    if (size < hdr || le32(data + 20) != c.kv_heads || le32(data + 36) != c.causal) abort();
    uint32_t sbits = le32(data + 40), cbits;
    memcpy(&cbits, &c.scale, 4);
    if (sbits != cbits) abort();
    /* the name: printable ASCII up to the first NUL, NULs after it */
    size_t n = strlen(c.model);
    if (n > 64 || memcmp(c.model, data + 44, n) != 0) abort();
    for (size_t i = 0; i < 64; i++) {
      uint8_t m = data[44 + i];
      if (i < n ? (m < 0x20 || m > 0x7e) : m != 0) abort();
    }
  } else {
    abort();
  }
  if (size < hdr + per * c.n_sent) abort();
  size_t esz = c.dtype == 0 ? 4 : 2, off = 0;
  for (unsigned s = 0; s < c.n_sent; s++) {
    uint32_t sq = le32(data + hdr + per * s), sk = c.version == 1 ? sq : le32(data + hdr + per * s + 4);
    if (c.seq_q[s] < 1 || c.seq_q[s] > CAPTURE_MAX_SEQ || c.seq_q[s] != sq) abort();
    if (c.seq_k[s] < 1 || c.seq_k[s] > CAPTURE_MAX_SEQ || c.seq_k[s] != sk) abort();
    if (c.off[s] != off) abort();
    size_t nq = (size_t)c.heads * sq * c.head_dim, nk = (size_t)c.kv_heads * sk * c.head_dim;
    const float *q, *k, *v;
    capture_qkv(&c, s, c.layers - 1, &q, &k, &v);
    if (q != c.data + off + (size_t)(c.layers - 1) * (nq + 2 * nk) || k != q + nq || v != k + nk)
      abort();
    off += (size_t)c.layers * (nq + 2 * nk);
  }
  if (off != c.total) abort();
  const uint8_t *p = data + hdr + per * (size_t)c.n_sent;
  if ((size_t)(data + size - p) != c.total * esz) abort();
  for (size_t i = 0; i < c.total; i++) {
    float want;
    if (esz == 4) {
      uint32_t u = le32(p + 4 * i);
      memcpy(&want, &u, 4);
    } else {
      want = half(p + 2 * i);
    }
    if (!isfinite(c.data[i]) || memcmp(&want, &c.data[i], 4) != 0) abort();
  }
  capture_free(&c);
  return 0;
}
