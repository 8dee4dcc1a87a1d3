"""Token generation: prefill the prompt as one batch, then decode one token at
a time, streaming UTF-8-safe text as it is produced."""
from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, ContextManager, Iterator, Optional, Sequence

import numpy as np

from .model.kv_cache import KVCache
from .model.transformer import Transformer


@dataclass
class GenerationStats:
    n_prompt: int = 0
    n_generated: int = 0
    prompt_seconds: float = 0.0
    gen_seconds: float = 0.0
    stop_reason: str = ""

    @property
    def prompt_tps(self) -> float:
        return self.n_prompt / self.prompt_seconds if self.prompt_seconds else 0.0

    @property
    def gen_tps(self) -> float:
        # the first generated token comes from the prefill's logits: count the decode steps
        steps = max(self.n_generated - 1, 0)
        return steps / self.gen_seconds if self.gen_seconds else 0.0


def generate_tokens(
    model: Transformer,
    prompt_ids: Sequence[int],
    sample: Callable[[np.ndarray, Sequence[int]], int],
    max_tokens: int,
    cache: KVCache,
    stop_ids: frozenset = frozenset(),
    stats: Optional[GenerationStats] = None,
    lock: Optional[ContextManager] = None,
) -> Iterator[int]:
    """Yields up to max_tokens sampled ids after prompt_ids (evaluated at the
    cache's next positions).  A stop id ends generation and is not yielded.
    `lock`, when given, is held around each forward pass (a model shared by threads)."""
    stats = stats if stats is not None else GenerationStats()
    lock = lock if lock is not None else nullcontext()
    history = list(prompt_ids)
    if max_tokens <= 0:
        return
    t0 = time.perf_counter()
    with lock:
        logits = model.forward(history, cache)
    stats.n_prompt = len(history)
    stats.prompt_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(max_tokens):
        token = sample(logits, history)
        if token in stop_ids:
            stats.stop_reason = "stop token"
            break
        history.append(token)
        stats.n_generated += 1
        yield token
        if i + 1 < max_tokens:
            if cache.n_free == 0:
                stats.stop_reason = "context full"
                break
            with lock:
                logits = model.forward([token], cache)
        stats.gen_seconds = time.perf_counter() - t0
    else:
        stats.stop_reason = "token limit"
    stats.gen_seconds = time.perf_counter() - t0
