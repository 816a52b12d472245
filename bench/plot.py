#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Draw the README's plots (PNG, matplotlib).

  time-vs-seq.png   time against sequence length for each algorithm (fused
                    exact, GEMM exact, DistrAttention G=2 and G=4) and backend,
                    from `distrattn bench --csv` files (one panel per backend
                    and head dim), plus, with --cuda-table, the CUDA table of
                    bench/bench_cuda_vs_fa2.py (FlashAttention-2 included).
  error-vs-g.png    on a real model's captured attention inputs: the relative
                    output error of each layer's attention against G for each
                    fusion (from `distrattn eval --csv`), and, with --e2e, the
                    sentence-embedding cosine similarity and nearest-neighbour
                    agreement of the whole model (from tools/e2e.py --csv).

    python3 bench/plot.py --bench cpu.csv opencl.csv --cuda-table bench/cuda-h200.txt \\
        --eval eval.csv --e2e e2e.csv --out bench/
"""
import argparse
import csv
import os
import re

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ALGOS = [("fused_ms", "exact, fused"), ("gemm_ms", "exact, GEMM"),
         ("g2_ms", "DistrAttention G=2"), ("g4_ms", "DistrAttention G=4")]
STYLE = {"exact, fused": ("C0", "o-"), "exact, GEMM": ("C7", "s--"),
         "DistrAttention G=2": ("C1", "^-"), "DistrAttention G=4": ("C3", "v-"),
         "FlashAttention-2": ("k", "x:")}


def read_bench(paths):
    """{(backend label, head_dim, causal): {algo: [(seq, ms)]}}"""
    panels = {}
    for p in paths:
        with open(p, newline="") as f:
            for r in csv.DictReader(f):
                key = ("%s (%s)" % (r["backend"], r["device_name"]), int(r["head_dim"]),
                       r["causal"] in ("1", "yes"), "b%s h%s %s" % (r["batch"], r["heads"], r["dtype"]))
                for col, name in ALGOS:
                    try:
                        ms = float(r[col])
                    except (ValueError, KeyError):
                        continue
                    if ms > 0:
                        panels.setdefault(key, {}).setdefault(name, []).append((int(r["seq"]), ms))
    return panels


def read_cuda_table(path, head_dim=64, causal=False):
    """Times (ms) from bench_cuda_vs_fa2.py's Markdown table (TFLOP/s columns)."""
    gpu, batch, heads, dtype = "GPU", 4, 16, "f16"
    series = {}
    with open(path) as f:
        for line in f:
            if line.startswith(("NORM fusion", "OpenCL backend")):
                break  # the NORM table repeats seq 8192; the OpenCL one is another backend
            m = re.match(r"# GPU, driver: (.*?),", line)
            if m:
                gpu = m.group(1)
            m = re.search(r"batch (\d+), heads (\d+)", line)
            if m and line.startswith("#"):
                batch, heads = int(m.group(1)), int(m.group(2))
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if len(cells) != 7 or not cells[0].isdigit():
                continue
            d, seq, c = int(cells[0]), int(cells[1]), cells[2] == "yes"
            if d != head_dim or c != causal:
                continue
            flops = 4.0 * batch * heads * seq * seq * d / (2 if c else 1)
            for name, cell in zip(["FlashAttention-2", "exact, fused", "DistrAttention G=2",
                                   "DistrAttention G=4"], cells[3:]):
                tf = float(cell.split()[0])
                series.setdefault(name, []).append((seq, flops / (tf * 1e12) * 1e3))
    return ("cuda (%s)" % gpu, head_dim, causal, "b%d h%d %s" % (batch, heads, dtype)), series


def plot_time(panels, out):
    keys = sorted(panels)
    n = len(keys)
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.6), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for name, pts in panels[key].items():
            pts.sort()
            color, style = STYLE[name]
            ax.plot([s for s, _ in pts], [t for _, t in pts], style, color=color, label=name,
                    markersize=4)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length")
        ax.set_ylabel("time (ms)")
        ax.set_title("%s\nd=%d, %s%s" % (key[0], key[1], key[3], ", causal" if key[2] else ""),
                     fontsize=8)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    plt.close(fig)


def plot_error(eval_path, e2e_path, out):
    rows = list(csv.DictReader(open(eval_path, newline="")))
    backend = rows[0]["backend"]
    exact = [r for r in rows if r["backend"] == backend and r["group"] == "1"]
    n = 2 if e2e_path else 1
    fig, axes = plt.subplots(1, n, figsize=(4.6 * n, 3.6), squeeze=False)
    ax = axes[0][0]
    for fusion, color in (("mean", "C0"), ("norm", "C1")):
        for bits, block, style, lab in ((16, 128, "o-", "16 bits, block 128"),
                                        (8, 32, "^:", "8 bits, block 32")):
            pts = [(1, float(exact[0]["total_rel_err"]))] if exact else []
            for r in rows:
                if (r["backend"] == backend and r["fusion"] == fusion and
                        int(r["hash_bits"]) == bits and int(r["hash_block"]) == block):
                    pts.append((int(r["group"]), float(r["total_rel_err"])))
            if len(pts) > 1:
                pts.sort()
                ax.plot([g for g, _ in pts], [e for _, e in pts], style, color=color,
                        label="%s, %s" % (fusion.upper(), lab), markersize=4)
    ax.set_xscale("log", base=2)
    ax.set_xticks([1, 2, 4, 8])
    ax.set_xticklabels(["1", "2", "4", "8"])
    ax.set_xlabel("G (columns per group)")
    ax.set_ylabel("||O - exact|| / ||exact||")
    ax.set_title("attention output error, all-MiniLM-L6-v2\n(6 layers x 12 heads, d=32, %s tokens)"
                 % rows[0]["tokens"], fontsize=8)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    if e2e_path:
        er = list(csv.DictReader(open(e2e_path, newline="")))
        ax = axes[0][1]
        for fusion, color in (("mean", "C0"), ("norm", "C1")):
            pts = [(1, 1.0, 1.0)]
            for r in er:
                if (r["fusion"] == fusion and int(r["hash_bits"]) == 16 and
                        int(r["hash_block"]) == 128):
                    pts.append((int(r["group"]), float(r["cos_mean"]), float(r["nn_agree"])))
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color=color,
                    label="%s: mean cosine" % fusion.upper(), markersize=4)
            ax.plot([p[0] for p in pts], [p[2] for p in pts], "s--", color=color,
                    label="%s: same nearest neighbour" % fusion.upper(), markersize=4)
        ax.set_xscale("log", base=2)
        ax.set_xticks([1, 2, 4, 8])
        ax.set_xticklabels(["1", "2", "4", "8"])
        ax.set_ylim(0.5, 1.02)
        ax.set_xlabel("G (16 bits, block 128)")
        ax.set_title("whole model vs exact: sentence embeddings\n(the texts of tools/capture.py)", fontsize=8)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    plt.close(fig)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bench", nargs="*", default=[], help="`distrattn bench --csv` files")
    ap.add_argument("--cuda-table", help="the Markdown table of bench/bench_cuda_vs_fa2.py")
    ap.add_argument("--eval", help="`distrattn eval --csv` output")
    ap.add_argument("--e2e", help="tools/e2e.py --csv output")
    ap.add_argument("--out", default="bench")
    args = ap.parse_args()
    if args.bench or args.cuda_table:
        panels = read_bench(args.bench)
        if args.cuda_table:
            key, series = read_cuda_table(args.cuda_table)
            if series:
                panels[key] = series
        plot_time(panels, os.path.join(args.out, "time-vs-seq.png"))
    if args.eval:
        plot_error(args.eval, args.e2e, os.path.join(args.out, "error-vs-g.png"))


if __name__ == "__main__":
    main()
