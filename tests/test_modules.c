/* Backend modules that cannot be used are skipped with a reason, and
 * DISTRATTN_BACKEND_PATH loads only from the folders it names.
 *
 * The registry initialises once per process, so every case runs in a child
 * made by fork() of this process, which itself never calls the library: the
 * child sets its environment, asks da_backend_available and sends back the
 * answer and its reason through a pipe. The fake modules are
 * tests/.libs/distrattn_opencl.so (tests/fake_module.c), switched by
 * DA_FAKE_MODULE. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "testutil.h"

#ifndef DA_TEST_BUILDDIR
#define DA_TEST_BUILDDIR "."
#endif

static char tmpdir[256];       /* holds empty/ and text/ */
static char emptydir[300], textdir[300];
static const char *fakedir = DA_TEST_BUILDDIR "/tests/.libs";
static const char *realdir = DA_TEST_BUILDDIR "/cl/.libs";

typedef struct answer {
  int avail;
  int status;      /* of the extra step (build test), 0 if none */
  char why[4096];
} answer;

static int file_exists(const char *p) {
  struct stat st;
  return stat(p, &st) == 0;
}

/* In a child: env (NULL value = unset), then da_backend_available(OPENCL).
 * With build != 0 the child also makes an OpenCL plan and reports its status
 * and last error. */
static answer ask(const char *path, const char *fake, int build) {
  answer a;
  memset(&a, 0, sizeof a);
  int fd[2];
  if (pipe(fd) != 0) fail_msg("pipe: %s", strerror(errno));
  fflush(NULL);
  pid_t pid = fork();
  if (pid < 0) fail_msg("fork: %s", strerror(errno));
  if (pid == 0) {
    close(fd[0]);
    if (path) setenv("DISTRATTN_BACKEND_PATH", path, 1);
    else unsetenv("DISTRATTN_BACKEND_PATH");
    if (fake) setenv("DA_FAKE_MODULE", fake, 1);
    else unsetenv("DA_FAKE_MODULE");
    answer r;
    memset(&r, 0, sizeof r);
    const char *why = NULL;
    r.avail = da_backend_available(DA_BACKEND_OPENCL, &why);
    snprintf(r.why, sizeof r.why, "%s", why ? why : "(NULL)");
    if (build && r.avail) {
      da_context *ctx = NULL;
      da_plan *p = NULL;
      da_attn_desc d;
      da_attn_desc_init(&d);
      d.batch = d.heads = 1;
      d.seq_q = d.seq_k = 8;
      d.head_dim = 16;
      r.status = da_context_create(&ctx, DA_BACKEND_OPENCL, -1);
      if (r.status == DA_SUCCESS) {
        r.status = da_plan_create(ctx, &d, &p);
        snprintf(r.why, sizeof r.why, "%s", da_context_last_error(ctx));
        da_plan_destroy(p);
        da_context_destroy(ctx);
      }
    }
    ssize_t w = write(fd[1], &r, sizeof r);
    _exit(w == (ssize_t)sizeof r ? 0 : 3);
  }
  close(fd[1]);
  size_t got = 0;
  while (got < sizeof a) {
    ssize_t n = read(fd[0], (char *)&a + got, sizeof a - got);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    got += (size_t)n;
  }
  close(fd[0]);
  int st = 0;
  while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
  }
  if (!WIFEXITED(st) || WEXITSTATUS(st) != 0 || got != sizeof a)
    fail_msg("child for DISTRATTN_BACKEND_PATH=%s DA_FAKE_MODULE=%s died (status 0x%x, %zu bytes)",
             path ? path : "(unset)", fake ? fake : "(unset)", st, got);
  return a;
}

static int have_real(void) {
  char p[512];
  snprintf(p, sizeof p, "%s/distrattn_opencl.so", realdir);
  return file_exists(p);
}

static int have_fake(void) {
  char p[512];
  snprintf(p, sizeof p, "%s/distrattn_opencl.so", fakedir);
  return file_exists(p);
}

/* An installed module in the library's own folder would be found after the
 * path's folders: the cases that expect "absent" are then skipped. */
static int installed_module(void) {
  return file_exists(DA_BACKEND_DIR "/distrattn_opencl.so");
}

static int setup(void **state) {
  snprintf(tmpdir, sizeof tmpdir, "%s/da-modules-XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
  if (!mkdtemp(tmpdir)) return -1;
  snprintf(emptydir, sizeof emptydir, "%s/empty", tmpdir);
  snprintf(textdir, sizeof textdir, "%s/text", tmpdir);
  if (mkdir(emptydir, 0700) != 0 || mkdir(textdir, 0700) != 0) return -1;
  char p[400];
  snprintf(p, sizeof p, "%s/distrattn_opencl.so", textdir);
  FILE *f = fopen(p, "w");
  if (!f) return -1;
  fputs("this is a text file, not a shared object\n", f);
  fclose(f);
  return 0;
}

static int teardown(void **state) {
  char p[400];
  snprintf(p, sizeof p, "%s/distrattn_opencl.so", textdir);
  unlink(p);
  rmdir(textdir);
  rmdir(emptydir);
  rmdir(tmpdir);
  return 0;
}

#define EXPECT_WHY(a, s)                                                                         \
  do {                                                                                           \
    if (!strstr((a).why, (s))) fail_msg("the reason \"%s\" does not contain \"%s\"", (a).why, (s)); \
  } while (0)

static void test_missing(void **state) {
  if (installed_module()) skip();
  answer a = ask(emptydir, NULL, 0);
  assert_int_equal(a.avail, 0);
  EXPECT_WHY(a, "not found");
  EXPECT_WHY(a, emptydir);
  a = ask(NULL, NULL, 0); /* unset: only the installed folder */
  assert_int_equal(a.avail, 0);
  EXPECT_WHY(a, "not found");
  EXPECT_WHY(a, DA_BACKEND_DIR);
}

static void test_not_a_module(void **state) {
  if (installed_module()) skip();
  answer a = ask(textdir, NULL, 0);
  assert_int_equal(a.avail, 0);
  EXPECT_WHY(a, textdir);
  EXPECT_WHY(a, "distrattn_opencl.so");
  /* dlopen's own words; glibc says "invalid ELF header" or "file too short" */
  if (!strstr(a.why, "ELF") && !strstr(a.why, "too short"))
    fail_msg("the reason \"%s\" does not carry dlopen's error", a.why);
}

static void test_fake(const char *mode, const char *expect) {
  if (!have_fake()) fail_msg("the fake module %s/distrattn_opencl.so was not built", fakedir);
  if (installed_module()) skip();
  answer a = ask(fakedir, mode, 0);
  assert_int_equal(a.avail, 0);
  EXPECT_WHY(a, fakedir);
  EXPECT_WHY(a, expect);
}

static void test_other_version(void **state) {
  test_fake("version", "interface version 999, this library needs 1");
}
static void test_null_entry(void **state) {
  test_fake("null", "not a distrattn backend module");
}
static void test_other_backend(void **state) {
  test_fake("other", "module is for another backend");
}
static void test_partial(void **state) {
  test_fake("partial", "lacks a required entry");
}
static void test_no_runtime(void **state) {
  if (!have_fake()) fail_msg("the fake module was not built");
  answer a = ask(fakedir, "noruntime", 0);
  assert_int_equal(a.avail, 0);
  EXPECT_WHY(a, "fake module: its runtime is missing");
}

/* The path's folders are tried in order, and no other folder but the
 * installed one: a bad module first does not hide a good one after it, and
 * a good one in a folder the path does not name is not found. */
static void test_path_only_named_folders(void **state) {
  if (!have_real()) {
    if (tu_backend_required(DA_BACKEND_OPENCL)) fail_msg("no OpenCL module in %s", realdir);
    skip();
  }
  char path[2048];
  answer a = ask(realdir, NULL, 0);
  if (!a.avail) {
    if (tu_backend_required(DA_BACKEND_OPENCL)) fail_msg("OpenCL absent: %s", a.why);
    skip(); /* a module but no device */
  }
  assert_string_equal(a.why, "");
  /* bad modules first, then the real one: loaded from the real folder */
  snprintf(path, sizeof path, "%s:%s::%s:%s", emptydir, textdir, fakedir, realdir);
  a = ask(path, "version", 0);
  assert_int_equal(a.avail, 1);
  /* the same bad folders without the real one: absent, and every tried
   * file is named in the reason */
  if (installed_module()) return;
  snprintf(path, sizeof path, "%s:%s:%s", emptydir, textdir, fakedir);
  a = ask(path, "version", 0);
  assert_int_equal(a.avail, 0);
  EXPECT_WHY(a, textdir);
  EXPECT_WHY(a, "interface version 999");
  if (strstr(a.why, realdir)) fail_msg("the reason \"%s\" names a folder not in the path", a.why);
  /* the path folder that only exists in our environment is not searched */
  a = ask(emptydir, NULL, 0);
  assert_int_equal(a.avail, 0);
}

/* A kernel build failure must give DA_ERR_BUILD with the compiler's log.
 * Nothing in the public API can break a kernel build; the OpenCL backend
 * appends DISTRATTN_CL_EXTRA_BUILD_OPTIONS to its clBuildProgram options,
 * and a type defined away breaks every kernel. */
static void test_build_failure(void **state) {
  if (!have_real()) skip();
  setenv("DISTRATTN_CL_EXTRA_BUILD_OPTIONS", "-Dfloat=da_no_such_type", 1);
  answer a = ask(realdir, NULL, 1);
  unsetenv("DISTRATTN_CL_EXTRA_BUILD_OPTIONS");
  if (!a.avail) skip();
  if (a.status == DA_SUCCESS)
    fail_msg("the OpenCL backend ignored DISTRATTN_CL_EXTRA_BUILD_OPTIONS: the plan built");
  assert_int_equal(a.status, DA_ERR_BUILD);
  EXPECT_WHY(a, "clBuildProgram");
  EXPECT_WHY(a, "da_no_such_type");
  EXPECT_WHY(a, "error"); /* the compiler's log, not only the options */
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_missing),
      cmocka_unit_test(test_not_a_module),
      cmocka_unit_test(test_other_version),
      cmocka_unit_test(test_null_entry),
      cmocka_unit_test(test_other_backend),
      cmocka_unit_test(test_partial),
      cmocka_unit_test(test_no_runtime),
      cmocka_unit_test(test_path_only_named_folders),
      cmocka_unit_test(test_build_failure),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
