# SPDX-License-Identifier: Apache-2.0
"""The numpy API: distrattn.attention and distrattn.groups on host arrays."""
import ctypes as C

from . import _core, _lib
from ._errors import InvalidArgument


def _dtype_code(np, dt):
    if dt == np.float32:
        return _lib.DA_F32
    if dt == np.float16:
        return _lib.DA_F16
    if dt.name == "bfloat16":
        try:
            import ml_dtypes
        except ImportError:
            ml_dtypes = None
        if ml_dtypes is not None and dt == np.dtype(ml_dtypes.bfloat16):
            return _lib.DA_BF16
    return None


def _dtypes_text():
    try:
        import ml_dtypes  # noqa: F401
        return "float32, float16 or bfloat16 (ml_dtypes)"
    except ImportError:
        return "float32 or float16 (bfloat16 needs the ml_dtypes package)"


def _prepare(np, name, a, what):
    """a as a C-contiguous native-byte-order ndarray (copied only if not)."""
    if not isinstance(a, np.ndarray):
        raise InvalidArgument(f"{name} must be a numpy.ndarray, not {type(a).__name__}", what)
    if a.dtype.kind == "f" and not a.dtype.isnative:
        a = a.astype(a.dtype.newbyteorder("="))
    return np.ascontiguousarray(a)


def attention(q, k, v, *, causal=False, scale=None, group_size=1, backend=None, device=None,
              fusion=None, hash_bits=None, hash_block=None, seed=0, algo=None, out=None):
    """Attention over numpy arrays in scaled_dot_product_attention's layout.

    q: (batch, heads, seq_q, head_dim); k, v: (batch, kv_heads, seq_k,
    head_dim), kv_heads dividing heads (GQA/MQA: query head h reads kv head
    h // (heads // kv_heads)). One dtype for all three: float32, float16, or
    bfloat16 (ml_dtypes.bfloat16, when ml_dtypes is installed). An array that
    is not C-contiguous (a transposed view, a slice) is copied to a
    contiguous one first; contiguous arrays are passed to the library as they
    are.

    causal: the bottom-right aligned causal mask (key j visible to query i
        iff j <= i + seq_k - seq_q; a row that sees no key gets zeros).
    scale: the logits' multiplier; None = 1/sqrt(head_dim).
    group_size: 1 = exact attention; 2, 4, 8 = DistrAttention (grouped
        head-dim columns; an approximation of the logits, SPEC.md 1).
    fusion: 'mean' or 'norm' (DistrAttention's column fusion); None = the
        library's default. hash_bits (1..32, None = 16), hash_block (a power
        of two in 16..1024, None = 128) and seed (0..2^64-1) are
        DistrAttention's hashing parameters, part of the result.
    algo: None/'auto', 'fused' (no seq_q x seq_k matrix) or 'gemm' (through
        the backend's BLAS).
    backend: 'cpu', 'opencl', 'cuda', or None/'auto' (the library's choice;
        DISTRATTN_BACKEND and DISTRATTN_DEVICE steer it). device: the device
        index within that backend (None = its best); with backend None an
        index into distrattn.devices().
    out: an array of q's shape and dtype, C-contiguous, to write the result
        into (returned); None = a new array.

    Device backends copy the arrays to the device and the result back
    (da_attention_host). Raises InvalidArgument (also a ValueError) for bad
    shapes, dtypes and arguments, and the distrattn.Error subclass of the
    library's status otherwise, with da_context_last_error's message."""
    import numpy as np

    what = "attention"
    q = _prepare(np, "q", q, what)
    k = _prepare(np, "k", k, what)
    v = _prepare(np, "v", v, what)
    if not (q.dtype == k.dtype == v.dtype):
        raise InvalidArgument(f"q, k and v must have one dtype, not {q.dtype}, {k.dtype}, "
                              f"{v.dtype}", what)
    code = _dtype_code(np, q.dtype)
    if code is None:
        raise InvalidArgument(f"dtype {q.dtype} is not supported: {_dtypes_text()}", what)
    d = _core.make_desc(q.shape, k.shape, v.shape, code, causal=causal, scale=scale,
                        group_size=group_size, fusion=fusion, hash_bits=hash_bits,
                        hash_block=hash_block, seed=seed, algo=algo, what=what)
    if out is None:
        o = np.empty(q.shape, q.dtype)
    else:
        if not isinstance(out, np.ndarray):
            raise InvalidArgument(f"out must be a numpy.ndarray, not {type(out).__name__}", what)
        if out.shape != q.shape or out.dtype != q.dtype:
            raise InvalidArgument(f"out has shape {out.shape} and dtype {out.dtype}; expected "
                                  f"q's, {q.shape} and {q.dtype}", what)
        if not out.flags.c_contiguous or not out.flags.writeable:
            raise InvalidArgument("out must be C-contiguous and writeable", what)
        for name, a in (("q", q), ("k", k), ("v", v)):
            if np.may_share_memory(out, a):
                raise InvalidArgument(f"out overlaps {name}", what)
        o = out
    lib = _lib.load()
    with _core.locked(lambda: _core.host_context(backend, device)) as ctx:
        plan = ctx.plan(d)
        ctx.check(lib.da_attention_host(plan, q.ctypes.data, k.ctypes.data, v.ctypes.data,
                                        o.ctypes.data), "da_attention_host")
    return o


def groups(q, *, group_size=2, fusion=None, hash_bits=None, hash_block=None, seed=0,
           backend=None, device=None):
    """DistrAttention's per-tile column permutations for q (da_plan_groups_host).

    q: (batch, heads, seq_q, head_dim) as for attention(). Returns int32
    (batch, heads, ceil(seq_q / hash_block), head_dim): for each tile of
    hash_block query rows, the columns in group order (group g holds
    perm[g*G:(g+1)*G]). The other arguments are attention()'s."""
    import numpy as np

    what = "groups"
    q = _prepare(np, "q", q, what)
    code = _dtype_code(np, q.dtype)
    if code is None:
        raise InvalidArgument(f"dtype {q.dtype} is not supported: {_dtypes_text()}", what)
    if q.ndim != 4:
        raise InvalidArgument(f"q has shape {q.shape}: expected 4 dimensions "
                              f"(batch, heads, seq, head_dim)", what)
    d = _core.make_desc(q.shape, q.shape, q.shape, code, group_size=group_size, fusion=fusion,
                        hash_bits=hash_bits, hash_block=hash_block, seed=seed, what=what)
    lib = _lib.load()
    with _core.locked(lambda: _core.host_context(backend, device)) as ctx:
        plan = ctx.plan(d)
        got = _lib.Desc()
        ctx.check(lib.da_plan_get_desc(plan, C.byref(got)), "da_plan_get_desc")
        tiles = -(-d.seq_q // got.hash_block)
        perm = np.empty((d.batch, d.heads, tiles, d.head_dim), np.int32)
        ctx.check(lib.da_plan_groups_host(plan, q.ctypes.data, perm.ctypes.data),
                  "da_plan_groups_host")
    return perm
