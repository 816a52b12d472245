# SPDX-License-Identifier: Apache-2.0
"""An independent float64 numpy reference of SPEC.md 1 (exact attention)."""
import numpy as np


def attention_ref(q, k, v, causal=False, scale=None):
    """softmax(scale * q k^T + mask) v in float64; q (B,H,Sq,D), k and v
    (B,Hkv,Sk,D); query head h reads kv head h // (H // Hkv). The causal
    mask is bottom-right aligned: key j is visible to query i iff
    j <= i + Sk - Sq; a row that sees no key is zero."""
    q, k, v = (np.asarray(a, dtype=np.float64) for a in (q, k, v))
    B, H, Sq, D = q.shape
    Hkv, Sk = k.shape[1], k.shape[2]
    rep = H // Hkv
    k = np.repeat(k, rep, axis=1)
    v = np.repeat(v, rep, axis=1)
    scale = 1.0 / np.sqrt(D) if scale is None else scale
    s = np.einsum("bhid,bhjd->bhij", q, k) * scale
    if causal:
        i = np.arange(Sq)[:, None]
        j = np.arange(Sk)[None, :]
        s = np.where(j <= i + (Sk - Sq), s, -np.inf)
    m = s.max(axis=-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    p = np.exp(s - m)
    den = p.sum(axis=-1, keepdims=True)
    p = np.divide(p, den, out=np.zeros_like(p), where=den > 0)
    return np.einsum("bhij,bhjd->bhid", p, v)


def rel_err(a, ref):
    a = np.asarray(a, dtype=np.float64)
    return float(np.linalg.norm(a - ref) / np.linalg.norm(ref))
