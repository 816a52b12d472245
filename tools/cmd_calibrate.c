/* SPDX-License-Identifier: Apache-2.0 */
/* distrattn calibrate: per-head projections for the projection strategy
 * (SPEC.md 1c) from a capture's activations (tools/calib.h says what is
 * computed), written as a DATTNPRJ file (tools/PROJ_FORMAT.md). */
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "calib.h"
#include "util.h"

static void calib_usage(FILE *f) {
  fprintf(f,
          "Usage: distrattn calibrate [OPTION]... CAPTURE -o FILE\n"
          "Derive per-head projections A_h, B_h (head_dim x rank) for the projection\n"
          "strategy (SPEC.md 1c: logits scale (Q A_h)(K B_h)^T, V and softmax exact) from\n"
          "the Q and K of a DATTNCAP capture (tools/CAPTURE_FORMAT.md), every entry's\n"
          "rows pooled, and write them for every layer of the capture to FILE (DATTNPRJ,\n"
          "tools/PROJ_FORMAT.md): layer i of FILE is layer i of CAPTURE (its model name\n"
          "says which model layers those are, and is copied into FILE).\n"
          "\n"
          "  -o, --output FILE    the projection file to write (required)\n"
          "  -r, --rank R         the reduced width, 1..head_dim\n"
          "  -g, --group G        or: rank = ceil(head_dim / G), the G equivalent\n"
          "                       (default: --group 2)\n"
          "  -m, --method M       pca: A = B = the top R eigenvectors of Q's and K's\n"
          "                       second moments (each normalised by its trace, summed);\n"
          "                       optimal: the rank-R A B^T with the least squared logit\n"
          "                       error over all pooled (query, key) pairs (default)\n"
          "      --sentences N    use only the first N entries of CAPTURE\n"
          "  -q, --quiet          no per-layer summary\n"
          "  -h, --help           show this help\n"
          "\n"
          "Prints, per layer, the relative logit error over all pooled pairs\n"
          "(sqrt(sum (q'A B'k - q'k)^2 / sum (q'k)^2)), mean and worst over heads, for\n"
          "the chosen method and for pca.\n"
          "Exit status: 0 success, 1 a bad file or a runtime error, 2 usage error.\n");
}

int cmd_calibrate(int argc, char **argv) {
  const char *cmd = argv[0];
  static const struct option lopts[] = {
      {"output", required_argument, NULL, 'o'}, {"rank", required_argument, NULL, 'r'},
      {"group", required_argument, NULL, 'g'},  {"method", required_argument, NULL, 'm'},
      {"sentences", required_argument, NULL, 1000}, {"quiet", no_argument, NULL, 'q'},
      {"help", no_argument, NULL, 'h'},         {NULL, 0, NULL, 0}};
  const char *out = NULL;
  int rank = 0, group = 0, max_sent = 0, quiet = 0;
  calib_method method = CALIB_OPTIMAL;
  int c;
  optind = 1;
  while ((c = getopt_long(argc, argv, "o:r:g:m:qh", lopts, NULL)) != -1) {
    int bad = 0;
    switch (c) {
    case 'o': out = optarg; break;
    case 'r': bad = parse_int(cmd, "--rank", optarg, 1, 256, &rank); break;
    case 'g': bad = parse_int(cmd, "--group", optarg, 1, 256, &group); break;
    case 'm':
      if (strcmp(optarg, "pca") == 0) method = CALIB_PCA;
      else if (strcmp(optarg, "optimal") == 0) method = CALIB_OPTIMAL;
      else return tool_usage_error(cmd, "--method: '%s' is not pca or optimal", optarg);
      break;
    case 1000: bad = parse_int(cmd, "--sentences", optarg, 1, 1 << 24, &max_sent); break;
    case 'q': quiet = 1; break;
    case 'h': calib_usage(stdout); return 0;
    default: fprintf(stderr, "Try '%s --help'.\n", cmd); return EXIT_USAGE;
    }
    if (bad) return EXIT_USAGE;
  }
  if (optind >= argc) return tool_usage_error(cmd, "missing CAPTURE (a DATTNCAP file)");
  if (optind + 1 < argc) return tool_usage_error(cmd, "unexpected argument '%s'", argv[optind + 1]);
  if (!out) return tool_usage_error(cmd, "missing -o FILE (where to write the projections)");
  if (rank && group) return tool_usage_error(cmd, "give --rank or --group, not both");
  if (!rank && !group) group = 2;

  capture cap;
  char why[512];
  if (capture_load_file(argv[optind], &cap, why, sizeof why) != 0) {
    tool_msg(cmd, "%s: %s", argv[optind], why);
    return 1;
  }
  const unsigned L = cap.layers, H = cap.heads, D = cap.head_dim;
  if (group) rank = (int)((D + (unsigned)group - 1) / (unsigned)group);
  if ((unsigned)rank > D) {
    capture_free(&cap);
    return tool_usage_error(cmd, "--rank %d is larger than the capture's head_dim %u", rank, D);
  }
  const unsigned ns = max_sent > 0 && (unsigned)max_sent < cap.n_sent ? (unsigned)max_sent
                                                                       : cap.n_sent;
  const size_t per = (size_t)D * rank;
  float *data = malloc(sizeof(float) * (size_t)L * H * 2 * per);
  float *pa = malloc(sizeof(float) * 2 * per);
  double *Sq = malloc(sizeof(double) * D * D), *Sk = malloc(sizeof(double) * D * D);
  int rc = 0;
  if (!data || !pa || !Sq || !Sk) {
    tool_msg(cmd, "out of memory");
    rc = 1;
  }
  if (!rc && !quiet) {
    printf("capture: %s: %s\n", argv[optind], cap.model[0] ? cap.model : "(no model name)");
    printf("  %u layers, %u heads / %u kv heads, head_dim %u, %u entries; rank %d, method %s\n",
           L, H, cap.kv_heads, D, ns, rank, method == CALIB_PCA ? "pca" : "optimal");
    printf("relative logit error over all pooled (query, key) pairs, mean / worst over heads\n");
    printf("%-6s  %19s  %19s\n", "layer", method == CALIB_PCA ? "pca" : "optimal",
           method == CALIB_PCA ? "" : "pca");
  }
  for (unsigned l = 0; l < L && !rc; l++) {
    double sum = 0, worst = 0, sum_p = 0, worst_p = 0;
    for (unsigned h = 0; h < H && !rc; h++) {
      double nq, nk;
      calib_moments(&cap, ns, l, h, Sq, &nq, Sk, &nk);
      float *A = data + ((size_t)l * H + h) * 2 * per, *B = A + per;
      if (calib_head((int)D, rank, method, Sq, nq, Sk, nk, A, B) != 0) {
        tool_msg(cmd, "layer %u head %u: calibration failed (out of memory)", l, h);
        rc = 1;
        break;
      }
      for (size_t i = 0; i < 2 * per; i++)
        if (!isfinite(A[i])) {
          tool_msg(cmd, "layer %u head %u: a projection came out non-finite", l, h);
          rc = 1;
          break;
        }
      if (quiet) continue;
      double e = calib_objective((int)D, rank, Sq, Sk, A, B);
      sum += e, worst = e > worst ? e : worst;
      if (method != CALIB_PCA && calib_head((int)D, rank, CALIB_PCA, Sq, nq, Sk, nk, pa,
                                            pa + per) == 0) {
        double ep = calib_objective((int)D, rank, Sq, Sk, pa, pa + per);
        sum_p += ep, worst_p = ep > worst_p ? ep : worst_p;
      }
    }
    if (!rc && !quiet) {
      printf("%-6u  %8.4f / %8.4f", l, sum / H, worst);
      if (method != CALIB_PCA) printf("  %8.4f / %8.4f", sum_p / H, worst_p);
      printf("\n");
    }
  }
  if (!rc && proj_write(out, L, H, D, (unsigned)rank, method, cap.model, data, why, sizeof why)) {
    tool_msg(cmd, "%s", why);
    rc = 1;
  }
  if (!rc && !quiet) printf("wrote %s: %u layers x %u heads x 2 x %u x %d f32\n", out, L, H, D, rank);
  free(data), free(pa), free(Sq), free(Sk);
  capture_free(&cap);
  return rc;
}
