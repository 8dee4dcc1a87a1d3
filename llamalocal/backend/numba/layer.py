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

from ...formats import GGMLType, block_format
from . import ggml_math as gn
from .matmul import matmul, row_kernel

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
        self._check_lora(tensors.get("lora") or {})
        # a decode step's matmuls straight to their kernels, past matmul()'s
        # per-call checks and dispatch (2% of SmolLM2's decode)
        self._row_kernels = {name: row_kernel(*self.t[name]) for name in ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down")
                             if name in self.t}

    def _check_lora(self, adapters: dict) -> None:
        """The native binding's checks of tensors["lora"] (ValueError on a misfit)."""
        for name, items in adapters.items():
            if name not in self.t or name not in ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down"):
                raise ValueError("lora: projection names must be wq, wk, wv, wo, w_gate, w_up or w_down")
            qtype, w = self.t[name]
            fmt = block_format(qtype)
            rows, cols = len(w), w.shape[1] // fmt.type_size * fmt.block_size
            for item in items:
                if len(item) != 3:
                    raise ValueError(f"lora {name}: expected (A, B, scale) tuples")
                a, b, _ = item
                if not all(isinstance(m, np.ndarray) and m.dtype == np.float32 and m.ndim == 2 and m.flags.c_contiguous for m in (a, b)):
                    raise ValueError(f"lora {name}: A and B must be C-contiguous 2-D float32 arrays")
                if len(a) < 1 or a.shape[1] != cols or b.shape != (rows, len(a)):
                    raise ValueError(f"lora {name}: expected A (rank, {cols}) and B ({rows}, rank), got A {a.shape} and B {b.shape}")

    def linear(self, name: str, x: np.ndarray, bias: str = "") -> np.ndarray:
        """x · Wᵀ, plus scale·B(A·x) for each LoRA adapter on W (tensors["lora"][name]:
        (A, B, scale) tuples), plus the bias: layer.cpp's linear(), in its order."""
        qtype, w = self.t[name]
        x = np.ascontiguousarray(x, dtype=np.float32)
        kernel = self._row_kernels.get(name)
        if kernel is not None and len(x) == 1:
            y = np.empty((1, len(w)), np.float32)
            kernel(x, y)
        else:
            y = matmul(qtype, w, x)
        for a, b, scale in (self.t.get("lora") or {}).get(name, ()):
            ax = matmul(GGMLType.F32, a.view(np.uint8), x)
            y += matmul(GGMLType.F32, b.view(np.uint8), np.ascontiguousarray(ax)) * np.float32(scale)
        return y + self.t[bias] if bias in self.t else y

    def rope(self, x: np.ndarray, pos0: int) -> None:
        """In place on x [T, n_heads, head_dim]."""
        p = self.params
        ff = _NO_FACTORS if p.rope_freq_factors is None else np.ascontiguousarray(p.rope_freq_factors, dtype=np.float32)
        gn.rope(x, pos0, p.rope_dim, np.float32(p.rope_base), np.float32(p.rope_pos_scale), ff,
                bool(p.rope_neox))

    def attention(self, x: np.ndarray, spans: list[tuple[int, int, int, int]], k_caches: list, v_caches: list) -> np.ndarray:
        """Rows [r0, r1) of x at positions pos0.. of caches[s], for each span (s, r0, r1, pos0)."""
        p, T = self.params, len(x)
        nh, nkv, hd, eps = p.n_head, p.n_head_kv, p.head_dim, p.norm_eps
        q = np.ascontiguousarray(self.linear("wq", x, "bq"), dtype=np.float32).reshape(T, nh, hd)
        k = np.ascontiguousarray(self.linear("wk", x, "bk"), dtype=np.float32).reshape(T, nkv, hd)
        v = self.linear("wv", x, "bv").reshape(T, nkv, hd)
        if "q_norm" in self.t:
            q = rms_norm(q, self.t["q_norm"], eps)
        if "k_norm" in self.t:
            k = rms_norm(k, self.t["k_norm"], eps)
        for _, r0, r1, pos0 in spans:
            self.rope(q[r0:r1], pos0)
            self.rope(k[r0:r1], pos0)
        scale = score_scale(p)
        if p.attn_scale_q:  # gemma: q scaled in float32 before its fp16 rounding, scores by 1
            q *= scale
            scale = np.float32(1.0)
        out = np.empty((T, nh, hd), np.float32)
        for s, r0, r1, pos0 in spans:
            k_cache, v_cache = k_caches[s], v_caches[s]
            k_cache[pos0 : pos0 + r1 - r0] = k[r0:r1]  # an F16 cache rounds half to even, as fp32_to_fp16
            v_cache[pos0 : pos0 + r1 - r0] = v[r0:r1]
        for s, r0, r1, pos0 in spans:
            # one sequence's rows at a time: gn.attention takes the batch flag
            # from the rows it is given, as layer.cpp takes it from the sequence's
            k_cache, v_cache = k_caches[s], v_caches[s]
            n = pos0 + r1 - r0
            args = (pos0, int(p.sliding_window), nh // nkv, scale, out[r0:r1])
            if k_cache.dtype == np.float32:
                gn.attention(False, q[r0:r1], k_cache, v_cache, *args)
            else:  # the fp16 bits, converted as read
                gn.attention(True, q[r0:r1], k_cache.view(np.uint16), v_cache.view(np.uint16), *args)
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
        x += self.attention(rms_norm(x, self.t["attn_norm"], eps), [(0, 0, T, pos0)], [k_cache], [v_cache])
        # the FFN for the last n_out rows only; the rows before them keep h (see native/layer.h)
        h = x[T - n_out if n_out > 0 else 0 :]
        h += self.ffn(rms_norm(h, self.t["ffn_norm"], eps))

    def forward_batch(self, x: np.ndarray, seq: np.ndarray, pos: np.ndarray, k_caches: list, v_caches: list,
                      last_only: bool = False) -> None:
        """native Layer.forward_batch: row t of x belongs to sequence seq[t] at
        position pos[t] of k_caches[seq[t]], v_caches[seq[t]]."""
        spans = self._spans(x, seq, pos, k_caches, v_caches)
        if not spans:
            return
        eps = self.params.norm_eps
        x += self.attention(rms_norm(x, self.t["attn_norm"], eps), spans, k_caches, v_caches)
        rows = sorted(r1 - 1 for _, _, r1, _ in spans)
        if not last_only or len(rows) == len(x):
            x += self.ffn(rms_norm(x, self.t["ffn_norm"], eps))
            return
        # the output rows gathered in x's order, as layer.cpp does
        h = np.ascontiguousarray(x[rows])
        h += self.ffn(rms_norm(h, self.t["ffn_norm"], eps))
        x[rows] = h

    def _spans(self, x, seq, pos, k_caches, v_caches) -> list[tuple[int, int, int, int]]:
        """(sequence, first row, end row, first position) of each sequence with
        tokens, after the native binding's checks (ValueError on a misfit)."""
        p = self.params
        if not isinstance(x, np.ndarray) or x.dtype != np.float32 or x.ndim != 2 or x.shape[1] != p.n_embd:
            raise ValueError(f"x must be a float32 array of shape (n_tokens, {p.n_embd})")
        T = len(x)
        if not isinstance(seq, np.ndarray) or seq.dtype != np.int32 or seq.shape != (T,):
            raise ValueError(f"seq must be an int32 vector of the {T} tokens' sequence ids")
        if not isinstance(pos, np.ndarray) or pos.dtype != np.int64 or pos.shape != (T,):
            raise ValueError(f"pos must be an int64 vector of the {T} tokens' positions")
        n_seq = len(k_caches)
        if n_seq < 1 or len(v_caches) != n_seq:
            raise ValueError(f"k_caches and v_caches must be lists of the same length, one cache per sequence (got {n_seq} and {len(v_caches)})")
        for s, (k, v) in enumerate(zip(k_caches, v_caches)):
            if not (isinstance(k, np.ndarray) and isinstance(v, np.ndarray)) or k.dtype != v.dtype or k.dtype not in (np.float16, np.float32):
                raise ValueError(f"sequence {s}: k_cache and v_cache must both be float16 or both float32")
            if not all(a.flags.c_contiguous and a.flags.writeable for a in (k, v)):
                raise ValueError(f"sequence {s}: KV cache arrays must be writable and C-contiguous")
            if k.ndim != 3 or k.shape[1:] != (p.n_head_kv, p.head_dim) or v.shape != k.shape:
                raise ValueError(f"sequence {s}: KV caches must be (n_ctx, {p.n_head_kv}, {p.head_dim}), K and V alike")
            if k.dtype != k_caches[0].dtype:
                raise ValueError(f"sequence {s}: every sequence's cache must have the same type")
        arrays = [a for kv in zip(k_caches, v_caches) for a in kv]
        for i in range(len(arrays)):
            for j in range(i + 1, len(arrays)):
                if np.may_share_memory(arrays[i], arrays[j]):
                    if i // 2 == j // 2:
                        raise ValueError(f"sequence {i // 2}: k_cache and v_cache overlap in memory")
                    raise ValueError(f"sequences {i // 2} and {j // 2} share KV cache memory: each sequence needs its own cache")
        spans: dict[int, list[int]] = {}  # sequence -> [first row, end row, first position]
        for t in range(T):
            s, at = int(seq[t]), int(pos[t])
            if not 0 <= s < n_seq:
                raise ValueError(f"seq[{t}] = {s} is not a sequence id in [0, {n_seq})")
            if not 0 <= at < len(k_caches[s]):
                raise ValueError(f"sequence {s}: position {at} (row {t}) is outside its cache of {len(k_caches[s])}")
            if s not in spans:
                spans[s] = [t, t + 1, at]
                continue
            r0, r1, pos0 = spans[s]
            if r1 != t:
                raise ValueError(f"sequence {s}: its tokens must be contiguous in x (row {t})")
            if at != pos0 + r1 - r0:
                raise ValueError(f"sequence {s}: positions must be consecutive, got {int(pos[t - 1])} then {at} (row {t})")
            spans[s][1] = t + 1
        return [(s, r0, r1, pos0) for s, (r0, r1, pos0) in spans.items()]
