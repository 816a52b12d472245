# SPDX-License-Identifier: Apache-2.0
"""distrattn.projections: DATTNPRJ files and folding projections into a
model's query and key weights (SPEC.md 1c; tools/PROJ_FORMAT.md)."""
import math
import struct

import numpy as np
import pytest

from distrattn import projections


def write_prj(path, proj, method=1, model=b"test model", version=1, size_fix=0):
    layers, heads, two, d, r = proj.shape
    assert two == 2
    head = b"DATTNPRJ" + struct.pack("<6I", version, layers, heads, d, r, method)
    head += model.ljust(64, b"\0")
    data = head + proj.astype("<f4").tobytes()
    if size_fix < 0:
        data = data[:size_fix]
    elif size_fix > 0:
        data += b"\0" * size_fix
    path.write_bytes(data)


def test_load_roundtrip(tmp_path, seed):
    rng = np.random.default_rng(seed)
    proj = rng.standard_normal((3, 4, 2, 16, 5)).astype(np.float32)
    f = tmp_path / "a.prj"
    write_prj(f, proj, method=0, model=b"layers 0,1,2 of 3")
    got, info = projections.load(f)
    assert got.dtype == np.float32 and got.shape == (3, 4, 2, 16, 5)
    assert np.array_equal(got, proj)
    assert info == {"layers": 3, "heads": 4, "head_dim": 16, "rank": 5, "method": "pca",
                    "model": "layers 0,1,2 of 3"}


@pytest.mark.parametrize("bad,what", [
    (dict(size_fix=-4), "bytes, the header says"),
    (dict(size_fix=4), "bytes, the header says"),
    (dict(version=2), "version 2"),
    (dict(method=7), "method = 7"),
    (dict(model=b"bad\x01name"), "printable"),
])
def test_load_refuses_bad_files(tmp_path, bad, what):
    proj = np.ones((1, 2, 2, 8, 4), dtype=np.float32)
    f = tmp_path / "b.prj"
    write_prj(f, proj, **bad)
    with pytest.raises(ValueError, match=what):
        projections.load(f)


def test_load_refuses_magic_rank_and_nan(tmp_path):
    f = tmp_path / "c.prj"
    f.write_bytes(b"NOTAPRJ!" + bytes(200))
    with pytest.raises(ValueError, match="not a DATTNPRJ"):
        projections.load(f)
    proj = np.ones((1, 1, 2, 4, 4), dtype=np.float32)
    write_prj(f, proj)
    data = bytearray(f.read_bytes())
    struct.pack_into("<I", data, 24, 5)          # rank 5 > head_dim 4
    f.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="rank = 5"):
        projections.load(f)
    proj[0, 0, 1, 2, 3] = np.nan
    write_prj(f, proj)
    with pytest.raises(ValueError, match="not finite"):
        projections.load(f)


def attention64(q, k, v, scale, causal):
    """float64 attention: q [H][S][dq], k [H][S][dq], v [H][S][dv]."""
    s = np.einsum("hid,hjd->hij", q, k) * scale
    if causal:
        n = s.shape[-1]
        s = np.where(np.tril(np.ones((n, n), bool)), s, -np.inf)
    s -= s.max(-1, keepdims=True)
    p = np.exp(s)
    p /= p.sum(-1, keepdims=True)
    return np.einsum("hij,hjd->hid", p, v)


def strategy64(x, wq, wk, wv, bq, bk, proj, heads, kv_heads, d, causal):
    """The projection strategy of SPEC 1c on the layer's own Q, K, V."""
    rep = heads // kv_heads
    q = (x @ wq.T + bq).reshape(-1, heads, d).transpose(1, 0, 2)
    k = (x @ wk.T + bk).reshape(-1, kv_heads, d).transpose(1, 0, 2)[np.arange(heads) // rep]
    v = (x @ wv.T).reshape(-1, kv_heads, d).transpose(1, 0, 2)[np.arange(heads) // rep]
    qa = np.einsum("hsd,hdr->hsr", q, proj[:, 0])
    kb = np.einsum("hsd,hdr->hsr", k, proj[:, 1])
    return attention64(qa, kb, v, 1.0 / math.sqrt(d), causal), (q, k, v)


@pytest.mark.parametrize("heads,kv_heads,d,r,causal", [(4, 4, 16, 4, False), (6, 2, 16, 5, True),
                                                       (9, 3, 64, 16, True)])
def test_fold_is_the_strategy(heads, kv_heads, d, r, causal, seed):
    rng = np.random.default_rng(seed)
    dm, seq = 24, 11
    x = rng.standard_normal((seq, dm))
    wq = rng.standard_normal((heads * d, dm)) / math.sqrt(dm)
    wk = rng.standard_normal((kv_heads * d, dm)) / math.sqrt(dm)
    wv = rng.standard_normal((kv_heads * d, dm)) / math.sqrt(dm)
    bq, bk = rng.standard_normal(heads * d), rng.standard_normal(kv_heads * d)
    proj = rng.standard_normal((heads, 2, d, r))
    want, _ = strategy64(x, wq, wk, wv, bq, bk, proj, heads, kv_heads, d, causal)
    wq2, wk2, bq2, bk2 = projections.fold(wq, wk, proj, heads, kv_heads, bq, bk)
    assert wq2.shape == (heads * r, dm) and wk2.shape == (heads * r, dm)
    assert wq2.dtype == np.float64 and bk2.shape == (heads * r,)
    rep = heads // kv_heads
    q2 = (x @ wq2.T + bq2).reshape(seq, heads, r).transpose(1, 0, 2)
    k2 = (x @ wk2.T + bk2).reshape(seq, heads, r).transpose(1, 0, 2)
    v = (x @ wv.T).reshape(seq, kv_heads, d).transpose(1, 0, 2)[np.arange(heads) // rep]
    got = attention64(q2, k2, v, 1.0 / math.sqrt(d), causal)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    # the folded logits differ from exact attention's (the test can fail)
    exact = attention64(*strategy64(x, wq, wk, wv, bq, bk, proj, heads, kv_heads, d, causal)[1],
                        1.0 / math.sqrt(d), causal)
    assert np.abs(exact - want).max() > 1e-3


def test_fold_refuses_bad_shapes():
    proj = np.zeros((4, 2, 8, 2))
    with pytest.raises(ValueError, match="kv_heads must divide"):
        projections.fold(np.zeros((32, 5)), np.zeros((24, 5)), proj, 4, 3)
    with pytest.raises(ValueError, match="w_q has shape"):
        projections.fold(np.zeros((31, 5)), np.zeros((16, 5)), proj, 4, 2)
    with pytest.raises(ValueError, match="w_k has shape"):
        projections.fold(np.zeros((32, 5)), np.zeros((16, 6)), proj, 4, 2)
    with pytest.raises(ValueError, match="proj has shape"):
        projections.fold(np.zeros((32, 5)), np.zeros((16, 5)), proj[:3], 4, 2)
    with pytest.raises(ValueError, match="b_q has shape"):
        projections.fold(np.zeros((32, 5)), np.zeros((16, 5)), proj, 4, 2, b_q=np.zeros(3))


def test_fold_torch_matches_library(seed):
    """Folded weights in a torch layer (SDPA, scale of the original
    head_dim) and the library's projection strategy on the unfolded Q, K, V
    (CPU backend, float32) against the folded layer in float64. The logits
    of random projections reach about 100, so a float32 result is off by up
    to eps32 * max|logit| * max|v| (measured: half that, over 150 seeds);
    the bound is four times it, and a wrong fold is off by O(1)."""
    torch = pytest.importorskip("torch")
    import inspect

    import distrattn.torch as dt
    if "proj" not in inspect.signature(dt.attention).parameters:
        pytest.skip("distrattn.torch.attention has no proj argument")
    g = torch.Generator().manual_seed(seed)
    heads, kv_heads, d, r, dm, seq = 6, 2, 32, 8, 40, 37
    lin_q = torch.randn(heads * d, dm, generator=g) / dm ** 0.5
    lin_k = torch.randn(kv_heads * d, dm, generator=g) / dm ** 0.5
    lin_v = torch.randn(kv_heads * d, dm, generator=g) / dm ** 0.5
    proj = torch.randn(heads, 2, d, r, generator=g)
    x = torch.randn(1, seq, dm, generator=g)
    q = (x @ lin_q.T).view(1, seq, heads, d).transpose(1, 2)
    k = (x @ lin_k.T).view(1, seq, kv_heads, d).transpose(1, 2)
    v = (x @ lin_v.T).view(1, seq, kv_heads, d).transpose(1, 2)
    ours = dt.attention(q.contiguous(), k.contiguous(), v.contiguous(), causal=True, proj=proj)

    def folded_layer(dtype):
        wq2, wk2, _, _ = projections.fold(lin_q.to(dtype), lin_k.to(dtype), proj.to(dtype),
                                          heads, kv_heads)
        assert isinstance(wq2, torch.Tensor) and wq2.dtype == dtype
        xx = x.to(dtype)
        q2 = (xx @ wq2.T).view(1, seq, heads, r).transpose(1, 2)
        k2 = (xx @ wk2.T).view(1, seq, heads, r).transpose(1, 2)
        vv = (xx @ lin_v.to(dtype).T).view(1, seq, kv_heads, d).transpose(1, 2)
        vv = vv.repeat_interleave(heads // kv_heads, 1)
        out = torch.nn.functional.scaled_dot_product_attention(q2, k2, vv, is_causal=True,
                                                               scale=1.0 / d ** 0.5)
        return out, (q2 @ k2.transpose(-1, -2)).abs().max().item() / d ** 0.5, vv.abs().max().item()

    ref, max_logit, max_v = folded_layer(torch.float64)
    folded, _, _ = folded_layer(torch.float32)
    tol = 4 * torch.finfo(torch.float32).eps * (1 + max_logit) * max_v
    assert (ours.double() - ref).abs().max().item() < tol
    assert (folded.double() - ref).abs().max().item() < tol
