"""ollama's API: /api/chat and /api/generate (newline-delimited JSON streams),
/api/tags, /api/show, /api/version, with the fields the `ollama` client reads."""
from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from typing import Any, AsyncIterator

from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse

from .. import __version__
from .openai_format import finish_reason
from .protocol import ApiError, Stream, lora_arg, read_json

# ollama's option names -> ours
_OPTIONS = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k", "min_p": "min_p", "seed": "seed",
            "repeat_penalty": "repeat_penalty", "repeat_last_n": "repeat_last_n",
            "presence_penalty": "presence_penalty", "frequency_penalty": "frequency_penalty"}


def _job_args(body: dict[str, Any], state: dict) -> dict[str, Any]:
    """Sampling and length from `options`; adapters from `lora`, as the OpenAI routes take it."""
    options = body.get("options") or {}
    if not isinstance(options, dict):
        raise ApiError(400, "options must be an object")
    sampling = {ours: options[theirs] for theirs, ours in _OPTIONS.items() if options.get(theirs) is not None}
    n = options.get("num_predict")
    stop = options.get("stop") or []
    if isinstance(stop, str):
        stop = [stop]
    return {"sampling": sampling, "max_tokens": -1 if n is None or n < 0 else int(n), "stop": list(stop),
            "lora": lora_arg(body, state["adapters"])}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def _final(stream: Stream, stats, start: float) -> dict[str, Any]:
    ns = 1_000_000_000
    return {"done": True, "done_reason": finish_reason(stats), "total_duration": int((time.perf_counter() - start) * ns),
            "load_duration": 0, "prompt_eval_count": stream.job.n_prompt_tokens,
            "prompt_eval_duration": int(stats.prompt_seconds * ns), "eval_count": stats.n_generated,
            "eval_duration": int(stats.gen_seconds * ns)}


async def _respond(body: dict, stream: Stream, name: str, wrap) -> Any:
    start = time.perf_counter()
    if body.get("stream", True):
        async def lines() -> AsyncIterator[str]:
            async for kind, value in stream.events():
                if kind == "piece":
                    yield json.dumps({"model": name, "created_at": _now(), **wrap(value), "done": False}) + "\n"
                else:
                    yield json.dumps({"model": name, "created_at": _now(), **wrap(""),
                                      **_final(stream, value, start)}) + "\n"

        return StreamingResponse(lines(), media_type="application/x-ndjson")
    answer = await stream.collect()
    return JSONResponse({"model": name, "created_at": _now(), **wrap(answer.text), **_final(stream, answer.stats, start)})


async def chat(request: Request, state: dict) -> Any:
    body = await read_json(request)
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise ApiError(400, "messages must be a non-empty list")
    messages = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant"):
            raise ApiError(400, f"messages[{i}] needs a role of system, user or assistant")
        messages.append({"role": m["role"], "content": str(m.get("content") or "")})
    if messages[-1]["role"] != "user":
        raise ApiError(400, "the last message must be the user's")
    stream = Stream(state["engine"], {"messages": messages, **_job_args(body, state)})
    name = body.get("model") or state["name"]
    return await _respond(body, stream, name, lambda text: {"message": {"role": "assistant", "content": text}})


async def generate(request: Request, state: dict) -> Any:
    body = await read_json(request)
    prompt = body.get("prompt")
    if not isinstance(prompt, str):
        raise ApiError(400, "prompt must be a string")
    args = _job_args(body, state)
    if body.get("raw"):
        job = {"prompt": prompt, **args}
    else:  # as ollama does: the prompt is a user turn of the model's template
        system = body.get("system")
        job = {"messages": ([{"role": "system", "content": str(system)}] if system else [])
               + [{"role": "user", "content": prompt}], **args}
    stream = Stream(state["engine"], job)
    name = body.get("model") or state["name"]
    return await _respond(body, stream, name, lambda text: {"response": text})


def _details(state: dict) -> dict[str, Any]:
    """ollama's `details` of a model, from its GGUF header."""
    lm = state["model"].lm
    arch = str(lm.metadata.get("general.architecture", "llama"))
    weights: dict[str, int] = {}
    n_params = 0
    for t in (lm._file.tensors.values() if lm._file is not None else ()):
        n_params += t.n_elements
        if t.n_dims >= 2:
            weights[t.type.name] = weights.get(t.type.name, 0) + t.n_elements
    size = f"{n_params / 1e6:.0f}M" if n_params < 1e9 else f"{n_params / 1e9:.1f}B"
    return {"parent_model": "", "format": lm.format, "family": arch,
            "families": [arch], "parameter_size": size,
            "quantization_level": max(weights, key=weights.__getitem__) if weights else "F32"}


async def tags(request: Request, state: dict) -> JSONResponse:
    path = state["model"].path
    st = path.stat()
    modified = datetime.fromtimestamp(st.st_mtime, timezone.utc).isoformat().replace("+00:00", "Z")
    return JSONResponse({"models": [{"name": state["name"], "model": state["name"], "modified_at": modified,
                                     "size": st.st_size, "digest": "", "details": _details(state)}]})


async def show(request: Request, state: dict) -> JSONResponse:
    meta = state["model"].lm.metadata
    info = {k: v for k, v in meta.items() if isinstance(v, (str, int, float, bool)) and not k.startswith("tokenizer.")}
    return JSONResponse({"modelfile": f"FROM {state['model'].path}", "parameters": "",
                         "template": state["model"].template.source, "details": _details(state), "model_info": info,
                         "capabilities": ["completion"], "modified_at": _now()})


async def version(request: Request, state: dict) -> JSONResponse:
    return JSONResponse({"version": __version__})


ROUTES = [
    ("/api/chat", chat, ["POST"]),
    ("/api/generate", generate, ["POST"]),
    ("/api/tags", tags, ["GET"]),
    ("/api/show", show, ["POST"]),
    ("/api/version", version, ["GET"]),
]
