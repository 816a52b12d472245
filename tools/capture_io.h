/* SPDX-License-Identifier: Apache-2.0 */
/*
 * distrattn command-line program: the one reader of the DATTNCAP capture
 * format (tools/CAPTURE_FORMAT.md), used by `distrattn eval`,
 * tests/test_realdata, tests/test_capture and fuzz/fuzz_capture.c.
 *
 * The reader trusts nothing in a file: every header field and sequence
 * length is range-checked, all size arithmetic is checked for overflow, the
 * size the header claims must equal the real size exactly before anything
 * large is allocated, and non-finite values are refused. It never prints:
 * a refusal is returned with a message naming the field and the value.
 * Uses the public API header only (through util.h).
 */
#ifndef DA_TOOL_CAPTURE_IO_H
#define DA_TOOL_CAPTURE_IO_H

#include <stddef.h>

/* The limits a reader enforces (tools/CAPTURE_FORMAT.md, "Reader's checks"). */
#define CAPTURE_VERSION 1u
#define CAPTURE_HEADER_BYTES 32u
#define CAPTURE_MAX_LAYERS 4096u
#define CAPTURE_MAX_HEADS 4096u
#define CAPTURE_MAX_HEAD_DIM 256u
#define CAPTURE_MAX_SENTENCES (1u << 24)
#define CAPTURE_MAX_SEQ (1u << 20)

/* A loaded capture, widened to f32 (f16 exactly). */
typedef struct {
  unsigned layers, heads, head_dim, n_sent;
  unsigned dtype;  /* the file's dtype code: 0 = f32, 1 = f16 (da_dtype) */
  unsigned *seq;   /* [n_sent] */
  size_t *off;     /* [n_sent]: element offset in data of sentence s, layer 0, Q */
  size_t total;    /* elements in data */
  float *data;     /* per sentence, per layer: Q, K, V, each [heads][seq[s]][head_dim] */
} capture;

/* Parses a whole capture held in buf[0..len). Returns 0 and fills *out (free
 * it with capture_free), or -1 with *out zeroed, nothing allocated, and the
 * reason in why (when why_len > 0; always NUL-terminated). */
int capture_parse(const unsigned char *buf, size_t len, capture *out, char *why, size_t why_len);

/* Reads the capture file at path: takes the file's real size first, checks
 * the header and the sequence table against it, and allocates the data only
 * once the size the header claims equals the real size; the data is then
 * converted in bounded chunks. Same result convention as capture_parse. */
int capture_load_file(const char *path, capture *out, char *why, size_t why_len);

/* Frees what a successful parse or load allocated; zeroes *c. NULL is fine. */
void capture_free(capture *c);

#endif /* DA_TOOL_CAPTURE_IO_H */
