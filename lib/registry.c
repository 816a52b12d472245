/* SPDX-License-Identifier: Apache-2.0 */
/* The backend registry: the built-in CPU backend and the backend modules
 * (distrattn_<name>.so), looked for in this order, each folder once:
 *  1. the folders given to da_backend_add_path, in the order given;
 *  2. DISTRATTN_BACKEND_PATH's folders;
 *  3. distrattn/backends beside the loaded libdistrattn (found with dladdr),
 *     so an install moved with `make install prefix=...` or DESTDIR finds
 *     its modules;
 *  4. the configured module folder, DA_BACKEND_DIR.
 * Each backend is initialised once, by the first call that needs it
 * (pthread_once per backend), and read-only after that: a program that only
 * uses the CPU backend never loads the OpenCL module (libOpenCL, and PoCL
 * with its signal handlers) or the CUDA module. Calls that need every
 * backend (device enumeration, DA_BACKEND_AUTO without DISTRATTN_BACKEND)
 * initialise them all. */
#define _GNU_SOURCE /* dladdr */
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "da_internal.h"

#ifndef DA_BACKEND_DIR
#define DA_BACKEND_DIR "/usr/local/lib/distrattn/backends"
#endif

static da_registered registry[4]; /* indexed by da_backend; 0 unused */
static pthread_once_t registry_once[4] = {PTHREAD_ONCE_INIT, PTHREAD_ONCE_INIT, PTHREAD_ONCE_INIT,
                                          PTHREAD_ONCE_INIT};

static void append_why(da_registered *r, const char *fmt, const char *a, const char *b) {
  size_t len = strlen(r->why);
  if (len >= sizeof r->why - 1) return;
  /* cut short when full (the return value is read: the cut is meant) */
  if (snprintf(r->why + len, sizeof r->why - len, fmt, a, b) < 0) r->why[len] = '\0';
}

static void init_backend(da_registered *r, const da_backend_iface *iface) {
  char why[512] = "";
  int n = iface->init(why, sizeof why);
  if (n < 0) {
    snprintf(r->why, sizeof r->why, "%s", why[0] ? why : da_status_string((da_status)n));
    if (iface->shutdown) iface->shutdown();
    r->iface = NULL;
    r->ndev = 0;
    return;
  }
  r->iface = iface;
  r->ndev = n;
  if (n == 0) snprintf(r->why, sizeof r->why, "%s", why[0] ? why : "no device found");
}

/* dlopen of a module file that da_elf_check has passed. The file is opened
 * once, checked through that descriptor, and then loaded by its path after
 * stat(path) shows the same file (st_dev, st_ino, size, mtime) as the
 * checked descriptor: a file replaced or rewritten during the check is not
 * loaded. dlopen("/proc/self/fd/N") would close the remaining window (a
 * file replaced between the stat and dlopen's own open), but the loaded
 * object would then be named /proc/self/fd/N in the link map, which
 * debuggers, sanitizer symbolizers, dladdr and $ORIGIN read as a path that
 * names another file (or none) once the descriptor is closed; and neither
 * way guards against a file rewritten in place after it is loaded. Returns
 * the handle, or NULL with a reason appended to r->why (none when there is
 * no file at path: the next folder is tried). */
static void *open_module(da_registered *r, const char *path) {
  char why[256];
  /* O_NONBLOCK: a FIFO in the module's place must not block the open. */
  int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) {
    if (errno != ENOENT && errno != ENOTDIR) {
      snprintf(why, sizeof why, "cannot open: %s", strerror(errno));
      append_why(r, "%s: %s; ", path, why);
    }
    return NULL;
  }
  struct stat before, after;
  void *dl = NULL;
  if (fstat(fd, &before) != 0) {
    snprintf(why, sizeof why, "cannot stat: %s", strerror(errno));
    append_why(r, "%s: %s; ", path, why);
  } else if (da_elf_check(fd, why, sizeof why) != 0) {
    append_why(r, "%s: %s; ", path, why);
  } else if (stat(path, &after) != 0 || after.st_dev != before.st_dev ||
             after.st_ino != before.st_ino || after.st_size != before.st_size ||
             after.st_mtime != before.st_mtime) {
    append_why(r, "%s: %s; ", path, "the file changed while it was being checked; not loaded");
  } else {
    dl = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!dl) {
      const char *e = dlerror();
      append_why(r, "%s: %s; ", path, e ? e : "dlopen failed");
    }
  }
  close(fd);
  return dl;
}

/* Tries one module file; returns 1 when it is loaded and initialised, or
 * when its runtime is unusable (the search stops there). */
static int try_module(da_registered *r, da_backend id, const char *name, const char *path) {
  void *dl = open_module(r, path);
  if (!dl) return 0;
  typedef const da_backend_iface *(*entry_fn)(void);
  entry_fn entry;
  void *sym = dlsym(dl, DA_BACKEND_ENTRY);
  memcpy(&entry, &sym, sizeof entry);
  const da_backend_iface *iface = entry ? entry() : NULL;
  char buf[160];
  if (!entry || !iface) {
    append_why(r, "%s: %s; ", path, "not a distrattn backend module (no " DA_BACKEND_ENTRY ")");
  } else if (iface->iface_version != DA_BACKEND_IFACE_VERSION) {
    snprintf(buf, sizeof buf, "interface version %d, this library needs %d", iface->iface_version,
             DA_BACKEND_IFACE_VERSION);
    append_why(r, "%s: %s; ", path, buf);
  } else if (iface->id != id || !iface->name || strcmp(iface->name, name) != 0) {
    append_why(r, "%s: %s; ", path, "module is for another backend");
  } else if (!iface->init || !iface->device_info || !iface->ctx_create || !iface->ctx_destroy ||
             !iface->buf_alloc || !iface->buf_free || !iface->buf_write || !iface->buf_read ||
             !iface->attention || !iface->groups) {
    append_why(r, "%s: %s; ", path, "module lacks a required entry");
  } else {
    r->why[0] = '\0';
    init_backend(r, iface);
    if (r->iface) {
      r->dl = dl;
      return 1;
    }
    /* The runtime is there but unusable (no driver, no platform): keep the
     * module's reason, stop looking. */
    dlclose(dl);
    return 1;
  }
  dlclose(dl);
  return 0;
}

/* ---- where modules are looked for ---- */

/* Folders added by da_backend_add_path (absolute, resolved), and whether a
 * module backend's search has begun: once it has, no folder is added. */
static pthread_mutex_t added_lock = PTHREAD_MUTEX_INITIALIZER;
static char **added_dirs;
static size_t added_n;
static int modules_searched;

/* The longest folder name searched: room for "/distrattn_<name>.so". */
#define DA_DIR_MAX 4000

typedef struct dir_list {
  char **dir;
  struct stat *st; /* st_dev/st_ino of dir[i] when has_st[i] */
  int *has_st;
  size_t n, cap;
} dir_list;

static void dir_list_free(dir_list *l) {
  for (size_t i = 0; i < l->n; i++) free(l->dir[i]);
  free(l->dir);
  free(l->st);
  free(l->has_st);
  memset(l, 0, sizeof *l);
}

/* Appends the first len bytes of dir unless the list already has that
 * folder (the same name, or the same device and inode). 0, or -1 when out
 * of memory. */
static int dir_list_add(dir_list *l, const char *dir, size_t len) {
  if (len == 0 || len > DA_DIR_MAX) return 0;
  char *d = malloc(len + 1);
  if (!d) return -1;
  memcpy(d, dir, len);
  d[len] = '\0';
  struct stat st;
  int has = stat(d, &st) == 0;
  for (size_t i = 0; i < l->n; i++)
    if (strcmp(l->dir[i], d) == 0 ||
        (has && l->has_st[i] && l->st[i].st_dev == st.st_dev && l->st[i].st_ino == st.st_ino)) {
      free(d);
      return 0;
    }
  if (l->n == l->cap) {
    size_t cap = l->cap ? 2 * l->cap : 8;
    char **nd = realloc(l->dir, cap * sizeof *nd);
    if (!nd) goto oom;
    l->dir = nd;
    struct stat *ns = realloc(l->st, cap * sizeof *ns);
    if (!ns) goto oom;
    l->st = ns;
    int *nh = realloc(l->has_st, cap * sizeof *nh);
    if (!nh) goto oom;
    l->has_st = nh;
    l->cap = cap;
  }
  l->dir[l->n] = d;
  if (has) l->st[l->n] = st;
  l->has_st[l->n] = has;
  l->n++;
  return 0;
oom:
  free(d);
  return -1;
}

/* distrattn/backends in the folder of the loaded libdistrattn (or of the
 * program it is linked into), written to out; 0, or -1 when unknown. */
static int beside_library(char *out, size_t len) {
  Dl_info info;
  void *self;
  int (*fn)(da_backend, const char **) = da_backend_available;
  memcpy(&self, &fn, sizeof self);
  if (!dladdr(self, &info) || !info.dli_fname || !strchr(info.dli_fname, '/')) return -1;
  char *real = realpath(info.dli_fname, NULL);
  if (!real) return -1;
  char *slash = strrchr(real, '/');
  *slash = '\0';
  int n = snprintf(out, len, "%s/distrattn/backends", slash == real ? "" : real);
  free(real);
  return n > 0 && (size_t)n < len ? 0 : -1;
}

/* Every folder to search, in order (see the top of this file). 0, or -1
 * when out of memory. */
static int search_dirs(dir_list *l, const char *env) {
  int bad = 0;
  pthread_mutex_lock(&added_lock);
  modules_searched = 1;
  for (size_t i = 0; i < added_n && !bad; i++) bad = dir_list_add(l, added_dirs[i], strlen(added_dirs[i]));
  pthread_mutex_unlock(&added_lock);
  for (const char *p = env; p && *p && !bad;) {
    size_t len = strcspn(p, ":");
    bad = dir_list_add(l, p, len);
    p += len;
    if (*p == ':') p++;
  }
  char self[PATH_MAX + 32];
  if (!bad && beside_library(self, sizeof self) == 0) bad = dir_list_add(l, self, strlen(self));
  if (!bad) bad = dir_list_add(l, DA_BACKEND_DIR, strlen(DA_BACKEND_DIR));
  return bad;
}

static void load_module(da_backend id, const char *name) {
  da_registered *r = &registry[id];
  char file[64];
  snprintf(file, sizeof file, "distrattn_%s.so", name);
  r->why[0] = '\0';
  const char *env = getenv("DISTRATTN_BACKEND_PATH");
  dir_list dirs = {0};
  if (search_dirs(&dirs, env) != 0) {
    dir_list_free(&dirs);
    snprintf(r->why, sizeof r->why, "out of host memory listing the folders to search for %s", file);
    return;
  }
  int found = 0;
  for (size_t i = 0; i < dirs.n && !found; i++) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dirs.dir[i], file);
    found = try_module(r, id, name, path);
  }
  if (!found && !r->why[0]) {
    int n = snprintf(r->why, sizeof r->why, "module %s not found (DISTRATTN_BACKEND_PATH=%s; looked in",
                     file, env ? env : "(unset)");
    for (size_t i = 0; i < dirs.n && n > 0 && (size_t)n < sizeof r->why; i++)
      n += snprintf(r->why + n, sizeof r->why - (size_t)n, "%s %s", i ? "," : "", dirs.dir[i]);
    if (n > 0 && (size_t)n < sizeof r->why) snprintf(r->why + n, sizeof r->why - (size_t)n, ")");
  } else if (!found) {
    size_t n = strlen(r->why);
    if (n >= 2 && r->why[n - 2] == ';') r->why[n - 2] = '\0';
  }
  dir_list_free(&dirs);
}

da_status da_backend_add_path(const char *dir) {
  if (!dir || !*dir) return DA_ERR_INVALID_ARG;
  char *real = realpath(dir, NULL);
  if (!real) return errno == ENOMEM ? DA_ERR_HOST_MEMORY : DA_ERR_INVALID_ARG;
  struct stat st;
  if (stat(real, &st) != 0 || !S_ISDIR(st.st_mode) || strlen(real) > DA_DIR_MAX) {
    free(real);
    return DA_ERR_INVALID_ARG;
  }
  da_status s = DA_SUCCESS;
  pthread_mutex_lock(&added_lock);
  if (modules_searched) {
    s = DA_ERR_UNSUPPORTED;
  } else {
    char **nd = realloc(added_dirs, (added_n + 1) * sizeof *nd);
    if (!nd) {
      s = DA_ERR_HOST_MEMORY;
    } else {
      added_dirs = nd;
      added_dirs[added_n++] = real;
      real = NULL;
    }
  }
  pthread_mutex_unlock(&added_lock);
  free(real);
  return s;
}

static void init_cpu(void) {
  registry[DA_BACKEND_CPU].why[0] = '\0';
  init_backend(&registry[DA_BACKEND_CPU], &da_cpu_backend_iface);
}
static void init_opencl(void) { load_module(DA_BACKEND_OPENCL, "opencl"); }
static void init_cuda(void) { load_module(DA_BACKEND_CUDA, "cuda"); }

static void (*const registry_init[4])(void) = {NULL, init_cpu, init_opencl, init_cuda};

const da_registered *da_registry_get(da_backend b) {
  if (b < DA_BACKEND_CPU || b > DA_BACKEND_CUDA) return NULL;
  pthread_once(&registry_once[b], registry_init[b]);
  return &registry[b];
}

int da_backend_available(da_backend b, const char **why) {
  const da_registered *r = da_registry_get(b);
  if (!r) {
    if (why) *why = "unknown backend";
    return 0;
  }
  int ok = r->iface && r->ndev > 0;
  if (why) *why = ok ? "" : r->why;
  return ok;
}

int da_device_count(void) {
  int n = 0;
  for (int b = DA_BACKEND_CPU; b <= DA_BACKEND_CUDA; b++) {
    const da_registered *r = da_registry_get((da_backend)b);
    if (r->iface) n += r->ndev;
  }
  return n;
}

da_status da_device_get_info(int i, da_device_info *out) {
  if (!out || i < 0) return DA_ERR_INVALID_ARG;
  for (int b = DA_BACKEND_CPU; b <= DA_BACKEND_CUDA; b++) {
    const da_registered *r = da_registry_get((da_backend)b);
    if (!r->iface) continue;
    if (i < r->ndev) {
      int rank;
      memset(out, 0, sizeof *out);
      da_status s = r->iface->device_info(i, out, &rank);
      out->backend = (da_backend)b;
      out->index = i;
      return s;
    }
    i -= r->ndev;
  }
  return DA_ERR_NO_DEVICE;
}
