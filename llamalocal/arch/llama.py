"""LLaMA 1/2/3, Mistral, SmolLM2, TinyLlama: RMSNorm, RoPE, GQA, SwiGLU.

llama.cpp's converter permutes the Q/K rows of HF checkpoints so that RoPE
rotates adjacent pairs (2i, 2i+1), as Meta's original code does.
"""
from __future__ import annotations

from .config import ModelConfig, base_config


def config(get, n_vocab: int) -> ModelConfig:
    return base_config("llama", get, n_vocab, rope_neox=False, activation="silu")
