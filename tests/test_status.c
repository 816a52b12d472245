/* SPDX-License-Identifier: Apache-2.0 */
/* Status strings, version string and backend names. */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

static const da_status all_status[] = {DA_SUCCESS,         DA_ERR_INVALID_ARG, DA_ERR_HOST_MEMORY,
                                       DA_ERR_DEVICE_MEMORY, DA_ERR_NO_DEVICE, DA_ERR_UNSUPPORTED,
                                       DA_ERR_BUILD,       DA_ERR_BACKEND};
#define N_STATUS (sizeof all_status / sizeof all_status[0])

static void test_status_strings_distinct(void **state) {
  (void)state;
  for (size_t i = 0; i < N_STATUS; i++) {
    const char *s = da_status_string(all_status[i]);
    if (!s || !*s) fail_msg("da_status_string(%d) is NULL or empty", (int)all_status[i]);
    for (size_t j = 0; j < i; j++)
      if (strcmp(s, da_status_string(all_status[j])) == 0)
        fail_msg("da_status_string(%d) == da_status_string(%d) == \"%s\"", (int)all_status[i],
                 (int)all_status[j], s);
  }
}

static void test_status_unknown(void **state) {
  (void)state;
  const int unknown[] = {1, 2, -8, -100, 12345, -2147483647 - 1, 2147483647};
  for (size_t i = 0; i < sizeof unknown / sizeof unknown[0]; i++) {
    const char *s = da_status_string((da_status)unknown[i]);
    if (!s || !*s) fail_msg("da_status_string(%d) is NULL or empty", unknown[i]);
    for (size_t j = 0; j < N_STATUS; j++)
      if (strcmp(s, da_status_string(all_status[j])) == 0)
        fail_msg("unknown status %d reads as the known status %d (\"%s\")", unknown[i],
                 (int)all_status[j], s);
  }
}

static void test_version_string(void **state) {
  (void)state;
  char want[64];
  snprintf(want, sizeof want, "%d.%d.%d", DISTRATTN_VERSION_MAJOR, DISTRATTN_VERSION_MINOR,
           DISTRATTN_VERSION_PATCH);
  const char *v = da_version_string();
  assert_non_null(v);
  assert_string_equal(v, want);
#ifdef PACKAGE_VERSION
  /* configure.ac's version and the header's agree */
  assert_string_equal(v, PACKAGE_VERSION);
#endif
}

static void test_backend_names(void **state) {
  (void)state;
  const char *want[] = {"auto", "cpu", "opencl", "cuda"};
  for (int b = 0; b < 4; b++) {
    const char *n = da_backend_name((da_backend)b);
    assert_non_null(n);
    assert_string_equal(n, want[b]);
  }
  const char *u = da_backend_name((da_backend)42);
  assert_non_null(u);
  assert_true(*u != '\0');
  const char *why = NULL;
  assert_int_equal(da_backend_available((da_backend)42, &why), 0);
  assert_non_null(why);
  assert_true(*why != '\0');
  /* the built-in CPU backend is always there */
  why = NULL;
  if (!da_backend_available(DA_BACKEND_CPU, &why))
    fail_msg("CPU backend unavailable: %s", why ? why : "(no reason)");
  assert_true(da_device_count() >= 1);
}

/* Every listed device describes itself; da_context_create with an index
 * from the global list (AUTO) lands on that device's backend. */
static void test_devices(void **state) {
  (void)state;
  int n = da_device_count();
  assert_true(n >= 1);
  int per_backend[4] = {0, 0, 0, 0};
  da_backend prev = DA_BACKEND_CPU;
  for (int i = 0; i < n; i++) {
    da_device_info info;
    memset(&info, 0x5a, sizeof info);
    da_status s = da_device_get_info(i, &info);
    if (s != DA_SUCCESS) fail_msg("da_device_get_info(%d) -> %s", i, da_status_string(s));
    if (info.backend < DA_BACKEND_CPU || info.backend > DA_BACKEND_CUDA)
      fail_msg("device %d: backend %d", i, (int)info.backend);
    if (info.backend < prev) fail_msg("device %d: list not ordered by backend", i);
    prev = info.backend;
    if (info.index != per_backend[info.backend])
      fail_msg("device %d: index %d, expected %d", i, info.index, per_backend[info.backend]);
    per_backend[info.backend]++;
    if (!memchr(info.name, 0, sizeof info.name) || !info.name[0])
      fail_msg("device %d: name empty or not terminated", i);
    if (!memchr(info.vendor, 0, sizeof info.vendor))
      fail_msg("device %d: vendor not terminated", i);
    da_context *ctx = NULL;
    s = da_context_create(&ctx, DA_BACKEND_AUTO, i);
    if (s != DA_SUCCESS) fail_msg("da_context_create(AUTO, %d) -> %s", i, da_status_string(s));
    assert_int_equal(da_context_backend(ctx), info.backend);
    da_device_info ci;
    assert_int_equal(da_context_get_device_info(ctx, &ci), DA_SUCCESS);
    assert_int_equal(ci.backend, info.backend);
    assert_int_equal(ci.index, info.index);
    assert_string_equal(ci.name, info.name);
    da_context_destroy(ctx);
  }
  for (int b = DA_BACKEND_CPU; b <= DA_BACKEND_CUDA; b++)
    assert_int_equal(per_backend[b] > 0, da_backend_available((da_backend)b, NULL));
  da_device_info info;
  assert_int_not_equal(da_device_get_info(n, &info), DA_SUCCESS);
}

/* DISTRATTN_BACKEND steers DA_BACKEND_AUTO. */
static void test_auto_backend_env(void **state) {
  (void)state;
  char *saved = getenv("DISTRATTN_BACKEND") ? strdup(getenv("DISTRATTN_BACKEND")) : NULL;
  char *saved_dev = getenv("DISTRATTN_DEVICE") ? strdup(getenv("DISTRATTN_DEVICE")) : NULL;
  unsetenv("DISTRATTN_DEVICE");
  da_context *ctx = NULL;
  setenv("DISTRATTN_BACKEND", "cpu", 1);
  assert_int_equal(da_context_create(&ctx, DA_BACKEND_AUTO, -1), DA_SUCCESS);
  assert_int_equal(da_context_backend(ctx), DA_BACKEND_CPU);
  da_context_destroy(ctx);
  ctx = NULL;
  setenv("DISTRATTN_BACKEND", "no-such-backend", 1);
  assert_int_not_equal(da_context_create(&ctx, DA_BACKEND_AUTO, -1), DA_SUCCESS);
  assert_null(ctx);
  unsetenv("DISTRATTN_BACKEND");
  assert_int_equal(da_context_create(&ctx, DA_BACKEND_AUTO, -1), DA_SUCCESS);
  da_backend b = da_context_backend(ctx);
  assert_true(da_backend_available(b, NULL));
  da_context_destroy(ctx);
  if (saved) setenv("DISTRATTN_BACKEND", saved, 1);
  if (saved_dev) setenv("DISTRATTN_DEVICE", saved_dev, 1);
  free(saved);
  free(saved_dev);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_status_strings_distinct),
      cmocka_unit_test(test_status_unknown),
      cmocka_unit_test(test_version_string),
      cmocka_unit_test(test_backend_names),
      cmocka_unit_test(test_devices),
      cmocka_unit_test(test_auto_backend_env),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
