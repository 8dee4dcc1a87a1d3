"""What `llamalocal quantize` reads: any supported checkpoint, seen as GGUF.

Every input format (a Hugging Face directory, Meta's consolidated.*.pth, a
llama2.c .bin, a GGUF file) is opened as a `Checkpoint`: the GGUF metadata the
output will carry (with value types, as llama.cpp's converter writes them) and
the tensors under their GGUF names, in GGUF layout (HF's Q/K row permutation
already undone).  Tensors are loaded one at a time, so converting a model
needs about one tensor of memory, not the whole model.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import numpy as np

from ..io.gguf_metadata import MetaValue, f32, u32


@dataclass
class SourceTensor:
    name: str  # GGUF name, e.g. "blk.0.attn_q.weight"
    shape: tuple[int, ...]  # numpy order: (rows, cols) for matrices, (n,) for vectors
    source_type: str  # how the input stores it: "F32", "F16", "BF16", or a GGML type name
    load: Callable[[], np.ndarray]  # float32 array of `shape`, C-contiguous
    blocks: Optional[Callable[[], np.ndarray]] = None  # the data as stored (uint8), when source_type is a GGML type

    @property
    def n_elements(self) -> int:
        return int(np.prod(self.shape))


@dataclass
class Checkpoint:
    path: Path
    kind: str  # "hf", "meta", "llama2c", "gguf", "ggml" (pre-GGUF llama.cpp files)
    arch: str  # GGUF architecture name: "llama", "qwen2", "gemma3"
    metadata: dict[str, MetaValue]  # every key the output carries, except general.file_type
    tensors: list[SourceTensor]  # in the order they are written
    warnings: list[str] = field(default_factory=list)
    _close: Optional[Callable[[], None]] = None

    def tensor(self, name: str) -> SourceTensor:
        for t in self.tensors:
            if t.name == name:
                return t
        raise KeyError(f"{self.path}: no tensor {name!r}")

    def get(self, key: str, default: Any = None) -> Any:
        """A metadata value; keys may be given without the `{arch}.` prefix."""
        mv = self.metadata.get(key) or self.metadata.get(f"{self.arch}.{key}")
        return default if mv is None else mv.value

    def __iter__(self) -> Iterator[SourceTensor]:
        return iter(self.tensors)

    def close(self) -> None:
        if self._close is not None:
            self._close()
            self._close = None

    def __enter__(self) -> "Checkpoint":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def llama_hparams(arch: str, *, n_ctx: int, n_embd: int, n_ff: int, n_layer: int, n_head: int, n_head_kv: int,
                  norm_eps: float, rope_base: float, rope_dim: Optional[int] = None, n_vocab: Optional[int] = None,
                  head_dim: Optional[int] = None) -> dict[str, MetaValue]:
    """The `{arch}.*` keys llama.cpp's converter writes for a llama-family model."""
    m = {
        f"{arch}.context_length": u32(n_ctx),
        f"{arch}.embedding_length": u32(n_embd),
        f"{arch}.feed_forward_length": u32(n_ff),
        f"{arch}.block_count": u32(n_layer),
        f"{arch}.attention.head_count": u32(n_head),
        f"{arch}.attention.head_count_kv": u32(n_head_kv),
        f"{arch}.attention.layer_norm_rms_epsilon": f32(norm_eps),
        f"{arch}.rope.freq_base": f32(rope_base),
    }
    if rope_dim is not None:
        m[f"{arch}.rope.dimension_count"] = u32(rope_dim)
    if head_dim is not None and head_dim != n_embd // n_head:
        m[f"{arch}.attention.key_length"] = u32(head_dim)
        m[f"{arch}.attention.value_length"] = u32(head_dim)
    if n_vocab is not None:
        m[f"{arch}.vocab_size"] = u32(n_vocab)
    return m


