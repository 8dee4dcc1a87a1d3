"""The KV cache: keys and values of every layer for the tokens evaluated so far.

Owned by the session layer, which decides what to evaluate and when the
context is full; the native layer only reads and writes the arrays in place.
K and V are both stored (n_ctx, n_kv_heads, head_dim).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InvalidArgumentError

# A new cache gets the model's training context, at most this many tokens:
# 4096 tokens of a 7B model's F16 cache are 2 GiB already.
DEFAULT_CONTEXT_CAP = 4096


@dataclass
class CacheState:
    """A saved prefix of a cache (see KVCache.save / restore)."""

    n_tokens: int
    k: list[np.ndarray]
    v: list[np.ndarray]


class KVCache:
    def __init__(self, n_layers: int, n_ctx: int, n_kv_heads: int, head_dim: int, dtype: str = "f16"):
        if dtype not in ("f16", "f32"):
            raise InvalidArgumentError(f"KV cache dtype must be 'f16' or 'f32', got {dtype!r}")
        if n_ctx <= 0:
            raise InvalidArgumentError(f"n_ctx must be positive, got {n_ctx}")
        np_dtype = np.float16 if dtype == "f16" else np.float32
        self.n_ctx = n_ctx
        self.dtype = dtype
        self.k = [np.zeros((n_ctx, n_kv_heads, head_dim), np_dtype) for _ in range(n_layers)]
        self.v = [np.zeros((n_ctx, n_kv_heads, head_dim), np_dtype) for _ in range(n_layers)]
        self.n_tokens = 0

    @property
    def n_free(self) -> int:
        return self.n_ctx - self.n_tokens

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.k) + sum(a.nbytes for a in self.v)

    def truncate(self, n: int) -> None:
        """Forgets every token from position n on (the entries are simply overwritten later)."""
        if not 0 <= n <= self.n_tokens:
            raise ValueError(f"cannot truncate a cache of {self.n_tokens} tokens to {n}")
        self.n_tokens = n

    def save(self) -> CacheState:
        n = self.n_tokens
        return CacheState(n, [k[:n].copy() for k in self.k], [v[:n].copy() for v in self.v])

    def restore(self, state: CacheState) -> None:
        if state.n_tokens > self.n_ctx or len(state.k) != len(self.k):
            raise ValueError("saved cache state does not fit this cache")
        n = state.n_tokens
        for dst, src in zip(self.k, state.k):
            dst[:n] = src
        for dst, src in zip(self.v, state.v):
            dst[:n] = src
        self.n_tokens = n
