#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Forward + backward race on one NVIDIA GPU: distrattn's CUDA backend
(exact, DistrAttention G = 2 and G = 4) against PyTorch SDPA's
FLASH_ATTENTION and CUDNN_ATTENTION backends, in one process, PyTorch as
the client (issue 20).

Shapes: batch x heads = 64 (--batch 4 --heads 16), head_dim 64 and 128,
seq 4096..16384 (seq_q = seq_k), causal and not, f16 (--dtype bf16 too).
Ours is called through the package's ops: torch.ops.distrattn.attention_lse
(the forward that also writes the log-sum-exp the backward needs) and
torch.ops.distrattn.attention_backward (da_attention_backward); SDPA's
forward is F.scaled_dot_product_attention under sdpa_kernel(backend), its
backward torch.autograd.grad of that output (retain_graph), the way
torch.cuda.make_graphed_callables captures a backward. Every timed call
runs --iters times inside one CUDA graph (so the host's per-call cost is
not timed), the graph is replayed --reps times and the best replay is
kept. SDPA's causal is top-left, ours bottom-right: the same mask here
(seq_q = seq_k).

Columns: milliseconds per call and TFLOP/s, counted as 4 b h s^2 d for the
forward and 2.5 times that for the backward (halved when causal), the same
count for every column, so a G > 1 column reads as its speed-up over exact
attention of the same shape; "x flash" / "x cuDNN" is SDPA's time over
ours (above 1: ours is faster), for the forward, the backward and the two
together. --variants adds rows of ours under other environment settings
(e.g. 'split:DISTRATTN_CUDA_BWD_DQ=split;k64:DISTRATTN_CUDA_BWD_KEYS=64'),
each labelled, on the same inputs, for every group size (the settings are
applied, then distrattn.torch.clear_cache(), so that new plans are made,
and removed after the row). Before timing, ours' exact gradients (every
variant's) are checked against SDPA's (flash, else cuDNN, else math) on
the same inputs: the largest relative error ||ours - sdpa|| / ||sdpa|| of
dq, dk, dv is printed per row.

    PYTHONPATH=python DISTRATTN_LIB=build/lib/.libs/libdistrattn.so \\
      DISTRATTN_BACKEND_PATH=build/cuda/.libs python3 bench/bwd_race.py \\
      --seqs 4096,16384 --variants 'split:DISTRATTN_CUDA_BWD_DQ=split'

(add ';r64:DISTRATTN_CUDA_BWD_DQ=split,DISTRATTN_CUDA_BWD_DQ_ROWS=64' for
split's dQ kernel with 64-row blocks)
"""
import argparse
import os
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gputime import graph_time  # noqa: E402  (ms per call, iters calls in one CUDA graph)


def rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def ours_fns(q, k, v, dout, causal, G, fusion):
    """Closures for our forward (with the LSE) and backward, and the
    backward's gradients."""
    ops = torch.ops.distrattn
    args = (causal, None, G, fusion, 0, 0, 0, 0)
    o, lse = ops.attention_lse(q, k, v, *args)

    def fwd():
        return ops.attention_lse(q, k, v, *args)

    def bwd():
        return ops.attention_backward(dout, q, k, v, o, lse, *args)

    return fwd, bwd, bwd()


def sdpa_fns(backend, q, k, v, dout, causal, stream):
    """Closures for SDPA's forward and backward on one backend, and its
    gradients; None when the backend refuses the shape. The forward whose
    backward is timed runs on stream, the stream the backward is captured
    on (autograd runs a backward op on its forward op's stream)."""
    qg, kg, vg = (t.detach().clone().requires_grad_(True) for t in (q, k, v))
    stream.wait_stream(torch.cuda.current_stream())
    try:
        with torch.cuda.stream(stream), sdpa_kernel(backend):
            o = F.scaled_dot_product_attention(qg, kg, vg, is_causal=causal)
            grads = torch.autograd.grad(o, (qg, kg, vg), dout, retain_graph=True)
        torch.cuda.synchronize()
    except Exception:  # noqa: BLE001 (a backend that refuses the shape)
        torch.cuda.synchronize()
        return None

    def fwd():
        with torch.no_grad(), sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal)

    def bwd():
        return torch.autograd.grad(o, (qg, kg, vg), dout, retain_graph=True)

    return fwd, bwd, grads


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seqs", default="4096,8192,16384")
    ap.add_argument("--dims", default="64,128")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--causal", default="0,1", help="which of 0 (no mask) and 1 (causal)")
    ap.add_argument("--groups", default="1,2,4", help="our group sizes (1 = exact)")
    ap.add_argument("--fusion", choices=("mean", "norm"), default="mean")
    ap.add_argument("--bwd-keys", default="",
                    help="keys per block of our mma.sync backward (DISTRATTN_CUDA_BWD_KEYS, which "
                    "also picks that kernel over the Hopper one), e.g. 64,128 for a row each; "
                    "default: unset (the library's choice)")
    ap.add_argument("--variants", default="",
                    help="more settings of ours, each a row: 'label:ENV=VAL,ENV=VAL;label2:...', "
                    "e.g. 'split:DISTRATTN_CUDA_BWD_DQ=split'")
    ap.add_argument("--dtype", choices=("f16", "bf16"), default="f16")
    ap.add_argument("--iters", type=int, default=5, help="calls per graph")
    ap.add_argument("--reps", type=int, default=5, help="graph replays; the best is kept")
    args = ap.parse_args()
    variants = [("", [])]  # the default settings first
    for item in filter(None, args.variants.split(";")):
        label, _, envs = item.partition(":")
        variants.append((label, [e.split("=", 1) for e in filter(None, envs.split(","))]))
    import distrattn.torch as dtorch  # registers the ops

    dev = torch.device("cuda")
    dtype = torch.float16 if args.dtype == "f16" else torch.bfloat16
    fus = 0 if args.fusion == "mean" else 1
    b, h = args.batch, args.heads
    groups = [int(x) for x in args.groups.split(",")]
    cs = torch.cuda.Stream()  # every capture's stream (and the timed SDPA forwards')
    print("GPU: %s; torch %s; batch %d x heads %d, %s, fusion %s (G > 1)"
          % (torch.cuda.get_device_name(), torch.__version__, b, h, args.dtype, args.fusion))
    cols = ["d", "seq", "causal", "impl", "fwd ms", "bwd ms", "fwd TF/s", "bwd TF/s",
            "fwd x flash", "bwd x flash", "f+b x flash", "fwd x cuDNN", "bwd x cuDNN",
            "f+b x cuDNN"]
    print("| " + " | ".join(cols) + " |")
    print("|" + " ---: |" * len(cols))
    worst = 0.0
    for d in [int(x) for x in args.dims.split(",")]:
        for s in [int(x) for x in args.seqs.split(",")]:
            for causal in [bool(int(x)) for x in args.causal.split(",")]:
                torch.manual_seed(s * 7 + d)
                q, k, v, dout = (torch.randn(b, h, s, d, device=dev, dtype=dtype)
                                 for _ in range(4))
                flops = 4.0 * b * h * s * s * d * (0.5 if causal else 1.0)
                sd = {}
                for name, be in (("flash", SDPBackend.FLASH_ATTENTION),
                                 ("cuDNN", SDPBackend.CUDNN_ATTENTION)):
                    fns = sdpa_fns(be, q, k, v, dout, causal, cs)
                    if fns is None:
                        sd[name] = None
                        continue
                    tf = graph_time(fns[0], args.iters, args.reps, cs)
                    tb = graph_time(fns[1], args.iters, args.reps, cs)
                    sd[name] = (tf, tb, fns[2])
                    del fns
                ref = next((x[2] for x in sd.values() if x is not None), None)
                rows = []
                for name in ("flash", "cuDNN"):
                    if sd[name] is not None:
                        rows.append(("SDPA " + name, sd[name][0], sd[name][1]))
                for G, keys, (label, envs) in [(G, kb, vr) for G in groups
                                               for kb in args.bwd_keys.split(",")
                                               for vr in variants]:
                    if keys:
                        os.environ["DISTRATTN_CUDA_BWD_KEYS"] = keys
                    else:
                        os.environ.pop("DISTRATTN_CUDA_BWD_KEYS", None)
                    saved = {key: os.environ.get(key) for key, _ in envs}
                    for key, val in envs:
                        os.environ[key] = val
                    dtorch.clear_cache()  # new plans under these settings
                    fwd, bwd, grads = ours_fns(q, k, v, dout, causal, G, fus)
                    note = "" if "," not in args.bwd_keys else " k%s" % keys
                    note += " [%s]" % label if label else ""
                    if G == 1:
                        if ref is None:
                            _, _, ref = sdpa_fns(SDPBackend.MATH, q, k, v, dout, causal, cs)
                        err = max(rel(a, r) for a, r in zip(grads, ref))
                        worst = max(worst, err)
                        note += " (grad err %.1e)" % err
                    tf = graph_time(fwd, args.iters, args.reps, cs)
                    tb = graph_time(bwd, args.iters, args.reps, cs)
                    rows.append(("ours " + ("exact" if G == 1 else "G=%d" % G) + note, tf, tb))
                    del fwd, bwd, grads
                    for key, old in saved.items():
                        if old is None:
                            os.environ.pop(key, None)
                        else:
                            os.environ[key] = old
                    dtorch.clear_cache()
                for impl, tf, tb in rows:
                    cells = [str(d), str(s), "yes" if causal else "no", impl, "%.2f" % tf,
                             "%.2f" % tb, "%.0f" % (flops / tf / 1e9),
                             "%.0f" % (2.5 * flops / tb / 1e9)]
                    for name in ("flash", "cuDNN"):
                        x = sd[name]
                        if x is None:
                            cells += ["-", "-", "-"]
                        else:
                            cells += ["%.2fx" % (x[0] / tf), "%.2fx" % (x[1] / tb),
                                      "%.2fx" % ((x[0] + x[1]) / (tf + tb))]
                    print("| " + " | ".join(cells) + " |")
                    sys.stdout.flush()
                del q, k, v, dout, sd, ref
                torch.cuda.empty_cache()
    tol = 1e-2 if dtype == torch.float16 else 4e-2
    print("largest relative error of our exact gradients against SDPA's: %.2e (%s)"
          % (worst, "ok" if worst <= tol else "TOO LARGE"))
    return 0 if worst <= tol else 1


if __name__ == "__main__":
    sys.exit(main())
