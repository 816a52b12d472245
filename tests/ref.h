/* SPDX-License-Identifier: Apache-2.0 */
/* float64 references of what SPEC.md section 1 says is computed. They live in
 * the tests only; the library never sees them. */
#ifndef DA_TEST_REF_H
#define DA_TEST_REF_H

#include "da_internal.h"

/* Naive exact attention: O = softmax(scale Q K^T + causal mask) V with GQA,
 * in float64 from the dtype inputs. d may hold the 0 defaults (kv_heads 0 =
 * heads, scale 0 = 1/sqrt(head_dim)). o: q-shaped, float64. */
void ref_attention(const da_attn_desc *d, const void *q, const void *k, const void *v, double *o);

/* DistrAttention in float64: permutations and fusion weights from the
 * reference hashing (da_plan_tile_groups on plan p, which carries the
 * projections and the resolved descriptor), fused logits, exact softmax and
 * P V. With group_size 1 this is exact attention. */
void ref_distr_attention(const da_plan *p, const void *q, const void *k, const void *v,
                         double *o);

/* All reference permutations of a plan: perm[batch][heads][n_tiles][head_dim]. */
void ref_groups(const da_plan *p, const void *q, int *perm);

#endif /* DA_TEST_REF_H */
