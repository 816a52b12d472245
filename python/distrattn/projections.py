# SPDX-License-Identifier: Apache-2.0
"""Per-head projections of the projection strategy (SPEC.md 1c) in Python.

`load(path)` reads a DATTNPRJ file as `distrattn calibrate` writes it
(tools/PROJ_FORMAT.md) into a numpy array `[layers][heads][2][head_dim][rank]`
(per layer exactly the `proj` array the library takes) and its header.

`fold(w_q, w_k, proj, ...)` folds one layer's projections into a model's
query and key weights, for models whose attention has no rotary (or other
position-dependent) transform between the projections and the logits
(BERT, MPNet, GPT-2-style learned positions): the projection strategy's
logits `scale (Q_h A_h)(K_kv(h) B_h)^T` are then ordinary attention logits
of the folded layer, whose query head h has `rank` columns `x W_q,h A_h` and
whose key head h has `x W_k,kv(h) B_h`. With GQA the folded keys are per
query head (each B_h is), so the folded layer has heads key heads of rank
columns. V and the output projection are unchanged; the softmax scale must
stay the original `1/sqrt(head_dim)` (pass it explicitly: the folded
head_dim is `rank`). Models with RoPE cannot be folded: run the strategy in
the library instead (da_attn_ext.strategy, distrattn.torch.attention(proj=)).

Only numpy is needed; torch tensors are accepted by `fold` and returned as
torch tensors of the input's dtype and device.
"""
import struct

MAGIC = b"DATTNPRJ"
HEADER = 96
METHODS = {0: "pca", 1: "optimal", 2: "other"}


def load(path):
    """Read a DATTNPRJ file. Returns (proj, info): proj a float32 numpy
    array [layers][heads][2][head_dim][rank] (A_h then B_h per head), info a
    dict with layers, heads, head_dim, rank, method and model. Raises
    ValueError naming what is wrong for a file that is not exactly the
    format (tools/PROJ_FORMAT.md)."""
    import numpy as np

    with open(path, "rb") as f:
        data = f.read()
    if len(data) < HEADER:
        raise ValueError(f"{path}: {len(data)} bytes, shorter than the {HEADER}-byte header")
    if data[:8] != MAGIC:
        raise ValueError(f"{path}: not a DATTNPRJ file (magic {data[:8]!r})")
    version, layers, heads, head_dim, rank, method = struct.unpack_from("<6I", data, 8)
    if version != 1:
        raise ValueError(f"{path}: format version {version}, this reader knows version 1")
    for name, val, hi in (("layers", layers, 4096), ("heads", heads, 4096),
                          ("head_dim", head_dim, 256), ("rank", rank, head_dim)):
        if not 1 <= val <= hi:
            raise ValueError(f"{path}: {name} = {val} outside 1..{hi}")
    if method not in METHODS:
        raise ValueError(f"{path}: method = {method} is not 0, 1 or 2")
    model = data[32:96].rstrip(b"\0")
    if b"\0" in model or any(c < 0x20 or c > 0x7E for c in model):
        raise ValueError(f"{path}: the model field is not NUL-padded printable ASCII")
    want = HEADER + 4 * layers * heads * 2 * head_dim * rank
    if len(data) != want:
        raise ValueError(f"{path}: {len(data)} bytes, the header says {want}")
    proj = np.frombuffer(data, dtype="<f4", offset=HEADER).astype(np.float32)
    proj = proj.reshape(layers, heads, 2, head_dim, rank)
    if not np.isfinite(proj).all():
        raise ValueError(f"{path}: the projections hold a value that is not finite")
    info = {"layers": layers, "heads": heads, "head_dim": head_dim, "rank": rank,
            "method": METHODS[method], "model": model.decode()}
    return proj, info


def fold(w_q, w_k, proj, heads, kv_heads, b_q=None, b_k=None):
    """Fold one layer's projections into query and key weights.

    w_q: [heads * head_dim, d_model] and w_k: [kv_heads * head_dim, d_model]
    (the weight of a Linear layer, out x in; head h's rows are h * head_dim
    .. h * head_dim + head_dim - 1), b_q / b_k their biases or None; proj:
    [heads][2][head_dim][rank] (one layer of `load`'s array). Returns
    (w_q', w_k', b_q', b_k'): w_q' and w_k' are [heads * rank, d_model] (row
    h * rank + j of w_q' is sum_e A_h[e][j] w_q[h * head_dim + e], of w_k'
    sum_e B_h[e][j] w_k[kv(h) * head_dim + e], kv(h) = h // (heads /
    kv_heads)), the biases [heads * rank] or None. The folded layer's
    attention with scale 1/sqrt(head_dim) of the original model is the
    projection strategy's. Computed in float64; numpy in, numpy out (float32
    unless the input is float64), torch in, torch out (input's dtype and
    device)."""
    import numpy as np

    torch_in = type(w_q).__module__.startswith("torch")

    def arr(x):
        if x is None:
            return None
        if type(x).__module__.startswith("torch"):
            return x.detach().cpu().double().numpy()
        return np.asarray(x, dtype=np.float64)

    wq, wk, p, bq, bk = arr(w_q), arr(w_k), arr(proj), arr(b_q), arr(b_k)
    if heads <= 0 or kv_heads <= 0 or heads % kv_heads:
        raise ValueError(f"heads = {heads}, kv_heads = {kv_heads}: kv_heads must divide heads")
    if p.ndim != 4 or p.shape[0] != heads or p.shape[1] != 2 or p.shape[2] < 1:
        raise ValueError(f"proj has shape {p.shape}, wanted (heads={heads}, 2, head_dim, rank)")
    d, r = p.shape[2], p.shape[3]
    if wq.ndim != 2 or wq.shape[0] != heads * d:
        raise ValueError(f"w_q has shape {wq.shape}, wanted ({heads * d}, d_model)")
    if wk.ndim != 2 or wk.shape[0] != kv_heads * d or wk.shape[1] != wq.shape[1]:
        raise ValueError(f"w_k has shape {wk.shape}, wanted ({kv_heads * d}, {wq.shape[1]})")
    for name, b, n in (("b_q", bq, heads * d), ("b_k", bk, kv_heads * d)):
        if b is not None and b.shape != (n,):
            raise ValueError(f"{name} has shape {b.shape}, wanted ({n},)")
    rep = heads // kv_heads
    wq3 = wq.reshape(heads, d, -1)
    wk3 = wk.reshape(kv_heads, d, -1)[np.arange(heads) // rep]
    a, bm = p[:, 0], p[:, 1]                       # [heads][d][r]
    wq2 = np.einsum("hdr,hdm->hrm", a, wq3).reshape(heads * r, -1)
    wk2 = np.einsum("hdr,hdm->hrm", bm, wk3).reshape(heads * r, -1)
    bq2 = None if bq is None else np.einsum("hdr,hd->hr", a, bq.reshape(heads, d)).reshape(-1)
    bk2 = None if bk is None else np.einsum(
        "hdr,hd->hr", bm, bk.reshape(kv_heads, d)[np.arange(heads) // rep]).reshape(-1)
    if torch_in:
        import torch

        def back(x, like):
            return None if x is None else torch.from_numpy(x).to(dtype=like.dtype,
                                                                  device=like.device)
        return back(wq2, w_q), back(wk2, w_k), back(bq2, w_q), back(bk2, w_k)
    dt = np.float64 if np.asarray(w_q).dtype == np.float64 else np.float32
    cast = (lambda x: None if x is None else x.astype(dt))
    return cast(wq2), cast(wk2), cast(bq2), cast(bk2)
