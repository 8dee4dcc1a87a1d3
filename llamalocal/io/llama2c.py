"""llama2.c checkpoints (`run.c`'s legacy .bin format) as GGUF-named tensors.

Header: 7 int32 (dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size,
seq_len); a negative vocab_size means the classifier is stored separately.
Then float32 arrays in this order: token embedding, attention norms, wq, wk,
wv, wo, FFN norms, w1 (gate), w2 (down), w3 (up), final norm, the RoPE
tables (skipped: RoPE is computed), and the classifier if not shared.
"""
from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ModelFormatError

HEADER = struct.Struct("<7i")


@dataclass(frozen=True)
class Llama2cHeader:
    dim: int
    hidden_dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    vocab_size: int
    seq_len: int

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads


def read_llama2c(path: str | Path) -> tuple[Llama2cHeader, dict[str, np.ndarray]]:
    """The header and the float32 tensors (views into the memory-mapped file),
    under their GGUF names, in numpy order: (rows, cols), vectors (cols,)."""
    path = Path(path)
    with open(path, "rb") as f:
        size = path.stat().st_size
        if size < HEADER.size:
            raise ModelFormatError(f"{path.name}: {size} bytes is too short for a llama2.c header")
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    dim, hidden, n_layers, n_heads, n_kv_heads, vocab, seq_len = HEADER.unpack_from(mm, 0)
    shared = vocab > 0
    vocab = abs(vocab)
    for name, v in (("dim", dim), ("hidden_dim", hidden), ("n_layers", n_layers), ("n_heads", n_heads),
                    ("n_kv_heads", n_kv_heads), ("vocab_size", vocab), ("seq_len", seq_len)):
        if not 0 < v < 1 << 24:
            raise ModelFormatError(f"{path.name}: header field {name} = {v} is not a plausible size")
    if dim % n_heads or n_heads % n_kv_heads or (dim // n_heads) % 2:
        raise ModelFormatError(f"{path.name}: dim {dim}, n_heads {n_heads}, n_kv_heads {n_kv_heads} are inconsistent")
    head = dim // n_heads
    kv_dim = head * n_kv_heads
    # (GGUF name pattern, rows, cols, count): the file's arrays in order
    layout = [
        ("token_embd.weight", vocab, dim, 1),
        ("blk.{}.attn_norm.weight", 1, dim, n_layers),
        ("blk.{}.attn_q.weight", dim, dim, n_layers),
        ("blk.{}.attn_k.weight", kv_dim, dim, n_layers),
        ("blk.{}.attn_v.weight", kv_dim, dim, n_layers),
        ("blk.{}.attn_output.weight", dim, dim, n_layers),
        ("blk.{}.ffn_norm.weight", 1, dim, n_layers),
        ("blk.{}.ffn_gate.weight", hidden, dim, n_layers),
        ("blk.{}.ffn_down.weight", dim, hidden, n_layers),
        ("blk.{}.ffn_up.weight", hidden, dim, n_layers),
        ("output_norm.weight", 1, dim, 1),
        (None, seq_len, head, 1),  # freq_cis_real and freq_cis_imag: seq_len * head/2 each
    ]
    if not shared:
        layout.append(("output.weight", vocab, dim, 1))
    expected = HEADER.size + 4 * sum(r * c * n for _, r, c, n in layout)
    if size != expected:
        raise ModelFormatError(f"{path.name}: file has {size} bytes but its header describes {expected} (not a llama2.c checkpoint, or truncated)")

    floats = np.frombuffer(mm, dtype="<f4", offset=HEADER.size)
    tensors: dict[str, np.ndarray] = {}
    off = 0
    for pattern, rows, cols, count in layout:
        for i in range(count):
            if pattern is not None:
                t = floats[off : off + rows * cols]
                tensors[pattern.format(i)] = t if rows == 1 else t.reshape(rows, cols)
            off += rows * cols
    return Llama2cHeader(dim, hidden, n_layers, n_heads, n_kv_heads, vocab, seq_len), tensors
