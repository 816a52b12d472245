/* SPDX-License-Identifier: Apache-2.0 */
/* distrattn eval: DistrAttention's error on captured attention inputs of a
 * real model (the DATTNCAP format of tools/CAPTURE_FORMAT.md, written by
 * tools/capture.py) against exact attention computed in float64. */
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "capture_io.h"
#include "util.h"

static void eval_usage(FILE *f) {
  fprintf(f,
          "Usage: distrattn eval [OPTION]... FILE\n"
          "Run exact attention and DistrAttention on the captured Q, K, V of a real\n"
          "model (FILE: the DATTNCAP format of tools/CAPTURE_FORMAT.md, version 1 or 2,\n"
          "made by tools/capture.py) on every available backend, and print the relative\n"
          "Frobenius error ||O - ref|| / ||ref|| of each layer (over every entry and\n"
          "head), in total, and the worst single (entry, layer), against exact attention\n"
          "computed here in float64. The capture's shape goes to the library and to the\n"
          "reference alike: kv_heads (GQA: query head h reads kv head h / (heads /\n"
          "kv_heads)), the causal mask (bottom-right aligned), seq_q and seq_k of each\n"
          "entry, and the model's scale. Inputs are given to the library as f32 (f16\n"
          "captures are widened exactly). Column layerN is the file's N-th layer; a\n"
          "version 2 file's model name (printed first) says which model layers they are.\n"
          "\n"
          "The default sweep: G=1 (exact); G=2,4,8 with mean and norm fusion at the\n"
          "library's hash defaults (16 bits, block 128); G=2 and 4, both fusions, with\n"
          "hash_bits 8 and 32; G=2 and 4, both fusions, with hash_block 32 and 64.\n"
          "--full runs the whole grid G 2,4,8 x fusion x bits 8,16,32 x block\n"
          "32,64,128. Any of --groups, --fusion, --bits, --blocks runs the product of\n"
          "the lists given (the others at their default: 2,4,8 / both / 16 / 128).\n"
          "\n"
          "  -b, --backend NAME   only this backend: cpu, opencl or cuda (default: every\n"
          "                       available one)\n"
          "  -d, --device N       device index within the backend (default -1: the best)\n"
          "      --full           the full grid\n"
          "      --groups LIST    group sizes among 1,2,4,8\n"
          "      --fusion F       mean, norm or both\n"
          "      --bits LIST      hash_bits values (1..32)\n"
          "      --blocks LIST    hash_block values (powers of two 16..1024)\n"
          "      --sentences N    use only the first N entries (sentences) of FILE\n"
          "      --seed N         the plans' projection seed (default 0)\n"
          "      --proj FILE      also a row for the projection strategy (SPEC.md 1c) with\n"
          "                       FILE's projections (DATTNPRJ, from `distrattn calibrate`):\n"
          "                       layer N of the capture uses layer N of FILE; up to 8\n"
          "                       --proj, each its own row (cpu backend only, for now)\n"
          "      --csv            machine-readable CSV (one line per row, with a header)\n"
          "  -h, --help           show this help\n"
          "\n"
          "Exit status: 0 success, 1 a bad file or a runtime error, 2 usage error.\n");
}

/* ------------------------------------------------------------ the capture */

/* Returns 0, or -1 after printing why the file is refused (tools/capture_io.c
 * is the reader; it checks everything before allocating the data). */
static int eval_load(const char *cmd, const char *path, capture *c) {
  char why[512];
  if (capture_load_file(path, c, why, sizeof why) == 0) return 0;
  tool_msg(cmd, "%s: %s", path, why);
  return -1;
}

/* ------------------------------------------------------------- the sweep */

typedef struct {
  int G;
  da_fusion f;
  int bits, block;
  int proj;          /* >= 0: the projection strategy with --proj file number proj */
} eval_cfg;

#define MAX_PROJ 8
/* One --proj file: every layer's projections, loaded once. */
typedef struct {
  const char *path;
  int rank;
  float **layer;     /* [layers] */
} eval_proj;

#define MAX_CFG 512
#define MAX_LIST 16

static int add_cfg(eval_cfg *cs, int n, int G, da_fusion f, int bits, int block) {
  if (G == 1) { /* the hash settings do not apply: one exact row */
    f = DA_FUSE_MEAN, bits = 16, block = 128;
    for (int i = 0; i < n; i++)
      if (cs[i].G == 1) return n;
  }
  if (n < MAX_CFG) cs[n++] = (eval_cfg){G, f, bits, block, -1};
  return n;
}

static int default_cfgs(eval_cfg *cs) {
  int n = add_cfg(cs, 0, 1, DA_FUSE_MEAN, 16, 128);
  static const int gs[] = {2, 4, 8};
  for (int gi = 0; gi < 3; gi++)
    for (int f = 0; f < 2; f++) n = add_cfg(cs, n, gs[gi], (da_fusion)f, 16, 128);
  static const int bits[] = {8, 32};
  for (int gi = 0; gi < 2; gi++)
    for (int f = 0; f < 2; f++)
      for (int i = 0; i < 2; i++) n = add_cfg(cs, n, gs[gi], (da_fusion)f, bits[i], 128);
  static const int blocks[] = {32, 64};
  for (int gi = 0; gi < 2; gi++)
    for (int f = 0; f < 2; f++)
      for (int i = 0; i < 2; i++) n = add_cfg(cs, n, gs[gi], (da_fusion)f, 16, blocks[i]);
  return n;
}

/* Error sums of one configuration. */
typedef struct {
  double *num, *den; /* [layers] */
  double worst;
  double ms;
  int failed;
} eval_acc;

static da_context *open_ctx(const char *cmd, da_backend b, int device) {
  da_context *ctx = NULL;
  da_status s = da_context_create(&ctx, b, device);
  if (s != DA_SUCCESS) {
    tool_api_error(cmd, "da_context_create", s, NULL);
    return NULL;
  }
  return ctx;
}

int cmd_eval(int argc, char **argv) {
  const char *cmd = argv[0];
  enum { O_FULL = 1000, O_GROUPS, O_FUSION, O_BITS, O_BLOCKS, O_SENT, O_SEED, O_CSV, O_PROJ };
  static const struct option lopts[] = {
      {"backend", required_argument, NULL, 'b'}, {"device", required_argument, NULL, 'd'},
      {"full", no_argument, NULL, O_FULL},       {"groups", required_argument, NULL, O_GROUPS},
      {"fusion", required_argument, NULL, O_FUSION}, {"bits", required_argument, NULL, O_BITS},
      {"blocks", required_argument, NULL, O_BLOCKS}, {"sentences", required_argument, NULL, O_SENT},
      {"seed", required_argument, NULL, O_SEED}, {"csv", no_argument, NULL, O_CSV},
      {"proj", required_argument, NULL, O_PROJ},
      {"help", no_argument, NULL, 'h'},          {NULL, 0, NULL, 0}};
  int have_backend = 0, device = -1, full = 0, csv = 0, custom = 0, max_sent = 0;
  da_backend backend = DA_BACKEND_CPU;
  int groups[MAX_LIST] = {2, 4, 8}, ngroups = 3;
  int bits[MAX_LIST] = {16}, nbits = 1, blocks[MAX_LIST] = {128}, nblocks = 1;
  int fusions[2] = {DA_FUSE_MEAN, DA_FUSE_NORM}, nfus = 2;
  unsigned long long seed = 0;
  eval_proj projs[MAX_PROJ];
  int nproj = 0;
  memset(projs, 0, sizeof projs);
  int c;
  optind = 1;
  while ((c = getopt_long(argc, argv, "b:d:h", lopts, NULL)) != -1) {
    int bad = 0;
    switch (c) {
    case 'b':
      bad = parse_backend(cmd, optarg, &backend);
      if (!bad && backend == DA_BACKEND_AUTO)
        return tool_usage_error(cmd, "--backend: name cpu, opencl or cuda (or leave it out)");
      have_backend = 1;
      break;
    case 'd': bad = parse_int(cmd, "--device", optarg, -1, 1 << 20, &device); break;
    case O_FULL: full = 1; break;
    case O_GROUPS:
      bad = parse_int_list(cmd, "--groups", optarg, groups, MAX_LIST, &ngroups);
      for (int i = 0; !bad && i < ngroups; i++)
        if (groups[i] != 1 && groups[i] != 2 && groups[i] != 4 && groups[i] != 8)
          return tool_usage_error(cmd, "--groups: %d is not 1, 2, 4 or 8", groups[i]);
      custom = 1;
      break;
    case O_FUSION:
      if (strcmp(optarg, "both") == 0) {
        nfus = 2, fusions[0] = DA_FUSE_MEAN, fusions[1] = DA_FUSE_NORM;
      } else {
        da_fusion f;
        bad = parse_fusion(cmd, optarg, &f);
        nfus = 1, fusions[0] = f;
      }
      custom = 1;
      break;
    case O_BITS:
      bad = parse_int_list(cmd, "--bits", optarg, bits, MAX_LIST, &nbits);
      for (int i = 0; !bad && i < nbits; i++)
        if (bits[i] < 1 || bits[i] > 32)
          return tool_usage_error(cmd, "--bits: %d is outside 1..32", bits[i]);
      custom = 1;
      break;
    case O_BLOCKS:
      bad = parse_int_list(cmd, "--blocks", optarg, blocks, MAX_LIST, &nblocks);
      for (int i = 0; !bad && i < nblocks; i++)
        if (blocks[i] < 16 || blocks[i] > 1024 || (blocks[i] & (blocks[i] - 1)))
          return tool_usage_error(cmd, "--blocks: %d is not a power of two 16..1024", blocks[i]);
      custom = 1;
      break;
    case O_SENT: bad = parse_int(cmd, "--sentences", optarg, 1, 1 << 24, &max_sent); break;
    case O_SEED: bad = parse_u64(cmd, "--seed", optarg, &seed); break;
    case O_CSV: csv = 1; break;
    case O_PROJ:
      if (nproj == MAX_PROJ) return tool_usage_error(cmd, "--proj: at most %d files", MAX_PROJ);
      projs[nproj++].path = optarg;
      break;
    case 'h': eval_usage(stdout); return 0;
    default: fprintf(stderr, "Try '%s --help'.\n", cmd); return EXIT_USAGE;
    }
    if (bad) return EXIT_USAGE;
  }
  if (optind >= argc) return tool_usage_error(cmd, "missing FILE (a DATTNCAP capture)");
  if (optind + 1 < argc) return tool_usage_error(cmd, "unexpected argument '%s'", argv[optind + 1]);
  if (full && custom)
    return tool_usage_error(cmd, "--full excludes --groups, --fusion, --bits and --blocks");

  static eval_cfg cfgs[MAX_CFG];
  int ncfg = 0;
  if (full) {
    static const int fg[] = {2, 4, 8}, fb[] = {8, 16, 32}, fk[] = {32, 64, 128};
    ncfg = add_cfg(cfgs, 0, 1, DA_FUSE_MEAN, 16, 128);
    for (int g = 0; g < 3; g++)
      for (int f = 0; f < 2; f++)
        for (int b = 0; b < 3; b++)
          for (int k = 0; k < 3; k++) ncfg = add_cfg(cfgs, ncfg, fg[g], (da_fusion)f, fb[b], fk[k]);
  } else if (custom) {
    for (int g = 0; g < ngroups; g++)
      for (int f = 0; f < nfus; f++)
        for (int b = 0; b < nbits; b++)
          for (int k = 0; k < nblocks; k++)
            ncfg = add_cfg(cfgs, ncfg, groups[g], (da_fusion)fusions[f], bits[b], blocks[k]);
  } else {
    ncfg = default_cfgs(cfgs);
  }

  if (have_backend) {
    const char *why = NULL;
    if (!da_backend_available(backend, &why)) {
      tool_msg(cmd, "backend %s is not available: %s", backend_label(backend), why ? why : "");
      return 1;
    }
  }
  capture cap;
  if (eval_load(cmd, argv[optind], &cap)) return 1;
  const unsigned L = cap.layers, H = cap.heads, D = cap.head_dim;
  for (int pi = 0; pi < nproj; pi++) {
    eval_proj *ep = &projs[pi];
    ep->layer = calloc(L, sizeof *ep->layer);
    int bad = !ep->layer;
    if (bad) tool_msg(cmd, "out of memory");
    for (unsigned l = 0; l < L && !bad; l++) {
      int fl = 0, fh = 0, fd = 0, fr = 0;
      if (da_projections_load(ep->path, (int)l, &ep->layer[l], &fl, &fh, &fd, &fr) != DA_SUCCESS) {
        tool_msg(cmd, "--proj %s", da_context_last_error(NULL));
        bad = 1;
      } else if ((unsigned)fl != L || (unsigned)fh != H || (unsigned)fd != D) {
        tool_msg(cmd, "--proj %s: %d layers, %d heads, head_dim %d; the capture has %u, %u, %u",
                 ep->path, fl, fh, fd, L, H, D);
        bad = 1;
      }
      ep->rank = fr;
    }
    if (bad) {
      for (int j = 0; j <= pi; j++) {
        for (unsigned l = 0; projs[j].layer && l < L; l++) da_projections_free(projs[j].layer[l]);
        free(projs[j].layer);
      }
      capture_free(&cap);
      return 1;
    }
    if (ncfg < MAX_CFG) cfgs[ncfg++] = (eval_cfg){1, DA_FUSE_MEAN, 0, 0, pi};
  }
  unsigned ns = cap.n_sent;
  if (max_sent > 0 && (unsigned)max_sent < ns) ns = (unsigned)max_sent;
  size_t tokens = 0, max_seq = 0, max_q = 0, mixed = 0;
  for (unsigned s = 0; s < ns; s++) {
    tokens += cap.seq_q[s];
    if (cap.seq_k[s] > max_seq) max_seq = cap.seq_k[s];
    if (cap.seq_q[s] > max_q) max_q = cap.seq_q[s];
    if (cap.seq_q[s] != cap.seq_k[s]) mixed++;
  }

  /* the float64 exact reference of every (entry, layer): the capture's
   * kv_heads (GQA: query head h reads kv head h / (heads / kv_heads)), causal
   * mask (bottom-right aligned), seq_q x seq_k and scale, as the library gets */
  size_t ref_total = 0;
  for (unsigned s = 0; s < ns; s++) ref_total += (size_t)L * H * cap.seq_q[s] * D;
  float *ref = malloc(sizeof(float) * ref_total);
  float *out = malloc(sizeof(float) * (size_t)H * max_q * D);
  double *num = calloc((size_t)ncfg * L, sizeof(double));
  double *den = calloc((size_t)ncfg * L, sizeof(double));
  eval_acc *acc = calloc((size_t)ncfg, sizeof *acc);
  if (!ref || !out || !num || !den || !acc) {
    tool_msg(cmd, "out of memory");
    free(ref), free(out), free(num), free(den), free(acc);
    capture_free(&cap);
    return 1;
  }
  tool_progress prog;
  progress_init(&prog);
  int rc = 0;
  {
    size_t ro = 0;
    for (unsigned s = 0; s < ns && !rc; s++) {
      progress_show(&prog, "reference: %s %u/%u", cap.version == 1 ? "sentence" : "entry",
                    s + 1, ns);
      da_attn_desc d;
      da_attn_desc_init(&d);
      capture_desc(&cap, s, &d);
      size_t n = (size_t)H * cap.seq_q[s] * D;
      for (unsigned l = 0; l < L; l++, ro += n) {
        const float *q, *k, *v;
        capture_qkv(&cap, s, l, &q, &k, &v);
        if (reference_f64(&d, q, k, v, NULL, ref + ro)) {
          tool_msg(cmd, "out of memory");
          rc = 1;
          break;
        }
      }
    }
  }

  da_backend todo[3] = {DA_BACKEND_CPU, DA_BACKEND_OPENCL, DA_BACKEND_CUDA};
  int ntodo = 3;
  if (have_backend) todo[0] = backend, ntodo = 1;

  if (!rc) {
    if (csv) {
      printf("backend,device_name,group,fusion,hash_bits,hash_block,sentences,tokens,total_rel_err,"
             "worst_rel_err,ms,strategy,rank,proj_file");
      for (unsigned l = 0; l < L; l++) printf(",layer%u", l);
      printf("\n");
    } else {
      if (cap.version == 1) {
        printf("capture: %s: %u layers, %u heads, head_dim %u, %u sentences (%zu tokens, "
               "longest %zu), %s\n",
               argv[optind], L, H, D, ns, tokens, max_seq, cap.dtype ? "f16" : "f32");
      } else {
        printf("capture: %s: %s\n", argv[optind], cap.model[0] ? cap.model : "(no model name)");
        printf("  %u layers, %u heads / %u kv heads, head_dim %u, %s, scale %s%.6g, %s; %u "
               "%s (%zu query rows, longest seq_k %zu, %zu with seq_q != seq_k)\n",
               L, H, cap.kv_heads, D, cap.causal ? "causal" : "no mask",
               cap.scale > 0.0f ? "" : "1/sqrt(head_dim) = ",
               cap.scale > 0.0f ? (double)cap.scale : 1.0 / sqrt((double)D),
               cap.dtype ? "f16" : "f32", ns, ns == 1 ? "entry" : "entries", tokens, max_seq,
               mixed);
      }
      printf("relative error ||O - exact|| / ||exact|| (exact: float64, same inputs)\n\n");
    }
  }
  int any_backend = 0;
  for (int bi = 0; bi < ntodo && !rc; bi++) {
    const char *why = NULL;
    if (!da_backend_available(todo[bi], &why)) {
      if (have_backend) {
        tool_msg(cmd, "backend %s is not available: %s", backend_label(todo[bi]), why ? why : "");
        rc = 1;
      } else if (!csv) {
        printf("%s: not available (%s)\n\n", backend_label(todo[bi]), why ? why : "");
      }
      continue;
    }
    da_context *ctx = open_ctx(cmd, todo[bi], have_backend ? device : -1);
    if (!ctx) {
      rc = 1;
      break;
    }
    any_backend = 1;
    da_device_info info;
    memset(&info, 0, sizeof info);
    da_context_get_device_info(ctx, &info);
    memset(num, 0, sizeof(double) * (size_t)ncfg * L);
    memset(den, 0, sizeof(double) * (size_t)ncfg * L);
    if (!csv) {
      printf("backend %s: %s\n", backend_label(todo[bi]), info.name);
      printf("%-2s %-5s %4s %5s", "G", "fuse", "bits", "block");
      if (nproj) printf("  %-24s", "strategy");
      for (unsigned l = 0; l < L; l++) printf("  %8s%u", "layer", l);
      printf("  %9s  %9s  %8s\n", "total", "worst", "ms");
    }
    for (int ci = 0; ci < ncfg && !rc; ci++) {
      const eval_cfg *cf = &cfgs[ci];
      eval_acc *a = &acc[ci];
      a->num = num + (size_t)ci * L, a->den = den + (size_t)ci * L;
      a->worst = 0.0, a->ms = 0.0, a->failed = 0;
      size_t ro = 0;
      for (unsigned s = 0; s < ns && !rc; s++) {
        progress_show(&prog, "%s: config %d/%d, %s %u/%u", backend_label(todo[bi]), ci + 1,
                      ncfg, cap.version == 1 ? "sentence" : "entry", s + 1, ns);
        da_attn_desc d;
        da_attn_desc_init(&d);
        capture_desc(&cap, s, &d);
        if (cf->proj < 0)
          d.group_size = cf->G, d.fusion = cf->f, d.hash_bits = cf->bits, d.hash_block = cf->block;
        d.seed = seed;
        size_t n = (size_t)H * cap.seq_q[s] * D;
        da_plan *p = NULL;
        da_status st = DA_SUCCESS;
        if (cf->proj < 0) st = da_plan_create(ctx, &d, &p);
        if (st != DA_SUCCESS) {
          progress_clear(&prog);
          tool_api_error(cmd, "da_plan_create", st, ctx);
          rc = 1;
          break;
        }
        for (unsigned l = 0; l < L; l++, ro += n) {
          const float *q, *k, *v;
          capture_qkv(&cap, s, l, &q, &k, &v);
          if (cf->proj >= 0) { /* the projection strategy: a plan per layer */
            da_attn_ext x;
            da_attn_ext_init(&x);
            x.strategy = DA_STRATEGY_PROJECTION;
            x.rank = projs[cf->proj].rank;
            x.proj = projs[cf->proj].layer[l];
            da_plan_destroy(p);
            p = NULL;
            st = da_plan_create_ext(ctx, &d, &x, &p);
            if (st != DA_SUCCESS) {
              progress_clear(&prog);
              tool_api_error(cmd, "da_plan_create_ext (--proj)", st, ctx);
              rc = 1;
              break;
            }
          }
          double t0 = now_ms();
          st = da_attention_host(p, q, k, v, out);
          a->ms += now_ms() - t0;
          if (st != DA_SUCCESS) {
            progress_clear(&prog);
            tool_api_error(cmd, "da_attention_host", st, ctx);
            rc = 1;
            break;
          }
          double e2 = 0.0, r2 = 0.0;
          int nonfinite = 0;
          for (size_t i = 0; i < n; i++) {
            if (!isfinite(out[i])) nonfinite = 1;
            double df = (double)out[i] - (double)ref[ro + i];
            e2 += df * df;
            r2 += (double)ref[ro + i] * ref[ro + i];
          }
          if (nonfinite) a->failed = 1;
          a->num[l] += e2, a->den[l] += r2;
          double rel = r2 > 0.0 ? sqrt(e2 / r2) : sqrt(e2);
          if (rel > a->worst) a->worst = rel;
        }
        da_plan_destroy(p);
      }
      if (rc) break;
      progress_clear(&prog);
      double tn = 0.0, td = 0.0;
      for (unsigned l = 0; l < L; l++) tn += a->num[l], td += a->den[l];
      double total = td > 0.0 ? sqrt(tn / td) : sqrt(tn);
      if (a->failed) total = NAN;
      if (csv) {
        csv_field(stdout, backend_label(todo[bi]));
        putchar(',');
        csv_field(stdout, info.name);
        if (cf->proj >= 0)
          printf(",,,,");
        else
          printf(",%d,%s,%d,%d", cf->G, cf->G > 1 ? fusion_name(cf->f) : "", cf->bits, cf->block);
        printf(",%u,%zu,%.6e,%.6e,%.3f", ns, tokens, total, a->worst, a->ms);
        if (cf->proj >= 0) {
          printf(",projection,%d,", projs[cf->proj].rank);
          csv_field(stdout, projs[cf->proj].path);
        } else {
          printf(",tile_lsh,,");
        }
        for (unsigned l = 0; l < L; l++)
          printf(",%.6e", a->den[l] > 0.0 ? sqrt(a->num[l] / a->den[l]) : sqrt(a->num[l]));
        printf("\n");
      } else {
        if (cf->proj >= 0)
          printf("%-2s %-5s %4s %5s", "-", "proj", "-", "-");
        else if (cf->G == 1)
          printf("%-2d %-5s %4s %5s", 1, "exact", "-", "-");
        else
          printf("%-2d %-5s %4d %5d", cf->G, fusion_name(cf->f), cf->bits, cf->block);
        if (nproj) {
          char lab[64] = "tile_lsh";
          if (cf->proj >= 0) {
            const char *bn = strrchr(projs[cf->proj].path, '/');
            snprintf(lab, sizeof lab, "r=%d %.18s", projs[cf->proj].rank,
                     bn ? bn + 1 : projs[cf->proj].path);
          } else if (cf->G == 1) {
            snprintf(lab, sizeof lab, "exact");
          }
          printf("  %-24s", lab);
        }
        for (unsigned l = 0; l < L; l++)
          printf("  %9.3e", a->den[l] > 0.0 ? sqrt(a->num[l] / a->den[l]) : sqrt(a->num[l]));
        printf("  %9.3e  %9.3e  %8.1f\n", total, a->worst, a->ms);
      }
      fflush(stdout);
    }
    if (!csv) printf("\n");
    da_context_destroy(ctx);
  }
  progress_clear(&prog);
  if (!rc && !any_backend) {
    tool_msg(cmd, "no backend is available");
    rc = 1;
  }
  free(ref), free(out), free(num), free(den), free(acc);
  for (int j = 0; j < nproj; j++) {
    for (unsigned l = 0; projs[j].layer && l < L; l++) da_projections_free(projs[j].layer[l]);
    free(projs[j].layer);
  }
  capture_free(&cap);
  return rc;
}
