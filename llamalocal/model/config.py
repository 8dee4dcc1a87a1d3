"""ModelConfig: everything the forward pass needs to know besides the weights,
and LayerParams: the part of it one transformer block needs."""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Callable, Optional

import numpy as np

from ..errors import UnsupportedModelError

# RoPE's base frequency when a file does not state one: LLaMA's, and the
# default of llama.cpp, llama2.c and Hugging Face's LlamaConfig alike.
DEFAULT_ROPE_BASE = 10000.0


@dataclass(frozen=True)
class LayerParams:
    """The hyperparameters of one transformer block.  The native layer binds
    these field by field (native/bindings_layer.cpp): a field missing on
    either side, or misspelled, is an error there, not a silent default."""

    n_embd: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_ff: int
    rope_dim: int
    rope_base: float
    rope_neox: bool  # pair (i, i + d/2) instead of (2i, 2i + 1)
    rope_pos_scale: float  # linear RoPE scaling multiplies positions by this
    rope_freq_factors: Optional[np.ndarray]  # per-frequency divisors (Llama 3.1 scaling), float32 (rope_dim / 2,)
    norm_eps: float
    activation: str  # "silu" or "gelu_tanh"
    sliding_window: int  # 0 = full attention
    attn_scale: float  # 0: 1/sqrt(head_dim)
    attn_scale_q: bool  # apply attn_scale to q (before its fp16 rounding) instead of to the scores

    def as_kwargs(self) -> dict[str, Any]:
        """Field name -> value, without copying the arrays (dataclasses.asdict would)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass
class ModelConfig:
    arch: str
    n_vocab: int
    n_embd: int
    n_layer: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_ff: int
    n_ctx_train: int
    norm_eps: float
    rope_dim: int
    rope_neox: bool  # pair (i, i + d/2) instead of (2i, 2i + 1)
    rope_base: list[float]  # per layer
    sliding_window: list[int]  # per layer, 0 = full attention
    rope_pos_scale: list[float]  # per layer: linear RoPE scaling multiplies positions by this
    rope_freq_factors: Optional[np.ndarray] = None
    activation: str = "silu"
    embed_scale: float = 1.0  # gemma multiplies embeddings by sqrt(n_embd)
    attn_scale: float = 0.0  # 0: 1/sqrt(head_dim)
    attn_scale_q: bool = False  # apply attn_scale to q (before its fp16 rounding) instead of to the scores
    extra: dict[str, Any] = field(default_factory=dict)

    def layer_params(self, i: int) -> LayerParams:
        return LayerParams(
            n_embd=self.n_embd, n_head=self.n_head, n_head_kv=self.n_head_kv, head_dim=self.head_dim, n_ff=self.n_ff,
            rope_dim=self.rope_dim, rope_base=self.rope_base[i], rope_neox=self.rope_neox,
            rope_pos_scale=self.rope_pos_scale[i], rope_freq_factors=self.rope_freq_factors, norm_eps=self.norm_eps,
            activation=self.activation, sliding_window=self.sliding_window[i], attn_scale=self.attn_scale,
            attn_scale_q=self.attn_scale_q)


def base_config(arch: str, get: Callable[[str, Any], Any], n_vocab: int, **overrides: Any) -> ModelConfig:
    """The hyperparameters every llama-family GGUF stores under `{arch}.*`."""

    def need(key: str) -> Any:
        v = get(key, None)
        if v is None:
            raise UnsupportedModelError(f"metadata key '{arch}.{key}' is missing")
        return v

    n_embd = int(need("embedding_length"))
    n_head = int(need("attention.head_count"))
    n_head_kv = int(get("attention.head_count_kv", n_head))
    head_dim = int(get("attention.key_length", n_embd // n_head if n_head else 0))
    n_layer = int(need("block_count"))
    for name, v in (("embedding_length", n_embd), ("attention.head_count", n_head), ("block_count", n_layer), ("head_dim", head_dim)):
        if v <= 0:
            raise UnsupportedModelError(f"'{arch}.{name}' must be positive, got {v}")
    if n_head_kv <= 0 or n_head % n_head_kv:
        raise UnsupportedModelError(f"head_count {n_head} is not a multiple of head_count_kv {n_head_kv}")
    if int(get("attention.value_length", head_dim)) != head_dim:
        raise UnsupportedModelError("models whose value head size differs from the key head size are not supported")
    ff = need("feed_forward_length")
    if isinstance(ff, (list, tuple, np.ndarray)):  # per-layer lengths: only uniform ones are supported
        if len(set(int(v) for v in ff)) != 1:
            raise UnsupportedModelError("models with different FFN sizes per layer are not supported")
        ff = ff[0]
    rope_base = float(get("rope.freq_base", DEFAULT_ROPE_BASE))
    scaling = get("rope.scaling.type", None)
    factor = float(get("rope.scaling.factor", 1.0) or 1.0)
    pos_scale = 1.0 / factor if scaling == "linear" and factor > 0 else 1.0
    if scaling not in (None, "none", "linear"):
        raise UnsupportedModelError(f"rope scaling type {scaling!r} is not supported")
    cfg = ModelConfig(
        arch=arch, n_vocab=n_vocab, n_embd=n_embd, n_layer=n_layer, n_head=n_head, n_head_kv=n_head_kv,
        head_dim=head_dim, n_ff=int(ff), n_ctx_train=int(get("context_length", 2048)),
        norm_eps=float(get("attention.layer_norm_rms_epsilon", 1e-5)),
        rope_dim=int(get("rope.dimension_count", head_dim)) or head_dim, rope_neox=False,
        rope_base=[rope_base] * n_layer, sliding_window=[0] * n_layer, rope_pos_scale=[pos_scale] * n_layer,
    )
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return cfg
