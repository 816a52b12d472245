# SPDX-License-Identifier: Apache-2.0
"""Autograd of distrattn.torch.attention (SPEC.md 1b) on CPU tensors: the
gradients against torch autograd of a float64 reference of the same
strategy (exact attention; DistrAttention G = 2, 4 with the groupings of
distrattn.groups and the fusion weights as constants; per-head projections,
SPEC.md 1c, with the projections as constants), float16/bfloat16
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


def ref64_proj(q, k, v, proj, causal=False, scale=None):
    """Float64 attention of SPEC.md 1c (per-head projections A_h = proj[h, 0],
    B_h = proj[h, 1], constants) in torch ops."""
    B, H, Sq, D = q.shape
    Hkv, Sk = k.shape[1], k.shape[2]
    rep = H // Hkv
    k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    p = proj.detach().double()
    qa = torch.einsum("bhsd,hdr->bhsr", q, p[:, 0])
    kb = torch.einsum("bhsd,hdr->bhsr", k, p[:, 1])
    s = (qa @ kb.transpose(-1, -2)) * (D ** -0.5 if scale is None else scale)
    if causal:
        i = torch.arange(Sq)[:, None]
        j = torch.arange(Sk)[None, :]
        s = s.masked_fill(j > i + (Sk - Sq), float("-inf"))
    return torch.softmax(s, -1).nan_to_num(0.0) @ v


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


def make_proj(seed, H, D, r):
    """Projections near a rank-r slice of the identity, plus noise (what a
    calibration gives looks like this: A_h B_h^T close to I on the top
    directions)."""
    g = torch.Generator().manual_seed(seed + 1)
    basis = torch.linalg.qr(torch.randn(D, D, generator=g))[0][:, :r]
    a = basis + 0.1 * torch.randn(H, D, r, generator=g)
    b = basis + 0.1 * torch.randn(H, D, r, generator=g)
    return torch.stack((a, b), dim=1).contiguous()          # (H, 2, D, r)


PROJ_CASES = [  # B, H, Hkv, Sq, Sk, D, r, causal
    (1, 9, 3, 48, 48, 64, 32, True),    # SmolLM2's GQA, r = head_dim / 2
    (1, 9, 3, 40, 40, 64, 16, True),    # r = head_dim / 4
    (2, 4, 2, 40, 56, 32, 8, False),
    (1, 2, 2, 70, 30, 16, 16, True),    # rows that see no key, full rank
]


@pytest.mark.parametrize("case", PROJ_CASES,
                         ids=lambda c: "x".join(map(str, c[:7])) + ("c" if c[7] else ""))
def test_cpu_grad_proj(case, seed):
    """The projection strategy's forward and dq, dk, dv against torch
    autograd of its float64 definition (the projections constants)."""
    need_backend("cpu")
    B, H, Hkv, Sq, Sk, D, r, causal = case
    (q, k, v), w = make(seed, B, H, Hkv, Sq, Sk, D, torch.float32)
    proj = make_proj(seed, H, D, r)
    o, dq, dk, dv = grads_of(q, k, v, w, causal=causal, proj=proj)
    qd, kd, vd = (t.detach().double().requires_grad_(True) for t in (q, k, v))
    ro = ref64_proj(qd, kd, vd, proj, causal=causal)
    (ro * w.double()).sum().backward()
    for name, got, ref in (("o", o, ro.detach()), ("dq", dq, qd.grad), ("dk", dk, kd.grad),
                           ("dv", dv, vd.grad)):
        err = rel(got, ref)
        assert err <= 2e-5, f"r={r}: {name}: {err:.3e} (seed {seed})"
    # without grad: the same forward (da_attention_ext without the LSE)
    with torch.no_grad():
        o2 = dt.attention(q, k, v, causal=causal, proj=proj)
    assert rel(o2, ro.detach()) <= 2e-5


def test_cpu_proj_plans_by_content(seed):
    """Plans are cached by the projections' contents: a changed proj (same
    tensor, changed in place) gives the new result, equal ones share."""
    need_backend("cpu")
    (q, k, v), _ = make(seed, 1, 4, 2, 24, 24, 16, torch.float32)
    p = make_proj(seed, 4, 16, 8)
    o1 = dt.attention(q, k, v, proj=p)
    p2 = p.clone()
    p2.mul_(0.5)
    o2 = dt.attention(q, k, v, proj=p2)
    assert rel(o1, ref64_proj(q.double(), k.double(), v.double(), p)) <= 2e-5
    assert rel(o2, ref64_proj(q.double(), k.double(), v.double(), p2)) <= 2e-5
    p.mul_(0.5)                                     # now equal to p2, changed in place
    assert torch.equal(dt.attention(q, k, v, proj=p), o2)
    # identity projections at full rank are exact attention
    eye = torch.eye(16).expand(4, 2, 16, 16).contiguous()
    assert rel(dt.attention(q, k, v, proj=eye), ref64(q.double(), k.double(), v.double())) <= 2e-5


def test_cpu_proj_refusals():
    need_backend("cpu")
    q, k, v = torch.randn(1, 4, 8, 16), torch.randn(1, 2, 8, 16), torch.randn(1, 2, 8, 16)
    good = torch.randn(4, 2, 16, 4)
    with pytest.raises(distrattn.InvalidArgument, match="proj has shape"):
        dt.attention(q, k, v, proj=torch.randn(2, 2, 16, 4))          # per kv head: no
    with pytest.raises(distrattn.InvalidArgument, match="proj has shape"):
        dt.attention(q, k, v, proj=torch.randn(4, 2, 16, 17))         # rank > head_dim
    with pytest.raises(distrattn.InvalidArgument, match="float32"):
        dt.attention(q, k, v, proj=good.double())
    with pytest.raises(distrattn.InvalidArgument, match="group_size = 2 with proj"):
        dt.attention(q, k, v, group_size=2, proj=good)
    bad = good.clone()
    bad[1, 1, 3, 2] = float("nan")
    with pytest.raises(distrattn.InvalidArgument, match="head 1, B, row 3, col 2 is NaN"):
        dt.attention(q, k, v, proj=bad)
    qg = q.clone().requires_grad_(True)
    with pytest.raises(distrattn.InvalidArgument, match="proj has shape"):
        dt.attention(qg, k, v, proj=good[:, :1])


def test_opcheck_proj():
    need_backend("cpu")
    g = torch.Generator().manual_seed(5)
    q = torch.randn((1, 4, 24, 16), generator=g).requires_grad_(True)
    k, v = (torch.randn((1, 2, 24, 16), generator=g).requires_grad_(True) for _ in range(2))
    proj = make_proj(5, 4, 16, 8)
    torch.library.opcheck(torch.ops.distrattn.attention_lse.default,
                          (q, k, v, True, None, 1, -1, 0, 0, 0, 0, proj))


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


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16],
                         ids=lambda t: str(t).split(".")[-1])
@pytest.mark.parametrize("case", PROJ_CASES,
                         ids=lambda c: "x".join(map(str, c[:7])) + ("c" if c[7] else ""))
def test_cuda_proj_forward(case, dtype, seed):
    """The projection strategy's forward on CUDA tensors (proj stays on the
    CPU) against its float64 definition on the same rounded inputs, and
    against the CPU backend."""
    need_cuda()
    B, H, Hkv, Sq, Sk, D, r, causal = case
    (q, k, v), _ = make(seed, B, H, Hkv, Sq, Sk, D, dtype)
    proj = make_proj(seed, H, D, r)
    ref = ref64_proj(q.double(), k.double(), v.double(), proj, causal=causal)
    with torch.no_grad():
        o = dt.attention(q.cuda(), k.cuda(), v.cuda(), causal=causal, proj=proj)
        torch.cuda.synchronize()
        cpu = dt.attention(q.float(), k.float(), v.float(), causal=causal, proj=proj)
    assert o.device.type == "cuda" and o.dtype == dtype and o.shape == q.shape
    tol = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1.5e-2}[dtype]
    err = rel(o.cpu(), ref)
    assert err <= tol, f"r={r} {dtype}: {err:.3e} (seed {seed})"
    assert rel(o.cpu(), cpu.double()) <= tol, f"cuda vs cpu (seed {seed})"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16],
                         ids=lambda t: str(t).split(".")[-1])
@pytest.mark.parametrize("case", PROJ_CASES,
                         ids=lambda c: "x".join(map(str, c[:7])) + ("c" if c[7] else ""))
def test_cuda_grad_proj(case, dtype, seed):
    """The projection strategy through autograd on CUDA tensors: o, dq, dk,
    dv against torch autograd of the float64 definition on the same rounded
    inputs (the projections constants)."""
    need_cuda()
    B, H, Hkv, Sq, Sk, D, r, causal = case
    (q, k, v), w = make(seed, B, H, Hkv, Sq, Sk, D, dtype)
    proj = make_proj(seed, H, D, r)
    o, dq, dk, dv = grads_of(q.cuda(), k.cuda(), v.cuda(), w.cuda(), causal=causal, proj=proj)
    qd, kd, vd = (t.detach().double().requires_grad_(True) for t in (q, k, v))
    ro = ref64_proj(qd, kd, vd, proj, causal=causal)
    (ro * w.double()).sum().backward()
    assert dq.device.type == "cuda" and dq.dtype == dtype and dk.shape == k.shape
    for name, got, ref in (("o", o, ro.detach()), ("dq", dq, qd.grad), ("dk", dk, kd.grad),
                           ("dv", dv, vd.grad)):
        err = rel(got.cpu(), ref)
        assert err <= BOUND[dtype], f"r={r} {dtype}: {name}: {err:.3e} (seed {seed})"
