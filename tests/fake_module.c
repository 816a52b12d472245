/* A fake backend module for tests/test_modules: built as
 * tests/.libs/distrattn_opencl.so (check_LTLIBRARIES, never installed). What
 * distrattn_backend_entry returns is chosen by DA_FAKE_MODULE, so one file
 * gives every kind of bad module:
 *   version (default)  a well-formed iface of interface version 999
 *   null               the entry returns NULL
 *   other              an iface that says it is the CUDA backend
 *   partial            interface version 1 but no entries
 *   noruntime          interface version 1, init fails with a reason */
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
static da_status fake_ctx(da_context *c, int i) { return DA_ERR_NO_DEVICE; }
static void fake_ctx_destroy(da_context *c) {}
static da_status fake_alloc(da_context *c, size_t n, void **h) { return DA_ERR_DEVICE_MEMORY; }
static void fake_free(da_context *c, void *h) {}
static da_status fake_rw(da_context *c, void *h, size_t off, const void *p, size_t n) {
  return DA_ERR_BACKEND;
}
static da_status fake_rd(da_context *c, void *h, size_t off, void *p, size_t n) {
  return DA_ERR_BACKEND;
}
static da_status fake_attn(da_plan *p, void *q, void *k, void *v, void *o) { return DA_ERR_BACKEND; }
static da_status fake_groups(da_plan *p, void *q, void *perm) { return DA_ERR_BACKEND; }

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
  return &fake_noruntime;
}
