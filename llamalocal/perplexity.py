"""Perplexity with llama.cpp's method (llama-perplexity), so figures compare.

The text is tokenized as one string (with BOS if the model adds one) and cut
into chunks of n_ctx tokens.  Each chunk is evaluated on its own, from an
empty cache, its first token replaced by BOS when the model uses one; only
the predictions of the second half of each chunk count.  PPL = exp(mean NLL),
and the error is PPL times the standard error of the mean NLL.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np

from .errors import InvalidArgumentError
from .model.transformer import Transformer


@dataclass
class PerplexityResult:
    ppl: float
    stderr: float
    n_chunks: int
    n_scored: int  # predictions counted


def log_softmax_at(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """log p(target) for each row of logits [n, vocab]."""
    mx = logits.max(axis=1, keepdims=True)
    lse = np.log(np.exp((logits - mx).astype(np.float64)).sum(axis=1)) + mx[:, 0]
    return logits[np.arange(len(targets)), targets].astype(np.float64) - lse


def perplexity(model: Transformer, tokens: Sequence[int], n_ctx: int = 512, n_chunks: Optional[int] = None,
               bos_id: Optional[int] = None, progress: Optional[Callable[[int, int, float], None]] = None) -> PerplexityResult:
    tokens = np.asarray(tokens, dtype=np.int64)
    available = len(tokens) // n_ctx
    if available == 0:
        raise InvalidArgumentError(f"the text has {len(tokens)} tokens, fewer than one chunk of {n_ctx}")
    n_chunks = min(n_chunks or available, available)
    first = n_ctx // 2
    nll = nll2 = 0.0
    count = 0
    for c in range(n_chunks):
        chunk = tokens[c * n_ctx : (c + 1) * n_ctx].copy()
        if bos_id is not None:
            chunk[0] = bos_id
        cache = model.new_cache(n_ctx)
        # logits of positions first .. n_ctx-2, which predict tokens first+1 .. n_ctx-1
        logits = model.forward(chunk, cache, n_logits=n_ctx - first)[:-1]
        lp = log_softmax_at(logits, chunk[first + 1 :])
        nll -= float(lp.sum())
        nll2 += float((lp * lp).sum())
        count += len(lp)
        if progress:
            progress(c + 1, n_chunks, math.exp(nll / count))
    mean, mean2 = nll / count, nll2 / count
    ppl = math.exp(mean)
    err = ppl * math.sqrt(max(mean2 - mean * mean, 0.0) / max(count - 1, 1))
    return PerplexityResult(ppl, err, n_chunks, count)
