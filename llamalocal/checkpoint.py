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
from gguf import GGUFValueType


class CheckpointError(ValueError):
    """The input cannot be converted: names the file and what is wrong."""


@dataclass
class MetaValue:
    value: Any
    type: GGUFValueType
    sub_type: Optional[GGUFValueType] = None  # element type of arrays


@dataclass
class SourceTensor:
    name: str  # GGUF name, e.g. "blk.0.attn_q.weight"
    shape: tuple[int, ...]  # numpy order: (rows, cols) for matrices, (n,) for vectors
    source_type: str  # how the input stores it: "F32", "F16", "BF16", or a GGML type name
    load: Callable[[], np.ndarray]  # float32 array of `shape`, C-contiguous

    @property
    def n_elements(self) -> int:
        return int(np.prod(self.shape))


@dataclass
class Checkpoint:
    path: Path
    kind: str  # "hf", "meta", "llama2c", "gguf"
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


class ShardedWeights:
    """The tensors of a model spread over several files (safetensors or torch shards).

    `where` maps each tensor name to the open file holding it; each file has
    `.tensors` (name -> entry with .shape, .dtype, .file), `.load(name)` and `.close()`."""

    def __init__(self, files: list, where: Optional[dict] = None):
        self.files = files
        if where is None:
            where = {}
            for f in files:
                for name in f.tensors:
                    if name in where:
                        raise CheckpointError(f"{f.path}: tensor {name!r} is also in {where[name].path.name}")
                    where[name] = f
        self._where = where

    @property
    def names(self) -> list[str]:
        return list(self._where)

    def entry(self, name: str):
        return self._where[name].tensors[name]

    def load(self, name: str) -> np.ndarray:
        return self._where[name].load(name)

    def close(self) -> None:
        for f in self.files:
            f.close()


# -- metadata helpers shared by the readers ---------------------------------------------------------------

V = GGUFValueType


def u32(v: int) -> MetaValue:
    return MetaValue(int(v), V.UINT32)


def f32(v: float) -> MetaValue:
    return MetaValue(float(v), V.FLOAT32)


def string(v: str) -> MetaValue:
    return MetaValue(str(v), V.STRING)


def boolean(v: bool) -> MetaValue:
    return MetaValue(bool(v), V.BOOL)


def array(values, sub_type: GGUFValueType) -> MetaValue:
    return MetaValue(values, V.ARRAY, sub_type)


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


def open_checkpoint(path: str | Path, tokenizer: str | Path | None = None) -> Checkpoint:
    """Opens INPUT of `llamalocal quantize`, whatever its format."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or directory")
    if path.is_dir():
        if (path / "config.json").is_file():
            from .checkpoint_hf import open_hf

            return open_hf(path, tokenizer)
        if (path / "params.json").is_file() and any(path.glob("consolidated.*.pth")):
            from .checkpoint_meta import open_meta

            return open_meta(path, tokenizer)
        raise CheckpointError(f"{path}: directory holds neither a Hugging Face model (config.json + *.safetensors) "
                              f"nor a Meta checkpoint (params.json + consolidated.*.pth)")
    with open(path, "rb") as fh:
        head = fh.read(4)
    if head == b"GGUF":
        from .checkpoint_gguf import open_gguf

        return open_gguf(path)
    if path.suffix == ".pth" and (path.parent / "params.json").is_file():
        from .checkpoint_meta import open_meta

        return open_meta(path.parent, tokenizer)
    if path.suffix == ".bin":
        from .checkpoint_llama2c import open_llama2c

        return open_llama2c(path, tokenizer)
    raise CheckpointError(f"{path}: unknown input format (expected a GGUF file, a llama2.c .bin, a Hugging Face "
                          f"model directory or a Meta checkpoint directory)")


# GGUF value types of the tokenizer keys, as llama.cpp's converter writes them.
_TOKENIZER_KEY_TYPES = {
    "tokenizer.ggml.tokens": (V.ARRAY, V.STRING), "tokenizer.ggml.merges": (V.ARRAY, V.STRING),
    "tokenizer.ggml.scores": (V.ARRAY, V.FLOAT32), "tokenizer.ggml.token_type": (V.ARRAY, V.INT32),
}


def tokenizer_metadata(meta: dict[str, Any]) -> dict[str, MetaValue]:
    """Types a plain `tokenizer.*` dict (as tokenizer_spm's loaders return it) for writing."""
    out: dict[str, MetaValue] = {}
    for key, value in meta.items():
        if key in _TOKENIZER_KEY_TYPES:
            vtype, sub = _TOKENIZER_KEY_TYPES[key]
            out[key] = MetaValue([float(v) if sub == V.FLOAT32 else v for v in value] if sub != V.STRING else list(value),
                                 vtype, sub)
        elif isinstance(value, bool):
            out[key] = boolean(value)
        elif isinstance(value, int):
            out[key] = u32(value)
        elif isinstance(value, str):
            out[key] = string(value)
        else:
            raise CheckpointError(f"tokenizer key {key!r}: cannot store a {type(value).__name__}")
    return out
