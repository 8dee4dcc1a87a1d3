"""A llama2.c `.bin` checkpoint (run.c's format) as quantize input.

The weights are float32 in GGUF's layout already (run.c rotates adjacent
pairs, as GGUF's `llama` RoPE does); the vocabulary comes from the
`--tokenizer` file: llama2.c's tokenizer.bin or a SentencePiece .model.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from .checkpoint import Checkpoint, CheckpointError, SourceTensor, llama_hparams, string, tokenizer_metadata
from .gguf_io import ModelFormatError
from .llama2c import load_llama2c
from .tokenizer_spm import load_llama2c as load_llama2c_vocab
from .vocab_gguf import spm_vocab


def open_llama2c(path: Path, tokenizer: Optional[Path]) -> Checkpoint:
    if tokenizer is None:
        raise CheckpointError(f"{path}: a llama2.c checkpoint carries no vocabulary; pass --tokenizer "
                              f"(its tokenizer.bin or SentencePiece tokenizer.model)")
    try:
        cfg, tensors = load_llama2c(path)
    except ModelFormatError as e:
        raise CheckpointError(str(e)) from None
    tokenizer = Path(tokenizer)
    if tokenizer.suffix == ".model":
        vocab = spm_vocab(tokenizer, cfg.n_vocab)
    else:
        try:
            plain = load_llama2c_vocab(tokenizer)
        except ValueError as e:
            raise CheckpointError(f"{tokenizer}: {e}") from None
        n_tokens = len(plain["tokenizer.ggml.tokens"])
        if n_tokens != cfg.n_vocab:
            raise CheckpointError(f"{tokenizer} has {n_tokens} tokens but {path.name} was trained with a vocabulary "
                                  f"of {cfg.n_vocab}")
        vocab = tokenizer_metadata(plain)
    metadata = {"general.architecture": string("llama"), "general.name": string(path.stem)}
    metadata.update(llama_hparams("llama", n_ctx=cfg.n_ctx_train, n_embd=cfg.n_embd, n_ff=cfg.n_ff, n_layer=cfg.n_layer,
                                  n_head=cfg.n_head, n_head_kv=cfg.n_head_kv, norm_eps=cfg.norm_eps,
                                  rope_base=cfg.rope_base[0], rope_dim=cfg.rope_dim))
    metadata.update(vocab)

    def loader(t):
        shape = (t.cols,) if t.rows == 1 else (t.rows, t.cols)
        return lambda: np.array(t.f32().reshape(shape), dtype=np.float32)

    sources = []
    for name, t in tensors.items():
        sources.append(SourceTensor(name, (t.cols,) if t.rows == 1 else (t.rows, t.cols), "F32", loader(t)))
    return Checkpoint(path, "llama2c", "llama", metadata, sources)
