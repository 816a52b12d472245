# SPDX-License-Identifier: Apache-2.0
"""ctypes bindings of libdistrattn (include/distrattn.h), loaded on first use.

The library is found, in this order, at:
  1. $DISTRATTN_LIB, a path to libdistrattn.so (an error if it does not load);
  2. ctypes.util.find_library("distrattn") (ldconfig's cache, LD_LIBRARY_PATH);
  3. the dynamic loader's own search for "libdistrattn.so.0", then
     "libdistrattn.so" (LD_LIBRARY_PATH, RUNPATH, ld.so.conf);
or wherever load() was told (distrattn.load_library(path)).
"""
import ctypes as C
import ctypes.util
import os
import sys
import threading

from ._errors import LibraryNotFound

# enums of distrattn.h
DA_SUCCESS = 0
DA_BACKEND_AUTO, DA_BACKEND_CPU, DA_BACKEND_OPENCL, DA_BACKEND_CUDA = 0, 1, 2, 3
DA_F32, DA_F16, DA_BF16 = 0, 1, 2
DA_FUSE_MEAN, DA_FUSE_NORM = 0, 1
DA_ALGO_AUTO, DA_ALGO_FUSED, DA_ALGO_GEMM = 0, 1, 2
DA_STRATEGY_TILE_LSH, DA_STRATEGY_PROJECTION = 0, 1

BACKENDS = {"auto": DA_BACKEND_AUTO, "cpu": DA_BACKEND_CPU, "opencl": DA_BACKEND_OPENCL,
            "cuda": DA_BACKEND_CUDA}
BACKEND_NAMES = {v: k for k, v in BACKENDS.items()}
FUSIONS = {"mean": DA_FUSE_MEAN, "norm": DA_FUSE_NORM}
ALGOS = {"auto": DA_ALGO_AUTO, "fused": DA_ALGO_FUSED, "gemm": DA_ALGO_GEMM}

vp = C.c_void_p


class Desc(C.Structure):
    """da_attn_desc."""
    _fields_ = [("batch", C.c_int), ("heads", C.c_int), ("kv_heads", C.c_int),
                ("seq_q", C.c_int), ("seq_k", C.c_int), ("head_dim", C.c_int),
                ("dtype", C.c_int), ("causal", C.c_int), ("scale", C.c_float),
                ("group_size", C.c_int), ("hash_bits", C.c_int), ("hash_block", C.c_int),
                ("fusion", C.c_int), ("seed", C.c_ulonglong), ("algo", C.c_int)]

    def key(self):
        return tuple(getattr(self, f) for f, _ in self._fields_)


class AttnExt(C.Structure):
    """da_attn_ext."""
    _fields_ = [("struct_size", C.c_size_t), ("q_stride", C.c_longlong * 3),
                ("k_stride", C.c_longlong * 3), ("v_stride", C.c_longlong * 3),
                ("o_stride", C.c_longlong * 3), ("seqlens", C.c_int), ("lse", C.c_int),
                ("window_left", C.c_int), ("window_right", C.c_int),
                # appended (SPEC 1c): grouping strategy, rank, [heads][2][head_dim][rank] f32
                ("strategy", C.c_int), ("rank", C.c_int), ("proj", C.c_void_p)]


class AttnArgs(C.Structure):
    """da_attn_args."""
    _fields_ = [("struct_size", C.c_size_t), ("q", C.c_void_p), ("k", C.c_void_p),
                ("v", C.c_void_p), ("o", C.c_void_p), ("q_offset", C.c_size_t),
                ("k_offset", C.c_size_t), ("v_offset", C.c_size_t), ("o_offset", C.c_size_t),
                ("seqlens_k", C.c_void_p), ("cu_seqlens_q", C.c_void_p),
                ("cu_seqlens_k", C.c_void_p), ("rows_q", C.c_size_t), ("rows_k", C.c_size_t),
                ("lse", C.c_void_p), ("lse_offset", C.c_size_t)]


class BwdArgs(C.Structure):
    """da_bwd_args."""
    _fields_ = [("struct_size", C.c_size_t), ("dout", C.c_void_p), ("q", C.c_void_p),
                ("k", C.c_void_p), ("v", C.c_void_p), ("o", C.c_void_p), ("lse", C.c_void_p),
                ("dq", C.c_void_p), ("dk", C.c_void_p), ("dv", C.c_void_p),
                ("dout_offset", C.c_size_t), ("q_offset", C.c_size_t),
                ("k_offset", C.c_size_t), ("v_offset", C.c_size_t), ("o_offset", C.c_size_t),
                ("lse_offset", C.c_size_t), ("dq_offset", C.c_size_t),
                ("dk_offset", C.c_size_t), ("dv_offset", C.c_size_t)]


def new_struct(cls, **fields):
    """A zeroed cls with struct_size set to ctypes' size of it and the given
    fields. The C _init functions are not used: they clear the library's
    sizeof, which is larger than these structs once the library has
    appended fields (heap corruption in the caller's memory)."""
    s = cls()
    s.struct_size = C.sizeof(cls)
    for name, value in fields.items():
        setattr(s, name, value)
    return s


class DeviceInfo(C.Structure):
    """da_device_info."""
    _fields_ = [("backend", C.c_int), ("index", C.c_int), ("name", C.c_char * 128),
                ("vendor", C.c_char * 128), ("global_mem", C.c_ulonglong),
                ("has_fp16", C.c_int), ("has_bf16", C.c_int)]


_PROTOS = {
    # name: (restype, argtypes)
    "da_version_string": (C.c_char_p, []),
    "da_status_string": (C.c_char_p, [C.c_int]),
    "da_attn_desc_init": (None, [C.POINTER(Desc)]),
    "da_device_count": (C.c_int, []),
    "da_device_get_info": (C.c_int, [C.c_int, C.POINTER(DeviceInfo)]),
    "da_context_create": (C.c_int, [C.POINTER(vp), C.c_int, C.c_int]),
    "da_context_destroy": (None, [vp]),
    "da_context_backend": (C.c_int, [vp]),
    "da_context_last_error": (C.c_char_p, [vp]),
    "da_context_synchronize": (C.c_int, [vp]),
    "da_context_get_device_info": (C.c_int, [vp, C.POINTER(DeviceInfo)]),
    "da_plan_create": (C.c_int, [vp, C.POINTER(Desc), C.POINTER(vp)]),
    "da_plan_destroy": (None, [vp]),
    "da_plan_get_desc": (C.c_int, [vp, C.POINTER(Desc)]),
    "da_attention_host": (C.c_int, [vp, vp, vp, vp, vp]),
    "da_plan_groups_host": (C.c_int, [vp, vp, vp]),
    "da_buffer_destroy": (None, [vp]),
    "da_attention": (C.c_int, [vp, vp, vp, vp, vp]),
    "da_backend_available": (C.c_int, [C.c_int, C.POINTER(C.c_char_p)]),
    "da_backend_name": (C.c_char_p, [C.c_int]),
    "da_backend_add_path": (C.c_int, [C.c_char_p]),
    "da_context_wrap": (C.c_int, [C.POINTER(vp), C.c_int, vp]),
    "da_buffer_wrap": (C.c_int, [vp, vp, C.c_size_t, C.POINTER(vp)]),
    "da_buffer_native": (vp, [vp]),
    "da_attn_ext_init": (None, [C.POINTER(AttnExt)]),
    "da_attn_args_init": (None, [C.POINTER(AttnArgs)]),
    "da_plan_create_ext": (C.c_int, [vp, C.POINTER(Desc), C.POINTER(AttnExt), C.POINTER(vp)]),
    "da_attention_ext": (C.c_int, [vp, C.POINTER(AttnArgs)]),
    "da_bwd_args_init": (None, [C.POINTER(BwdArgs)]),
    "da_attention_backward": (C.c_int, [vp, C.POINTER(BwdArgs)]),
}

_lock = threading.Lock()
_lib = None
_path = None


def _candidates():
    env = os.environ.get("DISTRATTN_LIB")
    if env:
        return [env], True
    names = []
    found = ctypes.util.find_library("distrattn")
    if found:
        names.append(found)
    if sys.platform == "darwin":
        names += ["libdistrattn.0.dylib", "libdistrattn.dylib"]
    else:
        names += ["libdistrattn.so.0", "libdistrattn.so"]
    return names, False


def _bind(lib):
    for name, (res, args) in _PROTOS.items():
        f = getattr(lib, name)
        f.restype = res
        f.argtypes = args
    return lib


def load(path=None):
    """The loaded library (a ctypes.CDLL), loading it on the first call.

    path: load this file instead of searching (only before the first load;
    afterwards it must name the library already loaded or be None)."""
    global _lib, _path
    if _lib is not None and path is None:
        return _lib
    with _lock:
        if _lib is not None:
            if path is not None and os.path.realpath(path) != os.path.realpath(_path):
                raise LibraryNotFound(f"libdistrattn is already loaded from {_path}; "
                                      f"cannot switch to {path}")
            return _lib
        if path is not None:
            names, strict = [path], True
        else:
            names, strict = _candidates()
        why = []
        for n in names:
            try:
                lib = C.CDLL(n)
                lib.da_version_string  # noqa: B018 (is it ours?)
            except (OSError, AttributeError) as e:
                why.append(f"{n}: {e}")
                if strict:
                    break
                continue
            _lib, _path = _bind(lib), n
            return _lib
        hint = ("DISTRATTN_LIB names a library that does not load" if strict else
                "set DISTRATTN_LIB to the path of libdistrattn.so, or install the library "
                "where the dynamic loader finds it")
        raise LibraryNotFound(f"libdistrattn not found ({hint}): " + "; ".join(why))


def path():
    """Where the library was loaded from (loading it if needed)."""
    load()
    return _path
