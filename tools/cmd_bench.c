/* SPDX-License-Identifier: Apache-2.0 */
/* distrattn bench: fused exact, GEMM exact, and DistrAttention G=2 / G=4
 * (fused) over element types, masks, sequence lengths and head dims, on one
 * device. */
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "util.h"

static void bench_usage(FILE *f) {
  fprintf(f,
          "Usage: distrattn bench [OPTION]...\n"
          "Time, on one device, for every element type, mask, sequence length and head\n"
          "dim: exact attention with the fused kernel and with GEMM, and DistrAttention\n"
          "with G=2 and G=4 (fused). Each time is the median (or with --best the\n"
          "minimum) of --repeat runs of da_attention + da_context_synchronize on device\n"
          "buffers; GFLOP/s counts 4*batch*heads*seq^2*head_dim for every column (a\n"
          "causal row does about half of that work). GEMM/fused is a time ratio (above\n"
          "1: fused is faster); exact/G2 and exact/G4 are the speed-ups of\n"
          "DistrAttention over the fused exact kernel; nc/causal (causal rows, with\n"
          "--mask both) is the time of the non-causal fused exact kernel over the\n"
          "causal one. Memory: the Q, K, V, O buffers, plus for GEMM the logits\n"
          "matrix batch*heads*seq^2*4 bytes (an estimate, marked 'est.'). The last\n"
          "column names the kernel the fused exact plan runs (da_plan_get_kernel; the\n"
          "CSV has one per column); the decode table's, the decode plan's.\n"
          "\n"
          "  -b, --backend NAME   auto, cpu, opencl or cuda (default auto)\n"
          "  -d, --device N       device index within the backend, or with 'auto' in the\n"
          "                       list of 'distrattn devices' (default -1: the best)\n"
          "      --seqs LIST      sequence lengths (default 1024,2048,4096,8192)\n"
          "      --dims LIST      head dims (default 64,128)\n"
          "      --batch N        batch size (default 1)\n"
          "      --heads N        heads (default 8)\n"
          "      --dtype LIST     element types among f32, f16, bf16 (default f32)\n"
          "      --mask M         none, causal or both (default none)\n"
          "      --causal         the same as --mask causal\n"
          "      --no-gemm        skip the GEMM column\n"
          "      --best           report the fastest of the --repeat runs, not the median\n"
          "                       (for a machine shared with other work)\n"
          "      --cpu-time       time with the process's CPU time (all threads) instead\n"
          "                       of the wall clock: ms are CPU ms and GF/s are per core,\n"
          "                       what the CPU backend does on cores it has to itself\n"
          "      --fusion F       mean or norm, for G=2 and G=4 (default: the library's)\n"
          "  -r, --repeat N       timed runs per cell (default 3)\n"
          "  -w, --warmup N       untimed runs first (default 1)\n"
          "      --data-seed N    seed of the random inputs (default 1)\n"
          "      --csv            machine-readable CSV (one line per row, with a header)\n"
          "      --markdown       a Markdown table\n"
          "  -h, --help           show this help\n"
          "\n"
          "Decode (--decode): exact attention of --seq-q query rows per sequence over\n"
          "each --seqs key length, GQA (--kv-heads), the fused algorithm: time and the\n"
          "bandwidth of the K and V bytes the call reads (2*batch*kv_heads*seq*dim\n"
          "elements / time); with --membw the ratio to that read bandwidth (what\n"
          "bench/membw.c measures). Defaults there: batch 8, heads 32, kv heads 8,\n"
          "dim 128, f16, --seqs 1024,2048,...,65536 (those whose K and V fit in half\n"
          "of the device's memory). With --cpu-time the bandwidth is per CPU-second\n"
          "(per core): compare it with one thread's read bandwidth (bench/membw 1).\n"
          "      --decode         the decode table instead\n"
          "      --seq-q N        decode: query rows per sequence (default 1)\n"
          "      --kv-heads N     decode: key/value heads, dividing --heads (default 8)\n"
          "      --membw GBPS     decode: the machine's read bandwidth in GB/s (10^9 B/s)\n");
}

enum { O_SEQS = 1000, O_DIMS, O_BATCH, O_HEADS, O_DTYPE, O_CAUSAL, O_FUSION, O_DSEED, O_CSV, O_MD,
       O_MASK, O_NOGEMM, O_BEST, O_CPUTIME, O_DECODE, O_SEQQ, O_KVH, O_MEMBW };
enum { CFG_FUSED, CFG_GEMM, CFG_G2, CFG_G4, NCFG };
static const char *cfg_name[NCFG] = {"fused", "gemm", "G=2", "G=4"};

typedef struct {
  double ms;     /* median; < 0 when not measured */
  char why[24];  /* "n/a", "oom", "error" when not measured */
  char kernel[96]; /* what the plan ran (da_plan_get_kernel); "" when no plan */
} cell;

/* Times one configuration; fills c. Returns 0, or 1 on a runtime error
 * (printed) other than UNSUPPORTED / memory exhaustion. */
/* Process CPU time (every thread, user + system) in ms. */
static double cpu_ms(void) {
  struct timespec t;
  if (clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t) != 0) return 0.0;
  return (double)t.tv_sec * 1e3 + (double)t.tv_nsec * 1e-6;
}

static int time_cfg(const char *cmd, da_context *ctx, const da_attn_desc *d, da_buffer *q,
                    da_buffer *k, da_buffer *v, da_buffer *o, int warmup, int repeat, int best,
                    int cputime, double *times, cell *c) {
  da_plan *p = NULL;
  c->ms = -1.0;
  da_status s = da_plan_create(ctx, d, &p);
  const char *what = "da_plan_create";
  c->kernel[0] = '\0';
  if (s == DA_SUCCESS) kernel_label(p, 0, c->kernel, sizeof c->kernel);
  for (int i = 0; s == DA_SUCCESS && i < warmup + repeat; i++) {
    double t0 = cputime ? cpu_ms() : now_ms();
    what = "da_attention";
    s = da_attention(p, q, k, v, o);
    if (s == DA_SUCCESS) {
      what = "da_context_synchronize";
      s = da_context_synchronize(ctx);
    }
    if (i >= warmup) times[i - warmup] = (cputime ? cpu_ms() : now_ms()) - t0;
  }
  if (p) da_plan_destroy(p);
  if (s == DA_SUCCESS) {
    if (best) {
      c->ms = times[0];
      for (int i = 1; i < repeat; i++)
        if (times[i] < c->ms) c->ms = times[i];
    } else {
      c->ms = median(times, repeat);
    }
    return 0;
  }
  if (s == DA_ERR_UNSUPPORTED || s == DA_ERR_INVALID_ARG) {
    snprintf(c->why, sizeof c->why, "n/a");
    return 0;
  }
  if (s == DA_ERR_DEVICE_MEMORY || s == DA_ERR_HOST_MEMORY) {
    snprintf(c->why, sizeof c->why, "oom");
    return 0;
  }
  snprintf(c->why, sizeof c->why, "error");
  tool_api_error(cmd, what, s, ctx);
  return 1;
}

static void fmt_ms(char *b, size_t n, const cell *c) {
  if (c->ms < 0) snprintf(b, n, "%s", c->why);
  else snprintf(b, n, "%.3f", c->ms);
}

static void fmt_gf(char *b, size_t n, const cell *c, double flops) {
  if (c->ms < 0) snprintf(b, n, "%s", c->why);
  else snprintf(b, n, "%.1f", flops / (c->ms * 1e-3) * 1e-9);
}

static void fmt_ratio(char *b, size_t n, const cell *num, const cell *den) {
  if (num->ms < 0 || den->ms <= 0) snprintf(b, n, "n/a");
  else snprintf(b, n, "%.2fx", num->ms / den->ms);
}

/* The decode table (--decode): one row per dtype, key length and head dim. */
typedef struct {
  int batch, heads, kvh, seq_q, causal, repeat, warmup, best, cputime, csv, md;
  double membw;
  unsigned long long data_seed;
} dec_opts;

static int bench_decode(const char *cmd, da_context *ctx, const da_device_info *info,
                        const dec_opts *o, const da_dtype *dtypes, int ndt, const int *seqs,
                        int nseq, const int *dims, int ndim) {
  const char *sep = o->md ? " | " : "  ";
  const char *stat = o->best ? "best" : "median";
  int rc = 0;
  if (o->csv) {
    printf("backend,device,device_name,batch,heads,kv_heads,seq_q,seq_k,head_dim,dtype,causal,"
           "ms,kv_mib,kv_gbps,membw_gbps,ratio,stat,clock,kernel\n");
  } else {
    printf("%s%s device %d: %s (%s); decode: batch %d, heads %d, kv heads %d, seq_q %d%s; %s "
           "of %d%s\n",
           o->md ? "" : "# ", backend_label(info->backend), info->index, info->name, info->vendor,
           o->batch, o->heads, o->kvh, o->seq_q, o->causal ? ", causal" : "", stat, o->repeat,
           o->cputime ? "; process CPU time: ms are CPU ms, GB/s per CPU-second (per core)" : "");
    if (o->membw > 0)
      printf("%sread bandwidth given (--membw): %.1f GB/s\n", o->md ? "" : "# ", o->membw);
    if (o->md) printf("\n| ");
    printf("%5s%s%6s%s%4s%s%10s%s%10s%s%10s%s%9s%s%-*s%s\n", "dtype", sep, "seq_k", sep, "dim",
           sep, "ms", sep, "K+V MiB", sep, "K+V GB/s", sep, "of membw", sep, o->md ? 24 : 0,
           "kernel", o->md ? " |" : "");
    if (o->md)
      printf("| ----- | -----: | ---: | ---------: | ---------: | ---------: | --------: | "
             "------------------------ |\n");
  }
  fflush(stdout);
  double *times = malloc(sizeof(double) * (size_t)o->repeat);
  tool_rng rng;
  rng_init(&rng, o->data_seed);
  for (int ti = 0; ti < ndt && times; ti++)
    for (int si = 0; si < nseq; si++)
      for (int di = 0; di < ndim; di++) {
        da_dtype t = dtypes[ti];
        int seq = seqs[si], dim = dims[di];
        size_t es = dtype_size(t);
        size_t nq = (size_t)o->batch * o->heads * o->seq_q * dim;
        size_t nk = (size_t)o->batch * o->kvh * seq * dim;
        double kv_bytes = 2.0 * (double)nk * (double)es;
        cell cl = {-1.0, "oom", ""};
        if (info->global_mem == 0 || kv_bytes <= 0.5 * (double)info->global_mem) {
          da_buffer *b[4] = {NULL, NULL, NULL, NULL};
          size_t sz[4] = {nq * es, nk * es, nk * es, nq * es};
          size_t chunk = (size_t)1 << 22; /* fill in pieces: no second copy of K in host memory */
          float *hf = malloc(chunk * sizeof(float));
          void *hd = malloc(chunk * es);
          int ok = hf && hd;
          for (int i = 0; ok && i < 4; i++) {
            da_status s = da_buffer_create(ctx, sz[i], &b[i]);
            if (s != DA_SUCCESS) {
              if (s != DA_ERR_DEVICE_MEMORY && s != DA_ERR_HOST_MEMORY) {
                tool_api_error(cmd, "da_buffer_create", s, ctx);
                snprintf(cl.why, sizeof cl.why, "error");
                rc = 1;
              }
              ok = 0;
              break;
            }
            for (size_t at = 0; i < 3 && at < sz[i] / es && ok; at += chunk) {
              size_t m = sz[i] / es - at < chunk ? sz[i] / es - at : chunk;
              fill_normal(&rng, hf, m, t);
              to_dtype(hd, t, hf, m);
              if (da_buffer_write(b[i], at * es, hd, m * es) != DA_SUCCESS) ok = 0;
            }
          }
          free(hf), free(hd);
          if (ok) {
            da_attn_desc d;
            da_attn_desc_init(&d);
            d.batch = o->batch, d.heads = o->heads, d.kv_heads = o->kvh, d.seq_q = o->seq_q;
            d.seq_k = seq, d.head_dim = dim, d.dtype = t, d.causal = o->causal;
            d.algo = DA_ALGO_FUSED;
            if (time_cfg(cmd, ctx, &d, b[0], b[1], b[2], b[3], o->warmup, o->repeat, o->best,
                         o->cputime, times, &cl))
              rc = 1;
          }
          for (int i = 0; i < 4; i++)
            if (b[i]) da_buffer_destroy(b[i]);
        }
        char ms[24], gb[24], ratio[24];
        fmt_ms(ms, sizeof ms, &cl);
        double gbps = cl.ms > 0 ? kv_bytes / (cl.ms * 1e-3) * 1e-9 : -1.0;
        if (gbps > 0) snprintf(gb, sizeof gb, "%.1f", gbps);
        else snprintf(gb, sizeof gb, "%s", cl.why);
        if (gbps > 0 && o->membw > 0) snprintf(ratio, sizeof ratio, "%.0f%%", 100.0 * gbps / o->membw);
        else snprintf(ratio, sizeof ratio, "-");
        if (o->csv) {
          printf("%s,%d,", backend_label(info->backend), info->index);
          csv_field(stdout, info->name);
          printf(",%d,%d,%d,%d,%d,%d,%s,%d,%s,%.1f,%s,", o->batch, o->heads, o->kvh, o->seq_q, seq,
                 dim, dtype_name(t), o->causal, ms, kv_bytes / (1 << 20), gbps > 0 ? gb : "");
          if (o->membw > 0) printf("%.1f", o->membw);
          printf(",");
          if (gbps > 0 && o->membw > 0) printf("%.3f", gbps / o->membw);
          printf(",%s,%s,", stat, o->cputime ? "cpu" : "wall");
          csv_field(stdout, cl.kernel);
          printf("\n");
        } else {
          if (o->md) printf("| ");
          printf("%5s%s%6d%s%4d%s%10s%s%10.1f%s%10s%s%9s%s%-*s%s\n", dtype_name(t), sep, seq, sep,
                 dim, sep, ms, sep, kv_bytes / (1 << 20), sep, gb, sep, ratio, sep, o->md ? 24 : 0,
                 cl.kernel[0] ? cl.kernel : "-", o->md ? " |" : "");
        }
        fflush(stdout);
      }
  if (!times) {
    tool_msg(cmd, "out of host memory");
    rc = 1;
  }
  free(times);
  return rc;
}

/* A comma-separated list of dtypes. */
static int parse_dtype_list(const char *cmd, const char *s, da_dtype *out, int max, int *n) {
  char buf[128];
  if (strlen(s) >= sizeof buf) return tool_usage_error(cmd, "--dtype list too long: '%s'", s), -1;
  strcpy(buf, s);
  *n = 0;
  for (char *save = NULL, *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
    if (*n >= max) return tool_usage_error(cmd, "--dtype: at most %d types", max), -1;
    if (parse_dtype(cmd, t, &out[*n])) return -1;
    (*n)++;
  }
  if (*n == 0) return tool_usage_error(cmd, "--dtype: empty list"), -1;
  return 0;
}

int cmd_bench(int argc, char **argv) {
  const char *cmd = argv[0];
  static const struct option lopts[] = {
      {"backend", required_argument, NULL, 'b'}, {"device", required_argument, NULL, 'd'},
      {"seqs", required_argument, NULL, O_SEQS}, {"dims", required_argument, NULL, O_DIMS},
      {"batch", required_argument, NULL, O_BATCH}, {"heads", required_argument, NULL, O_HEADS},
      {"dtype", required_argument, NULL, O_DTYPE}, {"causal", no_argument, NULL, O_CAUSAL},
      {"mask", required_argument, NULL, O_MASK}, {"no-gemm", no_argument, NULL, O_NOGEMM},
      {"best", no_argument, NULL, O_BEST}, {"cpu-time", no_argument, NULL, O_CPUTIME},
      {"fusion", required_argument, NULL, O_FUSION}, {"repeat", required_argument, NULL, 'r'},
      {"warmup", required_argument, NULL, 'w'}, {"data-seed", required_argument, NULL, O_DSEED},
      {"csv", no_argument, NULL, O_CSV}, {"markdown", no_argument, NULL, O_MD},
      {"decode", no_argument, NULL, O_DECODE}, {"seq-q", required_argument, NULL, O_SEQQ},
      {"kv-heads", required_argument, NULL, O_KVH}, {"membw", required_argument, NULL, O_MEMBW},
      {"help", no_argument, NULL, 'h'}, {NULL, 0, NULL, 0}};
  da_backend backend = DA_BACKEND_AUTO;
  int device = -1, batch = 1, heads = 8, repeat = 3, warmup = 1, csv = 0, md = 0;
  int have_fusion = 0, mask_lo = 0, mask_hi = 0, no_gemm = 0, best = 0, cputime = 0;
  int seqs[32] = {1024, 2048, 4096, 8192}, nseq = 4, dims[32] = {64, 128}, ndim = 2;
  da_dtype dtypes[3] = {DA_F32}, dtype;
  int ndt = 1;
  da_fusion fusion = DA_FUSE_MEAN;
  unsigned long long data_seed = 1;
  int c, decode = 0, seq_q = 1, kvh = 8, have_seqs = 0, have_dims = 0, have_dt = 0;
  int have_batch = 0, have_heads = 0, have_dec_opt = 0;
  double membw = 0.0;
  optind = 1;
  while ((c = getopt_long(argc, argv, "b:d:r:w:h", lopts, NULL)) != -1) {
    int bad = 0;
    switch (c) {
    case 'b': bad = parse_backend(cmd, optarg, &backend); break;
    case 'd': bad = parse_int(cmd, "--device", optarg, -1, 1 << 20, &device); break;
    case O_SEQS: bad = parse_int_list(cmd, "--seqs", optarg, seqs, 32, &nseq), have_seqs = 1; break;
    case O_DIMS: bad = parse_int_list(cmd, "--dims", optarg, dims, 32, &ndim), have_dims = 1; break;
    case O_BATCH: bad = parse_int(cmd, "--batch", optarg, 1, 1 << 30, &batch), have_batch = 1; break;
    case O_HEADS: bad = parse_int(cmd, "--heads", optarg, 1, 1 << 30, &heads), have_heads = 1; break;
    case O_DTYPE: bad = parse_dtype_list(cmd, optarg, dtypes, 3, &ndt), have_dt = 1; break;
    case O_DECODE: decode = 1; break;
    case O_SEQQ: bad = parse_int(cmd, "--seq-q", optarg, 1, 1 << 20, &seq_q), have_dec_opt = 1; break;
    case O_KVH: bad = parse_int(cmd, "--kv-heads", optarg, 1, 1 << 30, &kvh), have_dec_opt = 1; break;
    case O_MEMBW: {
      char *end = NULL;
      membw = strtod(optarg, &end);
      have_dec_opt = 1;
      if (!end || end == optarg || *end || !(membw > 0 && membw < 1e6))
        bad = tool_usage_error(cmd, "invalid --membw '%s' (GB/s, a positive number)", optarg);
      break;
    }
    case O_CAUSAL: mask_lo = mask_hi = 1; break;
    case O_MASK:
      if (strcmp(optarg, "none") == 0) mask_lo = mask_hi = 0;
      else if (strcmp(optarg, "causal") == 0) mask_lo = mask_hi = 1;
      else if (strcmp(optarg, "both") == 0) mask_lo = 0, mask_hi = 1;
      else bad = tool_usage_error(cmd, "invalid --mask '%s' (none, causal or both)", optarg);
      break;
    case O_NOGEMM: no_gemm = 1; break;
    case O_BEST: best = 1; break;
    case O_CPUTIME: cputime = 1; break;
    case O_FUSION: bad = parse_fusion(cmd, optarg, &fusion), have_fusion = 1; break;
    case 'r': bad = parse_int(cmd, "--repeat", optarg, 1, 1000000, &repeat); break;
    case 'w': bad = parse_int(cmd, "--warmup", optarg, 0, 1000000, &warmup); break;
    case O_DSEED: bad = parse_u64(cmd, "--data-seed", optarg, &data_seed); break;
    case O_CSV: csv = 1; break;
    case O_MD: md = 1; break;
    case 'h': bench_usage(stdout); return 0;
    default: fprintf(stderr, "Try '%s --help'.\n", cmd); return EXIT_USAGE;
    }
    if (bad) return EXIT_USAGE;
  }
  if (optind < argc) return tool_usage_error(cmd, "unexpected argument '%s'", argv[optind]);
  if (csv && md) return tool_usage_error(cmd, "--csv and --markdown exclude each other");
  if (have_dec_opt && !decode)
    return tool_usage_error(cmd, "--seq-q, --kv-heads and --membw need --decode");
  if (decode) {
    if (!have_batch) batch = 8;
    if (!have_heads) heads = 32;
    if (!have_dims) dims[0] = 128, ndim = 1;
    if (!have_dt) dtypes[0] = DA_F16, ndt = 1;
    if (!have_seqs)
      for (nseq = 0; nseq < 7; nseq++) seqs[nseq] = 1024 << nseq;
    if (heads % kvh != 0)
      return tool_usage_error(cmd, "--kv-heads %d does not divide --heads %d", kvh, heads);
    if (no_gemm || have_fusion)
      return tool_usage_error(cmd, "--no-gemm and --fusion do not apply to --decode");
  }

  da_context *ctx = NULL;
  da_device_info info;
  if (!tool_open_context(cmd, backend, device, &ctx, &info)) return 1;
  da_status s;
  if (decode) {
    dec_opts o = {batch, heads, kvh,  seq_q, mask_hi, repeat, warmup, best,
                  cputime, csv, md, membw, data_seed};
    int rc = bench_decode(cmd, ctx, &info, &o, dtypes, ndt, seqs, nseq, dims, ndim);
    da_context_destroy(ctx);
    return rc;
  }

  const char *sep = md ? " | " : "  ";
  const char *stat = best ? "best" : "median";
  if (csv) {
    printf("backend,device,device_name,batch,heads,seq,head_dim,dtype,causal,"
           "fused_ms,gemm_ms,g2_ms,g4_ms,fused_gflops,gemm_gflops,g2_gflops,g4_gflops,"
           "gemm_over_fused,speedup_g2,speedup_g4,mem_fused_mib,mem_gemm_est_mib,"
           "noncausal_over_causal,stat,clock,fused_kernel,gemm_kernel,g2_kernel,g4_kernel\n");
  } else {
    printf("%s%s device %d: %s (%s); batch %d, heads %d; %s of %d%s\n", md ? "" : "# ",
           backend_label(info.backend), info.index, info.name, info.vendor, batch, heads, stat,
           repeat, cputime ? "; process CPU time: ms are CPU ms, GF/s per core" : "");
    if (md) printf("\n");
    if (md) printf("| ");
    printf("%5s%s%6s%s%6s%s%4s", "dtype", sep, "mask", sep, "seq", sep, "dim");
    for (int k = 0; k < NCFG; k++) {
      char h1[24], h2[24];
      snprintf(h1, sizeof h1, "%s ms", cfg_name[k]);
      snprintf(h2, sizeof h2, "%s GF/s", cfg_name[k]);
      printf("%s%10s%s%11s", sep, h1, sep, h2);
    }
    printf("%s%10s%s%8s%s%8s%s%9s%s%10s%s%15s%s%-*s", sep, "gemm/fused", sep, "exact/G2", sep,
           "exact/G4", sep, "nc/causal", sep, "mem fused", sep, "mem gemm (est.)", sep,
           md ? 24 : 0, "fused kernel");
    printf("%s\n", md ? " |" : "");
    if (md) {
      printf("|");
      static const int w[] = {5, 6, 6, 4, 10, 11, 10, 11, 10, 11, 10, 11, 10, 8, 8, 9, 10, 15, 24};
      for (size_t k = 0; k < sizeof w / sizeof w[0]; k++) {
        printf(" ");
        if (k < 2 || k == sizeof w / sizeof w[0] - 1) {
          for (int j = 0; j < w[k]; j++) putchar('-');
          printf(" |");
          continue;
        }
        for (int j = 0; j < w[k] - 1; j++) putchar('-');
        printf(": |");
      }
      printf("\n");
    }
  }
  fflush(stdout);

  tool_progress prog;
  progress_init(&prog);
  double *times = malloc(sizeof(double) * (size_t)repeat);
  int nmask = mask_hi - mask_lo + 1;
  int rc = 0, step = 0, nsteps = ndt * nseq * ndim * nmask * NCFG;
  tool_rng rng;
  rng_init(&rng, data_seed);
  for (int ti = 0; ti < ndt && times; ti++)
    for (int si = 0; si < nseq && times; si++)
      for (int di = 0; di < ndim; di++) {
        dtype = dtypes[ti];
        int seq = seqs[si], dim = dims[di];
        size_t n = (size_t)batch * heads * seq * dim, es = dtype_size(dtype);
        float *hf = malloc(n * sizeof(float));
        void *hd = malloc(n * es);
        da_buffer *bufs[4] = {NULL, NULL, NULL, NULL};
        int ok = hf && hd;
        const char *fail = "error";
        if (!ok) tool_msg(cmd, "out of host memory for seq %d, dim %d", seq, dim);
        for (int bi = 0; ok && bi < 4; bi++) {
          if ((s = da_buffer_create(ctx, n * es, &bufs[bi])) != DA_SUCCESS) {
            if (s == DA_ERR_DEVICE_MEMORY || s == DA_ERR_HOST_MEMORY) {
              fail = "oom";
            } else {
              tool_api_error(cmd, "da_buffer_create", s, ctx);
              rc = 1;
            }
            ok = 0;
            break;
          }
          if (bi < 3) {
            fill_normal(&rng, hf, n, dtype);
            to_dtype(hd, dtype, hf, n);
            if ((s = da_buffer_write(bufs[bi], 0, hd, n * es)) != DA_SUCCESS) {
              tool_api_error(cmd, "da_buffer_write", s, ctx);
              rc = 1;
              ok = 0;
            }
          }
        }
        free(hf);
        free(hd);
        double nc_fused = -1.0; /* the non-causal fused exact time of this shape */
        for (int causal = mask_lo; causal <= mask_hi; causal++) {
          cell cells[NCFG];
          for (int k = 0; k < NCFG; k++) {
            cells[k].ms = -1.0, snprintf(cells[k].why, sizeof cells[k].why, "%s", fail);
            cells[k].kernel[0] = '\0';
          }
          da_attn_desc d;
          da_attn_desc_init(&d);
          d.batch = batch, d.heads = heads, d.seq_q = seq, d.seq_k = seq, d.head_dim = dim;
          d.dtype = dtype, d.causal = causal;
          if (have_fusion) d.fusion = fusion;
          for (int k = 0; k < NCFG; k++) {
            step++;
            if (!ok) continue;
            if (k == CFG_GEMM && no_gemm) {
              snprintf(cells[k].why, sizeof cells[k].why, "-");
              continue;
            }
            progress_show(&prog, "[%d/%d] %s%s seq %d dim %d %s", step, nsteps, dtype_name(dtype),
                          causal ? " causal" : "", seq, dim, cfg_name[k]);
            d.algo = k == CFG_GEMM ? DA_ALGO_GEMM : DA_ALGO_FUSED;
            d.group_size = k == CFG_G2 ? 2 : k == CFG_G4 ? 4 : 1;
            if (time_cfg(cmd, ctx, &d, bufs[0], bufs[1], bufs[2], bufs[3], warmup, repeat, best,
                         cputime, times, &cells[k]))
              rc = 1;
          }
          progress_clear(&prog);
          if (!causal) nc_fused = cells[CFG_FUSED].ms;

          d.group_size = 1;
          double flops = attn_flops(&d);
          double mem_f = 4.0 * (double)n * (double)es / (1 << 20);
          double mem_g = mem_f + (double)batch * heads * (double)seq * seq * 4.0 / (1 << 20);
          char ms[NCFG][24], gf[NCFG][24], r1[16], r2[16], r3[16], r4[16];
          for (int k = 0; k < NCFG; k++) {
            fmt_ms(ms[k], sizeof ms[k], &cells[k]);
            fmt_gf(gf[k], sizeof gf[k], &cells[k], flops);
          }
          fmt_ratio(r1, sizeof r1, &cells[CFG_GEMM], &cells[CFG_FUSED]);
          fmt_ratio(r2, sizeof r2, &cells[CFG_FUSED], &cells[CFG_G2]);
          fmt_ratio(r3, sizeof r3, &cells[CFG_FUSED], &cells[CFG_G4]);
          cell ncc = {nc_fused, "n/a", ""};
          if (causal) fmt_ratio(r4, sizeof r4, &ncc, &cells[CFG_FUSED]);
          else snprintf(r4, sizeof r4, "-");
          if (csv) {
            printf("%s,%d,", backend_label(info.backend), info.index);
            csv_field(stdout, info.name);
            printf(",%d,%d,%d,%d,%s,%d", batch, heads, seq, dim, dtype_name(dtype), causal);
            for (int k = 0; k < NCFG; k++) printf(",%s", ms[k]);
            for (int k = 0; k < NCFG; k++) printf(",%s", gf[k]);
            /* plain numbers for the ratios */
            char *rs[4] = {r1, r2, r3, r4};
            for (int k = 0; k < 4; k++)
              for (char *r = rs[k]; *r; r++)
                if (*r == 'x') *r = '\0';
            if (strcmp(r4, "-") == 0) r4[0] = '\0';
            printf(",%s,%s,%s,%.1f,%.1f,%s,%s,%s", r1, r2, r3, mem_f, mem_g, r4, stat,
                   cputime ? "cpu" : "wall");
            for (int k = 0; k < NCFG; k++) {
              printf(",");
              csv_field(stdout, cells[k].kernel);
            }
            printf("\n");
          } else {
            char mf[24], mg[24];
            snprintf(mf, sizeof mf, "%.1f MiB", mem_f);
            snprintf(mg, sizeof mg, "%.1f MiB est.", mem_g);
            if (md) printf("| ");
            printf("%5s%s%6s%s%6d%s%4d", dtype_name(dtype), sep, causal ? "causal" : "none", sep,
                   seq, sep, dim);
            for (int k = 0; k < NCFG; k++) printf("%s%10s%s%11s", sep, ms[k], sep, gf[k]);
            printf("%s%10s%s%8s%s%8s%s%9s%s%10s%s%15s%s%-*s%s\n", sep, r1, sep, r2, sep, r3, sep,
                   r4, sep, mf, sep, mg, sep, md ? 24 : 0,
                   cells[CFG_FUSED].kernel[0] ? cells[CFG_FUSED].kernel : "-", md ? " |" : "");
          }
          fflush(stdout);
        }
        for (int bi = 0; bi < 4; bi++)
          if (bufs[bi]) da_buffer_destroy(bufs[bi]);
      }
  if (!times) {
    tool_msg(cmd, "out of host memory");
    rc = 1;
  }
  free(times);
  da_context_destroy(ctx);
  return rc;
}
