/* SPDX-License-Identifier: Apache-2.0 */
/* distrattn check: every available backend against the CPU backend (and the
 * CPU backend against a float64 reference) over a sweep of shapes. */
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

static void check_usage(FILE *f) {
  fprintf(f,
          "Usage: distrattn check [OPTION]...\n"
          "Run a sweep of shapes (odd lengths, head_dim 1..256, group 1/2/4/8, mean and\n"
          "norm fusion, causal, GQA/MQA, f32/f16/bf16, fused and GEMM) on every available\n"
          "backend and compare:\n"
          "  OpenCL/CUDA with the CPU backend (same plan and inputs; the column\n"
          "    permutations of DistrAttention must be identical);\n"
          "  the CPU backend with a float64 reference computed here from SPEC.md\n"
          "    (DistrAttention with the CPU backend's own permutations).\n"
          "Bounds on the relative Frobenius error: f32 1e-5, f16 2e-3, bf16 1.6e-2; NaN\n"
          "fails. An algorithm a backend does not offer (DA_ERR_UNSUPPORTED) is shown\n"
          "as 'unsupported' and is not a failure. Decode shapes (seq_q 1 and 4, GQA)\n"
          "also run as a KV cache with per-sequence lengths (shape marked 'kv': the\n"
          "lengths are the capacity, 0 and about half of it) through da_attention_ext;\n"
          "a backend that refuses such plans is 'unsupported' there.\n"
          "\n"
          "  -b, --backend NAME   check only this backend: cpu, opencl or cuda\n"
          "                       (default: all available)\n"
          "  -d, --device N       device index within the backend (default -1: the best)\n"
          "  -q, --quick          a smaller sweep\n"
          "      --data-seed N    seed of the random inputs (default 1)\n"
          "  -v, --verbose        print the detail of each failure\n"
          "  -h, --help           show this help\n"
          "\n"
          "Exit status: 0 when every row passes, 1 on any failure or error.\n");
}

typedef struct {
  int b, h, kvh, sq, sk, d;
  da_dtype t;
  int causal, G;
  da_fusion f;
  int hb, bits; /* 0: the library's default */
  int quick;    /* part of --quick */
  int kv;       /* 1: DA_SEQLENS_KV, lengths from kv_len() (da_attention_ext) */
} check_case;

#define MAX_CASES 112

/* Sequence b's keys in a kv case: the capacity, none, about half. */
static int kv_len(const check_case *c, int b) {
  return b % 3 == 0 ? c->sk : b % 3 == 1 ? 0 : c->sk / 2 + 1;
}

static int add_case(check_case *cs, int n, check_case c) {
  if (n < MAX_CASES) cs[n++] = c;
  return n;
}

static int build_cases(check_case *cs) {
  static const int shapes[][2] = {{1, 1},     {7, 3},     {3, 7},     {113, 203},
                                  {128, 217}, {108, 256}, {256, 512}, {512, 256}};
  static const int dims[] = {1, 32, 59, 64, 128, 256};
  const int nsh = 8, nd = 6;
  int n = 0;
  /* exact, f32: every shape with two head dims, masks alternating */
  for (int si = 0; si < nsh; si++)
    for (int j = 0; j < 2; j++) {
      int d = dims[(si + 3 * j) % nd];
      n = add_case(cs, n, (check_case){1, 2, 2, shapes[si][0], shapes[si][1], d, DA_F32,
                                       (si + j) % 2, 1, DA_FUSE_MEAN, 0, 0,
                                       j == 0 && (si % 2 == 1 || si == 6), 0});
    }
  /* exact, f16 and bf16 */
  for (int t = DA_F16; t <= DA_BF16; t++) {
    n = add_case(cs, n, (check_case){1, 2, 2, 113, 203, 64, (da_dtype)t, 0, 1, DA_FUSE_MEAN, 0, 0, 1, 0});
    n = add_case(cs, n, (check_case){1, 2, 2, 256, 512, 128, (da_dtype)t, 1, 1, DA_FUSE_MEAN, 0, 0, 0, 0});
    n = add_case(cs, n, (check_case){2, 1, 1, 7, 3, 59, (da_dtype)t, 1, 1, DA_FUSE_MEAN, 0, 0, 0, 0});
  }
  /* DistrAttention, f32: every G with both fusions */
  static const int gshape[][3] = {{256, 512, 64}, {113, 203, 59}, {512, 256, 128},
                                  {128, 217, 32}, {108, 256, 256}, {7, 3, 64}};
  static const int gs[] = {2, 4, 8};
  for (int i = 0; i < 6; i++) {
    int G = gs[i / 2];
    da_fusion f = i % 2 ? DA_FUSE_NORM : DA_FUSE_MEAN;
    n = add_case(cs, n, (check_case){1 + i % 2, 2, 2, gshape[i][0], gshape[i][1], gshape[i][2],
                                     DA_F32, i % 3 == 1, G, f, 0, 0, i == 0 || i == 3 || i == 4, 0});
  }
  /* hash parameters, tiny and ragged groups */
  n = add_case(cs, n, (check_case){1, 2, 2, 512, 256, 64, DA_F32, 0, 2, DA_FUSE_NORM, 64, 8, 1, 0});
  n = add_case(cs, n, (check_case){1, 2, 2, 113, 203, 32, DA_F32, 1, 4, DA_FUSE_MEAN, 16, 0, 0, 0});
  n = add_case(cs, n, (check_case){1, 1, 1, 300, 300, 64, DA_F32, 0, 2, DA_FUSE_MEAN, 256, 32, 0, 0});
  n = add_case(cs, n, (check_case){1, 1, 1, 1, 1, 2, DA_F32, 0, 2, DA_FUSE_MEAN, 0, 0, 1, 0});
  n = add_case(cs, n, (check_case){1, 2, 2, 3, 7, 59, DA_F32, 1, 8, DA_FUSE_NORM, 0, 0, 0, 0});
  /* DistrAttention, f16 and bf16 */
  for (int t = DA_F16; t <= DA_BF16; t++) {
    n = add_case(cs, n, (check_case){1, 2, 2, 256, 512, 64, (da_dtype)t, 0, 2, DA_FUSE_NORM, 0, 0, 1, 0});
    n = add_case(cs, n, (check_case){1, 2, 2, 113, 203, 128, (da_dtype)t, 1, 4, DA_FUSE_MEAN, 0, 0, 0, 0});
  }
  /* GQA / MQA */
  n = add_case(cs, n, (check_case){1, 4, 2, 128, 217, 64, DA_F32, 1, 1, DA_FUSE_MEAN, 0, 0, 1, 0});
  n = add_case(cs, n, (check_case){1, 4, 1, 256, 512, 128, DA_F32, 0, 2, DA_FUSE_MEAN, 0, 0, 0, 0});
  n = add_case(cs, n, (check_case){2, 6, 3, 113, 203, 59, DA_F32, 1, 4, DA_FUSE_NORM, 0, 0, 1, 0});
  n = add_case(cs, n, (check_case){1, 8, 1, 108, 256, 32, DA_BF16, 0, 1, DA_FUSE_MEAN, 0, 0, 0, 0});
  /* decode: seq_q 1 and 4 with GQA/MQA, dense and as a KV cache with lengths */
  n = add_case(cs, n, (check_case){2, 32, 8, 1, 1000, 128, DA_F16, 1, 1, DA_FUSE_MEAN, 0, 0, 1, 0});
  n = add_case(cs, n, (check_case){3, 8, 2, 1, 700, 128, DA_F16, 1, 1, DA_FUSE_MEAN, 0, 0, 1, 1});
  n = add_case(cs, n, (check_case){3, 32, 8, 4, 517, 64, DA_BF16, 1, 1, DA_FUSE_MEAN, 0, 0, 0, 1});
  n = add_case(cs, n, (check_case){3, 4, 1, 4, 300, 59, DA_F32, 0, 1, DA_FUSE_MEAN, 0, 0, 1, 1});
  n = add_case(cs, n, (check_case){3, 4, 1, 1, 2049, 64, DA_F32, 1, 1, DA_FUSE_MEAN, 0, 0, 0, 1});
  n = add_case(cs, n, (check_case){2, 8, 2, 4, 400, 128, DA_F32, 1, 2, DA_FUSE_MEAN, 0, 0, 0, 0});
  return n;
}

static double bound_for(da_dtype t) {
  switch (t) {
  case DA_F16: return 2e-3;
  case DA_BF16: return 1.6e-2;
  default: return 1e-5;
  }
}

typedef struct {
  const char *cmd;
  int verbose;
  tool_progress *prog;
  int n_pass, n_fail, n_unsup;
} check_state;

/* One backend's output (and permutations) for a case. Returns DA_SUCCESS,
 * or the failing status with *what naming the call. */
static da_status compute(da_context *ctx, const da_attn_desc *d, const void *q, const void *k,
                         const void *v, void *o, int *perm, const char **what) {
  da_plan *p = NULL;
  *what = "da_plan_create";
  da_status s = da_plan_create(ctx, d, &p);
  if (s != DA_SUCCESS) return s;
  *what = "da_attention_host";
  s = da_attention_host(p, q, k, v, o);
  if (s == DA_SUCCESS && perm && d->group_size > 1) {
    *what = "da_plan_groups_host";
    s = da_plan_groups_host(p, q, perm);
  }
  da_plan_destroy(p);
  return s;
}

/* A kv case (DA_SEQLENS_KV, lengths kv_len) through the ext API on device
 * buffers; o gets every row (a sequence with no keys: zeros). */
static da_status compute_kv(da_context *ctx, const da_attn_desc *d, const check_case *c,
                            const void *q, const void *k, const void *v, void *o,
                            const char **what) {
  da_attn_ext x;
  da_attn_ext_init(&x);
  x.seqlens = DA_SEQLENS_KV;
  da_plan *p = NULL;
  *what = "da_plan_create_ext";
  da_status s = da_plan_create_ext(ctx, d, &x, &p);
  if (s != DA_SUCCESS) return s;
  const size_t es = dtype_size(d->dtype);
  const size_t qb = (size_t)d->batch * d->heads * d->seq_q * d->head_dim * es;
  const size_t kb = (size_t)d->batch * d->kv_heads * d->seq_k * d->head_dim * es;
  int lens[64];
  for (int b = 0; b < d->batch && b < 64; b++) lens[b] = kv_len(c, b);
  da_buffer *bq = NULL, *bk = NULL, *bv = NULL, *bo = NULL, *bl = NULL;
  *what = "da_buffer_create";
  if ((s = da_buffer_create(ctx, qb, &bq)) == DA_SUCCESS &&
      (s = da_buffer_create(ctx, kb, &bk)) == DA_SUCCESS &&
      (s = da_buffer_create(ctx, kb, &bv)) == DA_SUCCESS &&
      (s = da_buffer_create(ctx, qb, &bo)) == DA_SUCCESS &&
      (s = da_buffer_create(ctx, sizeof(int) * (size_t)d->batch, &bl)) == DA_SUCCESS) {
    *what = "da_buffer_write";
    if ((s = da_buffer_write(bq, 0, q, qb)) == DA_SUCCESS &&
        (s = da_buffer_write(bk, 0, k, kb)) == DA_SUCCESS &&
        (s = da_buffer_write(bv, 0, v, kb)) == DA_SUCCESS &&
        (s = da_buffer_write(bl, 0, lens, sizeof(int) * (size_t)d->batch)) == DA_SUCCESS) {
      da_attn_args a;
      da_attn_args_init(&a);
      a.q = bq, a.k = bk, a.v = bv, a.o = bo, a.seqlens_k = bl;
      *what = "da_attention_ext";
      s = da_attention_ext(p, &a);
      if (s == DA_SUCCESS) s = da_context_synchronize(ctx);
      *what = "da_buffer_read";
      if (s == DA_SUCCESS) s = da_buffer_read(bo, 0, o, qb);
    }
  }
  da_buffer_destroy(bq), da_buffer_destroy(bk), da_buffer_destroy(bv);
  da_buffer_destroy(bo), da_buffer_destroy(bl);
  da_plan_destroy(p);
  return s;
}

/* The float64 reference of a kv case: per sequence, its keys copied out of
 * the cache and the dense reference over them. */
static int reference_kv(const da_attn_desc *d, const check_case *c, const float *q,
                        const float *k, const float *v, float *out) {
  const size_t hd = (size_t)d->head_dim, qs = (size_t)d->heads * d->seq_q * hd;
  float *kb = malloc((size_t)d->kv_heads * d->seq_k * hd * 4 + 4);
  float *vb = malloc((size_t)d->kv_heads * d->seq_k * hd * 4 + 4);
  int rc = kb && vb ? 0 : -1;
  for (int b = 0; b < d->batch && rc == 0; b++) {
    int lk = kv_len(c, b);
    if (lk == 0) {
      memset(out + b * qs, 0, qs * 4);
      continue;
    }
    for (int h = 0; h < d->kv_heads; h++) {
      size_t src = ((size_t)b * d->kv_heads + h) * d->seq_k * hd, dst = (size_t)h * lk * hd;
      memcpy(kb + dst, k + src, (size_t)lk * hd * 4);
      memcpy(vb + dst, v + src, (size_t)lk * hd * 4);
    }
    da_attn_desc db = *d;
    db.batch = 1, db.seq_k = lk;
    rc = reference_f64(&db, q + b * qs, kb, vb, NULL, out + b * qs);
  }
  free(kb), free(vb);
  return rc;
}

static void describe(const check_case *c, char *shape, size_t ns, char *grp, size_t ng) {
  snprintf(shape, ns, "%d,%d/%d,%dx%d%s,d%d", c->b, c->h, c->kvh, c->sq, c->sk, c->kv ? "kv" : "",
           c->d);
  if (c->G == 1) {
    snprintf(grp, ng, "1");
  } else {
    int n = snprintf(grp, ng, "%d %s", c->G, fusion_name(c->f));
    if (c->hb && n > 0 && (size_t)n < ng) n += snprintf(grp + n, ng - (size_t)n, " hb%d", c->hb);
    if (c->bits && n > 0 && (size_t)n < ng) snprintf(grp + n, ng - (size_t)n, " %db", c->bits);
  }
}

/* Runs one case on ctx with both algorithms; prints two rows. */
static void run_case(check_state *st, da_context *ctx, da_context *cpu, const check_case *c,
                     int ci, unsigned long long data_seed, int *row, int nrows) {
  const char *cmd = st->cmd;
  da_backend be = da_context_backend(ctx);
  da_attn_desc d;
  da_attn_desc_init(&d);
  d.batch = c->b, d.heads = c->h, d.kv_heads = c->kvh, d.seq_q = c->sq, d.seq_k = c->sk;
  d.head_dim = c->d, d.dtype = c->t, d.causal = c->causal, d.group_size = c->G, d.fusion = c->f;
  if (c->hb) d.hash_block = c->hb;
  if (c->bits) d.hash_bits = c->bits;
  d.seed = 1000003ull * (unsigned long long)(ci + 1);
  int hb = d.hash_block > 0 ? d.hash_block : 128;
  size_t qn = (size_t)c->b * c->h * c->sq * c->d, kn = (size_t)c->b * c->kvh * c->sk * c->d;
  size_t pn = (size_t)c->b * c->h * ((c->sq + hb - 1) / hb) * c->d;
  size_t es = dtype_size(c->t);
  float *qf = malloc(qn * 4), *kf = malloc(kn * 4), *vf = malloc(kn * 4);
  float *of = malloc(qn * 4), *rf = malloc(qn * 4);
  void *qd = malloc(qn * es), *kd = malloc(kn * es), *vd = malloc(kn * es);
  void *od = malloc(qn * es), *rd = malloc(qn * es);
  int *perm = malloc(pn * sizeof(int)), *rperm = malloc(pn * sizeof(int));
  char shape[64], grp[48];
  describe(c, shape, sizeof shape, grp, sizeof grp);
  const char *refname = be == DA_BACKEND_CPU ? "f64" : "cpu";
  int ref_ok = 0;
  char ref_err[512] = "";

  if (!qf || !kf || !vf || !of || !rf || !qd || !kd || !vd || !od || !rd || !perm || !rperm) {
    snprintf(ref_err, sizeof ref_err, "out of host memory");
  } else {
    tool_rng rng;
    rng_init(&rng, data_seed * 0x9e3779b97f4a7c15ull + (unsigned long long)ci);
    fill_normal(&rng, qf, qn, c->t);
    fill_normal(&rng, kf, kn, c->t);
    fill_normal(&rng, vf, kn, c->t);
    to_dtype(qd, c->t, qf, qn);
    to_dtype(kd, c->t, kf, kn);
    to_dtype(vd, c->t, vf, kn);
    /* the reference: the CPU backend (fused), or for the CPU backend float64 */
    if (be != DA_BACKEND_CPU) {
      da_attn_desc cd = d;
      cd.algo = DA_ALGO_FUSED;
      const char *what;
      da_status s = c->kv ? compute_kv(cpu, &cd, c, qd, kd, vd, rd, &what)
                          : compute(cpu, &cd, qd, kd, vd, rd, rperm, &what);
      if (s == DA_SUCCESS) {
        from_dtype(rf, c->t, rd, qn);
        ref_ok = 1;
      } else {
        snprintf(ref_err, sizeof ref_err, "cpu reference: %s: %s: %s", what, da_status_string(s),
                 da_context_last_error(cpu));
      }
    } else if (c->G > 1) {
      /* permutations of the CPU backend itself feed the float64 reference */
      da_attn_desc cd = d;
      cd.algo = DA_ALGO_FUSED;
      da_plan *p = NULL;
      da_status s = da_plan_create(cpu, &cd, &p);
      if (s == DA_SUCCESS) s = da_plan_groups_host(p, qd, rperm);
      if (p) da_plan_destroy(p);
      if (s != DA_SUCCESS)
        snprintf(ref_err, sizeof ref_err, "cpu groups: %s: %s", da_status_string(s),
                 da_context_last_error(cpu));
      else if (reference_f64(&d, qf, kf, vf, rperm, rf) != 0)
        snprintf(ref_err, sizeof ref_err, "out of host memory for the float64 reference");
      else
        ref_ok = 1;
    } else {
      if ((c->kv ? reference_kv(&d, c, qf, kf, vf, rf) : reference_f64(&d, qf, kf, vf, NULL, rf)) != 0)
        snprintf(ref_err, sizeof ref_err, "out of host memory for the float64 reference");
      else
        ref_ok = 1;
    }
  }

  static const da_algo algos[] = {DA_ALGO_FUSED, DA_ALGO_GEMM};
  for (int a = 0; a < 2; a++) {
    (*row)++;
    progress_show(st->prog, "[%d/%d] %s %s %s G%s %s", *row, nrows, backend_label(be), shape,
                  dtype_name(c->t), grp, algo_name(algos[a]));
    char errs[32] = "-", perms[8] = "-", result[16], detail[1024] = "";
    double secs = 0.0;
    if (!ref_ok) {
      snprintf(result, sizeof result, "ERROR");
      snprintf(detail, sizeof detail, "%s", ref_err);
      st->n_fail++;
    } else {
      d.algo = algos[a];
      const char *what;
      double t0 = now_ms();
      da_status s = c->kv ? compute_kv(ctx, &d, c, qd, kd, vd, od, &what)
                          : compute(ctx, &d, qd, kd, vd, od, c->G > 1 ? perm : NULL, &what);
      secs = (now_ms() - t0) * 1e-3;
      if (s == DA_ERR_UNSUPPORTED) {
        snprintf(result, sizeof result, "unsupported");
        snprintf(detail, sizeof detail, "%s", da_context_last_error(ctx));
        st->n_unsup++;
      } else if (s != DA_SUCCESS) {
        snprintf(result, sizeof result, "ERROR");
        snprintf(detail, sizeof detail, "%s: %s: %s", what, da_status_string(s),
                 da_context_last_error(ctx));
        st->n_fail++;
      } else {
        from_dtype(of, c->t, od, qn);
        double e = rel_error(of, rf, qn);
        int ok = e <= bound_for(c->t); /* false for NaN */
        snprintf(errs, sizeof errs, "%.2e", e);
        if (c->G > 1 && be != DA_BACKEND_CPU) {
          int same = memcmp(perm, rperm, pn * sizeof(int)) == 0;
          snprintf(perms, sizeof perms, "%s", same ? "yes" : "no");
          if (!same) {
            ok = 0;
            size_t i = 0;
            while (i < pn && perm[i] == rperm[i]) i++;
            snprintf(detail, sizeof detail, "permutations differ first at element %zu (%d vs %d)",
                     i, perm[i], rperm[i]);
          }
        }
        if (!(e <= bound_for(c->t)))
          snprintf(detail, sizeof detail, "relative error %.3e above the bound %.1e", e,
                   bound_for(c->t));
        snprintf(result, sizeof result, "%s", ok ? "pass" : "FAIL");
        if (ok) st->n_pass++;
        else st->n_fail++;
      }
    }
    progress_clear(st->prog);
    printf("%-7s %-26s %-7s %-5s %-16s %-6s %-4s %-9s %-5s %-11s %6.2f\n", backend_label(be),
           shape, c->causal ? "causal" : "-", dtype_name(c->t), grp, algo_name(algos[a]), refname,
           errs, perms, result, secs);
    fflush(stdout);
    int failed = strcmp(result, "FAIL") == 0 || strcmp(result, "ERROR") == 0;
    if (detail[0] && (failed || st->verbose)) tool_msg(cmd, "%s %s %s G%s %s: %s", backend_label(be),
                                                      shape, dtype_name(c->t), grp,
                                                      algo_name(algos[a]), detail);
  }
  free(qf), free(kf), free(vf), free(of), free(rf);
  free(qd), free(kd), free(vd), free(od), free(rd), free(perm), free(rperm);
}

int cmd_check(int argc, char **argv) {
  const char *cmd = argv[0];
  static const struct option lopts[] = {
      {"backend", required_argument, NULL, 'b'}, {"device", required_argument, NULL, 'd'},
      {"quick", no_argument, NULL, 'q'},         {"data-seed", required_argument, NULL, 'S'},
      {"verbose", no_argument, NULL, 'v'},       {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0}};
  da_backend only = DA_BACKEND_AUTO;
  int device = -1, quick = 0, verbose = 0, c;
  unsigned long long data_seed = 1;
  optind = 1;
  while ((c = getopt_long(argc, argv, "b:d:qvh", lopts, NULL)) != -1) {
    int bad = 0;
    switch (c) {
    case 'b':
      if (strcmp(optarg, "all") == 0) only = DA_BACKEND_AUTO;
      else bad = parse_backend(cmd, optarg, &only);
      break;
    case 'd': bad = parse_int(cmd, "--device", optarg, -1, 1 << 20, &device); break;
    case 'q': quick = 1; break;
    case 'S': bad = parse_u64(cmd, "--data-seed", optarg, &data_seed); break;
    case 'v': verbose = 1; break;
    case 'h': check_usage(stdout); return 0;
    default: fprintf(stderr, "Try '%s --help'.\n", cmd); return EXIT_USAGE;
    }
    if (bad) return EXIT_USAGE;
  }
  if (optind < argc) return tool_usage_error(cmd, "unexpected argument '%s'", argv[optind]);
  if (device >= 0 && only == DA_BACKEND_AUTO)
    return tool_usage_error(cmd, "--device needs --backend cpu, opencl or cuda");

  /* the CPU backend: the reference of the others */
  da_context *cpu = NULL;
  da_status s = da_context_create(&cpu, DA_BACKEND_CPU, only == DA_BACKEND_CPU ? device : -1);
  if (s != DA_SUCCESS) {
    tool_api_error(cmd, "da_context_create(cpu)", s, NULL);
    return 1;
  }
  da_context *ctxs[3] = {NULL, NULL, NULL};
  int nctx = 0, rc = 0;
  static const da_backend bs[] = {DA_BACKEND_CPU, DA_BACKEND_OPENCL, DA_BACKEND_CUDA};
  for (int i = 0; i < 3; i++) {
    if (only != DA_BACKEND_AUTO && bs[i] != only) continue;
    const char *why = NULL;
    if (!da_backend_available(bs[i], &why)) {
      if (only != DA_BACKEND_AUTO) {
        tool_msg(cmd, "backend %s is not available: %s", backend_label(bs[i]), why ? why : "");
        rc = 1;
      } else {
        printf("# %s: not available (%s)\n", backend_label(bs[i]), why ? why : "");
      }
      continue;
    }
    if (bs[i] == DA_BACKEND_CPU) {
      ctxs[nctx++] = cpu;
      continue;
    }
    da_context *ctx = NULL;
    s = da_context_create(&ctx, bs[i], device);
    if (s != DA_SUCCESS) {
      char what[64];
      snprintf(what, sizeof what, "da_context_create(%s, %d)", backend_label(bs[i]), device);
      tool_api_error(cmd, what, s, NULL);
      rc = 1;
      continue;
    }
    ctxs[nctx++] = ctx;
  }
  for (int i = 0; i < nctx; i++) {
    da_device_info info;
    if (da_context_get_device_info(ctxs[i], &info) == DA_SUCCESS)
      printf("# %s device %d: %s (%s)\n", backend_label(info.backend), info.index, info.name,
             info.vendor);
  }

  check_case cases[MAX_CASES];
  int ncase = build_cases(cases);
  int nsel = 0;
  for (int i = 0; i < ncase; i++)
    if (!quick || cases[i].quick) nsel++;
  int nrows = nsel * 2 * nctx, row = 0;

  tool_progress prog;
  progress_init(&prog);
  check_state st = {cmd, verbose, &prog, 0, 0, 0};
  printf("%-7s %-26s %-7s %-5s %-16s %-6s %-4s %-9s %-5s %-11s %6s\n", "backend",
         "shape b,h/kv,sq x sk,d", "mask", "dtype", "G fusion", "algo", "ref", "rel.err", "perm",
         "result", "secs");
  double t0 = now_ms();
  for (int b = 0; b < nctx; b++)
    for (int i = 0; i < ncase; i++)
      if (!quick || cases[i].quick) run_case(&st, ctxs[b], cpu, &cases[i], i, data_seed, &row, nrows);
  progress_clear(&prog);
  printf("\n%d passed, %d failed, %d unsupported (%d rows, %.1f s)\n", st.n_pass, st.n_fail,
         st.n_unsup, row, (now_ms() - t0) * 1e-3);
  for (int i = 0; i < nctx; i++)
    if (ctxs[i] != cpu) da_context_destroy(ctxs[i]);
  da_context_destroy(cpu);
  if (st.n_fail) rc = 1;
  return rc;
}
