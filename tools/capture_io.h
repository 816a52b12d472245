/* SPDX-License-Identifier: Apache-2.0 */
/*
 * distrattn command-line program: the one reader of the DATTNCAP capture
 * format (tools/CAPTURE_FORMAT.md, versions 1 and 2), used by `distrattn
 * eval`, tests/test_realdata, tests/test_capture and fuzz/fuzz_capture.c.
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

#include "distrattn.h"

/* The limits a reader enforces (tools/CAPTURE_FORMAT.md, "Reader's checks"). */
#define CAPTURE_VERSION 2u          /* the newest version; 1 is read too */
#define CAPTURE_HEADER_BYTES 32u    /* version 1 */
#define CAPTURE_HEADER_BYTES_V2 108u
#define CAPTURE_MODEL_BYTES 64u     /* version 2's model field, NUL-padded ASCII */
#define CAPTURE_MAX_LAYERS 4096u
#define CAPTURE_MAX_HEADS 4096u
#define CAPTURE_MAX_HEAD_DIM 256u
#define CAPTURE_MAX_SENTENCES (1u << 24)
#define CAPTURE_MAX_SEQ (1u << 20)

/* The demo capture (tools/CAPTURE_FORMAT.md, "Files"): data/ in the source
 * tree, installed in $(pkgdatadir), which the build passes to the program
 * and the tests as DA_PKGDATADIR. */
#define CAPTURE_DEMO_FILE "smollm2-demo.dattncap"

/* A loaded capture, widened to f32 (f16 exactly). A version 1 file reads as
 * kv_heads = heads, causal 0, scale 0, model "" and seq_q = seq_k. */
typedef struct {
  unsigned version;  /* the file's format version: 1 or 2 */
  unsigned layers, heads, kv_heads, head_dim, n_sent;
  unsigned dtype;    /* the file's dtype code: 0 = f32, 1 = f16 (da_dtype) */
  unsigned causal;   /* 0 or 1: bottom-right aligned causal mask (SPEC.md 1) */
  float scale;       /* the logits' scale; 0 = 1/sqrt(head_dim) */
  char model[CAPTURE_MODEL_BYTES + 1]; /* model / source name, printable ASCII */
  unsigned *seq_q;   /* [n_sent]: query rows of entry s */
  unsigned *seq_k;   /* [n_sent]: key (and value) rows of entry s */
  unsigned *seq;     /* = seq_q (the same array, not freed apart), for the
                      * version 1 callers, where seq_q = seq_k */
  size_t *off;       /* [n_sent]: element offset in data of entry s, layer 0, Q */
  size_t total;      /* elements in data */
  float *data;       /* per entry s, per layer: Q [heads][seq_q[s]][head_dim], then
                      * K and V, each [kv_heads][seq_k[s]][head_dim] */
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

/* Q, K and V of entry s, layer l of a loaded capture (s < n_sent,
 * l < layers): Q has heads x seq_q[s] x head_dim elements, K and V
 * kv_heads x seq_k[s] x head_dim each. */
void capture_qkv(const capture *c, unsigned s, unsigned l, const float **q, const float **k,
                 const float **v);

/* Fills the shape of entry s into d (after da_attn_desc_init or on top of a
 * caller's settings): batch 1, heads, kv_heads, seq_q, seq_k, head_dim,
 * causal and scale; the DistrAttention settings are left as they are. */
void capture_desc(const capture *c, unsigned s, da_attn_desc *d);

#endif /* DA_TOOL_CAPTURE_IO_H */
