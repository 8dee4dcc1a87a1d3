"""A llama2.c `.bin` checkpoint (run.c's format) as quantize input.

The weights are float32 in GGUF's layout already (run.c rotates adjacent
pairs, as GGUF's `llama` RoPE does); the vocabulary comes from the
`--tokenizer` file: llama2.c's tokenizer.bin or a SentencePiece .model.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import CheckpointError, ModelFormatError
from ..io.gguf_metadata import string, tokenizer_metadata
from ..io.llama2c import read_llama2c
from ..model.arch.llama import llama2c_config
from ..tokenizer.spm import load_llama2c_vocab
from ..tokenizer.to_gguf import spm_vocab
from .checkpoint import Checkpoint, SourceTensor, llama_hparams


def open_llama2c(path: Path, tokenizer: Optional[Path]) -> Checkpoint:
    if tokenizer is None:
        raise CheckpointError(f"{path}: a llama2.c checkpoint carries no vocabulary; pass --tokenizer "
                              f"(its tokenizer.bin or SentencePiece tokenizer.model)")
    try:
        header, tensors = read_llama2c(path)
    except ModelFormatError as e:
        raise CheckpointError(str(e)) from None
    cfg = llama2c_config(header)
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

    def loader(a: np.ndarray):
        return lambda: np.array(a, dtype=np.float32)

    sources = [SourceTensor(name, a.shape, "F32", loader(a)) for name, a in tensors.items()]
    return Checkpoint(path, "llama2c", "llama", metadata, sources)
