#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Writes the seeds of fuzz/fuzz_capture.c into fuzz/corpus-capture/ (or the
folder given): small valid DATTNCAP version 1 and version 2 captures
(tools/CAPTURE_FORMAT.md) in f32 and f16, and a few broken ones. Deterministic; the committed seeds are
its output (python3 fuzz/gen_capture_seeds.py)."""
import os
import struct
import sys


def capture(L, H, D, seq, dtype, version=1, magic=b"DATTNCAP"):
    head = magic + struct.pack("<6I", version, L, H, D, len(seq), dtype)
    table = b"".join(struct.pack("<I", s) for s in seq)
    n = sum(L * 3 * H * s * D for s in seq)
    vals = [((i * 37) % 61 - 30) / 16.0 for i in range(n)]
    data = struct.pack("<%d%s" % (n, "f" if dtype == 0 else "e"), *vals)
    return head + table + data


def capture2(L, H, KV, D, seqs, dtype, causal=1, scale=0.125, model=b"SmolLM2 seed"):
    """Version 2: seqs is [(seq_q, seq_k)]."""
    head = b"DATTNCAP" + struct.pack("<7I", 2, L, H, KV, D, len(seqs), dtype)
    head += struct.pack("<If", causal, scale) + model.ljust(64, b"\0")
    table = b"".join(struct.pack("<2I", q, k) for q, k in seqs)
    n = sum(L * D * (H * q + 2 * KV * k) for q, k in seqs)
    vals = [((i * 37) % 61 - 30) / 16.0 for i in range(n)]
    data = struct.pack("<%d%s" % (n, "f" if dtype == 0 else "e"), *vals)
    return head + table + data


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__),
                                                            "corpus-capture")
    os.makedirs(out, exist_ok=True)
    f16 = capture(2, 1, 2, [2, 1, 3], 1)
    nan16 = bytearray(f16)
    nan16[-2:] = struct.pack("<H", 0x7E00)  # the last element: NaN
    seeds = {
        "valid_f32": capture(1, 2, 4, [1, 3], 0),
        "valid_f16": f16,
        "valid_f16_one": capture(1, 1, 1, [1], 1),
        "valid_f32_dim8": capture(1, 1, 8, [2], 0),
        "bad_version3": capture(1, 1, 1, [1], 1, version=3),
        "v2_gqa_causal_f16": capture2(2, 6, 2, 4, [(3, 3), (2, 7), (5, 1)], 1),
        "v2_mqa_f32": capture2(1, 4, 1, 2, [(2, 5)], 0, causal=0, scale=0.0, model=b""),
        "v2_mha_name64": capture2(1, 2, 2, 1, [(1, 1)], 1, model=b"m" * 64),
        "bad_v2_kv_heads": capture2(1, 6, 4, 2, [(1, 1)], 1),
        "bad_v2_scale_nan": capture2(1, 2, 1, 2, [(1, 2)], 1, scale=float("nan")),
        "bad_v2_model": capture2(1, 2, 1, 2, [(1, 2)], 1, model=b"ab\0c"),
        "bad_truncated_data": f16[:-3],
        "bad_trailing": f16 + b"\0\0",
        "bad_nonfinite_f16": bytes(nan16),
        # every count at its limit: the claim (3 * 2^53 f32 elements) does not
        # fit the file; the size arithmetic must not wrap
        "bad_limits": b"DATTNCAP" + struct.pack("<6I", 1, 4096, 4096, 256, 2, 0)
                      + struct.pack("<2I", 1 << 20, 1 << 20) + b"\0" * 16,
    }
    for name, b in seeds.items():
        with open(os.path.join(out, name), "wb") as f:
            f.write(b)


if __name__ == "__main__":
    main()
