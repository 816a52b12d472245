/* SPDX-License-Identifier: Apache-2.0 */
/* The backend registry: the built-in CPU backend and the backend modules
 * (distrattn_<name>.so) found in DISTRATTN_BACKEND_PATH's folders and in the
 * installed module folder. Each backend is initialised once, by the first
 * call that needs it (pthread_once per backend), and read-only after that:
 * a program that only uses the CPU backend never loads the OpenCL module
 * (libOpenCL, and PoCL with its signal handlers) or the CUDA module. Calls
 * that need every backend (device enumeration, DA_BACKEND_AUTO without
 * DISTRATTN_BACKEND) initialise them all. */
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
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
  snprintf(r->why + len, sizeof r->why - len, fmt, a, b);
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

static void load_module(da_backend id, const char *name) {
  da_registered *r = &registry[id];
  char file[64];
  snprintf(file, sizeof file, "distrattn_%s.so", name);
  r->why[0] = '\0';
  int found = 0;
  const char *env = getenv("DISTRATTN_BACKEND_PATH");
  if (env && *env) {
    char *paths = strdup(env), *save = NULL;
    if (paths) {
      for (char *dir = strtok_r(paths, ":", &save); dir && !found; dir = strtok_r(NULL, ":", &save)) {
        if (!*dir) continue;
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", dir, file);
        found = try_module(r, id, name, path);
      }
      free(paths);
    }
  }
  if (!found) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", DA_BACKEND_DIR, file);
    found = try_module(r, id, name, path);
  }
  if (!found && !r->why[0])
    snprintf(r->why, sizeof r->why, "module %s not found (looked in DISTRATTN_BACKEND_PATH=%s and %s)",
             file, env ? env : "(unset)", DA_BACKEND_DIR);
  else if (!found) {
    size_t n = strlen(r->why);
    if (n >= 2 && r->why[n - 2] == ';') r->why[n - 2] = '\0';
  }
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
