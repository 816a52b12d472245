# SPDX-License-Identifier: Apache-2.0
"""Contexts, plans and their caches; descriptors from keyword arguments.

Shared by the numpy API (distrattn.attention) and the PyTorch op
(distrattn.torch). Nothing here imports numpy or torch.

Thread safety follows the C rule (distrattn.h): a context and its plans are
used by one thread at a time. Every cached context carries a lock, held for
the whole of a call that uses it (plan lookup or creation, the attention);
calls on different contexts run in parallel (ctypes releases the GIL).
"""
import collections
import contextlib
import ctypes as C
import hashlib
import math
import operator
import threading

from . import _lib
from ._errors import InvalidArgument, error_for

_INT_MAX = 2**31 - 1
_plan_cache_size = 32


def plan_cache_size():
    return _plan_cache_size


def set_plan_cache_size(n):
    """Bound the plans cached per context (default 32; least recently used
    ones are destroyed first; destroying a plan waits for its context's queue
    or stream). Plans pinned by a CUDA graph capture (distrattn.torch) do not
    count and are never evicted."""
    global _plan_cache_size
    n = int(n)
    if n < 1:
        raise InvalidArgument(f"plan cache size = {n} must be >= 1", "set_plan_cache_size")
    _plan_cache_size = n


def check(status, ctx_handle, what):
    """Raise the Error subclass for a failed call, with the context's (or,
    ctx_handle None, this thread's) last error as its detail."""
    if status == 0:
        return
    lib = _lib.load()
    detail = lib.da_context_last_error(ctx_handle)
    detail = detail.decode(errors="replace") if detail else ""
    if not detail:
        s = lib.da_status_string(status)
        detail = s.decode() if s else f"status {status}"
    raise error_for(status, detail, what)


class Context:
    """One da_context with its lock and its plans (an LRU per descriptor)."""

    def __init__(self, handle, label):
        self.handle = handle
        self.label = label
        self.lock = threading.RLock()
        self.plans = collections.OrderedDict()   # Desc.key() -> plan handle (c_void_p)
        self.pinned = {}                          # never evicted (captured in a CUDA graph)
        lib = _lib.load()
        self.backend = _lib.BACKEND_NAMES.get(lib.da_context_backend(handle), "unknown")

    def check(self, status, what):
        check(status, self.handle, what)

    def plan(self, desc, pin=False, lse=False, proj=None):
        """The plan for desc (created and cached on first use). Call with
        self.lock held. pin: keep it for the life of the context (never
        evicted: a CUDA graph captured with it points at its memory).
        lse: a plan made with da_plan_create_ext and ext.lse = 1 (its
        da_attention_ext calls write the log-sum-exp; the backward pass
        takes any plan of the desc). proj: None, or a Projections
        (ext.strategy = DA_STRATEGY_PROJECTION, SPEC 1c; a plan made with
        da_plan_create_ext, run with da_attention_ext): plans are cached by
        the projections' contents, which the plan copies at creation."""
        key = desc.key() + (bool(lse), None if proj is None else proj.key)
        p = self.pinned.get(key)
        if p is not None:
            return p
        p = self.plans.get(key)
        if p is not None:
            if pin:
                del self.plans[key]
                self.pinned[key] = p
            else:
                self.plans.move_to_end(key)
            return p
        lib = _lib.load()
        p = C.c_void_p()
        if lse or proj is not None:
            x = _lib.new_struct(_lib.AttnExt, lse=1 if lse else 0, window_left=-1,
                                window_right=-1)
            if proj is not None:
                x.strategy = _lib.DA_STRATEGY_PROJECTION
                x.rank = proj.rank
                x.proj = proj.address
            self.check(lib.da_plan_create_ext(self.handle, C.byref(desc), C.byref(x), C.byref(p)),
                       "da_plan_create_ext")
        else:
            self.check(lib.da_plan_create(self.handle, C.byref(desc), C.byref(p)),
                       "da_plan_create")
        if pin:
            self.pinned[key] = p
            return p
        self.plans[key] = p
        while len(self.plans) > _plan_cache_size:
            _, old = self.plans.popitem(last=False)
            lib.da_plan_destroy(old)
        return p

    def close(self):
        lib = _lib.load()
        with self.lock:
            for p in list(self.plans.values()) + list(self.pinned.values()):
                lib.da_plan_destroy(p)
            self.plans.clear()
            self.pinned.clear()
            if self.handle:
                lib.da_context_destroy(self.handle)
                self.handle = None


class Projections:
    """Per-head projections for a plan (ext.strategy = DA_STRATEGY_PROJECTION):
    address of a C-contiguous f32 [heads][2][head_dim][rank] host array
    (kept alive by the caller while plans are made from it; a plan copies
    it), rank, and key, a digest of its shape and bytes (plans of equal
    projections are shared)."""

    __slots__ = ("address", "rank", "key")

    def __init__(self, address, rank, data):
        self.address = address
        self.rank = int(rank)
        self.key = (self.rank, hashlib.blake2b(data, digest_size=20).digest())


@contextlib.contextmanager
def locked(get):
    """get() gives a cached Context; yields it with its lock held, fetching
    it again if clear_cache() closed it in between."""
    while True:
        ctx = get()
        with ctx.lock:
            if ctx.handle:
                yield ctx
                return


_contexts = {}          # (backend code, device index) -> Context
_contexts_lock = threading.Lock()


def backend_code(backend):
    if backend is None:
        return _lib.DA_BACKEND_AUTO
    if isinstance(backend, str) and backend.lower() in _lib.BACKENDS:
        return _lib.BACKENDS[backend.lower()]
    raise InvalidArgument(f"backend = {backend!r} must be None, 'auto', 'cpu', 'opencl' or "
                          f"'cuda'", "backend")


def host_context(backend=None, device=None):
    """The cached context of (backend, device) for host-memory calls.

    backend None/'auto': the library's choice (DISTRATTN_BACKEND and
    DISTRATTN_DEVICE steer it), device then an index into devices();
    otherwise device is the index within that backend (None = its best)."""
    b = backend_code(backend)
    if device is None:
        idx = -1
    elif isinstance(device, int) and not isinstance(device, bool) and device >= 0:
        idx = device
    else:
        raise InvalidArgument(f"device = {device!r} must be None or an int >= 0", "device")
    key = (b, idx)
    ctx = _contexts.get(key)
    if ctx is not None:
        return ctx
    with _contexts_lock:
        ctx = _contexts.get(key)
        if ctx is None:
            lib = _lib.load()
            h = C.c_void_p()
            check(lib.da_context_create(C.byref(h), b, idx), None,
                  f"da_context_create({_lib.BACKEND_NAMES[b]}, {idx})")
            ctx = Context(h, f"{_lib.BACKEND_NAMES[b]}:{idx}")
            _contexts[key] = ctx
        return ctx


def clear_cache():
    """Destroy the cached host contexts and their plans (the next call makes
    them again). Not to be called while another thread runs attention."""
    with _contexts_lock:
        ctxs = list(_contexts.values())
        _contexts.clear()
    for c in ctxs:
        c.close()


def _int_arg(name, v, lo, hi):
    if isinstance(v, bool) or not isinstance(v, int):
        try:
            v = operator.index(v)
        except TypeError:
            raise InvalidArgument(f"{name} = {v!r} must be an int", name) from None
    if not lo <= v <= hi:
        raise InvalidArgument(f"{name} = {v} is out of range ({lo}..{hi})", name)
    return v


def make_desc(q_shape, k_shape, v_shape, dtype_code, *, causal=False, scale=None, group_size=1,
              fusion=None, hash_bits=None, hash_block=None, seed=0, algo=None, what="attention"):
    """A Desc from SDPA-layout shapes (B, H, S, D), checked, with clear
    messages for what the library cannot see (shapes that disagree)."""
    for name, s in (("q", q_shape), ("k", k_shape), ("v", v_shape)):
        if len(s) != 4:
            raise InvalidArgument(f"{name} has shape {tuple(s)}: expected 4 dimensions "
                                  f"(batch, heads, seq, head_dim) as in "
                                  f"scaled_dot_product_attention", what)
        for d in s:
            if d < 1:
                raise InvalidArgument(f"{name} has shape {tuple(s)}: every dimension must be >= 1",
                                      what)
            if d > _INT_MAX:
                raise InvalidArgument(f"{name} has shape {tuple(s)}: a dimension above 2^31-1",
                                      what)
    B, H, Sq, D = q_shape
    Bk, Hk, Sk, Dk = k_shape
    if tuple(k_shape) != tuple(v_shape):
        raise InvalidArgument(f"k and v shapes differ: k {tuple(k_shape)}, v {tuple(v_shape)}",
                              what)
    if Bk != B:
        raise InvalidArgument(f"batch differs: q has {B}, k and v have {Bk}", what)
    if Dk != D:
        raise InvalidArgument(f"head_dim differs: q has {D}, k and v have {Dk}", what)
    if H % Hk != 0:
        raise InvalidArgument(f"q has {H} heads, k and v {Hk}: the kv heads must divide the "
                              f"query heads (GQA/MQA)", what)
    lib = _lib.load()
    d = _lib.Desc()
    lib.da_attn_desc_init(C.byref(d))
    d.batch, d.heads, d.kv_heads, d.seq_q, d.seq_k, d.head_dim = B, H, Hk, Sq, Sk, D
    d.dtype = dtype_code
    d.causal = 1 if causal else 0
    if scale is None:
        d.scale = 0.0
    else:
        try:
            s = float(scale)
        except (TypeError, ValueError):
            raise InvalidArgument(f"scale = {scale!r} must be a number", what) from None
        if not (s > 0 and math.isfinite(s)):
            raise InvalidArgument(f"scale = {scale!r} must be finite and > 0 (None = "
                                  f"1/sqrt(head_dim))", what)
        d.scale = s
        if not (d.scale > 0 and math.isfinite(d.scale)):  # rounded to f32
            raise InvalidArgument(f"scale = {scale!r} is 0 or infinite as a float32", what)
    d.group_size = _int_arg("group_size", group_size, 1, _INT_MAX)
    if fusion is not None:
        if isinstance(fusion, str) and fusion.lower() in _lib.FUSIONS:
            d.fusion = _lib.FUSIONS[fusion.lower()]
        else:
            raise InvalidArgument(f"fusion = {fusion!r} must be None (the library's default), "
                                  f"'mean' or 'norm'", what)
    if hash_bits is not None:
        d.hash_bits = _int_arg("hash_bits", hash_bits, 1, 32)
    if hash_block is not None:
        d.hash_block = _int_arg("hash_block", hash_block, 1, _INT_MAX)
    d.seed = _int_arg("seed", seed, 0, 2**64 - 1)
    if algo is not None:
        if isinstance(algo, str) and algo.lower() in _lib.ALGOS:
            d.algo = _lib.ALGOS[algo.lower()]
        else:
            raise InvalidArgument(f"algo = {algo!r} must be None, 'auto', 'fused' or 'gemm'",
                                  what)
    return d
