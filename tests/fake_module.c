/* SPDX-License-Identifier: Apache-2.0 */
/* A fake backend module for tests/test_modules: built as
 * tests/.libs/distrattn_opencl.so (check_LTLIBRARIES, never installed). What
 * distrattn_backend_entry returns is chosen by DA_FAKE_MODULE, so one file
 * gives every kind of bad module:
 *   version (default)  a well-formed iface of interface version 999
 *   null               the entry returns NULL
 *   other              an iface that says it is the CUDA backend
 *   partial            interface version 1 but no entries
 *   noruntime          the current interface version, init fails with a reason
 *   wrap               a working backend of one device whose buffers are host
 *                      memory: buf_free aborts on a handle it did not allocate
 *                      and buf_unwrap on one it did, so a core that frees what
 *                      the caller owns (or leaks a wrap's release) kills the
 *                      process (tests/test_modules, test_wrap_ownership) */
#include <stdlib.h>
#include <string.h>

#include "da_backend.h"

#if defined(__GNUC__)
#define FAKE_EXPORT __attribute__((visibility("default")))
#else
#define FAKE_EXPORT
#endif

static int fake_init(char *why, size_t len) {
  snprintf(why, len, "fake module: its runtime is missing");
  return DA_ERR_NO_DEVICE;
}

static da_status fake_info(int i, da_device_info *o, int *rank) { return DA_ERR_NO_DEVICE; }
static da_status fake_ctx(da_context *c, int i, const da_overrides *ov, void **bctx,
                          da_device_info *info) {
  return DA_ERR_NO_DEVICE;
}
static void fake_ctx_destroy(void *bctx) {}
static da_status fake_alloc(da_context *c, size_t n, void **h) { return DA_ERR_DEVICE_MEMORY; }
static void fake_free(da_context *c, void *h) {}
static da_status fake_rw(da_context *c, void *h, size_t off, const void *p, size_t n) {
  return DA_ERR_BACKEND;
}
static da_status fake_rd(da_context *c, void *h, size_t off, void *p, size_t n) {
  return DA_ERR_BACKEND;
}
static da_status fake_attn(const da_plan *p, void *q, void *k, void *v, void *o) {
  return DA_ERR_BACKEND;
}
static da_status fake_groups(const da_plan *p, void *q, void *perm) { return DA_ERR_BACKEND; }

/* ---- "wrap": buffers as host memory, with a record of what it allocated ---- */
#define WRAP_MAX 64
static void *wrap_owned[WRAP_MAX];
static int wrap_init(char *why, size_t len) { return 1; }
static da_status wrap_info(int i, da_device_info *o, int *rank) {
  if (i != 0) return DA_ERR_NO_DEVICE;
  memset(o, 0, sizeof *o);
  snprintf(o->name, sizeof o->name, "fake wrap device");
  if (rank) *rank = 1;
  return DA_SUCCESS;
}
static da_status wrap_ctx(da_context *c, int i, const da_overrides *ov, void **bctx,
                          da_device_info *info) {
  return DA_SUCCESS;
}
static da_status wrap_ctx_wrap(da_context *c, void *q, const da_overrides *ov, void **bctx,
                               int *index, da_device_info *info) {
  if (!q) return DA_ERR_INVALID_ARG;
  *index = 0;
  snprintf(info->name, sizeof info->name, "fake wrap device");
  return DA_SUCCESS;
}
static int wrap_slot(void *h) {
  for (int i = 0; i < WRAP_MAX; i++)
    if (h && wrap_owned[i] == h) return i;
  return -1;
}
static da_status wrap_alloc(da_context *c, size_t n, void **h) {
  int i = wrap_slot(NULL);
  for (i = 0; i < WRAP_MAX && wrap_owned[i]; i++) {}
  if (i == WRAP_MAX || !(*h = malloc(n))) return DA_ERR_HOST_MEMORY;
  wrap_owned[i] = *h;
  return DA_SUCCESS;
}
static void wrap_free(da_context *c, void *h) {
  int i = wrap_slot(h);
  if (i < 0) abort(); /* asked to free memory this backend did not allocate */
  wrap_owned[i] = NULL;
  free(h);
}
static da_status wrap_rw(da_context *c, void *h, size_t off, const void *p, size_t n) {
  memcpy((char *)h + off, p, n);
  return DA_SUCCESS;
}
static da_status wrap_rd(da_context *c, void *h, size_t off, void *p, size_t n) {
  memcpy(p, (char *)h + off, n);
  return DA_SUCCESS;
}
static da_status wrap_wrap(da_context *c, void *native, size_t n, void **h, da_mem_range *r) {
  *h = native;
  r->base = NULL;
  r->offset = (uintptr_t)native;
  return DA_SUCCESS;
}
static void wrap_unwrap(da_context *c, void *h) {
  if (wrap_slot(h) >= 0) abort(); /* a wrap's release on memory it allocated */
}
static const da_backend_iface fake_wrap = {
    .iface_version = DA_BACKEND_IFACE_VERSION, .id = DA_BACKEND_OPENCL, .name = "opencl",
    .init = wrap_init, .device_info = wrap_info, .ctx_create = wrap_ctx,
    .ctx_destroy = fake_ctx_destroy, .ctx_wrap = wrap_ctx_wrap, .buf_alloc = wrap_alloc,
    .buf_free = wrap_free, .buf_write = wrap_rw, .buf_read = wrap_rd, .buf_wrap = wrap_wrap,
    .buf_unwrap = wrap_unwrap, .attention = fake_attn, .groups = fake_groups};

#define FULL                                                                                     \
  .init = fake_init, .device_info = fake_info, .ctx_create = fake_ctx,                         \
  .ctx_destroy = fake_ctx_destroy, .buf_alloc = fake_alloc, .buf_free = fake_free,             \
  .buf_write = fake_rw, .buf_read = fake_rd, .attention = fake_attn, .groups = fake_groups

static const da_backend_iface fake_v999 = {
    .iface_version = 999, .id = DA_BACKEND_OPENCL, .name = "opencl", FULL};
static const da_backend_iface fake_other = {
    .iface_version = DA_BACKEND_IFACE_VERSION, .id = DA_BACKEND_CUDA, .name = "cuda", FULL};
static const da_backend_iface fake_partial = {
    .iface_version = DA_BACKEND_IFACE_VERSION, .id = DA_BACKEND_OPENCL, .name = "opencl"};
static const da_backend_iface fake_noruntime = {
    .iface_version = DA_BACKEND_IFACE_VERSION, .id = DA_BACKEND_OPENCL, .name = "opencl", FULL};

FAKE_EXPORT const da_backend_iface *distrattn_backend_entry(void);

const da_backend_iface *distrattn_backend_entry(void) {
  const char *m = getenv("DA_FAKE_MODULE");
  if (!m || !*m || strcmp(m, "version") == 0) return &fake_v999;
  if (strcmp(m, "null") == 0) return NULL;
  if (strcmp(m, "other") == 0) return &fake_other;
  if (strcmp(m, "partial") == 0) return &fake_partial;
  if (strcmp(m, "wrap") == 0) return &fake_wrap;
  return &fake_noruntime;
}
