/* SPDX-License-Identifier: Apache-2.0 */
/* distrattn command-line program: subcommand dispatch. */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif
#include <stdio.h>
#include <string.h>

#include "util.h"

#define DA_STR2(x) #x
#define DA_STR(x) DA_STR2(x)
#ifdef PACKAGE_VERSION
#define PACKAGE_VERSION_STR PACKAGE_VERSION
#else
#define PACKAGE_VERSION_STR                                                        \
  DA_STR(DISTRATTN_VERSION_MAJOR) "." DA_STR(DISTRATTN_VERSION_MINOR) "." DA_STR( \
      DISTRATTN_VERSION_PATCH)
#endif

static void usage(FILE *f) {
  fprintf(f,
          "Usage: distrattn COMMAND [OPTION]...\n"
          "Exact attention and DistrAttention on the CPU, OpenCL and CUDA.\n"
          "\n"
          "Commands:\n"
          "  demo      exact attention and DistrAttention side by side on a real model's\n"
          "            captured Q, K, V: time, speed-up and error (the main job)\n"
          "  devices   list the devices of every backend, and why a backend is missing\n"
          "  run       time one attention configuration and measure its error\n"
          "  check     compare every available backend with the CPU backend\n"
          "  bench     time fused, GEMM and DistrAttention (G=2, G=4) over sizes\n"
          "  eval      error of DistrAttention on a real model's captured Q, K, V\n"
          "  calibrate per-head projections (projection strategy) from a capture\n"
          "\n"
          "Options:\n"
          "  -h, --help     show this help\n"
          "  -V, --version  show the program and library version\n"
          "\n"
          "'distrattn COMMAND --help' describes a command's options.\n"
          "Environment: DISTRATTN_BACKEND (cpu|opencl|cuda) and DISTRATTN_DEVICE steer\n"
          "the 'auto' backend; DISTRATTN_BACKEND_PATH adds a folder of backend modules.\n"
          "Exit status: 0 success, 1 a check failed or a runtime error, 2 usage error.\n");
}

int main(int argc, char **argv) {
  if (argc < 2) {
    usage(stderr);
    return EXIT_USAGE;
  }
  const char *c = argv[1];
  if (strcmp(c, "-h") == 0 || strcmp(c, "--help") == 0 || strcmp(c, "help") == 0) {
    usage(stdout);
    return 0;
  }
  if (strcmp(c, "-V") == 0 || strcmp(c, "--version") == 0 || strcmp(c, "version") == 0) {
    printf("distrattn %s (library %s)\n", PACKAGE_VERSION_STR, da_version_string());
    return 0;
  }
  static const struct {
    const char *name;
    int (*fn)(int, char **);
  } cmds[] = {{"devices", cmd_devices}, {"run", cmd_run}, {"check", cmd_check}, {"bench", cmd_bench},
                  {"eval", cmd_eval}, {"demo", cmd_demo}, {"calibrate", cmd_calibrate}};
  for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++) {
    if (strcmp(c, cmds[i].name) == 0) {
      char name[64];
      snprintf(name, sizeof name, "distrattn %s", cmds[i].name);
      argv[1] = name; /* getopt names the program from argv[0] */
      return cmds[i].fn(argc - 1, argv + 1);
    }
  }
  if (c[0] == '-')
    fprintf(stderr, "distrattn: unrecognized option '%s'\n", c);
  else
    fprintf(stderr, "distrattn: unknown command '%s'\n", c);
  fprintf(stderr, "Try 'distrattn --help'.\n");
  return EXIT_USAGE;
}
