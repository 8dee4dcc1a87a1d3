"""Qwen2: LLaMA with biases on the Q, K and V projections and neox-style RoPE."""
from __future__ import annotations

from ..config import ModelConfig, base_config


def config(get, n_vocab: int) -> ModelConfig:
    return base_config("qwen2", get, n_vocab, rope_neox=True, activation="silu")
