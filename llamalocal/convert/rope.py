"""Rotary-embedding conversions the checkpoint readers share."""
from __future__ import annotations

import math

import numpy as np


def hf_permute_to_gguf(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF rotate-half Q/K rows (or bias) -> llama.cpp's interleaved layout."""
    rows = w.shape[0]
    return np.ascontiguousarray(
        w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape))


def llama3_rope_factors(base: float, dim: int, factor: float, low_freq_factor: float, high_freq_factor: float,
                        old_context_len: float) -> np.ndarray:
    """Llama 3.1 rope scaling as per-frequency divisors (llama.cpp's ``rope_freqs.weight``), float32."""
    freqs = np.float32(1.0) / (np.float32(base) ** (np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim)))
    wavelen = np.float32(2 * math.pi) / freqs
    low_wavelen = old_context_len / low_freq_factor
    high_wavelen = old_context_len / high_freq_factor
    out = np.empty_like(freqs)
    for i, wl in enumerate(wavelen):
        if wl < high_wavelen:
            out[i] = 1.0
        elif wl > low_wavelen:
            out[i] = factor
        else:
            smooth = (np.float32(old_context_len) / wl - np.float32(low_freq_factor)) / np.float32(
                high_freq_factor - low_freq_factor)
            out[i] = np.float32(1.0) / ((np.float32(1.0) - smooth) / np.float32(factor) + smooth)
    return out
