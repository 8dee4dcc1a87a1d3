"""OpenAI's API: /v1/chat/completions, /v1/completions, /v1/models.

The parameters map as llama.cpp's server maps them; the `model` field may
name the served model or anything else (apps often hard-code one).
"""
from __future__ import annotations

import json
from typing import Any, AsyncIterator, Optional

from sse_starlette.sse import EventSourceResponse
from starlette.requests import Request
from starlette.responses import JSONResponse

from .openai_format import Completion
from .protocol import ApiError, Stream, lora_arg, read_json

_SAMPLING = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k", "min_p": "min_p", "seed": "seed",
             "presence_penalty": "presence_penalty", "frequency_penalty": "frequency_penalty",
             "repeat_penalty": "repeat_penalty"}


def job_args(body: dict[str, Any], chat: bool) -> dict[str, Any]:
    """What every completion request shares: sampling, length, stop strings, logprobs."""
    if body.get("n", 1) != 1:
        raise ApiError(400, "only n=1 is supported", param="n")
    sampling = {ours: body[theirs] for theirs, ours in _SAMPLING.items() if body.get(theirs) is not None}
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
        raise ApiError(400, f"max_tokens must be a positive integer, got {max_tokens!r}", param="max_tokens")
    stop = body.get("stop") or []
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise ApiError(400, "stop must be a string or a list of strings", param="stop")
    return {"sampling": sampling, "max_tokens": -1 if max_tokens is None else max_tokens, "stop": stop,
            "ignore_eos": bool(body.get("ignore_eos")), "logprobs": _logprobs(body, chat)}


def _logprobs(body: dict[str, Any], chat: bool) -> Optional[int]:
    """How many alternatives per token to report, or None for no logprobs.  Chat
    takes `logprobs: true` and `top_logprobs` (0-20); text completions `logprobs` (0-5)."""
    def count(name: str, most: int) -> int:
        n = body.get(name)
        if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= most:
            raise ApiError(400, f"{name} must be an integer from 0 to {most}, got {n!r}", param=name)
        return n

    if not chat:
        return None if body.get("logprobs") is None else count("logprobs", 5)
    wanted = body.get("logprobs")
    if wanted is not None and not isinstance(wanted, bool):
        raise ApiError(400, f"logprobs must be true or false, got {wanted!r}", param="logprobs")
    if body.get("top_logprobs") is not None:
        if not wanted:
            raise ApiError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
        return count("top_logprobs", 20)
    return 0 if wanted else None


def _messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise ApiError(400, "messages must be a non-empty list", param="messages")
    out = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or m.get("role") not in ("system", "developer", "user", "assistant"):
            raise ApiError(400, f"messages[{i}] needs a role of system, user or assistant", param="messages")
        out.append({"role": "system" if m["role"] == "developer" else m["role"], "content": m.get("content") or ""})
    if out[-1]["role"] != "user":
        raise ApiError(400, "the last message must be the user's", param="messages")
    return out


async def _respond(body: dict[str, Any], stream: Stream, shape: Completion) -> Any:
    if body.get("stream"):
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        async def events() -> AsyncIterator[str]:
            first = shape.first_chunk()
            if first:
                yield json.dumps(first)
            async for kind, value in stream.events():
                if kind in ("piece", "logprobs"):
                    chunk = shape.piece_chunk(kind, value)
                    if chunk:
                        yield json.dumps(chunk)
                else:
                    shape.n_prompt_tokens = stream.job.n_prompt_tokens
                    for c in shape.last_chunks(value, include_usage):
                        yield json.dumps(c)
            yield "[DONE]"

        return EventSourceResponse(events(), ping=15)
    answer = await stream.collect()
    shape.n_prompt_tokens = stream.job.n_prompt_tokens
    return JSONResponse(shape.whole(answer.text, answer.stats, answer.logprobs))


async def chat_completions(request: Request, state: dict) -> Any:
    body = await read_json(request)
    args = job_args(body, chat=True)
    stream = Stream(state["engine"], {"messages": _messages(body), "lora": lora_arg(body, state["adapters"]), **args})
    return await _respond(body, stream, _shape(True, body, state, args))


async def completions(request: Request, state: dict) -> Any:
    body = await read_json(request)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise ApiError(400, "prompt must be a string", param="prompt")
    args = job_args(body, chat=False)
    stream = Stream(state["engine"], {"prompt": prompt, "lora": lora_arg(body, state["adapters"]), **args})
    return await _respond(body, stream, _shape(False, body, state, args, offset=len(prompt)))


def _shape(chat: bool, body: dict[str, Any], state: dict, args: dict[str, Any], offset: int = 0) -> Completion:
    tokenizer = state["model"].tokenizer if args["logprobs"] is not None else None
    return Completion(chat, body.get("model") or state["name"], tokenizer=tokenizer, offset=offset)


async def models(request: Request, state: dict) -> JSONResponse:
    created = int(state["model"].path.stat().st_mtime)
    return JSONResponse({"object": "list", "data": [{"id": state["name"], "object": "model", "created": created,
                                                      "owned_by": "llamalocal"}]})


ROUTES = [
    ("/v1/chat/completions", chat_completions, ["POST"]),
    ("/v1/completions", completions, ["POST"]),
    ("/v1/models", models, ["GET"]),
]
