"""The ASGI application: the routes, the API key, /health, /lora-adapters."""
from __future__ import annotations

import contextlib
import secrets
from typing import Optional

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from ..api import Model
from . import ollama_api, openai_api
from .engine import Engine
from .protocol import ApiError, api_error, error_response


class ApiKey:
    """With --api-key, every route but /health needs `Authorization: Bearer KEY`."""

    def __init__(self, app: ASGIApp, key: Optional[str]):
        self.app, self.key = app, key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.key and scope["type"] == "http" and scope["path"] != "/health":
            headers = dict(scope["headers"])
            given = headers.get(b"authorization", b"").decode("latin-1")
            if not secrets.compare_digest(given.encode(), f"Bearer {self.key}".encode()):
                response = error_response(ApiError(401, "missing or wrong API key (Authorization: Bearer KEY)",
                                                   "authentication_error", "invalid_api_key"))
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(model: Model, *, name: str, n_slots: int = 1, n_ctx: Optional[int] = None,
               api_key: Optional[str] = None) -> Starlette:
    engine = Engine(model, n_slots=n_slots, n_ctx=n_ctx)
    # the adapters loaded at start (--lora), by id: what a request's `lora` field picks from
    state = {"model": model, "engine": engine, "name": name, "adapters": list(model.lm.model.lora)}

    async def health(request: Request) -> JSONResponse:
        slots = [{"busy": s.job is not None, "cached_tokens": len(s.session.tokens),
                  "last_prompt_reused": s.session.stats.n_reused, "last_prompt_evaluated": s.session.stats.n_prompt,
                  "last_generated": s.session.stats.n_generated, "last_stop": s.session.stats.stop_reason}
                 for s in engine.slots]
        passes = {"passes": engine.n_passes, "batched_passes": engine.n_batched_passes,
                  "most_sequences_in_a_pass": engine.most_sequences}
        return JSONResponse({"status": "ok", "slots": slots, "engine": passes})

    async def lora_adapters(request: Request, state: dict) -> JSONResponse:
        """llama.cpp's server's list: each adapter's id, path and start scale."""
        return JSONResponse([{"id": i, "path": str(adapter.path), "scale": scale}
                             for i, (adapter, scale) in enumerate(state["adapters"])])

    def guarded(handler):
        async def route(request: Request):
            try:
                return await handler(request, state)
            except Exception as e:  # every failure answers in the API's error shape
                return error_response(api_error(e))
        return route

    routes = [Route("/health", health)]
    routes += [Route(path, guarded(h), methods=methods) for path, h, methods in
               openai_api.ROUTES + ollama_api.ROUTES + [("/lora-adapters", lora_adapters, ["GET"])]]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        yield
        engine.close()

    app = Starlette(routes=routes, middleware=[Middleware(ApiKey, key=api_key)], lifespan=lifespan)
    app.state.engine = engine
    return app
