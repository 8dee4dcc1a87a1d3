"""The transformer block in numpy: the portable path when the C++ extension is
missing, and a second, independent statement of native/layer.cpp that the
tests hold it to.  Same inputs, same KV cache layout, same result.
"""
from __future__ import annotations

import numpy as np

from . import backend


def rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    x64 = x.astype(np.float64)
    scale = 1.0 / np.sqrt(np.mean(x64 * x64, axis=-1, keepdims=True) + eps)
    return (x * scale.astype(np.float32) * w).astype(np.float32)


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
    if hp["rope_neox"]:
        a, b = x[..., :half], x[..., half:d]
        out[..., :half], out[..., half:d] = a * cos - b * sin, a * sin + b * cos
    else:
        a, b = x[..., 0:d:2], x[..., 1:d:2]
        out[..., 0:d:2], out[..., 1:d:2] = a * cos - b * sin, a * sin + b * cos
    return out


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + np.tanh(np.float32(0.7978845608028654) * (x + np.float32(0.044715) * x * x * x)))


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
        v_cache[:, :, pos0 : pos0 + T] = v.transpose(1, 2, 0)

        n = pos0 + T
        keys = k_cache[:n].astype(np.float32)  # [n, nkv, hd]
        values = v_cache[:, :, :n].astype(np.float32)  # [nkv, hd, n]
        scale = hp["attn_scale"] or 1.0 / np.sqrt(hd)
        group = nh // nkv
        # causal mask, narrowed to the last `window` positions on sliding-window layers
        j, p = np.arange(n)[None, :], pos[:, None]
        visible = j <= p
        if hp["sliding_window"]:
            visible &= j > p - hp["sliding_window"]
        out = np.empty((T, nh, hd), np.float32)
        for h in range(nh):
            g = h // group
            scores = (q[:, h, :] @ keys[:, g, :].T) * np.float32(scale)  # [T, n]
            scores = np.where(visible, scores, -np.inf)
            w = np.exp(scores - scores.max(axis=1, keepdims=True))
            w /= w.sum(axis=1, keepdims=True)
            out[:, h, :] = w @ values[g].T  # [T, hd]
        o = self.linear("wo", out.reshape(T, nh * hd))
        return rms_norm(o, self.t["attn_post_norm"], eps) if "attn_post_norm" in self.t else o

    def ffn(self, x: np.ndarray) -> np.ndarray:
        act = gelu_tanh if self.hp["activation"] == "gelu_tanh" else silu
        y = self.linear("w_down", act(self.linear("w_gate", x)) * self.linear("w_up", x))
        return rms_norm(y, self.t["ffn_post_norm"], self.hp["norm_eps"]) if "ffn_post_norm" in self.t else y

    def forward(self, x: np.ndarray, pos0: int, k_cache: np.ndarray, v_cache: np.ndarray) -> None:
        eps = self.hp["norm_eps"]
        h = x + self.attention(rms_norm(x, self.t["attn_norm"], eps), pos0, k_cache, v_cache)
        x[:] = h + self.ffn(rms_norm(h, self.t["ffn_norm"], eps))
