/* SPDX-License-Identifier: Apache-2.0 */
/*
 * distrattn command-line program: shared helpers (option parsing, random
 * inputs, element conversion, timing, the float64 reference, output).
 * The program uses the public API of libdistrattn only.
 */
#ifndef DA_TOOL_UTIL_H
#define DA_TOOL_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "distrattn.h"

#define EXIT_USAGE 2

#if defined(__GNUC__)
#define TOOL_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define TOOL_PRINTF(a, b)
#endif

/* ---- subcommands (argv[0] is "distrattn <name>") ---- */
int cmd_devices(int argc, char **argv);
int cmd_run(int argc, char **argv);
int cmd_check(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int cmd_eval(int argc, char **argv);
int cmd_demo(int argc, char **argv);
int cmd_calibrate(int argc, char **argv);

/* ---- messages ---- */
/* "distrattn <cmd>: message" on stderr. */
void tool_msg(const char *cmd, const char *fmt, ...) TOOL_PRINTF(2, 3);
/* Usage error: message, then "Try 'distrattn <cmd> --help'."; returns 2. */
int tool_usage_error(const char *cmd, const char *fmt, ...) TOOL_PRINTF(2, 3);
/* A failed library call: "distrattn <cmd>: what: <status string>: <last error>". */
void tool_api_error(const char *cmd, const char *what, da_status s, const da_context *ctx);
/* Creates a context on (backend, device) and reads its device info; on
 * failure prints why (the backend's reason when it is absent), returns 0. */
int tool_open_context(const char *cmd, da_backend backend, int device, da_context **ctx,
                      da_device_info *info);

/* ---- option values; each returns 0 on success, prints a usage message and
 * returns -1 on a bad value ---- */
int parse_int(const char *cmd, const char *opt, const char *s, long lo, long hi, int *out);
int parse_u64(const char *cmd, const char *opt, const char *s, unsigned long long *out);
int parse_backend(const char *cmd, const char *s, da_backend *out);
int parse_dtype(const char *cmd, const char *s, da_dtype *out);
int parse_algo(const char *cmd, const char *s, da_algo *out);
int parse_fusion(const char *cmd, const char *s, da_fusion *out);
int parse_group(const char *cmd, const char *s, int *out);
/* Comma separated list of positive ints, at most max of them. */
int parse_int_list(const char *cmd, const char *opt, const char *s, int *vals, int max, int *n);

const char *dtype_name(da_dtype t);
const char *algo_name(da_algo a);
const char *fusion_name(da_fusion f);
const char *backend_label(da_backend b); /* da_backend_name, or "auto"/"?" */
size_t dtype_size(da_dtype t);

/* ---- element conversion (round to nearest even) ---- */
uint16_t tool_f32_to_f16(float f);
float tool_f16_to_f32(uint16_t h);
uint16_t tool_f32_to_bf16(float f);
float tool_bf16_to_f32(uint16_t b);
/* n floats -> dtype array dst (which may be src itself for f32 only). */
void to_dtype(void *dst, da_dtype t, const float *src, size_t n);
/* dtype array -> n floats. */
void from_dtype(float *dst, da_dtype t, const void *src, size_t n);

/* ---- random inputs ---- */
typedef struct { uint64_t state; int has_spare; double spare; } tool_rng;
void rng_init(tool_rng *r, uint64_t seed);
double rng_normal(tool_rng *r);
/* n standard normal values, then rounded through dtype so that the float
 * copy holds exactly what the library sees. */
void fill_normal(tool_rng *r, float *dst, size_t n, da_dtype t);

/* ---- timing ---- */
double now_ms(void);
double median(double *v, int n); /* sorts v */

/* ---- errors ---- */
/* ||a - b||_F / ||b||_F in double (absolute error when ||b|| is 0); NaN when
 * any value is not finite. */
double rel_error(const float *a, const float *b, size_t n);

/* ---- the float64 reference of SPEC section 1 ----
 * q, k, v: float copies of the inputs. d: the resolved descriptor (scale 0 =
 * 1/sqrt(head_dim), kv_heads 0 = heads). perm: the plan's permutations
 * (da_plan_groups_host layout) for group_size > 1, ignored for 1.
 * Returns 0, or -1 when out of memory. */
int reference_f64(const da_attn_desc *d, const float *q, const float *k, const float *v,
                  const int *perm, float *out);
/* Exact attention only (group_size 1): the float64 reference of the query
 * rows 0, row_step, 2*row_step, ... of every (batch, head), written to the
 * same places in out (other rows untouched). -1 for group_size > 1, a
 * row_step < 1 or no memory. rel_error_rows: rel_error over those rows. */
int reference_f64_rows(const da_attn_desc *d, const float *q, const float *k, const float *v,
                       int row_step, float *out);
double rel_error_rows(const float *a, const float *b, const da_attn_desc *d, int row_step);
/* Multiply-adds of attention: 2 * batch * heads * seq_q * seq_k * head_dim. */
double attn_madds(const da_attn_desc *d);
/* Nominal flops: 4 * batch * heads * seq_q * seq_k * head_dim. */
double attn_flops(const da_attn_desc *d);

/* ---- progress on a terminal (stderr) ---- */
typedef struct { int on; int width; } tool_progress;
void progress_init(tool_progress *p);
void progress_show(tool_progress *p, const char *fmt, ...) TOOL_PRINTF(2, 3);
void progress_clear(tool_progress *p);

/* CSV field: quoted when it holds a comma, quote or space. */
void csv_field(FILE *f, const char *s);
/* What plan p runs (da_plan_get_kernel) in words, into buf: "tiled 32x16",
 * "split-kv decode (rows) 4x16, chunk 128", "fused (avx2)"; with full also
 * ", N threads" (work-items of a work-group, threads of a block or of the CPU
 * pool). "?" when the library cannot say. Returns buf. */
const char *kernel_label(const da_plan *p, int full, char *buf, size_t len);

#endif /* DA_TOOL_UTIL_H */
