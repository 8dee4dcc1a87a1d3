"""Architectures, one module each, over the shared transformer (model/transformer.py).

Each module turns GGUF metadata into a ModelConfig: which optional tensors a
layer has, how RoPE pairs dimensions, the activation, per-layer attention
windows and RoPE bases.  Tensor names are llama.cpp's and shared by all.
"""
from __future__ import annotations

from . import gemma3, llama, qwen2

ARCHITECTURES = {"llama": llama.config, "qwen2": qwen2.config, "gemma3": gemma3.config}
