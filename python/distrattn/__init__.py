# SPDX-License-Identifier: Apache-2.0
"""distrattn: transformer attention (exact and DistrAttention) from Python.

A pure-Python (ctypes) binding of libdistrattn. The library is found through
$DISTRATTN_LIB (a path to libdistrattn.so) or the dynamic loader's search
(see distrattn._lib), on first use: importing this package needs neither the
library nor numpy nor torch.

numpy:   distrattn.attention(q, k, v, causal=..., group_size=...)
PyTorch: distrattn.torch.attention(q, k, v, ...)  (imports torch; the op is
         torch.ops.distrattn.attention)
"""
import collections
import ctypes as C

from . import _lib
from ._core import clear_cache, plan_cache_size, set_plan_cache_size
from ._errors import (BackendError, BuildError, DeviceMemory, Error, HostMemory, InvalidArgument,
                      LibraryNotFound, NoDevice, Unsupported)
from ._numpy import attention, groups

__version__ = "0.1.0"

__all__ = ["attention", "groups", "devices", "backend_available", "version", "library_path",
           "load_library", "add_backend_path", "clear_cache", "plan_cache_size",
           "set_plan_cache_size", "Device", "Error", "InvalidArgument", "HostMemory",
           "DeviceMemory", "NoDevice", "Unsupported", "BuildError", "BackendError",
           "LibraryNotFound"]

Device = collections.namedtuple("Device", "backend index name vendor global_mem has_fp16 has_bf16")
Device.__doc__ = """A device as da_device_get_info describes it. backend: 'cpu', 'opencl' or
'cuda'; index: its index within that backend (the `device` argument with that
backend); global_mem in bytes."""


def version():
    """The loaded library's version string (da_version_string), e.g. '0.1.0'."""
    return _lib.load().da_version_string().decode()


def library_path():
    """The path or name libdistrattn was loaded from."""
    return _lib.path()


def load_library(path):
    """Load libdistrattn from `path` now (instead of $DISTRATTN_LIB or the
    loader's search). Only before the library was first used."""
    _lib.load(path)


def devices():
    """Every device of every available backend, in the library's order
    (backend, then index). Enumerating loads every backend module."""
    lib = _lib.load()
    out = []
    for i in range(lib.da_device_count()):
        info = _lib.DeviceInfo()
        if lib.da_device_get_info(i, C.byref(info)) != 0:
            continue
        out.append(Device(_lib.BACKEND_NAMES.get(info.backend, str(info.backend)), info.index,
                          info.name.decode(errors="replace"), info.vendor.decode(errors="replace"),
                          info.global_mem, bool(info.has_fp16), bool(info.has_bf16)))
    return out


def backend_available(name, *, reason=False):
    """Whether the backend 'cpu', 'opencl' or 'cuda' is loaded and has a
    device (da_backend_available). reason=True: (available, why) with the
    library's reason when it is not (module not found, no device, ...)."""
    from ._core import backend_code
    b = backend_code(name)
    if b == _lib.DA_BACKEND_AUTO:
        raise InvalidArgument("backend_available needs 'cpu', 'opencl' or 'cuda', not 'auto'",
                              "backend_available")
    why = C.c_char_p()
    ok = bool(_lib.load().da_backend_available(b, C.byref(why)))
    if reason:
        return ok, (None if ok else (why.value or b"").decode(errors="replace"))
    return ok


def add_backend_path(folder):
    """Search `folder` first for backend modules (da_backend_add_path); only
    before the OpenCL or CUDA module was first looked for."""
    from ._core import check
    lib = _lib.load()
    check(lib.da_backend_add_path(str(folder).encode()), None, "da_backend_add_path")


def __getattr__(name):
    # distrattn.torch on demand: importing distrattn must not import torch
    if name == "torch":
        import importlib
        return importlib.import_module(".torch", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
