"""Opening a model file: GGUF (any supported architecture) or a llama2.c
checkpoint, with its tokenizer."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..errors import (
    MissingFileError,
    TokenizerError,
    UnsupportedModelError,
)
from ..formats import GGMLType
from ..io.gguf_reader import GGUFFile
from ..io.legacy_ggml import open_model_file
from ..io.llama2c import read_llama2c
from .arch import ARCHITECTURES
from .arch.llama import llama2c_config
from .lora import load_adapters
from .transformer import QTensor, Transformer


@dataclass
class LoadedModel:
    path: Path
    model: Transformer
    tokenizer: Any  # tokenizer.Tokenizer, or None when the file carries none
    metadata: dict = field(default_factory=dict)
    format: str = "gguf"  # or "llama2c", or a pre-GGUF format: "ggml (unversioned)", "ggmf v1", "ggjt v1".."ggjt v3"
    _file: Optional[GGUFFile] = None  # keeps the memory map the weights point into alive

    @property
    def warnings(self) -> list[str]:
        """What the file got wrong but could be loaded with a default (shown to the user)."""
        return list(getattr(self._file, "warnings", [])) + list(getattr(self.tokenizer, "warnings", []))

    @property
    def chat_template(self) -> Optional[str]:
        return self.metadata.get("tokenizer.chat_template")


def load_model(path: str | Path, tokenizer_path: str | Path | None = None,
               lora: Optional[Sequence[Any]] = None, *, rms_norm_eps: Optional[float] = None,
               rope_freq_base: Optional[float] = None) -> LoadedModel:
    """load_file(path, tokenizer_path) with LoRA adapters applied unmerged: `lora` lists
    adapter paths (GGUF adapters or PEFT directories) or (path, scale) pairs (model/lora.py)."""
    lm = load_file(path, tokenizer_path, rms_norm_eps=rms_norm_eps, rope_freq_base=rope_freq_base)
    if lora:
        lm.model.set_lora(load_adapters(lora, lm.model.config))
    return lm


def load_file(path: str | Path, tokenizer_path: str | Path | None = None, *, rms_norm_eps: Optional[float] = None,
              rope_freq_base: Optional[float] = None) -> LoadedModel:
    """Loads a model (weights stay memory-mapped).  `tokenizer_path` is needed for
    llama2.c checkpoints (tokenizer.bin or a SentencePiece .model) and overrides
    the GGUF's own vocabulary otherwise.  Pre-GGUF files (io/legacy_ggml.py) load
    as the GGUF they would convert to; `rms_norm_eps` / `rope_freq_base` override
    the file's values (or, for those files, their era's defaults)."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{path}: no such model file")
    overrides = {"attention.layer_norm_rms_epsilon": rms_norm_eps, "rope.freq_base": rope_freq_base}
    f = open_model_file(path)
    if f is not None:
        try:
            arch = f.architecture
            if arch not in ARCHITECTURES:
                raise UnsupportedModelError(f"{path.name}: architecture {arch!r} is not supported (supported: {', '.join(ARCHITECTURES)})")
            if "token_embd.weight" not in f.tensors:
                raise UnsupportedModelError(f"{path.name}: no token_embd.weight tensor (a vocabulary-only file?)")
            tensors = {}
            for name, ti in f.tensors.items():
                data = f.tensor_bytes(name)
                tensors[name] = QTensor(name, ti.type, ti.n_rows, ti.shape[0], data.reshape(ti.n_rows, -1))
            try:
                config = ARCHITECTURES[arch](lambda k, d=None: f.arch_get(k, d) if overrides.get(k) is None else overrides[k],
                                             f.tensors["token_embd.weight"].shape[1])
            except UnsupportedModelError as e:
                raise UnsupportedModelError(f"{path.name}: {e}") from None
            model = Transformer(config, tensors, source=path.name)
            if tokenizer_path is not None:
                tokenizer = _tokenizer_from_path(Path(tokenizer_path))
            elif "tokenizer.ggml.tokens" in f.metadata:
                tokenizer = _tokenizer_from_gguf(path, f.metadata, config.n_vocab)
            else:
                tokenizer = None
        except Exception:
            f.close()
            raise
        return LoadedModel(path, model, tokenizer, dict(f.metadata), f.format_name, f)

    header, arrays = read_llama2c(path)
    tensors = {}
    for name, a in arrays.items():
        rows, cols = a.shape if a.ndim == 2 else (1, a.size)
        tensors[name] = QTensor(name, GGMLType.F32, rows, cols, a.view(np.uint8).reshape(rows, 4 * cols))
    model = Transformer(llama2c_config(header), tensors, source=path.name)
    tokenizer = _tokenizer_from_path(Path(tokenizer_path)) if tokenizer_path else None
    return LoadedModel(path, model, tokenizer, {"general.architecture": "llama", "general.name": path.stem}, "llama2c")


def _tokenizer_from_gguf(path: Path, metadata: dict, n_vocab: Optional[int] = None):
    from ..tokenizer import Tokenizer

    try:
        tok = Tokenizer.from_gguf_metadata(metadata)
    except ValueError as e:  # TokenizerError, or a malformed value the reader passed on
        raise TokenizerError(f"{path.name}: tokenizer metadata: {e}") from None
    tok.warnings = [f"{path.name}: {w}" for w in tok.warnings]
    if n_vocab is not None and tok.n_vocab > n_vocab:
        raise TokenizerError(f"{path.name}: the vocabulary has {tok.n_vocab} tokens but the model's embedding only {n_vocab}")
    return tok


def _tokenizer_from_path(p: Path):
    from ..tokenizer import Tokenizer

    if not p.is_file():
        raise MissingFileError(f"{p}: no such tokenizer file")
    with open(p, "rb") as fh:
        head = fh.read(4)
    if head == b"GGUF":
        with GGUFFile(p) as g:
            return _tokenizer_from_gguf(p, g.metadata)
    try:
        if p.suffix == ".model":
            return Tokenizer.from_sentencepiece(p)
        return Tokenizer.from_llama2c(p)
    except ValueError as e:
        raise TokenizerError(f"{p}: {e}") from None


__all__ = ["LoadedModel", "load_model"]
