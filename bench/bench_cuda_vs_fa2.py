#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Race distrattn's CUDA kernels against the two exact kernels of PyTorch's
scaled_dot_product_attention: its FLASH_ATTENTION backend (FlashAttention-2)
and its CUDNN_ATTENTION backend, both timed in the same run for every row;
every ratio is against the faster of the two ("best"). bench/fwd_race.py
times the same through the PyTorch op (and the projection strategy).

f16, batch 4, 16 heads, head_dim 64 and 128, seq 1024..16384, causal and
not; ours: exact (G=1) and DistrAttention G=2 and G=4 (hash_block 128,
MEAN fusion unless --fusion norm, the fused tensor-core kernel). TFLOP/s are counted as
4*b*h*s*s*d (halved for causal) for every column, so a G>1 column reads as
the speed-up over exact attention of the same shape.

Ours is timed by bench/cuda_check (the module's interface called directly,
ITERS calls enqueued back to back then one synchronize, median of 5
rounds); FA2 by CUDA events around the same pattern.

With --cl-bin (the `distrattn` program of a build with the OpenCL module;
set DISTRATTN_BACKEND_PATH to that build's cl/.libs), a second table gives
the OpenCL backend on the same GPU, same shapes and fusion, against the same
FA2 times (`distrattn bench --backend opencl`, median of 5 after 2 warm-ups).

--skip-cuda times the SDPA kernels alone and prints only the OpenCL table (a GPU session
that already has the CUDA table).

Usage: python3 bench/bench_cuda_vs_fa2.py --check-bin PATH [--cl-bin PATH] [--skip-cuda]
       [--seqs ...] [--dims ...] [--fusion mean|norm]
"""
import argparse
import csv
import datetime
import io
import os
import statistics
import subprocess
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel


def flops(b, h, s, d, causal):
    f = 4.0 * b * h * s * s * d
    return f / 2 if causal else f


def iters_for(s):
    return max(2, int(64 * (1024 / s) ** 2))


def time_fa2(b, h, s, d, causal, iters, backend=SDPBackend.FLASH_ATTENTION):
    q = torch.randn(b, h, s, d, device="cuda", dtype=torch.float16)
    k = torch.randn_like(q)
    v = torch.randn_like(q)
    with sdpa_kernel(backend):
        for _ in range(3):
            F.scaled_dot_product_attention(q, k, v, is_causal=bool(causal))
        torch.cuda.synchronize()
        ts = []
        for _ in range(5):
            e0 = torch.cuda.Event(enable_timing=True)
            e1 = torch.cuda.Event(enable_timing=True)
            e0.record()
            for _ in range(iters):
                F.scaled_dot_product_attention(q, k, v, is_causal=bool(causal))
            e1.record()
            torch.cuda.synchronize()
            ts.append(e0.elapsed_time(e1) / iters)
    del q, k, v
    return statistics.median(ts)


def time_ours(binpath, b, h, s, d, causal, g, iters, fusion):
    # DT=1 (f16) B H S D CAUSAL G ITERS; DA_BENCH_FUSION picks MEAN or NORM
    env = dict(os.environ, DA_BENCH_FUSION=fusion)
    out = subprocess.run([binpath, "bench", "1", str(b), str(h), str(s), str(d), str(causal),
                          str(g), str(iters)], capture_output=True, text=True, timeout=600, env=env)
    for line in out.stdout.splitlines():
        if line.startswith("ms "):
            return float(line.split()[1])
    raise RuntimeError("cuda_check failed: %s %s" % (out.stdout, out.stderr))


def time_opencl(clbin, b, h, seqs, d, causal, fusion):
    """{seq: (ms exact, ms G=2, ms G=4)} and the device's name, from
    `distrattn bench --backend opencl --csv` (f16, fused kernels only)."""
    cmd = [clbin, "bench", "--backend", "opencl", "--seqs", ",".join(str(x) for x in seqs),
           "--dims", str(d), "--batch", str(b), "--heads", str(h), "--dtype", "f16",
           "--mask", "causal" if causal else "none", "--no-gemm", "--fusion", fusion, "--csv",
           "--repeat", "5", "--warmup", "2"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if out.returncode != 0:
        raise RuntimeError("distrattn bench failed (%d): %s" % (out.returncode, out.stderr.strip()))
    res, name = {}, "?"
    for r in csv.DictReader(io.StringIO(out.stdout)):
        name = r["device_name"]
        res[int(r["seq"])] = tuple(float(r[k]) if r[k] not in ("", "-") else float("nan")
                                   for k in ("fused_ms", "g2_ms", "g4_ms"))
    return res, name


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--check-bin", help="bench/cuda_check (required unless --skip-cuda)")
    ap.add_argument("--cl-bin", help="distrattn built with the OpenCL module: adds the OpenCL table")
    ap.add_argument("--seqs", default="1024,2048,4096,8192,16384")
    ap.add_argument("--dims", default="64,128")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--fusion", choices=("mean", "norm"), default="mean",
                    help="fusion of the G>1 columns (the library's default is norm)")
    ap.add_argument("--skip-cuda", action="store_true",
                    help="time the SDPA kernels only and print the OpenCL table (needs --cl-bin)")
    args = ap.parse_args()
    if args.skip_cuda and not args.cl_bin:
        ap.error("--skip-cuda needs --cl-bin")
    if not args.skip_cuda and not args.check_bin:
        ap.error("--check-bin is required unless --skip-cuda")
    b, h = args.batch, args.heads
    smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                         capture_output=True, text=True).stdout.strip()
    print("# distrattn CUDA vs torch SDPA's FLASH_ATTENTION (FA2) and CUDNN_ATTENTION backends")
    print("# GPU, driver: %s" % smi)
    print("# date: %s UTC; torch %s; f16, batch %d, heads %d; TFLOP/s = 4*b*h*s*s*d / t (/2 causal)"
          % (datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"), torch.__version__, b, h))
    print("# ours: G=1 exact, G=2/G=4 DistrAttention (hash_block 128, %s); ratio = the faster "
          "SDPA kernel's time / ours"
          % args.fusion.upper())
    seqs = [int(x) for x in args.seqs.split(",")]
    dims = [int(x) for x in args.dims.split(",")]
    if not args.skip_cuda:
        print()
        print("| d | seq | causal | FA2 TFLOP/s | cuDNN TFLOP/s | G=1 TFLOP/s (x best) | "
              "G=2 TFLOP/s (x best) | G=4 TFLOP/s (x best) |")
        print("|" + "---|" * 8)
        sys.stdout.flush()
    fa2 = {}
    for d in dims:
        for causal in (0, 1):
            for s in seqs:
                it = iters_for(s)
                t_f = time_fa2(b, h, s, d, causal, it)
                t_c = time_fa2(b, h, s, d, causal, it, SDPBackend.CUDNN_ATTENTION)
                t_fa = min(t_f, t_c)
                fa2[(d, causal, s)] = t_fa
                if args.skip_cuda:
                    continue
                fl = flops(b, h, s, d, causal)
                cells = ["%d" % d, "%d" % s, "yes" if causal else "no", "%.1f" % (fl / t_f / 1e9),
                         "%.1f" % (fl / t_c / 1e9)]
                for g in (1, 2, 4):
                    t = time_ours(args.check_bin, b, h, s, d, causal, g, it, args.fusion)
                    cells.append("%.1f (%.2fx)" % (fl / t / 1e9, t_fa / t))
                print("| " + " | ".join(cells) + " |")
                sys.stdout.flush()
    if args.cl_bin:
        print_opencl(args, b, h, seqs, dims, fa2)


def print_opencl(args, b, h, seqs, dims, fa2):
    """The OpenCL table, a (head_dim, mask) group of rows at a time as each
    `distrattn bench` call ends, so that a run cut short keeps what it has."""
    print()
    print("OpenCL backend on the same GPU (`distrattn bench --backend opencl`, f16, fused; "
          "the device is named after the table):")
    print()
    print("| d | seq | causal | best SDPA TFLOP/s | OpenCL G=1 TFLOP/s (x best) | OpenCL G=2 (x best) | "
          "OpenCL G=4 (x best) |")
    print("|" + "---|" * 7)
    sys.stdout.flush()
    name = None
    for d in dims:
        for causal in (0, 1):
            try:
                res, name = time_opencl(args.cl_bin, b, h, seqs, d, causal, args.fusion)
            except (OSError, RuntimeError, subprocess.TimeoutExpired, KeyError, ValueError) as e:
                res = {}
                print("# OpenCL d=%d causal=%d: %s" % (d, causal, e))
            for s in seqs:
                fl = flops(b, h, s, d, causal)
                t_fa = fa2[(d, causal, s)]
                cells = ["%d" % d, "%d" % s, "yes" if causal else "no", "%.1f" % (fl / t_fa / 1e9)]
                for t in res.get(s, (float("nan"),) * 3):
                    cells.append("n/a" if t != t else "%.1f (%.2fx)" % (fl / t / 1e9, t_fa / t))
                print("| " + " | ".join(cells) + " |")
            sys.stdout.flush()
    print()
    print("OpenCL device: %s" % (name or "none found"))


if __name__ == "__main__":
    main()
