#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Draw the README's plots (PNG, matplotlib).

  time-vs-seq.png   time against sequence length for each algorithm (fused
                    exact, GEMM exact, DistrAttention G=2 and G=4) and backend,
                    from `distrattn bench --csv` files (one panel per backend
                    and head dim), plus, with --cuda-table, the CUDA table of
                    bench/fwd_race.py (cuDNN and FlashAttention-2 included; the
                    older bench_cuda_vs_fa2.py tables of bench/cuda-h*.txt too).
  error-vs-g.png    on a real model's captured attention inputs: the relative
                    output error of each layer's attention against G for each
                    fusion (from `distrattn eval --csv`), and, with --e2e, the
                    sentence-embedding cosine similarity and nearest-neighbour
                    agreement of the whole model (from tools/e2e.py --csv).
  zeroshot.png      zero-shot accuracy of every grouping strategy (per-tile LSH
                    MEAN/NORM, projections pca/optimal) at G = 2 and 4 (rank
                    head_dim/G): the decoder's held-out perplexity over exact
                    and top-1 agreement (tools/zeroshot.py's JSON), the
                    encoders' sentence-embedding cosine and nearest-neighbour
                    agreement (tools/e2e.py --zeroshot's JSON), and every
                    model's mean per-layer attention error.

    python3 bench/plot.py --bench cpu.csv opencl.csv --cuda-table bench/cuda-h200.txt \\
        --eval eval.csv --e2e e2e.csv --out bench/
    python3 bench/plot.py --zeroshot bench/zeroshot-smollm2.json bench/zeroshot-minilm.json \\
        --out bench/
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
         "FlashAttention-2": ("k", "x:"), "cuDNN (SDPA)": ("C2", "+:"),
         "projection r=d/2": ("C4", "d-"), "projection r=d/4": ("C5", "D-")}

# bench/fwd_race.py's column names -> series names
RACE_COLS = {"flash": "FlashAttention-2", "cuDNN": "cuDNN (SDPA)", "ours exact": "exact, fused",
             "G=2": "DistrAttention G=2", "G=4": "DistrAttention G=4",
             "proj r=d/2": "projection r=d/2", "proj r=d/4": "projection r=d/4"}


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
    """Times (ms) from bench/fwd_race.py's Markdown table (its header names the
    columns) or from the retired bench_cuda_vs_fa2.py's (TFLOP/s columns)."""
    gpu, batch, heads, dtype = "GPU", 4, 16, "f16"
    series = {}
    old = [(3, "FlashAttention-2"), (4, "exact, fused"), (5, "DistrAttention G=2"),
           (6, "DistrAttention G=4")]
    race = None  # fwd_race.py: [(cell index, series name)]
    with open(path) as f:
        for line in f:
            m = re.match(r"GPU: (.*?); .*batch (\d+), heads (\d+), (\w+),", line)
            if m:
                gpu, batch, heads, dtype = m.group(1), int(m.group(2)), int(m.group(3)), m.group(4)
                continue
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if cells[:5] == ["d", "seq", "causal", "flash", "cuDNN"]:
                race = [(i, RACE_COLS[c]) for i, c in enumerate(cells) if c in RACE_COLS]
                continue
            if race is None:
                if line.startswith(("NORM fusion", "OpenCL backend")):
                    break  # the NORM table repeats seq 8192; the OpenCL one is another backend
                m = re.match(r"# GPU, driver: (.*?),", line)
                if m:
                    gpu = m.group(1)
                m = re.search(r"batch (\d+), heads (\d+)", line)
                if m and line.startswith("#"):
                    batch, heads = int(m.group(1)), int(m.group(2))
                if len(cells) != 7:
                    continue
            elif not line.strip():
                race = None  # fwd_race.py's variants table follows
                continue
            if not cells[0].isdigit():
                continue
            d, seq, c = int(cells[0]), int(cells[1]), cells[2] == "yes"
            if d != head_dim or c != causal:
                continue
            flops = 4.0 * batch * heads * seq * seq * d / (2 if c else 1)
            for i, name in race or old:
                if cells[i] in ("-", ""):
                    continue
                tf = float(cells[i].split()[0])
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


ZS_KINDS = [("lsh-mean", "per-tile LSH, MEAN", "C0", None),
            ("lsh-norm", "per-tile LSH, NORM", "C1", None),
            ("proj-pca", "projection, pca", "C2", "//"),
            ("proj-optimal", "projection, optimal", "C3", "//")]


def zs_value(runs, kind, G, head_dim, key):
    """The run of kind (e.g. "proj-pca") at G (rank head_dim/G) in a
    zero-shot JSON's runs, its value `key` (a function of the run)."""
    name = "%s-%d" % (kind, G if kind.startswith("lsh") else head_dim // G)
    return key(runs[name]) if name in runs else None


def plot_zeroshot(paths, out):
    import json

    data = []
    for p in paths:
        with open(p) as f:
            d = json.load(f)
        dec = "ppl" in d["runs"]["exact"]
        name = ("SmolLM2-135M" if dec else d["model"].split(" (")[0])
        hd = 64 if dec else d["head_dim"]
        data.append((name, dec, hd, d["runs"]))
    panels = []
    for name, dec, hd, runs in data:
        if dec:
            panels.append(("%s: held-out perplexity / exact\n(log scale; lower is better)" % name,
                           runs, hd, lambda r, ex=runs["exact"]["ppl"]: r["ppl"] / ex, True))
            panels.append(("%s: top-1 next token = exact model's" % name, runs, hd,
                           lambda r: r["top1"], False))
        else:
            panels.append(("%s (d=%d): embedding cosine with exact (mean)" % (name, hd), runs, hd,
                           lambda r: r["cos_mean"], False))
            panels.append(("%s (d=%d): same nearest neighbour as exact" % (name, hd), runs, hd,
                           lambda r: r["nn_agree"], False))
    panels.append(("attention output error per layer\n(mean over layers, exact inputs)", None,
                   None, None, False))
    n = len(panels)
    cols = min(n, 3)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.4 * cols, 3.4 * rows), squeeze=False)
    width = 0.2
    for i, (title, runs, hd, key, logy) in enumerate(panels):
        ax = axes[i // cols][i % cols]
        if runs is None:   # the error panel: one group per model and G
            labels = []
            for j, (name, dec, mhd, mruns) in enumerate(data):
                for gi, G in enumerate((2, 4)):
                    x = j * 2 + gi
                    labels.append("%s\nG=%d" % (name.replace("all-", "").split("-")[0], G))
                    for k, (kind, lab, color, hatch) in enumerate(ZS_KINDS):
                        v = zs_value(mruns, kind, G, mhd,
                                     lambda r: sum(r["layer_err"]) / len(r["layer_err"]))
                        if v is not None:
                            ax.bar(x + (k - 1.5) * width, v, width, color=color, hatch=hatch,
                                   label=lab if x == 0 else None)
            ax.set_xticks(range(len(labels)))
            ax.set_xticklabels(labels, fontsize=7)
            ax.set_ylabel("||O - exact|| / ||exact||")
        else:
            for k, (kind, lab, color, hatch) in enumerate(ZS_KINDS):
                for gi, G in enumerate((2, 4)):
                    v = zs_value(runs, kind, G, hd, key)
                    if v is not None:
                        ax.bar(gi + (k - 1.5) * width, v, width, color=color, hatch=hatch,
                               label=lab if gi == 0 else None)
            ax.set_xticks([0, 1])
            ax.set_xticklabels(["G=2 (r=%d)" % (hd // 2), "G=4 (r=%d)" % (hd // 4)])
            ax.axhline(1.0, color="k", lw=0.8, ls=":")
            if logy:
                ax.set_yscale("log")
            else:
                ax.set_ylim(0, 1.05)
        ax.set_title(title, fontsize=8)
        ax.grid(True, axis="y", alpha=0.3)
        if i == 0:
            ax.legend(fontsize=7)
    for j in range(n, rows * cols):
        axes[j // cols][j % cols].axis("off")
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    plt.close(fig)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bench", nargs="*", default=[], help="`distrattn bench --csv` files")
    ap.add_argument("--cuda-table", help="the Markdown table of the retired bench_cuda_vs_fa2.py "
                    "or of bench/fwd_race.py")
    ap.add_argument("--eval", help="`distrattn eval --csv` output")
    ap.add_argument("--e2e", help="tools/e2e.py --csv output")
    ap.add_argument("--zeroshot", nargs="*", default=[],
                    help="tools/zeroshot.py and tools/e2e.py --zeroshot JSON files")
    ap.add_argument("--out", default="bench")
    args = ap.parse_args()
    if args.bench or args.cuda_table:
        panels = read_bench(args.bench)
        if args.cuda_table:
            for hd in (64, 128):  # head_dim 128: where the projection strategy pays
                key, series = read_cuda_table(args.cuda_table, head_dim=hd)
                if series:
                    panels[key] = series
        plot_time(panels, os.path.join(args.out, "time-vs-seq.png"))
    if args.eval:
        plot_error(args.eval, args.e2e, os.path.join(args.out, "error-vs-g.png"))
    if args.zeroshot:
        plot_zeroshot(args.zeroshot, os.path.join(args.out, "zeroshot.png"))


if __name__ == "__main__":
    main()
