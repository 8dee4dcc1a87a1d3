"""What `llamalocal quantize` reads: any supported checkpoint, seen as GGUF
(`convert.checkpoint` has the types; one module per input format)."""
from __future__ import annotations

from pathlib import Path

from ..errors import CheckpointError
from .checkpoint import Checkpoint


def open_checkpoint(path: str | Path, tokenizer: str | Path | None = None) -> Checkpoint:
    """Opens INPUT of `llamalocal quantize`, whatever its format."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or directory")
    if path.is_dir():
        if (path / "config.json").is_file():
            from .hf import open_hf

            return open_hf(path, tokenizer)
        if (path / "params.json").is_file() and any(path.glob("consolidated.*.pth")):
            from .meta import open_meta

            return open_meta(path, tokenizer)
        raise CheckpointError(f"{path}: directory holds neither a Hugging Face model (config.json + *.safetensors) "
                              f"nor a Meta checkpoint (params.json + consolidated.*.pth)")
    with open(path, "rb") as fh:
        head = fh.read(4)
    from ..io.legacy_ggml import legacy_format

    if head == b"GGUF" or legacy_format(head):  # GGUF, or a pre-GGUF llama.cpp file (ggml, ggmf, ggjt) whatever its name
        from .gguf import open_gguf

        return open_gguf(path, tokenizer)
    if path.suffix == ".pth" and (path.parent / "params.json").is_file():
        from .meta import open_meta

        return open_meta(path.parent, tokenizer)
    if path.suffix == ".bin":
        from .llama2c import open_llama2c

        return open_llama2c(path, tokenizer)
    raise CheckpointError(f"{path}: unknown input format (expected a GGUF file, a pre-GGUF ggml/ggmf/ggjt file, a "
                          f"llama2.c .bin, a Hugging Face model directory or a Meta checkpoint directory)")
