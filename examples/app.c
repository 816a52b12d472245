/* SPDX-License-Identifier: Apache-2.0 */
/* The README's example: built against the installed library by scripts/install-check.sh. */
#include <distrattn.h>
#include <stdio.h>
#include <stdlib.h>

int main(void) {
  da_context *ctx;
  da_plan *plan;
  da_attn_desc d;
  if (da_context_create(&ctx, DA_BACKEND_AUTO, -1) != DA_SUCCESS) return 1;
  da_attn_desc_init(&d);
  d.batch = 1; d.heads = 8; d.seq_q = d.seq_k = 1024; d.head_dim = 64;
  d.causal = 1; d.group_size = 2;          /* DistrAttention, G = 2 */
  da_status s = da_plan_create(ctx, &d, &plan);
  if (s != DA_SUCCESS) { fprintf(stderr, "%s: %s\n", da_status_string(s), da_context_last_error(ctx)); return 1; }
  size_t n = (size_t)d.batch * d.heads * d.seq_q * d.head_dim;
  float *q = malloc(4 * n), *k = malloc(4 * n), *v = malloc(4 * n), *o = malloc(4 * n);
  for (size_t i = 0; i < n; i++) q[i] = k[i] = v[i] = (float)((i * 7919) % 101) / 101.0f - 0.5f;
  s = da_attention_host(plan, q, k, v, o);
  printf("%s, o[0] = %f\n", da_status_string(s), o[0]);
  da_plan_destroy(plan); da_context_destroy(ctx); free(q); free(k); free(v); free(o);
  return s != DA_SUCCESS;
}
