/* SPDX-License-Identifier: Apache-2.0 */
/* distrattn run: time one attention configuration on device buffers and
 * measure the error of its output. */
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "util.h"

static void run_usage(FILE *f) {
  fprintf(f,
          "Usage: distrattn run [OPTION]...\n"
          "Time one attention call on device-resident buffers (da_attention +\n"
          "da_context_synchronize, median of --repeat runs) and measure the relative\n"
          "Frobenius error of its output:\n"
          "  group 1 on OpenCL/CUDA: against the CPU backend (same inputs, fused);\n"
          "  group 1 on the CPU:     against a float64 reference computed here (above\n"
          "                          2^30 multiply-adds on every n-th query row only);\n"
          "  group > 1, --rank, --proj: against exact attention (group 1, fused) on\n"
          "                          the same device, i.e. the approximation error.\n"
          "It prints the kernel the plan runs (da_plan_get_kernel: name, tile, threads,\n"
          "decode chunk; CSV column 'kernel'), after the DISTRATTN_* overrides.\n"
          "\n"
          "Device:\n"
          "  -b, --backend NAME   auto, cpu, opencl or cuda (default auto)\n"
          "  -d, --device N       device index within the backend, or with 'auto' in the\n"
          "                       list of 'distrattn devices' (default -1: the best)\n"
          "Shape:\n"
          "      --batch N        batch size (default 1)\n"
          "      --heads N        query heads (default 8)\n"
          "      --kv-heads N     key/value heads, dividing --heads (default = heads)\n"
          "      --seq N          sets --seq-q and --seq-k (default 1024)\n"
          "      --seq-q N        query length\n"
          "      --seq-k N        key length (default = seq-q)\n"
          "      --dim N          head dimension (default 64)\n"
          "      --causal         causal mask (bottom-right aligned)\n"
          "      --dtype T        f32, f16 or bf16 (default f32)\n"
          "Algorithm:\n"
          "  -g, --group G        1 (exact), 2, 4 or 8 (DistrAttention) (default 1)\n"
          "      --fusion F       mean or norm (default: the library's)\n"
          "      --algo A         auto, fused or gemm (default auto)\n"
          "      --hash-bits N    1..32 (default: the library's, 16)\n"
          "      --hash-block N   hash tile rows, a power of two 16..1024 (default 128)\n"
          "      --seed N         seeds the random inputs and the plan's hash projections\n"
          "                       (default 0: every run the same)\n"
          "      --rank R         the projection strategy (SPEC.md 1c) with random\n"
          "                       orthonormal head_dim x R projections, A = B, per head\n"
          "                       (from --seed): for timing (group must be 1)\n"
          "      --proj FILE      the projection strategy with FILE's projections\n"
          "                       (DATTNPRJ, `distrattn calibrate`), of layer --proj-layer\n"
          "      --proj-layer N   (default 0)\n"
          "Measurement:\n"
          "      --data-seed N    seed of the random inputs alone (default: --seed)\n"
          "  -r, --repeat N       timed runs (default 5)\n"
          "  -w, --warmup N       untimed runs first (default 1)\n"
          "      --no-verify      do not compute the error\n"
          "      --csv            print one machine-readable CSV line\n"
          "      --csv-header     with --csv: print the column names first\n"
          "  -h, --help           show this help\n"
          "\n"
          "Throughput counts 4*batch*heads*seq_q*seq_k*head_dim flops whatever the\n"
          "mask or group (with --causal about half of that work is done).\n");
}

enum {
  O_BATCH = 1000, O_HEADS, O_KVHEADS, O_SEQ, O_SEQQ, O_SEQK, O_DIM, O_CAUSAL, O_DTYPE, O_FUSION,
  O_ALGO, O_HBITS, O_HBLOCK, O_SEED, O_DSEED, O_NOVERIFY, O_CSV, O_CSVH, O_RANK, O_PROJ,
  O_PLAYER
};

typedef struct {
  double err;         /* NaN when not finite, < 0 when not computed */
  char ref[96];       /* what it was measured against, or why not */
} verify_result;

/* Output of the configuration `d` computed another way: see run_usage. */
static int verify(const char *cmd, da_context *ctx, const da_attn_desc *d, const void *qd,
                  const void *kd, const void *vd, const float *qf, const float *kf,
                  const float *vf, const float *out, size_t q_elems, int approx,
                  verify_result *vr) {
  vr->err = -1.0;
  float *ref = malloc(q_elems * sizeof(float));
  void *refd = malloc(q_elems * dtype_size(d->dtype));
  int rc = 0;
  if (!ref || !refd) {
    tool_msg(cmd, "out of host memory for the reference output");
    rc = 1;
    goto done;
  }
  if (d->group_size > 1 || approx || da_context_backend(ctx) != DA_BACKEND_CPU) {
    da_context *rctx = ctx;
    da_attn_desc rd = *d;
    rd.algo = DA_ALGO_FUSED;
    if (d->group_size > 1 || approx) {
      rd.group_size = 1;
      snprintf(vr->ref, sizeof vr->ref, "exact attention (group 1, fused) on the same device");
    } else {
      da_status s = da_context_create(&rctx, DA_BACKEND_CPU, -1);
      if (s != DA_SUCCESS) {
        tool_api_error(cmd, "da_context_create(cpu) for the reference", s, NULL);
        rc = 1;
        goto done;
      }
      snprintf(vr->ref, sizeof vr->ref, "the CPU backend (fused)");
    }
    da_plan *rp = NULL;
    da_status s = da_plan_create(rctx, &rd, &rp);
    if (s != DA_SUCCESS) {
      tool_api_error(cmd, "da_plan_create (reference)", s, rctx);
      rc = 1;
    } else {
      s = da_attention_host(rp, qd, kd, vd, refd);
      if (s != DA_SUCCESS) {
        tool_api_error(cmd, "da_attention_host (reference)", s, rctx);
        rc = 1;
      }
      da_plan_destroy(rp);
    }
    if (rctx != ctx) da_context_destroy(rctx);
    if (rc) goto done;
    from_dtype(ref, d->dtype, refd, q_elems);
  } else {
    /* Above 2^30 multiply-adds, every row_step-th query row of every
     * (batch, head): the float64 reference stays a few seconds long. */
    double madds = attn_madds(d);
    int row_step = madds > 1073741824.0 ? (int)ceil(madds / 1073741824.0) : 1;
    if (row_step > d->seq_q) row_step = d->seq_q;
    if (reference_f64_rows(d, qf, kf, vf, row_step, ref) != 0) {
      tool_msg(cmd, "out of host memory for the float64 reference");
      rc = 1;
      goto done;
    }
    if (row_step > 1) {
      snprintf(vr->ref, sizeof vr->ref, "a float64 reference, every %d-th query row", row_step);
      vr->err = rel_error_rows(out, ref, d, row_step);
      goto done;
    }
    snprintf(vr->ref, sizeof vr->ref, "a float64 reference");
  }
  vr->err = rel_error(out, ref, q_elems);
done:
  free(ref);
  free(refd);
  return rc;
}

int cmd_run(int argc, char **argv) {
  const char *cmd = argv[0];
  static const struct option lopts[] = {
      {"backend", required_argument, NULL, 'b'}, {"device", required_argument, NULL, 'd'},
      {"batch", required_argument, NULL, O_BATCH}, {"heads", required_argument, NULL, O_HEADS},
      {"kv-heads", required_argument, NULL, O_KVHEADS}, {"seq", required_argument, NULL, O_SEQ},
      {"seq-q", required_argument, NULL, O_SEQQ}, {"seq-k", required_argument, NULL, O_SEQK},
      {"dim", required_argument, NULL, O_DIM}, {"head-dim", required_argument, NULL, O_DIM},
      {"causal", no_argument, NULL, O_CAUSAL}, {"dtype", required_argument, NULL, O_DTYPE},
      {"group", required_argument, NULL, 'g'}, {"fusion", required_argument, NULL, O_FUSION},
      {"algo", required_argument, NULL, O_ALGO}, {"hash-bits", required_argument, NULL, O_HBITS},
      {"hash-block", required_argument, NULL, O_HBLOCK}, {"seed", required_argument, NULL, O_SEED},
      {"data-seed", required_argument, NULL, O_DSEED}, {"repeat", required_argument, NULL, 'r'},
      {"warmup", required_argument, NULL, 'w'}, {"no-verify", no_argument, NULL, O_NOVERIFY},
      {"csv", no_argument, NULL, O_CSV}, {"csv-header", no_argument, NULL, O_CSVH},
      {"rank", required_argument, NULL, O_RANK}, {"proj", required_argument, NULL, O_PROJ},
      {"proj-layer", required_argument, NULL, O_PLAYER},
      {"help", no_argument, NULL, 'h'}, {NULL, 0, NULL, 0}};

  int prank = 0, player = 0;
  const char *pfile = NULL;
  da_backend backend = DA_BACKEND_AUTO;
  int device = -1, batch = 1, heads = 8, kv_heads = 0, seq_q = 1024, seq_k = -1, dim = 64;
  int causal = 0, group = 1, hash_bits = -1, hash_block = -1, repeat = 5, warmup = 1;
  int no_verify = 0, csv = 0, csv_header = 0, have_fusion = 0, have_seed = 0, have_dseed = 0;
  da_dtype dtype = DA_F32;
  da_fusion fusion = DA_FUSE_MEAN;
  da_algo algo = DA_ALGO_AUTO;
  unsigned long long seed = 0, data_seed = 0;
  int c;
  optind = 1;
  while ((c = getopt_long(argc, argv, "b:d:g:r:w:h", lopts, NULL)) != -1) {
    int bad = 0;
    switch (c) {
    case 'b': bad = parse_backend(cmd, optarg, &backend); break;
    case 'd': bad = parse_int(cmd, "--device", optarg, -1, 1 << 20, &device); break;
    case O_BATCH: bad = parse_int(cmd, "--batch", optarg, 1, 1 << 30, &batch); break;
    case O_HEADS: bad = parse_int(cmd, "--heads", optarg, 1, 1 << 30, &heads); break;
    case O_KVHEADS: bad = parse_int(cmd, "--kv-heads", optarg, 1, 1 << 30, &kv_heads); break;
    case O_SEQ:
      bad = parse_int(cmd, "--seq", optarg, 1, 1 << 30, &seq_q);
      seq_k = seq_q;
      break;
    case O_SEQQ: bad = parse_int(cmd, "--seq-q", optarg, 1, 1 << 30, &seq_q); break;
    case O_SEQK: bad = parse_int(cmd, "--seq-k", optarg, 1, 1 << 30, &seq_k); break;
    case O_DIM: bad = parse_int(cmd, "--dim", optarg, 1, 1 << 20, &dim); break;
    case O_CAUSAL: causal = 1; break;
    case O_DTYPE: bad = parse_dtype(cmd, optarg, &dtype); break;
    case 'g': bad = parse_group(cmd, optarg, &group); break;
    case O_FUSION: bad = parse_fusion(cmd, optarg, &fusion), have_fusion = 1; break;
    case O_ALGO: bad = parse_algo(cmd, optarg, &algo); break;
    case O_HBITS: bad = parse_int(cmd, "--hash-bits", optarg, 1, 32, &hash_bits); break;
    case O_HBLOCK: bad = parse_int(cmd, "--hash-block", optarg, 1, 1 << 20, &hash_block); break;
    case O_SEED: bad = parse_u64(cmd, "--seed", optarg, &seed), have_seed = 1; break;
    case O_DSEED: bad = parse_u64(cmd, "--data-seed", optarg, &data_seed), have_dseed = 1; break;
    case 'r': bad = parse_int(cmd, "--repeat", optarg, 1, 1000000, &repeat); break;
    case 'w': bad = parse_int(cmd, "--warmup", optarg, 0, 1000000, &warmup); break;
    case O_NOVERIFY: no_verify = 1; break;
    case O_CSV: csv = 1; break;
    case O_CSVH: csv_header = 1; break;
    case O_RANK: bad = parse_int(cmd, "--rank", optarg, 1, 256, &prank); break;
    case O_PROJ: pfile = optarg; break;
    case O_PLAYER: bad = parse_int(cmd, "--proj-layer", optarg, 0, 4095, &player); break;
    case 'h': run_usage(stdout); return 0;
    default: fprintf(stderr, "Try '%s --help'.\n", cmd); return EXIT_USAGE;
    }
    if (bad) return EXIT_USAGE;
  }
  if (optind < argc) return tool_usage_error(cmd, "unexpected argument '%s'", argv[optind]);
  if (csv_header && !csv) return tool_usage_error(cmd, "--csv-header needs --csv");
  if (seq_k < 0) seq_k = seq_q;
  if (!have_dseed) data_seed = seed;
  if (prank && pfile) return tool_usage_error(cmd, "give --rank or --proj, not both");
  if (prank > dim) return tool_usage_error(cmd, "--rank %d is larger than --dim %d", prank, dim);

  /* the projection strategy's projections, [heads][2][dim][rank] */
  float *proj = NULL;
  if (pfile) {
    int fh = 0, fd = 0;
    if (da_projections_load(pfile, player, &proj, NULL, &fh, &fd, &prank) != DA_SUCCESS) {
      tool_msg(cmd, "--proj %s", da_context_last_error(NULL));
      return 1;
    }
    if (fh != heads || fd != dim) {
      tool_msg(cmd, "--proj %s: %d heads, head_dim %d; the run has --heads %d --dim %d", pfile, fh,
               fd, heads, dim);
      da_projections_free(proj);
      return EXIT_USAGE;
    }
  } else if (prank) { /* random orthonormal columns (Gram-Schmidt), A = B */
    proj = malloc(sizeof(float) * (size_t)heads * 2 * dim * prank);
    double *m = malloc(sizeof(double) * (size_t)dim * prank);
    if (!proj || !m) {
      free(proj), free(m);
      tool_msg(cmd, "out of host memory for the projections");
      return 1;
    }
    tool_rng prng;
    rng_init(&prng, seed ^ 0x5ca1ab1eULL);
    for (int h = 0; h < heads; h++) {
      for (int i = 0; i < dim * prank; i++) m[i] = rng_normal(&prng);
      for (int cc = 0; cc < prank; cc++) {
        for (int e = 0; e < cc; e++) {
          double dot = 0;
          for (int i = 0; i < dim; i++) dot += m[i * prank + cc] * m[i * prank + e];
          for (int i = 0; i < dim; i++) m[i * prank + cc] -= dot * m[i * prank + e];
        }
        double nn = 0;
        for (int i = 0; i < dim; i++) nn += m[i * prank + cc] * m[i * prank + cc];
        for (int i = 0; i < dim; i++) m[i * prank + cc] /= sqrt(nn);
      }
      for (int w = 0; w < 2; w++)
        for (int i = 0; i < dim * prank; i++)
          proj[((size_t)h * 2 + w) * dim * prank + i] = (float)m[i];
    }
    free(m);
  }

  /* context */
  da_context *ctx = NULL;
  da_device_info info;
  if (!tool_open_context(cmd, backend, device, &ctx, &info)) return 1;
  da_status s;

  /* plan */
  da_attn_desc d;
  da_attn_desc_init(&d);
  d.batch = batch, d.heads = heads, d.kv_heads = kv_heads, d.seq_q = seq_q, d.seq_k = seq_k;
  d.head_dim = dim, d.dtype = dtype, d.causal = causal, d.group_size = group, d.algo = algo;
  if (have_fusion) d.fusion = fusion;
  if (hash_bits > 0) d.hash_bits = hash_bits;
  if (hash_block > 0) d.hash_block = hash_block;
  if (have_seed) d.seed = seed;
  da_plan *plan = NULL;
  if (proj) {
    da_attn_ext x;
    da_attn_ext_init(&x);
    x.strategy = DA_STRATEGY_PROJECTION, x.rank = prank, x.proj = proj;
    s = da_plan_create_ext(ctx, &d, &x, &plan);
  } else {
    s = da_plan_create(ctx, &d, &plan);
  }
  free(proj); /* the plan keeps a copy */
  if (s != DA_SUCCESS) {
    tool_api_error(cmd, prank ? "da_plan_create_ext" : "da_plan_create", s, ctx);
    da_context_destroy(ctx);
    return s == DA_ERR_INVALID_ARG ? EXIT_USAGE : 1;
  }
  da_attn_desc rd;
  s = da_plan_get_desc(plan, &rd);
  if (s != DA_SUCCESS) {
    tool_api_error(cmd, "da_plan_get_desc", s, ctx);
    rd = d;
  }
  if (rd.kv_heads <= 0) rd.kv_heads = rd.heads;

  /* inputs */
  int rc = 1;
  size_t es = dtype_size(dtype);
  size_t qn = (size_t)batch * heads * seq_q * dim, kn = (size_t)batch * rd.kv_heads * seq_k * dim;
  float *qf = malloc(qn * sizeof(float)), *kf = malloc(kn * sizeof(float));
  float *vf = malloc(kn * sizeof(float)), *of = malloc(qn * sizeof(float));
  void *qd = malloc(qn * es), *kd = malloc(kn * es), *vd = malloc(kn * es), *od = malloc(qn * es);
  double *times = malloc(sizeof(double) * (size_t)repeat);
  da_buffer *bq = NULL, *bk = NULL, *bv = NULL, *bo = NULL;
  if (!qf || !kf || !vf || !of || !qd || !kd || !vd || !od || !times) {
    tool_msg(cmd, "out of host memory (Q %zu, K/V %zu elements)", qn, kn);
    goto out;
  }
  tool_rng rng;
  rng_init(&rng, data_seed);
  fill_normal(&rng, qf, qn, dtype);
  fill_normal(&rng, kf, kn, dtype);
  fill_normal(&rng, vf, kn, dtype);
  to_dtype(qd, dtype, qf, qn);
  to_dtype(kd, dtype, kf, kn);
  to_dtype(vd, dtype, vf, kn);

  if ((s = da_buffer_create(ctx, qn * es, &bq)) != DA_SUCCESS ||
      (s = da_buffer_create(ctx, kn * es, &bk)) != DA_SUCCESS ||
      (s = da_buffer_create(ctx, kn * es, &bv)) != DA_SUCCESS ||
      (s = da_buffer_create(ctx, qn * es, &bo)) != DA_SUCCESS) {
    tool_api_error(cmd, "da_buffer_create", s, ctx);
    goto out;
  }
  if ((s = da_buffer_write(bq, 0, qd, qn * es)) != DA_SUCCESS ||
      (s = da_buffer_write(bk, 0, kd, kn * es)) != DA_SUCCESS ||
      (s = da_buffer_write(bv, 0, vd, kn * es)) != DA_SUCCESS) {
    tool_api_error(cmd, "da_buffer_write", s, ctx);
    goto out;
  }
  if ((s = da_context_synchronize(ctx)) != DA_SUCCESS) {
    tool_api_error(cmd, "da_context_synchronize", s, ctx);
    goto out;
  }

  /* timing */
  for (int i = 0; i < warmup + repeat; i++) {
    double t0 = now_ms();
    if ((s = da_attention(plan, bq, bk, bv, bo)) != DA_SUCCESS) {
      tool_api_error(cmd, "da_attention", s, ctx);
      goto out;
    }
    if ((s = da_context_synchronize(ctx)) != DA_SUCCESS) {
      tool_api_error(cmd, "da_context_synchronize", s, ctx);
      goto out;
    }
    double t1 = now_ms();
    if (i >= warmup) times[i - warmup] = t1 - t0;
  }
  double tmin = times[0], tmax = times[0];
  for (int i = 1; i < repeat; i++) {
    if (times[i] < tmin) tmin = times[i];
    if (times[i] > tmax) tmax = times[i];
  }
  double tmed = median(times, repeat);
  if ((s = da_buffer_read(bo, 0, od, qn * es)) != DA_SUCCESS) {
    tool_api_error(cmd, "da_buffer_read", s, ctx);
    goto out;
  }
  from_dtype(of, dtype, od, qn);

  verify_result vr = {-1.0, "skipped (--no-verify)"};
  if (!no_verify) {
    if (!csv && isatty(2)) fprintf(stderr, "computing the reference...\r");
    int vrc = verify(cmd, ctx, &rd, qd, kd, vd, qf, kf, vf, of, qn, prank > 0, &vr);
    if (!csv && isatty(2)) fprintf(stderr, "                          \r");
    if (vrc) goto out;
  }

  char kern[128];
  kernel_label(plan, 1, kern, sizeof kern);
  double flops = attn_flops(&rd);
  double tflops = flops / (tmed * 1e-3) / 1e12;
  char errs[64];
  if (vr.err < 0.0) snprintf(errs, sizeof errs, "n/a");
  else snprintf(errs, sizeof errs, "%.3e", vr.err);

  if (csv) {
    if (csv_header)
      printf("backend,device,device_name,batch,heads,kv_heads,seq_q,seq_k,head_dim,dtype,causal,"
             "group,fusion,algo,hash_bits,hash_block,seed,data_seed,warmup,repeat,median_ms,min_ms,"
             "max_ms,tflops,rel_error,reference,strategy,rank,kernel\n");
    printf("%s,%d,", backend_label(info.backend), info.index);
    csv_field(stdout, info.name);
    printf(",%d,%d,%d,%d,%d,%d,%s,%d,%d,%s,%s,%d,%d,%llu,%llu,%d,%d,%.6f,%.6f,%.6f,%.6g,%s,",
           rd.batch, rd.heads, rd.kv_heads, rd.seq_q, rd.seq_k, rd.head_dim, dtype_name(rd.dtype),
           rd.causal, rd.group_size, fusion_name(rd.fusion), algo_name(rd.algo), rd.hash_bits,
           rd.hash_block, (unsigned long long)rd.seed, data_seed, warmup, repeat, tmed, tmin,
           tmax, tflops, errs);
    csv_field(stdout, vr.ref);
    printf(",%s,%d,", prank ? "projection" : "tile_lsh", prank);
    csv_field(stdout, kern);
    printf("\n");
  } else {
    printf("%-12s %s device %d: %s (%s)\n", "device:", backend_label(info.backend), info.index,
           info.name, info.vendor);
    printf("%-12s batch %d, heads %d, kv_heads %d, seq_q %d, seq_k %d, head_dim %d\n", "shape:",
           rd.batch, rd.heads, rd.kv_heads, rd.seq_q, rd.seq_k, rd.head_dim);
    printf("%-12s %s\n", "dtype:", dtype_name(rd.dtype));
    printf("%-12s %s\n", "causal:", rd.causal ? "yes" : "no");
    if (rd.group_size > 1)
      printf("%-12s %d (DistrAttention: fusion %s, hash_bits %d, hash_block %d, seed %llu)\n",
             "group:", rd.group_size, fusion_name(rd.fusion), rd.hash_bits, rd.hash_block,
             (unsigned long long)rd.seed);
    else if (prank)
      printf("%-12s projection strategy, rank %d (%s)\n", "group:", prank,
             pfile ? pfile : "random orthonormal A = B");
    else
      printf("%-12s 1 (exact)\n", "group:");
    printf("%-12s %s%s\n", "algo:", algo_name(rd.algo), algo == DA_ALGO_AUTO ? " (auto)" : "");
    printf("%-12s %s\n", "kernel:", kern);
    printf("%-12s %llu\n", "data seed:", data_seed);
    printf("%-12s %.3f ms (median of %d, min %.3f, max %.3f; %d warm-up)\n", "time:", tmed,
           repeat, tmin, tmax, warmup);
    printf("%-12s %.4g TFLOP/s (%.4g GFLOP counted as 4*b*h*sq*sk*d%s)\n", "throughput:", tflops,
           flops * 1e-9, rd.causal ? "; causal: half the work" : "");
    if (vr.err < 0.0) printf("%-12s %s\n", "error:", vr.ref);
    else printf("%-12s %s (relative Frobenius, vs %s)\n", "error:", errs, vr.ref);
  }
  rc = 0;
out:
  if (bq) da_buffer_destroy(bq);
  if (bk) da_buffer_destroy(bk);
  if (bv) da_buffer_destroy(bv);
  if (bo) da_buffer_destroy(bo);
  da_plan_destroy(plan);
  da_context_destroy(ctx);
  free(qf), free(kf), free(vf), free(of), free(qd), free(kd), free(vd), free(od), free(times);
  return rc;
}
