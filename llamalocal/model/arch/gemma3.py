"""Gemma 3: embeddings scaled by sqrt(d), QK-norm, norms after attention and
FFN as well as before, GeGLU (tanh GELU), neox RoPE, and sliding-window
attention on five of every six layers with their own RoPE base.

The GGUF converter already stores Gemma's norm weights as (1 + w), so the
norms here are plain RMSNorm.
"""
from __future__ import annotations

import math

from ..config import ModelConfig, base_config

SWA_PATTERN = 6  # every sixth layer attends globally
LOCAL_ROPE_BASE = 10000.0


def config(get, n_vocab: int) -> ModelConfig:
    cfg = base_config("gemma3", get, n_vocab, rope_neox=True, activation="gelu_tanh")
    cfg.embed_scale = math.sqrt(cfg.n_embd)
    # llama.cpp's gemma3 graph scales q by 1/sqrt(head_dim) and the scores by 1
    cfg.attn_scale_q = True
    window = int(get("attention.sliding_window", 0) or 0)
    is_local = [(i % SWA_PATTERN) < SWA_PATTERN - 1 for i in range(cfg.n_layer)]
    cfg.sliding_window = [window if local else 0 for local in is_local]
    cfg.rope_base = [LOCAL_ROPE_BASE if local else base for local, base in zip(is_local, cfg.rope_base)]
    # Linear RoPE scaling (larger Gemma 3 models) applies to the global layers only.
    cfg.rope_pos_scale = [1.0 if local else s for local, s in zip(is_local, cfg.rope_pos_scale)]
    return cfg
