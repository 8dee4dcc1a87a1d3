"""OpenAI's response objects, built from the engine's events: one place for
the server's /v1 routes and for `llamalocal.Llama` (llama-cpp-python's API)."""
from __future__ import annotations

import time
import uuid
from typing import Any, Optional, Sequence

from ..sampling import TokenLogprob
from ..session import TurnStats
from ..tokenizer import Tokenizer


def finish_reason(stats: TurnStats) -> str:
    """OpenAI's and ollama's word for why an answer ended."""
    return "length" if stats.stop_reason in ("token limit", "context full") else "stop"


def timings(stats: TurnStats) -> dict[str, Any]:
    """llama.cpp's server `timings`: cache_n tokens were reused, prompt_n evaluated."""
    return {"cache_n": stats.n_reused, "prompt_n": stats.n_prompt, "prompt_ms": stats.prompt_seconds * 1e3,
            "predicted_n": stats.n_generated, "predicted_ms": stats.gen_seconds * 1e3,
            "predicted_per_second": stats.gen_tps}


class Completion:
    """The objects of one chat or text completion, streamed (chunks) or whole.
    With a `tokenizer`, the logprobs events passed in are rendered in the
    endpoint's shape: chat's `content` entries, or the legacy completion's
    parallel lists (`text_offset` counted from the prompt's start: `offset` is its length)."""

    def __init__(self, chat: bool, model: str, n_prompt_tokens: int = 0, tokenizer: Optional[Tokenizer] = None,
                 offset: int = 0):
        self.chat = chat
        self.model = model
        self.id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.n_prompt_tokens = n_prompt_tokens
        self.tokenizer = tokenizer
        self._offset = offset
        self._pending: Sequence[TokenLogprob] = ()  # a logprobs event waiting for its piece

    def _base(self, kind: str) -> dict[str, Any]:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}

    def _choice(self, text: Optional[str], finish: Optional[str], whole: bool = False,
                logprobs: Optional[Sequence[TokenLogprob]] = ()) -> dict[str, Any]:
        lp = self._logprobs(logprobs)
        if not self.chat:
            return {"index": 0, "text": text or "", "finish_reason": finish, "logprobs": lp}
        if whole:
            return {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish, "logprobs": lp}
        return {"index": 0, "delta": {} if text is None else {"content": text}, "finish_reason": finish, "logprobs": lp}

    def _logprobs(self, entries: Optional[Sequence[TokenLogprob]]) -> Optional[dict[str, Any]]:
        if self.tokenizer is None or entries is None:
            return None
        tok = self.tokenizer

        def piece(i: int) -> tuple[str, list[int]]:
            b = tok.token_to_bytes(i)
            return b.decode("utf-8", errors="replace"), list(b)

        if self.chat:
            content = []
            for e in entries:
                text, raw = piece(e.token)
                top = [{"token": t, "logprob": lp, "bytes": b} for t, b, lp in ((*piece(i), lp) for i, lp in e.top)]
                content.append({"token": text, "logprob": e.logprob, "bytes": raw, "top_logprobs": top})
            return {"content": content}
        out: dict[str, list] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
        for e in entries:
            text = piece(e.token)[0]
            out["tokens"].append(text)
            out["token_logprobs"].append(e.logprob)
            out["top_logprobs"].append({piece(i)[0]: lp for i, lp in e.top})
            out["text_offset"].append(self._offset)
            self._offset += len(text)
        return out

    def usage(self, stats: TurnStats) -> dict[str, int]:
        return {"prompt_tokens": self.n_prompt_tokens, "completion_tokens": stats.n_generated,
                "total_tokens": self.n_prompt_tokens + stats.n_generated}

    def first_chunk(self) -> Optional[dict[str, Any]]:
        """The chat stream opens with the assistant's role, as OpenAI's does."""
        if not self.chat:
            return None
        return {**self._base("chat.completion.chunk"),
                "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None,
                             "logprobs": None}]}

    def chunk(self, text: str, logprobs: Sequence[TokenLogprob] = ()) -> dict[str, Any]:
        return {**self._base("chat.completion.chunk" if self.chat else "text_completion"),
                "choices": [self._choice(text, None, logprobs=logprobs)]}

    def piece_chunk(self, kind: str, value: Any) -> Optional[dict[str, Any]]:
        """The chunk of an engine event "piece", carrying the "logprobs" event that
        came just before it; None for that "logprobs" event itself."""
        if kind == "logprobs":
            self._pending = value
            return None
        chunk = self.chunk(value, self._pending)
        self._pending = ()
        return chunk

    def last_chunks(self, stats: TurnStats, include_usage: bool) -> list[dict[str, Any]]:
        kind = "chat.completion.chunk" if self.chat else "text_completion"
        out = [{**self._base(kind), "choices": [self._choice(None, finish_reason(stats), logprobs=None)],
                "timings": timings(stats)}]
        if include_usage:
            out.append({**self._base(kind), "choices": [], "usage": self.usage(stats)})
        return out

    def whole(self, text: str, stats: TurnStats, logprobs: Sequence[TokenLogprob] = ()) -> dict[str, Any]:
        return {**self._base("chat.completion" if self.chat else "text_completion"),
                "choices": [self._choice(text, finish_reason(stats), whole=True, logprobs=logprobs)],
                "usage": self.usage(stats), "timings": timings(stats)}
