"""The ASGI application of ``ead serve`` (Starlette).

Starlette rather than FastAPI: the server has five routes whose request bodies follow the OpenAI
API's own rules and error bodies (``{"error": {...}}``, 400 for a bad field), which FastAPI's
automatic validation would answer in its own 422 shape; Starlette gives the routing, streaming
responses and client-disconnect cancellation without a schema layer to work around. Uvicorn runs
it (`ead_sdk.serve.server`).
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.routing import Route

from ead_sdk.errors import ServeRequestError
from ead_sdk.serve import endpoints
from ead_sdk.serve.state import ServeState


def create_app(state: ServeState) -> Starlette:
    """The app serving ``state`` (built by `ServeState.start`); closing the app closes the state."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> Any:
        try:
            yield
        finally:
            await state.aclose()

    routes = [
        Route("/v1/completions", endpoints.completions, methods=["POST"]),
        Route("/v1/chat/completions", endpoints.chat_completions, methods=["POST"]),
        Route("/v1/models", endpoints.models, methods=["GET"]),
        Route("/health", endpoints.health, methods=["GET"]),
        Route("/metrics", endpoints.metrics, methods=["GET"]),
    ]
    app = Starlette(
        routes=routes,
        exception_handlers={ServeRequestError: endpoints.request_error, HTTPException: endpoints.http_error},
        lifespan=lifespan,
    )
    app.state.serve = state
    return app
