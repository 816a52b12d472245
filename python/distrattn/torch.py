# SPDX-License-Identifier: Apache-2.0
"""distrattn for PyTorch tensors: the custom op distrattn::attention.

Importing this module imports torch and registers the op (with
torch.library.custom_op, and a fake implementation so that torch.compile
traces through it). distrattn.torch.attention(q, k, v, ...) calls it.

CPU tensors run on the CPU backend, in place on the tensors' memory
(da_attention_host over their data pointers: no copies). CUDA tensors run
on the CUDA backend on the tensors' device and torch's current stream: the
stream is wrapped (da_context_wrap, one cached context per device and
stream), the tensors' memory is wrapped for the call (da_buffer_wrap with
their exact byte sizes; the wrappers are destroyed afterwards and never
free torch's memory), and da_attention only enqueues kernels on that
stream: no synchronisation, so the call can be captured in a CUDA graph.
The first call of a shape on a stream creates its plan (device memory for
the plan's scratch, one blocking copy of the projections); inside a capture
that happens in relaxed capture mode (as PyTorch's allocator does), and a
plan used in a capture is kept for the life of the process (the graph
holds pointers to its scratch memory).

Autograd (SPEC.md section 1b): when grad is enabled and q, k or v
requires grad, attention() calls distrattn::attention_lse instead, which
also returns the log-sum-exp of every row (da_attention_ext with
ext.lse = 1) and has an autograd formula: its backward is the op
distrattn::attention_backward (da_attention_backward), which gives dq, dk
and dv from (dout, q, k, v, o, lse), for exact attention and for
DistrAttention (the forward's groupings and fusion weights are constants,
recomputed from q; with proj=, per-head projections of SPEC.md 1c, held
constant), on CPU tensors (the CPU backend) and CUDA tensors (the
CUDA backend, on torch's current stream like the forward: both enqueue
only, so a training step can be captured in a CUDA graph; the backward's
workspace is stream-ordered, cudaMallocAsync; proj= runs wherever the
backend implements the projection strategy, SPEC.md 1c, and raises
Unsupported where it does not). Both ops have fake
implementations, so torch.compile traces forward and backward.
"""
import contextlib
import ctypes as C
import threading
from collections import OrderedDict
from typing import Optional, Tuple

import torch

from . import _core, _lib
from ._errors import InvalidArgument, Unsupported

__all__ = ["attention", "clear_cache"]

_WHAT = "distrattn.torch.attention"

_DTYPES = {torch.float32: _lib.DA_F32, torch.float16: _lib.DA_F16,
           torch.bfloat16: _lib.DA_BF16}

_MAX_STREAM_CONTEXTS = 128
_stream_contexts = OrderedDict()     # (device index, stream handle) -> _core.Context
_stream_lock = threading.Lock()


def _check_tensors(q, k, v, what="distrattn.torch.attention"):
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise InvalidArgument(f"{name} must be a torch.Tensor, not {type(t).__name__}", what)
    if not (q.dtype == k.dtype == v.dtype):
        raise InvalidArgument(f"q, k and v must have one dtype, not {q.dtype}, {k.dtype}, "
                              f"{v.dtype}", what)
    if q.dtype not in _DTYPES:
        raise InvalidArgument(f"dtype {q.dtype} is not supported: float32, float16 or bfloat16",
                              what)
    if not (q.device == k.device == v.device):
        raise InvalidArgument(f"q, k and v must be on one device, not {q.device}, {k.device}, "
                              f"{v.device}", what)


def _desc(q, k, v, causal, scale, group_size, fusion, hash_bits, hash_block, seed, algo):
    fus = None if fusion < 0 else ("mean", "norm")[fusion] if fusion in (0, 1) else fusion
    alg = {0: None, 1: "fused", 2: "gemm"}.get(algo, algo)
    return _core.make_desc(tuple(q.shape), tuple(k.shape), tuple(v.shape), _DTYPES[q.dtype],
                           causal=causal, scale=scale, group_size=group_size, fusion=fus,
                           hash_bits=hash_bits or None, hash_block=hash_block or None,
                           seed=seed & (2**64 - 1), algo=alg, what="distrattn.torch.attention")


def _proj(proj, q, k, group_size, what=_WHAT, make=True):
    """proj (None or a tensor) checked against q's shape: (the tensor as a
    contiguous float32 CPU tensor, its _core.Projections) or (None, None);
    make False: only the checks."""
    if proj is None:
        return None, None
    if not isinstance(proj, torch.Tensor):
        raise InvalidArgument(f"proj must be a torch.Tensor or None, not {type(proj).__name__}",
                              what)
    H, D = q.shape[1], q.shape[3]
    if proj.dim() != 4 or proj.shape[0] != H or proj.shape[1] != 2 or proj.shape[2] != D \
            or not 1 <= proj.shape[3] <= D:
        raise InvalidArgument(f"proj has shape {tuple(proj.shape)}: expected (heads, 2, "
                              f"head_dim, rank) = ({H}, 2, {D}, r) with r in 1..{D} "
                              f"(A_h then B_h of every query head, SPEC.md 1c)", what)
    if proj.dtype != torch.float32:
        raise InvalidArgument(f"proj must be float32, not {proj.dtype}", what)
    if proj.device.type != "cpu":
        raise InvalidArgument(f"proj must be a CPU tensor (the library copies it from host "
                              f"memory), not on {proj.device}", what)
    if group_size != 1:
        raise InvalidArgument(f"group_size = {group_size} with proj: it must be 1 (the rank "
                              f"takes its place, SPEC.md 1c)", what)
    if not make:
        return None, None
    p = proj.detach().contiguous()
    return p, _core.Projections(p.data_ptr(), p.shape[3],
                                C.string_at(p.data_ptr(), p.numel() * 4))


# ---- CUDA: wrapped streams and memory

_driver = None


def _capture_mode_fn():
    global _driver
    if _driver is None:
        try:
            drv = C.CDLL("libcuda.so.1")
            f = drv.cuThreadExchangeStreamCaptureMode
            f.argtypes = [C.POINTER(C.c_int)]
            f.restype = C.c_int
            _driver = f
        except (OSError, AttributeError):
            _driver = False
    return _driver or None


@contextlib.contextmanager
def _relaxed_capture(capturing):
    """While this thread captures a CUDA graph: relaxed capture mode, so
    that a new context or plan may cudaMalloc (outside the graph)."""
    f = _capture_mode_fn() if capturing else None
    if f is None:
        yield
        return
    mode = C.c_int(2)  # CU_STREAM_CAPTURE_MODE_RELAXED
    if f(C.byref(mode)) != 0:
        yield
        return
    try:
        yield
    finally:
        f(C.byref(mode))


def _stream_context(dev, stream_handle):
    key = (dev, stream_handle)
    with _stream_lock:
        ctx = _stream_contexts.get(key)
        if ctx is not None:
            _stream_contexts.move_to_end(key)
            return ctx
        lib = _lib.load()
        h = C.c_void_p()
        _core.check(lib.da_context_wrap(C.byref(h), _lib.DA_BACKEND_CUDA, C.c_void_p(stream_handle)),
                    None, f"da_context_wrap(cuda:{dev}, stream 0x{stream_handle:x})")
        ctx = _core.Context(h, f"cuda:{dev} stream 0x{stream_handle:x}")
        _stream_contexts[key] = ctx
        # bounded: a context whose plans were captured in a graph stays
        if len(_stream_contexts) > _MAX_STREAM_CONTEXTS:
            for old_key, old in list(_stream_contexts.items()):
                if old_key != key and not old.pinned:
                    del _stream_contexts[old_key]
                    old.close()
                    break
        return ctx


def _wrap(lib, ctx, t, name):
    b = C.c_void_p()
    ctx.check(lib.da_buffer_wrap(ctx.handle, C.c_void_p(t.data_ptr()),
                                 t.numel() * t.element_size(), C.byref(b)),
              f"da_buffer_wrap({name})")
    return b


def _cuda_call(q, d, lse, tensors, fn, pj=None):
    """fn(lib, ctx, plan, buffers) on the CUDA context of q's device and
    torch's current stream, with the plan of d (ext.lse = 1 when lse; the
    projection strategy with pj, a _core.Projections) and tensors (name ->
    tensor) wrapped as da_buffers for the call."""
    lib = _lib.load()
    dev = q.device.index if q.device.index is not None else torch.cuda.current_device()
    with torch.cuda.device(dev):
        stream = torch.cuda.current_stream(dev)
        capturing = torch.cuda.is_current_stream_capturing()

        def get():
            with _relaxed_capture(capturing):
                return _stream_context(dev, stream.cuda_stream)

        with _core.locked(get) as ctx:
            bufs = {}
            try:
                with _relaxed_capture(capturing):
                    plan = ctx.plan(d, pin=capturing, lse=lse, proj=pj)
                    for name, t in tensors.items():
                        bufs[name] = _wrap(lib, ctx, t, name)
                fn(lib, ctx, plan, bufs)
            finally:
                for b in bufs.values():
                    lib.da_buffer_destroy(b)


def _cuda_attention(q, k, v, o, d, pj=None):
    if pj is not None:  # a projection plan runs only through da_attention_ext
        _cuda_attention_lse(q, k, v, o, None, d, pj)
        return

    def run(lib, ctx, plan, b):
        ctx.check(lib.da_attention(plan, b["q"], b["k"], b["v"], b["o"]), "da_attention")

    _cuda_call(q, d, False, {"q": q, "k": k, "v": v, "o": o}, run)


def _cuda_attention_lse(q, k, v, o, lse, d, pj=None):
    """da_attention_ext: the log-sum-exp into lse unless it is None."""
    names = ("q", "k", "v", "o") + (() if lse is None else ("lse",))

    def run(lib, ctx, plan, b):
        a = _lib.new_struct(_lib.AttnArgs)
        for n in names:
            setattr(a, n, b[n].value)
        ctx.check(lib.da_attention_ext(plan, C.byref(a)), "da_attention_ext")

    _cuda_call(q, d, lse is not None, dict(zip(names, (q, k, v, o, lse))), run, pj)


def _cuda_attention_backward(dout, q, k, v, o, lse, dq, dk, dv, d, pj=None):
    names = ("dout", "q", "k", "v", "o", "lse", "dq", "dk", "dv")

    def run(lib, ctx, plan, b):
        a = _lib.new_struct(_lib.BwdArgs)
        for name in names:
            setattr(a, name, b[name].value)
        ctx.check(lib.da_attention_backward(plan, C.byref(a)), "da_attention_backward")

    _cuda_call(q, d, True, dict(zip(names, (dout, q, k, v, o, lse, dq, dk, dv))), run, pj)


def _cpu_attention(q, k, v, o, d):
    lib = _lib.load()
    with _core.locked(lambda: _core.host_context("cpu")) as ctx:
        plan = ctx.plan(d)
        ctx.check(lib.da_attention_host(plan, q.data_ptr(), k.data_ptr(), v.data_ptr(),
                                        o.data_ptr()), "da_attention_host")


def _cpu_call(ctx, tensors, fn):
    """fn(buffers) with tensors (name -> tensor) wrapped as da_buffers of
    the CPU context (their memory in place); the wrappers are destroyed
    afterwards."""
    lib = _lib.load()
    bufs = {}
    try:
        for name, t in tensors.items():
            bufs[name] = _wrap(lib, ctx, t, name).value
        return fn(bufs)
    finally:
        for b in bufs.values():
            lib.da_buffer_destroy(C.c_void_p(b))


def _cpu_attention_ext(q, k, v, o, lse, d, pj=None):
    """da_attention_ext on the CPU backend: with the log-sum-exp when lse
    is a tensor, with the projections pj (a _core.Projections) if given."""
    lib = _lib.load()
    with _core.locked(lambda: _core.host_context("cpu")) as ctx:
        plan = ctx.plan(d, lse=lse is not None, proj=pj)

        def run(b):
            a = _lib.new_struct(_lib.AttnArgs)
            a.q, a.k, a.v, a.o = b["q"], b["k"], b["v"], b["o"]
            if lse is not None:
                a.lse = b["lse"]
            ctx.check(lib.da_attention_ext(plan, C.byref(a)), "da_attention_ext")

        ts = {"q": q, "k": k, "v": v, "o": o}
        if lse is not None:
            ts["lse"] = lse
        _cpu_call(ctx, ts, run)


def _cpu_attention_backward(dout, q, k, v, o, lse, dq, dk, dv, d, pj=None):
    lib = _lib.load()
    with _core.locked(lambda: _core.host_context("cpu")) as ctx:
        plan = ctx.plan(d, lse=True, proj=pj)

        def run(b):
            a = _lib.new_struct(_lib.BwdArgs)
            for name in ("dout", "q", "k", "v", "o", "lse", "dq", "dk", "dv"):
                setattr(a, name, b[name])
            ctx.check(lib.da_attention_backward(plan, C.byref(a)), "da_attention_backward")

        _cpu_call(ctx, {"dout": dout, "q": q, "k": k, "v": v, "o": o, "lse": lse, "dq": dq,
                        "dk": dk, "dv": dv}, run)


# ---- the op

@torch.library.custom_op("distrattn::attention", mutates_args=())
def _attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool,
                  scale: Optional[float], group_size: int, fusion: int, hash_bits: int,
                  hash_block: int, seed: int, algo: int,
                  proj: Optional[torch.Tensor] = None) -> torch.Tensor:
    _check_tensors(q, k, v)
    d = _desc(q, k, v, causal, scale, group_size, fusion, hash_bits, hash_block, seed, algo)
    proj, pj = _proj(proj, q, k, group_size)
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    o = torch.empty_like(q, memory_format=torch.contiguous_format)
    if q.device.type == "cpu" and pj is not None:
        _cpu_attention_ext(q, k, v, o, None, d, pj)
    elif q.device.type == "cpu":
        _cpu_attention(q, k, v, o, d)
    elif q.device.type == "cuda":
        _cuda_attention(q, k, v, o, d, pj)
    else:
        raise Unsupported(f"tensors on {q.device}: distrattn.torch runs CPU and CUDA tensors",
                          "distrattn.torch.attention")
    return o


@_attention_op.register_fake
def _attention_fake(q, k, v, causal, scale, group_size, fusion, hash_bits, hash_block, seed,
                    algo, proj=None):
    _check_tensors(q, k, v)
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise InvalidArgument("q, k and v must have 4 dimensions (batch, heads, seq, head_dim)",
                              "distrattn.torch.attention")
    if k.shape != v.shape or k.shape[0] != q.shape[0] or k.shape[3] != q.shape[3]:
        raise InvalidArgument(f"shapes disagree: q {tuple(q.shape)}, k {tuple(k.shape)}, "
                              f"v {tuple(v.shape)}", "distrattn.torch.attention")
    if proj is not None and (proj.dim() != 4 or proj.shape[0] != q.shape[1]
                             or proj.shape[1] != 2 or proj.shape[2] != q.shape[3]):
        raise InvalidArgument(f"proj has shape {tuple(proj.shape)}: expected (heads, 2, "
                              f"head_dim, rank)", "distrattn.torch.attention")
    return torch.empty_like(q, memory_format=torch.contiguous_format)


# ---- the op with the log-sum-exp, and its autograd formula

@torch.library.custom_op("distrattn::attention_lse", mutates_args=())
def _attention_lse_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool,
                      scale: Optional[float], group_size: int, fusion: int, hash_bits: int,
                      hash_block: int, seed: int, algo: int,
                      proj: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    _check_tensors(q, k, v)
    d = _desc(q, k, v, causal, scale, group_size, fusion, hash_bits, hash_block, seed, algo)
    proj, pj = _proj(proj, q, k, group_size)
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    o = torch.empty_like(q, memory_format=torch.contiguous_format)
    lse = torch.empty(q.shape[:3], dtype=torch.float32, device=q.device)
    if q.device.type == "cpu":
        _cpu_attention_ext(q, k, v, o, lse, d, pj)
    elif q.device.type == "cuda":
        _cuda_attention_lse(q, k, v, o, lse, d, pj)
    else:
        raise Unsupported(f"tensors on {q.device}: distrattn.torch runs CPU and CUDA tensors",
                          _WHAT)
    return o, lse


@_attention_lse_op.register_fake
def _attention_lse_fake(q, k, v, causal, scale, group_size, fusion, hash_bits, hash_block, seed,
                        algo, proj=None):
    o = _attention_fake(q, k, v, causal, scale, group_size, fusion, hash_bits, hash_block, seed,
                        algo, proj)
    return o, q.new_empty(q.shape[:3], dtype=torch.float32)


@torch.library.custom_op("distrattn::attention_backward", mutates_args=())
def _attention_backward_op(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                           o: torch.Tensor, lse: torch.Tensor, causal: bool,
                           scale: Optional[float], group_size: int, fusion: int, hash_bits: int,
                           hash_block: int, seed: int, algo: int,
                           proj: Optional[torch.Tensor] = None
                           ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    _check_tensors(q, k, v)
    if dout.shape != q.shape or o.shape != q.shape or tuple(lse.shape) != tuple(q.shape[:3]):
        raise InvalidArgument(f"shapes disagree: dout {tuple(dout.shape)}, o {tuple(o.shape)}, "
                              f"lse {tuple(lse.shape)} for q {tuple(q.shape)}", _WHAT)
    if dout.dtype != q.dtype or o.dtype != q.dtype or lse.dtype != torch.float32:
        raise InvalidArgument(f"dtypes disagree: dout {dout.dtype}, o {o.dtype}, lse {lse.dtype} "
                              f"(q {q.dtype}; lse float32)", _WHAT)
    if q.device.type not in ("cpu", "cuda"):
        raise Unsupported(f"tensors on {q.device}: distrattn.torch runs CPU and CUDA tensors",
                          _WHAT)
    if not (dout.device == o.device == lse.device == q.device):
        raise InvalidArgument(f"dout, o and lse must be on q's device ({q.device}), not "
                              f"{dout.device}, {o.device}, {lse.device}", _WHAT)
    d = _desc(q, k, v, causal, scale, group_size, fusion, hash_bits, hash_block, seed, algo)
    proj, pj = _proj(proj, q, k, group_size, _WHAT + " (backward)")
    dout, q, k, v, o, lse = (t.contiguous() for t in (dout, q, k, v, o, lse))
    dq = torch.empty_like(q, memory_format=torch.contiguous_format)
    dk = torch.empty_like(k, memory_format=torch.contiguous_format)
    dv = torch.empty_like(v, memory_format=torch.contiguous_format)
    if q.device.type == "cuda":
        _cuda_attention_backward(dout, q, k, v, o, lse, dq, dk, dv, d, pj)
    else:
        _cpu_attention_backward(dout, q, k, v, o, lse, dq, dk, dv, d, pj)
    return dq, dk, dv


@_attention_backward_op.register_fake
def _attention_backward_fake(dout, q, k, v, o, lse, causal, scale, group_size, fusion, hash_bits,
                             hash_block, seed, algo, proj=None):
    return (torch.empty_like(q, memory_format=torch.contiguous_format),
            torch.empty_like(k, memory_format=torch.contiguous_format),
            torch.empty_like(v, memory_format=torch.contiguous_format))


def _lse_setup_context(ctx, inputs, output):
    q, k, v = inputs[:3]
    o, lse = output
    ctx.save_for_backward(q, k, v, o, lse)
    ctx.attn_args = tuple(inputs[3:])
    ctx.mark_non_differentiable(lse)


def _lse_backward(ctx, grad_o, grad_lse):
    q, k, v, o, lse = ctx.saved_tensors
    dq, dk, dv = torch.ops.distrattn.attention_backward(grad_o, q, k, v, o, lse, *ctx.attn_args)
    return (dq, dk, dv) + (None,) * len(ctx.attn_args)


_attention_lse_op.register_autograd(_lse_backward, setup_context=_lse_setup_context)


def attention(q, k, v, *, causal=False, scale=None, group_size=1, fusion=None, hash_bits=None,
              hash_block=None, seed=0, algo=None, proj=None):
    """Attention over tensors in scaled_dot_product_attention's layout.

    q: (batch, heads, seq_q, head_dim); k, v: (batch, kv_heads, seq_k,
    head_dim), kv_heads dividing heads (GQA). float32, float16 or bfloat16,
    all three alike and on one device (CPU or CUDA). A tensor that is not
    contiguous is made contiguous (a copy); contiguous ones are used in
    place. Returns a new contiguous tensor like q. The other arguments are
    distrattn.attention's (numpy); the backend follows the tensors' device.
    Same as torch.ops.distrattn.attention(q, k, v, causal, scale,
    group_size, fusion, hash_bits, hash_block, seed, algo) with fusion -1
    (default), 0 mean, 1 norm; hash_bits/hash_block 0 = default; algo 0
    auto, 1 fused, 2 gemm; seed as a signed 64-bit int.

    Differentiable: with grad enabled and q, k or v requiring grad it runs
    torch.ops.distrattn.attention_lse (the same arguments; returns o and
    the float32 log-sum-exp, shape (batch, heads, seq_q)), whose backward
    (distrattn::attention_backward) gives dq, dk, dv on the tensors'
    backend, CPU or CUDA (SPEC.md 1b).

    proj: None (the default: exact attention, or the per-tile LSH grouping
    for group_size > 1), or per-head projections (SPEC.md 1c,
    ext.strategy = DA_STRATEGY_PROJECTION): a float32 CPU tensor
    (heads, 2, head_dim, r), A_h = proj[h, 0] and B_h = proj[h, 1] for query
    head h, logits scale * (q_h A_h) . (k_kv(h) B_h); group_size must then
    be 1. The proj tensor stays on the CPU (the plan copies it) whatever
    device q is on; a backend that does not implement the strategy (or its
    backward) raises Unsupported. The projections are constants: the backward
    gives dq, dk, dv and no gradient for proj (calibrated projections,
    `distrattn calibrate`, are held fixed). Plans are cached by the
    projections' contents (one per distinct proj, e.g. one per layer)."""
    if fusion is None:
        fus = -1
    elif isinstance(fusion, str) and fusion.lower() in _lib.FUSIONS:
        fus = _lib.FUSIONS[fusion.lower()]
    else:
        raise InvalidArgument(f"fusion = {fusion!r} must be None, 'mean' or 'norm'",
                              "distrattn.torch.attention")
    if algo is None:
        alg = 0
    elif isinstance(algo, str) and algo.lower() in _lib.ALGOS:
        alg = _lib.ALGOS[algo.lower()]
    else:
        raise InvalidArgument(f"algo = {algo!r} must be None, 'auto', 'fused' or 'gemm'",
                              "distrattn.torch.attention")
    seed = _core._int_arg("seed", seed, 0, 2**64 - 1)
    if seed >= 2**63:
        seed -= 2**64
    hb = 0 if hash_bits is None else _core._int_arg("hash_bits", hash_bits, 1, 32)
    hk = 0 if hash_block is None else _core._int_arg("hash_block", hash_block, 1, 2**31 - 1)
    if proj is not None:
        _proj(proj, q, k, group_size, make=False)   # the checks, before the op
    args = (bool(causal), None if scale is None else float(scale), int(group_size), fus, hb, hk,
            seed, alg, proj)
    if torch.is_grad_enabled() and any(isinstance(t, torch.Tensor) and t.requires_grad
                                       for t in (q, k, v)):
        return torch.ops.distrattn.attention_lse(q, k, v, *args)[0]
    return torch.ops.distrattn.attention(q, k, v, *args)


def clear_cache():
    """Destroy the cached CUDA stream contexts and their plans (pinned ones
    too: only when no captured graph that used them will be replayed) and
    the host contexts. Waits for the streams' work."""
    with _stream_lock:
        ctxs = list(_stream_contexts.values())
        _stream_contexts.clear()
    for c in ctxs:
        c.close()
    _core.clear_cache()
