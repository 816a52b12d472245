# SPDX-License-Identifier: Apache-2.0
"""distrattn.torch: the custom op on CPU tensors (against a float64 torch
reference, against the numpy path, under torch.compile) and on CUDA tensors
(against scaled_dot_product_attention, on a non-default stream, in a CUDA
graph, and 1,000 calls over memory that torch's caching allocator frees and
reuses). Skipped without torch (DISTRATTN_REQUIRE_TORCH=1 makes that a
failure); the CUDA tests are skipped without a CUDA device, unless
DISTRATTN_REQUIRE_BACKENDS names cuda."""
import os

import numpy as np
import pytest

import distrattn
from conftest import REQUIRED, need_backend
from reference import attention_ref

if os.environ.get("DISTRATTN_REQUIRE_TORCH") == "1":
    import torch
else:
    torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

import distrattn.torch as dt  # noqa: E402

TDTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
BOUND = {"float32": 1e-5, "float16": 2e-3, "bfloat16": 1.6e-2}
CASES = [
    (2, 4, 4, 37, 37, 16, False),
    (1, 8, 2, 20, 45, 32, True),    # GQA, bottom-right causal
    (2, 4, 1, 50, 24, 64, True),    # MQA, rows that see no key
]


def ref64(q, k, v, causal=False, scale=None):
    """float64 attention in torch, written out (not SDPA: its is_causal is
    top-left aligned), bottom-right causal mask, GQA by repeating kv heads."""
    q, k, v = q.double().cpu(), k.double().cpu(), v.double().cpu()
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    sq, sk = q.shape[2], k.shape[2]
    s = (q @ k.transpose(-1, -2)) * (scale if scale is not None else q.shape[-1] ** -0.5)
    if causal:
        i = torch.arange(sq)[:, None]
        j = torch.arange(sk)[None, :]
        s = s.masked_fill(j > i + (sk - sq), float("-inf"))
    p = torch.softmax(s, -1).nan_to_num(0.0)  # a row that sees no key: zeros
    return p @ v


def rel(a, ref):
    a = a.double().cpu()
    return ((a - ref).norm() / ref.norm()).item()


def gen(seed):
    g = torch.Generator().manual_seed(seed)
    return g


def rand(g, shape, dtype, device="cpu"):
    return torch.randn(shape, generator=g).to(dtype).to(device)


# ---- CPU tensors

@pytest.mark.parametrize("dtype", list(TDTYPES))
@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c[:6])) + ("c" if c[6] else ""))
def test_cpu_matches_float64_reference_and_numpy(dtype, case, seed):
    need_backend("cpu")
    B, H, Hkv, Sq, Sk, D, causal = case
    g = gen(seed)
    q, k, v = (rand(g, s, TDTYPES[dtype]) for s in ((B, H, Sq, D), (B, Hkv, Sk, D), (B, Hkv, Sk, D)))
    keep = [t.clone() for t in (q, k, v)]
    o = dt.attention(q, k, v, causal=causal)
    assert o.shape == q.shape and o.dtype == q.dtype and o.device == q.device
    assert o.is_contiguous()
    err = rel(o, ref64(q, k, v, causal))
    assert err <= BOUND[dtype], f"{dtype} {case}: {err:.3e}"
    # independent of torch: the numpy reference agrees with the torch one
    assert rel(o, torch.from_numpy(attention_ref(q.double().numpy(), k.double().numpy(),
                                                 v.double().numpy(), causal))) <= BOUND[dtype]
    for a, b in zip((q, k, v), keep):
        assert torch.equal(a, b)
    # the numpy path, same backend and plan: the same bits
    if dtype == "bfloat16":
        ml_dtypes = pytest.importorskip("ml_dtypes")
        to_np = lambda t: t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)  # noqa: E731
    else:
        to_np = lambda t: t.numpy()  # noqa: E731
    o_np = distrattn.attention(to_np(q), to_np(k), to_np(v), causal=causal, backend="cpu")
    assert np.array_equal(to_np(o).view(np.uint8), o_np.view(np.uint8))


def test_cpu_sdpa_and_options(seed):
    need_backend("cpu")
    g = gen(seed)
    q, k, v = (rand(g, (2, 4, 40, 32), torch.float32) for _ in range(3))
    o = dt.attention(q, k, v, causal=True)
    assert rel(o, F.scaled_dot_product_attention(q.double(), k.double(), v.double(),
                                                 is_causal=True)) <= 1e-5
    o = dt.attention(q, k, v, scale=0.2)
    assert rel(o, ref64(q, k, v, scale=0.2)) <= 1e-5
    # non-contiguous views are made contiguous
    qt = q.transpose(1, 2).contiguous().transpose(1, 2)
    assert not qt.is_contiguous()
    assert torch.equal(dt.attention(qt, k, v, scale=0.2), o)
    # DistrAttention: the numpy path's result, and near the exact one
    kw = dict(causal=True, group_size=4, hash_block=32, fusion="norm", seed=seed)
    o4 = dt.attention(q, k, v, **kw)
    assert np.array_equal(o4.numpy(), distrattn.attention(q.numpy(), k.numpy(), v.numpy(),
                                                          backend="cpu", **kw))
    e = rel(o4, ref64(q, k, v, True))
    assert np.isfinite(e) and e < 1.0
    # seeds up to 2^64-1 (signed in the op's schema)
    o_big = dt.attention(q, k, v, group_size=2, seed=2**64 - 1)
    assert np.array_equal(o_big.numpy(), distrattn.attention(q.numpy(), k.numpy(), v.numpy(),
                                                             group_size=2, seed=2**64 - 1,
                                                             backend="cpu"))


def test_cpu_errors():
    need_backend("cpu")
    x = torch.zeros(1, 4, 8, 16)
    with pytest.raises(distrattn.InvalidArgument, match="must divide"):
        dt.attention(x, torch.zeros(1, 3, 8, 16), torch.zeros(1, 3, 8, 16))
    with pytest.raises(distrattn.InvalidArgument, match="float64 is not supported"):
        dt.attention(x.double(), x.double(), x.double())
    with pytest.raises(distrattn.InvalidArgument, match="one dtype"):
        dt.attention(x, x, x.half())
    with pytest.raises(distrattn.InvalidArgument, match="4 dimensions"):
        dt.attention(x[0], x[0], x[0])
    with pytest.raises(distrattn.InvalidArgument, match="group_size = 3") as ei:
        dt.attention(x, x, x, group_size=3)
    assert ei.value.status_name == "DA_ERR_INVALID_ARG"
    with pytest.raises(distrattn.InvalidArgument, match="fusion"):
        dt.attention(x, x, x, fusion="sum")
    dt.clear_cache()
    assert torch.equal(dt.attention(x, x, x), torch.zeros_like(x))


def test_opcheck():
    need_backend("cpu")
    g = gen(1)
    q, k, v = (rand(g, (1, 4, 24, 16), torch.float32) for _ in range(3))
    torch.library.opcheck(torch.ops.distrattn.attention.default,
                          (q, k, v, True, None, 1, -1, 0, 0, 0, 0))
    torch.library.opcheck(torch.ops.distrattn.attention.default,
                          (q, k[:, :2], v[:, :2], False, 0.5, 2, 1, 8, 16, 3, 0))


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_torch_compile_cpu(backend, seed):
    need_backend("cpu")
    g = gen(seed)
    q, k, v = (rand(g, (2, 4, 32, 16), torch.float32) for _ in range(3))

    def f(q, k, v):
        return dt.attention(q * 2.0, k, v, causal=True).sum(dim=1) + 1.0

    torch._dynamo.reset()
    cf = torch.compile(f, backend=backend, fullgraph=True)
    got = cf(q, k, v)
    assert torch.allclose(got, f(q, k, v), rtol=1e-5, atol=1e-5)
    got2 = cf(q + 1, k, v)  # the same graph, new values
    assert torch.allclose(got2, f(q + 1, k, v), rtol=1e-5, atol=1e-5)


def test_import_distrattn_torch_is_lazy():
    import subprocess
    import sys
    pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(distrattn.__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (pkg_parent, os.environ.get("PYTHONPATH")) if p))
    code = ("import sys, distrattn\n"
            "assert 'torch' not in sys.modules\n"
            "m = distrattn.torch\n"
            "assert 'torch' in sys.modules and hasattr(m, 'attention')\n"
            "import torch; assert hasattr(torch.ops.distrattn, 'attention')\n"
            "print('ok')")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr


# ---- CUDA tensors

def need_cuda():
    if not torch.cuda.is_available():
        msg = "no CUDA device for torch"
        if "cuda" in REQUIRED:
            pytest.fail(msg + " (DISTRATTN_REQUIRE_BACKENDS names cuda)")
        pytest.skip(msg)
    need_backend("cuda")


def sdpa(q, k, v, causal):
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal,
                                          enable_gqa=q.shape[1] != k.shape[1])


@pytest.mark.parametrize("dtype", list(TDTYPES))
@pytest.mark.parametrize("shape", [(2, 8, 8, 256, 64), (1, 16, 4, 300, 128), (2, 4, 4, 77, 80)],
                         ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("causal", [False, True])
def test_cuda_matches_sdpa(dtype, shape, causal, seed):
    need_cuda()
    B, H, Hkv, S, D = shape
    g = gen(seed)
    q, k, v = (rand(g, s, TDTYPES[dtype], "cuda") for s in ((B, H, S, D), (B, Hkv, S, D),
                                                           (B, Hkv, S, D)))
    o = dt.attention(q, k, v, causal=causal)
    ref = ref64(q, k, v, causal)
    s = sdpa(q, k, v, causal)
    err, err_sdpa = rel(o, ref), rel(s, ref)
    assert err <= max(BOUND[dtype], 2 * err_sdpa), f"{err:.3e} (SDPA {err_sdpa:.3e})"
    assert rel(o, s.double().cpu()) <= 2 * max(BOUND[dtype], err_sdpa)
    assert o.device == q.device and o.dtype == q.dtype


def test_cuda_errors_and_other_device():
    need_cuda()
    x = torch.zeros(1, 2, 8, 16, device="cuda")
    with pytest.raises(distrattn.InvalidArgument, match="one device"):
        dt.attention(x, x.cpu(), x)
    if torch.cuda.device_count() < 2:
        return
    # tensors on a device that is not the current one; the current device is kept
    g = gen(5)
    q, k, v = (rand(g, (1, 4, 64, 64), torch.float16, "cuda:1") for _ in range(3))
    with torch.cuda.device(0):
        o = dt.attention(q, k, v, causal=True)
        assert torch.cuda.current_device() == 0
    assert o.device == q.device
    assert rel(o, ref64(q, k, v, True)) <= 2e-3


def test_cuda_distrattention(seed):
    need_cuda()
    g = gen(seed)
    q, k, v = (rand(g, (2, 8, 512, 128), torch.float16, "cuda") for _ in range(3))
    for G in (2, 4, 8):
        o = dt.attention(q, k, v, causal=True, group_size=G)
        e = rel(o, ref64(q, k, v, True))
        assert np.isfinite(e) and e < 1.0
        # the CPU backend's result for the same plan (cross-backend consistency)
        oc = dt.attention(q.cpu(), k.cpu(), v.cpu(), causal=True, group_size=G)
        assert rel(o, oc.double()) <= 2e-3


def test_cuda_non_default_stream(seed):
    """The op runs on the current stream, in order with the work before it:
    the inputs are written on a side stream right after a long sleep kernel,
    and the op is called at once (no synchronisation in between)."""
    need_cuda()
    s = torch.cuda.Stream()
    g = gen(seed)
    base = [rand(g, (2, 8, 256, 64), torch.float16, "cuda") for _ in range(3)]
    torch.cuda.synchronize()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        torch.cuda._sleep(50_000_000)  # tens of ms: a stream-unaware op would read early
        q, k, v = (t * 1 for t in base)
        o = dt.attention(q, k, v, causal=True)
        o2 = o.clone()
    assert torch.cuda.current_stream() != s
    s.synchronize()
    assert rel(o2, ref64(*base, True)) <= 2e-3
    dev = torch.cuda.current_device()
    assert (dev, s.cuda_stream) in dt._stream_contexts


@pytest.mark.parametrize("warm", [False, True])
def test_cuda_graph_capture_and_replay(warm, seed):
    need_cuda()
    g = gen(seed)
    B, H, S, D = 1, 8, 384 + (0 if warm else 64), 64
    q, k, v = (rand(g, (B, H, S, D), torch.bfloat16, "cuda") for _ in range(3))
    graph = torch.cuda.CUDAGraph()
    if warm:  # on the capture stream, as torch's docs advise
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            dt.attention(q, k, v, causal=True, group_size=2)
        torch.cuda.current_stream().wait_stream(s)
        with torch.cuda.graph(graph, stream=s):
            out = dt.attention(q, k, v, causal=True, group_size=2)
    else:  # a plan made during the capture (relaxed capture mode)
        with torch.cuda.graph(graph):
            out = dt.attention(q, k, v, causal=True, group_size=2)
    for r in range(3):
        new = [rand(g, (B, H, S, D), torch.bfloat16, "cuda") for _ in range(3)]
        for dst, src in zip((q, k, v), new):
            dst.copy_(src)
        graph.replay()
        torch.cuda.synchronize()
        want = dt.attention(*new, causal=True, group_size=2)  # eager, same settings
        # stale inputs would give an error near 1.4 (unrelated random data)
        assert rel(out, want.double().cpu()) <= 1e-2, f"replay {r}"
        assert rel(out, ref64(*new, True)) < 1.0


def test_cuda_wrapped_memory_lifetime(seed):
    """1,000 calls over tensors the caching allocator frees and reuses: the
    wrappers never free torch's memory and never write the inputs."""
    need_cuda()
    g = torch.Generator(device="cuda").manual_seed(seed)
    shape = (2, 4, 128, 64)
    keep_q = torch.randn(shape, device="cuda", dtype=torch.float16, generator=g)
    keep_kv = torch.randn((2, 2, 128, 64), device="cuda", dtype=torch.float16, generator=g)
    snap = (keep_q.clone(), keep_kv.clone())
    for i in range(1000):
        q = torch.randn(shape, device="cuda", dtype=torch.float16, generator=g)
        k = torch.randn((2, 2, 128, 64), device="cuda", dtype=torch.float16, generator=g)
        o = dt.attention(q, k, keep_kv, causal=True)
        o2 = dt.attention(keep_q, keep_kv, k, causal=i % 2 == 0)
        if i % 100 == 0:
            assert rel(o, ref64(q, k, keep_kv, True)) <= 2e-3
            assert rel(o2, ref64(keep_q, keep_kv, k, i % 2 == 0)) <= 2e-3
        del q, k, o, o2
        if i % 250 == 125:
            junk = torch.empty(64 << 20, device="cuda", dtype=torch.uint8)
            del junk
            torch.cuda.empty_cache()
    torch.cuda.synchronize()
    assert torch.equal(keep_q, snap[0]) and torch.equal(keep_kv, snap[1])
    again = torch.randn(1 << 20, device="cuda")
    assert torch.isfinite(again.sum())


def test_cuda_compile(seed):
    need_cuda()
    g = gen(seed)
    q, k, v = (rand(g, (2, 4, 128, 64), torch.float16, "cuda") for _ in range(3))

    def f(q, k, v):
        return dt.attention(q, k, v, causal=True) * 2

    torch._dynamo.reset()
    cf = torch.compile(f, fullgraph=True)
    assert torch.allclose(cf(q, k, v), f(q, k, v))
