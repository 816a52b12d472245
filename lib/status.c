/* SPDX-License-Identifier: Apache-2.0 */
/* Version and status strings. */
#include "da_internal.h"

#define DA_STR2(x) #x
#define DA_STR(x) DA_STR2(x)

const char *da_version_string(void) {
  return DA_STR(DISTRATTN_VERSION_MAJOR) "." DA_STR(DISTRATTN_VERSION_MINOR) "." DA_STR(
      DISTRATTN_VERSION_PATCH);
}

const char *da_status_string(da_status s) {
  switch (s) {
  case DA_SUCCESS: return "success";
  case DA_ERR_INVALID_ARG: return "invalid argument";
  case DA_ERR_HOST_MEMORY: return "out of host memory";
  case DA_ERR_DEVICE_MEMORY: return "out of device memory";
  case DA_ERR_NO_DEVICE: return "no such device";
  case DA_ERR_UNSUPPORTED: return "unsupported on this backend or device";
  case DA_ERR_BUILD: return "kernel build failed";
  case DA_ERR_BACKEND: return "backend runtime error";
  }
  return "unknown status";
}

const char *da_backend_name(da_backend b) {
  switch (b) {
  case DA_BACKEND_AUTO: return "auto";
  case DA_BACKEND_CPU: return "cpu";
  case DA_BACKEND_OPENCL: return "opencl";
  case DA_BACKEND_CUDA: return "cuda";
  }
  return "unknown";
}
