"""LLaMA 1/2/3, Mistral, SmolLM2, TinyLlama: RMSNorm, RoPE, GQA, SwiGLU.

llama.cpp's converter permutes the Q/K rows of HF checkpoints so that RoPE
rotates adjacent pairs (2i, 2i+1), as Meta's original code does.
"""
from __future__ import annotations

from ..config import DEFAULT_ROPE_BASE, ModelConfig, base_config


def config(get, n_vocab: int) -> ModelConfig:
    return base_config("llama", get, n_vocab, rope_neox=False, activation="silu")


def llama2c_config(h) -> ModelConfig:
    """A llama2.c checkpoint's model (io.llama2c.Llama2cHeader): run.c's
    constants for what the header does not store (RMSNorm eps 1e-5, RoPE base
    10000 over the whole head, adjacent pairs)."""
    n = h.n_layers
    return ModelConfig(
        arch="llama", n_vocab=h.vocab_size, n_embd=h.dim, n_layer=n, n_head=h.n_heads, n_head_kv=h.n_kv_heads,
        head_dim=h.head_dim, n_ff=h.hidden_dim, n_ctx_train=h.seq_len, norm_eps=1e-5, rope_dim=h.head_dim,
        rope_neox=False, rope_base=[DEFAULT_ROPE_BASE] * n, sliding_window=[0] * n, rope_pos_scale=[1.0] * n)
