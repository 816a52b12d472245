#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Forward race on one NVIDIA GPU: distrattn's CUDA backend against the two
exact kernels PyTorch offers, SDPA's CUDNN_ATTENTION and FLASH_ATTENTION
backends, in one process, PyTorch as the client (issues 16 and 17).

Ours, through torch.ops.distrattn.attention (the op a PyTorch user calls;
every per-call cost included: hashing, transposes, projections): exact;
DistrAttention's per-tile LSH at G=2 and G=4 (hash_block 128, --fusion);
the projection strategy (SPEC.md 1c) at rank head_dim/2 and head_dim/4 (the
G=2 and G=4 equivalents of Q.K^T's width), with random orthonormal
projections per head (speed does not depend on their values).
Shapes: batch 4, 16 heads (--batch, --heads), head_dim --dims, seq_q =
seq_k = --seqs, causal and not (--causal 0,1), f16 (--dtype bf16 too).

Every call runs --iters times inside one CUDA graph, the graph is
replayed --reps times and the best replay is kept (bench/gputime.py).
TFLOP/s are counted as 4 b h s^2 d (halved for causal) for every column,
so a G > 1 or rank column reads as its speed-up over exact attention.
"x best" is the faster exact SDPA kernel's time (cuDNN or flash, per row)
over ours: above 1, ours is faster. Our exact output is checked against
cuDNN's (else flash's) on the same inputs: the largest relative error is
printed per row.

    PYTHONPATH=python DISTRATTN_LIB=build/lib/.libs/libdistrattn.so \\
      DISTRATTN_BACKEND_PATH=build/cuda/.libs python3 bench/fwd_race.py
"""
import argparse
import os
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gputime import graph_time, iters_for  # noqa: E402


def rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def orthonormal_proj(heads, d, r, seed):
    g = torch.Generator().manual_seed(seed)
    a = torch.linalg.qr(torch.randn(heads, d, d, generator=g))[0][:, :, :r]
    return torch.stack((a, a), dim=1).contiguous().float()    # (heads, 2, d, r)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seqs", default="1024,2048,4096,8192,16384")
    ap.add_argument("--dims", default="64,128")
    ap.add_argument("--causal", default="0,1")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--dtype", choices=("f16", "bf16"), default="f16")
    ap.add_argument("--fusion", choices=("mean", "norm"), default="mean")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--only", default="",
                    help="comma list of our columns to time (exact,g2,g4,r2,r4); default all")
    ap.add_argument("--variants", default="",
                    help="more settings of our kernels on the same inputs, "
                    "'LABEL[@COLS]:VAR=VALUE,...;...', e.g. 'nowg@exact,g4:DISTRATTN_CUDA_WGMMA=0' "
                    "(COLS from exact,g2,g4,r2,r4; default exact); printed after the table "
                    "with their ratio to the best SDPA kernel")
    args = ap.parse_args()
    import distrattn.torch as dt

    dev = torch.device("cuda")
    dt_ = torch.float16 if args.dtype == "f16" else torch.bfloat16
    b, h = args.batch, args.heads
    cols = ["exact", "g2", "g4", "r2", "r4"]
    if args.only:
        cols = [c for c in cols if c in args.only.split(",")]
    variants = []
    for item in filter(None, args.variants.split(";")):
        label, _, envs = item.partition(":")
        label, _, vcols = label.partition("@")
        variants.append((label, (vcols or "exact").split(","),
                         [e.split("=", 1) for e in filter(None, envs.split(","))]))
    print("GPU: %s; torch %s; cuDNN %s; batch %d, heads %d, %s, fusion %s; TFLOP/s as 4bhs^2d "
          "(causal halved)" % (torch.cuda.get_device_name(), torch.__version__,
                               torch.backends.cudnn.version(), b, h, args.dtype, args.fusion))
    names = {"exact": "ours exact", "g2": "G=2", "g4": "G=4", "r2": "proj r=d/2",
             "r4": "proj r=d/4"}
    print("| d | seq | causal | flash | cuDNN | " + " | ".join(names[c] for c in cols)
          + " | " + " | ".join(names[c] + " x best" for c in cols) + " | exact err |")
    print("|" + " ---: |" * (5 + 2 * len(cols) + 1))
    extra = []
    stream = torch.cuda.Stream()
    for d in [int(x) for x in args.dims.split(",")]:
        for s in [int(x) for x in args.seqs.split(",")]:
            for causal in [bool(int(x)) for x in args.causal.split(",")]:
                torch.manual_seed(s * 7 + d)
                q = torch.randn(b, h, s, d, device=dev, dtype=dt_)
                k = torch.randn_like(q)
                v = torch.randn_like(q)
                fl = 4.0 * b * h * s * s * d / (2 if causal else 1)
                guess = fl / 400e12 * 1e3        # ms at 400 TFLOP/s
                it = iters_for(guess)
                t, outs = {}, {}
                for name, be in (("flash", SDPBackend.FLASH_ATTENTION),
                                 ("cudnn", SDPBackend.CUDNN_ATTENTION)):
                    def f(be=be):
                        with sdpa_kernel(be):
                            return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
                    try:
                        outs[name] = f()
                        t[name] = graph_time(f, it, args.reps, stream)
                    except RuntimeError as e:  # a backend that refuses the shape
                        t[name] = None
                        print("# %s refused d=%d s=%d: %s" % (name, d, s, str(e).split("\n")[0]))
                ref = outs.get("cudnn", outs.get("flash"))
                pj = {"r2": orthonormal_proj(h, d, d // 2, d), "r4": orthonormal_proj(h, d, d // 4, d)}
                kw = {"exact": {}, "g2": {"group_size": 2, "fusion": args.fusion},
                      "g4": {"group_size": 4, "fusion": args.fusion},
                      "r2": {"proj": pj["r2"]}, "r4": {"proj": pj["r4"]}}
                err = float("nan")
                for c in cols:
                    def f(c=c):
                        return dt.attention(q, k, v, causal=causal, **kw[c])
                    try:
                        o = f()
                        if c == "exact" and ref is not None:
                            err = rel(o, ref)
                        t[c] = graph_time(f, it, args.reps, stream)
                    except Exception as e:  # noqa: BLE001 (a strategy the build refuses)
                        t[c] = None
                        print("# ours %s refused d=%d s=%d: %s" % (c, d, s, str(e).split("\n")[0]))
                best = min(x for x in (t["flash"], t["cudnn"]) if x is not None)

                def tf(x):
                    return "-" if x is None else "%.0f" % (fl / x / 1e9)

                def ratio(x):
                    return "-" if x is None else "%.2fx" % (best / x)
                print("| %d | %d | %s | %s | %s | %s | %s | %.1e |"
                      % (d, s, "yes" if causal else "no", tf(t["flash"]), tf(t["cudnn"]),
                         " | ".join(tf(t[c]) for c in cols), " | ".join(ratio(t[c]) for c in cols),
                         err))
                sys.stdout.flush()
                for label, vcols, envs in variants:
                    for key, val in envs:
                        os.environ[key] = val
                    dt.clear_cache()
                    try:
                        for c in vcols:
                            def f(c=c):
                                return dt.attention(q, k, v, causal=causal, **kw[c])
                            o = f()
                            e2 = rel(o, ref) if ref is not None and c == "exact" else float("nan")
                            tv = graph_time(f, it, args.reps, stream)
                            extra.append("| %d | %d | %s | %s %s | %s | %s | %s | %.1e |"
                                         % (d, s, "yes" if causal else "no", names[c], label,
                                            tf(tv), ratio(tv), ratio(tv / t[c] * best)
                                            if t.get(c) else "-", e2))
                    finally:
                        for key, _ in envs:
                            os.environ.pop(key)
                        dt.clear_cache()
                del q, k, v, outs, ref
                torch.cuda.empty_cache()
    if extra:
        print("\n| d | seq | causal | variant | TFLOP/s | x best | x the column's default | err |\n"
              "| ---: | ---: | --- | --- | ---: | ---: | ---: | ---: |")
        print("\n".join(extra))
    return 0


if __name__ == "__main__":
    sys.exit(main())
