/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Core internals shared by lib/ and the tests (which link the convenience
 * library libdacore.la and so see these hidden symbols). Not installed.
 */
#ifndef DA_INTERNAL_H
#define DA_INTERNAL_H

#include "da_backend.h"

#if defined(__GNUC__) && __GNUC__ >= 4
#  define DA_HIDDEN __attribute__((visibility("hidden")))
#else
#  define DA_HIDDEN
#endif

/* The built-in CPU backend (lib/cpu_backend.c). */
DA_HIDDEN extern const da_backend_iface da_cpu_backend_iface;
/* Calls of this CPU context that ran the split-KV decode path (-1: not a
 * CPU context); for the tests, which check that the path they mean runs. */
DA_HIDDEN long da_cpu_decode_calls(const da_context *ctx);

/* ---- SPEC section 1 reference: projections, hashing, grouping, fusion ---- */

/* splitmix64 finaliser of (seed, n): mix64(seed + (n + 1) * 0x9E3779B97F4A7C15). */
DA_HIDDEN uint64_t da_splitmix64(uint64_t seed, uint64_t n);
/* R[b][r], b < hash_bits, r < hash_block: element i = b*hash_block + r uses
 * u1 = ((splitmix64(seed, 2i) >> 11) + 1) * 2^-53 in (0, 1],
 * u2 = (splitmix64(seed, 2i+1) >> 11) * 2^-53 in [0, 1),
 * R = (float)(sqrt(-2 ln u1) * cos(2 pi u2)), computed in double. */
DA_HIDDEN void da_make_projections(uint64_t seed, int hash_bits, int hash_block, float *R);
/* Prefix XOR from the top bit down: the inverse of the Gray code. */
DA_HIDDEN uint32_t da_inverse_gray(uint32_t code);
/* Codes of the d columns of one tile. q: the tile's first row, ld: elements
 * between rows, rows <= hash_block. R: hash_bits x hash_block (row stride
 * hash_block). Sequential fmaf over r = 0..rows-1 (SPEC step 2). */
DA_HIDDEN void da_hash_tile(const void *q, da_dtype t, size_t ld, int rows, int d,
                            const float *R, int hash_bits, int hash_block, uint32_t *codes);
/* Permutation pi sorting columns by (inverse_gray(code), c) ascending. */
DA_HIDDEN void da_group_tile(const uint32_t *codes, int d, int *perm);
/* Fusion weight a_c of every column c (indexed by c, not by position):
 * 1 (MEAN) or ||Q_tile[:, c]||_2 (NORM), with a group whose weights sum to 0
 * getting 1s. */
DA_HIDDEN void da_fusion_weights(const void *q, da_dtype t, size_t ld, int rows, int d,
                                 const int *perm, int G, da_fusion f, float *a);
/* All of the above for hash tile `tile` of (batch bi, head hi) of a plan:
 * perm[head_dim] and optionally a[head_dim] (a may be NULL). q is the whole
 * Q array on the host. */
DA_HIDDEN void da_plan_tile_groups(const da_plan *p, const void *q, int bi, int hi, int tile,
                                   int *perm, float *a);

/* ---- SPEC section 1c: the projection strategy (lib/proj.c) ---- */

/* The float64 reference of DA_STRATEGY_PROJECTION: for every (batch, head
 * h, kv head g = h / (heads / kv_heads)), Q' = Q A_h and K' = K_g B_h in
 * float64, logits scale * Q' K'^T (scale 0 = 1/sqrt(head_dim)), the causal
 * mask of section 1 (bottom-right aligned; a row that sees no key gets
 * zeros), exact softmax and P V. q, k, v: dense [batch][heads or
 * kv_heads][seq][head_dim] of d->dtype; proj: [heads][2][head_dim][rank];
 * o: q-shaped float64. d may hold the 0 defaults (kv_heads, scale). With
 * identity projections (rank head_dim) this is exact attention. Returns 0,
 * or -1 when out of memory. */
DA_HIDDEN int da_ref_projection(const da_attn_desc *d, int rank, const float *proj,
                                const void *q, const void *k, const void *v, double *o);

/* The reason of this thread's failed call without a context
 * (da_context_last_error(NULL)): set it, or clear it (lib/core.c). */
DA_HIDDEN da_status da_fail_no_ctx(da_status s, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
DA_HIDDEN void da_clear_no_ctx_error(void);

/* The environment's overrides of backend b's choices (da_backend.h,
 * da_overrides): every DISTRATTN_* variable of that backend parsed once,
 * strictly; a bad value gives DA_ERR_INVALID_ARG with a message in ctx
 * (which may be NULL) naming the variable (lib/core.c). */
DA_HIDDEN da_status da_overrides_parse(da_context *ctx, da_backend b, da_overrides *ov);

/* Element size of a dtype (0 for an unknown one). */
DA_HIDDEN size_t da_dtype_size(da_dtype t);

/* ---- registry (lib/registry.c) ---- */
typedef struct da_registered {
  const da_backend_iface *iface; /* NULL when absent */
  int ndev;
  char why[1024];                /* reason it is absent or has no device */
  void *dl;                      /* dlopen handle of a module */
} da_registered;
/* The registry's entry for a backend id (1..3): that backend alone is
 * initialised (its module loaded, its runtime started) on the first call
 * for it; NULL for another id. */
DA_HIDDEN const da_registered *da_registry_get(da_backend b);

/* ---- module check (lib/elfcheck.c) ---- */
/* 0 when the open file fd is a regular file holding a whole ELF shared
 * object of this host's class, byte order and machine, with its program
 * header table, every segment's file range and its section header table
 * inside the file, so that dlopen maps nothing past its end. Otherwise -1
 * and a reason in why ("truncated: PT_LOAD segment 2 ends at byte 74,112,
 * the file has 4,096"). Reads with pread only; fd's offset is unchanged. */
DA_HIDDEN int da_elf_check(int fd, char *why, size_t len);

#endif /* DA_INTERNAL_H */
