# SPDX-License-Identifier: Apache-2.0
"""Autograd of distrattn.torch.attention (SPEC.md 1b) on CPU tensors: the
gradients against torch autograd of a float64 reference of the same
strategy (exact attention; DistrAttention G = 2, 4 with the groupings of
distrattn.groups and the fusion weights as constants), float16/bfloat16
within their bounds, torch.library.opcheck of the two new ops, a
forward-backward step under torch.compile; on CUDA tensors (when torch sees
a GPU and the CUDA backend is there) the same gradient checks, the CUDA
backward beside the CPU one, and a training step in a CUDA graph.
Skipped without torch (DISTRATTN_REQUIRE_TORCH=1 makes that a failure)."""
import os

import pytest

import distrattn
from conftest import need_backend

if os.environ.get("DISTRATTN_REQUIRE_TORCH") == "1":
    import torch
else:
    torch = pytest.importorskip("torch")

import distrattn.torch as dt  # noqa: E402

# relative bounds on each gradient (tests/test_backward.c measures the C side:
# f32 ~4e-7, f16 ~2.5e-4, bf16 ~2e-3)
BOUND = {torch.float32: 2e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}


def ref64(q, k, v, causal=False, scale=None, perm=None, group_size=1, fusion="norm",
          hash_block=128):
    """Float64 attention of SPEC.md 1 in torch ops (autograd gives the
    reference gradient). perm: distrattn.groups' permutations (B, H, tiles,
    D) for group_size > 1; the fusion weights are computed from q and
    detached (constants of the backward, as SPEC 1b says)."""
    B, H, Sq, D = q.shape
    Hkv, Sk = k.shape[1], k.shape[2]
    rep = H // Hkv
    k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    scale = D ** -0.5 if scale is None else scale
    mask = None
    if causal:
        i = torch.arange(Sq)[:, None]
        j = torch.arange(Sk)[None, :]
        mask = j > i + (Sk - Sq)

    def attend(qs, kf, vv, m):
        s = (qs @ kf.transpose(-1, -2)) * scale
        if m is not None:
            s = s.masked_fill(m, float("-inf"))
        p = torch.softmax(s, -1).nan_to_num(0.0)   # a row that sees no key: zeros
        return p @ vv

    if perm is None:
        return attend(q, k, v, mask)
    G = group_size
    ng = -(-D // G)
    rows = []
    for t in range(perm.shape[2]):
        r0, r1 = t * hash_block, min(Sq, (t + 1) * hash_block)
        per_bh = []
        for b in range(B):
            per_h = []
            for h in range(H):
                qt = q[b, h, r0:r1]
                M = torch.zeros(D, ng, dtype=torch.float64)
                for x, c in enumerate(perm[b, h, t]):
                    M[int(c), x // G] = 1.0
                a = (qt.detach().norm(dim=0) if fusion == "norm"
                     else torch.ones(D, dtype=torch.float64))
                A = a @ M
                qs = (qt @ M) / A
                kf = k[b, h] @ (M * a[:, None])
                per_h.append(attend(qs, kf, v[b, h], None if mask is None else mask[r0:r1]))
            per_bh.append(torch.stack(per_h))
        rows.append(torch.stack(per_bh))
    return torch.cat(rows, dim=2)


def rel(a, ref):
    return ((a.double() - ref).norm() / ref.norm()).item()


def make(seed, B, H, Hkv, Sq, Sk, D, dtype):
    g = torch.Generator().manual_seed(seed)
    ts = [torch.randn(s, generator=g).to(dtype) for s in
          ((B, H, Sq, D), (B, Hkv, Sk, D), (B, Hkv, Sk, D), (B, H, Sq, D))]
    return ts[:3], ts[3]


def grads_of(q, k, v, w, **kw):
    q, k, v = (t.detach().clone().requires_grad_(True) for t in (q, k, v))
    o = dt.attention(q, k, v, **kw)
    (o.float() * w.float()).sum().backward()
    return o, q.grad, k.grad, v.grad


def ref_grads(q, k, v, w, **kw):
    q, k, v = (t.detach().double().requires_grad_(True) for t in (q, k, v))
    o = ref64(q, k, v, **kw)
    (o * w.double()).sum().backward()
    return o.detach(), q.grad, k.grad, v.grad


CASES = [  # B, H, Hkv, Sq, Sk, D, causal
    (2, 4, 2, 40, 56, 32, False),
    (1, 4, 1, 33, 33, 59, True),    # MQA
    (1, 2, 2, 70, 30, 64, True),    # rows that see no key
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16],
                         ids=lambda t: str(t).split(".")[1])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c[:6])) + ("c" if c[6] else ""))
def test_cpu_grad_exact(case, dtype, seed):
    need_backend("cpu")
    B, H, Hkv, Sq, Sk, D, causal = case
    (q, k, v), w = make(seed, B, H, Hkv, Sq, Sk, D, dtype)
    o, dq, dk, dv = grads_of(q, k, v, w, causal=causal)
    ro, rq, rk, rv = ref_grads(q, k, v, w, causal=causal)
    assert dq.dtype == dtype and dk.shape == k.shape and dv.shape == v.shape
    for name, got, ref in (("o", o, ro), ("dq", dq, rq), ("dk", dk, rk), ("dv", dv, rv)):
        err = rel(got, ref)
        assert err <= BOUND[dtype], f"{name}: {err:.3e} (seed {seed})"


@pytest.mark.parametrize("fusion", ["mean", "norm"])
@pytest.mark.parametrize("G", [2, 4])
@pytest.mark.parametrize("causal", [False, True])
def test_cpu_grad_distr(G, fusion, causal, seed):
    need_backend("cpu")
    B, H, Hkv, Sq, Sk, D = 1, 4, 2, 80, 64, 32
    hb = 32
    (q, k, v), w = make(seed, B, H, Hkv, Sq, Sk, D, torch.float32)
    kw = dict(causal=causal, group_size=G, fusion=fusion, hash_block=hb, seed=seed)
    o, dq, dk, dv = grads_of(q, k, v, w, **kw)
    perm = distrattn.groups(q.numpy(), group_size=G, fusion=fusion, hash_block=hb, seed=seed)
    ro, rq, rk, rv = ref_grads(q, k, v, w, causal=causal, perm=perm, group_size=G, fusion=fusion,
                               hash_block=hb)
    for name, got, ref in (("o", o, ro), ("dq", dq, rq), ("dk", dk, rk), ("dv", dv, rv)):
        err = rel(got, ref)
        assert err <= 2e-5, f"G={G} {fusion}: {name}: {err:.3e} (seed {seed})"


def test_cpu_no_grad_paths(seed):
    need_backend("cpu")
    (q, k, v), _ = make(seed, 1, 2, 2, 16, 16, 16, torch.float32)
    plain = dt.attention(q, k, v)                          # no input needs grad
    qg = q.clone().requires_grad_(True)
    with torch.no_grad():
        o = dt.attention(qg, k, v)                         # grad disabled
    assert not o.requires_grad
    og = dt.attention(qg, k, v)
    assert og.requires_grad and og.grad_fn is not None
    assert torch.equal(plain, o) and torch.equal(plain, og.detach())
    o2, lse = torch.ops.distrattn.attention_lse(q, k, v, False, None, 1, -1, 0, 0, 0, 0)
    ref = torch.logsumexp((q.double() @ k.double().transpose(-1, -2)) * 16 ** -0.5, -1)
    assert lse.dtype == torch.float32 and lse.shape == (1, 2, 16)
    assert torch.allclose(lse.double(), ref, rtol=1e-5, atol=1e-5)
    # only k needs grad: dq is computed but not asked for
    kg = k.clone().requires_grad_(True)
    dt.attention(q, kg, v, causal=True).sum().backward()
    assert kg.grad is not None and kg.grad.shape == k.shape


def test_opcheck_lse_and_backward():
    need_backend("cpu")
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn((1, 4, 24, 16), generator=g).requires_grad_(True) for _ in range(3))
    torch.library.opcheck(torch.ops.distrattn.attention_lse.default,
                          (q, k, v, True, None, 1, -1, 0, 0, 0, 0))
    torch.library.opcheck(torch.ops.distrattn.attention_lse.default,
                          (q, k[:, :2], v[:, :2], False, 0.5, 2, 1, 8, 16, 3, 0))


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_torch_compile_forward_backward(backend, seed):
    need_backend("cpu")
    (q, k, v), w = make(seed, 2, 4, 2, 32, 48, 16, torch.float32)

    def step(q, k, v, w):
        o = dt.attention(q * 2.0, k, v, causal=True, group_size=2, hash_block=16)
        loss = (o * w).sum()
        loss.backward()
        return loss

    def run(fn):
        qq, kk, vv = (t.clone().requires_grad_(True) for t in (q, k, v))
        loss = fn(qq, kk, vv, w)
        return loss.detach(), qq.grad, kk.grad, vv.grad

    torch._dynamo.reset()
    eager = run(step)
    compiled = run(torch.compile(step, backend=backend))
    for a, b in zip(eager, compiled):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-5)


def need_cuda():
    if not torch.cuda.is_available():
        if "cuda" in os.environ.get("DISTRATTN_REQUIRE_BACKENDS", "").split(","):
            pytest.fail("no CUDA device for torch (DISTRATTN_REQUIRE_BACKENDS names cuda)")
        pytest.skip("no CUDA device")
    need_backend("cuda")


CUDA_CASES = [  # B, H, Hkv, Sq, Sk, D, causal
    (2, 4, 2, 100, 130, 64, False),
    (1, 6, 2, 77, 77, 128, True),     # GQA 6/2
    (1, 4, 1, 150, 70, 64, True),     # MQA, rows that see no key
    (1, 2, 2, 33, 257, 40, True),     # SIMT head_dim
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16],
                         ids=lambda t: str(t).split(".")[1])
@pytest.mark.parametrize("case", CUDA_CASES,
                         ids=lambda c: "x".join(map(str, c[:6])) + ("c" if c[6] else ""))
def test_cuda_grad_exact(case, dtype, seed):
    need_cuda()
    B, H, Hkv, Sq, Sk, D, causal = case
    (q, k, v), w = make(seed, B, H, Hkv, Sq, Sk, D, dtype)
    o, dq, dk, dv = grads_of(q.cuda(), k.cuda(), v.cuda(), w.cuda(), causal=causal)
    ro, rq, rk, rv = ref_grads(q, k, v, w, causal=causal)
    assert dq.device.type == "cuda" and dq.dtype == dtype and dk.shape == k.shape
    for name, got, ref in (("o", o, ro), ("dq", dq, rq), ("dk", dk, rk), ("dv", dv, rv)):
        err = rel(got.cpu(), ref)
        assert err <= BOUND[dtype], f"{name}: {err:.3e} (seed {seed})"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16],
                         ids=lambda t: str(t).split(".")[1])
@pytest.mark.parametrize("fusion", ["mean", "norm"])
@pytest.mark.parametrize("G", [2, 4])
@pytest.mark.parametrize("causal", [False, True])
def test_cuda_grad_distr(G, fusion, causal, dtype, seed):
    need_cuda()
    B, H, Hkv, Sq, Sk, D = 1, 4, 2, 150, 120, 64
    hb = 64
    (q, k, v), w = make(seed, B, H, Hkv, Sq, Sk, D, dtype)
    kw = dict(causal=causal, group_size=G, fusion=fusion, hash_block=hb, seed=seed)
    o, dq, dk, dv = grads_of(q.cuda(), k.cuda(), v.cuda(), w.cuda(), **kw)
    perm = distrattn.groups(q.numpy(), group_size=G, fusion=fusion, hash_block=hb, seed=seed)
    ro, rq, rk, rv = ref_grads(q, k, v, w, causal=causal, perm=perm, group_size=G, fusion=fusion,
                               hash_block=hb)
    for name, got, ref in (("o", o, ro), ("dq", dq, rq), ("dk", dk, rk), ("dv", dv, rv)):
        err = rel(got.cpu(), ref)
        assert err <= BOUND[dtype], f"G={G} {fusion}: {name}: {err:.3e} (seed {seed})"


def test_cuda_backward_vs_cpu_and_graph(seed):
    """The CUDA backward beside the CPU one, and a forward-backward step
    captured in a CUDA graph and replayed."""
    need_cuda()
    need_backend("cpu")
    (q, k, v), w = make(seed, 2, 4, 2, 96, 80, 64, torch.float32)
    cpu = grads_of(q, k, v, w, causal=True, group_size=2, hash_block=32)
    gpu = grads_of(q.cuda(), k.cuda(), v.cuda(), w.cuda(), causal=True, group_size=2,
                   hash_block=32)
    for name, a, b in zip(("o", "dq", "dk", "dv"), gpu, cpu):
        err = rel(a.cpu(), b.double())
        assert err <= 1e-5, f"{name}: cuda vs cpu {err:.3e} (seed {seed})"
    qh, kh, vh, wh = (t.cuda().half() for t in (q, k, v, w))
    qg, kg, vg = (t.clone().requires_grad_(True) for t in (qh, kh, vh))

    def step():
        for t in (qg, kg, vg):
            t.grad = None
        o = dt.attention(qg, kg, vg, causal=True)
        (o.float() * wh.float()).sum().backward()

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2):
            step()                     # warm up: contexts and plans made outside the capture
    torch.cuda.current_stream().wait_stream(s)
    eager = [t.grad.clone() for t in (qg, kg, vg)]
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    qg.grad.zero_(), kg.grad.zero_(), vg.grad.zero_()
    graph.replay()
    torch.cuda.synchronize()
    for name, a, b in zip(("dq", "dk", "dv"), (qg.grad, kg.grad, vg.grad), eager):
        err = rel(a.float().cpu(), b.double().cpu())
        assert err <= 1e-3, f"{name}: graph replay vs eager {err:.3e} (seed {seed})"
