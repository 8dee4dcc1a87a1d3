"""The transformer block in numpy: the portable path when the C++ extension is
missing, and a second, independent statement of native/layer.cpp that the
tests hold it to.  Same inputs, same KV cache layout, same result.
"""
from __future__ import annotations

import numpy as np

from . import backend


def rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    """x / rms(x) * w, rounded as ggml does: squares in float32, summed in float64."""
    mean = ((x * x).astype(np.float64).sum(axis=-1, keepdims=True) / x.shape[-1]).astype(np.float32)
    scale = np.float32(1.0) / np.sqrt(mean + np.float32(eps))
    return (x * scale * w).astype(np.float32)


def rope(x: np.ndarray, pos: np.ndarray, hp: dict) -> np.ndarray:
    """x: [T, n_heads, head_dim] rotated at positions pos [T]."""
    d = hp["rope_dim"]
    half = d // 2
    inv_freq = np.power(np.float32(hp["rope_base"]), -2.0 * np.arange(half, dtype=np.float32) / d).astype(np.float32)
    if hp.get("rope_freq_factors") is not None:
        inv_freq = inv_freq / hp["rope_freq_factors"]
    theta = (pos.astype(np.float32) * np.float32(hp["rope_pos_scale"]))[:, None] * inv_freq  # [T, half]
    cos, sin = np.cos(theta)[:, None, :], np.sin(theta)[:, None, :]
    out = x.copy()
    a, b = (x[..., :half], x[..., half:d]) if hp["rope_neox"] else (x[..., 0:d:2], x[..., 1:d:2])
    # as ggml's FMA build rounds it: the product with a fused (here in float64), the one with b rounded
    a64 = a.astype(np.float64)
    ra = (a64 * cos - (b * sin).astype(np.float32)).astype(np.float32)
    rb = (a64 * sin + (b * cos).astype(np.float32)).astype(np.float32)
    if hp["rope_neox"]:
        out[..., :half], out[..., half:d] = ra, rb
    else:
        out[..., 0:d:2], out[..., 1:d:2] = ra, rb
    return out


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    """GELU as llama.cpp computes it: on the fp16 value of x, result rounded to fp16."""
    xh = x.astype(np.float16).astype(np.float32)
    g = 0.5 * xh * (1.0 + np.tanh(np.float32(0.7978845608028654) * xh * (1.0 + np.float32(0.044715) * xh * xh)))
    g = g.astype(np.float16).astype(np.float32)
    return np.where(x <= -10.0, np.float32(0.0), np.where(x >= 10.0, x, g)).astype(np.float32)


def attend(q: np.ndarray, keys: np.ndarray, values: np.ndarray, visible: np.ndarray, scale: float, cache_dtype) -> np.ndarray:
    """softmax(q · Kᵀ * scale) · V as ggml computes it (flash attention off, the
    llama.cpp default): q and the softmax weights are rounded to the cache type
    before their products with K and V (summed here in numpy's order, not in
    ggml's vec_dot or tinyBLAS order as native/*/attention.cpp does).

    q [T, H, hd]; keys, values [n, H, hd] (already expanded to query heads);
    visible [T, n] says which positions each query sees."""
    rnd = (lambda a: a.astype(np.float16).astype(np.float32)) if cache_dtype == np.float16 else (lambda a: a)
    s = np.einsum("thd,nhd->thn", rnd(q), keys) * np.float32(scale)  # [T, H, n]
    s = np.where(visible[:, None, :], s, -np.inf)
    e = np.exp(s - s.max(axis=-1, keepdims=True))
    w = e * (1.0 / e.sum(axis=-1, keepdims=True, dtype=np.float64)).astype(np.float32)
    return np.einsum("thn,nhd->thd", rnd(w), values).astype(np.float32)


def silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


class PyLayer:
    def __init__(self, tensors: dict, hp: dict):
        self.t = tensors
        self.hp = dict(hp)
        if not self.hp.get("rope_dim"):
            self.hp["rope_dim"] = hp["head_dim"]

    def linear(self, name: str, x: np.ndarray, bias: str = "") -> np.ndarray:
        qtype, w = self.t[name]
        y = backend.matmul(qtype, w, np.ascontiguousarray(x, dtype=np.float32))
        return y + self.t[bias] if bias in self.t else y

    def attention(self, x: np.ndarray, pos0: int, k_cache: np.ndarray, v_cache: np.ndarray) -> np.ndarray:
        hp, T = self.hp, len(x)
        nh, nkv, hd, eps = hp["n_head"], hp["n_head_kv"], hp["head_dim"], hp["norm_eps"]
        q = self.linear("wq", x, "bq").reshape(T, nh, hd)
        k = self.linear("wk", x, "bk").reshape(T, nkv, hd)
        v = self.linear("wv", x, "bv").reshape(T, nkv, hd)
        if "q_norm" in self.t:
            q, k = rms_norm(q, self.t["q_norm"], eps), rms_norm(k, self.t["k_norm"], eps)
        pos = np.arange(pos0, pos0 + T)
        q, k = rope(q, pos, hp), rope(k, pos, hp)
        k_cache[pos0 : pos0 + T] = k
        v_cache[pos0 : pos0 + T] = v

        n = pos0 + T
        group = nh // nkv  # each KV head serves `group` query heads
        keys = np.repeat(k_cache[:n].astype(np.float32), group, axis=1)  # [n, nh, hd]
        values = np.repeat(v_cache[:n].astype(np.float32), group, axis=1)
        # causal mask, narrowed to the last `window` positions on sliding-window layers
        j, p = np.arange(n)[None, :], pos[:, None]
        visible = j <= p
        if hp["sliding_window"]:
            visible &= j > p - hp["sliding_window"]
        scale = np.float32(hp["attn_scale"] or 1.0 / np.sqrt(hd))
        if hp.get("attn_scale_q"):  # gemma: q scaled before its fp16 rounding, scores by 1
            q, scale = (q * scale).astype(np.float32), np.float32(1.0)
        out = attend(q, keys, values, visible, scale, k_cache.dtype)  # [T, nh, hd]
        o = self.linear("wo", out.reshape(T, nh * hd))
        return rms_norm(o, self.t["attn_post_norm"], eps) if "attn_post_norm" in self.t else o

    def ffn(self, x: np.ndarray) -> np.ndarray:
        act = gelu_tanh if self.hp["activation"] == "gelu_tanh" else silu
        y = self.linear("w_down", act(self.linear("w_gate", x)) * self.linear("w_up", x))
        return rms_norm(y, self.t["ffn_post_norm"], self.hp["norm_eps"]) if "ffn_post_norm" in self.t else y

    def forward(self, x: np.ndarray, pos0: int, k_cache: np.ndarray, v_cache: np.ndarray, n_out: int = -1) -> None:
        eps = self.hp["norm_eps"]
        h = x + self.attention(rms_norm(x, self.t["attn_norm"], eps), pos0, k_cache, v_cache)
        x[:] = h  # the rows before the last n_out keep h (see native/layer.h)
        r = slice(len(x) - n_out if n_out > 0 else 0, None)
        x[r] = h[r] + self.ffn(rms_norm(h[r], self.t["ffn_norm"], eps))
