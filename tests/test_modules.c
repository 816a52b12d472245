/* SPDX-License-Identifier: Apache-2.0 */
/* Backend modules that cannot be used are skipped with a reason, and
 * DISTRATTN_BACKEND_PATH loads only from the folders it names (and the
 * library's own: distrattn/backends beside it, then the configured one);
 * folders given to da_backend_add_path come first, and such a call after a
 * module was looked for changes nothing.
 *
 * The registry initialises a backend once per process, so every case runs
 * in a child made by fork() of this process, which itself never calls the
 * library: the child sets its environment, asks da_backend_available and
 * sends back the answer and its reason through a pipe. The fake modules are
 * tests/.libs/distrattn_opencl.so (tests/fake_module.c), switched by
 * DA_FAKE_MODULE; the broken ones (truncated, not ELF, another class or
 * machine) are copies of the real module cl/.libs/distrattn_opencl.so,
 * cut or patched, in a temporary folder. */
#define _GNU_SOURCE
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif
#include <dlfcn.h>
#include <elf.h>
#include <errno.h>
#include <link.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
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

static char tmpdir[256];       /* holds empty/, text/, broken/ and notreg/ */
static char emptydir[300], textdir[300], brokendir[300], notregdir[300];
static const char *fakedir = DA_TEST_BUILDDIR "/tests/.libs";
static const char *realdir = DA_TEST_BUILDDIR "/cl/.libs";

typedef struct answer {
  int avail;
  int status;      /* of the extra step (build test), 0 if none */
  int cpu;         /* ASK_CPU: status of a CPU attention run after the ask */
  int added;       /* da_backend_add_path(add) before the ask, 0 if no add */
  int added_after; /* ASK_ADD_AFTER: da_backend_add_path(emptydir) after it */
  int gemm, fused; /* ASK_GEMM: status of an OpenCL GEMM plan (why: its error), then a fused one */
  int bad_args[4]; /* ASK_ADD_ARGS: da_backend_add_path(NULL, "", a file, a missing folder) */
  char why[4096];
} answer;

enum { ASK_BUILD = 1, ASK_CPU = 2, ASK_WRAP = 4, ASK_ADD_AFTER = 8, ASK_CPU_FIRST = 16,
       ASK_ADD_ARGS = 32, ASK_GEMM = 64 };

static int file_exists(const char *p) {
  struct stat st;
  return stat(p, &st) == 0;
}

/* A small attention on the CPU backend: its status, or DA_ERR_BACKEND when
 * an output is not finite. */
static int cpu_run(void) {
  da_context *ctx = NULL;
  da_plan *p = NULL;
  da_attn_desc d = tu_small_desc();
  float q[4 * 8 * 16], kv[2 * 8 * 16], o[4 * 8 * 16];
  tu_rng r;
  tu_rng_init(&r, 7);
  tu_fill(q, DA_F32, sizeof q / sizeof q[0], &r, 1.0);
  tu_fill(kv, DA_F32, sizeof kv / sizeof kv[0], &r, 1.0);
  int s = da_context_create(&ctx, DA_BACKEND_CPU, -1);
  if (s == DA_SUCCESS) s = da_plan_create(ctx, &d, &p);
  if (s == DA_SUCCESS) s = da_attention_host(p, q, kv, kv, o);
  if (s == DA_SUCCESS && tu_count_nonfinite(o, DA_F32, sizeof o / sizeof o[0], NULL) != 0)
    s = DA_ERR_BACKEND;
  da_plan_destroy(p);
  da_context_destroy(ctx);
  return s;
}

/* Wraps and destroys 1,000 buffers over one allocation of the caller's
 * and 1,000 over the whole of it, through the fake "wrap" backend (whose
 * buf_free aborts on memory it did not allocate): the core must route a
 * wrapper's destruction to buf_unwrap only. Then the caller's memory must
 * hold what it held, and stay the caller's to free. */
static int wrap_run(char *why, size_t len) {
  enum { N = 1 << 16 };
  unsigned char *mem = malloc(N);
  if (!mem) return DA_ERR_HOST_MEMORY;
  for (size_t i = 0; i < N; i++) mem[i] = (unsigned char)(i * 131u + 7u);
  da_context *ctx = NULL;
  da_status s = da_context_wrap(&ctx, DA_BACKEND_OPENCL, (void *)mem); /* any non-NULL queue */
  for (int i = 0; i < 2000 && s == DA_SUCCESS; i++) {
    da_buffer *b = NULL;
    size_t off = i < 1000 ? (size_t)(i * 61) % (N - 256) : 0, n = i < 1000 ? 256 : N;
    s = da_buffer_wrap(ctx, mem + off, n, &b);
    if (s == DA_SUCCESS && da_buffer_native(b) != mem + off) s = DA_ERR_BACKEND;
    da_buffer_destroy(b);
  }
  da_buffer *own = NULL; /* and a buffer of its own is freed */
  if (s == DA_SUCCESS) s = da_buffer_create(ctx, 4096, &own);
  da_buffer_destroy(own);
  if (s == DA_SUCCESS) { /* a module without attention_bwd: the core refuses, naming it */
    da_attn_desc d = tu_small_desc(); /* f32: Q 2048 bytes, K 1024, LSE 128 */
    da_plan *p = NULL;
    s = da_plan_create(ctx, &d, &p);
    const size_t at[9] = {0, 2048, 4096, 5120, 6144, 8192, 8320, 10368, 11392};
    const size_t sz[9] = {2048, 2048, 1024, 1024, 2048, 128, 2048, 1024, 1024};
    da_buffer *b[9] = {NULL};
    for (int i = 0; i < 9 && s == DA_SUCCESS; i++) s = da_buffer_wrap(ctx, mem + at[i], sz[i], &b[i]);
    if (s == DA_SUCCESS) { /* a module without plan_kernel: "default"; ctx_wrap's info kept */
      da_kernel_info ki;
      da_kernel_info_init(&ki);
      da_device_info di;
      s = da_plan_get_kernel(p, &ki);
      if (s == DA_SUCCESS) s = da_context_get_device_info(ctx, &di);
      if (s == DA_SUCCESS && (strcmp(ki.name, "default") != 0 || ki.backend != DA_BACKEND_OPENCL ||
                              strcmp(di.name, "fake wrap device") != 0 ||
                              di.backend != DA_BACKEND_OPENCL)) {
        snprintf(why, len, "module without plan_kernel: kernel \"%s\" (backend %d), device \"%s\"",
                 ki.name, (int)ki.backend, di.name);
        s = DA_ERR_BACKEND;
      }
    }
    if (s == DA_SUCCESS) {
      da_bwd_args a;
      da_bwd_args_init(&a);
      a.dout = b[0], a.q = b[1], a.k = b[2], a.v = b[3], a.o = b[4], a.lse = b[5];
      a.dq = b[6], a.dk = b[7], a.dv = b[8];
      const da_status bs = da_attention_backward(p, &a);
      if (bs != DA_ERR_UNSUPPORTED || !strstr(da_context_last_error(ctx), "no backward pass")) {
        snprintf(why, len, "da_attention_backward on a module without one: %s: %s",
                 da_status_string(bs), da_context_last_error(ctx));
        s = DA_ERR_BACKEND;
      }
    }
    for (int i = 0; i < 9; i++) da_buffer_destroy(b[i]);
    da_plan_destroy(p);
    if (s != DA_SUCCESS) {
      da_context_destroy(ctx);
      free(mem);
      return s;
    }
  }
  snprintf(why, len, "%s", da_context_last_error(ctx));
  da_context_destroy(ctx);
  for (size_t i = 0; i < N && s == DA_SUCCESS; i++)
    if (mem[i] != (unsigned char)(i * 131u + 7u)) {
      snprintf(why, len, "the caller's byte %zu changed", i);
      s = DA_ERR_BACKEND;
    }
  free(mem); /* still the caller's: a double free would abort here */
  return s;
}

/* In a child: env (NULL value = unset), da_backend_add_path(add) when add
 * is not NULL (after a CPU attention run with ASK_CPU_FIRST; after the bad
 * arguments with ASK_ADD_ARGS), then da_backend_available(OPENCL). With
 * ASK_BUILD the child also makes an OpenCL plan and reports its status and
 * last error; with ASK_CPU it then runs an attention on the CPU backend;
 * with ASK_ADD_AFTER it calls da_backend_add_path again. */
typedef struct ask_args {
  const char *path, *fake, *add;
  int flags;
} ask_args;

/* The child of ask_add (run by tu_fork_call). */
static int ask_child(void *arg, void *out) {
  const ask_args *x = arg;
  const char *path = x->path, *fake = x->fake, *add = x->add;
  const int flags = x->flags;
  if (path) setenv("DISTRATTN_BACKEND_PATH", path, 1);
  else unsetenv("DISTRATTN_BACKEND_PATH");
  if (fake) setenv("DA_FAKE_MODULE", fake, 1);
  else unsetenv("DA_FAKE_MODULE");
  answer r;
  memset(&r, 0, sizeof r);
  if (flags & ASK_CPU_FIRST) r.cpu = cpu_run();
  if (flags & ASK_ADD_ARGS) {
    char file[400], missing[400];
    snprintf(file, sizeof file, "%s/distrattn_opencl.so", textdir);
    snprintf(missing, sizeof missing, "%s/no-such-folder", tmpdir);
    r.bad_args[0] = da_backend_add_path(NULL);
    r.bad_args[1] = da_backend_add_path("");
    r.bad_args[2] = da_backend_add_path(file);
    r.bad_args[3] = da_backend_add_path(missing);
  }
  if (add) r.added = da_backend_add_path(add);
  const char *why = NULL;
  r.avail = da_backend_available(DA_BACKEND_OPENCL, &why);
  snprintf(r.why, sizeof r.why, "%s", why ? why : "(NULL)");
  if ((flags & ASK_BUILD) && r.avail) {
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
  if (flags & ASK_CPU) r.cpu = cpu_run();
  if ((flags & ASK_WRAP) && r.avail) r.status = wrap_run(r.why, sizeof r.why);
  if ((flags & ASK_GEMM) && r.avail) {
    da_context *ctx = NULL;
    da_plan *p = NULL;
    da_attn_desc d = tu_small_desc();
    d.algo = DA_ALGO_GEMM;
    r.gemm = r.fused = da_context_create(&ctx, DA_BACKEND_OPENCL, -1);
    if (r.gemm == DA_SUCCESS) {
      r.gemm = da_plan_create(ctx, &d, &p);
      snprintf(r.why, sizeof r.why, "%s", da_context_last_error(ctx));
      da_plan_destroy(p);
      p = NULL;
      d.algo = DA_ALGO_FUSED;
      r.fused = da_plan_create(ctx, &d, &p);
      float q[4 * 8 * 16], kv[2 * 8 * 16], o[4 * 8 * 16];
      memset(q, 0, sizeof q);
      memset(kv, 0, sizeof kv);
      if (r.fused == DA_SUCCESS) r.fused = da_attention_host(p, q, kv, kv, o);
      da_plan_destroy(p);
      da_context_destroy(ctx);
    }
  }
  if (flags & ASK_ADD_AFTER) r.added_after = da_backend_add_path(emptydir);
  memcpy(out, &r, sizeof r);
  return 0;
}

static answer ask_add(const char *path, const char *fake, const char *add, int flags) {
  answer a;
  memset(&a, 0, sizeof a);
  ask_args x = {path, fake, add, flags};
  char trouble[128];
  int st = 0;
  size_t got = tu_fork_call(ask_child, &x, &a, sizeof a, &st);
  if (tu_child_trouble(st, got, sizeof a, trouble, sizeof trouble))
    fail_msg("child for DISTRATTN_BACKEND_PATH=%s DA_FAKE_MODULE=%s %s", path ? path : "(unset)",
             fake ? fake : "(unset)", trouble);
  return a;
}

static answer ask(const char *path, const char *fake, int flags) {
  return ask_add(path, fake, NULL, flags);
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
  snprintf(brokendir, sizeof brokendir, "%s/broken", tmpdir);
  snprintf(notregdir, sizeof notregdir, "%s/notreg", tmpdir);
  if (mkdir(emptydir, 0700) != 0 || mkdir(textdir, 0700) != 0 || mkdir(brokendir, 0700) != 0 ||
      mkdir(notregdir, 0700) != 0)
    return -1;
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
  snprintf(p, sizeof p, "%s/distrattn_opencl.so", brokendir);
  unlink(p);
  rmdir(brokendir);
  snprintf(p, sizeof p, "%s/distrattn_opencl.so", notregdir);
  rmdir(p);
  rmdir(notregdir);
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

/* A text file in the module's place: refused by the ELF check, before
 * dlopen, and the CPU backend still works. */
static void test_not_a_module(void **state) {
  if (installed_module()) skip();
  answer a = ask(textdir, NULL, ASK_CPU);
  assert_int_equal(a.avail, 0);
  EXPECT_WHY(a, textdir);
  EXPECT_WHY(a, "distrattn_opencl.so");
  EXPECT_WHY(a, "not an ELF file");
  assert_int_equal(a.cpu, DA_SUCCESS);
}

static void test_fake(const char *mode, const char *expect) {
  if (!have_fake()) fail_msg("the fake module %s/distrattn_opencl.so was not built", fakedir);
  if (installed_module()) skip();
  answer a = ask(fakedir, mode, 0);
  assert_int_equal(a.avail, 0);
  EXPECT_WHY(a, fakedir);
  EXPECT_WHY(a, expect);
}

/* The core never frees what a caller wrapped (da_backend.h, "Buffers and
 * who owns them"): checked against any backend, through a fake one that
 * aborts when handed memory it does not own. The same module has no
 * backward pass: da_attention_backward is refused, naming that. */
static void test_wrap_ownership(void **state) {
  if (!have_fake()) fail_msg("the fake module %s/distrattn_opencl.so was not built", fakedir);
  if (installed_module()) skip();
  answer a = ask(fakedir, "wrap", ASK_WRAP);
  if (!a.avail) fail_msg("the fake wrap module did not load: %s", a.why);
  if (a.status != DA_SUCCESS) fail_msg("wrap/destroy through the fake backend: %s: %s",
                                       da_status_string(a.status), a.why);
}

static void test_other_version(void **state) {
  char want[96]; /* the version this library needs: DA_BACKEND_IFACE_VERSION */
  snprintf(want, sizeof want, "interface version 999, this library needs %d",
           DA_BACKEND_IFACE_VERSION);
  test_fake("version", want);
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

/* ---- broken copies of the real module ----
 * Each case writes brokendir/distrattn_opencl.so, a copy of the built
 * module cut short or with header bytes patched, and expects it refused by
 * the ELF check with a reason naming the problem, no crash (a module cut
 * short used to kill the process with SIGBUS inside dlopen, whose mmap of
 * its segments reaches past the end of the file), and a working CPU
 * backend afterwards. */

typedef ElfW(Ehdr) ehdr_t;

/* The real module's bytes (malloc'ed), or skip / fail when it is absent. */
static unsigned char *real_module(size_t *len) {
  char p[512];
  snprintf(p, sizeof p, "%s/distrattn_opencl.so", realdir);
  FILE *f = fopen(p, "rb");
  if (!f) {
    if (tu_backend_required(DA_BACKEND_OPENCL)) fail_msg("no OpenCL module in %s", realdir);
    skip();
  }
  unsigned char *buf = NULL;
  size_t n = 0, cap = 0;
  for (;;) {
    if (n == cap) {
      cap = cap ? 2 * cap : 1 << 20;
      unsigned char *nb = realloc(buf, cap);
      if (!nb) {
        free(buf);
        fclose(f);
        fail_msg("out of memory reading %s", p);
      }
      buf = nb;
    }
    size_t got = fread(buf + n, 1, cap - n, f);
    if (got == 0) break;
    n += got;
  }
  fclose(f);
  if (n < sizeof(ehdr_t)) {
    free(buf);
    fail_msg("%s is only %zu bytes", p, n);
  }
  *len = n;
  return buf;
}

static void write_broken(const unsigned char *b, size_t n) {
  char p[400];
  snprintf(p, sizeof p, "%s/distrattn_opencl.so", brokendir);
  FILE *f = fopen(p, "wb");
  if (!f) fail_msg("cannot write %s: %s", p, strerror(errno));
  size_t w = n ? fwrite(b, 1, n, f) : 0;
  if (fclose(f) != 0 || w != n) fail_msg("cannot write %s", p);
}

/* The broken copy is refused with a reason containing e1 (and e2). */
static void expect_refused(const char *dir, const char *e1, const char *e2) {
  answer a = ask(dir, NULL, ASK_CPU);
  assert_int_equal(a.avail, 0);
  EXPECT_WHY(a, dir);
  EXPECT_WHY(a, "distrattn_opencl.so");
  EXPECT_WHY(a, e1);
  if (e2) EXPECT_WHY(a, e2);
  if (a.cpu != DA_SUCCESS)
    fail_msg("the CPU backend failed after the refused module: %s",
             da_status_string((da_status)a.cpu));
}

/* The real module cut to its first n bytes. */
static void truncated(size_t n, const char *e1, const char *e2) {
  if (installed_module()) skip();
  size_t len;
  unsigned char *b = real_module(&len);
  if (n >= len) {
    free(b);
    fail_msg("the module is only %zu bytes, cannot cut it to %zu", len, n);
  }
  write_broken(b, n);
  free(b);
  expect_refused(brokendir, e1, e2);
}

static void test_truncated_4k(void **state) {
  truncated(4096, "truncated: PT_LOAD segment", "the file has 4,096");
}
static void test_truncated_64(void **state) {
  truncated(64, "truncated: program header table ends at byte", "the file has 64");
}
static void test_truncated_in_ident(void **state) {
  truncated(20, "truncated: the ELF header needs", "the file has 20");
}
static void test_truncated_empty(void **state) {
  truncated(0, "truncated: the file is empty", NULL);
}
/* Cut in the middle of the program header table (of its middle entry). */
static void test_truncated_in_phdrs(void **state) {
  size_t len;
  unsigned char *b = real_module(&len);
  ehdr_t eh;
  memcpy(&eh, b, sizeof eh);
  free(b);
  if (eh.e_phnum < 2) fail_msg("the module has %u program headers", (unsigned)eh.e_phnum);
  size_t n = (size_t)eh.e_phoff + (size_t)(eh.e_phnum / 2) * eh.e_phentsize + eh.e_phentsize / 2;
  char has[64];
  if (n < 1000) snprintf(has, sizeof has, "the file has %zu", n);
  else snprintf(has, sizeof has, "the file has %zu,%03zu", n / 1000, n % 1000);
  if (n >= 1000000) fail_msg("program headers end at %zu, past what this test expects", n);
  truncated(n, "truncated: program header table ends at byte", has);
}

/* The real module with bytes patched at off. */
static void patched(size_t off, const void *bytes, size_t n, const char *e1, const char *e2) {
  if (installed_module()) skip();
  size_t len;
  unsigned char *b = real_module(&len);
  memcpy(b + off, bytes, n);
  write_broken(b, len);
  free(b);
  expect_refused(brokendir, e1, e2);
}

static void test_wrong_class(void **state) {
  unsigned char c = sizeof(void *) == 8 ? ELFCLASS32 : ELFCLASS64;
  patched(EI_CLASS, &c, 1, "wrong ELF class", NULL);
}
static void test_wrong_byte_order(void **state) {
  unsigned char c = ELFDATA2LSB + ELFDATA2MSB; /* the other one */
  size_t len;
  unsigned char *b = real_module(&len);
  c -= b[EI_DATA];
  free(b);
  patched(EI_DATA, &c, 1, "wrong ELF byte order", NULL);
}
static void test_wrong_machine(void **state) {
  size_t len;
  unsigned char *b = real_module(&len);
  ehdr_t eh;
  memcpy(&eh, b, sizeof eh);
  free(b);
  uint16_t m = eh.e_machine == EM_X86_64 ? EM_AARCH64 : EM_X86_64;
  patched(offsetof(ehdr_t, e_machine), &m, sizeof m, "built for another machine", NULL);
}
static void test_not_shared_object(void **state) {
  uint16_t t = ET_EXEC;
  patched(offsetof(ehdr_t, e_type), &t, sizeof t, "not a shared object", "executable");
}
static void test_bad_phentsize(void **state) {
  uint16_t sz = sizeof(ElfW(Phdr)) + 8;
  patched(offsetof(ehdr_t, e_phentsize), &sz, sizeof sz, "bad program header entry size", NULL);
}

/* A folder named distrattn_opencl.so. */
static void test_not_regular(void **state) {
  if (installed_module()) skip();
  char p[400];
  snprintf(p, sizeof p, "%s/distrattn_opencl.so", notregdir);
  if (mkdir(p, 0700) != 0 && errno != EEXIST) fail_msg("mkdir %s: %s", p, strerror(errno));
  expect_refused(notregdir, "not a regular file", NULL);
}

/* A kernel build failure must give DA_ERR_BUILD with the compiler's log.
 * Nothing in the public API can break a kernel build; the OpenCL backend
 * appends DISTRATTN_CL_EXTRA_BUILD_OPTIONS to its clBuildProgram options,
 * and an option no compiler knows fails every build (macros, which could
 * break the source itself, are refused before any build: test_faults). */
static void test_build_failure(void **state) {
  if (!have_real()) skip();
  setenv("DISTRATTN_CL_EXTRA_BUILD_OPTIONS", "-cl-da-no-such-option", 1);
  answer a = ask(realdir, NULL, ASK_BUILD);
  unsetenv("DISTRATTN_CL_EXTRA_BUILD_OPTIONS");
  if (!a.avail) skip();
  if (a.status == DA_SUCCESS)
    fail_msg("the OpenCL backend ignored DISTRATTN_CL_EXTRA_BUILD_OPTIONS: the plan built");
  assert_int_equal(a.status, DA_ERR_BUILD);
  EXPECT_WHY(a, "clBuildProgram");
  EXPECT_WHY(a, "-cl-da-no-such-option");
  /* PoCL refuses the option (CL_INVALID_BUILD_OPTIONS); NVIDIA's compiler
   * fails the build and says why in its log (CL_BUILD_PROGRAM_FAILURE) */
  if (!strstr(a.why, "CL_INVALID_BUILD_OPTIONS") && !strstr(a.why, "CL_BUILD_PROGRAM_FAILURE"))
    fail_msg("the reason \"%s\" names neither CL_INVALID_BUILD_OPTIONS nor "
             "CL_BUILD_PROGRAM_FAILURE", a.why);
}

/* ---- da_backend_add_path and the folder beside the library ---- */

/* Bad arguments are refused, a folder is accepted before any module was
 * looked for, even after the CPU backend ran, and refused once one was. */
static void test_add_path_args(void **state) {
  answer a = ask_add(emptydir, NULL, emptydir, ASK_ADD_ARGS | ASK_CPU_FIRST | ASK_ADD_AFTER);
  for (int i = 0; i < 4; i++)
    if (a.bad_args[i] != DA_ERR_INVALID_ARG)
      fail_msg("da_backend_add_path(%s): %s, not DA_ERR_INVALID_ARG",
               (const char *[]){"NULL", "\"\"", "a regular file", "a missing folder"}[i],
               da_status_string((da_status)a.bad_args[i]));
  assert_int_equal(a.cpu, DA_SUCCESS);
  assert_int_equal(a.added, DA_SUCCESS);
  assert_int_equal(a.added_after, DA_ERR_UNSUPPORTED);
}

/* The added folder is searched before DISTRATTN_BACKEND_PATH's: a module
 * whose runtime is missing (the fake "noruntime", which ends the search)
 * added in front of the real module hides it, and the real module added in
 * front of the fake is loaded. */
static void test_add_path_first(void **state) {
  if (!have_fake()) fail_msg("the fake module %s/distrattn_opencl.so was not built", fakedir);
  if (!have_real()) {
    if (tu_backend_required(DA_BACKEND_OPENCL)) fail_msg("no OpenCL module in %s", realdir);
    skip();
  }
  answer a = ask_add(realdir, "noruntime", fakedir, 0);
  assert_int_equal(a.added, DA_SUCCESS);
  assert_int_equal(a.avail, 0);
  EXPECT_WHY(a, "fake module: its runtime is missing");
  a = ask_add(fakedir, "noruntime", realdir, 0);
  assert_int_equal(a.added, DA_SUCCESS);
  if (!a.avail) {
    if (strstr(a.why, "fake module")) fail_msg("the path's fake module was loaded before the added folder's: %s", a.why);
    if (tu_backend_required(DA_BACKEND_OPENCL)) fail_msg("OpenCL absent: %s", a.why);
    skip(); /* a module but no device */
  }
  assert_string_equal(a.why, "");
  /* the same folder, named relatively, and unset path: found */
  char cwd[4096];
  if (!getcwd(cwd, sizeof cwd)) fail_msg("getcwd: %s", strerror(errno));
  if (strncmp(realdir, cwd, strlen(cwd)) == 0 && realdir[strlen(cwd)] == '/') {
    a = ask_add(NULL, NULL, realdir + strlen(cwd) + 1, 0);
    assert_int_equal(a.added, DA_SUCCESS);
    assert_int_equal(a.avail, 1);
  }
}

/* distrattn/backends in the folder of what holds the library's code: here
 * the test program itself (it links the library statically), as dladdr
 * names it. */
static char beside[4096], beside_mod[4200], beside_parent[4096];
static int beside_made_parent, beside_made_dir;

static int beside_setup(void **state) {
  Dl_info info;
  void *self;
  int (*fn)(da_backend, const char **) = da_backend_available;
  memcpy(&self, &fn, sizeof self);
  if (!dladdr(self, &info) || !info.dli_fname) return -1;
  char *real = realpath(info.dli_fname, NULL);
  if (!real) return -1;
  *strrchr(real, '/') = '\0';
  snprintf(beside_parent, sizeof beside_parent, "%s/distrattn", real);
  snprintf(beside, sizeof beside, "%s/distrattn/backends", real);
  snprintf(beside_mod, sizeof beside_mod, "%s/distrattn_opencl.so", beside);
  free(real);
  unlink(beside_mod); /* left by a run that was killed */
  beside_made_parent = mkdir(beside_parent, 0700) == 0;
  beside_made_dir = mkdir(beside, 0700) == 0;
  return 0;
}

static int beside_teardown(void **state) {
  unlink(beside_mod);
  if (beside_made_dir) rmdir(beside);
  if (beside_made_parent) rmdir(beside_parent);
  return 0;
}

static void link_beside(const char *dir) {
  char target[4200];
  snprintf(target, sizeof target, "%s/distrattn_opencl.so", dir);
  unlink(beside_mod);
  if (symlink(target, beside_mod) != 0) fail_msg("symlink %s: %s", beside_mod, strerror(errno));
}

static void test_beside_library(void **state) {
  if (!have_fake()) fail_msg("the fake module %s/distrattn_opencl.so was not built", fakedir);
  if (installed_module()) skip();
  /* absent: the reason names the folder, after the path's */
  answer a = ask(emptydir, NULL, 0);
  assert_int_equal(a.avail, 0);
  EXPECT_WHY(a, beside);
  const char *e = strstr(a.why, emptydir), *b = strstr(a.why, beside), *c = strstr(a.why, DA_BACKEND_DIR);
  if (!e || !c || b < e || c < b) fail_msg("folders out of order in \"%s\"", a.why);
  /* the fake module beside the library is found with the path unset */
  link_beside(fakedir);
  a = ask(NULL, "noruntime", 0);
  assert_int_equal(a.avail, 0);
  EXPECT_WHY(a, "fake module: its runtime is missing");
  /* after the path's folders */
  if (have_real()) {
    a = ask(realdir, "noruntime", 0);
    if (strstr(a.why, "fake module")) fail_msg("the module beside the library came before the path's: %s", a.why);
    /* the real one beside the library, path naming an empty folder */
    link_beside(realdir);
    a = ask(emptydir, NULL, 0);
    if (!a.avail && tu_backend_required(DA_BACKEND_OPENCL)) fail_msg("OpenCL absent: %s", a.why);
    if (a.avail) assert_string_equal(a.why, "");
  }
}

/* DA_ALGO_GEMM's CLBlast is loaded with dlopen when a GEMM plan is made:
 * where it cannot be (the module built to look for a library no machine
 * has, tests/noblast/), a GEMM plan is DA_ERR_UNSUPPORTED with dlopen's
 * reason and the fused algorithm works; the real module makes GEMM plans
 * where CLBlast was found at build time. */
static void test_clblast_missing(void **state) {
  char noblast[512];
  snprintf(noblast, sizeof noblast, "%s/tests/noblast/.libs", DA_TEST_BUILDDIR);
  char p[600];
  snprintf(p, sizeof p, "%s/distrattn_opencl.so", noblast);
  if (!file_exists(p)) {
    if (tu_backend_required(DA_BACKEND_OPENCL)) fail_msg("%s was not built", p);
    skip();
  }
  answer a = ask(noblast, NULL, ASK_GEMM);
  if (!a.avail) {
    if (tu_backend_required(DA_BACKEND_OPENCL)) fail_msg("OpenCL absent: %s", a.why);
    skip();
  }
  if (a.gemm != DA_ERR_UNSUPPORTED)
    fail_msg("GEMM plan without CLBlast: %s (%s), not DA_ERR_UNSUPPORTED",
             da_status_string((da_status)a.gemm), a.why);
  EXPECT_WHY(a, "needs CLBlast");
#ifndef DA_CL_NO_CLBLAST /* configured --without-clblast: no dlopen is tried */
  EXPECT_WHY(a, "libda-no-such-clblast.so.1"); /* dlopen's reason */
#endif
  assert_int_equal(a.fused, DA_SUCCESS);
#ifdef HAVE_CLBLAST
  a = ask(realdir, NULL, ASK_GEMM);
  if (!a.avail) skip();
  if (a.gemm != DA_SUCCESS)
    fail_msg("GEMM plan with CLBlast present: %s (%s)", da_status_string((da_status)a.gemm), a.why);
  assert_int_equal(a.fused, DA_SUCCESS);
#endif
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_missing),
      cmocka_unit_test(test_not_a_module),
      cmocka_unit_test(test_truncated_4k),
      cmocka_unit_test(test_truncated_64),
      cmocka_unit_test(test_truncated_in_ident),
      cmocka_unit_test(test_truncated_empty),
      cmocka_unit_test(test_truncated_in_phdrs),
      cmocka_unit_test(test_wrong_class),
      cmocka_unit_test(test_wrong_byte_order),
      cmocka_unit_test(test_wrong_machine),
      cmocka_unit_test(test_not_shared_object),
      cmocka_unit_test(test_bad_phentsize),
      cmocka_unit_test(test_not_regular),
      cmocka_unit_test(test_other_version),
      cmocka_unit_test(test_wrap_ownership),
      cmocka_unit_test(test_null_entry),
      cmocka_unit_test(test_other_backend),
      cmocka_unit_test(test_partial),
      cmocka_unit_test(test_no_runtime),
      cmocka_unit_test(test_path_only_named_folders),
      cmocka_unit_test(test_build_failure),
      cmocka_unit_test(test_clblast_missing),
      cmocka_unit_test(test_add_path_args),
      cmocka_unit_test(test_add_path_first),
      cmocka_unit_test_setup_teardown(test_beside_library, beside_setup, beside_teardown),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
