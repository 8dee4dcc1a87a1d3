"""The transformer block on the numba kernels: the portable path when the C++
extension is missing, and a second statement of native/layer.cpp that the
tests hold to the native scalar path bit for bit.  Same inputs, same KV cache
layout, the same float32 operations in the same order: the steps with a
rounding order of their own (norms, RoPE, attention, activations) are the
numba kernels of ggml_math; plain element-wise sums and products are numpy,
which rounds each of them exactly as C++ does.
"""
from __future__ import annotations

import numpy as np

from . import ggml_math as gn
from .matmul import matmul

_NO_FACTORS = np.empty(0, np.float32)


def rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    """x / rms(x) * w over the last axis, as ggml rounds it: squares in
    float32, summed in float64 in order (native rms_norm)."""
    x2 = np.ascontiguousarray(x, dtype=np.float32).reshape(-1, x.shape[-1])
    y = np.empty_like(x2)
    gn.rms_norm(x2, np.ascontiguousarray(w, dtype=np.float32), np.float32(eps), y)
    return y.reshape(x.shape)


def score_scale(p) -> np.float32:
    """The attention scale: the model's, else 1/sqrt(head_dim), in float32 as layer.cpp has it."""
    if p.attn_scale:
        return np.float32(p.attn_scale)
    return np.float32(1.0) / np.sqrt(np.float32(p.head_dim))


class PyLayer:
    """One block; `params` is a model.config.LayerParams, `tensors` as backend.make_layer takes them."""

    def __init__(self, tensors: dict, params):
        self.t = tensors
        self.params = params

    def linear(self, name: str, x: np.ndarray, bias: str = "") -> np.ndarray:
        qtype, w = self.t[name]
        y = matmul(qtype, w, np.ascontiguousarray(x, dtype=np.float32))
        return y + self.t[bias] if bias in self.t else y

    def rope(self, x: np.ndarray, pos0: int) -> None:
        """In place on x [T, n_heads, head_dim]."""
        p = self.params
        ff = _NO_FACTORS if p.rope_freq_factors is None else np.ascontiguousarray(p.rope_freq_factors, dtype=np.float32)
        gn.rope(x, pos0, p.rope_dim, np.float32(p.rope_base), np.float32(p.rope_pos_scale), ff,
                bool(p.rope_neox))

    def attention(self, x: np.ndarray, pos0: int, k_cache: np.ndarray, v_cache: np.ndarray) -> np.ndarray:
        p, T = self.params, len(x)
        nh, nkv, hd, eps = p.n_head, p.n_head_kv, p.head_dim, p.norm_eps
        q = np.ascontiguousarray(self.linear("wq", x, "bq"), dtype=np.float32).reshape(T, nh, hd)
        k = np.ascontiguousarray(self.linear("wk", x, "bk"), dtype=np.float32).reshape(T, nkv, hd)
        v = self.linear("wv", x, "bv").reshape(T, nkv, hd)
        if "q_norm" in self.t:
            q = rms_norm(q, self.t["q_norm"], eps)
        if "k_norm" in self.t:
            k = rms_norm(k, self.t["k_norm"], eps)
        self.rope(q, pos0)
        self.rope(k, pos0)
        scale = score_scale(p)
        if p.attn_scale_q:  # gemma: q scaled in float32 before its fp16 rounding, scores by 1
            q *= scale
            scale = np.float32(1.0)
        k_cache[pos0 : pos0 + T] = k  # an F16 cache rounds half to even, as fp32_to_fp16
        v_cache[pos0 : pos0 + T] = v

        n = pos0 + T
        out = np.empty((T, nh, hd), np.float32)
        args = (pos0, int(p.sliding_window), nh // nkv, scale, out)
        if k_cache.dtype == np.float32:
            gn.attention(False, q, k_cache, v_cache, *args)
        else:  # the fp16 values, exactly, as float32
            gn.attention(True, q, k_cache[:n].astype(np.float32), v_cache[:n].astype(np.float32), *args)
        o = self.linear("wo", out.reshape(T, nh * hd))
        return rms_norm(o, self.t["attn_post_norm"], eps) if "attn_post_norm" in self.t else o

    def ffn(self, x: np.ndarray) -> np.ndarray:
        gate = np.ascontiguousarray(self.linear("w_gate", x), dtype=np.float32)
        up = np.ascontiguousarray(self.linear("w_up", x), dtype=np.float32)
        gn.glu(gate, up, self.params.activation == "gelu_tanh")
        y = self.linear("w_down", gate)
        return rms_norm(y, self.t["ffn_post_norm"], self.params.norm_eps) if "ffn_post_norm" in self.t else y

    def forward(self, x: np.ndarray, pos0: int, k_cache: np.ndarray, v_cache: np.ndarray, n_out: int = -1) -> None:
        T = len(x)
        if n_out != -1 and not 1 <= n_out <= T:
            raise ValueError(f"n_out must be between 1 and the {T} tokens, got {n_out}")
        eps = self.params.norm_eps
        x += self.attention(rms_norm(x, self.t["attn_norm"], eps), pos0, k_cache, v_cache)
        # the FFN for the last n_out rows only; the rows before them keep h (see native/layer.h)
        h = x[T - n_out if n_out > 0 else 0 :]
        h += self.ffn(rms_norm(h, self.t["ffn_norm"], eps))
