"""What every route shares: errors in OpenAI's JSON shape, reading a JSON body,
and a job's events carried from the engine's thread into the request's loop."""
from __future__ import annotations

import asyncio
import json
from typing import Any, AsyncIterator, Optional

from starlette.requests import Request
from starlette.responses import JSONResponse

from ..errors import ContextFullError, Error
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
