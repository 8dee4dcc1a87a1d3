"""Opening a model file: GGUF (any supported architecture) or a llama2.c
checkpoint, with its tokenizer."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from .arch import ARCHITECTURES
from .arch.config import UnsupportedModelError
from .gguf_io import GGUFFile, ModelFormatError
from .model import QTensor, Transformer


@dataclass
class LoadedModel:
    path: Path
    model: Transformer
    tokenizer: Any  # tokenizer.Tokenizer, or None when the file carries none
    metadata: dict = field(default_factory=dict)
    format: str = "gguf"  # or "llama2c"
    _file: Optional[GGUFFile] = None  # keeps the memory map the weights point into alive

    @property
    def chat_template(self) -> Optional[str]:
        return self.metadata.get("tokenizer.chat_template")


def _is_gguf(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"GGUF"


def load_model(path: str | Path, tokenizer_path: str | Path | None = None) -> LoadedModel:
    """Loads a model (weights stay memory-mapped).  `tokenizer_path` is needed for
    llama2.c checkpoints (tokenizer.bin or a SentencePiece .model) and overrides
    the GGUF's own vocabulary otherwise."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such model file")
    from .tokenizer import Tokenizer

    if _is_gguf(path):
        f = GGUFFile(path)
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
            config = ARCHITECTURES[arch](lambda k, d=None: f.arch_get(k, d), f.tensors["token_embd.weight"].shape[1])
            model = Transformer(config, tensors, source=path.name)
            if tokenizer_path is not None:
                tokenizer = _tokenizer_from_path(Path(tokenizer_path))
            elif "tokenizer.ggml.tokens" in f.metadata:
                tokenizer = Tokenizer.from_gguf_metadata(f.metadata)
            else:
                tokenizer = None
        except Exception:
            f.close()
            raise
        return LoadedModel(path, model, tokenizer, dict(f.metadata), "gguf", f)

    from .llama2c import load_llama2c

    config, tensors = load_llama2c(path)
    model = Transformer(config, tensors, source=path.name)
    tokenizer = _tokenizer_from_path(Path(tokenizer_path)) if tokenizer_path else None
    return LoadedModel(path, model, tokenizer, {"general.architecture": "llama", "general.name": path.stem}, "llama2c")


def _tokenizer_from_path(p: Path):
    from .tokenizer import Tokenizer

    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such tokenizer file")
    with open(p, "rb") as fh:
        head = fh.read(4)
    if head == b"GGUF":
        with GGUFFile(p) as g:
            return Tokenizer.from_gguf_metadata(g.metadata)
    if p.suffix == ".model":
        return Tokenizer.from_sentencepiece(p)
    return Tokenizer.from_llama2c(p)


__all__ = ["LoadedModel", "load_model", "ModelFormatError", "UnsupportedModelError"]
