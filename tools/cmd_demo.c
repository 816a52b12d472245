/* SPDX-License-Identifier: Apache-2.0 */
/* distrattn demo: the main job. Exact attention and DistrAttention side by
 * side on real activations (a DATTNCAP capture shipped with the library),
 * on the default device: the time of each, the speed-up, and the error of
 * each against exact attention computed here in float64. */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "capture_io.h"
#include "util.h"

#define DEMO_FILE CAPTURE_DEMO_FILE
#define DEMO_MAX_G 4

static void demo_usage(FILE *f) {
  fprintf(f,
          "Usage: distrattn demo [OPTION]... [FILE]\n"
          "Run exact attention and DistrAttention side by side on the captured\n"
          "Q, K, V of a real model (FILE, a DATTNCAP capture: tools/CAPTURE_FORMAT.md;\n"
          "default: the SmolLM2-135M capture installed with the library,\n"
          "%s), layer by layer, on one device: the time of each\n"
          "(da_attention on device buffers, median of --repeat calls), the speed-up\n"
          "of each group size over exact attention, and the relative error of each\n"
          "against exact attention computed here in float64.\n"
          "\n"
          "  -b, --backend NAME   auto, cpu, opencl or cuda (default auto: the best device)\n"
          "  -d, --device N       device index within the backend (default -1: the best)\n"
          "  -g, --groups LIST    DistrAttention group sizes among 2,4,8 (default 2,4)\n"
          "      --dtype T        f16, bf16 or f32 (default f16 where the device has it,\n"
          "                       else f32)\n"
          "      --seed N         the plans' hash projection seed, and the seed of the\n"
          "                       random-input row (default 0: every run the same)\n"
          "  -r, --repeat N       timed calls per layer and setting (default 5)\n"
          "  -h, --help           show this help\n",
#ifdef DA_PKGDATADIR
          DA_PKGDATADIR "/" DEMO_FILE
#else
          DEMO_FILE " in the data folder"
#endif
  );
}

/* One setting (exact or a group size) on one layer's inputs. */
typedef struct {
  double ms;  /* median time */
  double err; /* vs the float64 reference */
} demo_cell;

typedef struct {
  const char *cmd;
  da_context *ctx;
  da_attn_desc d;     /* the shape, dtype and mask; group_size set per call */
  int repeat;
} demo_env;

/* Times (median of env->repeat after one warm-up) and measures one setting. */
static int demo_one(const demo_env *env, int G, const float *q, const float *k, const float *v,
                    const float *ref, size_t qn, size_t kn, demo_cell *cell) {
  const char *cmd = env->cmd;
  da_attn_desc d = env->d;
  d.group_size = G;
  size_t es = dtype_size(d.dtype);
  int rc = 1;
  da_plan *plan = NULL;
  da_buffer *bq = NULL, *bk = NULL, *bv = NULL, *bo = NULL;
  void *qd = malloc(qn * es), *kd = malloc(kn * es), *vd = malloc(kn * es), *od = malloc(qn * es);
  float *of = malloc(qn * sizeof(float));
  double *times = malloc(sizeof(double) * (size_t)env->repeat);
  da_status s;
  if (!qd || !kd || !vd || !od || !of || !times) {
    tool_msg(cmd, "out of host memory");
    goto out;
  }
  to_dtype(qd, d.dtype, q, qn);
  to_dtype(kd, d.dtype, k, kn);
  to_dtype(vd, d.dtype, v, kn);
  if ((s = da_plan_create(env->ctx, &d, &plan)) != DA_SUCCESS) {
    tool_api_error(cmd, "da_plan_create", s, env->ctx);
    goto out;
  }
  if ((s = da_buffer_create(env->ctx, qn * es, &bq)) != DA_SUCCESS ||
      (s = da_buffer_create(env->ctx, kn * es, &bk)) != DA_SUCCESS ||
      (s = da_buffer_create(env->ctx, kn * es, &bv)) != DA_SUCCESS ||
      (s = da_buffer_create(env->ctx, qn * es, &bo)) != DA_SUCCESS) {
    tool_api_error(cmd, "da_buffer_create", s, env->ctx);
    goto out;
  }
  if ((s = da_buffer_write(bq, 0, qd, qn * es)) != DA_SUCCESS ||
      (s = da_buffer_write(bk, 0, kd, kn * es)) != DA_SUCCESS ||
      (s = da_buffer_write(bv, 0, vd, kn * es)) != DA_SUCCESS ||
      (s = da_context_synchronize(env->ctx)) != DA_SUCCESS) {
    tool_api_error(cmd, "da_buffer_write", s, env->ctx);
    goto out;
  }
  for (int i = -1; i < env->repeat; i++) {
    double t0 = now_ms();
    if ((s = da_attention(plan, bq, bk, bv, bo)) != DA_SUCCESS) {
      tool_api_error(cmd, "da_attention", s, env->ctx);
      goto out;
    }
    if ((s = da_context_synchronize(env->ctx)) != DA_SUCCESS) {
      tool_api_error(cmd, "da_context_synchronize", s, env->ctx);
      goto out;
    }
    if (i >= 0) times[i] = now_ms() - t0;
  }
  if ((s = da_buffer_read(bo, 0, od, qn * es)) != DA_SUCCESS) {
    tool_api_error(cmd, "da_buffer_read", s, env->ctx);
    goto out;
  }
  from_dtype(of, d.dtype, od, qn);
  cell->ms = median(times, env->repeat);
  cell->err = rel_error(of, ref, qn);
  rc = 0;
out:
  if (bq) da_buffer_destroy(bq);
  if (bk) da_buffer_destroy(bk);
  if (bv) da_buffer_destroy(bv);
  if (bo) da_buffer_destroy(bo);
  da_plan_destroy(plan);
  free(qd), free(kd), free(vd), free(od), free(of), free(times);
  return rc;
}

/* The whole row of one layer (or of the random inputs): exact, then each G.
 * The inputs are rounded through the dtype first, so that the float64
 * reference sees exactly what the library sees. */
static int demo_row(const demo_env *env, const int *groups, int ng, float *q, float *k, float *v,
                    size_t qn, size_t kn, demo_cell *cells) {
  const da_dtype t = env->d.dtype;
  float *ref = malloc(qn * sizeof(float));
  void *tmp = malloc((qn > kn ? qn : kn) * dtype_size(t));
  int rc = 1;
  if (!ref || !tmp) {
    tool_msg(env->cmd, "out of host memory");
    goto out;
  }
  to_dtype(tmp, t, q, qn), from_dtype(q, t, tmp, qn);
  to_dtype(tmp, t, k, kn), from_dtype(k, t, tmp, kn);
  to_dtype(tmp, t, v, kn), from_dtype(v, t, tmp, kn);
  da_attn_desc rd = env->d;
  rd.group_size = 1;
  if (reference_f64(&rd, q, k, v, NULL, ref) != 0) {
    tool_msg(env->cmd, "out of host memory for the float64 reference");
    goto out;
  }
  if (demo_one(env, 1, q, k, v, ref, qn, kn, &cells[0])) goto out;
  for (int i = 0; i < ng; i++)
    if (demo_one(env, groups[i], q, k, v, ref, qn, kn, &cells[1 + i])) goto out;
  rc = 0;
out:
  free(ref), free(tmp);
  return rc;
}

static void print_row(const char *label, const demo_cell *c, int ng) {
  printf("%-8s %9.2f  %8.1e", label, c[0].ms, c[0].err);
  for (int i = 0; i < ng; i++)
    printf("  | %8.2f  %6.2fx  %6.3f", c[1 + i].ms, c[0].ms / c[1 + i].ms, c[1 + i].err);
  printf("\n");
}

/* The model's layer numbers of the capture's layers, from its model name
 * ("...; layers 0,14,29 of 30", as tools/capture.py writes it); else the
 * layers' places in the file. */
static void layer_ids(const capture *c, unsigned *ids) {
  for (unsigned l = 0; l < c->layers; l++) ids[l] = l;
  const char *p = strstr(c->model, "layers ");
  if (!p) return;
  p += 7;
  unsigned tmp[64], n = 0;
  while (n < 64 && *p >= '0' && *p <= '9') {
    char *end;
    unsigned long v = strtoul(p, &end, 10);
    tmp[n++] = (unsigned)v;
    p = end;
    if (*p != ',') break;
    p++;
  }
  if (n == c->layers)
    for (unsigned l = 0; l < n; l++) ids[l] = tmp[l];
}

static const char *default_file(char *buf, size_t len) {
  const char *env = getenv("DISTRATTN_DATA_DIR");
  if (env && *env) {
    snprintf(buf, len, "%s/%s", env, DEMO_FILE);
    return buf;
  }
#ifdef DA_PKGDATADIR
  snprintf(buf, len, "%s/%s", DA_PKGDATADIR, DEMO_FILE);
#else
  snprintf(buf, len, "%s", DEMO_FILE);
#endif
  return buf;
}

int cmd_demo(int argc, char **argv) {
  const char *cmd = argv[0];
  enum { O_DTYPE = 1000, O_SEED };
  static const struct option lopts[] = {
      {"backend", required_argument, NULL, 'b'}, {"device", required_argument, NULL, 'd'},
      {"groups", required_argument, NULL, 'g'},  {"dtype", required_argument, NULL, O_DTYPE},
      {"seed", required_argument, NULL, O_SEED}, {"repeat", required_argument, NULL, 'r'},
      {"help", no_argument, NULL, 'h'},          {NULL, 0, NULL, 0}};
  da_backend backend = DA_BACKEND_AUTO;
  int device = -1, repeat = 5, have_dtype = 0;
  int groups[DEMO_MAX_G] = {2, 4}, ng = 2;
  da_dtype dtype = DA_F16;
  unsigned long long seed = 0;
  int c;
  optind = 1;
  while ((c = getopt_long(argc, argv, "b:d:g:r:h", lopts, NULL)) != -1) {
    int bad = 0;
    switch (c) {
    case 'b': bad = parse_backend(cmd, optarg, &backend); break;
    case 'd': bad = parse_int(cmd, "--device", optarg, -1, 1 << 20, &device); break;
    case 'g':
      bad = parse_int_list(cmd, "--groups", optarg, groups, DEMO_MAX_G, &ng);
      for (int i = 0; !bad && i < ng; i++)
        if (groups[i] != 2 && groups[i] != 4 && groups[i] != 8) {
          tool_usage_error(cmd, "--groups: %d is not one of 2, 4, 8", groups[i]);
          bad = -1;
        }
      break;
    case O_DTYPE: bad = parse_dtype(cmd, optarg, &dtype), have_dtype = 1; break;
    case O_SEED: bad = parse_u64(cmd, "--seed", optarg, &seed); break;
    case 'r': bad = parse_int(cmd, "--repeat", optarg, 1, 1000000, &repeat); break;
    case 'h': demo_usage(stdout); return 0;
    default: fprintf(stderr, "Try '%s --help'.\n", cmd); return EXIT_USAGE;
    }
    if (bad) return EXIT_USAGE;
  }
  if (argc - optind > 1) return tool_usage_error(cmd, "unexpected argument '%s'", argv[optind + 1]);
  char pathbuf[4096];
  const char *path = optind < argc ? argv[optind] : default_file(pathbuf, sizeof pathbuf);

  capture cap;
  char why[512];
  if (capture_load_file(path, &cap, why, sizeof why) != 0) {
    tool_msg(cmd, "%s: %s", path, why);
    if (optind >= argc)
      tool_msg(cmd, "give the capture as FILE (the repository's data/%s), or set "
               "DISTRATTN_DATA_DIR to its folder", DEMO_FILE);
    return 1;
  }
  da_context *ctx = NULL;
  da_device_info info;
  if (!tool_open_context(cmd, backend, device, &ctx, &info)) {
    capture_free(&cap);
    return 1;
  }
  if (!have_dtype) dtype = info.has_fp16 ? DA_F16 : DA_F32;

  const unsigned L = cap.layers, H = cap.heads, KVH = cap.kv_heads, D = cap.head_dim;
  const unsigned sq = cap.seq_q[0], sk = cap.seq_k[0];
  demo_env env = {cmd, ctx, {0}, repeat};
  da_attn_desc_init(&env.d);
  env.d.batch = 1, env.d.heads = (int)H, env.d.kv_heads = (int)KVH;
  env.d.seq_q = (int)sq, env.d.seq_k = (int)sk, env.d.head_dim = (int)D;
  env.d.causal = (int)cap.causal, env.d.scale = cap.scale, env.d.dtype = dtype;
  env.d.seed = seed;

  printf("distrattn demo: exact attention and DistrAttention on real activations\n");
  printf("%-8s %s (%s)\n", "data:", cap.model[0] ? cap.model : "(no model name)", path);
  printf("%-8s text 1 of %u: %u queries x %u keys, %s, %u query heads over %u KV heads, "
         "head_dim %u, %u layers\n",
         "", cap.n_sent, sq, sk, cap.causal ? "causal" : "not causal", H, KVH, D, L);
  printf("%-8s %s device %d: %s (%s); %s; hash seed %llu\n", "device:",
         backend_label(info.backend), info.index, info.name, info.vendor, dtype_name(dtype), seed);
  printf("\n%-8s %9s  %8s", "", "exact ms", "error");
  for (int i = 0; i < ng; i++) printf("  | %6s%d ms  %7s  %6s", "G=", groups[i], "speedup", "error");
  printf("\n");

  size_t qn = (size_t)H * sq * D, kn = (size_t)KVH * sk * D;
  float *q = malloc(qn * sizeof(float)), *k = malloc(kn * sizeof(float));
  float *v = malloc(kn * sizeof(float));
  demo_cell *cells = calloc((size_t)(L + 1) * (1 + (size_t)ng), sizeof *cells);
  unsigned *ids = malloc(sizeof(unsigned) * L);
  int rc = 1;
  if (!q || !k || !v || !cells || !ids) {
    tool_msg(cmd, "out of host memory");
    goto out;
  }
  layer_ids(&cap, ids);
  for (unsigned l = 0; l < L; l++) {
    const float *base = cap.data + cap.off[0] + (size_t)l * (qn + 2 * kn);
    memcpy(q, base, qn * sizeof(float));
    memcpy(k, base + qn, kn * sizeof(float));
    memcpy(v, base + qn + kn, kn * sizeof(float));
    demo_cell *row = cells + (size_t)l * (1 + ng);
    if (demo_row(&env, groups, ng, q, k, v, qn, kn, row)) goto out;
    char label[32];
    snprintf(label, sizeof label, "layer %u", ids[l]);
    print_row(label, row, ng);
    fflush(stdout);
  }
  /* all layers: times summed, errors pooled as the root mean square */
  demo_cell *all = cells + (size_t)L * (1 + ng);
  for (int i = 0; i <= ng; i++) {
    double ms = 0.0, e2 = 0.0;
    for (unsigned l = 0; l < L; l++) {
      ms += cells[(size_t)l * (1 + ng) + i].ms;
      double e = cells[(size_t)l * (1 + ng) + i].err;
      e2 += e * e;
    }
    all[i].ms = ms, all[i].err = sqrt(e2 / L);
  }
  print_row("all", all, ng);

  /* the same shape on random Gaussian inputs: nothing for grouping to use */
  {
    tool_rng rng;
    rng_init(&rng, seed);
    fill_normal(&rng, q, qn, dtype);
    fill_normal(&rng, k, kn, dtype);
    fill_normal(&rng, v, kn, dtype);
    demo_cell row[1 + DEMO_MAX_G];
    if (demo_row(&env, groups, ng, q, k, v, qn, kn, row)) goto out;
    print_row("random", row, ng);
  }
  printf("\n%-8s median of %d da_attention calls on device buffers; speedup = exact ms / G ms\n",
         "time:", repeat);
  printf("%-8s ||O - O64|| / ||O64||, O64 = exact attention in float64 on the same inputs: "
         "exact's is rounding, G's is DistrAttention's approximation (0.46 = off by 46 %% of "
         "the output's norm)\n",
         "error:");
  printf("%-8s the same shapes with random N(0,1) Q, K, V, for comparison ('all' pools the "
         "model's layers)\n",
         "random:");
  rc = 0;
out:
  free(q), free(k), free(v), free(cells), free(ids);
  da_context_destroy(ctx);
  capture_free(&cap);
  return rc;
}
