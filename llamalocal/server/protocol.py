"""What every route shares: errors in OpenAI's JSON shape, reading a JSON body,
a request's `lora` field, and a job's events carried from the engine's thread
into the request's loop."""
from __future__ import annotations

import asyncio
import json
import math
from typing import Any, AsyncIterator, Optional, Sequence

from starlette.requests import Request
from starlette.responses import JSONResponse

from ..errors import ContextFullError, Error
from ..model.lora import LoraAdapter
from ..sampling import TokenLogprob
from .engine import BusyError, Engine, Job

MAX_BODY_BYTES = 8 << 20  # a request body above this is refused with 413


class ApiError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", code: Optional[str] = None,
                 param: Optional[str] = None):
        super().__init__(message)
        self.status, self.kind, self.code, self.param = status, kind, code, param


def error_response(e: ApiError) -> JSONResponse:
    return JSONResponse({"error": {"message": str(e), "type": e.kind, "param": e.param, "code": e.code}},
                        status_code=e.status)


def api_error(e: Exception) -> ApiError:
    """llamalocal's errors as HTTP errors."""
    if isinstance(e, ApiError):
        return e
    if isinstance(e, BusyError):
        return ApiError(503, str(e), "server_error", "busy")
    if isinstance(e, ContextFullError):
        return ApiError(400, str(e), code="context_length_exceeded")
    if isinstance(e, Error):
        return ApiError(400, str(e))
    return ApiError(500, f"internal error: {type(e).__name__}", "server_error")


async def read_json(request: Request) -> dict[str, Any]:
    size = int(request.headers.get("content-length") or 0)
    if size > MAX_BODY_BYTES:
        raise ApiError(413, f"the request body is {size} bytes; the limit is {MAX_BODY_BYTES}", code="too_large")
    body = await request.body()
    if len(body) > MAX_BODY_BYTES:
        raise ApiError(413, f"the request body is over {MAX_BODY_BYTES} bytes", code="too_large")
    try:
        data = json.loads(body or b"{}")
    except json.JSONDecodeError as e:
        raise ApiError(400, f"the request body is not JSON: {e}") from None
    if not isinstance(data, dict):
        raise ApiError(400, "the request body must be a JSON object")
    return data


def lora_arg(body: dict[str, Any], adapters: Sequence[tuple[LoraAdapter, float]]
             ) -> Optional[list[tuple[LoraAdapter, float]]]:
    """A request's adapters, from its `lora` field as llama.cpp's server reads it:
    [{"id": 0, "scale": 0.5}, ...], ids of the adapters loaded at start
    (`adapters`, as GET /lora-adapters lists them); an adapter not named runs at
    scale 0, that is not at all (llama.cpp skips those too).  The pairs come in id
    order, the order the terms are summed in at start.  No field: None, the
    adapters at their start scales."""
    value = body.get("lora")
    if value is None:
        return None
    shape = 'lora must be a list of {"id": adapter id, "scale": number} objects'
    if not isinstance(value, list):
        raise ApiError(400, f"{shape}, got {type(value).__name__}", param="lora")
    scales: dict[int, float] = {}
    for i, item in enumerate(value):
        if not isinstance(item, dict) or "id" not in item or "scale" not in item:
            raise ApiError(400, f"lora[{i}]: {shape}", param="lora")
        ident, scale = item["id"], item["scale"]
        if isinstance(ident, bool) or not isinstance(ident, int) or not 0 <= ident < len(adapters):
            known = ("none: the server was started without --lora" if not adapters else
                     "id 0" if len(adapters) == 1 else f"ids 0 to {len(adapters) - 1}")
            raise ApiError(400, f"lora[{i}]: no adapter with id {ident!r} (loaded at start: {known}; "
                                f"GET /lora-adapters lists them)", param="lora")
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
            raise ApiError(400, f"lora[{i}]: the scale must be a finite number, got {scale!r}", param="lora")
        if ident in scales:
            raise ApiError(400, f"lora[{i}]: adapter {ident} is named twice", param="lora")
        scales[ident] = float(scale)
    return [(adapter, scales[i]) for i, (adapter, _) in enumerate(adapters) if scales.get(i, 0.0) != 0.0]


class Stream:
    """A job's events, carried from the engine's thread into the request's event loop."""

    def __init__(self, engine: Engine, job_args: dict[str, Any]):
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue = asyncio.Queue()
        self.job = Job(sink=self._sink, **job_args)
        engine.submit(self.job)

    def _sink(self, event: tuple) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, event)

    async def events(self) -> AsyncIterator[tuple]:
        """("piece", text) (and ("logprobs", list) if asked for) ... then ("done", stats); an engine
        error is raised.  Leaving early cancels the job."""
        try:
            while True:
                event = await self.queue.get()
                if event[0] == "error":
                    raise event[1]
                yield event
                if event[0] == "done":
                    return
        finally:
            self.job.cancel.set()  # the client went away, or the answer is complete: either way, stop

    async def collect(self) -> "Answer":
        """The whole answer, for a request that does not stream."""
        answer = Answer()
        async for event in self.events():
            answer.add(event)
        return answer


class Answer:
    """What a job's events add up to: its text, the logprobs sent with the text, its TurnStats."""

    def __init__(self) -> None:
        self.pieces: list[str] = []
        self.logprobs: list[TokenLogprob] = []
        self.stats: Any = None

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    def add(self, event: tuple) -> None:
        kind, value = event
        if kind == "piece":
            self.pieces.append(value)
        elif kind == "logprobs":
            self.logprobs.extend(value)
        else:
            self.stats = value
