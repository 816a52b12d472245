#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""PyTorch as the client that owns the memory (issue 15's crash).

A PyTorch program wraps its tensors with the C API (da_context_wrap on
torch's current stream, da_buffer_wrap over tensor.data_ptr()), runs
da_attention and destroys the wrappers, 1,000 times, over views carved from
one large torch allocation and over separately allocated tensors. Before the
fix the first destroy freed the tensors under PyTorch (illegal memory access,
then an internal assertion in the caching allocator's free_block). Checks:
every da_attention output matches SDPA's (float64 reference too); the
caller's Q, K, V and the bytes around them are unchanged; the tensors are
still PyTorch's (used, freed and reallocated through its caching allocator,
torch.cuda.empty_cache(), new work on the stream), and a wrap running past
the end of the allocation is refused.

Run on a GPU machine:
  DISTRATTN_LIB=build/lib/.libs/libdistrattn.so \
  DISTRATTN_BACKEND_PATH=build/cuda/.libs python3 tests/torch_wrap.py
Exit 0 and a last line 'torch_wrap: N passed, 0 failed' on success; exit 77
(skipped) without torch or a CUDA device, unless DISTRATTN_REQUIRE_BACKENDS
names cuda.
"""
import ctypes as C
import os
import sys

REQUIRED = "cuda" in os.environ.get("DISTRATTN_REQUIRE_BACKENDS", "").split(",")


def skip(why):
    print(f"torch_wrap: skipped: {why}")
    sys.exit(1 if REQUIRED else 77)


try:
    import torch
    import torch.nn.functional as F
except ImportError:
    skip("no torch")
if not torch.cuda.is_available():
    skip("no CUDA device")


# The C API's ctypes prototypes and da_attn_desc come from the Python package
# in python/ (the one in this checkout, installed or not); the library is
# DISTRATTN_LIB's, or the loader's libdistrattn.so.0. This script keeps to
# the raw C calls: the package's own op has its tests in python/tests.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
from distrattn import _lib as da_lib  # noqa: E402

Desc = da_lib.Desc
lib = da_lib.load()
vp = C.c_void_p
DA_CUDA, DA_F16, DA_ERR_INVALID_ARG = 3, 1, -1

passed = failed = 0


def check(ok, what):
    global passed, failed
    if ok:
        passed += 1
    else:
        failed += 1
        print(f"torch_wrap: FAILED: {what}")


def call(ctx, s, what):
    if s != 0:
        raise RuntimeError(f"{what}: {lib.da_status_string(s).decode()}: "
                           f"{lib.da_context_last_error(ctx).decode()}")


def main():
    torch.manual_seed(int(os.environ.get("DA_TEST_SEED", "1234")))
    dev = torch.device("cuda")
    stream = torch.cuda.current_stream()
    ctx = vp()
    call(None, lib.da_context_wrap(C.byref(ctx), DA_CUDA, vp(stream.cuda_stream)), "da_context_wrap")
    B, H, S, D = 2, 8, 512, 128
    d = Desc()
    lib.da_attn_desc_init(C.byref(d))
    d.batch, d.heads, d.kv_heads, d.seq_q, d.seq_k, d.head_dim = B, H, H, S, S, D
    d.dtype, d.causal = DA_F16, 1
    plan = vp()
    call(ctx, lib.da_plan_create(ctx, C.byref(d), C.byref(plan)), "da_plan_create")
    n = B * H * S * D
    nbytes = n * 2
    gap = 4096  # elements between the carved tensors, left as the caller's
    big = torch.randn(4 * n + 5 * gap, device=dev, dtype=torch.float16)
    views = [big[gap + i * (n + gap): gap + i * (n + gap) + n].view(B, H, S, D) for i in range(4)]
    q, k, v, o = views
    o.fill_(float("nan"))
    keep = big.clone()
    ref = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), is_causal=True)
    sep = [torch.randn(B, H, S, D, device=dev, dtype=torch.float16) for _ in range(3)]
    sep_o = torch.full((B, H, S, D), float("nan"), device=dev, dtype=torch.float16)
    ref_sep = F.scaled_dot_product_attention(*[t.double() for t in sep], is_causal=True)
    sdpa = F.scaled_dot_product_attention(q, k, v, is_causal=True)

    def wrap(t):
        b = vp()
        call(ctx, lib.da_buffer_wrap(ctx, vp(t.data_ptr()), t.numel() * t.element_size(), C.byref(b)),
             "da_buffer_wrap")
        return b

    for r in range(1000):
        src = (q, k, v, o) if r % 2 == 0 else (*sep, sep_o)
        bufs = [wrap(t) for t in src]
        if r % 100 in (0, 1):
            call(ctx, lib.da_attention(plan, *bufs), "da_attention")
        for b in bufs:
            lib.da_buffer_destroy(b)
        if r % 100 == 50:  # PyTorch keeps allocating and freeing on the stream meanwhile
            tmp = torch.randn(1 << 20, device=dev)
            del tmp
            torch.cuda.empty_cache()
    torch.cuda.synchronize()

    def rel(a, b):
        return ((a.double() - b).norm() / b.norm()).item()

    e1, e2, es = rel(o, ref), rel(sep_o, ref_sep), rel(sdpa, ref)
    print(f"torch_wrap: O vs float64: carved {e1:.2e}, separate {e2:.2e} (SDPA itself {es:.2e})")
    check(e1 <= 2e-3 and e2 <= 2e-3, f"outputs off: {e1}, {e2}")
    mask = torch.ones_like(keep, dtype=torch.bool)
    mask[gap + 3 * (n + gap): gap + 3 * (n + gap) + n] = False  # o's range
    check(torch.equal(big[mask], keep[mask]), "the caller's bytes outside O changed")

    # the memory is still PyTorch's: use it, free it, reuse the allocator
    s = (q.float().sum() + k.float().sum()).item()
    check(s == s, "the tensors are unusable")
    del q, k, v, o, views, big, sep, sep_o
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    again = torch.randn(4 * n, device=dev, dtype=torch.float16)
    check(torch.isfinite(again.float().sum()).item(), "a new allocation after the wraps failed")

    # a wrap past the end of its allocation is refused
    t = torch.empty(1 << 20, device=dev, dtype=torch.uint8)
    torch.cuda.synchronize()
    torch.cuda.empty_cache()  # t's segment is now exactly its own block's
    b = vp()
    end_ptr = t.data_ptr() + t.numel()
    s = lib.da_buffer_wrap(ctx, vp(end_ptr - 64), 1 << 40, C.byref(b))
    check(s == DA_ERR_INVALID_ARG and not b.value and
          b"past the end" in lib.da_context_last_error(ctx),
          f"a 1 TiB wrap 64 bytes before the end of a 1 MiB tensor: status {s}, "
          f"{lib.da_context_last_error(ctx)}")
    lib.da_plan_destroy(plan)
    lib.da_context_destroy(ctx)
    torch.cuda.synchronize()
    print(f"torch_wrap: {passed} passed, {failed} failed")
    return 1 if failed else 0


sys.exit(main())
