# SPDX-License-Identifier: Apache-2.0
"""distrattn.attention (numpy) against a float64 numpy reference, on every
backend that is available (cpu, opencl, cuda), every dtype."""
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

import distrattn
from conftest import need_backend
from reference import attention_ref, rel_err

try:
    import ml_dtypes
except ImportError:
    ml_dtypes = None

BACKENDS = ["cpu", "opencl", "cuda"]
# SPEC.md 2: exact attention against float64
BOUND = {"float32": 1e-5, "float16": 2e-3, "bfloat16": 1.6e-2}
DTYPES = ["float32", "float16", "bfloat16"]
# (batch, heads, kv_heads, seq_q, seq_k, head_dim, causal)
CASES = [
    (2, 4, 4, 37, 37, 16, False),
    (1, 4, 4, 33, 33, 64, True),
    (1, 8, 2, 20, 45, 32, True),     # GQA, seq_q < seq_k (bottom-right mask)
    (2, 4, 1, 50, 24, 8, True),      # MQA, seq_q > seq_k: the first rows see no key
    (1, 2, 2, 1, 70, 128, True),     # one query row (decoding)
]


def np_dtype(name):
    if name == "bfloat16":
        if ml_dtypes is None:
            pytest.skip("bfloat16 needs ml_dtypes, which is not installed")
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def rand(rng, shape, dt):
    return rng.standard_normal(shape).astype(np.float32).astype(dt)


def inputs(seed, case, dt):
    B, H, Hkv, Sq, Sk, D, _ = case
    rng = np.random.default_rng(seed)
    return (rand(rng, (B, H, Sq, D), dt), rand(rng, (B, Hkv, Sk, D), dt),
            rand(rng, (B, Hkv, Sk, D), dt))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c[:6])) + ("c" if c[6] else ""))
def test_exact_matches_float64_reference(backend, dtype, case, seed):
    need_backend(backend)
    dt = np_dtype(dtype)
    q, k, v = inputs(seed, case, dt)
    o = distrattn.attention(q, k, v, causal=case[6], backend=backend)
    assert o.shape == q.shape and o.dtype == dt
    ref = attention_ref(q, k, v, causal=case[6])
    assert np.all(np.isfinite(o.astype(np.float64)))
    err = rel_err(o, ref)
    assert err <= BOUND[dtype], f"{backend} {dtype} {case}: relative error {err:.3e}"
    if case[6] and case[3] > case[4]:  # rows that see no key are zero
        assert np.all(o[:, :, : case[3] - case[4]].astype(np.float64) == 0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_scale_out_and_noncontiguous(backend, seed):
    need_backend(backend)
    rng = np.random.default_rng(seed)
    # (B, S, H, D) memory transposed to SDPA's (B, H, S, D): not contiguous
    qt = rng.standard_normal((2, 40, 4, 32)).astype(np.float32).transpose(0, 2, 1, 3)
    kt = rng.standard_normal((2, 40, 2, 32)).astype(np.float32).transpose(0, 2, 1, 3)
    vt = rng.standard_normal((2, 40, 2, 32)).astype(np.float32).transpose(0, 2, 1, 3)
    assert not qt.flags.c_contiguous
    out = np.full(qt.shape, np.nan, np.float32)
    got = distrattn.attention(qt, kt, vt, scale=0.3, causal=True, backend=backend, out=out)
    assert got is out
    ref = attention_ref(qt, kt, vt, causal=True, scale=0.3)
    assert rel_err(out, ref) <= 1e-5
    again = distrattn.attention(np.ascontiguousarray(qt), np.ascontiguousarray(kt),
                                np.ascontiguousarray(vt), scale=0.3, causal=True, backend=backend)
    assert np.array_equal(again, out)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("group_size", [2, 4, 8])
def test_distrattention_against_cpu_and_exact(backend, dtype, group_size, seed):
    need_backend("cpu")
    need_backend(backend)
    dt = np_dtype(dtype)
    rng = np.random.default_rng(seed)
    q, k, v = (rand(rng, s, dt) for s in ((2, 4, 70, 32), (2, 2, 70, 32), (2, 2, 70, 32)))
    kw = dict(causal=True, group_size=group_size, hash_block=32, seed=seed)
    o = distrattn.attention(q, k, v, backend=backend, **kw)
    err = rel_err(o, attention_ref(q, k, v, causal=True))
    assert np.isfinite(err) and err < 1.0, f"DistrAttention G={group_size}: error {err}"
    if backend != "cpu":
        o_cpu = distrattn.attention(q, k, v, backend="cpu", **kw)
        # SPEC.md 2: same plan, same inputs, two backends: 1e-5 (f32); the
        # output rounding of f16/bf16 on top
        tol = {"float32": 1e-5, "float16": 2e-3, "bfloat16": 1.6e-2}[dtype]
        diff = rel_err(o, o_cpu.astype(np.float64))
        assert diff <= tol, f"{backend} vs cpu, G={group_size} {dtype}: {diff:.3e}"
        assert np.array_equal(distrattn.groups(q, group_size=group_size, hash_block=32, seed=seed,
                                               backend=backend),
                              distrattn.groups(q, group_size=group_size, hash_block=32, seed=seed,
                                               backend="cpu"))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fusion", ["mean", "norm"])
def test_distrattention_equal_column_pairs_is_exact(backend, fusion, seed):
    """SPEC.md 2: G = 2 on Q whose columns come in equal pairs is exact."""
    need_backend(backend)
    rng = np.random.default_rng(seed)
    half = rng.standard_normal((1, 4, 64, 16)).astype(np.float32)
    q = np.repeat(half, 2, axis=-1)  # columns 2i and 2i+1 equal
    k, v = (rng.standard_normal((1, 4, 64, 32)).astype(np.float32) for _ in range(2))
    o = distrattn.attention(q, k, v, group_size=2, fusion=fusion, backend=backend)
    assert rel_err(o, attention_ref(q, k, v)) <= 1e-5


@pytest.mark.parametrize("backend", BACKENDS)
def test_groups_are_permutations(backend, seed):
    need_backend(backend)
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((2, 3, 100, 24)).astype(np.float32)
    perm = distrattn.groups(q, group_size=4, hash_block=32, seed=7, backend=backend)
    assert perm.shape == (2, 3, 4, 24) and perm.dtype == np.int32
    assert np.array_equal(np.sort(perm, axis=-1), np.broadcast_to(np.arange(24), perm.shape))


def test_threads_share_cached_contexts(seed):
    need_backend("cpu")
    rng = np.random.default_rng(seed)
    cases = [tuple(rand(rng, s, np.float32) for s in ((1, 2, n, 16), (1, 2, n, 16), (1, 2, n, 16)))
             for n in (17, 31, 64, 80)]
    want = [attention_ref(*c, causal=True) for c in cases]
    errors = []

    def work(i):
        try:
            for r in range(20):
                c = cases[(i + r) % len(cases)]
                o = distrattn.attention(*c, causal=True, backend="cpu")
                e = rel_err(o, want[(i + r) % len(cases)])
                if not e <= 1e-5:
                    errors.append(e)
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    ts = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors


def test_plan_cache_is_bounded():
    need_backend("cpu")
    from distrattn import _core
    old = distrattn.plan_cache_size()
    distrattn.set_plan_cache_size(2)
    try:
        for n in range(5, 12):
            x = np.ones((1, 1, n, 8), np.float32)
            distrattn.attention(x, x, x, backend="cpu")
        ctx = _core.host_context("cpu")
        assert len(ctx.plans) <= 2
    finally:
        distrattn.set_plan_cache_size(old)
    with pytest.raises(distrattn.InvalidArgument):
        distrattn.set_plan_cache_size(0)
    # the caches can be dropped; the next call makes them again
    x = np.ones((1, 1, 4, 8), np.float32)
    distrattn.clear_cache()
    assert not _core._contexts
    assert np.allclose(distrattn.attention(x, x, x, backend="cpu"), 1.0)


# ---- errors

def f32(*shape):
    return np.zeros(shape, np.float32)


@pytest.mark.parametrize("args, kwargs, cls, words", [
    ((f32(2, 4, 8), f32(2, 4, 8), f32(2, 4, 8)), {}, distrattn.InvalidArgument, "4 dimensions"),
    ((f32(1, 4, 8, 16), f32(1, 3, 8, 16), f32(1, 3, 8, 16)), {}, distrattn.InvalidArgument,
     "must divide"),
    ((f32(1, 4, 8, 16), f32(1, 4, 8, 16), f32(1, 4, 9, 16)), {}, distrattn.InvalidArgument,
     "k and v shapes differ"),
    ((f32(1, 4, 8, 16), f32(2, 4, 8, 16), f32(2, 4, 8, 16)), {}, distrattn.InvalidArgument,
     "batch differs"),
    ((f32(1, 4, 8, 16), f32(1, 4, 8, 32), f32(1, 4, 8, 32)), {}, distrattn.InvalidArgument,
     "head_dim differs"),
    ((f32(1, 4, 0, 16), f32(1, 4, 8, 16), f32(1, 4, 8, 16)), {}, distrattn.InvalidArgument,
     ">= 1"),
    ((np.zeros((1, 1, 4, 8)), np.zeros((1, 1, 4, 8)), np.zeros((1, 1, 4, 8))), {},
     distrattn.InvalidArgument, "float64 is not supported"),
    ((np.zeros((1, 1, 4, 8), np.int32),) * 3, {}, distrattn.InvalidArgument,
     "int32 is not supported"),
    ((f32(1, 1, 4, 8), f32(1, 1, 4, 8), np.zeros((1, 1, 4, 8), np.float16)), {},
     distrattn.InvalidArgument, "one dtype"),
    (([[[[1.0]]]], f32(1, 1, 1, 1), f32(1, 1, 1, 1)), {}, distrattn.InvalidArgument,
     "numpy.ndarray"),
    ((f32(1, 1, 4, 8),) * 3, {"group_size": 3}, distrattn.InvalidArgument,
     "group_size = 3 must be 1, 2, 4 or 8"),
    ((f32(1, 1, 4, 8),) * 3, {"hash_block": 100, "group_size": 2}, distrattn.InvalidArgument,
     "hash_block = 100"),
    ((f32(1, 1, 4, 300),) * 3, {}, distrattn.InvalidArgument, "head_dim = 300"),
    ((f32(1, 1, 4, 8),) * 3, {"scale": -1.0}, distrattn.InvalidArgument, "scale"),
    ((f32(1, 1, 4, 8),) * 3, {"scale": 1e-60}, distrattn.InvalidArgument, "float32"),
    ((f32(1, 1, 4, 8),) * 3, {"fusion": "max"}, distrattn.InvalidArgument, "fusion"),
    ((f32(1, 1, 4, 8),) * 3, {"algo": "magic"}, distrattn.InvalidArgument, "algo"),
    ((f32(1, 1, 4, 8),) * 3, {"backend": "tpu"}, distrattn.InvalidArgument, "backend"),
    ((f32(1, 1, 4, 8),) * 3, {"device": -2}, distrattn.InvalidArgument, "device"),
    ((f32(1, 1, 4, 8),) * 3, {"backend": "cpu", "device": 5}, distrattn.NoDevice, ""),
    ((f32(1, 1, 4, 8),) * 3, {"seed": -1}, distrattn.InvalidArgument, "seed"),
    ((f32(1, 1, 4, 8),) * 3, {"out": f32(1, 1, 4, 9)}, distrattn.InvalidArgument, "out has shape"),
])
def test_errors(args, kwargs, cls, words):
    need_backend("cpu")
    kwargs.setdefault("backend", "cpu")
    with pytest.raises(cls) as ei:
        distrattn.attention(*args, **kwargs)
    e = ei.value
    assert isinstance(e, distrattn.Error)
    assert words in str(e), str(e)
    assert e.status_name and e.status_name.startswith("DA_ERR_")
    assert e.detail


def test_out_overlapping_input_is_refused():
    need_backend("cpu")
    q = f32(1, 1, 4, 8)
    with pytest.raises(distrattn.InvalidArgument, match="overlaps q"):
        distrattn.attention(q, f32(1, 1, 4, 8), f32(1, 1, 4, 8), out=q, backend="cpu")


def test_library_error_carries_status_and_detail():
    need_backend("cpu")
    with pytest.raises(distrattn.InvalidArgument) as ei:
        distrattn.attention(*(f32(1, 1, 4, 8),) * 3, hash_bits=33, backend="cpu")
    e = ei.value
    assert isinstance(e, ValueError)
    assert e.status == -1 and e.status_name == "DA_ERR_INVALID_ARG"
    assert "hash_bits" in e.detail


# ---- module-level functions

def test_info_functions():
    assert distrattn.version().count(".") == 2
    assert distrattn.backend_available("cpu")
    ok, why = distrattn.backend_available("cuda", reason=True)
    assert ok or why
    with pytest.raises(distrattn.InvalidArgument):
        distrattn.backend_available("auto")
    devs = distrattn.devices()
    assert any(d.backend == "cpu" for d in devs)
    for d in devs:
        assert d.name and d.index >= 0 and d.global_mem > 0
        assert distrattn.backend_available(d.backend)


def _python(code, **env):
    e = dict(os.environ)
    e.update(env)
    # the distrattn this run imported, installed or not
    pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(distrattn.__file__)))
    e["PYTHONPATH"] = os.pathsep.join(p for p in (pkg_parent, e.get("PYTHONPATH")) if p)
    return subprocess.run([sys.executable, "-c", code], env=e, capture_output=True, text=True,
                          timeout=120)


def test_import_does_not_import_torch():
    r = _python("import sys, numpy as np, distrattn\n"
                "x = np.ones((1, 1, 4, 8), np.float32)\n"
                "distrattn.attention(x, x, x, backend='cpu')\n"
                "assert 'torch' not in sys.modules, 'torch was imported'\n"
                "print('ok')")
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr


def test_missing_library_is_reported_on_first_use():
    r = _python("import distrattn\n"
                "try:\n"
                "    distrattn.version()\n"
                "except distrattn.LibraryNotFound as e:\n"
                "    print('raised', e)\n",
                DISTRATTN_LIB="/nonexistent/libdistrattn.so")
    assert r.returncode == 0, r.stderr
    assert "raised" in r.stdout and "DISTRATTN_LIB" in r.stdout
