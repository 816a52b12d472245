/* SPDX-License-Identifier: Apache-2.0 */
/* distrattn devices: every device of every backend, why a backend is
 * missing, and the device DA_BACKEND_AUTO picks. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

static void devices_usage(FILE *f) {
  fprintf(f,
          "Usage: distrattn devices [OPTION]...\n"
          "List every device of every backend (its index in the global list, the\n"
          "backend, its index within the backend, name, vendor, memory, fp16/bf16\n"
          "support), the reason for each backend that is missing or has no device,\n"
          "and the device the 'auto' backend picks.\n"
          "\n"
          "  -h, --help   show this help\n");
}

static void format_mem(char *buf, size_t n, unsigned long long bytes) {
  if (bytes == 0) snprintf(buf, n, "-");
  else if (bytes >= (1ull << 30)) snprintf(buf, n, "%.1f GiB", (double)bytes / (1ull << 30));
  else snprintf(buf, n, "%.0f MiB", (double)bytes / (1ull << 20));
}

int cmd_devices(int argc, char **argv) {
  const char *cmd = argv[0];
  static const struct option lopts[] = {{"help", no_argument, NULL, 'h'}, {NULL, 0, NULL, 0}};
  int c;
  optind = 1;
  while ((c = getopt_long(argc, argv, "h", lopts, NULL)) != -1) {
    switch (c) {
    case 'h': devices_usage(stdout); return 0;
    default: fprintf(stderr, "Try '%s --help'.\n", cmd); return EXIT_USAGE;
    }
  }
  if (optind < argc) return tool_usage_error(cmd, "unexpected argument '%s'", argv[optind]);

  int rc = 0;
  int n = da_device_count();
  printf("%-3s  %-7s %4s  %-40s %-24s %10s  %-4s %s\n", "#", "backend", "idx", "name", "vendor",
         "memory", "fp16", "bf16");
  for (int i = 0; i < n; i++) {
    da_device_info info;
    memset(&info, 0, sizeof info);
    da_status s = da_device_get_info(i, &info);
    if (s != DA_SUCCESS) {
      tool_api_error(cmd, "da_device_get_info", s, NULL);
      rc = 1;
      continue;
    }
    char mem[32];
    format_mem(mem, sizeof mem, info.global_mem);
    printf("%-3d  %-7s %4d  %-40s %-24s %10s  %-4s %s\n", i, backend_label(info.backend),
           info.index, info.name, info.vendor, mem, info.has_fp16 ? "yes" : "no",
           info.has_bf16 ? "yes" : "no");
  }
  if (n == 0) printf("(no device)\n");

  printf("\n");
  static const da_backend bs[] = {DA_BACKEND_CPU, DA_BACKEND_OPENCL, DA_BACKEND_CUDA};
  for (size_t i = 0; i < sizeof bs / sizeof bs[0]; i++) {
    const char *why = NULL;
    int ok = da_backend_available(bs[i], &why);
    if (ok) {
      int cnt = 0;
      for (int j = 0; j < n; j++) {
        da_device_info info;
        if (da_device_get_info(j, &info) == DA_SUCCESS && info.backend == bs[i]) cnt++;
      }
      printf("%-7s available, %d device%s\n", backend_label(bs[i]), cnt, cnt == 1 ? "" : "s");
    } else {
      printf("%-7s not available: %s\n", backend_label(bs[i]), why && *why ? why : "(no reason given)");
    }
  }

  printf("\n");
  da_context *ctx = NULL;
  da_status s = da_context_create(&ctx, DA_BACKEND_AUTO, -1);
  if (s != DA_SUCCESS) {
    printf("auto:   none (%s)\n", da_status_string(s));
    tool_api_error(cmd, "da_context_create(auto, -1)", s, NULL);
    return 1;
  }
  da_device_info info;
  memset(&info, 0, sizeof info);
  s = da_context_get_device_info(ctx, &info);
  if (s != DA_SUCCESS) {
    tool_api_error(cmd, "da_context_get_device_info", s, ctx);
    rc = 1;
  } else {
    int global = -1;
    for (int i = 0; i < n && global < 0; i++) {
      da_device_info gi;
      if (da_device_get_info(i, &gi) == DA_SUCCESS && gi.backend == info.backend &&
          gi.index == info.index)
        global = i;
    }
    printf("auto:   #%d, %s device %d: %s (%s)\n", global, backend_label(info.backend), info.index,
           info.name, info.vendor);
    const char *eb = getenv("DISTRATTN_BACKEND"), *ed = getenv("DISTRATTN_DEVICE");
    if ((eb && *eb) || (ed && *ed))
      printf("        (steered by DISTRATTN_BACKEND=%s DISTRATTN_DEVICE=%s)\n", eb ? eb : "",
             ed ? ed : "");
    else
      printf("        rule: the highest-ranked device: a GPU (CUDA, or OpenCL on a GPU) first;\n"
             "        then the CPU backend when it has AVX2 or AVX-512 kernels (measured faster\n"
             "        than an OpenCL CPU device such as PoCL on the same processor); then an\n"
             "        OpenCL CPU device; the CPU backend's portable kernels last\n");
  }
  da_context_destroy(ctx);
  return rc;
}
