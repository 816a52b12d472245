#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Decode race on one NVIDIA GPU: distrattn's CUDA backend against PyTorch
SDPA's cuDNN and flash backends, in one process, PyTorch as the client.

Shape (issue 18): batch 8, 32 query heads over 8 KV heads, head_dim 128,
f16, one query row per sequence (--seq-q), a KV cache of --seqs keys. Every
kernel runs N times inside one CUDA graph (so the host's per-call cost is
not timed; the graph is replayed --reps times, the best replay is kept).
SDPA gets the GQA heads through enable_gqa=True where the backend takes it;
where it does not, K and V are expanded to the query heads once, outside
the timing, and the row says "expanded" (that kernel then reads 4x the
bytes). Columns: microseconds per call and the K/V read rate, counted as the
bytes of the KV cache (2 x batch x kv_heads x seq_k x head_dim x 2) per
call time, the same count for every kernel; "vs cuDNN" is cuDNN's time over
ours (above 1: ours is faster). "ours, attention kernel" is the same call
with DISTRATTN_CUDA_DECODE=0 (the fused attention kernel, what ran before
the split-KV decode kernels). Every output is checked against SDPA's math
backend in float32.

    PYTHONPATH=python DISTRATTN_LIB=.../libdistrattn.so python3 bench/decode_race.py
"""
import argparse
import os
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gputime  # noqa: E402


def graph_time(fn, iters, reps):
    """Microseconds per call (bench/gputime.py's graph timing)."""
    return gputime.graph_time(fn, iters, reps) * 1e3


def sdpa_fn(backend, q, k, v, rep):
    """A closure running SDPA on one backend, and a note; None if refused."""
    for gqa in (True, False):
        kk, vv = (k, v) if gqa else (k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1))

        def f(kk=kk, vv=vv, gqa=gqa):
            with sdpa_kernel(backend):
                return F.scaled_dot_product_attention(q, kk, vv, enable_gqa=gqa) if gqa else \
                    F.scaled_dot_product_attention(q, kk, vv)
        try:
            out = f()
            torch.cuda.synchronize()
            return f, out, ("" if gqa else "expanded")
        except Exception:  # noqa: BLE001 (a backend that refuses the shape)
            continue
    return None, None, "refused"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seqs", default="4096,8192,16384,32768,65536")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--seq-q", type=int, default=1)
    ap.add_argument("--dtype", choices=("f16", "bf16"), default="f16")
    ap.add_argument("--iters", type=int, default=20, help="calls per graph")
    ap.add_argument("--reps", type=int, default=10, help="graph replays; the best is kept")
    ap.add_argument("--variants", default="",
                    help="more settings of ours timed on the same inputs, e.g. "
                    "'c1k:DISTRATTN_CUDA_DECODE_CHUNK=1024;sep:DISTRATTN_CUDA_DECODE_COMBINE=kernel'; "
                    "printed after the table, each with its ratio to cuDNN")
    args = ap.parse_args()
    variants = []
    for item in filter(None, args.variants.split(";")):
        label, _, envs = item.partition(":")
        variants.append((label, [e.split("=", 1) for e in filter(None, envs.split(","))]))
    extra = []
    import distrattn.torch as dt

    dev = torch.device("cuda")
    dt_ = torch.float16 if args.dtype == "f16" else torch.bfloat16
    b, h, hk, d, sq = args.batch, args.heads, args.kv_heads, args.dim, args.seq_q
    rep = h // hk
    print("GPU: %s; torch %s; batch %d, heads %d, kv heads %d, head_dim %d, seq_q %d, %s"
          % (torch.cuda.get_device_name(), torch.__version__, b, h, hk, d, sq, args.dtype))
    print("| seq_k | K+V MiB | ours us | ours TB/s | ours, attention kernel us | cuDNN us | cuDNN TB/s "
          "| flash us | flash TB/s | vs cuDNN | vs flash | max err |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    worst = 0.0
    for s in [int(x) for x in args.seqs.split(",")]:
        torch.manual_seed(s)
        q = torch.randn(b, h, sq, d, device=dev, dtype=dt_)
        k = torch.randn(b, hk, s, d, device=dev, dtype=dt_)
        v = torch.randn(b, hk, s, d, device=dev, dtype=dt_)
        kvb = 2.0 * b * hk * s * d * q.element_size()
        # sq > 1: bottom-right causal is what decode means; SDPA's causal is
        # top-left, so both run non-causal over the whole cache here
        with sdpa_kernel(SDPBackend.MATH):
            ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), enable_gqa=True)
        res = {}
        for mode in ("1", "0"):
            os.environ["DISTRATTN_CUDA_DECODE"] = mode
            dt.clear_cache()
            out = dt.attention(q, k, v)
            torch.cuda.synchronize()
            err = (out.float() - ref).abs().max().item()
            worst = max(worst, err)
            res[mode] = graph_time(lambda: dt.attention(q, k, v), args.iters, args.reps)
        os.environ.pop("DISTRATTN_CUDA_DECODE")
        dt.clear_cache()
        row = {}
        for name, be in (("cudnn", SDPBackend.CUDNN_ATTENTION), ("flash", SDPBackend.FLASH_ATTENTION)):
            f, o, note = sdpa_fn(be, q, k, v, rep)
            if f is None:
                row[name] = (None, note)
                continue
            worst_s = (o.float() - ref).abs().max().item()
            row[name] = (graph_time(f, args.iters, args.reps), note, worst_s)

        def cell(name):
            t = row[name][0]
            if t is None:
                return "refused", "-", "-"
            note = (" (%s)" % row[name][1]) if row[name][1] else ""
            return "%.1f%s" % (t, note), "%.2f" % (kvb / t / 1e6), "%.2fx" % (t / res["1"])
        cu, fl = cell("cudnn"), cell("flash")
        print("| %d | %.0f | %.1f | %.2f | %.1f | %s | %s | %s | %s | %s | %s | %.1e |"
              % (s, kvb / 2**20, res["1"], kvb / res["1"] / 1e6, res["0"], cu[0], cu[1], fl[0],
                 fl[1], cu[2], fl[2], worst))
        sys.stdout.flush()
        for label, envs in variants:
            for key, val in envs:
                os.environ[key] = val
            dt.clear_cache()
            out = dt.attention(q, k, v)
            torch.cuda.synchronize()
            err = (out.float() - ref).abs().max().item()
            worst = max(worst, err)
            t = graph_time(lambda: dt.attention(q, k, v), args.iters, args.reps)
            for key, _ in envs:
                os.environ.pop(key)
            dt.clear_cache()
            tc = row["cudnn"][0]
            extra.append("| %d | %s | %.1f | %.2f | %s |" % (s, label, t, kvb / t / 1e6,
                                                            "%.2fx" % (tc / t) if tc else "-"))
        del q, k, v, ref
        torch.cuda.empty_cache()
    if extra:
        print("\n| seq_k | variant | us | TB/s | vs cuDNN |\n| ---: | --- | ---: | ---: | ---: |")
        print("\n".join(extra))
    tol = 2e-2 if args.dtype == "f16" else 5e-2
    print("largest |ours - math f32| over all rows: %.2e (%s)" % (worst, "ok" if worst <= tol else "TOO LARGE"))
    return 0 if worst <= tol else 1


if __name__ == "__main__":
    sys.exit(main())
